"""Keras 2.0.8: does setting a Dropout layer's rate after the model is built (as end2end-all-conv's
do_2stage_training does between stages) change training? Two identical models, one with
rate re-assigned to 0.9 before compile: same losses means no. Writes
fixtures/train_step/dropout_rate_after_build.json.

    .venv-keras208/bin/python converters/dropout_probe.py
"""
import os, sys, json
sys.path.insert(0, 'converters')
import common
common.setup_env("theano", "channels_last")
import numpy as np, keras, theano, theano.ifelse
from keras.layers import Input, Dense, Dropout
from keras.models import Model
np.random.seed(0)
x = np.random.rand(64, 8).astype('float32'); y = np.eye(2)[np.random.randint(0, 2, 64)].astype('float32')
def run(rate_after):
    np.random.seed(1)
    i = Input((8,)); h = Dense(16, activation='relu')(i); d = Dropout(0.0)(h); o = Dense(2, activation='softmax')(d)
    m = Model(i, o)
    w0 = [np.random.RandomState(2).randn(*w.shape).astype('float32') * 0.3 for w in m.get_weights()]
    m.set_weights(w0)
    if rate_after is not None:
        m.layers[2].rate = rate_after
    m.compile('sgd', 'categorical_crossentropy')
    return [float(m.train_on_batch(x, y)) for _ in range(3)]
r = {"keras": keras.__version__, "backend": keras.backend.backend(), "losses_built_rate_0.0": run(None), "losses_rate_set_to_0.9_after_build": run(0.9)}
r["rate_after_build_has_effect"] = r["losses_built_rate_0.0"] != r["losses_rate_set_to_0.9_after_build"]
open("fixtures/train_step/dropout_rate_after_build.json", "w").write(json.dumps(r, indent=1) + "\n")
print(json.dumps(r))
