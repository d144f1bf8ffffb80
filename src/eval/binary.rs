//! Binary metrics: AUROC (Mann-Whitney, ties counting one half), the ROC curve as
//! scikit-learn draws it, DeLong's variance (the fast algorithm of Sun and Xu), the
//! stratified percentile bootstrap, and operating points.
//!
//! Conventions (scikit-learn's): a higher score means "more positive"; an image is called
//! positive at threshold `t` when `score >= t`.

use crate::data::augment::Rng;
use crate::error::{Error, Result};

/// `norm.ppf(0.975)`: the two-sided 95% normal quantile.
pub const Z_95: f64 = 1.959_963_984_540_054;

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// Checks lengths, NaN and both classes; returns (positives, negatives).
fn check(scores: &[f64], positive: &[bool]) -> Result<(usize, usize)> {
    if scores.len() != positive.len() {
        return Err(err(format!(
            "{} scores for {} labels",
            scores.len(),
            positive.len()
        )));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(err(format!(
            "score {} (row {i}) is not a finite number",
            scores[i]
        )));
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(err(format!(
            "the AUROC needs both classes ({n_pos} positive, {n_neg} negative images)"
        )));
    }
    Ok((n_pos, n_neg))
}

/// Mid-ranks (1-based, ties get the mean of their ranks), as Sun and Xu's `compute_midrank`.
pub fn midranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && x[idx[j]] == x[idx[i]] {
            j += 1;
        }
        // 0-based ranks i..j-1, mean (i + j - 1) / 2, plus one.
        let mid = 0.5 * (i + j - 1) as f64 + 1.0;
        for &k in &idx[i..j] {
            r[k] = mid;
        }
        i = j;
    }
    r
}

/// AUROC: the probability that a random positive scores above a random negative, ties
/// counting one half (scikit-learn's `roc_auc_score`). Errors when a class is absent.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Result<f64> {
    let (m, n) = check(scores, positive)?;
    let r = midranks(scores);
    let rank_sum: f64 = r
        .iter()
        .zip(positive)
        .filter(|(_, &p)| p)
        .map(|(r, _)| r)
        .sum();
    Ok((rank_sum - (m * (m + 1)) as f64 / 2.0) / (m as f64 * n as f64))
}

/// A ROC curve: false and true positive rates at each threshold (`score >= threshold`),
/// thresholds decreasing; the first point is (0, 0) at threshold +inf.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RocCurve {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    /// `+inf` first (serialised as `null`).
    #[serde(with = "inf_as_null")]
    pub thresholds: Vec<f64>,
}

/// JSON has no infinity: `+inf` thresholds are written as `null` and read back as `+inf`.
mod inf_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.is_finite().then_some(*x)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v: Vec<Option<f64>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::INFINITY)).collect())
    }
}

/// The most bootstrap resamples one evaluation takes (the ROC band keeps 101 values per
/// resample and score set: 160 MB at this bound with TTA).
pub const MAX_RESAMPLES: usize = 100_000;

/// scikit-learn's `roc_curve(y, score, drop_intermediate=...)` (1.3 and later: the first
/// threshold is `+inf`). `drop_intermediate` drops the points where neither the false
/// nor the true positive count changes its slope (collinear points), as scikit-learn's
/// default does; without it, one point per distinct score.
pub fn roc_curve(scores: &[f64], positive: &[bool], drop_intermediate: bool) -> Result<RocCurve> {
    let (m, n) = check(scores, positive)?;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // Cumulative counts at the last index of each distinct score (descending).
    let (mut fps, mut tps, mut th) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tp, mut fp) = (0i64, 0i64);
    for (k, &i) in idx.iter().enumerate() {
        if positive[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        if k + 1 == idx.len() || scores[idx[k + 1]] != scores[i] {
            fps.push(fp);
            tps.push(tp);
            th.push(scores[i]);
        }
    }
    if drop_intermediate && fps.len() > 2 {
        let keep: Vec<usize> = (0..fps.len())
            .filter(|&k| {
                k == 0
                    || k + 1 == fps.len()
                    || fps[k + 1] - 2 * fps[k] + fps[k - 1] != 0
                    || tps[k + 1] - 2 * tps[k] + tps[k - 1] != 0
            })
            .collect();
        fps = keep.iter().map(|&k| fps[k]).collect();
        tps = keep.iter().map(|&k| tps[k]).collect();
        th = keep.iter().map(|&k| th[k]).collect();
    }
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    for k in 0..fps.len() {
        curve.fpr.push(fps[k] as f64 / n as f64);
        curve.tpr.push(tps[k] as f64 / m as f64);
        curve.thresholds.push(th[k]);
    }
    Ok(curve)
}

