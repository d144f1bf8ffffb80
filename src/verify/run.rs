//! Running models through tract for verification and conversion.

use super::file::{max_err, reference_inputs, SELF_RUN};
use super::npz::{first_items, read_npz};
use super::{
    compare, layer_atol, order_layers, TensorCmp, VerifyOptions, VerifyReport, DEFAULT_ATOL,
};
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
    let in_file = |e: Error| Error::Other(format!("{label}: {e}"));
    let model = TractModel::load_multi(&bytes, &shapes, opts.threads).map_err(in_file)?;
    let outs = model.run_multi(&data).map_err(in_file)?;
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

#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    pub read: ReadOptions,
    pub export: ExportOptions,
    pub fold_bn: bool,
    /// Genuine-Keras `io.npz`: its first batch item becomes the embedded test vector.
    pub reference: Option<PathBuf>,
    pub threads: usize,
    /// Store the weights as float16 (half the file; computed in float32).
    pub weights_f16: bool,
}

/// The model file `convert` writes, from the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Onnx,
    /// tract's NNEF archive (`.nnef.tar`, or gzip'd `.nnef.tgz`), allconv's metadata inside.
    Nnef {
        gzip: bool,
    },
}

impl OutputFormat {
    /// `.onnx`, `.nnef.tar` or `.nnef.tgz` (also `.tgz`); `None` for anything else.
    pub fn from_path(p: &Path) -> Option<OutputFormat> {
        let name = p.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".onnx") {
            Some(OutputFormat::Onnx)
        } else if name.ends_with(".nnef.tgz") || name.ends_with(".tgz") {
            Some(OutputFormat::Nnef { gzip: true })
        } else if name.ends_with(".nnef.tar") {
            Some(OutputFormat::Nnef { gzip: false })
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    pub model: String,
    pub output: String,
    pub format: OutputFormat,
    /// `f32`, or `f16` with --weights f16 (`f16_initializers` of them converted).
    pub weights: &'static str,
    pub f16_initializers: usize,
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

/// The NNEF archive of a converted ONNX model, and how many constants it stores as f16.
/// With float16 weights its embedded output is its own run on the test input (as for an
/// f16 ONNX file), and its distance from `reference` (Keras's output) is recorded.
fn nnef_file(
    gzip: bool,
    onnx: &[u8],
    shape: Vec<usize>,
    mut md: meta::Metadata,
    weights_f16: bool,
    reference: Option<&Array>,
) -> Result<(Vec<u8>, usize)> {
    use crate::runtime::{nnef, ModelFile};
    let (typed, n) = nnef::typed_from_onnx(onnx, &[shape.clone()], weights_f16)?;
    let archive = nnef::to_archive(&typed, &md, gzip)?;
    if !weights_f16 {
        return Ok((archive, n));
    }
    let input = crate::meta::test_vectors(&md)?
        .map(|(i, _)| i)
        .ok_or_else(|| Error::Other("internal: an NNEF export without a test input".into()))?;
    let m = ModelFile::from_bytes(Path::new("model.nnef.tar"), &archive)?.load(&[shape], 1)?;
    let out = m
        .run(&input.data)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Other("the exported model has no output".into()))?;
    let got = Array {
        shape: out.shape,
        data: out.data,
    };
    if let Some(r) = reference {
        let err = compare("output", &got.data, &got.shape, &r.data, &r.shape, 0.0, 0.0).max_abs_err;
        md.insert(meta::F16_REFERENCE_ERR.into(), format!("{err:e}"));
    }
    md.insert(meta::TEST_OUTPUT.into(), meta::encode_array(&got));
    md.insert(meta::TEST_SOURCE.into(), SELF_RUN.into());
    md.insert(meta::WEIGHTS.into(), "f16".into());
    Ok((nnef::to_archive(&typed, &md, gzip)?, n))
}

/// `.h5` -> `.onnx` (or `.nnef.tgz`) with metadata and test vectors, written atomically.
pub fn convert(model: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let format = OutputFormat::from_path(out).ok_or_else(|| {
        Error::Other(format!(
            "{}: the output must end in .onnx, .nnef.tar or .nnef.tgz",
            out.display()
        ))
    })?;
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
    // One copy of the model (the proto holds every weight): the IR's weights are freed
    // before the test-vector run.
    let mut proto = export(&g, &eo)?.model;
    let graph_inputs = g.inputs.len();
    drop(g);
    // f16 in ONNX: FLOAT16 initializers + Cast. NNEF rounds its own (decluttered) constants.
    let onnx_f16 = opts.weights_f16 && format == OutputFormat::Onnx;
    let mut f16_initializers = match (onnx_f16, proto.graph.as_mut()) {
        (true, Some(graph)) => crate::onnx::f16::store_weights_f16(graph),
        _ => 0,
    };
    let sha = sha256_file(model)?;
    meta::set_metadata(&mut proto, meta::SOURCE_SHA256, sha.clone());
    if let Some(f) = &folded {
        meta::set_metadata(
            &mut proto,
            meta::FOLDED,
            serde_json::to_string(f).unwrap_or_default(),
        );
    }
    let bytes = crate::onnx::model_bytes(&proto)?;
    // tract's errors in the test-vector runs below, named by the source file.
    let in_file = |e: Error| Error::Other(format!("{}: {e}", model.display()));

    // Test vectors.
    let mut source = "none".to_string();
    let mut ref_err: Option<f32> = None;
    let mut vectors: Option<(Array, Array)> = None;
    match &opts.reference {
        Some(r) => {
            if graph_inputs != 1 {
                return Err(Error::Other(format!(
                    "{}: the model has {} inputs; embedded test vectors hold one (convert without --reference, and verify with `allconv verify MODEL.h5 --reference {}`)",
                    model.display(),
                    graph_inputs,
                    r.display()
                )));
            }
            let refs = read_npz(r)?;
            let (i, o) = reference_vectors(&refs, r, &eo)?;
            let (i, o) = (first_items(&i, 1), first_items(&o, 1));
            let m = TractModel::load(&bytes, &i.shape, opts.threads.max(1)).map_err(in_file)?;
            let got = m.run(&i.data).map_err(in_file)?;
            let t = got
                .first()
                .ok_or_else(|| Error::Other("the exported model has no output".into()))?;
            let err = compare("output", &t.data, &t.shape, &o.data, &o.shape, 0.0, 0.0).max_abs_err;
            ref_err = Some(err);
            if onnx_f16 {
                // Float16 weights are not the model Keras ran: their error against Keras is
                // measured and recorded, and the vector embedded is this file's own output
                // on Keras's input (a regression check, labelled as one).
                vectors = Some((
                    i,
                    Array {
                        shape: t.shape.clone(),
                        data: t.data.clone(),
                    },
                ));
                source = SELF_RUN.into();
            } else {
                // A reference the converted model does not reproduce is not embedded as one.
                if !(err <= DEFAULT_ATOL) {
                    return Err(Error::Other(format!(
                        "{}: the converted model's output differs from the reference {} by {err:.3e} (> {DEFAULT_ATOL:e}); nothing written",
                        model.display(),
                        r.display()
                    )));
                }
                vectors = Some((i, o));
                source = "keras_reference".into();
            }
        }
        _ => {
            // tract's own run on a deterministic input, when the size is known.
            let inp = proto
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
                let m = TractModel::load(&bytes, &shape, opts.threads.max(1)).map_err(in_file)?;
                let got = m.run(&data).map_err(in_file)?;
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
    if onnx_f16 {
        meta::set_metadata(&mut proto, meta::WEIGHTS, "f16".into());
        if let Some(e) = ref_err {
            meta::set_metadata(&mut proto, meta::F16_REFERENCE_ERR, format!("{e:e}"));
        }
    }
    // The test-vector runs are done: one serialised copy at a time.
    drop(bytes);
    let final_bytes = crate::onnx::model_bytes(&proto)?;
    let final_bytes = match format {
        OutputFormat::Onnx => final_bytes,
        OutputFormat::Nnef { gzip } => {
            // NNEF holds one fixed input shape: the test vector's (batch 1).
            let shape = vectors
                .as_ref()
                .map(|(i, _)| i.shape.clone())
                .ok_or_else(|| {
                    Error::Other(format!(
                        "{}: NNEF needs a fixed input size; give --input-size HxW",
                        model.display()
                    ))
                })?;
            let (bytes, n) = nnef_file(
                gzip,
                &final_bytes,
                shape,
                meta::metadata(&proto),
                opts.weights_f16,
                opts.reference
                    .as_ref()
                    .and(vectors.as_ref().map(|(_, o)| o)),
            )?;
            f16_initializers = n;
            if opts.weights_f16 && ref_err.is_some() {
                let md = crate::runtime::ModelFile::from_bytes(out, &bytes)?.metadata;
                ref_err = md.get(meta::F16_REFERENCE_ERR).and_then(|e| e.parse().ok());
            }
            bytes
        }
    };
    write_atomic(out, &final_bytes)?;
    let graph = proto.graph.as_ref();
    Ok(ConvertReport {
        model: model.display().to_string(),
        output: out.display().to_string(),
        format,
        weights: if opts.weights_f16 { "f16" } else { "f32" },
        f16_initializers,
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
