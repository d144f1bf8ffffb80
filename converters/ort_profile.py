"""onnxruntime's own per-node profile of an ONNX model, summed per op type: the peer column
of `scripts/profile.sh`. Prints one JSON object.

    ort_profile.py MODEL.onnx HxW THREADS RUNS

One warm-up run, then RUNS profiled runs (`SessionOptions.enable_profiling`). For each op
type: the median over runs of the summed kernel time of its nodes (ms), the node count, and
the median whole-run time. Input: NHWC batch 1, the same pseudo-random data as
bench_peers.py. ORT's graph optimisations stay at their default (all), as a user gets them:
its fused nodes (e.g. Conv with Relu folded in) are reported under ORT's own op names.
"""
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort


def main():
    path, hw, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    h, w = (int(x) for x in hw.lower().split("x"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    tmp = tempfile.mkdtemp()
    opts.profile_file_prefix = os.path.join(tmp, "ort")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    c = inp.shape[-1]
    x = np.random.RandomState(0).uniform(-1, 1, (1, h, w, c)).astype(np.float32)
    wall = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        sess.run(None, {inp.name: x})
        wall.append(time.perf_counter() - t0)
    trace = json.load(open(sess.end_profiling()))
    # Kernel events in run order; a run is delimited by its model_run event.
    runs_ev = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kernels = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = []
    for r in runs_ev[1:]:
        t0, t1 = r["ts"], r["ts"] + r["dur"]
        by_op = {}
        for k in kernels:
            if t0 <= k["ts"] <= t1:
                op = k["args"].get("op_name", "?")
                ms, n = by_op.get(op, (0.0, 0))
                by_op[op] = (ms + k["dur"] / 1000.0, n + 1)
        per_run.append(by_op)
    ops = sorted({op for r in per_run for op in r})
    summary = {}
    for op in ops:
        times = sorted(r.get(op, (0.0, 0))[0] for r in per_run)
        summary[op] = {"ms": times[len(times) // 2], "nodes": per_run[0].get(op, (0, 0))[1]}
    steady = sorted(wall[1:])
    print(json.dumps({"peer": "onnxruntime " + ort.__version__, "threads": threads,
                      "run_ms": steady[len(steady) // 2] * 1000.0, "ops": summary}))


if __name__ == "__main__":
    main()
