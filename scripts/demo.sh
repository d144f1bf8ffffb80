#!/usr/bin/env bash
# The end-to-end demo on bundled data: a Keras 2.0.8 whole-image model built by the
# paper's recipe (fixtures/, written by genuine Keras), inspected, converted to ONNX with
# the paper's preprocessing and 4-flip TTA in the graph, verified layer by layer against
# genuine Keras's own outputs, and run on real mammograms (mini-MIAS).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/progress.sh
phase "setup: cmake and libtorch 2.11.0 (first time: a 531 MB torch wheel from PyPI)"
scripts/setup.sh
phase "cargo build --release: $(build_hint target/release)"
cargo build --release
phase "built; the demo follows"
bin=target/release/allconv
out=demo-out; mkdir -p "$out"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
case=fixtures/k208tf_resnet50_whole_resnet     # ResNet50 patch net + [512-512-1024]x2 top, narrow widths

step "1. Inspect: Keras 2.0.8 whole-image model, nested patch network expanded"
$bin inspect $case/model.h5 | head -12; echo "  ..."; $bin inspect $case/model.h5 | tail -4

step "2. The same model at the paper's whole-image size (1152x896)"
$bin inspect $case/model.h5 --input-size 1152x896 | tail -3

step "3. Verify: tract vs genuine Keras, end to end and every recorded layer alone on the inputs Keras fed it"
$bin verify $case/model.h5 --reference $case/io.npz --per-layer | head -3
$bin verify $case/model.h5 --reference $case/io.npz --isolated | head -4

step "4. Convert to ONNX with preprocessing and 4-flip TTA in the graph (a device needs only this file)"
# The paper's parameters for 16-bit PNGs are rescale=0.003891,mean=52.18. This fixture is a
# narrow random-weight model whose inputs were scaled to about [-1, 1.5] (see its io.npz), so
# the demo scales 8-bit pixels to that range instead. prep_tta.npz is genuine tf-keras on two
# mini-MIAS crops through this very pipeline (converters/tta_ref.py --raw): it becomes the
# file's embedded test vector, checked against tract before anything is written.
$bin convert $case/model.h5 -o $out/whole.onnx --input-size 225x177 \
    --preprocess rescale=0.0078125,mean=0.5,gray --tta flips4 --reference $case/prep_tta.npz

step "5. The ONNX file carries genuine Keras's numbers: verify needs nothing else"
$bin verify $out/whole.onnx

step "5b. The same model for a device: tract's NNEF (metadata and test vectors inside), float16 weights"
# scripts/cross.sh aarch64-unknown-linux-gnu builds the inference-only binary that runs
# these files on ARM; tests/edge_cross.rs runs it under qemu.
$bin convert $case/model.h5 -o $out/whole.nnef.tgz --input-size 225x177 \
    --preprocess rescale=0.0078125,mean=0.5,gray --tta flips4 --reference $case/prep_tta.npz
$bin verify $out/whole.nnef.tgz
$bin convert $case/model.h5 -o $out/whole_f16.onnx --input-size 225x177 --weights f16 \
    --preprocess rescale=0.0078125,mean=0.5,gray --tta flips4 --reference $case/prep_tta.npz
ls -l $out/whole.onnx $out/whole.nnef.tgz $out/whole_f16.onnx

step "6. Predict on real mammograms (mini-MIAS): 8-bit PGM, PNG, JPEG with the in-graph pipeline; 12-bit DICOM MONOCHROME1 at its own scale"
$bin predict $out/whole.onnx fixtures/images/mdb001.pgm fixtures/images/mdb028.pgm \
    fixtures/images/mdb028_8.png fixtures/images/mdb028.jpg
# The DICOM holds 16x the 8-bit values in 12 stored bits: the same scaling, divided by 16.
$bin predict $out/whole.onnx fixtures/images/mdb028_m1.dcm --preprocess rescale=0.00048828125,mean=0.5,gray

step "6b. 16-bit PNG, PGM and TIFF: --preprocess overrides the file's parameters (16-bit scale)"
$bin predict $out/whole.onnx fixtures/images/mdb001_16.png fixtures/images/mdb001_16.pgm \
    fixtures/images/mdb001_16.tif --preprocess rescale=0.0000304,mean=0.5,gray --json | head -12

step "7. Patch classifier run fully convolutionally over a whole mammogram: heatmap overlay"
$bin predict fixtures/k208tf_yaroslav_patch/model.h5 fixtures/images/mdb028.pgm \
    --preprocess size=512x512 --heatmap $out/heatmaps
ls -la $out/heatmaps

step "8. Re-head a patch classifier into a whole-image classifier (the paper's add_top_layers)"
# YaroslavNet patch classifier (1 channel) -> heatmap + max pooling + FC16-8 + shortcut, the
# seed's DDSM row, at a size the paper never used. Structure and numbers match genuine
# Keras 2.0.8 running the paper's code (tests/rehead.rs); here the new layers are fresh.
$bin rehead fixtures/k208_yaroslav_patch/model.h5 -o $out/yaroslav_whole.h5 \
    --input-size 1024x768 --top heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut --seed 1
