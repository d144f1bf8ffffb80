//! `allconv verify`: run a model with tract (or libtorch) and compare it to a genuine-Keras
//! reference or to the test vectors embedded in the file.

use crate::{fail, print_report, ModelArgs};
#[cfg(feature = "keras")]
use allconv::keras::read_model;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// io.npz with input, output and layer/* (required for .h5).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Runtime to check: tract (the ONNX export), ort (ONNX Runtime on an .onnx file) or
    /// torch (the libtorch lowering).
    #[arg(long, default_value = "tract", value_parser = ["tract", "ort", "torch"])]
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
    /// Fold BatchNormalization into the convolution before it (as `predict` runs a .h5 on
    /// libtorch); the folded convolutions' own outputs are not compared.
    #[arg(long)]
    fold_bn: bool,
    /// Threads for tract or ONNX Runtime (default: every available core).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
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

#[cfg(feature = "keras")]
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
            fold_bn: a.fold_bn,
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
        "this build has no libtorch backend (the full build has: cargo build --release)",
    )
}

pub fn main(a: VerifyArgs) -> ExitCode {
    use allconv::verify::{verify_onnx, VerifyOptions};
    let json = a.json;
    let opts = VerifyOptions {
        atol: a.atol,
        rtol: a.rtol,
        per_layer: a.per_layer,
        fold_bn: a.fold_bn,
        threads: a.threads.unwrap_or_else(allconv::runtime::default_threads),
        layer_atol_scaled: !a.absolute_layers,
        ..Default::default()
    };
    if a.backend == "torch" {
        return verify_torch_cmd(&a);
    }
    let is_h5 = a
        .model
        .model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"));
    if a.isolated || is_h5 {
        return verify_keras_cmd(&a, &opts);
    }
    if a.backend == "ort" {
        if is_h5 || a.isolated {
            return fail(
                json,
                format!(
                    "{}: --backend ort runs an .onnx file; convert the model first (allconv convert X.h5 -o X.onnx)",
                    a.model.model.display()
                ),
            );
        }
        let r = allconv::runtime::Engine::ort().and_then(|engine| {
            allconv::verify::verify_onnx_with(&a.model.model, a.reference.as_deref(), &opts, engine)
        });
        return verify_exit(json, r);
    }
    let r = verify_onnx(&a.model.model, a.reference.as_deref(), &opts);
    verify_exit(json, r)
}

/// A Keras `.h5`: exported to ONNX in memory (or run layer by layer with --isolated).
#[cfg(feature = "keras")]
fn verify_keras_cmd(a: &VerifyArgs, opts: &allconv::verify::VerifyOptions) -> ExitCode {
    if a.isolated {
        return verify_isolated_cmd(a, opts);
    }
    match &a.reference {
        Some(r) => verify_exit(
            a.json,
            allconv::verify::verify_h5(&a.model.model, &a.model.options(), r, opts),
        ),
        None => fail(a.json, "verifying an .h5 needs --reference io.npz"),
    }
}

#[cfg(not(feature = "keras"))]
fn verify_keras_cmd(a: &VerifyArgs, _opts: &allconv::verify::VerifyOptions) -> ExitCode {
    fail(
        a.json,
        format!(
            "{}: Keras .h5 models (and --isolated) need the full build of allconv; this inference-only build verifies .onnx and .nnef.tgz files",
            a.model.model.display()
        ),
    )
}
