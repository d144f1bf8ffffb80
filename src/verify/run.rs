//! Running models through tract for verification and conversion.

use super::npz::{first_items, read_npz};
use super::{compare, layer_atol, order_layers, TensorCmp, DEFAULT_ATOL, DEFAULT_RTOL};
use crate::error::{Error, Result};
use crate::ir::{DataFormat, Graph, Producer};
use crate::keras::{read_model, ReadOptions};
use crate::onnx::meta::{self, Array};
use crate::onnx::{export, sha256_file, write_atomic, ExportOptions};
use crate::passes::{fold_batch_norm, FoldReport};
use crate::runtime::TractModel;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub atol: f32,
    pub rtol: f32,
    pub per_layer: bool,
    pub fold_bn: bool,
    pub threads: usize,
    pub opset: i64,
    /// Per-layer tolerance scaled by the layer's range: `atol * max(1, max|ref|)`
    /// (deep float32 nets drift by ~1e-4 relative in every runtime).
    pub layer_atol_scaled: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            atol: DEFAULT_ATOL,
            rtol: DEFAULT_RTOL,
            per_layer: false,
            fold_bn: false,
            threads: 1,
            opset: crate::onnx::DEFAULT_OPSET,
            layer_atol_scaled: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub model: String,
    pub reference: String,
    pub backend: String,
    pub atol: f32,
    pub rtol: f32,
    /// Largest absolute error over the outputs (and the layers when per-layer).
    pub max_abs_err: f32,
    pub passed: bool,
    pub outputs: Vec<TensorCmp>,
    /// Per-layer comparisons in topological order.
    pub layers: Vec<TensorCmp>,
    /// The first layer (topological order) outside the tolerance.
    pub first_diverging_layer: Option<String>,
    /// `layer/<path>` keys not compared, with the reason.
    pub skipped_layers: Vec<(String, String)>,
    pub folded: Option<FoldReport>,
}

impl VerifyReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} vs {} ({}): {}  max_abs_err {:.3e}  (atol {:e}, rtol {:e})\n",
            self.model,
            self.reference,
            self.backend,
            if self.passed { "PASS" } else { "FAIL" },
            self.max_abs_err,
            self.atol,
            self.rtol
        );
        for o in &self.outputs {
            s += &format!(
                "  output {:<40} {:?} max_abs_err {:.3e} {}\n",
                o.name,
                o.shape,
                o.max_abs_err,
                if o.passed { "ok" } else { "FAIL" }
            );
        }
        for l in &self.layers {
            s += &format!(
                "  layer  {:<40} {:?} max_abs_err {:.3e} {}\n",
                l.name,
                l.shape,
                l.max_abs_err,
                if l.passed { "ok" } else { "FAIL" }
            );
        }
        for (k, why) in &self.skipped_layers {
            s += &format!("  skipped {k}: {why}\n");
        }
        if let Some(f) = &self.first_diverging_layer {
            s += &format!("first diverging layer: {f}\n");
        }
        s
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

/// Spatial size of a Keras-layout batch `shape` for the graph's first input.
fn spatial_of(g: &Graph, shape: &[usize]) -> Option<Vec<usize>> {
    let inp = g.inputs.first()?;
    if shape.len() < 3 {
        return None;
    }
    Some(match inp.data_format {
        DataFormat::ChannelsLast => shape[1..shape.len() - 1].to_vec(),
        DataFormat::ChannelsFirst => shape[2..].to_vec(),
    })
}

/// The reference inputs: `input` for one input, `input_0`, `input_1`... for several.
pub fn reference_inputs(
    refs: &BTreeMap<String, Array>,
    n: usize,
    path: &Path,
) -> Result<Vec<Array>> {
    let get = |k: &str| {
        refs.get(k)
            .cloned()
            .ok_or_else(|| Error::Other(format!("{}: no `{k}` array", path.display())))
    };
    if n <= 1 {
        Ok(vec![get("input")?])
    } else {
        (0..n).map(|i| get(&format!("input_{i}"))).collect()
    }
}

