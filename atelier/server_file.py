"""<home>/server.json: how a command finds the `atelier serve` running on its home (standard library only).

`atelier serve` writes it once it listens (its URL, process id and the models it serves; never its login)
and removes it when it stops. A file left by a server that died (its process is gone) is not used.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

SERVER_FILE = "server.json"


@dataclass(frozen=True)
class ServerRecord:
    url: str
    pid: int
    base: str
    refiner: str | None
    login: bool  # the server asks for a login (--auth)


def server_file(home: Path) -> Path:
    return Path(home).expanduser() / SERVER_FILE


def local_url(host: str, port: int) -> str:
    """The URL a command on this machine uses: a wildcard address is reached on loopback."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def write_server_file(home: Path, record: ServerRecord) -> Path:
    """Written whole (a reader never sees half a file), readable by its owner only."""
    path = server_file(home)
    partial = path.with_name(f".{SERVER_FILE}.{os.getpid()}")
    partial.write_text(json.dumps(record.__dict__), encoding="utf-8")
    partial.chmod(0o600)
    partial.replace(path)
    return path


def remove_server_file(home: Path, pid: int | None = None) -> None:
    """Remove the file if it is this process's (`pid`, default ours): a newer server's file stays."""
    record = read_server_file(home, check_alive=False)
    if record is not None and record.pid == (os.getpid() if pid is None else pid):
        with contextlib.suppress(FileNotFoundError):
            server_file(home).unlink()


def read_server_file(home: Path, *, check_alive: bool = True) -> ServerRecord | None:
    """The server named in <home>/server.json; None when there is none, it is unreadable, or (`check_alive`)
    its process is gone."""
    try:
        values = json.loads(server_file(home).read_text(encoding="utf-8"))
        record = ServerRecord(
            url=str(values["url"]),
            pid=int(values["pid"]),
            base=str(values["base"]),
            refiner=values.get("refiner"),
            login=bool(values.get("login", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if not check_alive or _alive(record.pid) else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True
