#!/usr/bin/env bash
# Runs every test of allconv from a fresh checkout: installs what it needs, then
# `cargo test`, whose Python cross-checks use .venv-check (ALLCONV_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export ALLCONV_PYTHON="$PWD/.venv-check/bin/python"
cargo test --all-targets "$@"