/// Read a `.h5` (optionally folding BN), export with per-node outputs when
/// `per_layer`, run it with tract on the reference input and compare.
pub fn verify_graph(
    g: &Graph,
    label: &str,
    reference: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let refs = read_npz(reference)?;
    verify_graph_refs(g, label, &refs, reference, opts)
}

/// [`verify_graph`] against reference arrays already in memory (`input`, `output`,
/// `layer/<path>`; e.g. a float64 run's), `reference` naming them in the report.
pub fn verify_graph_refs(
    g: &Graph,
    label: &str,
    refs: &BTreeMap<String, Array>,
    reference: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let inputs = reference_inputs(refs, g.inputs.len(), reference)?;
    let input = &inputs[0];
    let want = refs
        .get("output")
        .ok_or_else(|| Error::Other(format!("{}: no `output` array", reference.display())))?;
    let (g, folded) = if opts.fold_bn {
        let (g, r) = fold_batch_norm(g)?;
        (g, Some(r))
    } else {
        (g.clone(), None)
    };
    let eo = ExportOptions {
        opset: opts.opset,
        input_size: spatial_of(&g, &input.shape),
        debug_outputs: opts.per_layer,
        ..Default::default()
    };
    let ex = export(&g, &eo)?;
    let bytes = ex.to_bytes()?;
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|a| a.shape.clone()).collect();
    let data: Vec<&[f32]> = inputs.iter().map(|a| a.data.as_slice()).collect();
    let model = TractModel::load_multi(&bytes, &shapes, opts.threads)?;
    let outs = model.run_multi(&data)?;
    let out0 = outs
        .first()
        .ok_or_else(|| Error::Other("the model has no output".into()))?;
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
        // Debug outputs follow the model outputs, one per node in order.
        let first_debug = ex.output_names.len();
        let node_index: BTreeMap<&str, usize> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut rows: Vec<(usize, TensorCmp)> = Vec::new();
        for (key, arr) in refs.iter().filter(|(k, _)| k.starts_with("layer/")) {
            let path = &key["layer/".len()..];
            let vanished = folded
                .as_ref()
                .is_some_and(|f| f.vanished_layers.iter().any(|l| l == path));
            let rec = g.layers.iter().find(|l| l.path == path);
            let node = match (vanished, rec.and_then(|r| r.output)) {
                (true, _) => {
                    skipped.push((
                        path.to_string(),
                        "folded into the following BatchNormalization".into(),
                    ));
                    continue;
                }
                (false, None) => {
                    skipped.push((path.to_string(), "no IR value for this layer".into()));
                    continue;
                }
                (false, Some(v)) => match g.values[v].producer {
                    Producer::Node(i) => i,
                    Producer::Input(_) => {
                        skipped.push((path.to_string(), "a graph input".into()));
                        continue;
                    }
                },
            };
            let name = &g.nodes[node].name;
            let idx = node_index.get(name.as_str()).copied().unwrap_or(node);
            let Some(o) = outs.get(first_debug + idx) else {
                skipped.push((path.to_string(), "no exported output".into()));
                continue;
            };
            let atol = layer_atol(opts.atol, opts.layer_atol_scaled, &arr.data);
            rows.push((
                idx,
                compare(
                    path, &o.data, &o.shape, &arr.data, &arr.shape, atol, opts.rtol,
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
        reference: reference.display().to_string(),
        backend: "tract".into(),
        atol: opts.atol,
        rtol: opts.rtol,
        max_abs_err: max_err(&all),
        passed,
        outputs,
        layers,
        first_diverging_layer: first_div,
        skipped_layers: skipped,
        folded,
    })
}

/// `.h5` -> IR -> ONNX (in memory) -> tract, against `reference`.
pub fn verify_h5(
    model: &Path,
    read: &ReadOptions,
    reference: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let g = read_model(model, read)?;
    verify_graph(&g, &model.display().to_string(), reference, opts)
}

/// An `.onnx` file through tract: against `reference` (`input`/`output`) when given,
/// else against its embedded test vectors.
pub fn verify_onnx(
    model: &Path,
    reference: Option<&Path>,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let bytes = std::fs::read(model).map_err(|e| Error::Io {
        file: model.to_path_buf(),
        message: e.to_string(),
    })?;
    let (inputs, want, ref_label) = match reference {
        Some(r) => {
            let refs = read_npz(r)?;
            let n_inputs = meta::parse_model(&bytes)?.graph.input.len();
            let i = reference_inputs(&refs, n_inputs, r)?;
            let o = refs
                .get("output")
                .cloned()
                .ok_or_else(|| Error::Other(format!("{}: no `output`", r.display())))?;
            (i, o, r.display().to_string())
        }
        None => {
            let proto = meta::parse_model(&bytes)?;
            let src = meta::metadata(&proto)
                .get(meta::TEST_SOURCE)
                .cloned()
                .unwrap_or_default();
            let vectors = meta::test_vectors(&proto)
                .map_err(|e| Error::Other(format!("{}: {e}", model.display())))?;
            let (i, o) = vectors.ok_or_else(|| {
                Error::Other(format!(
                    "{}: no embedded test vectors; pass --reference io.npz",
                    model.display()
                ))
            })?;
            let label = if src == SELF_RUN {
                "embedded test vectors (tract's own output at conversion: a regression check, not parity with Keras)".to_string()
            } else {
                format!("embedded test vectors ({src})")
            };
            (vec![i], o, label)
        }
    };
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|a| a.shape.clone()).collect();
    let data: Vec<&[f32]> = inputs.iter().map(|a| a.data.as_slice()).collect();
    let m = TractModel::load_multi(&bytes, &shapes, opts.threads)?;
    let outs = m.run_multi(&data)?;
    let o = outs
        .first()
        .ok_or_else(|| Error::Other("the model has no output".into()))?;
    let outputs = vec![compare(
        "output",
        &o.data,
        &o.shape,
        &want.data,
        &want.shape,
        opts.atol,
        opts.rtol,
    )];
    Ok(VerifyReport {
        model: model.display().to_string(),
        reference: ref_label,
        backend: "tract".into(),
        atol: opts.atol,
        rtol: opts.rtol,
        max_abs_err: max_err(&outputs),
        passed: outputs.iter().all(|c| c.passed),
        outputs,
        layers: vec![],
        first_diverging_layer: None,
        skipped_layers: vec![],
        folded: None,
    })
}

