"""Genuine-Keras reference for test-time augmentation (the paper's "augmented AUC").

Loads a fixture with tf-keras 2.21 (TF_USE_LEGACY_KERAS=1: the `k208tf_*` files are
TensorFlow-backend Keras 2.0.8 files, like the published checkpoints), and predicts on the
fixture input, its horizontal flip, its vertical flip and both; writes
fixtures/<case>/tta.npz with `input` (NHWC) and `output` (the mean of the four softmax
outputs) and `flips` (the four predictions, stacked).

With `--raw`, it also writes fixtures/<case>/prep_tta.npz: the whole in-graph pipeline that
`allconv convert --preprocess rescale=R,mean=M,gray --tta flips4` builds, computed by
genuine tf-keras on real pixels: `input` is two grey crops of mini-MIAS mammograms
(fixtures/images/mdb001.pgm and mdb028.pgm, 8-bit values, N x H x W x 1), `preprocessed`
is what the model was fed (`input * R - M`, duplicated to 3 channels), `output` the mean of
the four flipped predictions and `flips` the four. `spec` holds [R, M, 1 (gray)].

    .venv-tf/bin/python converters/tta_ref.py k208tf_vgg16_whole_vgg
    .venv-tf/bin/python converters/tta_ref.py --raw k208tf_resnet50_whole_resnet
"""
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tf_keras  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


# The demo's spec for these narrow random-weight fixtures (inputs ~[-1, 1.5]): 8-bit pixels
# scaled to [-0.5, 1.49]. scripts/demo.sh passes the same string to `allconv convert`.
RAW_RESCALE, RAW_MEAN = 0.0078125, 0.5


def read_pgm(path):
    with open(path, "rb") as f:
        data = f.read()
    head = data.split(maxsplit=4)
    assert head[0] == b"P5" and int(head[3]) == 255, path
    w, h = int(head[1]), int(head[2])
    return np.frombuffer(head[4][: w * h], dtype=np.uint8).reshape(h, w)


def predict_tta(model, x):
    views = [x, x[:, :, ::-1, :], x[:, ::-1, :, :], x[:, ::-1, ::-1, :]]
    return np.stack([model.predict(np.ascontiguousarray(v), verbose=0) for v in views])


def main_raw(case):
    d = os.path.join(ROOT, case)
    model = tf_keras.models.load_model(os.path.join(d, "model.h5"), compile=False)
    _, h, w, c = model.input_shape
    crops = []
    for name, (top, left) in (("mdb001.pgm", (300, 420)), ("mdb028.pgm", (380, 300))):
        img = read_pgm(os.path.join(ROOT, "images", name))
        crops.append(img[top:top + h, left:left + w])
    raw = np.stack(crops)[..., None].astype(np.float32)
    pre = raw * np.float32(RAW_RESCALE) - np.float32(RAW_MEAN)
    pre = np.repeat(pre, c, axis=3).astype(np.float32)
    preds = predict_tta(model, pre)
    out = preds.mean(axis=0).astype(np.float32)
    spec = np.array([RAW_RESCALE, RAW_MEAN, 1.0], dtype=np.float32)
    np.savez_compressed(os.path.join(d, "prep_tta.npz"), input=raw, preprocessed=pre,
                        output=out, flips=preds.astype(np.float32), spec=spec)
    line = f".venv-tf/bin/python converters/tta_ref.py --raw {case}\n"
    cmd = os.path.join(d, "TTA_COMMAND")
    if line not in open(cmd).read():
        with open(cmd, "a") as f:
            f.write(line)
    print(case, "prep+tta output", out.tolist())


def main(case):
    d = os.path.join(ROOT, case)
    model = tf_keras.models.load_model(os.path.join(d, "model.h5"), compile=False)
    x = np.load(os.path.join(d, "io.npz"))["input"].astype(np.float32)
    preds = predict_tta(model, x)
    out = preds.mean(axis=0).astype(np.float32)
    np.savez_compressed(os.path.join(d, "tta.npz"), input=x, output=out, flips=preds.astype(np.float32))
    with open(os.path.join(d, "TTA_COMMAND"), "w") as f:
        f.write(f".venv-tf/bin/python converters/tta_ref.py {case}\n")
    print(case, "tta output", out.tolist())


if __name__ == "__main__":
    raw = "--raw" in sys.argv[1:]
    for c in [a for a in sys.argv[1:] if not a.startswith("--")]:
        (main_raw if raw else main)(c)
