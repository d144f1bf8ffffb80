//! `allconv finetune`: the paper's `image_clf_train.py` options, with its names and
//! defaults, so a user's shell script translates line for line; and the paper's own form
//! (`--resume-from X.h5 ... TRAIN VAL TEST`). A flag allconv does not implement is refused
//! by name, never ignored.

use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// MODEL.h5, or the paper's positional TRAIN VAL TEST folders (MODEL.h5 first if given).
    pub positional: Vec<PathBuf>,
    #[arg(long)]
    pub train: Option<PathBuf>,
    #[arg(long)]
    pub val: Option<PathBuf>,
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Output: the best model by validation AUROC, as .h5 (and .onnx beside it) or .onnx.
    #[arg(short, long)]
    pub output: Option<PathBuf>,

    // --- the model: a whole-image .h5, or a patch classifier re-headed first ---
    /// A whole-image model to fine-tune (the paper's finetune form).
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    #[arg(long, action = clap::ArgAction::SetTrue)]
    pub no_resume_from: bool,
    /// A patch classifier to re-head with the --block-type/--top-* recipe (allconv rehead).
    #[arg(long)]
    pub patch_model_state: Option<PathBuf>,
    #[arg(long, action = clap::ArgAction::SetTrue)]
    pub no_patch_model_state: bool,
    #[arg(long, default_value = "resnet50")]
    pub patch_net: String,
    #[arg(long, default_value = "resnet")]
    pub block_type: String,
    #[arg(long, num_args = 1.., default_values_t = [512usize, 512])]
    pub top_depths: Vec<usize>,
    #[arg(long, num_args = 1.., default_values_t = [3usize, 3])]
    pub top_repetitions: Vec<usize>,
    #[arg(long, default_value_t = 4)]
    pub bottleneck_enlarge_factor: usize,
    #[arg(long, overrides_with = "no_add_heatmap")]
    pub add_heatmap: bool,
    #[arg(long)]
    pub no_add_heatmap: bool,
    #[arg(long, num_args = 2, default_values_t = [7usize, 7])]
    pub avg_pool_size: Vec<usize>,
    #[arg(long, overrides_with = "no_add_conv")]
    pub add_conv: bool,
    #[arg(long)]
    pub no_add_conv: bool,
    #[arg(long, overrides_with = "no_add_shortcut")]
    pub add_shortcut: bool,
    #[arg(long)]
    pub no_add_shortcut: bool,
    #[arg(long, num_args = 2, default_values_t = [1usize, 1])]
    pub hm_strides: Vec<usize>,
    #[arg(long, num_args = 2, default_values_t = [5usize, 5])]
    pub hm_pool_size: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    pub fc_init_units: usize,
    #[arg(long, default_value_t = 2)]
    pub fc_layers: usize,
    /// Layers frozen in stage 1 (default: what add_top_layers returns; required with
    /// --resume-from when --nb-epoch > 0, as in the paper).
    #[arg(long)]
    pub top_layer_nb: Option<usize>,
    #[arg(long)]
    pub no_top_layer_nb: bool,

    // --- data ---
    #[arg(long, num_args = 2, default_values_t = [1152usize, 896])]
    pub img_size: Vec<usize>,
    /// target_scale: img *= s / img.max(), before --rescale-factor (the paper's
    /// read_resize_img).
    #[arg(long)]
    pub img_scale: Option<f32>,
    #[arg(long)]
    pub no_img_scale: bool,
    #[arg(long)]
    pub rescale_factor: Option<f32>,
    #[arg(long)]
    pub no_rescale_factor: bool,
    #[arg(long, overrides_with = "no_featurewise_center")]
    pub featurewise_center: bool,
    #[arg(long)]
    pub no_featurewise_center: bool,
    #[arg(long, default_value_t = 52.16)]
    pub featurewise_mean: f32,
    /// cv2.equalizeHist on the scaled image cast to 8 bits (the paper's read_img_for_pred).
    #[arg(long, overrides_with = "no_equalize_hist")]
    pub equalize_hist: bool,
    #[arg(long)]
    pub no_equalize_hist: bool,
    #[arg(long, num_args = 1.., default_values_t = ["neg".to_string(), "pos".to_string()])]
    pub class_list: Vec<String>,
    #[arg(long, overrides_with = "no_augmentation")]
    pub augmentation: bool,
    #[arg(long)]
    pub no_augmentation: bool,
    /// Keep the decoded training images in memory between epochs. Default: kept when
    /// they take at most 2 GiB (H x W x 4 bytes each); --no-load-train-ram decodes each
    /// file whenever a batch needs it.
    #[arg(long, overrides_with = "no_load_train_ram")]
    pub load_train_ram: bool,
    #[arg(long)]
    pub no_load_train_ram: bool,
    /// The same for the validation images.
    #[arg(long, overrides_with = "no_load_val_ram")]
    pub load_val_ram: bool,
    #[arg(long)]
    pub no_load_val_ram: bool,

    // --- training ---
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.5)]
    pub train_bs_multiplier: f32,
    #[arg(long, default_value_t = 5)]
    pub nb_epoch: usize,
    #[arg(long, default_value_t = 20)]
    pub all_layer_epochs: usize,
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,
    #[arg(long, default_value_t = 0.01)]
    pub init_learningrate: f32,
    #[arg(long, default_value_t = 0.1)]
    pub all_layer_multiplier: f32,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 0.0)]
    pub hidden_dropout: f32,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay2: f32,
    #[arg(long, default_value_t = 0.0)]
    pub hidden_dropout2: f32,
    #[arg(long, overrides_with = "no_auto_batch_balance")]
    pub auto_batch_balance: bool,
    #[arg(long)]
    pub no_auto_batch_balance: bool,
    #[arg(long, default_value_t = 1.0)]
    pub pos_cls_weight: f32,
    #[arg(long, default_value_t = 1.0)]
    pub neg_cls_weight: f32,
    #[arg(long, default_value_t = 25)]
    pub es_patience: usize,
    #[arg(long, default_value_t = 10)]
    pub lr_patience: usize,

    // --- outputs and run control ---
    /// The paper's checkpoint of the best model by validation AUROC.
    #[arg(long)]
    pub best_model: Option<PathBuf>,
    /// The model after the last epoch, or NOSAVE (the paper's default).
    #[arg(long, default_value = "NOSAVE")]
    pub final_model: String,
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
    /// cpu, or cuda[:N] (cuDNN's autotuner on: the image size is fixed).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Mixed precision on CUDA: float16 autocast with a dynamic loss scale (PyTorch's
    /// GradScaler defaults); the weights and their updates stay float32.
    #[arg(long)]
    pub amp: bool,
    /// libtorch's compute threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// One JSON line per epoch.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Continue a killed run from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub json: bool,
}

