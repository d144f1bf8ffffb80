#!/usr/bin/env bash
# The CUDA checks, for a lent GPU machine (which has PyTorch 2.11 but no Rust).
#   scripts/gpu_check.sh build   here: builds the test binary into build/gpu/ (carry it)
#   scripts/gpu_check.sh run     there: runs the ignored CUDA parity test with torch's lib/
# libtorch_cuda.so is loaded at run time (allconv::torch::load_cuda), so the CPU build works.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  build)
    scripts/setup.sh
    bin=$(cargo test --test torch_parity --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and "torch_parity" in m["target"]["name"]:
        print(m["executable"])')
    mkdir -p build/gpu && cp "$bin" build/gpu/torch_parity
    echo "built build/gpu/torch_parity"
    ;;
  run)
    lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
    ALLCONV_ROOT="$(pwd)" LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}" \
      build/gpu/torch_parity --ignored --nocapture torch_cuda
    ;;
  *) echo "usage: scripts/gpu_check.sh build|run" >&2; exit 2 ;;
esac
