//! Labelled images from class folders (`root/<class>/**/<image>`), the paper's
//! `DMDirectoryIterator` / `flow_from_directory` for `allconv finetune`.
//!
//! Per sample, in the paper's order (`read_img_for_pred` + `ImageDataGenerator`):
//! read (PNG 8/16, PGM, JPEG, TIFF, DICOM: [`read_image`]) -> the `predict` pipeline
//! without the mean ([`Preprocess`]: OpenCV-exact cubic resize to (H, W), optional
//! `target_scale`, `rescale`) -> grey duplicated to `channels` -> augmentation
//! ([`Augment`], training only) -> `x -= mean` (Keras `standardize`, featurewise centre).
//! Without augmentation a sample is bit-identical to what `predict` feeds the network.
//!
//! Files: every file under a class folder (recursively, sorted by path) whose extension
//! is one of [`IMAGE_EXTENSIONS`]; other non-hidden files are reported as ignored.
//! An unreadable or corrupt image is reported by path in [`Dataset::warnings`] and
//! skipped; a missing class folder, or one with no readable image, is an error naming
//! the folder.
//!
//! Batches ([`Dataset::epoch`]): the epoch's order is a seeded Fisher-Yates shuffle
//! (`seed`, `epoch`), each sample's augmentation draws from its own stream
//! (`seed`, `epoch`, position), so an epoch is reproducible bit for bit whatever the
//! number of workers. Worker threads decode and augment whole batches; each worker owns
//! a bounded queue of finished batches that the consumer reads in order. The time the
//! consumer spends blocked is measured ([`LoaderStats::wait_share`]).
//!
//! Differences from Keras, on purpose: the shuffle and augmentation streams are this
//! crate's ([`Rng`]), not NumPy's; an epoch here is one pass over the data (the last
//! batch is partial unless `drop_last`), where Keras's endless iterator runs
//! `steps_per_epoch` batches and lets passes drift across epochs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::augment::{Augment, Rng};
use super::{read_image, DataError, Preprocess};

/// File extensions (case-insensitive) taken as images.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "tif", "tiff", "pgm", "pnm", "ppm", "dcm", "dicom",
];

/// One labelled file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into the class list.
    pub label: usize,
}

/// A problem with one file that did not stop the dataset: the file was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetWarning {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for DatasetWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// When files are decoded for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileCheck {
    /// Decode every file once when the dataset is opened (in parallel) and drop the
    /// unreadable ones there, so batch sizes and class counts are right from the start.
    #[default]
    Decode,
    /// Decode only when a batch needs the file; failures are then reported and the
    /// sample is left out of that batch (and of later ones).
    Lazy,
}

/// Whether a set's decoded images stay in memory between epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepInRam {
    /// Decode each file whenever a batch needs it.
    Never,
    /// Decode every file once, at open (the paper's `--load-train-ram`).
    Always,
    /// Keep them when the set's files, decoded, take at most this many bytes (every file
    /// listed counts, unreadable ones included: the choice is made before decoding).
    UpTo(u64),
}

impl KeepInRam {
    /// What `finetune` and `train-patch` do unless told: a set of at most 2 GiB decoded
    /// (about 500 images at 1152x896) stays in memory. Files are decoded once at open to
    /// check them anyway, and decoding again each epoch takes CPU from the training step:
    /// with 2 threads on 2 cores, the narrow fixture trained 8-17% faster with its 32
    /// images kept (`scripts/bench_train.sh`'s model and batches).
    pub const DEFAULT: KeepInRam = KeepInRam::UpTo(2 << 30);

    /// `--load-*-ram` (`Some(true)`), `--no-load-*-ram` (`Some(false)`), or neither.
    pub fn from_flag(flag: Option<bool>) -> KeepInRam {
        match flag {
            Some(true) => KeepInRam::Always,
            Some(false) => KeepInRam::Never,
            None => KeepInRam::DEFAULT,
        }
    }

    /// Whether `images` decoded images of `image_bytes` each are kept.
    pub fn keeps(self, images: usize, image_bytes: usize) -> bool {
        match self {
            KeepInRam::Never => false,
            KeepInRam::Always => true,
            KeepInRam::UpTo(limit) => (images as u128) * (image_bytes as u128) <= limit as u128,
        }
    }
}