use allconv::data::{KeepInRam, Preprocess};
use allconv::ir::Graph;
use allconv::keras::{read_model, ReadOptions};
use allconv::passes::rehead::{rehead, ReheadOptions, Top};
use allconv::train::fit::FitOptions;
use allconv::train::run::{
    parse_device, set_compute_threads, weighting, Folders, Outputs, TrainJob, TrainSummary,
};
use allconv::train::schedule::{Schedule, TwoStage};
use allconv::train::Flavour;
use allconv::Error;
use std::process::ExitCode;

fn other(m: impl std::fmt::Display) -> Error {
    Error::Other(m.to_string())
}

impl FinetuneArgs {
    /// (model, train, val, test) from the flags or the positional forms.
    fn locations(&self) -> allconv::Result<(Option<PathBuf>, PathBuf, PathBuf, Option<PathBuf>)> {
        let mut pos = self.positional.clone();
        let model = match pos.first() {
            Some(p) if p.extension().is_some_and(|e| e == "h5") => Some(pos.remove(0)),
            _ => None,
        };
        let (train, val, test) = match (pos.len(), &self.train, &self.val) {
            (0, Some(t), Some(v)) => (t.clone(), v.clone(), self.test.clone()),
            (2, None, None) => (pos[0].clone(), pos[1].clone(), self.test.clone()),
            (3, None, None) => (pos[0].clone(), pos[1].clone(), Some(pos[2].clone())),
            _ => {
                return Err(other(
                    "give the data as --train DIR --val DIR [--test DIR] or as the paper's positional TRAIN VAL [TEST]",
                ))
            }
        };
        Ok((model, train, val, test))
    }

