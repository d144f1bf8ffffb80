//! Check an exported model against genuine-Keras reference activations (`io.npz`:
//! `input`, `output`, `layer/<path>`) or against the test vectors embedded in an ONNX
//! file. Tolerance: `|a - b| <= atol + rtol * |b|` (b = reference).

pub mod npz;

#[cfg(feature = "runtime")]
mod file;
#[cfg(feature = "keras")]
mod local;
#[cfg(feature = "keras")]
mod run;
#[cfg(feature = "runtime")]
pub use file::*;
#[cfg(feature = "keras")]
pub use local::{isolated_layers, verify_layers_local, IsolatedLayer};
#[cfg(feature = "keras")]
pub use run::*;

use serde::Serialize;

pub const DEFAULT_ATOL: f32 = 1e-4;
/// What one float32 runtime's output is held to against another's on the same file, per
/// unit of the output's range (`atol * max(1, max|ref|)`). tract and libtorch are each held
/// within 3x Keras's own float32 error of exact arithmetic (up to 7.9e-4 x range on the
/// ResNet50 fixtures, `tests/common` `runtime_bound`), so two of them may be twice that
/// apart. On the fixtures' test vectors they are at most 1.1e-5 x range apart; a semantic
/// error (padding, axis, layout) is off by orders of magnitude more. `verify` holds a
/// libtorch-made test vector to this.
pub const CROSS_RUNTIME_ATOL: f32 = 2e-3;
pub const DEFAULT_RTOL: f32 = 0.0;

/// One compared tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorCmp {
    pub name: String,
    pub shape: Vec<usize>,
    pub max_abs_err: f32,
    /// Values outside the tolerance (NaN counts).
    pub n_bad: usize,
    pub passed: bool,
    /// The bound this tensor was held to: `|got - ref| <= atol + rtol * |ref|`.
    pub atol: f32,
    pub rtol: f32,
}

/// The tolerance for one intermediate activation: `atol`, or with `scaled`,
/// `atol * max(1, max|reference|)` (float32 rounding grows with depth and magnitude).
pub fn layer_atol(atol: f32, scaled: bool, reference: &[f32]) -> f32 {
    if scaled {
        atol * reference.iter().fold(1f32, |m, x| m.max(x.abs()))
    } else {
        atol
    }
}

/// Per-layer rows (topological index, comparison) in topological order, and the first
/// layer outside its tolerance.
pub fn order_layers(mut rows: Vec<(usize, TensorCmp)>) -> (Vec<TensorCmp>, Option<String>) {
    rows.sort_by_key(|(i, c)| (*i, c.name.clone()));
    let layers: Vec<TensorCmp> = rows.into_iter().map(|(_, c)| c).collect();
    let first = layers.iter().find(|c| !c.passed).map(|c| c.name.clone());
    (layers, first)
}

/// Compare `got` to the reference `want`.
pub fn compare(
    name: &str,
    got: &[f32],
    got_shape: &[usize],
    want: &[f32],
    want_shape: &[usize],
    atol: f32,
    rtol: f32,
) -> TensorCmp {
    if got_shape != want_shape || got.len() != want.len() {
        return TensorCmp {
            name: format!("{name} (shape {got_shape:?} vs reference {want_shape:?})"),
            shape: got_shape.to_vec(),
            max_abs_err: f32::INFINITY,
            n_bad: got.len().max(want.len()),
            passed: false,
            atol,
            rtol,
        };
    }
    let mut max = 0f32;
    let mut bad = 0;
    for (&a, &b) in got.iter().zip(want) {
        let d = (a - b).abs();
        if d.is_nan() || d > atol + rtol * b.abs() {
            bad += 1;
        }
        if d.is_nan() {
            max = f32::NAN;
        } else if !max.is_nan() {
            max = max.max(d);
        }
    }
    TensorCmp {
        name: name.into(),
        shape: got_shape.to_vec(),
        max_abs_err: max,
        n_bad: bad,
        passed: bad == 0,
        atol,
        rtol,
    }
}

/// `atol 1e-4` or `atol 1e-4 + 1e-3 x |ref|`: the bound a figure was held to, printed
/// beside it.
pub fn bound_text(atol: f32, rtol: f32) -> String {
    if rtol == 0.0 {
        format!("atol {atol:.3e}")
    } else {
        format!("atol {atol:.3e} + {rtol:e} x |ref|")
    }
}
