//! The ONNX Runtime engine (`ort` feature) on the bundled fixtures:
//! - every fixture with a genuine-Keras `io.npz` converts to ONNX with Keras's vector
//!   embedded, and ONNX Runtime's run of the file meets it within the bound tract is held
//!   to (`verify`'s default 1e-4, see nnef_f16.rs), and within
//!   `allconv::verify::CROSS_RUNTIME_ATOL` (times the output's range) of tract's run of the
//!   same file;
//! - `verify --backend ort` passes on a good file and fails on the same file with one
//!   weight corrupted;
//! - `bench run --backend ort` reports the fields `--backend tract` does;
//! - a missing or unloadable library is an error naming the path and the setup command.
//!
//! The library comes from scripts/onnxruntime.sh (scripts/setup.sh runs it): where it does
//! not load these tests skip locally and fail under ALLCONV_REQUIRE_PYTHON=1.
#![cfg(all(feature = "ort", feature = "keras"))]

mod common;

use allconv::runtime::{Engine, ModelFile, OrtModel};
use allconv::verify::{convert, verify_onnx_with, ConvertOptions, VerifyOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether ONNX Runtime's library loads; fails under ALLCONV_REQUIRE_PYTHON=1 if not.
fn ort_ready() -> bool {
    match allconv::runtime::ort::available() {
        Ok(lib) => {
            eprintln!(
                "ONNX Runtime {} from {} ({})",
                lib.version,
                lib.path.display(),
                lib.source
            );
            true
        }
        Err(e) => {
            common::skip_or_fail(&format!("ONNX Runtime's library does not load: {e}"));
            false
        }
    }
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("allconv_ort_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `convert DIR/model.h5 -o out --reference DIR/io.npz`: Keras's vector embedded.
fn convert_to(dir: &Path, out: &Path) {
    let (model, read) = common::read_options(dir);
    let opts = ConvertOptions {
        read,
        reference: Some(dir.join("io.npz")),
        threads: 1,
        ..Default::default()
    };
    let r = convert(&model, out, &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert_eq!(r.test_vector_source, "keras_reference", "{}", dir.display());
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        threads: 1,
        ..Default::default()
    }
}

#[test]
fn ort_meets_genuine_keras_and_agrees_with_tract_on_every_fixture() {
    if !ort_ready() {
        return;
    }
    let tmp = tmp_dir("fixtures");
    let cases = common::single_input_keras_fixtures();
    assert!(
        cases.len() >= 30,
        "only {} fixtures with io.npz",
        cases.len()
    );
    let mut failures = vec![];
    let (mut worst_keras, mut worst_cross) = ((0f32, String::new()), (0f32, String::new()));
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let onnx = tmp.join(format!("{name}.onnx"));
        convert_to(dir, &onnx);

        // ONNX Runtime against the genuine-Keras output the file carries, as tract is held.
        let v = verify_onnx_with(&onnx, None, &opts(), Engine::Ort)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.backend, "ort");
        assert_eq!(v.atol, allconv::verify::DEFAULT_ATOL, "{name}");
        assert!(v.reference.contains("keras_reference"), "{}", v.reference);
        if !v.passed {
            failures.push(format!("{name}: {}", v.to_text()));
        }
        if v.max_abs_err > worst_keras.0 {
            worst_keras = (v.max_abs_err, name.clone());
        }

        // ONNX Runtime and tract on the same file and input.
        let file = ModelFile::open(&onnx).unwrap();
        let (input, _) = allconv::meta::test_vectors(&file.metadata)
            .unwrap()
            .unwrap();
        let tract = file.load(&[input.shape.clone()], 1).unwrap();
        let ort = OrtModel::load_file(&onnx, &[input.shape.clone()], 1).unwrap();
        let (a, b) = (
            tract.run(&input.data).unwrap(),
            ort.run(&input.data).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{name}: output count");
        assert!(!a.is_empty(), "{name}: no output");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.shape, y.shape, "{name}: output shape");
            let scale = x.data.iter().fold(1f32, |m, v| m.max(v.abs()));
            let d = x
                .data
                .iter()
                .zip(&y.data)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) });
            let bound = allconv::verify::CROSS_RUNTIME_ATOL * scale;
            if !(d <= bound) {
                failures.push(format!("{name}: ort vs tract {d:e} > {bound:e}"));
            }
            if d / scale > worst_cross.0 {
                worst_cross = (d / scale, name.clone());
            }
        }
    }
    eprintln!(
        "{} fixtures on ONNX Runtime: vs genuine Keras worst {:.2e} ({}), bound {:e}; vs tract worst {:.2e} x range ({}), bound {:e}",
        cases.len(),
        worst_keras.0,
        worst_keras.1,
        allconv::verify::DEFAULT_ATOL,
        worst_cross.0,
        worst_cross.1,
        allconv::verify::CROSS_RUNTIME_ATOL
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let _ = std::fs::remove_dir_all(&tmp);
}

