"""Fixtures written by genuine tf-keras 2.21 (TF_USE_LEGACY_KERAS=1, model.save('x.h5')).

    .venv-tf/bin/python converters/tfkeras.py CASE
cases: tfk_functional, tfk_sequential, tfk_resnet50_whole, tfk_chunked, tfk_act_merge,
       tfk_conv1d_cf, hostile_tfoplambda
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.setup_env("tfkeras")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers as L  # noqa: E402
from tf_keras.models import Model, Sequential  # noqa: E402

GENERATOR = ".venv-tf (tf-keras %s, tensorflow %s, TF_USE_LEGACY_KERAS=1)" % (
    tf_keras.__version__, tf.__version__)
HERE = os.path.dirname(os.path.abspath(__file__))


def predict(model):
    return lambda x: model.predict(x, batch_size=len(x), verbose=0)


def record(case, model, x, notes, keep=(), budget=common.NPZ_BUDGET, keras_ns=None, extra=None):
    """keras_ns: the namespace whose models.Model builds the probes (XLA below)."""
    d = common.case_dir(case)
    ns = keras_ns or tf_keras
    y = ns.models.Model(model.inputs, model.outputs).predict(x, batch_size=len(x), verbose=0)
    acts = common.collect_activations(ns, model, x)
    path = os.path.join(d, "model.h5")
    model.save(path)
    with h5py.File(path, "r") as f:
        mw = f["model_weights"]
        facts = {"root_attrs": sorted(f.attrs.keys()), "model_weights_attrs": sorted(mw.attrs.keys())}
    meta = {
        "keras_version": tf_keras.__version__, "backend": "tensorflow", "generator": GENERATOR,
        "count_params": int(model.count_params()), "input_shape": list(x.shape),
        "layers": common.layer_table(model, acts), "h5_facts": facts, "notes": list(notes),
    }
    meta.update(extra or {})
    common.save_case(case, x, y, acts, meta, keep=keep, budget=budget)
    common.write_command(case, ".venv-tf/bin/python converters/tfkeras.py " + case)
    common.summarize(case)


def finish(model, x, n, seed, final=None):
    rng = np.random.RandomState(seed)
    common.randomize_model(model, rng)
    common.calibrate_bn(tf_keras, model, x, rng)
    s, _ = common.calibrate_final(model, x, final or [model.layers[-1]], n, predict(model))
    return s


def tfk_functional():
    rng = np.random.RandomState(31)
    inp = L.Input((10, 12, 3), name='img')
    a = L.Conv2D(6, 3, strides=2, padding='same', name='conv_s2_same_even')(inp)  # TF asym pad
    a = L.BatchNormalization(axis=[3], name='bn_axis_list')(a)
    a = L.ReLU(max_value=6.0, name='relu6')(a)
    b = L.DepthwiseConv2D(3, depth_multiplier=2, padding='same', name='depthwise')(inp)
    b = L.LeakyReLU(alpha=0.2, name='leaky')(b)
    c = L.SeparableConv2D(6, 3, strides=2, padding='same', depth_multiplier=1,
                          activation='relu', name='separable_s2')(b)
    s = L.Subtract(name='subtract')([a, c])
    p = L.AveragePooling2D(3, strides=2, padding='same', name='avgpool_same')(s)
    f = L.Flatten(name='flatten')(p)
    d = L.Dense(3, name='logits')(f)
    out = L.Softmax(name='softmax')(d)
    model = Model(inp, out, name='tfk_functional')
    x = common.make_input(rng, (2, 10, 12, 3))
    sc = finish(model, x, 3, 32, final=[model.get_layer('logits')])
    record('tfk_functional', model, x, [
        "tf-keras Functional (class_name 'Functional'); even input with stride-2 'same' conv "
        "(TensorFlow pads 0 top/left, 1 bottom/right); BN axis stored as a list; ReLU layer "
        "with max_value; Softmax layer; logits Dense scaled by %g" % sc])


def tfk_sequential():
    rng = np.random.RandomState(33)
    model = Sequential(name='tfk_seq')
    model.add(L.InputLayer(input_shape=(9, 8, 3), name='img'))
    model.add(L.Conv2D(4, 3, padding='same', activation='relu', name='conv1'))
    model.add(L.MaxPooling2D(2, padding='same', name='pool1'))
    model.add(L.Conv2D(5, 2, strides=2, padding='same', name='conv2_even_k'))
    model.add(L.BatchNormalization(name='bn'))
    model.add(L.Activation('elu', name='elu'))
    model.add(L.GlobalAveragePooling2D(name='gap'))
    model.add(L.Dropout(0.2, name='drop'))
    model.add(L.Dense(3, activation='softmax', name='out'))
    x = common.make_input(rng, (2, 9, 8, 3))
    sc = finish(model, x, 3, 34)
    record('tfk_sequential', model, x, [
        "tf-keras Sequential: config is a dict {name, layers: [InputLayer, ...]}; final Dense "
        "scaled by %g" % sc])


class XLA:
    """tf_keras whose models.Model is compiled with XLA (jit_compile=True). TensorFlow's CPU
    kernels refuse channels_first (NCW/NCHW) convolutions; XLA's CPU backend runs them.
    Used wherever these scripts predict: the output, the per-layer probes of
    common.collect_activations, BN calibration."""
    class models:
        @staticmethod
        def Model(inputs, outputs):
            m = Model(inputs, outputs)
            m.compile(jit_compile=True)
            return m


def _input_value(x, lo=0.1, hi=1.5):
    """The float32 value `x` holds most often in (lo, hi) (ties: nearest 0.5), and how often:
    a threshold set exactly there tells a strict `x > t` from `x >= t`."""
    vals, counts = np.unique(x, return_counts=True)
    n, _, v = min((-n, abs(float(v) - 0.5), float(v)) for v, n in zip(vals, counts) if lo < v < hi)
    return v, -n


def tfk_act_merge():
    """swish and exponential (Activation layer and fused), Minimum (2 and 3 inputs),
    ThresholdedReLU and ReLU(threshold) with the threshold exactly on input values, and the
    inference-identity noise/dropout layers in tf-keras's config dialect."""
    rng = np.random.RandomState(44)  # an input holding one positive value 8 times
    x = common.make_input(rng, (2, 6, 5, 3))
    t, n_eq = _input_value(x)
    inp = L.Input((6, 5, 3), name='img')
    c = L.Conv2D(4, 3, padding='same', name='conv')(inp)
    sw = L.Activation('swish', name='act_swish')(c)
    ex = L.Activation('exponential', name='act_exponential')(c)
    ds = L.Dense(4, activation='swish', name='dense_swish')(c)
    ce = L.Conv2D(4, 1, activation='exponential', name='conv_exponential')(inp)
    mn3 = L.Minimum(name='minimum3')([sw, ex, ds])
    mn2 = L.minimum([c, ce], name='minimum2')
    th = L.ThresholdedReLU(theta=t, name='thresh_on_input_value')(inp)
    rt = L.ReLU(threshold=t, name='relu_thresh_on_input_value')(inp)
    rl = L.ReLU(threshold=t, negative_slope=0.2, max_value=0.9, name='relu_thresh_leak_cap')(inp)
    g = L.GaussianNoise(0.5, name='gaussian_noise')(c)
    g = L.GaussianDropout(0.4, name='gaussian_dropout')(g)
    g = L.AlphaDropout(0.3, name='alpha_dropout')(g)
    g = L.SpatialDropout2D(0.3, name='spatial_dropout_2d')(g)
    cat = L.Concatenate(name='concat')([mn3, mn2, th, rt, rl, g])
    out = L.Flatten(name='flatten')(cat)
    model = Model(inp, out, name='tfk_act_merge')
    common.randomize_model(model, np.random.RandomState(40))
    record('tfk_act_merge', model, x, [
        "Activation('swish'), Activation('exponential'), Dense(activation='swish') on a 4-D "
        "tensor, Conv2D(activation='exponential'); Minimum of 3 and of 2 inputs",
        "ThresholdedReLU and ReLU(threshold) have threshold %r, exactly the float32 value of %d "
        "input elements: tf-keras computes x * (x > t) there, so those give 0 (a '>=' would "
        "give t); relu_thresh_leak_cap adds negative_slope 0.2 and max_value 0.9" % (t, n_eq),
        "GaussianNoise, GaussianDropout, AlphaDropout, SpatialDropout2D are identity at "
        "inference (predict): their recorded outputs equal their inputs"])


