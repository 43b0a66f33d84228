"""An advisory lock on the home folder: exclusive while migrating and sweeping, shared after.

Only a process that finds no other process using the gallery may migrate the schema or remove
files without rows (another process may have written a file whose row is about to commit).
"""

from __future__ import annotations

from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, every open migrates and sweeps
    fcntl = None


class HomeLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def acquire(self) -> bool:
        """Take the lock; True if exclusive (no other process holds it), else wait for a shared one."""
        self._file = open(self.path, "a+b")  # noqa: SIM115 (held open: the lock lives as long as the file)
        if fcntl is None:
            return True
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_SH)  # waits while another process migrates
            return False

    def share(self) -> None:
        if fcntl is not None and self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_SH)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None
