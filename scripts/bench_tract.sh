#!/usr/bin/env bash
# tract on this CPU (a measurement, never a test): where its time goes on the paper's
# full-width ResNet50 whole-image model at 1152x896, which matrix kernels it runs, and how
# that compares with ONNX Runtime on the same ONNX file, at 1 and 2 threads.
#   - tract's kernels as allconv runs them (src/runtime/kernels.rs: tract's own choice,
#     except on AMD Zen 4, where allconv turns tract's AVX-512 kernels off), and, on a CPU
#     with AVX-512, tract's own choice (TRACT_CPU_ISA=+avx512f) and its 256-bit FMA kernels
#     only (TRACT_CPU_ISA=-avx512f); each variant run ROUNDS times interleaved with the
#     others (a shared VM drifts between minutes), the median of each kept;
#   - allconv's ONNX Runtime engine on the same file, the reference for the ratios;
#   - tract's profile (`bench run --profile`) at 1 and 2 threads: time per op, how each
#     op scales from 1 thread to 2, and the largest matrix products with the kernel tract
#     picked and the rate it reached.
# Results: docs/bench/bench_tract_amd.json or docs/bench/bench_tract_intel.json by the CPU's
# vendor (so the two sit side by side in docs/benchmarks.md), then the page's tables are
# rendered from them. On other CPUs the tables are printed, not kept.
#   scripts/bench_tract.sh [ROUNDS] [RUNS]     (defaults 3 and 5; about 8 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; runs=${2:-5}
scripts/setup.sh --python
model=build/bench/k208_full_resnet50_whole_resnet_tf.h5
[ -f "$model" ] || bash converters/make_all.sh --bench
cargo build --release --quiet
bin=target/release/allconv
out=bench-out/tract; rm -rf "$out"; mkdir -p "$out"
shape=1x1152x896x3
$bin convert "$model" -o "$out/model.onnx" --input-size 1152x896 >/dev/null
variants="allconv"
grep -qw avx512f /proc/cpuinfo && variants="allconv tract_own fma256"
env_of() {
  case $1 in
    allconv) ;;  # as allconv runs tract: no knob of ours in the environment
    tract_own) echo "TRACT_CPU_ISA=+avx512f" ;;
    fma256) echo "TRACT_CPU_ISA=-avx512f" ;;
  esac
}
for t in 1 2; do
  for i in $(seq "$rounds"); do
    for v in $variants; do
      echo "bench_tract: $v, $t thread(s), round $i" >&2
      env -u TRACT_CPU_ISA $(env_of "$v") $bin bench run "$out/model.onnx" --shape $shape --threads "$t" \
        --runs "$runs" --json > "$out/${v}_t${t}_r$i.json"
    done
    echo "bench_tract: ONNX Runtime, $t thread(s), round $i" >&2
    $bin bench run "$out/model.onnx" --shape $shape --threads "$t" --runs "$runs" --backend ort \
      --json > "$out/ort_t${t}_r$i.json"
  done
  echo "bench_tract: profile, $t thread(s)" >&2
  env -u TRACT_CPU_ISA $bin bench run "$out/model.onnx" --shape $shape --threads "$t" --runs 3 \
    --profile --profile-nodes 200 --json > "$out/profile_t$t.json"
  if [ "$variants" != allconv ]; then
    env -u TRACT_CPU_ISA TRACT_CPU_ISA=+avx512f $bin bench run "$out/model.onnx" --shape $shape \
      --threads "$t" --runs 3 --profile --profile-nodes 200 --json > "$out/profile_own_t$t.json"
  fi
done
python3 - "$out" "$bin" "$rounds" "$runs" "$variants" "$*" <<'PY'
import json, os, re, statistics, sys
sys.path.insert(0, "scripts")
from bench_json import fig, versions, write
d, binary, rounds, runs, variants, args = sys.argv[1:]
rounds, variants = int(rounds), variants.split()
j = lambda n: json.load(open(os.path.join(d, n)))
med = lambda v, t: statistics.median(j(f"{v}_t{t}_r{i}.json")["latency_ms"] for i in range(1, rounds + 1))
kernels = j("allconv_t1_r1.json")["tract_kernels"]
ort = {t: med("ort", t) for t in (1, 2)}
labels = {"allconv": f"tract as allconv runs it ({kernels})",
          "tract_own": "tract's own kernel choice (TRACT_CPU_ISA=+avx512f)",
          "fma256": "tract's 256-bit FMA kernels only (TRACT_CPU_ISA=-avx512f)"}
engines = []
for v in variants:
    a, b = med(v, 1), med(v, 2)
    engines.append([labels[v], fig(a, 0), fig(b, 0), fig(a / ort[1], 2), fig(b / ort[2], 2), fig(a / b, 2)])
