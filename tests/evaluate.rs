//! `allconv evaluate` and its metrics (src/eval/) against scikit-learn, NumPy, SciPy and
//! a reference fast DeLong (fixtures/eval/*.json, written by converters/eval_ref.py),
//! the bootstrap's coverage on a model that scores at random, and the command end to end
//! on the bundled images.

use allconv::eval::binary::{
    at_specificity, auroc, bootstrap, delong, erfc, percentile, roc_curve, two_sided_p, youden,
    RocCurve,
};
use allconv::eval::multiclass::multiclass;
use allconv::eval::{evaluate, EvalOptions, ScoreTable};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOL: f64 = 1e-9;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Value {
    let p = root().join("fixtures/eval").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn cases(v: &Value) -> Vec<Value> {
    let c = v["cases"].as_array().unwrap().clone();
    assert!(!c.is_empty(), "no cases in the fixture");
    c
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| match x {
            // Inputs are written as decimal strings: read exactly (ties stay ties).
            Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
            Value::Null => f64::INFINITY, // an infinite threshold
            v => v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")),
        })
        .collect()
}

fn close(a: f64, b: f64, what: &str) {
    if a.is_infinite() || b.is_infinite() {
        assert_eq!(a, b, "{what}");
    } else {
        assert!((a - b).abs() <= TOL, "{what}: {a} vs {b} (diff {})", a - b);
    }
}

fn close_all(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(
        a.len(),
        b.len(),
        "{what}: lengths {} vs {}",
        a.len(),
        b.len()
    );
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        close(*x, *y, &format!("{what}[{i}]"));
    }
}

fn check_curve(c: &RocCurve, r: &Value, what: &str) {
    close_all(&c.fpr, &f64s(&r["fpr"]), &format!("{what} fpr"));
    close_all(&c.tpr, &f64s(&r["tpr"]), &format!("{what} tpr"));
    close_all(
        &c.thresholds,
        &f64s(&r["thresholds"]),
        &format!("{what} thresholds"),
    );
}

fn check_point(p: Option<allconv::eval::OperatingPoint>, r: &Value, what: &str) {
    match p {
        None => assert!(r.is_null(), "{what}: none, sklearn's curve has {r}"),
        Some(p) => {
            assert!(!r.is_null(), "{what}: {p:?}, sklearn's curve has none");
            close(p.threshold, r["threshold"].as_f64().unwrap(), what);
            close(p.sensitivity, r["sensitivity"].as_f64().unwrap(), what);
            close(p.specificity, r["specificity"].as_f64().unwrap(), what);
        }
    }
}

#[test]
fn binary_metrics_match_scikit_learn_and_fast_delong() {
    let f = fixture("binary.json");
    let mut pairs = 0;
    for c in cases(&f) {
        let name = c["name"].as_str().unwrap().to_string();
        let y: Vec<bool> = c["y"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64() == Some(1))
            .collect();
        let sets: Vec<Vec<f64>> = c["scores"].as_array().unwrap().iter().map(f64s).collect();
        assert!(!sets.is_empty());
        for (i, s) in sets.iter().enumerate() {
            let w = format!("{name} set {i}");
            close(
                auroc(s, &y).unwrap(),
                c["roc_auc"][i].as_f64().unwrap(),
                &format!("{w} roc_auc_score"),
            );
            check_curve(
                &roc_curve(s, &y, true).unwrap(),
                &c["roc_curve"][i],
                &format!("{w} roc_curve"),
            );
            let full = roc_curve(s, &y, false).unwrap();
            check_curve(
                &full,
                &c["roc_curve_full"][i],
                &format!("{w} roc_curve(drop_intermediate=False)"),
            );
            check_point(youden(&full), &c["youden"][i], &format!("{w} youden"));
            check_point(
                at_specificity(&full, 0.9),
                &c["at_specificity_0_9"][i],
                &format!("{w} at spec 0.9"),
            );
        }
        let refs: Vec<&[f64]> = sets.iter().map(Vec::as_slice).collect();
        let d = delong(&refs, &y).unwrap();
        close_all(
            &d.aucs,
            &f64s(&c["delong_aucs"]),
            &format!("{name} delong aucs"),
        );
        for (i, row) in d.cov.iter().enumerate() {
            close_all(
                row,
                &f64s(&c["delong_cov"][i]),
                &format!("{name} delong cov row {i}"),
            );
        }
        if let Some(z) = c["diff_z"].as_f64() {
            pairs += 1;
            let var = d.cov[0][0] + d.cov[1][1] - 2.0 * d.cov[0][1];
            let mine = (d.aucs[1] - d.aucs[0]) / var.sqrt();
            close(mine, z, &format!("{name} paired z"));
            close(
                two_sided_p(mine),
                c["diff_p"].as_f64().unwrap(),
                &format!("{name} paired p"),
            );
        }
    }
    assert!(pairs > 0, "no paired case");
}

