#!/usr/bin/env bash
# Runs every test of allconv from a fresh checkout: installs what it needs, then
# `cargo test`. ALLCONV_REQUIRE_PYTHON=1 turns a missing genuine framework into a test
# failure instead of a skip: here the cross-checks must run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
export ALLCONV_REQUIRE_PYTHON=1
cargo test --all-targets "$@"
# The inference-only build (ONNX export + tract, no libtorch) must keep compiling.
cargo check --no-default-features --features runtime --lib --bins
