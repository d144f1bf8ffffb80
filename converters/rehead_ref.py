"""Reference fixtures for `allconv rehead`: patch classifier -> whole-image classifier the
end2end-all-conv way, with genuine Keras 2.0.8 (Theano backend, channels_last).

Usage (from the repo root):
    .venv-keras208/bin/python converters/rehead_ref.py CASE
    .venv-keras208/bin/python converters/rehead_ref.py --list

The paper's flow (ddsm_train/image_clf_train.py): in a fresh process the patch classifier
is LOADED from its .h5 (keras.models.load_model(path, compile=False)), then
dm_resnet.add_top_layers (converters/dm_top.py, a faithful copy) builds the whole-image
model. Loading names no layer automatically, so the new layers are auto-named from fresh
per-process counters (input_1, model_1, conv2d_1, batch_normalization_1, ...): one case
per process.

A case `rehead_<name>` writes model.h5 (the whole model as Keras saves it), io.npz, expect.json
(with a "rehead" object) and COMMAND; `rehead_structure_<name>` writes only expect.json and
COMMAND (the paper's default top sizes: layer table and count_params, no weights).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
FLAGS = [a for a in sys.argv[1:] if a.startswith("--")]
CASE = ARGS[0] if ARGS else None

common.setup_env("theano", "channels_last")

from h5_loadback import _h5py2_strings  # noqa: E402

_h5py2_strings()  # Keras 2.0.8 expects h5py 2's bytes attributes (see h5_loadback.py)

import numpy as np  # noqa: E402
import keras  # noqa: E402
import theano.ifelse  # noqa: E402,F401  (Keras 2.0.8 uses it without importing it)
from keras import backend as K  # noqa: E402
from keras.models import load_model, Model  # noqa: E402

import dm_top  # noqa: E402

dm_top.bind_keras()

GENERATOR = ".venv-keras208 (keras 2.0.8, theano 1.0.5, backend theano)"
HERE = os.path.dirname(os.path.abspath(__file__))
# image_clf_train.py's defaults (and the seed's DDSM run): hidden_dropout 0.0, weight_decay 1e-4
DROPOUT = 0.0
WEIGHT_DECAY = 0.0001

NET_OF_PATCH = {"k208_resnet50_patch": "resnet50", "k208_vgg16_patch": "vgg16",
                "k208_vgg19_patch": "vgg19", "k208_yaroslav_patch": "yaroslav"}

# BN layers that see fewer values per channel than this in calibration (batch 2 x few
# positions: the heatmap tops' FC layers and 1x1/2x2 maps) get a variance floor, see
# common.calibrate_bn(small_sample_floor=...); set per case (bn_floor) so that the other
# fixtures' statistics are unchanged
BN_FLOOR = 16

# case: patch fixture, recipe (the CLI syntax), input HxW, classes, extras
CASES = {
    "rehead_resnet50_resnet": dict(patch="k208_resnet50_patch",
                                   top="resnet:32x1,32x1:enlarge=2", size=(257, 193)),
    "rehead_resnet50_heatmap": dict(patch="k208_resnet50_patch",
                                    top="heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut",
                                    size=(361, 345), bn_floor=BN_FLOOR),
    "rehead_vgg16_vgg": dict(patch="k208_vgg16_patch", top="vgg:32x1", size=(257, 193)),
    "rehead_vgg19_resnet": dict(patch="k208_vgg19_patch", top="resnet:16x2,32x1:enlarge=2",
                                size=(257, 193), classes=3),
    "rehead_vgg16_heatmap_vgg": dict(patch="k208_vgg16_patch",
                                     top="heatmap:avg=7,stride=1,pool=5+vgg:16x1",
                                     size=(545, 529), smooth=4),
    "rehead_yaroslav_heatmap": dict(patch="k208_yaroslav_patch",
                                    top="heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut",
                                    size=(1045, 721), crops=True),
    # 1361x1345: inner map 21x21 -> average-pooled 15x15 -> max-pooled heatmap 3x3 (1x1
    # from 704 px, 2x2 from 1024, 3x3 from 1344 px per side); the resnet top's first
    # (stride 2) convolutions give 2x2 maps, so its 3x3 convolution sees neighbours, its
    # BN layers 8 values per channel and the global average pool 4 positions
    "rehead_yaroslav_heatmap_resnet": dict(
        patch="k208_yaroslav_patch", top="heatmap:avg=7,stride=1,pool=5+resnet:16x1:enlarge=2",
        size=(1361, 1345), smooth=6, bn_floor=BN_FLOOR),
}
# the paper's default top sizes (seed README: "[512-512-1024]x2" = two blocks, "512x1"),
# structure only (no weights saved)
STRUCTURE = {
    "rehead_structure_resnet50_resnet": dict(patch="k208_resnet50_patch",
                                             top="resnet:512x1,512x1:enlarge=2", size=(257, 193)),
    "rehead_structure_vgg16_resnet": dict(patch="k208_vgg16_patch",
                                          top="resnet:512x1,512x1:enlarge=2", size=(257, 193)),
    "rehead_structure_vgg16_vgg": dict(patch="k208_vgg16_patch", top="vgg:512x1",
                                       size=(257, 193)),
    "rehead_structure_yaroslav_heatmap_resnet": dict(
        patch="k208_yaroslav_patch",
        top="heatmap:avg=7,stride=1,pool=5+resnet:512x1,512x1:enlarge=2", size=(721, 705)),
}


# ----------------------------------------------------------------------------
def _blocks(spec):
    """'512x1,512x2' -> depths [512, 512], repetitions [1, 2]."""
    depths, reps = [], []
    for part in spec.split(","):
        d, r = part.split("x")
        depths.append(int(d))
        reps.append(int(r))
    return depths, reps


def _conv_recipe(s):
    kind, rest = s.split(":", 1)
    if kind not in ("resnet", "vgg"):
        raise ValueError("unknown block type %r" % kind)
    parts = rest.split(":")
    depths, reps = _blocks(parts[0])
    kw = dict(block_type=kind, depths=depths, repetitions=reps)
    for opt in parts[1:]:
        k, v = opt.split("=")
        if k != "enlarge" or kind != "resnet":
            raise ValueError("unknown option %r" % opt)
        kw["bottleneck_enlarge_factor"] = int(v)
    return kw


def parse_recipe(s):
    """The Rust CLI's --top syntax -> add_top_layers keyword arguments (the ones
    image_clf_train.py passes; those not named keep image_clf_train.py's defaults)."""
    kw = dict(block_type='resnet', depths=[512, 512], repetitions=[3, 3],
              bottleneck_enlarge_factor=4, add_heatmap=False, avg_pool_size=[7, 7],
              add_conv=True, add_shortcut=False, hm_strides=[1, 1], hm_pool_size=[5, 5],
              fc_init_units=64, fc_layers=2)
    if not s.startswith("heatmap:"):
        kw.update(_conv_recipe(s))
        return kw
    head, _, conv = s[len("heatmap:"):].partition("+")
    kw.update(add_heatmap=True, add_conv=bool(conv))
    for opt in head.split(","):
        k, _, v = opt.partition("=")
        if k == "avg":
            kw["avg_pool_size"] = [int(v), int(v)]
        elif k == "stride":
            kw["hm_strides"] = [int(v), int(v)]
        elif k == "pool":
            kw["hm_pool_size"] = [int(v), int(v)]
        elif k == "fc":
            units = [int(u) for u in v.split("-")]
            for a, b in zip(units, units[1:]):
                assert b == a // 2, "fc units halve each time in add_top_layers"
            kw.update(fc_init_units=units[0], fc_layers=len(units))
        elif k == "shortcut":
            kw["add_shortcut"] = True
        else:
            raise ValueError("unknown heatmap option %r" % opt)
    if conv:
        kw.update(_conv_recipe(conv))
    return kw


