//! Verify a model file (ONNX or NNEF) with tract (or ONNX Runtime, `ort` feature): against
//! a reference `io.npz`, or against the test vectors embedded at conversion. Needs only the
//! runtime (edge build).

use super::npz::read_npz;
use super::{compare, TensorCmp, CROSS_RUNTIME_ATOL, DEFAULT_ATOL, DEFAULT_RTOL};
use crate::error::{Error, Result};
use crate::meta::{self, Array};
use crate::passes::{FoldReport, SubsampleReport};
use crate::runtime::{Engine, ModelFile, Output};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// `allconv.test_vector_source` of a vector that tract computed at conversion time: it
/// catches a later change of runtime or file, but proves nothing about Keras.
pub const SELF_RUN: &str = "tract_self_run";

/// `allconv.test_vector_source` of a vector that libtorch computed at conversion time from
/// allconv's graph of the Keras model (not from the file): a later `verify` runs the file
/// in tract against it, two runtimes that share no code; still not parity with Keras.
pub const TORCH_RUN: &str = "libtorch_graph_run";

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub atol: f32,
    pub rtol: f32,
    pub per_layer: bool,
    pub fold_bn: bool,
    /// tract's threads (default: every core).
    pub threads: usize,
    /// ONNX opset of an in-memory export (`.h5` models).
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
            threads: crate::runtime::default_threads(),
            #[cfg(feature = "onnx")]
            opset: crate::onnx::DEFAULT_OPSET,
            #[cfg(not(feature = "onnx"))]
            opset: 0,
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
    /// What the subsampling rewrite changed in the graph that ran (`None`: not applied,
    /// e.g. per-layer runs, which need every layer as Keras made it).
    pub subsampled: Option<SubsampleReport>,
}