/// How a dataset is opened.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    /// The paper's preprocessing; `target` (H, W) is required. `mean` is subtracted after
    /// augmentation; `channels` 3 duplicates grey (ImageNet backbones), 1 keeps it.
    pub preprocess: Preprocess,
    /// Whether every preprocessed image (before augmentation and mean, one channel) stays
    /// in memory: `H * W * 4` bytes each.
    pub keep_in_ram: KeepInRam,
    pub check: FileCheck,
    /// Threads for the decode at open (0: all available cores).
    pub threads: usize,
}

impl DatasetOptions {
    pub fn new(preprocess: Preprocess) -> Self {
        DatasetOptions {
            preprocess,
            keep_in_ram: KeepInRam::Never,
            check: FileCheck::Decode,
            threads: 0,
        }
    }
}

/// How per-sample weights are computed for each batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Weighting {
    /// All 1.
    #[default]
    None,
    /// end2end-all-conv `auto_batch_balance`: `w = 1 / (count_c / n)` for a sample of
    /// class `c` in a batch of `n` (float32, as NumPy 1.x computes
    /// `batch_w[y == c] /= (y == c).mean()`).
    AutoBalance,
    /// Keras `class_weight`: the weight of the sample's class (e.g. `[1.0, pos_cls_weight]`).
    ClassWeights(Vec<f32>),
}

/// How an epoch is batched.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Training augmentation (`None`: none, as for validation).
    pub augment: Option<Augment>,
    pub weighting: Weighting,
    /// Worker threads (0: batches are built in the consumer's thread, on demand).
    pub workers: usize,
    /// Finished batches each worker may queue ahead (at least 1).
    pub prefetch: usize,
    /// Leave out the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
}

impl BatchOptions {
    pub fn new(batch_size: usize, seed: u64) -> Self {
        BatchOptions {
            batch_size,
            shuffle: true,
            seed,
            augment: None,
            weighting: Weighting::None,
            workers: 2,
            prefetch: 2,
            drop_last: false,
        }
    }
}

/// One batch: `x` is float32 NHWC.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Position of the batch in its epoch.
    pub index: usize,
    pub x: Vec<f32>,
    /// `[N, H, W, C]`.
    pub shape: [usize; 4],
    pub labels: Vec<usize>,
    pub weights: Vec<f32>,
    /// Dataset indices of the samples ([`Dataset::samples`]).
    pub samples: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Labels as one-hot float32 rows (`class_mode='categorical'`).
    pub fn one_hot(&self, n_classes: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; self.labels.len() * n_classes];
        for (i, &l) in self.labels.iter().enumerate() {
            if l < n_classes {
                y[i * n_classes + l] = 1.0;
            }
        }
        y
    }
}

/// Per-sample weights for a batch's labels.
pub fn batch_weights(labels: &[usize], weighting: &Weighting) -> Vec<f32> {
    match weighting {
        Weighting::None => vec![1.0; labels.len()],
        Weighting::AutoBalance => {
            let n = labels.len() as f64;
            labels
                .iter()
                .map(|l| {
                    let count = labels.iter().filter(|&m| m == l).count() as f64;
                    // NumPy 1.x: float32 array /= float64 scalar runs in float32.
                    1.0f32 / ((count / n) as f32)
                })
                .collect()
        }
        Weighting::ClassWeights(w) => labels
            .iter()
            .map(|&l| w.get(l).copied().unwrap_or(1.0))
            .collect(),
    }
}

/// A labelled image set.
#[derive(Debug)]
pub struct Dataset {
    classes: Vec<String>,
    samples: Vec<Sample>,
    prep: Preprocess,
    /// `prep` without mean and channel duplication: what is cached and augmented.
    base: Preprocess,
    shape: [usize; 3],
    cache: Option<Vec<Vec<f32>>>,
    warnings: Mutex<Vec<DatasetWarning>>,
    bad: Mutex<HashSet<usize>>,
}

fn has_image_ext(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Files under `dir`, recursively (directory symlinks are not followed), sorted.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let e = e.map_err(|e| io_err(dir, e))?;
        entries.push(e.path());
    }
    entries.sort();
    for p in entries {
        let meta = std::fs::symlink_metadata(&p).map_err(|e| io_err(&p, e))?;
        if meta.is_dir() {
            walk(&p, files)?;
        } else if meta.file_type().is_symlink() {
            // A link to a file counts, a link to a folder is not followed (os.walk).
            if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(true) {
                files.push(p);
            }
        } else {
            files.push(p);
        }
    }
    Ok(())
}

