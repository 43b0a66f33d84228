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


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[str]:
    """Start a server in a fresh folder; yield its SQLAlchemy URL (database `gallery`); stop and remove it."""
    folder = Path(tempfile.mkdtemp(prefix="atelier-pg-"))
    data, socket_dir = folder / "data", folder / "socket"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, user="postgres")
        shutil.chown(socket_dir, user="postgres")
    run = lambda *args: subprocess.run(_as_server_user([str(a) for a in args]), check=True, capture_output=True)  # noqa: E731
    try:
        run(bin_dir / "initdb", "-D", data, "-U", "atelier", "--auth=trust", "-E", "UTF8", "--locale=C")
        options = f"-c listen_addresses='' -c unix_socket_directories={socket_dir} -c fsync=off"
        run(bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", folder / "server.log", "-w", "start")
        try:
            run(bin_dir / "createdb", "-h", socket_dir, "-U", "atelier", "gallery")
            yield f"postgresql+psycopg://atelier@/gallery?host={socket_dir}"
        finally:
            run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def empty_postgres(url: str) -> str:
    """`url`'s database with its public schema dropped and made again: no tables, no rows."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url
