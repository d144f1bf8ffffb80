#!/usr/bin/env bash
# Provides ONNX Runtime 1.32.0 (libonnxruntime.so) for the `ort` feature's engine; idempotent.
#
# The library comes from the PyPI wheel onnxruntime==1.32.0, installed with --no-deps into
# .venv-ort (only the shared library is used: no numpy, no `import onnxruntime`). The `ort`
# crate is built with `load-dynamic`, so nothing is linked or downloaded at build time: the
# library is opened when the engine is first used, from $ORT_DYLIB_PATH if set, else from the
# path build.rs recorded, .venv-ort/libonnxruntime.so (a symlink made here to the wheel's
# onnxruntime/capi/libonnxruntime.so.1.32.0).
#
# Prints the library's path on stdout (progress goes to stderr):
#   export ORT_DYLIB_PATH="$(scripts/onnxruntime.sh)"   # not needed for this checkout's builds
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(pwd)/.venv-ort"
VERSION=1.32.0

if [ ! -x "$VENV/bin/python" ]; then
  echo "onnxruntime: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
PYV="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
CAPI="$VENV/lib/python$PYV/site-packages/onnxruntime/capi"
LIB="$CAPI/libonnxruntime.so.$VERSION"

if [ ! -f "$LIB" ]; then
  echo "onnxruntime: installing onnxruntime==$VERSION --no-deps into $VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "onnxruntime==$VERSION" >&2
fi
if [ ! -f "$LIB" ]; then
  echo "onnxruntime: $LIB is missing after installing onnxruntime==$VERSION" >&2
  exit 1
fi

# A stable path (no python version in it): the one build.rs records.
if [ "$(readlink "$VENV/libonnxruntime.so" 2>/dev/null)" != "$LIB" ]; then
  ln -sfn "$LIB" "$VENV/libonnxruntime.so"
fi

echo "$VENV/libonnxruntime.so"