/// Lists `root/<class>/**` for each class, label = position in `classes`.
/// Returns the samples and warnings for files ignored by extension.
pub fn list_class_folders(
    root: &Path,
    classes: &[String],
) -> Result<(Vec<Sample>, Vec<DatasetWarning>), DataError> {
    check_classes(classes)?;
    if !root.is_dir() {
        return Err(DataError::Dataset {
            path: root.to_path_buf(),
            msg: "data folder not found (expected one sub-folder per class)".into(),
        });
    }
    let mut samples = Vec::new();
    let mut warnings = Vec::new();
    for (label, spec) in classes.iter().enumerate() {
        let class = class_name(spec);
        let mut files = Vec::new();
        let folders = class_folders_of(spec);
        for folder in &folders {
            let dir = root.join(folder);
            if !dir.is_dir() {
                return Err(DataError::Dataset {
                    path: dir,
                    msg: format!(
                        "class folder {folder:?} for class '{class}' (label {label}) not found"
                    ),
                });
            }
            walk(&dir, &mut files)?;
        }
        let dir = root.join(folders.join("+"));
        let mut n = 0;
        for path in files {
            if has_image_ext(&path) {
                samples.push(Sample { path, label });
                n += 1;
            } else if !path
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with('.'))
            {
                warnings.push(DatasetWarning {
                    path,
                    message: format!(
                        "ignored: not an image extension ({})",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                });
            }
        }
        if n == 0 {
            return Err(DataError::Dataset {
                path: dir,
                msg: format!("class folder for class '{class}' holds no image files"),
            });
        }
    }
    Ok((samples, warnings))
}

/// A class of the class list: `name` (its folder), or `name=folder+folder` (several
/// folders as one class, e.g. `malignant=calc_mal+mass_mal` over `sample-patches`' output).
pub fn class_name(spec: &str) -> &str {
    spec.split_once('=').map_or(spec, |(name, _)| name)
}

/// The folders of a class-list entry (see [`class_name`]).
pub fn class_folders_of(spec: &str) -> Vec<&str> {
    match spec.split_once('=') {
        Some((_, folders)) => folders.split('+').collect(),
        None => vec![spec],
    }
}

fn check_classes(classes: &[String]) -> Result<(), DataError> {
    if classes.is_empty() {
        return Err(DataError::Invalid(
            "dataset: the class list is empty".into(),
        ));
    }
    let bad = |c: &str| c.is_empty() || c.contains(['/', '\\', '=', '+']) || c == "." || c == "..";
    let mut seen = HashSet::new();
    let mut folders_seen = HashSet::new();
    for spec in classes {
        let c = class_name(spec);
        if bad(c) || class_folders_of(spec).into_iter().any(bad) {
            return Err(DataError::Invalid(format!(
                "dataset: '{spec}' is not a class folder name (NAME, or NAME=FOLDER+FOLDER)"
            )));
        }
        if !seen.insert(c) {
            return Err(DataError::Invalid(format!(
                "dataset: class '{c}' is listed twice"
            )));
        }
        if let Some(f) = class_folders_of(spec)
            .into_iter()
            .find(|f| !folders_seen.insert(*f))
        {
            return Err(DataError::Invalid(format!(
                "dataset: folder '{f}' is given to two classes"
            )));
        }
    }
    Ok(())
}

impl Dataset {
    /// Opens `root/<class>/...` for the given classes (label = position in the list).
    pub fn from_folders(
        root: &Path,
        classes: &[String],
        opts: &DatasetOptions,
    ) -> Result<Dataset, DataError> {
        let (samples, warnings) = list_class_folders(root, classes)?;
        Self::build(classes, samples, warnings, opts, Some(root))
    }

    /// A dataset from an explicit list of samples (labels index `classes`).
    pub fn from_samples(
        classes: &[String],
        samples: Vec<Sample>,
        opts: &DatasetOptions,
    ) -> Result<Dataset, DataError> {
        check_classes(classes)?;
        if let Some(s) = samples.iter().find(|s| s.label >= classes.len()) {
            return Err(DataError::Dataset {
                path: s.path.clone(),
                msg: format!("label {} but only {} classes", s.label, classes.len()),
            });
        }
        Self::build(classes, samples, Vec::new(), opts, None)
    }

