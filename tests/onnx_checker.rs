//! Every fixture's ONNX passes `onnx.checker.check_model(full_check=True)` and
//! onnxruntime matches the genuine-Keras output within 1e-4
//! (`converters/onnx_check.py`). Skips loudly only when neither onnx nor onnxruntime
//! can be imported by `.venv-tf/bin/python` (or `python3`).
#![cfg(feature = "onnx")]

mod common;

use allconv::ir::DataFormat;
use allconv::keras::read_model;
use allconv::onnx::{export, ExportOptions};
use std::path::Path;
use std::process::Command;

#[test]
fn onnx_checker_and_onnxruntime_match_keras() {
    let py = common::tf_python();
    if !common::onnx_importable(&py) {
        assert!(
            std::env::var("ALLCONV_REQUIRE_PYTHON").is_err(),
            "ALLCONV_REQUIRE_PYTHON is set but `{py}` cannot import onnx and onnxruntime"
        );
        eprintln!("\n\n!!!!! SKIPPED onnx_checker: `{py}` cannot import onnx and onnxruntime; run converters/setup.sh (creates .venv-tf) !!!!!\n");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("converters/onnx_check.py");
    let tmp = std::env::temp_dir().join(format!("allconv-onnx-check-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut failures = Vec::new();
    let dirs = common::model_fixtures();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (model, opts) = common::read_options(dir);
        let g = match read_model(&model, &opts) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: read: {e}"));
                continue;
            }
        };
        let e = common::expect(dir);
        let shape: Vec<usize> = e["input_shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64())
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        let size = match (g.inputs.len(), g.inputs.first().map(|i| i.data_format)) {
            (1, Some(DataFormat::ChannelsLast)) if shape.len() >= 3 => {
                Some(shape[1..shape.len() - 1].to_vec())
            }
            (1, Some(DataFormat::ChannelsFirst)) if shape.len() >= 3 => Some(shape[2..].to_vec()),
            _ => None,
        };
        let eo = ExportOptions {
            input_size: size,
            debug_outputs: true,
            ..Default::default()
        };
        let ex = match export(&g, &eo) {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{name}: export: {e}"));
                continue;
            }
        };
        let path = tmp.join(format!("{name}.onnx"));
        std::fs::write(&path, ex.to_bytes().unwrap()).unwrap();
        let out = Command::new(&py)
            .arg(&script)
            .arg(&path)
            .arg(dir.join("io.npz"))
            .output()
            .expect("run onnx_check.py");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("{name}: {}", stdout.trim());
        if !out.status.success() {
            failures.push(format!(
                "{name}: {} {}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}
