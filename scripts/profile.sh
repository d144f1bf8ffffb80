#!/usr/bin/env bash
# Where tract spends its time on the paper's model, beside onnxruntime's own profile of the
# same ONNX file (a measurement, not a test; the README's "Where tract loses" section):
#   scripts/profile.sh [RUNS] [ALLCONV_BINARY TAG]
# The full-width Keras 2.0.8 ResNet50 whole-image model at 1x1152x896x3 (made by
# converters/ like scripts/bench.sh), converted by allconv, run at 1 and 2 threads. Per op
# family: the median over RUNS of the summed node times, tract (`allconv bench run
# --profile`) and onnxruntime (`enable_profiling`), and tract's matrix products grouped by
# the kernel tract picked, with their GFLOP/s. ALLCONV_BINARY (default: this checkout's
# release build) lets a patched tract be profiled the same way, into bench-out/profile-TAG.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bin=${2:-}; tag=${3:-}
scripts/setup.sh --python
model=build/bench/k208_full_resnet50_whole_resnet_tf.h5
[ -f "$model" ] || bash converters/make_all.sh --bench
if [ -z "$bin" ]; then cargo build --release --quiet; bin=target/release/allconv; fi
out=bench-out/profile${tag:+-$tag}; mkdir -p "$out"
# One ONNX file for every binary profiled (the edge build cannot convert), made again when
# this checkout's build is newer than it (a change to the exporter changes the file).
onnx=bench-out/profile/model.onnx; mkdir -p bench-out/profile
cargo build --release --quiet
if [ ! -f "$onnx" ] || [ target/release/allconv -nt "$onnx" ]; then
  target/release/allconv convert "$model" -o "$onnx" --input-size 1152x896 >/dev/null
fi
py=.venv-tf/bin/python
for t in 1 2; do
  echo "profile: tract, $t thread(s)" >&2
  "$bin" bench run "$onnx" --shape 1x1152x896x3 --threads $t \
    --runs "$runs" --profile --profile-nodes 100000 --json > "$out/tract_$t.json"
  echo "profile: onnxruntime, $t thread(s)" >&2
  $py converters/ort_profile.py "$onnx" 1152x896 $t "$runs" > "$out/ort_$t.json"
done
python3 - "$out" <<'PY'
import json, re, sys, collections, platform
out = sys.argv[1]
FAMILIES = [
    ("convolution", {"OptMatMul", "OptMatMulPack", "LazyIm2col", "Im2col", "DirectSpatialConv",
                     "Downsample", "Pad", "Conv", "FusedConv"}),
    ("element-wise (BN, add, relu)", {"Add", "Relu", "BatchNormalization", "Mul", "Max"}),
    ("pooling", {"OptMaxPool", "MaxPool", "GlobalAveragePool", "Reduce<Sum>"}),
    ("layout", {"IntoShape", "MoveAxis", "Transpose", "Reshape", "Flatten", "ReorderInput",
                "ReorderOutput", "Source"}),
]
def family(op):
    if op.startswith("OptBinChain") or op.startswith("Opt") and "ByScalar" in op:
        return "element-wise (BN, add, relu)"
    for name, ops in FAMILIES:
        if op in ops:
            return name
    return "head and other"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = set(next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split())
ext = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni") if f in flags)
print(f"\nCPU: {cpu} ({ext}); model: full-width ResNet50 + [512-512-1024]x2, 1x1152x896x3\n")
for t in (1, 2):
    tr = json.load(open(f"{out}/tract_{t}.json")); orr = json.load(open(f"{out}/ort_{t}.json"))
    fam = collections.defaultdict(lambda: [0.0, 0.0])
    for o in tr["profile"]:
        fam[family(o["op"])][0] += o["ms"]
    for op, v in orr["ops"].items():
        fam[family(op)][1] += v["ms"]
    print(f"{t} thread(s): whole run tract {tr['latency_ms']:.0f} ms, {orr['peer']} {orr['run_ms']:.0f} ms "
          f"({tr['latency_ms'] / orr['run_ms']:.2f}x)\n")
    print("| op family | tract (ms) | onnxruntime (ms) | ratio |\n|---|---|---|---|")
    for name, (a, b) in sorted(fam.items(), key=lambda x: -x[1][0]):
        ratio = f"{a / b:.2f}" if b > 0.05 else "-"
        print(f"| {name} | {a:.1f} | {b:.1f} | {ratio} |")
    groups = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for n in tr["slowest_nodes"]:
        m = re.search(r"Mult: m:(\d+) k:(\d+) n:(\d+) with \[(\w+)\]", n["info"])
        if n["op"] != "OptMatMul" or not m:
            continue
        M, K, N, kernel = int(m[1]), int(m[2]), int(m[3]), m[4]
        shape = "spatial as m (1x1 conv)" if M > N else "channels as m (kxk conv, im2col)"
        fused = " + residual add" if "add_to_matrix" in n["info"] else ""
        g = groups[(kernel, shape + fused)]
        g[0] += 1; g[1] += n["ms"]; g[2] += 2.0 * M * K * N / 1e9
    print(f"\ntract matrix products ({t} thread(s), first profiled run):\n")
    print("| kernel | shape | nodes | ms | GFLOP | GFLOP/s |\n|---|---|---|---|---|---|")
    for (kernel, shape), (n, ms, gf) in sorted(groups.items(), key=lambda x: -x[1][1]):
        print(f"| {kernel} | {shape} | {n} | {ms:.0f} | {gf:.1f} | {gf / ms * 1000:.0f} |")
    total_gf = sum(g[2] for g in groups.values())
    print(f"\nonnxruntime: {total_gf:.0f} GFLOP of convolution in {fam['convolution'][1]:.0f} ms "
          f"= {total_gf / max(fam['convolution'][1], 1e-9) * 1000:.0f} GFLOP/s; tract "
          f"{total_gf / max(fam['convolution'][0], 1e-9) * 1000:.0f} GFLOP/s\n")
PY