#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    pub read: ReadOptions,
    pub export: ExportOptions,
    pub fold_bn: bool,
    /// Genuine-Keras `io.npz`: its first batch item becomes the embedded test vector.
    pub reference: Option<PathBuf>,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    pub model: String,
    pub output: String,
    pub bytes: usize,
    pub opset: i64,
    pub onnx_nodes: usize,
    pub initializers: usize,
    pub source_sha256: String,
    /// `keras_reference`, [`SELF_RUN`], or `none` (symbolic size: nothing to run).
    pub test_vector_source: String,
    /// tract vs the reference output at conversion time, when a reference was used.
    pub reference_max_abs_err: Option<f32>,
    pub folded: Option<FoldReport>,
}

/// `allconv.test_vector_source` of a vector that tract computed at conversion time: it
/// catches a later change of runtime or file, but proves nothing about Keras.
pub const SELF_RUN: &str = "tract_self_run";

/// The genuine-Keras vectors of `--reference` for the graph being exported.
///
/// A plain export takes `input`/`output`. With `--preprocess` the graph's input is the raw
/// image, so the reference must hold the raw `input` and the `preprocessed` tensor Keras was
/// fed, and the host formula applied to `input` must give `preprocessed`. With `--tta
/// flips4` its `output` must be the mean of its four `flips` predictions. Anything else is
/// an error: a reference is never dropped or reinterpreted silently.
fn reference_vectors(
    refs: &BTreeMap<String, Array>,
    r: &Path,
    eo: &ExportOptions,
) -> Result<(Array, Array)> {
    let need = |k: &str, why: &str| {
        refs.get(k).cloned().ok_or_else(|| {
            Error::Other(format!(
                "{}: no `{k}` array{why}; convert without --reference to embed a tract self-run vector (a regression check, not a proof)",
                r.display()
            ))
        })
    };
    let input = need("input", "")?;
    let output = need("output", "")?;
    if let Some(p) = &eo.preprocess {
        let fed = need(
            "preprocessed",
            " (with --preprocess the reference must hold the raw `input` and the `preprocessed` tensor Keras was fed, as converters/tta_ref.py --raw writes)",
        )?;
        let c = fed.shape.last().copied().unwrap_or(0);
        let raw_c = input.shape.last().copied().unwrap_or(0);
        let same_layout = input.shape.len() == fed.shape.len()
            && input.shape[..input.shape.len() - 1] == fed.shape[..fed.shape.len() - 1]
            && (raw_c == c || (p.gray && raw_c == 1));
        if !same_layout {
            return Err(Error::Other(format!(
                "{}: `input` {:?} does not match `preprocessed` {:?} under --preprocess {}",
                r.display(),
                input.shape,
                fed.shape,
                p.to_spec()
            )));
        }
        let mut worst = 0f32;
        for (k, &v) in fed.data.iter().enumerate() {
            let raw = if raw_c == c {
                input.data[k]
            } else {
                input.data[k / c]
            };
            let want = p.apply_value(raw);
            worst = worst.max((want - v).abs() / want.abs().max(1.0));
        }
        if worst > 1e-6 {
            return Err(Error::Other(format!(
                "{}: `preprocessed` is not --preprocess {} applied to `input` (relative difference {worst:.2e}): the reference was made with other parameters",
                r.display(),
                p.to_spec()
            )));
        }
    }
    match (eo.tta, refs.get("flips")) {
        (Some(_), None) => {
            return Err(Error::Other(format!(
                "{}: with --tta flips4 the reference must hold the four flipped predictions `flips` and their mean as `output` (converters/tta_ref.py)",
                r.display()
            )))
        }
        (Some(_), Some(f)) => {
            let n = output.data.len();
            if f.data.len() != 4 * n {
                return Err(Error::Other(format!(
                    "{}: `flips` {:?} is not four predictions of shape {:?}",
                    r.display(),
                    f.shape,
                    output.shape
                )));
            }
            let worst = (0..n)
                .map(|k| {
                    let mean = (0..4).map(|j| f.data[j * n + k]).sum::<f32>() / 4.0;
                    (mean - output.data[k]).abs()
                })
                .fold(0f32, f32::max);
            if worst > 1e-6 {
                return Err(Error::Other(format!(
                    "{}: `output` is not the mean of `flips` (differs by {worst:.2e})",
                    r.display()
                )));
            }
        }
        (None, Some(_)) => {
            return Err(Error::Other(format!(
                "{}: `output` is a 4-flip mean (the file has `flips`); add --tta flips4 or use the plain io.npz",
                r.display()
            )))
        }
        (None, None) => {}
    }
    if eo.preprocess.is_none() && refs.contains_key("preprocessed") {
        return Err(Error::Other(format!(
            "{}: `input` is raw pixels (the file has `preprocessed`); add the --preprocess it was made with",
            r.display()
        )));
    }
    Ok((input, output))
}