    fn build(
        classes: &[String],
        samples: Vec<Sample>,
        mut warnings: Vec<DatasetWarning>,
        opts: &DatasetOptions,
        root: Option<&Path>,
    ) -> Result<Dataset, DataError> {
        let prep = opts.preprocess.clone();
        let Some((h, w)) = prep.target else {
            return Err(DataError::Invalid(
                "dataset: the preprocessing needs a target size (size=HxW)".into(),
            ));
        };
        if prep.channels != 1 && prep.channels != 3 {
            return Err(DataError::Invalid(format!(
                "dataset: channels must be 1 or 3, got {}",
                prep.channels
            )));
        }
        let base = Preprocess {
            mean: 0.0,
            channels: 1,
            ..prep.clone()
        };
        let mut ds = Dataset {
            classes: classes.iter().map(|c| class_name(c).to_string()).collect(),
            samples,
            prep,
            base,
            shape: [h, w, opts.preprocess.channels],
            cache: None,
            warnings: Mutex::new(Vec::new()),
            bad: Mutex::new(HashSet::new()),
        };
        let mut skipped = vec![0usize; classes.len()];
        let in_ram = opts
            .keep_in_ram
            .keeps(ds.samples.len(), h * w * std::mem::size_of::<f32>());
        if opts.check == FileCheck::Decode || in_ram {
            let loaded = ds.decode_all(opts.threads, in_ram);
            let mut keep = Vec::with_capacity(ds.samples.len());
            let mut cache = Vec::new();
            for (s, r) in std::mem::take(&mut ds.samples).into_iter().zip(loaded) {
                match r {
                    Ok(img) => {
                        keep.push(s);
                        if let Some(img) = img {
                            cache.push(img);
                        }
                    }
                    Err(e) => {
                        skipped[s.label] += 1;
                        warnings.push(DatasetWarning {
                            path: s.path.clone(),
                            message: format!("skipped: {}", strip_path(&e, &s.path)),
                        })
                    }
                }
            }
            ds.samples = keep;
            if in_ram {
                ds.cache = Some(cache);
            }
        }
        for (label, class) in ds.classes.iter().enumerate() {
            if !ds.samples.iter().any(|s| s.label == label) {
                let path = root.map_or_else(|| PathBuf::from(class), |r| r.join(class));
                return Err(DataError::Dataset {
                    path,
                    msg: format!(
                        "class '{class}' has no readable image ({} unreadable file(s) skipped, see the warnings)",
                        skipped[label]
                    ),
                });
            }
        }
        *ds.warnings.get_mut().unwrap_or_else(|e| e.into_inner()) = warnings;
        Ok(ds)
    }