#[test]
fn multiclass_metrics_match_scikit_learn() {
    let f = fixture("multiclass.json");
    for c in cases(&f) {
        let name = c["name"].as_str().unwrap();
        let k = c["classes"].as_u64().unwrap() as usize;
        let labels: Vec<usize> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let probs: Vec<Vec<f64>> = c["probs"].as_array().unwrap().iter().map(f64s).collect();
        let m = multiclass(&probs, &labels, k).unwrap();
        close(
            m.accuracy,
            c["accuracy"].as_f64().unwrap(),
            &format!("{name} accuracy"),
        );
        let recall: Vec<f64> = m.recall.iter().map(|r| r.unwrap()).collect();
        close_all(&recall, &f64s(&c["recall"]), &format!("{name} recall"));
        let conf: Vec<Vec<u64>> = serde_json::from_value(c["confusion"].clone()).unwrap();
        assert_eq!(m.confusion, conf, "{name} confusion matrix");
        let ovr: Vec<f64> = m.ovr_auroc.iter().map(|r| r.unwrap()).collect();
        close_all(
            &ovr,
            &f64s(&c["ovr_auroc"]),
            &format!("{name} one-vs-rest AUROC"),
        );
        close(
            m.macro_ovr_auroc.unwrap(),
            c["macro_ovr_auroc"].as_f64().unwrap(),
            &format!("{name} macro OvR AUROC"),
        );
    }
}

#[test]
fn percentile_and_erfc_match_numpy_and_scipy() {
    let f = fixture("numeric.json");
    let p = f["percentile"].as_array().unwrap();
    assert!(!p.is_empty());
    for c in p {
        let v = f64s(&c["values"]);
        let q = c["q"].as_f64().unwrap();
        close(
            percentile(&v, q).unwrap(),
            c["result"].as_f64().unwrap(),
            &format!("percentile {q}"),
        );
    }
    let e = f["erfc"].as_array().unwrap();
    assert!(!e.is_empty());
    for c in e {
        let x = c["x"].as_f64().unwrap();
        close(
            erfc(x),
            c["result"].as_f64().unwrap(),
            &format!("erfc({x})"),
        );
    }
}

/// xorshift for the test's own random scores (not the library's generator).
struct TestRng(u64);
impl TestRng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn a_random_scorer_gets_intervals_that_cover_one_half() {
    // 300 test sets of 80 images (labels and scores independent); each interval should
    // cover 0.5 about 95% of the time.
    let trials = 300;
    let mut rng = TestRng(0x9E37_79B9_7F4A_7C15);
    let (mut boot_cover, mut delong_cover) = (0, 0);
    for t in 0..trials {
        let y: Vec<bool> = (0..80).map(|i| i % 2 == 0).collect();
        let s: Vec<f64> = (0..80)
            .map(|_| (rng.next() * 100.0).round() / 100.0)
            .collect();
        let b = bootstrap(&[&s], &y, 400, t as u64).unwrap();
        let a: Vec<f64> = b.aucs.iter().map(|r| r[0]).collect();
        let (lo, hi) = (percentile(&a, 2.5).unwrap(), percentile(&a, 97.5).unwrap());
        if lo <= 0.5 && 0.5 <= hi {
            boot_cover += 1;
        }
        let d = delong(&[&s], &y).unwrap();
        let se = d.cov[0][0].sqrt();
        if (d.aucs[0] - 0.5).abs() <= 1.959963984540054 * se {
            delong_cover += 1;
        }
    }
    let (bc, dc) = (
        boot_cover as f64 / trials as f64,
        delong_cover as f64 / trials as f64,
    );
    eprintln!("coverage of 0.5: bootstrap {bc:.3}, DeLong {dc:.3}");
    assert!((0.90..=0.99).contains(&bc), "bootstrap coverage {bc}");
    assert!((0.90..=0.99).contains(&dc), "DeLong coverage {dc}");

