"""Two galleries on one database (two front ends): a save that reuses a file races a delete of the last
generation holding it. The delete must never take a file that the save then commits a row for."""

from __future__ import annotations

import threading
import time

import pytest
from storage_checks import consistency_problems, database_url, make_png

from storage.gallery import Gallery

pytestmark = pytest.mark.both_databases  # each test runs on SQLite and on PostgreSQL

ROUNDS = 300
TIME_BUDGET_S = 4.0  # per database; without the fix both databases lose a file (or fail) within 1-3 rounds


def test_save_reusing_a_file_never_loses_it_to_a_concurrent_delete(gallery, home, recipe):
    image = make_png(7)
    other = Gallery.open(home, database_url=database_url(gallery))
    try:
        holder = gallery.save(recipe(seed=0), "draft", image).id
        errors: list[BaseException] = []
        start = threading.Barrier(2)
        saved: list[int] = []

        def save(n: int) -> None:
            try:
                start.wait()
                saved.append(gallery.save(recipe(seed=n), "draft", image).id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def delete(id_: int) -> None:
            try:
                start.wait()
                other.delete(id_)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        deadline = time.monotonic() + TIME_BUDGET_S
        lost = None
        for n in range(1, ROUNDS + 1):
            threads = [threading.Thread(target=save, args=(n,)), threading.Thread(target=delete, args=(holder,))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                break
            holder = saved[-1]
            generation = gallery.get(holder)
            missing = [p.name for p in (generation.image_path, generation.thumbnail_path) if not p.exists()]
            if missing:
                lost = f"round {n}: generation {holder} was saved but its files {missing} are gone"
                break
            if time.monotonic() > deadline:
                break
        assert not errors, f"round {n}: {len(errors)} errors, first: {errors[0]!r}"
        assert lost is None, lost
        assert len(gallery.list(limit=10).items) == 1
    finally:
        other.close()
    assert consistency_problems(home, database_url(gallery)) == []
