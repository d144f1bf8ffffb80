#!/usr/bin/env bash
# The inference and conversion benchmark of docs/benchmarks.md (a measurement, not a test): the full-width Keras 2.0.8
# ResNet50 whole-image model ([512-512-1024]x2 top, TensorFlow-backend file like the
# published checkpoint) at 1152x896, made by converters/ (Keras 2.0.8 writes it; about
# 15 min on 2 cores the first time). Each runtime runs in its own process, same input
# shape, same thread count; peak memory is each process's peak RSS.
#   scripts/bench.sh [RUNS] [IMAGES] [WHOLE_RUNS]
# Latency at 1 thread and at every core; `predict` over IMAGES (default 20) full-size
# (4096x3328) 16-bit PNGs against the paper's own scoring pipeline. Each whole command
# (convert, tf2onnx, predict, the paper pipeline) runs WHOLE_RUNS times (default 3), its
# median wall time reported (a shared VM's speed drifts between minutes).
# Results: docs/bench/bench.json (scripts/bench_json.py), then docs/benchmarks.md's tables
# are rendered from it (tests/docs_figures.rs with ALLCONV_WRITE_BENCH_TABLES=1).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}; nimages=${2:-20}; whole_runs=${3:-3}
cores=$(nproc); threads_list="1"; [ "$cores" -gt 1 ] && threads_list="1 $cores"
scripts/setup.sh --python
.venv-tf/bin/python -c "import tf2onnx" 2>/dev/null || .venv-tf/bin/pip install -q tf2onnx
model=build/bench/k208_full_resnet50_whole_resnet_tf.h5
[ -f "$model" ] || bash converters/make_all.sh --bench
cargo build --release --quiet
bin=target/release/allconv
out=bench-out; mkdir -p "$out"
size=1152x896; shape=1x1152x896x3
py=.venv-tf/bin/python

# Headline: the whole command a user runs, each run a process of its own (wall seconds,
# peak RSS from GNU time): `allconv convert` hashes the file, exports, runs the network once
# for the embedded test vector and writes; tf2onnx's process imports TensorFlow, loads and
# converts. whole OUT.json STDOUT_FILE CMD...: WHOLE_RUNS runs, one GNU time line each,
# the last run's stdout kept.
whole() {
  local json=$1 keep=$2; shift 2; : > "$json"
  for _ in $(seq "$whole_runs"); do
    /usr/bin/time -f '{"wall_s": %e, "peak_mb": %M}' -a -o "$json" "$@" > "$keep" 2>/dev/null
  done
}
echo "bench: allconv convert (whole command) x$whole_runs"; whole "$out/allconv_cmd.json" /dev/null $bin convert "$model" -o "$out/allconv_cmd.onnx" --input-size $size
echo "bench: tf2onnx (whole process) x$whole_runs"; whole "$out/tf2onnx_cmd.json" /dev/null $py converters/bench_peers.py tf2onnx "$model" "$out/tf2onnx_cmd.onnx" $size
# Inner timings, labelled as such: read + IR + export + write only (median of 3 warm runs),
# and tf2onnx's load + convert after its imports (one run).
echo "bench: allconv bench convert"; $bin bench convert "$model" --input-size $size -o "$out/allconv.onnx" --repeats 3 --json > "$out/allconv_convert.json"
echo "bench: tf2onnx convert"; $py converters/bench_peers.py tf2onnx "$model" "$out/tf2onnx.onnx" $size 2>/dev/null | tail -1 > "$out/tf2onnx_convert.json"
for t in $threads_list; do
  echo "bench: tract, $t thread(s)";       $bin bench run "$out/allconv.onnx" --shape $shape --threads "$t" --runs "$runs" --json > "$out/tract_run_$t.json"
  echo "bench: onnxruntime, $t thread(s)"; $py converters/bench_peers.py ort "$out/allconv.onnx" $size "$t" "$runs" 2>/dev/null | tail -1 > "$out/ort_run_$t.json"
  echo "bench: allconv's ONNX Runtime engine, $t thread(s)"; $bin bench run "$out/allconv.onnx" --shape $shape --threads "$t" --runs "$runs" --backend ort --json > "$out/allconv_ort_run_$t.json"
  echo "bench: libtorch on the .h5, $t thread(s)"; $bin bench run "$model" --shape $shape --threads "$t" --runs "$runs" --json > "$out/torch_run_$t.json"
done
echo "bench: tensorflow, $cores thread(s)";  $py converters/bench_peers.py tf "$model" $size "$cores" "$runs" 2>/dev/null | tail -1 > "$out/tf_run.json"

