//! IR -> IR rewrites, backend-neutral (ONNX and tch both use them).

pub mod fold_bn;
pub mod heatmap;

pub use fold_bn::{fold_batch_norm, FoldReport, FoldedPair};
