//! The inference-only build on the devices' instruction sets: each cross binary made by
//! `scripts/cross.sh TARGET` runs under qemu-user (x86_64 musl natively) and
//! - `verify`s an exported whole-image model (preprocessing and 4-flip TTA in the graph)
//!   against the genuine tf-keras outputs embedded in it, within verify's 1e-4, as ONNX
//!   and as NNEF;
//! - `predict`s real mammograms (mini-MIAS PGM, PNG, JPEG, DICOM) with the same
//!   probabilities as this machine's full build, within [`CROSS_ATOL`];
//! - refuses the commands it leaves out, naming the full build.
//!
//! tract picks other kernels per architecture (NEON on ARM, AVX2/AVX-512 FMA here) and
//! sums in other orders, which is exactly what this checks. scripts/test.sh builds the
//! binaries first and sets ALLCONV_REQUIRE_CROSS=1: a missing binary then fails the test.
#![cfg(feature = "keras")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Agreement between architectures on a probability (what a cross-built binary is held
/// to). float32 kernels that sum in another order differ by a few ulps per product-sum;
/// through this ResNet50
/// the probabilities moved by 3.0e-6 on armv7 and not at all on aarch64 and x86_64 musl
/// (measured on this project's AMD EPYC host, printed below). A wrong kernel, layout or
/// preprocessing moves them by 1e-2 or more.
const CROSS_ATOL: f64 = 1e-5;

