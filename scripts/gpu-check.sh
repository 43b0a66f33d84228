#!/usr/bin/env bash
# The full-size benchmark on a GPU: SDXL 1.0's base + refiner architecture (random weights, nothing
# downloaded) at 1024², 4 drafts + a refine, fp16, then torch.compile; one JSON file.
#   bash scripts/gpu-check.sh [OUTPUT.json]     default: $OUT/gpu-check.json, else ./gpu-check.json
# It installs first (scripts/install.sh; ATELIER_SKIP_INSTALL=1 skips it, and a failed install goes on
# with the .venv already there). The benchmark gets GPU_CHECK_SECONDS (480: 8 minutes); it writes its
# JSON after each phase, so a run cut short still leaves the eager figures ("complete": false).
# For the test suite: GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 GPU_CHECK_COMPILE_BACKEND=eager.
set -euo pipefail
cd "$(dirname "$0")/.."

output=${1:-${OUT:+$OUT/gpu-check.json}}
output=${output:-gpu-check.json}
device=${GPU_CHECK_DEVICE:-cuda}
seconds=${GPU_CHECK_SECONDS:-480}

if [ "${ATELIER_SKIP_INSTALL:-0}" != 1 ]; then
  bash scripts/install.sh || echo "gpu-check: install failed; using the .venv as it is" >&2
fi
# The .venv's Python; without one (an offline machine with the packages installed), $PYTHON or python3.
python=.venv/bin/python
[ -x "$python" ] || python=${PYTHON:-python3}
[ "$device" = cpu ] || "$python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
  || { echo "gpu-check: CUDA is not available to torch here ($python)" >&2; exit 2; }
[ "$device" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true

args=(bench --full-size --device "$device" --compile --json --output "$output")
[ "${GPU_CHECK_TINY:-0}" = 1 ] && args+=(--tiny)
[ -n "${GPU_CHECK_COMPILE_BACKEND:-}" ] && args+=(--compile-backend "$GPU_CHECK_COMPILE_BACKEND")

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # nothing is downloaded: the configs ship with the code
status=0
timeout --signal=TERM --kill-after=20 "$seconds" "$python" -m atelier.cli "${args[@]}" >/dev/null || status=$?
if [ ! -s "$output" ]; then
  echo "gpu-check: no figures were written (exit $status)" >&2
  exit $((status == 0 ? 1 : status))
fi
echo "gpu-check: figures in $output (exit $status)" >&2
exit "$status"
