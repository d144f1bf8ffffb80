//! Evaluation of a classifier's scores on a labelled test set (`allconv evaluate`, and the
//! test-set reports of `finetune`): AUROC with its uncertainty, operating points, the
//! gain from test-time augmentation, multi-class summaries, the per-image scores CSV and
//! the ROC plot.
//!
//! Everything here works on a [`ScoreTable`] (path, label, probabilities), so the same
//! numbers come from a model run and from a scores CSV read back.
//!
//! - [`binary`]: AUROC (Mann-Whitney with ties; scikit-learn's `roc_auc_score`), the ROC
//!   curve (`roc_curve`), DeLong's variance (fast DeLong of Sun and Xu, 2014), the
//!   stratified percentile bootstrap, the Youden point and the sensitivity at a chosen
//!   specificity.
//! - [`multiclass`]: accuracy, per-class recall, confusion matrix, one-vs-rest AUROCs.
//! - [`table`]: the scores CSV and manifest CSV.
//! - [`plot`]: the ROC curve as a PNG (plotters).

pub mod binary;
pub mod multiclass;
pub mod plot;
pub mod table;

pub use binary::{OperatingPoint, RocCurve};
pub use multiclass::MultiClass;
pub use table::ScoreTable;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// What to compute.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The class whose probability is the score (default: the last class).
    pub positive_class: Option<String>,
    /// Bootstrap resamples (0: no bootstrap interval).
    pub bootstrap: usize,
    pub seed: u64,
    /// Report the sensitivity at this specificity.
    pub at_specificity: f64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            positive_class: None,
            bootstrap: 2000,
            seed: 0,
            at_specificity: 0.9,
        }
    }
}

/// The AUROC of one set of scores and its uncertainty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AurocReport {
    pub auroc: f64,
    /// 95% percentile bootstrap interval (stratified by class); `null` without bootstrap.
    pub ci_bootstrap: Option<[f64; 2]>,
    /// DeLong's variance of the AUROC; `null` with fewer than 2 images of a class.
    pub delong_variance: Option<f64>,
    pub delong_se: Option<f64>,
    /// `auroc ± 1.96 * delong_se`, clipped to [0, 1].
    pub ci_delong: Option<[f64; 2]>,
    /// The threshold with the highest sensitivity + specificity - 1.
    pub youden: Option<OperatingPoint>,
    /// The highest sensitivity whose specificity is at least `EvalOptions::at_specificity`.
    pub at_specificity: Option<OperatingPoint>,
    /// The ROC curve as scikit-learn's `roc_curve` returns it (collinear points dropped).
    pub roc: RocCurve,
    /// Bootstrap band of the curve: false positive rates and the 2.5th / 97.5th
    /// percentiles of the true positive rate there.
    pub roc_band: Option<RocBand>,
}

/// A pointwise bootstrap band around a ROC curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocBand {
    pub fpr: Vec<f64>,
    pub tpr_lower: Vec<f64>,
    pub tpr_upper: Vec<f64>,
}

/// TTA AUROC minus single-view AUROC, on the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    pub difference: f64,
    /// 95% percentile interval of the difference over paired bootstrap resamples.
    pub ci_bootstrap: Option<[f64; 2]>,
    /// DeLong's variance of the difference: var(a) + var(b) - 2 cov(a, b).
    pub delong_variance: Option<f64>,
    pub delong_se: Option<f64>,
    pub ci_delong: Option<[f64; 2]>,
    /// `difference / delong_se` and its two-sided normal p-value.
    pub z: Option<f64>,
    pub p_value: Option<f64>,
}

/// Binary metrics: the positive class's probability as the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryReport {
    pub positive_class: String,
    pub positives: usize,
    pub negatives: usize,
    /// The specificity `at_specificity` was asked for.
    pub target_specificity: f64,
    /// Single view (or the model's own output where TTA is in its graph).
    pub single: AurocReport,
    /// 4-flip TTA, where it ran on the host.
    pub tta: Option<AurocReport>,
    pub tta_minus_single: Option<PairedDifference>,
}

/// The whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub images: usize,
    pub classes: Vec<String>,
    pub class_counts: Vec<usize>,
    pub ci_level: f64,
    pub bootstrap_resamples: usize,
    /// Seed of the bootstrap's generator (xoshiro256**, SplitMix64 seeding).
    pub seed: u64,
    /// Present for two classes, or for any number with a positive class named.
    pub binary: Option<BinaryReport>,
    pub multiclass: MultiClass,
    pub multiclass_tta: Option<MultiClass>,
}

fn ci(lo: f64, hi: f64) -> [f64; 2] {
    [lo, hi]
}

