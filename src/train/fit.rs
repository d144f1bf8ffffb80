//! The one training loop: [`fit`] runs a [`Schedule`] (the paper's two- and three-stage
//! recipes are data, `super::schedule`), each stage a fresh optimizer over the layers it
//! trains, with Keras 2.0.8's callbacks on `val_loss` — EarlyStopping, and where the
//! schedule asks ReduceLROnPlateau (factor 0.5, min delta 1e-4), both reset at the start
//! of a stage as Keras's `on_train_begin` does — and the best model kept by the
//! schedule's monitor (validation AUROC, as the paper's `DMAucModelCheckpoint`, or
//! validation accuracy, as `ModelCheckpoint(monitor='val_acc')`).
//!
//! Resumable: after every epoch the model (weights and BatchNorm statistics), the optimizer
//! state, the best weights and the run's counters are written atomically
//! ([`super::checkpoint`]). Batches depend only on (seed, epoch) and the dropout generator
//! is re-seeded from (seed, epoch), so a run killed at any point and resumed from its last
//! checkpoint ends with the same weights as an uninterrupted run with the same seed.

use super::checkpoint::{self, RunState};
use super::schedule::{BestBy, Schedule};
use super::{train_step, Flavour, GradScaler, Optimizer, Regularizers, StepSeconds, TrainModel};
use crate::data::dataset::{BatchOptions, Dataset, Weighting};
use crate::data::roc::auroc;
use crate::data::Augment;
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::torch::{from_host, to_host};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How to train, beside the schedule: data, batches, device, checkpoints.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Class order: label = position (`--class-list neg pos`).
    pub class_list: Vec<String>,
    /// Training batch (`batch_size * train_bs_multiplier`).
    pub train_batch: usize,
    /// Validation and prediction batch (`--batch-size`).
    pub eval_batch: usize,
    /// The stages, their optimizer and callbacks.
    pub schedule: Schedule,
    pub augmentation: bool,
    pub weighting: Weighting,
    pub seed: u64,
    pub device: Device,
    pub flavour: Flavour,
    /// Checkpoints live here.
    pub run_dir: PathBuf,
    /// Continue from `run_dir`'s checkpoint.
    pub resume: bool,
    /// Data worker threads.
    pub workers: usize,
    /// Mixed precision (`--amp`, CUDA): float16 autocast and a loss scale on the training
    /// steps; validation and prediction stay float32.
    pub amp: bool,
}

/// One epoch, as the JSONL log records it.
#[derive(Debug, Clone, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub stage: usize,
    pub loss: f64,
    pub acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub val_auroc: Option<f64>,
    pub lr: f64,
    /// The stage's name in the schedule ("last layer", "top layers", "all layers").
    pub stage_name: String,
    pub images_per_s: f64,
    /// Share of the epoch's wall time the training loop waited for data.
    pub data_wait_share: f64,
    /// The epoch's training steps, phase by phase (the rest of the training time is
    /// waiting for data and moving batches).
    pub step_seconds: StepSeconds,
    pub seconds: f64,
    pub best: bool,
}

/// What [`fit`] returns.
#[derive(Debug)]
pub struct FitResult {
    pub epochs: Vec<EpochLog>,
    /// The best value of the schedule's monitor ([`BestBy`]) and its epoch.
    pub best_score: Option<f64>,
    pub best_epoch: Option<usize>,
    /// The model at the best epoch (the last one when the monitor was never defined).
    pub best: Graph,
    /// The model after the last epoch.
    pub last: Graph,
    /// Resumed from a checkpoint after this many epochs.
    pub resumed_after: Option<usize>,
}

/// Validation (or test) predictions: class probabilities per image, labels.
pub struct Predictions {
    pub probs: Vec<Vec<f32>>,
    pub labels: Vec<usize>,
}

impl Predictions {
    /// AUROC of the last class (the paper's positive class) against the others.
    pub fn auroc(&self) -> Option<f64> {
        let scores: Vec<f32> = self
            .probs
            .iter()
            .map(|p| *p.last().unwrap_or(&0.0))
            .collect();
        let n = self.probs.first().map(Vec::len).unwrap_or(0);
        let pos: Vec<bool> = self.labels.iter().map(|&l| l + 1 == n).collect();
        auroc(&scores, &pos).ok()
    }

