#!/usr/bin/env bash
# The edge measurements of docs/benchmarks.md (a benchmark, not a test), in one run:
#  1. stripped binary size per target (scripts/cross.sh), beside onnxruntime's shared
#     library for the same target (its PyPI wheel, same version as the peer) and, with
#     ALLCONV_BENCH_TRACT_CLI=1, tract's own CLI (cargo install tract, ~15 min to build);
#  2. model file sizes of the full-width ResNet50 whole-image model at 1152x896: ONNX f32,
#     NNEF f32, and both with --weights f16;
#  3. time to first result (read + optimise + one run, one cold process each) and peak
#     RSS: edge build vs full build, ONNX vs NNEF, vs onnxruntime; median of REPEATS.
#   scripts/bench_edge.sh [THREADS] [REPEATS]
# Results: docs/bench/bench_edge.json, then docs/benchmarks.md's tables are rendered from it.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}; repeats=${2:-3}
scripts/setup.sh --python
out=bench-out/edge; mkdir -p "$out"
py=.venv-tf/bin/python

echo "bench_edge: binaries" >&2
: > "$out/sizes.tsv"
for t in x86_64-unknown-linux-gnu x86_64-unknown-linux-musl aarch64-unknown-linux-gnu \
         aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf; do
  if bin=$(ALLCONV_CROSS_QUIET=1 scripts/cross.sh "$t"); then
    printf 'allconv edge\t%s\t%s\n' "$t" "$(stat -c %s "$bin")" >> "$out/sizes.tsv"
  else
    printf 'allconv edge\t%s\tbuild failed\n' "$t" >> "$out/sizes.tsv"
  fi
done
cargo build --release --quiet
strip -o "$out/allconv-full" target/release/allconv
printf 'allconv full (HDF5, libtorch linked dynamically)\tx86_64-unknown-linux-gnu\t%s\n' "$(stat -c %s "$out/allconv-full")" >> "$out/sizes.tsv"
ortv=$($py -c "import onnxruntime; print(onnxruntime.__version__)")
for lib in .venv-tf/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so*; do
  printf 'onnxruntime %s %s\tx86_64 (PyPI wheel)\t%s\n' "$ortv" "$(basename "$lib")" "$(stat -c %s "$lib")" >> "$out/sizes.tsv"