    /// Decodes every sample (in parallel); `Some(pixels)` only when `keep`.
    fn decode_all(&self, threads: usize, keep: bool) -> Vec<Result<Option<Vec<f32>>, DataError>> {
        let n = self.samples.len();
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |p| p.get())
        } else {
            threads
        }
        .clamp(1, n.max(1));
        let mut out: Vec<Option<Result<Option<Vec<f32>>, DataError>>> =
            (0..n).map(|_| None).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        (t..n)
                            .step_by(threads)
                            .map(|i| (i, self.decode(i).map(|v| keep.then_some(v))))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // A panicking decoder leaves its slots `None`: reported below.
            for results in handles.into_iter().filter_map(|h| h.join().ok()) {
                for (i, r) in results {
                    out[i] = Some(r);
                }
            }
        });
        out.into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| {
                    Err(DataError::decode(
                        &self.samples[i].path,
                        "decoder thread panicked",
                    ))
                })
            })
            .collect()
    }

    /// Reads and preprocesses one file: `H * W` values, one channel, no mean.
    fn decode(&self, i: usize) -> Result<Vec<f32>, DataError> {
        let path = &self.samples[i].path;
        let img = read_image(path)?;
        let (v, shape) = self.base.apply(&img).map_err(|e| match e {
            DataError::Invalid(m) => DataError::decode(path, m),
            other => other,
        })?;
        if shape != [self.shape[0], self.shape[1], 1] {
            return Err(DataError::decode(
                path,
                format!("preprocessed to {shape:?}, expected {:?}", self.shape),
            ));
        }
        Ok(v)
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// `[H, W, C]` of every sample.
    pub fn sample_shape(&self) -> [usize; 3] {
        self.shape
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.prep
    }

    /// Number of samples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for s in &self.samples {
            c[s.label] += 1;
        }
        c
    }

    pub fn in_ram(&self) -> bool {
        self.cache.is_some()
    }

    /// Every file skipped or ignored so far (open and iteration), each once.
    pub fn warnings(&self) -> Vec<DatasetWarning> {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn warn(&self, i: usize, e: &DataError) {
        let newly_bad = self.bad.lock().unwrap_or_else(|e| e.into_inner()).insert(i);
        if newly_bad {
            let path = self.samples[i].path.clone();
            let message = format!("skipped: {}", strip_path(e, &path));
            self.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(DatasetWarning { path, message });
        }
    }

    fn is_bad(&self, i: usize) -> bool {
        self.bad
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&i)
    }

    /// Sample `i` as the network sees it (HWC, channels duplicated, mean subtracted),
    /// optionally augmented with `aug` drawing from `rng`.
    pub fn load(&self, i: usize, aug: Option<(&Augment, &mut Rng)>) -> Result<Vec<f32>, DataError> {
        let mut x = Vec::new();
        self.load_into(i, aug, &mut x)?;
        Ok(x)
    }

    /// [`Dataset::load`] appended to `out`, which is left as it was on an error. An
    /// unaugmented sample goes from the decoded grey image into the batch in one pass (a
    /// loader thread shares the cores with the training step).
    fn load_into(
        &self,
        i: usize,
        aug: Option<(&Augment, &mut Rng)>,
        out: &mut Vec<f32>,
    ) -> Result<(), DataError> {
        if i >= self.samples.len() {
            return Err(DataError::Invalid(format!(
                "dataset: sample {i} out of range ({} samples)",
                self.samples.len()
            )));
        }
        let decoded;
        let grey: &[f32] = match &self.cache {
            Some(c) => &c[i],
            None => {
                decoded = self.decode(i)?;
                &decoded
            }
        };
        let c = self.shape[2];
        let mean = self.prep.mean;
        let Some((aug, rng)) = aug else {
            let start = out.len();
            out.resize(start + grey.len() * c, 0.0);
            for (px, &v) in out[start..].chunks_exact_mut(c).zip(grey) {
                px.fill(v - mean);
            }
            return Ok(());
        };
        let x: Vec<f32> = grey
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, c))
            .collect();
        let t = aug.sample(rng, self.shape);
        let x = aug
            .apply(&x, self.shape, &t)
            .map_err(|e| DataError::decode(&self.samples[i].path, e.to_string()))?;
        out.extend(x.iter().map(|v| v - mean));
        Ok(())
    }

    /// The order of sample indices for `epoch` (a seeded shuffle, or `0..len`).
    pub fn epoch_order(&self, epoch: u64, opts: &BatchOptions) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        if opts.shuffle {
            Rng::for_stream(&[opts.seed, epoch, 0x5348_5546]).shuffle(&mut order);
        }
        order
    }

    fn n_batches(&self, opts: &BatchOptions) -> usize {
        let n = self.samples.len();
        if opts.drop_last {
            n / opts.batch_size
        } else {
            n.div_ceil(opts.batch_size)
        }
    }

    /// Builds batch `b` of an epoch whose order is `order` (deterministic; the workers
    /// call this). Unreadable samples are reported and left out.
    pub fn build_batch(&self, order: &[usize], b: usize, epoch: u64, opts: &BatchOptions) -> Batch {
        let start = b * opts.batch_size;
        let end = (start + opts.batch_size).min(order.len());
        let [h, w, c] = self.shape;
        let mut x = Vec::with_capacity((end - start) * h * w * c);
        let mut labels = Vec::new();
        let mut samples = Vec::new();
        for (pos, &i) in order.iter().enumerate().take(end).skip(start) {
            if self.is_bad(i) {
                continue;
            }
            let mut rng = Rng::for_stream(&[opts.seed, epoch, pos as u64, 0x4155_4721]);
            let aug = opts.augment.as_ref().map(|a| (a, &mut rng));
            match self.load_into(i, aug, &mut x) {
                Ok(()) => {
                    labels.push(self.samples[i].label);
                    samples.push(i);
                }
                Err(e) => self.warn(i, &e),
            }
        }
        let weights = batch_weights(&labels, &opts.weighting);
        Batch {
            index: b,
            shape: [labels.len(), h, w, c],
            x,
            labels,
            weights,
            samples,
        }
    }

    /// The batches of one epoch, built by `opts.workers` threads ahead of the consumer.
    pub fn epoch(
        self: &Arc<Self>,
        epoch: u64,
        opts: &BatchOptions,
    ) -> Result<EpochIter, DataError> {
        if opts.batch_size == 0 {
            return Err(DataError::Invalid("batch size must be at least 1".into()));
        }
        if let Some(a) = &opts.augment {
            a.validate()?;
        }
        if let Weighting::ClassWeights(w) = &opts.weighting {
            if w.len() != self.classes.len() || w.iter().any(|v| !v.is_finite()) {
                return Err(DataError::Invalid(format!(
                    "class weights {w:?}: need one finite weight per class ({})",
                    self.classes.len()
                )));
            }
        }
        let order: Arc<Vec<usize>> = Arc::new(self.epoch_order(epoch, opts));
        let n_batches = self.n_batches(opts);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for wk in 0..opts.workers {
            let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(opts.prefetch.max(1));
            let ds = Arc::clone(self);
            let order = Arc::clone(&order);
            let opts_w = opts.clone();
            let stop_w = Arc::clone(&stop);
            let workers = opts.workers;
            let handle = std::thread::Builder::new()
                .name(format!("allconv-data-{wk}"))
                .spawn(move || {
                    for b in (wk..n_batches).step_by(workers) {
                        if stop_w.load(Ordering::Relaxed) {
                            return;
                        }
                        let batch = ds.build_batch(&order, b, epoch, &opts_w);
                        if tx.send(batch).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| DataError::Invalid(format!("cannot start a data worker: {e}")))?;
            receivers.push(rx);
            handles.push(handle);
        }
        Ok(EpochIter {
            ds: Arc::clone(self),
            order,
            epoch,
            opts: opts.clone(),
            receivers,
            handles,
            stop,
            next: 0,
            n_batches,
            started: Instant::now(),
            stats: LoaderStats::default(),
        })
    }
}

/// Removes the leading "path: " from an error message that already names the path.
fn strip_path(e: &DataError, path: &Path) -> String {
    let msg = e.to_string();
    let prefix = format!("{}: ", path.display());
    msg.strip_prefix(&prefix).map(str::to_string).unwrap_or(msg)
}

/// What the consumer of an epoch waited for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoaderStats {
    pub batches: usize,
    pub samples: usize,
    /// Time the consumer spent blocked waiting for a batch (or building it, without
    /// workers).
    pub wait: Duration,
    /// The part of `wait` spent on the first batch (filling the pipeline).
    pub first_wait: Duration,
    /// Time from the epoch's start to the last batch handed out.
    pub elapsed: Duration,
}

