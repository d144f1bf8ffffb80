"""Shared helpers for the fixture generators (runs under every venv: Keras 1.2.2,
Keras 2.0.8, tf-keras 2.21, Keras 3).  Keep it free of version-specific imports at
module level: call ``setup_env`` before importing keras."""
import json
import os
import sys
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")
BUILD = os.path.join(ROOT, "build")

# per-fixture budget for io.npz (compressed bytes); beyond it the largest early
# per-layer activations are dropped and listed in expect.json "layers_omitted".
NPZ_BUDGET = int(os.environ.get("ALLCONV_NPZ_BUDGET", 500 * 1024))


def setup_env(kind, data_format="channels_last"):
    """kind: 'theano' (Keras 1.2.2 / 2.0.8), 'tfkeras' (tf-keras 2.x), 'keras3'."""
    home = os.path.join(BUILD, "keras-home")
    os.makedirs(home, exist_ok=True)
    if kind == "theano":
        # Keras 1.2.2 / 2.0.8 only look at ~/.keras: point HOME into the build dir.
        os.environ["HOME"] = home
        kdir = os.path.join(home, ".keras")
        os.makedirs(kdir, exist_ok=True)
        cfg = {"backend": "theano", "image_data_format": data_format,
               "image_dim_ordering": "tf" if data_format == "channels_last" else "th",
               "floatx": "float32", "epsilon": 1e-07}
        with open(os.path.join(kdir, "keras.json"), "w") as f:
            json.dump(cfg, f)
        os.environ["KERAS_BACKEND"] = "theano"
        tdir = os.path.join(BUILD, "theano")
        os.makedirs(tdir, exist_ok=True)
        os.environ["THEANO_FLAGS"] = ("device=cpu,floatX=float32,blas.ldflags=,"
                                      "base_compiledir=" + tdir)
    elif kind == "tfkeras":
        os.environ["KERAS_HOME"] = home
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    elif kind == "keras3":
        os.environ["KERAS_HOME"] = home
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
        os.environ["KERAS_BACKEND"] = "tensorflow"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    else:
        raise ValueError(kind)


def case_dir(case):
    d = os.path.join(FIXTURES, case)
    os.makedirs(d, exist_ok=True)
    return d


def write_command(case, cmd):
    with open(os.path.join(case_dir(case), "COMMAND"), "w") as f:
        f.write(cmd.strip() + "\n")


# ----------------------------------------------------------------------------
# random inputs / weights
def make_input(rng, shape, levels=64):
    """Random, not flip-symmetric, image-like input quantised to `levels` steps
    (compresses better than white noise).  Every batch item gets its own
    contrast, brightness and ramp direction so that pooled features differ
    between items.  Values roughly in [-2, 2]."""
    x = rng.uniform(0.0, 1.0, size=shape)
    if len(shape) >= 3:
        h, w = shape[1], shape[2]
        for i in range(shape[0]):
            a, b = rng.uniform(0.3, 1.0), rng.uniform(-0.3, 0.3)
            gy, gx = rng.uniform(-0.6, 0.6, size=2)
            ramp = np.linspace(0, 1, h)[:, None] * gy + np.linspace(0, 1, w)[None, :] ** 2 * gx
            x[i] = a * x[i] + b + ramp.reshape((h, w) + (1,) * (len(shape) - 3))
    x = np.clip(x, -0.5, 1.5)
    x = np.round(x * (levels - 1)) / (levels - 1)
    return ((x - 0.5) * 2.0).astype(np.float32)


