//! Class-folder datasets and batches (src/data/dataset.rs): corrupt files reported and
//! skipped, folder errors, the predict pipeline per sample, seeded reproducible epochs
//! whatever the number of workers, batch shapes, and the paper's auto_batch_balance
//! weights.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use allconv::data::dataset::batch_weights;
use allconv::data::synthetic::write_two_class;
use allconv::data::{
    read_image, Augment, Batch, BatchOptions, DataError, Dataset, DatasetOptions, FileCheck,
    KeepInRam, Preprocess, Weighting,
};

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dataset-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn png16(path: &Path, h: u32, w: u32, seed: u32) {
    let px: Vec<u16> = (0..h * w)
        .map(|i| {
            let v = i
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(97_531));
            (v >> 16) as u16
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(w, h, px)
        .unwrap()
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

fn classes() -> Vec<String> {
    vec!["neg".into(), "pos".into()]
}

fn prep() -> Preprocess {
    Preprocess {
        target: Some((8, 6)),
        target_scale: None,
        rescale: 0.003891,
        mean: 52.18,
        channels: 3,
        equalize_hist: false,
    }
}

/// neg: 5 good 16-bit PNGs + a truncated one + notes.txt; pos: 3 good (one in a
/// sub-folder) + a garbage `.png`.
fn make_set(name: &str) -> PathBuf {
    let root = tmp(name);
    for i in 0..5 {
        png16(&root.join(format!("neg/n{i}.png")), 12, 10, i);
    }
    png16(&root.join("pos/p0.png"), 12, 10, 10);
    png16(&root.join("pos/p1.png"), 9, 7, 11);
    png16(&root.join("pos/sub/p2.png"), 16, 13, 12);
    let good = std::fs::read(root.join("neg/n0.png")).unwrap();
    std::fs::write(root.join("neg/truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(root.join("neg/notes.txt"), b"not an image").unwrap();
    std::fs::write(root.join("pos/bad.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    root
}

fn collect(ds: &Arc<Dataset>, epoch: u64, opts: &BatchOptions) -> Vec<Batch> {
    ds.epoch(epoch, opts).unwrap().collect()
}

#[test]
fn folders_warnings_and_predict_pipeline() {
    let root = make_set("open");
    let ds = Dataset::from_folders(&root, &classes(), &DatasetOptions::new(prep())).unwrap();
    assert_eq!(ds.len(), 8);
    assert_eq!(ds.class_counts(), vec![5, 3]);
    assert_eq!(ds.sample_shape(), [8, 6, 3]);
    let warnings = ds.warnings();
    let named = |f: &str| warnings.iter().any(|w| w.path.ends_with(f));
    assert!(
        named("truncated.png") && named("bad.png") && named("notes.txt"),
        "{warnings:?}"
    );
    assert_eq!(warnings.len(), 3);
    for w in &warnings {
        println!("warning: {w}");
    }
    // Recursion into sub-folders, sorted paths, labels by class-list position.
    assert!(ds
        .samples()
        .iter()
        .any(|s| s.path.ends_with("pos/sub/p2.png") && s.label == 1));
    let paths: Vec<_> = ds.samples().iter().map(|s| s.path.clone()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by_key(|p| (p.starts_with(root.join("pos")), p.clone()));
    assert_eq!(paths, sorted);
    // Without augmentation a sample is the preprocessing `predict` applies
    // (`Preprocess::apply`) to the decoded file; `samples_match_the_genuine_cv2_pipeline`
    // holds that to genuine OpenCV.
    assert_eq!(ds.samples().len(), 8);
    for (i, s) in ds.samples().iter().enumerate() {
        let (want, shape) = prep().apply(&read_image(&s.path).unwrap()).unwrap();
        assert_eq!(shape, [8, 6, 3]);
        assert_eq!(ds.load(i, None).unwrap(), want, "{}", s.path.display());
    }
    // Reversed class list: reversed labels.
    let rev = vec!["pos".to_string(), "neg".to_string()];
    let ds2 = Dataset::from_folders(&root, &rev, &DatasetOptions::new(prep())).unwrap();
    assert_eq!(ds2.class_counts(), vec![3, 5]);
    // NAME=FOLDER+FOLDER: both folders as one class, named NAME.
    let merged = vec!["all=neg+pos".to_string()];
    let ds3 = Dataset::from_folders(&root, &merged, &DatasetOptions::new(prep())).unwrap();
    assert_eq!(ds3.class_counts(), vec![8]);
    assert_eq!(ds3.classes(), ["all".to_string()]);
}

#[test]
fn folder_errors_name_the_folder() {
    let root = make_set("errors");
    let opts = DatasetOptions::new(prep());
    let msg = |r: Result<Dataset, DataError>| r.unwrap_err().to_string();
    // Missing class folder.
    let e = msg(Dataset::from_folders(
        &root,
        &["neg".into(), "benign".into()],
        &opts,
    ));
    assert!(
        e.contains(&root.join("benign").display().to_string()) && e.contains("not found"),
        "{e}"
    );
    // Empty class folder.
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let e = msg(Dataset::from_folders(
        &root,
        &["neg".into(), "empty".into()],
        &opts,
    ));
    assert!(
        e.contains(&root.join("empty").display().to_string()) && e.contains("no image"),
        "{e}"
    );
    // A folder of unreadable images only.
    std::fs::create_dir_all(root.join("broken")).unwrap();
    std::fs::write(root.join("broken/x.png"), b"nope").unwrap();
    let e = msg(Dataset::from_folders(
        &root,
        &["neg".into(), "broken".into()],
        &opts,
    ));
    assert!(
        e.contains("broken") && e.contains("no readable image"),
        "{e}"
    );
    // A folder given to two classes, a malformed merge.
    let e = msg(Dataset::from_folders(
        &root,
        &["a=neg".into(), "b=neg+pos".into()],
        &opts,
    ));
    assert!(e.contains("folder 'neg' is given to two classes"), "{e}");
    let e = msg(Dataset::from_folders(&root, &["a=neg+".into()], &opts));
    assert!(e.contains("NAME=FOLDER+FOLDER"), "{e}");
    // Missing root, duplicate class, no size.
    assert!(msg(Dataset::from_folders(&root.join("nope"), &classes(), &opts)).contains("nope"));
    assert!(msg(Dataset::from_folders(
        &root,
        &["neg".into(), "neg".into()],
        &opts
    ))
    .contains("twice"));
    let no_size = DatasetOptions::new(Preprocess::default());
    assert!(msg(Dataset::from_folders(&root, &classes(), &no_size)).contains("target size"));
}

#[test]
fn seeded_epochs_are_reproducible_and_shaped() {
    let root = make_set("epochs");
    let ds =
        Arc::new(Dataset::from_folders(&root, &classes(), &DatasetOptions::new(prep())).unwrap());
    let mut opts = BatchOptions::new(3, 1234);
    opts.augment = Some(Augment::paper());
    opts.weighting = Weighting::AutoBalance;
    let mut runs = Vec::new();
    for workers in [0, 1, 3] {
        opts.workers = workers;
        runs.push(collect(&ds, 0, &opts));
    }
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], runs[2]);
    let batches = &runs[0];
    assert_eq!(
        batches.iter().map(Batch::len).collect::<Vec<_>>(),
        vec![3, 3, 2]
    );
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.samples.clone()).collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..8).collect::<Vec<_>>(),
        "each sample once per epoch"
    );
    for (k, b) in batches.iter().enumerate() {
        assert_eq!(b.index, k);
        assert_eq!(b.shape, [b.len(), 8, 6, 3]);
        assert_eq!(b.x.len(), b.len() * 8 * 6 * 3);
        for (l, &i) in b.labels.iter().zip(&b.samples) {
            assert_eq!(*l, ds.samples()[i].label);
        }
        assert_eq!(b.weights, batch_weights(&b.labels, &Weighting::AutoBalance));
        assert_eq!(b.one_hot(2).len(), b.len() * 2);
        assert!(b.x.iter().all(|v| v.is_finite()));
    }
    // Augmented: differs from the plain samples; channels diverge (channel shift).
    let plain: Vec<f32> = batches[0]
        .samples
        .iter()
        .flat_map(|&i| ds.load(i, None).unwrap())
        .collect();
    assert_ne!(plain, batches[0].x);
    assert!(batches[0].x.chunks(3).any(|p| p[0] != p[1]));
    // Another epoch: another order; another seed: another order and augmentation.
    let e1 = collect(&ds, 1, &opts);
    assert_ne!(
        e1.iter().map(|b| b.samples.clone()).collect::<Vec<_>>(),
        batches
            .iter()
            .map(|b| b.samples.clone())
            .collect::<Vec<_>>()
    );
    opts.seed = 99;
    assert_ne!(collect(&ds, 0, &opts), *batches);
    // No shuffle, drop_last: file order, full batches only.
    let mut plain_opts = BatchOptions::new(3, 0);
    plain_opts.shuffle = false;
    plain_opts.drop_last = true;
    let b: Vec<Batch> = collect(&ds, 0, &plain_opts);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].samples, vec![0, 1, 2]);
    assert_eq!(b[1].samples, vec![3, 4, 5]);
    assert_eq!(b[0].x, plain_opts_x(&ds, &[0, 1, 2]));
    assert!(b[0].weights.iter().all(|&w| w == 1.0));
    // Wait statistics exist and are a share.
    let mut it = ds.epoch(0, &opts).unwrap();
    while it.next().is_some() {}
    let s = it.stats().clone();
    assert_eq!((s.batches, s.samples), (3, 8));
    assert!((0.0..=1.0).contains(&s.wait_share()), "{s:?}");
    println!("wait share {:.3} over {:?}", s.wait_share(), s.elapsed);
}

