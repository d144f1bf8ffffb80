#!/usr/bin/env bash
# Provides libtorch 2.11.0 (what tch 0.24 / torch-sys 0.24 expects) for the `torch` feature; idempotent.
#
# libtorch comes from the PyPI wheel torch==2.11.0 (the Linux wheel is the CUDA 13 build), installed
# into .venv-torch with --no-deps plus only the two CUDA runtime wheels that libtorch_cpu.so itself
# NEEDs (libcudart.so.13, libcupti.so.13; ~50 MB, found through libtorch_cpu's own
# $ORIGIN/../../nvidia/cu13/lib RPATH). The Rust binaries link with --as-needed, so libtorch_cuda.so
# (cudnn, cublas, nccl...: the other ~3 GB of nvidia-* wheels) is dropped and never loaded: CPU only.
# `import torch` does not work in this venv (by design), so torch-sys is pointed at the package
# directory through LIBTORCH rather than LIBTORCH_USE_PYTORCH=1. build.rs adds an rpath to
# $LIBTORCH/lib, so binaries run without LD_LIBRARY_PATH.
#
#   scripts/libtorch.sh          CPU (default)
#   scripts/libtorch.sh --cuda   also every nvidia-* dependency (Device::Cuda(0) on a GPU machine)
#                                then build with ALLCONV_TORCH_CUDA=1 so build.rs keeps libtorch_cuda.so
#                                (otherwise dropped by --as-needed: Cuda::is_available() would be false)
#
# .cargo/config.toml sets LIBTORCH=.venv-torch/libtorch (a symlink made here) for every cargo
# command, so nothing needs exporting; the script still prints the export line for other shells:
#   eval "$(scripts/libtorch.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(pwd)/.venv-torch"
VERSION=2.11.0
CUDA_TOOLKIT=13.0.2 # torch 2.11.0 pins cuda-toolkit[...]==13.0.2, whose cudart/cupti extras are:
CUDART=13.0.96
CUPTI=13.0.85

if [ ! -x "$VENV/bin/python" ]; then
  echo "libtorch: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
PYV="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
SP="$VENV/lib/python$PYV/site-packages"
TD="$SP/torch"
pip_i() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" >&2; }

have=""
if [ -f "$TD/version.py" ]; then
  have="$(sed -n "s/^__version__ = '\([^+']*\).*/\1/p" "$TD/version.py")"
fi
if [ "$have" != "$VERSION" ] || [ ! -f "$TD/lib/libtorch_cpu.so" ]; then
  echo "libtorch: installing torch==$VERSION --no-deps into $VENV (a 531 MB wheel, 1.2 GB installed)" >&2
  pip_i --no-deps "torch==$VERSION"
fi
if [ ! -f "$SP/nvidia/cu13/lib/libcudart.so.13" ] || [ ! -f "$SP/nvidia/cu13/lib/libcupti.so.13" ]; then
  echo "libtorch: installing libcudart/libcupti 13 (cuda-toolkit $CUDA_TOOLKIT), which libtorch_cpu.so NEEDs" >&2
  pip_i --no-deps "nvidia-cuda-runtime==$CUDART" "nvidia-cuda-cupti==$CUPTI"
fi
if [ "${1:-}" = "--cuda" ]; then
  echo "libtorch: installing all torch==$VERSION dependencies (nvidia-* CUDA wheels, ~3 GB)" >&2
  pip_i "torch==$VERSION"
fi

# A stable path (no python version in it) for .cargo/config.toml's [env] LIBTORCH.
if [ "$(readlink "$VENV/libtorch" 2>/dev/null)" != "$TD" ]; then
  ln -sfn "$TD" "$VENV/libtorch"
fi

echo "export LIBTORCH=$VENV/libtorch"
