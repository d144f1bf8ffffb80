//! In-graph preprocessing (`--preprocess rescale=R,mean=M,gray`) and test-time
//! augmentation (`--tta flips4`).
//!
//! The parser is local: `src/data/preprocess.rs`'s `Preprocess` also carries resizing
//! and per-image `target_scale`, which are not pointwise and stay on the host; this
//! type holds only what can run inside the graph and refuses the rest.

use crate::error::{Error, Result};
use serde::Serialize;
use std::str::FromStr;

/// `x * rescale - mean`, then grey duplicated to 3 channels when `gray` (only if the
/// model takes 3 channels).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InGraphPreprocess {
    pub rescale: f32,
    pub mean: f32,
    pub gray: bool,
}

impl Default for InGraphPreprocess {
    fn default() -> Self {
        InGraphPreprocess {
            rescale: 1.0,
            mean: 0.0,
            gray: false,
        }
    }
}

impl InGraphPreprocess {
    /// The formula on host data (one value).
    pub fn apply_value(&self, x: f32) -> f32 {
        x * self.rescale - self.mean
    }

    /// The spec string, as parsed.
    pub fn to_spec(&self) -> String {
        let mut s = format!("rescale={},mean={}", self.rescale, self.mean);
        if self.gray {
            s.push_str(",gray");
        }
        s
    }
}

impl FromStr for InGraphPreprocess {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let err = |m: String| Error::Other(format!("--preprocess {spec:?}: {m}"));
        let mut p = InGraphPreprocess::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            let num = |v: &str| {
                v.parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| err(format!("{k}: {v:?} is not a finite number")))
            };
            match (k, v) {
                ("gray" | "grey", None) => p.gray = true,
                ("channels", Some("3")) => p.gray = true,
                ("channels", Some("1")) => p.gray = false,
                ("rescale", Some(v)) => p.rescale = num(v)?,
                ("mean", Some(v)) => p.mean = num(v)?,
                ("size" | "target_scale", _) => {
                    return Err(err(format!(
                        "{k} is not pointwise and cannot run in the graph; apply it on the host"
                    )))
                }
                _ => {
                    return Err(err(format!(
                        "unknown item {item:?} (expected rescale=R, mean=M, gray)"
                    )))
                }
            }
        }
        Ok(p)
    }
}

/// Test-time augmentation built into the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    /// Mean of the outputs over the image, its horizontal flip, its vertical flip and
    /// both (spatial outputs are flipped back before averaging).
    Flips4,
}

impl FromStr for Tta {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "flips4" => Ok(Tta::Flips4),
            _ => Err(Error::Other(format!("--tta {s:?}: expected flips4"))),
        }
    }
}
