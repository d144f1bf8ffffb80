//! `allconv predict` end to end on the bundled mini-MIAS images, and the heatmap pass
//! against genuine Keras numbers.

use allconv::data::{flip_h, flip_v, read_image};
use allconv::keras::{read_model, ReadOptions};
use allconv::onnx::{export, ExportOptions, InGraphPreprocess, Tta};
use allconv::passes::heatmap::to_heatmap;
use allconv::runtime::TractModel;
use ndarray::{ArrayD, Ix3};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WHOLE: &str = "fixtures/k208tf_vgg16_whole_vgg/model.h5";
/// Keeps the whole-image fixture's softmax away from saturation on 8/16-bit images.
const PRE: &str = "rescale=0.0039,mean=0.5,gray";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("allconv_predict_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn allconv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allconv"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

fn json_rows(out: &Output) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v.as_array().unwrap().clone()
}

fn probs(row: &Value) -> Vec<f64> {
    row["probabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("no probabilities in {row}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn bundled_images() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("fixtures/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("pgm" | "png" | "jpg" | "tif" | "dcm")
            )
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The whole-image fixture as ONNX at its io.npz size (225x177), optionally with
/// preprocessing and TTA compiled in.
fn whole_onnx(dir: &Path, name: &str, pre: Option<InGraphPreprocess>, tta: Option<Tta>) -> String {
    let g = read_model(&root().join(WHOLE), &ReadOptions::default()).unwrap();
    let opts = ExportOptions {
        input_size: Some(vec![225, 177]),
        preprocess: pre,
        tta,
        ..Default::default()
    };
    let bytes = export(&g, &opts).unwrap().to_bytes().unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

fn write_pgm(path: &Path, w: usize, h: usize, px: &[f32]) {
    let mut b = format!("P5\n{w} {h}\n255\n").into_bytes();
    b.extend(px.iter().map(|&v| v as u8));
    std::fs::write(path, b).unwrap();
}

/// A 225x177 crop of mdb028 (the fixture's input size: no resize) and its 3 flips.
fn crop_and_flips(dir: &Path) -> [PathBuf; 4] {
    let img = read_image(&root().join("fixtures/images/mdb028.pgm")).unwrap();
    let (h, w, y0, x0) = (225, 177, 400, 300);
    let mut px = Vec::with_capacity(h * w);
    for y in y0..y0 + h {
        px.extend_from_slice(&img.pixels[y * img.width + x0..y * img.width + x0 + w]);
    }
    let s = [h, w, 1];
    let fh = flip_h(&px, s).unwrap();
    let fv = flip_v(&px, s).unwrap();
    let fhv = flip_v(&fh, s).unwrap();
    let names = ["crop.pgm", "crop_h.pgm", "crop_v.pgm", "crop_hv.pgm"];
    let mut out: Vec<PathBuf> = Vec::new();
    for (n, d) in names.iter().zip([&px, &fh, &fv, &fhv]) {
        let p = dir.join(n);
        write_pgm(&p, w, h, d);
        out.push(p);
    }
    [
        out[0].clone(),
        out[1].clone(),
        out[2].clone(),
        out[3].clone(),
    ]
}

#[test]
fn every_format_gives_probabilities() {
    let dir = tmpdir("formats");
    let model = whole_onnx(&dir, "whole.onnx", None, None);
    let images = bundled_images();
    assert!(images.len() >= 11, "bundled images: {images:?}");
    let mut args = vec!["predict", model.as_str(), "--preprocess", PRE, "--json"];
    args.extend(images.iter().map(String::as_str));
    let out = allconv(&args);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_rows(&out);
    assert_eq!(rows.len(), images.len());
    for r in &rows {
        assert!(r.get("error").is_none(), "{r}");
        let p = probs(r);
        assert_eq!(p.len(), 2, "{r}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{r}");
        assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0), "{r}");
        assert_eq!(r["preprocess_source"], "--preprocess");
        assert_eq!(r["input_size"], serde_json::json!([225, 177]));
    }
    // The .h5 directly gives the same numbers: on libtorch (the default for .h5, when built)
    // and on tract (converted to ONNX in memory).
    for backend in ["torch", "tract"] {
        let mut args_h5 = vec!["predict", WHOLE, "--preprocess", PRE, "--json"];
        args_h5.extend(["--backend", backend]);
        args_h5.extend(images.iter().map(String::as_str));
        let out_h5 = allconv(&args_h5);
        assert!(
            out_h5.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out_h5.stderr)
        );
        for (a, b) in rows.iter().zip(json_rows(&out_h5)) {
            for (x, y) in probs(a).iter().zip(probs(&b)) {
                assert!((x - y).abs() < 1e-6, "{backend}: {a} vs {b}");
            }
        }
    }
    // libtorch runs Keras graphs, not ONNX files: refused by name.
    let out = allconv(&["predict", &model, &images[0], "--backend", "torch"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--backend torch runs Keras .h5 models"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `predict` warns, per image, when its values do not fit the preprocessing: under the
/// 8-bit scaling the 16-bit and DICOM copies of the mammograms are named (still scored),
/// the 8-bit ones are not; the 12-bit DICOM at its own scale passes.
#[test]
fn images_of_another_bit_depth_than_the_scaling_are_named() {
    let dir = tmpdir("range");
    let model = whole_onnx(&dir, "whole.onnx", None, None);
    let images = bundled_images();
    let mut args = vec![
        "predict",
        model.as_str(),
        "--preprocess",
        "rescale=0.0078125,mean=0.5,gray",
        "--json",
    ];
    args.extend(images.iter().map(String::as_str));
    let out = allconv(&args);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for r in json_rows(&out) {
        let file = r["file"].as_str().unwrap();
        let other_depth = file.contains("_16.") || file.ends_with(".dcm");
        let warning = r.get("warning").and_then(|w| w.as_str());
        assert_eq!(warning.is_some(), other_depth, "{file}: {warning:?}");
        assert_eq!(probs(&r).len(), 2, "{file} is scored all the same");
        if let Some(w) = warning {
            assert!(w.contains("set for 8-bit images"), "{w}");
            assert!(stderr.contains(&format!("warning: {file}: ")), "{stderr}");
        }
    }
    let dcm = "fixtures/images/mdb028_m1.dcm";
    let own = allconv(&[
        "predict",
        model.as_str(),
        "--preprocess",
        "rescale=0.00048828125,mean=0.5,gray",
        "--json",
        dcm,
    ]);
    assert!(json_rows(&own)[0].get("warning").is_none());
}

#[test]
fn corrupt_image_is_reported_and_others_go_on() {
    let dir = tmpdir("corrupt");
    let bad = dir.join("corrupt.png");
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[0x13; 40]);
    std::fs::write(&bad, bytes).unwrap();
    let missing = dir.join("missing.pgm");
    let bad_s = bad.to_string_lossy().into_owned();
    let missing_s = missing.to_string_lossy().into_owned();
    let args = [
        "predict",
        WHOLE,
        "fixtures/images/mdb001.pgm",
        &bad_s,
        "fixtures/images/mdb028.jpg",
        &missing_s,
        "fixtures/images/mdb001_m2.dcm",
        "--preprocess",
        PRE,
    ];
    // CSV.
    let mut csv_args = args.to_vec();
    csv_args.push("--csv");
    let out = allconv(&csv_args);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "file,p0,p1,error");
    assert_eq!(lines.len(), 6, "{stdout}");
    for (i, l) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = l.splitn(4, ',').collect();
        if i == 1 || i == 3 {
            assert!(
                f[1].is_empty() && f[2].is_empty() && !f[3].is_empty(),
                "{l}"
            );
        } else {
            let s: f64 = f[1].parse::<f64>().unwrap() + f[2].parse::<f64>().unwrap();
            assert!((s - 1.0).abs() < 1e-5 && f[3].is_empty(), "{l}");
        }
    }
    assert!(
        stderr.contains("corrupt.png") && stderr.contains("missing.pgm"),
        "{stderr}"
    );
    // JSON.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = allconv(&json_args);
    assert!(!out.status.success());
    let rows = json_rows(&out);
    assert_eq!(rows.len(), 5);
    for (i, r) in rows.iter().enumerate() {
        if i == 1 || i == 3 {
            assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
            assert!(r.get("probabilities").is_none());
        } else {
            assert!((probs(r).iter().sum::<f64>() - 1.0).abs() < 1e-5);
        }
    }
    // Text.
    let out = allconv(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("error:"));
}

