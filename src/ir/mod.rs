//! The framework-neutral graph IR. Front-ends (Keras `.h5`) build it; back-ends (ONNX,
//! tract, tch) lower from it. It depends on no backend.

pub mod graph;
pub mod op;
pub mod shape;

pub use graph::*;
pub use op::*;
pub use shape::*;
