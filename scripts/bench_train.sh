#!/usr/bin/env bash
# Training throughput (a measurement, never a test): allconv (libtorch, CPU) against
# tf-keras `fit` on the same model file, the same images and the same batch, each in its
# own process, one after the other for each configuration:
#   `finetune`:    the narrow ResNet50 patch fixture re-headed with [32-32-64]x2 at 576x448,
#                  and the paper's full-width whole-image ResNet50 at 1152x896 (from
#                  converters/make_all.sh --bench, built here when missing); batch 2 and 8;
#   `train-patch`: the paper's patch classifier, ResNet50 (`--net resnet50`, random
#                  weights, all layers) on 256x256 patches, at the paper's batch of 32
#                  (--batch-size 64 x --train-bs-multiplier 0.5); tf-keras trains the
#                  `.h5` allconv wrote;
#   threads: 1 and 2 (libtorch's `--threads`; TensorFlow's intra-op and inter-op pools).
# Each run trains 2 epochs; the figures are the warm second epoch's images/s, the process's
# peak memory (and, for `finetune`, one more image's: batch 8's peak less batch 2's, over
# six), where allconv's step time went (forward, backward, update, waiting for data), and
# allconv's whole command.
# Results: docs/bench/bench_train.json (`finetune`) and docs/bench/bench_train_patch.json
# (`train-patch`), then docs/benchmarks.md's tables are rendered from them.
#   scripts/bench_train.sh            everything (about 50 minutes on 2 cores)
#   scripts/bench_train.sh --narrow   the narrow `finetune` model only (about 5 minutes)
#   scripts/bench_train.sh --patch    `train-patch` only (about 10 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
cargo build --release --quiet
models="narrow full patch"
[ "${1:-}" = "--narrow" ] && models="narrow"
[ "${1:-}" = "--patch" ] && models="patch"
full=build/bench/k208_full_resnet50_whole_resnet_tf.h5
if [[ $models == *full* ]] && [ ! -f "$full" ]; then bash converters/make_all.sh --bench; fi
bin=target/release/allconv; py=.venv-tf/bin/python
out=bench-out/train; rm -rf "$out"; mkdir -p "$out"
rescale=0.0000305; mean=0.5
for m in $models; do
  batches="2 8"
  if [ "$m" = narrow ]; then h=576; w=448; n=16
    $bin rehead fixtures/k208tf_resnet50_patch/model.h5 -o "$out/$m.h5" --input-size "${h}x${w}" \
      --top resnet:32x1,32x1:enlarge=2 --seed 1 >/dev/null
  elif [ "$m" = full ]; then h=1152; w=896; n=8; cp "$full" "$out/$m.h5"
  else h=256; w=256; n=64; batches=32; fi
  $py converters/bench_train_peer.py gen "$out/$m-data" "$n" "$h" "$w"
  for batch in $batches; do for threads in 1 2; do
    r="$out/$m-b$batch-t$threads"; mkdir -p "$r"
    echo "bench_train: $m ${h}x${w}, batch $batch, $threads thread(s)" >&2
    start=$(date +%s.%N)
    if [ "$m" = patch ]; then
      /usr/bin/time -f '%M' -o "$r/allconv_peak_kb" $bin train-patch "$out/$m-data" "$out/$m-data" \
        "$out/$m-data" --net resnet50 --no-use-pretrained --class-list neg pos --img-size "$h" "$w" \
        --no-img-scale --no-equalize-hist --rescale-factor $rescale --featurewise-mean $mean \
        --batch-size $((2 * batch)) --train-bs-multiplier 0.5 --nb-epoch 2 --optimizer adam \
        --init-learningrate 0.0001 --no-augmentation --threads "$threads" --best-model "$r/best.h5" \
        --log "$r/log.jsonl" >/dev/null 2>"$r/allconv.err" || echo "bench_train: allconv failed: $r/allconv.err" >&2
      model="$r/best.h5"
    else
      /usr/bin/time -f '%M' -o "$r/allconv_peak_kb" $bin finetune "$out/$m.h5" \
        --train "$out/$m-data" --val "$out/$m-data" -o "$r/ft/best.h5" --img-size "$h" "$w" \
        --rescale-factor $rescale --featurewise-mean $mean --batch-size $((2 * batch)) \
        --train-bs-multiplier 0.5 --nb-epoch 0 --all-layer-epochs 2 --optimizer adam \
        --init-learningrate 0.0001 --no-augmentation --threads "$threads" \
        --log "$r/log.jsonl" >/dev/null 2>"$r/allconv.err" || echo "bench_train: allconv failed: $r/allconv.err" >&2
      model="$out/$m.h5"
    fi
    python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$start" > "$r/allconv_s"
    $py converters/bench_train_peer.py tfkeras "$model" "$out/$m-data" "$h" "$w" "$batch" 2 \
      $rescale $mean "$threads" 2>"$r/tfkeras.err" | tail -1 > "$r/tfkeras.json" || true
  done; done