def rand_weights_for(layer_class, shapes, names, rng):
    """Non-trivial random values for one layer's weights (names are the
    Keras weight names or just 'kernel' / 'gamma' ...)."""
    out = []
    for shp, nm in zip(shapes, names):
        base = nm.split("/")[-1].split(":")[0]
        for suf in ("_W", "_b", "_gamma", "_beta", "_running_mean", "_running_std"):
            if base.endswith(suf):
                base = {"_W": "kernel", "_b": "bias", "_gamma": "gamma", "_beta": "beta",
                        "_running_mean": "moving_mean", "_running_std": "moving_variance"}[suf]
        shp = tuple(shp)
        if base in ("moving_mean",):
            v = rng.normal(0, 0.5, shp)
        elif base in ("moving_variance",):
            v = rng.uniform(0.5, 2.0, shp)
        elif base == "gamma":
            v = rng.uniform(0.5, 1.5, shp)
        elif base == "beta":
            v = rng.normal(0, 0.2, shp)
        elif base in ("bias",):
            v = rng.normal(0, 0.1, shp)
        elif base in ("alpha",):  # PReLU
            v = rng.uniform(0.05, 0.4, shp)
        elif base == "depthwise_kernel":
            fan_in = int(np.prod(shp[:-2])) if len(shp) >= 3 else 1
            v = rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), shp)
        else:  # kernels: He-normal on fan_in so activations keep their scale
            if len(shp) == 1:
                fan_in = 1
            else:
                fan_in = int(np.prod(shp[:-1]))
            v = rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), shp)
        out.append(v.astype(np.float32))
    return out


def randomize_model(model, rng, skip=()):
    """Set every weight of every (nested) layer to non-trivial random values."""
    for layer in model.layers:
        if layer.name in skip:
            continue
        if hasattr(layer, "layers") and layer.__class__.__name__ in ("Model", "Functional", "Sequential"):
            randomize_model(layer, rng, skip)
            continue
        ws = layer.get_weights()
        if not ws:
            continue
        names = [getattr(w, "name", "w") or "w" for w in layer.weights]
        new = rand_weights_for(layer.__class__.__name__, [w.shape for w in ws], names, rng)
        layer.set_weights(new)


def softmax_ok(p, n):
    p = np.asarray(p)
    mx = p.max(axis=-1)
    return bool(np.all(mx < 0.97) and np.all(mx > 1.0 / n + 0.02))


def calibrate_final(model, x, dense_layers, n, predict):
    """Scale the kernels of the final Dense layer(s) until softmax is not
    saturated and not flat.  Returns the chosen scale and the prediction."""
    orig = [l.get_weights() for l in dense_layers]
    for s in (1.0, 0.5, 2.0, 0.25, 4.0, 0.125, 8.0, 0.06, 16.0, 0.03, 0.015, 32.0, 0.007, 0.003):
        for l, w in zip(dense_layers, orig):
            l.set_weights([w[0] * s] + list(w[1:]))
        p = predict(x)
        if softmax_ok(p, n):
            return s, p
    raise RuntimeError("could not calibrate the final softmax: %r" % (p,))


# ----------------------------------------------------------------------------
# recording per-layer activations
def _node_keys(model):
    for attr in ("container_nodes", "_network_nodes", "_container_nodes"):
        v = getattr(model, attr, None)
        if v:
            return v
    inner = getattr(model, "model", None)  # Keras 1.2.2 / 2.0.8 Sequential
    if inner is not None and inner is not model:
        return _node_keys(inner)
    return None


def _inbound(layer):
    v = getattr(layer, "_inbound_nodes", None)
    if v is None:
        v = getattr(layer, "inbound_nodes", None)
    return v or []


def _is_container(layer):
    return layer.__class__.__name__ in ("Model", "Functional", "Sequential") and hasattr(layer, "layers")


def layer_outputs(model):
    """[(name, layer, node_index, output_tensor)] for every call of every layer
    that belongs to `model`'s graph, in model.layers order."""
    keys = _node_keys(model)
    res = []
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        nodes = _inbound(layer)
        idxs = []
        for i in range(len(nodes)):
            if keys is None or (layer.name + "_ib-" + str(i)) in keys:
                idxs.append(i)
        if not idxs:
            idxs = [0]
        for i in idxs:
            res.append((layer.name, layer, i, layer.get_output_at(i)))
    return res


def _layer_input_at(layer, i):
    return layer.get_input_at(i)


INPUT_SHAPES = {}


