//! Area under the ROC curve, the paper's metric (`DMAucModelCheckpoint`: sklearn's
//! `roc_auc_score` on the positive class's probability), for `f32` model outputs.
//!
//! The metrics themselves (the curve, intervals, operating points, the ROC plot) live in
//! [`crate::eval`]; this is the AUROC the training loop tracks, computed there.

use crate::error::Result;

/// AUROC of `scores` against binary `positive` labels: the Mann-Whitney statistic, ties
/// counting one half ([`crate::eval::binary::auroc`]). Errors when a class is absent (the
/// area is undefined, as sklearn's ValueError) or a score is not finite.
pub fn auroc(scores: &[f32], positive: &[bool]) -> Result<f64> {
    let s: Vec<f64> = scores.iter().map(|&v| f64::from(v)).collect();
    crate::eval::binary::auroc(&s, positive)
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
        assert!(auroc(&[f32::NAN, 0.2], &[true, false]).is_err());
    }
}
