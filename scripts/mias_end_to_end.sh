#!/usr/bin/env bash
# The paper's whole method on mini-MIAS, every step an allconv command:
#   split (women) -> sample-patches -> train-patch -> rehead -> finetune -> evaluate --tta
#
#   scripts/mias_end_to_end.sh MIAS_DIR OUT_DIR
#
# MIAS_DIR holds mdbNNN.pgm and Info.txt (any subset of the 322 images); everything is
# written under OUT_DIR. Options are environment variables (defaults printed at the start):
#   ALLCONV        the allconv binary                      (target/release/allconv)
#   SEED           split, sampling, training, bootstrap    (12345)
#   VAL_FRAC       share of women per stratum in val        (0.15)
#   TEST_FRAC      share of women per stratum in test       (0.30)
#   TARGET_HEIGHT  image height patches are cut at          (256)
#   PATCH_SIZE     patch side in pixels                     (32)
#   NB_ABN NB_BKG NB_HNS   patches per lesion / background / hard negatives (10 10 5)
#   PATCH_EPOCHS   train-patch epochs                       (10)
#   IMG_SIZE       whole-image size HxW                     (256x256, = TARGET_HEIGHT high)
#   TOP            rehead recipe                            (vgg:512x1)
#   NB_EPOCH ALL_LAYER_EPOCHS  finetune stage 1 / total    (3 6)
#   BATCH_SIZE     validation batch (training: half)        (16)
#   RESCALE MEAN   pixel scale and mean, all steps          (0.00392156862745098 0.2)
#   TASKS          whole-image tasks                        ("malignant abnormal")
#   DEVICE         cpu or cuda[:N]                          (cpu)
#   JOBS           sample-patches jobs, 0 = one per core    (0)
#   BOOTSTRAP      evaluate's resamples                     (2000)
#   CHECK=1        finetune also scores the test set itself (models/TASK_test_scores.csv),
#                  to compare with evaluate's scores: the same preprocessing (QUICK: 1, else 0)
#   QUICK=1        tiny sizes and epochs for a smoke run (each still overridable)
#
# Split rule (split/README.txt repeats it): women are patient = (N+1)/2 for mdbNNN, both
# views together. A woman is malignant when any of her views has severity M in Info.txt.
# Within each stratum (malignant, not malignant) women are sorted by the first 16 hex
# digits of sha256("SEED:patient") (ties by id); the first round(n*TEST_FRAC) go to test,
# the next round(n*VAL_FRAC) to val, the rest to train; a stratum of 3 or more women gives
# test and val at least one each. Pure coreutils + awk: the same SEED and image set give
# the same split anywhere.
#
# Choices (see docs/mias.md):
# - Patch network: VGG16 from random weights (--no-use-pretrained; no ImageNet download):
#   at 32-64 px it learns within a few epochs on 2 CPU cores. YaroslavNet's BatchNorm
#   moving averages need hundreds of steps before its inference-mode outputs mean anything,
#   more than a CPU run of this size gives it.
# - Classes: mini-MIAS has few lesions per kind (CALC ~ 30, masses ~ 90), so the patch
#   classifier is two classes: background vs abnormal (all four lesion folders merged).
# - Pixels: the PGMs are 8-bit; every step divides by 255 (RESCALE) and subtracts MEAN,
#   no per-image max scaling and no histogram equalisation, so a patch and the same tissue
#   in a whole image get the same numbers.
# - Patches come only from train and val women (validation patches from val women choose
#   the best patch model; they are also train-patch's test folder). The test women are
#   used once, by evaluate at the end: no choice is made on them.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 MIAS_DIR OUT_DIR" >&2
    exit 2
fi
MIAS_DIR=$(cd "$1" && pwd)
mkdir -p "$2"
OUT=$(cd "$2" && pwd)
INFO="$MIAS_DIR/Info.txt"
[ -f "$INFO" ] || { echo "error: $INFO not found" >&2; exit 2; }

ALLCONV=${ALLCONV:-target/release/allconv}
case "$ALLCONV" in /*) ;; */*) ALLCONV="$(pwd)/$ALLCONV" ;; esac
command -v "$ALLCONV" >/dev/null || { echo "error: allconv binary $ALLCONV not found (set ALLCONV)" >&2; exit 2; }

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    d_th=128 d_ps=32 d_abn=3 d_bkg=3 d_hns=1 d_pe=2 d_img=64x64 d_top=vgg:16x1
    d_e1=1 d_e2=2 d_bs=8 d_boot=200 d_check=1
