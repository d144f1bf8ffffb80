#!/usr/bin/env python3
"""Genuine Keras 2.0.8 training-augmentation references (fixtures/augment/).

Run from the repository root with the Keras 2.0.8 venv:
    .venv-keras208/bin/python converters/augment_ref.py

Every case runs Keras's own `ImageDataGenerator.random_transform` (Keras 2.0.8,
keras/preprocessing/image.py; scipy.ndimage.affine_transform order=0) on one input.
The random numbers it draws are recorded by wrapping numpy.random.uniform / random
(pass-through: real draws from np.random seeded per case) or, for hand-picked cases,
supplied from a queue (`forced`), so the parameters of every transform are known
exactly. The transform matrix Keras hands to `apply_transform` is recorded too.

Inputs (`input/<name>`, float32 HWC):
  mdb001: real mini-MIAS mammogram crop (fixtures/images/mdb001.pgm, rows 64:704,
          cols 320:832, x257 to 16 bit, 16x16 block mean, rounded) times the paper's
          rescale 0.003891, grey duplicated to 3 channels (ImageNet backbones).
  mdb028: mdb028.pgm crop (rows 150:779, cols 170:663), 17x17 block mean, 8-bit values,
          1 channel (YaroslavNet), 37x29.
  index:  synthetic 29x23x3, value = 1000*c + W*r + col (+0.25): every pixel unique, so a
          pixel fetched from the wrong place is visible.
Outputs: `output/<case>` float32 HWC; `matrix/<case>` float64 3x3 (the offset-centred
matrix Keras passed to apply_transform, absent when Keras warped nothing);
`draws/<case>` float64 (every number Keras drew, in order); `params/<case>` float64
[theta, tx, ty, shear, zx, zy, flip_h, flip_v, channel shifts...]. `cases.json` lists for each
case the input, the generator settings, the draw calls in order and the derived
parameters (theta, tx, ty, shear, zx, zy, channel shifts, flips).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.setup_env("theano")
import keras  # noqa: E402
import scipy  # noqa: E402
from keras.preprocessing import image as kimage  # noqa: E402

OUT = os.path.join(common.FIXTURES, "augment")
IMAGES = os.path.join(common.FIXTURES, "images")

PAPER = dict(horizontal_flip=True, vertical_flip=True, rotation_range=25.,
             shear_range=.2, zoom_range=[.8, 1.2], channel_shift_range=20.)


def read_pgm(path):
    with open(path, "rb") as f:
        data = f.read()
    parts = data.split(maxsplit=4)
    assert parts[0] == b"P5"
    w, h, maxval = int(parts[1]), int(parts[2]), int(parts[3])
    assert maxval < 256
    return np.frombuffer(parts[4][:w * h], dtype=np.uint8).reshape(h, w)


def block_mean(a, k):
    h, w = a.shape[0] // k, a.shape[1] // k
    return a[:h * k, :w * k].reshape(h, k, w, k).astype(np.float64).mean(axis=(1, 3))


def inputs():
    a = read_pgm(os.path.join(IMAGES, "mdb001.pgm"))[64:704, 320:832].astype(np.float64) * 257
    a16 = np.round(block_mean(a, 16)).astype(np.uint16)  # 40x32 uint16
    g = a16.astype(np.float32)
    g *= np.float32(0.003891)  # the paper's rescale_factor, in place as read_resize_img
    mdb001 = np.stack([g, g, g], axis=-1)
    b = read_pgm(os.path.join(IMAGES, "mdb028.pgm"))[150:779, 170:663]
    b8 = np.round(block_mean(b, 17)).astype(np.uint8)  # 37x29
    mdb028 = b8.astype(np.float32)[..., None]
    h, w = 29, 23
    r, c = np.mgrid[0:h, 0:w]
    index = np.stack([1000.0 * k + w * r + c + 0.25 for k in range(3)], axis=-1)
    return {"mdb001": mdb001.astype(np.float32), "mdb028": mdb028,
            "index": index.astype(np.float32)}


class Recorder:
    """Wraps numpy.random.uniform / random: records each call, optionally forces values."""

    def __init__(self):
        self.real_uniform = np.random.uniform
        self.real_random = np.random.random
        self.calls = []
        self.forced = None

    def uniform(self, low=0.0, high=1.0, size=None):
        if self.forced is not None:
            v = self.forced.pop(0)
            v = np.asarray(v, dtype=np.float64) if size is not None else float(v)
            if size is not None:
                assert np.shape(v) == (size,), (v, size)
        else:
            v = self.real_uniform(low, high, size)
        self.calls.append({"fn": "uniform", "low": float(low), "high": float(high),
                           "size": size, "value": np.atleast_1d(v).tolist()})
        return v

    def random(self, size=None):
        assert size is None
        v = float(self.forced.pop(0)) if self.forced is not None else self.real_random()
        self.calls.append({"fn": "random", "value": [v]})
        return v


def derive(gen, x_shape, calls):
    """The transform parameters implied by Keras's draws (its own code order)."""
    it = iter(calls)
    p = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
         "channel_shift": None, "flip_h": False, "flip_v": False}
    if gen.rotation_range:
        p["theta"] = np.pi / 180 * next(it)["value"][0]
    if gen.height_shift_range:
        p["tx"] = next(it)["value"][0] * x_shape[0]
    if gen.width_shift_range:
        p["ty"] = next(it)["value"][0] * x_shape[1]
    if gen.shear_range:
        p["shear"] = next(it)["value"][0]
    if not (gen.zoom_range[0] == 1 and gen.zoom_range[1] == 1):
        p["zx"], p["zy"] = next(it)["value"]
    if gen.channel_shift_range != 0:
        p["channel_shift"] = [next(it)["value"][0] for _ in range(x_shape[2])]
    if gen.horizontal_flip:
        p["flip_h"] = next(it)["value"][0] < 0.5
    if gen.vertical_flip:
        p["flip_v"] = next(it)["value"][0] < 0.5
    rest = list(it)
    assert not rest, rest
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in p.items()}