def build(patch, net, size, kw, classes):
    """add_top_layers called exactly as image_clf_train.py calls it."""
    return dm_top.add_top_layers(
        patch, list(size), net, kw["block_type"], kw["depths"], kw["repetitions"],
        dm_top.bottleneck_org, nb_class=classes, shortcut_with_bn=True,
        bottleneck_enlarge_factor=kw["bottleneck_enlarge_factor"], dropout=DROPOUT,
        weight_decay=WEIGHT_DECAY, add_heatmap=kw["add_heatmap"],
        avg_pool_size=kw["avg_pool_size"], add_conv=kw["add_conv"],
        add_shortcut=kw["add_shortcut"], hm_strides=kw["hm_strides"],
        hm_pool_size=kw["hm_pool_size"], fc_init_units=kw["fc_init_units"],
        fc_layers=kw["fc_layers"])


def load_patch(name):
    """As image_clf_train.py loads the patch classifier."""
    return load_model(os.path.join(common.FIXTURES, name, "model.h5"), compile=False)


# ----------------------------------------------------------------------------
# output shapes of every layer (nested ones too) at a concrete input size, computed with
# the layers' own compute_output_shape the way Keras' Container does it
def _container_node_keys(model):
    return getattr(model, "container_nodes", None) or set()


def shape_table(model, input_shapes, prefix=""):
    """[{path, name, class_name, output_shape, params}] (batch dimension None)."""
    rows = []
    known = {}
    for il, s in zip(model.input_layers, input_shapes):
        known[(il.name, 0, 0)] = tuple(s)
    keys = _container_node_keys(model)
    for layer in model.layers:
        cls = layer.__class__.__name__
        if cls == "InputLayer":
            s = known[(layer.name, 0, 0)]
            rows.append({"path": prefix + layer.name, "name": layer.name, "class_name": cls,
                         "output_shape": list(s), "params": 0})
            continue
        idxs = [i for i in range(len(layer.inbound_nodes))
                if not keys or (layer.name + "_ib-" + str(i)) in keys]
        for n, i in enumerate(idxs):
            node = layer.inbound_nodes[i]
            ins = [known[(l.name, ni, ti)] for l, ni, ti in
                   zip(node.inbound_layers, node.node_indices, node.tensor_indices)]
            arg = ins[0] if len(ins) == 1 else ins
            path = prefix + layer.name + ("" if n == 0 else "#%d" % n)
            sub = []
            if cls in ("Model", "Sequential"):
                sub = shape_table(layer, ins, prefix=path + "/")
            out = layer.compute_output_shape(arg)
            outs = out if isinstance(out, list) else [out]
            for ti, o in enumerate(outs):
                known[(layer.name, i, ti)] = tuple(o)
            if prefix == "":  # top level: Keras recorded the same shape on the node
                rec = layer.get_output_shape_at(i)
                recs = rec if isinstance(rec, list) else [rec]
                assert [tuple(r) for r in recs] == [tuple(o) for o in outs], (layer.name, rec, out)
            shape = [list(o) for o in outs] if len(outs) > 1 else list(outs[0])
            rows.append({"path": path, "name": layer.name, "class_name": cls,
                         "output_shape": shape, "params": int(layer.count_params())})
            rows.extend(sub)
    return rows