else
    d_th=256 d_ps=32 d_abn=10 d_bkg=10 d_hns=5 d_pe=10 d_img=256x256 d_top=vgg:512x1
    d_e1=3 d_e2=6 d_bs=16 d_boot=2000 d_check=0
fi
SEED=${SEED:-12345}
VAL_FRAC=${VAL_FRAC:-0.15}
TEST_FRAC=${TEST_FRAC:-0.30}
TARGET_HEIGHT=${TARGET_HEIGHT:-$d_th}
PATCH_SIZE=${PATCH_SIZE:-$d_ps}
NB_ABN=${NB_ABN:-$d_abn}
NB_BKG=${NB_BKG:-$d_bkg}
NB_HNS=${NB_HNS:-$d_hns}
PATCH_EPOCHS=${PATCH_EPOCHS:-$d_pe}
IMG_SIZE=${IMG_SIZE:-$d_img}
TOP=${TOP:-$d_top}
NB_EPOCH=${NB_EPOCH:-$d_e1}
ALL_LAYER_EPOCHS=${ALL_LAYER_EPOCHS:-$d_e2}
BATCH_SIZE=${BATCH_SIZE:-$d_bs}
RESCALE=${RESCALE:-0.00392156862745098}
MEAN=${MEAN:-0.2}
TASKS=${TASKS:-malignant abnormal}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-0}
BOOTSTRAP=${BOOTSTRAP:-$d_boot}
CHECK=${CHECK:-$d_check}
IMG_H=${IMG_SIZE%x*}
IMG_W=${IMG_SIZE#*x}

step() { echo; echo "== $(date -u +%H:%M:%S) $*"; }

echo "mias_end_to_end: $MIAS_DIR -> $OUT"
for v in ALLCONV QUICK SEED VAL_FRAC TEST_FRAC TARGET_HEIGHT PATCH_SIZE NB_ABN NB_BKG NB_HNS \
    PATCH_EPOCHS IMG_SIZE TOP NB_EPOCH ALL_LAYER_EPOCHS BATCH_SIZE RESCALE MEAN TASKS DEVICE \
    JOBS BOOTSTRAP CHECK; do
    printf '  %-17s %s\n' "$v" "${!v}"
done
VERSION=$("$ALLCONV" --version)
echo "$VERSION" | sed 's/^/  /'
SECONDS=0

# ---------------------------------------------------------------------------------------
step "1. split by woman, stratified by malignancy"
mkdir -p "$OUT/split"
# views.tsv: view, patient, malignant (0/1), abnormal (0/1), located lesion (0/1)
# for every mdbNNN.pgm present with at least one row in Info.txt.
ls "$MIAS_DIR" | sed -n 's/^\(mdb[0-9][0-9]*\)\.pgm$/\1/p' | sort >"$OUT/split/present.txt"
awk 'NR == FNR { present[$1] = 1; next }
     $1 ~ /^mdb[0-9]+$/ && ($1 in present) {
        v = $1; seen[v] = 1
        if ($4 == "M") mal[v] = 1
        if ($3 != "" && $3 != "NORM") abn[v] = 1
        if ($5 ~ /^[0-9]+$/ && $6 ~ /^[0-9]+$/ && $7 ~ /^[0-9]+$/) loc[v] = 1
     }
     END {
        for (v in seen) {
            n = substr(v, 4) + 0
            printf "%s\t%d\t%d\t%d\t%d\n", v, int((n + 1) / 2), (v in mal), (v in abn), (v in loc)
        }
     }' "$OUT/split/present.txt" "$INFO" | sort >"$OUT/split/views.tsv"
missing=$(comm -23 "$OUT/split/present.txt" <(cut -f1 "$OUT/split/views.tsv"))
[ -z "$missing" ] || { echo "error: no Info.txt row for: $missing" >&2; exit 1; }
[ -s "$OUT/split/views.tsv" ] || { echo "error: no mdbNNN.pgm in $MIAS_DIR" >&2; exit 1; }
# women.tsv: patient, malignant, hash key
awk -F'\t' '{ if (!($2 in m) || $3 > m[$2]) m[$2] = $3 } END { for (p in m) print p "\t" m[p] }' \
    "$OUT/split/views.tsv" | sort -n | while IFS=$'\t' read -r p mal; do
    key=$(printf '%s:%s' "$SEED" "$p" | sha256sum | cut -c1-16)
    printf '%s\t%s\t%s\n' "$p" "$mal" "$key"
done >"$OUT/split/women_keys.tsv"
sort -t$'\t' -k2,2n -k3,3 -k1,1n "$OUT/split/women_keys.tsv" |
    awk -F'\t' -v tf="$TEST_FRAC" -v vf="$VAL_FRAC" '
    function flush(   n, nt, nv, i, s) {
        n = cnt
        if (n == 0) return
        nt = int(n * tf + 0.5); nv = int(n * vf + 0.5)
        if (n >= 3) { if (nt < 1) nt = 1; if (nv < 1) nv = 1 }
        if (nt + nv > n) nv = n - nt
        for (i = 1; i <= n; i++) {
            s = (i <= nt) ? "test" : (i <= nt + nv) ? "val" : "train"
            printf "%s\t%s\t%s\t%s\n", ids[i], lab[i], keys[i], s
        }
        cnt = 0
    }
    { if (NR > 1 && $2 != prev) flush(); cnt++; ids[cnt] = $1; lab[cnt] = $2; keys[cnt] = $3; prev = $2 }
    END { flush() }' | sort -n >"$OUT/split/women.tsv"
rm -f "$OUT/split/women_keys.tsv"
for s in train val test; do
    awk -F'\t' -v s="$s" 'NR == FNR { if ($4 == s) w[$1] = 1; next } ($2 in w) { print $1 }' \
        "$OUT/split/women.tsv" "$OUT/split/views.tsv" | sort >"$OUT/split/$s.txt"
done
cat >"$OUT/split/README.txt" <<EOF
Split of mini-MIAS women (patient = (N+1)/2 for mdbNNN; both views together) into
train/val/test, stratified by malignancy (a woman is malignant if any view has severity M).
Within each stratum women are sorted by the first 16 hex digits of sha256("$SEED:patient")
(ties by id); the first round(n*$TEST_FRAC) go to test, the next round(n*$VAL_FRAC) to val,
the rest to train (a stratum of 3 or more women gives test and val at least one each).
train.txt, val.txt, test.txt: view names. women.tsv: patient, malignant, key, set.
views.tsv: view, patient, malignant, abnormal, located lesion.
EOF
printf '  %-6s %6s %6s %10s %10s\n' set women views malignant abnormal
for s in train val test; do
    nw=$(awk -F'\t' -v s="$s" '$4 == s' "$OUT/split/women.tsv" | wc -l)
    nv=$(wc -l <"$OUT/split/$s.txt")
    nm=$(awk -F'\t' 'NR == FNR { w[$1] = 1; next } ($1 in w) && $3 == 1' "$OUT/split/$s.txt" "$OUT/split/views.tsv" | wc -l)
    na=$(awk -F'\t' 'NR == FNR { w[$1] = 1; next } ($1 in w) && $4 == 1' "$OUT/split/$s.txt" "$OUT/split/views.tsv" | wc -l)
    printf '  %-6s %6d %6d %10d %10d\n' "$s" "$nw" "$nv" "$nm" "$na"
done

# ---------------------------------------------------------------------------------------
step "2. sample-patches (train and val women's located lesions; test women never)"
rm -rf "$OUT/patches"
mkdir -p "$OUT/patches"
for s in train val; do
    # Only views with a located lesion: sample-patches samples lesions and the background
    # around them, as the paper does (a normal view has no rows for it).
    awk -F'\t' 'NR == FNR { w[$1] = 1; next } ($1 in w) && $5 == 1 { print $1 }' \
        "$OUT/split/$s.txt" "$OUT/split/views.tsv" >"$OUT/patches/$s.patients.txt"
    if [ ! -s "$OUT/patches/$s.patients.txt" ]; then
        echo "error: the $s women have no located lesion to sample patches from;" \
            "use more images or change SEED/VAL_FRAC" >&2
        exit 1
    fi
    # --val-size 0: the split is ours (by woman); sample-patches writes everything to
    # its TRAIN_OUT and nothing to the unused VAL_OUT.
    "$ALLCONV" sample-patches --annotations "mias:$INFO" "$MIAS_DIR" \
        "$OUT/patches/$s" "$OUT/patches/.unused-$s" --patients "$OUT/patches/$s.patients.txt" \
        --target-height "$TARGET_HEIGHT" --patch-size "$PATCH_SIZE" --nb-abn "$NB_ABN" \
        --nb-bkg "$NB_BKG" --nb-hns "$NB_HNS" --val-size 0 --seed "$SEED" --jobs "$JOBS" \
        --keep-going --json >"$OUT/patches/$s.json"
    rm -rf "$OUT/patches/.unused-$s"
    echo "  $s: $(wc -l <"$OUT/patches/$s.patients.txt") views;" \
        "$(find "$OUT/patches/$s" -name '*.png' | wc -l) patches"
    # --keep-going: a lesion too small to survive the resize (a calcification of radius 3 at
    # TARGET_HEIGHT 128) is skipped, named on stderr and counted here; the rest is sampled.
    skips=$(tr -d '\n' <"$OUT/patches/$s.json" | grep -o '"skip_counts": *{[^}]*}' || true)
    case "$skips" in *'{}' | "") ;; *) echo "  $s: $skips" ;; esac
