"""TensorFlow-flavoured copies of Keras 2.0.8 (Theano) fixtures, and the proof with
genuine tf-keras that the orientation is right.

    .venv-tf/bin/python converters/tfconvert.py k208tf_resnet50_patch      # one tf variant
    .venv-tf/bin/python converters/tfconvert.py --check k208_conv          # check only
    .venv-tf/bin/python converters/tfconvert.py --full build/bench/X.h5    # bench model

A k208tf_<x> file is fixtures/k208_<x>/model.h5 changed exactly the way the published
end2end-all-conv checkpoints (Keras 2.0.8 + TensorFlow + h5py 2.x) differ from a
Keras 2.0.8 + Theano + h5py 3 file:
  * every Conv2D kernel converted with convert_kernel (spatial axes flipped),
  * `backend` = "tensorflow" at the root and on /model_weights,
  * weight names in TensorFlow form `<layer>/<var>:0` (datasets moved accordingly),
  * `layer_names` / `weight_names` stored as fixed-length NULLPAD `S<n>` arrays (h5py 2.x),
    empty lists as float64 shape (0,); scalar string attributes as vlen ASCII.
Then tf-keras 2.21 (TF_USE_LEGACY_KERAS=1) loads it and its per-layer outputs are compared
with the Theano reference in fixtures/k208_<x>/io.npz.
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.setup_env("tfkeras")

import h5py  # noqa: E402
import numpy as np  # noqa: E402

CONV = ("Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Convolution1D", "Convolution2D")
VLEN_ASCII = h5py.string_dtype("ascii")


def _str(v):
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _names(attr):
    return [_str(n) for n in attr] if attr.dtype.kind in "OSU" else []


def _set_list(obj, key, names):
    del obj.attrs[key]
    if names:
        n = max(len(s.encode("utf8")) for s in names)
        obj.attrs.create(key, np.array([s.encode("utf8") for s in names], dtype="S%d" % n))
    else:
        obj.attrs.create(key, np.asarray([]))  # float64, shape (0,)


def _set_scalar(obj, key, value):
    if key in obj.attrs:
        del obj.attrs[key]
    obj.attrs.create(key, value.encode("utf8"), dtype=VLEN_ASCII)


def conv_layers(cfg, prefix=""):
    """{(group path relative to model_weights, inner layer name)} of conv layers."""
    out = set()
    layers = cfg["config"]["layers"] if isinstance(cfg["config"], dict) else cfg["config"]
    for l in layers:
        if l["class_name"] in ("Model", "Sequential"):
            inner = conv_layers(l, prefix)
            out |= {(l["config"]["name"] if isinstance(l["config"], dict) and "name" in l["config"]
                     else l.get("name"), n) for (_, n) in inner}
        elif l["class_name"] in CONV:
            name = l["config"]["name"]
            out.add((name, name))
    return out


def tf_flavour(src, dst):
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(_str(f.attrs["model_config"]))
        convs = conv_layers(cfg)
        conv_by_group = {}
        for g, inner in convs:
            conv_by_group.setdefault(g, set()).add(inner)
        for k in ("keras_version", "model_config", "training_config"):
            if k in f.attrs:
                _set_scalar(f, k, _str(f.attrs[k]))
        _set_scalar(f, "backend", "tensorflow")
        mw = f["model_weights"] if "model_weights" in f else f
        _set_scalar(mw, "backend", "tensorflow")
        _set_scalar(mw, "keras_version", _str(mw.attrs["keras_version"]))
        lnames = _names(mw.attrs["layer_names"])
        _set_list(mw, "layer_names", lnames)
        flipped = []
        for ln in lnames:
            g = mw[ln]
            wn = _names(g.attrs["weight_names"])
            new = []
            for n in wn:
                nn = n if n.endswith(":0") else n + ":0"
                if nn != n:
                    g.move(n, nn)
                pre, var = nn.rsplit("/", 1)
                if var.startswith("kernel") and pre in conv_by_group.get(ln, ()):
                    d = g[nn]
                    v = d[()]
                    d[...] = np.copy(v[::-1, ::-1, ...]) if v.ndim == 4 else np.copy(v[::-1, ...])
                    flipped.append(ln + "/" + nn)
                new.append(nn)
            _set_list(g, "weight_names", new)
        if "optimizer_weights" in f:
            og = f["optimizer_weights"]
            wn = _names(og.attrs["weight_names"])
            new = []
            for n in wn:
                nn = n if n.endswith(":0") else n + ":0"
                if nn != n:
                    og.move(n, nn)
                new.append(nn)
            _set_list(og, "weight_names", new)
    return flipped


def tf_activations(path, x):
    import tf_keras
    model = tf_keras.models.load_model(path, compile=False)
    y = model.predict(x, batch_size=len(x), verbose=0)
    acts = common.collect_activations(tf_keras, model, x)
    return model, y, acts


def compare(ref, y, acts):
    diffs = {}
    for k in ref.files:
        if k.startswith("layer/"):
            p = k[len("layer/"):]
            if p in acts and np.shape(acts[p]) == ref[k].shape:
                # relative to the layer's scale (|ref|max, at least 1)
                diffs[p] = float(np.abs(acts[p] - ref[k]).max() / max(1.0, np.abs(ref[k]).max()))
            elif p in acts:
                diffs[p] = float("inf")
    out = float(np.abs(np.asarray(y) - ref["output"]).max())
    return out, diffs


def meta_first_conv(d):
    with open(os.path.join(d, "expect.json")) as fh:
        rows = json.load(fh)["layers"]
    for r in rows:
        if r["class_name"] in CONV:
            return r["path"]
    return None


def make_variant(case):
    base = "k208_" + case[len("k208tf_"):]
    srcd, dstd = common.case_dir(base), common.case_dir(case)
    src, dst = os.path.join(srcd, "model.h5"), os.path.join(dstd, "model.h5")
    flipped = tf_flavour(src, dst)
    ref = np.load(os.path.join(srcd, "io.npz"))
    x = ref["input"]
    model, y, acts = tf_activations(dst, x)
    out_diff, diffs = compare(ref, y, acts)
    conv_diffs = {p: d for p, d in diffs.items() if p.split("/")[-1].startswith(
        ("conv", "res", "block", "conv2d"))}
    worst = max(diffs.values()) if diffs else out_diff
    ok = worst <= 1e-3 and out_diff <= 1e-4
    # also: the unconverted Theano file read by tf-keras (no automatic flip) must differ
    _, y_raw, acts_raw = tf_activations(src, x)
    raw_out, raw_diffs = compare(ref, y_raw, acts_raw)
    with open(os.path.join(srcd, "expect.json")) as fh:
        meta = json.load(fh)
    meta["backend"] = "tensorflow"
    meta["generator"] = ("converters/tfconvert.py on fixtures/%s/model.h5 (written by Keras "
                         "2.0.8 + Theano), checked with tf-keras 2.21" % base)
    meta["derived_from"] = base
    meta["io_from"] = "../%s/io.npz" % base
    first_conv = sorted(conv_diffs.items())[:3]
    first = meta_first_conv(srcd)
    first_abs = {first: float(np.abs(acts[first] - ref["layer/" + first]).max())} \
        if first and first in acts and "layer/" + first in ref.files else {}
    meta["tfkeras_check"] = {
        "loaded_by": "tf_keras 2.21.0 load_model (TF_USE_LEGACY_KERAS=1)",
        "max_abs_diff_output": out_diff,
        "max_diff_all_layers_relative_to_layer_absmax": worst,
        "layers_compared": len(diffs),
        "max_diff_conv_layers_relative": dict(first_conv),
        "max_abs_diff_first_conv": first_abs,
        "ok": bool(ok),
        "ok_criterion": "output abs diff <= 1e-4 and every layer diff <= 1e-3 * max(1, |layer|max)",
        "unconverted_theano_file_in_tfkeras_max_abs_diff_output": raw_out,
        "unconverted_theano_file_in_tfkeras_max_diff_layers_relative":
            max(raw_diffs.values()) if raw_diffs else None,
        "first_conv_unconverted_abs_diff": {first: float(np.abs(acts_raw[first] - ref["layer/" + first]).max())}
        if first in first_abs else {},
    }
    meta["notes"] = [n for n in meta["notes"] if not n.startswith("Written by Keras 2.0.8 on Theano")]
    meta["notes"] = [
        "TensorFlow-flavoured copy of %s/model.h5 made like the published end2end-all-conv "
        "checkpoints: Conv2D kernels converted with convert_kernel (spatial flip; %d datasets), "
        "backend='tensorflow' (root and model_weights), weight names '<layer>/<var>:0', "
        "layer_names/weight_names as fixed-length NULLPAD S<n> arrays (empty lists float64 (0,)), "
        "scalar string attributes vlen ASCII." % (base, len(flipped)),
        "io.npz is the Theano-Keras 2.0.8 reference of %s (a symlink to ../%s/io.npz): same "
        "model, same numbers. Genuine tf-keras 2.21 loading this file reproduces it: max abs "
        "diff %.3g on the output, %s on the first conv output, and max diff / max(1, |layer|) "
        "of %.3g over %d per-layer activations (conv outputs included). The unconverted Theano file loaded by tf-keras (which does not flip) is off "
        "by %.3g on the output." % (base, base, out_diff, json.dumps(first_abs), worst, len(diffs),
                                  raw_out),
    ] + meta["notes"]
    with open(os.path.join(dstd, "expect.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    link = os.path.join(dstd, "io.npz")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink("../%s/io.npz" % base, link)
    common.write_command(case, ".venv-keras208/bin/python converters/keras208.py %s && "
                               ".venv-tf/bin/python converters/tfconvert.py %s" % (base, case))
    print("[%s] output diff %.3g, layers max diff %.3g over %d, raw theano file diff %.3g -> %s"
          % (case, out_diff, worst, len(diffs), raw_out, "OK" if ok else "MISMATCH"), flush=True)
    if not ok:
        bad = sorted(((d, p) for p, d in diffs.items() if d > 1e-4), reverse=True)[:10]
        print("  worst:", bad)
        sys.exit(1)


def check_only(case):
    """Convert a Keras 2.0.8 Theano fixture to TF orientation in a temp file and compare
    genuine tf-keras (TF padding semantics) with the Theano reference, per layer.
    The result goes into the fixture's expect.json as `tfkeras_check`."""
    d = common.case_dir(case)
    tmp = os.path.join(common.BUILD, "tfcheck_%s.h5" % case)
    os.makedirs(common.BUILD, exist_ok=True)
    tf_flavour(os.path.join(d, "model.h5"), tmp)
    ref = np.load(os.path.join(d, "io.npz"))
    x = [ref["input_%d" % i] for i in range(8) if "input_%d" % i in ref.files] or ref["input"]
    try:
        model, y, acts = tf_activations(tmp, x)
    except Exception as e:  # noqa: BLE001
        res = {"loaded_by": "tf_keras 2.21.0", "error": "%s: %s" % (type(e).__name__, str(e)[:300])}
    else:
        out_diff, diffs = compare(ref, y, acts)
        bad = {p: dd for p, dd in diffs.items() if dd > 1e-4}
        res = {"loaded_by": "tf_keras 2.21.0 load_model of the TF-flavoured copy "
                            "(converters/tfconvert.py)",
               "max_abs_diff_output": out_diff, "layers_compared": len(diffs),
               "max_abs_diff_all_layers": max(diffs.values()) if diffs else None,
               "layers_differing_over_1e-4": bad}
        if bad:
            np.savez_compressed(os.path.join(d, "io_tf.npz"), input=ref["input"],
                                output=np.asarray(y, np.float32),
                                **{"layer/" + p: np.asarray(acts[p], np.float32) for p in bad
                                   if not isinstance(acts[p], list)})
            res["io_tf"] = ("io_tf.npz: tf-keras (TensorFlow semantics) values of the layers "
                            "that differ, and its output")
    with open(os.path.join(d, "expect.json")) as fh:
        meta = json.load(fh)
    meta["tfkeras_check"] = res
    with open(os.path.join(d, "expect.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    print("[check %s] %s" % (case, json.dumps(res)[:400]), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--check":
        for c in args[1:]:
            check_only(c)
    elif args and args[0] == "--full":
        for p in args[1:]:
            out = p[:-3] + "_tf.h5"
            n = tf_flavour(p, out)
            print("wrote", out, "(%d kernels flipped)" % len(n))
    else:
        for c in args:
            make_variant(c)
