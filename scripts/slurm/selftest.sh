#!/usr/bin/env bash
# Proves the local Slurm cluster runs job arrays the way the scoring scripts use them:
#
#   scripts/slurm/selftest.sh [STATE_DIR]     # default: a new temporary directory, removed after
#
#  1. starts the cluster (scripts/slurm/local-cluster.sh start STATE_DIR);
#  2. `sbatch --array=0-3 --wait`: every task writes "$SLURM_ARRAY_TASK_ID
#     $SLURM_ARRAY_TASK_COUNT $SLURM_ARRAY_TASK_MIN $SLURM_CPUS_PER_TASK"; all four must
#     have run, with "i 4 0 1", and end COMPLETED;
#  3. an array whose task 2 blocks: once task 2 has started, `scancel JOBID_2`; task 2 must
#     end CANCELLED without its result while 0, 1 and 3 complete beside it;
#  4. resubmits that task alone (`sbatch --array=2 --wait`): it runs with
#     SLURM_ARRAY_TASK_COUNT=1 and SLURM_ARRAY_TASK_MIN=2 (the array of the resubmission,
#     not of the original: a sharded job must be given the shard count another way);
#  5. requeues the cancelled task instead (`scontrol requeue JOBID_2`): it runs again in the
#     original array, with SLURM_ARRAY_TASK_COUNT=4 and SLURM_ARRAY_TASK_MIN=0;
#  6. runs scripts/slurm/score-array.sbatch (array 0-3) with a stand-in allconv that records
#     its arguments, and scripts/slurm/merge.sbatch after it (--dependency=afterok); then
#     resubmits task 2 alone: without SHARD_COUNT it must refuse, with SHARD_COUNT=4 it
#     must score shard 2/4;
#  7. stops the cluster (also on failure).
#
# Exits 0 when every check holds, else non-zero with the reason on stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cluster="$here/local-cluster.sh"

if [ $# -ge 1 ]; then
  state="$1"; keep=1
else
  state="$(mktemp -d /tmp/allconv-slurm.XXXXXX)"; keep=""
fi
mkdir -p "$state"
state="$(cd "$state" && pwd)"
work="$state/selftest"
rm -rf "$work"; mkdir -p "$work"

cleanup() {
  local rc=$?
  "$cluster" stop "$state" || true
  [ -n "$keep" ] || rm -rf "$state"
  exit "$rc"
}
trap cleanup EXIT

die() { echo "selftest: FAIL: $*" >&2; exit 1; }
log() { echo "selftest: $*" >&2; }

exports="$("$cluster" start "$state")" || die "local-cluster.sh start failed (its reason is above)"
unset SLURM_CONF
eval "$exports"
[ -n "${SLURM_CONF:-}" ] || die "local-cluster.sh start printed no SLURM_CONF"

# --- the waits the Rust test will use ------------------------------------------------------
# The JobState of each record of ID (a job, an array, or one array task JOB_TASK), one a line.
job_states() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }

# wait_done ID SECONDS: until no record of ID is pending, running, or on its way there.
# Finished records stay visible for MinJobAge (3600 s on the local cluster).
wait_done() {
  local id="$1" deadline=$((SECONDS + $2)) st
  while [ "$SECONDS" -lt "$deadline" ]; do
    st="$(job_states "$id")"
    [ -n "$st" ] || die "scontrol knows no job $id"
    if ! echo "$st" | grep -qE '^(PENDING|RUNNING|CONFIGURING|COMPLETING|REQUEUED|REQUEUE_HOLD|REQUEUE_FED|RESIZING|SUSPENDED|STOPPED|SIGNALING|STAGE_OUT)$'; then
      return 0
    fi
    sleep 0.5
  done
  die "job $id not finished after $2 s: $(echo "$st" | tr '\n' ' ')"
}

expect_state() { # ID STATE
  local st
  st="$(job_states "$1")"
  [ "$st" = "$2" ] || die "job $1 is $(echo "${st:-unknown}" | tr '\n' ' '), expected $2"
}

