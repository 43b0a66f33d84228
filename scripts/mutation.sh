#!/usr/bin/env bash
# Mutation testing with mutmut (config: [tool.mutmut] in pyproject.toml). Runs the given mutants (globs of
# mutmut's names, e.g. "pipelines.recipe*"; default: every configured module) against the fast tests that
# cover them, then prints the survivors and one score per module.
#   bash scripts/mutation.sh "pipelines.recipe*"
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "import mutmut" 2>/dev/null || .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[mutation]"
# One PostgreSQL server for the whole run: each mutant's pytest would otherwise start (~1 s) and stop its own.
# Its one scratch database is shared, so mutants run one at a time unless MUTMUT_CHILDREN says otherwise.
if [ -z "${ATELIER_TEST_POSTGRES_URL:-}" ]; then
    exec .venv/bin/python scripts/with_postgres.py bash "$0" "$@"
fi
# One torch thread per worker: on 2 cores, torch's own threads would otherwise waste ~4x the CPU under load.
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@" >/dev/null || true
.venv/bin/python scripts/mutation_scores.py