/// Evaluates a score table.
pub fn evaluate(t: &ScoreTable, o: &EvalOptions) -> Result<EvalReport> {
    let k = t.classes.len();
    if !(0.0..=1.0).contains(&o.at_specificity) {
        return Err(Error::Other(format!(
            "--at-specificity {}: expected a number in [0, 1]",
            o.at_specificity
        )));
    }
    let multiclass = multiclass::multiclass(&t.probs, &t.labels, k)?;
    let multiclass_tta = match &t.probs_tta {
        Some(p) => Some(multiclass::multiclass(p, &t.labels, k)?),
        None => None,
    };
    let positive = match &o.positive_class {
        Some(name) => Some(t.classes.iter().position(|c| c == name).ok_or_else(|| {
            Error::Other(format!(
                "--positive-class {name:?} is not one of the classes {:?}",
                t.classes
            ))
        })?),
        None => (k == 2).then_some(1),
    };
    let binary = match positive {
        Some(pc) => Some(binary_report(t, pc, o)?),
        None => None,
    };
    let mut class_counts = vec![0; k];
    for &l in &t.labels {
        class_counts[l] += 1;
    }
    Ok(EvalReport {
        images: t.paths.len(),
        classes: t.classes.clone(),
        class_counts,
        ci_level: 0.95,
        bootstrap_resamples: o.bootstrap,
        seed: o.seed,
        binary,
        multiclass,
        multiclass_tta,
    })
}

fn binary_report(t: &ScoreTable, pc: usize, o: &EvalOptions) -> Result<BinaryReport> {
    let y: Vec<bool> = t.labels.iter().map(|&l| l == pc).collect();
    let single: Vec<f64> = t.probs.iter().map(|p| p[pc]).collect();
    let tta: Option<Vec<f64>> = t
        .probs_tta
        .as_ref()
        .map(|p| p.iter().map(|p| p[pc]).collect());
    let mut sets: Vec<&[f64]> = vec![&single];
    if let Some(s) = &tta {
        sets.push(s);
    }
    let what = |e: Error| {
        Error::Other(format!(
            "positive class {:?}: {}",
            t.classes[pc],
            e.message()
        ))
    };
    let aucs: Vec<f64> = sets
        .iter()
        .map(|s| binary::auroc(s, &y))
        .collect::<Result<_>>()
        .map_err(what)?;
    let dl = binary::delong(&sets, &y).ok();
    let boot = if o.bootstrap > 0 {
        Some(binary::bootstrap(&sets, &y, o.bootstrap, o.seed).map_err(what)?)
    } else {
        None
    };
    let grid = binary::band_grid();
    let mut reports = Vec::new();
    for (i, s) in sets.iter().enumerate() {
        let var = dl.as_ref().map(|d| d.cov[i][i]);
        let se = var.map(|v| v.max(0.0).sqrt());
        let full = binary::roc_curve(s, &y, false)?;
        reports.push(AurocReport {
            auroc: aucs[i],
            ci_bootstrap: boot.as_ref().and_then(|b| {
                let v: Vec<f64> = b.aucs.iter().map(|r| r[i]).collect();
                Some(ci(
                    binary::percentile(&v, 2.5)?,
                    binary::percentile(&v, 97.5)?,
                ))
            }),
            delong_variance: var,
            delong_se: se,
            ci_delong: se.map(|se| {
                ci(
                    (aucs[i] - binary::Z_95 * se).max(0.0),
                    (aucs[i] + binary::Z_95 * se).min(1.0),
                )
            }),
            youden: binary::youden(&full),
            at_specificity: binary::at_specificity(&full, o.at_specificity),
            roc: binary::roc_curve(s, &y, true)?,
            roc_band: boot.as_ref().map(|b| RocBand {
                fpr: grid.clone(),
                tpr_lower: b.bands[i].0.clone(),
                tpr_upper: b.bands[i].1.clone(),
            }),
        });
    }
    let diff = (sets.len() == 2).then(|| {
        let d = aucs[1] - aucs[0];
        let var = dl
            .as_ref()
            .map(|dl| dl.cov[0][0] + dl.cov[1][1] - 2.0 * dl.cov[0][1]);
        let se = var.map(|v| v.max(0.0).sqrt());
        let z = se.filter(|&s| s > 0.0).map(|s| d / s);
        PairedDifference {
            difference: d,
            ci_bootstrap: boot.as_ref().and_then(|b| {
                let v: Vec<f64> = b.aucs.iter().map(|r| r[1] - r[0]).collect();
                Some(ci(
                    binary::percentile(&v, 2.5)?,
                    binary::percentile(&v, 97.5)?,
                ))
            }),
            delong_variance: var,
            delong_se: se,
            ci_delong: se.map(|se| ci(d - binary::Z_95 * se, d + binary::Z_95 * se)),
            z,
            p_value: z.map(binary::two_sided_p),
        }
    });
    let mut it = reports.into_iter();
    let single = it
        .next()
        .ok_or_else(|| Error::Other("internal: no scores".into()))?;
    Ok(BinaryReport {
        positive_class: t.classes[pc].clone(),
        positives: y.iter().filter(|&&p| p).count(),
        negatives: y.iter().filter(|&&p| !p).count(),
        target_specificity: o.at_specificity,
        single,
        tta: it.next(),
        tta_minus_single: diff,
    })
}
