//! Inference with tract: model files (ONNX, NNEF) opened without running anything stored
//! in them, planned for fixed input shapes, run on the CPU.

mod file;
pub mod nnef;
mod tract;

pub use file::{Format, ModelFile};
pub use tract::{run_once, NodeTime, Output, TractModel};

/// Threads to use when the user does not say: every core this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
