//! `allconv sample-patches` against the paper's script run for real
//! (converters/sample_patches_ref.py: the Python 3 port of sample_patches_combined.py with
//! genuine OpenCV, numpy, pandas, scikit-learn and PIL; fixtures/sample_patches/), the
//! mini-MIAS circles on the bundled images, and bad input.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use allconv::sample::{self, blob, contours, mt19937::RandomState, split, Options};
use serde_json::Value;

fn fixture() -> PathBuf {
    common::fixtures_dir().join("sample_patches")
}

fn record() -> Value {
    record_of("expect")
}

/// The record of one run of the script: `expect` (the main run, with the unit cases) or
/// `alt1`, `alt2` (other options).
fn record_of(run: &str) -> Value {
    let p = if run == "expect" {
        fixture().join("record.json")
    } else {
        fixture().join(run).join("record.json")
    };
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).expect("record.json is JSON")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("allconv-sp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array().expect("array")
}

/// A float the fixture records exactly: a repr() string (serde_json's own float parsing
/// may be one ulp off).
fn fnum(v: &Value) -> f64 {
    match v.as_str() {
        Some(s) => s.parse().unwrap_or_else(|e| panic!("{s}: {e}")),
        None => v.as_f64().expect("number"),
    }
}

fn ints(v: &Value) -> Vec<i64> {
    arr(v).iter().map(|x| x.as_i64().expect("int")).collect()
}

fn strs(v: &Value) -> Vec<String> {
    arr(v)
        .iter()
        .map(|x| x.as_str().expect("str").to_string())
        .collect()
}

/// The options a run was made with (its record's "options", the script's flags).
fn fixture_options(rec: &Value) -> Options {
    let o = strs(&rec["options"]);
    assert!(!o.is_empty());
    let mut opts = Options::default();
    let mut i = 0;
    while i < o.len() {
        let val = o.get(i + 1).cloned().unwrap_or_default();
        match o[i].as_str() {
            "--target-height" => opts.target_height = val.parse().unwrap(),
            "--patch-size" => opts.patch_size = val.parse().unwrap(),
            "--nb-bkg" => opts.nb_bkg = val.parse().unwrap(),
            "--nb-abn" => opts.nb_abn = val.parse().unwrap(),
            "--nb-hns" => opts.nb_hns = val.parse().unwrap(),
            "--val-size" => opts.val_size = val.parse().unwrap(),
            "--target-width" => opts.target_width = Some(val.parse().unwrap()),
            "--pos-cutoff" => opts.pos_cutoff = val.parse().unwrap(),
            "--neg-cutoff" => opts.neg_cutoff = val.parse().unwrap(),
            "--no-segment-breast" | "--no-verbose" => {
                if o[i] == "--no-segment-breast" {
                    opts.segment_breast = false;
                }
                i += 1;
                continue;
            }
            other => panic!("fixture option {other} not handled by the test"),
        }
        i += 2;
    }
    opts
}

#[test]
fn randint_and_permutation_match_numpy_random_state() {
    let rec = record();
    let cases = arr(&rec["units"]["randint"]);
    assert!(cases.len() >= 5);
    for c in cases {
        let mut r = RandomState::new(c["seed"].as_u64().unwrap() as u32);
        let (lo, hi) = (c["low"].as_i64().unwrap(), c["high"].as_i64().unwrap());
        let got: Vec<i64> = (0..20).map(|_| r.randint(lo, hi).unwrap()).collect();
        assert_eq!(got, ints(&c["values"]), "randint({lo}, {hi})");
    }
    let cases = arr(&rec["units"]["permutation"]);
    assert!(!cases.is_empty());
    for c in cases {
        let mut r = RandomState::new(c["seed"].as_u64().unwrap() as u32);
        let got: Vec<i64> = r
            .permutation(c["n"].as_u64().unwrap() as usize)
            .into_iter()
            .map(|v| v as i64)
            .collect();
        assert_eq!(got, ints(&c["values"]), "permutation({})", c["n"]);
    }
}

