//! Running models through tract for verification and conversion.

use super::file::{max_err, reference_inputs, SELF_RUN};
use super::npz::{first_items, read_npz};
use super::{
    compare, layer_atol, order_layers, TensorCmp, VerifyOptions, VerifyReport, DEFAULT_ATOL,
};
use crate::error::{Error, Result};
use crate::files::atomic_write;
use crate::ir::{Graph, Producer};
use crate::keras::{read_model, ReadOptions};
use crate::onnx::meta::{self, Array};
use crate::onnx::{export, sha256_file, write_atomic, ExportOptions};
use crate::passes::{fold_batch_norm, subsample_early, FoldReport, SubsampleReport};
use crate::runtime::TractModel;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let (mut g, folded) = if opts.fold_bn {
        let (g, r) = fold_batch_norm(g)?;
        (g, Some(r))
    } else {
        (g.clone(), None)
    };
    // The graph `convert` writes; per-layer comparison needs every layer as Keras made it.
    let subsampled = if opts.per_layer {
        None
    } else {
        Some(subsample_early(&mut g)?)
    };
    let eo = ExportOptions {
        opset: opts.opset,
        input_size: g.input_spatial(&input.shape),
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
        subsampled,
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
    /// Who computes the embedded test vector when there is no reference (see
    /// [`VectorBackend`]).
    pub vector_backend: VectorBackend,
}

/// The runtime that computes a converted file's embedded test vector when no Keras
/// reference is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VectorBackend {
    /// libtorch on allconv's graph where the build has it and the file computes exactly
    /// that graph (f32 weights, NHWC input, no in-graph preprocessing or TTA); tract on the
    /// file otherwise. The full-width model's vector: 0.51-0.58 s on libtorch against 1.16 s
    /// in tract (load + run at 2 threads).
    #[default]
    Auto,
    /// tract on the written file: exercises the file itself, and is what the edge build has.
    Tract,
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
    /// `keras_reference`, [`SELF_RUN`], [`TORCH_RUN`], or `none` (symbolic size or several
    /// inputs: nothing to run).
    pub test_vector_source: String,
    /// tract vs the reference output at conversion time, when a reference was used.
    pub reference_max_abs_err: Option<f32>,
    pub folded: Option<FoldReport>,
    /// Strided 1x1 convolutions whose sampling moved to where their input is made.
    pub subsampled: SubsampleReport,
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

/// A run's first output, as an array.
fn first_output(outputs: Vec<crate::runtime::Output>) -> Result<Array> {
    let o = outputs
        .into_iter()
        .next()
        .ok_or_else(|| Error::Other("the exported model has no output".into()))?;
    Ok(Array {
        shape: o.shape,
        data: o.data,
    })
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
    let got = first_output(m.run(&input.data)?)?;
    if let Some(r) = reference {
        let err = compare("output", &got.data, &got.shape, &r.data, &r.shape, 0.0, 0.0).max_abs_err;
        md.insert(meta::F16_REFERENCE_ERR.into(), format!("{err:e}"));
    }
    md.insert(meta::TEST_OUTPUT.into(), meta::encode_array(&got));
    md.insert(meta::TEST_SOURCE.into(), SELF_RUN.into());
    md.insert(meta::WEIGHTS.into(), "f16".into());
    Ok((nnef::to_archive(&typed, &md, gzip)?, n))
}

/// The test vectors a converted file embeds, and where they came from.
struct TestVectors {
    /// `keras_reference`, [`SELF_RUN`], [`TORCH_RUN`], or `none` (symbolic size or several
    /// inputs: nothing to run).
    source: String,
    /// tract vs the reference output, when a reference was given.
    reference_err: Option<f32>,
    vectors: Option<(Array, Array)>,
}

