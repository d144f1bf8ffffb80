//! Which preprocessing runs where (host or in-graph) and where the parameters came from.

use super::engine::{InGraph, Model};
use super::{Res, ScoreOptions};
use crate::data::Preprocess;

pub(crate) struct Plan {
    /// What runs on the host (resize, target_scale, rescale, mean, channels).
    pub(crate) host: Preprocess,
    /// The preprocessing in effect, host and in-graph together (judges value ranges).
    pub(crate) effective: Preprocess,
    /// After `host`, map y -> (y + mean_g) / rescale_g so that the in-graph
    /// preprocessing gives back y (a `--preprocess` overriding the metadata).
    pub(crate) compensate: Option<InGraph>,
    /// The effective parameters, as a spec.
    pub(crate) spec: String,
    pub(crate) source: String,
    pub(crate) tta: &'static str,
    /// tract, ort or torch.
    pub(crate) engine: &'static str,
}

pub(crate) fn plan_preprocess(opts: &ScoreOptions, m: &Model) -> Res<Plan> {
    let flag: Option<Preprocess> = match &opts.preprocess {
        Some(s) => Some(
            s.parse()
                .map_err(|e: crate::data::DataError| e.to_string())?,
        ),
        None => None,
    };
    let mut eff = match (&flag, &m.in_graph_pre) {
        (Some(p), _) => p.clone(),
        (None, Some(g)) => Preprocess {
            rescale: g.rescale,
            mean: g.mean,
            channels: if g.gray { 3 } else { 1 },
            ..Default::default()
        },
        (None, None) => Preprocess::default(),
    };
    let source = match (&flag, &m.in_graph_pre) {
        (Some(_), Some(_)) => "--preprocess (overrides the ONNX metadata's in-graph preprocessing)",
        (Some(_), None) => "--preprocess",
        (None, Some(_)) => "ONNX metadata (allconv.preprocess, applied in-graph)",
        (None, None) => "none (no --preprocess, no ONNX metadata): raw pixel values",
    }
    .to_string();
    // Resize target: the model's static size, else size= of the spec, else the image's.
    if let Some((h, w)) = m.fixed_hw {
        if let Some(t) = eff.target {
            if t != (h, w) {
                return Err(format!(
                    "--preprocess size={}x{} conflicts with the model's static input size {h}x{w}",
                    t.0, t.1
                ));
            }
        }
        eff.target = Some((h, w));
    }
    let model_channels = match &m.in_graph_pre {
        Some(g) if g.gray => 3,
        _ => m.channels,
    };
    if model_channels != 1 && model_channels != 3 {
        return Err(format!(
            "the model takes {model_channels} input channels; predict feeds grey images to 1- or 3-channel models"
        ));
    }
    eff.channels = model_channels;
    let spec = eff.to_string();
    let mut host = eff.clone();
    if m.grey_folded {
        host.channels = 1;
    }
    let mut compensate = None;
    if let Some(g) = m.in_graph_pre {
        host.channels = m.channels;
        if flag.is_none() || (eff.rescale == g.rescale && eff.mean == g.mean) {
            host.rescale = 1.0;
            host.mean = 0.0;
        } else {
            if g.rescale == 0.0 {
                return Err(
                    "the in-graph preprocessing has rescale=0 and cannot be overridden".into(),
                );
            }
            compensate = Some(g);
        }
    }
    let tta = match (opts.tta, m.in_graph_tta) {
        (_, true) => "in-graph (ONNX metadata allconv.tta; not repeated on the host)",
        (true, false) => "host (4 flips)",
        (false, false) => "off",
    };
    Ok(Plan {
        host,
        effective: eff,
        compensate,
        spec,
        source,
        tta,
        engine: m.engine_name(),
    })
}
