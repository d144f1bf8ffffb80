//! Keras weight regularisers (`kernel_regularizer` and friends) read from the model's
//! config, as penalty terms added to the loss: `l1 * sum(|w|) + l2 * sum(w^2)`.

use super::schedule::{L2Reassign, L2Scope};
use super::Flavour;
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::keras::config::{self, ModelConfig};
use crate::torch::TorchModel;
use serde_json::Value;
use tch::Tensor;

/// One weight's penalty.
#[derive(Debug, Clone, PartialEq)]
pub struct Regularizer {
    /// Keras layer path (`model_1/conv1`).
    pub layer: String,
    /// Weight slot (`kernel`, `bias`, `gamma`...).
    pub slot: String,
    pub l1: f64,
    pub l2: f64,
}

/// Every penalty term of a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Regularizers {
    pub terms: Vec<Regularizer>,
}

/// Config key of a regulariser -> the weight slot it penalises.
const KEYS: [(&str, &str); 9] = [
    ("kernel_regularizer", "kernel"),
    ("bias_regularizer", "bias"),
    ("gamma_regularizer", "gamma"),
    ("beta_regularizer", "beta"),
    ("depthwise_regularizer", "depthwise_kernel"),
    ("pointwise_regularizer", "pointwise_kernel"),
    ("alpha_regularizer", "alpha"),
    // Keras 1
    ("W_regularizer", "kernel"),
    ("b_regularizer", "bias"),
];

/// Classes `do_2stage_training` re-assigns the L2 of (`isinstance(layer, Dense)` or
/// `Conv2D`; SeparableConv2D and Conv2DTranspose subclass Conv2D).
const REASSIGNED_CLASSES: [&str; 5] = [
    "Dense",
    "Conv2D",
    "Convolution2D",
    "SeparableConv2D",
    "Conv2DTranspose",
];

/// `(l1, l2)` of a serialised regulariser, `None` for `null`.
fn parse_regularizer(v: &Value, what: &str) -> Result<Option<(f64, f64)>> {
    if v.is_null() {
        return Ok(None);
    }
    let bad = |m: &str| Error::Other(format!("{what}: {m}: {v}"));
    let obj = v.as_object().ok_or_else(|| bad("not an object"))?;
    // Keras 2: {"class_name": "L1L2", "config": {...}}; tf-keras: "L2" / "L1" too.
    // Keras 1: {"name": "L1L2Regularizer", "l1": .., "l2": ..}.
    let (class, cfg) = match (obj.get("class_name"), obj.get("config")) {
        (Some(c), Some(cfg)) => (c.as_str().unwrap_or(""), cfg),
        _ => (obj.get("name").and_then(Value::as_str).unwrap_or(""), v),
    };
    let known = matches!(
        class,
        "L1L2" | "L1" | "L2" | "l1_l2" | "l1" | "l2" | "L1L2Regularizer" | "WeightRegularizer"
    );
    if !known {
        return Err(bad("unsupported regularizer (only L1/L2/L1L2)"));
    }
    let num = |k: &str| -> Result<f64> {
        match cfg.get(k) {
            None | Some(Value::Null) => Ok(0.0),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or_else(|| bad(&format!("{k} is not a non-negative number"))),
        }
    };
    let (l1, l2) = (num("l1")?, num("l2")?);
    Ok(Some((l1, l2)))
}

impl Regularizers {
    /// The penalties the model's config declares (`graph.source.model_config`), for the
    /// weights the graph has. An `activity_regularizer` or a regulariser other than
    /// L1/L2/L1L2 is refused.
    pub fn from_graph(g: &Graph) -> Result<Regularizers> {
        let text = g.source.model_config.as_deref().ok_or_else(|| {
            Error::Other("the model has no config to read its regularizers from".into())
        })?;
        let root = config::parse_json(text).map_err(Error::Other)?;
        let model = config::parse_model(&root).map_err(Error::Other)?;
        let mut terms = Vec::new();
        collect(&model, "", g, &mut terms)?;
        Ok(Regularizers { terms })
    }

    /// `do_2stage_training`'s loop: every top-level Dense/Conv2D layer that has a kernel
    /// regulariser gets `l2` (its l1 kept); layers without one stay without (Keras's
    /// `AttributeError` branch), nested models' layers are untouched. Whether Keras's
    /// loss sees it depends on the flavour ([`Flavour::l2_reassignment_counts`]); see
    /// [`Regularizers::stage_weight_decay`].
    pub fn reassign_top_level(&mut self, g: &Graph, l2: f64) -> usize {
        let mut n = 0;
        for t in &mut self.terms {
            let top = g
                .layers
                .iter()
                .find(|r| r.path == t.layer)
                .is_some_and(|r| r.depth == 0 && REASSIGNED_CLASSES.contains(&r.class.as_str()));
            if top && t.slot == "kernel" {
                t.l2 = l2;
                n += 1;
            }
        }
        n
    }

