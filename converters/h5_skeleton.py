"""A Keras .h5 file's structure without its weights, and a file rebuilt from it.

The full-width benchmark model (137 MB) cannot travel to a lent GPU machine (64 MiB for the
whole working tree), and that machine has no Keras to build it. Its structure can: every
group, every attribute (model_config, layer_names, weight_names...) and every dataset's
shape and type, a few hundred KB of JSON. There, `build` writes an .h5 of the same
structure with seeded random weights (He-normal kernels, BatchNorm at identity), which
allconv reads like the original. Throughput does not depend on the weights' values.

    python3 converters/h5_skeleton.py dump MODEL.h5 SKELETON.json
    python3 converters/h5_skeleton.py build SKELETON.json OUT.h5 [--seed 1]

Needs h5py and numpy (the GPU machine has both).
"""
import json
import os
import sys

import h5py
import numpy as np


def attr_to_json(value):
    if isinstance(value, str):
        return {"kind": "str", "value": value}
    if isinstance(value, bytes):
        return {"kind": "bytes", "value": value.decode("latin-1")}
    arr = np.asarray(value)
    if arr.dtype.kind == "S":
        values = [v.decode("latin-1") for v in arr.ravel().tolist()]
    else:
        values = arr.ravel().tolist()
    return {"kind": "array", "dtype": arr.dtype.str, "shape": list(arr.shape), "value": values}


def attr_from_json(a):
    if a["kind"] == "str":
        return a["value"]
    if a["kind"] == "bytes":
        return np.bytes_(a["value"].encode("latin-1"))
    dtype = np.dtype(a["dtype"])
    values = a["value"]
    if dtype.kind == "S":
        values = [v.encode("latin-1") for v in values]
    return np.array(values, dtype=dtype).reshape(a["shape"])


def dump(src, dst):
    nodes = []
    with h5py.File(src, "r") as f:
        def entry(name, obj):
            attrs = {k: attr_to_json(v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                nodes.append({"path": name, "dataset": True, "shape": list(obj.shape),
                              "dtype": obj.dtype.str, "attrs": attrs})
            else:
                nodes.append({"path": name, "dataset": False, "attrs": attrs})
        entry("/", f)
        f.visititems(entry)
    with open(dst, "w") as out:
        json.dump({"source": src, "nodes": nodes}, out)
    print(f"{dst}: {len(nodes)} groups and datasets from {src}")


def random_weights(path, shape, dtype, rng):
    leaf = path.rsplit("/", 1)[-1].split(":")[0]
    if leaf in ("bias", "beta", "moving_mean"):
        return np.zeros(shape, dtype)
    if leaf in ("gamma", "moving_variance"):
        return np.ones(shape, dtype)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(dtype)


def build(src, dst, seed):
    skeleton = json.load(open(src))
    rng = np.random.default_rng(seed)
    with h5py.File(dst + ".tmp", "w") as f:
        for n in skeleton["nodes"]:
            if n["path"] == "/":
                obj = f
            elif n["dataset"]:
                data = random_weights(n["path"], tuple(n["shape"]), np.dtype(n["dtype"]), rng)
                obj = f.create_dataset(n["path"], data=data)
            else:
                obj = f.require_group(n["path"])
            for k, a in n["attrs"].items():
                obj.attrs[k] = attr_from_json(a)
    os.replace(dst + ".tmp", dst)
    print(f"{dst}: rebuilt from {src} with seed {seed}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "dump":
        dump(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "build":
        seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 1
        build(sys.argv[2], sys.argv[3], seed)
    else:
        sys.exit(__doc__)