    /// Mean categorical cross-entropy (Keras's clipped form) and accuracy.
    pub fn loss_acc(&self) -> (f64, f64) {
        let n = self.probs.len().max(1) as f64;
        let mut loss = 0f64;
        let mut right = 0usize;
        for (p, &l) in self.probs.iter().zip(&self.labels) {
            let q = (p[l] as f64).clamp(1e-7, 1.0 - 1e-7);
            loss -= q.ln();
            let arg = p
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0);
            right += usize::from(arg == l);
        }
        (loss / n, right as f64 / n)
    }
}

fn terr(what: &'static str) -> impl Fn(tch::TchError) -> Error {
    move |e| Error::Other(format!("tch: {what}: {e}"))
}

fn flip(x: &[f32], shape: [usize; 4], h: bool, v: bool) -> Vec<f32> {
    let [n, rows, cols, c] = shape;
    let mut out = vec![0f32; x.len()];
    for b in 0..n {
        for i in 0..rows {
            let si = if v { rows - 1 - i } else { i };
            for j in 0..cols {
                let sj = if h { cols - 1 - j } else { j };
                let (d, s) = (
                    ((b * rows + i) * cols + j) * c,
                    ((b * rows + si) * cols + sj) * c,
                );
                out[d..d + c].copy_from_slice(&x[s..s + c]);
            }
        }
    }
    out
}

/// Class probabilities on every image of `ds` in inference mode; with `tta`, the mean of
/// the image, its horizontal flip, its vertical flip and both (the paper's augmented AUC).
pub fn predict(
    model: &TrainModel,
    ds: &Arc<Dataset>,
    batch: usize,
    tta: bool,
) -> Result<Predictions> {
    let mut o = BatchOptions::new(batch, 0);
    o.shuffle = false;
    o.workers = 1;
    let mut probs = Vec::new();
    let mut labels = Vec::new();
    let it = ds.epoch(0, &o).map_err(|e| Error::Other(e.to_string()))?;
    let _guard = tch::no_grad_guard();
    for b in it {
        let views: &[(bool, bool)] = if tta {
            &[(false, false), (true, false), (false, true), (true, true)]
        } else {
            &[(false, false)]
        };
        let mut acc: Option<Vec<f32>> = None;
        for &(h, v) in views {
            let data = if h || v {
                flip(&b.x, b.shape, h, v)
            } else {
                b.x.clone()
            };
            let x = from_host(&b.shape, &data, model.torch.device())?;
            let out = model.torch.forward_outputs(&[x], false)?;
            let host = to_host(
                out.first()
                    .ok_or_else(|| Error::Other("no output".into()))?,
            )?;
            match &mut acc {
                None => acc = Some(host.data),
                Some(a) => a.iter_mut().zip(&host.data).for_each(|(s, v)| *s += v),
            }
        }
        let mut acc = acc.unwrap_or_default();
        acc.iter_mut().for_each(|v| *v /= views.len() as f32);
        let k = acc.len() / b.len().max(1);
        for (i, &l) in b.labels.iter().enumerate() {
            probs.push(acc[i * k..(i + 1) * k].to_vec());
            labels.push(l);
        }
    }
    Ok(Predictions { probs, labels })
}

/// The model's weights as a graph (Keras layout), ready for the `.h5` writer and ONNX.
pub fn graph_with_weights(base: &Graph, model: &TrainModel) -> Result<Graph> {
    let mut g = base.clone();
    g.params = model.torch.keras_params()?;
    Ok(g)
}

/// Keras 2.0.8 `EarlyStopping` / `ReduceLROnPlateau` bookkeeping on `val_loss`.
fn improved(best: Option<f64>, current: f64, min_delta: f64) -> bool {
    best.is_none_or(|b| current < b - min_delta)
}

/// Progress inside an epoch, after each training batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchProgress {
    pub epoch: usize,
    pub batch: usize,
    pub batches: usize,
    /// Running mean of the training loss over the epoch so far.
    pub loss: f64,
    pub images_per_s: f64,
    /// Since the epoch began.
    pub elapsed_s: f64,
}