done
# Folders a side lacks are created empty, so that train and val take the same class
# list; the abnormal class merges every lesion folder that has patches on either side.
for s in train val; do
    for c in background calc_mal calc_ben mass_mal mass_ben; do mkdir -p "$OUT/patches/$s/$c"; done
done
ABN_FOLDERS=""
for c in calc_mal calc_ben mass_mal mass_ben; do
    if [ -n "$(ls "$OUT/patches/train/$c" "$OUT/patches/val/$c")" ]; then
        ABN_FOLDERS="$ABN_FOLDERS${ABN_FOLDERS:++}$c"
    fi
done

# ---------------------------------------------------------------------------------------
step "3. train-patch: VGG16 from random weights, background vs abnormal"
mkdir -p "$OUT/models"
"$ALLCONV" train-patch "$OUT/patches/train" "$OUT/patches/val" "$OUT/patches/val" \
    --net vgg16 --no-use-pretrained --img-size "$PATCH_SIZE" "$PATCH_SIZE" \
    --no-img-scale --rescale-factor "$RESCALE" --featurewise-mean "$MEAN" --no-equalize-hist \
    --class-list background "abnormal=$ABN_FOLDERS" \
    --optimizer adam --init-learningrate 0.0001 --nb-epoch "$PATCH_EPOCHS" \
    --batch-size "$BATCH_SIZE" --train-bs-multiplier 1 --es-patience 5 --auto-batch-balance \
    --seed "$SEED" --device "$DEVICE" --best-model "$OUT/models/patch.h5" \
    --log "$OUT/models/patch.jsonl" --json >"$OUT/models/patch.json"
