//! The `allconv` command line: parse, dispatch, print. No model logic lives here.

#[cfg(feature = "keras")]
use allconv::keras::ReadOptions;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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

// jemalloc is the process's malloc in the full build (the feature `jemalloc`): linked here, it
// serves libtorch's and the C libraries' allocations too. Its configuration: see allconv::heap.
#[cfg(feature = "jemalloc")]
use tikv_jemalloc_sys as _;

/// jemalloc's start-up options (`malloc_conf`, read before the first allocation): freed pages
/// are kept for reuse, never purged, as allconv::heap explains.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8] = allconv::heap::JEMALLOC_CONF;

/// `allconv --version`: the version, then the tract, HDF5 and libtorch versions this build
/// has in it and its features (written by build.rs).
const LONG_VERSION: &str = include_str!(concat!(env!("OUT_DIR"), "/long_version.txt"));

#[derive(Parser)]
#[command(
    name = "allconv",
    version,
    long_version = LONG_VERSION,
    about = "Legacy Keras mammography models -> IR -> ONNX / tract",
    after_help = cli::examples::ALLCONV
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Change a bound on what one input may cost, e.g. `--limit activation-bytes=32G`
    /// (repeatable). Names: image-side, image-pixels, h5-dataset-bytes,
    /// h5-attribute-bytes, json-bytes, json-depth, layers, activation-bytes. See
    /// docs/security.md.
    #[arg(long = "limit", global = true, value_name = "NAME=VALUE")]
    limits: Vec<String>,
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

