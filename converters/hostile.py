"""fixtures/hostile/: files a converter must refuse with a clear error.

    .venv-keras208/bin/python converters/keras208.py hostile_src     # lambda.h5 + sources
    .venv-keras122/bin/python converters/keras122.py hostile_merge_lambda
    .venv-tf/bin/python converters/tfkeras.py hostile_tfoplambda
    .venv-tf/bin/python converters/hostile.py                        # the rest (h5py)
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

H = common.case_dir("hostile")
SRC = os.path.join(common.BUILD, "hostile_src")
SMALL = os.path.join(SRC, "small.h5")  # genuine Keras 2.0.8: img, conv1, bn1, gap, out


def cp(name):
    p = os.path.join(H, name)
    shutil.copyfile(SMALL, p)
    return p


def s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def edit_config(name, change):
    """A copy of small.h5 whose model_config is rewritten by change(cfg); weights untouched."""
    p = cp(name)
    with h5py.File(p, "r+") as f:
        cfg = json.loads(s(f.attrs["model_config"]))
        change(cfg)
        f.attrs["model_config"] = json.dumps(cfg).encode()
    return p


def layer(cfg, name):
    return next(l for l in cfg["config"]["layers"] if l["name"] == name)


def insert_before_out(cfg, new_layers):
    """Put layers [(name, class_name, config)] in a chain between gap and out."""
    layers = cfg["config"]["layers"]
    at = next(i for i, l in enumerate(layers) if l["name"] == "out")
    prev = "gap"
    for name, cls, conf in new_layers:
        layers.insert(at, {"name": name, "class_name": cls, "config": dict(conf, name=name, trainable=True),
                           "inbound_nodes": [[[prev, 0, 0, {}]]]})
        at += 1
        prev = name
    layer(cfg, "out")["inbound_nodes"] = [[[prev, 0, 0, {}]]]


BIG = 1 << 62  # fits in a u64 and in JSON; its products with small sizes do not


def sizes(expect):
    """Sizes from the file that would overflow (or wrap) size arithmetic, and a wrong weight
    shape that must be caught from the HDF5 metadata before the data is read."""
    # conv1's kernel declares (3, 3, 3, 100000) instead of (3, 3, 3, 2): 10.8 MB claimed by a
    # deflate-chunked dataset in a ~19 KB file (within the shape-bomb guard's 1000x), and
    # its one written chunk is not deflate data. Reading before checking the shape
    # allocates the 10.8 MB and fails on the chunk (or on the filter, where the HDF5 build
    # lacks deflate); checking the dataspace first reports the shape mismatch.
    p = cp("wrong_shape_unread.h5")
    n = 100000
    with h5py.File(p, "r+") as f:
        g = f["model_weights/conv1/conv1"]
        del g["kernel"]
        d = g.create_dataset("kernel", shape=(3, 3, 3, n), dtype="<f4", chunks=(3, 3, 3, 1000),
                             compression="gzip")
        d.id.write_direct_chunk((0, 0, 0, 0), b"not deflate data " * 8)
    claimed = 3 * 3 * 3 * n * 4
    assert os.path.getsize(p) < claimed <= 1000 * os.path.getsize(p), os.path.getsize(p)
    expect["wrong_shape_unread.h5"] = ["layer conv1", "has shape [3, 3, 3, %d]" % n,
                                       "expected [3, 3, 3, 2]"]

    def conv1(key, value):
        def change(cfg):
            layer(cfg, "conv1")["config"][key] = value
        return change
    # 2^62 dilation / strides / kernel on the 3x3 'same' conv1.
    edit_config("huge_dilation.h5", conv1("dilation_rate", [BIG, BIG]))
    expect["huge_dilation.h5"] = ["conv1", "dilation_rate %d" % BIG]
    edit_config("huge_strides.h5", conv1("strides", [BIG, BIG]))
    expect["huge_strides.h5"] = ["conv1", "strides %d" % BIG]
    edit_config("huge_kernel.h5", conv1("kernel_size", [BIG, BIG]))
    expect["huge_kernel.h5"] = ["conv1", "kernel_size %d" % BIG]

    # conv1 as a SeparableConv2D with depth_multiplier 2^63: 3 channels x 2^63 overflows.
    def separable(cfg):
        c = layer(cfg, "conv1")
        c["class_name"] = "SeparableConv2D"
        c["config"]["depth_multiplier"] = 1 << 63
    edit_config("huge_depth_multiplier.h5", separable)
    expect["huge_depth_multiplier.h5"] = ["conv1", "depth_multiplier %d" % (1 << 63)]

    # gap as a 'same' MaxPooling2D with pool_size 2^62 (its strides default to the pool).
    def pool(cfg):
        g = layer(cfg, "gap")
        g["class_name"] = "MaxPooling2D"
        g["config"].update(pool_size=[BIG, BIG], strides=None, padding="same")
    edit_config("huge_pool.h5", pool)
    expect["huge_pool.h5"] = ["gap", "pool_size %d" % BIG]

    # Dense units 2^62.
    edit_config("huge_units.h5", lambda cfg: layer(cfg, "out")["config"].update(units=BIG))
    expect["huge_units.h5"] = ["out", "units %d" % BIG]

    # Reshape whose fixed target dims multiply past 2^64 (each below the size limit).
    edit_config("huge_reshape.h5", lambda cfg: insert_before_out(
        cfg, [("reshape_bomb", "Reshape", {"target_shape": [1 << 30, 1 << 30, 1 << 30, -1]})]))
    expect["huge_reshape.h5"] = ["reshape_bomb", "target_shape"]

    # RepeatVector 2^63 then Flatten: 2^63 x 2 values.
    edit_config("huge_repeat.h5", lambda cfg: insert_before_out(
        cfg, [("repeat_bomb", "RepeatVector", {"n": 1 << 63}), ("flat", "Flatten", {})]))
    expect["huge_repeat.h5"] = ["repeat_bomb", "n %d" % (1 << 63)]

    # Declared input (2^62, 2^62, 3): convert would size a test input from it.
    def big_input(h, w):
        def change(cfg):
            layer(cfg, "img")["config"]["batch_input_shape"] = [None, h, w, 3]
        return change
    edit_config("huge_input.h5", big_input(BIG, BIG))
    expect["huge_input.h5"] = ["img", "batch_input_shape", "dimension %d" % BIG]
    # Not refused by inspect (every size is within bounds), so not in expect.json: its
    # input holds 65536 x 65536 x 3 values, which convert must not allocate as a test
    # input (tests/overflow.rs).
    edit_config("huge_volume.h5", big_input(65536, 65536))

    # An ONNX file whose embedded test input claims 2^32 x 2^32 x 2 values
    # (tests/overflow.rs runs `allconv verify` on it).
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "g", [x], [y])
    model = helper.make_model(graph, producer_name="allconv-hostile", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7

    def vec(shape):
        return json.dumps({"shape": shape, "dtype": "float32", "base64": ""})
    helper.set_model_props(model, {"allconv.test_input": vec([1 << 32, 1 << 32, 2]),
                                   "allconv.test_output": vec([1, 2]),
                                   "allconv.test_vector_source": "tract"})
    onnx.save(model, os.path.join(H, "huge_test_vector.onnx"))


def main():
    expect = {}
    # truncated
    data = open(SMALL, "rb").read()
    open(os.path.join(H, "truncated.h5"), "wb").write(data[: len(data) // 2])
    expect["truncated.h5"] = "truncated"
    open(os.path.join(H, "not_hdf5.h5"), "w").write("this is not an HDF5 file, just text\n")
    expect["not_hdf5.h5"] = "not an HDF5 file"
    # missing weight: conv1's kernel dataset deleted (still named in weight_names)
    with h5py.File(cp("missing_weight.h5"), "r+") as f:
        del f["model_weights/conv1/conv1/kernel"]
    expect["missing_weight.h5"] = "conv1"
    # wrong shape: conv1 kernel (3,3,3,2) replaced by (3,3,2,2)
    with h5py.File(cp("wrong_shape.h5"), "r+") as f:
        del f["model_weights/conv1/conv1/kernel"]
        f["model_weights/conv1/conv1"].create_dataset("kernel", data=np.zeros((3, 3, 2, 2), np.float32))
    expect["wrong_shape.h5"] = "conv1"
    # broken json
    with h5py.File(cp("broken_json.h5"), "r+") as f:
        cfg = s(f.attrs["model_config"])
        f.attrs["model_config"] = cfg[: len(cfg) // 2]
    expect["broken_json.h5"] = "model_config"
    expect["lambda.h5"] = "Lambda"
    # two Lambdas + custom class + evil module
    p = os.path.join(H, "lambda_and_custom.h5")
    shutil.copyfile(os.path.join(SRC, "lambda2.h5"), p)
    with h5py.File(p, "r+") as f:
        cfg = json.loads(s(f.attrs["model_config"]))
        for l in cfg["config"]["layers"]:
            if l["name"] == "to_be_custom":
                l["class_name"] = "MyCustomLayer"
            if l["name"] == "to_be_evil":
                l["module"] = "evil.module"
                l["registered_name"] = "evil>Conv2D"
        f.attrs["model_config"] = json.dumps(cfg).encode()
    expect["lambda_and_custom.h5"] = ["lambda_a", "lambda_b", "MyCustomLayer", "evil.module"]
    expect["tfoplambda.h5"] = "TFOpLambda"
    expect["merge_lambda.h5"] = "Merge"
    # external link replacing a weight group
    with h5py.File(cp("external_link.h5"), "r+") as f:
        del f["model_weights/conv1"]
        f["model_weights/conv1"] = h5py.ExternalLink("/etc/passwd", "/")
    expect["external_link.h5"] = "external link"
    with h5py.File(cp("soft_link.h5"), "r+") as f:
        del f["model_weights/conv1/conv1/kernel"]
        f["model_weights/conv1/conv1/kernel"] = h5py.SoftLink("/model_weights/out/out/kernel")
    expect["soft_link.h5"] = "soft link"
    # external raw storage
    with h5py.File(cp("external_storage.h5"), "r+") as f:
        del f["model_weights/conv1/conv1/kernel"]
        f["model_weights/conv1/conv1"].create_dataset(
            "kernel", shape=(3, 3, 3, 2), dtype="<f4", external=[("/etc/passwd", 0, 3 * 3 * 3 * 2 * 4)])
    expect["external_storage.h5"] = "external"
    # virtual dataset
    with h5py.File(cp("virtual_dataset.h5"), "r+") as f:
        del f["model_weights/conv1/conv1/kernel"]
        lay = h5py.VirtualLayout(shape=(3, 3, 3, 2), dtype="<f4")
        lay[...] = h5py.VirtualSource("other.h5", "data", shape=(3, 3, 3, 2))
        f["model_weights/conv1/conv1"].create_virtual_dataset("kernel", lay, fillvalue=0)
    expect["virtual_dataset.h5"] = "virtual"
    # shape bomb: declared (1<<20, 1<<20) float32, chunked, never written
    with h5py.File(cp("shape_bomb.h5"), "r+") as f:
        del f["model_weights/out/out/kernel"]
        f["model_weights/out/out"].create_dataset("kernel", shape=(1 << 20, 1 << 20), dtype="<f4",
                                                  chunks=(64, 64))
    expect["shape_bomb.h5"] = "shape bomb"
    # deep json: 100000 nested lists in model_config
    with h5py.File(cp("deep_json.h5"), "r+") as f:
        n = 100000
        f.attrs["model_config"] = ('{"class_name": "Model", "config": ' + "[" * n + "]" * n + "}").encode()
    expect["deep_json.h5"] = "nested"
    sizes(expect)
    with open(os.path.join(H, "expect.json"), "w") as fh:
        json.dump({"_doc": "file -> phrase(s) the converter's error must contain "
                           "(case-insensitive); a list means every item must appear in one "
                           "error report", **expect}, fh, indent=1)
        fh.write("\n")
    for k in sorted(expect):
        assert os.path.exists(os.path.join(H, k)), k
    print("hostile:", sorted(os.listdir(H)))


if __name__ == "__main__":
    main()