done
mkdir -p build/ort-aarch64
if ls build/ort-aarch64/*.whl >/dev/null 2>&1 || \
   python3 -m pip download -q "onnxruntime==$ortv" --only-binary=:all: --no-deps \
     --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
     --python-version 3.11 -d build/ort-aarch64 >/dev/null 2>&1; then
  whl=$(ls build/ort-aarch64/*.whl | head -1)
  python3 - "$whl" "$ortv" >> "$out/sizes.tsv" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for i in z.infolist():
    if "/capi/libonnxruntime.so" in i.filename:
        print(f"onnxruntime {sys.argv[2]} {i.filename.rsplit('/', 1)[1]}\taarch64 (PyPI wheel)\t{i.file_size}")
PY
fi
if [ "${ALLCONV_BENCH_TRACT_CLI:-0}" = 1 ]; then
  [ -x build/tract-cli/bin/tract ] || cargo install -q tract-cli --version =0.23.9 --root build/tract-cli
  strip -o "$out/tract-cli" build/tract-cli/bin/tract
  printf 'tract CLI 0.23.9\tx86_64-unknown-linux-gnu\t%s\n' "$(stat -c %s "$out/tract-cli")" >> "$out/sizes.tsv"
fi

echo "bench_edge: full-width model files" >&2
model=build/bench/k208_full_resnet50_whole_resnet_tf.h5
[ -f "$model" ] || bash converters/make_all.sh --bench
full=target/release/allconv; edge=target/x86_64-unknown-linux-gnu/edge/allconv
size=1152x896; shape=1x1152x896x3
for f in full.onnx full.nnef.tar full.nnef.tgz; do
  [ -f "$out/$f" ] || $full convert "$model" -o "$out/$f" --input-size $size >/dev/null
  g="${f/full/full_f16}"
  [ -f "$out/$g" ] || $full convert "$model" -o "$out/$g" --input-size $size --weights f16 >/dev/null
done

echo "bench_edge: time to first result" >&2
cold() {  # label, command...: one cold process; its own JSON line plus wall and peak RSS
  local label=$1; shift
  /usr/bin/time -f '%e %M' -o "$out/time.txt" "$@" > "$out/run.json" 2>/dev/null
  python3 - "$label" "$out/run.json" "$out/time.txt" >> "$out/first.jsonl" <<'PY'
import json, sys
label, run, t = sys.argv[1:]
r = json.loads(open(run).read().strip().splitlines()[-1])
wall, kib = open(t).read().split()
print(json.dumps({"label": label, "wall_s": float(wall), "peak_mb": int(kib) / 1024,
                  "load_s": r.get("load_s"), "first_result_s": r.get("first_result_s")}))
PY
}
: > "$out/first.jsonl"
for i in $(seq "$repeats"); do
  for f in full.onnx full.nnef.tar full.nnef.tgz full_f16.onnx full_f16.nnef.tar; do
    cold "edge $f" $edge bench run "$out/$f" --shape $shape --threads "$threads" --runs 1 --json
    cold "full $f" $full bench run "$out/$f" --shape $shape --threads "$threads" --runs 1 --json
  done
  cold "onnxruntime full.onnx" $py converters/bench_peers.py ort "$out/full.onnx" $size "$threads" 1
done

python3 - "$out" "$threads" "$repeats" "$full" "$*" <<'PY'
import json, os, statistics, sys
sys.path.insert(0, "scripts")
from bench_json import fig, versions, write
d, threads, repeats, binary, args = sys.argv[1:]
sizes = []
for line in open(os.path.join(d, "sizes.tsv")):
    name, target, n = line.rstrip("\n").split("\t")
    sizes.append([name, target, fig(int(n) / 2**20, 1) if n.isdigit() else n])
files = []
for f in ("full.onnx", "full.nnef.tar", "full.nnef.tgz", "full_f16.onnx", "full_f16.nnef.tar", "full_f16.nnef.tgz"):
    files.append([f, fig(os.path.getsize(os.path.join(d, f)) / 2**20, 1)])
runs = {}
for l in open(os.path.join(d, "first.jsonl")):
    r = json.loads(l); runs.setdefault(r["label"], []).append(r)
def med(rs, k):
    xs = [r[k] for r in rs if r[k] is not None]
    return statistics.median(xs) if xs else None
ort = med(runs["onnxruntime full.onnx"], "first_result_s")
opt = lambda x, dec: fig(x, dec) if x is not None else None
first = []
for label, rs in runs.items():
    f = med(rs, "first_result_s")
    first.append([label, opt(med(rs, "load_s"), 2), opt(f, 2), opt(f / ort if f is not None else None, 2), opt(med(rs, "peak_mb"), 0)])
tables = [
  {"title": "Stripped binaries", "columns": ["binary", "target", "MiB"], "rows": sizes},
  {"title": "The full-width whole-image model at 1152x896, per file format", "columns": ["file", "MiB"], "rows": files},
  {"title": f"Time to first result at 1x1152x896x3, {threads} threads, median of {repeats} cold processes",
   "columns": ["engine and file", "read + optimise (s)", "read + optimise + first run (s)", "first run vs onnxruntime", "peak RSS (MiB)"],
   "rows": first},
]
ortv = next((l.split()[1] for l in open(os.path.join(d, "sizes.tsv")) if l.startswith("onnxruntime ")), None)
command = "scripts/bench_edge.sh" + (" " + args if args else "")
path = write("bench_edge", command, versions(binary, ["onnxruntime " + ortv] if ortv else []), tables)
print(f"bench_edge: wrote {path}")
PY
echo "bench_edge: rendering docs/benchmarks.md" >&2
ALLCONV_WRITE_BENCH_TABLES=1 cargo test --quiet --test docs_figures benchmark_tables_are_the_committed_json