echo "  $OUT/models/patch.h5"

# ---------------------------------------------------------------------------------------
step "4. rehead: patch classifier -> whole-image classifier at ${IMG_H}x${IMG_W} ($TOP)"
"$ALLCONV" rehead "$OUT/models/patch.h5" -o "$OUT/models/whole.h5" --input-size "${IMG_H}x${IMG_W}" \
    --top "$TOP" --seed "$SEED" --json >"$OUT/models/whole.json"
TOP_LAYER_NB=$(sed -n 's/.*"top_layer_nb": *\([0-9][0-9]*\).*/\1/p' "$OUT/models/whole.json" | head -1)
[ -n "$TOP_LAYER_NB" ] || { echo "error: no top_layer_nb in rehead's report" >&2; exit 1; }
echo "  $OUT/models/whole.h5 (stage-1 frozen layers: $TOP_LAYER_NB)"

# ---------------------------------------------------------------------------------------
mkdir -p "$OUT/results"
PRE="size=${IMG_H}x${IMG_W},rescale=$RESCALE,mean=$MEAN"
RAN=""
for task in $TASKS; do
    case "$task" in
        malignant) col=3 ;;
        abnormal) col=4 ;;
        *) echo "error: unknown task $task (malignant, abnormal)" >&2; exit 2 ;;
    esac
    step "5. $task: whole-image folders, finetune"
    rm -rf "$OUT/images/$task" "$OUT/results/$task".*
    short=""
    for s in train val test; do
        for c in neg pos; do mkdir -p "$OUT/images/$task/$s/$c"; done
        awk -F'\t' -v col="$col" 'NR == FNR { w[$1] = 1; next } ($1 in w) { print $1 "\t" $col }' \
            "$OUT/split/$s.txt" "$OUT/split/views.tsv" | while IFS=$'\t' read -r v y; do
            c=neg; [ "$y" = 1 ] && c=pos
            ln -s "$MIAS_DIR/$v.pgm" "$OUT/images/$task/$s/$c/$v.pgm"
        done
        for c in neg pos; do
            n=$(ls "$OUT/images/$task/$s/$c" | wc -l)
            echo "  $s/$c: $n"
            [ "$n" -gt 0 ] || short="$short $s/$c"
        done
    done
    if [ -n "$short" ]; then
        # Too few images for this task: AUROC needs both classes in val and test.
        why="no images in$short (too few women in this image set for a three-way split of this task)"
        echo "$why" >"$OUT/results/$task.skipped"
        echo "SKIPPED $task: $why"
        continue
    fi
    # CHECK=1: finetune scores the test set with the best model too (no choice is made on
    # it); its scores must equal evaluate's, which proves both see the same pixels.
    test_arg=()
    if [ "$CHECK" = 1 ]; then test_arg=(--test "$OUT/images/$task/test"); fi
    "$ALLCONV" finetune --resume-from "$OUT/models/whole.h5" \
        --train "$OUT/images/$task/train" --val "$OUT/images/$task/val" ${test_arg[@]+"${test_arg[@]}"} \
        -o "$OUT/models/$task.h5" --img-size "$IMG_H" "$IMG_W" --no-img-scale \
        --rescale-factor "$RESCALE" --featurewise-mean "$MEAN" --no-equalize-hist \
        --class-list neg pos --top-layer-nb "$TOP_LAYER_NB" --batch-size "$BATCH_SIZE" \
        --train-bs-multiplier 0.5 --nb-epoch "$NB_EPOCH" --all-layer-epochs "$ALL_LAYER_EPOCHS" \
        --optimizer adam --init-learningrate 0.0001 --all-layer-multiplier 0.5 \
        --es-patience 10 --seed "$SEED" --device "$DEVICE" --log "$OUT/models/$task.jsonl" \
        --json >"$OUT/models/$task.json"

    step "6. $task: evaluate on the test women (single view and 4-flip TTA)"
    "$ALLCONV" evaluate "$OUT/models/$task.h5" "$OUT/images/$task/test" --class-list neg,pos \
        --preprocess "$PRE" --tta --bootstrap "$BOOTSTRAP" --seed "$SEED" \
        --roc "$OUT/results/$task.roc.png" --scores "$OUT/results/$task.scores.csv" \
        --json >"$OUT/results/$task.json"
    "$ALLCONV" evaluate --from-scores "$OUT/results/$task.scores.csv" --bootstrap "$BOOTSTRAP" \
        --seed "$SEED" >"$OUT/results/$task.txt"
    RAN="$RAN $task"
