//! A whole training command as a library call, shared by `allconv finetune` and `allconv
//! train-patch` (one engine, two recipes): open the image folders, run [`fit`] over the
//! recipe's schedule, write the best (and final) model atomically, and report the
//! validation and test sets through [`crate::eval`] as `allconv evaluate` would.

use super::fit::{fit, predict, BatchProgress, EpochLog, FitOptions, Predictions};
use super::TrainModel;
use crate::data::dataset::{class_name, Dataset, DatasetOptions, KeepInRam, Weighting};
use crate::data::Preprocess;
use crate::error::{Error, Result};
use crate::eval::{self, EvalOptions, EvalReport, ScoreTable};
use crate::ir::Graph;
use crate::keras::writer::write_h5_from_graph;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn other(m: impl std::fmt::Display) -> Error {
    Error::Other(m.to_string())
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        file: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// `cpu`, or `cuda[:N]` (cuDNN's autotuner on: every batch has the same shape).
pub fn parse_device(s: &str, amp: bool) -> Result<tch::Device> {
    let device = match s {
        "cpu" => tch::Device::Cpu,
        d if d.starts_with("cuda") => {
            if !crate::torch::load_cuda() {
                return Err(other("--device cuda: no CUDA device visible to libtorch"));
            }
            let i = d
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            tch::Cuda::cudnn_set_benchmark(true);
            tch::Device::Cuda(i)
        }
        d => return Err(other(format!("--device {d}: cpu or cuda[:N]"))),
    };
    if amp && !device.is_cuda() {
        return Err(other(
            "--amp is float16 autocast, which libtorch runs on CUDA only; add --device cuda, or train without --amp",
        ));
    }
    Ok(device)
}

/// Data loader threads: every core the machine has (the paper's `NUM_CPU_CORES`).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// libtorch's compute threads for a training run: `threads`, or every core the machine has
/// when `None`. Returns the count set.
pub fn set_compute_threads(threads: Option<usize>) -> Result<usize> {
    let n = match threads {
        Some(0) => return Err(other("--threads 0: give at least one thread")),
        Some(n) => n,
        None => default_workers(),
    };
    tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
    Ok(n)
}

/// The paper's class weighting: auto batch balance, or `{0: 1, 1: pos, 2: neg}` for two or
/// three classes, or none.
pub fn weighting(auto_batch_balance: bool, classes: usize, pos: f32, neg: f32) -> Weighting {
    match (auto_batch_balance, classes) {
        (true, _) => Weighting::AutoBalance,
        (false, 2) => Weighting::ClassWeights(vec![1.0, pos]),
        (false, 3) => Weighting::ClassWeights(vec![1.0, pos, neg]),
        _ => Weighting::None,
    }
}

/// The image folders of a run (one sub-folder per class).
#[derive(Debug, Clone)]
pub struct Folders {
    pub train: PathBuf,
    pub val: PathBuf,
    pub test: Option<PathBuf>,
    pub train_in_ram: KeepInRam,
    pub val_in_ram: KeepInRam,
}

/// Where the run writes.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The best model: `.h5` (with `.onnx` beside it when `onnx_size` is set).
    pub best: PathBuf,
    /// Also write the best model here (the paper's `--best-model` beside `--output`).
    pub best_copy: Option<PathBuf>,
    /// The model after the last epoch.
    pub final_model: Option<PathBuf>,
    /// Export the best model to ONNX at this input size as well.
    pub onnx_size: Option<(usize, usize)>,
    /// One JSON line per epoch, appended.
    pub log: Option<PathBuf>,
}

/// What a training command reports (`--json`).
#[derive(Debug, Serialize)]
pub struct TrainSummary {
    pub model: String,
    pub train_images: usize,
    pub val_images: usize,
    /// Whether the decoded training / validation images stayed in memory between epochs.
    pub train_in_ram: bool,
    pub val_in_ram: bool,
    pub test_images: Option<usize>,
    pub warnings: Vec<String>,
    pub schedule: Vec<StageSummary>,
    pub epochs: Vec<EpochLog>,
    /// The monitor of the best-model checkpoint (`val_auroc` or `val_acc`).
    pub best_by: &'static str,
    pub best_epoch: Option<usize>,
    pub best_val_auroc: Option<f64>,
    pub best_val_acc: Option<f64>,
    /// Binary models: the test AUROC, single view and 4-flip TTA.
    pub test_auroc: Option<f64>,
    pub test_auroc_tta: Option<f64>,
    /// The validation set with the best model (accuracy, per-class recall, confusion).
    pub val_report: Option<EvalReport>,
    /// The test set with the best model, single view and 4-flip TTA, 95% intervals.
    pub test_report: Option<EvalReport>,
    pub outputs: Vec<String>,
    pub resumed_after: Option<usize>,
}

