//! A training checkpoint, written atomically every epoch: every tensor of the run (model
//! variables including BatchNorm moving statistics, optimizer state) in one libtorch file,
//! and the run's scalars (epoch, stage, learning rate, best score, callback counters, seed,
//! the options that must not change on `--resume`) in a JSON file beside it. The JSON is
//! renamed into place last, so a checkpoint is complete exactly when its JSON exists.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The scalars of a run at the end of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Epochs finished, over all stages.
    pub epochs_done: usize,
    /// The schedule's stage, from 1.
    pub stage: usize,
    /// Epochs finished within the current stage.
    pub stage_epoch: usize,
    pub lr: f64,
    /// The best value of the schedule's monitor (validation AUROC or accuracy).
    #[serde(alias = "best_val_auroc")]
    pub best_score: Option<f64>,
    pub best_epoch: Option<usize>,
    /// ReduceLROnPlateau / EarlyStopping state: best val_loss and epochs since it improved.
    pub plateau_best: Option<f64>,
    pub plateau_wait: usize,
    pub es_best: Option<f64>,
    pub es_wait: usize,
    pub stopped_early: bool,
    pub seed: u64,
    /// A fingerprint of the options a resumed run must share (data, model, schedule).
    pub options_fingerprint: String,
    /// Mixed precision: the loss scale as it stands.
    #[serde(default)]
    pub grad_scaler: Option<crate::train::GradScaler>,
}

impl RunState {
    /// A run that has not started: stage 1 at its learning rate.
    pub fn start(lr: f64, seed: u64, options_fingerprint: String, amp: bool) -> RunState {
        RunState {
            epochs_done: 0,
            stage: 1,
            stage_epoch: 0,
            lr,
            best_score: None,
            best_epoch: None,
            plateau_best: None,
            plateau_wait: 0,
            es_best: None,
            es_wait: 0,
            stopped_early: false,
            seed,
            options_fingerprint,
            grad_scaler: amp.then(crate::train::GradScaler::default),
        }
    }

    /// A new `fit_generator`: Keras's callbacks start over (`on_train_begin`); the best
    /// score stays (the checkpoint callback object lives across stages).
    pub fn begin_stage(&mut self, stage: usize, lr: f64) {
        self.stage = stage;
        self.stage_epoch = 0;
        self.plateau_best = None;
        self.plateau_wait = 0;
        self.es_best = None;
        self.es_wait = 0;
        self.stopped_early = false;
        self.lr = lr;
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        file: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// `DIR/checkpoint.pt` and `DIR/checkpoint.json`.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("checkpoint.pt"), dir.join("checkpoint.json"))
}

/// Write tensors and state atomically (temp files, then rename; the JSON last).
pub fn save(dir: &Path, tensors: &[(String, Tensor)], state: &RunState) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let (pt, js) = paths(dir);
    let pt_tmp = pt.with_extension("pt.tmp");
    let js_tmp = js.with_extension("json.tmp");
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::save_multi(&named, &pt_tmp).map_err(|e| io(&pt_tmp, e))?;
    let text = serde_json::to_string_pretty(state).map_err(|e| io(&js_tmp, e))?;
    std::fs::write(&js_tmp, text).map_err(|e| io(&js_tmp, e))?;
    // The JSON is removed first, so a crash between the renames leaves no checkpoint
    // claiming the new tensors.
    let _ = std::fs::remove_file(&js);
    std::fs::rename(&pt_tmp, &pt).map_err(|e| io(&pt, e))?;
    std::fs::rename(&js_tmp, &js).map_err(|e| io(&js, e))
}

/// The last complete checkpoint in `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<(Vec<(String, Tensor)>, RunState)>> {
    let (pt, js) = paths(dir);
    if !js.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&js).map_err(|e| io(&js, e))?;
    let state: RunState = serde_json::from_str(&text).map_err(|e| io(&js, e))?;
    let tensors = Tensor::load_multi(&pt).map_err(|e| io(&pt, e))?;
    Ok(Some((tensors, state)))
}
