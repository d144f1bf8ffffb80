//! The cost bounds (`src/limits.rs`, `--limit NAME=VALUE`): each one refuses an input over
//! it with a message that names the file and the flag that raises it, and the same input
//! passes at the default, so every check is seen failing and passing. The activation bound
//! is the one that needs no hostile file: a legitimate patch classifier at an absurd input
//! size must be refused before anything of that size is allocated, and nothing written.

mod common;

use std::path::{Path, PathBuf};

fn fixture(dir: &str, file: &str) -> PathBuf {
    common::fixtures_dir().join(dir).join(file)
}

fn allconv(args: &[&str]) -> (Option<i32>, String) {
    common::allconv_with_deadline(args, 300)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A clean refusal naming `file` and every phrase.
fn assert_refused(what: &str, file: &Path, (code, err): &(Option<i32>, String), phrases: &[&str]) {
    assert!(code.is_some(), "{what}: killed by a signal: {err}");
    assert_ne!(*code, Some(0), "{what}: accepted: {err}");
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    assert!(
        err.contains(&s(file)),
        "{what}: the file is not named: {err}"
    );
    for p in phrases {
        assert!(err.contains(p), "{what}: the message lacks {p:?}: {err}");
    }
}

fn assert_ok(what: &str, (code, err): &(Option<i32>, String)) {
    assert_eq!(
        *code,
        Some(0),
        "{what}: refused at the default limits: {err}"
    );
}

#[test]
fn an_absurd_input_size_is_refused_before_it_is_allocated_and_nothing_is_written() {
    let model = fixture("k208_yaroslav_patch", "model.h5");
    let dir = std::env::temp_dir().join(format!("allconv-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("big.onnx");
    // 30000x30000 is within every per-dimension bound; its activations are ~27 GiB.
    let r = allconv(&[
        "convert",
        &s(&model),
        "-o",
        &s(&out),
        "--input-size",
        "30000x30000",
        "--limit",
        "activation-bytes=8G",
    ]);
    assert_refused(
        "convert at 30000x30000",
        &model,
        &r,
        &[
            "1x30000x30000x1",
            "GiB of activations",
            "--limit activation-bytes",
        ],
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    // The same model at its training size converts, test vector run included.
    let r = allconv(&[
        "convert",
        &s(&model),
        "-o",
        &s(&out),
        "--input-size",
        "256x256",
    ]);
    assert_ok("convert at 256x256", &r);
    assert!(out.is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn activation_limit_refuses_and_the_default_passes() {
    let model = fixture("k208_conv", "model.h5");
    let reference = fixture("k208_conv", "io.npz");
    let args = ["verify", &s(&model), "--reference", &s(&reference)];
    assert_ok("verify", &allconv(&args));
    let mut low = args.to_vec();
    low.extend(["--limit", "activation-bytes=1K"]);
    assert_refused(
        "verify with 1 KiB of activations",
        &model,
        &allconv(&low),
        &["above the 1 KiB limit", "--limit activation-bytes"],
    );
    // predict on libtorch (the .h5 default) and on tract estimate before they run.
    let image = fixture("images", "mdb001.pgm");
    for backend in ["torch", "tract"] {
        let args = ["predict", &s(&model), &s(&image), "--backend", backend];
        if backend == "torch" && !cfg!(feature = "torch") {
            continue;
        }
        assert_ok("predict", &allconv(&args));
        let mut low = args.to_vec();
        low.extend(["--limit", "activation-bytes=1K"]);
        assert_refused(
            &format!("predict on {backend} with 1 KiB of activations"),
            &image,
            &allconv(&low),
            &["above the 1 KiB limit", "--limit activation-bytes"],
        );
    }
}

#[test]
fn image_limits_refuse_and_the_default_passes() {
    let model = fixture("k208tf_yaroslav_whole_heatmap", "model.h5");
    let image = fixture("images", "mdb028.pgm"); // 1024x1024
    let args = ["predict", &s(&model), &s(&image)];
    assert_ok("predict", &allconv(&args));
    for (limit, phrase) in [
        (
            "image-side=1000",
            "limit of 1000 per side (--limit image-side",
        ),
        (
            "image-pixels=1000000",
            "limit of 1000000 pixels (--limit image-pixels",
        ),
    ] {
        let mut a = args.to_vec();
        a.extend(["--limit", limit]);
        assert_refused(limit, &image, &allconv(&a), &["1024x1024", phrase]);
    }
}

#[test]
fn model_file_limits_refuse_and_the_default_passes() {
    let model = fixture("k208_conv", "model.h5");
    assert_ok("inspect", &allconv(&["inspect", &s(&model)]));
    for (limit, phrases) in [
        (
            "h5-dataset-bytes=16",
            &["kernel", "--limit h5-dataset-bytes"][..],
        ),
        (
            "h5-attribute-bytes=1K",
            &["model_config", "--limit h5-attribute-bytes"],
        ),
        ("json-bytes=1K", &["--limit json-bytes"]),
        ("json-depth=4", &["levels deep", "--limit json-depth"]),
        ("layers=2", &["22 layers", "--limit layers"]),
    ] {
        let r = allconv(&["inspect", &s(&model), "--limit", limit]);
        assert_refused(limit, &model, &r, phrases);
    }
}

#[test]
fn a_bad_limit_is_a_usage_error_naming_the_choices() {
    let model = fixture("k208_conv", "model.h5");
    for (limit, phrase) in [
        (
            "activation=1G",
            "unknown limit \"activation\" (image-side, image-pixels,",
        ),
        ("layers", "expected NAME=VALUE"),
        ("layers=many", "not a positive amount"),
    ] {
        let (code, err) = allconv(&["inspect", &s(&model), "--limit", limit]);
        assert_eq!(code, Some(2), "{limit}: {err}");
        assert!(err.contains(phrase), "{limit}: {err}");
    }
}