/// One stage of the schedule, as the summary lists it.
#[derive(Debug, Serialize)]
pub struct StageSummary {
    pub name: String,
    /// The `trainable` assignments before the stage, as `layers[:-1] frozen`.
    pub trainable: Vec<String>,
    pub lr: f64,
    pub until_epoch: usize,
}

/// Everything a training command decided, ready to run.
pub struct TrainJob {
    pub graph: Graph,
    /// How the model was made, for the report.
    pub model_label: String,
    pub preprocess: Preprocess,
    pub folders: Folders,
    pub fit: FitOptions,
    pub outputs: Outputs,
    /// Score the binary reports on this class (`None`: multi-class report only).
    pub positive_class: Option<String>,
}

/// The datasets' warnings, sorted, as `path: message`.
fn warnings(sets: &[&Arc<Dataset>]) -> Vec<String> {
    let mut w: Vec<String> = sets
        .iter()
        .flat_map(|d| d.warnings())
        .map(|w| format!("{}: {}", w.path.display(), w.message))
        .collect();
    w.sort();
    w
}

fn create_parent(p: &Path) -> Result<()> {
    match p.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => std::fs::create_dir_all(d).map_err(|e| io(d, e)),
        None => Ok(()),
    }
}

/// Write `g` as `.h5` and, with `onnx_size`, `.onnx` beside it (each atomic).
pub fn write_model(
    g: &Graph,
    out: &Path,
    onnx_size: Option<(usize, usize)>,
) -> Result<Vec<String>> {
    let h5 = out.with_extension("h5");
    write_h5_from_graph(g, &h5)?;
    let mut written = vec![h5.display().to_string()];
    if let Some(size) = onnx_size {
        let onnx = out.with_extension("onnx");
        let eo = crate::onnx::ExportOptions {
            input_size: Some(vec![size.0, size.1]),
            ..Default::default()
        };
        let bytes = crate::onnx::export_for_inference(g, &eo)?.to_bytes()?;
        crate::onnx::write_atomic(&onnx, &bytes)?;
        written.push(onnx.display().to_string());
    }
    Ok(written)
}

fn score_table(
    ds: &Dataset,
    classes: &[String],
    single: &Predictions,
    tta: Option<&Predictions>,
) -> ScoreTable {
    let widen = |p: &Predictions| -> Vec<Vec<f64>> {
        p.probs
            .iter()
            .map(|r| r.iter().map(|&v| f64::from(v)).collect())
            .collect()
    };
    let samples = ds.samples();
    ScoreTable {
        classes: classes.to_vec(),
        paths: (0..single.labels.len())
            .map(|i| match samples.get(i) {
                Some(s) if samples.len() == single.labels.len() => s.path.display().to_string(),
                _ => format!("#{i}"),
            })
            .collect(),
        labels: single.labels.clone(),
        probs: widen(single),
        probs_tta: tta.map(widen),
    }
}

/// The report of one set and, for a binary report, its ROC plot beside `best`
/// (`{stem}_{name}_roc.png`); `None` where the set cannot be evaluated (a class missing).
fn report_set(
    t: &ScoreTable,
    name: &str,
    best: &Path,
    eval_opts: &EvalOptions,
    outputs: &mut Vec<String>,
) -> Result<Option<EvalReport>> {
    let Ok(r) = eval::evaluate(t, eval_opts) else {
        return Ok(None);
    };
    let Some(b) = &r.binary else {
        return Ok(Some(r));
    };
    let stem = best
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let path = best.with_file_name(format!("{stem}_{name}_roc.png"));
    eval::plot::write_binary_roc(&path, &format!("{name} ROC"), b)?;
    outputs.push(path.display().to_string());
    Ok(Some(r))
}

