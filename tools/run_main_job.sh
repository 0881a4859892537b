#!/usr/bin/env bash
# The main job (README): set up the environment (idempotent), then generate the toy panoptic dataset if missing,
# train the tiny config on it, evaluate PQ / AP / mIoU and write plots and visualizations (tools/main_job.py).
# Extra arguments go to tools/main_job.py, e.g. `--output DIR` or `--opts SOLVER.MAX_ITER 300`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/setup_env.sh"
venv=${MASK2FORMER_VENV:-$root/.venv}
cd "$root"
exec "$venv/bin/python" tools/main_job.py "$@"
