# Sourced by scripts/demo.sh and scripts/test.sh: lines that say what a long step is doing
# and how long the script has run, so a first build (every dependency compiled, HDF5 from its
# C sources) is never silent. Cargo's own output follows each build line: on a terminal its
# progress bar ("Building [=====>   ] 212/468: tract-linalg, ..." - what is being compiled and
# how many crates are left), elsewhere one "Compiling NAME" line per crate.

_progress_t0=$SECONDS
_progress_name=$(basename "$0")

# phase TEXT...: "demo.sh [3m07s] TEXT" on stderr.
phase() {
  local t=$((SECONDS - _progress_t0))
  printf '%s [%dm%02ds] %s\n' "$_progress_name" $((t / 60)) $((t % 60)) "$*" >&2
}

# build_hint DIR: how much the next build into DIR (target/release, target/debug, ...) has to
# compile: everything (no allconv built there yet) or only what changed.
build_hint() {
  if ls "$1"/allconv >/dev/null 2>&1 || ls "$1"/deps/liballconv-*.rlib >/dev/null 2>&1; then
    echo "only what changed since the last build"
  else
    echo "a first build: every dependency ($(grep -c '^name = ' Cargo.lock) crates in Cargo.lock, HDF5 from its C sources, tract's kernels), which takes tens of minutes on 2 cores"
  fi
}