    // One large random set through the whole report: both intervals cover 0.5.
    let n = 1000;
    let table = ScoreTable {
        classes: vec!["neg".into(), "pos".into()],
        paths: (0..n).map(|i| format!("img{i}.png")).collect(),
        labels: (0..n).map(|i| i % 3 % 2).collect(),
        probs: (0..n)
            .map(|_| {
                let p = rng.next();
                vec![1.0 - p, p]
            })
            .collect(),
        probs_tta: None,
    };
    let r = evaluate(
        &table,
        &EvalOptions {
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    let b = r.binary.unwrap().single;
    let [lo, hi] = b.ci_bootstrap.unwrap();
    assert!(lo < 0.5 && 0.5 < hi, "bootstrap CI {lo}-{hi}");
    let [lo, hi] = b.ci_delong.unwrap();
    assert!(lo < 0.5 && 0.5 < hi, "DeLong CI {lo}-{hi}");
}

#[test]
fn bootstrap_is_seeded_and_paired() {
    let y: Vec<bool> = (0..40).map(|i| i % 3 == 0).collect();
    let s: Vec<f64> = (0..40).map(|i| ((i * 37) % 11) as f64 / 10.0).collect();
    let t: Vec<f64> = s
        .iter()
        .enumerate()
        .map(|(i, v)| v + (i % 2) as f64 * 0.05)
        .collect();
    let a = bootstrap(&[&s, &t], &y, 50, 3).unwrap();
    assert_eq!(a, bootstrap(&[&s, &t], &y, 50, 3).unwrap());
    assert_ne!(a.aucs, bootstrap(&[&s, &t], &y, 50, 4).unwrap().aucs);
    // The same set twice gives identical AUROCs in every resample: the resamples are paired.
    let same = bootstrap(&[&s, &s], &y, 50, 3).unwrap();
    assert!(same.aucs.iter().all(|r| r[0] == r[1]));
    assert_eq!(same.aucs.len(), 50);
}

// ---- the command ---------------------------------------------------------------------

const MODEL: &str = "fixtures/k208tf_vgg16_whole_vgg/model.h5";
/// Keeps the whole-image fixture's softmax away from saturation (as tests/predict_images.rs).
const PRE: &str = "rescale=0.0039,mean=0.5,gray";

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("allconv_evaluate_{name}_{}", std::process::id()));
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

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "allconv failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The same f32 outputs (the CSV holds the f32's shortest decimal, predict's JSON its
/// widened f64).
fn same_f32(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(*x as f32, *y as f32, "{what}: {x} vs {y}");
    }
}

/// A test folder neg/ + pos/ of bundled mini-MIAS images in several formats.
fn test_folder(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let split: [(&str, &str); 8] = [
        ("mdb001.pgm", "neg"),
        ("mdb001_16.png", "neg"),
        ("mdb028_p2.pgm", "neg"),
        ("mdb001_m2.dcm", "neg"),
        ("mdb028.pgm", "pos"),
        ("mdb028_8.png", "pos"),
        ("mdb028.jpg", "pos"),
        ("mdb001_16.tif", "pos"),
    ];
    let mut out = Vec::new();
    for (f, class) in split {
        let d = dir.join(class);
        std::fs::create_dir_all(&d).unwrap();
        let to = d.join(f);
        std::fs::copy(root().join("fixtures/images").join(f), &to).unwrap();
        out.push((to, class));
    }
    out
}

