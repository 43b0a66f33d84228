"""Weight files and models folders: format by header, sha256 with a cache, safe name resolution.

No torch or diffusers here: this module only reads bytes and paths, so anything can use it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.recipe import loads_limited_json

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# A .safetensors JSON header is read whole before parsing: a checkpoint's is ~0.3 MB, a LoRA's with kohya
# training metadata a few MB; safetensors itself accepts up to 100 MB.
MAX_HEADER_BYTES = 16 * 1024 * 1024
HASH_CHUNK = 8 * 1024 * 1024
AUTOV2_SHORT, AUTOV3_SHORT = 10, 12  # hex digits A1111 writes for a checkpoint / a LoRA

# Models folder layouts: kind -> sub-folder names (A1111 first, ComfyUI second). Matched case-insensitively.
MODEL_KINDS = {
    "checkpoint": ("Stable-diffusion", "checkpoints"),
    "lora": ("Lora", "loras"),
    "controlnet": ("ControlNet", "controlnet"),
    "vae": ("VAE", "vae"),
    "upscaler": ("ESRGAN", "upscale_models"),  # ESRGAN-family pixel upscalers (pipelines/models/upscalers.py)
}
LAYOUT_MARKERS = {"a1111": ("Stable-diffusion", "Lora"), "comfyui": ("checkpoints", "loras")}


class ModelNotFound(ValueError):
    """No model of that name in the models folder (a user error: the message lists what is there)."""


# --- format by header -------------------------------------------------------------------------


def sniff_format(path: Path) -> str:
    """ "safetensors", "torch-zip", "pickle" or "unknown", judged from the first bytes, never the suffix."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"  # torch.save's default format: a zip holding a pickle
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def read_safetensors_header(path: Path) -> dict:
    """The validated header of a .safetensors file; ValueError (naming the file) if it is anything else.

    Also catches truncated files: the tensors' byte ranges must end exactly at the end of the file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: expected a .safetensors file, found a folder or special file")
    kind = sniff_format(path)
    if kind in ("pickle", "torch-zip"):
        raise ValueError(
            f"{path}: this is a pickle checkpoint (torch.save format), which can run arbitrary code when "
            "loaded, so Atelier refuses it. Use a .safetensors version of the model "
            "(most model pages offer one, or convert it once in a trusted environment)."
        )
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise ValueError(f"{path}: not a valid .safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if kind != "safetensors" or header_len > size - 8:
            raise ValueError(f"{path}: not a valid .safetensors file (unrecognised or corrupt header)")
        if header_len > MAX_HEADER_BYTES:
            raise ValueError(
                f"{path}: its .safetensors header is {header_len} bytes, over the limit of {MAX_HEADER_BYTES}"
            )
        try:
            header = loads_limited_json(f.read(header_len), what="header", max_chars=MAX_HEADER_BYTES)
        except ValueError as error:
            raise ValueError(f"{path}: corrupt .safetensors {error}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt .safetensors header (not a JSON object)")
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{path}: corrupt .safetensors header (tensor {name!r} has no valid offsets)")
        data_end = max(data_end, offsets[1])
    if 8 + header_len + data_end != size:
        raise ValueError(
            f"{path}: truncated or corrupt .safetensors file (header describes {8 + header_len + data_end} "
            f"bytes, the file has {size}); download it again"
        )
    return header


# --- hashing ----------------------------------------------------------------------------------


class HashCache:
    """sha256 of files, remembered in <home>/cache/hashes.json keyed by (path, size, mtime).

    Real SDXL checkpoints are ~7 GB: hashing one takes many seconds, so it is done once per file version.
    """

    def __init__(self, home: Path | None):
        self.file = Path(home) / "cache" / "hashes.json" if home is not None else None
        self._entries: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {}
            if self.file is not None and self.file.exists():
                try:
                    data = json.loads(self.file.read_text())
                    if isinstance(data, dict):
                        self._entries = data
                except (OSError, ValueError, RecursionError):
                    pass  # a damaged cache is only a lost speed-up
        return self._entries

    def _save(self) -> None:
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".hashes.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self._entries, f, indent=0, sort_keys=True)
        os.replace(tmp, self.file)

    def sha256(self, path: Path) -> str:
        """The whole file's sha256 (the Recipe's hash; its first 10 hex are A1111's AutoV2 "Model hash")."""
        return self._cached(path, "sha256", sha256_of_file)

    def autov3(self, path: Path) -> str:
        """sha256 of a .safetensors file's tensor data (A1111/Civitai "AutoV3"; they show its first 12 hex)."""
        return self._cached(path, "autov3", autov3_of_file)

    def cached(self, path: Path, field: str) -> str | None:
        """A hash already known for this version of the file, without hashing anything."""
        path = Path(path).resolve()
        st = path.stat()
        entry = self._load().get(str(path))
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return entry.get(field)
        return None

    def _cached(self, path: Path, field: str, compute) -> str:
        path = Path(path).resolve()
        known = self.cached(path, field)
        if known is not None:
            return known
        st = path.stat()
        digest = compute(path)
        entries = self._load()
        entry = entries.get(str(path))
        if not (entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns):
            entry = entries[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        entry[field] = digest
        self._save()
        return digest


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def autov3_of_file(path: Path) -> str:
    """A1111's `addnet_hash_safetensors`: sha256 of the bytes after the 8-byte length and the JSON header,
    so editing a file's metadata does not change it. Civitai calls it AutoV3 and shows the first 12 hex."""
    path = Path(path)
    if sniff_format(path) != "safetensors":
        raise ValueError(f"{path}: AutoV3 hashes are defined for .safetensors files only")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + header_len)
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def short_autov3(digest: str) -> str:
    return digest[:AUTOV3_SHORT]


