//! Area under the ROC curve, the paper's metric (`DMAucModelCheckpoint`: sklearn's
//! `roc_auc_score` on the positive class's probability), its curve, and a small PNG plot.
//!
//! The AUROC is the Mann-Whitney statistic: the probability that a random positive scores
//! above a random negative, ties counting one half, exactly what `roc_auc_score` returns
//! (the trapezoidal area under the curve through every distinct threshold).

use crate::error::{Error, Result};

/// AUROC of `scores` against binary `positive` labels. Errors when a class is absent (the
/// area is undefined, as sklearn's ValueError).
pub fn auroc(scores: &[f32], positive: &[bool]) -> Result<f64> {
    if scores.len() != positive.len() {
        return Err(Error::Other(format!(
            "auroc: {} scores for {} labels",
            scores.len(),
            positive.len()
        )));
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::Other(format!(
            "auroc: needs both classes ({n_pos} positive, {n_neg} negative)"
        )));
    }
    if scores.iter().any(|s| s.is_nan()) {
        return Err(Error::Other("auroc: a score is NaN".into()));
    }
    // Mid-ranks over ties, then the rank-sum statistic.
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if positive[k] {
                rank_sum_pos += mid;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Ok(u / (n_pos as f64 * n_neg as f64))
}

/// The ROC curve: (false positive rate, true positive rate) at every distinct threshold,
/// from (0, 0) to (1, 1).
pub fn roc_curve(scores: &[f32], positive: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = positive.iter().filter(|&&p| p).count().max(1) as f64;
    let n_neg = positive.iter().filter(|&&p| !p).count().max(1) as f64;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0f64, 0f64);
    let mut pts = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if positive[idx[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        pts.push((fp / n_neg, tp / n_pos));
    }
    pts
}

/// The curve drawn on a white `size` x `size` canvas (axes, chance diagonal, curve), as an
/// RGB PNG written atomically.
pub fn write_roc_png(points: &[(f64, f64)], path: &std::path::Path, size: u32) -> Result<()> {
    let size = size.max(64);
    let mut img = image::RgbImage::from_pixel(size, size, image::Rgb([255, 255, 255]));
    let m = 8i64;
    let span = (size as i64 - 2 * m) as f64;
    let to_px = |(x, y): (f64, f64)| {
        (
            m + (x.clamp(0.0, 1.0) * span).round() as i64,
            size as i64 - 1 - m - (y.clamp(0.0, 1.0) * span).round() as i64,
        )
    };
    let mut line = |a: (i64, i64), b: (i64, i64), c: [u8; 3]| {
        let n = (b.0 - a.0).abs().max((b.1 - a.1).abs()).max(1);
        for t in 0..=n {
            let x = a.0 + (b.0 - a.0) * t / n;
            let y = a.1 + (b.1 - a.1) * t / n;
            if (0..size as i64).contains(&x) && (0..size as i64).contains(&y) {
                img.put_pixel(x as u32, y as u32, image::Rgb(c));
            }
        }
    };
    line(to_px((0.0, 0.0)), to_px((1.0, 0.0)), [0, 0, 0]);
    line(to_px((0.0, 0.0)), to_px((0.0, 1.0)), [0, 0, 0]);
    line(to_px((0.0, 0.0)), to_px((1.0, 1.0)), [190, 190, 190]);
    for w in points.windows(2) {
        line(to_px(w[0]), to_px(w[1]), [200, 30, 30]);
    }
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::Io {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::Io {
        file: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_is_the_rank_statistic_with_ties() {
        let y = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &y).unwrap(), 0.75);
        assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.4], &y).unwrap(), 1.0);
        assert_eq!(auroc(&[0.5, 0.5, 0.5, 0.5], &y).unwrap(), 0.5);
        assert!(auroc(&[0.1, 0.2], &[true, true]).is_err());
        // The trapezoidal area under the curve is the same number.
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2];
        let l = [false, false, true, true, true, false, true];
        let pts = roc_curve(&s, &l);
        let area: f64 = pts
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - auroc(&s, &l).unwrap()).abs() < 1e-12);
        assert_eq!(*pts.last().unwrap(), (1.0, 1.0));
    }
}