fn plain_opts_x(ds: &Dataset, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| ds.load(i, None).unwrap())
        .collect()
}

#[test]
fn ram_and_lazy_modes_agree() {
    let root = make_set("modes");
    let mut opts = BatchOptions::new(4, 7);
    opts.augment = Some(Augment::paper());
    let disk =
        Arc::new(Dataset::from_folders(&root, &classes(), &DatasetOptions::new(prep())).unwrap());
    let mut ram_opts = DatasetOptions::new(prep());
    ram_opts.keep_in_ram = KeepInRam::Always;
    let ram = Arc::new(Dataset::from_folders(&root, &classes(), &ram_opts).unwrap());
    assert!(ram.in_ram());
    assert_eq!(collect(&disk, 3, &opts), collect(&ram, 3, &opts));

    // The training commands' default keeps a set whose decoded images fit the limit, and
    // only then: the 10 image files listed (2 of them unreadable) at H x W floats each.
    let [h, w, _] = ram.sample_shape();
    let set_bytes = (10 * h * w * 4) as u64;
    assert_eq!(ram.len(), 8);
    for (limit, kept) in [(set_bytes, true), (set_bytes - 1, false)] {
        let mut o = DatasetOptions::new(prep());
        o.keep_in_ram = KeepInRam::UpTo(limit);
        let ds = Arc::new(Dataset::from_folders(&root, &classes(), &o).unwrap());
        assert_eq!(ds.in_ram(), kept, "limit {limit} bytes, set {set_bytes}");
        assert_eq!(collect(&ds, 3, &opts), collect(&disk, 3, &opts));
    }
    assert!(
        !disk.in_ram(),
        "a library caller's default decodes per batch"
    );
    assert_eq!(KeepInRam::from_flag(None), KeepInRam::DEFAULT);
    assert_eq!(KeepInRam::from_flag(Some(true)), KeepInRam::Always);
    assert_eq!(KeepInRam::from_flag(Some(false)), KeepInRam::Never);

    // Lazy: corrupt files are found while batching, reported once, left out.
    let mut lazy_opts = DatasetOptions::new(prep());
    lazy_opts.check = FileCheck::Lazy;
    let lazy = Arc::new(Dataset::from_folders(&root, &classes(), &lazy_opts).unwrap());
    assert_eq!(lazy.len(), 10);
    assert_eq!(lazy.warnings().len(), 1, "only notes.txt before batching");
    for epoch in 0..2 {
        let b = collect(&lazy, epoch, &opts);
        assert_eq!(b.iter().map(Batch::len).sum::<usize>(), 8);
        for batch in &b {
            assert_eq!(batch.shape[0], batch.len());
        }
    }
    let w = lazy.warnings();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w.iter().any(|w| w.path.ends_with("truncated.png")));
    assert!(w.iter().any(|w| w.path.ends_with("bad.png")));
}

