"""Fixtures written by genuine tf-keras 2.21 (TF_USE_LEGACY_KERAS=1, model.save('x.h5')).

    .venv-tf/bin/python converters/tfkeras.py CASE
cases: tfk_functional, tfk_sequential, tfk_resnet50_whole, tfk_chunked, hostile_tfoplambda
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


def record(case, model, x, notes, keep=(), budget=common.NPZ_BUDGET):
    d = common.case_dir(case)
    y = model.predict(x, batch_size=len(x), verbose=0)
    acts = common.collect_activations(tf_keras, model, x)
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
