"""ESRGAN-family pixel upscalers (Real-ESRGAN, 4x-UltraSharp, …) through spandrel, from the models folder:
A1111's models/ESRGAN or ComfyUI's models/upscale_models. `.safetensors` only: a pickle (.pth, .pt,
.ckpt) is refused from its header, before anything is loaded.

The model runs in tiles (with an overlap that is cut away again), as often as its scale needs to cover
the target size, and the result is fitted to the exact size with Lanczos (as A1111 does). Torch and
spandrel are imported only to run a model: locating one (`locate`) reads a file header, no more.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from pipelines.models.model_files import ModelNotFound, models_root, read_safetensors_header

TILE = 256  # input pixels per tile side
OVERLAP = 16  # input pixels of context each tile gets on every side (cut from its output)
MAX_PASSES = 3


def folder(home: Path) -> Path | None:
    root = models_root(home)
    return root.folder("upscaler") if root is not None else None


def available(home: Path) -> list[str]:
    root = models_root(home)
    if root is None or root.folder("upscaler") is None:
        return []
    return [name.removesuffix(".safetensors") for name in root.list_models("upscaler")]


def locate(home: Path, name: str) -> Path:
    """The upscaler's .safetensors file; a ValueError naming `upscaler` when it is missing or a pickle."""
    root = models_root(home)
    if root is None or root.folder("upscaler") is None:
        raise ValueError(
            f"upscaler: no ESRGAN folder for {name!r} (put .safetensors upscalers in "
            f"{Path(home).resolve() / 'models' / 'ESRGAN'} or models/upscale_models, or use lanczos)"
        )
    try:
        path = root.resolve("upscaler", name)
        read_safetensors_header(path)  # pickles, corrupt and truncated files are refused here
    except ModelNotFound as error:
        raise ValueError(f"upscaler: {error}; or use lanczos") from None
    except ValueError as error:
        raise ValueError(f"upscaler: {error}") from None
    if not path.is_file():
        raise ValueError(f"upscaler: {path} is not a .safetensors file")
    return path


def upscale(path: Path, image: Image.Image, width: int, height: int, device: str = "cpu") -> Image.Image:
    """`image` enlarged by the model at `path` (repeatedly, up to MAX_PASSES, until it covers width×height),
    then fitted to exactly width×height with Lanczos."""
    import torch
    from safetensors.torch import load_file
    from spandrel import ImageModelDescriptor, ModelLoader

    try:
        model = ModelLoader().load_from_state_dict(load_file(str(path)))
    except Exception as error:  # spandrel's UnsupportedModelError and shape errors alike
        raise ValueError(f"upscaler: {path.name} is not an upscaler spandrel can load ({error})") from None
    if not isinstance(model, ImageModelDescriptor) or model.scale < 2 or model.input_channels != 3:
        raise ValueError(f"upscaler: {path.name} is not an RGB super-resolution model (scale ×2 or more)")
    model.to(torch.device(device)).eval()
    image = image.convert("RGB")
    for _ in range(MAX_PASSES):
        if image.width >= width and image.height >= height:
            break
        image = _run_tiled(model, image, torch.device(device))
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def _run_tiled(model, image: Image.Image, device) -> Image.Image:
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    _, _, h, w = pixels.shape
    s = model.scale
    out = torch.zeros(1, 3, h * s, w * s)
    for top in range(0, h, TILE):
        for left in range(0, w, TILE):
            y0, x0 = max(0, top - OVERLAP), max(0, left - OVERLAP)
            y1, x1 = min(h, top + TILE + OVERLAP), min(w, left + TILE + OVERLAP)
            tile = model(pixels[:, :, y0:y1, x0:x1].to(device)).float().cpu()
            th, tw = min(TILE, h - top), min(TILE, w - left)
            dy, dx = (top - y0) * s, (left - x0) * s
            out[:, :, top * s : (top + th) * s, left * s : (left + tw) * s] = tile[
                :, :, dy : dy + th * s, dx : dx + tw * s
            ]
    array = (out[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array)