def short_autov2(sha256: str) -> str:
    return sha256[:AUTOV2_SHORT]


def folder_weight_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The .safetensors weight files of a diffusers folder's components (those model_index.json names)."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    files = []
    for component, value in sorted(index.items()):
        if component.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        sub = folder / component
        if not sub.is_dir():
            continue
        for f in sorted(sub.glob("*.safetensors")):
            tags = f.name.split(".")[1:-1]  # "model.fp16.safetensors" -> ["fp16"]
            if (variant is None and not tags) or (variant is not None and variant in tags):
                files.append(f)
    return files


def folder_digest(folder: Path, cache: HashCache, variant: str | None = None) -> str:
    """One sha256 for a diffusers folder: over its components' weight files (relative name + sha256)."""
    folder = Path(folder)
    files = folder_weight_files(folder, variant)
    if not files:
        raise ValueError(f"{folder}: no .safetensors weight files in this diffusers folder")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()} {cache.sha256(f)}\n".encode())
    return h.hexdigest()


# --- names inside a folder --------------------------------------------------------------------


def resolve_inside(folder: Path, name: str) -> Path:
    """folder/name, refusing names that reach outside the folder (.., absolute paths, symlinks out)."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ValueError(f"model name must be a non-empty relative name (got {name!r})")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\", "~")) or Path(name).is_absolute() or ":" in parts[0] or ".." in parts:
        raise ValueError(f"model name {name!r} must be a name inside {folder}, without '..' or an absolute path")
    root = Path(folder).resolve()
    target = (root / "/".join(p for p in parts if p not in ("", "."))).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"model name {name!r} leads outside {folder} (through a symbolic link); refused")
    return target


@dataclass(frozen=True)
class ModelsFolder:
    """A models folder laid out like A1111's (models/Stable-diffusion, ...) or ComfyUI's (models/checkpoints, ...)."""

    root: Path
    layout: str  # "a1111", "comfyui" or "mixed"

    def folder(self, kind: str) -> Path | None:
        if kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {sorted(MODEL_KINDS)} (got {kind!r})")
        wanted = {n.lower() for n in MODEL_KINDS[kind]}
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and child.name.lower() in wanted:
                return child
        return None

    def list_models(self, kind: str) -> list[str]:
        """Names (relative paths) of the .safetensors files and diffusers folders of one kind."""
        folder = self.folder(kind)
        if folder is None:
            return []
        names = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            here = Path(dirpath)
            if (here / "model_index.json").exists() or (here != folder and (here / "config.json").exists()):
                names.append(here.relative_to(folder).as_posix())
                dirnames.clear()
                continue
            dirnames.sort()
            names += [
                (here / f).relative_to(folder).as_posix() for f in sorted(filenames) if f.endswith(".safetensors")
            ]
        return sorted(n for n in names if n != ".")

    def resolve(self, kind: str, name: str) -> Path:
        """The path of a model given by name (".safetensors" may be left out); ValueError if absent."""
        folder = self.folder(kind)
        if folder is None:
            raise ValueError(f"{self.root} has no folder for {kind} models ({' or '.join(MODEL_KINDS[kind])})")
        for candidate in (name, f"{name}.safetensors"):
            path = resolve_inside(folder, candidate)
            if path.exists():
                return path
        available = ", ".join(self.list_models(kind)[:20]) or "none"
        raise ModelNotFound(f"no {kind} named {name!r} in {folder} (available: {available})")

    def resolve_checkpoint(self, name: str) -> Path:
        return self.resolve("checkpoint", name)


def detect_layout(path: Path) -> str | None:
    if not path.is_dir():
        return None
    present = {c.name.lower() for c in path.iterdir() if c.is_dir()}
    found = [layout for layout, marks in LAYOUT_MARKERS.items() if any(m.lower() in present for m in marks)]
    if not found:
        return None
    return found[0] if len(found) == 1 else "mixed"


def find_models_root(*candidates: Path | str | None) -> ModelsFolder | None:
    """The first candidate that is (or contains a `models/` that is) an A1111/ComfyUI models folder.

    Callers pass, in order of preference: an explicit setting, $ATELIER_MODELS, <home>/models, ...
    """
    for candidate in candidates:
        if candidate is None or str(candidate) == "":
            continue
        base = Path(candidate).expanduser()
        for path in (base, base / "models"):
            layout = detect_layout(path)
            if layout:
                return ModelsFolder(path.resolve(), layout)
    return None


def models_root(home: Path, explicit: Path | str | None = None) -> ModelsFolder | None:
    """The models folder Atelier uses: `explicit`, else $ATELIER_MODELS, else <home>/models (or <home>)."""
    return find_models_root(explicit, os.environ.get("ATELIER_MODELS"), Path(home) / "models", home)


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE set, as in tests and offline use)."""
    import huggingface_hub

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(huggingface_hub.constants.HF_HUB_OFFLINE)
