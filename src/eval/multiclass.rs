//! Metrics of a K-class model from its class probabilities: accuracy, per-class recall,
//! the confusion matrix and one-vs-rest AUROCs (scikit-learn's conventions).

use super::binary::auroc;
use crate::error::{Error, Result};

/// The multi-class summary of one set of probabilities.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MultiClass {
    /// Share of images whose highest probability is their own class (ties: the first
    /// class, as `np.argmax`).
    pub accuracy: f64,
    /// Per class: the share of its images predicted as it (`null` for a class with no
    /// image).
    pub recall: Vec<Option<f64>>,
    /// `confusion[true][predicted]`: counts, rows the true class (scikit-learn's
    /// `confusion_matrix`).
    pub confusion: Vec<Vec<u64>>,
    /// Per class: AUROC of its probability for "this class vs the rest" (`null` when the
    /// class is absent or alone).
    pub ovr_auroc: Vec<Option<f64>>,
    /// The unweighted mean of the one-vs-rest AUROCs (`roc_auc_score(multi_class="ovr",
    /// average="macro")`), when every one is defined.
    pub macro_ovr_auroc: Option<f64>,
}

/// `np.argmax`: the first index of the largest value.
pub fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (k, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = k;
        }
    }
    best
}

/// Metrics of `probs` (one row of `classes` probabilities per image) against `labels`.
pub fn multiclass(probs: &[Vec<f64>], labels: &[usize], classes: usize) -> Result<MultiClass> {
    if probs.len() != labels.len() {
        return Err(Error::Other(format!(
            "{} rows of probabilities for {} labels",
            probs.len(),
            labels.len()
        )));
    }
    if probs.is_empty() {
        return Err(Error::Other("no images to evaluate".into()));
    }
    for (i, (p, &l)) in probs.iter().zip(labels).enumerate() {
        if p.len() != classes {
            return Err(Error::Other(format!(
                "row {i}: {} probabilities for {classes} classes",
                p.len()
            )));
        }
        if l >= classes {
            return Err(Error::Other(format!(
                "row {i}: label {l} outside the {classes} classes"
            )));
        }
    }
    let mut confusion = vec![vec![0u64; classes]; classes];
    for (p, &l) in probs.iter().zip(labels) {
        confusion[l][argmax(p)] += 1;
    }
    let correct: u64 = (0..classes).map(|k| confusion[k][k]).sum();
    let accuracy = correct as f64 / probs.len() as f64;
    let recall = (0..classes)
        .map(|k| {
            let row: u64 = confusion[k].iter().sum();
            (row > 0).then(|| confusion[k][k] as f64 / row as f64)
        })
        .collect();
    let ovr_auroc: Vec<Option<f64>> = (0..classes)
        .map(|k| {
            let s: Vec<f64> = probs.iter().map(|p| p[k]).collect();
            let y: Vec<bool> = labels.iter().map(|&l| l == k).collect();
            auroc(&s, &y).ok()
        })
        .collect();
    let macro_ovr_auroc = if ovr_auroc.iter().all(Option::is_some) {
        Some(ovr_auroc.iter().flatten().sum::<f64>() / classes as f64)
    } else {
        None
    };
    Ok(MultiClass {
        accuracy,
        recall,
        confusion,
        ovr_auroc,
        macro_ovr_auroc,
    })
}
