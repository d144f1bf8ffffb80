//! `allconv bench`: conversion time (full build) and tract latency, measured, never asserted.

use crate::{fail, parse_size, Size};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Time .h5 -> .onnx on disk (median of --repeats).
    #[cfg(feature = "keras")]
    #[command(after_help = crate::cli::examples::BENCH_CONVERT)]
    Convert {
        #[command(flatten)]
        model: crate::ModelArgs,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long)]
        json: bool,
    },
    /// Time tract on an .onnx or .nnef.tgz, or libtorch on a Keras .h5 (as `predict` runs
    /// it: BatchNormalization folded), at a fixed input shape, e.g. --shape 1x1152x896x3.
    #[command(after_help = crate::cli::examples::BENCH_RUN)]
    Run {
        model: PathBuf,
        #[arg(long, value_parser = parse_size)]
        shape: Size,
        /// Threads (default: every available core).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Also time every node (as many runs again) and print the time per op type.
        #[arg(long)]
        profile: bool,
        /// With --profile: how many of the slowest nodes to list.
        #[arg(long, default_value_t = 10)]
        profile_nodes: usize,
        /// Engine: tract (.onnx, .nnef.tgz), ort (ONNX Runtime, .onnx), torch (libtorch, .h5);
        /// default: torch for a .h5, tract otherwise.
        #[arg(long, value_parser = ["tract", "ort", "torch"])]
        backend: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn main(cmd: BenchCmd) -> ExitCode {
    use allconv::bench::bench_run;
    let (json, result) = match cmd {
        #[cfg(feature = "keras")]
        BenchCmd::Convert {
            model,
            output,
            repeats,
            json,
        } => {
            use allconv::bench::bench_convert;
            let export = allconv::onnx::ExportOptions {
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
            model,
            shape,
            threads,
            runs,
            profile,
            profile_nodes,
            backend,
            json,
        } => {
            let threads = threads.unwrap_or_else(allconv::runtime::default_threads);
            let keras = model.extension().is_some_and(|e| e == "h5" || e == "hdf5");
            let r = if let Some(r) = check_backend(&model, keras, backend.as_deref(), profile) {
                r.and_then(|()| run_ort(&model, &shape, threads, runs))
            } else if keras {
                run_keras(&model, &shape, threads, runs, profile)
            } else {
                bench_run(
                    &model,
                    &shape,
                    threads,
                    runs,
                    profile.then_some(profile_nodes),
                )
            };
            let r = r.map(|r| {
                let estimate = r.activation_estimate_mb.map(|mb| format!(" (activations estimated {mb:.0} MiB)")).unwrap_or_default();
                let text = format!("{} {} {:?}, {} threads: {:.1} ms (median of {}), load {:.2} s, first result {:.2} s, peak {:.0} MiB{estimate}\n", r.runtime, r.model, r.input_shape, r.threads, r.latency_ms, r.runs, r.load_s, r.first_result_s, r.peak_mb);
                let kernels = r.tract_kernels.as_ref().map(|k| format!("tract kernels: {k}\n")).unwrap_or_default();
                let mut text = text + &kernels + &profile_table(r.profile.as_deref().unwrap_or_default());
                for n in &r.slowest_nodes {
                    text += &format!("{:>8.1} ms  {} {}: {}\n", n.ms, n.op, n.node, n.info);
                }
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

/// `--backend` against the file: `None` where the default path applies (tract, or libtorch
/// for a .h5), `Some(Ok)` to run ONNX Runtime, `Some(Err)` for a mismatch.
fn check_backend(
    model: &std::path::Path,
    keras: bool,
    backend: Option<&str>,
    profile: bool,
) -> Option<allconv::Result<()>> {
    let bad = |m: &str| {
        Some(Err(allconv::Error::Other(format!(
            "{}: {m}",
            model.display()
        ))))
    };
    match (backend, keras) {
        (None, _) | (Some("tract"), false) | (Some("torch"), true) => None,
        (Some("tract"), true) => {
            bad("--backend tract runs .onnx and .nnef.tgz files; convert the .h5 first")
        }
        (Some("torch"), false) => bad("--backend torch runs Keras .h5 files"),
        (Some("ort"), true) => bad("--backend ort runs .onnx files; convert the .h5 first"),
        (Some("ort"), false) if profile => {
            bad("--profile times tract's nodes; use --backend tract")
        }
        (Some("ort"), false) => Some(Ok(())),
        (Some(other), _) => bad(&format!("unknown --backend {other}")),
    }
}

/// An ONNX file on ONNX Runtime, where this build has it.
fn run_ort(
    model: &std::path::Path,
    shape: &[usize],
    threads: usize,
    runs: usize,
) -> allconv::Result<allconv::bench::RunBench> {
    allconv::runtime::Engine::ort()?;
    #[cfg(feature = "ort")]
    {
        allconv::bench::bench_run_ort(model, shape, threads, runs)
    }
    #[cfg(not(feature = "ort"))]
    {
        let _ = (model, shape, threads, runs);
        Err(allconv::Error::Other(
            "ONNX Runtime is not in this build".into(),
        ))
    }
}

/// A Keras .h5 runs on libtorch, where this build has it; tract's profiler does not apply.
fn run_keras(
    model: &std::path::Path,
    shape: &[usize],
    threads: usize,
    runs: usize,
    profile: bool,
) -> allconv::Result<allconv::bench::RunBench> {
    let bad = |m: &str| allconv::Error::Other(format!("{}: {m}", model.display()));
    if profile {
        return Err(bad("--profile times tract's nodes; give the .onnx file"));
    }
    #[cfg(feature = "torch")]
    {
        allconv::bench::bench_run_torch(model, shape, threads, runs)
    }
    #[cfg(not(feature = "torch"))]
    {
        let _ = (shape, threads, runs);
        Err(bad("a Keras .h5 runs on libtorch, and this build has no `torch` feature; convert it to .onnx for tract"))
    }
}

/// The per-op profile as a table, with each op's share of the profiled run.
fn profile_table(ops: &[allconv::bench::OpTime]) -> String {
    if ops.is_empty() {
        return String::new();
    }
    let total: f64 = ops.iter().map(|o| o.ms).sum();
    let mut t = format!(
        "{:<28} {:>6} {:>10} {:>7}\n",
        "op (tract)", "nodes", "ms", "share"
    );
    for o in ops {
        t += &format!(
            "{:<28} {:>6} {:>10.1} {:>6.1}%\n",
            o.op,
            o.nodes,
            o.ms,
            100.0 * o.ms / total.max(f64::MIN_POSITIVE)
        );
    }
    t + &format!("{:<28} {:>6} {:>10.1}\n", "total (profiled)", "", total)
}
