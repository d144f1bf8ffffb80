//! Inference with tract: model files (ONNX, NNEF) opened without running anything stored
//! in them, planned for fixed input shapes, run on the CPU. With the `ort` feature, ONNX
//! files also run on ONNX Runtime ([`ort`], [`Engine`]).

mod file;
pub mod kernels;
pub mod nnef;
#[cfg(feature = "ort")]
pub mod ort;
mod tract;

#[cfg(feature = "ort")]
pub use self::ort::OrtModel;
pub use file::{Format, ModelFile};
pub use tract::{run_once, NodeTime, Output, TractModel};

/// The engine that runs a model file: tract (always built in) or ONNX Runtime (the `ort`
/// feature; ONNX files only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Tract,
    Ort,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Tract => "tract",
            Engine::Ort => "ort",
        }
    }

    /// `Ort` where this build has the `ort` feature; otherwise an error saying so.
    pub fn ort() -> crate::error::Result<Engine> {
        if cfg!(feature = "ort") {
            Ok(Engine::Ort)
        } else {
            Err(crate::error::Error::Other(
                "this build has no ONNX Runtime engine (the `ort` feature: the default full build has it); use --backend tract".into(),
            ))
        }
    }
}

/// Threads to use when the user does not say: every core this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
