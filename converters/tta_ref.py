"""Genuine-Keras reference for test-time augmentation (the paper's "augmented AUC").

Loads a fixture with tf-keras 2.21 (TF_USE_LEGACY_KERAS=1: the `k208tf_*` files are
TensorFlow-backend Keras 2.0.8 files, like the published checkpoints), and predicts on the
fixture input, its horizontal flip, its vertical flip and both; writes
fixtures/<case>/tta.npz with `input` (NHWC) and `output` (the mean of the four softmax
outputs) and `flips` (the four predictions, stacked).

    .venv-tf/bin/python converters/tta_ref.py k208tf_vgg16_whole_vgg
"""
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tf_keras  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


def main(case):
    d = os.path.join(ROOT, case)
    model = tf_keras.models.load_model(os.path.join(d, "model.h5"), compile=False)
    x = np.load(os.path.join(d, "io.npz"))["input"].astype(np.float32)
    views = [x, x[:, :, ::-1, :], x[:, ::-1, :, :], x[:, ::-1, ::-1, :]]
    preds = np.stack([model.predict(np.ascontiguousarray(v), verbose=0) for v in views])
    out = preds.mean(axis=0).astype(np.float32)
    np.savez_compressed(os.path.join(d, "tta.npz"), input=x, output=out, flips=preds.astype(np.float32))
    with open(os.path.join(d, "TTA_COMMAND"), "w") as f:
        f.write(f".venv-tf/bin/python converters/tta_ref.py {case}\n")
    print(case, "tta output", out.tolist())


if __name__ == "__main__":
    for c in sys.argv[1:]:
        main(c)
