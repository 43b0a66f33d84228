"""`atelier bench`: what happens after the VAE decode — post-processing cost and whether the device waits for it.

- `postprocess_figures`: per 1024² image, the CPU time of watermark + PNG encode + sha256 (median,
  `postprocess_ms_1024`), each part alone, the imwatermark library's own embed for comparison, and the
  PNG size/time of every zlib level (the table behind `PNG_SAVE_OPTIONS`).
- `device_busy_figures`: a queue of drafts, each its own engine run (`Studio.draft_each`), saved
  serially (`save_workers=0`) and pipelined (saves on the pool while the device makes the next draft);
  `device_busy_fraction` = time inside UNet/VAE forwards ÷ wall time. On CPU, torch gets one thread
  and the pool the other core, so the figure means the same as on a GPU: is the device kept busy?
  Also a queue of one-draft jobs as the web queue runs them: each job keeping the device until its saves
  are done (`jobs_one_at_a_time`) or handing it to the next job meanwhile (`jobs_handing_over`).
"""

from __future__ import annotations

import hashlib
import io
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atelier import device_lease
from atelier.device_lease import DeviceLease, FairSlots
from pipelines.provenance.png_metadata import PNG_SAVE_OPTIONS, encode_png
from pipelines.provenance.watermark import METHOD, WATERMARK_BITS, apply_watermark
from pipelines.recipe import ModelRef, Recipe

SIDE = 1024


def photo_like(side: int = SIDE, seed: int = 0) -> Image.Image:
    """A smooth, non-flat synthetic photo (gradients, soft shapes, texture, sensor noise): PNG-typical output."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    u, v = x / side, y / side
    img = np.stack([60 + 140 * u, 80 + 100 * v, 170 - 90 * u * v], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(0.05, 0.25) * side
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - 0.7 * blob) + rng.uniform(0, 255, 3) * 0.7 * blob
    img[int(side * 0.65) :] *= 0.6
    img += 12 * np.sin(x / 7.0 + y / 11.0)[..., None]
    img += rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def sample_images(side: int = SIDE) -> dict[str, Image.Image]:
    """The synthetic photo, and scikit-image's astronaut (a real photograph) when it is installed."""
    images = {"photo_like": photo_like(side)}
    try:
        from skimage import data  # noqa: F401 (only to find its folder)

        path = Path(data.__file__).parent / "astronaut.png"
        images["astronaut"] = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    except (ImportError, OSError):
        pass
    return images


def _cpu_ms(work: Callable[[], Any], repeats: int) -> float:
    """Median CPU time of `work` on this thread, in ms (a shared machine's load does not inflate it)."""
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        work()
        times.append(time.thread_time() - start)
    return 1000 * statistics.median(times)


def _library_watermark(image: Image.Image) -> None:
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    encoder.encode(np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1].copy(), METHOD)


