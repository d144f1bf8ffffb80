//! The patch-classifier recipe (`patch_clf_train.py`): the network `get_dl_model`
//! builds (or a model to resume from), optionally ImageNet weights from the Keras file the
//! user downloaded, the three-stage schedule, the paper's patch preprocessing. It makes a
//! [`TrainJob`]; the loop is the one `finetune` runs.

use super::fit::FitOptions;
use super::run::{Folders, Outputs, TrainJob};
use super::schedule::{Schedule, ThreeStage};
use super::Flavour;
use crate::data::dataset::Weighting;
use crate::data::Preprocess;
use crate::error::{Error, Result};
use crate::keras::nets::{self, PatchNet, PatchNetOptions};
use crate::keras::{read_model, ReadOptions};
use std::path::PathBuf;

/// `patch_clf_train.py`'s choices, names as its options.
#[derive(Debug, Clone)]
pub struct PatchRecipe {
    pub net: PatchNet,
    pub class_list: Vec<String>,
    pub img_size: (usize, usize),
    pub img_scale: Option<f32>,
    pub rescale_factor: Option<f32>,
    /// `Some(mean)`: `featurewise_center` with `featurewise_mean`.
    pub featurewise_mean: Option<f32>,
    pub equalize_hist: bool,
    pub use_pretrained: bool,
    /// The Keras ImageNet weights file (`*_notop.h5`), required by `use_pretrained`
    /// for ResNet50 / VGG16 / VGG19.
    pub imagenet_weights: Option<PathBuf>,
    /// Start from this model instead of building one (`--resume-from`).
    pub resume_from: Option<PathBuf>,
    pub top_layer_nb: Option<usize>,
    pub hidden_dropout: f32,
    pub weight_decay: f32,
    pub weight_decay2: f32,
    pub optimizer: String,
    pub init_lr: f64,
    pub top_layer_multiplier: f64,
    pub all_layer_multiplier: f64,
    pub nb_epoch: usize,
    pub top_layer_epochs: usize,
    pub all_layer_epochs: usize,
    pub es_patience: usize,
    pub lr_patience: usize,
    pub batch_size: usize,
    pub train_bs_multiplier: f32,
    pub augmentation: bool,
    pub weighting: Weighting,
    pub seed: u64,
    pub device: tch::Device,
    pub amp: bool,
    pub resume: bool,
    pub folders: Folders,
    pub outputs: Outputs,
}

impl PatchRecipe {
    /// The model, its label for the report, and the flavour it trains with.
    fn model(&self) -> Result<(crate::ir::Graph, String, Flavour)> {
        if let Some(p) = &self.resume_from {
            let g = read_model(p, &ReadOptions::default())?;
            let flavour = Flavour::for_source(&g.source);
            return Ok((g, p.display().to_string(), flavour));
        }
        let mut g = nets::patch_classifier(
            self.net,
            &PatchNetOptions {
                classes: self.class_list.len(),
                hidden_dropout: f64::from(self.hidden_dropout),
                weight_decay: f64::from(self.weight_decay),
                seed: self.seed,
            },
        )?;
        let mut label = format!("{} built as Keras 2.0.8's get_dl_model", self.net.name());
        if self.use_pretrained && self.net != PatchNet::Yaroslav {
            let Some(w) = &self.imagenet_weights else {
                return Err(Error::Other(format!(
                    "--use-pretrained needs the ImageNet weights file: {} (or --no-use-pretrained to start from random weights)",
                    self.net.imagenet_weights_help()
                )));
            };
            nets::load_weights_by_name(&mut g, w)?;
            label = format!("{label}, ImageNet weights from {}", w.display());
        }
        // Keras 2.0.8 on TensorFlow, as the paper trained.
        Ok((g, label, Flavour::Keras2 { theano: false }))
    }

    /// The job `allconv train-patch` runs.
    pub fn job(&self) -> Result<TrainJob> {
        if self.featurewise_mean.is_none() && self.net != PatchNet::Yaroslav {
            return Err(Error::Other(format!(
                "--no-featurewise-center with {}: the paper then applies keras.applications' per-channel ImageNet preprocess_input, which allconv does not implement; use --featurewise-center [--featurewise-mean M]",
                self.net.name()
            )));
        }
        if let Some(ts) = self.img_scale.filter(|ts| !(ts.is_finite() && *ts > 0.0)) {
            return Err(Error::Other(format!(
                "--img-scale: {ts} is not a positive number"
            )));
        }
        let min = self.net.min_input_size();
        if self.resume_from.is_none() && self.img_size.0.min(self.img_size.1) < min {
            return Err(Error::Other(format!(
                "--img-size {} {}: {} takes patches of at least {min}x{min}",
                self.img_size.0,
                self.img_size.1,
                self.net.name()
            )));
        }
        let (graph, model_label, flavour) = self.model()?;
        let channels = graph
            .inputs
            .first()
            .and_then(|i| i.shape.last())
            .and_then(|d| d.known())
            .ok_or_else(|| Error::Other("the model's input channel count is unknown".into()))?;
        let top_layer_nb = self.top_layer_nb.or(self.net.default_top_layer_nb());
        let schedule = Schedule::three_stage(&ThreeStage {
            use_pretrained: self.use_pretrained,
            optimizer: self.optimizer.clone(),
            init_lr: self.init_lr,
            top_layer_multiplier: self.top_layer_multiplier,
            all_layer_multiplier: self.all_layer_multiplier,
            top_layer_nb,
            nb_epoch: self.nb_epoch,
            top_layer_epochs: self.top_layer_epochs,
            all_layer_epochs: self.all_layer_epochs,
            weight_decay2: self.weight_decay2 as f64,
            es_patience: self.es_patience,
            lr_patience: self.lr_patience,
        });
        let run_dir = self.outputs.best.with_extension("run");
        Ok(TrainJob {
            graph,
            model_label,
            preprocess: Preprocess {
                target: Some(self.img_size),
                target_scale: self.img_scale,
                rescale: self.rescale_factor.unwrap_or(1.0),
                mean: self.featurewise_mean.unwrap_or(0.0),
                channels,
                equalize_hist: self.equalize_hist,
            },
            folders: self.folders.clone(),
            fit: FitOptions {
                class_list: self.class_list.clone(),
                train_batch: ((self.batch_size as f32 * self.train_bs_multiplier) as usize).max(1),
                eval_batch: self.batch_size.max(1),
                schedule,
                augmentation: self.augmentation,
                weighting: self.weighting.clone(),
                seed: self.seed,
                device: self.device,
                flavour,
                run_dir,
                resume: self.resume,
                workers: super::run::default_workers(),
                amp: self.amp,
            },
            outputs: self.outputs.clone(),
            // Several classes: accuracy, per-class recall, confusion, one-vs-rest AUROCs.
            positive_class: None,
        })
    }
}
