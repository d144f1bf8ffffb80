//! One Keras `train_on_batch`: the training-mode forward pass, Keras's categorical
//! cross-entropy with sample weights, the regularisation penalties, the gradients of the
//! trainable weights and the optimizer's update.

use super::{Flavour, GradScaler, Optimizer, Regularizers, TrainModel};
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Keras's `K.epsilon()`: the clipping bound of the cross-entropy on probabilities.
pub const KERAS_EPSILON: f64 = 1e-7;

/// What one step reports (all computed on the weights before the update, as Keras does).
#[derive(Debug)]
pub struct StepReport {
    /// The loss `train_on_batch` returns: weighted cross-entropy + penalties.
    pub loss: f64,
    /// The weighted cross-entropy alone.
    pub cross_entropy: f64,
    /// The regularisation penalties alone.
    pub penalty: f64,
    /// The model's training-mode output (Keras layout, detached).
    pub output: Tensor,
    /// Mixed precision only: a gradient overflowed, so the update was skipped (and the
    /// loss scale halved).
    pub skipped: bool,
    /// Where the step's time went (on a GPU, the host's view: kernels run asynchronously
    /// until the losses are read after the update is queued, so the device's own time
    /// shows in `update`; the sum is the step).
    pub seconds: StepSeconds,
}

/// Wall time of a training step's phases, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StepSeconds {
    /// The training-mode forward pass, the loss and the regularisation penalties.
    pub forward: f64,
    /// The gradients of the trainable weights.
    pub backward: f64,
    /// The optimizer's update (and BatchNorm nothing: its statistics move in the forward).
    pub update: f64,
}

impl std::ops::AddAssign for StepSeconds {
    fn add_assign(&mut self, o: StepSeconds) {
        self.forward += o.forward;
        self.backward += o.backward;
        self.update += o.update;
    }
}

fn terr(m: tch::TchError) -> Error {
    Error::Other(format!("tch: loss: {m}"))
}

/// Keras's weighted categorical cross-entropy of `probs` (N, ..., C) against one-hot `y`:
///
/// * [`Flavour::Keras2`]: `p = probs / sum(probs)`, clipped to `[1e-7, 1 - 1e-7]`,
///   `ce = -sum(y * log p)`; weighted as `_weighted_masked_objective`:
///   `mean(ce * w) / mean(w != 0)`.
/// * [`Flavour::TfKeras`]: from the softmax's `logits` when there are some
///   (`softmax_cross_entropy_with_logits`, no clipping), else as Keras 2; reduced
///   `sum(ce * w) / N` (`SUM_OVER_BATCH_SIZE`).
///
/// `w` (N,) defaults to ones. Returns a scalar in the autograd graph.
pub fn keras_loss(
    flavour: Flavour,
    probs: &Tensor,
    logits: Option<&Tensor>,
    y: &Tensor,
    w: Option<&Tensor>,
) -> Result<Tensor> {
    if probs.size() != y.size() {
        return Err(Error::Other(format!(
            "targets of shape {:?} for outputs of shape {:?}",
            y.size(),
            probs.size()
        )));
    }
    let y = y.f_to_kind(probs.kind()).map_err(terr)?;
    let from_logits = match (flavour, logits) {
        (Flavour::TfKeras, Some(z)) => Some(z),
        _ => None,
    };
    let log_p = match from_logits {
        Some(z) => z.f_log_softmax(-1, None::<Kind>).map_err(terr)?,
        None => probs
            .f_sum_dim_intlist(-1, true, None::<Kind>)
            .and_then(|s| probs.f_div(&s))
            .and_then(|p| p.f_clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON))
            .and_then(|p| p.f_log())
            .map_err(terr)?,
    };
    // ce per sample: -sum over the class axis (then mean over any axes between batch and
    // classes, as Keras reduces the score to the weights' rank).
    let mut ce = y
        .f_mul(&log_p)
        .and_then(|t| t.f_sum_dim_intlist(-1, false, None::<Kind>))
        .and_then(|t| t.f_neg())
        .map_err(terr)?;
    if ce.dim() > 1 {
        let dims: Vec<i64> = (1..ce.dim() as i64).collect();
        ce = ce
            .f_mean_dim(dims.as_slice(), false, None::<Kind>)
            .map_err(terr)?;
    }
    let n = ce.size()[0];
    let w = match w {
        Some(w) => {
            if w.size() != [n] {
                return Err(Error::Other(format!(
                    "sample weights of shape {:?} for a batch of {n}",
                    w.size()
                )));
            }
            Some(
                w.f_to_device_(ce.device(), ce.kind(), false, false)
                    .map_err(terr)?,
            )
        }
        None => None,
    };
    let Some(w) = w else {
        return ce.f_mean(None::<Kind>).map_err(terr);
    };
    let score = ce.f_mul(&w).map_err(terr)?;
    match flavour {
        Flavour::Keras2 { .. } => {
            let nonzero = w
                .f_ne(0.0)
                .and_then(|m| m.f_to_kind(ce.kind()))
                .and_then(|m| m.f_mean(None::<Kind>))
                .map_err(terr)?;
            score
                .f_div(&nonzero)
                .and_then(|s| s.f_mean(None::<Kind>))
                .map_err(terr)
        }
        Flavour::TfKeras => score
            .f_sum(None::<Kind>)
            .and_then(|s| s.f_div_scalar(n as f64))
            .map_err(terr),
    }
}

