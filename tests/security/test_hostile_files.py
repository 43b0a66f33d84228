"""Hostile files: pickles named .safetensors, corrupt headers, PNGs built to exhaust the importer.

Each case checks what an attacker wants to happen does not (a marker file a pickle would write, the
time or memory a parser would take) and that the refusal says why, in words.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from safetensors.numpy import save_file

from pipelines.models.model_files import read_safetensors_header
from pipelines.provenance.png_metadata import encode_png, read_png
from pipelines.recipe import ModelRef, Recipe


class MarkerPayload:
    """Unpickling this writes `marker`: the stand-in for arbitrary code a pickle checkpoint can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps(MarkerPayload(marker), protocol=4)


def torch_zip_bytes(marker: Path) -> bytes:
    """torch.save's layout: a zip whose data.pkl is the pickle."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes(marker))
    return buffer.getvalue()


def safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def write_lora(path: Path) -> None:
    """A small LoRA in the diffusers/peft layout, written by the safetensors library."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file(
        {
            f"{target}.lora_A.weight": np.ones((4, 8), np.float32),
            f"{target}.lora_B.weight": np.ones((8, 4), np.float32),
        },
        str(path),
    )


@pytest.fixture()
def marker(tmp_path):
    path = tmp_path / "UNPICKLED"
    pickle.loads(pickle_bytes(path))  # the payload works: unpickling it does write the marker
    assert path.read_text() == "unpickled"
    path.unlink()
    yield path
    assert not path.exists(), "a pickle was unpickled"


@pytest.fixture(params=["pickle", "torch-zip"])
def pickle_file_bytes(request, marker):
    return (pickle_bytes if request.param == "pickle" else torch_zip_bytes)(marker)


# -- pickles renamed .safetensors --------------------------------------------------------------------


def test_a_pickle_lora_is_listed_as_unusable_and_never_loaded(tmp_path, pickle_file_bytes):
    from pipelines.models.lora import LoraLibrary

    home = tmp_path / "home"
    (home / "models" / "Lora").mkdir(parents=True)
    (home / "models" / "Lora" / "evil.safetensors").write_bytes(pickle_file_bytes)
    write_lora(home / "models" / "Lora" / "good.safetensors")
    library = LoraLibrary(home)
    listed = {entry["name"]: entry for entry in library.available()}
    assert "pickle checkpoint" in listed["evil"]["error"]
    assert listed["good"]["format"] == "diffusers"
    with pytest.raises(ValueError, match="pickle checkpoint .* can run arbitrary code"):
        library.find("evil")


def test_a_pickle_checkpoint_is_refused_before_any_loading(tmp_path, pickle_file_bytes):
    from pipelines.models.single_file import inspect_single_file

    path = tmp_path / "sd_xl_base_1.0.safetensors"
    path.write_bytes(pickle_file_bytes)
    with pytest.raises(ValueError, match="pickle checkpoint"):
        inspect_single_file(path)


def test_a_pickle_checkpoint_given_to_the_studio_is_refused(tmp_path, marker, tiny_recipe):
    from atelier.studio import Studio

    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(pickle_bytes(marker))
    studio = Studio(tmp_path / "home", device="cpu")
    try:
        with pytest.raises(ValueError, match="pickle checkpoint"):
            studio.draft(tiny_recipe(model=ModelRef(str(path))), 1)
    finally:
        studio.close()


def test_a_pickle_controlnet_is_refused(tmp_path, pickle_file_bytes):
    from pipelines.models.controlnet import ControlNetLibrary

    home = tmp_path / "home"
    (home / "models" / "Stable-diffusion").mkdir(parents=True)  # an A1111 models folder
    (home / "models" / "ControlNet").mkdir(parents=True)
    (home / "models" / "ControlNet" / "canny.safetensors").write_bytes(pickle_file_bytes)
    with pytest.raises(ValueError, match="pickle checkpoint"):
        ControlNetLibrary(home).locate("canny")


def test_a_pickle_upscaler_is_refused(tmp_path, pickle_file_bytes):
    from pipelines.models import upscalers

    home = tmp_path / "home"
    (home / "models" / "Stable-diffusion").mkdir(parents=True)
    (home / "models" / "ESRGAN").mkdir(parents=True)
    (home / "models" / "ESRGAN" / "4x-evil.safetensors").write_bytes(pickle_file_bytes)
    with pytest.raises(ValueError, match="pickle checkpoint"):
        upscalers.locate(home, "4x-evil")