/// The model's class count must be the class list's.
fn check_classes(graph: &Graph, class_list: &[String]) -> Result<()> {
    let out_classes = graph
        .outputs
        .first()
        .and_then(|&o| graph.values[o].shape.last())
        .and_then(|d| d.known());
    if out_classes != Some(class_list.len()) {
        return Err(Error::Other(format!(
            "the model outputs {} classes, --class-list has {} ({})",
            out_classes.map_or("an unknown number of".into(), |c| c.to_string()),
            class_list.len(),
            class_list.join(" ")
        )));
    }
    Ok(())
}

/// What a checkpoint must have been made with to be resumed.
fn fingerprint(graph: &Graph, opts: &FitOptions) -> String {
    format!(
        "{}|{:?}|{}|{:?}|{}|{:?}|{}{}",
        graph.total_params(),
        opts.class_list,
        opts.train_batch,
        opts.schedule,
        opts.augmentation,
        opts.weighting,
        opts.seed,
        if opts.amp { "|amp" } else { "" }
    )
}

/// A checkpoint's tensors, by the prefix [`save_checkpoint`] gave them.
struct Restored {
    model: Vec<(String, Tensor)>,
    optim: Vec<(String, Tensor)>,
    best: Vec<(String, Tensor)>,
}

fn split_checkpoint(tensors: Vec<(String, Tensor)>) -> Restored {
    let mut r = Restored {
        model: Vec::new(),
        optim: Vec::new(),
        best: Vec::new(),
    };
    for (k, t) in tensors {
        if let Some(k) = k.strip_prefix("model/") {
            r.model.push((k.to_string(), t));
        } else if let Some(k) = k.strip_prefix("optim/") {
            r.optim.push((k.to_string(), t));
        } else if let Some(k) = k.strip_prefix("best/") {
            r.best.push((k.to_string(), t));
        }
    }
    r
}

fn save_checkpoint(
    dir: &std::path::Path,
    model: &TrainModel,
    opt: &Optimizer,
    best: Option<&Vec<(String, Tensor)>>,
    state: &RunState,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = model
        .variables()?
        .into_iter()
        .map(|(k, t)| (format!("model/{k}"), t))
        .collect();
    tensors.extend(
        opt.state()
            .into_iter()
            .map(|(k, t)| (format!("optim/{k}"), t)),
    );
    if let Some(b) = best {
        tensors.extend(
            b.iter()
                .map(|(k, t)| (format!("best/{k}"), t.shallow_clone())),
        );
    }
    checkpoint::save(dir, &tensors, state)
}

/// One training epoch's totals.
struct EpochTotals {
    loss_sum: f64,
    right: usize,
    seen: usize,
    data_wait_s: f64,
    steps: StepSeconds,
}

/// One pass over `train` with `train_step` per batch.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    model: &TrainModel,
    regs: &Regularizers,
    opt: &mut Optimizer,
    train: &Arc<Dataset>,
    opts: &FitOptions,
    epoch: usize,
    scaler: Option<&mut GradScaler>,
    on_batch: &mut dyn FnMut(&BatchProgress),
) -> Result<EpochTotals> {
    let t0 = Instant::now();
    tch::manual_seed((opts.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)) as i64);
    let mut bo = BatchOptions::new(opts.train_batch, opts.seed);
    bo.augment = opts.augmentation.then(Augment::paper);
    bo.weighting = opts.weighting.clone();
    bo.workers = opts.workers;
    let mut it = train
        .epoch(epoch as u64, &bo)
        .map_err(|e| Error::Other(e.to_string()))?;
    let classes = opts.class_list.len();
    let (mut loss_sum, mut right, mut seen) = (0f64, 0usize, 0usize);
    let mut steps = StepSeconds::default();
    let batches = it.n_batches();
    let mut scaler = scaler;
    for (batch, b) in it.by_ref().enumerate() {
        let n = b.len();
        let x = from_host(&b.shape, &b.x, opts.device)?;
        let y = Tensor::from_slice(&b.one_hot(classes))
            .f_reshape([n as i64, classes as i64])
            .and_then(|t| t.f_to(opts.device))
            .map_err(terr("labels"))?;
        let w = Tensor::from_slice(&b.weights)
            .f_to(opts.device)
            .map_err(terr("weights"))?;
        let r = train_step(model, regs, opt, &[x], &y, Some(&w), scaler.as_deref_mut())?;
        steps += r.seconds;
        loss_sum += r.loss * n as f64;
        let pred: Vec<i64> = Vec::<i64>::try_from(
            r.output
                .f_argmax(-1, false)
                .and_then(|t| t.f_to_kind(Kind::Int64))
                .map_err(terr("argmax"))?,
        )
        .map_err(terr("argmax"))?;
        right += pred
            .iter()
            .zip(&b.labels)
            .filter(|(p, l)| **p as usize == **l)
            .count();
        seen += n;
        let elapsed_s = t0.elapsed().as_secs_f64();
        on_batch(&BatchProgress {
            epoch: epoch + 1,
            batch: batch + 1,
            batches,
            loss: loss_sum / seen as f64,
            images_per_s: seen as f64 / elapsed_s.max(1e-9),
            elapsed_s,
        });
    }
    Ok(EpochTotals {
        loss_sum,
        right,
        seen,
        data_wait_s: it.stats().wait.as_secs_f64(),
        steps,
    })
}

