//! `allconv rehead` as a user runs it: every output format, `--json`, clear errors, nothing
//! written on failure. (The numbers are proven in tests/rehead.rs.)

mod common;

use std::process::Command;

fn allconv(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_allconv"))
        .args(args)
        .output()
        .expect("allconv runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn rehead_writes_h5_onnx_and_safetensors() {
    let tmp = std::env::temp_dir().join(format!("allconv-cli-rehead-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let patch = common::fixtures_dir().join("k208_yaroslav_patch/model.h5");
    let patch = patch.to_str().unwrap();
    let top = "heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut";
    for ext in ["h5", "onnx", "safetensors"] {
        let out = tmp.join(format!("whole.{ext}"));
        let (ok, stdout, stderr) = allconv(&[
            "rehead",
            patch,
            "-o",
            out.to_str().unwrap(),
            "--input-size",
            "1024x768",
            "--top",
            top,
            "--seed",
            "3",
            "--json",
        ]);
        assert!(ok, "{ext}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        assert_eq!(v["recipe"], top);
        assert_eq!(v["cut"], "block6_pool");
        assert_eq!(v["top_layer_nb"], 8);
        assert!(out.is_file(), "{ext} written");
    }
    // The ONNX file runs, and computes what the .h5 of the same seed computes.
    #[cfg(feature = "torch")]
    {
        let d = common::onnx_vs_h5(&tmp.join("whole.onnx"), &tmp.join("whole.h5"), (1024, 768));
        println!("rehead: whole.onnx (tract) vs whole.h5 (libtorch): {d:.2e} x range");
        assert!(
            d <= allconv::verify::CROSS_RUNTIME_ATOL,
            "whole.onnx vs whole.h5: {d:e} x range"
        );
    }
    // The .h5 reads back as the model it describes.
    let (ok, stdout, stderr) =
        allconv(&["inspect", tmp.join("whole.h5").to_str().unwrap(), "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["keras_version"], "2.0.8");
    // Too small: a clear error, nothing written.
    let out = tmp.join("small.h5");
    let (ok, _, stderr) = allconv(&[
        "rehead",
        patch,
        "-o",
        out.to_str().unwrap(),
        "--input-size",
        "300x200",
        "--top",
        top,
    ]);
    assert!(
        !ok && stderr.contains("smallest size that works is"),
        "{stderr}"
    );
    assert!(!out.exists());
    // A bad recipe and an unknown cut name what is wrong.
    let (ok, _, stderr) = allconv(&[
        "rehead",
        patch,
        "-o",
        out.to_str().unwrap(),
        "--input-size",
        "800x800",
        "--top",
        "mlp:3",
    ]);
    assert!(!ok && stderr.contains("mlp"), "{stderr}");
    let (ok, _, stderr) = allconv(&[
        "rehead",
        patch,
        "-o",
        out.to_str().unwrap(),
        "--input-size",
        "800x800",
        "--top",
        "vgg:8x1",
        "--cut",
        "nope",
    ]);
    assert!(!ok && stderr.contains("nope"), "{stderr}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&tmp).ok();
}
