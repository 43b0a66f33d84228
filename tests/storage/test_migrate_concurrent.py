"""Several front ends (separate processes, separate homes, one gallery database: PostgreSQL, or one SQLite
file) open the gallery at the same moment on an empty or an older-schema database: every one of them must
start, the schema must end at head, old rows must survive, and the migration (and its backup) must happen
exactly once.

The home lock cannot serialise this (each front end has its own home), so only the migration's own lock in
the database does. This file is also the worker: `python test_migrate_concurrent.py URL HOME` imports
the storage code, says "ready", waits for "go" on stdin, opens the gallery and prints one JSON line with how
many alembic_version writes (= migration steps) it made.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

FRONT_ENDS = 5
ALEMBIC_VERSION_WRITE = re.compile(r"^\s*(INSERT INTO|UPDATE|DELETE FROM) alembic_version\b", re.IGNORECASE)


def _worker(url: str, home: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from sqlalchemy import Engine, event

    from storage.gallery import Gallery

    version_writes = []

    @event.listens_for(Engine, "before_cursor_execute")
    def count_version_writes(conn, cursor, statement, parameters, context, executemany):
        if ALEMBIC_VERSION_WRITE.match(statement):
            version_writes.append(statement)

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go")
    try:
        Gallery.open(home, database_url=url).close()
        outcome = {"version_writes": len(version_writes), "error": None}
    except Exception as exc:  # noqa: BLE001 - reported to the test in words
        outcome = {"version_writes": len(version_writes), "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(outcome), flush=True)


def _open_all_at_once(url: str, homes: list[Path], env: dict[str, str]) -> list[dict]:
    """Start one worker per home, wait until each has imported everything, then release them together."""
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, url, str(home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for home in homes
    ]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
        for worker in workers:  # the barrier: all are waiting on stdin
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outcomes = []
        for worker in workers:
            out, err = worker.communicate(timeout=180)
            assert worker.returncode == 0, err
            outcomes.append(json.loads(out.strip().splitlines()[-1]))
        return outcomes
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


@pytest.fixture()
def front_end_env(tmp_path, monkeypatch):
    """Backups on, pg_dump found, and one files folder shared by all front ends (as on shared storage)."""
    import os

    from storage import migrate

    monkeypatch.delenv("ATELIER_NO_BACKUP", raising=False)
    monkeypatch.delenv("ATELIER_DATABASE_URL", raising=False)
    assert migrate.find_pg_dump() is not None, "pg_dump comes with PostgreSQL; the backup guarantee needs it"
    env = {**os.environ, "ATELIER_FILES_DIR": str(tmp_path / "shared-files")}
    env.pop("ATELIER_NO_BACKUP", None)
    env.pop("ATELIER_DATABASE_URL", None)
    return env


def _schema_state(url: str) -> tuple[str | None, list[str]]:
    from storage import migrate
    from storage.db import Database

    db = Database(url)
    try:
        with db.engine.connect() as conn:
            prompts = [row[0] for row in conn.exec_driver_sql("SELECT prompt FROM generations ORDER BY id")]
        return migrate.current_revision(db), prompts
    finally:
        db.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def shared_url(request, tmp_path):
    """An empty database that all front ends name: the scratch PostgreSQL database, or one SQLite file
    outside every home (a mounted folder, say)."""
    from postgres_server import empty_postgres

    if request.param == "postgresql":
        return empty_postgres(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'shared-database' / 'gallery.db'}"


def _backups(url: str, homes: list[Path]) -> list[Path]:
    """The pg_dumps in every front end's backups folder, or the SQLite copies beside the database file."""
    from sqlalchemy import make_url

    if url.startswith("sqlite"):
        database = Path(make_url(url).database)
        return sorted(database.parent.glob(f"{database.name}.backup-*"))
    return sorted(p for home in homes if (home / "backups").exists() for p in (home / "backups").iterdir())


def test_empty_database_opened_by_many_front_ends_at_once(shared_url, tmp_path, front_end_env):
    from storage import migrate

    homes = [tmp_path / f"front-end-{n}" for n in range(FRONT_ENDS)]
    outcomes = _open_all_at_once(shared_url, homes, front_end_env)

    assert [o["error"] for o in outcomes] == [None] * FRONT_ENDS
    migrated = [o for o in outcomes if o["version_writes"]]
    assert len(migrated) == 1, f"the migration ran in {len(migrated)} front ends: {outcomes}"
    assert _schema_state(shared_url) == (migrate.head_revision(), [])
    assert _backups(shared_url, homes) == []  # a new database has nothing to back up


def _database_at_first_revision(url: str) -> None:
    """A gallery as revision 0001 left it, with one generation inserted by hand."""
    from sqlalchemy import text

    from storage import migrate
    from storage.db import Database

    db = Database(url)
    try:
        migrate.upgrade(db, migrate.FIRST_REVISION)
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO generations (id, created_at, kind, recipe_json, prompt, negative, seed, model_name, "
                    "scheduler, steps, guidance, width, height, switch, image_sha256, favourite, files_missing) "
                    "VALUES (1, :created, 'draft', '{}', 'an old lighthouse at dusk', 'blurry', 7, 'tiny', "
                    "'Euler', 4, 5.0, 64, 64, 0.8, :sha, false, false)"
                ),
                {"created": "2024-05-01 00:00:00.000000", "sha": "a" * 64},
            )
    finally:
        db.close()
    assert _schema_state(url) == (migrate.FIRST_REVISION, ["an old lighthouse at dusk"])


def test_older_schema_opened_by_many_front_ends_at_once(shared_url, tmp_path, front_end_env):
    from storage import migrate

    _database_at_first_revision(shared_url)
    homes = [tmp_path / f"front-end-{n}" for n in range(FRONT_ENDS)]
    outcomes = _open_all_at_once(shared_url, homes, front_end_env)
    backups = _backups(shared_url, homes)

    assert [o["error"] for o in outcomes] == [None] * FRONT_ENDS, f"backups made: {[b.name for b in backups]}"
    migrated = [o for o in outcomes if o["version_writes"]]
    assert len(migrated) == 1, f"the migration ran in {len(migrated)} front ends: {outcomes}"
    assert _schema_state(shared_url) == (migrate.head_revision(), ["an old lighthouse at dusk"])
    assert len(backups) == 1, f"expected one backup, got {[str(b) for b in backups]}"
    if shared_url.startswith("sqlite"):
        assert backups[0].name.endswith("-r0001")
        assert _schema_state(f"sqlite:///{backups[0]}") == (migrate.FIRST_REVISION, ["an old lighthouse at dusk"])
    else:
        assert backups[0].name.endswith("-r0001.pgdump") and backups[0].read_bytes()[:5] == b"PGDMP"
        _assert_backup_is_pre_upgrade(backups[0])


def _assert_backup_is_pre_upgrade(backup: Path) -> None:
    """The dump holds revision 0001 (pg_restore of alembic_version's data to stdout) and none of the tables
    that only later revisions make."""
    from storage import migrate

    pg_restore = str(Path(migrate.find_pg_dump()).with_name("pg_restore"))

    def restore(*args: str) -> str:
        return subprocess.run([pg_restore, *args, str(backup)], capture_output=True, text=True, check=True).stdout

    version_data = restore("--data-only", "--table=alembic_version", "--file=-")
    assert re.search(r"^0001$", version_data, re.MULTILINE), version_data
    contents = restore("--list")
    assert "TABLE public generations " in contents and "generation_tags" not in contents, contents


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