/// Keras's `class_weight` as per-sample weights: sample `i` of one-hot `y` gets
/// `class_weight[argmax y_i]`.
pub fn class_weights_to_sample(y: &Tensor, class_weight: &[f64]) -> Result<Tensor> {
    let labels = y
        .f_argmax(-1, false)
        .and_then(|t| t.f_to_device_(tch::Device::Cpu, Kind::Int64, false, false))
        .map_err(terr)?;
    let labels = Vec::<i64>::try_from(&labels.f_flatten(0, -1).map_err(terr)?).map_err(terr)?;
    let w = labels
        .iter()
        .map(|&l| {
            class_weight
                .get(l as usize)
                .map(|&w| w as f32)
                .ok_or_else(|| {
                    Error::Other(format!(
                        "class {l} has no class weight ({} given)",
                        class_weight.len()
                    ))
                })
        })
        .collect::<Result<Vec<f32>>>()?;
    Ok(Tensor::from_slice(&w).to_device(y.device()))
}

/// end2end-all-conv's `auto_batch_balance` (dm_image.py): each sample's weight is
/// 1 / (the fraction of the batch with its label).
pub fn auto_batch_balance(labels: &[i64]) -> Vec<f32> {
    let n = labels.len() as f32;
    labels
        .iter()
        .map(|l| {
            let c = labels.iter().filter(|k| *k == l).count() as f32;
            1.0 / (c / n)
        })
        .collect()
}