impl TestVectors {
    /// The metadata entries that carry them; with float16 ONNX weights, also what they are.
    fn metadata(&self, onnx_f16: bool) -> Vec<(&'static str, String)> {
        let mut entries = Vec::new();
        if let Some((i, o)) = &self.vectors {
            entries.push((meta::TEST_INPUT, meta::encode_array(i)));
            entries.push((meta::TEST_OUTPUT, meta::encode_array(o)));
        }
        entries.push((meta::TEST_SOURCE, self.source.clone()));
        if onnx_f16 {
            entries.push((meta::WEIGHTS, "f16".into()));
            if let Some(e) = self.reference_err {
                entries.push((meta::F16_REFERENCE_ERR, format!("{e:e}")));
            }
        }
        entries
    }
}

/// The test-vector run, loaded and ready: its input and, with `--reference`, the output
/// genuine Keras gave for it.
struct VectorRun {
    engine: VectorEngine,
    input: Array,
    keras_output: Option<Array>,
}

enum VectorEngine {
    /// The exported file in tract.
    Tract(TractModel),
    /// allconv's graph in libtorch (BatchNorm folded), threads set.
    #[cfg(feature = "torch")]
    Torch(Box<crate::torch::TorchModel>),
}

impl VectorEngine {
    fn run(&self, input: &Array) -> Result<Array> {
        match self {
            VectorEngine::Tract(t) => first_output(t.run(&input.data)?),
            #[cfg(feature = "torch")]
            VectorEngine::Torch(t) => {
                let o = t.run_host(&input.shape, &input.data)?.into_iter().next();
                let o = o.ok_or_else(|| Error::Other("the graph has no output".into()))?;
                Ok(Array {
                    shape: o.shape,
                    data: o.data,
                })
            }
        }
    }

    fn source(&self) -> &'static str {
        match self {
            VectorEngine::Tract(_) => SELF_RUN,
            #[cfg(feature = "torch")]
            VectorEngine::Torch(_) => super::file::TORCH_RUN,
        }
    }
}

/// Whether the test vector comes from libtorch on the graph: only when the build has it,
/// nothing asks for tract, and the file computes the graph as it is (a Keras reference is
/// checked against the file itself, float16 weights and NNEF are the file's own numbers,
/// in-graph preprocessing and TTA and an NCHW input are not in the graph).
fn torch_vectors(
    opts: &ConvertOptions,
    eo: &ExportOptions,
    format: OutputFormat,
    graph_inputs: usize,
) -> bool {
    cfg!(feature = "torch")
        && opts.vector_backend == VectorBackend::Auto
        && format == OutputFormat::Onnx
        && opts.reference.is_none()
        && !opts.weights_f16
        && eo.preprocess.is_none()
        && eo.tta.is_none()
        && !eo.nchw_input
        && graph_inputs == 1
}

/// The number of values of the declared input's test data, checked and bounded before
/// anything of that size is allocated.
fn test_input_len(model: &Path, shape: &[usize]) -> Result<usize> {
    crate::ir::checked_product(shape)
        .filter(|&n| n <= crate::ir::MAX_DIM)
        .ok_or_else(|| {
            Error::Other(format!(
                "{}: the model's input shape {shape:?} holds more values than allconv computes test vectors for (at most {}); give a smaller --input-size, or --reference io.npz",
                model.display(),
                crate::ir::MAX_DIM
            ))
        })
}

/// The declared input's test data, `n` values ([`test_input_len`]).
fn synthetic_input(shape: Vec<usize>, n: usize, eo: &ExportOptions) -> Array {
    let data = if eo.preprocess.is_some() {
        synthetic(n, 0.0, 255.0)
    } else {
        synthetic(n, -1.0, 1.0)
    };
    Array { shape, data }
}

