#!/usr/bin/env bash
# Install Atelier into ./.venv on a fresh machine (Python 3.11, offline from any model hub).
#   bash scripts/install.sh          the app
#   bash scripts/install.sh --test   the app, the test tools (and the cluster extra), and Debian's Chromium for the browser tests
#   .venv/bin/pip install -c constraints.txt -e '.[cluster]'   GPU workers on a Ray cluster (atelier serve --cluster)
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
# The tests include the cluster ones (a real local Ray cluster): --test installs the cluster extra too.
[ "$with_tests" = 1 ] && extras="[test,cluster]"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".${extras}"

# The browser tests drive Debian's Chromium; the gallery's PostgreSQL tests start Debian's PostgreSQL.
if [ "$with_tests" = 1 ]; then
  missing=""
  [ -x /usr/bin/chromium ] || missing="$missing chromium"
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$missing postgresql"
  if [ -n "$missing" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    # shellcheck disable=SC2086
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
      || echo "warning: could not install$missing; those tests will be skipped" >&2
  elif [ -n "$missing" ]; then
    echo "note:$missing missing (apt-get install$missing as root); those tests will be skipped" >&2
  fi
fi
echo "Atelier installed in .venv"