#[test]
fn auto_batch_balance_as_the_paper() {
    // end2end-all-conv dm_image.py, NumPy 1.23 (the Keras 2.0.8 venv):
    //   y = [0,1,1,0,0,0,1]; w = ones(float32); w[y==u] /= (y==u).mean()
    //   -> 0x1.bffffep+0 (class 0), 0x1.2aaaaap+1 (class 1)
    let w = batch_weights(&[0, 1, 1, 0, 0, 0, 1], &Weighting::AutoBalance);
    let c0 = f32::from_bits(0x3FDF_FFFF); // 0x1.bffffep+0
    let c1 = f32::from_bits(0x4015_5555); // 0x1.2aaaaap+1
    assert_eq!(w, vec![c0, c1, c1, c0, c0, c0, c1]);
    // One class only: all 1; balanced halves: all 2.
    assert_eq!(
        batch_weights(&[1, 1, 1], &Weighting::AutoBalance),
        vec![1.0; 3]
    );
    assert_eq!(
        batch_weights(&[0, 1, 1, 0], &Weighting::AutoBalance),
        vec![2.0; 4]
    );
    // Class weights (Keras class_weight {0: 1.0, 1: pos_cls_weight}).
    assert_eq!(
        batch_weights(&[0, 1, 1], &Weighting::ClassWeights(vec![1.0, 3.5])),
        vec![1.0, 3.5, 3.5]
    );
    assert_eq!(batch_weights(&[0, 1], &Weighting::None), vec![1.0, 1.0]);
}