/// [`load_vector_run`] on libtorch: the graph (the one just exported) with BatchNorm
/// folded, on the declared input's synthetic data.
#[cfg(feature = "torch")]
fn torch_vector_run(
    model: &Path,
    g: Graph,
    declared: Option<Vec<usize>>,
    opts: &ConvertOptions,
    eo: &ExportOptions,
) -> Result<Option<VectorRun>> {
    let Some(shape) = declared else {
        return Ok(None);
    };
    let n = test_input_len(model, &shape)?;
    let in_file = |e: Error| Error::Other(format!("{}: {e}", model.display()));
    tch::set_num_threads(i32::try_from(opts.threads.max(1)).unwrap_or(i32::MAX));
    let t = crate::torch::TorchModel::for_inference(g, tch::Device::Cpu).map_err(in_file)?;
    // Activations over the limit are refused before the input or any of them is allocated
    // (tract checks its plan the same way).
    t.check_activations(&shape).map_err(in_file)?;
    let input = synthetic_input(shape, n, eo);
    Ok(Some(VectorRun {
        engine: VectorEngine::Torch(Box::new(t)),
        input,
        keras_output: None,
    }))
}

#[cfg(not(feature = "torch"))]
fn torch_vector_run(
    _model: &Path,
    _g: Graph,
    _declared: Option<Vec<usize>>,
    _opts: &ConvertOptions,
    _eo: &ExportOptions,
) -> Result<Option<VectorRun>> {
    Err(Error::Other(
        "internal: libtorch test vectors in a build without libtorch".into(),
    ))
}

/// The declared input shape of an exported model with batch 1; `None` when a spatial
/// dimension is symbolic.
fn declared_input(proto: &onnx_protobuf::ModelProto) -> Option<Vec<usize>> {
    let dims = &proto
        .graph
        .as_ref()?
        .input
        .first()?
        .type_
        .tensor_type()
        .shape
        .as_ref()?
        .dim;
    dims.iter()
        .enumerate()
        .map(|(k, x)| match k {
            0 => Some(1),
            _ if x.has_dim_value() => usize::try_from(x.dim_value()).ok(),
            _ => None,
        })
        .collect()
}

/// Load the exported `onnx` in tract on the reference's first item, or on a deterministic
/// input of the declared size; `None` when the size is symbolic and there is no reference.
fn load_vector_run(
    model: &Path,
    onnx: &[u8],
    declared: Option<Vec<usize>>,
    graph_inputs: usize,
    opts: &ConvertOptions,
    eo: &ExportOptions,
) -> Result<Option<VectorRun>> {
    // tract's errors, named by the source file.
    let in_file = |e: Error| Error::Other(format!("{}: {e}", model.display()));
    let threads = opts.threads.max(1);
    if let Some(r) = &opts.reference {
        if graph_inputs != 1 {
            return Err(Error::Other(format!(
                "{}: the model has {graph_inputs} inputs; embedded test vectors hold one (convert without --reference, and verify with `allconv verify MODEL.h5 --reference {}`)",
                model.display(),
                r.display()
            )));
        }
        let refs = read_npz(r)?;
        let (i, o) = reference_vectors(&refs, r, eo)?;
        let (input, output) = (first_items(&i, 1), first_items(&o, 1));
        let tract = TractModel::load(onnx, &input.shape, threads).map_err(in_file)?;
        return Ok(Some(VectorRun {
            engine: VectorEngine::Tract(tract),
            input,
            keras_output: Some(output),
        }));
    }
    // Embedded vectors hold one input: a model of several has none without a reference
    // (its first input alone would not run).
    let (Some(shape), 1) = (declared, graph_inputs) else {
        return Ok(None);
    };
    // The dims are the model's declared input: checked before anything is allocated.
    let n = test_input_len(model, &shape)?;
    let input = synthetic_input(shape, n, eo);
    let tract = TractModel::load(onnx, &input.shape, threads).map_err(in_file)?;
    Ok(Some(VectorRun {
        engine: VectorEngine::Tract(tract),
        input,
        keras_output: None,
    }))
}

