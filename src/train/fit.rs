//! The paper's two-stage training (`do_2stage_training` in end2end-all-conv's
//! dm_keras_ext.py): stage 1 freezes the model's first `top_layer_nb` layers and trains
//! the rest at `init_lr`; stage 2 unfreezes everything and trains at
//! `init_lr * all_layer_multiplier` with a fresh optimizer (the paper recompiles). Each
//! stage runs Keras 2.0.8's callbacks on `val_loss` — EarlyStopping, and for SGD
//! ReduceLROnPlateau (factor 0.5, min delta 1e-4), both reset at the start of a stage as
//! Keras's `on_train_begin` does — and the best model by validation AUROC is kept, as the
//! paper's `DMAucModelCheckpoint` does.
//!
//! Resumable: after every epoch the model (weights and BatchNorm statistics), the optimizer
//! state, the best weights and the run's counters are written atomically
//! ([`super::checkpoint`]). Batches depend only on (seed, epoch) and the dropout generator
//! is re-seeded from (seed, epoch), so a run killed at any point and resumed from its last
//! checkpoint ends with the same weights as an uninterrupted run with the same seed.

use super::checkpoint::{self, RunState};
use super::{train_step, Flavour, GradScaler, Optimizer, Regularizers, TrainModel};
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

/// What to train and how; the names and defaults are `image_clf_train.py`'s.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Class order: label = position (`--class-list neg pos`).
    pub class_list: Vec<String>,
    /// Training batch (`batch_size * train_bs_multiplier`).
    pub train_batch: usize,
    /// Validation and prediction batch (`--batch-size`).
    pub eval_batch: usize,
    /// Stage-1 epochs (`--nb-epoch`) and stage-2 epochs (`--all-layer-epochs`).
    pub nb_epoch: usize,
    pub all_layer_epochs: usize,
    pub optimizer: String,
    pub init_lr: f64,
    pub all_layer_multiplier: f64,
    /// L2 of top-level Dense/Conv2D kernels per stage (applied where the flavour's Keras
    /// applies a re-assigned regulariser: tf-keras; Keras 2.0.8 keeps the built one).
    pub weight_decay: f64,
    pub weight_decay2: f64,
    pub augmentation: bool,
    pub weighting: Weighting,
    pub es_patience: usize,
    pub lr_patience: usize,
    /// Layers frozen in stage 1 (required when `nb_epoch > 0`).
    pub top_layer_nb: Option<usize>,
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
    pub images_per_s: f64,
    /// Share of the epoch's wall time the training loop waited for data.
    pub data_wait_share: f64,
    pub seconds: f64,
    pub best: bool,
}

