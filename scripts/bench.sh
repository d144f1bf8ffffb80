#!/usr/bin/env bash
# The benchmark of the README (a measurement, not a test): the full-width Keras 2.0.8
# ResNet50 whole-image model ([512-512-1024]x2 top, TensorFlow-backend file like the
# published checkpoint) at 1152x896, made by converters/ (Keras 2.0.8 writes it; about
# 15 min on 2 cores the first time). Each runtime runs in its own process, same input
# shape, same thread count; peak memory is each process's peak RSS.
#   scripts/bench.sh [THREADS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}; runs=${2:-5}
scripts/setup.sh --python
.venv-tf/bin/python -c "import tf2onnx" 2>/dev/null || .venv-tf/bin/pip install -q tf2onnx
model=build/bench/k208_full_resnet50_whole_resnet_tf.h5
[ -f "$model" ] || bash converters/make_all.sh --bench
cargo build --release --quiet
bin=target/release/allconv
out=bench-out; mkdir -p "$out"
size=1152x896; shape=1x1152x896x3
py=.venv-tf/bin/python

# Headline: the whole command a user runs, one cold process each (wall seconds, peak RSS
# from GNU time): `allconv convert` hashes the file, exports, runs the network once for the
# embedded test vector and writes; tf2onnx's process imports TensorFlow, loads and converts.
whole() { /usr/bin/time -f '{"wall_s": %e, "peak_mb": %M}' -o "$1" "${@:2}" >/dev/null 2>&1; }
echo "bench: allconv convert (whole command)"; whole "$out/allconv_cmd.json" $bin convert "$model" -o "$out/allconv_cmd.onnx" --input-size $size
echo "bench: tf2onnx (whole process)"; whole "$out/tf2onnx_cmd.json" $py converters/bench_peers.py tf2onnx "$model" "$out/tf2onnx_cmd.onnx" $size
# Inner timings, labelled as such: read + IR + export + write only (median of 3 warm runs),
# and tf2onnx's load + convert after its imports (one run).
echo "bench: allconv bench convert"; $bin bench convert "$model" --input-size $size -o "$out/allconv.onnx" --repeats 3 --json > "$out/allconv_convert.json"
echo "bench: tf2onnx convert"; $py converters/bench_peers.py tf2onnx "$model" "$out/tf2onnx.onnx" $size 2>/dev/null | tail -1 > "$out/tf2onnx_convert.json"
echo "bench: tract";       $bin bench run "$out/allconv.onnx" --shape $shape --threads "$threads" --runs "$runs" --json > "$out/tract_run.json"
echo "bench: onnxruntime"; $py converters/bench_peers.py ort "$out/allconv.onnx" $size "$threads" "$runs" 2>/dev/null | tail -1 > "$out/ort_run.json"
echo "bench: tensorflow";  $py converters/bench_peers.py tf "$model" $size "$threads" "$runs" 2>/dev/null | tail -1 > "$out/tf_run.json"

python3 - "$out" "$threads" "$runs" <<'PY'
import json, os, platform, sys
d, threads, runs = sys.argv[1], sys.argv[2], sys.argv[3]
j = lambda n: json.load(open(os.path.join(d, n)))
ac, tc, tr, orr, tfr = j("allconv_convert.json"), j("tf2onnx_convert.json"), j("tract_run.json"), j("ort_run.json"), j("tf_run.json")
acmd, tcmd = j("allconv_cmd.json"), j("tf2onnx_cmd.json")
for m in (acmd, tcmd):
    m["peak_mb"] /= 1024.0  # GNU time reports KiB
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
rows = [
 "| measure | allconv | peer | ratio (allconv / peer) |",
 "|---|---|---|---|",
 f"| `allconv convert` whole command, cold (s) | {acmd['wall_s']:.2f} | tf2onnx process {tcmd['wall_s']:.2f} | {acmd['wall_s']/tcmd['wall_s']:.3f} ({tcmd['wall_s']/acmd['wall_s']:.1f}x faster) |",
 f"| peak memory, whole command (MiB) | {acmd['peak_mb']:.0f} | tf2onnx process {tcmd['peak_mb']:.0f} | {acmd['peak_mb']/tcmd['peak_mb']:.2f} |",
 f"| inner: read + export + write, median of 3 warm (s) | {ac['convert_s']:.2f} | tf2onnx load + convert, 1 run {tc['convert_s']:.2f} | {ac['convert_s']/tc['convert_s']:.3f} |",
 f"| latency, batch 1 (ms) | tract {tr['latency_ms']:.0f} | onnxruntime {orr['latency_ms']:.0f} | {tr['latency_ms']/orr['latency_ms']:.2f} |",
 f"| latency, batch 1 (ms) | tract {tr['latency_ms']:.0f} | TensorFlow {tfr['latency_ms']:.0f} | {tr['latency_ms']/tfr['latency_ms']:.2f} |",
 f"| peak memory (MiB) | tract {tr['peak_mb']:.0f} | onnxruntime {orr['peak_mb']:.0f} | {tr['peak_mb']/orr['peak_mb']:.2f} |",
 f"| peak memory (MiB) | tract {tr['peak_mb']:.0f} | TensorFlow {tfr['peak_mb']:.0f} | {tr['peak_mb']/tfr['peak_mb']:.2f} |",
]
head = f"ResNet50 + [512-512-1024]x2 whole-image model (full width, {ac['onnx_bytes']/1e6:.0f} MB ONNX), 1x1152x896x3, {threads} threads; latency: median of {runs} runs after one warm-up, each runtime in its own process; {cpu}; {tc['peer']}, {orr['peer']}, {tfr['peer']}."
text = head + "\n\n" + "\n".join(rows) + "\n"
open(os.path.join(d, "table.md"), "w").write(text)
print(text)
PY
