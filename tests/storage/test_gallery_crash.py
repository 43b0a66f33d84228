"""Crash test: a writer process is SIGKILLed at random points, again and again; after each restart
the database is intact, every row's files exist with their sha256, and no stray file remains. Once with
the gallery on SQLite, once on a real PostgreSQL server."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from postgres_server import empty_postgres
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool
from storage_checks import consistency_problems

from storage.gallery import Gallery

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 30  # about 12 s on SQLite, 25 s on PostgreSQL (2 busy cores)
WRITER_APPLICATION = "atelier-crash-writer"  # how the test tells the writer's PostgreSQL sessions from its own


class Writer:
    """One `crash_writer.py HOME SEED LOG URL`, forked by the writer server, with the subprocess.Popen calls
    the test makes (poll, returncode, send_signal, wait, stderr)."""

    def __init__(self, server: subprocess.Popen, home: Path, seed: int, log: Path, url: str | None):
        self._server, self._stderr, self.returncode = server, log.with_suffix(".stderr"), None
        server.stdin.write(f"{home}\t{seed}\t{log}\t{self._stderr}\t{url or ''}\n".encode())
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
    """start_writer(home, seed, log, url) -> Writer, forked by `crash_writer.py --serve` (which imports storage
    once); a writer still running at the end (a failed test) is killed."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    server = subprocess.Popen(
        [sys.executable, str(WRITER), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
    )
    started: list[Writer] = []

    def start(home: Path, seed: int, log: Path, url: str | None) -> Writer:
        started.append(Writer(server, home, seed, log, url))
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


@pytest.fixture()
def database_url(database, request) -> str | None:
    """None for SQLite in the home folder; else an emptied database on the session's PostgreSQL server."""
    return empty_postgres(request.getfixturevalue("postgres_url")) if database == "postgresql" else None


def _writer_url(url: str | None) -> str | None:
    return url and make_url(url).update_query_dict({"application_name": WRITER_APPLICATION}).render_as_string(
        hide_password=False
    )


def _wait_for_writer_sessions_to_end(url: str | None, timeout: float = 30.0) -> None:
    """PostgreSQL ends a killed client's session (rolling back what it had not committed) once it notices the
    closed socket: wait for that, as the home's lock waits for a dead SQLite writer, before the restart."""
    if url is None:
        return
    engine = create_engine(url, poolclass=NullPool)
    sessions = text(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()"
    )
    deadline = time.monotonic() + timeout
    try:
        with engine.connect() as con:
            while con.execute(sessions, {"name": WRITER_APPLICATION}).scalar():
                con.rollback()
                if time.monotonic() > deadline:
                    raise AssertionError("the killed writer's PostgreSQL session never ended")
                time.sleep(0.01)
    finally:
        engine.dispose()


def _rows(home: Path, url: str | None) -> tuple[set[int], int]:
    """(every generation id, how many are flagged files_missing), over a connection of the test's own."""
    engine = create_engine(url or f"sqlite:///{home / 'gallery.db'}", poolclass=NullPool)
    try:
        with engine.connect() as con:
            ids = {r[0] for r in con.execute(text("SELECT id FROM generations"))}
            flagged = con.execute(text("SELECT count(*) FROM generations WHERE files_missing")).scalar()
    finally:
        engine.dispose()
    return ids, flagged


@pytest.mark.slow
@pytest.mark.crash
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sigkill_at_random_points_never_leaves_damage(home, database, database_url, start_writer):
    rng = random.Random(20250101)
    reported: set[int] = set()
    uncertain: set[int] = set()
    total_saved = 0
    for round_ in range(ROUNDS):
        log = home.parent / f"writer-{round_}.log"
        proc = start_writer(home, round_ + 1, log, _writer_url(database_url))
        if round_ % 6 == 5:
            time.sleep(rng.uniform(0.0, 1.0))  # may land during start-up: migration or sweep
        else:
            _wait_for_saves(log, rng.randint(0, 12), proc)
            time.sleep(rng.uniform(0.0, 0.05))  # then a random point inside a later save or delete
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        _wait_for_writer_sessions_to_end(database_url)
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
        with Gallery.open(home, database_url=database_url) as gallery:  # the restart: migration check and sweep
            assert gallery.sweep_report is not None
        problems = consistency_problems(home, database_url, after_sweep=True)
        assert problems == [], f"round {round_}: {problems}"
        ids, flagged = _rows(home, database_url)
        assert flagged == 0, f"round {round_}: a row was committed before its files"
        lost = reported - ids - uncertain
        assert not lost, f"round {round_}: generations reported as saved are gone: {sorted(lost)}"
        reported &= ids
        uncertain &= ids
    assert total_saved >= 4 * ROUNDS  # the kills really landed among many saves