# predict: full-size 16-bit PNGs, the whole command against the paper's pipeline (cv2 +
# tf-keras) in its own process, both with the paper's 16-bit preprocessing, every core.
# The images: the real mini-MIAS mammograms (../shared/corpus, else the bundled two),
# scaled to 4096x3328 and to 16 bits (x257), flipped where reused.
imgs=build/bench/fullsize_$nimages
if [ ! -d "$imgs" ]; then
  mkdir -p "$imgs.tmp"
  $py - "$imgs.tmp" "$nimages" ../shared/corpus/mini-mias/*.pgm fixtures/images/mdb0*[0-9].pgm <<'PY'
import sys, cv2, numpy as np
out, n = sys.argv[1], int(sys.argv[2])
by_name = {}
for p in sys.argv[3:]:
    if cv2.imread(p, cv2.IMREAD_UNCHANGED) is not None:
        by_name.setdefault(p.split("/")[-1], p)
srcs = [by_name[k] for k in sorted(by_name)]
for i in range(n):
    img = cv2.imread(srcs[i % len(srcs)], cv2.IMREAD_UNCHANGED).astype(np.float32) * 257.0
    big = cv2.resize(img, (3328, 4096), interpolation=cv2.INTER_CUBIC)
    big = np.clip(big, 0, 65535).astype(np.uint16)
    if (i // len(srcs)) % 2:
        big = big[:, ::-1]
    cv2.imwrite(f"{out}/img{i:03d}.png", big)
PY
  mv "$imgs.tmp" "$imgs"
fi
files=$(ls "$imgs"/*.png | head -n "$nimages")
prep=size=$size,rescale=0.003891,mean=52.18,gray
echo "bench: allconv predict on the ONNX file (--backend auto), $nimages images x$whole_runs"
whole "$out/allconv_predict_cmd.json" "$out/allconv_predict.json" $bin predict "$out/allconv.onnx" $files --preprocess $prep --json
echo "bench: allconv predict on the .h5 (libtorch), $nimages images x$whole_runs"
whole "$out/allconv_predict_h5_cmd.json" "$out/allconv_predict_h5.json" $bin predict "$model" $files --preprocess $prep --json
echo "bench: paper pipeline, $nimages images x$whole_runs"
whole "$out/paper_predict_cmd.json" "$out/paper_predict.out" $py converters/bench_peers.py paper "$model" $size "$cores" $files
tail -1 "$out/paper_predict.out" > "$out/paper_predict.json"

# sample-patches: `allconv sample-patches` against the paper's sampler (the Python 3 port of
# sample_patches_combined.py in converters/, genuine OpenCV, numpy, pandas, scikit-learn),
# whole commands on the same synthetic CBIS-DDSM-layout set (16 patients, 16-bit PNGs about
# 1300x850), at the paper's ratio of image height to patch size (1024/64 = 4096/256).
spset=build/bench/sample_patches_set
[ -d "$spset" ] || { rm -rf "$spset.tmp"; $py converters/sample_patches_ref.py --make-set "$spset.tmp" 16 big && mv "$spset.tmp" "$spset"; }
spopts="--target-height 1024 --patch-size 64 --val-size 0.25"
sp_in="$spset/roi_mask_path.csv $spset/masks $spset/pat_train.txt $spset/full"
for who in allconv paper; do
  rm -rf "$out/sp_$who"
  for s in train val; do for c in background calc_mal calc_ben mass_mal mass_ben; do mkdir -p "$out/sp_$who/$s/$c"; done; done
done
echo "bench: allconv sample-patches x$whole_runs"
whole "$out/allconv_sample_cmd.json" /dev/null $bin sample-patches $sp_in "$out/sp_allconv/train" "$out/sp_allconv/val" $spopts --jobs "$cores" --json
echo "bench: the paper's sample_patches_combined.py (Python 3 port) x$whole_runs"
whole "$out/paper_sample_cmd.json" /dev/null $py converters/sample_patches_ref.py --cli $sp_in "$out/sp_paper/train" "$out/sp_paper/val" $spopts --no-verbose
ls "$spset/full" | wc -l > "$out/sample_views.txt"

python3 - "$out" "$runs" "$threads_list" "$nimages" "$whole_runs" "$bin" <<'PY'
import json, os, statistics, sys
sys.path.insert(0, "scripts")
from bench_json import fig, versions, write
d, runs, threads_list, nimages, whole_runs, binary = sys.argv[1], sys.argv[2], sys.argv[3].split(), int(sys.argv[4]), sys.argv[5], sys.argv[6]
j = lambda n: json.load(open(os.path.join(d, n)))
def whole(n):
    # One GNU time line per run: the median wall time, the largest peak (KiB -> MiB).
    rs = [json.loads(l) for l in open(os.path.join(d, n)) if l.startswith("{")]
    return {"wall_s": statistics.median(r["wall_s"] for r in rs), "peak_mb": max(r["peak_mb"] for r in rs) / 1024.0}
ac, tc, tfr = j("allconv_convert.json"), j("tf2onnx_convert.json"), j("tf_run.json")
acmd, tcmd = whole("allconv_cmd.json"), whole("tf2onnx_cmd.json")
apc, ppc, pp = whole("allconv_predict_cmd.json"), whole("paper_predict_cmd.json"), j("paper_predict.json")
ahc = whole("allconv_predict_h5_cmd.json")
onnx_engine = {"ort": "ONNX Runtime", "tract": "tract"}.get(j("allconv_predict.json")[0].get("engine"), "tract")
asc, psc = whole("allconv_sample_cmd.json"), whole("paper_sample_cmd.json")
nviews = int(open(os.path.join(d, "sample_views.txt")).read())
row = lambda label, a, p, da, dp, dr=2: [label, fig(a, da), fig(p, dp), fig(a / p, dr)]
head = ["measure", "allconv", "peer", "allconv / peer"]
convert = [
  row(f"whole command (s), median of {whole_runs} processes: `allconv convert` vs the tf2onnx process", acmd["wall_s"], tcmd["wall_s"], 2, 2, 3),
  row("peak memory of the whole command (MiB): `allconv convert` vs the tf2onnx process", acmd["peak_mb"], tcmd["peak_mb"], 0, 0),
  row("inner (s): read + export + write, median of 3 warm runs vs tf2onnx load + convert, 1 run", ac["convert_s"], tc["convert_s"], 2, 2, 3),
  ["ONNX file written (MB)", fig(ac["onnx_bytes"] / 1e6, 0), None, None],
]
latency = []
for t in threads_list:
    tr, orr, th = j(f"tract_run_{t}.json"), j(f"ort_run_{t}.json"), j(f"torch_run_{t}.json")
    aor = j(f"allconv_ort_run_{t}.json")
    latency += [
      row(f"steady state, {t} thread(s) (ms): allconv's ONNX Runtime engine (`bench run --backend ort`) vs onnxruntime from Python, same library and file", aor["latency_ms"], orr["latency_ms"], 0, 0),
      row(f"steady state, {t} thread(s) (ms): tract vs onnxruntime, same ONNX file", tr["latency_ms"], orr["latency_ms"], 0, 0),
      row(f"first result, {t} thread(s) (s): tract load + optimise + run vs onnxruntime", tr["first_result_s"], orr["first_result_s"], 2, 2),
      row(f"steady state, {t} thread(s) (ms): libtorch on the .h5 as `predict` runs it vs onnxruntime", th["latency_ms"], orr["latency_ms"], 0, 0),
      row(f"first result, {t} thread(s) (s): libtorch read .h5 + weights + run vs onnxruntime", th["first_result_s"], orr["first_result_s"], 2, 2),
    ]
t = threads_list[-1]
tr, orr = j(f"tract_run_{t}.json"), j(f"ort_run_{t}.json")
latency += [
  row(f"steady state, {t} thread(s) (ms): tract vs TensorFlow on the .h5", tr["latency_ms"], tfr["latency_ms"], 0, 0),
  row(f"peak memory, {t} thread(s) (MiB): tract vs onnxruntime", tr["peak_mb"], orr["peak_mb"], 0, 0),
]
predict = [
  row(f"images/s, `allconv predict MODEL.onnx` ({onnx_engine}, picked by `--backend auto`) vs the paper pipeline, {nimages} images, whole commands", nimages / apc["wall_s"], nimages / ppc["wall_s"], 3, 3),
  row(f"images/s, `allconv predict MODEL.h5` (libtorch) vs the paper pipeline, {nimages} images, whole commands", nimages / ahc["wall_s"], nimages / ppc["wall_s"], 3, 3),
  ["images/s, the paper pipeline's scoring loop alone (after imports and model load)", None, fig(pp["images_per_s"], 3), None],
  row("peak memory (MiB): `predict MODEL.onnx` vs the paper pipeline", apc["peak_mb"], ppc["peak_mb"], 0, 0),
  row("peak memory (MiB): `predict MODEL.h5` vs the paper pipeline", ahc["peak_mb"], ppc["peak_mb"], 0, 0),
]
sample = [
  row(f"images/s, `allconv sample-patches --jobs {os.cpu_count()}` vs the paper's script (Python 3 port), {nviews} views, whole commands", nviews / asc["wall_s"], nviews / psc["wall_s"], 2, 2),
  row("peak memory (MiB): `allconv sample-patches` vs the paper's script", asc["peak_mb"], psc["peak_mb"], 0, 0),
]
tables = [
  {"title": "Conversion: the full-width whole-image model at 1152x896", "columns": head, "rows": convert},
  {"title": f"Inference latency at 1x1152x896x3, median of {runs} runs after one warm-up", "columns": head, "rows": latency},
  {"title": f"Scoring {nimages} full-size 16-bit mammograms (4096x3328 PNG)", "columns": head, "rows": predict},
  {"title": "Sampling training patches (sample_patches_combined.py's options, height 1024, patch 64)", "columns": head, "rows": sample},
]
peers = [tc["peer"], orr["peer"], tfr["peer"], pp["peer"]]
path = write("bench", f"scripts/bench.sh {runs} {nimages} {whole_runs}", versions(binary, peers), tables)
print(f"bench: wrote {path}")
PY
echo "bench: rendering docs/benchmarks.md"
ALLCONV_WRITE_BENCH_TABLES=1 cargo test --quiet --test docs_figures benchmark_tables_are_the_committed_json
