"""A real, throw-away PostgreSQL server for the tests: Debian's `postgresql` package, `initdb` and
`pg_ctl` on a temporary folder, listening only on a Unix socket inside it (no TCP port to collide).

`initdb` refuses to run as root, so as root the server runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian layout), or one on PATH; None without one."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class PostgresServer:
    """One server in its own folder: `initdb` once, then start and stop as a test needs."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="atelier-pg-"))
        self.data, self.socket_dir = self.folder / "data", self.folder / "socket"
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.folder, user="postgres")
            shutil.chown(self.socket_dir, user="postgres")
        self._run("initdb", "-D", self.data, "-U", "atelier", "--auth=trust", "-E", "UTF8", "--locale=C")
        self.url = f"postgresql+psycopg://atelier@/gallery?host={self.socket_dir}"

    def _run(self, tool: str, *args) -> None:
        command = _as_server_user([str(self.bin_dir / tool), *(str(a) for a in args)])
        subprocess.run(command, check=True, capture_output=True)

    def start(self) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir} -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.folder / "server.log", "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresServer]:
    """Start a server in a fresh folder with a database `gallery` (its SQLAlchemy URL: `.url`); stop and
    remove it afterwards."""
    server = PostgresServer(bin_dir)
    try:
        server.start()
        try:
            server._run("createdb", "-h", server.socket_dir, "-U", "atelier", "gallery")
            yield server
        finally:
            server.stop("immediate")
    finally:
        server.remove()


def empty_postgres(url: str) -> str:
    """`url`'s database with its public schema dropped and made again: no tables, no rows."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url