    /// A stage's `weight_decay` as genuine Keras of `flavour` applies it: re-assigned in
    /// tf-keras, ignored (the as-built penalties stay) in Keras 2.0.8. Returns whether it
    /// changed anything.
    pub fn stage_weight_decay(&mut self, g: &Graph, l2: f64, flavour: Flavour) -> bool {
        flavour.l2_reassignment_counts() && self.reassign_top_level(g, l2) > 0
    }

    /// A schedule stage's re-assigned L2 ([`L2Reassign`]) as genuine Keras of `flavour`
    /// applies it: over its scope in tf-keras, not at all in Keras 2.0.8.
    pub fn stage_reassign(&mut self, g: &Graph, w: L2Reassign, flavour: Flavour) -> bool {
        if !flavour.l2_reassignment_counts() {
            return false;
        }
        match w.scope {
            L2Scope::DenseAndConv => self.reassign_top_level(g, w.l2) > 0,
            L2Scope::LastLayer => {
                // `org_model.layers[-1].kernel_regularizer.l2 = ...`: only where it has one.
                let last = g
                    .layers
                    .iter()
                    .rev()
                    .find(|r| r.depth == 0)
                    .map(|r| r.path.clone());
                let mut n = 0;
                for t in &mut self.terms {
                    if Some(&t.layer) == last.as_ref() && t.slot == "kernel" {
                        t.l2 = w.l2;
                        n += 1;
                    }
                }
                n > 0
            }
        }
    }

    /// The total penalty on the model's current weights (a scalar in the autograd graph).
    pub fn penalty(&self, model: &TorchModel) -> Result<Tensor> {
        let e = |m: tch::TchError| Error::Other(format!("tch: regularizer: {m}"));
        let mut total: Option<Tensor> = None;
        for t in &self.terms {
            if t.l1 == 0.0 && t.l2 == 0.0 {
                continue;
            }
            let w = model.variable(&t.layer, &t.slot)?;
            let mut term: Option<Tensor> = None;
            if t.l1 != 0.0 {
                term = Some(
                    w.f_abs()
                        .and_then(|a| a.f_sum(None))
                        .and_then(|s| s.f_mul_scalar(t.l1))
                        .map_err(e)?,
                );
            }
            if t.l2 != 0.0 {
                let sq = w
                    .f_square()
                    .and_then(|a| a.f_sum(None))
                    .and_then(|s| s.f_mul_scalar(t.l2))
                    .map_err(e)?;
                term = Some(match term {
                    Some(a) => a.f_add(&sq).map_err(e)?,
                    None => sq,
                });
            }
            if let Some(term) = term {
                total = Some(match total {
                    Some(a) => a.f_add(&term).map_err(e)?,
                    None => term,
                });
            }
        }
        match total {
            Some(t) => Ok(t),
            None => Tensor::f_zeros([], (model.kind, model.device())).map_err(e),
        }
    }
}

fn collect(m: &ModelConfig, prefix: &str, g: &Graph, out: &mut Vec<Regularizer>) -> Result<()> {
    for l in &m.layers {
        let path = format!("{prefix}{}", l.name);
        if let Some(n) = &l.nested {
            collect(n, &format!("{path}/"), g, out)?;
            continue;
        }
        let Some(cfg) = l.config.as_object() else {
            continue;
        };
        if cfg
            .get("activity_regularizer")
            .is_some_and(|v| !v.is_null())
        {
            return Err(Error::Other(format!(
                "layer {path}: activity_regularizer is not supported in training"
            )));
        }
        for (key, slot) in KEYS {
            let Some(v) = cfg.get(key) else { continue };
            let what = format!("layer {path}: {key}");
            let Some((l1, l2)) = parse_regularizer(v, &what)? else {
                continue;
            };
            if !g.params.contains_key(&format!("{path}.{slot}")) {
                continue; // e.g. bias_regularizer with use_bias=False
            }
            out.push(Regularizer {
                layer: path.clone(),
                slot: slot.to_string(),
                l1,
                l2,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn regularizer_forms() {
        let k2 = json!({"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.005}});
        assert_eq!(parse_regularizer(&k2, "x").unwrap(), Some((0.0, 0.005)));
        let tfk = json!({"module": "keras.regularizers", "class_name": "L2",
                         "config": {"l2": 0.01}, "registered_name": null});
        assert_eq!(parse_regularizer(&tfk, "x").unwrap(), Some((0.0, 0.01)));
        let k1 = json!({"name": "L1L2Regularizer", "l1": 0.1, "l2": 0.0});
        assert_eq!(parse_regularizer(&k1, "x").unwrap(), Some((0.1, 0.0)));
        assert_eq!(parse_regularizer(&Value::Null, "x").unwrap(), None);
        let other = json!({"class_name": "OrthogonalRegularizer", "config": {"factor": 0.01}});
        assert!(parse_regularizer(&other, "x").is_err());
    }
}