done
python3 - "$out" "$bin" "$models" "$*" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts")
from bench_json import fig, versions, write
d, binary, models, args = sys.argv[1:]
sizes = {"narrow": ("`finetune`: the narrow ResNet50 fixture re-headed [32-32-64]x2", "576x448", 32, (2, 8)),
         "full": ("`finetune`: the paper's full-width ResNet50 whole-image model", "1152x896", 16, (2, 8)),
         "patch": ("`train-patch`: the paper's ResNet50 patch classifier", "256x256", 128, (32,))}
tables, peer = {"bench_train": [], "bench_train_patch": []}, None
for m in models.split():
    name, size, images, batches = sizes[m]
    speed, phases, peaks = [], [], {}
    for batch in batches:
        for threads in (1, 2):
            r = os.path.join(d, f"{m}-b{batch}-t{threads}")
            label = f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}"
            try:
                log = [json.loads(l) for l in open(os.path.join(r, "log.jsonl"))][-1]
                tk = json.load(open(os.path.join(r, "tfkeras.json")))
            except (OSError, ValueError, IndexError) as e:
                sys.exit(f"bench_train: {r} did not finish ({e}); see its .err files")
            if log["epoch"] != 2 or tk["images"] != images:
                sys.exit(f"bench_train: {r}: expected epoch 2 of {images} images, got epoch "
                         f"{log['epoch']} (allconv) and {tk['images']} images (tf-keras)")
            peer = tk["peer"]
            a_mb = int(open(os.path.join(r, "allconv_peak_kb")).read().split()[-1]) / 1024
            a, t = log["images_per_s"], tk["images_per_s"]
            peaks[(batch, threads)] = (a_mb, tk["peak_mb"])
            per_s = 2 if min(a, t) >= 1 else 3
            speed.append([label, fig(a, per_s), fig(t, per_s), fig(a / t, 2), fig(a_mb, 0),
                          fig(tk["peak_mb"], 0), fig(a_mb / tk["peak_mb"], 2),
                          fig(float(open(os.path.join(r, "allconv_s")).read()), 1)])
            train_s = images / a
            s = log["step_seconds"]
            phases.append([label] + [fig(v / train_s, 2) for v in (
                s["forward"], s["backward"], s["update"], log["data_wait_share"] * train_s)])
    out = tables["bench_train_patch" if m == "patch" else "bench_train"]
    out.append({
        "title": f"Training with {name}: {images} images {size}, Adam, no augmentation, warm epoch",
        "columns": ["configuration", "allconv images/s", "tf-keras images/s",
                    "allconv / tf-keras", "allconv peak MiB", "tf-keras peak MiB",
                    "allconv / tf-keras memory", "allconv whole command (s)"],
        "rows": speed})
    # One more image's memory: the growth from batch 2 to batch 8, over six images.
    if batches == (2, 8):
        for threads in (1, 2):
            (a2, t2), (a8, t8) = peaks[(2, threads)], peaks[(8, threads)]
            speed.append([f"peak MiB per image (batch 8 less batch 2, over 6), {threads} thread"
                          f"{'s' if threads > 1 else ''}", None, None, None, fig((a8 - a2) / 6, 0),
                          fig((t8 - t2) / 6, 0), fig((a8 - a2) / (t8 - t2), 2), None])
    out.append({
        "title": f"Where allconv's training time goes: {name}, {size} (shares of the warm epoch)",
        "columns": ["configuration", "forward + loss", "backward", "optimizer update",
                    "waiting for data"],
        "rows": phases})
command = "scripts/bench_train.sh" + (" " + args if args else "")
for name, t in tables.items():
    if t:
        path = write("bench_train", command, versions(binary, [peer]), t, name=name)
        print(f"bench_train: wrote {path}")
PY
echo "bench_train: rendering docs/benchmarks.md"
ALLCONV_WRITE_BENCH_TABLES=1 cargo test --quiet --test docs_figures benchmark_tables_are_the_committed_json
