//! allconv: legacy Keras `.h5` models (Shen et al., end2end-all-conv) read into one IR,
//! checked against genuine Keras, and lowered to ONNX / tract / libtorch.

pub mod error;
pub mod ir;
pub mod keras;
pub mod layout;
pub mod report;

pub use error::{Error, Result};
