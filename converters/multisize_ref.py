"""Genuine tf-keras references at several input sizes, for the one-file-for-all-sizes ONNX
export (tests/symbolic_size.rs).

TensorFlow's `same` padding of a strided window depends on the input size modulo the
stride (pad_total = max((ceil(n/s)-1)*s + k_eff - n, 0), the odd pixel bottom/right), so
one symbolic-size ONNX file must be proven at sizes of both parities that are not
multiples of 32. For each case this loads the fixture with tf-keras 2.21
(TF_USE_LEGACY_KERAS=1: TensorFlow's rule, like the published TensorFlow checkpoints) and
writes fixtures/<case>/io_sizes.npz with, per size HxW, `input_HxW` (1 x H x W x C, NHWC,
values on a 1/4 grid so the file compresses) and `output_HxW` (the model's prediction,
or for a model whose Flatten + Dense head fixes its size, the output of its last spatial
layer: see CASES), and `<layer>/output_HxW` for a layer of the file applied alone to
`input_HxW` (a genuine tf-keras layer built from the file's config for it).

A file that declares a fixed input size (every case here but the patch ResNet50) is
rebuilt by tf-keras from its own config with the spatial dims of its InputLayer set to
None (nothing else changed) and given the file's weights layer by layer (shape-checked):
what the same file would compute had it declared (None, None, C). The test frees the size
of allconv's graph the same way.

    .venv-tf/bin/python converters/multisize_ref.py k208tf_resnet50_patch \
        k208tf_resnet50_whole_resnet tfk_sequential tfk_functional

The command line is appended to fixtures/<case>/COMMAND_sizes.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.setup_env("tfkeras")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tf_keras  # noqa: E402

# Sizes of both parities in each axis, none a multiple of 32. The ResNet50 cases need at
# least 197 (their 7x7 valid avg_pool after a 32x reduction); the small cases are chosen so
# that every strided stage sees odd and even sizes.
BIG = [(197, 203), (226, 199), (257, 210)]
SMALL = [(11, 14), (13, 12), (9, 18), (21, 10)]
# case -> (sizes, layer whose output is recorded: None for the model output,
#          layers also applied alone to the input)
CASES = {
    "k208tf_resnet50_patch": (BIG, None, []),
    "k208tf_resnet50_whole_resnet": (BIG, None, []),
    # Sequential with a GAP head: conv, MaxPooling2D 2x2/2 same, Conv2D 2x2/2 same. Its
    # pool follows a ReLU, where any pad value <= 0 gives the same result: pool1 is also
    # applied alone to the signed input (`pool1/output_HxW`).
    "tfk_sequential": (SMALL, None, ["pool1"]),
    # Flatten + Dense head fixes its size: recorded up to the last spatial layer
    # (Conv2D 3x3/2 same, SeparableConv2D 3x3/2 same, AveragePooling2D 3x3/2 same).
    "tfk_functional": (SMALL, "avgpool_same", []),
}
SEED = 20261128


def load(case, cut):
    path = os.path.join(common.FIXTURES, case, "model.h5")
    model = tf_keras.models.load_model(path, compile=False)
    if all(d is None for d in model.input_shape[1:3]):
        return model
    # Fixed-size file: the same architecture with a free size, the file's weights.
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
    layers = cfg["config"]["layers"] if isinstance(cfg["config"], dict) else cfg["config"]
    for layer in layers:
        if layer["class_name"] == "InputLayer":
            shp = layer["config"]["batch_input_shape"]
            layer["config"]["batch_input_shape"] = [shp[0], None, None, shp[3]]
    if cut is not None:
        # Functional config, layers in topological order: keep those up to `cut`.
        names = [layer["config"]["name"] for layer in layers]
        del layers[names.index(cut) + 1:]
        cfg["config"]["output_layers"] = [[cut, 0, 0]]
    free = tf_keras.models.model_from_json(json.dumps(cfg))
    for a in free.layers:
        a.set_weights(model.get_layer(a.name).get_weights())
    return free


def grid_input(rng, h, w, c):
    """Image-like input on a 1/4 grid in [-2, 2]: exact in float32, compresses well."""
    x = common.make_input(rng, (1, h, w, c), levels=64)
    return (np.round(x * 4.0) / 4.0).astype(np.float32)


def main(case):
    sizes, cut, alone = CASES[case]
    model = load(case, cut)
    alone = {
        name: tf_keras.layers.deserialize(
            {"class_name": model.get_layer(name).__class__.__name__,
             "config": model.get_layer(name).get_config()})
        for name in alone
    }
    c = model.input_shape[-1]
    rng = np.random.default_rng(SEED)
    arrays = {}
    for h, w in sizes:
        x = grid_input(rng, h, w, c)
        y = model.predict(x, verbose=0).astype(np.float32)
        arrays[f"input_{h}x{w}"] = x
        arrays[f"output_{h}x{w}"] = y
        for name, layer in alone.items():
            arrays[f"{name}/output_{h}x{w}"] = layer(x).numpy().astype(np.float32)
        print(case, f"{h}x{w}", "output", y.ravel().tolist())
    out = os.path.join(common.FIXTURES, case, "io_sizes.npz")
    np.savez_compressed(out, **arrays)
    print(case, "wrote", out, os.path.getsize(out), "bytes")
    line = f".venv-tf/bin/python converters/multisize_ref.py {case}\n"
    cmd = os.path.join(common.FIXTURES, case, "COMMAND_sizes")
    old = open(cmd).read() if os.path.exists(cmd) else ""
    if line not in old:
        with open(cmd, "a") as f:
            f.write(line)


if __name__ == "__main__":
    cases = sys.argv[1:]
    if not cases:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for case in cases:
        main(case)