/// Deterministic pseudo-random values in [lo, hi).
fn synthetic(n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// `.h5` -> `.onnx` with metadata and test vectors, written atomically.
pub fn convert(model: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let g = read_model(model, &opts.read)?;
    let (g, folded) = if opts.fold_bn {
        let (g, r) = fold_batch_norm(&g)?;
        (g, Some(r))
    } else {
        (g, None)
    };
    let mut eo = opts.export.clone();
    if eo.input_size.is_none() {
        eo.input_size = opts.read.input_size.clone();
    }
    let ex = export(&g, &eo)?;
    let mut proto = ex.model.clone();
    let sha = sha256_file(model)?;
    meta::set_metadata(&mut proto, meta::SOURCE_SHA256, sha.clone());
    if let Some(f) = &folded {
        meta::set_metadata(
            &mut proto,
            meta::FOLDED,
            serde_json::to_string(f).unwrap_or_default(),
        );
    }
    let bytes = crate::onnx::Exported {
        model: proto.clone(),
        ..ex.clone()
    }
    .to_bytes()?;

    // Test vectors.
    let mut source = "none".to_string();
    let mut ref_err = None;
    let mut vectors: Option<(Array, Array)> = None;
    match &opts.reference {
        Some(r) => {
            let refs = read_npz(r)?;
            let (i, o) = reference_vectors(&refs, r, &eo)?;
            let (i, o) = (first_items(&i, 1), first_items(&o, 1));
            let m = TractModel::load(&bytes, &i.shape, opts.threads.max(1))?;
            let got = m.run(&i.data)?;
            let t = got
                .first()
                .ok_or_else(|| Error::Other("the exported model has no output".into()))?;
            let err = compare("output", &t.data, &t.shape, &o.data, &o.shape, 0.0, 0.0).max_abs_err;
            // A reference the converted model does not reproduce is not embedded as one.
            if !(err <= DEFAULT_ATOL) {
                return Err(Error::Other(format!(
                    "{}: the converted model's output differs from the reference {} by {err:.3e} (> {DEFAULT_ATOL:e}); nothing written",
                    model.display(),
                    r.display()
                )));
            }
            ref_err = Some(err);
            vectors = Some((i, o));
            source = "keras_reference".into();
        }
        _ => {
            // tract's own run on a deterministic input, when the size is known.
            let inp = ex
                .model
                .graph
                .input
                .first()
                .and_then(|v| v.type_.tensor_type().shape.as_ref().map(|s| s.dim.clone()));
            let dims: Option<Vec<usize>> = inp.and_then(|d| {
                d.iter()
                    .enumerate()
                    .map(|(k, x)| {
                        if k == 0 {
                            Some(1)
                        } else if x.has_dim_value() {
                            Some(x.dim_value() as usize)
                        } else {
                            None
                        }
                    })
                    .collect()
            });
            if let Some(shape) = dims {
                // The dims are the model's declared input: the volume is computed checked
                // and bounded before a test input of that size is allocated.
                let n = crate::ir::checked_product(&shape)
                    .filter(|&n| n <= crate::ir::MAX_DIM)
                    .ok_or_else(|| {
                        Error::Other(format!(
                            "{}: the model's input shape {shape:?} holds more values than allconv computes test vectors for (at most {}); give a smaller --input-size, or --reference io.npz",
                            model.display(),
                            crate::ir::MAX_DIM
                        ))
                    })?;
                let data = if eo.preprocess.is_some() {
                    synthetic(n, 0.0, 255.0)
                } else {
                    synthetic(n, -1.0, 1.0)
                };
                let m = TractModel::load(&bytes, &shape, opts.threads.max(1))?;
                let got = m.run(&data)?;
                if let Some(t) = got.into_iter().next() {
                    vectors = Some((
                        Array { shape, data },
                        Array {
                            shape: t.shape,
                            data: t.data,
                        },
                    ));
                    source = SELF_RUN.into();
                }
            }
        }
    }
    if let Some((i, o)) = &vectors {
        meta::set_metadata(&mut proto, meta::TEST_INPUT, meta::encode_array(i));
        meta::set_metadata(&mut proto, meta::TEST_OUTPUT, meta::encode_array(o));
    }
    meta::set_metadata(&mut proto, meta::TEST_SOURCE, source.clone());
    let final_bytes = crate::onnx::Exported {
        model: proto.clone(),
        ..ex
    }
    .to_bytes()?;
    write_atomic(out, &final_bytes)?;
    let graph = proto.graph.as_ref();
    Ok(ConvertReport {
        model: model.display().to_string(),
        output: out.display().to_string(),
        bytes: final_bytes.len(),
        opset: eo.opset,
        onnx_nodes: graph.map(|g| g.node.len()).unwrap_or(0),
        initializers: graph.map(|g| g.initializer.len()).unwrap_or(0),
        source_sha256: sha,
        test_vector_source: source,
        reference_max_abs_err: ref_err,
        folded,
    })
}