#[test]
fn stratified_split_matches_scikit_learn() {
    let rec = record();
    let cases = arr(&rec["units"]["split"]);
    assert!(cases.len() >= 3);
    for c in cases {
        let labels = ints(&c["labels"]);
        let ids: Vec<String> = (0..labels.len()).map(|i| format!("p{i:02}")).collect();
        let (tr, te) = split::stratified_split(
            &labels,
            c["test_size"].as_f64().unwrap(),
            c["seed"].as_u64().unwrap() as u32,
        )
        .expect("split");
        let tr: Vec<String> = tr.iter().map(|&i| ids[i].clone()).collect();
        let te: Vec<String> = te.iter().map(|&i| ids[i].clone()).collect();
        assert_eq!(tr, strs(&c["train"]), "train of {labels:?}");
        assert_eq!(te, strs(&c["test"]), "test of {labels:?}");
    }
}

#[test]
fn contours_match_opencv_find_contours() {
    let rec = record();
    let cases = arr(&rec["units"]["contours"]);
    assert!(cases.len() >= 4);
    let mut compared = 0;
    for c in cases {
        let (h, w) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
        );
        let px: Vec<u8> = ints(&c["pixels"]).into_iter().map(|v| v as u8).collect();
        for (mode, approx) in [
            ("list_none", contours::Approx::None),
            ("tree_simple", contours::Approx::Simple),
        ] {
            let all = contours::find_all(&px, h, w, approx);
            let order = if mode == "list_none" {
                contours::list_order(&all)
            } else {
                contours::tree_order(&all)
            };
            let want = arr(&c[mode]["contours"]);
            assert_eq!(order.len(), want.len(), "{mode}: number of contours");
            for (k, (&i, e)) in order.iter().zip(want).enumerate() {
                let pts = &all[i].points;
                let want_pts: Vec<(i32, i32)> = arr(&e["points"])
                    .iter()
                    .map(|p| (p[0].as_i64().unwrap() as i32, p[1].as_i64().unwrap() as i32))
                    .collect();
                assert_eq!(pts, &want_pts, "{mode} contour {k}: points");
                assert_eq!(
                    contours::contour_area(pts),
                    fnum(&e["area"]),
                    "{mode} contour {k}: area"
                );
                let (x, y, bw, bh) = contours::bounding_rect(pts);
                assert_eq!(
                    vec![x as i64, y as i64, bw as i64, bh as i64],
                    ints(&e["bbox"]),
                    "{mode} contour {k}: bbox"
                );
                let (m00, m10, m01) = contours::moments(pts);
                let m: Vec<f64> = arr(&e["m"]).iter().map(fnum).collect();
                assert_eq!(vec![m00, m10, m01], m, "{mode} contour {k}: moments");
                compared += 1;
            }
            if mode == "tree_simple" {
                // hierarchy [next, prev, first_child, parent]: compare the parents.
                let pos: BTreeMap<usize, usize> =
                    order.iter().enumerate().map(|(k, &i)| (i, k)).collect();
                for (k, (&i, hrow)) in order.iter().zip(arr(&c[mode]["hierarchy"])).enumerate() {
                    let parent = all[i].parent.map_or(-1, |p| pos[&p] as i64);
                    assert_eq!(
                        parent,
                        hrow[3].as_i64().unwrap(),
                        "tree contour {k}: parent"
                    );
                }
            }
        }
    }
    assert!(compared > 20);
}

#[test]
fn blob_detector_matches_opencv_simple_blob_detector() {
    let rec = record();
    let cases = arr(&rec["units"]["blobs"]);
    assert!(!cases.is_empty());
    let mut n = 0;
    for c in cases {
        let (h, w) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
        );
        let px: Vec<u8> = ints(&c["pixels"]).into_iter().map(|v| v as u8).collect();
        let kps = blob::detect(&px, h, w, &blob::BlobParams::paper(32));
        let want = arr(&c["keypoints"]);
        assert_eq!(kps.len(), want.len(), "number of keypoints");
        for (k, e) in kps.iter().zip(want) {
            let e: Vec<f32> = arr(e).iter().map(|v| fnum(v) as f32).collect();
            assert_eq!(vec![k.x, k.y, k.size], e, "keypoint");
            n += 1;
        }
    }
    assert!(n > 5);
}

