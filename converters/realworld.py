"""Small cases for naming patterns seen in real-world files (found by reading Keras
applications models saved by tf-keras 2.21 and Keras 3):

- `tfk_slash_names`: tf-keras layer names containing '/' (DenseNet's `conv1/conv`), inside
  and outside a nested model; weight paths then nest one group deeper.
- `k3_depthwise`: Keras 3 legacy .h5 where DepthwiseConv2D's weight is plain `kernel`
  (MobileNet), next to a SeparableConv2D and ReLU(max_value=6).

    .venv-tf/bin/python converters/realworld.py tfk_slash_names
    .venv-tf/bin/python converters/realworld.py k3_depthwise
"""
import os
import sys

CASE = sys.argv[1]
if CASE.startswith("tfk"):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.setup_env("tfkeras" if CASE.startswith("tfk") else "keras3")

import numpy as np  # noqa: E402

if CASE.startswith("tfk"):
    import tf_keras as keras  # noqa: E402
else:
    import keras  # noqa: E402
L = keras.layers


def build():
    if CASE == "tfk_slash_names":
        inner_in = keras.Input((None, None, 3), name="patch_in")
        t = L.Conv2D(4, 3, padding="same", name="conv1/conv")(inner_in)
        t = L.BatchNormalization(name="conv1/bn")(t)
        t = L.Activation("relu", name="conv1/relu")(t)
        inner = keras.Model(inner_in, t, name="patch/net")
        x_in = keras.Input((12, 10, 3), name="img")
        t = inner(x_in)
        t = L.Conv2D(5, 1, name="top/conv")(t)
        t = L.GlobalAveragePooling2D(name="top/gap")(t)
        out = L.Dense(3, activation="softmax", name="top/fc")(t)
        return keras.Model(x_in, out, name="slashes"), (2, 12, 10, 3)
    x_in = keras.Input((12, 10, 3), name="img")
    t = L.Conv2D(4, 3, strides=2, padding="same", name="stem")(x_in)
    t = L.DepthwiseConv2D(3, padding="same", name="dw")(t)
    t = L.ReLU(6.0, name="relu6")(t)
    t = L.SeparableConv2D(6, 3, padding="same", name="sep")(t)
    t = L.BatchNormalization(name="bn")(t)
    t = L.GlobalAveragePooling2D(name="gap")(t)
    out = L.Dense(3, activation="softmax", name="fc")(t)
    return keras.Model(x_in, out, name="k3_dw"), (2, 12, 10, 3)


def main():
    rng = np.random.RandomState(7)
    model, shape = build()
    x = common.make_input(rng, shape)
    common.randomize_model(model, rng)
    sc, y = common.calibrate_final(model, x, [model.layers[-1]], 3, lambda v: model.predict(v, verbose=0))
    acts, rows = {}, []
    for l in model.layers:
        if l.__class__.__name__ == "InputLayer":
            rows.append({"path": l.name, "name": l.name, "class_name": "InputLayer", "output_shape": list(x.shape), "params": 0})
            continue
        if hasattr(l, "layers"):  # the nested model is called straight on the input here
            a = np.asarray(l.predict(x, verbose=0))
        else:
            a = np.asarray(keras.Model(model.input, l.output).predict(x, verbose=0))
        acts[l.name] = a
        rows.append({"path": l.name, "name": l.name, "class_name": l.__class__.__name__, "output_shape": list(a.shape), "params": int(l.count_params())})
        if hasattr(l, "layers"):  # nested model: its layers follow it, with the path prefix
            for il in l.layers:
                sub = keras.Model(l.input, il.output)
                ia = np.asarray(sub.predict(x, verbose=0))
                acts[f"{l.name}/{il.name}"] = ia
                rows.append({"path": f"{l.name}/{il.name}", "name": il.name, "class_name": il.__class__.__name__, "output_shape": list(ia.shape), "params": int(il.count_params())})
    d = common.case_dir(CASE)
    model.save(os.path.join(d, "model.h5"))
    meta = {"keras_version": keras.__version__ if hasattr(keras, "__version__") else "tf-keras",
            "backend": "tensorflow", "generator": ".venv-tf " + ("tf-keras (TF_USE_LEGACY_KERAS=1)" if CASE.startswith("tfk") else "keras 3"),
            "count_params": int(model.count_params()), "input_shape": list(x.shape), "layers": rows,
            "notes": [__doc__.strip().splitlines()[0], "final Dense scaled by %g" % sc]}
    common.save_case(CASE, x, y, acts, meta)
    common.write_command(CASE, f".venv-tf/bin/python converters/realworld.py {CASE}")


if __name__ == "__main__":
    main()
