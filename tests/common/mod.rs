//! Shared helpers for the fixture-driven tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `fixtures/` of the checkout; `ALLCONV_ROOT` overrides the compile-time path for a test
/// binary carried to another machine (scripts/gpu_check.sh).
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("ALLCONV_ROOT") {
        Some(r) => PathBuf::from(r).join("fixtures"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    }
}

/// Every model fixture: a directory with `expect.json` (written by genuine Keras).
pub fn model_fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.join("expect.json").is_file()
                && (p.join("model.h5").is_file() || p.join("weights.h5").is_file())
        })
        .collect();
    v.sort();
    v
}

pub fn expect(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("expect.json")).expect("expect.json readable");
    serde_json::from_str(&text).expect("expect.json is JSON")
}

/// Read options a fixture needs: the architecture JSON of weights-only cases, and the
/// backend of Keras 1 files (which do not record it; these were written on Theano).
pub fn read_options(dir: &Path) -> (PathBuf, allconv::keras::ReadOptions) {
    let mut o = allconv::keras::ReadOptions::default();
    let model = if dir.join("model.h5").is_file() {
        dir.join("model.h5")
    } else {
        dir.join("weights.h5")
    };
    if dir.join("model.json").is_file() {
        o.config_json = Some(dir.join("model.json"));
    }
    let e = expect(dir);
    if e["keras_version"]
        .as_str()
        .is_some_and(|v| v.starts_with('1'))
    {
        o.assume_backend = e["backend"]
            .as_str()
            .map(str::to_string)
            .or(Some("theano".into()));
    }
    (model, o)
}

/// A missing genuine framework skips a cross-check locally, but fails it where the test
/// command installed the frameworks (scripts/test.sh sets ALLCONV_REQUIRE_PYTHON=1).
pub fn skip_or_fail(what: &str) {
    assert!(
        std::env::var("ALLCONV_REQUIRE_PYTHON").is_err(),
        "ALLCONV_REQUIRE_PYTHON is set but {what}"
    );
    eprintln!("\n!!!!! SKIPPED: {what} !!!!!\n");
}

/// Layer classes with no activation of their own to compare: inputs, and nested models
/// (their inner layers are recorded one by one).
const NOT_COMPARED: &[&str] = &["InputLayer", "Model", "Functional", "Sequential"];

