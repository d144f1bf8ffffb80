//! `verify --backend torch`: run the IR on libtorch against a genuine-Keras `io.npz`
//! (`input`, `output`, `layer/<path>`), with the report type of [`crate::verify`].

use super::{from_host, to_host, SameRule, TorchModel};
use crate::error::{Error, Result};
use crate::ir::{Graph, Producer};
use crate::onnx::meta::Array;
use crate::verify::npz::read_npz;
use crate::verify::{
    compare, layer_atol, order_layers, reference_inputs, TensorCmp, VerifyReport, DEFAULT_ATOL,
    DEFAULT_RTOL,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

#[derive(Debug, Clone)]
pub struct TorchVerifyOptions {
    pub device: Device,
    pub per_layer: bool,
    pub atol: f32,
    pub rtol: f32,
    /// Override the `same`-padding rule (default: the one of the model's backend).
    pub same_rule: Option<SameRule>,
    /// A second `.npz` whose arrays replace those of the reference with the same name
    /// (e.g. a fixture's `io_tf.npz`, with `same_rule: Some(SameRule::TensorFlow)`).
    pub overlay: Option<PathBuf>,
    /// Per-layer tolerance scaled by the layer's range, `atol * max(1, max|ref|)`, as in
    /// `verify::VerifyOptions::layer_atol_scaled` (outputs keep `atol`).
    pub layer_atol_scaled: bool,
    /// Compute precision (`Kind::Double`: a float64 run of the same graph).
    pub kind: Kind,
    /// Run the graph with BatchNormalization folded into its convolutions, as `predict`
    /// runs a Keras file on libtorch; the folded convolutions' own outputs are skipped.
    pub fold_bn: bool,
}

impl Default for TorchVerifyOptions {
    fn default() -> Self {
        TorchVerifyOptions {
            device: Device::Cpu,
            per_layer: false,
            atol: DEFAULT_ATOL,
            rtol: DEFAULT_RTOL,
            same_rule: None,
            overlay: None,
            layer_atol_scaled: false,
            kind: Kind::Float,
            fold_bn: false,
        }
    }
}

fn max_err(cmps: &[TensorCmp]) -> f32 {
    cmps.iter().fold(0f32, |m, c| {
        if c.max_abs_err.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(c.max_abs_err)
        }
    })
}

/// IR -> tch on `device`, against `reference`; per-layer when asked.
pub fn verify_torch(
    g: &Graph,
    reference: &Path,
    device: Device,
    per_layer: bool,
    atol: f32,
    rtol: f32,
) -> Result<VerifyReport> {
    let opts = TorchVerifyOptions {
        device,
        per_layer,
        atol,
        rtol,
        ..Default::default()
    };
    verify_torch_with(g, &g.source.file, reference, &opts)
}

/// [`verify_torch`] with every option; `label` names the model in the report.
pub fn verify_torch_with(
    g: &Graph,
    label: &str,
    reference: &Path,
    opts: &TorchVerifyOptions,
) -> Result<VerifyReport> {
    let mut refs = read_npz(reference)?;
    if let Some(o) = &opts.overlay {
        refs.extend(read_npz(o)?);
    }
    let mut reference_label = reference.display().to_string();
    if let Some(o) = &opts.overlay {
        reference_label += &format!(" + {}", o.display());
    }
    verify_torch_refs(g, label, &refs, &reference_label, opts)
}

