//! One ONNX file for every input size. A model with a strided TensorFlow `same` window
//! (the patch ResNet50's conv1 7x7/2, and every whole-image model built on it) is exported
//! ONCE with symbolic height and width: its pads, which depend on the size modulo the
//! stride, are computed in the graph (Shape -> arithmetic -> Pad). That one file then runs
//! in tract and in onnxruntime at several odd and even sizes and must match genuine
//! tf-keras 2.21 at the same sizes (`fixtures/<case>/io_sizes.npz`, written by
//! `converters/multisize_ref.py`) within the absolute 1e-4 held for outputs; onnx.checker
//! (full check) must pass on it.
//!
//! Files that declare a fixed input size are exported with that size freed in allconv's
//! graph (what the same file would be had it declared `(None, None, C)`), exactly as the
//! reference script rebuilds them in tf-keras; `tfk_functional` (Flatten + Dense head) is
//! cut after its last spatial layer on both sides.
#![cfg(feature = "runtime")]

mod common;

use allconv::ir::{Dim, Graph};
use allconv::keras::read_model;
use allconv::onnx::{export, ExportOptions};
use allconv::runtime::TractModel;
use allconv::verify::npz::read_npz;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const ATOL: f32 = 1e-4;

struct Case {
    name: &'static str,
    /// The file declares a fixed size: free it.
    free_size: bool,
    /// Compare this layer's output instead of the model's.
    cut: Option<&'static str>,
    /// Only this layer, fed the model's input (`<layer>/output_HxW` in the npz).
    alone: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        name: "k208tf_resnet50_patch",
        free_size: false,
        cut: None,
        alone: None,
    },
    Case {
        name: "k208tf_resnet50_whole_resnet",
        free_size: true,
        cut: None,
        alone: None,
    },
    Case {
        name: "tfk_sequential",
        free_size: true,
        cut: None,
        alone: None,
    },
    Case {
        name: "tfk_functional",
        free_size: true,
        cut: Some("avgpool_same"),
        alone: None,
    },
    // Its MaxPooling2D 2x2/2 same follows a ReLU in the model (any pad value <= 0 would
    // pass there): alone on the signed input, only -inf padding matches Keras.
    Case {
        name: "tfk_sequential",
        free_size: true,
        cut: None,
        alone: Some("pool1"),
    },
];