#[cfg(feature = "keras")]
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
    #[cfg(feature = "keras")]
    #[command(after_help = cli::examples::INSPECT)]
    Inspect(cli::inspect::InspectArgs),
    /// Class probabilities for images (.onnx, .nnef.tgz or .h5 model); --heatmap for patch
    /// classifiers.
    #[command(after_help = cli::examples::PREDICT)]
    Predict(cli::predict::PredictArgs),
    /// Join the shards of `predict --manifest` into one .parquet or .csv; exit status 0
    /// only when every manifest row is there once.
    #[command(after_help = cli::examples::MERGE)]
    Merge(cli::merge::MergeArgs),
    /// Convert a Keras .h5 to ONNX or NNEF (format from the output extension).
    #[cfg(feature = "keras")]
    #[command(after_help = cli::examples::CONVERT)]
    Convert(cli::convert::ConvertArgs),
    /// A classifier on a labelled test set: AUROC with 95% intervals (bootstrap, DeLong),
    /// single vs 4-flip TTA, operating points, ROC plot, per-image scores CSV.
    #[command(after_help = cli::evaluate::EXAMPLES)]
    Evaluate(Box<cli::evaluate::EvaluateArgs>),
    /// Run a model (.onnx, .nnef.tgz, or .h5 via ONNX in memory) with tract and compare to
    /// a reference or to its embedded test vectors.
    #[command(after_help = cli::examples::VERIFY)]
    Verify(cli::verify::VerifyArgs),
    /// Measure (never assert) conversion time, tract latency and peak memory.
    #[command(subcommand, after_help = cli::examples::BENCH)]
    Bench(cli::bench::BenchCmd),
    /// Patch classifier -> whole-image classifier, as the paper's add_top_layers builds it.
    #[cfg(feature = "keras")]
    #[command(after_help = cli::examples::REHEAD)]
    Rehead(cli::rehead::ReheadArgs),
    /// Write a synthetic two-class set of 16-bit mammogram-like PNGs (to try finetune).
    #[command(after_help = cli::examples::SYNTH)]
    Synth(cli::synth::SynthArgs),
    /// Sample training patches from mammograms and ROI masks (the paper's
    /// sample_patches_combined.py); mini-MIAS circles with --annotations mias:Info.txt.
    #[command(after_help = cli::sample_patches::EXAMPLES)]
    SamplePatches(cli::sample_patches::SamplePatchesArgs),
    /// Fine-tune on folders of labelled images: the paper's two-stage training (libtorch).
    #[cfg(feature = "torch")]
    #[command(after_help = cli::examples::FINETUNE)]
    Finetune(Box<cli::finetune::FinetuneArgs>),
    /// Train a patch classifier (ResNet50, VGG16, VGG19 or YaroslavNet) in the paper's three
    /// stages (patch_clf_train.py), on the folders sample-patches writes (libtorch).
    #[cfg(feature = "torch")]
    #[command(after_help = cli::examples::TRAIN_PATCH)]
    TrainPatch(Box<cli::train_patch::TrainPatchArgs>),
    /// Shell completions: print the script for bash, elvish, fish, powershell or zsh.
    #[command(after_help = cli::examples::COMPLETIONS)]
    Completions(cli::shell::CompletionsArgs),
    /// Man pages: print allconv.1, or write one page per command into a folder (-o).
    #[command(after_help = cli::examples::MAN)]
    Man(cli::shell::ManArgs),
    /// (full build only) inspect a Keras file.
    #[cfg(not(feature = "keras"))]
    Inspect(cli::FullBuildOnly),
    /// (full build only) convert a Keras .h5.
    #[cfg(not(feature = "keras"))]
    Convert(cli::FullBuildOnly),
    /// (full build only) re-head a patch classifier.
    #[cfg(not(feature = "keras"))]
    Rehead(cli::FullBuildOnly),
    /// (full build only) fine-tune with libtorch.
    #[cfg(not(feature = "torch"))]
    Finetune(cli::FullBuildOnly),
    /// (full build only) train a patch classifier with libtorch.
    #[cfg(not(feature = "torch"))]
    TrainPatch(cli::FullBuildOnly),
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
    // Check a command line without running it (tests/cli_help.rs does this for every
    // example in the help): a bad one has already exited with clap's error above.
    if std::env::var_os("ALLCONV_PARSE_ONLY").is_some() {
        return ExitCode::SUCCESS;
    }
    // Commands that run a network keep freed memory for the next run (or, in convert, for
    // the next layer of its one run): see allconv::heap.
    if matches!(
        cli.command,
        Command::Predict(_)
            | Command::Evaluate(_)
            | Command::Bench(_)
            | Command::Finetune(_)
            | Command::TrainPatch(_)
            | Command::Convert(_)
    ) {
        allconv::heap::keep_freed_memory();
    }
    let mut limits = allconv::limits::current();
    for spec in &cli.limits {
        match limits.with(spec) {
            Ok(l) => limits = l,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    allconv::limits::set(limits);
    #[cfg(feature = "keras")]
    allconv::keras::hang_guard::arm(
        std::env::var("ALLCONV_H5_DEADLINE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(allconv::keras::hang_guard::DEFAULT_DEADLINE_S),
    );
    let code = match cli.command {
        Command::Predict(args) => cli::predict::main(args),
        Command::Merge(args) => cli::merge::main(args),
        Command::Evaluate(args) => cli::evaluate::main(*args),
        Command::Verify(args) => cli::verify::main(args),
        Command::Bench(cmd) => cli::bench::main(cmd),
        Command::Synth(args) => cli::synth::main(args),
        Command::SamplePatches(args) => cli::sample_patches::main(args),
        Command::Completions(args) => cli::shell::completions(args),
        Command::Man(args) => cli::shell::man(args),
        #[cfg(feature = "keras")]
        Command::Inspect(args) => cli::inspect::main(args),
        #[cfg(feature = "keras")]
        Command::Convert(args) => cli::convert::main(args),
        #[cfg(feature = "keras")]
        Command::Rehead(args) => cli::rehead::main(args),
        #[cfg(feature = "torch")]
        Command::Finetune(args) => cli::finetune::main(*args),
        #[cfg(feature = "torch")]
        Command::TrainPatch(args) => cli::train_patch::main(*args),
        #[cfg(not(feature = "keras"))]
        Command::Inspect(_) => cli::full_build_only("inspect", "keras"),
        #[cfg(not(feature = "keras"))]
        Command::Convert(_) => cli::full_build_only("convert", "keras"),
        #[cfg(not(feature = "keras"))]
        Command::Rehead(_) => cli::full_build_only("rehead", "keras"),
        #[cfg(not(feature = "torch"))]
        Command::Finetune(_) => cli::full_build_only("finetune", "torch"),
        #[cfg(not(feature = "torch"))]
        Command::TrainPatch(_) => cli::full_build_only("train-patch", "torch"),
    };
    exit_without_teardown(code)
}

/// End the process as soon as the command's work is done: flush stdout and stderr, then
/// `_exit`, skipping the C++ static destructors that libtorch and oneDNN run at `exit`
/// (75 ms on `predict`, 2.32 -> 2.24 s for 4 images; the kernel still frees the memory).
/// Every command has finished its files by now (written to a temporary, renamed) and
/// dropped its own values; nothing else is pending at exit.
fn exit_without_teardown(code: ExitCode) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    #[cfg(unix)]
    {
        // ExitCode keeps its value private; it compares equal to the code it was made from.
        let status = if code == ExitCode::SUCCESS {
            0
        } else {
            (1..=255u8)
                .find(|&k| ExitCode::from(k) == code)
                .map_or(1, i32::from)
        };
        // SAFETY: `_exit` ends the process without running atexit handlers; the output is
        // flushed above and no other thread holds work that must complete.
        unsafe { libc::_exit(status) }
    }
    #[cfg(not(unix))]
    code
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
