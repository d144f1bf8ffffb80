//! Mixed precision on CUDA (`finetune --amp`): the forward pass under libtorch's float16
//! autocast, the loss scaled so that small float16 gradients do not flush to zero, and
//! the scale managed as PyTorch's `torch.amp.GradScaler` does with its defaults (initial
//! scale 2^16, x2 after 2000 steps without an overflow, x0.5 and the step skipped on one).
//! The weights, the optimizer state and the update stay float32.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The loss scale and its growth counter: part of a run's checkpoint, so that a resumed
/// run scales as the uninterrupted one did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    /// Steps since the scale last changed without an overflow.
    pub growth_tracker: u32,
}

/// `GradScaler`'s defaults.
const INIT_SCALE: f64 = 65536.0;
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: u32 = 2000;

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: INIT_SCALE,
            growth_tracker: 0,
        }
    }
}

fn terr(what: &'static str) -> impl Fn(tch::TchError) -> Error {
    move |e| Error::Other(format!("amp ({what}): {e}"))
}

impl GradScaler {
    /// The loss times the scale (what is differentiated).
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        loss.f_mul_scalar(self.scale)
            .map_err(terr("scaling the loss"))
    }

    /// Divide `grads` by the scale in place (a float32 reciprocal, as PyTorch's unscale);
    /// whether every gradient is finite. One device-to-host transfer for all of them.
    pub fn unscale(&self, grads: &mut [Tensor]) -> Result<bool> {
        if grads.is_empty() {
            return Ok(true);
        }
        let inv = (1.0 / self.scale) as f32;
        let mut bad: Option<Tensor> = None;
        for g in grads.iter_mut() {
            let _ = g.f_mul_scalar_(f64::from(inv)).map_err(terr("unscaling"))?;
            let n = g
                .f_isfinite()
                .and_then(|f| f.f_logical_not())
                .and_then(|f| f.f_any())
                .map_err(terr("checking for overflow"))?;
            bad = Some(match bad {
                None => n,
                Some(b) => b.f_logical_or(&n).map_err(terr("checking for overflow"))?,
            });
        }
        let bad = bad
            .map(|b| b.f_int64_value(&[]))
            .transpose()
            .map_err(terr("checking for overflow"))?;
        Ok(bad != Some(1))
    }

    /// After a step: back off on an overflow (the step was skipped), grow after
    /// `GROWTH_INTERVAL` clean steps in a row.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_backs_off_and_clean_steps_grow() {
        let mut s = GradScaler::default();
        s.update(false);
        assert_eq!(s.scale, 32768.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!((s.scale, s.growth_tracker), (32768.0, GROWTH_INTERVAL - 1));
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
    }

    #[test]
    fn unscale_divides_and_finds_overflow() {
        let s = GradScaler::default();
        let mut g = vec![
            Tensor::from_slice(&[65536.0f32, -131072.0]),
            Tensor::from_slice(&[3.0f32 * 65536.0]),
        ];
        assert!(s.unscale(&mut g).unwrap());
        assert_eq!(Vec::<f32>::try_from(&g[0]).unwrap(), vec![1.0, -2.0]);
        assert_eq!(Vec::<f32>::try_from(&g[1]).unwrap(), vec![3.0]);
        for bad in [f32::INFINITY, f32::NAN] {
            let mut g = vec![
                Tensor::from_slice(&[1.0f32]),
                Tensor::from_slice(&[0.0f32, bad]),
            ];
            assert!(!s.unscale(&mut g).unwrap(), "{bad}");
        }
    }
}
