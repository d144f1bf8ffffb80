#!/usr/bin/env bash
# Training throughput (a measurement, never a test): allconv finetune (libtorch, CPU) against
# tf-keras `fit` on the same model file, the same images and the same batch, each in its own
# process; images/s of the last (warm) epoch of each, and allconv's whole command wall time.
# Results: docs/bench/bench_train.json, then docs/benchmarks.md's table is rendered from it.
#   scripts/bench_train.sh [PATCH.h5] [H] [W] [IMAGES_PER_CLASS] [BATCH] [RECIPE]
# Default: the narrow ResNet50 patch fixture re-headed with [32-32-64]x2 at 576x448. The
# paper's full-width whole-image model at 1152x896 (RECIPE `none`: MODEL is already whole;
# it comes from converters/make_all.sh --bench): scripts/bench_train.sh \
#   build/bench/k208_full_resnet50_whole_resnet_tf.h5 1152 896 8 2 none
set -euo pipefail
cd "$(dirname "$0")/.."
patch=${1:-fixtures/k208tf_resnet50_patch/model.h5}
h=${2:-576}; w=${3:-448}; n=${4:-16}; batch=${5:-4}; recipe=${6:-resnet:32x1,32x1:enlarge=2}
scripts/setup.sh --python
cargo build --release --quiet
bin=target/release/allconv; py=.venv-tf/bin/python
out=bench-out/train; rm -rf "$out"; mkdir -p "$out"
$py converters/bench_train_peer.py gen "$out/data" "$n" "$h" "$w"
if [ "$recipe" = none ]; then
  cp "$patch" "$out/whole.h5"
else
  $bin rehead "$patch" -o "$out/whole.h5" --input-size "${h}x${w}" --top "$recipe" --seed 1 >/dev/null
fi
rescale=0.0000305; mean=0.5
start=$(date +%s.%N)
/usr/bin/time -f '%M' -o "$out/allconv_peak_kb" $bin finetune "$out/whole.h5" --train "$out/data" \
  --val "$out/data" -o "$out/ft/best.h5" --img-size "$h" "$w" --rescale-factor $rescale \
  --featurewise-mean $mean --batch-size $((2 * batch)) --train-bs-multiplier 0.5 --nb-epoch 0 \
  --all-layer-epochs 2 --optimizer adam --init-learningrate 0.0001 --no-augmentation \
  --log "$out/ft/log.jsonl" >/dev/null 2>&1
end=$(date +%s.%N)
$py converters/bench_train_peer.py tfkeras "$out/whole.h5" "$out/data" "$h" "$w" "$batch" 2 \
  $rescale $mean 2>/dev/null | tail -1 > "$out/tfkeras.json"
python3 - "$out" "$start" "$end" "$h" "$w" "$batch" "$n" "$bin" "$*" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts")
from bench_json import fig, versions, write
d, start, end, h, w, batch, n, binary, args = sys.argv[1:]
log = [json.loads(l) for l in open(os.path.join(d, "ft", "log.jsonl"))]
tk = json.load(open(os.path.join(d, "tfkeras.json")))
peak = int(open(os.path.join(d, "allconv_peak_kb")).read().split()[-1]) / 1024
a = log[-1]["images_per_s"]
rows = [
  ["images/s, warm epoch", fig(a, 2), fig(tk["images_per_s"], 2), fig(a / tk["images_per_s"], 2)],
  ["peak memory (MiB)", fig(peak, 0), fig(tk["peak_mb"], 0), fig(peak / tk["peak_mb"], 2)],
  ["share of the epoch spent waiting for data (allconv)", fig(log[-1]["data_wait_share"], 2), None, None],
  ["`allconv finetune` whole command, 2 epochs + validation + outputs (s)", fig(float(end) - float(start), 1), None, None],
]
title = f"Training {2 * int(n)} images {h}x{w}, batch {batch}, Adam, no augmentation"
tables = [{"title": title, "columns": ["measure", "allconv (libtorch, CPU)", "tf-keras fit", "allconv / tf-keras"], "rows": rows}]
command = "scripts/bench_train.sh" + (" " + args if args else "")
path = write("bench_train", command, versions(binary, [tk["peer"]]), tables)
print(f"bench_train: wrote {path}")
PY
echo "bench_train: rendering docs/benchmarks.md"
ALLCONV_WRITE_BENCH_TABLES=1 cargo test --quiet --test docs_figures benchmark_tables_are_the_committed_json