engines.append(["allconv's ONNX Runtime engine (`--backend ort`)", fig(ort[1], 0), fig(ort[2], 0),
                fig(1, 2), fig(1, 2), fig(ort[1] / ort[2], 2)])
p1, p2 = j("profile_t1.json"), j("profile_t2.json")
ops1 = {o["op"]: o for o in p1["profile"]}
total2 = sum(o["ms"] for o in p2["profile"])
by_op, rest1, rest2 = [], 0.0, 0.0
for o in p2["profile"]:
    a = ops1.get(o["op"], {"ms": 0.0})["ms"]
    if o["ms"] / total2 >= 0.005 and a > 0:
        by_op.append([o["op"], fig(o["nodes"], 0), fig(a, 1), fig(o["ms"], 1), fig(a / o["ms"], 2),
                      fig(o["ms"] / total2, 3)])
    else:
        rest1, rest2 = rest1 + a, rest2 + o["ms"]
if rest2 > 0:
    by_op.append(["the other ops", None, fig(rest1, 1), fig(rest2, 1), None, fig(rest2 / total2, 3)])
total1 = sum(o["ms"] for o in p1["profile"])
by_op.append(["all ops (profiled runs)", None, fig(total1, 1), fig(total2, 1), fig(total1 / total2, 2), fig(1, 3)])
mm = re.compile(r"m:(\d+) k:(\d+) n:(\d+) with \[([a-z0-9_]+)\]")
def products(p):
    out = {}
    for n in p["slowest_nodes"]:
        m = mm.search(n["info"])
        if n["op"] == "OptMatMul" and m:
            mm_, k, nn, kern = int(m[1]), int(m[2]), int(m[3]), m[4]
            out[n["node"]] = (mm_, k, nn, kern, n["ms"], 2 * mm_ * k * nn / n["ms"] / 1e6)
    return out
ours = products(p2)
theirs = products(j("profile_own_t2.json")) if "tract_own" in variants else {}
rows = []
for node, (m, k, n, kern, ms, rate) in sorted(ours.items(), key=lambda x: -x[1][4])[:8]:
    row = [node, f"{m} x {k} x {n}", kern, fig(ms, 1), fig(rate, 0)]
    if theirs:
        o = theirs.get(node)
        row += [o[3], fig(o[4], 1), fig(o[5], 0)] if o else [None, None, None]
    rows.append(row)
mm_cols = ["node", "m x k x n", "kernel (as allconv runs tract)", "ms", "GFLOP/s"]
if theirs:
    mm_cols += ["kernel (tract's own choice)", "ms", "GFLOP/s"]
tables = [
    {"title": "tract against ONNX Runtime on allconv's ONNX file: the paper's full-width ResNet50 "
              f"whole-image model at 1152x896, steady state (median of {runs} runs, median of {rounds} interleaved rounds)",
     "columns": ["engine", "1 thread (ms)", "2 threads (ms)", "1 thread x ONNX Runtime",
                 "2 threads x ONNX Runtime", "speed-up from 1 to 2 threads"],
     "rows": engines},
    {"title": "Where tract's time goes, by op (tract's profiler, as allconv runs it; ops under 0.5% of the 2-thread run grouped)",
     "columns": ["op", "nodes", "1 thread (ms)", "2 threads (ms)", "speed-up", "share at 2 threads"],
     "rows": by_op},
    {"title": "tract's largest matrix products at 2 threads: the kernel picked and the rate reached",
     "columns": mm_cols, "rows": rows},
]
command = "scripts/bench_tract.sh" + (" " + args if args else "")
import glob
ort_v = [os.path.basename(p)[len("onnxruntime-"):-len(".dist-info")]
         for p in glob.glob(".venv-ort/lib/python*/site-packages/onnxruntime-*.dist-info")]
peer = f"onnxruntime {ort_v[0] if ort_v else '(version unknown)'} (allconv's ort engine)"
vendor = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("vendor_id")), "")
name = {"AuthenticAMD": "bench_tract_amd", "GenuineIntel": "bench_tract_intel"}.get(vendor)
if name is None:
    print(json.dumps(tables, indent=1))
    sys.exit(f"bench_tract: results are kept for AMD and Intel x86 CPUs; this one is {vendor or 'not x86'}")
path = write("bench_tract", command, versions(binary, [peer]), tables, name=name)
print(f"bench_tract: wrote {path}")
PY
echo "bench_tract: rendering docs/benchmarks.md"
ALLCONV_WRITE_BENCH_TABLES=1 cargo test --quiet --test docs_figures benchmark_tables_are_the_committed_json
