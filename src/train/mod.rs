//! Fine-tuning with Keras's semantics on the libtorch backend (`allconv finetune`, the
//! paper's two-stage training): the model in training mode ([`model`]), Keras's
//! optimizers ([`optim`]), its regularisers ([`regularize`]) and one `train_on_batch`
//! ([`step`]).
//!
//! Two Keras flavours differ in ways that change the numbers, each measured against genuine
//! Keras (`fixtures/train_step/`, `converters/train_step_ref.py`):
//!
//! | | Keras 2.0.8 (the paper's) | tf-keras 2.x |
//! |---|---|---|
//! | frozen BatchNorm (`trainable=False`, or inside a frozen model) | batch statistics, moving averages still updated; gamma/beta fixed | inference mode: moving statistics, nothing updated |
//! | moving variance fed | biased + epsilon (Theano), biased (TensorFlow) | Bessel-corrected (fused 4-D/5-D), biased elsewhere |
//! | cross-entropy | softmax normalised, clipped to [1e-7, 1-1e-7], `mean(w * ce) / mean(w != 0)` | from the softmax's logits, `sum(w * ce) / batch` |
//! | kernel L2 re-assigned after building (`do_2stage_training`) | no effect (built into the loss) | takes effect |
//! | optimizer defaults | epsilon 1e-8, Adagrad from 0, `/(sqrt(a) + eps)` | epsilon 1e-7, Adagrad from 0.1, `/sqrt(a + eps)`, Nadam schedule `0.96^t` |

pub mod amp;
pub mod checkpoint;
pub mod fit;
pub mod model;
pub mod optim;
pub mod patch;
pub mod regularize;
pub mod run;
pub mod schedule;
pub mod step;

pub use amp::GradScaler;
pub use model::TrainModel;
pub use optim::{Optimizer, Rule};
pub use regularize::{Regularizer, Regularizers};
pub use schedule::{Assign, BestBy, Layers, Schedule, Stage};
pub use step::{
    auto_batch_balance, class_weights_to_sample, keras_loss, train_step, StepReport, StepSeconds,
};

use crate::error::{Error, Result};
use crate::ir::Source;
use crate::torch::{BnTrain, BnVar};

/// Which Keras's training semantics to reproduce (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Multi-backend Keras 2.0.8, as the paper trained; `theano` selects the Theano
    /// backend's moving-variance update (biased + epsilon) over TensorFlow's (biased).
    Keras2 { theano: bool },
    /// tf-keras 2.x (`tf.keras`), with its new (non-legacy) optimizers.
    TfKeras,
}

impl Flavour {
    /// The flavour of the Keras that wrote `src`: tf.keras / Keras >= 2.4 / Keras 3 files
    /// train as tf-keras, multi-backend Keras 2.0-2.3 as Keras 2.0.8 (on the backend the
    /// file records). Keras 1 files also map to `Keras2` (no Keras 1 training reference).
    pub fn for_source(src: &Source) -> Flavour {
        let theano = src.backend.as_deref() == Some("theano");
        match src.keras_version.as_deref() {
            Some(v) if v.ends_with("-tf") => Flavour::TfKeras,
            Some(v) => {
                let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
                let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                if (a, b) >= (2, 4) {
                    Flavour::TfKeras
                } else {
                    Flavour::Keras2 { theano }
                }
            }
            None => Flavour::Keras2 { theano },
        }
    }

    /// `keras2` / `keras208` (on `source`'s backend), `keras2-theano`, `keras2-tf`,
    /// `tf-keras` / `tfkeras` / `tfk`, or `auto` ([`Flavour::for_source`]).
    pub fn parse(s: &str, source: &Source) -> Result<Flavour> {
        match s {
            "auto" => Ok(Flavour::for_source(source)),
            "keras2" | "keras208" | "keras-2.0.8" => Ok(Flavour::Keras2 {
                theano: source.backend.as_deref() == Some("theano"),
            }),
            "keras2-theano" => Ok(Flavour::Keras2 { theano: true }),
            "keras2-tf" | "keras2-tensorflow" => Ok(Flavour::Keras2 { theano: false }),
            "tf-keras" | "tfkeras" | "tfk" | "tf.keras" => Ok(Flavour::TfKeras),
            _ => Err(Error::Other(format!(
                "unknown Keras flavour {s:?}: keras2, keras2-theano, keras2-tf, tf-keras or auto"
            ))),
        }
    }

    /// How a BatchNormalization layer trains, given whether it (and every model around it)
    /// is trainable.
    pub fn bn_train(self, trainable: bool) -> BnTrain {
        match self {
            Flavour::Keras2 { theano } => BnTrain::Batch {
                var: Some(if theano {
                    BnVar::BiasedPlusEps
                } else {
                    BnVar::Biased
                }),
            },
            Flavour::TfKeras if trainable => BnTrain::Batch {
                var: Some(BnVar::TfKeras),
            },
            Flavour::TfKeras => BnTrain::Inference,
        }
    }

    /// Whether assigning `layer.kernel_regularizer.l2` after the model is built (as
    /// `do_2stage_training` does between stages) changes the trained loss: not in Keras
    /// 2.0.8 (the penalty is built into the loss when the layer is built), yes in
    /// tf-keras (measured, `fixtures/train_step/*_nested_2stage`).
    pub fn l2_reassignment_counts(self) -> bool {
        matches!(self, Flavour::TfKeras)
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Keras2 { theano: true } => "keras2-theano",
            Flavour::Keras2 { theano: false } => "keras2-tf",
            Flavour::TfKeras => "tf-keras",
        }
    }
}
