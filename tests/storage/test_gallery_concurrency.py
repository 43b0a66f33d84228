"""8 threads × 500 writes on one gallery: zero "database is locked", nothing lost."""

from __future__ import annotations

import threading

import pytest
from storage_checks import consistency_problems, database_url, make_png

pytestmark = pytest.mark.both_databases  # each test runs on SQLite and on PostgreSQL


THREADS, WRITES = 8, 500
SAVE_EVERY = 5  # one write in five is a full save (files + rows); the rest are row-only writes


@pytest.mark.slow
def test_parallel_writers_never_see_database_is_locked(gallery, home, recipe):
    errors: list[BaseException] = []
    saved: list[list[int]] = [[] for _ in range(THREADS)]
    start = threading.Barrier(THREADS)

    def writer(t: int) -> None:
        try:
            start.wait()
            mine = saved[t]
            for w in range(WRITES):
                if w % SAVE_EVERY == 0 or not mine:
                    n = t * WRITES + w
                    mine.append(gallery.save(recipe(seed=n, prompt=f"thread {t} write {w}"), "draft", make_png(n)).id)
                elif w % SAVE_EVERY in (1, 3):
                    gallery.set_tags(mine[-1], [f"t{t}", f"w{w}"])
                elif w % SAVE_EVERY == 2:
                    gallery.set_favourite(mine[w % len(mine)], w % 2 == 0)
                else:
                    gallery.search(f"thread {t}", limit=3)  # readers interleaved with the writers
        except BaseException as exc:  # noqa: BLE001 - every failure is reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    locked = [e for e in errors if "locked" in str(e)]
    assert not locked, f"{len(locked)} 'database is locked' errors, first: {locked[0]}"
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
    expected = THREADS * WRITES // SAVE_EVERY
    assert sum(len(s) for s in saved) == expected
    assert len(gallery.list(limit=1000).items) == expected
    last_tag_write = max(w for w in range(WRITES) if w % SAVE_EVERY in (1, 3))
    for t, ids in enumerate(saved):
        assert gallery.get(ids[-1]).tags == (f"t{t}", f"w{last_tag_write}")
    assert consistency_problems(home, database_url(gallery)) == []
