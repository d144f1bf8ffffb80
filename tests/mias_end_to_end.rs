//! `scripts/mias_end_to_end.sh` on the twelve bundled mini-MIAS images
//! (../shared/corpus/mini-mias beside the checkout) with `QUICK=1`: every step connects and
//! every file it writes is valid. The split is recomputed here from its written rule
//! (sha256 of "SEED:patient" per malignancy stratum). Nothing is asserted about AUROC.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use allconv::ir::shape::Dim;
use allconv::keras::{read_model, ReadOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// finetune's own test scores against evaluate's (same model, same images).
const SAME_PIXELS_ATOL: f64 = 1e-5;

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

/// Per present view: (malignant, abnormal, located lesion), from Info.txt.
fn views(mias: &Path) -> BTreeMap<String, (bool, bool, bool)> {
    let info = std::fs::read_to_string(mias.join("Info.txt")).unwrap();
    let mut out: BTreeMap<String, (bool, bool, bool)> = BTreeMap::new();
    for line in info.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 3 || !t[0].starts_with("mdb") || !mias.join(format!("{}.pgm", t[0])).is_file()
        {
            continue;
        }
        let e = out.entry(t[0].to_string()).or_default();
        e.0 |= t.get(3) == Some(&"M");
        e.1 |= t[2] != "NORM";
        e.2 |= t.len() >= 7 && t[4..7].iter().all(|s| s.parse::<u32>().is_ok());
    }
    out
}

fn patient(view: &str) -> u32 {
    let n: u32 = view[3..].parse().unwrap();
    n.div_ceil(2)
}

/// The split rule of scripts/mias_end_to_end.sh, written out again: per stratum (malignant
/// or not), women sorted by the first 16 hex digits of sha256("SEED:patient"), then by id;
/// the first round(n*test) are test, the next round(n*val) val, the rest train; a stratum
/// of 3 or more gives test and val at least one each.
fn expected_split(
    v: &BTreeMap<String, (bool, bool, bool)>,
    seed: u64,
    val: f64,
    test: f64,
) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut women: BTreeMap<u32, bool> = BTreeMap::new();
    for (view, (mal, ..)) in v {
        *women.entry(patient(view)).or_default() |= *mal;
    }
    let mut set_of: BTreeMap<u32, &'static str> = BTreeMap::new();
    for stratum in [false, true] {
        let mut ws: Vec<(String, u32)> = women
            .iter()
            .filter(|(_, m)| **m == stratum)
            .map(|(p, _)| {
                let h = Sha256::digest(format!("{seed}:{p}").as_bytes());
                let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
                (hex[..16].to_string(), *p)
            })
            .collect();
        ws.sort();
        let n = ws.len();
        let mut nt = (n as f64 * test + 0.5).floor() as usize;
        let mut nv = (n as f64 * val + 0.5).floor() as usize;
        if n >= 3 {
            nt = nt.max(1);
            nv = nv.max(1);
        }
        if nt + nv > n {
            nv = n - nt;
        }
        for (i, (_, p)) in ws.iter().enumerate() {
            let s = if i < nt {
                "test"
            } else if i < nt + nv {
                "val"
            } else {
                "train"
            };
            set_of.insert(*p, s);
        }
    }
    let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for s in ["train", "val", "test"] {
        out.insert(s, BTreeSet::new());
    }
    for view in v.keys() {
        out.get_mut(set_of[&patient(view)])
            .unwrap()
            .insert(view.clone());
    }
    out
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    out.sort();
    out
}

/// The input's height and width of a Keras file, read back with allconv's importer
/// (`None`: any size, as Keras's VGG16 base declares it).
fn model_hw(p: &Path) -> Option<(usize, usize)> {
    let g = read_model(p, &ReadOptions::default())
        .unwrap_or_else(|e| panic!("{} does not read back: {e}", p.display()));
    assert!(
        !g.nodes.is_empty() && !g.params.is_empty(),
        "{}",
        p.display()
    );
    assert_eq!(g.inputs.len(), 1, "{}", p.display());
    let s = &g.inputs[0].shape;
    assert_eq!(s.len(), 3, "{}: input {s:?}", p.display());
    assert_eq!(s[2], Dim::Known(3), "{}: input {s:?}", p.display());
    match (&s[0], &s[1]) {
        (Dim::Known(h), Dim::Known(w)) => Some((*h, *w)),
        (Dim::Sym(_), Dim::Sym(_)) => None,
        other => panic!("{}: input {other:?}", p.display()),
    }
}