def tfk_conv1d_cf():
    """Conv1D(data_format='channels_first'), computed by tf-keras through XLA on CPU, and
    checked against a channels_last twin with the same weights (TensorFlow's own kernels)."""
    rng = np.random.RandomState(41)
    steps, ch = 17, 3
    x = np.ascontiguousarray(common.make_input(rng, (2, steps, ch)).transpose(0, 2, 1))

    def build(fmt):
        cf = fmt == 'channels_first'
        inp = L.Input((ch, steps) if cf else (steps, ch), name='seq')
        a = L.Conv1D(4, 3, padding='valid', data_format=fmt, name='conv_valid')(inp)
        a = L.BatchNormalization(axis=1 if cf else -1, name='bn')(a)
        a = L.Conv1D(5, 4, strides=2, padding='same', activation='relu', data_format=fmt,
                     name='conv_s2_same_even_k')(a)
        b = L.Conv1D(4, 3, dilation_rate=2, padding='causal', use_bias=False, data_format=fmt,
                     name='conv_dil2_causal')(inp)
        b = L.Conv1D(3, 2, padding='same', activation='tanh', data_format=fmt,
                     name='conv_even_same')(b)
        g = L.GlobalAveragePooling1D(data_format=fmt, name='gap')(a)
        if not cf:  # Flatten of (channels, steps) in the twin's layout
            b = L.Permute((2, 1), name='twin_to_channels_first')(b)
        f = L.Dense(4, name='dense_flat')(L.Flatten(name='flatten')(b))
        h = L.Concatenate(name='concat')([g, f])
        out = L.Dense(3, activation='softmax', name='out')(h)
        return Model(inp, out, name='conv1d_cf' if cf else 'conv1d_cf_twin')

    model = build('channels_first')
    common.randomize_model(model, np.random.RandomState(42))
    common.calibrate_bn(XLA, model, x, np.random.RandomState(43))
    sc, _ = common.calibrate_final(model, x, [model.get_layer('out')], 3,
                                   predict(XLA.models.Model(model.inputs, model.outputs)))
    # the twin: same layer names and weights, channels_last, run by TensorFlow's CPU kernels
    twin = build('channels_last')
    for l in twin.layers:
        if l.get_weights():
            l.set_weights(model.get_layer(l.name).get_weights())
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    yt = twin.predict(xt, batch_size=len(x), verbose=0)
    tacts = common.collect_activations(tf_keras, twin, xt)
    y = XLA.models.Model(model.inputs, model.outputs).predict(x, batch_size=len(x), verbose=0)
    acts = common.collect_activations(XLA, model, x)
    diffs = {}
    for k, v in acts.items():
        tv = tacts[k]
        if tv.ndim == 3:
            tv = tv.transpose(0, 2, 1)
        diffs[k] = float(np.abs(tv - v).max())
    twin_check = {
        "what": "the same model built channels_last (layer 'twin_to_channels_first' = "
                "Permute((2, 1)) added before Flatten), same weights, input transposed, run by "
                "TensorFlow's CPU kernels without XLA; its 3-D activations transposed back",
        "max_abs_diff_output": float(np.abs(yt - y).max()),
        "max_abs_diff_per_layer": diffs}
    assert twin_check["max_abs_diff_output"] < 1e-5 and max(diffs.values()) < 1e-5, twin_check
    record('tfk_conv1d_cf', model, x, [
        "Conv1D with data_format='channels_first' (input (batch, channels, steps)): valid, "
        "stride-2 'same' with an even kernel (TensorFlow's asymmetric padding), dilated "
        "'causal' without bias, even-kernel 'same' on an odd length, fused relu/tanh; "
        "BatchNormalization(axis=1); GlobalAveragePooling1D(channels_first); Flatten in "
        "(channels, steps) order -> Dense; final Dense scaled by %g" % sc,
        "TensorFlow's CPU kernels refuse NCW convolutions, so every prediction here (output, "
        "per-layer probes, BN calibration) ran with jit_compile=True: tf-keras's own graph "
        "compiled by XLA. twin_check compares it with a channels_last twin run by TensorFlow's "
        "CPU kernels"], keras_ns=XLA, extra={"twin_check": twin_check})