def collect_activations(keras, model, x, prefix="", acts=None, predict_kwargs=None):
    """Fill acts[path] = activation for every layer (recursing into nested models)."""
    if acts is None:
        acts = {}
    xs = x if isinstance(x, list) else [x]
    for il, xv in zip(getattr(model, "input_layers", []) or [], xs):
        INPUT_SHAPES[prefix + il.name] = list(map(int, np.asarray(xv).shape))
    outs = layer_outputs(model)
    tensors = []
    plan = []  # (path, kind, index)
    for name, layer, i, t in outs:
        seen = sum(1 for p in plan if p[3] == name)
        path = prefix + name + ("" if seen == 0 else "#%d" % seen)
        ts = t if isinstance(t, (list, tuple)) else [t]
        plan.append((path, len(tensors), len(ts), name))
        tensors.extend(ts)
        if _is_container(layer):
            inp = _layer_input_at(layer, i)
            ins = inp if isinstance(inp, (list, tuple)) else [inp]
            direct = [any(t_ is mi for mi in model.inputs) for t_ in ins]
            if all(direct):  # nested model fed straight from the model inputs
                xs = x if isinstance(x, list) else [x]
                vals_direct = [xs[[id(mi) for mi in model.inputs].index(id(t_))] for t_ in ins]
                plan.append((("__nested_direct__", layer, path), vals_direct, None, None))
            else:
                plan.append((("__nested__", layer, path), len(tensors), len(ins), None))
                tensors.extend(ins)
    Model = keras.models.Model
    inputs = model.inputs
    probe = Model(inputs, tensors)
    vals = probe.predict(x, batch_size=len(x[0]) if isinstance(x, list) else len(x))
    if not isinstance(vals, list):
        vals = [vals]
    for key, start, cnt, _ in plan:
        if isinstance(key, tuple) and key[0] == "__nested_direct__":
            _, layer, path = key
            collect_activations(keras, layer, start if len(start) > 1 else start[0],
                                prefix=path + "/", acts=acts)
            continue
        v = vals[start:start + cnt]
        if isinstance(key, tuple):
            _, layer, path = key
            sub_in = v if len(v) > 1 else v[0]
            collect_activations(keras, layer, sub_in, prefix=path + "/", acts=acts)
        else:
            acts[key] = v[0] if cnt == 1 else v
    return acts


def layer_table(model, acts, prefix=""):
    rows = []
    for layer in model.layers:
        path = prefix + layer.name
        a = acts.get(path)
        if layer.__class__.__name__ == "InputLayer":
            shape = INPUT_SHAPES.get(path)
        elif a is None:
            shape = None
        elif isinstance(a, list):
            shape = [list(map(int, t.shape)) for t in a]
        else:
            shape = list(map(int, a.shape))
        rows.append({"path": path, "name": layer.name, "class_name": layer.__class__.__name__,
                     "output_shape": shape, "params": int(layer.count_params())})
        if _is_container(layer):
            rows.extend(layer_table(layer, acts, prefix=path + "/"))
    return rows


