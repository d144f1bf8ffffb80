"""Reference numbers for `allconv evaluate` (src/eval/), written by scikit-learn, NumPy,
SciPy and a reference fast DeLong written here.

    .venv-tf/bin/python converters/eval_ref.py

Writes fixtures/eval/binary.json, fixtures/eval/multiclass.json and
fixtures/eval/numeric.json. Every case's inputs are in the file beside the outputs, so the
Rust tests (tests/evaluate.rs) recompute from the same data.

- AUROC: sklearn.metrics.roc_auc_score; the curve: sklearn.metrics.roc_curve with
  drop_intermediate=True (the default) and False; infinite thresholds are written as null.
- DeLong: the fast algorithm of X. Sun and W. Xu, "Fast Implementation of DeLong's
  Algorithm for Comparing the Areas Under Correlated Receiver Operating Characteristic
  Curves", IEEE Signal Processing Letters 21(11):1389-1393, 2014 (doi
  10.1109/LSP.2014.2337313), in the widely used formulation of compare_auc_delong_xu.py
  (mid-ranks, structural components V10/V01, np.cov); the paired test's p-value from
  scipy.stats.norm.sf.
- Multi-class: accuracy_score, recall_score(average=None), confusion_matrix,
  roc_auc_score per class (one vs rest) and roc_auc_score(multi_class="ovr",
  average="macro").
- numeric.json: np.percentile (linear) and scipy.special.erfc, which the bootstrap interval
  and the p-value use.
- The operating points (Youden, sensitivity at specificity >= 0.9) are read off
  scikit-learn's full curve (drop_intermediate=False) by the rules the docs state.
"""
import json
import os

import numpy as np
import scipy
import scipy.special
import scipy.stats
import sklearn
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    recall_score,
    roc_auc_score,
    roc_curve,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "eval")


# ---- fast DeLong (Sun and Xu 2014) ------------------------------------------------------
def compute_midrank(x):
    """Mid-ranks (1-based), ties sharing the mean of their ranks."""
    j = np.argsort(x, kind="mergesort")
    z = x[j]
    n = len(x)
    t = np.zeros(n, dtype=float)
    i = 0
    while i < n:
        k = i
        while k < n and z[k] == z[i]:
            k += 1
        t[i:k] = 0.5 * (i + k - 1)
        i = k
    t2 = np.empty(n, dtype=float)
    t2[j] = t + 1
    return t2


def fast_delong(predictions_sorted_transposed, label_1_count):
    """predictions_sorted_transposed: (k sets, images) with the positives first."""
    m = label_1_count
    n = predictions_sorted_transposed.shape[1] - m
    positive_examples = predictions_sorted_transposed[:, :m]
    negative_examples = predictions_sorted_transposed[:, m:]
    k = predictions_sorted_transposed.shape[0]
    tx = np.empty([k, m], dtype=float)
    ty = np.empty([k, n], dtype=float)
    tz = np.empty([k, m + n], dtype=float)
    for r in range(k):
        tx[r, :] = compute_midrank(positive_examples[r, :])
        ty[r, :] = compute_midrank(negative_examples[r, :])
        tz[r, :] = compute_midrank(predictions_sorted_transposed[r, :])
    aucs = tz[:, :m].sum(axis=1) / m / n - float(m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx[:, :]) / n
    v10 = 1.0 - (tz[:, m:] - ty[:, :]) / m
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    delongcov = sx / m + sy / n
    return aucs, delongcov


def delong(y, score_sets):
    order = (-y).argsort(kind="mergesort")  # positives first
    m = int(y.sum())
    preds = np.vstack([s[order] for s in score_sets])
    return fast_delong(preds, m)


# ---- helpers -----------------------------------------------------------------------------
def nums(a):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]


def exact(a):
    """Inputs as decimal strings (Python's repr, read back exactly by Rust's str::parse):
    serde_json's default float parsing may be one ulp off, which would make or break ties."""
    return [repr(float(v)) for v in np.asarray(a, dtype=float)]


def curve(y, s, drop):
    fpr, tpr, th = roc_curve(y, s, drop_intermediate=drop)
    return {"fpr": nums(fpr), "tpr": nums(tpr), "thresholds": nums(th)}


def operating_points(y, s, spec):
    fpr, tpr, th = roc_curve(y, s, drop_intermediate=False)
    j = tpr[1:] - fpr[1:]
    k = 1 + int(np.argmax(j))  # first maximum: the highest threshold
    youden = {"threshold": float(th[k]), "sensitivity": float(tpr[k]), "specificity": float(1 - fpr[k])}
    ok = [i for i in range(1, len(fpr)) if 1 - fpr[i] >= spec - 1e-12]
    at = None
    if ok:
        best = max(tpr[i] for i in ok)
        i = min(i for i in ok if tpr[i] == best)
        at = {"threshold": float(th[i]), "sensitivity": float(tpr[i]), "specificity": float(1 - fpr[i])}
    return youden, at