# -- corrupt safetensors headers ------------------------------------------------------------------------

DEEP = 100_000


@pytest.mark.parametrize(
    "content, message",
    [
        (struct.pack("<Q", 2**63) + b'{"a": 1}', "unrecognised or corrupt header"),  # length past the file
        (safetensors_bytes(b"{" + b" " * (17 * 1024 * 1024) + b"}"), "over the limit of 16777216"),
        (safetensors_bytes(b'{"t": {"dtype": "F32", '), "not valid JSON"),
        (safetensors_bytes(b'{"a":' * DEEP + b"1" + b"}" * DEEP), "nested deeper than the limit of 16"),
        (safetensors_bytes(b'{"a": ' + b"[" * DEEP + b"]" * DEEP + b"}"), "nested deeper than the limit of 16"),
        (safetensors_bytes(b"[1, 2]"), "unrecognised or corrupt header"),  # not a JSON object
    ],
    ids=["huge-length", "header-over-cap", "bad-json", "deep-objects", "deep-lists", "not-an-object"],
)
def test_corrupt_safetensors_headers_are_refused_quickly_in_words(tmp_path, content, message):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(content)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message) as refused:
        read_safetensors_header(path)
    assert time.perf_counter() - started < 2.0
    assert str(path) in str(refused.value)


def test_one_corrupt_lora_does_not_hide_the_others_from_atelier_loras(tmp_path, marker):
    home = tmp_path / "home"
    folder = home / "models" / "Lora"
    write_lora(folder / "good.safetensors")
    (folder / "deep.safetensors").write_bytes(safetensors_bytes(b'{"a":' * DEEP + b"1" + b"}" * DEEP))
    (folder / "huge.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    (folder / "evil.safetensors").write_bytes(pickle_bytes(marker))
    env = {**os.environ, "ATELIER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("ATELIER_MODELS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "loras", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    listed = {entry["name"]: entry for entry in json.loads(proc.stdout)["loras"]}
    assert listed["good"]["format"] == "diffusers"
    assert "nested deeper than the limit" in listed["deep"]["error"]
    assert "corrupt header" in listed["huge"]["error"]
    assert "pickle checkpoint" in listed["evil"]["error"]
    assert "Traceback" not in proc.stderr


# -- hostile PNG imports --------------------------------------------------------------------------------


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_text(chunks: list[tuple[bytes, bytes]], size: tuple[int, int] = (8, 8), mode: int = 2) -> bytes:
    """A PNG (colour type `mode`, 8 bits) of zero pixels with `chunks` before its image data."""
    width, height = size
    channels = {0: 1, 2: 3, 3: 1}[mode]
    rows = zlib.compressobj(9)
    body = b"".join(rows.compress(b"\0" * (1 + width * channels)) for _ in range(height)) + rows.flush()
    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0))]
    if mode == 3:
        parts.append(chunk(b"PLTE", b"\0\0\0"))
    parts += [chunk(kind, data) for kind, data in chunks]
    parts += [chunk(b"IDAT", body), chunk(b"IEND", b"")]
    return b"".join(parts)


def itxt(key: str, text: str) -> tuple[bytes, bytes]:
    return b"iTXt", key.encode() + b"\0\0\0\0\0" + text.encode()


def recipe_json(**changes) -> str:
    data = Recipe(model=ModelRef("sd_xl_base_1.0"), prompt="a cat", seed=1).to_dict()
    data.update(changes)
    return json.dumps(data)