/// Run the test vector. A Keras reference the converted model does not reproduce is an
/// error, never embedded; with float16 weights (not the model Keras ran) the error against
/// Keras is recorded and the vector embedded is the file's own output on Keras's input.
fn run_vectors(
    model: &Path,
    run: Option<VectorRun>,
    onnx_f16: bool,
    reference: Option<&Path>,
) -> Result<TestVectors> {
    let Some(VectorRun {
        engine,
        input,
        keras_output,
    }) = run
    else {
        return Ok(TestVectors {
            source: "none".into(),
            reference_err: None,
            vectors: None,
        });
    };
    let own = engine
        .run(&input)
        .map_err(|e| Error::Other(format!("{}: {e}", model.display())))?;
    let Some(keras) = keras_output else {
        return Ok(TestVectors {
            source: engine.source().into(),
            reference_err: None,
            vectors: Some((input, own)),
        });
    };
    let err = compare(
        "output",
        &own.data,
        &own.shape,
        &keras.data,
        &keras.shape,
        0.0,
        0.0,
    )
    .max_abs_err;
    if onnx_f16 {
        return Ok(TestVectors {
            source: SELF_RUN.into(),
            reference_err: Some(err),
            vectors: Some((input, own)),
        });
    }
    if !(err <= DEFAULT_ATOL) {
        return Err(Error::Other(format!(
            "{}: the converted model's output differs from the reference {} by {err:.3e} (> {DEFAULT_ATOL:e}); nothing written",
            model.display(),
            reference.map(|r| r.display().to_string()).unwrap_or_default()
        )));
    }
    Ok(TestVectors {
        source: "keras_reference".into(),
        reference_err: Some(err),
        vectors: Some((input, keras)),
    })
}