impl LoaderStats {
    /// `wait / elapsed`: the share of the consumer's time lost to data loading.
    pub fn wait_share(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.wait.as_secs_f64() / self.elapsed.as_secs_f64()
        }
    }
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter {
    ds: Arc<Dataset>,
    order: Arc<Vec<usize>>,
    epoch: u64,
    opts: BatchOptions,
    receivers: Vec<Receiver<Batch>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next: usize,
    n_batches: usize,
    started: Instant,
    stats: LoaderStats,
}

impl EpochIter {
    pub fn stats(&self) -> &LoaderStats {
        &self.stats
    }

    /// Number of batches this epoch yields at most (fewer if whole batches fail).
    pub fn n_batches(&self) -> usize {
        self.n_batches
    }

    fn next_batch(&mut self) -> Option<Batch> {
        while self.next < self.n_batches {
            let b = self.next;
            self.next += 1;
            let t0 = Instant::now();
            let batch = if self.receivers.is_empty() {
                Some(self.ds.build_batch(&self.order, b, self.epoch, &self.opts))
            } else {
                let k = b % self.receivers.len();
                self.receivers[k].recv().ok()
            };
            let waited = t0.elapsed();
            self.stats.wait += waited;
            if b == 0 {
                self.stats.first_wait = waited;
            }
            let batch = match batch {
                Some(batch) => batch,
                // The worker died (it cannot panic on file data; this is a bug guard):
                // build the batch here rather than lose it.
                None => self.ds.build_batch(&self.order, b, self.epoch, &self.opts),
            };
            self.stats.elapsed = self.started.elapsed();
            if batch.is_empty() {
                continue;
            }
            self.stats.batches += 1;
            self.stats.samples += batch.len();
            return Some(batch);
        }
        None
    }
}

impl Iterator for EpochIter {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.next_batch()
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.receivers.clear(); // unblocks workers waiting to send
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