#[test]
fn quick_run_connects_every_step_and_writes_valid_files() {
    let mias = mini_mias();
    let v = views(&mias);
    assert_eq!(v.len(), 12, "{v:?}");
    let out = std::env::temp_dir().join(format!("allconv-mias-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mias_end_to_end.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(&mias).arg(&out);
    // Only QUICK's defaults: no option leaks in from the caller's environment.
    for var in [
        "VAL_FRAC",
        "TEST_FRAC",
        "TARGET_HEIGHT",
        "PATCH_SIZE",
        "NB_ABN",
        "NB_BKG",
        "NB_HNS",
        "PATCH_EPOCHS",
        "IMG_SIZE",
        "TOP",
        "NB_EPOCH",
        "ALL_LAYER_EPOCHS",
        "BATCH_SIZE",
        "RESCALE",
        "MEAN",
        "TASKS",
        "DEVICE",
        "BOOTSTRAP",
        "CHECK",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("ALLCONV", env!("CARGO_BIN_EXE_allconv"))
        .env("QUICK", "1")
        .env("SEED", "12345")
        .env("JOBS", "2");
    let t0 = std::time::Instant::now();
    let res = cmd.output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    eprintln!("{stdout}\nscript ran {:.1} s", t0.elapsed().as_secs_f64());
    assert!(res.status.success(), "{stdout}\n{stderr}");
    for step in [
        "1. split",
        "2. sample-patches",
        "3. train-patch",
        "4. rehead",
        "5. malignant",
        "6. malignant",
        "7. summary",
    ] {
        assert!(stdout.contains(step), "no step {step:?}:\n{stdout}");
    }

    // 1. The split: the written rule, women whole, both malignancy classes in every set.
    let want = expected_split(&v, 12345, 0.15, 0.30);
    let mut all = BTreeSet::new();
    for (s, views_in) in &want {
        let got: BTreeSet<String> = lines(&out.join(format!("split/{s}.txt")))
            .into_iter()
            .collect();
        assert_eq!(&got, views_in, "split/{s}.txt");
        assert!(!got.is_empty(), "split/{s}.txt is empty");
        let mal: BTreeSet<bool> = got.iter().map(|x| v[x].0).collect();
        assert_eq!(mal.len(), 2, "{s} lacks a malignancy class: {got:?}");
        for x in &got {
            assert!(all.insert(x.clone()), "{x} in two sets");
        }
    }
    assert_eq!(all.len(), v.len());
    let set_of = |x: &str| -> &str {
        want.iter()
            .find(|(_, vs)| vs.contains(x))
            .map(|(s, _)| *s)
            .unwrap()
    };

    // 2. Patches: train and val women's located lesions only, 32 px, both classes.
    for s in ["train", "val"] {
        let dir = out.join("patches").join(s);
        let bkg = pngs(&dir.join("background"));
        assert!(!bkg.is_empty(), "{s}: no background patches");
        let mut lesion = Vec::new();
        for c in ["calc_mal", "calc_ben", "mass_mal", "mass_ben"] {
            lesion.extend(pngs(&dir.join(c)));
        }
        assert!(!lesion.is_empty(), "{s}: no lesion patches");
        for p in bkg.iter().chain(&lesion) {
            let name = p.file_name().unwrap().to_str().unwrap();
            let view = &name[..6];
            assert_eq!(
                set_of(view),
                s,
                "{} comes from a {} view",
                p.display(),
                set_of(view)
            );
            assert!(v[view].2, "{name}: its view has no located lesion");
        }
        let img = image::open(&bkg[0]).expect("a patch decodes");
        assert_eq!((img.width(), img.height()), (32, 32));
    }

    // 3-4. The patch classifier saw every patch (the abnormal class merges every lesion
    // folder), and it and the whole-image classifier read back.
    let pj: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("models/patch.json")).unwrap())
            .expect("train-patch's JSON parses");
    for (s, key) in [("train", "train_images"), ("val", "val_images")] {
        let n: usize = std::fs::read_dir(out.join("patches").join(s))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .map(|d| pngs(&d).len())
            .sum();
        assert_eq!(pj[key].as_u64(), Some(n as u64), "{s}: {pj}");
    }
    let patch_hw = model_hw(&out.join("models/patch.h5"));
    assert!(matches!(patch_hw, None | Some((32, 32))), "{patch_hw:?}");
    assert_eq!(model_hw(&out.join("models/whole.h5")), Some((64, 64)));

    // 5-6. Per task: run through evaluate when every set has both classes, else a named skip.
    let mut ran = Vec::new();
    for (task, pos_of) in [
        (
            "malignant",
            (|x: &(bool, bool, bool)| x.0) as fn(&(bool, bool, bool)) -> bool,
        ),
        ("abnormal", |x| x.1),
    ] {
        let counts = |s: &str| -> (usize, usize) {
            let n_pos = want[s].iter().filter(|x| pos_of(&v[*x])).count();
            (want[s].len() - n_pos, n_pos)
        };
        let possible = ["train", "val", "test"].iter().all(|s| {
            let (n, p) = counts(s);
            n > 0 && p > 0
        });
        let res = out.join("results");
        if !possible {
            let why = std::fs::read_to_string(res.join(format!("{task}.skipped")))
                .unwrap_or_else(|e| panic!("{task} cannot run but has no .skipped: {e}"));
            assert!(why.starts_with("no images in "), "{why}");
            // It names every empty set/class.
            for s in ["train", "val", "test"] {
                let (n, p) = counts(s);
                for (c, k) in [("neg", n), ("pos", p)] {
                    assert_eq!(why.contains(&format!(" {s}/{c}")), k == 0, "{why}");
                }
            }
            assert!(!res.join(format!("{task}.json")).exists());
            continue;
        }
        ran.push(task);
        assert_eq!(
            model_hw(&out.join(format!("models/{task}.h5"))),
            Some((64, 64))
        );
        for s in ["train", "val", "test"] {
            for (c, want_n) in [("neg", counts(s).0), ("pos", counts(s).1)] {
                let d = out.join(format!("images/{task}/{s}/{c}"));
                assert_eq!(
                    std::fs::read_dir(&d).unwrap().count(),
                    want_n,
                    "{}",
                    d.display()
                );
            }
        }
        let j: Value = serde_json::from_str(
            &std::fs::read_to_string(res.join(format!("{task}.json"))).unwrap(),
        )
        .expect("evaluate's JSON parses");
        for k in [
            "model",
            "source",
            "preprocess",
            "tta",
            "images",
            "classes",
            "class_counts",
            "binary",
            "multiclass",
            "multiclass_tta",
            "outputs",
        ] {
            assert!(j.get(k).is_some(), "{task}.json has no {k}");
        }
        let (n_neg, n_pos) = counts("test");
        assert_eq!(j["images"].as_u64(), Some((n_neg + n_pos) as u64));
        assert_eq!(j["binary"]["positives"].as_u64(), Some(n_pos as u64));
        assert_eq!(j["binary"]["negatives"].as_u64(), Some(n_neg as u64));
        for view in ["single", "tta"] {
            let b = &j["binary"][view];
            let a = b["auroc"].as_f64().expect("auroc");
            assert!((0.0..=1.0).contains(&a), "{a}");
            assert_eq!(b["ci_bootstrap"].as_array().map(Vec::len), Some(2));
        }
        // The scores CSV: one row per test image, with its true class.
        let rows = lines(&res.join(format!("{task}.scores.csv")));
        assert_eq!(rows[0], "path,label,p:neg,p:pos,tta:neg,tta:pos");
        assert_eq!(rows.len() - 1, n_neg + n_pos, "{rows:?}");
        let mut seen = BTreeSet::new();
        for r in &rows[1..] {
            let f: Vec<&str> = r.split(',').collect();
            assert_eq!(f.len(), 6, "{r}");
            let view = Path::new(f[0]).file_stem().unwrap().to_str().unwrap();
            assert!(want["test"].contains(view), "{view} is not a test view");
            assert_eq!(f[1], if pos_of(&v[view]) { "pos" } else { "neg" }, "{r}");
            for x in &f[2..] {
                let p: f64 = x.parse().unwrap();
                assert!((0.0..=1.0).contains(&p), "{r}");
            }
            seen.insert(view.to_string());
        }
        assert_eq!(seen, want["test"]);
        // QUICK sets CHECK=1: finetune scored the test set itself with its best model.
        // evaluate's scores (its --preprocess) must be finetune's (its training pipeline),
        // within float32 rounding between the two libtorch paths; leaving out the mean or
        // scaling each image to its maximum moves these scores by 2e-4 or more.
        let own = lines(&out.join(format!("models/{task}_test_scores.csv")));
        assert_eq!(own[0], rows[0]);
        assert_eq!(own.len(), rows.len());
        let by_view = |rs: &[String]| -> BTreeMap<String, Vec<f64>> {
            rs[1..]
                .iter()
                .map(|r| {
                    let f: Vec<&str> = r.split(',').collect();
                    let view = Path::new(f[0]).file_stem().unwrap().to_str().unwrap();
                    let p = f[2..].iter().map(|x| x.parse().unwrap()).collect();
                    (view.to_string(), p)
                })
                .collect()
        };
        let (a, b) = (by_view(&own), by_view(&rows));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (view, pa) in &a {
            for (x, y) in pa.iter().zip(&b[view]) {
                assert!(
                    (x - y).abs() <= SAME_PIXELS_ATOL,
                    "{task} {view}: finetune scores {pa:?}, evaluate {:?}",
                    b[view]
                );
            }
        }
        let roc = res.join(format!("{task}.roc.png"));
        let bytes = std::fs::read(&roc).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", roc.display());
        let img = image::load_from_memory(&bytes).expect("the ROC plot decodes");
        assert!(img.width() > 100 && img.height() > 100);
    }
    assert!(ran.contains(&"malignant"), "{ran:?}");

    // 7. The summary names each task and the exact versions.
    let summary = std::fs::read_to_string(out.join("results/summary.txt")).unwrap();
    let version = Command::new(env!("CARGO_BIN_EXE_allconv"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    assert!(summary.contains(version.trim()), "{summary}");
    for task in ["malignant", "abnormal"] {
        assert!(
            summary.lines().any(|l| l.starts_with(task)),
            "{task} not in the summary:\n{summary}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
