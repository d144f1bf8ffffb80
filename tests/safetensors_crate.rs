//! `.safetensors` files that allconv writes (`convert -o X.safetensors`, `rehead`) read back
//! by the reference implementations: the `safetensors` crate, and Hugging Face's Python
//! `safetensors` package (converters/safetensors_check.py, in .venv-tf). Every tensor must
//! come back bit for bit under its name with its shape, and the metadata whole; a file the
//! Python writer made from the same tensors must read back the same through
//! `allconv::safetensors::read_safetensors`.

mod common;

use allconv::ir::Graph;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CASES: &[&str] = &[
    "k208tf_resnet50_whole_resnet",
    "k208_conv",
    "tfk_functional",
];

fn read_case(name: &str) -> Graph {
    let (model, opts) = common::read_options(&common::fixtures_dir().join(name));
    allconv::keras::read_model(&model, &opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("safetensors-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Differences between what the graph holds and `(shape, values)` read back, by name.
fn compare(what: &str, g: &Graph, back: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Vec<String> {
    let mut failures = Vec::new();
    let want: Vec<&String> = g.params.keys().collect();
    let got: Vec<&String> = back.keys().collect();
    if want != got {
        failures.push(format!("{what}: names differ: {want:?} vs {got:?}"));
    }
    for (name, t) in &g.params {
        let Some((shape, data)) = back.get(name) else {
            continue;
        };
        if &t.shape != shape {
            failures.push(format!(
                "{what}: {name}: shape {shape:?}, wrote {:?}",
                t.shape
            ));
        } else if data.len() != t.data.len()
            || t.data
                .iter()
                .zip(data)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            failures.push(format!("{what}: {name}: values differ"));
        }
    }
    failures
}

#[test]
fn the_safetensors_crate_reads_what_allconv_writes() {
    let dir = tmpdir("crate");
    let mut failures = Vec::new();
    for case in CASES {
        let g = read_case(case);
        assert!(!g.params.is_empty(), "{case}: no parameters");
        let out = dir.join(format!("{case}.safetensors"));
        allconv::safetensors::write_safetensors(&g, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("{case}: the crate refuses the file: {e}"));
        let meta: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if meta != allconv::safetensors::metadata(&g) {
            failures.push(format!("{case}: metadata {meta:?}"));
        }
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut back = BTreeMap::new();
        for (name, view) in file.iter() {
            if view.dtype() != safetensors::Dtype::F32 {
                failures.push(format!("{case}: {name}: dtype {:?}", view.dtype()));
                continue;
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            back.insert(name.to_string(), (view.shape().to_vec(), data));
        }
        failures.extend(compare(&format!("{case} (crate)"), &g, &back));
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn python_safetensors_reads_what_allconv_writes_and_allconv_reads_what_it_writes() {
    let py = common::tf_python();
    let importable = std::process::Command::new(&py)
        .args(["-c", "import safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        common::skip_or_fail(&format!(
            "`{py}` cannot import safetensors (converters/setup.sh installs it into .venv-tf)"
        ));
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("converters/safetensors_check.py");
    let dir = tmpdir("python");
    let mut failures = Vec::new();
    for case in CASES {
        let g = read_case(case);
        assert!(!g.params.is_empty(), "{case}: no parameters");
        let out = dir.join(format!("{case}.safetensors"));
        let npz = dir.join(format!("{case}.npz"));
        let rewritten = dir.join(format!("{case}_py.safetensors"));
        allconv::safetensors::write_safetensors(&g, &out).unwrap();
        let run = std::process::Command::new(&py)
            .arg(&script)
            .args([&out, &npz, &rewritten])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{case}: safetensors_check.py failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        // What Python read: the metadata, every dtype, every tensor bit for bit.
        let meta: BTreeMap<String, String> =
            serde_json::from_value(report["metadata"].clone()).unwrap();
        if meta != allconv::safetensors::metadata(&g) {
            failures.push(format!("{case}: Python read the metadata as {meta:?}"));
        }
        let dtypes = report["tensors"].as_object().unwrap();
        if dtypes.len() != g.params.len() || dtypes.values().any(|t| t["dtype"] != "float32") {
            failures.push(format!("{case}: Python read {dtypes:?}"));
        }
        let back = allconv::verify::npz::read_npz(&npz)
            .unwrap()
            .into_iter()
            .map(|(k, a)| (k, (a.shape, a.data)))
            .collect();
        failures.extend(compare(&format!("{case} (Python read)"), &g, &back));
        // What Python wrote, read by allconv.
        let (meta, tensors) =
            allconv::safetensors::read_safetensors(&std::fs::read(&rewritten).unwrap())
                .unwrap_or_else(|e| panic!("{case}: Python's file: {e}"));
        if meta != allconv::safetensors::metadata(&g) {
            failures.push(format!("{case}: metadata of Python's file {meta:?}"));
        }
        let back = tensors
            .into_iter()
            .map(|(k, t)| (k, (t.shape, t.data)))
            .collect();
        failures.extend(compare(&format!("{case} (Python wrote)"), &g, &back));
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Files the reader must refuse with a message, not a panic: cut short, a header that
/// lies about its length, offsets past the data, a dtype allconv does not hold.
#[test]
fn malformed_files_are_refused() {
    let g = read_case("k208_conv");
    let good = allconv::safetensors::to_bytes(&g).unwrap();
    assert!(allconv::safetensors::read_safetensors(&good).is_ok());
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("cut in the length", good[..5].to_vec()),
        ("cut in the data", good[..good.len() - 4].to_vec()),
        ("one byte too many", [&good[..], &[0u8]].concat()),
    ];
    let mut long = good.clone();
    long[..8].copy_from_slice(&(u64::MAX).to_le_bytes());
    cases.push(("header length u64::MAX", long));
    // An F16 tensor where allconv holds F32 only (a valid file otherwise).
    let f16 = safetensors::serialize(
        [(
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2], &[0u8; 4])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    cases.push(("F16 tensor", f16));
    for (what, bytes) in cases {
        match allconv::safetensors::read_safetensors(&bytes) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => assert!(!e.is_empty(), "{what}: empty message"),
        }
    }
}