/// Keras 2.0.8's `EarlyStopping` and `ReduceLROnPlateau` on `val_loss`, as their
/// `on_epoch_end` count.
fn epoch_end_callbacks(
    state: &mut RunState,
    opt: &mut Optimizer,
    schedule: &Schedule,
    val_loss: f64,
) {
    if let Some(patience) = schedule.callbacks.lr_patience {
        if improved(state.plateau_best, val_loss, 1e-4) {
            state.plateau_best = Some(val_loss);
            state.plateau_wait = 0;
        } else {
            if state.plateau_wait >= patience {
                opt.set_lr(opt.lr() * 0.5);
                state.plateau_wait = 0;
            }
            state.plateau_wait += 1;
        }
    }
    if improved(state.es_best, val_loss, 0.0) {
        state.es_best = Some(val_loss);
        state.es_wait = 0;
    } else {
        if state.es_wait >= schedule.callbacks.es_patience {
            state.stopped_early = true;
        }
        state.es_wait += 1;
    }
}

/// A checkpoint to continue from: its state, optimizer and best weights, the model's
/// weights loaded. Refused if made with other options.
struct Resumed {
    state: RunState,
    optim: Vec<(String, Tensor)>,
    best: Option<Vec<(String, Tensor)>>,
}

fn restore(model: &TrainModel, run_dir: &std::path::Path, fingerprint: &str) -> Result<Resumed> {
    let Some((tensors, state)) = checkpoint::load(run_dir)? else {
        return Err(Error::Other(format!(
            "--resume: no checkpoint in {}",
            run_dir.display()
        )));
    };
    if state.options_fingerprint != fingerprint {
        return Err(Error::Other(format!(
            "{}: the checkpoint was made with other options or another model; resume with the same command",
            run_dir.display()
        )));
    }
    let r = split_checkpoint(tensors);
    model.load_variables(&r.model)?;
    Ok(Resumed {
        state,
        optim: r.optim,
        best: (!r.best.is_empty()).then_some(r.best),
    })
}

/// The validation set after an epoch: Keras's `val_loss` (cross-entropy plus the
/// regularisers), accuracy and AUROC of the last class.
fn validate(
    model: &TrainModel,
    regs: &Regularizers,
    val: &Arc<Dataset>,
    batch: usize,
) -> Result<(f64, f64, Option<f64>)> {
    let v = predict(model, val, batch, false)?;
    let (ce, acc) = v.loss_acc();
    let penalty = regs
        .penalty(&model.torch)?
        .f_double_value(&[])
        .map_err(terr("penalty"))?;
    Ok((ce + penalty, acc, v.auroc()))
}

