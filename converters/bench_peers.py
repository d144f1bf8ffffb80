"""The peers of `scripts/bench.sh`, each run in its own process so that its peak memory
(ru_maxrss) is its own. Prints one JSON object.

    bench_peers.py tf2onnx MODEL.h5 OUT.onnx HxW          conversion time (tf2onnx.convert.from_keras)
    bench_peers.py ort     MODEL.onnx HxW THREADS RUNS    onnxruntime latency
    bench_peers.py tf      MODEL.h5   HxW THREADS RUNS    TensorFlow (tf-keras 2.21) latency
    bench_peers.py paper   MODEL.h5   HxW THREADS IMAGE...  the paper's scoring pipeline
        (cv2.imread unchanged + cv2.resize INTER_CUBIC + rescale 0.003891, mean 52.18, grey
        to 3 channels, tf-keras predict_on_batch, one image at a time): images/s

Inputs are NHWC batch 1, deterministic pseudo-random. Latency = median of RUNS after one
warm-up run. Memory = peak resident set size of the process (includes the runtime itself).
"""
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def size(s):
    h, w = s.lower().split("x")
    return int(h), int(w)


def make_input(h, w, c):
    import numpy as np
    rng = np.random.RandomState(0)
    return rng.uniform(-1, 1, (1, h, w, c)).astype(np.float32)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    kind = sys.argv[1]
    if kind == "tf2onnx":
        model_path, out, hw = sys.argv[2], sys.argv[3], size(sys.argv[4])
        t0 = time.perf_counter()
        import tensorflow as tf
        import tf_keras
        import tf2onnx
        t_import = time.perf_counter() - t0
        t1 = time.perf_counter()
        model = tf_keras.models.load_model(model_path, compile=False)
        c = model.input_shape[-1]
        sig = (tf.TensorSpec((None, hw[0], hw[1], c), tf.float32, name="input"),)
        tf2onnx.convert.from_keras(model, input_signature=sig, opset=13, output_path=out)
        t_convert = time.perf_counter() - t1
        print(json.dumps({"peer": "tf2onnx " + tf2onnx.__version__, "convert_s": t_convert,
                          "import_s": t_import, "peak_mb": peak_mb()}))
    elif kind == "ort":
        import onnxruntime as ort
        path, hw, threads, runs = sys.argv[2], size(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        t0 = time.perf_counter()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - t0
        inp = sess.get_inputs()[0]
        c = inp.shape[-1] if isinstance(inp.shape[-1], int) else 3
        x = make_input(hw[0], hw[1], c)
        sess.run(None, {inp.name: x})
        first_result_s = time.perf_counter() - t0
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, {inp.name: x})
            times.append(time.perf_counter() - t)
        print(json.dumps({"peer": "onnxruntime " + ort.__version__, "latency_ms": 1000 * median(times),
                          "load_s": load_s, "first_result_s": first_result_s,
                          "runs": runs, "threads": threads, "peak_mb": peak_mb()}))
    elif kind == "tf":
        import tensorflow as tf
        path, hw, threads, runs = sys.argv[2], size(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import tf_keras
        model = tf_keras.models.load_model(path, compile=False)
        x = make_input(hw[0], hw[1], model.input_shape[-1])
        f = tf.function(lambda t: model(t, training=False))
        f(x)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            f(x).numpy()
            times.append(time.perf_counter() - t)
        print(json.dumps({"peer": "tensorflow " + tf.__version__, "latency_ms": 1000 * median(times),
                          "runs": runs, "threads": threads, "peak_mb": peak_mb()}))
    elif kind == "paper":
        import cv2
        import numpy as np
        import tensorflow as tf
        path, hw, threads, files = sys.argv[2], size(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        cv2.setNumThreads(threads)
        import tf_keras
        model = tf_keras.models.load_model(path, compile=False)
        t0 = time.perf_counter()
        probs = []
        for f in files:
            img = cv2.imread(f, cv2.IMREAD_UNCHANGED)
            img = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC).astype("float32")
            img *= 0.003891
            img -= 52.18
            x = np.stack([img] * 3, axis=-1)[None]
            probs.append(model.predict_on_batch(x)[0].tolist())
        dt = time.perf_counter() - t0
        print(json.dumps({"peer": "paper pipeline: opencv " + cv2.__version__ + " + tf-keras " + tf.__version__,
                          "images": len(files), "images_per_s": len(files) / dt,
                          "threads": threads, "peak_mb": peak_mb(), "probabilities": probs}))
    else:
        sys.exit(f"unknown peer {kind}")


if __name__ == "__main__":
    main()