#[test]
fn evaluate_end_to_end_and_from_scores() {
    let dir = tmpdir("cli");
    let data = dir.join("test");
    let files = test_folder(&data);
    let (csv, png) = (dir.join("scores.csv"), dir.join("roc.png"));
    let out = allconv(&[
        "evaluate",
        MODEL,
        data.to_str().unwrap(),
        "--preprocess",
        PRE,
        "--tta",
        "--bootstrap",
        "300",
        "--seed",
        "11",
        "--scores",
        csv.to_str().unwrap(),
        "--roc",
        png.to_str().unwrap(),
        "--json",
    ]);
    let r = json_of(&out);
    assert_eq!(r["images"], 8);
    assert_eq!(r["classes"], serde_json::json!(["neg", "pos"]));
    assert_eq!(r["class_counts"], serde_json::json!([4, 4]));
    assert_eq!(r["seed"], 11);
    assert_eq!(r["bootstrap_resamples"], 300);
    let b = &r["binary"];
    assert_eq!(b["positive_class"], "pos");
    for set in ["single", "tta"] {
        let a = b[set]["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{set} auroc {a}");
        let ci = f64s(&b[set]["ci_bootstrap"]);
        assert!(ci[0] <= ci[1] && ci.len() == 2, "{set} ci {ci:?}");
        assert!(b[set]["delong_se"].as_f64().is_some(), "{set} DeLong");
        assert!(
            b[set]["youden"]["sensitivity"].as_f64().is_some(),
            "{set} Youden"
        );
    }
    let d = &b["tta_minus_single"];
    close(
        d["difference"].as_f64().unwrap(),
        b["tta"]["auroc"].as_f64().unwrap() - b["single"]["auroc"].as_f64().unwrap(),
        "difference",
    );
    assert_eq!(r["multiclass"]["confusion"].as_array().unwrap().len(), 2);
    assert_eq!(r["outputs"]["scores"], csv.to_str().unwrap());

    // The CSV: one row per image, labels from the folders, the scores predict gives.
    let table = ScoreTable::read_csv(&csv).unwrap();
    assert_eq!(table.paths.len(), files.len());
    let tta = table.probs_tta.as_ref().expect("tta columns");
    let mut seen = 0;
    for (path, class) in &files {
        let i = table
            .paths
            .iter()
            .position(|p| Path::new(p) == path.as_path())
            .unwrap_or_else(|| panic!("{} not in the CSV", path.display()));
        assert_eq!(table.classes[table.labels[i]], *class);
        let pr = allconv(&[
            "predict",
            MODEL,
            path.to_str().unwrap(),
            "--preprocess",
            PRE,
            "--json",
        ]);
        let single: Vec<f64> = f64s(&json_of(&pr)[0]["probabilities"]);
        same_f32(&table.probs[i], &single, "single-view scores = predict's");
        let pr = allconv(&[
            "predict",
            MODEL,
            path.to_str().unwrap(),
            "--preprocess",
            PRE,
            "--tta",
            "--json",
        ]);
        same_f32(
            &tta[i],
            &f64s(&json_of(&pr)[0]["probabilities"]),
            "TTA scores = predict --tta's",
        );
        seen += 1;
    }
    assert_eq!(seen, 8);

    // The PNG decodes, at the plot's size, and is not blank.
    let img = image::open(&png).expect("the ROC PNG decodes").to_rgb8();
    assert_eq!(img.dimensions(), (760, 760));
    assert!(img.pixels().any(|p| p.0 != [255, 255, 255]));

    // --from-scores reproduces every number from the CSV alone.
    let again = allconv(&[
        "evaluate",
        "--from-scores",
        csv.to_str().unwrap(),
        "--bootstrap",
        "300",
        "--seed",
        "11",
        "--json",
    ]);
    let r2 = json_of(&again);
    for key in [
        "images",
        "classes",
        "class_counts",
        "binary",
        "multiclass",
        "multiclass_tta",
    ] {
        assert_eq!(r[key], r2[key], "{key} differs from --from-scores");
    }

    // A manifest (relative paths, the rows in the CSV's order) instead of the folders, no
    // TTA: the same single-view report, interval and band included (the bootstrap's draws
    // depend on the seed, the class sizes and the row order).
    let mut manifest = String::from("label,path\n");
    for (p, &l) in table.paths.iter().zip(&table.labels) {
        let rel = Path::new(p).strip_prefix(&dir).unwrap();
        manifest += &format!("{},{}\n", table.classes[l], rel.display());
    }
    let m = dir.join("labels.csv");
    std::fs::write(&m, manifest).unwrap();
    let r3 = json_of(&allconv(&[
        "evaluate",
        MODEL,
        "--manifest",
        m.to_str().unwrap(),
        "--preprocess",
        PRE,
        "--bootstrap",
        "300",
        "--seed",
        "11",
        "--json",
    ]));
    assert_eq!(r3["binary"]["single"], r["binary"]["single"]);
    assert!(r3["binary"]["tta"].is_null());
    assert_eq!(r3["multiclass"], r["multiclass"]);
}

