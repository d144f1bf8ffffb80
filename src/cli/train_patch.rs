//! `allconv train-patch`: the paper's `patch_clf_train.py` options, names and defaults, so
//! its shell script translates line for line. Options the paper's `get_dl_model` accepts
//! but never uses for these networks are accepted and have no effect there either; an
//! option allconv does not implement is refused by name.

use allconv::data::KeepInRam;
use allconv::train::patch::PatchRecipe;
use allconv::train::run::{parse_device, set_compute_threads, weighting, Folders, Outputs};
use allconv::Error;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainPatchArgs {
    /// Training patches: one sub-folder per class (as `allconv sample-patches` writes them).
    pub train_dir: PathBuf,
    /// Validation patches, the same folders.
    pub val_dir: PathBuf,
    /// Test patches, scored with the best model at the end.
    pub test_dir: PathBuf,

    // --- data ---
    #[arg(long, num_args = 2, default_values_t = [256usize, 256])]
    pub img_size: Vec<usize>,
    /// target_scale: img *= s / img.max() (the paper's read_resize_img).
    #[arg(long)]
    pub img_scale: Option<f32>,
    #[arg(long)]
    pub no_img_scale: bool,
    #[arg(long)]
    pub rescale_factor: Option<f32>,
    #[arg(long)]
    pub no_rescale_factor: bool,
    /// Subtract --featurewise-mean (the default).
    #[arg(long, overrides_with = "no_featurewise_center")]
    pub featurewise_center: bool,
    #[arg(long)]
    pub no_featurewise_center: bool,
    #[arg(long, default_value_t = 59.6)]
    pub featurewise_mean: f32,
    /// cv2.equalizeHist on the image cast to 8 bits (the default).
    #[arg(long, overrides_with = "no_equalize_hist")]
    pub equalize_hist: bool,
    #[arg(long)]
    pub no_equalize_hist: bool,
    /// Class order (label = position). NAME=FOLDER+FOLDER merges folders into one class:
    /// `malignant=calc_mal+mass_mal` over sample-patches' output.
    #[arg(long, num_args = 1.., default_values_t = ["background".to_string(), "malignant".to_string(), "benign".to_string()])]
    pub class_list: Vec<String>,
    /// The paper's training augmentation: flips, rotation 25, shear .2, zoom .8-1.2,
    /// channel shift 20.
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

    // --- the network ---
    /// resnet50, vgg16, vgg19 or yaroslav.
    #[arg(long, default_value = "resnet50")]
    pub net: String,
    /// Start from ImageNet weights and train in three stages (the default).
    #[arg(long, overrides_with = "no_use_pretrained")]
    pub use_pretrained: bool,
    /// Random weights, one stage over all layers.
    #[arg(long)]
    pub no_use_pretrained: bool,
    /// The Keras ImageNet weights file for --net (downloaded once, never at run time):
    /// resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 and the VGG ones.
    #[arg(long)]
    pub imagenet_weights: Option<PathBuf>,
    /// Continue from this patch classifier instead of building one.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    #[arg(long)]
    pub no_resume_from: bool,
    /// Stage 2 trains layers [top_layer_nb:] (default per net: 162, 15, 17; all for yaroslav).
    #[arg(long)]
    pub top_layer_nb: Option<usize>,
    #[arg(long)]
    pub no_top_layer_nb: bool,
    /// No effect for these networks, as in the paper's get_dl_model.
    #[arg(long, default_value_t = 32)]
    pub nb_init_filter: usize,
    /// No effect for these networks, as in the paper's get_dl_model.
    #[arg(long, default_value_t = 5)]
    pub init_filter_size: usize,
    /// No effect for these networks, as in the paper's get_dl_model.
    #[arg(long, default_value_t = 2)]
    pub init_conv_stride: usize,
    /// No effect for these networks, as in the paper's get_dl_model.
    #[arg(long, default_value_t = 2)]
    pub max_pooling_size: usize,
    /// No effect for these networks, as in the paper's get_dl_model.
    #[arg(long, default_value_t = 2)]
    pub max_pooling_stride: usize,
    /// No effect for these networks, as in the paper's get_dl_model.
    #[arg(long, default_value_t = 1e-4)]
    pub alpha: f32,
    /// No effect for these networks, as in the paper's get_dl_model.
    #[arg(long, default_value_t = 0.0)]
    pub l1_ratio: f32,
    /// No effect for these networks, as in the paper's get_dl_model.
    #[arg(long, default_value_t = 0.0)]
    pub inp_dropout: f32,
    /// L2 of the softmax Dense's kernel.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f32,
    /// Re-assigned before stage 2; genuine Keras 2.0.8 keeps the built value, and so does allconv.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay2: f32,
    /// A Dropout before the softmax Dense when > 0.
    #[arg(long, default_value_t = 0.0)]
    pub hidden_dropout: f32,
    /// Re-assigned before stage 2; genuine Keras 2.0.8 keeps the built rate, and so does allconv.
    #[arg(long, default_value_t = 0.0)]
    pub hidden_dropout2: f32,

    // --- training ---
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.5)]
    pub train_bs_multiplier: f32,
    /// Stage 1 runs until this epoch (Keras's `epochs`: the stages count epochs in all).
    #[arg(long, default_value_t = 5)]
    pub nb_epoch: usize,
    /// Stage 2 runs until this epoch.
    #[arg(long, default_value_t = 10)]
    pub top_layer_epochs: usize,
    /// Stage 3 runs until this epoch.
    #[arg(long, default_value_t = 20)]
    pub all_layer_epochs: usize,
    /// sgd (momentum .9, Nesterov; with ReduceLROnPlateau), rmsprop, adagrad, adadelta,
    /// adamax, adam or nadam.
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,
    #[arg(long, default_value_t = 0.01)]
    pub init_learningrate: f32,
    #[arg(long, default_value_t = 0.1)]
    pub top_layer_multiplier: f32,
    #[arg(long, default_value_t = 0.01)]
    pub all_layer_multiplier: f32,
    #[arg(long, default_value_t = 10)]
    pub lr_patience: usize,
    #[arg(long, default_value_t = 25)]
    pub es_patience: usize,
    #[arg(long, overrides_with = "no_auto_batch_balance")]
    pub auto_batch_balance: bool,
    #[arg(long)]
    pub no_auto_batch_balance: bool,
    #[arg(long, default_value_t = 1.0)]
    pub pos_cls_weight: f32,
    #[arg(long, default_value_t = 1.0)]
    pub neg_cls_weight: f32,

    // --- outputs and run control ---
    /// The best model by validation accuracy (Keras's ModelCheckpoint, save_best_only).
    #[arg(long, default_value = "./modelState/patch_clf.h5")]
    pub best_model: PathBuf,
    /// The model after the last epoch, or NOSAVE (the paper's default).
    #[arg(long, default_value = "NOSAVE")]
    pub final_model: String,
    /// The paper reads RANDOM_SEED (default 12345).
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Mixed precision on CUDA (float16 autocast, dynamic loss scale).
    #[arg(long)]
    pub amp: bool,
    /// libtorch's compute threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// One JSON line per epoch.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Continue a killed run from its last checkpoint (beside --best-model, `.run/`).
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub json: bool,
}

