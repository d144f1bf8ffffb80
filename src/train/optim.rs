//! Keras's optimizers on tch tensors, with the update rules, epsilons and defaults of the
//! Keras being reproduced ([`Flavour`]): Keras 2.0.8's `keras/optimizers.py` and tf-keras
//! 2.x's `tf_keras/src/optimizers/*.py` (the new, non-legacy classes). Where they agree
//! the code is shared; where they differ it says so.
//!
//! Update of one parameter `p` with gradient `g` at step `t = iterations + 1` (`lr` after
//! Keras 2.0.8's `decay`: `lr / (1 + decay * iterations)`):
//!
//! | rule | both | Keras 2.0.8 | tf-keras |
//! |---|---|---|---|
//! | SGD | `m = mu*m - lr*g`; `p += m`, nesterov `p += mu*m - lr*g` | | |
//! | RMSprop | `a = rho*a + (1-rho)*g^2` | `p -= lr*g / (sqrt(a) + eps)` | `p -= lr*g / sqrt(a + eps)` |
//! | Adagrad | `a += g^2` | `a0 = 0`, `p -= lr*g / (sqrt(a) + eps)` | `a0 = 0.1`, `p -= lr*g / sqrt(a + eps)` |
//! | Adadelta | `a = rho*a + (1-rho)*g^2`; `u = g*sqrt(d+eps)/sqrt(a+eps)`; `p -= lr*u`; `d = rho*d + (1-rho)*u^2` | | |
//! | Adam | `m = b1*m + (1-b1)*g`; `v = b2*v + (1-b2)*g^2`; `p -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)` | | |
//! | Adamax | `m` as Adam; `u = max(b2*u, abs(g))`; `p -= lr/(1-b1^t) * m / (u + eps)` | | |
//! | Nadam | `mu_t = b1*(1 - 0.5*0.96^(t*sd))`, `P_t = P_{t-1}*mu_t`; `p -= lr*((1-mu_t)*g/(1-P_t) + mu_{t+1}*m/(1-P_t*mu_{t+1})) / (sqrt(v/(1-b2^t)) + eps)` | `sd = schedule_decay` (0.004) | `sd = 1` |
//!
//! Defaults: epsilon 1e-8 (Keras 2.0.8) / 1e-7 (tf-keras); learning rates SGD 0.01, RMSprop
//! and Adam 0.001 in both; Adagrad 0.01 / 0.001; Adadelta 1.0 / 0.001; Adamax and Nadam
//! 0.002 / 0.001.

use super::Flavour;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// An update rule and its hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Sgd {
        lr: f64,
        momentum: f64,
        nesterov: bool,
        /// Keras 2.0.8's time decay `lr / (1 + decay * iterations)` (0: off).
        decay: f64,
    },
    RmsProp {
        lr: f64,
        rho: f64,
        epsilon: f64,
        decay: f64,
    },
    Adagrad {
        lr: f64,
        epsilon: f64,
        decay: f64,
        /// Starting value of the accumulator (Keras 2.0.8: 0, tf-keras: 0.1).
        initial_accumulator: f64,
    },
    Adadelta {
        lr: f64,
        rho: f64,
        epsilon: f64,
        decay: f64,
    },
    Adam {
        lr: f64,
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
        decay: f64,
    },
    Adamax {
        lr: f64,
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
        decay: f64,
    },
    Nadam {
        lr: f64,
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
        /// The momentum schedule's exponent scale: 0.004 in Keras 2.0.8, 1 in tf-keras.
        schedule_decay: f64,
    },
}

/// The optimizer names of end2end-all-conv's `--optimizer`.
pub const NAMES: [&str; 7] = [
    "sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamax", "nadam",
];

