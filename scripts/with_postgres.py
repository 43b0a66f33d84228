"""Run a command with one throw-away PostgreSQL server up (Debian's package, as the tests use it) and its URL
in ATELIER_TEST_POSTGRES_URL, so every pytest the command starts uses that server instead of starting its own.

    python scripts/with_postgres.py bash scripts/mutation.sh "storage.search*"

Without PostgreSQL installed the command runs as it is (the tests' PostgreSQL cases then skip).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.storage.postgres_server import postgres_bin_dir, running_postgres  # noqa: E402


def main(command: list[str]) -> int:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        return subprocess.run(command).returncode
    with running_postgres(bin_dir) as server:
        return subprocess.run(command, env=os.environ | {"ATELIER_TEST_POSTGRES_URL": server.url}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