/// `.h5` -> `.onnx` (or `.nnef.tgz`) with metadata and test vectors, written atomically.
pub fn convert(model: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let format = OutputFormat::from_path(out).ok_or_else(|| {
        Error::Other(format!(
            "{}: the output must end in .onnx, .nnef.tar or .nnef.tgz",
            out.display()
        ))
    })?;
    // The source's hash (recorded in the output) is computed while the model is read.
    let (g, sha) = std::thread::scope(|s| {
        let sha = s.spawn(|| sha256_file(model));
        let g = read_model(model, &opts.read);
        let sha = sha
            .join()
            .unwrap_or_else(|_| Err(Error::Other("the hashing thread panicked".into())));
        Ok::<_, Error>((g?, sha?))
    })?;
    let (mut g, folded) = if opts.fold_bn {
        let (g, r) = fold_batch_norm(&g)?;
        (g, Some(r))
    } else {
        (g, None)
    };
    let subsampled = subsample_early(&mut g)?;
    let mut eo = opts.export.clone();
    if eo.input_size.is_none() {
        eo.input_size = opts.read.input_size.clone();
    }
    // One copy of the model (the proto holds every weight): the IR's weights are freed
    // before the test-vector run, or become libtorch's.
    let mut proto = export(&g, &eo)?.model;
    let graph_inputs = g.inputs.len();
    let on_torch = torch_vectors(opts, &eo, format, graph_inputs);
    let torch_graph = on_torch.then_some(g);
    // f16 in ONNX: FLOAT16 initializers + Cast. NNEF rounds its own (decluttered) constants.
    let onnx_f16 = opts.weights_f16 && format == OutputFormat::Onnx;
    let mut f16_initializers = match (onnx_f16, proto.graph.as_mut()) {
        (true, Some(graph)) => crate::onnx::f16::store_weights_f16(graph),
        _ => 0,
    };
    meta::set_metadata(&mut proto, meta::SOURCE_SHA256, sha.clone());
    if let Some(f) = &folded {
        meta::set_metadata(
            &mut proto,
            meta::FOLDED,
            serde_json::to_string(f).unwrap_or_default(),
        );
    }
    crate::onnx::record_subsampled(&mut proto, &subsampled);
    let bytes = crate::onnx::model_bytes(&proto)?;
    let declared = declared_input(&proto);
    let (onnx_nodes, initializers) = proto
        .graph
        .as_ref()
        .map_or((0, 0), |g| (g.node.len(), g.initializer.len()));
    let reference = opts.reference.as_deref();
    let eo = &eo;

    let (tv, written) = match format {
        OutputFormat::Onnx => {
            // The model is written before the test-vector run and the vectors appended
            // after it: protobuf parses a message followed by more of its fields as one
            // message (repeated `metadata_props` entries appended). So the file is
            // serialised once, and neither the proto nor its bytes stay in memory while
            // tract runs the network (full-width model: 2.7 -> 2.1 s, peak below 1 GB).
            // The file is written and flushed to disk on a thread of its own while tract
            // loads and runs the model.
            drop(proto);
            atomic_write(out, move |tmp| {
                let io = |e: std::io::Error| Error::Io {
                    file: out.to_path_buf(),
                    message: e.to_string(),
                };
                let model_len = bytes.len();
                let bytes = std::sync::Arc::new(bytes);
                let writer = {
                    let (bytes, tmp) = (std::sync::Arc::clone(&bytes), tmp.to_path_buf());
                    std::thread::spawn(move || {
                        std::fs::write(&tmp, &*bytes)?;
                        drop(bytes);
                        std::fs::File::open(&tmp)?.sync_data()
                    })
                };
                let run = match torch_graph {
                    Some(g) => torch_vector_run(model, g, declared, opts, eo),
                    None => load_vector_run(model, &bytes, declared, graph_inputs, opts, eo),
                };
                drop(bytes);
                let tv = run.and_then(|run| run_vectors(model, run, onnx_f16, reference));
                // Joined before any error returns: the temp file is removed after its writer.
                writer
                    .join()
                    .map_err(|_| Error::Other("the thread writing the model panicked".into()))?
                    .map_err(io)?;
                let tv = tv?;
                let appendix = meta::metadata_appendix(&tv.metadata(onnx_f16))?;
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(tmp)
                    .and_then(|mut f| f.write_all(&appendix))
                    .map_err(io)?;
                Ok((tv, model_len + appendix.len()))
            })?
        }
        OutputFormat::Nnef { gzip } => {
            let run = load_vector_run(model, &bytes, declared, graph_inputs, opts, eo)?;
            let mut tv = run_vectors(model, run, false, reference)?;
            for (k, v) in tv.metadata(false) {
                meta::set_metadata(&mut proto, k, v);
            }
            // NNEF holds one fixed input shape: the test vector's (batch 1).
            let shape = tv
                .vectors
                .as_ref()
                .map(|(i, _)| i.shape.clone())
                .ok_or_else(|| {
                    Error::Other(format!(
                        "{}: NNEF needs a fixed input size; give --input-size HxW",
                        model.display()
                    ))
                })?;
            let (archive, n) = nnef_file(
                gzip,
                &bytes,
                shape,
                meta::metadata(&proto),
                opts.weights_f16,
                reference.and(tv.vectors.as_ref().map(|(_, o)| o)),
            )?;
            f16_initializers = n;
            if opts.weights_f16 && tv.reference_err.is_some() {
                let md = crate::runtime::ModelFile::from_bytes(out, &archive)?.metadata;
                tv.reference_err = md.get(meta::F16_REFERENCE_ERR).and_then(|e| e.parse().ok());
            }
            write_atomic(out, &archive)?;
            let len = archive.len();
            (tv, len)
        }
    };
    Ok(ConvertReport {
        model: model.display().to_string(),
        output: out.display().to_string(),
        format,
        weights: if opts.weights_f16 { "f16" } else { "f32" },
        f16_initializers,
        bytes: written,
        opset: eo.opset,
        onnx_nodes,
        initializers,
        source_sha256: sha,
        test_vector_source: tv.source,
        reference_max_abs_err: tv.reference_err,
        folded,
        subsampled,
    })
}
