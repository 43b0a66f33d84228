"""Per-module mutation scores from mutmut's results (run by scripts/mutation.sh after `mutmut run`).

A module's score is killed ÷ (killed + survived + suspicious + no tests): timeouts count as killed, mutants
not run yet are left out. Survivors are listed so each can be tested or documented as equivalent.
"""

from __future__ import annotations

import collections
import subprocess
import sys

KILLED = {"killed", "timeout", "caught by type check"}
COUNTED = KILLED | {"survived", "suspicious", "no tests", "segfault"}


def main() -> int:
    lines = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors = []
    for line in lines:
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        module = name.split(".x", 1)[0]
        counts[module][status] += 1
        if status in COUNTED - KILLED:
            survivors.append(f"{name}: {status}")
    for module, count in sorted(counts.items()):
        counted = sum(n for s, n in count.items() if s in COUNTED)
        killed = sum(n for s, n in count.items() if s in KILLED)
        score = f"{100 * killed / counted:.0f} %" if counted else "not run"
        print(f"{module}: {killed}/{counted} killed ({score}); not run: {count['not checked']}")
    print(*survivors[:200], sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