fn graph_for(case: &Case) -> Graph {
    let dir = common::fixtures_dir().join(case.name);
    let (model, mut opts) = common::read_options(&dir);
    // `--input-size any`: the declared size freed by the reader.
    opts.any_size = case.free_size;
    let mut g = read_model(&model, &opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    if case.free_size {
        assert!(
            g.inputs
                .iter()
                .all(|i| i.shape[..2].iter().all(|d| !matches!(d, Dim::Known(_)))),
            "{}: size not freed",
            case.name
        );
    }
    if let Some(cut) = case.cut {
        let at = g
            .nodes
            .iter()
            .position(|n| n.name == cut)
            .unwrap_or_else(|| panic!("{}: no node {cut}", case.name));
        // Nodes are in topological order: drop everything after `cut`.
        g.nodes.truncate(at + 1);
        g.outputs = vec![g.nodes[at].output];
    }
    if let Some(layer) = case.alone {
        let mut node = g
            .nodes
            .iter()
            .find(|n| n.name == layer)
            .unwrap_or_else(|| panic!("{}: no node {layer}", case.name))
            .clone();
        node.inputs = vec![g.inputs[0].value];
        g.outputs = vec![node.output];
        g.nodes = vec![node];
    }
    g
}

fn label(case: &Case) -> String {
    match case.alone {
        Some(l) => format!("{}/{l}", case.name),
        None => case.name.to_string(),
    }
}

type Pair = (allconv::onnx::meta::Array, allconv::onnx::meta::Array);

/// `HxW` -> (input, output) from io_sizes.npz (`<alone>/output_HxW` for a layer alone).
fn sizes(case: &Case) -> BTreeMap<String, Pair> {
    let prefix = case.alone.map(|l| format!("{l}/")).unwrap_or_default();
    let path = common::fixtures_dir().join(case.name).join("io_sizes.npz");
    let mut z = read_npz(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let keys: Vec<String> = z
        .keys()
        .filter_map(|k| k.strip_prefix("input_").map(str::to_string))
        .collect();
    let mut out = BTreeMap::new();
    for k in keys {
        let i = z.remove(&format!("input_{k}")).unwrap();
        let o = z
            .remove(&format!("{prefix}output_{k}"))
            .unwrap_or_else(|| panic!("{}: no {prefix}output_{k}", path.display()));
        out.insert(k, (i, o));
    }
    assert!(
        out.len() >= 3,
        "{}: want at least 3 sizes, found {}",
        path.display(),
        out.len()
    );
    out
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0f32,
            |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        )
}

/// The graph input's spatial dims are symbols, not numbers.
fn assert_symbolic(bytes: &[u8], what: &str) {
    let m = allconv::onnx::meta::parse_model(bytes).unwrap();
    let g = m.graph.as_ref().unwrap();
    let dims = &g.input[0].type_.tensor_type().shape.dim;
    let params: Vec<String> = dims
        .iter()
        .filter(|d| !d.has_dim_value())
        .map(|d| d.dim_param().to_string())
        .collect();
    assert!(
        params.len() >= 3,
        "{what}: input dims not symbolic: {dims:?}"
    );
    assert!(
        g.node
            .iter()
            .flat_map(|n| &n.attribute)
            .all(|a| a.name != "auto_pad"),
        "{what}: auto_pad is never written"
    );
}

/// Run `bytes` in tract at every recorded size; returns `(size, err)` rows.
fn tract_at_sizes(bytes: &[u8], case: &Case) -> Vec<(String, f32)> {
    let mut rows = Vec::new();
    let what = label(case);
    for (size, (i, o)) in sizes(case) {
        let m = TractModel::load(bytes, &i.shape, 2)
            .unwrap_or_else(|e| panic!("{what} {size}: tract load: {e}"));
        let got = m.run(&i.data).unwrap();
        assert_eq!(got[0].shape, o.shape, "{what} {size}: output shape");
        rows.push((size, max_abs(&got[0].data, &o.data)));
    }
    rows
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("allconv-symsize-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Each case exported once without a size; tract at every size matches tf-keras.
#[test]
fn one_file_every_size_tract() {
    let mut failures = Vec::new();
    for case in CASES {
        let g = graph_for(case);
        let ex = export(&g, &ExportOptions::default())
            .unwrap_or_else(|e| panic!("{}: export without a size: {e}", case.name));
        let bytes = ex.to_bytes().unwrap();
        let what = label(case);
        assert_symbolic(&bytes, &what);
        let in_graph = ex
            .model
            .graph
            .node
            .iter()
            .filter(|n| n.op_type == "Pad" && n.name.contains("/same_pads/"))
            .count();
        assert!(
            in_graph > 0,
            "{what}: a strided TensorFlow `same` window should be padded in the graph"
        );
        for (size, err) in tract_at_sizes(&bytes, case) {
            eprintln!("tract {what} {size}: max abs err {err:.3e}");
            if err > ATOL {
                failures.push(format!("{what} {size}: {err:e} > {ATOL:e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "tract vs tf-keras:\n{}",
        failures.join("\n")
    );
}

/// The same single files in onnxruntime at every size, and onnx.checker on them.
#[test]
fn one_file_every_size_onnxruntime() {
    let py = common::tf_python();
    if !common::onnx_importable(&py) {
        common::skip_or_fail(&format!(
            "`{py}` cannot import onnx and onnxruntime (run converters/setup.sh)"
        ));
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("converters/onnx_check.py");
    let tmp = tmp_dir("ort");
    let mut failures = Vec::new();
    for case in CASES {
        let g = graph_for(case);
        let what = label(case);
        let ex = export(&g, &ExportOptions::default()).unwrap();
        let path = tmp.join(format!("{}.onnx", what.replace('/', "_")));
        std::fs::write(&path, ex.to_bytes().unwrap()).unwrap();
        let npz = common::fixtures_dir().join(case.name).join("io_sizes.npz");
        let mut cmd = Command::new(&py);
        cmd.arg(&script).arg(&path).arg(&npz).arg("--sizes");
        if let Some(l) = case.alone {
            cmd.args(["--output-prefix", &format!("{l}/")]);
        }
        let out = cmd.output().expect("run onnx_check.py");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("onnxruntime {what}: {}", stdout.trim());
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
        if !out.status.success() || report["checker"] != "ok" || report["passed"] != true {
            failures.push(format!(
                "{what}: {} {}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let n_sizes = report["sizes"].as_object().map(|m| m.len()).unwrap_or(0);
        if n_sizes < 3 {
            failures.push(format!("{what}: only {n_sizes} sizes checked"));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        failures.is_empty(),
        "onnxruntime vs tf-keras:\n{}",
        failures.join("\n")
    );
}

/// With a size, the export is static and keeps explicit pads on the window ops (no
/// in-graph pads), and agrees with the symbolic file at that size.
#[test]
fn static_export_unchanged_and_agrees() {
    let case = &CASES[0];
    let g = graph_for(case);
    let sym = export(&g, &ExportOptions::default())
        .unwrap()
        .to_bytes()
        .unwrap();
    for (size, (i, o)) in sizes(case) {
        let hw = vec![i.shape[1], i.shape[2]];
        let ex = export(
            &g,
            &ExportOptions {
                input_size: Some(hw),
                ..Default::default()
            },
        )
        .unwrap();
        let nodes = &ex.model.graph.node;
        assert!(
            nodes.iter().all(|n| !n.name.contains("/same_pads/")
                && n.op_type != "Shape"
                && n.op_type != "Pad"),
            "{size}: a static export needs no in-graph pads"
        );
        let conv1 = nodes.iter().find(|n| n.name == "conv1").unwrap();
        let pads = &conv1
            .attribute
            .iter()
            .find(|a| a.name == "pads")
            .unwrap()
            .ints;
        // TensorFlow: 7x7/2 on n: total 6 (odd n) or 5 (even n), the odd pixel after.
        let want: Vec<i64> = {
            let p = |n: usize| if n % 2 == 1 { (3, 3) } else { (2, 3) };
            let (h, w) = (p(i.shape[1]), p(i.shape[2]));
            vec![h.0, w.0, h.1, w.1]
        };
        assert_eq!(pads, &want, "{size}: conv1 pads");
        let st = TractModel::load(&ex.to_bytes().unwrap(), &i.shape, 2)
            .unwrap()
            .run(&i.data)
            .unwrap();
        let sy = TractModel::load(&sym, &i.shape, 2)
            .unwrap()
            .run(&i.data)
            .unwrap();
        let between = max_abs(&st[0].data, &sy[0].data);
        let keras = max_abs(&st[0].data, &o.data);
        eprintln!("{size}: static vs symbolic {between:.3e}, static vs tf-keras {keras:.3e}");
        assert!(
            between <= 1e-6,
            "{size}: static and symbolic files differ by {between:e}"
        );
        assert!(keras <= ATOL, "{size}: static vs tf-keras {keras:e}");
    }
}

/// `allconv convert` without `--input-size` writes the symbolic file; with `--reference`
/// its embedded test vectors come from Keras and `allconv verify` passes on it; the same
/// file then runs at every recorded size.
#[test]
fn cli_convert_without_size_then_verify() {
    let dir = common::fixtures_dir().join("k208tf_resnet50_patch");
    let tmp = tmp_dir("cli");
    let out = tmp.join("patch.onnx");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(env!("CARGO_BIN_EXE_allconv"))
            .args(args)
            .output()
            .expect("allconv runs");
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, msg) = run(&[
        "convert".as_ref(),
        dir.join("model.h5").as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--reference".as_ref(),
        dir.join("io.npz").as_os_str(),
    ]);
    assert!(ok, "convert without --input-size: {msg}");
    assert!(
        msg.contains("keras_reference"),
        "test vectors from Keras: {msg}"
    );
    let (ok, msg) = run(&["verify".as_ref(), out.as_os_str()]);
    assert!(ok, "verify on embedded vectors: {msg}");
    let bytes = std::fs::read(&out).unwrap();
    assert_symbolic(&bytes, "cli");
    for (size, err) in tract_at_sizes(&bytes, &CASES[0]) {
        eprintln!("cli file, tract {size}: {err:.3e}");
        assert!(err <= ATOL, "cli file at {size}: {err:e}");
    }
    // A whole-image file declares its size (225x177 here, 1152x896 in the paper's):
    // `--input-size any` frees it, one file for every size.
    let whole = common::fixtures_dir().join("k208tf_resnet50_whole_resnet/model.h5");
    let out = tmp.join("whole.onnx");
    let (ok, msg) = run(&[
        "convert".as_ref(),
        whole.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--input-size".as_ref(),
        "any".as_ref(),
    ]);
    assert!(ok, "convert --input-size any: {msg}");
    let bytes = std::fs::read(&out).unwrap();
    assert_symbolic(&bytes, "cli whole");
    for (size, err) in tract_at_sizes(&bytes, &CASES[1]) {
        eprintln!("cli whole file, tract {size}: {err:.3e}");
        assert!(err <= ATOL, "cli whole file at {size}: {err:e}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