def positive(rows):
    def ok(s):
        if s and isinstance(s[0], list):
            return all(ok(t) for t in s)
        return all(d is None or d >= 1 for d in s)
    return all(ok(r["output_shape"]) for r in rows)


# ----------------------------------------------------------------------------
def min_sizes(patch, net, size, kw, classes):
    """Smallest size per side (the other side fixed at `size`) for which genuine Keras
    (a) builds the model without an exception, (b) gives every layer (inner ones too) an
    output shape >= 1 in every dimension. Found by bisection over Keras builds, then
    checked at the boundary and one below (both conditions are monotone in the size)."""
    def probe(h, w):
        try:
            m = build(patch, net, (h, w), kw, classes)[0]
        except Exception as e:  # what Keras says
            return False, False, "%s: %s" % (type(e).__name__, str(e).splitlines()[0][:200])
        c = 1 if net == "yaroslav" else 3
        return True, positive(shape_table(m, [(None, h, w, c)])), None

    res = {}
    for side in (0, 1):
        def at(n):
            hw = list(size)
            hw[side] = n
            return probe(*hw)
        out = {}
        for which, key in ((0, "builds"), (1, "all_shapes_positive")):
            lo, hi = 1, size[side]
            assert at(hi)[which]
            if at(lo)[which]:
                out[key] = 1
                continue
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if at(mid)[which]:
                    hi = mid
                else:
                    lo = mid
            assert at(hi)[which] and not at(hi - 1)[which]
            out[key] = hi
            if which == 0:
                out["error_below"] = at(hi - 1)[2]
        if out["all_shapes_positive"] > 1:
            out["builds_one_below_smallest_working"] = at(out["all_shapes_positive"] - 1)[0]
        res["height" if side == 0 else "width"] = out
    return res


