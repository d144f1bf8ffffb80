"""The peers of `scripts/bench_train.sh` (a measurement, not a test).

    bench_train_peer.py gen DIR N H W              N 16-bit PNGs per class (neg/pos) in DIR
    bench_train_peer.py tfkeras MODEL.h5 DIR H W BATCH EPOCHS RESCALE MEAN [THREADS]

`tfkeras` loads the same `.h5` with tf-keras 2.21 (TF_USE_LEGACY_KERAS=1), reads the same
PNGs with OpenCV (IMREAD_UNCHANGED, INTER_CUBIC resize, `* RESCALE - MEAN`, grey repeated to
the model's channels), compiles with Adam and runs `fit`; prints one JSON line with the
images/s of the last epoch (warm) and the process's peak memory. THREADS (default: every
core) sets TensorFlow's intra-op and inter-op thread pools to THREADS each.
"""
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np  # noqa: E402


def gen(d, n, h, w):
    import cv2
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:h, 0:w]
    for cls in ("neg", "pos"):
        os.makedirs(os.path.join(d, cls), exist_ok=True)
        for i in range(n):
            img = 20000 + 8000 * rng.rand(h, w)
            img = cv2.GaussianBlur(img, (0, 0), 3)
            if cls == "pos":
                cy, cx = rng.randint(h // 4, 3 * h // 4), rng.randint(w // 4, 3 * w // 4)
                img += 25000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (h / 12) ** 2))
            cv2.imwrite(os.path.join(d, cls, "%s_%04d.png" % (cls, i)),
                        np.clip(img, 0, 65535).astype(np.uint16))


def tfkeras(model_path, d, h, w, batch, epochs, rescale, mean, threads=None):
    import cv2
    import tensorflow as tf
    import tf_keras
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = tf_keras.models.load_model(model_path, compile=False)
    c = model.input_shape[-1]
    xs, ys = [], []
    for label, cls in enumerate(("neg", "pos")):
        for f in sorted(os.listdir(os.path.join(d, cls))):
            img = cv2.imread(os.path.join(d, cls, f), cv2.IMREAD_UNCHANGED).astype(np.float32)
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC) * rescale - mean
            xs.append(np.repeat(img[..., None], c, axis=2))
            ys.append(label)
    x = np.stack(xs).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[ys]
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    times = []

    class T(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, e, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[T()])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"peer": "tf-keras " + tf_keras.__version__, "images": len(x),
                      "images_per_s": len(x) / times[-1], "epoch_s": times,
                      "peak_mb": peak}))


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        a = sys.argv[2:]
        tfkeras(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), float(a[6]), float(a[7]),
                int(a[8]) if len(a) > 8 else None)
