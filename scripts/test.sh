#!/usr/bin/env bash
# Runs every test of allconv from a fresh checkout: installs what it needs, then
# `cargo test`. ALLCONV_REQUIRE_PYTHON=1 turns a missing genuine framework into a test
# failure instead of a skip: here the cross-checks must run. The inference-only edge
# build is cross-compiled first for ARM (64 and 32 bit) and static x86_64 musl, and
# ALLCONV_REQUIRE_CROSS=1 makes tests/edge_cross.rs run each binary under qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/progress.sh
phase "setup: cmake, libtorch 2.11.0 and the Python frameworks of the cross-checks (first time: several GB of wheels from PyPI)"
scripts/setup.sh --python
phase "setup: Slurm and munge from Debian's packages (tests/archive_slurm.rs starts a one-node cluster)"
scripts/slurm/local-cluster.sh install target/slurm-setup
for t in ${ALLCONV_CROSS_TARGETS:-aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf x86_64-unknown-linux-musl}; do
  phase "edge build for $t: $(build_hint "target/$t/edge")"
  scripts/cross.sh "$t" >/dev/null
done
export ALLCONV_REQUIRE_PYTHON=1 ALLCONV_REQUIRE_CROSS=1
# A fresh build gains nothing from incremental state (2.5 GB of it in target/debug).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
phase "cargo test: build the tests ($(build_hint target/debug)), then run them"
cargo test --all-targets "$@"