/// Runs the library on the fixture's synthetic set into `out`, with a run's options.
fn run_fixture(out: &Path, jobs: usize, rec: &Value) -> sample::Report {
    let inp = fixture().join("input");
    let table = sample::read_cbis_table(
        &inp.join("roi_mask_path.csv"),
        &inp.join("masks"),
        &inp.join("full"),
    )
    .expect("table");
    let pats = sample::read_patient_list(&inp.join("pat_train.txt")).expect("patients");
    let mut opts = fixture_options(rec);
    opts.jobs = jobs;
    sample::run(
        &table,
        &pats,
        &out.join("train"),
        &out.join("val"),
        &opts,
        &|_, _| {},
    )
    .expect("run")
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn fixture_parity_split_centres_classes_and_pixels() {
    check_run("expect", 2);
}

/// No segmentation, a fixed target size, an odd patch size, the cutoff decay after 1000
/// tries.
#[test]
fn fixture_parity_other_options() {
    check_run("alt1", 1);
}

/// One abnormal patch at the ROI centroid, no hard negatives, no validation set.
#[test]
fn fixture_parity_centroid_patch_no_val() {
    check_run("alt2", 3);
}

fn check_run(run: &str, jobs: usize) {
    let out = tmp(&format!("parity-{run}"));
    let rec = record_of(run);
    let opts = fixture_options(&rec);
    let report = run_fixture(&out, jobs, &rec);
    let sets: &[&str] = if opts.val_size > 0.0 {
        &["train", "val"]
    } else {
        &["train"]
    };
    // The patient split and the pat_lst.txt files.
    assert_eq!(report.train, strs(&rec["train"]));
    if opts.val_size > 0.0 {
        assert_eq!(report.val, strs(&rec["val"]));
    } else {
        assert!(report.val.is_empty());
        assert!(
            !out.join("val").exists(),
            "no val folder without a validation set"
        );
    }
    for set in sets {
        assert_eq!(
            std::fs::read_to_string(out.join(set).join("pat_lst.txt")).unwrap(),
            std::fs::read_to_string(fixture().join(run).join(set).join("pat_lst.txt")).unwrap(),
            "{set}/pat_lst.txt"
        );
    }
    // Per view: the resize, the breast box, the blob keypoints, their permutation, the
    // ROI boxes and every patch centre with its class, in the script's order.
    let views = rec["views"].as_object().expect("views");
    assert_eq!(report.views.len(), views.len(), "views sampled");
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let mut n_patches = 0;
    for v in &report.views {
        let key = format!("{}/{}", v.set, v.id);
        let e = &views[&key];
        assert_eq!(
            v.resized.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            ints(&e["resized"]),
            "{key}: resized"
        );
        if opts.segment_breast {
            let bb = v.breast_bbox.expect("segmented");
            assert_eq!(
                bb.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                ints(&e["breast_bbox"]),
                "{key}: breast box"
            );
        } else {
            assert!(v.breast_bbox.is_none() && e.get("breast_bbox").is_none());
        }
        let no_kp = Value::Array(Vec::new());
        let kp: Vec<[f32; 3]> = arr(e.get("keypoints").unwrap_or(&no_kp))
            .iter()
            .map(|k| {
                let k: Vec<f32> = arr(k).iter().map(|x| fnum(x) as f32).collect();
                [k[0], k[1], k[2]]
            })
            .collect();
        assert!(
            opts.nb_hns == 0 || !kp.is_empty(),
            "{key}: the script found blobs"
        );
        assert_eq!(v.keypoints, kp, "{key}: blob keypoints");
        assert_eq!(
            v.permutation.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            ints(e.get("permutation").unwrap_or(&no_kp)),
            "{key}: permutation"
        );
        for (abn, b) in e["abn"].as_object().unwrap() {
            assert_eq!(
                v.roi_bbox.get(abn).map(|b| b.to_vec()),
                Some(ints(&b["bbox"])),
                "{key} abnormality {abn}: ROI box"
            );
        }
        let ev = arr(&e["events"]);
        assert_eq!(v.patches.len(), ev.len(), "{key}: number of patches");
        for (p, x) in v.patches.iter().zip(ev) {
            assert_eq!(p.kind, x["kind"].as_str().unwrap(), "{key}: kind");
            assert_eq!(p.abn, x["abn"].as_str().unwrap(), "{key}: abnormality");
            assert_eq!(
                (p.x, p.y),
                (x["x"].as_i64().unwrap(), x["y"].as_i64().unwrap()),
                "{key}: centre of {}",
                p.file
            );
            assert_eq!(p.file, x["file"].as_str().unwrap(), "{key}: file");
            n_patches += 1;
        }
    }
    assert!(n_patches > 10);
    // The files: the same set, pixel-identical 16-bit PNGs.
    for set in sets {
        let want_dir = fixture().join(run).join(set);
        let got_dir = out.join(set);
        let want = files(&want_dir);
        assert_eq!(files(&got_dir), want, "{set}: files");
        let pngs: Vec<&String> = want.iter().filter(|f| f.ends_with(".png")).collect();
        assert!(!pngs.is_empty());
        for f in pngs {
            let a = allconv::data::read_image(&want_dir.join(f)).unwrap();
            let b = allconv::data::read_image(&got_dir.join(f)).unwrap();
            assert_eq!(b.bit_depth, 16, "{f}: 16-bit");
            assert_eq!(a, b, "{set}/{f}: pixels");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn allconv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_allconv"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn fixture_args(inp: &Path, out: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "sample-patches".into(),
        inp.join("roi_mask_path.csv").display().to_string(),
        inp.join("masks").display().to_string(),
        inp.join("pat_train.txt").display().to_string(),
        inp.join("full").display().to_string(),
        out.join("train").display().to_string(),
        out.join("val").display().to_string(),
        "--json".into(),
    ];
    a.extend(strs(&record()["options"]));
    a
}

fn run_json(args: &[String]) -> (bool, Value) {
    let o = allconv().args(args).output().expect("runs allconv");
    let text = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "--json output: {e}: {text} / {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), v)
}

#[test]
fn cli_runs_the_fixture_and_a_rerun_gives_the_same_files() {
    let out = tmp("cli");
    let inp = fixture().join("input");
    let (ok, v) = run_json(&fixture_args(&inp, &out));
    assert!(ok, "{v}");
    let counts = v["counts"].as_object().expect("counts");
    let expect_counts = |class: &str| {
        ["train", "val"]
            .iter()
            .map(|s| {
                files(&fixture().join("expect").join(s))
                    .iter()
                    .filter(|f| f.starts_with(&format!("{class}/")))
                    .count()
            })
            .sum::<usize>()
    };
    for class in ["background", "calc_mal", "calc_ben", "mass_mal", "mass_ben"] {
        assert_eq!(
            counts.get(class).and_then(Value::as_u64).unwrap_or(0) as usize,
            expect_counts(class),
            "{class}"
        );
    }
    let first: Vec<(String, Vec<u8>)> = files(&out)
        .into_iter()
        .map(|f| {
            let b = std::fs::read(out.join(&f)).unwrap();
            (f, b)
        })
        .collect();
    assert!(first.len() > 100);
    assert!(
        first.iter().all(|(f, _)| !f.contains("/.")),
        "no temp file left"
    );
    let (ok, _) = run_json(&fixture_args(&inp, &out));
    assert!(ok);
    let second: Vec<(String, Vec<u8>)> = files(&out)
        .into_iter()
        .map(|f| {
            let b = std::fs::read(out.join(&f)).unwrap();
            (f, b)
        })
        .collect();
    assert!(first == second, "a re-run writes the same files");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_input_is_named_counted_and_the_rest_sampled() {
    let dir = tmp("bad");
    let inp = dir.join("input");
    copy_dir(&fixture().join("input"), &inp);
    // A missing image, a missing mask, a mask with no ROI, an unreadable file, a patient
    // in the list with no rows.
    std::fs::remove_file(inp.join("full/P_00047_LEFT_MLO.png")).unwrap();
    std::fs::remove_file(inp.join("masks/Calc-Training_P_00054_LEFT_CC_1.png")).unwrap();
    let empty = image::GrayImage::new(40, 60);
    let mask_path = inp.join("masks/Mass-Training_P_00005_LEFT_MLO_1.png");
    let (w, h) = image::image_dimensions(&mask_path).unwrap();
    image::GrayImage::new(w, h).save(&mask_path).unwrap();
    drop(empty);
    std::fs::write(
        inp.join("full/P_00012_RIGHT_MLO.png"),
        b"\x89PNG\r\n\x1a\nnot a png",
    )
    .unwrap();
    let mut pats = std::fs::read_to_string(inp.join("pat_train.txt")).unwrap();
    pats.push_str("P_99999\n");
    std::fs::write(inp.join("pat_train.txt"), pats).unwrap();
    let out = dir.join("out");
    let (ok, v) = run_json(&fixture_args(&inp, &out));
    assert!(!ok, "skips make the exit status non-zero");
    let sc = v["skip_counts"].as_object().expect("skip_counts");
    for reason in [
        "missing image",
        "missing mask",
        "mask with no ROI",
        "unreadable file",
        "patient with no rows",
    ] {
        assert_eq!(
            sc.get(reason).and_then(Value::as_u64),
            Some(1),
            "{reason}: {v}"
        );
    }
    let items: Vec<String> = arr(&v["skipped"])
        .iter()
        .map(|s| s["item"].as_str().unwrap().to_string())
        .collect();
    for name in [
        "P_00047_LEFT_MLO.png",
        "Calc-Training_P_00054_LEFT_CC_1.png",
        "Mass-Training_P_00005_LEFT_MLO_1.png",
        "P_00012_RIGHT_MLO.png",
        "P_99999",
    ] {
        assert!(
            items.iter().any(|i| i.ends_with(name)),
            "{name} named in {items:?}"
        );
    }
    // The rest is sampled: every other view wrote its patches, each whole.
    let views = arr(&v["views"]).len();
    assert!(views >= 7, "{views} views sampled");
    let written = files(&out);
    assert!(written.iter().any(|f| f.contains("P_00005_LEFT_CC_")));
    assert!(!written.iter().any(|f| f.contains("P_00047_LEFT_MLO")));
    assert!(
        written.iter().all(|f| !f.contains("/.")),
        "no temp file left"
    );
    for f in written.iter().filter(|f| f.ends_with(".png")) {
        allconv::data::read_image(&out.join(f)).expect("a whole PNG");
    }
    // --keep-going: the same skips, exit status 0.
    let mut args = fixture_args(&inp, &dir.join("out2"));
    args.push("--keep-going".into());
    let (ok, v2) = run_json(&args);
    assert!(ok);
    assert_eq!(v2["skip_counts"], v["skip_counts"]);
    // A patch larger than the image.
    let mut args = fixture_args(&fixture().join("input"), &dir.join("out3"));
    let at = args
        .iter()
        .position(|a| a == "--patch-size")
        .expect("--patch-size");
    args[at + 1] = "300".into();
    let (ok, v3) = run_json(&args);
    assert!(!ok);
    assert!(
        v3["skip_counts"]["patch larger than image"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{v3}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The twelve bundled mini-MIAS images (../shared/corpus/mini-mias beside the checkout).
fn mini_mias() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/mini-mias");
    assert!(
        d.join("Info.txt").is_file(),
        "the mini-MIAS sample is missing: expected Info.txt and mdb*.pgm in {}",
        d.display()
    );
    d
}

#[test]
fn mias_circles_counts_per_class_and_every_abnormal_patch_overlaps_its_circle() {
    let mias = mini_mias();
    let info = std::fs::read_to_string(mias.join("Info.txt")).unwrap();
    // The abnormal images that are present, with their circles (x, y from the bottom, r).
    let mut circles: BTreeMap<String, Vec<(String, f64, f64, f64)>> = BTreeMap::new();
    for line in info.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() >= 7 && t[0].starts_with("mdb") && mias.join(format!("{}.pgm", t[0])).is_file() {
            let n: Vec<f64> = t[4..7].iter().filter_map(|s| s.parse().ok()).collect();
            if n.len() == 3 {
                let class = match (t[2], t[3]) {
                    ("CALC", "M") => "calc_mal",
                    ("CALC", _) => "calc_ben",
                    (_, "M") => "mass_mal",
                    _ => "mass_ben",
                };
                circles.entry(t[0].to_string()).or_default().push((
                    class.to_string(),
                    n[0],
                    n[1],
                    n[2],
                ));
            }
        }
    }
    assert!(circles.len() >= 8, "{circles:?}");
    let dir = tmp("mias");
    let pats = dir.join("patients.txt");
    std::fs::write(
        &pats,
        circles.keys().map(|k| format!("{k}\n")).collect::<String>(),
    )
    .unwrap();
    let (nb_abn, nb_bkg) = (5usize, 6usize);
    let args: Vec<String> = [
        "sample-patches",
        "--annotations",
        &format!("mias:{}", mias.join("Info.txt").display()),
        &mias.display().to_string(),
        &dir.join("train").display().to_string(),
        &dir.join("val").display().to_string(),
        "--patients",
        &pats.display().to_string(),
        "--target-height",
        "256",
        "--patch-size",
        "32",
        "--nb-abn",
        &nb_abn.to_string(),
        "--nb-bkg",
        &nb_bkg.to_string(),
        "--nb-hns",
        "3",
        "--val-size",
        "0.3",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, v) = run_json(&args);
    assert!(ok, "{v}");
    // Counts per class: nb_abn per abnormality, nb_bkg per image.
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for cs in circles.values() {
        for (class, ..) in cs {
            *want.entry(class.clone()).or_insert(0) += nb_abn;
        }
    }
    want.insert("background".into(), nb_bkg * circles.len());
    let got: BTreeMap<String, usize> = v["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap() as usize))
        .collect();
    assert_eq!(got, want);
    let on_disk = files(&dir.join("train")).len() + files(&dir.join("val")).len();
    assert_eq!(
        on_disk,
        want.values().sum::<usize>() + 2,
        "patch files + 2 pat_lst.txt"
    );
    // Every abnormal patch overlaps its circle, in the original image's pixels.
    let mut checked = 0;
    for view in arr(&v["views"]) {
        let id = view["id"].as_str().unwrap();
        let orig = ints(&view["original"]);
        let resized = ints(&view["resized"]);
        let bb = ints(&view["breast_bbox"]);
        let m = view["margin"].as_i64().unwrap() as f64;
        let (sy, sx) = (
            orig[0] as f64 / resized[0] as f64,
            orig[1] as f64 / resized[1] as f64,
        );
        for p in arr(&view["patches"]) {
            if p["kind"] != "abn" {
                continue;
            }
            let abn: usize = p["abn"].as_str().unwrap().parse().unwrap();
            let (class, cx, cy, r) = &circles[id][abn - 1];
            assert!(p["file"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{class}/")));
            // Patch square in resized pixels, then in original pixels.
            let x0 = p["x"].as_f64().unwrap() - m + bb[0] as f64 - m;
            let y0 = p["y"].as_f64().unwrap() - m + bb[1] as f64 - m;
            let (ox0, ox1) = ((x0 + 0.5) * sx - 0.5, (x0 + 2.0 * m - 0.5) * sx);
            let (oy0, oy1) = ((y0 + 0.5) * sy - 0.5, (y0 + 2.0 * m - 0.5) * sy);
            let row = orig[0] as f64 - cy;
            let nx = cx.clamp(ox0, ox1);
            let ny = row.clamp(oy0, oy1);
            let d = ((nx - cx).powi(2) + (ny - row).powi(2)).sqrt();
            assert!(
                d <= *r,
                "{id} abnormality {abn}: patch {} misses its circle by {d}",
                p["file"]
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        want.iter()
            .filter(|(k, _)| *k != "background")
            .map(|(_, n)| n)
            .sum::<usize>()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
