//! Shapes with symbolic height and width.
//!
//! A fully convolutional patch classifier has input `(None, None, 3)`: its spatial dims
//! stay symbols (`H`, `W`) and every op derives a readable expression (`ceil(H/2)`), so
//! `inspect` shows how sizes flow; a concrete size is a re-run of the inference with
//! numbers. Shapes exclude the batch axis.

use super::op::{DataFormat, Padding};
use crate::error::{Error, Result};
use serde::{Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(usize),
    /// A symbolic size, held as its printable expression in the input symbols.
    Sym(String),
}

pub type Shape = Vec<Dim>;

impl Dim {
    pub fn sym(s: impl Into<String>) -> Dim {
        Dim::Sym(s.into())
    }

    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    fn expr(&self) -> String {
        match self {
            Dim::Known(n) => n.to_string(),
            Dim::Sym(s) if s.chars().all(|c| c.is_alphanumeric() || c == '_') => s.clone(),
            Dim::Sym(s) => format!("({s})"),
        }
    }

    /// Output size of a sliding window (conv or pool) along one axis, as Keras computes it.
    /// Sizes come from files: zero or oversized windows are errors, never a panic.
    pub fn window(&self, k: usize, s: usize, d: usize, padding: Padding) -> Result<Dim> {
        if k == 0 || s == 0 || d == 0 {
            return Err(Error::graph(format!(
                "window {k}, stride {s}, dilation {d}: all must be positive"
            )));
        }
        let eff = dilated_window(k, d)?;
        Ok(match (self, padding) {
            (Dim::Known(n), Padding::Same | Padding::Causal) => Dim::Known(n.div_ceil(s)),
            (Dim::Known(n), Padding::Valid) => {
                if *n < eff {
                    return Err(Error::graph(format!(
                        "window of {eff} does not fit in a dimension of {n}"
                    )));
                }
                Dim::Known((n - eff) / s + 1)
            }
            (Dim::Sym(_), Padding::Same | Padding::Causal) if s == 1 => self.clone(),
            (Dim::Sym(_), Padding::Same | Padding::Causal) => {
                Dim::Sym(format!("ceil({}/{s})", self.expr()))
            }
            (Dim::Sym(_), Padding::Valid) if s == 1 => {
                Dim::Sym(format!("{}-{}", self.expr(), eff - 1))
            }
            (Dim::Sym(_), Padding::Valid) => {
                Dim::Sym(format!("floor(({}-{})/{s})+1", self.expr(), eff))
            }
        })
    }

    /// `self + n`; a known result above [`MAX_DIM`] is an error.
    pub fn add(&self, n: usize) -> Result<Dim> {
        Ok(match self {
            _ if n == 0 => self.clone(),
            Dim::Known(m) => Dim::Known(check_dim(
                "dimension",
                m.checked_add(n)
                    .ok_or_else(|| too_large(&format!("{m} + {n}")))?,
            )?),
            Dim::Sym(_) => Dim::Sym(format!("{}+{n}", self.expr())),
        })
    }

    pub fn sub(&self, n: usize) -> Result<Dim> {
        Ok(match self {
            _ if n == 0 => self.clone(),
            Dim::Known(m) if *m <= n => {
                return Err(Error::graph(format!(
                    "cannot remove {n} from a dimension of {m}"
                )))
            }
            Dim::Known(m) => Dim::Known(m - n),
            Dim::Sym(_) => Dim::Sym(format!("{}-{n}", self.expr())),
        })
    }

    /// `self * n`; a known result above [`MAX_DIM`] is an error.
    pub fn mul(&self, n: usize) -> Result<Dim> {
        Ok(match self {
            _ if n == 1 => self.clone(),
            Dim::Known(m) => Dim::Known(check_dim(
                "dimension",
                m.checked_mul(n)
                    .ok_or_else(|| too_large(&format!("{m} * {n}")))?,
            )?),
            Dim::Sym(_) => Dim::Sym(format!("{}*{n}", self.expr())),
        })
    }
}

/// The largest size allconv accepts anywhere a size comes from a file: a dimension, a
/// kernel, stride, dilation or pool size, a padding, a layer width (`filters`, `units`...),
/// a dilated window. It is `i32::MAX`, the range of TensorFlow's (int32) shape tensors, far
/// above any real model; bounding every size here keeps all later size arithmetic (ONNX
/// pads, the lowerings) far from overflow.
pub const MAX_DIM: usize = i32::MAX as usize;

fn too_large(expr: &str) -> Error {
    Error::graph(format!(
        "{expr} overflows: the sizes are larger than allconv accepts (at most {MAX_DIM})"
    ))
}

/// `n` if it is at most [`MAX_DIM`], else an error naming `what` (a config key or
/// "dimension").
pub fn check_dim(what: &str, n: usize) -> Result<usize> {
    if n > MAX_DIM {
        return Err(Error::graph(format!(
            "{what} {n} is larger than allconv accepts (at most {MAX_DIM})"
        )));
    }
    Ok(n)
}

/// The span of a dilated window, `(k-1)*d+1`, checked: at most [`MAX_DIM`].
pub fn dilated_window(k: usize, d: usize) -> Result<usize> {
    k.checked_sub(1)
        .and_then(|k1| k1.checked_mul(d))
        .and_then(|x| x.checked_add(1))
        .filter(|&e| e <= MAX_DIM)
        .ok_or_else(|| {
            Error::graph(format!(
                "a window of {k} dilated by {d} spans more than {MAX_DIM} positions, larger than allconv accepts"
            ))
        })
}

/// Product of sizes, `None` on overflow.
pub fn checked_product<'a>(dims: impl IntoIterator<Item = &'a usize>) -> Option<usize> {
    dims.into_iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{s}"),
        }
    }
}