#[test]
fn synthetic_set_opens_as_a_dataset() {
    let root = tmp("synthetic");
    let set = write_two_class(&root, 4, 5, 48, 64).unwrap();
    assert_eq!(set.files.len(), 8);
    let p = Preprocess {
        target: Some((48, 64)),
        rescale: 0.003891,
        mean: 52.18,
        channels: 1,
        target_scale: None,
        equalize_hist: false,
    };
    let ds = Arc::new(Dataset::from_folders(&root, &set.classes, &DatasetOptions::new(p)).unwrap());
    assert_eq!(ds.class_counts(), vec![4, 4]);
    assert!(ds.warnings().is_empty());
    let mut opts = BatchOptions::new(8, 1);
    opts.augment = Some(Augment::paper());
    opts.weighting = Weighting::AutoBalance;
    let b = collect(&ds, 0, &opts);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].shape, [8, 48, 64, 1]);
    assert!(b[0].weights.iter().all(|&w| w == 2.0));
}

#[test]
fn workers_prefetch_while_the_consumer_computes() {
    let root = tmp("prefetch");
    write_two_class(&root, 12, 3, 48, 64).unwrap();
    let p = Preprocess {
        target: Some((96, 128)),
        rescale: 0.003891,
        mean: 52.18,
        channels: 3,
        target_scale: None,
        equalize_hist: false,
    };
    let ds = Arc::new(Dataset::from_folders(&root, &classes(), &DatasetOptions::new(p)).unwrap());
    let mut opts = BatchOptions::new(4, 11);
    opts.augment = Some(Augment::paper());
    opts.workers = 2;
    // A consumer that "trains" 60 ms per batch: after the first batch the workers keep up.
    let mut it = ds.epoch(0, &opts).unwrap();
    let mut n = 0;
    for _ in it.by_ref() {
        std::thread::sleep(std::time::Duration::from_millis(60));
        n += 1;
    }
    let s = it.stats().clone();
    println!(
        "{n} batches, wait {:?} of {:?}: share {:.3}",
        s.wait,
        s.elapsed,
        s.wait_share()
    );
    assert_eq!(n, 6);
    assert!(s.wait_share() < 0.6, "{s:?}");
    assert!(s.first_wait <= s.wait);
    // Dropping an epoch half-way stops its workers (no hang).
    let mut it = ds.epoch(1, &opts).unwrap();
    assert!(it.next().is_some());
    drop(it);
}

/// Dataset samples (no augmentation) equal the paper's pipeline as genuine OpenCV ran it
/// (`cv2.imread` + `cv2.resize` INTER_CUBIC + rescale - mean, fixtures/images/reference.npz
/// from converters/opencv_ref.py), within the 1e-3 of tests/data_preprocess.rs.
#[test]
fn samples_match_the_genuine_cv2_pipeline() {
    use ndarray::ArrayD;
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images");
    let root = tmp("cv2");
    for (class, file) in [("neg", "mdb001.pgm"), ("pos", "mdb028.pgm")] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        std::fs::copy(images.join(file), root.join(class).join(file)).unwrap();
    }
    // The references' parameters (params/<file>/200x152 = [rescale, mean, target_scale]).
    let p = Preprocess {
        target: Some((200, 152)),
        target_scale: None,
        rescale: 1.0,
        mean: 44.33,
        channels: 3,
        equalize_hist: false,
    };
    let ds = Dataset::from_folders(&root, &classes(), &DatasetOptions::new(p)).unwrap();
    let mut npz =
        ndarray_npy::NpzReader::new(std::fs::File::open(images.join("reference.npz")).unwrap())
            .unwrap();
    let mut checked = 0;
    for (i, s) in ds.samples().iter().enumerate() {
        let file = s.path.file_name().unwrap().to_string_lossy().to_string();
        let params: ArrayD<f64> = npz.by_name(&format!("params/{file}/200x152.npy")).unwrap();
        assert_eq!(
            params.iter().copied().collect::<Vec<_>>(),
            vec![1.0, 44.33, 0.0],
            "{file}: reference made with other parameters"
        );
        let want: ArrayD<f32> = npz.by_name(&format!("pre/{file}/200x152.npy")).unwrap();
        assert_eq!(want.shape(), &[200, 152]);
        let got = ds.load(i, None).unwrap();
        assert_eq!(got.len(), 200 * 152 * 3);
        for c in 0..3 {
            let d = got
                .iter()
                .skip(c)
                .step_by(3)
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d <= 1e-3, "{file} channel {c}: max abs diff {d}");
        }
        checked += 1;
    }
    assert_eq!(checked, 2);
}
