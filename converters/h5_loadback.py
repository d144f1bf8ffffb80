"""Load an .h5 written by allconv with GENUINE Keras and check its predictions.

    .venv-keras208/bin/python converters/h5_loadback.py OUT.h5 fixtures/<case>/io.npz
    .venv-tf/bin/python       converters/h5_loadback.py OUT.h5 fixtures/<case>/io.npz

Which Keras runs is decided by the interpreter: tf-keras 2.x (TF_USE_LEGACY_KERAS=1)
when `tf_keras` is importable, else standalone Keras (2.0.8 on Theano, set up as the
fixture generators do). The model is loaded the way end2end-all-conv loads its
checkpoints, `keras.models.load_model(path)` with no custom objects (compile=False where
the Keras has it: allconv drops `training_config`). It predicts on `input` and compares
with `output`; prints one JSON line {keras, backend, max_abs_err, passed, ...} and exits 0
when passed, 1 when not, 2 when loading failed.

Keras 2.0.8 was written for h5py 2.x, where string attributes come back as `bytes`; under
h5py 3 variable-length strings come back as `str`, and 2.0.8's `.decode('utf8')` calls
fail. The shim below gives 2.0.8 the h5py-2 view (bytes) without touching the file.
Likewise 2.0.8's `convert_kernel` (the Theano<->TensorFlow kernel flip applied when the
file's backend differs from the running one) indexes numpy with a list, which numpy 1.23+
rejects; it is replaced by the same code with a tuple index.
"""
import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _h5py2_strings():
    import h5py
    import numpy as np

    orig = h5py.AttributeManager.__getitem__

    def getitem(self, name):
        v = orig(self, name)
        if isinstance(v, str):
            return v.encode("utf8")
        if isinstance(v, np.ndarray) and v.dtype.kind == "O":
            return np.array([x.encode("utf8") if isinstance(x, str) else x for x in v.ravel()],
                            dtype=object).reshape(v.shape)
        return v

    h5py.AttributeManager.__getitem__ = getitem


def _numpy_tuple_index(conv_utils):
    """Keras 2.0.8's convert_kernel indexes with a *list* of slices, which numpy >= 1.23
    refuses (IndexError); older numpy read it as a tuple. Same function, tuple index."""
    import numpy as np

    def convert_kernel(kernel):
        kernel = np.asarray(kernel)
        if not 3 <= kernel.ndim <= 5:
            raise ValueError('Invalid kernel shape:', kernel.shape)
        slices = [slice(None, None, -1) for _ in range(kernel.ndim)]
        no_flip = (slice(None, None), slice(None, None))
        slices[-2:] = no_flip
        return np.copy(kernel[tuple(slices)])

    conv_utils.convert_kernel = convert_kernel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("h5")
    ap.add_argument("npz")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--reference-h5", help="also load this file with the same Keras; pass when "
                    "both files predict the same (for Keras bugs that make both miss io.npz)")
    ap.add_argument("--no-predict", action="store_true",
                    help="load only and report the layer names and parameter count (for Keras "
                    "2.0.8 on Theano, which mis-loads TensorFlow-labelled nested models)")
    args = ap.parse_args()

    tfkeras = importlib.util.find_spec("tf_keras") is not None
    common.setup_env("tfkeras" if tfkeras else "theano")
    import numpy as np

    result = {"file": args.h5, "npz": args.npz}
    try:
        if tfkeras:
            import tf_keras as keras
            model = keras.models.load_model(args.h5, compile=False)
            ref = (keras.models.load_model(args.reference_h5, compile=False)
                   if args.reference_h5 else None)
        else:
            _h5py2_strings()
            import keras
            import keras.backend as K
            import theano.ifelse  # noqa: F401  (Keras 2.0.8 uses it without importing it)
            from keras.utils import conv_utils
            _numpy_tuple_index(conv_utils)
            result["backend"] = K.backend()
            # Keras 2.0.8's load_model has no `compile` argument; with no training_config
            # in the file it returns the model uncompiled (and warns).
            model = keras.models.load_model(args.h5)
            ref = keras.models.load_model(args.reference_h5) if args.reference_h5 else None
        result["keras"] = keras.__version__
        result.setdefault("backend", "tensorflow")
    except Exception as e:  # report, do not hide
        import traceback
        traceback.print_exc()
        result.update(passed=False, error="%s: %s" % (type(e).__name__, e))
        print(json.dumps(result))
        return 2

    if args.no_predict:
        result.update(passed=True, layers=len(model.layers), params=int(model.count_params()),
                      layer_names=[l.name for l in model.layers])
        print(json.dumps(result))
        return 0

    io = np.load(args.npz)
    x, y = io["input"], io["output"]
    p = model.predict(x, batch_size=max(1, len(x)))
    if isinstance(p, list):
        p = p[0]
    p = np.asarray(p, dtype=np.float64)
    if p.shape != y.shape:
        result.update(passed=False, error="prediction shape %s, expected %s" % (p.shape, y.shape))
        print(json.dumps(result))
        return 1
    err = float(np.max(np.abs(p - y))) if p.size else 0.0
    result.update(max_abs_err=err, tol=args.tol, passed=bool(err <= args.tol),
                  layers=len(model.layers), params=int(model.count_params()))
    if ref is not None:
        q = ref.predict(x, batch_size=max(1, len(x)))
        q = np.asarray(q[0] if isinstance(q, list) else q, dtype=np.float64)
        d = float(np.max(np.abs(p - q))) if p.size else 0.0
        result.update(reference=args.reference_h5, max_abs_diff_vs_reference=d,
                      reference_max_abs_err=float(np.max(np.abs(q - y))),
                      passed=bool(d <= args.tol))
    print(json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
