"""Fixtures written by genuine Keras 1.2.2 (Theano backend).

    .venv-keras122/bin/python converters/keras122.py CASE
cases: k122_th_conv, k122_tf_merge, k122_merge_layer, hostile_merge_lambda
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASE = sys.argv[1] if len(sys.argv) > 1 else None
common.setup_env("theano", "channels_first" if CASE == "k122_th_conv" else "channels_last")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402
import theano  # noqa: E402,F401
import theano.ifelse  # noqa: E402,F401
from keras import backend as K  # noqa: E402
from keras.layers import (Input, Convolution2D, BatchNormalization, Activation,  # noqa: E402
                          MaxPooling2D, Flatten, Dense, Dropout, merge, Merge,
                          GlobalAveragePooling2D)
from keras.models import Model, Sequential  # noqa: E402

GENERATOR = ".venv-keras122 (keras 1.2.2, theano 1.0.5, backend theano)"


def h5_facts(path):
    """What Keras 1.2.2 actually wrote (root / model_weights attributes, weight names)."""
    out = {}
    with h5py.File(path, "r") as f:
        out["root_attrs"] = sorted(f.attrs.keys())
        mw = f["model_weights"]
        out["model_weights_attrs"] = sorted(mw.attrs.keys())
        names = {}
        for ln in mw.attrs["layer_names"]:
            ln = ln.decode() if isinstance(ln, bytes) else str(ln)
            wn = mw[ln].attrs["weight_names"]
            names[ln] = [w.decode() if isinstance(w, bytes) else str(w) for w in wn] \
                if wn.dtype.kind in "OSU" else []
        out["weight_names"] = names
        out["keras_version"] = str(f.attrs["keras_version"])
    return out


def record(case, model, x, notes):
    d = common.case_dir(case)
    bs = len(x[0]) if isinstance(x, list) else len(x)
    y = model.predict(x, batch_size=bs)
    acts = common.collect_activations(keras, model, x)
    path = os.path.join(d, "model.h5")
    model.save(path)
    facts = h5_facts(path)
    meta = {
        "keras_version": keras.__version__, "backend": K.backend(), "generator": GENERATOR,
        "image_dim_ordering": K.image_dim_ordering(),
        "count_params": int(model.count_params()),
        "input_shape": list(np.asarray(x[0] if isinstance(x, list) else x).shape),
        "layers": common.layer_table(model, acts),
        "h5_facts": facts,
        "notes": [
            "Written by Keras 1.2.2 on Theano. Keras 1 files carry NO backend attribute: "
            "root attributes are %s and /model_weights has only %s (no keras_version, no "
            "backend), which is how Keras 2 recognises a Keras 1 file. Conv kernels are "
            "Theano-oriented (true convolution: flip for TensorFlow) and, for "
            "dim_ordering='th', stored (nb_filter, stack, rows, cols)."
            % (facts["root_attrs"], facts["model_weights_attrs"]),
            "Weight names are Theano shared-variable names '<layer>_W', '<layer>_b', "
            "'<layer>_gamma', '<layer>_beta', '<layer>_running_mean', '<layer>_running_std' "
            "(no '/', no ':0'); running_std holds the variance (Keras >= 1.0.6)."] + list(notes),
    }
    if isinstance(x, list):
        meta["input_shapes"] = [list(a.shape) for a in x]
    common.save_case(case, x, y, acts, meta)
    common.write_command(case, ".venv-keras122/bin/python converters/keras122.py " + case)
    common.summarize(case)


def finish(model, x, n, seed):
    rng = np.random.RandomState(seed)
    common.randomize_model(model, rng)
    common.calibrate_bn(keras, model, x, rng)
    bs = len(x[0]) if isinstance(x, list) else len(x)
    s, _ = common.calibrate_final(model, x, [model.layers[-1]], n,
                                  lambda v: model.predict(v, batch_size=bs))
    return s


def k122_th_conv():
    rng = np.random.RandomState(21)
    model = Sequential()
    model.add(Convolution2D(4, 3, 3, border_mode='same', dim_ordering='th',
                            input_shape=(3, 11, 10), name='conv1'))
    model.add(BatchNormalization(mode=0, axis=1, name='bn1'))
    model.add(Activation('relu', name='relu1'))
    model.add(MaxPooling2D(pool_size=(2, 2), dim_ordering='th', name='pool1'))
    model.add(Convolution2D(5, 3, 2, border_mode='valid', subsample=(2, 1), dim_ordering='th',
                            name='conv2'))
    model.add(Activation('tanh', name='tanh2'))
    model.add(Flatten(name='flatten'))
    model.add(Dense(3, activation='softmax', name='out'))
    x = common.make_input(rng, (2, 11, 10, 3)).transpose(0, 3, 1, 2).copy()
    s = finish(model, x, 3, 22)
    record('k122_th_conv', model, x, [
        "Sequential, dim_ordering='th' (NCHW input), BatchNormalization mode 0 axis 1; "
        "Flatten flattens C,H,W; final Dense scaled by %g" % s])


def k122_tf_merge():
    rng = np.random.RandomState(23)
    inp = Input(shape=(9, 8, 3), name='img')
    a = Convolution2D(4, 3, 3, border_mode='same', dim_ordering='tf', name='conv_a')(inp)
    a = BatchNormalization(mode=0, axis=3, name='bn_a')(a)
    a = Activation('relu', name='relu_a')(a)
    b = Convolution2D(4, 1, 1, border_mode='valid', dim_ordering='tf', name='conv_b')(inp)
    s = merge([a, b], mode='sum', name='merge_sum')
    c = merge([s, b], mode='concat', concat_axis=-1, name='merge_concat')
    p = MaxPooling2D(pool_size=(2, 2), dim_ordering='tf', name='pool')(c)
    f = Flatten(name='flatten')(p)
    out = Dense(3, activation='softmax', name='out')(f)
    model = Model(input=inp, output=out)
    x = common.make_input(rng, (2, 9, 8, 3))
    sc = finish(model, x, 3, 24)
    record('k122_tf_merge', model, x, [
        "functional Model with merge(mode='sum') and merge(mode='concat') (class_name 'Merge' "
        "in the config, with mode/concat_axis and inbound nodes of 3-element lists), "
        "dim_ordering='tf'; final Dense scaled by %g" % sc])


def k122_merge_layer():
    rng = np.random.RandomState(25)
    left = Sequential(name='left')
    left.add(Dense(5, input_dim=6, activation='relu', name='left_dense'))
    right = Sequential(name='right')
    right.add(Dense(4, input_dim=6, activation='tanh', name='right_dense'))
    model = Sequential(name='merged')
    model.add(Merge([left, right], mode='concat', name='merge_layer'))
    model.add(Dense(3, activation='softmax', name='out'))
    x = [rng.normal(0, 1, (2, 6)).astype(np.float32), rng.normal(0, 1, (2, 6)).astype(np.float32)]
    sc = finish(model, x, 3, 26)
    record('k122_merge_layer', model, x, [
        "legacy Merge LAYER (mode='concat') inside a Sequential, merging two Sequential "
        "branches: two inputs (io.npz input_0, input_1; `input` = input_0); final Dense "
        "scaled by %g" % sc])


def hostile_merge_lambda():
    a = Input(shape=(4,), name='a')
    b = Input(shape=(4,), name='b')
    m = merge([a, b], mode=lambda t: t[0] * 2 + t[1], output_shape=lambda s: s[0],
              name='merge_lambda')
    out = Dense(2, name='out')(m)
    model = Model(input=[a, b], output=out)
    d = common.case_dir('hostile')
    model.save(os.path.join(d, 'merge_lambda.h5'))
    print("wrote", os.path.join(d, 'merge_lambda.h5'))


if __name__ == "__main__":
    globals()[CASE]()
