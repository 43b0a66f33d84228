"""Gallery figures for `atelier bench --json`: search and page latency over many generated rows.

Rows are seeded in bulk straight into the tables (the triggers keep FTS in sync), sharing a few
real files; the timed calls all go through the Gallery facade, as the UI's would.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image
from sqlalchemy import insert, select

from pipelines.recipe import LoraRef, ModelRef, Recipe
from storage.files import make_thumbnail
from storage.gallery import Gallery
from storage.models import FileRow, GenerationFileRow, GenerationLoraRow, GenerationRow
from storage.search import encode_cursor

MODELS = ("sdxl-base-1.0", "juggernaut-xl", "dreamshaper-xl", "animagine-xl", "tiny")
LORAS = ("ink-style", "film-grain", "pixel-art", "watercolor")
KIND_WEIGHTS = (("draft", 5), ("refined", 2), ("txt2img", 2), ("img2img", 1), ("controlnet", 1))
WORDS = [
    "portrait",
    "landscape",
    "castle",
    "forest",
    "river",
    "mountain",
    "city",
    "street",
    "night",
    "sunset",
    "dawn",
    "fog",
    "rain",
    "snow",
    "dragon",
    "knight",
    "wizard",
    "robot",
    "cat",
    "dog",
    "fox",
    "owl",
    "horse",
    "whale",
    "ship",
    "train",
    "car",
    "bicycle",
    "lantern",
    "candle",
    "garden",
    "desert",
    "ocean",
    "island",
    "temple",
    "tower",
    "bridge",
    "market",
    "cafe",
    "library",
    "studio",
    "kitchen",
    "window",
    "mirror",
    "red",
    "blue",
    "green",
    "golden",
    "silver",
    "purple",
    "crimson",
    "amber",
    "teal",
    "ivory",
    "black",
    "white",
    "pastel",
    "neon",
    "vivid",
    "muted",
    "cinematic",
    "photographic",
    "painterly",
    "detailed",
    "intricate",
    "minimal",
    "dramatic",
    "soft",
    "moody",
    "bright",
    "dark",
    "epic",
    "oil",
    "watercolor",
    "ink",
    "charcoal",
    "pencil",
    "digital",
    "render",
    "illustration",
    "sketch",
    "poster",
    "photo",
    "closeup",
    "wide",
]
RARE_WORD, RARE_EVERY = "aurora", 997  # in about 0.1% of prompts
CHUNK = 5_000


def gallery_figures(workdir: Path, rows: int = 100_000, *, samples: int = 40, seed: int = 0) -> dict:
    home = Path(workdir) / "gallery-bench"
    if home.exists():
        shutil.rmtree(home)
    rng = random.Random(seed)
    gallery = Gallery.open(home)
    try:
        started = time.perf_counter()
        _seed(gallery, rows, rng)
        seed_s = time.perf_counter() - started
        common = WORDS[0]  # the Zipf-like draw puts it in most prompts
        rare = RARE_WORD
        deep = _cursor_at(gallery, int(rows * 0.9))
        figures = {
            "rows": rows,
            "seed_s": round(seed_s, 2),
            "fts_common_word_ms": _timed(lambda: gallery.search(common), samples),
            "fts_rare_word_ms": _timed(lambda: gallery.search(rare), samples),
            "fts_two_words_ms": _timed(lambda: gallery.search(f"{WORDS[3]} {WORDS[10]}"), samples),
            "filtered_ms": _timed(
                lambda: gallery.search(None, model=MODELS[1], kind="refined", favourite=True), samples
            ),
            "fts_filtered_ms": _timed(lambda: gallery.search(common, model=MODELS[0], lora=LORAS[0]), samples),
            "page_first_ms": _timed(lambda: gallery.list(limit=50), samples),
            "page_deep_ms": _timed(lambda: gallery.list(limit=50, after=deep), samples),
            "page_walk_ms": _walk(gallery, pages=min(200, max(1, rows // 50))),
            "page_size": 50,
            "depth_of_deep_page": int(rows * 0.9),
        }
    finally:
        gallery.close()
    return figures


def _timed(call: Callable[[], object], samples: int) -> dict:
    call()  # warm the page cache and statement cache
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return _summary(times)


def _summary(times: list[float]) -> dict:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median": round(statistics.median(ordered), 3), "p95": round(p95, 3), "n": len(ordered)}


def _walk(gallery: Gallery, pages: int) -> dict:
    """Latency of each page while following next_cursor from the newest page down."""
    times, cursor = [], None
    for _ in range(pages):
        start = time.perf_counter()
        page = gallery.list(limit=50, after=cursor)
        times.append((time.perf_counter() - start) * 1000)
        cursor = page.next_cursor
        if cursor is None:
            break
    return _summary(times)


def _cursor_at(gallery: Gallery, depth: int) -> str | None:
    with gallery.db.reading() as session:
        found = session.scalar(
            select(GenerationRow.id).order_by(GenerationRow.id.desc()).offset(max(0, depth - 1)).limit(1)
        )
    return encode_cursor(found) if found else None


def _seed(gallery: Gallery, rows: int, rng: random.Random) -> None:
    files = _shared_files(gallery, count=16)
    template = Recipe(model=ModelRef("tiny"), prompt="", seed=0).to_dict()
    kinds = [k for k, w in KIND_WEIGHTS for _ in range(w)]
    weights = [1.0 / (i + 1) for i in range(len(WORDS))]
    start = datetime.now(UTC) - timedelta(days=365)
    step = timedelta(days=365) / max(rows, 1)
    with gallery.db.writing() as session:
        session.execute(insert(FileRow), [f for pair in files for f in pair])
        for first in range(0, rows, CHUNK):
            generations, links, loras = [], [], []
            for n in range(first, min(rows, first + CHUNK)):
                gen_id = n + 1
                prompt = " ".join(rng.choices(WORDS, weights, k=rng.randint(6, 14)))
                if n % RARE_EVERY == 0:
                    prompt += f" {RARE_WORD}"
                model = MODELS[n % len(MODELS)]
                used = [LoraRef(LORAS[n % len(LORAS)], weight=0.8)] if n % 3 == 0 else []
                recipe = dict(
                    template,
                    prompt=prompt,
                    negative_prompt="blurry, lowres",
                    seed=n,
                    model=dict(template["model"], name=model),
                    loras=[{"name": lora.name, "sha256": None, "weight": lora.weight} for lora in used],
                )
                image, thumb = files[n % len(files)][0], files[n % len(files)][1]
                generations.append(
                    dict(
                        id=gen_id,
                        created_at=start + step * n,
                        kind=rng.choice(kinds),
                        parent_id=None,
                        batch_id=None,
                        recipe_json=json.dumps(recipe, sort_keys=True, separators=(",", ":")),
                        prompt=prompt,
                        negative="blurry, lowres",
                        seed=n,
                        model_name=model,
                        model_sha256=None,
                        scheduler="Euler",
                        steps=30,
                        guidance=5.0,
                        width=1024,
                        height=1024,
                        switch=0.8,
                        strength=None,
                        image_sha256=image["sha256"],
                        favourite=n % 20 == 0,
                        files_missing=False,
                    )
                )
                links.append(dict(generation_id=gen_id, role="image", sha256=image["sha256"]))
                links.append(dict(generation_id=gen_id, role="thumbnail", sha256=thumb["sha256"]))
                loras.extend(
                    dict(generation_id=gen_id, position=i, name=lora.name, sha256=None, weight=lora.weight)
                    for i, lora in enumerate(used)
                )
            session.execute(insert(GenerationRow), generations)
            session.execute(insert(GenerationFileRow), links)
            if loras:
                session.execute(insert(GenerationLoraRow), loras)


def _shared_files(gallery: Gallery, count: int) -> list[tuple[dict, dict]]:
    """`count` real PNGs and their thumbnails on disk, as rows for the files table."""
    out = []
    for n in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (n * 15 % 256, 80, 160)).save(buffer, "PNG")
        pair = []
        for role, data in (("image", buffer.getvalue()), ("thumbnail", make_thumbnail(buffer.getvalue()))):
            sha, relative, _ = gallery.files.put(data)
            pair.append(dict(sha256=sha, role=role, relative_path=relative, size=len(data)))
        out.append((pair[0], pair[1]))
    return out