# ----------------------------------------------------------------------------
def smooth_input(rng, shape, factor=2):
    """common.make_input at 1/factor resolution, upsampled by repetition (image-like and
    compressible: large inputs stay small in io.npz)."""
    n, h, w, c = shape
    lo = common.make_input(rng, (n, -(-h // factor), -(-w // factor), c))
    x = np.repeat(np.repeat(lo, factor, axis=1), factor, axis=2)[:, :h, :w]
    return np.ascontiguousarray(x, dtype=np.float32)


def predict_fn(model):
    return lambda x: model.predict(x, batch_size=len(x))


def new_layer_names(model):
    return [l.name for l in model.layers]


def rehead_meta(spec, kw, classes, top_nb, model, seed):
    return {
        "patch": spec["patch"], "top": spec["top"], "input_size": list(spec["size"]),
        "classes": classes, "dropout": DROPOUT, "weight_decay": WEIGHT_DECAY,
        "top_layer_nb": top_nb,
        "frozen_in_stage1": [l.name for l in model.layers[:top_nb]],
        "add_top_layers": dict(patch_net=NET_OF_PATCH[spec["patch"]], image_size=list(spec["size"]),
                               block_fn="bottleneck_org", nb_class=classes, shortcut_with_bn=True,
                               dropout=DROPOUT, weight_decay=WEIGHT_DECAY, **kw),
        "numpy_seed": seed,  # the generator's RandomState (weights, input), not a CLI --seed
    }


def check_inner_unchanged(model, patch_name, hm):
    """The inner model's weights and the heatmap Dense are the patch file's, unchanged."""
    import h5py
    with h5py.File(os.path.join(common.FIXTURES, patch_name, "model.h5"), "r") as f:
        g = f["model_weights"]
        inner = model.layers[1]
        n = 0
        for layer in inner.layers:
            for w, v in zip(layer.weights, layer.get_weights()):
                ref = g[layer.name][w.name][()]
                assert np.array_equal(ref, v), (layer.name, w.name)
                n += 1
        if hm is not None:
            clf = [k.decode() if isinstance(k, bytes) else k for k in g.attrs["layer_names"]][-1]
            refs = [g[clf][k.decode() if isinstance(k, bytes) else k][()]
                    for k in g[clf].attrs["weight_names"]]
            for a, b in zip(refs, hm.get_weights()):
                assert np.array_equal(a, b), "heatmap Dense differs from the patch classifier"
            return n, clf
    return n, None


def run_case(case):
    spec = CASES[case]
    idx = sorted(CASES).index(case)
    net = NET_OF_PATCH[spec["patch"]]
    classes = spec.get("classes", 2)
    kw = parse_recipe(spec["top"])
    h, w = spec["size"]
    patch = load_patch(spec["patch"])
    model, top_nb, final, hm = build(patch, net, (h, w), kw, classes)
    names = new_layer_names(model)  # as Keras named them, before anything else is built
    c = 1 if net == "yaroslav" else 3
    skip = [model.layers[1].name] + ([hm.name] if hm is not None else [])
    # a seed whose random top gives a calibratable softmax (both samples neither flat nor
    # saturated at one common kernel scale); the seed used is recorded
    for attempt in range(20):
        seed = 3000 + idx + 100 * attempt
        rng = np.random.RandomState(seed)
        if h * w > 300 * 300:
            x = smooth_input(rng, (2, h, w, c), spec.get("smooth", 2))
        else:
            x = common.make_input(rng, (2, h, w, c))
        common.randomize_model(model, rng, skip=skip)
        common.calibrate_bn(keras, model, x, rng, small_sample_floor=spec.get("bn_floor"))
        try:
            s, _ = common.calibrate_final(model, x, final, classes, predict_fn(model))
            break
        except RuntimeError as e:
            print("seed %d: %s" % (seed, str(e).splitlines()[0]))
    else:
        raise RuntimeError("no seed gave a calibratable softmax")
    n_inner, clf_name = check_inner_unchanged(model, spec["patch"], hm)

    d = common.case_dir(case)
    y = model.predict(x, batch_size=len(x))
    acts = common.collect_activations(keras, model, x)
    if os.environ.get("ALLCONV_VERBOSE"):
        print(common.act_stats(acts))
    model.save(os.path.join(d, "model.h5"))
    notes = [
        "Written by Keras 2.0.8 on Theano (kernels in Theano orientation, backend attribute "
        "'theano'), like the patch fixture it was made from.",
        "Made the end2end-all-conv way: in a fresh process keras.models.load_model("
        "fixtures/%s/model.h5, compile=False), then dm_resnet.add_top_layers "
        "(converters/dm_top.py) called as image_clf_train.py calls it: image_size %dx%d, "
        "patch_net %r, nb_class %d, shortcut_with_bn=True, dropout %g, weight_decay %g, %s; "
        "top_layer_nb=%d."
        % (spec["patch"], h, w, net, classes, DROPOUT, WEIGHT_DECAY,
           json.dumps({k: v for k, v in kw.items()}), top_nb),
        "Layer names are Keras' auto-names from fresh per-process counters (loading the patch "
        "file names nothing automatically): %s." % ", ".join(names),
        "The inner model '%s' (model0 = Model(patch.inputs, patch.layers[%s].output), called on "
        "the new Input, node index 1) holds the patch file's %d weight arrays unchanged "
        "(checked against the file)." % (model.layers[1].name,
                                         {"resnet50": -5, "yaroslav": -3}.get(net, -4), n_inner),
        "New layers: random seeded weights (He-normal scale); BN moving statistics calibrated "
        "on this input (common.calibrate_bn); final Dense kernel(s) scaled by %g so that the "
        "softmax is not saturated." % s,
    ]
    if spec.get("bn_floor"):
        bns = [l for l in model.layers if l.__class__.__name__ == "BatchNormalization"]
        small = [l.name for l in bns
                 if int(np.prod(acts[l.name].shape[:-1])) < spec["bn_floor"]]
        notes.append(
            "BN variance floor (common.calibrate_bn small_sample_floor=%d): the BN layers "
            "calibrated on fewer than %d values per channel (%s) got var = max(batch var, "
            "mean over channels of mean(x^2), 1e-2) * U(0.5, 2), std = sqrt(that) in the "
            "mean's offset. From 2 samples x few positions the batch variance is often far "
            "below the features' magnitude; the huge gains gamma / sqrt(var) then amplify "
            "float32 rounding and Keras's own numbers drift from exact arithmetic."
            % (spec["bn_floor"], spec["bn_floor"], ", ".join(small) or "none"))
    if hm is not None:
        notes.append("The heatmap Dense '%s' holds the patch classifier's Dense '%s' weights "
                     "(add_top_layers' set_weights; checked against the file), relu activation, "
                     "applied per pixel on the 4-D average-pooled map." % (hm.name, clf_name))
    if h * w > 300 * 300:
        f = spec.get("smooth", 2)
        notes.append("Input: common.make_input at 1/%d resolution, each pixel repeated %dx%d "
                     "(image-like and compressible)." % (f, f, f))
    meta = {
        "keras_version": keras.__version__, "backend": K.backend(), "generator": GENERATOR,
        "image_data_format": K.image_data_format(),
        "count_params": int(model.count_params()),
        "input_shape": list(x.shape),
        "layers": common.layer_table(model, acts),
        "notes": notes,
        "rehead": rehead_meta(spec, kw, classes, top_nb, model, seed),
    }
    keep = [model.layers[1].name] + ([hm.name] if hm is not None else [])
    budget = {"resnet50": 700 * 1024}.get(net, common.NPZ_BUDGET)
    if net == "yaroslav":
        budget = 800 * 1024  # the >= 704 px 1-channel input alone is ~330-500 KB
    common.save_case(case, x, y, acts, meta, keep=keep, budget=budget)
    if spec.get("crops"):
        crops(case, patch, model, hm, x, acts, kw)
    ms = min_sizes(patch, net, (h, w), kw, classes)
    p = os.path.join(d, "expect.json")
    meta = json.load(open(p))
    meta["rehead"]["min_input_size"] = ms
    meta["notes"].append(
        "rehead.min_input_size: per side (the other side at %dx%d), found with genuine Keras "
        "2.0.8 builds: 'builds' = smallest size for which add_top_layers raises nothing; "
        "'all_shapes_positive' = smallest size for which every layer's output shape (inner "
        "ones too) is >= 1, the smallest size that works. Keras 2.0.8 checks no sizes itself: "
        "a valid pooling over fewer pixels than its window gets the length (n - k + s) // s "
        "<= 0 and building goes on; only a later Flatten raises, on a 0 dimension (the "
        "heatmap + FC recipes: 'error_below' is its message). So too-small sizes mostly "
        "build." % (h, w))
    with open(p, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    common.write_command(case, ".venv-keras208/bin/python converters/rehead_ref.py " + case)
    common.summarize(case)
    print(json.dumps({"case": case, "new_layers": names, "min_input_size": ms}))


def crops(case, patch, model, hm, x, acts, kw):
    """The patch classifier on crops of the whole input aligned with heatmap positions:
    heatmap position (i, j) <-> crop at (i, j) * stride * 2**6 of size avg_pool * 2**6."""
    assert kw["add_conv"] is False and NET_OF_PATCH[CASES[case]["patch"]] == "yaroslav"
    red = 64  # six 2x2 max-pools
    ap = [l for l in model.layers if l.__class__.__name__ == "AveragePooling2D"][0]
    pooled = acts[ap.name]                     # (2, Ha, Wa, C)
    hmap = acts[hm.name]                       # relu(pooled @ W + b)
    W, b = hm.get_weights()
    full_logits = pooled @ W + b
    size = kw["avg_pool_size"][0] * red
    step = kw["hm_strides"][0] * red
    ha, wa = pooled.shape[1:3]
    rows = sorted(set([0, 1, ha // 2, ha - 2, ha - 1]))
    cols = sorted(set([0, wa // 2, wa - 1]))
    pos = [(n, i, j) for n in range(len(x)) for i in rows for j in cols]
    batch = np.stack([x[n, i * step:i * step + size, j * step:j * step + size] for n, i, j in pos])
    probe = Model(patch.input, [patch.layers[-2].output, patch.output])
    gap, pred = probe.predict(batch, batch_size=8)
    logits = gap @ W + b
    ref_logits = np.stack([full_logits[n, i, j] for n, i, j in pos])
    ref_hmap = np.stack([hmap[n, i, j] for n, i, j in pos])
    e = np.exp(ref_logits - ref_logits.max(-1, keepdims=True))
    ref_prob = e / e.sum(-1, keepdims=True)
    # check the numpy logits against Keras' own softmax output
    e2 = np.exp(logits - logits.max(-1, keepdims=True))
    assert np.allclose(e2 / e2.sum(-1, keepdims=True), pred, atol=1e-5)
    dl = np.abs(logits - ref_logits).max(-1)
    dh = np.abs(np.maximum(logits, 0) - ref_hmap).max(-1)
    dp = np.abs(pred - ref_prob).max(-1)
    H, W_ = x.shape[1:3]
    border = np.array([i == 0 or j == 0 or i * step + size >= H or j * step + size >= W_
                       for _, i, j in pos])  # the crop touches the image's edge
    d = common.case_dir(case)
    np.savez_compressed(
        os.path.join(d, "crops.npz"),
        sample=np.array([p[0] for p in pos], np.int32),
        position=np.array([p[1:] for p in pos], np.int32),
        offsets=np.array([(i * step, j * step) for _, i, j in pos], np.int32),
        crop_size=np.array([size, size], np.int32),
        predictions=pred.astype(np.float32), logits=logits.astype(np.float32),
        gap=gap.astype(np.float32),
        heatmap_logits=ref_logits.astype(np.float32), heatmap=ref_hmap.astype(np.float32))
    summary = {
        "crop_size": [size, size], "step": [step, step], "positions": len(pos),
        "max_abs_diff_logits": float(dl.max()),
        "max_abs_diff_relu_logits_vs_heatmap": float(dh.max()),
        "max_abs_diff_softmax": float(dp.max()),
        "max_abs_diff_logits_crops_touching_image_edge": float(dl[border].max()),
        "max_abs_diff_logits_interior_crops": float(dl[~border].max()) if (~border).any() else None,
        "min_abs_diff_logits": float(dl.min()),
        "logit_scale": float(np.abs(ref_logits).max()),
        "exact": bool(dl.max() < 1e-4),
    }
    p = os.path.join(d, "expect.json")
    meta = json.load(open(p))
    meta["crops"] = summary
    meta["notes"].append(
        "crops.npz: the patch classifier (the loaded patch model, genuine Keras) on %d crops "
        "of the input (sample, position (i, j) in the average-pooled map, offsets = (i, j) * "
        "%d px, crop %dx%d): predictions (softmax), gap (its GlobalAveragePooling2D output), "
        "logits = gap @ W + b of the classifier Dense (numpy), and the whole model's "
        "heatmap_logits = average_pooled @ W + b and heatmap = relu(heatmap_logits) at the "
        "same positions. The map equals the crops only APPROXIMATELY: in the whole image the "
        "pixels around a crop's window are real neighbours, in the crop they are the zero "
        "'same' padding, and the 316 px receptive field (12 3x3 convolutions over 6 scales) "
        "carries that into every cell of the 7x7 window. Max |logit difference| %.3g (logits "
        "up to %.3g), max |softmax difference| %.3g; crops touching the image's edge "
        "(where both see the same padding on that side) differ by up to %.3g, interior crops "
        "by up to %.3g; the smallest difference is %.3g."
        % (len(pos), step, size, size, summary["max_abs_diff_logits"],
           summary["logit_scale"], summary["max_abs_diff_softmax"],
           summary["max_abs_diff_logits_crops_touching_image_edge"],
           summary["max_abs_diff_logits_interior_crops"], summary["min_abs_diff_logits"]))
    with open(p, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("crops:", json.dumps(summary))


def run_structure(case):
    spec = STRUCTURE[case]
    net = NET_OF_PATCH[spec["patch"]]
    classes = spec.get("classes", 2)
    kw = parse_recipe(spec["top"])
    h, w = spec["size"]
    patch = load_patch(spec["patch"])
    model, top_nb, final, hm = build(patch, net, (h, w), kw, classes)
    c = 1 if net == "yaroslav" else 3
    rows = shape_table(model, [(None, h, w, c)])
    names = [l.name for l in model.layers]
    meta = {
        "keras_version": keras.__version__, "backend": K.backend(), "generator": GENERATOR,
        "image_data_format": K.image_data_format(),
        "count_params": int(model.count_params()),
        "input_shape": [None, h, w, c],
        "layers": rows,
        "notes": [
            "Structure only (no model.h5, no io.npz): the paper's default top sizes on the "
            "narrow patch fixture fixtures/%s, as genuine Keras 2.0.8 builds them after "
            "load_model in a fresh process (dm_resnet.add_top_layers called as "
            "image_clf_train.py calls it; dropout %g, weight_decay %g)." % (
                spec["patch"], DROPOUT, WEIGHT_DECAY),
            "output_shape: Keras' compute_output_shape with the batch dimension None (null); "
            "nested layers at this input size. params: count_params() per layer.",
            "Layer names: %s." % ", ".join(names),
        ],
        "rehead": rehead_meta(spec, kw, classes, top_nb, model, None),
    }
    meta["rehead"].pop("numpy_seed")
    meta["rehead"]["structure_only"] = True
    d = common.case_dir(case)
    with open(os.path.join(d, "expect.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    common.write_command(case, ".venv-keras208/bin/python converters/rehead_ref.py " + case)
    common.summarize(case)
    print(json.dumps({"case": case, "layers": names, "count_params": meta["count_params"]}))


if __name__ == "__main__":
    if CASE is None or "--list" in FLAGS:
        print("\n".join(sorted(CASES) + sorted(STRUCTURE)))
        sys.exit(0)
    if CASE in STRUCTURE:
        run_structure(CASE)
    else:
        run_case(CASE)