/// The `layer/<path>` activations a fixture's `expect.json` says genuine Keras recorded:
/// every layer of its table except inputs, nested-model rows and `layers_omitted` (left out
/// of `io.npz` to keep it small). A parity test must compare at least these.
pub fn recorded_layers(dir: &Path) -> Vec<String> {
    let e = expect(dir);
    let omitted: Vec<&str> = e["layers_omitted"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    e["layers"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| !NOT_COMPARED.contains(&r["class_name"].as_str().unwrap_or("")))
                .filter_map(|r| r["path"].as_str())
                .filter(|p| !omitted.contains(p))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// How many activations `expect.json` lists as omitted from `io.npz`.
pub fn omitted_count(dir: &Path) -> usize {
    expect(dir)["layers_omitted"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

/// Coverage of an end-to-end report: every recorded layer compared; skipped only a graph
/// input (an inner model's InputLayer computes nothing) and, with `fold_bn`, the layers
/// folding removed.
pub fn report_coverage_failures(
    name: &str,
    dir: &Path,
    r: &allconv::verify::VerifyReport,
    fold_bn: bool,
) -> Vec<String> {
    let folded: Vec<String> = r
        .skipped_layers
        .iter()
        .filter(|(_, why)| fold_bn && why.starts_with("folded into"))
        .map(|(k, _)| k.clone())
        .collect();
    let mut failures: Vec<String> = r
        .skipped_layers
        .iter()
        .filter(|(k, why)| !folded.contains(k) && why != "a graph input")
        .map(|(k, why)| format!("{name}: layer {k} not compared: {why}"))
        .collect();
    let mut covered: Vec<String> = r.layers.iter().map(|c| c.name.clone()).collect();
    covered.extend(folded);
    failures.extend(coverage_failures(name, dir, &covered, &[]));
    failures
}

/// Per-fixture coverage: every recorded layer was compared, except those whose input
/// activation was omitted (allowed only when the fixture omits some). `compared` are layer
/// paths (no `layer/` prefix); `starved` the layers skipped because an input was omitted.
pub fn coverage_failures(
    name: &str,
    dir: &Path,
    compared: &[String],
    starved: &[String],
) -> Vec<String> {
    let mut failures = Vec::new();
    let want = recorded_layers(dir);
    if want.is_empty() {
        failures.push(format!("{name}: expect.json records no layers"));
    }
    let omitted = omitted_count(dir);
    if starved.len() > omitted {
        failures.push(format!(
            "{name}: {} layers skipped for an unrecorded input, but only {omitted} activations are omitted: {starved:?}",
            starved.len()
        ));
    }
    let missing: Vec<&String> = want
        .iter()
        .filter(|p| !compared.contains(p) && !starved.contains(p))
        .collect();
    if !missing.is_empty() {
        failures.push(format!(
            "{name}: {} of {} recorded layers not compared: {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(8)]
        ));
    }
    failures
}

/// Fixtures whose deep layers genuine Keras itself computes further than 1e-4 x range from
/// the float64 run of the same graph (float64_anchor.rs measures it; measured on this
/// project's machine: k208_resnet50_patch 1.31e-4 at bn5c_branch2c, tfk_resnet50_whole
/// 2.64e-4 at batch_normalization_6, rehead_resnet50_resnet 2.02e-4): Keras's own float32
/// rounding through ~50
/// BatchNorms. The bound stated here is what float64_anchor.rs asserts. These numbers do
/// not depend on the CPU: Keras's values are recorded, the float64 run is exact enough.
pub const KERAS_FLOAT32_DRIFT: &[(&str, f32)] = &[
    ("k208_resnet50_patch", 1.5e-4),
    ("k208tf_resnet50_patch", 1.5e-4),
    ("tfk_resnet50_whole", 3e-4),
    // The same ResNet50 patch network under a re-headed top: 2.02e-4 at
    // batch_normalization_7.
    ("rehead_resnet50_resnet", 2.5e-4),
];

/// The per-layer bound (times the layer's range) for Keras float32 vs the float64 graph.
pub fn keras_drift_bound(name: &str) -> f32 {
    KERAS_FLOAT32_DRIFT
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or(1e-4)
}

/// How far genuine Keras's float32 numbers are from exact arithmetic on this fixture: the
/// largest `|Keras - float64| / max(1, max|float64|)` over the output and every recorded
/// layer, and where. This is the fixture's float32 envelope: how much rounding alone moves
/// a float32 evaluation of this network on this input.
pub fn keras_float32_error(
    keras: &std::collections::BTreeMap<String, allconv::onnx::meta::Array>,
    exact: &std::collections::BTreeMap<String, allconv::onnx::meta::Array>,
) -> (f32, String) {
    let mut worst = (0f32, String::new());
    for (k, t) in exact
        .iter()
        .filter(|(k, _)| *k == "output" || k.starts_with("layer/"))
    {
        let Some(kv) = keras.get(k) else { continue };
        if kv.data.len() != t.data.len() {
            continue;
        }
        let scale = t.data.iter().fold(1f32, |m, x| m.max(x.abs()));
        let e = kv
            .data
            .iter()
            .zip(&t.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
            / scale;
        if e > worst.0 {
            worst = (e, k.clone());
        }
    }
    worst
}

/// What a float32 runtime is held to against the float64 graph, per unit of range (the
/// output and every layer): [`RUNTIME_FACTOR`] times Keras's own float32 error on the
/// fixture, and never tighter than 1e-4 (`max(3 x err, 1e-4)`). Float32 runtimes summing in
/// another order land at the same order of error as Keras; the parity tests print each
/// runtime's error beside the bound.
pub fn runtime_bound(keras_error: f32) -> f32 {
    (RUNTIME_FACTOR * keras_error).max(1e-4)
}

/// See [`runtime_bound`].
pub const RUNTIME_FACTOR: f32 = 3.0;

/// The largest error of a report per unit of range of the reference (`exact`'s arrays).
pub fn worst_relative(
    r: &allconv::verify::VerifyReport,
    exact: &std::collections::BTreeMap<String, allconv::onnx::meta::Array>,
) -> f32 {
    r.outputs
        .iter()
        .map(|c| (c, "output".to_string()))
        .chain(r.layers.iter().map(|c| (c, format!("layer/{}", c.name))))
        .map(|(c, key)| {
            let scale = exact
                .get(&key)
                .map(|a| a.data.iter().fold(1f32, |m, x| m.max(x.abs())))
                .unwrap_or(1.0);
            c.max_abs_err / scale
        })
        .fold(0f32, f32::max)
}

/// Run the `allconv` binary with a deadline (a hang is a failure, not a stuck CI); returns
/// (exit code, `None` when killed by a signal; stderr).
pub fn allconv_with_deadline<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    seconds: u64,
) -> (Option<i32>, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_allconv"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("allconv runs");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if start.elapsed() > Duration::from_secs(seconds) {
            let _ = child.kill();
            let shown: Vec<String> = args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().to_string())
                .collect();
            panic!("allconv {shown:?} hung for {seconds} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The interpreter with onnx and onnxruntime: `.venv-tf/bin/python` (converters/setup.sh),
/// else `python3`.
pub fn tf_python() -> String {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tf/bin/python");
    if venv.is_file() {
        venv.display().to_string()
    } else {
        "python3".into()
    }
}

/// Whether `py` can import onnx and onnxruntime.
pub fn onnx_importable(py: &str) -> bool {
    std::process::Command::new(py)
        .args(["-c", "import onnx, onnxruntime"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs an ONNX file a command wrote (tract) and the `.h5` it wrote beside it (libtorch, from
/// allconv's reading of the file) on the same seeded input of spatial size `hw`, and returns
/// the largest difference per unit of the output's range. The `.h5` side is proven against
/// genuine Keras elsewhere; this proves the ONNX file runs and computes the same network.
#[cfg(feature = "torch")]
pub fn onnx_vs_h5(onnx: &Path, h5: &Path, hw: (usize, usize)) -> f32 {
    use allconv::torch::{from_host, to_host, TorchModel};
    let g = allconv::keras::read_model(h5, &allconv::keras::ReadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", h5.display()));
    let input = &g.inputs[0];
    assert!(
        matches!(input.data_format, allconv::ir::DataFormat::ChannelsLast),
        "channels-last input"
    );
    let channels = input
        .shape
        .last()
        .and_then(|d| d.known())
        .expect("known channels");
    let shape = vec![1, hw.0, hw.1, channels];
    let n: usize = shape.iter().product();
    // A fixed pseudo-random input in [-1, 1).
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let file = allconv::runtime::ModelFile::open(onnx)
        .unwrap_or_else(|e| panic!("{}: {e}", onnx.display()));
    let tract = file
        .load(&[shape.clone()], 2)
        .and_then(|m| m.run(&data))
        .unwrap_or_else(|e| panic!("{} on tract: {e}", onnx.display()));
    let t = TorchModel::new(&g, tch::Device::Cpu).expect("libtorch loads the .h5 graph");
    let x = from_host(&shape, &data, tch::Device::Cpu).expect("input");
    let want = to_host(&t.forward_t(&x, false).expect("libtorch runs")).expect("host");
    assert_eq!(tract[0].data.len(), want.data.len(), "output sizes");
    assert!(!want.data.is_empty());
    let range = want.data.iter().fold(1f32, |m, v| m.max(v.abs()));
    tract[0]
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / range
}

/// Fixtures with a genuine-Keras `io.npz` and one input (a file's embedded test vectors
/// hold one input; multi-input models refuse them).
pub fn single_input_keras_fixtures() -> Vec<PathBuf> {
    model_fixtures()
        .into_iter()
        .filter(|d| d.join("io.npz").is_file())
        .filter(|d| {
            let refs = allconv::verify::npz::read_npz(&d.join("io.npz")).expect("io.npz");
            refs.contains_key("input") && !refs.contains_key("input_1")
        })
        .collect()
}

/// The first difference between two JSON values, with its path. Numbers compare exactly
/// as the doubles Keras wrote (float32-valued ones, like the L2 factor, included).
pub fn json_diff(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => {
                        if let Some(d) = json_diff(va, vb, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    (va, vb) => return Some(format!("{path}.{k}: {va:?} vs {vb:?}")),
                }
            }
            None
        }
        (serde_json::Value::Array(x), serde_json::Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} vs {} items", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (va, vb))| json_diff(va, vb, &format!("{path}[{i}]")))
        }
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
            (x.as_f64() != y.as_f64()).then(|| format!("{path}: {x} vs {y}"))
        }
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}
