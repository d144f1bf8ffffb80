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
    expect["shape_bomb.h5"] = "out"
    # deep json: 100000 nested lists in model_config
    with h5py.File(cp("deep_json.h5"), "r+") as f:
        n = 100000
        f.attrs["model_config"] = ('{"class_name": "Model", "config": ' + "[" * n + "]" * n + "}").encode()
    expect["deep_json.h5"] = "nest"
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
