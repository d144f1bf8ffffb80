//! `allconv train-patch` end to end on CPU. A synthetic three-class patch set whose classes
//! differ by shape only (`data::synthetic::write_patch_shapes`: tissue texture, a round
//! blob, a straight bar) trains YaroslavNet through the paper's three stages; it must learn
//! (validation accuracy well above chance, 1/3), log each stage, report the test set with
//! per-class recall and the confusion matrix, and write a `.h5` that genuine Keras 2.0.8
//! loads and predicts with as allconv does. Then the paper's whole chain on small data:
//! `sample-patches` -> `train-patch` -> `rehead` -> `finetune`. Bad options are refused
//! by name with nothing written. (One step of each stage is proven against genuine Keras
//! in tests/train_step.rs; the networks against keras.applications in tests/patch_nets.rs.)
#![cfg(feature = "torch")]

mod common;

use allconv::keras::{read_model, ReadOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("allconv-train-patch-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn allconv<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_allconv"))
        .args(args)
        .output()
        .expect("allconv runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// train/val/test folders of the three-class shape set.
fn shapes(root: &Path, per_class: [usize; 3], size: usize) -> [PathBuf; 3] {
    let dirs = ["train", "val", "test"].map(|d| root.join(d));
    for (i, d) in dirs.iter().enumerate() {
        allconv::data::synthetic::write_patch_shapes(d, per_class[i], 200 + i as u64, size)
            .unwrap();
    }
    dirs
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The paper's patch preprocessing (--img-scale 255, equalize, featurewise mean 59.6),
/// Adam, small batches.
fn common_args(net: &str, size: usize, out: &Path) -> Vec<String> {
    let size = size.to_string();
    strings(&[
        "train-patch",
        "--net",
        net,
        "--img-size",
        &size,
        &size,
        "--img-scale",
        "255",
        "--batch-size",
        "16",
        "--train-bs-multiplier",
        "1",
        "--optimizer",
        "adam",
        "--init-learningrate",
        "0.0001",
        "--best-model",
        &out.display().to_string(),
    ])
}

fn lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// VGG16 from random weights learns the shapes in one stage (`--no-use-pretrained`);
/// resumed from that model with `--use-pretrained`, the three stages run in Keras's
/// order and epoch counts and keep what was learnt.
#[test]
fn shapes_learn_then_three_stages_keep_it() {
    let root = tmp("learn");
    let [train, val, test] = shapes(&root, [30, 15, 15], 32);
    let dirs = [&train, &val, &test].map(|d| d.display().to_string());
    let first = root.join("one/patch.h5");
    let mut args = common_args("vgg16", 32, &first);
    args.extend(strings(&[
        "--no-use-pretrained",
        "--nb-epoch",
        "4",
        "--json",
    ]));
    args.extend(dirs.iter().cloned());
    let (ok, stdout, stderr) = allconv(&args);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("--json prints one object");
    let val_acc = v["best_val_acc"].as_f64().unwrap();
    let test_acc = v["test_report"]["multiclass"]["accuracy"].as_f64().unwrap();
    println!(
        "shapes, one stage: best val_acc {val_acc:.3} at epoch {}, test accuracy {test_acc:.3}",
        v["best_epoch"]
    );
    assert_eq!(v["best_by"], "val_acc");
    assert_eq!(v["schedule"].as_array().map(Vec::len), Some(1));
    assert!(val_acc > 0.7, "validation accuracy {val_acc} (chance 0.33)");
    assert!(test_acc > 0.6, "test accuracy {test_acc}");
    // The report: per-class recall and a 3x3 confusion matrix over the 45 test patches.
    let m = &v["test_report"]["multiclass"];
    assert_eq!(m["recall"].as_array().unwrap().len(), 3);
    let confusion: u64 = m["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()))
        .sum();
    assert_eq!(confusion, 45);
    assert!(root.join("one/patch_test_scores.csv").is_file());

    // The paper's three stages from that model.
    let second = root.join("three/patch.h5");
    let log = root.join("three/log.jsonl");
    let last = root.join("three/last.h5");
    let mut args = common_args("vgg16", 32, &second);
    args.extend(strings(&[
        "--resume-from",
        &first.display().to_string(),
        "--top-layer-multiplier",
        "1",
        "--all-layer-multiplier",
        "0.5",
        "--nb-epoch",
        "1",
        "--top-layer-epochs",
        "2",
        "--all-layer-epochs",
        "3",
        "--log",
        &log.display().to_string(),
        "--final-model",
        &last.display().to_string(),
        "--json",
    ]));
    args.extend(dirs.iter().cloned());
    let (ok, stdout, stderr) = allconv(&args);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let trainable: Vec<&str> = v["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["trainable"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        trainable,
        [
            "layers[:-1] frozen",
            "layers[15:] trainable",
            "layers[:15] trainable"
        ]
    );
    let stages: Vec<u64> = lines(&log)
        .iter()
        .map(|l| l["stage"].as_u64().unwrap())
        .collect();
    assert_eq!(stages, [1, 2, 3], "one epoch each: until epochs 1, 2 and 3");
    // The learning rates of the options (float32 on the command line, as in Keras).
    let lrs: Vec<f32> = lines(&log)
        .iter()
        .map(|l| l["lr"].as_f64().unwrap() as f32)
        .collect();
    assert_eq!(lrs, [1e-4, 1e-4, 1e-4 * 0.5]);
    let val_acc = v["best_val_acc"].as_f64().unwrap();
    println!("shapes, three stages: best val_acc {val_acc:.3}");
    assert!(val_acc > 0.7, "validation accuracy {val_acc}");
    for f in [&second, &last] {
        let g = read_model(f, &ReadOptions::default()).unwrap();
        assert_eq!(g.source.keras_version.as_deref(), Some("2.0.8"));
    }
    std::fs::remove_dir_all(&root).ok();
}

/// Genuine Keras 2.0.8 `load_model` opens `model` and predicts what allconv predicts.
fn keras_loads(model: &Path, root: &Path, classes: usize) {
    let py = common::fixtures_dir()
        .parent()
        .unwrap()
        .join(".venv-keras208/bin/python");
    if !py.exists() {
        common::skip_or_fail(
            "genuine Keras 2.0.8 (.venv-keras208) to load the trained patch classifier",
        );
        return;
    }
    let g = read_model(model, &ReadOptions::default()).unwrap();
    let x: Vec<f32> = (0..2 * 64 * 64)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
        .collect();
    let torch = allconv::torch::TorchModel::new(&g, tch::Device::Cpu).unwrap();
    let input = allconv::torch::from_host(&[2, 64, 64, 1], &x, tch::Device::Cpu).unwrap();
    let y = torch.forward_outputs(&[input], false).unwrap();
    let y = allconv::torch::to_host(&y[0]).unwrap();
    let io = root.join("io.npz");
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(&io).unwrap());
    npz.add_array(
        "input",
        &ndarray::Array4::from_shape_vec((2, 64, 64, 1), x).unwrap(),
    )
    .unwrap();
    npz.add_array(
        "output",
        &ndarray::Array2::from_shape_vec((2, classes), y.data).unwrap(),
    )
    .unwrap();
    npz.finish().unwrap();
    let o = Command::new(&py)
        .arg(
            common::fixtures_dir()
                .parent()
                .unwrap()
                .join("converters/h5_loadback.py"),
        )
        .arg(model)
        .arg(&io)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    println!("Keras 2.0.8 load_model: {text}");
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The paper's chain on small data: patches sampled from the synthetic CBIS-DDSM-layout
/// set, a patch classifier trained on them, re-headed, and the whole-image model
/// fine-tuned. Asserts that every step connects and every output is a valid model.
#[test]
fn sample_train_rehead_finetune_connect() {
    let root = tmp("chain");
    let input = common::fixtures_dir().join("sample_patches/input");
    let (patches_train, patches_val) = (root.join("patches/train"), root.join("patches/val"));
    let (ok, _, stderr) = allconv(&[
        "sample-patches".as_ref(),
        input.join("roi_mask_path.csv").as_os_str(),
        input.join("masks").as_os_str(),
        input.join("pat_train.txt").as_os_str(),
        input.join("full").as_os_str(),
        patches_train.as_os_str(),
        patches_val.as_os_str(),
        "--target-height".as_ref(),
        "512".as_ref(),
        "--patch-size".as_ref(),
        "64".as_ref(),
        "--nb-bkg".as_ref(),
        "4".as_ref(),
        "--nb-abn".as_ref(),
        "4".as_ref(),
        "--nb-hns".as_ref(),
        "2".as_ref(),
        "--val-size".as_ref(),
        "0.25".as_ref(),
    ]);
    assert!(ok, "sample-patches: {stderr}");
    let patch = root.join("patch.h5");
    // YaroslavNet in the paper's three stages (no ImageNet weights exist for it): stage 1
    // until epoch 1, stage 2 already there (none), stage 3 until epoch 2.
    let mut args = common_args("yaroslav", 64, &patch);
    args.extend(strings(&[
        "--class-list",
        "background",
        "abnormal=calc_mal+calc_ben+mass_mal+mass_ben",
        "--nb-epoch",
        "1",
        "--top-layer-epochs",
        "1",
        "--all-layer-epochs",
        "2",
        "--no-load-val-ram",
        "--json",
    ]));
    for d in [&patches_train, &patches_val, &patches_val] {
        args.push(d.display().to_string());
    }
    let (ok, stdout, stderr) = allconv(&args);
    assert!(ok, "train-patch: {stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let stages: Vec<u64> = v["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stage"].as_u64().unwrap())
        .collect();
    assert_eq!(stages, [1, 3]);
    assert!(v["train_images"].as_u64().unwrap() > 0);
    // A set this small stays decoded in memory unless told otherwise.
    assert_eq!(v["train_in_ram"], true);
    assert_eq!(v["val_in_ram"], false);
    let g = read_model(&patch, &ReadOptions::default()).unwrap();
    let classes = g.values[g.outputs[0]].shape.last().and_then(|d| d.known());
    assert_eq!(classes, Some(2));
    keras_loads(&patch, &root, 2);
    // Re-head it as the paper's YaroslavNet whole-image model and fine-tune that.
    let whole = root.join("whole.h5");
    let (ok, _, stderr) = allconv(&[
        "rehead".as_ref(),
        patch.as_os_str(),
        "-o".as_ref(),
        whole.as_os_str(),
        "--top".as_ref(),
        "vgg:16x1".as_ref(),
        "--input-size".as_ref(),
        "128x128".as_ref(),
    ]);
    assert!(ok, "rehead: {stderr}");
    let images = root.join("images");
    for (d, seed) in [("train", 1u64), ("val", 2)] {
        allconv::data::synthetic::write_two_class(&images.join(d), 6, seed, 128, 128).unwrap();
    }
    let tuned = root.join("tuned/best.h5");
    let (ok, stdout, stderr) = allconv(&[
        "finetune".as_ref(),
        whole.as_os_str(),
        "--img-size".as_ref(),
        "128".as_ref(),
        "128".as_ref(),
        "--img-scale".as_ref(),
        "255".as_ref(),
        "--featurewise-mean".as_ref(),
        "59.6".as_ref(),
        "--batch-size".as_ref(),
        "4".as_ref(),
        "--nb-epoch".as_ref(),
        "0".as_ref(),
        "--all-layer-epochs".as_ref(),
        "1".as_ref(),
        "--no-augmentation".as_ref(),
        "--json".as_ref(),
        "-o".as_ref(),
        tuned.as_os_str(),
        images.join("train").as_os_str(),
        images.join("val").as_os_str(),
    ]);
    assert!(ok, "finetune: {stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["epochs"].as_array().map(Vec::len), Some(1));
    let g = read_model(&tuned, &ReadOptions::default()).unwrap();
    assert_eq!(g.source.keras_version.as_deref(), Some("2.0.8"));
    std::fs::remove_dir_all(&root).ok();
}

/// Options that cannot be honoured are refused by name, before anything is written.
#[test]
fn bad_options_are_refused_by_name() {
    let root = tmp("bad");
    let [train, val, test] = shapes(&root, [2, 1, 1], 64);
    let out = root.join("out/patch.h5");
    let dirs = [train, val, test].map(|d| d.display().to_string());
    let cases: [(&[&str], &str); 4] = [
        (
            &["--net", "resnet50"],
            "fchollet/deep-learning-models/releases",
        ),
        (
            &[
                "--net",
                "vgg16",
                "--no-use-pretrained",
                "--no-featurewise-center",
            ],
            "preprocess_input",
        ),
        (&["--net", "inception"], "inception"),
        (
            &[
                "--net",
                "yaroslav",
                "--class-list",
                "background",
                "malignant",
                "benign=malignant",
            ],
            "two classes",
        ),
    ];
    for (extra, needle) in cases {
        // The folders first: --class-list takes every word after it.
        let mut args = strings(&["train-patch", "--best-model", &out.display().to_string()]);
        args.extend(dirs.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let (ok, _, stderr) = allconv(&args);
        assert!(!ok, "{extra:?} must fail");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
        assert!(!root.join("out").exists(), "{extra:?} wrote something");
    }
    std::fs::remove_dir_all(&root).ok();
}
