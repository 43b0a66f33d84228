"""ControlNet preprocessors (controlnet-aux): a control image in, the map a ControlNet sees out.

Canny, content shuffle and lineart-standard need no weights and always work. Detectors that need
annotator weights (depth, HED, openpose, …) are offered only when their weight file is present
locally — in <models>/annotators or in the Hugging Face cache of lllyasviel/Annotators; asking
for one that is missing says which file to download and where to put it. Maps are made at the
image's own size (the caller fits the image to the generation size first), so what is stored is
exactly what the ControlNet saw.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ANNOTATORS_REPO = "lllyasviel/Annotators"
# name -> (defaults); values are numbers so they fit ControlUnit.params
OFFLINE = {
    "none": {},
    "canny": {"low": 100.0, "high": 200.0},
    "shuffle": {"seed": 0.0},
    "lineart_standard": {"gaussian_sigma": 6.0, "intensity_threshold": 8.0},
}
# name -> (controlnet_aux class, weight file in lllyasviel/Annotators)
NEEDS_WEIGHTS = {
    "depth_midas": ("MidasDetector", "dpt_hybrid-midas-501f0c75.pt"),
    "hed": ("HEDdetector", "ControlNetHED.pth"),
    "pidinet": ("PidiNetDetector", "table5_pidinet.pth"),
    "lineart": ("LineartDetector", "sk_model.pth"),
    "lineart_anime": ("LineartAnimeDetector", "netG.pth"),
    "openpose": ("OpenposeDetector", "body_pose_model.pth"),
    "mlsd": ("MLSDdetector", "mlsd_large_512_fp32.pth"),
    "normalbae": ("NormalBaeDetector", "scannet.pt"),
}
ALL = tuple(OFFLINE) + tuple(NEEDS_WEIGHTS)


def annotator_file(name: str, annotators_dir: Path | None) -> Path | None:
    """The local weight file of an annotator-based detector, or None when it is not here."""
    filename = NEEDS_WEIGHTS[name][1]
    if annotators_dir is not None and (Path(annotators_dir) / filename).is_file():
        return Path(annotators_dir) / filename
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ANNOTATORS_REPO, filename)
    except Exception:  # a malformed cache is the same as no cache
        return None
    return Path(cached) if isinstance(cached, str) else None


def available(annotators_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every preprocessor with whether it can run here, its settings, and what to download if not."""
    rows: list[dict[str, Any]] = [{"name": n, "ready": True, "params": dict(p)} for n, p in OFFLINE.items()]
    for name in NEEDS_WEIGHTS:
        found = annotator_file(name, annotators_dir)
        row: dict[str, Any] = {"name": name, "ready": found is not None, "params": {}}
        if found is None:
            row["missing"] = _missing_message(name, annotators_dir)
        rows.append(row)
    return rows


def _missing_message(name: str, annotators_dir: Path | None) -> str:
    filename = NEEDS_WEIGHTS[name][1]
    where = annotators_dir or "<models folder>/annotators"
    return (
        f"the {name} preprocessor needs the annotator weights {filename!r}: download it from "
        f"https://huggingface.co/{ANNOTATORS_REPO}/blob/main/{filename} and put it in {where} "
        f"(or have {ANNOTATORS_REPO} in the Hugging Face cache); or pass a ready-made map with preprocessor 'none'"
    )


def check_params(name: str, params: dict[str, float] | None) -> tuple[tuple[str, float], ...]:
    """The preprocessor's settings with defaults filled in, as sorted (name, value) pairs; ValueError if unknown."""
    if name not in ALL:
        raise ValueError(f"preprocessor: must be one of {', '.join(ALL)} (got {name!r})")
    allowed = OFFLINE.get(name, {})
    merged = dict(allowed)
    for key, value in (params or {}).items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise ValueError(f"preprocessor {name}: unknown setting {key!r} (settings: {known})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"preprocessor {name}: setting {key} must be a number (got {value!r})")
        merged[key] = float(value)
    if name == "canny" and not 0 <= merged["low"] <= merged["high"] <= 255:
        raise ValueError(
            f"preprocessor canny: thresholds must satisfy 0 <= low <= high <= 255 (got {merged['low']}, {merged['high']})"
        )
    return tuple(sorted(merged.items()))


def preprocess(
    name: str, image: Image.Image, params: tuple[tuple[str, float], ...] = (), annotators_dir: Path | None = None
) -> Image.Image:
    """The control map for `image`, at the image's size, RGB."""
    settings = dict(check_params(name, dict(params)))
    image = image.convert("RGB")
    width, height = image.size
    resolution = min(width, height)
    if name == "none":
        return image
    if name == "canny":
        from controlnet_aux import CannyDetector

        out = CannyDetector()(
            image,
            low_threshold=int(settings["low"]),
            high_threshold=int(settings["high"]),
            detect_resolution=resolution,
            image_resolution=resolution,
            output_type="pil",
        )
    elif name == "shuffle":
        from controlnet_aux import ContentShuffleDetector

        with _numpy_seed(int(settings["seed"])):  # the shuffle is random: seeded so a map can be made again
            out = ContentShuffleDetector()(
                image, detect_resolution=resolution, image_resolution=resolution, output_type="pil"
            )
    elif name == "lineart_standard":
        from controlnet_aux import LineartStandardDetector

        out = LineartStandardDetector()(
            image,
            guassian_sigma=settings["gaussian_sigma"],
            intensity_threshold=int(settings["intensity_threshold"]),
            detect_resolution=resolution,
            output_type="pil",
        )
    else:
        out = _annotator(name, annotators_dir)(
            image, detect_resolution=resolution, image_resolution=resolution, output_type="pil"
        )
    out = out.convert("RGB")
    return out if out.size == (width, height) else out.resize((width, height), Image.Resampling.BILINEAR)


def _annotator(name: str, annotators_dir: Path | None) -> Any:
    found = annotator_file(name, annotators_dir)
    if found is None:
        raise ValueError(_missing_message(name, annotators_dir))
    import controlnet_aux

    detector = getattr(controlnet_aux, NEEDS_WEIGHTS[name][0])
    return detector.from_pretrained(str(found.parent), filename=found.name)


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)