    /// The model: a whole-image `.h5` (positional or --resume-from), or a patch
    /// classifier re-headed with the paper's --block-type/--top-* flags.
    fn model(
        &self,
        positional: Option<PathBuf>,
    ) -> allconv::Result<(Graph, Option<usize>, String)> {
        let whole = positional.or(self.resume_from.clone().filter(|_| !self.no_resume_from));
        let patch = self
            .patch_model_state
            .clone()
            .filter(|_| !self.no_patch_model_state);
        match (whole, patch) {
            (Some(_), Some(_)) => Err(other("give either a whole-image model (MODEL.h5 / --resume-from) or --patch-model-state, not both")),
            (None, None) => Err(other("no model: give MODEL.h5, --resume-from WHOLE.h5 or --patch-model-state PATCH.h5")),
            (Some(m), None) => {
                let g = read_model(&m, &ReadOptions::default())?;
                Ok((g, self.top_layer_nb.filter(|_| !self.no_top_layer_nb), m.display().to_string()))
            }
            (None, Some(p)) => {
                let g = read_model(&p, &ReadOptions::default())?;
                let stages = |d: &[usize], r: &[usize]| {
                    d.iter().zip(r).map(|(d, r)| format!("{d}x{r}")).collect::<Vec<_>>().join(",")
                };
                let conv = match self.block_type.as_str() {
                    "resnet" => format!(
                        "resnet:{}:enlarge={}",
                        stages(&self.top_depths, &self.top_repetitions),
                        self.bottleneck_enlarge_factor
                    ),
                    "vgg" => format!("vgg:{}", stages(&self.top_depths, &self.top_repetitions)),
                    b => return Err(other(format!("--block-type {b}: resnet or vgg"))),
                };
                let recipe = if self.add_heatmap && !self.no_add_heatmap {
                    let head = format!(
                        "heatmap:avg={},stride={},pool={}",
                        self.avg_pool_size[0], self.hm_strides[0], self.hm_pool_size[0]
                    );
                    if !self.no_add_conv {
                        format!("{head}+{conv}")
                    } else {
                        let mut units = vec![self.fc_init_units];
                        for _ in 1..self.fc_layers {
                            units.push(units.last().unwrap_or(&1) / 2);
                        }
                        let u: Vec<String> = units.iter().map(|u| u.to_string()).collect();
                        let sc = if self.add_shortcut && !self.no_add_shortcut { ",shortcut" } else { "" };
                        format!("{head},fc={}{sc}", u.join("-"))
                    }
                } else {
                    conv
                };
                let top: Top = recipe.parse()?;
                let mut o = ReheadOptions::new(top, (self.img_size[0], self.img_size[1]));
                o.classes = self.class_list.len();
                o.dropout = self.hidden_dropout;
                o.weight_decay = self.weight_decay;
                o.seed = self.seed;
                let (g, r) = rehead(&g, &o)?;
                let nb = self.top_layer_nb.filter(|_| !self.no_top_layer_nb).unwrap_or(r.top_layer_nb);
                Ok((g, Some(nb), format!("{} re-headed ({recipe})", p.display())))
            }
        }
    }
}

