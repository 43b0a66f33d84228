"""The bench figures' shape on a small gallery, and the storage layer's import boundary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storage.bench import RARE_EVERY, gallery_figures
from storage.gallery import Gallery

ROOT = Path(__file__).resolve().parents[2]


def test_gallery_figures_on_a_small_gallery(tmp_path):
    figures = gallery_figures(tmp_path, rows=3000, samples=5)
    assert figures["rows"] == 3000
    for key in (
        "fts_common_word_ms",
        "fts_rare_word_ms",
        "filtered_ms",
        "page_first_ms",
        "page_deep_ms",
        "page_walk_ms",
    ):
        assert 0 < figures[key]["median"] <= figures[key]["p95"], key
    with Gallery.open(tmp_path / "gallery-bench") as gallery:  # the seeded rows are real, searchable rows
        rare = gallery.search("aurora", limit=100)
        assert len(rare.items) == len(range(0, 3000, RARE_EVERY))
        assert all("aurora" in g.recipe.prompt for g in rare.items)
        assert len(gallery.list(limit=1000).items) == 1000


def test_storage_never_imports_torch_diffusers_or_gradio():
    code = (
        "import sys, storage.gallery, storage.bench, atelier.commands.gallery; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