# --- the job script ------------------------------------------------------------------------
cat >"$work/job.sh" <<'EOF'
#!/bin/bash
#SBATCH --cpus-per-task=1
#SBATCH --mem=50M
echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT $SLURM_ARRAY_TASK_MIN $SLURM_CPUS_PER_TASK" >"$RESULTS/started-$SLURM_ARRAY_TASK_ID"
if [ "$SLURM_ARRAY_TASK_ID" = "${BLOCK_TASK:-none}" ]; then
  # Stands for a long shard: waits for a file that never comes (or ten minutes).
  for _ in $(seq 1 1200); do [ -e "$RESULTS/release" ] && break; sleep 0.5; done
fi
mv "$RESULTS/started-$SLURM_ARRAY_TASK_ID" "$RESULTS/task-$SLURM_ARRAY_TASK_ID"
EOF
chmod +x "$work/job.sh"

submit() { # RESULTS ARRAY [VAR=VALUE]... -> job id; waits for the end when WAIT=1
  local results="$1" array="$2"; shift 2
  mkdir -p "$results"
  local exports="ALL,RESULTS=$results" kv
  for kv in "$@"; do exports="$exports,$kv"; done
  sbatch --parsable ${WAIT:+--wait} --array="$array" --chdir="$work" \
    --output="$work/slurm-%A_%a.out" --export="$exports" "$work/job.sh"
}

check_task() { # RESULTS TASK EXPECTED-LINE
  [ -s "$1/task-$2" ] || die "task $2 left no result in $1 ($(cd "$1" && echo *))"
  local got
  got="$(cat "$1/task-$2")"
  [ "$got" = "$3" ] || die "task $2 saw '$got', expected '$3'"
}

# --- 2. an array of four, waited for by sbatch --wait -------------------------------------
t0=$SECONDS
jid="$(WAIT=1 submit "$work/a" 0-3)" || die "sbatch --array=0-3 --wait failed (exit $?)"
jid="${jid%%;*}"
for t in 0 1 2 3; do
  check_task "$work/a" "$t" "$t 4 0 1"
  expect_state "${jid}_$t" COMPLETED
done
log "array of 4 (job $jid) ran in $((SECONDS - t0)) s"

# --- 3. cancel one task midway -------------------------------------------------------------
t0=$SECONDS
jid="$(submit "$work/b" 0-3 BLOCK_TASK=2)" || die "sbatch --array=0-3 failed"
jid="${jid%%;*}"
deadline=$((SECONDS + 60))
until [ -e "$work/b/started-2" ]; do
  [ "$SECONDS" -lt "$deadline" ] || die "task ${jid}_2 did not start in 60 s: $(job_states "$jid" | tr '\n' ' ')"
  sleep 0.2
done
expect_state "${jid}_2" RUNNING
scancel "${jid}_2" || die "scancel ${jid}_2 failed"
wait_done "$jid" 60
expect_state "${jid}_2" CANCELLED
[ ! -e "$work/b/task-2" ] || die "cancelled task 2 finished its work"
for t in 0 1 3; do
  check_task "$work/b" "$t" "$t 4 0 1"
  expect_state "${jid}_$t" COMPLETED
done
log "cancelled ${jid}_2 midway; 0, 1, 3 completed ($((SECONDS - t0)) s)"

# --- 4. resubmit just that task -----------------------------------------------------------
t0=$SECONDS
rid="$(WAIT=1 submit "$work/b" 2)" || die "sbatch --array=2 --wait failed"
rid="${rid%%;*}"
check_task "$work/b" 2 "2 1 2 1"
expect_state "${rid}_2" COMPLETED
log "resubmitted task 2 as job ${rid}_2: COUNT=1 MIN=2 ($((SECONDS - t0)) s)"

# --- 5. or requeue it inside its original array -------------------------------------------
t0=$SECONDS
rm -f "$work/b/task-2"
touch "$work/b/release"
scontrol requeue "${jid}_2" || die "scontrol requeue ${jid}_2 failed"
wait_done "${jid}_2" 120
expect_state "${jid}_2" COMPLETED
check_task "$work/b" 2 "2 4 0 1"
log "requeued ${jid}_2: ran again with COUNT=4 MIN=0 ($((SECONDS - t0)) s)"

