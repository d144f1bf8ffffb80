//! The `allconv` command line: parse, dispatch, print. No model logic lives here.

use allconv::keras::{read_model, ReadOptions};
use allconv::report::InspectReport;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod predict;

/// Print to stdout; a closed pipe (`allconv ... | head`) ends the output quietly instead of
/// panicking like `println!`.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

mod cli;

#[derive(Parser)]
#[command(
    name = "allconv",
    version,
    about = "Legacy Keras mammography models -> IR -> ONNX / tract"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A spatial size (HxW or L). An alias so clap's derive does not read `Vec` as "many values".
type Size = Vec<usize>;

#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// Keras .h5 file (full model, or weights-only with --config).
    model: PathBuf,
    /// Architecture JSON (model.to_json()) for a weights-only file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Backend that wrote the kernels, for files that do not record it (Keras 1).
    #[arg(long, value_parser = ["tensorflow", "theano"])]
    source_backend: Option<String>,
    /// Fix the input's spatial size, e.g. 1152x896 (HxW) or 128 for 1-D models; `any`
    /// frees a declared size (one ONNX file for every size).
    #[arg(long, value_parser = parse_size_or_any)]
    input_size: Option<Size>,
}

/// `--input-size`: a size, or `any` (an empty size: the declared size is freed).
fn parse_size_or_any(s: &str) -> Result<Vec<usize>, String> {
    if s.eq_ignore_ascii_case("any") {
        Ok(vec![])
    } else {
        parse_size(s)
    }
}

impl ModelArgs {
    fn options(&self) -> ReadOptions {
        ReadOptions {
            config_json: self.config.clone(),
            assume_backend: self.source_backend.clone(),
            input_size: self.input_size.clone().filter(|s| !s.is_empty()),
            any_size: self.input_size.as_ref().is_some_and(|s| s.is_empty()),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Show what a Keras file holds: versions, layers, shapes, parameters.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Class probabilities for images (.onnx or .h5 model); --heatmap for patch classifiers.
    Predict(predict::PredictArgs),
    /// Convert a Keras .h5 to ONNX (format from the output extension).
    Convert(ConvertArgs),
    /// Run a model (.h5 via ONNX in memory, or .onnx) with tract and compare to a reference.
    Verify(VerifyArgs),
    /// Measure (never assert) conversion time, tract latency and peak memory.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Patch classifier -> whole-image classifier, as the paper's add_top_layers builds it.
    Rehead(cli::rehead::ReheadArgs),
    /// Write a synthetic two-class set of 16-bit mammogram-like PNGs (to try finetune).
    Synth(cli::synth::SynthArgs),
    /// Fine-tune on folders of labelled images: the paper's two-stage training (libtorch).
    #[cfg(feature = "torch")]
    Finetune(Box<cli::finetune::FinetuneArgs>),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time .h5 -> .onnx on disk (median of --repeats).
    Convert {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long)]
        json: bool,
    },
    /// Time tract on an .onnx at a fixed input shape, e.g. --shape 1x1152x896x3.
    Run {
        onnx: PathBuf,
        #[arg(long, value_parser = parse_size)]
        shape: Size,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
}

fn bench_cmd(cmd: BenchCmd) -> ExitCode {
    use allconv::bench::{bench_convert, bench_run};
    use allconv::onnx::ExportOptions;
    let (json, result) = match cmd {
        BenchCmd::Convert {
            model,
            output,
            repeats,
            json,
        } => {
            let export = ExportOptions {
                input_size: model.input_size.clone().filter(|s| !s.is_empty()),
                ..Default::default()
            };
            let r =
                bench_convert(&model.model, &model.options(), &export, &output, repeats).map(|r| {
                    let text = format!(
                        "convert {}: {:.3} s (median of {}), {} bytes, peak {:.0} MiB\n",
                        r.model, r.convert_s, r.repeats, r.onnx_bytes, r.peak_mb
                    );
                    (serde_json::to_value(&r), text)
                });
            (json, r)
        }
        BenchCmd::Run {
            onnx,
            shape,
            threads,
            runs,
            json,
        } => {
            let r = bench_run(&onnx, &shape, threads, runs).map(|r| {
                let text = format!("tract {} {:?}, {} threads: {:.1} ms (median of {}), load {:.2} s, peak {:.0} MiB\n", r.model, r.input_shape, r.threads, r.latency_ms, r.runs, r.load_s, r.peak_mb);
                (serde_json::to_value(&r), text)
            });
            (json, r)
        }
    };
    match result {
        Ok((Ok(v), text)) => {
            if json {
                outln!("{v}");
            } else {
                out!("{text}");
            }
            ExitCode::SUCCESS
        }
        Ok((Err(e), _)) => fail(json, e),
        Err(e) => fail(json, e),
    }
}

fn parse_size(s: &str) -> Result<Vec<usize>, String> {
    s.split(['x', 'X', ','])
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad size {s:?}: expected HxW like 1152x896"))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| {
            if v.iter().any(|&n| n == 0) {
                Err("sizes must be positive".into())
            } else {
                Ok(v)
            }
        })
}

