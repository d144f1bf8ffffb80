//! Training schedules as data: which layers train, at what learning rate, with which
//! re-assigned regulariser, for how many epochs, under which callbacks. [`super::fit::fit`]
//! is one loop over a [`Schedule`]; the paper's recipes are the two constructors below, so
//! a reader sees each schedule in one place:
//!
//! | recipe | stage | trains | learning rate | until epoch |
//! |---|---|---|---|---|
//! | [`Schedule::two_stage`] (`do_2stage_training`, whole images) | 1 | layers `[top_layer_nb:]` | `init_lr` | `nb_epoch` |
//! | | 2 | all | `init_lr * all_layer_multiplier` | `all_layer_epochs` |
//! | [`Schedule::three_stage`] (`do_3stage_training`, patches) | 1 | the last layer (all without ImageNet weights) | `init_lr` | `nb_epoch` |
//! | | 2 | layers `[top_layer_nb:]` | `init_lr * top_layer_multiplier` | `top_layer_epochs` |
//! | | 3 | all | `init_lr * all_layer_multiplier` | `all_layer_epochs` |
//!
//! "Until epoch" is Keras's: each stage is a `fit_generator(epochs=E, initial_epoch=run)`,
//! so it runs from the epochs already run up to `E` in all (none if `E` is already
//! reached). Every stage compiles a fresh optimizer and its callbacks start over
//! (`on_train_begin` resets EarlyStopping and ReduceLROnPlateau); the best-model
//! checkpoint keeps its best across stages, as Keras's `ModelCheckpoint` object does.

use super::model::TrainModel;
use crate::error::{Error, Result};

/// A run of top-level layers (`model.layers[...]`; the input layer counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    /// `[:n]`
    First(usize),
    /// `[n:]`
    From(usize),
    /// `[:-1]`: all but the classifier.
    AllButLast,
    /// `[:]`
    All,
}

/// `for layer in model.layers[...]: layer.trainable = value`, as the paper's scripts set
/// it between stages. A stage's assignments apply after every earlier stage's, starting
/// from the flags the model file carries (a checkpoint saved in stage 1 carries stage
/// 1's): what the layers are then is what Keras trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assign {
    pub layers: Layers,
    pub trainable: bool,
}

impl std::fmt::Display for Assign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let range = match self.layers {
            Layers::First(n) => format!("[:{n}]"),
            Layers::From(n) => format!("[{n}:]"),
            Layers::AllButLast => "[:-1]".into(),
            Layers::All => "[:]".into(),
        };
        let what = if self.trainable {
            "trainable"
        } else {
            "frozen"
        };
        write!(f, "layers{range} {what}")
    }
}

/// Which kernels a stage's re-assigned L2 reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Scope {
    /// Every top-level Dense and Conv2D with a kernel regulariser (`do_2stage_training`).
    DenseAndConv,
    /// The last layer's (`do_3stage_training`'s `org_model.layers[-1]`).
    LastLayer,
}

/// A stage's kernel L2, re-assigned after the model is built. Genuine Keras 2.0.8 ignores
/// it (the penalty was fixed when the layer was built), tf-keras applies it
/// ([`super::Flavour::l2_reassignment_counts`]); the paper's scripts set it anyway.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct L2Reassign {
    pub l2: f64,
    pub scope: L2Scope,
}

/// One `compile` + `fit_generator` of the paper's scripts.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// For logs and reports: "top layers", "all layers", ...
    pub name: String,
    /// The `trainable` assignments made before this stage's `compile`.
    pub trainable: Vec<Assign>,
    /// The fresh optimizer's learning rate.
    pub lr: f64,
    pub weight_decay: Option<L2Reassign>,
    /// Keras's `epochs`: run until this many epochs have run in all.
    pub until_epoch: usize,
}

/// What the checkpoint of the best model watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BestBy {
    /// Validation AUROC of the last class, the paper's `DMAucModelCheckpoint` (whole images).
    ValAuroc,
    /// Validation accuracy, Keras's `ModelCheckpoint(monitor='val_acc', save_best_only=True)`
    /// (patches).
    ValAcc,
}

impl BestBy {
    pub fn name(self) -> &'static str {
        match self {
            BestBy::ValAuroc => "val_auroc",
            BestBy::ValAcc => "val_acc",
        }
    }
}

/// The callbacks every stage runs, Keras 2.0.8's semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct Callbacks {
    /// `EarlyStopping(monitor='val_loss', patience)`.
    pub es_patience: usize,
    /// `ReduceLROnPlateau(monitor='val_loss', factor=0.5, patience)`; the paper adds it
    /// for SGD only.
    pub lr_patience: Option<usize>,
    pub best_by: BestBy,
}