impl Rule {
    /// The Keras class's defaults in `flavour`, with `lr` when given.
    pub fn defaults(name: &str, lr: Option<f64>, flavour: Flavour) -> Result<Rule> {
        let tfk = flavour == Flavour::TfKeras;
        let eps = if tfk { 1e-7 } else { 1e-8 };
        let lr_or = |keras2: f64, tf: f64| lr.unwrap_or(if tfk { tf } else { keras2 });
        Ok(match name.to_ascii_lowercase().as_str() {
            "sgd" => Rule::Sgd {
                lr: lr_or(0.01, 0.01),
                momentum: 0.0,
                nesterov: false,
                decay: 0.0,
            },
            "rmsprop" => Rule::RmsProp {
                lr: lr_or(0.001, 0.001),
                rho: 0.9,
                epsilon: eps,
                decay: 0.0,
            },
            "adagrad" => Rule::Adagrad {
                lr: lr_or(0.01, 0.001),
                epsilon: eps,
                decay: 0.0,
                initial_accumulator: if tfk { 0.1 } else { 0.0 },
            },
            "adadelta" => Rule::Adadelta {
                lr: lr_or(1.0, 0.001),
                rho: 0.95,
                epsilon: eps,
                decay: 0.0,
            },
            "adam" => Rule::Adam {
                lr: lr_or(0.001, 0.001),
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: eps,
                decay: 0.0,
            },
            "adamax" => Rule::Adamax {
                lr: lr_or(0.002, 0.001),
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: eps,
                decay: 0.0,
            },
            "nadam" => Rule::Nadam {
                lr: lr_or(0.002, 0.001),
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: eps,
                schedule_decay: if tfk { 1.0 } else { 0.004 },
            },
            _ => {
                return Err(Error::Other(format!(
                    "unknown optimizer {name:?}: {}",
                    NAMES.join(", ")
                )))
            }
        })
    }

    /// end2end-all-conv's `create_optimizer(name, lr)`: `sgd` is SGD with momentum 0.9 and
    /// Nesterov, the others the Keras class with only the learning rate given.
    pub fn paper(name: &str, lr: f64, flavour: Flavour) -> Result<Rule> {
        match Rule::defaults(name, Some(lr), flavour)? {
            Rule::Sgd { lr, decay, .. } => Ok(Rule::Sgd {
                lr,
                momentum: 0.9,
                nesterov: true,
                decay,
            }),
            r => Ok(r),
        }
    }

    pub fn lr(&self) -> f64 {
        match *self {
            Rule::Sgd { lr, .. }
            | Rule::RmsProp { lr, .. }
            | Rule::Adagrad { lr, .. }
            | Rule::Adadelta { lr, .. }
            | Rule::Adam { lr, .. }
            | Rule::Adamax { lr, .. }
            | Rule::Nadam { lr, .. } => lr,
        }
    }

    fn lr_mut(&mut self) -> &mut f64 {
        match self {
            Rule::Sgd { lr, .. }
            | Rule::RmsProp { lr, .. }
            | Rule::Adagrad { lr, .. }
            | Rule::Adadelta { lr, .. }
            | Rule::Adam { lr, .. }
            | Rule::Adamax { lr, .. }
            | Rule::Nadam { lr, .. } => lr,
        }
    }

    fn decay(&self) -> f64 {
        match *self {
            Rule::Sgd { decay, .. }
            | Rule::RmsProp { decay, .. }
            | Rule::Adagrad { decay, .. }
            | Rule::Adadelta { decay, .. }
            | Rule::Adam { decay, .. }
            | Rule::Adamax { decay, .. } => decay,
            Rule::Nadam { .. } => 0.0,
        }
    }

    /// The Keras class name.
    pub fn class(&self) -> &'static str {
        match self {
            Rule::Sgd { .. } => "SGD",
            Rule::RmsProp { .. } => "RMSprop",
            Rule::Adagrad { .. } => "Adagrad",
            Rule::Adadelta { .. } => "Adadelta",
            Rule::Adam { .. } => "Adam",
            Rule::Adamax { .. } => "Adamax",
            Rule::Nadam { .. } => "Nadam",
        }
    }

    /// Per-parameter state slots, named as tf-keras names them.
    pub fn slots(&self) -> &'static [&'static str] {
        match self {
            Rule::Sgd { .. } => &["m"],
            Rule::RmsProp { .. } => &["velocity"],
            Rule::Adagrad { .. } => &["accumulator"],
            Rule::Adadelta { .. } => &["accumulated_grad", "accumulated_delta_var"],
            Rule::Adam { .. } | Rule::Nadam { .. } => &["m", "v"],
            Rule::Adamax { .. } => &["m", "u"],
        }
    }
}

