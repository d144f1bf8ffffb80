#!/usr/bin/env bash
# Installs what building and testing allconv needs on a fresh machine; idempotent.
#  - a cmake binary (hdf5-metno's `static` feature builds HDF5 from source with it)
#  - libtorch (scripts/libtorch.sh) and ONNX Runtime's library (scripts/onnxruntime.sh)
#  - with --python (what scripts/test.sh asks for): the genuine frameworks of the
#    cross-checks, made by converters/setup.sh: .venv-keras208 (Keras 2.0.8 + Theano),
#    .venv-keras122 (Keras 1.2.2 + Theano), .venv-tf (TensorFlow 2.21, tf-keras, onnx,
#    onnxruntime, OpenCV)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null 2>&1; then
  echo "setup: installing cmake from PyPI"
  python3 -m pip install -q cmake
  hash -r
fi

# libtorch 2.11.0 (PyPI torch wheel, CPU use) for the default `torch` feature: .venv-torch;
# .cargo/config.toml points LIBTORCH at it and build.rs adds the rpath.
scripts/libtorch.sh >/dev/null

# ONNX Runtime 1.32.0 (PyPI onnxruntime wheel, its libonnxruntime.so only) for the default
# `ort` feature: .venv-ort; build.rs records .venv-ort/libonnxruntime.so (docs/engines.md).
scripts/onnxruntime.sh >/dev/null

if [ "${1:-}" = "--python" ]; then
  bash converters/setup.sh
fi