/// The targets scripts/test.sh builds; ALLCONV_CROSS_TARGETS overrides.
const TARGETS: &[&str] = &[
    "aarch64-unknown-linux-gnu",
    "armv7-unknown-linux-gnueabihf",
    "x86_64-unknown-linux-musl",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How to run a binary of `target` here: qemu-user with the target's libc, or directly.
fn runner(target: &str, bin: &Path) -> Command {
    let qemu = |arch: &str, sysroot: Option<&str>| {
        let mut c = Command::new(format!("qemu-{arch}"));
        if let Some(s) = sysroot {
            c.arg("-L").arg(s);
        }
        c.arg(bin);
        c
    };
    match target {
        "aarch64-unknown-linux-gnu" => qemu("aarch64", Some("/usr/aarch64-linux-gnu")),
        "aarch64-unknown-linux-musl" => qemu("aarch64", None),
        "armv7-unknown-linux-gnueabihf" => qemu("arm", Some("/usr/arm-linux-gnueabihf")),
        _ => Command::new(bin),
    }
}

fn targets() -> Vec<String> {
    match std::env::var("ALLCONV_CROSS_TARGETS") {
        Ok(t) => t.split_whitespace().map(str::to_string).collect(),
        Err(_) => TARGETS.iter().map(|s| s.to_string()).collect(),
    }
}

/// The binaries present; a missing one skips, or fails under ALLCONV_REQUIRE_CROSS=1.
fn binaries() -> Vec<(String, PathBuf)> {
    let required = std::env::var("ALLCONV_REQUIRE_CROSS").is_ok();
    let targets = targets();
    assert!(
        !(required && targets.is_empty()),
        "ALLCONV_REQUIRE_CROSS is set but ALLCONV_CROSS_TARGETS names no target"
    );
    let mut found = vec![];
    for t in targets {
        let bin = root().join("target").join(&t).join("edge/allconv");
        if bin.is_file() {
            found.push((t, bin));
        } else {
            assert!(
                !required,
                "ALLCONV_REQUIRE_CROSS is set but {} is missing: run scripts/cross.sh {t}",
                bin.display()
            );
            eprintln!(
                "\n!!!!! SKIPPED {t}: no {} (scripts/cross.sh {t}) !!!!!\n",
                bin.display()
            );
        }
    }
    found
}

/// The demo's model: tf-keras ResNet50 whole-image fixture at 225x177 with the grey
/// preprocessing and flips4 in the graph, its test vector genuine tf-keras on mini-MIAS.
fn exported(dir: &Path) -> (PathBuf, PathBuf) {
    use allconv::onnx::{ExportOptions, InGraphPreprocess, Tta};
    use allconv::verify::{convert, ConvertOptions};
    let case = common::fixtures_dir().join("k208tf_resnet50_whole_resnet");
    let mut out = vec![];
    for name in ["whole.onnx", "whole.nnef.tgz"] {
        let p = dir.join(name);
        let opts = ConvertOptions {
            export: ExportOptions {
                input_size: Some(vec![225, 177]),
                preprocess: Some(
                    "rescale=0.0078125,mean=0.5,gray"
                        .parse::<InGraphPreprocess>()
                        .unwrap(),
                ),
                tta: Some("flips4".parse::<Tta>().unwrap()),
                ..Default::default()
            },
            reference: Some(case.join("prep_tta.npz")),
            threads: 1,
            ..Default::default()
        };
        let r = convert(&case.join("model.h5"), &p, &opts).unwrap();
        assert_eq!(r.test_vector_source, "keras_reference");
        out.push(p);
    }
    (out[0].clone(), out[1].clone())
}

const IMAGES: &[&str] = &[
    "mdb001.pgm",
    "mdb028.pgm",
    "mdb028_8.png",
    "mdb028.jpg",
    "mdb028_m1.dcm",
];

/// `predict --json` probabilities per image.
fn probabilities(mut cmd: Command, model: &Path) -> Vec<Vec<f64>> {
    let images = common::fixtures_dir().join("images");
    cmd.arg("predict")
        .arg(model)
        .arg("--json")
        .arg("--threads")
        .arg("1");
    for i in IMAGES {
        cmd.arg(images.join(i));
    }
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "predict failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            r["probabilities"]
                .as_array()
                .unwrap_or_else(|| panic!("no probabilities in {r}"))
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// A static ELF has no PT_INTERP program header (no dynamic loader named).
fn is_static_elf(bin: &Path) -> bool {
    let b = std::fs::read(bin).unwrap();
    assert_eq!(&b[..4], b"\x7fELF");
    assert_eq!(b[4], 2, "64-bit ELF expected");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

#[test]
fn cross_builds_verify_and_predict_like_this_machine() {
    let bins = binaries();
    if bins.is_empty() {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("allconv_cross_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (onnx, nnef) = exported(&tmp);
    let host = probabilities(Command::new(env!("CARGO_BIN_EXE_allconv")), &onnx);
    assert_eq!(host.len(), IMAGES.len());
    for (target, bin) in &bins {
        for model in [&onnx, &nnef] {
            let out = runner(target, bin)
                .arg("verify")
                .arg(model)
                .arg("--json")
                .output()
                .expect("runs");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{target}: verify {} failed: {text}{}",
                model.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["passed"], true, "{target}: {text}");
            assert!(v["atol"].as_f64().unwrap() <= 1e-4 + 1e-12, "{text}");
            assert!(
                v["reference"].as_str().unwrap().contains("keras_reference"),
                "{text}"
            );
            eprintln!(
                "{target}: verify {}: max_abs_err {:.2e} vs genuine tf-keras",
                model.file_name().unwrap().to_string_lossy(),
                v["max_abs_err"].as_f64().unwrap()
            );
        }
        for model in [&onnx, &nnef] {
            let got = probabilities(runner(target, bin), model);
            let worst = got
                .iter()
                .flatten()
                .zip(host.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0f64, f64::max);
            assert_eq!(got.len(), host.len());
            assert!(
                worst <= CROSS_ATOL,
                "{target}: predict {} differs from x86_64 by {worst:e}",
                model.display()
            );
            eprintln!(
                "{target}: predict {} on {} mammograms: max |p - p_x86_64| = {worst:.2e}",
                model.file_name().unwrap().to_string_lossy(),
                IMAGES.len()
            );
        }
        // Left-out commands say so and name the full build.
        let out = runner(target, bin)
            .args(["convert", "model.h5", "-o", "x.onnx"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("full build"), "{err}");
        if target.ends_with("-musl") {
            assert!(is_static_elf(bin), "{target}: not a static binary");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
