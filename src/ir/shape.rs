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
    pub fn window(&self, k: usize, s: usize, d: usize, padding: Padding) -> Result<Dim> {
        let eff = (k - 1) * d + 1;
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

    pub fn add(&self, n: usize) -> Dim {
        match self {
            _ if n == 0 => self.clone(),
            Dim::Known(m) => Dim::Known(m + n),
            Dim::Sym(_) => Dim::Sym(format!("{}+{n}", self.expr())),
        }
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

    pub fn mul(&self, n: usize) -> Dim {
        match self {
            _ if n == 1 => self.clone(),
            Dim::Known(m) => Dim::Known(m * n),
            Dim::Sym(_) => Dim::Sym(format!("{}*{n}", self.expr())),
        }
    }
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

/// Product of the dims if all are known.
pub fn num_elements(shape: &[Dim]) -> Option<usize> {
    shape.iter().map(Dim::known).product()
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
