"""Saves off the device's path: the pool's order, bound and errors; pipelined Studio saves equal serial ones;
the post-processing bench runs (tiny sizes) and reports its figures."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from atelier.studio_saving import SavePool, results


def test_commits_run_in_submission_order_on_one_thread():
    pool = SavePool(workers=2, max_pending=8)
    order, threads = [], set()

    def slow_first(i):  # the first encode is the slowest: its commit must still come first
        time.sleep(0.05 if i == 0 else 0.0)
        return i

    def commit(i):
        order.append(i)
        threads.add(threading.current_thread().name)
        return i * 10

    commits = [pool.commit(pool.encode(lambda i=i: slow_first(i)), commit) for i in range(6)]
    assert results(commits) == [0, 10, 20, 30, 40, 50]
    assert order == list(range(6)) and len(threads) == 1
    pool.close()


def test_encodes_are_bounded():
    pool = SavePool(workers=1, max_pending=2)
    release = threading.Event()
    pool.encode(release.wait)
    pool.encode(release.wait)
    third_submitted = threading.Event()
    submitter = threading.Thread(target=lambda: (pool.encode(lambda: None), third_submitted.set()))
    submitter.start()
    assert not third_submitted.wait(0.3)  # blocked: two encodes are in flight
    release.set()
    assert third_submitted.wait(5)
    submitter.join()
    pool.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_reaches_the_caller_and_later_saves_still_run(workers):
    pool = SavePool(workers=workers)
    done = []
    bad = pool.commit(pool.encode(lambda: 1 / 0), done.append)
    good = pool.commit(pool.encode(lambda: "ok"), done.append)
    with pytest.raises(ZeroDivisionError):
        results([bad, good])
    assert good.result() is None and done == ["ok"]
    pool.close()


def test_inline_pool_runs_in_the_callers_thread():
    pool = SavePool(workers=0)
    where = pool.commit(pool.encode(lambda: threading.current_thread()), lambda t: t is threading.current_thread())
    assert where.result() is True


def _pixels(path) -> bytes:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).tobytes()


def _latent(path) -> tuple:
    """A kept latent's tensors and metadata (safetensors writes its header keys in no fixed order)."""
    from pipelines.engine.kept_latent import KeptLatent

    kept = KeptLatent.from_bytes(path.read_bytes())
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    return kept.tensor.numpy().tobytes(), header["__metadata__"]


def test_pipelined_draft_each_saves_what_serial_saves(tmp_path, tiny_model_dir, tiny_recipe):
    from atelier.studio import Studio
    from tests.conftest import tiny_home_at

    recipes = [tiny_recipe(seed=s, width=256, height=256, steps=2) for s in (3, 4, 5)]
    made = {}
    for mode, workers in (("serial", 0), ("pipelined", 2)):
        with Studio(tiny_home_at(tmp_path / mode, tiny_model_dir), device="cpu", save_workers=workers) as studio:
            saved = studio.draft_each(recipes)
            rows = [studio.gallery.get(s.id) for s in saved]
            assert [s.id for s in saved] == sorted(s.id for s in saved)  # committed in draft order
            assert [r.recipe.seed for r in rows] == [3, 4, 5] and len({r.batch_id for r in rows}) == 1
            assert all(s.image.exists() and s.latent and s.latent.exists() for s in saved)
            made[mode] = [(s.image.read_bytes(), _latent(s.latent)) for s in saved]
    assert made["serial"] == made["pipelined"]  # the same PNG bytes and latents, whichever thread encoded them


def test_a_failing_draft_keeps_those_already_saved(tmp_path, tiny_model_dir, tiny_recipe):
    from atelier.studio import Cancelled, Studio
    from tests.conftest import tiny_home_at

    recipes = [tiny_recipe(seed=s, width=64, height=64, steps=2) for s in (7, 8)]
    calls = {"n": 0}

    def cancel_second_draft():
        return calls["n"] >= 1

    with Studio(tiny_home_at(tmp_path / "home", tiny_model_dir), device="cpu", save_workers=1) as studio:
        real_draft = studio.engine.draft

        def counting(*args, **kwargs):
            try:
                return real_draft(*args, **kwargs)
            finally:
                calls["n"] += 1

        studio.engine.draft = counting
        with pytest.raises(Cancelled):
            studio.draft_each(recipes, should_cancel=cancel_second_draft)
        page = studio.search()
        assert [g.recipe.seed for g in page.items] == [7]  # the first draft is in the gallery, whole
        assert page.items[0].image_path.exists() and page.items[0].latent_path.exists()


def test_postprocess_bench_figures():
    from atelier.bench_postprocess import postprocess_figures

    figures = postprocess_figures(repeats=1)
    assert 0 < figures["watermark_ms_1024"] < figures["watermark_library_ms_1024"]
    assert figures["postprocess_ms_1024"] >= figures["png_encode_ms_1024"]
    assert figures["postprocess_ms_1024"] < 200  # ≈ 80–90 ms measured; the README has the figure
    levels = figures["png_levels_1024"]
    assert [row["setting"] for row in levels][:10] == [f"level {n}" for n in range(10)]
    chosen, default = levels[-1]["photo_like"], levels[6]["photo_like"]
    assert chosen["kib"] <= default["kib"]  # the chosen setting's files are no larger than Pillow's default


def test_device_busy_bench_runs_at_tiny_size(tmp_path, tiny_model_dir):
    from atelier.bench_postprocess import device_busy_figures
    from tests.conftest import tiny_home_at

    for mode in ("serial", "pipelined"):
        tiny_home_at(tmp_path / mode, tiny_model_dir)
    figures = device_busy_figures(tmp_path, jobs=2, size=64, steps=2, repeats=1, device="cpu")
    for mode in ("serial", "pipelined", "jobs_one_at_a_time", "jobs_handing_over"):
        assert 0 < figures[mode]["device_busy_fraction"] <= 1
    assert set(figures["device_busy_fraction"]) == {"serial", "pipelined", "jobs_one_at_a_time", "jobs_handing_over"}