impl TrainJob {
    /// Open the data, train, write the models, report the sets. `on_epoch` sees each
    /// epoch's log (after the JSONL line is written), `on_batch` each training batch.
    pub fn run(
        &self,
        on_epoch: &mut dyn FnMut(&EpochLog),
        on_batch: &mut dyn FnMut(&BatchProgress),
    ) -> Result<TrainSummary> {
        let classes = &self.fit.class_list;
        let names: Vec<String> = classes.iter().map(|c| class_name(c).to_string()).collect();
        let open = |dir: &Path, ram: KeepInRam| -> Result<Arc<Dataset>> {
            let mut o = DatasetOptions::new(self.preprocess.clone());
            o.keep_in_ram = ram;
            Dataset::from_folders(dir, classes, &o)
                .map(Arc::new)
                .map_err(|e| other(e.to_string()))
        };
        let f = &self.folders;
        let train = open(&f.train, f.train_in_ram)?;
        let val = open(&f.val, f.val_in_ram)?;
        let test = f
            .test
            .as_deref()
            .map(|d| open(d, KeepInRam::Never))
            .transpose()?;
        let mut sets = vec![&train, &val];
        sets.extend(test.as_ref());
        let warnings = warnings(&sets);
        let o = &self.outputs;
        for p in [
            Some(&o.best),
            o.best_copy.as_ref(),
            o.final_model.as_ref(),
            o.log.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            create_parent(p)?;
        }
        let mut log_file = match &o.log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| io(p, e))?,
            ),
            None => None,
        };
        let mut log_error = None;
        let mut epoch_cb = |l: &EpochLog| {
            if let (Some(f), Some(p)) = (&mut log_file, &o.log) {
                let line = serde_json::to_string(l).unwrap_or_default();
                if let Err(e) = writeln!(f, "{line}") {
                    log_error.get_or_insert_with(|| io(p, e));
                }
            }
            on_epoch(l);
        };
        let result = fit(
            &self.graph,
            &train,
            &val,
            &self.fit,
            &mut epoch_cb,
            on_batch,
        )?;
        if let Some(e) = log_error {
            return Err(e);
        }
        let mut outputs = write_model(&result.best, &o.best, o.onnx_size)?;
        if let Some(bm) = &o.best_copy {
            write_h5_from_graph(&result.best, bm)?;
            outputs.push(bm.display().to_string());
        }
        if let Some(p) = &o.final_model {
            write_h5_from_graph(&result.last, p)?;
            outputs.push(p.display().to_string());
        }
        // Validation and test sets with the best model, through `allconv::eval`.
        let best_model = TrainModel::new(&result.best, self.fit.device, self.fit.flavour)?;
        let eval_opts = EvalOptions {
            positive_class: self.positive_class.clone(),
            seed: self.fit.seed,
            ..Default::default()
        };
        let batch = self.fit.eval_batch;
        let v = predict(&best_model, &val, batch, false)?;
        let val_report = report_set(
            &score_table(&val, &names, &v, None),
            "val",
            &o.best,
            &eval_opts,
            &mut outputs,
        )?;
        let mut test_report = None;
        if let Some(t) = &test {
            let p = predict(&best_model, t, batch, false)?;
            let p_tta = predict(&best_model, t, batch, true)?;
            let scores = score_table(t, &names, &p, Some(&p_tta));
            let stem = o
                .best
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let csv = o.best.with_file_name(format!("{stem}_test_scores.csv"));
            scores.write_csv(&csv)?;
            outputs.push(csv.display().to_string());
            test_report = report_set(&scores, "test", &o.best, &eval_opts, &mut outputs)?;
        }
        let bin = test_report.as_ref().and_then(|r| r.binary.as_ref());
        let best_log = result
            .epochs
            .iter()
            .find(|l| Some(l.epoch) == result.best_epoch);
        let best_by = self.fit.schedule.callbacks.best_by;
        let (best_val_auroc, best_val_acc) = match (best_log, best_by) {
            (Some(l), _) => (l.val_auroc, Some(l.val_acc)),
            // Resumed after the best epoch: the checkpoint kept its score.
            (None, super::BestBy::ValAuroc) => (result.best_score, None),
            (None, super::BestBy::ValAcc) => (None, result.best_score),
        };
        Ok(TrainSummary {
            model: self.model_label.clone(),
            train_images: train.len(),
            train_in_ram: train.in_ram(),
            val_in_ram: val.in_ram(),
            val_images: val.len(),
            test_images: test.as_ref().map(|t| t.len()),
            warnings,
            schedule: self
                .fit
                .schedule
                .stages
                .iter()
                .map(|s| StageSummary {
                    name: s.name.clone(),
                    trainable: s.trainable.iter().map(|a| a.to_string()).collect(),
                    lr: s.lr,
                    until_epoch: s.until_epoch,
                })
                .collect(),
            epochs: result.epochs,
            best_by: best_by.name(),
            best_epoch: result.best_epoch,
            best_val_auroc,
            best_val_acc,
            test_auroc: bin.map(|b| b.single.auroc),
            test_auroc_tta: bin.and_then(|b| b.tta.as_ref()).map(|t| t.auroc),
            val_report,
            test_report,
            outputs,
            resumed_after: result.resumed_after,
        })
    }
}
