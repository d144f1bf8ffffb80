//! A [`TorchModel`] set up for training: gradients on the weights Keras would train, the
//! BatchNorm behaviour of the chosen [`Flavour`], and a freeze set for stage 1.

use super::Flavour;
use crate::error::{Error, Result};
use crate::ir::{Graph, Op};
use crate::torch::{FitOutputs, FitSpec, TorchModel};
use std::collections::{BTreeSet, HashSet};
use tch::{Device, Tensor};

/// Weight slots that never train (BatchNorm's moving statistics).
pub const NON_TRAINABLE_SLOTS: [&str; 2] = ["moving_mean", "moving_variance"];

/// The model being trained. Its weights are the [`TorchModel`]'s VarStore variables
/// (trained in place); [`TorchModel::keras_params`] reads them back in Keras layout.
pub struct TrainModel {
    pub torch: TorchModel,
    pub flavour: Flavour,
    /// Layer paths frozen on top of the file's own `trainable` flags (stage 1).
    frozen: BTreeSet<String>,
    spec: FitSpec,
    /// `(param key "{layer}.{slot}", variable)` of every weight that trains now, in
    /// Keras's `trainable_weights` order.
    params: Vec<(String, Tensor)>,
}

fn under(path: &str, root: &str) -> bool {
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl TrainModel {
    /// Load `graph`'s weights on `device` and set them up for training with `flavour`'s
    /// semantics; nothing is frozen beyond the layers the file marks `trainable: false`.
    pub fn new(graph: &Graph, device: Device, flavour: Flavour) -> Result<TrainModel> {
        let torch = TorchModel::new(graph, device)?;
        let mut m = TrainModel {
            torch,
            flavour,
            frozen: BTreeSet::new(),
            spec: FitSpec::default(),
            params: Vec::new(),
        };
        m.refresh()?;
        Ok(m)
    }

    pub fn graph(&self) -> &Graph {
        &self.torch.graph
    }

    /// Freeze exactly these layer paths (a nested model's path freezes every layer in
    /// it) on top of the file's `trainable` flags; an empty list unfreezes them all
    /// (stage 2). Every name must be a layer of the model.
    pub fn set_frozen<S: AsRef<str>>(&mut self, layers: &[S]) -> Result<()> {
        let mut set = BTreeSet::new();
        for l in layers {
            let l = l.as_ref();
            if !self.torch.graph.layers.iter().any(|r| under(&r.path, l)) {
                return Err(Error::Other(format!(
                    "cannot freeze {l:?}: the model has no such layer"
                )));
            }
            set.insert(l.to_string());
        }
        self.frozen = set;
        self.refresh()
    }

    /// Freeze the first `n` top-level layers, as `do_2stage_training` freezes
    /// `model.layers[:top_layer_nb]` (the input layer counts). Returns their paths.
    pub fn freeze_first(&mut self, n: usize) -> Result<Vec<String>> {
        let names: Vec<String> = self
            .torch
            .graph
            .layers
            .iter()
            .filter(|r| r.depth == 0)
            .take(n)
            .map(|r| r.path.clone())
            .collect();
        self.set_frozen(&names)?;
        Ok(names)
    }

    pub fn frozen(&self) -> impl Iterator<Item = &str> {
        self.frozen.iter().map(String::as_str)
    }

    /// Whether layer `path` trains now: its own (effective) `trainable` flag from the
    /// file, and not under a frozen path.
    pub fn layer_trainable(&self, path: &str) -> bool {
        let own = self
            .torch
            .graph
            .layers
            .iter()
            .find(|r| r.path == path)
            .is_none_or(|r| r.trainable);
        own && !self.frozen.iter().any(|f| under(path, f))
    }

    /// The weights that train now, `(param key, variable)`, in Keras's order (the file's
    /// layer order, nested models expanded; each layer's weights in creation order).
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// BatchNorm behaviour of the training pass, by layer path.
    pub fn fit_spec(&self) -> &FitSpec {
        &self.spec
    }

    /// One training-mode forward pass (dropout on, BatchNorm per the flavour, moving
    /// statistics updated as Keras updates them), in the autograd graph.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<FitOutputs> {
        self.torch.forward_fit(inputs, &self.spec)
    }

    /// Every weight (BatchNorm moving statistics included) as `(param key, variable)`,
    /// torch layout, handles on the live storage: with [`crate::train::Optimizer::state`],
    /// what a checkpoint saves. ([`TorchModel::keras_params`] gives Keras layout.)
    pub fn variables(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for n in &self.torch.graph.nodes {
            for slot in n.op.weight_slots() {
                let key = n.param_key(slot);
                if seen.insert(key.clone()) {
                    out.push((key, self.torch.variable(&n.layer, slot)?));
                }
            }
        }
        Ok(out)
    }

    /// Restore what [`TrainModel::variables`] returned (a checkpoint): every weight must be
    /// there with its shape; values are copied into the live variables.
    pub fn load_variables(&self, saved: &[(String, Tensor)]) -> Result<()> {
        let by_key: std::collections::HashMap<&str, &Tensor> =
            saved.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let e = |m: tch::TchError| Error::Other(format!("tch: loading weights: {m}"));
        let _guard = tch::no_grad_guard();
        for (key, var) in self.variables()? {
            let src = by_key
                .get(key.as_str())
                .ok_or_else(|| Error::Other(format!("checkpoint has no weight {key}")))?;
            if src.size() != var.size() {
                return Err(Error::Other(format!(
                    "checkpoint weight {key} has shape {:?}, the model's is {:?}",
                    src.size(),
                    var.size()
                )));
            }
            let src = src
                .f_to_device_(var.device(), var.kind(), false, false)
                .map_err(e)?;
            let mut target = var.shallow_clone();
            target.f_copy_(&src).map_err(e)?;
        }
        Ok(())
    }

    /// Recompute `requires_grad`, the trainable list and the BatchNorm spec.
    fn refresh(&mut self) -> Result<()> {
        let mut params = Vec::new();
        let mut seen = HashSet::new();
        let mut spec = FitSpec::default();
        let nodes: Vec<(String, Op)> = self
            .torch
            .graph
            .nodes
            .iter()
            .map(|n| (n.layer.clone(), n.op.clone()))
            .collect();
        for (layer, op) in &nodes {
            let trainable = self.layer_trainable(layer);
            if matches!(op, Op::BatchNorm(_)) {
                spec.bn
                    .insert(layer.clone(), self.flavour.bn_train(trainable));
            }
            for slot in op.weight_slots() {
                let key = format!("{layer}.{slot}");
                if !seen.insert(key.clone()) {
                    continue; // shared layer
                }
                let var = self.torch.variable(layer, slot)?;
                let on = trainable && !NON_TRAINABLE_SLOTS.contains(&slot);
                let _ = var.set_requires_grad(on);
                if on {
                    params.push((key, var));
                }
            }
        }
        // Keras's order (`model.trainable_weights`): layers as the file lists them (nested
        // models expanded in place), each layer's weights in creation order.
        let rank: std::collections::HashMap<&str, usize> = self
            .torch
            .graph
            .layers
            .iter()
            .enumerate()
            .map(|(i, r)| (r.path.as_str(), i))
            .collect();
        let at = |key: &str| {
            let layer = key.rsplit_once('.').map_or(key, |(l, _)| l);
            rank.get(layer).copied().unwrap_or(usize::MAX)
        };
        params.sort_by_key(|(k, _)| at(k)); // stable: slots keep their order
        self.params = params;
        self.spec = spec;
        Ok(())
    }
}
