"""Crash test: a writer process is SIGKILLed at random points, again and again; after each restart
the database is intact, every row's files exist with their sha256, and no stray file remains."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.gallery import Gallery
from storage_checks import consistency_problems

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 30


def _wait_for_saves(log: Path, saves: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the writer has opened the gallery and reported `saves` saves (robust to a slow machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().split("\n") if log.exists() else []
        if "open" in lines and sum(line.startswith("saved") for line in lines) >= saves:
            return
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early with {proc.returncode}: {proc.stderr.read().decode()}")
        time.sleep(0.01)
    raise AssertionError("writer did not start")


@pytest.mark.slow
def test_sigkill_at_random_points_never_leaves_damage(home):
    rng = random.Random(20250101)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    reported: set[int] = set()
    uncertain: set[int] = set()
    total_saved = 0
    for round_ in range(ROUNDS):
        log = home.parent / f"writer-{round_}.log"
        proc = subprocess.Popen([sys.executable, str(WRITER), str(home), str(round_ + 1), str(log)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if round_ % 6 == 5:
            time.sleep(rng.uniform(0.0, 1.0))  # may land during start-up: migration or sweep
        else:
            _wait_for_saves(log, rng.randint(0, 12), proc)
            time.sleep(rng.uniform(0.0, 0.05))  # then a random point inside a later save or delete
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        for line in (log.read_text().splitlines() if log.exists() else []):
            word, _, value = line.partition(" ")
            if word == "saved":
                reported.add(int(value))
                total_saved += 1
            elif word == "deleting":
                uncertain.add(int(value))
            elif word == "deleted":
                reported.discard(int(value))
                uncertain.discard(int(value))
        with Gallery.open(home) as gallery:  # the restart: migration check and sweep
            assert gallery.sweep_report is not None
        problems = consistency_problems(home)
        assert problems == [], f"round {round_}: {problems}"
        con = sqlite3.connect(home / "gallery.db")
        ids = {r[0] for r in con.execute("SELECT id FROM generations")}
        flagged = con.execute("SELECT count(*) FROM generations WHERE files_missing").fetchone()[0]
        con.close()
        assert flagged == 0, f"round {round_}: a row was committed before its files"
        lost = reported - ids - uncertain
        assert not lost, f"round {round_}: generations reported as saved are gone: {sorted(lost)}"
        reported &= ids
        uncertain &= ids
    assert total_saved >= 4 * ROUNDS  # the kills really landed among many saves
