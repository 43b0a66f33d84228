"""Content-addressed files under <home>/files/ab/cdef….ext (sha256 of the bytes).

A file appears only complete: written to a temp file beside its final name, fsync'd, renamed, and
the directory fsync'd. Deleting renames to a ".del" name first, so a transaction that fails can put
it back. Temp names start with "." and end in ".tmp" / ".del"; the start-up sweep handles both.
`scan` lists what is on disk without ever following a symbolic link (a link inside files/ may point
anywhere, so it is reported and left alone).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

FILES_DIR_ENV = "ATELIER_FILES_DIR"  # the files on shared storage every machine mounts (`--files DIR`)


def files_root(home: Path) -> Path:
    """Where the gallery's content-addressed files live: $ATELIER_FILES_DIR, else <home>/files."""
    chosen = os.environ.get(FILES_DIR_ENV, "").strip()
    return Path(chosen).expanduser() if chosen else Path(home) / "files"


def files_are_shared() -> bool:
    """True when the files live where other machines may be writing too ($ATELIER_FILES_DIR)."""
    return bool(os.environ.get(FILES_DIR_ENV, "").strip())


ROLES = ("image", "thumbnail", "latent", "source", "control", "map")
THUMBNAIL_SIDE = 256
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEMP_SUFFIX = ".tmp"
TRASH_SUFFIX = ".del"
# The only names the gallery ever writes: <2 hex>/<62 hex>.<ext>, and its temp/trash forms
# .<final name>.<hex token>.tmp|.del (the sweep removes nothing that does not match exactly).
FOLDER_NAME = re.compile(r"[0-9a-f]{2}")
FINAL_NAME = re.compile(r"[0-9a-f]{62}\.[a-z]{2,12}")
TEMP_NAME = re.compile(r"\.(?P<final>[0-9a-f]{62}\.[a-z]{2,12})\.[0-9a-f]{1,64}\.(?P<kind>tmp|del)")


class GalleryWriteError(OSError):
    """A file or row could not be written (disk full, permissions …); nothing of the save remains."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extension_for(data: bytes) -> str:
    if data.startswith(PNG_MAGIC):
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if _looks_like_safetensors(data):
        return ".safetensors"
    return ".bin"


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    header_len = int.from_bytes(data[:8], "little")
    return 2 <= header_len <= len(data) - 8 and data[8:9] == b"{"


def check_png(data: bytes, what: str = "image_png") -> None:
    if not isinstance(data, (bytes, bytearray)) or not bytes(data).startswith(PNG_MAGIC):
        raise ValueError(f"{what}: must be the bytes of a PNG file")


def check_safetensors(data: bytes, what: str = "latent") -> None:
    if not isinstance(data, (bytes, bytearray)) or not _looks_like_safetensors(bytes(data)):
        raise ValueError(f"{what}: must be the bytes of a .safetensors file")


def make_thumbnail(png: bytes) -> bytes:
    """A WebP at most THUMBNAIL_SIDE pixels on its longer side, for the browser grid only."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except Exception as exc:  # Pillow raises many types for broken data
        raise ValueError(f"image_png: not a readable PNG ({exc})") from None
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    thumb.save(out, format="WEBP", quality=80, method=4)
    return out.getvalue()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name_parts(name: str) -> tuple[str, str] | None:
    """(final name, "tmp" or "del") for a temp/trash name this module writes; None for anything else."""
    match = TEMP_NAME.fullmatch(name)
    return (match["final"], match["kind"]) if match else None


@dataclass
class DiskScan:
    """What `FileStore.scan` found: gallery-named files, temp/trash files, and what it left alone."""

    files: list[tuple[Path, str]] = field(default_factory=list)  # (folder, name), regular files only
    temps: list[tuple[Path, str]] = field(default_factory=list)
    links: list[Path] = field(default_factory=list)  # symbolic links: never followed, never removed
    others: list[Path] = field(default_factory=list)  # names the gallery never writes: left alone


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def relative_path(self, sha256: str, data: bytes) -> str:
        return f"{sha256[:2]}/{sha256[2:]}{extension_for(data)}"

    def path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def put(self, data: bytes) -> tuple[str, str, bool]:
        """Store `data` atomically; returns (sha256, relative path, whether this call created it)."""
        sha = sha256_hex(data)
        relative = self.relative_path(sha, data)
        target = self.path(relative)
        with contextlib.suppress(FileNotFoundError):  # one stat: a concurrent delete may rename it away
            if target.stat().st_size == len(data):
                return sha, relative, False
        self._write_atomically(target, data)
        return sha, relative, True

    def ensure(self, relative: str, data: bytes) -> bool:
        """Write the file again if it vanished (a concurrent delete); True when it had to."""
        target = self.path(relative)
        if target.exists():
            return False
        self._write_atomically(target, data)
        return True

    def _write_atomically(self, target: Path, data: bytes) -> None:
        folder = target.parent
        temp = folder / f".{target.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            if not folder.exists():
                folder.mkdir(parents=True, exist_ok=True)
                fsync_dir(folder.parent)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
            fsync_dir(folder)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise GalleryWriteError(
                    exc.errno,
                    f"gallery: no space left on the disk holding {self.root} "
                    f"(writing {len(data)} bytes); nothing was saved — free some space and try again",
                ) from exc
            raise GalleryWriteError(
                exc.errno, f"gallery: could not write {target} ({exc.strerror or exc}); nothing was saved"
            ) from exc

    def remove(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)

    def to_trash(self, relative: str) -> Path | None:
        """Rename a file to its ".del" name (undo with `restore`); None if it was not there."""
        target = self.path(relative)
        trash = target.with_name(f".{target.name}.{uuid.uuid4().hex}{TRASH_SUFFIX}")
        try:
            os.replace(target, trash)
        except FileNotFoundError:
            return None
        return trash

    def restore(self, trash: Path) -> None:
        final = trash.with_name(trash.name[1:].rsplit(".", 2)[0])
        os.replace(trash, final)

    def scan(self) -> DiskScan:
        """Every entry under the root, without following symbolic links (the root itself may be one)."""
        found = DiskScan()
        if not self.root.is_dir():
            return found
        with os.scandir(self.root) as top:
            for folder in top:
                if folder.is_symlink():
                    found.links.append(Path(folder.path))
                elif folder.is_dir(follow_symlinks=False) and FOLDER_NAME.fullmatch(folder.name):
                    self._scan_folder(Path(folder.path), found)
                elif not folder.name.startswith(".") or folder.is_dir(follow_symlinks=False):
                    found.others.append(Path(folder.path))
        return found

    @staticmethod
    def _scan_folder(folder: Path, found: DiskScan) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_symlink():
                    found.links.append(Path(entry.path))
                elif not entry.is_file(follow_symlinks=False):
                    found.others.append(Path(entry.path))
                elif FINAL_NAME.fullmatch(entry.name):
                    found.files.append((folder, entry.name))
                elif temp_name_parts(entry.name) is not None:
                    found.temps.append((folder, entry.name))
                else:
                    found.others.append(Path(entry.path))

    @staticmethod
    def sha_from_name(folder: Path, name: str) -> str:
        return folder.name + name.split(".", 1)[0]