fn allconv(args: &[&std::ffi::OsStr], env: Option<(&str, &Path)>) -> (Option<i32>, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_allconv"));
    c.args(args);
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    let o = c.output().expect("allconv runs");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The VGG16 patch fixture converted, with Keras's vector embedded.
fn vgg_onnx(tmp: &Path) -> PathBuf {
    let onnx = tmp.join("vgg.onnx");
    convert_to(&common::fixtures_dir().join("k208_vgg16_patch"), &onnx);
    onnx
}

#[test]
fn verify_backend_ort_passes_and_fails_on_a_corrupted_weight() {
    if !ort_ready() {
        return;
    }
    let tmp = tmp_dir("corrupt");
    let good = vgg_onnx(&tmp);
    let (code, out, err) = allconv(
        &[
            "verify".as_ref(),
            good.as_os_str(),
            "--backend".as_ref(),
            "ort".as_ref(),
            "--threads".as_ref(),
            "1".as_ref(),
        ],
        None,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("PASS") && out.contains("(ort)"), "{out}");

    // One weight of the largest float initializer overwritten with float32's maximum.
    let mut proto = allconv::onnx::meta::parse_model(&std::fs::read(&good).unwrap()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let t = graph
        .initializer
        .iter_mut()
        .filter(|t| t.data_type == 1 && t.raw_data.len() >= 4)
        .max_by_key(|t| t.raw_data.len())
        .expect("a float initializer stored as raw bytes");
    let name = t.name.clone();
    let mid = (t.raw_data.len() / 8) * 4;
    t.raw_data[mid..mid + 4].copy_from_slice(&f32::MAX.to_le_bytes());
    use onnx_protobuf::Message;
    let bad = tmp.join("vgg_corrupt.onnx");
    std::fs::write(&bad, proto.write_to_bytes().unwrap()).unwrap();
    let (code, out, err) = allconv(
        &[
            "verify".as_ref(),
            bad.as_os_str(),
            "--backend".as_ref(),
            "ort".as_ref(),
            "--threads".as_ref(),
            "1".as_ref(),
            "--json".as_ref(),
        ],
        None,
    );
    assert_eq!(code, Some(1), "corrupted {name}: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON report");
    assert_eq!(v["passed"], false, "{out}");
    assert_eq!(v["backend"], "ort", "{out}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn bench_run_on_ort_reports_the_fields_tract_does() {
    if !ort_ready() {
        return;
    }
    let tmp = tmp_dir("bench");
    let onnx = vgg_onnx(&tmp);
    let file = ModelFile::open(&onnx).unwrap();
    let (input, _) = allconv::meta::test_vectors(&file.metadata)
        .unwrap()
        .unwrap();
    let shape = input
        .shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x");
    let run = |backend: &str| -> serde_json::Value {
        let (code, out, err) = allconv(
            &[
                "bench".as_ref(),
                "run".as_ref(),
                onnx.as_os_str(),
                "--shape".as_ref(),
                shape.as_ref(),
                "--threads".as_ref(),
                "1".as_ref(),
                "--runs".as_ref(),
                "2".as_ref(),
                "--backend".as_ref(),
                backend.as_ref(),
                "--json".as_ref(),
            ],
            None,
        );
        assert_eq!(code, Some(0), "{backend}: {out}{err}");
        serde_json::from_str(out.trim()).expect("JSON")
    };
    let (t, o) = (run("tract"), run("ort"));
    assert_eq!(t["runtime"], "tract");
    assert_eq!(o["runtime"], "onnxruntime");
    for k in [
        "model",
        "input_shape",
        "threads",
        "format",
        "load_s",
        "first_result_s",
        "latency_ms",
        "runs",
        "peak_mb",
    ] {
        assert!(t.get(k).is_some() && o.get(k).is_some(), "{k}: {t} / {o}");
        assert_eq!(t[k].is_number(), o[k].is_number(), "{k}");
    }
    assert!(o["latency_ms"].as_f64().unwrap() > 0.0, "{o}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Needs no library: the error is what is under test.
#[test]
fn a_missing_or_unloadable_library_is_a_clear_error() {
    let tmp = tmp_dir("nolib");
    // Any ONNX file: the library is opened before the model is read.
    let onnx = tmp.join("m.onnx");
    std::fs::write(&onnx, b"not read").unwrap();
    let missing = tmp.join("nowhere").join("libonnxruntime.so");
    let junk = tmp.join("libjunk.so");
    std::fs::write(&junk, b"not a shared library").unwrap();
    for lib in [&missing, &junk] {
        let (code, out, err) = allconv(
            &[
                "verify".as_ref(),
                onnx.as_os_str(),
                "--backend".as_ref(),
                "ort".as_ref(),
            ],
            Some(("ORT_DYLIB_PATH", lib)),
        );
        assert_eq!(code, Some(1), "{}: {out}{err}", lib.display());
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(&lib.display().to_string()), "{err}");
        assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
        assert!(err.contains("scripts/onnxruntime.sh"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `predict --backend auto` runs an ONNX file on ONNX Runtime where the library loads and
/// says so; its scores equal tract's within the cross-runtime bound, and a Keras `.h5`
/// runs on ONNX Runtime with `--backend ort` (exported at the image's size) as well. An
/// NNEF file is refused by `--backend ort` by name. Without the library, `auto` falls
/// back to tract.
#[test]
fn predict_auto_picks_ort_and_scores_as_tract_does() {
    if !ort_ready() {
        return;
    }
    let tmp = tmp_dir("predict");
    let h5 = common::fixtures_dir().join("k208tf_resnet50_whole_resnet/model.h5");
    let onnx = tmp.join("whole.onnx");
    let (code, _, err) = allconv(
        &[
            "convert".as_ref(),
            h5.as_os_str(),
            "-o".as_ref(),
            onnx.as_os_str(),
            "--input-size".as_ref(),
            "225x177".as_ref(),
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let images: Vec<PathBuf> = ["mdb001.pgm", "mdb028.pgm", "mdb001_16.png"]
        .iter()
        .map(|f| common::fixtures_dir().join("images").join(f))
        .collect();
    let scores =
        |model: &Path, backend: &str, env: Option<(&str, &Path)>| -> Vec<(String, Vec<f64>)> {
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "predict".as_ref(),
                model.as_os_str(),
                "--preprocess".as_ref(),
                "rescale=0.0078125,mean=0.5,size=225x177".as_ref(),
                "--backend".as_ref(),
                backend.as_ref(),
                "--json".as_ref(),
            ];
            args.extend(images.iter().map(|p| p.as_os_str()));
            let (code, out, err) = allconv(&args, env);
            assert_eq!(code, Some(0), "{backend}: {err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    let p = o["probabilities"].as_array().unwrap();
                    (
                        o["engine"].as_str().unwrap().to_string(),
                        p.iter().map(|x| x.as_f64().unwrap()).collect(),
                    )
                })
                .collect()
        };
    let tract = scores(&onnx, "tract", None);
    let auto = scores(&onnx, "auto", None);
    let from_h5 = scores(&h5, "ort", None);
    assert_eq!(tract.len(), images.len());
    let bound = f64::from(allconv::verify::CROSS_RUNTIME_ATOL);
    for (name, run) in [("auto", &auto), ("ort on the .h5", &from_h5)] {
        for ((engine, p), (t_engine, t)) in run.iter().zip(&tract) {
            assert_eq!(
                (engine.as_str(), t_engine.as_str()),
                ("ort", "tract"),
                "{name}"
            );
            let d = p
                .iter()
                .zip(t)
                .map(|(a, b)| (a - b).abs())
                .fold(0f64, f64::max);
            assert!(d <= bound, "{name}: {d:e} from tract (bound {bound:e})");
        }
    }
    // No library: auto is tract.
    let missing = tmp.join("nowhere/libonnxruntime.so");
    let fallback = scores(&onnx, "auto", Some(("ORT_DYLIB_PATH", &missing)));
    assert!(fallback.iter().all(|(e, _)| e == "tract"));
    // NNEF runs in tract only.
    let nnef = tmp.join("whole.nnef.tgz");
    let (code, _, err) = allconv(
        &[
            "convert".as_ref(),
            h5.as_os_str(),
            "-o".as_ref(),
            nnef.as_os_str(),
            "--input-size".as_ref(),
            "225x177".as_ref(),
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = allconv(
        &[
            "predict".as_ref(),
            nnef.as_os_str(),
            "--backend".as_ref(),
            "ort".as_ref(),
            images[0].as_os_str(),
        ],
        None,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--backend ort runs ONNX files"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}