#[test]
fn bad_inputs_are_named() {
    let dir = tmpdir("bad");
    let csv = dir.join("s.csv");
    std::fs::write(
        &csv,
        "path,label,p:neg,p:pos\na.png,neg,0.2,0.8\nb.png,cat,0.5,0.5\n",
    )
    .unwrap();
    let out = allconv(&["evaluate", "--from-scores", csv.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("s.csv") && err.contains("line 3") && err.contains("cat"),
        "{err}"
    );
    // One class only: the AUROC is undefined, said so.
    std::fs::write(
        &csv,
        "path,label,p:neg,p:pos\na.png,neg,0.2,0.8\nb.png,neg,0.5,0.5\n",
    )
    .unwrap();
    let out = allconv(&["evaluate", "--from-scores", csv.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both classes"), "{err}");
    // A bootstrap too large to hold is refused, not attempted.
    std::fs::write(
        &csv,
        "path,label,p:neg,p:pos\na.png,neg,0.2,0.8\nb.png,pos,0.5,0.5\n",
    )
    .unwrap();
    let out = allconv(&[
        "evaluate",
        "--from-scores",
        csv.to_str().unwrap(),
        "--bootstrap",
        "100000000",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 100000"), "{err}");
}

#[test]
fn heatmap_overlay_carries_its_colour_scale() {
    use allconv::data::{render_overlay, write_overlay, GrayImage, OverlayOptions};
    let (w, h) = (320usize, 256usize);
    let img = GrayImage::new(w, h, 8, (0..w * h).map(|i| (i % 251) as f32).collect()).unwrap();
    let heat: Vec<f32> = (0..12).map(|v| v as f32 / 22.0).collect(); // max 0.5
    let dir = tmpdir("overlay");
    let (with, without) = (dir.join("with.png"), dir.join("without.png"));
    let plain = OverlayOptions {
        legend: false,
        ..Default::default()
    };
    write_overlay(&with, &img, &heat, (3, 4), &OverlayOptions::default()).unwrap();
    write_overlay(&without, &img, &heat, (3, 4), &plain).unwrap();
    let a = image::open(&with).unwrap().to_rgb8();
    let b = image::open(&without).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), (w as u32, h as u32));
    // Without the legend the file is the rendered overlay itself.
    assert_eq!(
        b.as_raw(),
        &render_overlay(&img, &heat, (3, 4), &plain).unwrap()
    );
    // With it, only the top-right corner changes, and it does change.
    let mut changed = 0;
    for (x, y, p) in a.enumerate_pixels() {
        if p != b.get_pixel(x, y) {
            assert!(
                x >= w as u32 / 2 && y < h as u32 * 3 / 4,
                "pixel ({x}, {y}) changed"
            );
            changed += 1;
        }
    }
    assert!(changed > 500, "{changed} pixels of legend");
}
