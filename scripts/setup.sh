#!/usr/bin/env bash
# Installs what building and testing allconv needs on a fresh machine; idempotent.
#  - a cmake binary (hdf5-metno's `static` feature builds HDF5 from source with it)
#  - .venv-check: the Python side of the cross-checks (onnx checker, onnxruntime)
# Genuine Keras (to regenerate fixtures) is separate: converters/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null 2>&1; then
  echo "setup: installing cmake from PyPI"
  python3 -m pip install -q cmake
  hash -r
fi

if [ "${1:-}" != "--no-python" ]; then
  if [ ! -x .venv-check/bin/python ] || ! .venv-check/bin/python -c "import onnx, onnxruntime, numpy" 2>/dev/null; then
    echo "setup: creating .venv-check (numpy, onnx, onnxruntime)"
    python3 -m venv .venv-check
    .venv-check/bin/pip install -q --disable-pip-version-check "numpy<2.3" onnx onnxruntime
  fi
fi
