"""Per-module mutation scores from mutmut's results (run by scripts/mutation.sh after `mutmut run`).

A module's score is killed ÷ (killed + survived + suspicious + no tests): timeouts count as killed, mutants
not run yet are left out. Survivors listed in docs/mutation-survivors.md as equivalent (no behaviour change
is possible) are left out of the second figure, the one the 80 % goal is about; the other survivors are
printed so each can be tested or documented.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check"}
COUNTED = KILLED | {"survived", "suspicious", "no tests", "segfault"}
EQUIVALENTS = Path(__file__).resolve().parent.parent / "docs" / "mutation-survivors.md"


def equivalent_names() -> set[str]:
    """Mutant names written as `name` at the start of a list item in docs/mutation-survivors.md."""
    if not EQUIVALENTS.exists():
        return set()
    return set(re.findall(r"^- `([\w.ǁ]+__mutmut_\d+)`", EQUIVALENTS.read_text(encoding="utf-8"), re.M))


def main() -> int:
    lines = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    equivalent = equivalent_names()
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors = []
    for line in lines:
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        module = name.split(".x", 1)[0]
        counts[module][status] += 1
        if status == "survived" and name in equivalent:
            counts[module]["equivalent"] += 1
        elif status in COUNTED - KILLED:
            survivors.append(f"{name}: {status}")
    for module, count in sorted(counts.items()):
        counted = sum(n for s, n in count.items() if s in COUNTED)
        killed = sum(n for s, n in count.items() if s in KILLED)
        score = f"{100 * killed / counted:.0f} %" if counted else "not run"
        real = counted - count["equivalent"]
        net = f"{killed}/{real} of non-equivalent ({100 * killed / real:.0f} %)" if real else "-"
        print(
            f"{module}: {killed}/{counted} killed ({score}); {net}; equivalent: {count['equivalent']}; "
            f"not run: {count['not checked']}"
        )
    print(*survivors[:200], sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