fn recipe(a: &TrainPatchArgs) -> allconv::Result<PatchRecipe> {
    if a.img_size.len() != 2 {
        return Err(Error::Other("--img-size takes H W".into()));
    }
    let net = a.net.parse()?;
    if a.hidden_dropout2 != a.hidden_dropout || a.weight_decay2 != a.weight_decay {
        eprintln!(
            "note: the paper's do_3stage_training re-assigns the Dropout rate and the softmax kernel's L2 before stage 2 on an already built model; genuine Keras 2.0.8 keeps the built values (measured: fixtures/train_step), and so does allconv"
        );
    }
    Ok(PatchRecipe {
        net,
        class_list: a.class_list.clone(),
        img_size: (a.img_size[0], a.img_size[1]),
        img_scale: a.img_scale.filter(|_| !a.no_img_scale),
        rescale_factor: a.rescale_factor.filter(|_| !a.no_rescale_factor),
        featurewise_mean: (!a.no_featurewise_center).then_some(a.featurewise_mean),
        equalize_hist: !a.no_equalize_hist,
        use_pretrained: !a.no_use_pretrained,
        imagenet_weights: a.imagenet_weights.clone(),
        resume_from: a.resume_from.clone().filter(|_| !a.no_resume_from),
        top_layer_nb: a.top_layer_nb.filter(|_| !a.no_top_layer_nb),
        hidden_dropout: a.hidden_dropout,
        weight_decay: a.weight_decay,
        weight_decay2: a.weight_decay2,
        optimizer: a.optimizer.clone(),
        init_lr: a.init_learningrate as f64,
        top_layer_multiplier: a.top_layer_multiplier as f64,
        all_layer_multiplier: a.all_layer_multiplier as f64,
        nb_epoch: a.nb_epoch,
        top_layer_epochs: a.top_layer_epochs,
        all_layer_epochs: a.all_layer_epochs,
        es_patience: a.es_patience,
        lr_patience: a.lr_patience,
        batch_size: a.batch_size,
        train_bs_multiplier: a.train_bs_multiplier,
        augmentation: a.augmentation && !a.no_augmentation,
        weighting: weighting(
            a.auto_batch_balance && !a.no_auto_batch_balance,
            a.class_list.len(),
            a.pos_cls_weight,
            a.neg_cls_weight,
        ),
        seed: a.seed,
        device: parse_device(&a.device, a.amp)?,
        amp: a.amp,
        resume: a.resume,
        folders: Folders {
            train: a.train_dir.clone(),
            val: a.val_dir.clone(),
            test: Some(a.test_dir.clone()),
            train_in_ram: KeepInRam::from_flag(super::flag_pair(
                a.load_train_ram,
                a.no_load_train_ram,
            )),
            val_in_ram: KeepInRam::from_flag(super::flag_pair(a.load_val_ram, a.no_load_val_ram)),
        },
        outputs: Outputs {
            best: a.best_model.clone(),
            best_copy: None,
            final_model: (a.final_model != "NOSAVE").then(|| PathBuf::from(&a.final_model)),
            onnx_size: None,
            log: a.log.clone(),
        },
    })
}

pub fn main(a: TrainPatchArgs) -> ExitCode {
    let run = || {
        set_compute_threads(a.threads)?;
        super::progress::train(&recipe(&a)?.job()?, a.json)
    };
    match run() {
        Ok(s) => {
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                for w in &s.warnings {
                    eprintln!("warning: {w}");
                }
                let test = s.test_report.as_ref().map(|r| &r.multiclass);
                outln!(
                    "best epoch {} (val_acc {}); test accuracy {} on {} patches",
                    s.best_epoch.map_or("n/a".into(), |e| e.to_string()),
                    s.best_val_acc.map_or("n/a".into(), |v| format!("{v:.4}")),
                    test.map_or("n/a".into(), |m| format!("{:.4}", m.accuracy)),
                    s.test_images.unwrap_or(0),
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
