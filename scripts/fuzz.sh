#!/usr/bin/env bash
# Fuzzes every parser that takes a user's file (a measurement, not part of CI):
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# SECONDS per target (default 600). Installs cargo-fuzz (crates.io) for the nightly
# toolchain if missing, seeds each corpus from fixtures/, runs libFuzzer with ASan, and
# prints executions, coverage and findings per target. A finding lands in
# fuzz/artifacts/TARGET/; minimise it (cargo +nightly fuzz tmin TARGET FILE), copy it under
# tests/fuzz_regressions/TARGET/ and tests/fuzz_regressions.rs replays it in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}; shift || true
targets=${*:-h5 keras_config image dicom preprocess_spec npz safetensors model_file}
scripts/setup.sh >/dev/null
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz

# Seeds: the fixtures, as each target reads them.
seeds=fuzz/seeds; rm -rf "$seeds"; mkdir -p "$seeds"
for t in $targets; do mkdir -p "$seeds/$t"; done
n=0
seed() { n=$((n+1)); cp "$2" "$seeds/$1/$n-$(basename "$2")"; }
prefixed() { n=$((n+1)); { printf "\\x$(printf %02x "$2")"; cat "$3"; } > "$seeds/$1/$n-$(basename "$3")"; }
small() { [ "$(stat -c %s "$1")" -le $((2 << 20)) ]; }
for f in fixtures/*/*.h5 fixtures/hostile/*.h5 fixtures/compressed/*.h5; do
  [ -f "$f" ] && small "$f" && [ -d "$seeds/h5" ] && seed h5 "$f"; done
for f in fixtures/*/*.json; do [ -d "$seeds/keras_config" ] && seed keras_config "$f"; done
i=0
for ext in png pgm jpg tif dcm ppm; do
  for f in fixtures/images/*.$ext; do
    [ -f "$f" ] && [ -d "$seeds/image" ] && prefixed image $i "$f"
  done
  i=$((i+1))
done
for f in fixtures/images/*.dcm; do [ -d "$seeds/dicom" ] && seed dicom "$f"; done
if [ -d "$seeds/preprocess_spec" ]; then
  for s in "rescale=0.003891,mean=52.18,gray" "size=1152x896,target_scale=65535,channels=1" \
           "rescale=0.0078125,mean=0.5,gray,size=225x177" "flips4"; do
    n=$((n+1)); printf '%s' "$s" > "$seeds/preprocess_spec/$n"; done
fi
for f in fixtures/*/*.npz fixtures/images/*.npz; do
  [ -f "$f" ] && small "$f" && [ -d "$seeds/npz" ] && seed npz "$f"; done
cargo build --release --quiet
bin=target/release/allconv; tmp=$(mktemp -d)
for c in k208_yaroslav_patch k208_seq_1d tfk_sequential; do
  m=fixtures/$c/model.h5
  $bin convert "$m" -o "$tmp/$c.safetensors" >/dev/null
  $bin convert "$m" -o "$tmp/$c.onnx" >/dev/null
  $bin convert "$m" -o "$tmp/$c.nnef.tgz" >/dev/null 2>&1 || true
  [ -d "$seeds/safetensors" ] && seed safetensors "$tmp/$c.safetensors"
  if [ -d "$seeds/model_file" ]; then
    prefixed model_file 0 "$tmp/$c.onnx"
    [ -f "$tmp/$c.nnef.tgz" ] && prefixed model_file 1 "$tmp/$c.nnef.tgz"
  fi
done
rm -rf "$tmp"

# One build of every target (ASan, release, line tables), then each binary runs directly.
(cd fuzz && cargo +nightly fuzz build --release) >&2
bins=fuzz/target/x86_64-unknown-linux-gnu/release
report=fuzz/report.tsv; : > "$report"
for t in $targets; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/$t.log"
  started=$(mktemp); touch "$started"
  echo "fuzz.sh: $t for ${secs}s" >&2
  # HDF5 allocates what a metadata entry claims before reading it; the read is bounded by
  # the file, so a claim of gigabytes costs address space, not memory. Under ASan such a
  # claim aborts the run; in the real binary malloc fails or the read does, and HDF5
  # reports an error (tests/fuzz_regressions.rs replays both saved claims under a 1 GB
  # address-space cap). So h5 runs with ASan's malloc failing the way glibc's does; real
  # memory use is still bounded by -rss_limit_mb, and any Rust-side allocation failure
  # still aborts.
  asan=${ASAN_OPTIONS:-}
  [ "$t" = h5 ] && asan="allocator_may_return_null=1${asan:+:$asan}"
  set +e
  ASAN_OPTIONS=$asan "$bins/$t" "fuzz/corpus/$t" "$seeds/$t" \
      -max_total_time="$secs" -max_len=$((4 << 20)) -rss_limit_mb=4096 -timeout=20 \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" > "$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  # This run's findings only (earlier ones stay in the folder until saved under tests/).
  found=$(find "fuzz/artifacts/$t" -type f -newer "$started" | wc -l); rm -f "$started"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$secs" "${execs:-?}" "${cov:-?}" "$found" "$rc" >> "$report"
done
printf '\n| target | seconds | executions | coverage (edges) | findings | exit |\n|---|---|---|---|---|---|\n'
awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}' "$report"
