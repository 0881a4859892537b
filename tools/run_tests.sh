#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs the test suite; extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/setup_env.sh"
venv=${MASK2FORMER_VENV:-$root/.venv}
cd "$root"
exec "$venv/bin/python" -m pytest tests "$@"