def postprocess_figures(repeats: int = 5) -> dict[str, Any]:
    images = sample_images()
    recipe = Recipe(model=ModelRef("tiny"), prompt="bench", seed=1, width=SIDE, height=SIDE)

    def postprocess(image: Image.Image) -> None:
        marked, _ = apply_watermark(image)
        hashlib.sha256(encode_png(marked, recipe)).hexdigest()

    per_image = {name: _cpu_ms(lambda i=image: postprocess(i), repeats) for name, image in images.items()}
    photo = images["photo_like"]
    marked = apply_watermark(photo)[0]
    png = encode_png(marked, recipe)
    return {
        "postprocess_ms_1024": max(per_image.values()),  # the slower sample
        "postprocess_ms_1024_by_image": per_image,
        "watermark_ms_1024": _cpu_ms(lambda: apply_watermark(photo), repeats),
        "watermark_library_ms_1024": _cpu_ms(lambda: _library_watermark(photo), max(1, repeats // 2)),
        "png_encode_ms_1024": _cpu_ms(lambda: encode_png(marked, recipe), repeats),
        "sha256_ms_1024": _cpu_ms(lambda: hashlib.sha256(png).hexdigest(), repeats),
        "png_options": {k: int(v) for k, v in PNG_SAVE_OPTIONS.items()},
        "png_levels_1024": png_level_table(images, repeats=max(1, repeats // 2)),
    }


def png_level_table(images: dict[str, Image.Image], repeats: int = 3) -> list[dict[str, Any]]:
    """PNG size (KiB) and CPU ms of each zlib level 0–9 (Pillow's default filters and strategy), and the chosen
    options, per sample image."""
    rows = []
    settings = [({"compress_level": level}, f"level {level}") for level in range(10)]
    settings.append((PNG_SAVE_OPTIONS, "chosen: level 1, Z_RLE"))
    for options, label in settings:
        row: dict[str, Any] = {"setting": label}
        for name, image in images.items():
            size = len(_png(image, options))
            ms = _cpu_ms(lambda i=image, o=options: _png(i, o), repeats)
            row[name] = {"kib": round(size / 1024), "ms": round(ms, 1)}
        rows.append(row)
    return rows


def _png(image: Image.Image, options: dict[str, int]) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


# -- does the device wait for the CPU? ------------------------------------------------------------


class _ForwardClock:
    """Wall time spent inside the forwards of some modules (hooks; nested calls counted once each)."""

    def __init__(self, modules) -> None:
        self.seconds = 0.0
        self._handles = []
        for module in modules:
            started: list[float] = []
            self._handles.append(module.register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter())))
            self._handles.append(module.register_forward_hook(lambda *_, s=started: self._add(s)))

    def _add(self, started: list[float]) -> None:
        self.seconds += time.perf_counter() - started.pop()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def device_busy_figures(
    home: Path, *, jobs: int = 8, size: int = 512, steps: int = 2, repeats: int = 2, device: str | None = None
) -> dict[str, Any]:
    """device_busy_fraction for `jobs` drafts saved serially and pipelined, on the tiny model.

    Both studios are warmed with the same recipes first (models loaded, prompts encoded and cached), then
    measured alternately `repeats` times; medians. The rest of the wall time is the device thread's own
    CPU work (scheduler, previews, watermark) and, when serial, the saves."""
    import torch

    from atelier.studio import Studio

    threads = torch.get_num_threads()
    if device in (None, "cpu"):
        torch.set_num_threads(1)  # torch on one core, the save pool on the other
    recipes = [
        Recipe(model=ModelRef("tiny"), prompt=f"a lighthouse, job {i}", seed=i, steps=steps, width=size, height=size)
        for i in range(jobs)
    ]
    modes = {"serial": 0, "pipelined": 1}
    queue_modes = {"jobs_one_at_a_time": False, "jobs_handing_over": True}  # one draft per job, as the web queue
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in (*modes, *queue_modes)}
    try:
        studios = {mode: Studio(home / mode, device=device, save_workers=w) for mode, w in modes.items()}
        try:
            for studio in studios.values():
                studio.draft_each(recipes)  # warm-up: models loaded, prompts cached, first calls allocate
            for _ in range(repeats):
                for mode, studio in studios.items():
                    runs[mode].append(_timed_queue(studio, recipes))
                for mode, hand_over in queue_modes.items():
                    runs[mode].append(_timed_job_queue(studios["pipelined"], recipes, hand_over=hand_over))
        finally:
            for studio in studios.values():
                studio.close()
    finally:
        torch.set_num_threads(threads)
    figures: dict[str, Any] = {"jobs": jobs, "size": size, "steps": steps, "repeats": repeats}
    for mode, measured in runs.items():
        wall = statistics.median(w for w, _ in measured)
        busy = statistics.median(d / w for w, d in measured)
        figures[mode] = {"wall_s": round(wall, 3), "device_busy_fraction": round(busy, 3)}
    figures["device_busy_fraction"] = {mode: figures[mode]["device_busy_fraction"] for mode in runs}
    return figures


def _timed_queue(studio, recipes: list[Recipe]) -> tuple[float, float]:
    """(wall seconds, seconds inside UNet/VAE forwards) of one queue of drafts."""
    return _timed(studio, lambda: studio.draft_each(recipes))


def _timed_job_queue(studio, recipes: list[Recipe], *, hand_over: bool) -> tuple[float, float]:
    """The same for one job per recipe, each on its own thread taking the device's one slot in turn as the web
    queue's jobs do (webui.jobs.GpuJobs); `hand_over`: a job gives its slot up once only its saves remain."""
    slots = FairSlots(1)

    def job(recipe: Recipe) -> None:
        slots.acquire()
        lease = DeviceLease(slots)
        device_lease.hold(lease if hand_over else None)  # without a lease, the slot is kept until the job ends
        try:
            studio.draft(recipe, 1)
        finally:
            lease.end()

    def run_all() -> None:
        threads = [threading.Thread(target=job, args=(recipe,)) for recipe in recipes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return _timed(studio, run_all)


def _timed(studio, work: Callable[[], Any]) -> tuple[float, float]:
    pipe = studio.models.load_base("tiny").pipe
    clock = _ForwardClock([pipe.unet, pipe.vae.decoder, pipe.vae.encoder])
    try:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start, clock.seconds
    finally:
        clock.close()
