//! The device formats beside ONNX, on every fixture genuine Keras recorded an `io.npz` for:
//! - NNEF (`convert -o X.nnef.tgz`): carries the same genuine-Keras test vectors as the
//!   ONNX file and meets them within the same 1e-4; its outputs are within 1e-6 (absolute)
//!   of the ONNX file's in tract (the same decluttered graph).
//! - `--weights f16` (ONNX and NNEF): about half the bytes. Float16 weights are not the
//!   model Keras ran, so no parity bound applies: the ONNX file must compute what the
//!   float32 file computes with its weights rounded to float16, within 1e-6 absolute (the
//!   storage and its casts lose nothing else), its distance from genuine Keras is measured and recorded
//!   in the file, and both f16 files verify against their own embedded outputs.
#![cfg(feature = "keras")]

mod common;

use allconv::runtime::ModelFile;
use allconv::verify::{convert, verify_onnx, ConvertOptions, VerifyOptions};
use std::path::Path;

fn convert_to(dir: &Path, out: &Path, f16: bool) -> allconv::verify::ConvertReport {
    let (model, read) = common::read_options(dir);
    let opts = ConvertOptions {
        read,
        reference: Some(dir.join("io.npz")),
        threads: 1,
        weights_f16: f16,
        ..Default::default()
    };
    convert(&model, out, &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn run_embedded(path: &Path) -> Vec<f32> {
    let f = ModelFile::open(path).unwrap();
    let (i, _) = allconv::meta::test_vectors(&f.metadata).unwrap().unwrap();
    let m = f.load(&[i.shape.clone()], 1).unwrap();
    m.run(&i.data).unwrap().remove(0).data
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn input_of(path: &Path) -> allconv::meta::Array {
    let f = ModelFile::open(path).unwrap();
    allconv::meta::test_vectors(&f.metadata).unwrap().unwrap().0
}

/// The float32 ONNX file with every initializer the f16 export converts rounded to f16 in
/// place (still float32), run on `input`.
fn run_with_rounded_weights(onnx: &Path, input: &allconv::meta::Array) -> Vec<f32> {
    use allconv::onnx::f16::MIN_F16_ELEMENTS;
    let mut proto = allconv::onnx::meta::parse_model(&std::fs::read(onnx).unwrap()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    for t in graph.initializer.iter_mut() {
        if t.data_type != 1 || t.raw_data.len() < 4 * MIN_F16_ELEMENTS {
            continue;
        }
        for b in t.raw_data.chunks_exact_mut(4) {
            let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            b.copy_from_slice(&half::f16::from_f32(x).to_f32().to_le_bytes());
        }
    }
    use onnx_protobuf::Message;
    let bytes = proto.write_to_bytes().unwrap();
    let m = allconv::runtime::TractModel::load(&bytes, &input.shape, 1).unwrap();
    m.run(&input.data).unwrap().remove(0).data
}

#[test]
fn nnef_and_f16_match_genuine_keras_on_every_fixture() {
    let tmp = std::env::temp_dir().join(format!("allconv_nnef_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let cases = common::single_input_keras_fixtures();
    assert!(
        cases.len() >= 30,
        "only {} fixtures with io.npz",
        cases.len()
    );
    let mut worst_nnef_vs_onnx = 0f32;
    let mut worst_f16 = (0f32, String::new());
    let mut f16_errors = vec![];
    let mut sizes = (0usize, 0usize, 0usize, 0usize);
    let opts = VerifyOptions {
        threads: 1,
        ..Default::default()
    };
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let onnx = tmp.join(format!("{name}.onnx"));
        let nnef = tmp.join(format!("{name}.nnef.tgz"));
        let onnx16 = tmp.join(format!("{name}.f16.onnx"));
        let nnef16 = tmp.join(format!("{name}.f16.nnef.tgz"));
        let r = convert_to(dir, &onnx, false);
        assert_eq!(r.test_vector_source, "keras_reference", "{name}");
        convert_to(dir, &nnef, false);
        let r16 = convert_to(dir, &onnx16, true);
        convert_to(dir, &nnef16, true);

        // The float32 files meet the genuine-Keras output they carry, within 1e-4.
        for p in [&onnx, &nnef] {
            let v = verify_onnx(p, None, &opts).unwrap();
            assert!(v.passed, "{}: {}", p.display(), v.to_text());
            assert_eq!(v.atol, 1e-4);
            assert!(v.reference.contains("keras_reference"), "{}", v.reference);
        }
        // The f16 files reproduce their own recorded output, and say what it is.
        for p in [&onnx16, &nnef16] {
            let v = verify_onnx(p, None, &opts).unwrap();
            assert!(v.passed, "{}: {}", p.display(), v.to_text());
            assert!(v.reference.contains("float16 weights"), "{}", v.reference);
        }
        let e16 = r16
            .reference_max_abs_err
            .expect("measured against the reference");
        if e16 > worst_f16.0 {
            worst_f16 = (e16, name.clone());
        }
        f16_errors.push(e16);
        // NNEF computes what ONNX computes.
        let (a, b) = (run_embedded(&onnx), run_embedded(&nnef));
        let d = max_diff(&a, &b);
        assert!(d <= 1e-6, "{name}: NNEF vs ONNX {d:e}");
        worst_nnef_vs_onnx = worst_nnef_vs_onnx.max(d);
        // f16 ONNX == the f32 file with its large weights rounded to f16, computed in f32.
        let rounded = run_with_rounded_weights(&onnx, &input_of(&onnx16));
        let d = max_diff(&run_embedded(&onnx16), &rounded);
        assert!(d <= 1e-6, "{name}: f16 file vs rounded f32 weights {d:e}");

        let size = |p: &Path| std::fs::metadata(p).unwrap().len() as usize;
        sizes.0 += size(&onnx);
        sizes.1 += size(&nnef);
        sizes.2 += size(&onnx16);
        sizes.3 += size(&nnef16);
        if r16.f16_initializers > 0 {
            assert!(size(&onnx16) < size(&onnx), "{name}: f16 file not smaller");
        }
    }
    f16_errors.sort_by(f32::total_cmp);
    eprintln!(
        "{} fixtures: NNEF vs ONNX worst {worst_nnef_vs_onnx:.2e}; f16 weights vs genuine Keras: median {:.2e}, worst {:.2e} ({}); bytes ONNX {} NNEF(gz) {} ONNX f16 {} NNEF f16 {}",
        cases.len(),
        f16_errors[f16_errors.len() / 2],
        worst_f16.0,
        worst_f16.1,
        sizes.0,
        sizes.1,
        sizes.2,
        sizes.3
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn nnef_needs_a_fixed_size_and_writes_nothing_otherwise() {
    let dir = common::fixtures_dir().join("k208_vgg16_patch");
    let (model, mut read) = common::read_options(&dir);
    read.any_size = true;
    let tmp = std::env::temp_dir().join(format!("allconv_nnef_any_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join("m.nnef.tgz");
    let e = convert(
        &model,
        &out,
        &ConvertOptions {
            read,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("NNEF needs a fixed input size"), "{e}");
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_none(),
        "left a file"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