# (case, input, generator settings, seed or None, forced draws or None)
CASES = [
    ("paper_mdb001_s1", "mdb001", PAPER, 1, None),
    ("paper_mdb001_s2", "mdb001", PAPER, 2, None),
    ("paper_mdb001_s3", "mdb001", PAPER, 3, None),
    ("paper_mdb028_s4", "mdb028", PAPER, 4, None),
    ("paper_mdb028_s5", "mdb028", PAPER, 5, None),
    ("paper_index_s6", "index", PAPER, 6, None),
    ("paper_index_s7", "index", PAPER, 7, None),
    # hand-picked parameters (draws forced, in Keras's order)
    ("zoom_only", "index", dict(zoom_range=[.8, 1.2]), None, [[1.2, 0.8]]),
    # zx = 0.5, zy = 1.5: source coordinates exactly on half-integers (ties of the
    # order-0 rounding, floor(c + 0.5)) on every other row and column
    ("zoom_half_ties", "index", dict(zoom_range=[.5, 1.5]), None, [[0.5, 1.5]]),
    ("shear_only", "index", dict(shear_range=.2), None, [-0.2]),
    ("rot90", "mdb028", dict(rotation_range=90.), None, [90.0]),
    ("shift_rot_constant", "index",
     dict(rotation_range=30., width_shift_range=.2, height_shift_range=.1,
          fill_mode="constant", cval=0.), None, [17.0, -0.08, 0.15]),
    ("all_constant_cval", "mdb001",
     dict(rotation_range=25., shear_range=.2, zoom_range=[.8, 1.2],
          fill_mode="constant", cval=-3.5), None, [-21.0, 0.13, [0.83, 1.17]]),
    ("flips_only", "index", dict(horizontal_flip=True, vertical_flip=True), None, [0.2, 0.3]),
    ("channel_shift_clip", "mdb001", dict(channel_shift_range=200.), None,
     [150.0, -180.0, 3.0]),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    ins = inputs()
    rec = Recorder()
    np.random.uniform = rec.uniform
    np.random.random = rec.random
    matrices = []
    real_apply = kimage.apply_transform

    def apply_transform(x, transform_matrix, *a, **k):
        matrices.append(np.array(transform_matrix, dtype=np.float64))
        return real_apply(x, transform_matrix, *a, **k)

    kimage.apply_transform = apply_transform
    arrays = {}
    for name, x in ins.items():
        arrays["input/" + name] = x
    meta = {"keras": keras.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "data_format": "channels_last", "cases": []}
    for case, inp, settings, seed, forced in CASES:
        gen = kimage.ImageDataGenerator(data_format="channels_last", **settings)
        rec.calls = []
        rec.forced = None if forced is None else list(forced)
        matrices.clear()
        if seed is not None:
            rec.real_uniform.__self__.seed(seed)
        x = ins[inp].copy()
        y = gen.random_transform(x)
        assert rec.forced is None or not rec.forced, (case, rec.forced)
        assert y.dtype == np.float32 and y.shape == x.shape, (case, y.dtype, y.shape)
        params = derive(gen, x.shape, rec.calls)
        arrays["output/" + case] = np.ascontiguousarray(y)
        arrays["draws/" + case] = np.array([v for c in rec.calls for v in c["value"]],
                                           dtype=np.float64)
        # exact float64 copies of the derived parameters (JSON floats need not round-trip)
        arrays["params/" + case] = np.array(
            [params[k] for k in ("theta", "tx", "ty", "shear", "zx", "zy")]
            + [float(params["flip_h"]), float(params["flip_v"])]
            + list(params["channel_shift"] or []), dtype=np.float64)
        assert len(matrices) <= 1
        if matrices:
            arrays["matrix/" + case] = matrices[0]
        meta["cases"].append({
            "case": case, "input": inp, "seed": seed, "forced": forced is not None,
            "settings": {"rotation_range": gen.rotation_range,
                         "width_shift_range": gen.width_shift_range,
                         "height_shift_range": gen.height_shift_range,
                         "shear_range": gen.shear_range, "zoom_range": list(gen.zoom_range),
                         "channel_shift_range": gen.channel_shift_range,
                         "fill_mode": gen.fill_mode, "cval": gen.cval,
                         "horizontal_flip": gen.horizontal_flip,
                         "vertical_flip": gen.vertical_flip},
            "draw_calls": [{k: v for k, v in c.items()} for c in rec.calls],
            "params": params, "warped": bool(matrices),
        })
        print("%-20s %s changed=%d" % (case, params_str(params),
                                        int(np.sum(y != x)) if y.shape == x.shape else -1))
    np.savez_compressed(os.path.join(OUT, "augment.npz"), **arrays)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    with open(os.path.join(OUT, "COMMAND"), "w") as f:
        f.write(".venv-keras208/bin/python converters/augment_ref.py\n")
    print("wrote", OUT, os.path.getsize(os.path.join(OUT, "augment.npz")), "bytes")


def params_str(p):
    return " ".join("%s=%s" % (k, ("%.4f" % v) if isinstance(v, float) else v)
                    for k, v in p.items())


if __name__ == "__main__":
    main()
