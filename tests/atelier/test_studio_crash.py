"""Crash test at the Studio level: `atelier draft --sweep` saves each draft on the save pool while the device
makes the next (atelier/studio_saving.py), and is SIGKILLed at random moments while it does. After each
kill and restart the gallery passes the crash test's checks (tests/storage/test_gallery_crash.py), and
every draft committed before any kill is still there with its files."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from storage.gallery import Gallery
from tests.storage.storage_checks import consistency_problems

pytestmark = pytest.mark.crash
ROUNDS = 3
DRAFTS = 8


def _committed(home) -> set[int]:
    """Ids of the generations committed (read-only)."""
    if not (home / "gallery.db").exists():
        return set()
    with sqlite3.connect(f"file:{home / 'gallery.db'}?mode=ro", uri=True, timeout=5) as con:
        return {row[0] for row in con.execute("SELECT id FROM generations")}


def _images_on_disk(home) -> int:
    """Gallery images written so far (their rows commit right after): the writer's progress, seen without
    reading a database it may be making or recovering."""
    return sum(1 for path in (home / "files").rglob("*.png") if not path.name.startswith("."))


def _sweep_command(home, round_: int) -> list[str]:
    values = ",".join(str(g) for g in range(1, DRAFTS + 1))
    return [
        *(sys.executable, "-m", "atelier.cli", "draft", "--home", str(home), "--local"),
        *("--model", "tiny", "--refiner", "tiny", "--prompt", f"a lighthouse, round {round_}"),
        *("--steps", "8", "--width", "256", "--height", "256", "--sweep", f"guidance={values}"),
    ]


def test_a_draft_queue_killed_while_saving_loses_nothing_committed(tiny_home):
    rng = random.Random(7)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    kept: set[int] = set()
    for round_ in range(ROUNDS):
        before, images_before = _committed(tiny_home), _images_on_disk(tiny_home)
        writer = subprocess.Popen(
            _sweep_command(tiny_home, round_), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 300
        while _images_on_disk(tiny_home) - images_before < 2:  # saves under way, more drafts to come
            assert writer.poll() is None, (
                f"round {round_}: the draft ended before the kill: {writer.stderr.read().decode()[-3000:]}"
            )
            assert time.monotonic() < deadline, "no draft was saved in time"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        kept |= before
        committed = _committed(tiny_home)
        assert kept <= committed, f"committed before an earlier kill, now gone: {sorted(kept - committed)}"
        assert len(committed - before) < DRAFTS, "the queue finished before the kill: nothing was tested"
        with Gallery.open(tiny_home):  # the restart: its sweep removes the killed saves' debris
            pass
        assert consistency_problems(tiny_home, after_sweep=True) == []
        kept |= committed
    assert len(kept) >= 2 * ROUNDS