done

# ---------------------------------------------------------------------------------------
step "7. summary"
{
    printf '%-10s %6s %6s %6s  %-24s %-24s\n' task images pos neg "AUROC single (95% CI)" "AUROC TTA (95% CI)"
    for task in $TASKS; do
        if [ -f "$OUT/results/$task.skipped" ]; then
            printf '%-10s skipped: %s\n' "$task" "$(cat "$OUT/results/$task.skipped")"
            continue
        fi
        # One line per number from the JSON report (no jq needed): the keys are fixed.
        tr -d ' \n' <"$OUT/results/$task.json" | awk -v task="$task" '
        function num(s, key,   i, r) {
            i = index(s, "\"" key "\":"); if (!i) return "?"
            r = substr(s, i + length(key) + 3); sub(/[,}\]].*/, "", r); return r
        }
        function ci(s, key,   i, r, q) {
            i = index(s, "\"" key "\":["); if (!i) return "?"
            r = substr(s, i + length(key) + 4); sub(/\].*/, "", r)
            split(r, q, ","); return sprintf("%.3f-%.3f", q[1], q[2])
        }
        function part(s, key,   i) { i = index(s, "\"" key "\":{"); return i ? substr(s, i) : "" }
        {
            b = part($0, "binary"); sg = part(b, "single"); tt = part(b, "tta")
            printf "%-10s %6s %6s %6s  %-24s %-24s\n", task, num($0, "images"), num(b, "positives"),
                num(b, "negatives"),
                sprintf("%.3f (%s)", num(sg, "auroc"), ci(sg, "ci_bootstrap")),
                sprintf("%.3f (%s)", num(tt, "auroc"), ci(tt, "ci_bootstrap"))
        }'
    done
    echo
    echo "$VERSION"
    echo "elapsed: ${SECONDS} s"
} | tee "$OUT/results/summary.txt"