$bin inspect $out/yaroslav_whole.h5 | tail -14
$bin convert $out/yaroslav_whole.h5 -o $out/yaroslav_whole.onnx --input-size 1024x768
# Its embedded vector is libtorch's run of allconv's graph at conversion (fresh weights: no
# Keras reference exists), so verify checks the file in tract against another runtime, not
# Keras parity; tests/rehead.rs proves that.
$bin verify $out/yaroslav_whole.onnx
$bin predict $out/yaroslav_whole.onnx fixtures/images/mdb028.pgm \
    --preprocess size=1024x768,rescale=0.0078125,mean=0.5,channels=1

step "9. Fine-tune (the paper's two-stage training, Keras semantics, libtorch on CPU)"
# A synthetic two-class set of 16-bit PNGs (bright mass or not); the narrow VGG16 patch
# classifier re-headed with a VGG block at 64x64; stage 1 trains the top, stage 2 all layers.
$bin synth $out/synth --per-class 32 --size 64x64
$bin finetune --patch-model-state fixtures/k208_vgg16_patch/model.h5 --block-type vgg \
    --top-depths 16 --top-repetitions 1 --img-size 64 64 --rescale-factor 0.0000305 \
    --featurewise-mean 0.5 --batch-size 16 --nb-epoch 2 --all-layer-epochs 5 --optimizer adam \
    --init-learningrate 0.001 --all-layer-multiplier 0.5 --no-augmentation \
    -o $out/finetuned/best.h5 --log $out/finetuned/log.jsonl \
    $out/synth/train $out/synth/val $out/synth/test

step "9b. Evaluate the fine-tuned model on its test set: AUROC with 95% intervals, single view vs 4-flip TTA, ROC plot"
$bin evaluate $out/finetuned/best.onnx $out/synth/test --tta \
    --preprocess rescale=0.0000305,mean=0.5,gray --roc $out/finetuned/test_roc.png \
    --scores $out/finetuned/test_scores.csv
# Every number again from the per-image scores alone, with no model.
$bin evaluate --from-scores $out/finetuned/test_scores.csv --json | head -c 300; echo

step "9c. The paper's first step: sample training patches from mammograms and ROI masks"
# A bundled synthetic set in CBIS-DDSM's layout (16-bit images, calc and mass masks);
# tests/sample_patches.rs holds these files pixel-identical to the paper's script.
F=fixtures/sample_patches/input
rm -rf $out/patches
$bin sample-patches $F/roi_mask_path.csv $F/masks $F/pat_train.txt $F/full \
    $out/patches/train $out/patches/val \
    --target-height 256 --patch-size 32 --nb-bkg 6 --nb-abn 4 --nb-hns 3 --val-size 0.25

step "9d. The paper's second step: train a patch classifier (patch_clf_train.py's three stages)"
# VGG16 from random weights on these patches (its smallest input, 32x32), background against
# the four lesion folders as one class; then, from that model, the three stages the paper
# runs from ImageNet weights (the last layer, layers[15:], all layers).
C="background abnormal=calc_mal+calc_ben+mass_mal+mass_ben"
common="--net vgg16 --img-size 32 32 --img-scale 255 --batch-size 16 --train-bs-multiplier 1 \
    --optimizer adam --init-learningrate 0.0001 --class-list $C"
$bin train-patch $out/patches/train $out/patches/val $out/patches/val $common \
    --no-use-pretrained --nb-epoch 2 --best-model $out/patch/one.h5
$bin train-patch $out/patches/train $out/patches/val $out/patches/val $common \
    --resume-from $out/patch/one.h5 --nb-epoch 1 --top-layer-epochs 2 --all-layer-epochs 3 \
    --best-model $out/patch/patch.h5 --log $out/patch/log.jsonl

step "10. Every bundled fixture: Keras version, dialect, parameter count"
for d in fixtures/*/; do
  [ -f "$d/expect.json" ] && { [ -f "$d/model.h5" ] || [ -f "$d/weights.h5" ]; } || continue
  m="$d/model.h5"; args=()
  [ -f "$m" ] || m="$d/weights.h5"
  [ -f "$d/model.json" ] && args+=(--config "$d/model.json")
  case "$d" in fixtures/k122_*) args+=(--source-backend theano);; esac
  $bin inspect "$m" "${args[@]}" --json | python3 -c 'import json,sys; r=json.load(sys.stdin); v=r["keras_version"] or "?"; print("  %-30s %7s %9d params %4d layers  %s" % (sys.argv[1], v, r["params"], len(r["layers"]), r["dialect"]))' "$(basename "$d")"
done

step "11. A hostile file is refused, never executed"
$bin inspect fixtures/hostile/lambda_and_custom.h5 || echo "(refused as expected)"