def binary_case(name, y, sets):
    y = np.asarray(y, dtype=int)
    sets = [np.asarray(s, dtype=float) for s in sets]
    aucs, cov = delong(y, sets)
    case = {
        "name": name,
        "y": [int(v) for v in y],
        "scores": [exact(s) for s in sets],
        "roc_auc": [float(roc_auc_score(y, s)) for s in sets],
        "roc_curve": [curve(y, s, True) for s in sets],
        "roc_curve_full": [curve(y, s, False) for s in sets],
        "delong_aucs": nums(aucs),
        "delong_cov": [nums(r) for r in cov],
        "youden": [],
        "at_specificity_0_9": [],
    }
    for s in sets:
        yd, at = operating_points(y, s, 0.9)
        case["youden"].append(yd)
        case["at_specificity_0_9"].append(at)
    if len(sets) == 2:
        var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
        z = (aucs[1] - aucs[0]) / np.sqrt(var)
        case["diff_z"] = float(z)
        case["diff_p"] = float(2 * scipy.stats.norm.sf(abs(z)))
    return case


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.RandomState(20241)
    cases = []

    # Scores rounded to one decimal: many ties within and across classes; a TTA-like
    # second set, correlated with the first.
    n = 60
    y = rng.randint(0, 2, n)
    s1 = np.round(np.clip(0.45 + 0.25 * y + rng.normal(0, 0.2, n), 0, 1), 1)
    s2 = np.round(np.clip(0.5 * s1 + 0.5 * (0.45 + 0.3 * y + rng.normal(0, 0.2, n)), 0, 1), 1)
    cases.append(binary_case("ties_rounded", y, [s1, s2]))

    # Three values only, and whole blocks of ties.
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1])
    s = np.array([0.0, 0.5, 0.5, 0.5, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0, 0.5, 1.0, 0.5, 0.5])
    t = np.array([0.1, 0.5, 0.4, 0.5, 0.9, 0.1, 1.0, 0.5, 0.0, 1.0, 0.5, 0.2, 0.2, 0.9, 0.6, 0.8, 0.5, 0.5])
    cases.append(binary_case("three_levels", y, [s, t]))

    # Collinear stretches: runs of one class in score order (drop_intermediate drops them).
    y = np.array([1] * 5 + [0] * 4 + [1] * 3 + [0] * 6 + [1, 0, 1, 0])
    s = np.linspace(1.0, 0.0, len(y))
    t = s.copy()
    t[::5] = t[::5] * 0.5
    cases.append(binary_case("collinear_runs", y, [s, t]))

    # Larger, continuous, imbalanced (about 1 in 5 positive), a few exact ties.
    n = 400
    y = (rng.rand(n) < 0.2).astype(int)
    s1 = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.1 * y)))
    s2 = 1 / (1 + np.exp(-(0.7 * np.log(s1 / (1 - s1)) + rng.normal(0, 0.6, n) + 0.4 * y)))
    s1[:20] = np.round(s1[:20], 2)
    cases.append(binary_case("imbalanced_400", y, [s1, s2]))

    # A single set (no TTA), float32 values as a model writes them.
    n = 50
    y = rng.randint(0, 2, n)
    s = (rng.rand(n) * 0.3 + 0.12 * y).astype(np.float32).astype(float)
    cases.append(binary_case("single_f32", y, [s]))

    meta = {
        "generator": "converters/eval_ref.py",
        "versions": {"sklearn": sklearn.__version__, "numpy": np.__version__, "scipy": scipy.__version__},
    }
    with open(os.path.join(OUT, "binary.json"), "w") as f:
        json.dump({**meta, "cases": cases}, f, indent=1)

    # Multi-class: softmax of small integer logits (exact ties across images), 3 and 4 classes.
    mcases = []
    for name, k, n in [("three_classes", 3, 90), ("four_classes", 4, 120)]:
        labels = rng.randint(0, k, n)
        logits = rng.randint(0, 3, (n, k)).astype(float)
        logits[np.arange(n), labels] += rng.randint(0, 2, n)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        pred = p.argmax(axis=1)
        mcases.append(
            {
                "name": name,
                "classes": k,
                "labels": [int(v) for v in labels],
                "probs": [exact(r) for r in p],
                "accuracy": float(accuracy_score(labels, pred)),
                "recall": nums(recall_score(labels, pred, average=None, labels=list(range(k)))),
                "confusion": confusion_matrix(labels, pred, labels=list(range(k))).tolist(),
                "ovr_auroc": [float(roc_auc_score(labels == c, p[:, c])) for c in range(k)],
                "macro_ovr_auroc": float(roc_auc_score(labels, p, multi_class="ovr", average="macro")),
            }
        )
    with open(os.path.join(OUT, "multiclass.json"), "w") as f:
        json.dump({**meta, "cases": mcases}, f, indent=1)

    values = rng.normal(0.7, 0.05, 2000)
    small = rng.rand(7)
    xs = [-3.0, -1.2, -0.3, 0.0, 1e-3, 0.25, 0.7, 1.0, 1.5, 2.2, 3.1, 4.5, 5.9, 6.1, 7.3, 9.0]
    numeric = {
        **meta,
        "percentile": [
            {"values": exact(v), "q": q, "result": float(np.percentile(v, q))}
            for v in (values, small)
            for q in (2.5, 50.0, 97.5)
        ],
        "erfc": [{"x": x, "result": float(scipy.special.erfc(x))} for x in xs],
    }
    with open(os.path.join(OUT, "numeric.json"), "w") as f:
        json.dump(numeric, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
