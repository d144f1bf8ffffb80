"""k3_legacy_h5: Keras 3 (the `keras` 3.x that tensorflow 2.21 installs, run WITHOUT
TF_USE_LEGACY_KERAS) saving a small Functional conv model to legacy .h5.

    .venv-tf/bin/python converters/keras3.py
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.setup_env("keras3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers as L  # noqa: E402

assert keras.__version__.startswith("3."), keras.__version__
CASE = "k3_legacy_h5"


def main():
    rng = np.random.RandomState(41)
    inp = keras.Input((9, 10, 3), name='img')
    t = L.Conv2D(4, 3, strides=2, padding='same', name='conv1')(inp)
    t = L.BatchNormalization(name='bn1')(t)
    t = L.Activation('relu', name='relu1')(t)
    t = L.MaxPooling2D(2, padding='same', name='pool1')(t)
    t = L.Conv2D(5, 1, name='conv2')(t)
    t = L.GlobalAveragePooling2D(name='gap')(t)
    out = L.Dense(3, activation='softmax', name='out')(t)
    model = keras.Model(inp, out, name='k3_model')
    x = common.make_input(rng, (2, 9, 10, 3))
    common.randomize_model(model, rng)
    # BN statistics from the data (Keras 3 has no get_input_at: use a probe per layer)
    bn = model.get_layer('bn1')
    v = np.asarray(keras.Model(inp, bn.input).predict(x, verbose=0))
    m, s = v.mean((0, 1, 2)), v.std((0, 1, 2)) + 1e-3
    w = bn.get_weights()
    w[2] = (m + 0.3 * s * rng.normal(0, 1, m.shape)).astype(np.float32)
    w[3] = (s * s * rng.uniform(0.5, 2, m.shape)).astype(np.float32)
    bn.set_weights(w)
    sc, y = common.calibrate_final(model, x, [model.get_layer('out')], 3,
                                   lambda v: model.predict(v, verbose=0))
    acts = {}
    for l in model.layers[1:]:
        acts[l.name] = np.asarray(keras.Model(inp, l.output).predict(x, verbose=0))
    d = common.case_dir(CASE)
    path = os.path.join(d, 'model.h5')
    model.save(path)  # legacy HDF5 writer (keras/src/legacy/saving/legacy_h5_format.py)
    with h5py.File(path, 'r') as f:
        mw = f['model_weights']
        facts = {"root_attrs": sorted(f.attrs.keys()), "model_weights_attrs": sorted(mw.attrs.keys()),
                 "model_weights_groups": sorted(mw.keys()),
                 "weight_names": {k: [n.decode() if isinstance(n, bytes) else str(n)
                                      for n in mw[k].attrs['weight_names']]
                                  for k in mw.keys() if 'weight_names' in mw[k].attrs
                                  and mw[k].attrs['weight_names'].dtype.kind in 'OSU'}}
    rows = []
    for l in model.layers:
        a = acts.get(l.name)
        rows.append({"path": l.name, "name": l.name, "class_name": l.__class__.__name__,
                     "output_shape": list(a.shape) if a is not None else list(x.shape),
                     "params": int(l.count_params())})
    meta = {"keras_version": keras.__version__, "backend": keras.backend.backend(),
            "generator": ".venv-tf (keras %s, no TF_USE_LEGACY_KERAS)" % keras.__version__,
            "count_params": int(model.count_params()), "input_shape": list(x.shape),
            "layers": rows, "h5_facts": facts,
            "notes": ["Keras 3 legacy .h5: weight_names are variable paths without ':0'; "
                      "see h5_facts for the exact groups (a top_level_model_weights group may "
                      "exist); config entries carry module/registered_name and dtype policies.",
                      "final Dense scaled by %g" % sc]}
    common.save_case(CASE, x, y, acts, meta)
    common.write_command(CASE, ".venv-tf/bin/python converters/keras3.py")
    common.summarize(CASE)


if __name__ == "__main__":
    main()
