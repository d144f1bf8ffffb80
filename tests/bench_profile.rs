//! `allconv bench run --profile` (the README's "Where tract loses"): every node is timed,
//! the per-op table covers the whole plan, and matrix products carry the kernel tract
//! picked, and allconv's choice of tract's kernels for this CPU (src/runtime/kernels.rs)
//! is named and reaches the plan. The numbers are measurements; this checks the report's
//! structure and the kernels chosen, not speed.

mod common;

use std::process::{Command, Output};

/// The command's output, after asserting it succeeded (its stderr on failure).
fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn profile_lists_every_op_and_the_kernels() {
    let dir = std::env::temp_dir().join(format!("allconv-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("m.onnx");
    let model = common::fixtures_dir().join("k208_resnet50_whole_resnet/model.h5");
    let bin = env!("CARGO_BIN_EXE_allconv");
    succeeded(
        Command::new(bin)
            .args(["convert", model.to_str().unwrap()])
            .args(["-o", onnx.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let profile = |nodes: &str| -> serde_json::Value {
        let out = Command::new(bin)
            .args(["bench", "run", onnx.to_str().unwrap()])
            .args(["--shape", "1x225x177x3", "--runs", "2", "--threads", "1"])
            .args(["--profile", "--profile-nodes", nodes, "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&succeeded(out).stdout).unwrap()
    };
    let r = profile("4");
    let ops = r["profile"].as_array().expect("a per-op profile");
    let names: Vec<&str> = ops.iter().map(|o| o["op"].as_str().unwrap()).collect();
    assert!(names.contains(&"OptMatMul"), "{names:?}");
    let nodes: u64 = ops.iter().map(|o| o["nodes"].as_u64().unwrap()).sum();
    // Every convolution of the ResNet50 (53 of them) lands in some node of the plan.
    assert!(nodes >= 53, "{nodes} nodes profiled");
    let ms: Vec<f64> = ops.iter().map(|o| o["ms"].as_f64().unwrap()).collect();
    assert!(
        ms.windows(2).all(|w| w[0] >= w[1]),
        "not sorted by time: {ms:?}"
    );
    let slowest = r["slowest_nodes"].as_array().unwrap();
    assert_eq!(slowest.len(), 4);
    for n in slowest.iter().filter(|n| n["op"] == "OptMatMul") {
        assert!(n["info"].as_str().unwrap().contains("Mult: m:"), "{n}");
    }
    assert!(r["activation_estimate_mb"].as_f64().unwrap() > 0.0);
    // What chose the kernels is named, and allconv's edit for this CPU (AMD Zen 4: no
    // AVX-512 kernels) reached the plan tract built.
    let chosen = r["tract_kernels"].as_str().unwrap_or_default();
    assert_eq!(chosen, allconv::runtime::kernels::describe(), "{r}");
    if std::env::var_os("TRACT_CPU_ISA").is_none()
        && allconv::runtime::kernels::this_cpu_edit().is_some()
    {
        let every = profile("100000");
        let kernels: Vec<&str> = every["slowest_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["op"] == "OptMatMul")
            .filter_map(|n| n["info"].as_str())
            .collect();
        assert!(kernels.len() >= 53, "{} matrix products", kernels.len());
        for info in kernels {
            assert!(!info.contains("avx512_mmm"), "{info}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bench run MODEL.h5` times libtorch as `predict` runs it; tract's profiler is refused by
/// name there, never silently skipped.
#[cfg(feature = "torch")]
#[test]
fn a_keras_file_is_timed_on_libtorch() {
    let model = common::fixtures_dir().join("k208_resnet50_whole_resnet/model.h5");
    let bin = env!("CARGO_BIN_EXE_allconv");
    let run = |extra: &[&str]| {
        Command::new(bin)
            .args(["bench", "run", model.to_str().unwrap()])
            .args(["--shape", "1x225x177x3", "--runs", "2", "--threads", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = succeeded(run(&["--json"]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["runtime"], "libtorch", "{r}");
    assert!(r["format"].is_null(), "{r}");
    assert_eq!(r["input_shape"], serde_json::json!([1, 225, 177, 3]));
    let (load, first, ms) = (
        r["load_s"].as_f64().unwrap(),
        r["first_result_s"].as_f64().unwrap(),
        r["latency_ms"].as_f64().unwrap(),
    );
    assert!(load > 0.0 && first > load && ms > 0.0, "{r}");
    let out = run(&["--profile"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--profile times tract's nodes"), "{err}");
}