/// An optimizer: a [`Rule`], the flavour whose arithmetic it follows, and its state.
pub struct Optimizer {
    pub rule: Rule,
    pub flavour: Flavour,
    /// Completed steps (Keras's `iterations`).
    iterations: i64,
    /// Nadam's momentum-schedule product (Keras 2.0.8 `m_schedule`, tf-keras `u_product`).
    u_product: f64,
    /// tf-keras Nadam only: the `_u_product_counter` value of the first variable in the
    /// traced training function. tf-keras caches the product per step with a Python-side
    /// counter that is incremented while `tf.function` traces (once per variable and
    /// trace), so in the graph variable `i` compares the constant `base + i` with
    /// `iterations + 2` and multiplies the product by `mu_t` whenever they differ: the
    /// product advances once per variable, not once per step. `train_on_batch` traces
    /// twice, so the graph it runs holds `base = 1 + n` for `n` trainable variables
    /// (measured with tf-keras 2.21: `fixtures/train_step/tfk_nadam_balance`, and the
    /// cached step `it = base + i - 2` on a 4-variable model). Set on the first step.
    nadam_counter_base: Option<i64>,
    /// Param key -> one tensor per [`Rule::slots`] entry.
    slots: BTreeMap<String, Vec<Tensor>>,
}

fn terr(m: tch::TchError) -> Error {
    Error::Other(format!("tch: optimizer: {m}"))
}

impl Optimizer {
    pub fn new(rule: Rule, flavour: Flavour) -> Optimizer {
        Optimizer {
            rule,
            flavour,
            iterations: 0,
            u_product: 1.0,
            nadam_counter_base: None,
            slots: BTreeMap::new(),
        }
    }

    /// end2end-all-conv's `create_optimizer(name, lr)` in `flavour` ([`Rule::paper`]).
    pub fn paper(name: &str, lr: f64, flavour: Flavour) -> Result<Optimizer> {
        Ok(Optimizer::new(Rule::paper(name, lr, flavour)?, flavour))
    }

    pub fn lr(&self) -> f64 {
        self.rule.lr()
    }

    /// Change the learning rate (ReduceLROnPlateau), state kept.
    pub fn set_lr(&mut self, lr: f64) {
        *self.rule.lr_mut() = lr;
    }

    pub fn iterations(&self) -> i64 {
        self.iterations
    }

    /// One update of every `(key, variable)` with its gradient (same order), in place and
    /// outside the autograd graph. An undefined gradient (a weight the loss does not
    /// reach) leaves that weight and its state alone, as tf-keras skips it.
    pub fn step(&mut self, params: &[(String, Tensor)], grads: &[Tensor]) -> Result<()> {
        if params.len() != grads.len() {
            return Err(Error::Other(format!(
                "optimizer: {} parameters but {} gradients",
                params.len(),
                grads.len()
            )));
        }
        let _guard = tch::no_grad_guard();
        let t = (self.iterations + 1) as f64;
        let keras2 = matches!(self.flavour, Flavour::Keras2 { .. });
        let decay = self.rule.decay();
        // Keras 2.0.8: lr / (1 + decay * iterations), iterations before this step.
        let lr_t = self.rule.lr() / (1.0 + decay * self.iterations as f64);
        // Nadam's momentum schedule: mu_t, mu_{t+1}, and the running product.
        let nadam_mu = match self.rule {
            Rule::Nadam {
                beta_1,
                schedule_decay,
                ..
            } => {
                let mu = |s: f64| beta_1 * (1.0 - 0.5 * 0.96f64.powf(s * schedule_decay));
                Some((mu(t), mu(t + 1.0)))
            }
            _ => None,
        };
        // tf-keras multiplies the product once per *variable* update, skipping only the
        // variable whose trace-time counter equals `iterations + 2` (see
        // [`Optimizer::nadam_counter_base`]); Keras 2.0.8 once per step.
        if nadam_mu.is_some() && !keras2 && self.nadam_counter_base.is_none() {
            self.nadam_counter_base = Some(1 + params.len() as i64);
        }
        let mut product = self.u_product;
        if let (Some((mu_t, _)), true) = (nadam_mu, keras2) {
            product *= mu_t;
        }
        for (i, ((key, p), g)) in params.iter().zip(grads).enumerate() {
            if !g.defined() {
                continue;
            }
            let g = g.f_to_kind(p.kind()).map_err(terr)?;
            let names = self.rule.slots();
            let st = match self.slots.get_mut(key) {
                Some(s) => s,
                None => {
                    let init = match self.rule {
                        Rule::Adagrad {
                            initial_accumulator,
                            ..
                        } => initial_accumulator,
                        _ => 0.0,
                    };
                    let mut v = Vec::new();
                    for (i, _) in names.iter().enumerate() {
                        let z = p.f_zeros_like().map_err(terr)?;
                        v.push(if i == 0 && init != 0.0 {
                            z.f_add_scalar(init).map_err(terr)?
                        } else {
                            z
                        });
                    }
                    self.slots.entry(key.clone()).or_insert(v)
                }
            };
            if st.len() != names.len() || st.iter().any(|s| s.size() != p.size()) {
                return Err(Error::Other(format!(
                    "optimizer state of {key} does not fit the parameter {:?}",
                    p.size()
                )));
            }
            let nadam = match nadam_mu {
                Some((mu_t, mu_t1)) => {
                    if !keras2 {
                        let base = self.nadam_counter_base.unwrap_or(1);
                        if base + i as i64 != self.iterations + 2 {
                            product *= mu_t;
                        }
                    }
                    Some((mu_t, mu_t1, product, product * mu_t1))
                }
                None => None,
            };
            update(&self.rule, keras2, lr_t, t, nadam, p, &g, st).map_err(terr)?;
        }
        if nadam_mu.is_some() {
            self.u_product = product;
        }
        self.iterations += 1;
        Ok(())
    }