/// Several images at once (`--jobs`) give the numbers of one at a time, bit for bit (each job
/// runs single-threaded in both), in the images' order, with a failing image in its place.
#[test]
fn jobs_change_neither_the_numbers_nor_the_order() {
    let dir = tmpdir("jobs");
    let model = whole_onnx(&dir, "whole.onnx", None, None);
    let bad = dir.join("corrupt.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot a png").unwrap();
    let mut images = bundled_images();
    images.insert(3, bad.to_string_lossy().into_owned());
    let run = |jobs: &str| {
        let mut args = vec!["predict", model.as_str(), "--preprocess", PRE, "--json"];
        args.extend(["--jobs", jobs, "--threads", jobs]);
        args.extend(images.iter().map(String::as_str));
        let out = allconv(&args);
        assert!(!out.status.success(), "the corrupt image must fail the run");
        json_rows(&out)
    };
    let (one, three) = (run("1"), run("3"));
    assert_eq!(one.len(), images.len());
    assert_eq!(three.len(), images.len());
    for ((a, b), file) in one.iter().zip(&three).zip(&images) {
        assert_eq!(a["file"], file.as_str());
        assert_eq!(b["file"], file.as_str());
        if file.ends_with("corrupt.png") {
            assert!(a["error"].is_string() && b["error"].is_string(), "{a} {b}");
        } else {
            assert_eq!(probs(a), probs(b), "{file}");
        }
    }
    let zero = allconv(&[
        "predict",
        WHOLE,
        "fixtures/images/mdb001.pgm",
        "--jobs",
        "0",
    ]);
    assert_eq!(zero.status.code(), Some(2), "--jobs 0 is a usage error");
}