/// One `train_on_batch(x, y, sample_weight)`: forward in training mode, the loss
/// ([`keras_loss`] + `regs`' penalties, on the weights before the update), gradients of
/// [`TrainModel::params`], and `opt`'s update. BatchNorm moving statistics are updated
/// by the forward pass.
///
/// With `scaler`, in mixed precision (see [`super::amp`]): the forward pass under float16
/// autocast (CUDA only; elsewhere it runs as is), the loss and its penalties in float32,
/// the gradients of the scaled loss unscaled before the update, and the update skipped
/// when one of them overflowed (`StepReport::skipped`).
pub fn train_step(
    model: &TrainModel,
    regs: &Regularizers,
    opt: &mut Optimizer,
    x: &[Tensor],
    y: &Tensor,
    sample_weight: Option<&Tensor>,
    scaler: Option<&mut GradScaler>,
) -> Result<StepReport> {
    let amp = scaler.is_some();
    let start = std::time::Instant::now();
    // Without a scaler, libtorch's autocast state is left alone.
    let out = if amp {
        tch::autocast(true, || model.forward(x))?
    } else {
        model.forward(x)?
    };
    if out.outputs.len() != 1 {
        return Err(Error::Other(format!(
            "training needs a single-output model, this one has {}",
            out.outputs.len()
        )));
    }
    // Under autocast the outputs may be float16: the loss is computed in float32.
    let widen = |t: &Tensor| {
        if amp {
            t.f_to_kind(Kind::Float)
        } else {
            Ok(t.shallow_clone())
        }
    };
    let probs = widen(&out.outputs[0]).map_err(terr)?;
    let logits = out.logits[0]
        .as_ref()
        .map(widen)
        .transpose()
        .map_err(terr)?;
    let y = y
        .f_to_device_(probs.device(), probs.kind(), false, false)
        .map_err(terr)?;
    let ce = keras_loss(model.flavour, &probs, logits.as_ref(), &y, sample_weight)?;
    let penalty = regs.penalty(&model.torch)?;
    let total = ce.f_add(&penalty).map_err(terr)?;
    let forward_done = std::time::Instant::now();
    let params = model.params();
    let vars: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
    let differentiated = match &scaler {
        Some(s) => s.scale_loss(&total)?,
        None => total.shallow_clone(),
    };
    let mut grads = if vars.is_empty() {
        Vec::new()
    } else {
        Tensor::f_run_backward(&[&differentiated], &vars, false, false).map_err(terr)?
    };
    let finite = match &scaler {
        Some(s) => s.unscale(&mut grads)?,
        None => true,
    };
    // The three losses are read back in one copy, after the update is queued: on a GPU
    // the host then waits once per step, with the device busy, instead of draining it
    // before the update (on the CPU every kernel has already run; nothing changes).
    let losses = [&total, &ce, &penalty]
        .iter()
        .map(|t| t.f_detach().and_then(|t| t.f_to_kind(Kind::Double)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .and_then(|ts| Tensor::f_stack(&ts, 0))
        .map_err(terr)?;
    let backward_done = std::time::Instant::now();
    if finite {
        opt.step(params, &grads)?;
    }
    if let Some(s) = scaler {
        s.update(finite);
    }
    let losses = losses
        .f_to_device(tch::Device::Cpu)
        .and_then(|t| Vec::<f64>::try_from(&t))
        .map_err(terr)?;
    Ok(StepReport {
        loss: losses[0],
        cross_entropy: losses[1],
        penalty: losses[2],
        output: probs.f_detach().map_err(terr)?,
        skipped: !finite,
        seconds: StepSeconds {
            forward: (forward_done - start).as_secs_f64(),
            backward: (backward_done - forward_done).as_secs_f64(),
            update: backward_done.elapsed().as_secs_f64(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_balance_is_inverse_frequency() {
        assert_eq!(
            auto_batch_balance(&[0, 1, 0, 0]),
            vec![4.0 / 3.0, 4.0, 4.0 / 3.0, 4.0 / 3.0]
        );
    }

    #[test]
    fn keras2_loss_clips_and_normalises_weights() {
        let p = Tensor::from_slice(&[0.0f32, 1.0, 0.25, 0.75]).reshape([2, 2]);
        let y = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).reshape([2, 2]);
        let w = Tensor::from_slice(&[2.0f32, 0.0]);
        let k2 = Flavour::Keras2 { theano: true };
        let l = keras_loss(k2, &p, None, &y, Some(&w))
            .unwrap()
            .double_value(&[]);
        // sample 0: -log(1e-7) * 2; sample 1 weight 0; mean = that / 2; / mean(w != 0) = 0.5
        let want = -(1e-7f64).ln() * 2.0 / 2.0 / 0.5;
        assert!((l - want).abs() < 1e-4 * want, "{l} vs {want}");
        let tf = keras_loss(Flavour::TfKeras, &p, None, &y, Some(&w))
            .unwrap()
            .double_value(&[]);
        assert!((tf - -(1e-7f64).ln()).abs() < 1e-4 * tf, "{tf}");
    }
}