def save_case(case, x, y, acts, meta, keep=(), budget=NPZ_BUDGET, extra_arrays=None):
    """Write io.npz + expect.json.  `x` is the model input (array or list),
    `y` the predict() output.  `acts`: path -> array."""
    d = case_dir(case)
    arrays = {}
    if isinstance(x, list):
        if len(x) == 1:
            arrays["input"] = np.asarray(x[0], np.float32)
        else:
            for i, xi in enumerate(x):
                arrays["input_%d" % i] = np.asarray(xi, np.float32)
            arrays["input"] = np.asarray(x[0], np.float32)
    else:
        arrays["input"] = np.asarray(x, np.float32)
    if isinstance(y, list):
        for i, yi in enumerate(y):
            arrays["output_%d" % i] = np.asarray(yi, np.float32)
        arrays["output"] = np.asarray(y[0], np.float32)
    else:
        arrays["output"] = np.asarray(y, np.float32)
    layer_arrays = {}
    for k, v in acts.items():
        if isinstance(v, list):
            for j, vj in enumerate(v):
                layer_arrays["layer/%s:%d" % (k, j)] = np.asarray(vj, np.float32)
        else:
            layer_arrays["layer/" + k] = np.asarray(v, np.float32)
    if extra_arrays:
        arrays.update(extra_arrays)
    size = {k: len(zlib.compress(np.ascontiguousarray(v).tobytes(), 6)) for k, v in
            list(arrays.items()) + list(layer_arrays.items())}
    total = sum(size.values())
    omitted = []
    order = list(layer_arrays.keys())  # model order: earlier first
    # a layer asked to be kept is kept only when it is small next to the budget
    kept = set("layer/" + k for k in keep if "layer/" + k in size and size["layer/" + k] < budget / 3)
    # drop the earliest (largest) layers first, never the kept ones
    for k in order:
        if total <= budget:
            break
        if k in kept:
            continue
        omitted.append(k)
        total -= size[k]
    for k in omitted:
        layer_arrays.pop(k)
    arrays.update(layer_arrays)
    np.savez_compressed(os.path.join(d, "io.npz"), **arrays)
    meta = dict(meta)
    if omitted:
        meta["layers_omitted"] = [k[len("layer/"):] for k in omitted]
        meta.setdefault("notes", []).append(
            "per-layer activations of the largest layers were left out of io.npz to keep it "
            "under %d bytes: see layers_omitted" % budget)
    with open(os.path.join(d, "expect.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=False)
        f.write("\n")
    return os.path.getsize(os.path.join(d, "io.npz"))


def summarize(case):
    d = case_dir(case)
    tot = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print("[%s] %d bytes: %s" % (case, tot, ", ".join(sorted(os.listdir(d)))), flush=True)


def act_stats(acts):
    lines = []
    for k, v in acts.items():
        if isinstance(v, list):
            continue
        v = np.asarray(v)
        lines.append("%-40s %-20s absmax=%.3g std=%.3g" % (k, v.shape, np.abs(v).max(), v.std()))
    return "\n".join(lines)


def calibrate_bn(keras, model, x, rng, passes=6, small_sample_floor=None,
                 second_moment_floor=1.0):
    """Give every top-level BatchNormalization layer of `model` moving statistics
    that look trained: mean = batch mean + 0.3*std*N(0,1), var = batch var *
    U(0.5, 2) (per channel), computed on `x` and iterated so that deeper layers
    see calibrated inputs.  gamma ~ U(0.5,1.5), beta ~ N(0,0.2) stay as set.

    small_sample_floor (default None: off, the statistics above unchanged): a BN
    layer whose calibration sample has fewer than this many values per channel
    (batch x spatial positions) gets the batch variance floored before the noise,
    var = max(batch var, second_moment_floor * mean over channels of mean(x^2),
    1e-2) * U(0.5, 2), and std = sqrt(that floored variance) in the mean's offset.
    Why: from 2 samples x few positions the batch variance of a channel is often
    far below its magnitude (the samples differ little next to their common
    part), giving gains gamma / sqrt(var) that amplify any float32 rounding
    before the layer (ill-conditioned references).  The pooled second moment
    stands in for the spread a larger calibration set would show.  The random
    draws are the same either way."""
    bns = [l for l in model.layers if l.__class__.__name__ == "BatchNormalization"]
    if not bns:
        return
    probe = keras.models.Model(model.inputs, [l.get_input_at(0) for l in bns])
    noise = {}
    for l in bns:
        n = l.get_weights()[-1].shape
        noise[l.name] = (rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n))
    # one layer at a time, in model order, so that each layer sees the
    # already-calibrated earlier layers (passes is kept for API compatibility)
    for l in bns:
        vals = probe.predict(x, batch_size=len(x[0]) if isinstance(x, list) else len(x))
        if not isinstance(vals, list):
            vals = [vals]
        v = vals[bns.index(l)]
        ax = l.axis if isinstance(l.axis, int) else l.axis[0]
        ax = ax % v.ndim
        red = tuple(i for i in range(v.ndim) if i != ax)
        m, sd = v.mean(axis=red), v.std(axis=red)
        sd = np.maximum(sd, 0.1 * np.median(sd) + 1e-3)
        if small_sample_floor is not None and v.size // v.shape[ax] < small_sample_floor:
            ms = np.mean(np.square(v.astype(np.float64)))  # over all values and channels
            sd = np.sqrt(np.maximum(sd * sd, max(second_moment_floor * ms, 1e-2)))
        zn, un = noise[l.name]
        w = l.get_weights()
        w[-2] = (m + sd * zn).astype(np.float32)
        w[-1] = (sd * sd * un).astype(np.float32)
        l.set_weights(w)
