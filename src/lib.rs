//! allconv: legacy Keras `.h5` models (Shen et al., end2end-all-conv) read into one IR,
//! checked against genuine Keras, and lowered to ONNX / tract / libtorch.

#[cfg(feature = "runtime")]
pub mod bench;
pub mod data;
pub mod error;
pub mod eval;
pub mod files;
#[cfg(feature = "keras")]
#[doc(hidden)]
pub mod fuzz_entry;
pub mod heap;
pub mod ir;
#[cfg(feature = "keras")]
pub mod keras;
pub mod layout;
pub mod limits;
pub mod meta;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod passes;
#[cfg(feature = "runtime")]
pub mod pipeline;
pub mod report;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod safetensors;
pub mod sample;
#[cfg(feature = "torch")]
pub mod torch;
#[cfg(feature = "torch")]
pub mod train;
pub mod verify;

pub use error::{Error, Result};