/// A whole training run: its stages in order, the optimizer each compiles, the callbacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// `create_optimizer`'s name: sgd (momentum 0.9, Nesterov), rmsprop, adagrad,
    /// adadelta, adamax, adam, nadam.
    pub optimizer: String,
    pub stages: Vec<Stage>,
    pub callbacks: Callbacks,
}

/// `do_2stage_training`'s arguments (`image_clf_train.py`).
#[derive(Debug, Clone)]
pub struct TwoStage {
    pub optimizer: String,
    pub init_lr: f64,
    pub all_layer_multiplier: f64,
    /// Layers frozen in stage 1; required when `nb_epoch > 0`.
    pub top_layer_nb: Option<usize>,
    pub nb_epoch: usize,
    pub all_layer_epochs: usize,
    pub weight_decay: f64,
    pub weight_decay2: f64,
    pub es_patience: usize,
    pub lr_patience: usize,
}

/// `do_3stage_training`'s arguments (`patch_clf_train.py`).
#[derive(Debug, Clone)]
pub struct ThreeStage {
    /// Started from ImageNet weights: stages 1-3 as the table says; otherwise stage 1
    /// trains every layer and is the only stage.
    pub use_pretrained: bool,
    pub optimizer: String,
    pub init_lr: f64,
    pub top_layer_multiplier: f64,
    pub all_layer_multiplier: f64,
    /// Stage 2 trains `model.layers[top_layer_nb:]`; `None` (YaroslavNet) trains all.
    pub top_layer_nb: Option<usize>,
    pub nb_epoch: usize,
    pub top_layer_epochs: usize,
    pub all_layer_epochs: usize,
    pub weight_decay2: f64,
    pub es_patience: usize,
    pub lr_patience: usize,
}

fn callbacks(
    optimizer: &str,
    es_patience: usize,
    lr_patience: usize,
    best_by: BestBy,
) -> Callbacks {
    Callbacks {
        es_patience,
        lr_patience: (optimizer == "sgd").then_some(lr_patience),
        best_by,
    }
}

fn set(layers: Layers, trainable: bool) -> Assign {
    Assign { layers, trainable }
}

impl Schedule {
    /// The whole-image recipe.
    pub fn two_stage(p: &TwoStage) -> Result<Schedule> {
        let top_layer_nb = match (p.top_layer_nb, p.nb_epoch) {
            (Some(n), _) => n,
            (None, 0) => 0,
            (None, _) => {
                return Err(Error::Other(
                    "--nb-epoch > 0 needs --top-layer-nb (the layers stage 1 freezes), as the paper's do_2stage_training".into(),
                ))
            }
        };
        let l2 = |l2| {
            Some(L2Reassign {
                l2,
                scope: L2Scope::DenseAndConv,
            })
        };
        Ok(Schedule {
            optimizer: p.optimizer.clone(),
            stages: vec![
                Stage {
                    name: "top layers".into(),
                    trainable: vec![set(Layers::First(top_layer_nb), false)],
                    lr: p.init_lr,
                    weight_decay: l2(p.weight_decay),
                    until_epoch: p.nb_epoch,
                },
                Stage {
                    name: "all layers".into(),
                    trainable: vec![set(Layers::First(top_layer_nb), true)],
                    lr: p.init_lr * p.all_layer_multiplier,
                    weight_decay: l2(p.weight_decay2),
                    until_epoch: p.all_layer_epochs,
                },
            ],
            callbacks: callbacks(&p.optimizer, p.es_patience, p.lr_patience, BestBy::ValAuroc),
        })
    }

    /// The patch recipe.
    pub fn three_stage(p: &ThreeStage) -> Schedule {
        let callbacks = callbacks(&p.optimizer, p.es_patience, p.lr_patience, BestBy::ValAcc);
        if !p.use_pretrained {
            return Schedule {
                optimizer: p.optimizer.clone(),
                stages: vec![Stage {
                    name: "all layers".into(),
                    trainable: vec![],
                    lr: p.init_lr,
                    weight_decay: None,
                    until_epoch: p.nb_epoch,
                }],
                callbacks,
            };
        }
        Schedule {
            optimizer: p.optimizer.clone(),
            stages: vec![
                Stage {
                    name: "last layer".into(),
                    trainable: vec![set(Layers::AllButLast, false)],
                    lr: p.init_lr,
                    weight_decay: None,
                    until_epoch: p.nb_epoch,
                },
                Stage {
                    name: "top layers".into(),
                    trainable: vec![set(p.top_layer_nb.map_or(Layers::All, Layers::From), true)],
                    lr: p.init_lr * p.top_layer_multiplier,
                    weight_decay: Some(L2Reassign {
                        l2: p.weight_decay2,
                        scope: L2Scope::LastLayer,
                    }),
                    until_epoch: p.top_layer_epochs,
                },
                Stage {
                    name: "all layers".into(),
                    trainable: vec![set(p.top_layer_nb.map_or(Layers::All, Layers::First), true)],
                    lr: p.init_lr * p.all_layer_multiplier,
                    weight_decay: None,
                    until_epoch: p.all_layer_epochs,
                },
            ],
            callbacks,
        }
    }

