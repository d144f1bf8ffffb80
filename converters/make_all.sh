#!/usr/bin/env bash
# Regenerate every committed fixture (from the repo root): bash converters/make_all.sh
# Needs the venvs of converters/setup.sh (created here if missing). ~15 min on 2 cores.
# Not run here: the full-width benchmark model (bash converters/make_all.sh --bench), which
# writes build/bench/k208_full_resnet50_whole_resnet{,_tf}.h5 (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash converters/setup.sh
K208=.venv-keras208/bin/python; K122=.venv-keras122/bin/python; TF=.venv-tf/bin/python
if [ "${1:-}" = "--bench" ]; then
  $K208 converters/keras208.py k208_resnet50_whole_resnet --full-width
  $TF converters/tfconvert.py --full build/bench/k208_full_resnet50_whole_resnet.h5
  exit 0
fi
for c in $($K208 converters/keras208.py --list); do
  $K208 converters/keras208.py "$c"
done
for c in resnet50_patch vgg16_patch vgg19_patch yaroslav_patch resnet50_whole_resnet \
         vgg16_whole_vgg vgg16_whole_resnet yaroslav_whole_heatmap; do
  $TF converters/tfconvert.py "k208tf_$c"
done
$TF converters/tfconvert.py --check k208_conv k208_pool_pad k208_merge_act k208_seq_1d \
    k208_nested_shared k208_channels_first k208_layers_1d
for c in k122_th_conv k122_tf_merge k122_merge_layer hostile_merge_lambda; do
  $K122 converters/keras122.py "$c"
done
for c in tfk_functional tfk_sequential tfk_resnet50_whole tfk_chunked tfk_act_merge tfk_conv1d_cf \
         hostile_tfoplambda; do
  $TF converters/tfkeras.py "$c"
done
env -u TF_USE_LEGACY_KERAS $TF converters/keras3.py
$TF converters/realworld.py tfk_slash_names
$TF converters/realworld.py k3_depthwise
# Genuine tf-keras 4-flip TTA references (needs the k208tf_* files above); --raw also runs
# real mini-MIAS pixels through the in-graph preprocessing the demo uses.
$TF converters/tta_ref.py k208tf_resnet50_whole_resnet k208tf_vgg16_whole_vgg \
    k208tf_yaroslav_whole_heatmap
$TF converters/tta_ref.py --raw k208tf_resnet50_whole_resnet
# scikit-learn / NumPy / SciPy and a reference fast DeLong for `allconv evaluate` (fixtures/eval/).
$TF converters/eval_ref.py
# OpenCV references for image reading and INTER_CUBIC resizing (fixtures/images/), in
# their own venv (OpenCV's portable code path; see converters/opencv_ref.py).
[ -x .venv-cv/bin/python ] || { python3 -m venv .venv-cv && .venv-cv/bin/pip install -q \
    'opencv-python-headless<5' numpy pydicom pillow tifffile; }
.venv-cv/bin/python converters/opencv_ref.py
# DICOM in every archive transfer syntax (fixtures/dicom_codecs/): DCMTK and GDCM encode
# (apt-get install dcmtk libgdcm-tools), pydicom + pylibjpeg decode.
$TF converters/make_dicom_codecs.py
# rehead references: the k208_*_patch files above loaded in a fresh process each, then
# end2end-all-conv add_top_layers (converters/dm_top.py); rehead_structure_* are expect-only
for c in $($K208 converters/rehead_ref.py --list); do
  $K208 converters/rehead_ref.py "$c"
done
$TF converters/hostile.py
$TF converters/compress_fixture.py fixtures/k208_conv/model.h5 fixtures/compressed/k208_conv_gzip.h5
$TF converters/fixtures_readme.py
# One symbolic-size ONNX file at several sizes (tests/symbolic_size.rs): tf-keras references.
$TF converters/multisize_ref.py k208tf_resnet50_patch k208tf_resnet50_whole_resnet \
    tfk_sequential tfk_functional
# One/two/three-step training references for `allconv finetune` (fixtures/train_step/):
# genuine tf-keras 2.21 (every paper optimizer) and Keras 2.0.8 on Theano (sgd, adam).
for c in $($TF converters/train_step_ref.py --list tfk); do
  $TF converters/train_step_ref.py "$c"
done
for c in $($K208 converters/train_step_ref.py --list k208); do
  $K208 converters/train_step_ref.py "$c"
done
# Training augmentation references (fixtures/augment/): genuine Keras 2.0.8
# ImageDataGenerator.random_transform on mini-MIAS crops and synthetic images.
$K208 converters/augment_ref.py
$K208 converters/dropout_probe.py
for c in $($K208 converters/patch_nets_ref.py --list); do
  $K208 converters/patch_nets_ref.py "$c" --fixture
done