/// Train `graph` on `train` by `opts.schedule`, validating on `val` after every epoch.
/// `on_epoch` sees each epoch's log as it ends (progress, the JSONL log); `on_batch`
/// each training batch.
pub fn fit(
    graph: &Graph,
    train: &Arc<Dataset>,
    val: &Arc<Dataset>,
    opts: &FitOptions,
    on_epoch: &mut dyn FnMut(&EpochLog),
    on_batch: &mut dyn FnMut(&BatchProgress),
) -> Result<FitResult> {
    check_classes(graph, &opts.class_list)?;
    let schedule = &opts.schedule;
    let first = schedule
        .stages
        .first()
        .ok_or_else(|| Error::Other("the schedule has no stage".into()))?;
    let fingerprint = fingerprint(graph, opts);
    let mut model = TrainModel::new(graph, opts.device, opts.flavour)?;
    let mut regs = Regularizers::from_graph(graph)?;
    let mut state = RunState::start(first.lr, opts.seed, fingerprint.clone(), opts.amp);
    let (mut best_weights, mut saved_opt, mut resumed_after) = (None, None, None);
    if opts.resume {
        let r = restore(&model, &opts.run_dir, &fingerprint)?;
        resumed_after = Some(r.state.epochs_done);
        (state, saved_opt, best_weights) = (r.state, Some(r.optim), r.best);
    }
    let mut logs = Vec::new();
    for (i, stage) in schedule.stages.iter().enumerate() {
        let number = i + 1;
        if number < state.stage {
            continue;
        }
        if number > state.stage {
            state.begin_stage(number, stage.lr);
            saved_opt = None;
        }
        if state.stopped_early || state.epochs_done >= stage.until_epoch {
            continue;
        }
        // A stage's `trainable` assignments and re-assigned L2 persist on the layers:
        // every stage's so far, in order; then a fresh optimizer (Keras's `compile`).
        model.set_stage_trainable(&schedule.stages, i)?;
        for w in schedule.stages[..=i].iter().filter_map(|s| s.weight_decay) {
            regs.stage_reassign(graph, w, opts.flavour);
        }
        let mut opt = Optimizer::paper(&schedule.optimizer, stage.lr, opts.flavour)?;
        if let Some(s) = saved_opt.take() {
            opt.load_state(&s)?;
        }
        opt.set_lr(state.lr);
        while state.epochs_done < stage.until_epoch && !state.stopped_early {
            let epoch = state.epochs_done;
            let t0 = Instant::now();
            let scaler = state.grad_scaler.as_mut();
            let totals = train_epoch(
                &model, &regs, &mut opt, train, opts, epoch, scaler, on_batch,
            )?;
            let train_s = t0.elapsed().as_secs_f64();
            let (val_loss, val_acc, val_auroc) = validate(&model, &regs, val, opts.eval_batch)?;
            let lr = opt.lr();
            let score = match schedule.callbacks.best_by {
                BestBy::ValAuroc => val_auroc,
                BestBy::ValAcc => Some(val_acc),
            };
            // Save-best-only: strictly better than every epoch before, in any stage.
            let best = score.is_some_and(|a| state.best_score.is_none_or(|b| a > b));
            if best {
                state.best_score = score;
                state.best_epoch = Some(epoch + 1);
                let copy = model.variables()?.into_iter();
                best_weights = Some(copy.map(|(k, t)| (k, t.detach().copy())).collect());
            }
            epoch_end_callbacks(&mut state, &mut opt, schedule, val_loss);
            state.epochs_done += 1;
            state.stage_epoch += 1;
            state.lr = opt.lr();
            let seen = totals.seen.max(1) as f64;
            let log = EpochLog {
                epoch: state.epochs_done,
                stage: number,
                stage_name: stage.name.clone(),
                loss: totals.loss_sum / seen,
                acc: totals.right as f64 / seen,
                val_loss,
                val_acc,
                val_auroc,
                lr,
                images_per_s: totals.seen as f64 / train_s.max(1e-9),
                data_wait_share: totals.data_wait_s / train_s.max(1e-9),
                step_seconds: totals.steps,
                seconds: t0.elapsed().as_secs_f64(),
                best,
            };
            save_checkpoint(&opts.run_dir, &model, &opt, best_weights.as_ref(), &state)?;
            on_epoch(&log);
            logs.push(log);
        }
    }
    let last = graph_with_weights(graph, &model)?;
    if let Some(b) = &best_weights {
        model.load_variables(b)?;
    }
    let best = graph_with_weights(graph, &model)?;
    Ok(FitResult {
        epochs: logs,
        best_score: state.best_score,
        best_epoch: state.best_epoch,
        best,
        last,
        resumed_after,
    })
}