HOSTILE_PNGS = {
    "60 MB text chunk": (
        lambda: png_with_text([(b"tEXt", b"parameters\0" + b"a, " * (20 * 1024 * 1024))]),
        "text chunk 'parameters' is 62914571 bytes, over the limit of 1048576",
    ),
    "many text chunks": (
        lambda: png_with_text([(b"tEXt", b"note%d\0" % i + b"x" * 900_000) for i in range(6)]),
        "text chunks of over 4194304 bytes in all",
    ),
    "compressed text bomb": (
        lambda: png_with_text([(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (64 * 1024 * 1024), 9))]),
        "Decompressed data too large",
    ),
    "a million empty chunks": (
        lambda: png_with_text([(b"zzZz", b"")] * 1_000_000),
        "more than 100000 chunks",
    ),
    "palette bomb": (lambda: png_with_text([], size=(8000, 8000), mode=3), "8000×8000 pixels is over the limit"),
    "malformed recipe JSON": (lambda: png_with_text([itxt("atelier_recipe", '{"prompt": ')]), "not valid JSON"),
    "recipe nested 50,000 deep": (
        lambda: png_with_text([itxt("atelier_recipe", "[" * 50_000 + "]" * 50_000)]),
        "nested deeper than the limit of 16",
    ),
    "NaN guidance": (lambda: png_with_text([itxt("atelier_recipe", recipe_json(guidance=float("nan")))]), "guidance"),
    "1e9 steps": (lambda: png_with_text([itxt("atelier_recipe", recipe_json(steps=10**9))]), "steps: must be"),
    "negative size": (lambda: png_with_text([itxt("atelier_recipe", recipe_json(width=-1))]), "width: must be"),
    "1 MB prompt": (
        lambda: png_with_text([itxt("atelier_recipe", recipe_json(prompt="a" * 1_000_000))]),
        "over the limit of 262144",  # the recipe JSON cap comes first
    ),
    "absurd A1111 values": (
        lambda: png_with_text([(b"tEXt", b"parameters\0a cat\nSteps: 1000000000, Seed: 1, Size: 64x64")]),
        "steps: must be an integer from 1 to 500",
    ),
    "not a PNG": (lambda: b"<html><script>alert(1)</script></html>", "not a PNG file"),
}


@pytest.mark.parametrize("what", list(HOSTILE_PNGS))
def test_hostile_pngs_are_refused_quickly_with_the_reason(what):
    make, message = HOSTILE_PNGS[what]
    data = make()
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        read_png(data)
    assert time.perf_counter() - started < 2.0, what


def test_the_studios_import_refuses_hostile_pngs_and_keeps_nothing(tmp_path):
    """The path the CLI's `atelier import` and the gallery's drop target share."""
    from atelier.studio import Studio

    studio = Studio(tmp_path / "home", device="cpu")
    try:
        for what in ("60 MB text chunk", "palette bomb", "recipe nested 50,000 deep", "NaN guidance", "not a PNG"):
            make, message = HOSTILE_PNGS[what]
            path = tmp_path / "hostile.png"
            path.write_bytes(make())
            with pytest.raises(ValueError, match=message):
                studio.import_png(path)
        assert studio.search().items == ()
    finally:
        studio.close()
    files = tmp_path / "home" / "files"
    assert not files.exists() or not any(f.is_file() for f in files.rglob("*"))


def test_recipe_paths_with_dot_dot_import_as_names_and_never_reach_outside(tmp_path):
    """A recipe naming `../` models is kept as names: nothing is written outside the home, and the LoRA
    folder refuses the name when the recipe is used."""
    from atelier.studio import Studio
    from pipelines.models.lora import LoraLibrary

    recipe = Recipe(
        model=ModelRef("../../../../etc/passwd"),
        prompt="a cat <lora:../../outside:1>",
        seed=1,
    )
    png = tmp_path / "dots.png"
    png.write_bytes(encode_png(Image.new("RGB", (64, 64)), recipe))
    home = tmp_path / "home"
    before = set(tmp_path.iterdir())
    studio = Studio(home, device="cpu")
    try:
        saved = studio.import_png(png)
        assert studio.gallery.get(saved.id).recipe.model.name == "../../../../etc/passwd"
        assert saved.image.resolve().is_relative_to(home.resolve())
    finally:
        studio.close()
    assert set(tmp_path.iterdir()) - before == {home}
    write_lora(home / "models" / "Lora" / "inside.safetensors")
    with pytest.raises(ValueError, match="outside"):
        LoraLibrary(home).find("../../outside")


def test_atelier_import_refuses_a_60_mb_text_chunk_quickly(tmp_path):
    png = tmp_path / "huge.png"
    png.write_bytes(png_with_text([(b"tEXt", b"parameters\0" + b"a" * (60 * 1024 * 1024))]))
    env = {**os.environ, "ATELIER_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "import", str(png)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "over the limit of 1048576" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - started < 60  # interpreter start included; the parse was minutes before


def test_pillow_alone_would_read_the_60_mb_chunk():
    """What the size check is for: Pillow accepts a text chunk this size (up to 64 MB of text in all)."""
    data = png_with_text([(b"tEXt", b"parameters\0" + b"a" * (60 * 1024 * 1024))])
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert len(image.text["parameters"]) == 60 * 1024 * 1024
    assert PngImagePlugin.MAX_TEXT_MEMORY >= 60 * 1024 * 1024
