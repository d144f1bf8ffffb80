#!/usr/bin/env bash
# Every check that needs a GPU, for a lent GPU machine (PyTorch 2.11, h5py, no Rust, no Keras,
# 64 MiB for the whole working tree). Two halves:
#   scripts/gpu_check.sh build   here: the release allconv and the torch_parity test binary,
#                                stripped and xz-compressed (~16 MB), and the full-width
#                                benchmark model's skeleton (converters/h5_skeleton.py: its
#                                structure, no weights) into build/gpu/. Carry build/gpu.
#   scripts/gpu_check.sh run     there (the device tool's `run`, carry ["build/gpu"]):
#     1. the ignored CUDA parity test (tests/torch_parity.rs, every fixture against a float64
#        reference, per layer);
#     2. the benchmark model rebuilt from its skeleton with seeded random weights;
#     3. 2 x PER_CLASS synthetic 16-bit mammograms at HxW (allconv synth);
#     4. allconv finetune --device cuda on them, float32 and --amp (2 epochs, all layers,
#        Adam, train batch BATCH): images/s of the warm epoch, of its training steps alone
#        (what the peer times), and the data-wait share;
#     5. the PyTorch eager loop on the same model, batch and card, float32 and AMP
#        (converters/torch_train_peer.py);
#     6. CUDA training's numbers: the narrow VGG16 fixture fine-tuned on the same 32 small
#        synthetic images on the CPU and on the device (same seed, float32, no augmentation);
#        each epoch's loss and val_loss must agree within 2% (relative): cuDNN's default TF32
#        convolutions round to ~1e-3 relative per layer, a wrong gradient or update moves
#        the losses by far more.
#   Each step's output goes under $OUT (or build/gpu/out), with summary.md at the end.
#   A step that fails is recorded and the next one runs; the script exits 1 if any failed.
# libtorch_cuda.so is loaded at run time (allconv::torch::load_cuda), so the CPU build works.
# A dry run on this machine (no GPU: CUDA steps fail and say so, the peer needs torch):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_PER_CLASS=2 GPU_CHECK_BATCH=2 \
#     GPU_CHECK_PY=.venv-tf/bin/python scripts/gpu_check.sh run
set -uo pipefail
cd "$(dirname "$0")/.."
gpu=build/gpu
case "${1:-}" in
  build)
    set -e
    scripts/setup.sh
    cargo build --release
    bin=$(cargo test --release --test torch_parity --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and "torch_parity" in m["target"]["name"]:
        print(m["executable"])')
    rm -rf "$gpu" && mkdir -p "$gpu"
    for pair in "target/release/allconv:allconv" "$bin:torch_parity"; do
      cp "${pair%%:*}" "$gpu/${pair##*:}" && strip "$gpu/${pair##*:}" && xz -T0 -6 "$gpu/${pair##*:}"
    done
    model=build/bench/k208_full_resnet50_whole_resnet_tf.h5
    if [ -f "$model" ]; then
      .venv-tf/bin/python converters/h5_skeleton.py dump "$model" "$gpu/bench_skeleton.json"
    else
      echo "gpu_check: no $model (bash converters/make_all.sh --bench makes it): no benchmark skeleton" >&2
    fi
    du -sh "$gpu"
    ;;
  run)
    out=${OUT:-$gpu/out}; mkdir -p "$out"
    device=${GPU_CHECK_DEVICE:-cuda}; size=${GPU_CHECK_SIZE:-1152x896}
    per_class=${GPU_CHECK_PER_CLASS:-32}; batch=${GPU_CHECK_BATCH:-8}
    h=${size%x*}; w=${size#*x}
    for b in allconv torch_parity; do
      [ -x "$gpu/$b" ] || { xz -dkf "$gpu/$b.xz" && chmod +x "$gpu/$b"; }
    done
    lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
    export LD_LIBRARY_PATH="${lib:+$lib:}${LD_LIBRARY_PATH:-}" ALLCONV_ROOT="$(pwd)"
    failed=0
    status() {
      echo "| $1 | $2 |" >> "$out/steps.md"; echo "gpu_check: $1: $2" >&2
      [ "$2" = "exit 0" ] || failed=$((failed + 1))
    }
    : > "$out/steps.md"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/card.txt" 2>&1 || true
    if [ "$device" = cuda ]; then
      "$gpu/torch_parity" --ignored --nocapture torch_cuda > "$out/parity.log" 2>&1
      status "CUDA parity (tests/torch_parity.rs torch_cuda_matches_float64_graph)" "exit $?"
    fi
    ${GPU_CHECK_PY:-python3} converters/h5_skeleton.py build "$gpu/bench_skeleton.json" "$gpu/whole.h5" --seed 1 > "$out/model.log" 2>&1
    status "benchmark model from its skeleton" "exit $?"
    rm -rf "$gpu/data"
    "$gpu/allconv" synth "$gpu/data" --per-class "$per_class" --size "$size" > "$out/synth.log" 2>&1
    status "synthetic data, $((2 * per_class)) training images ${size}" "exit $?"
    for mode in fp32 amp; do
      flag=(); [ "$mode" = amp ] && flag=(--amp)
      rm -rf "$gpu/ft_$mode"
      start=$(date +%s.%N)
      "$gpu/allconv" finetune "$gpu/whole.h5" --train "$gpu/data/train" --val "$gpu/data/val" \
        -o "$gpu/ft_$mode/best.h5" --img-size "$h" "$w" --rescale-factor 0.0000305 \
        --featurewise-mean 0.5 --batch-size $((2 * batch)) --train-bs-multiplier 0.5 \
        --nb-epoch 0 --all-layer-epochs 2 --optimizer adam --init-learningrate 0.0001 \
        --no-augmentation --device "$device" "${flag[@]}" --log "$out/finetune_$mode.jsonl" \
        > "$out/finetune_$mode.log" 2>&1
      rc=$?
      echo "{\"start\": $start, \"end\": $(date +%s.%N)}" > "$out/finetune_${mode}_wall.json"
      status "allconv finetune --device $device ($mode)" "exit $rc"
      python3 converters/torch_train_peer.py "$h" "$w" "$batch" 20 "${flag[@]}" \
        > "$out/peer_$mode.json" 2> "$out/peer_$mode.log"
      status "PyTorch eager peer ($mode)" "exit $?"
    done
    rm -rf "$gpu/num_data" "$gpu/num_ref" "$gpu/num_dev"
    "$gpu/allconv" synth "$gpu/num_data" --per-class 16 --size 64x64 > "$out/numbers_synth.log" 2>&1
    for run in ref:cpu "dev:$device"; do
      "$gpu/allconv" finetune --patch-model-state fixtures/k208_vgg16_patch/model.h5 \
        --block-type vgg --top-depths 16 --top-repetitions 1 --img-size 64 64 \
        --rescale-factor 0.0000305 --featurewise-mean 0.5 --batch-size 16 --optimizer adam \
        --init-learningrate 0.001 --nb-epoch 1 --all-layer-epochs 3 --no-augmentation --seed 1 \
        --train "$gpu/num_data/train" --val "$gpu/num_data/val" -o "$gpu/num_${run%%:*}/best.h5" \
        --device "${run#*:}" --log "$out/numbers_${run%%:*}.jsonl" > "$out/numbers_${run%%:*}.log" 2>&1 \
        || echo "finetune --device ${run#*:} failed" >> "$out/numbers_${run%%:*}.log"
    done
    python3 - "$out" > "$out/numbers.txt" 2>&1 <<'PY'
import json, sys
out = sys.argv[1]
def epochs(tag):
    return [json.loads(l) for l in open(f"{out}/numbers_{tag}.jsonl") if l.startswith("{")]
ref, dev = epochs("ref"), epochs("dev")
assert ref and len(ref) == len(dev), f"epochs: cpu {len(ref)}, device {len(dev)}"
worst = 0.0
for a, b in zip(ref, dev):
    for k in ("loss", "val_loss"):
        rel = abs(a[k] - b[k]) / max(abs(a[k]), 1e-12)
        worst = max(worst, rel)
        print(f"epoch {a['epoch']} {k}: cpu {a[k]:.6f} device {b[k]:.6f} relative {rel:.2e}")
assert worst <= 0.02, f"worst relative difference {worst:.2e} > 2e-2"
print(f"PASS: worst relative difference {worst:.2e}")
PY
    status "CUDA training's numbers against the CPU (numbers.txt)" "exit $?"
    python3 - "$out" "$size" "$batch" "$per_class" <<'PY'
import json, os, sys
out, size, batch, per_class = sys.argv[1:]
def last_json(path):
    try:
        lines = [l for l in open(path) if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except OSError:
        return None
card = open(os.path.join(out, "card.txt")).read().strip() or "(nvidia-smi gave nothing)"
rows = [f"Card: {card}. Full-width ResNet50 + [512-512-1024]x2 at {size}, train batch {batch}, "
        f"Adam, no augmentation, {2 * int(per_class)} synthetic 16-bit images.", "",
        "Steps alone: images over the epoch's forward + backward + update time (`step_seconds`"
        " in the log; the loss is read after each backward pass, so that time includes the"
        " GPU's), without decoding and copying batches: what the peer times, its inputs"
        " already on the GPU.", "",
        "| run | images/s | steps alone, images/s | data-wait share | peak GPU MiB | whole command (s) |",
        "|---|---|---|---|---|---|"]
for mode in ("fp32", "amp"):
    a = last_json(os.path.join(out, f"finetune_{mode}.jsonl"))
    wall = last_json(os.path.join(out, f"finetune_{mode}_wall.json"))
    if a:
        s = a.get("step_seconds") or {}
        busy = sum(s.get(k, 0.0) for k in ("forward", "backward", "update"))
        alone = f"{2 * int(per_class) / busy:.2f}" if busy > 0 else "n/a"
        rows.append(f"| allconv finetune ({mode}) | {a['images_per_s']:.2f} | {alone} | {a.get('data_wait_share', float('nan')):.2f} | | {wall['end'] - wall['start']:.1f} |")
    else:
        rows.append(f"| allconv finetune ({mode}) | failed: see finetune_{mode}.log | | | | |")
    p = last_json(os.path.join(out, f"peer_{mode}.json"))
    if p:
        rows.append(f"| {p['peer']} ({mode}) | | {p['images_per_s']:.2f} | (inputs on the GPU) | {p['peak_gpu_mb']:.0f} | |")
    else:
        rows.append(f"| PyTorch eager ({mode}) | failed: see peer_{mode}.log | | | | |")
rows += ["", "| step | result |", "|---|---|"] + open(os.path.join(out, "steps.md")).read().splitlines()
open(os.path.join(out, "summary.md"), "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
    echo "gpu_check: $failed step(s) failed" >&2
    [ "$failed" -eq 0 ]
    ;;
  *) echo "usage: scripts/gpu_check.sh build|run" >&2; exit 2 ;;
esac