impl VerifyReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} vs {} ({}): {}  max_abs_err {:.3e}  ({})\n",
            self.model,
            self.reference,
            self.backend,
            if self.passed { "PASS" } else { "FAIL" },
            self.max_abs_err,
            if self.layers.is_empty() {
                super::bound_text(self.atol, self.rtol)
            } else {
                format!(
                    "over outputs and layers; outputs held to {}, each layer to the bound on its row",
                    super::bound_text(self.atol, self.rtol)
                )
            }
        );
        let rows = self.outputs.iter().map(|c| ("output", c));
        for (kind, c) in rows.chain(self.layers.iter().map(|c| ("layer ", c))) {
            s += &format!(
                "  {kind} {:<40} {:?} max_abs_err {:.3e} ({}) {}\n",
                c.name,
                c.shape,
                c.max_abs_err,
                super::bound_text(c.atol, c.rtol),
                if c.passed { "ok" } else { "FAIL" }
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

pub(crate) fn max_err(cmps: &[TensorCmp]) -> f32 {
    cmps.iter().fold(0f32, |m, c| {
        if c.max_abs_err.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(c.max_abs_err)
        }
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

/// An `.onnx` or `.nnef.tgz` file through tract: against `reference` (`input`/`output`) when given,
/// else against its embedded test vectors.
pub fn verify_onnx(
    model: &Path,
    reference: Option<&Path>,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    verify_onnx_with(model, reference, opts, Engine::Tract)
}

/// [`verify_onnx`] on the chosen engine: tract, or ONNX Runtime (`ort` feature; the file's
/// own bytes, ONNX only). Held to the same bounds; a vector another runtime made at
/// conversion (tract's or libtorch's) is held to the cross-runtime bound.
pub fn verify_onnx_with(
    model: &Path,
    reference: Option<&Path>,
    opts: &VerifyOptions,
    engine: Engine,
) -> Result<VerifyReport> {
    if engine == Engine::Ort {
        // The library first: its absence is the error to report, whatever the file.
        ort_library()?;
    }
    let file = ModelFile::open(model)?;
    let mut atol = opts.atol;
    let (inputs, want, ref_label) = match reference {
        Some(r) => {
            let refs = read_npz(r)?;
            let i = reference_inputs(&refs, file.inputs.len(), r)?;
            let o = refs
                .get("output")
                .cloned()
                .ok_or_else(|| Error::Other(format!("{}: no `output`", r.display())))?;
            (i, o, r.display().to_string())
        }
        None => {
            let src = file
                .metadata
                .get(meta::TEST_SOURCE)
                .cloned()
                .unwrap_or_default();
            let vectors = meta::test_vectors(&file.metadata)
                .map_err(|e| Error::Other(format!("{}: {e}", model.display())))?;
            let (i, o) = vectors.ok_or_else(|| {
                Error::Other(format!(
                    "{}: no embedded test vectors; pass --reference io.npz",
                    model.display()
                ))
            })?;
            let f16 = match file.metadata.get(meta::F16_REFERENCE_ERR) {
                Some(e) => format!("; float16 weights, {e} from genuine Keras at conversion"),
                None => String::new(),
            };
            let label = if src == SELF_RUN && engine != Engine::Tract {
                format!("embedded test vectors (tract's output at conversion: {}'s run of the file against another runtime, held to the cross-runtime bound; not parity with Keras{f16})", engine.name())
            } else if src == SELF_RUN {
                format!("embedded test vectors (tract's own output at conversion: a regression check, not parity with Keras{f16})")
            } else if src == TORCH_RUN {
                format!("embedded test vectors (libtorch's output at conversion on allconv's graph of the Keras model: {}'s run of the file against another runtime, held to the cross-runtime bound; not parity with Keras)", engine.name())
            } else {
                format!("embedded test vectors ({src})")
            };
            if src == TORCH_RUN || (src == SELF_RUN && engine != Engine::Tract) {
                let scale = o.data.iter().fold(1f32, |m, v| m.max(v.abs()));
                atol = atol.max(CROSS_RUNTIME_ATOL * scale);
            }
            (vec![i], o, label)
        }
    };
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|a| a.shape.clone()).collect();
    let data: Vec<&[f32]> = inputs.iter().map(|a| a.data.as_slice()).collect();
    let outs = match engine {
        Engine::Tract => file.load(&shapes, opts.threads)?.run_multi(&data)?,
        Engine::Ort => run_ort(&file, model, &shapes, &data, opts.threads)?,
    };
    let o = outs
        .first()
        .ok_or_else(|| Error::Other("the model has no output".into()))?;
    let outputs = vec![compare(
        "output",
        &o.data,
        &o.shape,
        &want.data,
        &want.shape,
        atol,
        opts.rtol,
    )];
    Ok(VerifyReport {
        model: model.display().to_string(),
        reference: ref_label,
        backend: engine.name().into(),
        atol,
        rtol: opts.rtol,
        max_abs_err: max_err(&outputs),
        passed: outputs.iter().all(|c| c.passed),
        outputs,
        layers: vec![],
        first_diverging_layer: None,
        skipped_layers: vec![],
        folded: None,
        subsampled: None,
    })
}

#[cfg(feature = "ort")]
fn ort_library() -> Result<()> {
    crate::runtime::ort::library().map(drop)
}

#[cfg(not(feature = "ort"))]
fn ort_library() -> Result<()> {
    Engine::ort().map(drop)
}

/// The file's own bytes on ONNX Runtime.
#[cfg(feature = "ort")]
fn run_ort(
    file: &ModelFile,
    model: &Path,
    shapes: &[Vec<usize>],
    data: &[&[f32]],
    threads: usize,
) -> Result<Vec<Output>> {
    if file.format != crate::runtime::Format::Onnx {
        return Err(Error::Other(format!(
            "{}: ONNX Runtime runs ONNX files; an NNEF file runs on tract (--backend tract)",
            model.display()
        )));
    }
    crate::runtime::OrtModel::load_file(model, shapes, threads)?
        .run_multi(data)
        .map_err(|e| Error::Other(format!("{}: {e}", model.display())))
}

#[cfg(not(feature = "ort"))]
fn run_ort(
    _file: &ModelFile,
    _model: &Path,
    _shapes: &[Vec<usize>],
    _data: &[&[f32]],
    _threads: usize,
) -> Result<Vec<Output>> {
    Engine::ort()?;
    Err(Error::Other("ONNX Runtime is not in this build".into()))
}