/// Sensitivity and specificity at one threshold.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperatingPoint {
    /// Positive when `score >= threshold`.
    pub threshold: f64,
    pub sensitivity: f64,
    pub specificity: f64,
}

/// The Youden point: the threshold that maximises sensitivity + specificity - 1 over the
/// curve's finite thresholds (ties: the highest threshold).
pub fn youden(curve: &RocCurve) -> Option<OperatingPoint> {
    let mut best: Option<(usize, f64)> = None;
    for k in 1..curve.fpr.len() {
        let j = curve.tpr[k] - curve.fpr[k];
        if best.is_none_or(|(_, b)| j > b) {
            best = Some((k, j));
        }
    }
    best.map(|(k, _)| point(curve, k))
}

/// The highest sensitivity among the finite thresholds whose specificity is at least
/// `specificity` (ties: the higher specificity); `None` when no threshold reaches it.
pub fn at_specificity(curve: &RocCurve, specificity: f64) -> Option<OperatingPoint> {
    let mut best: Option<usize> = None;
    for k in 1..curve.fpr.len() {
        if 1.0 - curve.fpr[k] >= specificity - 1e-12
            && best.is_none_or(|b| curve.tpr[k] > curve.tpr[b])
        {
            best = Some(k);
        }
    }
    best.map(|k| point(curve, k))
}

fn point(c: &RocCurve, k: usize) -> OperatingPoint {
    OperatingPoint {
        threshold: c.thresholds[k],
        sensitivity: c.tpr[k],
        specificity: 1.0 - c.fpr[k],
    }
}

/// DeLong's estimate for one or more score sets on the same images: their AUROCs and the
/// covariance matrix of the AUROCs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeLong {
    pub aucs: Vec<f64>,
    /// `cov[i][j]`; `cov[i][i]` is the variance of AUROC `i`.
    pub cov: Vec<Vec<f64>>,
}

/// DeLong, DeLong and Clarke-Pearson (1988), computed with the fast algorithm of Sun and
/// Xu, "Fast Implementation of DeLong's Algorithm for Comparing the Areas Under
/// Correlated Receiver Operating Characteristic Curves", IEEE Signal Processing Letters
/// 21(11), 2014: mid-ranks within the positives, within the negatives and over all
/// images give the structural components V10 and V01, whose sample covariances
/// (denominator count - 1) divided by the class sizes add up to the AUROCs' covariance.
/// Needs at least two images of each class.
pub fn delong(score_sets: &[&[f64]], positive: &[bool]) -> Result<DeLong> {
    if score_sets.is_empty() {
        return Err(err("DeLong: no scores"));
    }
    let mut m = 0;
    let mut n = 0;
    for s in score_sets {
        (m, n) = check(s, positive)?;
    }
    if m < 2 || n < 2 {
        return Err(err(format!(
            "DeLong's variance needs at least 2 images of each class ({m} positive, {n} negative)"
        )));
    }
    let (mf, nf) = (m as f64, n as f64);
    let mut aucs = Vec::new();
    let mut v01s = Vec::new(); // per set: one value per positive
    let mut v10s = Vec::new(); // per set: one value per negative
    for s in score_sets {
        let pos: Vec<f64> = s
            .iter()
            .zip(positive)
            .filter(|(_, &p)| p)
            .map(|(v, _)| *v)
            .collect();
        let neg: Vec<f64> = s
            .iter()
            .zip(positive)
            .filter(|(_, &p)| !p)
            .map(|(v, _)| *v)
            .collect();
        let tx = midranks(&pos);
        let ty = midranks(&neg);
        let all: Vec<f64> = pos.iter().chain(&neg).copied().collect();
        let tz = midranks(&all);
        let auc = tz[..m].iter().sum::<f64>() / mf / nf - (mf + 1.0) / 2.0 / nf;
        aucs.push(auc);
        v01s.push((0..m).map(|i| (tz[i] - tx[i]) / nf).collect::<Vec<f64>>());
        v10s.push(
            (0..n)
                .map(|j| 1.0 - (tz[m + j] - ty[j]) / mf)
                .collect::<Vec<f64>>(),
        );
    }
    let k = score_sets.len();
    let cov_of = |a: &[f64], b: &[f64]| {
        let len = a.len() as f64;
        let ma = a.iter().sum::<f64>() / len;
        let mb = b.iter().sum::<f64>() / len;
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - ma) * (y - mb))
            .sum::<f64>()
            / (len - 1.0)
    };
    let mut cov = vec![vec![0.0; k]; k];
    for i in 0..k {
        for j in 0..k {
            cov[i][j] = cov_of(&v01s[i], &v01s[j]) / mf + cov_of(&v10s[i], &v10s[j]) / nf;
        }
    }
    Ok(DeLong { aucs, cov })
}

