//! Sizes from files that would overflow size arithmetic: `allconv convert` and `verify`
//! must refuse them with a message that names the file and the problem, never panic
//! ("attempt to multiply with overflow" in a debug build), wrap silently (release), or
//! allocate a test input of the claimed size. The `inspect` side of the same files is in
//! fixtures/hostile/expect.json (tests/hostile_files.rs); files made by converters/hostile.py.

mod common;

use std::path::{Path, PathBuf};

fn hostile(name: &str) -> PathBuf {
    common::fixtures_dir().join("hostile").join(name)
}

/// Run allconv with a deadline; returns (exit code, stderr).
fn allconv(args: &[&str]) -> (Option<i32>, String) {
    common::allconv_with_deadline(args, 120)
}

/// A clean refusal: non-zero exit (not a signal), no panic, the file named, every phrase.
fn assert_refused(what: &str, file: &Path, (code, err): (Option<i32>, String), phrases: &[&str]) {
    assert!(code.is_some(), "{what}: killed by a signal: {err}");
    assert_ne!(code, Some(0), "{what}: accepted: {err}");
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    assert!(
        err.contains(&file.display().to_string()),
        "{what}: message does not name the file: {err}"
    );
    for p in phrases {
        assert!(err.contains(p), "{what}: message lacks {p:?}: {err}");
    }
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("allconv-overflow-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Declared input (2^62, 2^62, 3): the old convert multiplied it into the size of a
/// test input (a debug-build panic); now the reader refuses the input layer.
#[test]
fn convert_refuses_a_huge_declared_input() {
    let file = hostile("huge_input.h5");
    let out = out_dir("input").join("out.onnx");
    let r = allconv(&[
        "convert",
        file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_refused(
        "convert huge_input.h5",
        &file,
        r,
        &["img", "batch_input_shape", "4611686018427387904"],
    );
    assert!(!out.exists(), "nothing is written for a refused model");
}

/// Declared input 65536 x 65536 x 3: every size is in bounds and `inspect` reads it,
/// but convert must not allocate its 12.9e9 values as a test input (old code: a 51 GB
/// allocation, an abort).
#[test]
fn convert_does_not_allocate_a_huge_test_input() {
    let file = hostile("huge_volume.h5");
    let (code, err) = allconv(&["inspect", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "inspect reads the model: {err}");
    let out = out_dir("volume").join("out.onnx");
    let r = allconv(&[
        "convert",
        file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_refused(
        "convert huge_volume.h5",
        &file,
        r,
        &["[1, 65536, 65536, 3]", "test vectors", "--input-size"],
    );
    // The same model at a sane size converts.
    let r = allconv(&[
        "convert",
        file.to_str().unwrap(),
        "--input-size",
        "8x8",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.0, Some(0), "convert --input-size 8x8: {}", r.1);
    assert!(out.is_file());
}

/// An ONNX file whose embedded test input claims 2^32 x 2^32 x 2 values: `verify` decodes
/// the test vectors from the metadata (old code: a multiply panic).
#[test]
fn verify_refuses_an_embedded_test_vector_with_an_overflowing_shape() {
    let file = hostile("huge_test_vector.onnx");
    let (code, err) = allconv(&["verify", file.to_str().unwrap()]);
    assert!(code.is_some(), "killed by a signal: {err}");
    assert_ne!(code, Some(0), "accepted: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for p in [
        "huge_test_vector.onnx",
        "allconv.test_input",
        "[4294967296, 4294967296, 2]",
        "64-bit",
    ] {
        assert!(err.contains(p), "message lacks {p:?}: {err}");
    }
}
