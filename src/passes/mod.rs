//! IR -> IR rewrites, backend-neutral (ONNX and tch both use them).

pub mod fold_bn;
pub mod heatmap;
pub mod rehead;

pub use fold_bn::{fold_batch_norm, FoldReport, FoldedPair};
pub use rehead::{rehead, ReheadOptions, ReheadReport, Top};