/// One set's scores, sorted once, for the AUROC of many weighted resamples.
struct Ranked {
    /// Groups of tied scores in increasing order: the image indices of each group.
    groups: Vec<Vec<usize>>,
}

impl Ranked {
    fn new(scores: &[f64]) -> Ranked {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (k, &i) in idx.iter().enumerate() {
            if k == 0 || scores[idx[k - 1]] != scores[i] {
                groups.push(Vec::new());
            }
            if let Some(g) = groups.last_mut() {
                g.push(i);
            }
        }
        Ranked { groups }
    }

    /// AUROC of the resample that holds image `i` `counts[i]` times (the Mann-Whitney
    /// statistic over the multiset; `m`, `n`: its positives and negatives).
    fn auroc(&self, counts: &[u32], positive: &[bool], m: usize, n: usize) -> f64 {
        let mut neg_below = 0f64;
        let mut num = 0f64;
        for g in &self.groups {
            let (mut p, mut q) = (0f64, 0f64);
            for &i in g {
                if positive[i] {
                    p += counts[i] as f64;
                } else {
                    q += counts[i] as f64;
                }
            }
            num += p * (neg_below + 0.5 * q);
            neg_below += q;
        }
        num / (m as f64 * n as f64)
    }

    /// The resample's ROC curve (through every distinct threshold) read at each false
    /// positive rate of `grid` (increasing): linear between the curve's points, the
    /// highest true positive rate where the curve is vertical.
    fn tpr_at(
        &self,
        counts: &[u32],
        positive: &[bool],
        m: usize,
        n: usize,
        grid: &[f64],
    ) -> Vec<f64> {
        let mut pts = vec![(0.0, 0.0)];
        let (mut tp, mut fp) = (0f64, 0f64);
        for g in self.groups.iter().rev() {
            for &i in g {
                if positive[i] {
                    tp += counts[i] as f64;
                } else {
                    fp += counts[i] as f64;
                }
            }
            pts.push((fp / n as f64, tp / m as f64));
        }
        let mut out = Vec::with_capacity(grid.len());
        let mut k = 0;
        for &x in grid {
            // The last point with fpr <= x.
            while k + 1 < pts.len() && pts[k + 1].0 <= x {
                k += 1;
            }
            let y = if pts[k].0 == x || k + 1 == pts.len() {
                pts[k].1
            } else {
                let (a, b) = (pts[k], pts[k + 1]);
                a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0)
            };
            out.push(y);
        }
        out
    }
}

/// What the stratified bootstrap gives for each score set.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// Per resample, the AUROC of each score set on the same resampled images (paired).
    pub aucs: Vec<Vec<f64>>,
    /// Per score set: the 2.5th and 97.5th percentiles of the resampled curves' true
    /// positive rate at each false positive rate of [`band_grid`].
    pub bands: Vec<(Vec<f64>, Vec<f64>)>,
}

/// The false positive rates at which the bootstrap band is taken: 0, 0.01, ..., 1.
pub fn band_grid() -> Vec<f64> {
    (0..=100).map(|i| i as f64 / 100.0).collect()
}