/// [`verify_torch_with`] against reference arrays already in memory (`input`, `output`,
/// `layer/<path>`), `reference` naming them in the report; `opts.overlay` is not read.
pub fn verify_torch_refs(
    g: &Graph,
    label: &str,
    refs: &BTreeMap<String, Array>,
    reference: &str,
    opts: &TorchVerifyOptions,
) -> Result<VerifyReport> {
    let inputs = reference_inputs(refs, g.inputs.len(), Path::new(reference))?;
    let want = refs
        .get("output")
        .ok_or_else(|| Error::Other(format!("{reference}: no `output` array")))?;
    let folding = opts
        .fold_bn
        .then(|| crate::passes::fold_batch_norm(g))
        .transpose()?;
    let (g, folded) = match &folding {
        Some((folded_graph, report)) => (folded_graph, Some(report.clone())),
        None => (g, None),
    };
    let mut model = TorchModel::new(g, opts.device)?;
    if opts.kind != Kind::Float {
        model = model.with_kind(opts.kind);
    }
    if let Some(r) = opts.same_rule {
        model = model.with_same_rule(r);
    }
    let xs = inputs
        .iter()
        .map(|a| from_host(&a.shape, &a.data, opts.device))
        .collect::<Result<Vec<_>>>()?;
    let (out0, values) = if opts.per_layer {
        let values = model.forward_values(&xs)?;
        let o = g
            .outputs
            .first()
            .and_then(|&o| values.get(o).and_then(Option::as_ref))
            .ok_or_else(|| Error::Other("the model has no output".into()))?;
        (to_host(o)?, values)
    } else {
        let outs = model.forward_outputs(&xs, false)?;
        let o = outs
            .first()
            .ok_or_else(|| Error::Other("the model has no output".into()))?;
        (to_host(o)?, vec![])
    };
    let outputs = vec![compare(
        "output",
        &out0.data,
        &out0.shape,
        &want.data,
        &want.shape,
        opts.atol,
        opts.rtol,
    )];

    let mut layers = Vec::new();
    let mut first_div = None;
    let mut skipped = Vec::new();
    if opts.per_layer {
        let mut rows: Vec<(usize, TensorCmp)> = Vec::new();
        for (key, arr) in refs.iter().filter(|(k, _)| k.starts_with("layer/")) {
            let path = &key["layer/".len()..];
            if folded
                .as_ref()
                .is_some_and(|f| f.vanished_layers.iter().any(|l| l == path))
            {
                skipped.push((
                    path.to_string(),
                    "folded into the following BatchNormalization".into(),
                ));
                continue;
            }
            let Some(v) = g
                .layers
                .iter()
                .find(|l| l.path == path)
                .and_then(|r| r.output)
            else {
                skipped.push((path.to_string(), "no IR value for this layer".into()));
                continue;
            };
            let idx = match g.values[v].producer {
                Producer::Node(i) => i,
                Producer::Input(_) => {
                    skipped.push((path.to_string(), "a graph input".into()));
                    continue;
                }
            };
            let Some(t) = values.get(v).and_then(Option::as_ref) else {
                skipped.push((path.to_string(), "not computed".into()));
                continue;
            };
            let h = to_host(t)?;
            let atol = layer_atol(opts.atol, opts.layer_atol_scaled, &arr.data);
            rows.push((
                idx,
                compare(
                    path, &h.data, &h.shape, &arr.data, &arr.shape, atol, opts.rtol,
                ),
            ));
        }
        (layers, first_div) = order_layers(rows);
    }
    let passed = outputs.iter().chain(&layers).all(|c| c.passed);
    let mut all = outputs.clone();
    all.extend(layers.iter().cloned());
    Ok(VerifyReport {
        model: label.into(),
        reference: reference.to_string(),
        backend: format!("torch ({})", device_name(opts.device)),
        atol: opts.atol,
        rtol: opts.rtol,
        max_abs_err: max_err(&all),
        passed,
        outputs,
        layers,
        first_diverging_layer: first_div,
        skipped_layers: skipped,
        folded,
        subsampled: None,
    })
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The graph run in float64 on libtorch, on the reference's input with the same (float32)
/// weights: arithmetic free of float32 rounding, the anchor that separates a runtime's
/// float32 rounding from a semantic difference. Returns `input`(s), `output` and a
/// `layer/<path>` entry for every `layer/` key of `refs` that the graph computes.
pub fn float64_reference(
    g: &Graph,
    refs: &BTreeMap<String, Array>,
    reference: &Path,
) -> Result<BTreeMap<String, Array>> {
    let inputs = reference_inputs(refs, g.inputs.len(), reference)?;
    let model = TorchModel::new(g, Device::Cpu)?.with_kind(Kind::Double);
    let xs = inputs
        .iter()
        .map(|a| {
            from_host(&a.shape, &a.data, Device::Cpu)?
                .f_to_kind(Kind::Double)
                .map_err(|e| Error::Other(format!("float64 input: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let values = model.forward_values(&xs)?;
    let host = |v: usize| -> Result<Option<Array>> {
        values
            .get(v)
            .and_then(Option::as_ref)
            .map(|t| {
                to_host(t).map(|h| Array {
                    shape: h.shape,
                    data: h.data,
                })
            })
            .transpose()
    };
    let mut out: BTreeMap<String, Array> = refs
        .iter()
        .filter(|(k, _)| k.starts_with("input"))
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    let o = g
        .outputs
        .first()
        .copied()
        .ok_or_else(|| Error::Other("the model has no output".into()))?;
    out.insert(
        "output".into(),
        host(o)?.ok_or_else(|| Error::Other("float64: the output was not computed".into()))?,
    );
    for key in refs.keys().filter(|k| k.starts_with("layer/")) {
        let path = &key["layer/".len()..];
        let v = g
            .layers
            .iter()
            .find(|l| l.path == path)
            .and_then(|l| l.output);
        if let Some(a) = v.map(host).transpose()?.flatten() {
            out.insert(key.clone(), a);
        }
    }
    Ok(out)
}
