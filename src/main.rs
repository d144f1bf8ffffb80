//! The `allconv` command line: parse, dispatch, print. No model logic lives here.

use allconv::keras::{read_model, ReadOptions};
use allconv::report::InspectReport;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod predict;

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
    /// Fix the input's spatial size, e.g. 1152x896 (HxW) or 128 for 1-D models.
    #[arg(long, value_parser = parse_size)]
    input_size: Option<Vec<usize>>,
}

impl ModelArgs {
    fn options(&self) -> ReadOptions {
        ReadOptions {
            config_json: self.config.clone(),
            assume_backend: self.source_backend.clone(),
            input_size: self.input_size.clone(),
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
        println!(
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
        Command::Inspect { model, json } => match read_model(&model.model, &model.options()) {
            Ok(g) => {
                let r = InspectReport::new(&g);
                if json {
                    match serde_json::to_string_pretty(&r) {
                        Ok(s) => println!("{s}"),
                        Err(e) => return fail(json, e),
                    }
                } else {
                    print!("{}", r.to_text());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(json, e),
        },
    }
}