/// The model, data, schedule and outputs the flags ask for.
fn job(a: &FinetuneArgs) -> allconv::Result<TrainJob> {
    let target_scale = a.img_scale.filter(|_| !a.no_img_scale);
    if let Some(ts) = target_scale.filter(|ts| !(ts.is_finite() && *ts > 0.0)) {
        return Err(other(format!("--img-scale: {ts} is not a positive number")));
    }
    if a.img_size.len() != 2 {
        return Err(other("--img-size takes H W"));
    }
    let (positional_model, train_dir, val_dir, test_dir) = a.locations()?;
    let (graph, top_layer_nb, model_label) = a.model(positional_model)?;
    let size = (a.img_size[0], a.img_size[1]);
    let channels = graph
        .inputs
        .first()
        .and_then(|i| i.shape.last())
        .and_then(|d| d.known())
        .ok_or_else(|| other("the model's input channel count is unknown"))?;
    // The model must take the training size: a declared size is freed if it differs.
    let declared: Vec<Option<usize>> = graph.inputs[0]
        .shape
        .iter()
        .take(2)
        .map(|d| d.known())
        .collect();
    if declared
        .iter()
        .zip([size.0, size.1])
        .any(|(d, s)| d.is_some_and(|d| d != s))
    {
        return Err(other(format!(
            "the model declares input {:?} and --img-size is {}x{}: re-head it at that size or pass the size it declares",
            declared, size.0, size.1
        )));
    }
    let featurewise = !a.no_featurewise_center;
    let preprocess = Preprocess {
        target: Some(size),
        target_scale,
        rescale: a
            .rescale_factor
            .filter(|_| !a.no_rescale_factor)
            .unwrap_or(1.0),
        mean: if featurewise { a.featurewise_mean } else { 0.0 },
        channels,
        equalize_hist: a.equalize_hist && !a.no_equalize_hist,
    };
    let device = parse_device(&a.device, a.amp)?;
    let out = a
        .output
        .clone()
        .or_else(|| a.best_model.clone())
        .unwrap_or_else(|| PathBuf::from("modelState/image_clf.h5"));
    if a.hidden_dropout2 != a.hidden_dropout || a.weight_decay2 != a.weight_decay {
        eprintln!(
            "note: the paper's code re-assigns Dropout rates and kernel L2 between stages on an already built model; genuine Keras 2.0.8 keeps the built values for both (measured: fixtures/train_step), and so does allconv for Keras 2.0.x files; for tf-keras files the L2 is re-assigned as tf-keras does, the Dropout rates stay as built"
        );
    }
    let schedule = Schedule::two_stage(&TwoStage {
        optimizer: a.optimizer.clone(),
        init_lr: a.init_learningrate as f64,
        all_layer_multiplier: a.all_layer_multiplier as f64,
        top_layer_nb,
        nb_epoch: a.nb_epoch,
        all_layer_epochs: a.all_layer_epochs,
        weight_decay: a.weight_decay as f64,
        weight_decay2: a.weight_decay2 as f64,
        es_patience: a.es_patience,
        lr_patience: a.lr_patience,
    })?;
    let fit = FitOptions {
        class_list: a.class_list.clone(),
        train_batch: ((a.batch_size as f32 * a.train_bs_multiplier) as usize).max(1),
        eval_batch: a.batch_size.max(1),
        schedule,
        augmentation: !a.no_augmentation,
        weighting: weighting(
            !a.no_auto_batch_balance,
            a.class_list.len(),
            a.pos_cls_weight,
            a.neg_cls_weight,
        ),
        seed: a.seed,
        device,
        flavour: Flavour::for_source(&graph.source),
        run_dir: out.with_extension("run"),
        resume: a.resume,
        workers: allconv::train::run::default_workers(),
        amp: a.amp,
    };
    Ok(TrainJob {
        graph,
        model_label,
        preprocess,
        folders: Folders {
            train: train_dir,
            val: val_dir,
            test: test_dir,
            train_in_ram: KeepInRam::from_flag(super::flag_pair(
                a.load_train_ram,
                a.no_load_train_ram,
            )),
            val_in_ram: KeepInRam::from_flag(super::flag_pair(a.load_val_ram, a.no_load_val_ram)),
        },
        fit,
        outputs: Outputs {
            best_copy: a.best_model.clone().filter(|_| a.output.is_some()),
            best: out,
            final_model: (a.final_model != "NOSAVE").then(|| PathBuf::from(&a.final_model)),
            onnx_size: Some(size),
            log: a.log.clone(),
        },
        positive_class: a
            .class_list
            .last()
            .map(|c| allconv::data::dataset::class_name(c).to_string()),
    })
}

fn run(a: &FinetuneArgs) -> allconv::Result<TrainSummary> {
    set_compute_threads(a.threads)?;
    super::progress::train(&job(a)?, a.json)
}

pub fn main(a: FinetuneArgs) -> ExitCode {
    match run(&a) {
        Ok(s) => {
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                for w in &s.warnings {
                    eprintln!("warning: {w}");
                }
                outln!(
                    "best epoch {}, val AUROC {}; test AUROC {} ({} with 4-flip TTA)",
                    s.best_epoch.map_or("n/a".into(), |e| e.to_string()),
                    s.best_val_auroc.map_or("n/a".into(), |v| format!("{v:.4}")),
                    s.test_auroc.map_or("n/a".into(), |v| format!("{v:.4}")),
                    s.test_auroc_tta.map_or("n/a".into(), |v| format!("{v:.4}")),
                );
                for o in &s.outputs {
                    outln!("wrote {o}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(a.json, e),
    }
}
