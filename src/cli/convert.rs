//! `allconv convert`: a Keras .h5 to ONNX (with its test vector run), NNEF, .h5 or
//! .safetensors, by the output's extension.

use crate::{fail, print_report, ModelArgs};
use allconv::keras::read_model;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output file: .onnx, .nnef.tar / .nnef.tgz (tract's NNEF, for devices), .h5 (Keras file in the
    /// source's dialect) or .safetensors.
    #[arg(short, long)]
    output: PathBuf,
    /// ONNX opset (>= 13).
    #[arg(long, default_value_t = allconv::onnx::DEFAULT_OPSET)]
    opset: i64,
    /// Fold BatchNormalization into the preceding convolution.
    #[arg(long)]
    fold_bn: bool,
    /// The model takes NCHW instead of Keras's layout.
    #[arg(long)]
    nchw_input: bool,
    /// In-graph preprocessing, e.g. rescale=0.003891,mean=52.18,gray.
    #[arg(long)]
    preprocess: Option<String>,
    /// In-graph test-time augmentation: flips4.
    #[arg(long)]
    tta: Option<String>,
    /// Genuine-Keras io.npz: its first item becomes the embedded test vector.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Threads for the test-vector run (default: every available core).
    #[arg(long)]
    threads: Option<usize>,
    /// Who computes the embedded test vector without --reference: auto (libtorch on the
    /// graph where the file computes exactly the graph, else tract on the file) or tract
    /// (always the written file itself).
    #[arg(long, default_value = "auto", value_parser = ["auto", "tract"])]
    vector_backend: String,
    /// Weight storage in .onnx / .nnef.tgz: f32, or f16 (half the file, computed in f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    weights: String,
    #[arg(long)]
    json: bool,
}

/// `convert -o OUT.h5` (Keras full-model file, allconv::keras::writer) or
/// `-o OUT.safetensors` (graph.params): the weights as read, no ONNX options.
fn write_keras_cmd(a: &ConvertArgs, h5: bool) -> ExitCode {
    if a.fold_bn || a.preprocess.is_some() || a.tta.is_some() || a.nchw_input {
        return fail(
            a.json,
            "--fold-bn, --preprocess, --tta and --nchw-input apply to .onnx output only",
        );
    }
    let result = read_model(&a.model.model, &a.model.options()).and_then(|g| {
        if h5 {
            allconv::keras::writer::write_h5_from_graph(&g, &a.output)
        } else {
            allconv::safetensors::write_safetensors(&g, &a.output)
        }
        .map(|()| g.params.len())
    });
    match result {
        Ok(n) => {
            if a.json {
                outln!(
                    "{}",
                    serde_json::json!({"output": a.output.display().to_string(), "tensors": n})
                );
            } else {
                outln!("wrote {} ({n} tensors)", a.output.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(a.json, e),
    }
}

pub fn main(a: ConvertArgs) -> ExitCode {
    use allconv::onnx::{ExportOptions, InGraphPreprocess, Tta};
    use allconv::verify::{convert, ConvertOptions, OutputFormat, VectorBackend};
    let json = a.json;
    match a.output.extension().and_then(|e| e.to_str()) {
        Some("onnx" | "tgz" | "tar") => {}
        Some(ext @ ("h5" | "safetensors")) => {
            if a.weights != "f32" {
                return fail(json, "--weights f16 applies to .onnx and .nnef.tgz output");
            }
            return write_keras_cmd(&a, ext == "h5");
        }
        _ => {
            return fail(
                json,
                format!(
                    "{}: output must be .onnx, .nnef.tar, .nnef.tgz, .h5 or .safetensors",
                    a.output.display()
                ),
            )
        }
    }
    let preprocess = match a
        .preprocess
        .as_deref()
        .map(str::parse::<InGraphPreprocess>)
        .transpose()
    {
        Ok(p) => p,
        Err(e) => return fail(json, e),
    };
    let tta = match a.tta.as_deref().map(str::parse::<Tta>).transpose() {
        Ok(t) => t,
        Err(e) => return fail(json, e),
    };
    let opts = ConvertOptions {
        read: a.model.options(),
        export: ExportOptions {
            opset: a.opset,
            input_size: a.model.input_size.clone().filter(|s| !s.is_empty()),
            nchw_input: a.nchw_input,
            preprocess,
            tta,
            debug_outputs: false,
        },
        fold_bn: a.fold_bn,
        reference: a.reference.clone(),
        threads: a.threads.unwrap_or_else(allconv::runtime::default_threads),
        weights_f16: a.weights == "f16",
        vector_backend: if a.vector_backend == "tract" {
            VectorBackend::Tract
        } else {
            VectorBackend::Auto
        },
    };
    match convert(&a.model.model, &a.output, &opts) {
        Ok(r) => {
            let text = || {
                format!(
                    "wrote {} ({}, {} weights, {} bytes; ONNX opset {}, {} nodes, {} initializers); test vectors: {}{}\n",
                    r.output,
                    match r.format {
                        OutputFormat::Onnx => "ONNX",
                        OutputFormat::Nnef { gzip: false } => "NNEF tar",
                        OutputFormat::Nnef { gzip: true } => "NNEF tar.gz",
                    },
                    r.weights,
                    r.bytes,
                    r.opset,
                    r.onnx_nodes,
                    r.initializers,
                    r.test_vector_source,
                    r.reference_max_abs_err
                        .map(|e| format!(" (tract vs reference: max abs err {e:.3e})"))
                        .unwrap_or_default()
                )
            };
            match print_report(json, &r, text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(json, e),
            }
        }
        Err(e) => fail(json, e),
    }
}
