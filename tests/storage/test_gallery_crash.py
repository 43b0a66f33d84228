"""Crash test: a writer process is SIGKILLed at random points, again and again; after each restart
the database is intact, every row's files exist with their sha256, and no stray file remains."""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from storage_checks import consistency_problems

from storage.gallery import Gallery

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 30


class Writer:
    """One `crash_writer.py HOME SEED LOG`, forked by the writer server, with the subprocess.Popen calls
    the test makes (poll, returncode, send_signal, wait, stderr)."""

    def __init__(self, server: subprocess.Popen, home: Path, seed: int, log: Path):
        self._server, self._stderr, self.returncode = server, log.with_suffix(".stderr"), None
        server.stdin.write(f"{home}\t{seed}\t{log}\t{self._stderr}\n".encode())
        server.stdin.flush()
        self.pid = int(self._line())

    def _line(self) -> bytes:
        line = self._server.stdout.readline()  # unbuffered: never reads past this line
        if not line:
            raise AssertionError(f"the writer server ended with {self._server.wait()}")
        return line

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._server.stdout], [], [], 0)[0]:
            self.returncode = int(self._line())
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = int(self._line())
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)  # safe even once it has ended: the server reaps it only at the next round

    @property
    def stderr(self):
        return open(self._stderr, "rb") if self._stderr.exists() else open(os.devnull, "rb")


@pytest.fixture(scope="module")
def start_writer():
    """start_writer(home, seed, log) -> Writer, forked by `crash_writer.py --serve` (which imports storage
    once); a writer still running at the end (a failed test) is killed."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    server = subprocess.Popen(
        [sys.executable, str(WRITER), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
    )
    started: list[Writer] = []

    def start(home: Path, seed: int, log: Path) -> Writer:
        started.append(Writer(server, home, seed, log))
        return started[-1]

    yield start
    if started and started[-1].poll() is None:
        started[-1].send_signal(signal.SIGKILL)
        started[-1].wait()
    server.stdin.close()
    server.wait(timeout=60)


def _wait_for_saves(log: Path, saves: int, proc: Writer, timeout: float = 60.0) -> None:
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
@pytest.mark.crash
def test_sigkill_at_random_points_never_leaves_damage(home, start_writer):
    rng = random.Random(20250101)
    reported: set[int] = set()
    uncertain: set[int] = set()
    total_saved = 0
    for round_ in range(ROUNDS):
        log = home.parent / f"writer-{round_}.log"
        proc = start_writer(home, round_ + 1, log)
        if round_ % 6 == 5:
            time.sleep(rng.uniform(0.0, 1.0))  # may land during start-up: migration or sweep
        else:
            _wait_for_saves(log, rng.randint(0, 12), proc)
            time.sleep(rng.uniform(0.0, 0.05))  # then a random point inside a later save or delete
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        for line in log.read_text().splitlines() if log.exists() else []:
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