/// Stratified bootstrap: `resamples` draws, each `m` positives from the positives and `n`
/// negatives from the negatives with replacement, from this crate's seeded generator
/// ([`Rng`]: xoshiro256** seeded through SplitMix64 from `seed`; one stream, drawn in
/// order, positives then negatives within a resample, each draw `Rng::below` of an index
/// into that class's images in row order: the same seed, class sizes and row order give
/// the same resamples).
pub fn bootstrap(
    score_sets: &[&[f64]],
    positive: &[bool],
    resamples: usize,
    seed: u64,
) -> Result<Bootstrap> {
    if resamples > MAX_RESAMPLES {
        return Err(err(format!(
            "--bootstrap {resamples}: at most {MAX_RESAMPLES} resamples"
        )));
    }
    let mut m = 0;
    let mut n = 0;
    for s in score_sets {
        (m, n) = check(s, positive)?;
    }
    let pos: Vec<usize> = (0..positive.len()).filter(|&i| positive[i]).collect();
    let neg: Vec<usize> = (0..positive.len()).filter(|&i| !positive[i]).collect();
    let ranked: Vec<Ranked> = score_sets.iter().map(|s| Ranked::new(s)).collect();
    let grid = band_grid();
    let mut rng = Rng::new(seed);
    let mut counts = vec![0u32; positive.len()];
    let mut aucs = Vec::with_capacity(resamples);
    // curves[set][grid point] = the resamples' TPRs there.
    let mut curves = vec![vec![Vec::with_capacity(resamples); grid.len()]; score_sets.len()];
    for _ in 0..resamples {
        counts.iter_mut().for_each(|c| *c = 0);
        for _ in 0..m {
            counts[pos[rng.below(m)]] += 1;
        }
        for _ in 0..n {
            counts[neg[rng.below(n)]] += 1;
        }
        aucs.push(
            ranked
                .iter()
                .map(|r| r.auroc(&counts, positive, m, n))
                .collect(),
        );
        for (s, r) in ranked.iter().enumerate() {
            for (g, t) in r
                .tpr_at(&counts, positive, m, n, &grid)
                .into_iter()
                .enumerate()
            {
                curves[s][g].push(t);
            }
        }
    }
    let bands = curves
        .iter()
        .map(|per_grid| {
            per_grid
                .iter()
                .map(|v| {
                    (
                        percentile(v, 2.5).unwrap_or(f64::NAN),
                        percentile(v, 97.5).unwrap_or(f64::NAN),
                    )
                })
                .unzip()
        })
        .collect();
    Ok(Bootstrap { aucs, bands })
}

/// The `q`-th percentile (0..=100) with linear interpolation between order statistics,
/// NumPy's default (`np.percentile(x, q)`, method `linear`). `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(v[lo] + (v[hi] - v[lo]) * frac)
}

/// The complementary error function, `erfc(x)`, to about 1e-15 absolute: the series
/// `erf(x) = 2/sqrt(pi) exp(-x^2) sum 2^k x^(2k+1) / (1*3*...*(2k+1))` (all terms
/// positive, no cancellation) for |x| <= 6, and the continued fraction of Laplace
/// (modified Lentz) above.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    let two_over_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    if x <= 6.0 {
        let x2 = x * x;
        let mut term = x;
        let mut sum = x;
        let mut k = 0f64;
        while term > sum * 1e-17 {
            k += 1.0;
            term *= 2.0 * x2 / (2.0 * k + 1.0);
            sum += term;
        }
        1.0 - two_over_sqrt_pi * (-x2).exp() * sum
    } else {
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))
        let tiny = 1e-300;
        let mut f = x;
        let mut c = x;
        let mut d = 0.0;
        for k in 1..200 {
            let a = k as f64 / 2.0;
            d = x + a * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = x + a / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        two_over_sqrt_pi / 2.0 * (-x * x).exp() / f
    }
}

/// Two-sided p-value of a standard normal statistic: `2 * norm.sf(|z|)`.
pub fn two_sided_p(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_resample_auroc_is_the_auroc_of_the_explicit_resample() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4];
        let l = [false, false, true, true, true, false, true, false];
        let counts = [2u32, 0, 1, 3, 1, 1, 0, 1];
        let (mut es, mut el) = (Vec::new(), Vec::new());
        for i in 0..s.len() {
            for _ in 0..counts[i] {
                es.push(s[i]);
                el.push(l[i]);
            }
        }
        let m = el.iter().filter(|&&p| p).count();
        let n = el.len() - m;
        let got = Ranked::new(&s).auroc(&counts, &l, m, n);
        assert!((got - auroc(&es, &el).unwrap()).abs() < 1e-15);
    }

    #[test]
    fn auroc_by_ranks_is_the_pair_count() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4];
        let l = [false, false, true, true, true, false, true, false];
        let mut num = 0.0;
        let mut pairs = 0.0;
        for i in 0..s.len() {
            for j in 0..s.len() {
                if l[i] && !l[j] {
                    pairs += 1.0;
                    num += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert_eq!(auroc(&s, &l).unwrap(), num / pairs);
        let d = delong(&[&s], &l).unwrap();
        assert!((d.aucs[0] - num / pairs).abs() < 1e-15);
    }

    #[test]
    fn percentile_interpolates_between_order_statistics() {
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 50.0), Some(2.5));
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 100.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
