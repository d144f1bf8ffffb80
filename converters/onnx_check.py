#!/usr/bin/env python3
"""Check an allconv ONNX export with the reference tools.

usage: onnx_check.py MODEL.onnx IO.npz [--atol 1e-4]
       onnx_check.py MODEL.onnx IO_SIZES.npz --sizes [--output-prefix P] [--atol 1e-4]

1. onnx.checker.check_model(full_check=True)  (shape inference included)
2. onnxruntime on the npz input(s) (`input`, or `input_0`, `input_1`... for several
   graph inputs), compared to the npz `output` within atol.
3. Extra graph outputs named like an npz `layer/<name>` key are compared too
   (informational: reported under "layers", they do not decide "passed").

With --sizes (one symbolic-size file at several sizes, tests/symbolic_size.rs): the npz
holds `input_HxW` / `output_HxW` pairs (converters/multisize_ref.py); the same session
runs every input and each output is compared within atol ("sizes": per-size error);
--output-prefix P compares with `P` + `output_HxW` instead (a layer applied alone).

Prints one JSON object; exit status 0 only when everything passed. Exit status 3 with
{"skipped": ...} when onnx or onnxruntime cannot be imported.
"""
import json
import sys


def main():
    args = sys.argv[1:]
    atol = 1e-4
    sizes = "--sizes" in args
    if sizes:
        args.remove("--sizes")
    prefix = ""
    if "--output-prefix" in args:
        i = args.index("--output-prefix")
        prefix = args[i + 1]
        del args[i : i + 2]
    if "--atol" in args:
        i = args.index("--atol")
        atol = float(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    model_path, npz_path = args
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except ImportError as e:  # the Rust test turns this into a loud skip
        print(json.dumps({"skipped": f"cannot import: {e}"}))
        return 3

    report = {"model": model_path, "reference": npz_path, "atol": atol,
              "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    try:
        onnx.checker.check_model(model_path, full_check=True)
        report["checker"] = "ok"
    except Exception as e:  # noqa: BLE001 - report any checker failure
        report["checker"] = f"FAILED: {e}"
        report["passed"] = False
        print(json.dumps(report))
        return 1

    if sizes:
        return check_sizes(model_path, npz_path, atol, report, np, ort, prefix)

    ref = np.load(npz_path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    ins = sess.get_inputs()
    if len(ins) == 1:
        feed = {ins[0].name: ref["input"].astype(np.float32)}
    else:
        feed = {x.name: ref[f"input_{i}"].astype(np.float32) for i, x in enumerate(ins)}
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, feed)))
    got = outs[names[0]]
    want = ref["output"]
    if got.shape != want.shape:
        report["output_error"] = f"shape {got.shape} vs reference {want.shape}"
        report["passed"] = False
    else:
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        report["max_abs_err"] = err
        report["passed"] = bool(err <= atol)
    layers = {}
    for n in names[1:]:
        key = f"layer/{n}"
        if key in ref.files and outs[n].shape == ref[key].shape:
            layers[n] = float(np.max(np.abs(outs[n].astype(np.float64) - ref[key])))
    if layers:
        report["layers"] = layers
    print(json.dumps(report))
    return 0 if report["passed"] else 1


def check_sizes(model_path, npz_path, atol, report, np, ort, prefix=""):
    """One session, every `input_HxW` of the npz against its `output_HxW`."""
    ref = np.load(npz_path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    report["input_shape"] = [d if isinstance(d, int) else str(d) for d in sess.get_inputs()[0].shape]
    errs = {}
    passed = True
    keys = sorted(k for k in ref.files if k.startswith("input_"))
    for k in keys:
        size = k[len("input_"):]
        got = sess.run(None, {name: ref[k].astype(np.float32)})[0]
        want = ref[prefix + "output_" + size]
        if got.shape != want.shape:
            errs[size] = f"shape {got.shape} vs reference {want.shape}"
            passed = False
            continue
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        errs[size] = err
        passed = passed and err <= atol
    report["sizes"] = errs
    report["passed"] = bool(passed and keys)
    print(json.dumps(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
