#!/usr/bin/env bash
# Archive scoring on one node, measured whole as a cluster task runs it: `allconv predict
# --manifest` on the paper's full-width whole-image ResNet50 at 1152x896 (the self-contained
# ONNX file, preprocessing and 4-flip TTA inside), over 20 full-size 16-bit mammograms
# (4096x3328 PNGs, the ones scripts/bench.sh scores).
#
#   scripts/bench_archive.sh        # about 6 min on 2 cores; writes docs/bench/bench_archive.json
#
# Measures, without TTA and with it (in the graph, and on the host with --tta): images/s of one task using every core and of one
# single-threaded task per core side by side (how a job array packs a node), peak memory
# per task, the fixed cost of a task (process start, model load, first run: a 2-image task
# against the 20-image one), the projection for 10^6 images, and crash safety: KILLS runs
# killed with SIGKILL at random moments, each resumed to the end, the chunks on disk checked
# whole and the merged scores compared with an uninterrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python >/dev/null
py=.venv-tf/bin/python
kills=${KILLS:-5}
chunk=${CHUNK_ROWS:-2}
cores=$(nproc)
model=build/bench/k208_full_resnet50_whole_resnet_tf.h5
[ -f "$model" ] || bash converters/make_all.sh --bench
imgs=build/bench/fullsize_20
[ -d "$imgs" ] || { echo "bench_archive: $imgs is made by scripts/bench.sh (run it once)" >&2; exit 2; }
cargo build --release --quiet
bin=target/release/allconv
out=build/bench/archive
rm -rf "$out"; mkdir -p "$out"
prep=rescale=0.003891,mean=52.18,gray
echo "bench_archive: converting (plain and 4-flip TTA in the graph)"
$bin convert "$model" -o "$out/plain.onnx" --input-size 1152x896 --preprocess "$prep" >/dev/null
$bin convert "$model" -o "$out/tta.onnx" --input-size 1152x896 --preprocess "$prep" --tta flips4 >/dev/null
{ echo "path,accession"; i=0; for f in "$imgs"/*.png; do echo "$PWD/$f,ACC$i"; i=$((i + 1)); done; } > "$out/manifest.csv"
head -3 "$out/manifest.csv" > "$out/manifest2.csv"

# run NAME CMD...: wall seconds and peak RSS (KB) of one command, appended to runs.tsv.
run() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$out/time.txt" "$@" >/dev/null 2>"$out/$name.err" || {
    echo "bench_archive: $name failed:" >&2; cat "$out/$name.err" >&2; exit 1; }
  echo "$name $(cat "$out/time.txt")" | tee -a "$out/runs.tsv"
}

# plain: no TTA; tta: the 4 flips in the graph (one batch of 4); host: the plain file with
# --tta (the flips run one after another).
for m in plain tta host; do
  file="$out/$m.onnx"; extra=()
  [ "$m" = host ] && { file="$out/plain.onnx"; extra=(--tta); }
  echo "bench_archive: $m: one task, $cores threads"
  run "${m}_one_20" $bin predict "$file" "${extra[@]}" --manifest "$out/manifest.csv" --out "$out/${m}_one_20" --threads "$cores"
  run "${m}_one_2" $bin predict "$file" "${extra[@]}" --manifest "$out/manifest2.csv" --out "$out/${m}_one_2" --threads "$cores"
  echo "bench_archive: $m: $cores single-threaded tasks side by side"
  start=$(date +%s.%N)
  pids=()
  for ((i = 0; i < cores; i++)); do
    /usr/bin/time -f "%e %M" -o "$out/${m}_pack_$i.time" $bin predict "$file" "${extra[@]}" --manifest "$out/manifest.csv" \
      --out "$out/${m}_pack" --shard "$i/$cores" --threads 1 >/dev/null 2>"$out/${m}_pack_$i.err" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  end=$(date +%s.%N)
  rss=$(cat "$out/${m}_pack_"*.time | awk '$2 > m { m = $2 } END { print m }')
  echo "${m}_pack $(echo "$end - $start" | bc) $rss" | tee -a "$out/runs.tsv"
done

echo "bench_archive: $kills runs killed at random moments (chunks of $chunk rows)"
$bin merge "$out/plain_one_20" -o "$out/reference.csv" >/dev/null
: > "$out/kills.tsv"
for ((k = 0; k < kills; k++)); do
  d="$out/kill_$k"
  $bin predict "$out/plain.onnx" --manifest "$out/manifest.csv" --out "$d" --threads "$cores" \
    --chunk-rows "$chunk" >/dev/null 2>&1 &
  pid=$!
  sleep "$($py -c "import random; random.seed($k); print(round(random.uniform(2, 14), 2))")"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # What the killed task left: every chunk readable and whole, no temp file counted.
  set +e
  $bin merge "$d" -o "$d/partial.csv" --json > "$d/partial.json" 2>"$d/partial.err"
  rc=$?
  set -e
  [ "$rc" -le 1 ] || { echo "bench_archive: merge after kill $k: status $rc" >&2; cat "$d/partial.err" >&2; exit 1; }
  rep=$($bin predict "$out/plain.onnx" --manifest "$out/manifest.csv" --out "$d" --threads "$cores" \
    --chunk-rows "$chunk" --json 2>/dev/null)
  $bin merge "$d" -o "$d/merged.csv" --json > "$d/merged.json"
  echo "$k $d $rep" | $py -c '
import json, sys
k, d, rep = sys.stdin.read().split(" ", 2)
rep = json.loads(rep)
partial = json.load(open(f"{d}/partial.json"))
merged = json.load(open(f"{d}/merged.json"))
import csv
a = list(csv.DictReader(open(f"{d}/merged.csv")))
b = list(csv.DictReader(open(sys.argv[1])))
same = len(a) == len(b) and all(x["row"] == y["row"] and x["p0"] == y["p0"] and x["p1"] == y["p1"] for x, y in zip(a, b))
print(k, partial["rows"], rep["resumed"], rep["scored"], int(merged["complete"]), int(same), sep="\t")
' "$out/reference.csv" | tee -a "$out/kills.tsv"
done

$py - "$out" "$cores" "$kills" "$chunk" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts")
from bench_json import fig, versions, write
out, cores, kills, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runs = {}
for line in open(f"{out}/runs.tsv"):
    name, wall, rss = line.split()
    runs[name] = (float(wall), int(rss) / 1024.0)
n = 20
rows_tp, rows_cost, rows_proj = [], [], []
for m, label in (("plain", "off"), ("tta", "4 flips, in the graph"), ("host", "4 flips, on the host (--tta)")):
    one, two, pack = runs[f"{m}_one_20"], runs[f"{m}_one_2"], runs[f"{m}_pack"]
    per_image = (one[0] - two[0]) / (n - 2)
    fixed = max(two[0] - 2 * per_image, 0.0)
    rows_tp.append([f"one task, {cores} threads", label, fig(n / one[0], 2), fig(n / one[0] / cores, 2), fig(one[1], 0)])
    rows_tp.append([f"{cores} tasks, 1 thread each", label, fig(n / pack[0], 2), fig(n / pack[0] / cores, 2), fig(pack[1], 0)])
    best = max(n / one[0], n / pack[0])
    rows_cost.append([label, fig(fixed, 2), fig(per_image, 3), fig(100 * fixed / (1000 * per_image), 2)])
    for nodes in (1, 10, 100):
        tasks = 1e6 / 1e4
        hours = (1e6 / (best * nodes) + tasks * fixed / (nodes * cores)) / 3600
        rows_proj.append([label, str(nodes), fig(hours, 1)])
k = [l.split("\t") for l in open(f"{out}/kills.tsv").read().strip().splitlines()]
torn = sum(1 for r in k if int(r[2]) % chunk != 0)
rows_kill = [[
    fig(len(k), 0), fig(chunk, 0), fig(sum(int(r[2]) for r in k) / len(k), 1), fig(torn, 0),
    fig(sum(int(r[4]) for r in k), 0), fig(sum(int(r[5]) for r in k), 0),
]]
tables = [
    {"title": "Throughput of one node: the full-width ResNet50 whole-image model at 1152x896, 20 mammograms of 4096x3328 (16-bit PNG), whole commands",
     "columns": ["tasks on the node", "TTA", "images/s per node", "images/s per core", "peak memory per task (MiB)"],
     "rows": rows_tp},
    {"title": "Fixed cost of a task (process start, model load, first run) against one long process",
     "columns": ["TTA", "fixed cost per task (s)", "time per image (s)", "overhead of 1,000-image shards (%)"],
     "rows": rows_cost},
    {"title": "Projection: 10^6 mammograms in shards of 10^4 images, nodes like this one",
     "columns": ["TTA", "nodes", "hours"],
     "rows": rows_proj},
    {"title": "Crash safety: runs killed with SIGKILL at random moments, then resumed",
     "columns": ["kills", "chunk rows", "mean rows kept per kill", "chunks torn", "merges complete", "merges equal to the uninterrupted run"],
     "rows": rows_kill},
]
ort = None
try:
    import onnxruntime
    ort = onnxruntime.__version__
except Exception:
    pass
v = versions("target/release/allconv", [f"onnxruntime {ort} (the engine --backend auto picks)"] if ort else [])
print(write("bench_archive", "scripts/bench_archive.sh", v, tables))
PY
ALLCONV_WRITE_BENCH_TABLES=1 cargo test --quiet --test docs_figures benchmark_tables_are_the_committed_json >/dev/null
echo "bench_archive: docs/benchmarks.md updated"
