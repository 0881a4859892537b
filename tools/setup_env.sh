#!/usr/bin/env bash
# Creates or updates the project's Python 3.11 virtualenv and installs the package into it.
#
# Idempotent: the environment is keyed by a hash of everything that decides its content (requirements,
# setup.py, the op's sources, the torch spec); when the key matches, this script returns in well under a second.
#
# Environment:
#   MASK2FORMER_VENV    where the virtualenv lives (default: <repo>/.venv)
#   MASK2FORMER_TORCH   the torch pair to install instead of requirements/torch.txt, e.g.
#                       "torch==2.13.0+cu126 torchvision==0.28.0+cu126 --index-url https://download.pytorch.org/whl/cu126"
#   PYTHON              the interpreter used to create the virtualenv (default: python3.11)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MASK2FORMER_VENV:-$root/.venv}
python=${PYTHON:-python3.11}
torch_spec=${MASK2FORMER_TORCH:-$(grep -v '^#' "$root/requirements/torch.txt" | tr '\n' ' ')}

key=$(
  cd "$root"
  {
    echo "$torch_spec"
    cat requirements/*.txt setup.py tools/setup_env.sh mask2former/ops/ms_deform_attn/build.py
    find mask2former/ops -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) -print0 \
      | sort -z | xargs -0 cat
  } | sha256sum | cut -d' ' -f1
)
stamp=$venv/.mask2former-env
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  exit 0
fi

echo "[setup_env] creating/updating $venv (this takes a few minutes the first time)" >&2
command -v "$python" >/dev/null || { echo "[setup_env] $python not found; set PYTHON to a Python 3.11 interpreter" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U pip "setuptools<81" wheel
# shellcheck disable=SC2086
"${pip[@]}" install $torch_spec
"${pip[@]}" install -r "$root/requirements/base.txt" -c "$root/requirements/constraints.txt"

# detectron2 is published only as a cp310 wheel of pure-Python code: unpack it without its compiled _C.
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.10 -d "$wheels" \
  -r "$root/requirements/nodeps.txt"
"$venv/bin/python" - "$wheels" <<'EOF'
import glob, sys, sysconfig, zipfile

site = sysconfig.get_paths()["purelib"]
for wheel in sorted(glob.glob(f"{sys.argv[1]}/*.whl")):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site, members=[n for n in z.namelist() if not n.endswith(".so")])
EOF

"${pip[@]}" install --no-deps --no-build-isolation -e "$root"
echo "$key" >"$stamp"
echo "[setup_env] ready: $venv" >&2
