#!/usr/bin/env bash
# Install Atelier into ./.venv on a fresh machine (Python 3.11, offline from any model hub).
#   bash scripts/install.sh          the app
#   bash scripts/install.sh --test   the app, the test tools, and Debian's Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python=$candidate; break
    fi
  done
fi
[ -n "$python" ] || { echo "Atelier needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch drags in a different multi-GB build, and torchvision
# must match it exactly (other pairs fail to import: "operator torchvision::nms does not exist").
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
extras=""
[ "$with_tests" = 1 ] && extras="[test]"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".${extras}"

if [ "$with_tests" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  else
    echo "note: /usr/bin/chromium missing (apt-get install chromium as root); browser tests will be skipped" >&2
  fi
fi
echo "Atelier installed in .venv"