def _arch_namespace():
    """The Keras 2.0.8 ResNet50 / end2end add_top_layers builders of keras208.py,
    executed with tf-keras layers."""
    src = open(os.path.join(HERE, "keras208.py")).read()
    start = src.index("# keras 2.0.8 applications topology")
    end = src.index("def predict_fn(model):")
    code = src[start:end].replace("residual._keras_shape[CHANNEL_AXIS]",
                                  "int(residual.shape[CHANNEL_AXIS])")

    class KLns:
        add = staticmethod(L.add)
    ns = dict(Input=L.Input, Conv2D=L.Conv2D, BatchNormalization=L.BatchNormalization,
              Activation=L.Activation, MaxPooling2D=L.MaxPooling2D,
              AveragePooling2D=L.AveragePooling2D, GlobalAveragePooling2D=L.GlobalAveragePooling2D,
              GlobalMaxPooling2D=L.GlobalMaxPooling2D, Dense=L.Dense, Dropout=L.Dropout,
              Flatten=L.Flatten, Model=Model, KL=KLns, l2=tf_keras.regularizers.l2,
              CHANNEL_AXIS=3, json=__import__("json"))
    exec(compile(code, "keras208.py(arch)", "exec"), ns)
    return ns


def tfk_resnet50_whole():
    ns = _arch_namespace()
    rng = np.random.RandomState(35)
    patch = ns["patch_model"]("resnet50", 16)
    common.randomize_model(patch, rng)
    h, w = 288, 224
    x = common.make_input(rng, (2, h, w, 3))
    common.calibrate_bn(tf_keras, patch, x, rng)
    model, top_nb, final, _ = ns["add_top_layers"](
        patch, (h, w), patch_net='resnet50', nb_class=2, dropout=0.5, block_type='resnet',
        depths=[32, 32], repetitions=[1, 1], bottleneck_enlarge_factor=2)
    common.randomize_model(model, rng, skip=[model.layers[1].name])
    common.calibrate_bn(tf_keras, model, x, rng)
    sc, _ = common.calibrate_final(model, x, final, 2, predict(model))
    record('tfk_resnet50_whole', model, x, [
        "Keras 2.0.8 ResNet50 topology (conv1 7x7/2 'same', no ZeroPadding2D; widths / 16) and "
        "end2end add_top_layers resnet top [32-32-64]x2, built with tf-keras layers: the patch "
        "model is a nested Functional called on a new Input (node index 1). Even input "
        "288x224: conv1 uses TensorFlow's asymmetric 'same' padding (2 top/left, 3 "
        "bottom/right). Layer names follow tf-keras auto-naming.",
        "final Dense scaled by %g" % sc], keep=[model.layers[1].name], budget=700 * 1024)


