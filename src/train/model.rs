//! A [`TorchModel`] set up for training: gradients on the weights Keras would train, the
//! BatchNorm behaviour of the chosen [`Flavour`], and a freeze set for stage 1.

use super::Flavour;
use crate::error::{Error, Result};
use crate::ir::{Graph, Op};
use crate::torch::{FitOutputs, FitSpec, TorchModel};
use std::collections::{BTreeMap, HashSet};
use tch::{Device, Tensor};

/// Weight slots that never train (BatchNorm's moving statistics).
pub const NON_TRAINABLE_SLOTS: [&str; 2] = ["moving_mean", "moving_variance"];

/// The model being trained. Its weights are the [`TorchModel`]'s VarStore variables
/// (trained in place); [`TorchModel::keras_params`] reads them back in Keras layout.
pub struct TrainModel {
    pub torch: TorchModel,
    pub flavour: Flavour,
    /// Top-level layers whose `trainable` flag is set, replacing the file's (the
    /// schedule's assignments, or a freeze).
    assigned: BTreeMap<String, bool>,
    spec: FitSpec,
    /// `(param key "{layer}.{slot}", variable)` of every weight that trains now, in
    /// Keras's `trainable_weights` order.
    params: Vec<(String, Tensor)>,
}

impl TrainModel {
    /// Load `graph`'s weights on `device` and set them up for training with `flavour`'s
    /// semantics; nothing is frozen beyond the layers the file marks `trainable: false`.
    pub fn new(graph: &Graph, device: Device, flavour: Flavour) -> Result<TrainModel> {
        let torch = TorchModel::new(graph, device)?;
        let mut m = TrainModel {
            torch,
            flavour,
            assigned: BTreeMap::new(),
            spec: FitSpec::default(),
            params: Vec::new(),
        };
        m.refresh()?;
        Ok(m)
    }

    pub fn graph(&self) -> &Graph {
        &self.torch.graph
    }

    /// Freeze exactly these top-level layers (a nested model freezes every layer in it),
    /// every other layer keeping the file's flag; an empty list restores the file's flags.
    /// Every name must be a top-level layer of the model.
    pub fn set_frozen<S: AsRef<str>>(&mut self, layers: &[S]) -> Result<()> {
        self.set_assigned(
            layers
                .iter()
                .map(|l| (l.as_ref().to_string(), false))
                .collect(),
        )
    }

    /// Set the `trainable` flag of these top-level layers, as Keras's
    /// `layer.trainable = value` does; the others keep the file's.
    pub fn set_assigned(&mut self, assigned: BTreeMap<String, bool>) -> Result<()> {
        for l in assigned.keys() {
            if !self
                .torch
                .graph
                .layers
                .iter()
                .any(|r| r.depth == 0 && r.path == *l)
            {
                return Err(Error::Other(format!(
                    "cannot set {l:?} trainable or frozen: the model has no such top-level layer"
                )));
            }
        }
        self.assigned = assigned;
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

    /// The top-level layers whose flag is set to `false` now.
    pub fn frozen(&self) -> impl Iterator<Item = &str> {
        self.assigned
            .iter()
            .filter(|(_, t)| !**t)
            .map(|(l, _)| l.as_str())
    }

    /// Whether layer `path` trains now: every layer on its path (itself and the nested
    /// models around it) is trainable, the top-level one by its assigned flag if it has
    /// one, the others by the file's. In tf-keras an assignment to a nested model also
    /// sets every layer inside it (its `trainable` setter recurses), so there an assigned
    /// top-level flag decides alone; Keras 2.0.8's setter sets the model's own flag only.
    pub fn layer_trainable(&self, path: &str) -> bool {
        let layers = &self.torch.graph.layers;
        let own = |p: &str| {
            layers
                .iter()
                .find(|r| r.path == p)
                .is_none_or(|r| r.own_trainable)
        };
        let mut chain: Vec<&str> = path
            .match_indices('/')
            .map(|(i, _)| &path[..i])
            .filter(|p| layers.iter().any(|r| r.path == *p))
            .collect();
        chain.push(path);
        if self.flavour == Flavour::TfKeras {
            if let Some(&t) = self.assigned.get(chain[0]) {
                return t;
            }
        }
        chain
            .iter()
            .enumerate()
            .all(|(i, p)| match self.assigned.get(*p) {
                Some(&t) if i == 0 => t,
                _ => own(p),
            })
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
