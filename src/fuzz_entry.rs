//! The entry points of the fuzz targets (fuzz/fuzz_targets/), one per parser that takes a
//! user's file. They live in the library so that tests/fuzz_regressions.rs replays every
//! saved finding through exactly the code the fuzzer ran. Each returns whether the input
//! was accepted; an error is a fine outcome, a panic or crash is a finding.

use std::path::{Path, PathBuf};

/// A scratch file per process: HDF5 and the npz reader take paths.
fn scratch(ext: &str, data: &[u8]) -> Option<PathBuf> {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("allconv-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&path, data).ok().map(|()| path)
}

/// A `.h5` file end to end: HDF5 (C), the Keras config, the weights, the IR, and the
/// rewrite every converted file goes through (`passes::subsample_early`), its result's
/// shapes inferred again.
pub fn h5(data: &[u8]) -> bool {
    scratch("h5", data).is_some_and(|p| {
        crate::keras::read_model(&p, &crate::keras::ReadOptions::default()).is_ok_and(|mut g| {
            crate::passes::subsample_early(&mut g).is_ok() && g.infer_shapes(None).is_ok()
        })
    })
}

/// The Keras architecture JSON: depth-limited JSON, then every dialect's layer table.
pub fn keras_config(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| {
        crate::keras::config::parse_json(text)
            .is_ok_and(|v| crate::keras::config::parse_model(&v).is_ok())
    })
}

/// Every image decoder: the first byte picks the extension, the rest is the file.
pub fn image(data: &[u8]) -> bool {
    const NAMES: &[&str] = &["x.png", "x.pgm", "x.jpg", "x.tif", "x.dcm", "x.ppm"];
    data.split_first().is_some_and(|(&k, rest)| {
        let name = NAMES[usize::from(k) % NAMES.len()];
        crate::data::read_image_bytes(Path::new(name), rest).is_ok()
    })
}

/// The DICOM reader (dicom-rs parsing and pixel decoders).
pub fn dicom(data: &[u8]) -> bool {
    crate::data::read_image_bytes(Path::new("x.dcm"), data).is_ok()
}

/// `--preprocess` specs (host and in-graph) and `--tta`.
pub fn preprocess_spec(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|s| {
        let a = s.parse::<crate::data::Preprocess>().is_ok();
        let b = s.parse::<crate::onnx::InGraphPreprocess>().is_ok();
        let c = s.parse::<crate::onnx::Tta>().is_ok();
        a || b || c
    })
}

/// `.npz` references (zip + npy headers).
pub fn npz(data: &[u8]) -> bool {
    scratch("npz", data).is_some_and(|p| crate::verify::npz::read_npz(&p).is_ok())
}

/// safetensors files.
pub fn safetensors(data: &[u8]) -> bool {
    crate::safetensors::read_safetensors(data).is_ok()
}

/// Model files the runtime opens: ONNX (protobuf, metadata, test vectors) or an NNEF
/// archive (tar/gzip, allconv.json, graph.nnef, tensors); the first byte picks which.
pub fn model_file(data: &[u8]) -> bool {
    data.split_first().is_some_and(|(&k, rest)| {
        let name = if k % 2 == 0 { "m.onnx" } else { "m.nnef.tgz" };
        crate::runtime::ModelFile::from_bytes(Path::new(name), rest)
            .is_ok_and(|f| crate::meta::test_vectors(&f.metadata).is_ok())
    })
}

/// Target name -> entry point (scripts/fuzz.sh and the regression test use the names).
pub const TARGETS: &[(&str, fn(&[u8]) -> bool)] = &[
    ("h5", h5),
    ("keras_config", keras_config),
    ("image", image),
    ("dicom", dicom),
    ("preprocess_spec", preprocess_spec),
    ("npz", npz),
    ("safetensors", safetensors),
    ("model_file", model_file),
];