fn fail(json: bool, err: impl std::fmt::Display) -> ExitCode {
    if json {
        outln!(
            "{}",
            serde_json::json!({"error": err.to_string(), "passed": false})
        );
    }
    eprintln!("error: {err}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Predict(args) => predict::main(args),
        Command::Convert(args) => convert_cmd(args),
        Command::Verify(args) => verify_cmd(args),
        Command::Bench(cmd) => bench_cmd(cmd),
        Command::Rehead(args) => cli::rehead::main(args),
        Command::Synth(args) => cli::synth::main(args),
        #[cfg(feature = "torch")]
        Command::Finetune(args) => cli::finetune::main(*args),
        Command::Inspect { model, json } => match read_model(&model.model, &model.options()) {
            Ok(g) => {
                let r = InspectReport::new(&g);
                if json {
                    match serde_json::to_string_pretty(&r) {
                        Ok(s) => outln!("{s}"),
                        Err(e) => return fail(json, e),
                    }
                } else {
                    out!("{}", r.to_text());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(json, e),
        },
    }
}

#[derive(clap::Args)]
struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output file: .onnx, .h5 (Keras file in the source's dialect) or .safetensors.
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
    /// Threads for tract (test-vector run).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// io.npz with input, output and layer/* (required for .h5).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Runtime to check: tract (the ONNX export) or torch (the libtorch lowering).
    #[arg(long, default_value = "tract", value_parser = ["tract", "torch"])]
    backend: String,
    /// Device for --backend torch: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compare every layer/<path> activation present in the reference.
    #[arg(long)]
    per_layer: bool,
    #[arg(long, default_value_t = allconv::verify::DEFAULT_ATOL)]
    atol: f32,
    #[arg(long, default_value_t = allconv::verify::DEFAULT_RTOL)]
    rtol: f32,
    /// Hold every layer to the absolute --atol (default: atol x max(1, max|reference|) per
    /// layer, since float32 rounding accumulates with depth in every runtime; outputs are
    /// always held to the absolute --atol).
    #[arg(long)]
    absolute_layers: bool,
    /// Run every recorded layer alone on the activations Keras fed it (from the npz) and
    /// hold it to the absolute --atol: a layer's own error, free of upstream drift.
    #[arg(long)]
    isolated: bool,
    #[arg(long)]
    fold_bn: bool,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    json: bool,
}

fn print_report<T: serde::Serialize>(
    json: bool,
    r: &T,
    text: impl FnOnce() -> String,
) -> Result<(), String> {
    if json {
        let s = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
        outln!("{s}");
    } else {
        out!("{}", text());
    }
    Ok(())
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

fn convert_cmd(a: ConvertArgs) -> ExitCode {
    use allconv::onnx::{ExportOptions, InGraphPreprocess, Tta};
    use allconv::verify::{convert, ConvertOptions};
    let json = a.json;
    match a.output.extension().and_then(|e| e.to_str()) {
        Some("onnx") => {}
        Some(ext @ ("h5" | "safetensors")) => return write_keras_cmd(&a, ext == "h5"),
        _ => {
            return fail(
                json,
                format!(
                    "{}: output must be .onnx, .h5 or .safetensors",
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
        threads: a.threads,
    };
    match convert(&a.model.model, &a.output, &opts) {
        Ok(r) => {
            let text = || {
                format!(
                    "wrote {} ({} bytes, opset {}, {} nodes, {} initializers); test vectors: {}{}\n",
                    r.output,
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

fn verify_exit(json: bool, r: allconv::Result<allconv::verify::VerifyReport>) -> ExitCode {
    match r {
        Ok(r) => {
            if let Err(e) = print_report(json, &r, || r.to_text()) {
                return fail(json, e);
            }
            if r.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(json, e),
    }
}

fn verify_isolated_cmd(a: &VerifyArgs, opts: &allconv::verify::VerifyOptions) -> ExitCode {
    let Some(reference) = &a.reference else {
        return fail(a.json, "--isolated needs --reference io.npz");
    };
    let r = read_model(&a.model.model, &a.model.options())
        .and_then(|g| allconv::verify::verify_layers_local(&g, reference, opts));
    match r {
        Ok((layers, skipped)) => {
            let passed = !layers.is_empty() && layers.iter().all(|c| c.passed);
            let max_abs_err = layers.iter().map(|c| c.max_abs_err).fold(0f32, f32::max);
            let report = serde_json::json!({"model": a.model.model.display().to_string(),
                "reference": reference.display().to_string(), "mode": "isolated layers",
                "atol": a.atol, "max_abs_err": max_abs_err, "passed": passed,
                "layers": layers, "skipped_layers": skipped});
            let text = || {
                let mut t = format!("{}: {} layers run alone on Keras's inputs: {}  max_abs_err {:.3e} (atol {:e})\n",
                    a.model.model.display(), layers.len(), if passed { "PASS" } else { "FAIL" }, max_abs_err, a.atol);
                for c in &layers {
                    t += &format!(
                        "  layer {:<40} {:?} max_abs_err {:.3e} {}\n",
                        c.name,
                        c.shape,
                        c.max_abs_err,
                        if c.passed { "ok" } else { "FAIL" }
                    );
                }
                for (k, why) in &skipped {
                    t += &format!("  skipped {k}: {why}\n");
                }
                t
            };
            if let Err(e) = print_report(a.json, &report, text) {
                return fail(a.json, e);
            }
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(a.json, e),
    }
}

#[cfg(feature = "torch")]
fn verify_torch_cmd(a: &VerifyArgs) -> ExitCode {
    use allconv::torch::{parse_device, verify_torch_with, TorchVerifyOptions};
    let Some(reference) = &a.reference else {
        return fail(a.json, "--backend torch needs --reference io.npz");
    };
    if a.fold_bn {
        return fail(a.json, "--fold-bn applies to the tract backend");
    }
    let device = match parse_device(&a.device) {
        Ok(d) => d,
        Err(e) => return fail(a.json, e),
    };
    let r = read_model(&a.model.model, &a.model.options()).and_then(|g| {
        let opts = TorchVerifyOptions {
            device,
            per_layer: a.per_layer,
            atol: a.atol,
            rtol: a.rtol,
            layer_atol_scaled: !a.absolute_layers,
            ..Default::default()
        };
        verify_torch_with(&g, &a.model.model.display().to_string(), reference, &opts)
    });
    verify_exit(a.json, r)
}

#[cfg(not(feature = "torch"))]
fn verify_torch_cmd(a: &VerifyArgs) -> ExitCode {
    fail(
        a.json,
        "this build has no libtorch backend (build with --features torch)",
    )
}

fn verify_cmd(a: VerifyArgs) -> ExitCode {
    use allconv::verify::{verify_h5, verify_onnx, VerifyOptions};
    let json = a.json;
    let opts = VerifyOptions {
        atol: a.atol,
        rtol: a.rtol,
        per_layer: a.per_layer,
        fold_bn: a.fold_bn,
        threads: a.threads,
        layer_atol_scaled: !a.absolute_layers,
        ..Default::default()
    };
    if a.backend == "torch" {
        return verify_torch_cmd(&a);
    }
    if a.isolated {
        return verify_isolated_cmd(&a, &opts);
    }
    let is_onnx = a.model.model.extension().and_then(|e| e.to_str()) == Some("onnx");
    let r = if is_onnx {
        verify_onnx(&a.model.model, a.reference.as_deref(), &opts)
    } else {
        match &a.reference {
            Some(r) => verify_h5(&a.model.model, &a.model.options(), r, &opts),
            None => return fail(json, "verifying an .h5 needs --reference io.npz"),
        }
    };
    verify_exit(json, r)
}
