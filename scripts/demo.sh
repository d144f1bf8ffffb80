#!/usr/bin/env bash
# The end-to-end demo on bundled data (fixtures/): builds allconv and walks through
# what it does with the genuine-Keras fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet
bin=target/release/allconv

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Inspect a whole-image model as published by end2end-all-conv (Keras 2.0.8, nested patch model)"
case=fixtures/k208tf_resnet50_whole_resnet
[ -d "$case" ] || case=fixtures/k208_vgg16_whole_resnet
$bin inspect "$case/model.h5"

step "The same model at the paper's whole-image size"
$bin inspect "$case/model.h5" --input-size 1152x896 | tail -4

step "Every bundled fixture: Keras version, dialect, parameter count (inspect --json)"
for d in fixtures/*/; do
  [ -f "$d/expect.json" ] || continue
  m="$d/model.h5"; args=()
  [ -f "$m" ] || m="$d/weights.h5"
  [ -f "$d/model.json" ] && args+=(--config "$d/model.json")
  case "$d" in fixtures/k122_*) args+=(--source-backend theano);; esac
  printf '%-36s ' "$(basename "$d")"
  $bin inspect "$m" "${args[@]}" --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(f"{r[\"keras_version\"] or \"?\":>7}  {r[\"params\"]:>9} params  {len(r[\"layers\"]):>4} layers  {r[\"dialect\"]}")'
done

step "A hostile file is refused, never executed"
$bin inspect fixtures/hostile/lambda.h5 || echo "(refused as expected, exit $?)"