    /// The state as named tensors, for a checkpoint: `iterations` (int64 scalar), Nadam's
    /// `u_product` (and, tf-keras, `nadam_counter_base`), and `{slot}/{param key}` per
    /// parameter (`m/dense.kernel`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("iterations".to_string(), Tensor::from(self.iterations))];
        if matches!(self.rule, Rule::Nadam { .. }) {
            out.push(("u_product".into(), Tensor::from(self.u_product)));
            if let Some(b) = self.nadam_counter_base {
                out.push(("nadam_counter_base".into(), Tensor::from(b)));
            }
        }
        let names = self.rule.slots();
        for (key, st) in &self.slots {
            for (n, t) in names.iter().zip(st) {
                out.push((format!("{n}/{key}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Restore what [`Optimizer::state`] returned (for the same rule); replaces the
    /// current state.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let names = self.rule.slots();
        let mut slots: BTreeMap<String, Vec<Option<Tensor>>> = BTreeMap::new();
        let mut iterations = None;
        let mut u_product = 1.0;
        let mut counter_base = None;
        for (name, t) in state {
            let scalar = || -> Result<f64> {
                if t.numel() != 1 {
                    return Err(Error::Other(format!(
                        "optimizer state {name}: not a scalar"
                    )));
                }
                t.f_double_value(&[]).map_err(terr)
            };
            match name.as_str() {
                "iterations" => iterations = Some(scalar()? as i64),
                "u_product" => u_product = scalar()?,
                "nadam_counter_base" => counter_base = Some(scalar()? as i64),
                _ => {
                    let (slot, key) = name.split_once('/').ok_or_else(|| {
                        Error::Other(format!("optimizer state {name:?}: expected slot/param"))
                    })?;
                    let i = names.iter().position(|n| *n == slot).ok_or_else(|| {
                        Error::Other(format!(
                            "optimizer state {name:?}: {} has no slot {slot:?} (it has {names:?})",
                            self.rule.class()
                        ))
                    })?;
                    let e = slots
                        .entry(key.to_string())
                        .or_insert_with(|| (0..names.len()).map(|_| None).collect());
                    e[i] = Some(
                        t.f_detach()
                            .and_then(|t| t.f_contiguous())
                            .map_err(terr)?
                            .copy(),
                    );
                }
            }
        }
        let mut done = BTreeMap::new();
        for (key, v) in slots {
            let v: Option<Vec<Tensor>> = v.into_iter().collect();
            let v = v.ok_or_else(|| {
                Error::Other(format!("optimizer state of {key}: a slot is missing"))
            })?;
            done.insert(key, v);
        }
        self.iterations =
            iterations.ok_or_else(|| Error::Other("optimizer state: no `iterations`".into()))?;
        self.u_product = u_product;
        self.nadam_counter_base = counter_base;
        self.slots = done;
        Ok(())
    }

    /// Move the state to the parameters' device and kind (after loading a checkpoint).
    pub fn to(&mut self, device: tch::Device, kind: Kind) -> Result<()> {
        for st in self.slots.values_mut() {
            for t in st.iter_mut() {
                *t = t.f_to_device_(device, kind, false, false).map_err(terr)?;
            }
        }
        Ok(())
    }
}

/// Keras's moving average of a slot: `a * beta + x * (1 - beta)`.
fn ema(a: &Tensor, x: &Tensor, beta: f64) -> std::result::Result<Tensor, tch::TchError> {
    a.f_mul_scalar(beta)?.f_add(&x.f_mul_scalar(1.0 - beta)?)
}

/// Keras's Adam step, operation for operation (so the same floats), with the moments and
/// the weight overwritten in place: three temporaries per weight instead of nine (the
/// update was 6-9% of a narrow model's training step at batch 2).
fn adam_in_place(
    p: &Tensor,
    g: &Tensor,
    st: &mut [Tensor],
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    lr_t: f64,
) -> std::result::Result<(), tch::TchError> {
    let (mut m, mut v) = (st[0].shallow_clone(), st[1].shallow_clone());
    // m = m * beta_1 + g * (1 - beta_1); v = v * beta_2 + g^2 * (1 - beta_2)
    let _ = m.f_mul_scalar_(beta_1)?;
    let _ = m.f_add_(&g.f_mul_scalar(1.0 - beta_1)?)?;
    let _ = v.f_mul_scalar_(beta_2)?;
    let _ = v.f_add_(&g.f_square()?.f_mul_scalar_(1.0 - beta_2)?)?;
    // p = p - m * lr_t / (sqrt(v) + epsilon)
    let mut den = v.f_sqrt()?;
    let _ = den.f_add_scalar_(epsilon)?;
    let mut step = m.f_mul_scalar(lr_t)?;
    let _ = step.f_div_(&den)?;
    let _ = p.shallow_clone().f_sub_(&step)?;
    Ok(())
}

/// One rule's update of `p` and its slots `st`, written into them.
#[allow(clippy::too_many_arguments)]
fn update(
    rule: &Rule,
    keras2: bool,
    lr: f64,
    t: f64,
    nadam: Option<(f64, f64, f64, f64)>,
    p: &Tensor,
    g: &Tensor,
    st: &mut [Tensor],
) -> std::result::Result<(), tch::TchError> {
    let new_p = match *rule {
        Rule::Sgd {
            momentum, nesterov, ..
        } => {
            // v = momentum * m - lr * g
            let lg = g.f_mul_scalar(lr)?;
            let v = st[0].f_mul_scalar(momentum)?.f_sub(&lg)?;
            let new_p = if nesterov {
                p.f_add(&v.f_mul_scalar(momentum)?)?.f_sub(&lg)?
            } else {
                p.f_add(&v)?
            };
            st[0] = v;
            new_p
        }
        Rule::RmsProp { rho, epsilon, .. } => {
            let a = ema(&st[0], &g.f_square()?, rho)?;
            let den = if keras2 {
                a.f_sqrt()?.f_add_scalar(epsilon)?
            } else {
                a.f_add_scalar(epsilon)?.f_sqrt()?
            };
            let new_p = p.f_sub(&g.f_mul_scalar(lr)?.f_div(&den)?)?;
            st[0] = a;
            new_p
        }
        Rule::Adagrad { epsilon, .. } => {
            let a = st[0].f_add(&g.f_square()?)?;
            let den = if keras2 {
                a.f_sqrt()?.f_add_scalar(epsilon)?
            } else {
                a.f_add_scalar(epsilon)?.f_sqrt()?
            };
            let new_p = p.f_sub(&g.f_mul_scalar(lr)?.f_div(&den)?)?;
            st[0] = a;
            new_p
        }
        Rule::Adadelta { rho, epsilon, .. } => {
            let a = ema(&st[0], &g.f_square()?, rho)?;
            let u = g
                .f_mul(&st[1].f_add_scalar(epsilon)?.f_sqrt()?)?
                .f_div(&a.f_add_scalar(epsilon)?.f_sqrt()?)?;
            let new_p = p.f_sub(&u.f_mul_scalar(lr)?)?;
            let d = ema(&st[1], &u.f_square()?, rho)?;
            st[0] = a;
            st[1] = d;
            new_p
        }
        Rule::Adam {
            beta_1,
            beta_2,
            epsilon,
            ..
        } => {
            let lr_t = lr * (1.0 - beta_2.powf(t)).sqrt() / (1.0 - beta_1.powf(t));
            return adam_in_place(p, g, st, beta_1, beta_2, epsilon, lr_t);
        }
        Rule::Adamax {
            beta_1,
            beta_2,
            epsilon,
            ..
        } => {
            let m = ema(&st[0], g, beta_1)?;
            let u = st[1].f_mul_scalar(beta_2)?.f_maximum(&g.f_abs()?)?;
            let lr_t = lr / (1.0 - beta_1.powf(t));
            let new_p = p.f_sub(&m.f_mul_scalar(lr_t)?.f_div(&u.f_add_scalar(epsilon)?)?)?;
            st[0] = m;
            st[1] = u;
            new_p
        }
        Rule::Nadam {
            beta_1,
            beta_2,
            epsilon,
            ..
        } => {
            let (mu_t, mu_t1, p_t, p_t1) = nadam.unwrap_or((0.0, 0.0, 0.0, 0.0));
            let m = ema(&st[0], g, beta_1)?;
            let v = ema(&st[1], &g.f_square()?, beta_2)?;
            let m_bar = g
                .f_mul_scalar((1.0 - mu_t) / (1.0 - p_t))?
                .f_add(&m.f_mul_scalar(mu_t1 / (1.0 - p_t1))?)?;
            let v_hat = v.f_mul_scalar(1.0 / (1.0 - beta_2.powf(t)))?;
            let new_p = p.f_sub(
                &m_bar
                    .f_mul_scalar(lr)?
                    .f_div(&v_hat.f_sqrt()?.f_add_scalar(epsilon)?)?,
            )?;
            st[0] = m;
            st[1] = v;
            new_p
        }
    };
    p.shallow_clone().f_copy_(&new_p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rule: Rule, flavour: Flavour, p0: f32, g: f32, steps: usize) -> f32 {
        let mut o = Optimizer::new(rule, flavour);
        let p = Tensor::from_slice(&[p0]);
        let params = vec![("w.kernel".to_string(), p.shallow_clone())];
        for _ in 0..steps {
            o.step(&params, &[Tensor::from_slice(&[g])]).unwrap();
        }
        p.double_value(&[0]) as f32
    }

    /// Hand-computed first steps of each rule (scalar parameter 1.0, gradient 0.5).
    #[test]
    fn first_steps_by_hand() {
        let k2 = Flavour::Keras2 { theano: true };
        let tf = Flavour::TfKeras;
        let close = |a: f32, b: f64| assert!((a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        // SGD nesterov: v = -0.01*0.5; p = 1 + 0.9*v - 0.005
        close(
            run(Rule::paper("sgd", 0.01, k2).unwrap(), k2, 1.0, 0.5, 1),
            1.0 - 0.0045 - 0.005,
        );
        // Adam step 1: p -= lr * g/|g| (up to eps)
        close(
            run(Rule::paper("adam", 0.01, tf).unwrap(), tf, 1.0, 0.5, 1),
            0.99,
        );
        // Adagrad: Keras 2.0.8 a = 0.25, p -= 0.01*0.5/0.5; tf-keras a = 0.35
        close(
            run(Rule::paper("adagrad", 0.01, k2).unwrap(), k2, 1.0, 0.5, 1),
            0.99,
        );
        close(
            run(Rule::paper("adagrad", 0.01, tf).unwrap(), tf, 1.0, 0.5, 1),
            1.0 - 0.005 / (0.35f64 + 1e-7).sqrt(),
        );
        // RMSprop: a = 0.1*0.25
        close(
            run(Rule::paper("rmsprop", 0.01, k2).unwrap(), k2, 1.0, 0.5, 1),
            1.0 - 0.005 / (0.025f64.sqrt() + 1e-8),
        );
    }

    #[test]
    fn state_round_trip() {
        let k2 = Flavour::Keras2 { theano: false };
        let mut o = Optimizer::paper("nadam", 0.01, k2).unwrap();
        let p = Tensor::from_slice(&[1.0f32, 2.0]);
        let params = vec![("d.kernel".to_string(), p.shallow_clone())];
        o.step(&params, &[Tensor::from_slice(&[0.1f32, -0.2])])
            .unwrap();
        let st = o.state();
        let mut o2 = Optimizer::paper("nadam", 0.01, k2).unwrap();
        o2.load_state(&st).unwrap();
        assert_eq!(o2.iterations(), 1);
        let q = p.copy();
        let qs = vec![("d.kernel".to_string(), q.shallow_clone())];
        o.step(&params, &[Tensor::from_slice(&[0.3f32, 0.1])])
            .unwrap();
        o2.step(&qs, &[Tensor::from_slice(&[0.3f32, 0.1])]).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&p).unwrap(),
            Vec::<f32>::try_from(&q).unwrap()
        );
        assert!(o2
            .load_state(&[("bogus/x".into(), Tensor::from(1.0))])
            .is_err());
    }
}