#[test]
fn tta_is_the_mean_of_the_four_flips() {
    let dir = tmpdir("tta");
    let views = crop_and_flips(&dir);
    let v: Vec<String> = views
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let plain = allconv(&[
        "predict",
        WHOLE,
        "--preprocess",
        PRE,
        "--json",
        &v[0],
        &v[1],
        &v[2],
        &v[3],
    ]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let plain: Vec<Vec<f64>> = json_rows(&plain).iter().map(probs).collect();
    let tta = allconv(&[
        "predict",
        WHOLE,
        "--preprocess",
        PRE,
        "--json",
        "--tta",
        &v[0],
    ]);
    assert!(tta.status.success());
    let rows = json_rows(&tta);
    assert_eq!(rows[0]["tta"], "host (4 flips)");
    let tta = probs(&rows[0]);
    for k in 0..2 {
        let mean = plain.iter().map(|p| p[k]).sum::<f64>() / 4.0;
        assert!(
            (tta[k] - mean).abs() < 1e-5,
            "class {k}: tta {} vs mean of flips {mean}",
            tta[k]
        );
    }
    assert!(
        (tta[0] - plain[0][0]).abs() > 1e-4,
        "--tta did not change the result: {tta:?} vs {:?}",
        plain[0]
    );
    assert!((tta.iter().sum::<f64>() - 1.0).abs() < 1e-5);

    // Preprocessing and TTA compiled into the ONNX graph: taken from the metadata, and
    // --tta is not applied a second time.
    let pre = InGraphPreprocess {
        rescale: 0.0039,
        mean: 0.5,
        gray: true,
    };
    let model = whole_onnx(&dir, "ingraph.onnx", Some(pre), Some(Tta::Flips4));
    for extra in [None, Some("--tta")] {
        let mut a = vec!["predict", model.as_str(), "--json", v[0].as_str()];
        a.extend(extra);
        let out = allconv(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = json_rows(&out);
        assert!(
            rows[0]["preprocess_source"]
                .as_str()
                .unwrap()
                .contains("metadata"),
            "{}",
            rows[0]
        );
        assert!(
            rows[0]["tta"].as_str().unwrap().starts_with("in-graph"),
            "{}",
            rows[0]
        );
        for (x, y) in probs(&rows[0]).iter().zip(&tta) {
            assert!(
                (x - y).abs() < 1e-5,
                "in-graph {:?} vs host {tta:?}",
                rows[0]
            );
        }
    }
    // --preprocess overrides the metadata's in-graph parameters.
    let plain_onnx = whole_onnx(
        &dir,
        "pre_only.onnx",
        Some(InGraphPreprocess {
            rescale: 1.0,
            mean: 7.0,
            gray: true,
        }),
        None,
    );
    let out = allconv(&["predict", &plain_onnx, "--preprocess", PRE, "--json", &v[0]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_rows(&out);
    assert!(rows[0]["preprocess_source"]
        .as_str()
        .unwrap()
        .starts_with("--preprocess"));
    for (x, y) in probs(&rows[0]).iter().zip(&plain[0]) {
        assert!(
            (x - y).abs() < 1e-4,
            "override {:?} vs {:?}",
            rows[0],
            plain[0]
        );
    }
}

fn read_npy3(path: &Path) -> ndarray::Array3<f32> {
    let a: ArrayD<f32> = ndarray_npy::read_npy(path).unwrap();
    a.into_dimensionality::<Ix3>().unwrap()
}

#[test]
fn heatmap_png_matches_the_image_and_map_sums_to_one() {
    let dir = tmpdir("heatmap");
    let d = dir.to_string_lossy().into_owned();
    let out = allconv(&[
        "predict",
        "fixtures/k208tf_yaroslav_patch/model.h5",
        "fixtures/images/mdb001_16.pgm",
        "fixtures/images/mdb028_8.png",
        "--preprocess",
        "target_scale=1",
        "--heatmap",
        &d,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_rows(&out);
    for (r, (stem, size)) in rows.iter().zip([("mdb001_16", 256u32), ("mdb028_8", 512)]) {
        let png = dir.join(format!("{stem}_heatmap.png"));
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (size, size));
        let map = read_npy3(&dir.join(format!("{stem}_heatmap.npy")));
        let (mh, mw, k) = map.dim();
        assert_eq!(k, 3);
        // YaroslavNet: six 2x2 pools.
        assert_eq!((mh, mw), (size as usize / 64, size as usize / 64));
        assert_eq!(r["heatmap"]["shape"], serde_json::json!([mh, mw, k]));
        for px in map.rows() {
            assert!((px.sum() - 1.0).abs() < 1e-5, "{px}");
        }
        let p = probs(r);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    }
    // 3-channel VGG16 patch model with host TTA (maps flipped back before averaging).
    let out = allconv(&[
        "predict",
        "fixtures/k208tf_vgg16_patch/model.h5",
        "fixtures/images/mdb028_8.png",
        "--preprocess",
        "target_scale=1,size=256x192",
        "--heatmap",
        &d,
        "--heatmap-class",
        "1",
        "--tta",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map = read_npy3(&dir.join("mdb028_8_heatmap.npy"));
    assert_eq!(map.dim(), (8, 6, 3));
    let img = image::open(dir.join("mdb028_8_heatmap.png")).unwrap();
    assert_eq!((img.width(), img.height()), (512, 512));

    // Not a patch classifier: a clear error and a failure status.
    let out = allconv(&[
        "predict",
        "fixtures/k208tf_yaroslav_whole_heatmap/model.h5",
        "fixtures/images/mdb028_8.png",
        "--heatmap",
        &d,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a patch classifier"));
    // An ONNX model cannot be rewritten.
    let onnx = whole_onnx(&dir, "whole.onnx", None, None);
    let out = allconv(&[
        "predict",
        &onnx,
        "fixtures/images/mdb028_8.png",
        "--heatmap",
        &d,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--heatmap needs the Keras .h5"));
}

/// At the fixture's own patch size the map is 2x2 (VGG16, 80x64) or 2x1 (YaroslavNet,
/// 128x96); no bundled genuine output exists at a size with a 1x1 map. The Dense is
/// affine, so the classifier's logits are the map's mean logits, and
/// `softmax(mean over pixels of log p)` must equal the genuine Keras output.
#[test]
fn heatmap_reproduces_the_patch_classifier_at_patch_size() {
    for (fixture, hw, map_hw) in [
        ("k208tf_vgg16_patch", [80usize, 64usize], (2usize, 2usize)),
        ("k208tf_yaroslav_patch", [128, 96], (2, 1)),
    ] {
        let dir = root().join("fixtures").join(fixture);
        let g = read_model(&dir.join("model.h5"), &ReadOptions::default()).unwrap();
        let (hm, report) = to_heatmap(&g).unwrap();
        assert_eq!(report.classes, 3);
        let mut npz =
            ndarray_npy::NpzReader::new(std::fs::File::open(dir.join("io.npz")).unwrap()).unwrap();
        let input: ArrayD<f32> = npz.by_name("input").unwrap();
        let expect: ArrayD<f32> = npz.by_name("output").unwrap();
        let shape = input.shape().to_vec();
        assert_eq!(&shape[1..3], &hw);
        let opts = ExportOptions {
            input_size: Some(hw.to_vec()),
            ..Default::default()
        };
        let bytes = export(&hm, &opts).unwrap().to_bytes().unwrap();
        let data: Vec<f32> = input.iter().copied().collect();
        let out = TractModel::load(&bytes, &shape, 1)
            .unwrap()
            .run(&data)
            .unwrap();
        let (n, mh, mw, k) = (shape[0], map_hw.0, map_hw.1, 3);
        assert_eq!(out[0].shape, vec![n, mh, mw, k], "{fixture}");
        for b in 0..n {
            let map = &out[0].data[b * mh * mw * k..(b + 1) * mh * mw * k];
            let mut logit = [0f64; 3];
            for px in map.chunks_exact(k) {
                assert!((px.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                for c in 0..k {
                    logit[c] += f64::from(px[c]).ln() / (mh * mw) as f64;
                }
            }
            let m = logit.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logit.iter().map(|l| (l - m).exp()).sum();
            for c in 0..k {
                let p = (logit[c] - m).exp() / z;
                let e = f64::from(expect[[b, c]]);
                assert!(
                    (p - e).abs() < 1e-4,
                    "{fixture} sample {b} class {c}: heatmap {p} vs Keras {e}"
                );
            }
        }
    }
}