    /// The epochs the run has in all when no stage stops early.
    pub fn total_epochs(&self) -> usize {
        self.stages.iter().fold(0, |run, s| run.max(s.until_epoch))
    }
}

impl TrainModel {
    /// The trainable flags of stage `i` of `stages` (from 0): the file's, then every
    /// assignment of stages `0..=i` in order. Returns the top-level layers that do not
    /// train.
    pub fn set_stage_trainable(&mut self, stages: &[Stage], i: usize) -> Result<Vec<String>> {
        let top: Vec<String> = self
            .graph()
            .layers
            .iter()
            .filter(|r| r.depth == 0)
            .map(|r| r.path.clone())
            .collect();
        let mut assigned = std::collections::BTreeMap::new();
        for a in stages.iter().take(i + 1).flat_map(|s| &s.trainable) {
            let n = top.len();
            let range = match a.layers {
                Layers::First(k) => 0..k.min(n),
                Layers::From(k) => k.min(n)..n,
                Layers::AllButLast => 0..n.saturating_sub(1),
                Layers::All => 0..n,
            };
            for l in &top[range] {
                assigned.insert(l.clone(), a.trainable);
            }
        }
        self.set_assigned(assigned)?;
        Ok(top
            .into_iter()
            .filter(|l| !self.layer_trainable(l))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(use_pretrained: bool, optimizer: &str) -> Schedule {
        Schedule::three_stage(&ThreeStage {
            use_pretrained,
            optimizer: optimizer.into(),
            init_lr: 0.01,
            top_layer_multiplier: 0.1,
            all_layer_multiplier: 0.01,
            top_layer_nb: Some(162),
            nb_epoch: 5,
            top_layer_epochs: 10,
            all_layer_epochs: 20,
            weight_decay2: 1e-4,
            es_patience: 25,
            lr_patience: 10,
        })
    }

    #[test]
    fn three_stages_as_do_3stage_training() {
        let s = three(true, "sgd");
        let sets: Vec<String> = s
            .stages
            .iter()
            .map(|s| {
                s.trainable
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        assert_eq!(
            sets,
            [
                "layers[:-1] frozen",
                "layers[162:] trainable",
                "layers[:162] trainable"
            ]
        );
        let lrs: Vec<f64> = s.stages.iter().map(|s| s.lr).collect();
        assert_eq!(lrs, [0.01, 0.01 * 0.1, 0.01 * 0.01]);
        assert_eq!(s.total_epochs(), 20);
        assert_eq!(s.callbacks.lr_patience, Some(10));
        assert_eq!(s.callbacks.best_by, BestBy::ValAcc);
        assert_eq!(three(true, "nadam").callbacks.lr_patience, None);
        // No ImageNet start: one stage, every layer, init_lr, nb_epoch epochs.
        let s = three(false, "sgd");
        assert_eq!(s.stages.len(), 1);
        assert_eq!(
            (s.stages[0].trainable.len(), s.stages[0].until_epoch),
            (0, 5)
        );
    }

    #[test]
    fn two_stages_need_the_freeze_count() {
        let mut p = TwoStage {
            optimizer: "sgd".into(),
            init_lr: 0.01,
            all_layer_multiplier: 0.1,
            top_layer_nb: None,
            nb_epoch: 2,
            all_layer_epochs: 5,
            weight_decay: 1e-4,
            weight_decay2: 1e-4,
            es_patience: 25,
            lr_patience: 10,
        };
        assert!(Schedule::two_stage(&p).is_err());
        p.top_layer_nb = Some(7);
        let s = Schedule::two_stage(&p).unwrap();
        assert_eq!(s.stages[0].trainable, [set(Layers::First(7), false)]);
        assert_eq!(s.stages[1].trainable, [set(Layers::First(7), true)]);
        assert_eq!(s.callbacks.best_by, BestBy::ValAuroc);
        assert_eq!(s.total_epochs(), 5);
    }
}
