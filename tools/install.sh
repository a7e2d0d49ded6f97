#!/usr/bin/env bash
# Creates .venv (if missing) and installs everything VLT needs into it; safe to run again.
# Usage: tools/install.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
D2_VERSION=0.7.2
STAMP="$VENV/.vlt-installed"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements.txt ] && [ "$STAMP" -nt setup.py ]; then
  exit 0
fi

"$PY" -m pip install -q --upgrade "pip>=23.2"
echo "[install] installing pinned dependencies (torch is a large local wheel; this takes a few minutes)"
"$PY" -m pip install -q -r requirements.txt
# Corruption robustness; --no-deps: see requirements.txt (its other needs are pinned there).
"$PY" -m pip install -q --no-deps imagecorruptions==1.1.2

# Detectron2 is not on PyPI under its own name. `sal-detectron2` repackages Detectron2 main (2024);
# its only wheel is tagged cp310-none-any although its Python code runs on any Python 3. Keep a
# detectron2 the user already has (e.g. built from source).
if ! "$PY" -c "import detectron2" 2>/dev/null; then
  echo "[install] installing Detectron2 from sal-detectron2==$D2_VERSION"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
    "sal-detectron2==$D2_VERSION" -d "$tmp"
  whl=$(ls "$tmp"/sal_detectron2-*.whl)
  # Same file under a py3-none-any name so pip accepts it on this interpreter.
  mv "$whl" "$tmp/sal_detectron2-$D2_VERSION-py3-none-any.whl"
  "$PY" -m pip install -q --no-deps "$tmp/sal_detectron2-$D2_VERSION-py3-none-any.whl"
fi

echo "[install] installing VLT (editable)"
"$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" -c "import detectron2, open_clip, timm, vlt_common, vltseg, vltdet" \
  || { echo "[install] import check failed" >&2; exit 1; }
touch "$STAMP"
echo "[install] done: $VENV"
