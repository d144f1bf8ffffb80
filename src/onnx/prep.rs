//! In-graph preprocessing (`--preprocess rescale=R,mean=M,gray`) and test-time
//! augmentation (`--tta flips4`).
//!
//! The spec is parsed by `src/data/preprocess.rs` (`Preprocess`); resizing and the
//! per-image `target_scale` are not pointwise and stay on the host, so they are refused.

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

    /// The `src/data` parser (`rescale=R,mean=M,gray`), keeping only the pointwise part.
    fn from_str(spec: &str) -> Result<Self> {
        let p = crate::data::Preprocess::from_str(spec)
            .map_err(|e| Error::Other(format!("--preprocess: {e}")))?;
        if p.target.is_some() || p.target_scale.is_some() {
            return Err(Error::Other(format!(
                "--preprocess {spec:?}: size/target_scale are not pointwise and cannot run in the graph; apply them on the host"
            )));
        }
        Ok(InGraphPreprocess {
            rescale: p.rescale,
            mean: p.mean,
            gray: p.channels == 3,
        })
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