impl Serialize for Dim {
    /// Known dims as numbers, symbolic ones as their expression string.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Dim::Known(n) => s.serialize_u64(*n as u64),
            Dim::Sym(e) => s.serialize_str(e),
        }
    }
}

/// `(None, a, b, c)`: Keras's way of printing a shape with its batch axis.
pub fn display_shape(shape: &[Dim]) -> String {
    let mut parts = vec!["None".to_string()];
    parts.extend(shape.iter().map(|d| d.to_string()));
    if parts.len() == 1 {
        return "(None,)".into();
    }
    format!("({})", parts.join(", "))
}

/// Product of the dims if all are known (`Ok(None)` otherwise); an error when the count
/// overflows.
pub fn num_elements(shape: &[Dim]) -> Result<Option<usize>> {
    let Some(dims) = shape.iter().map(Dim::known).collect::<Option<Vec<usize>>>() else {
        return Ok(None);
    };
    checked_product(&dims).map(Some).ok_or_else(|| {
        Error::graph(format!(
            "the shape {} holds more values than a 64-bit count",
            display_shape(shape)
        ))
    })
}

/// A shape from a file or from inference: every known dim at most [`MAX_DIM`], and the
/// value count of its known dims representable.
pub fn check_shape(shape: &[Dim]) -> Result<()> {
    for d in shape {
        if let Dim::Known(n) = d {
            if *n > MAX_DIM {
                return Err(Error::graph(format!(
                    "the shape {} has a dimension of {n}, larger than allconv accepts (at most {MAX_DIM})",
                    display_shape(shape)
                )));
            }
        }
    }
    let known: Vec<usize> = shape.iter().filter_map(Dim::known).collect();
    if checked_product(&known).is_none() {
        return Err(Error::graph(format!(
            "the shape {} holds more values than a 64-bit count",
            display_shape(shape)
        )));
    }
    Ok(())
}

/// Index ranges of the spatial dims and the channel dim of a `[spatial..., C]` or
/// `[C, spatial...]` shape (no batch axis).
pub fn split_channels(shape: &[Dim], fmt: DataFormat) -> Result<(Vec<Dim>, Dim)> {
    if shape.len() < 2 {
        return Err(Error::graph(format!(
            "expected a tensor with spatial dims and channels, got rank {}",
            shape.len() + 1
        )));
    }
    Ok(match fmt {
        DataFormat::ChannelsLast => (
            shape[..shape.len() - 1].to_vec(),
            shape[shape.len() - 1].clone(),
        ),
        DataFormat::ChannelsFirst => (shape[1..].to_vec(), shape[0].clone()),
    })
}

pub fn join_channels(spatial: Vec<Dim>, channels: Dim, fmt: DataFormat) -> Shape {
    match fmt {
        DataFormat::ChannelsLast => {
            let mut s = spatial;
            s.push(channels);
            s
        }
        DataFormat::ChannelsFirst => {
            let mut s = vec![channels];
            s.extend(spatial);
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 62;

    #[test]
    fn window_sizes_from_files_are_checked() {
        let n = Dim::Known(6);
        // Old code: (3-1)*2^62+1 was accepted, (5-1)*2^62 overflowed, k=0 underflowed and
        // s=0 divided by zero.
        assert!(n.window(3, 1, BIG, Padding::Same).is_err());
        assert!(n.window(5, 1, BIG, Padding::Same).is_err());
        assert!(n.window(BIG, 1, 4, Padding::Valid).is_err());
        assert!(n.window(0, 1, 1, Padding::Valid).is_err());
        assert!(n.window(3, 0, 1, Padding::Same).is_err());
        assert!(Dim::sym("H").window(3, 1, BIG, Padding::Same).is_err());
        assert_eq!(
            n.window(3, 1, 2, Padding::Valid).unwrap(),
            Dim::Known(2),
            "ordinary windows are unchanged"
        );
        assert_eq!(dilated_window(3, 2).unwrap(), 5);
        assert_eq!(dilated_window(MAX_DIM, 1).unwrap(), MAX_DIM);
        assert!(dilated_window(MAX_DIM, 2).is_err());
    }

    #[test]
    fn dim_arithmetic_is_checked() {
        assert!(Dim::Known(usize::MAX).add(1).is_err());
        assert!(Dim::Known(MAX_DIM).add(1).is_err());
        assert_eq!(Dim::Known(6).add(2).unwrap(), Dim::Known(8));
        assert!(Dim::Known(6).mul(BIG).is_err());
        assert!(Dim::Known(1 << 20).mul(1 << 20).is_err(), "above MAX_DIM");
        assert_eq!(Dim::Known(6).mul(2).unwrap(), Dim::Known(12));
        assert_eq!(
            Dim::sym("H").mul(BIG).unwrap(),
            Dim::sym(format!("H*{BIG}"))
        );
    }

    #[test]
    fn element_counts_are_checked() {
        let huge = vec![Dim::Known(1 << 32), Dim::Known(1 << 32), Dim::Known(2)];
        assert!(num_elements(&huge).is_err());
        assert!(check_shape(&huge).is_err());
        assert_eq!(
            num_elements(&[Dim::Known(3), Dim::Known(4)]).unwrap(),
            Some(12)
        );
        assert_eq!(num_elements(&[Dim::sym("H"), Dim::Known(4)]).unwrap(), None);
        assert!(check_shape(&[Dim::Known(MAX_DIM + 1)]).is_err());
        assert!(check_shape(&[Dim::sym("H"), Dim::Known(MAX_DIM)]).is_ok());
        assert_eq!(checked_product(&[BIG, 4]), None);
        assert_eq!(checked_product(&[]), Some(1));
    }
}