# --- 6. score-array.sbatch and merge.sbatch, with a stand-in allconv ------------------------
# The stand-in records its arguments, so this checks what the scripts pass to allconv.
t0=$SECONDS
sc="$work/score"
mkdir -p "$sc/out"
touch "$sc/model.onnx"
printf 'path\na.png\n' >"$sc/images.csv"
cat >"$sc/fake-allconv" <<'EOF'
#!/bin/bash
if [ "$1" = merge ]; then echo "$*" >"$2/merge.args"; exit 0; fi
echo "$*" >"$OUT/predict-$SLURM_ARRAY_TASK_ID.args"
EOF
chmod +x "$sc/fake-allconv"
env_common="ALL,ALLCONV=$sc/fake-allconv,MODEL=$sc/model.onnx,MANIFEST=$sc/images.csv,OUT=$sc/out"
small=(--cpus-per-task=1 --mem=100M --chdir="$sc")
# PREPROCESS has commas, which --export=NAME=VALUE cannot carry: set it in sbatch's own
# environment instead (--export=ALL passes that on).
jid="$(PREPROCESS=rescale=0.5,gray sbatch --parsable "${small[@]}" --array=0-3 --output="$sc/score-%A_%a.out" \
  --export="$env_common,TTA=1" "$here/score-array.sbatch")" \
  || die "sbatch score-array.sbatch failed"
jid="${jid%%;*}"
mid="$(sbatch --parsable "${small[@]}" --dependency="afterok:$jid" --kill-on-invalid-dep=yes \
  --output="$sc/merge-%j.out" --export="ALL,ALLCONV=$sc/fake-allconv,OUT=$sc/out,MERGED=$sc/all.parquet" \
  "$here/merge.sbatch")" || die "sbatch merge.sbatch failed"
wait_done "$jid" 60
wait_done "$mid" 60
want_auto="predict $sc/model.onnx --manifest $sc/images.csv --out $sc/out --shard auto --threads 1 --tta --preprocess rescale=0.5,gray"
for t in 0 1 2 3; do
  expect_state "${jid}_$t" COMPLETED
  got="$(cat "$sc/out/predict-$t.args" 2>/dev/null || true)"
  [ "$got" = "$want_auto" ] || die "score-array task $t ran '$got', expected '$want_auto'"
done
expect_state "$mid" COMPLETED
got="$(cat "$sc/out/merge.args" 2>/dev/null || true)"
[ "$got" = "merge $sc/out -o $sc/all.parquet" ] || die "merge.sbatch ran '$got'"
# A resubmitted task without SHARD_COUNT must refuse (its array is 2-2, not 0-3) ...
rid="$(sbatch --parsable "${small[@]}" --array=2 --output="$sc/score-%A_%a.out" \
  --export="$env_common" "$here/score-array.sbatch")" || die "sbatch --array=2 failed"
rid="${rid%%;*}"
wait_done "$rid" 60
expect_state "${rid}_2" FAILED
grep -q 'set SHARD_COUNT' "$sc/score-${rid}_2.out" || die "resubmission without SHARD_COUNT: no hint in its log"
# ... and with it, score shard 2 of 4.
rm -f "$sc/out/predict-2.args"
rid="$(sbatch --parsable "${small[@]}" --array=2 --output="$sc/score-%A_%a.out" \
  --export="$env_common,SHARD_COUNT=4" "$here/score-array.sbatch")" || die "sbatch --array=2 failed"
rid="${rid%%;*}"
wait_done "$rid" 60
expect_state "${rid}_2" COMPLETED
want="predict $sc/model.onnx --manifest $sc/images.csv --out $sc/out --shard 2/4 --threads 1"
got="$(cat "$sc/out/predict-2.args" 2>/dev/null || true)"
[ "$got" = "$want" ] || die "resubmitted task 2 ran '$got', expected '$want'"
log "score-array.sbatch (auto, then 2/4 on resubmission) and merge.sbatch after it ($((SECONDS - t0)) s)"

log "PASS"