/// What [`fit`] returns.
#[derive(Debug)]
pub struct FitResult {
    pub epochs: Vec<EpochLog>,
    pub best_val_auroc: Option<f64>,
    pub best_epoch: Option<usize>,
    /// The model with the best validation AUROC (the last one when no AUROC was defined).
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

/// Train `graph` on `train`, validating on `val` after every epoch. `on_epoch` sees each
/// epoch's log as it ends (progress, the JSONL log); `on_batch` each training batch.
pub fn fit(
    graph: &Graph,
    train: &Arc<Dataset>,
    val: &Arc<Dataset>,
    opts: &FitOptions,
    on_epoch: &mut dyn FnMut(&EpochLog),
    on_batch: &mut dyn FnMut(&BatchProgress),
) -> Result<FitResult> {
    if opts.nb_epoch > 0 && opts.top_layer_nb.is_none() {
        return Err(Error::Other(
            "--nb-epoch > 0 needs --top-layer-nb (the layers stage 1 freezes), as the paper's do_2stage_training".into(),
        ));
    }
    let out_classes = graph
        .outputs
        .first()
        .and_then(|&o| graph.values[o].shape.last())
        .and_then(|d| d.known());
    if out_classes != Some(opts.class_list.len()) {
        return Err(Error::Other(format!(
            "the model outputs {} classes, --class-list has {} ({})",
            out_classes.map_or("an unknown number of".into(), |c| c.to_string()),
            opts.class_list.len(),
            opts.class_list.join(" ")
        )));
    }
    let fingerprint = format!(
        "{}|{:?}|{}|{}|{}|{}|{}|{}|{}|{:?}|{}{}",
        graph.total_params(),
        opts.class_list,
        opts.train_batch,
        opts.nb_epoch,
        opts.all_layer_epochs,
        opts.optimizer,
        opts.init_lr,
        opts.all_layer_multiplier,
        opts.augmentation,
        opts.weighting,
        opts.seed,
        if opts.amp { "|amp" } else { "" }
    );
    let mut model = TrainModel::new(graph, opts.device, opts.flavour)?;
    let mut regs = Regularizers::from_graph(graph)?;
    let mut state = RunState {
        epochs_done: 0,
        stage: if opts.nb_epoch > 0 { 1 } else { 2 },
        stage_epoch: 0,
        lr: opts.init_lr,
        best_val_auroc: None,
        best_epoch: None,
        plateau_best: None,
        plateau_wait: 0,
        es_best: None,
        es_wait: 0,
        stopped_early: false,
        seed: opts.seed,
        options_fingerprint: fingerprint.clone(),
        grad_scaler: opts.amp.then(GradScaler::default),
    };
    let mut best_weights: Option<Vec<(String, Tensor)>> = None;
    let mut saved_opt: Option<Vec<(String, Tensor)>> = None;
    let mut resumed_after = None;
    if opts.resume {
        match checkpoint::load(&opts.run_dir)? {
            Some((tensors, s)) => {
                if s.options_fingerprint != fingerprint {
                    return Err(Error::Other(format!(
                        "{}: the checkpoint was made with other options or another model; resume with the same command",
                        opts.run_dir.display()
                    )));
                }
                let (mut m, mut o, mut b) = (Vec::new(), Vec::new(), Vec::new());
                for (k, t) in tensors {
                    if let Some(r) = k.strip_prefix("model/") {
                        m.push((r.to_string(), t));
                    } else if let Some(r) = k.strip_prefix("optim/") {
                        o.push((r.to_string(), t));
                    } else if let Some(r) = k.strip_prefix("best/") {
                        b.push((r.to_string(), t));
                    }
                }
                model.load_variables(&m)?;
                saved_opt = Some(o);
                best_weights = (!b.is_empty()).then_some(b);
                resumed_after = Some(s.epochs_done);
                state = s;
            }
            None => {
                return Err(Error::Other(format!(
                    "--resume: no checkpoint in {}",
                    opts.run_dir.display()
                )))
            }
        }
    }
    let mut logs = Vec::new();
    for stage in [1usize, 2] {
        let epochs = if stage == 1 {
            opts.nb_epoch
        } else {
            opts.all_layer_epochs
        };
        if epochs == 0 || stage < state.stage {
            continue;
        }
        if stage > state.stage {
            // A new stage: Keras's callbacks start over (on_train_begin).
            state.stage = stage;
            state.stage_epoch = 0;
            state.plateau_best = None;
            state.plateau_wait = 0;
            state.es_best = None;
            state.es_wait = 0;
            state.stopped_early = false;
            state.lr = if stage == 1 {
                opts.init_lr
            } else {
                opts.init_lr * opts.all_layer_multiplier
            };
            saved_opt = None;
        }
        if state.stopped_early || state.stage_epoch >= epochs {
            continue;
        }
        if stage == 1 {
            model.freeze_first(opts.top_layer_nb.unwrap_or(0))?;
        } else {
            model.set_frozen::<&str>(&[])?;
        }
        let wd = if stage == 1 {
            opts.weight_decay
        } else {
            opts.weight_decay2
        };
        regs.stage_weight_decay(graph, wd, opts.flavour);
        let stage_lr = if stage == 1 {
            opts.init_lr
        } else {
            opts.init_lr * opts.all_layer_multiplier
        };
        let mut opt = Optimizer::paper(&opts.optimizer, stage_lr, opts.flavour)?;
        if let Some(s) = saved_opt.take() {
            opt.load_state(&s)?;
        }
        opt.set_lr(state.lr);
        while state.stage_epoch < epochs && !state.stopped_early {
            let epoch = state.epochs_done;
            let t0 = Instant::now();
            tch::manual_seed((opts.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)) as i64);
            let mut bo = BatchOptions::new(opts.train_batch, opts.seed);
            bo.augment = opts.augmentation.then(Augment::paper);
            bo.weighting = opts.weighting.clone();
            bo.workers = opts.workers;
            let mut it = train
                .epoch(epoch as u64, &bo)
                .map_err(|e| Error::Other(e.to_string()))?;
            let (mut loss_sum, mut right, mut seen) = (0f64, 0usize, 0usize);
            let batches = it.n_batches();
            let mut batch = 0;
            for b in it.by_ref() {
                let n = b.len();
                let x = from_host(&b.shape, &b.x, opts.device)?;
                let y = Tensor::from_slice(&b.one_hot(opts.class_list.len()))
                    .f_reshape([n as i64, opts.class_list.len() as i64])
                    .and_then(|t| t.f_to(opts.device))
                    .map_err(terr("labels"))?;
                let w = Tensor::from_slice(&b.weights)
                    .f_to(opts.device)
                    .map_err(terr("weights"))?;
                let r = train_step(
                    &model,
                    &regs,
                    &mut opt,
                    &[x],
                    &y,
                    Some(&w),
                    state.grad_scaler.as_mut(),
                )?;
                loss_sum += r.loss * n as f64;
                let pred: Vec<i64> = Vec::<i64>::try_from(
                    r.output
                        .f_argmax(-1, false)
                        .map_err(terr("argmax"))?
                        .f_to_kind(Kind::Int64)
                        .map_err(terr("argmax"))?,
                )
                .map_err(terr("argmax"))?;
                right += pred
                    .iter()
                    .zip(&b.labels)
                    .filter(|(p, l)| **p as usize == **l)
                    .count();
                seen += n;
                batch += 1;
                let elapsed_s = t0.elapsed().as_secs_f64();
                on_batch(&BatchProgress {
                    epoch: epoch + 1,
                    batch,
                    batches,
                    loss: loss_sum / seen as f64,
                    images_per_s: seen as f64 / elapsed_s.max(1e-9),
                    elapsed_s,
                });
            }
            let stats = it.stats().clone();
            let train_s = t0.elapsed().as_secs_f64();
            let v = predict(&model, val, opts.eval_batch, false)?;
            let (ce, val_acc) = v.loss_acc();
            let val_loss = ce
                + regs
                    .penalty(&model.torch)?
                    .f_double_value(&[])
                    .map_err(terr("penalty"))?;
            let val_auroc = v.auroc();
            let lr = opt.lr();
            // The best model by validation AUROC (DMAucModelCheckpoint).
            let best = match (val_auroc, state.best_val_auroc) {
                (Some(a), Some(b)) => a > b,
                (Some(_), None) => true,
                _ => false,
            };
            if best {
                state.best_val_auroc = val_auroc;
                state.best_epoch = Some(epoch + 1);
                best_weights = Some(
                    model
                        .variables()?
                        .into_iter()
                        .map(|(k, t)| (k, t.detach().copy()))
                        .collect(),
                );
            }
            // ReduceLROnPlateau (SGD only, as the paper) and EarlyStopping, Keras 2.0.8.
            if opts.optimizer == "sgd" {
                if improved(state.plateau_best, val_loss, 1e-4) {
                    state.plateau_best = Some(val_loss);
                    state.plateau_wait = 0;
                } else {
                    if state.plateau_wait >= opts.lr_patience {
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
                if state.es_wait >= opts.es_patience {
                    state.stopped_early = true;
                }
                state.es_wait += 1;
            }
            state.epochs_done += 1;
            state.stage_epoch += 1;
            state.lr = opt.lr();
            let log = EpochLog {
                epoch: state.epochs_done,
                stage,
                loss: loss_sum / seen.max(1) as f64,
                acc: right as f64 / seen.max(1) as f64,
                val_loss,
                val_acc,
                val_auroc,
                lr,
                images_per_s: seen as f64 / train_s.max(1e-9),
                data_wait_share: stats.wait.as_secs_f64() / train_s.max(1e-9),
                seconds: t0.elapsed().as_secs_f64(),
                best,
            };
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
            if let Some(b) = &best_weights {
                tensors.extend(
                    b.iter()
                        .map(|(k, t)| (format!("best/{k}"), t.shallow_clone())),
                );
            }
            checkpoint::save(&opts.run_dir, &tensors, &state)?;
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
        best_val_auroc: state.best_val_auroc,
        best_epoch: state.best_epoch,
        best,
        last,
        resumed_after,
    })
}