def tfk_chunked():
    rng = np.random.RandomState(37)
    inp = L.Input((4,), name='x')
    t = inp
    n = 300
    for i in range(n):
        nm = "very_long_layer_name_to_force_hdf5_attribute_chunking_%04d_" % i + "z" * 180
        if i % 50 == 0:
            t = L.Dense(4, name=nm)(t)
        else:
            t = L.Activation('linear' if i % 3 else 'tanh', name=nm)(t)
    out = L.Dense(3, activation='softmax', name='out')(t)
    model = Model(inp, out, name='chunked')
    x = rng.normal(0, 1, (2, 4)).astype(np.float32)
    sc = finish(model, x, 3, 38)
    record('tfk_chunked', model, x, ["%d layers with long names: final Dense scaled by %g" % (n, sc)])
    path = os.path.join(common.case_dir('tfk_chunked'), 'model.h5')
    with h5py.File(path, 'r') as f:
        mw = f['model_weights']
        keys = sorted(k for k in mw.attrs.keys() if k.startswith('layer_names'))
        assert 'layer_names' not in mw.attrs and 'layer_names0' in mw.attrs, keys
        counts = {k: int(len(mw.attrs[k])) for k in keys}
    import json
    p = os.path.join(common.case_dir('tfk_chunked'), 'expect.json')
    meta = json.load(open(p))
    meta["chunked_attributes"] = counts
    meta["notes"].append("verified with h5py: /model_weights has no 'layer_names' but %s "
                         "(entries per chunk), to be concatenated in order" % counts)
    json.dump(meta, open(p, 'w'), indent=1)
    print("chunks:", counts)


def hostile_tfoplambda():
    inp = L.Input((4,), name='x')
    t = tf.math.add(inp, 1.0)          # becomes a TFOpLambda layer
    t = tf.math.multiply(t, 2.0)
    out = L.Dense(2, name='out')(t)
    model = Model(inp, out)
    d = common.case_dir('hostile')
    model.save(os.path.join(d, 'tfoplambda.h5'))
    print("wrote tfoplambda.h5:", [l.__class__.__name__ for l in model.layers])


if __name__ == "__main__":
    globals()[sys.argv[1]]()
