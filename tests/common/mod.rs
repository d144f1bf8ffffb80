//! Shared helpers for the fixture-driven tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
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
