//! IR -> IR rewrites, backend-neutral (ONNX and tch both use them).

pub mod fold_bn;
pub mod grey_input;
pub mod heatmap;
#[cfg(feature = "keras")]
pub mod rehead;
pub mod subsample_early;

pub use fold_bn::{fold_batch_norm, fold_batch_norm_in_place, FoldReport, FoldedPair};
pub use grey_input::fold_grey_input;
#[cfg(feature = "keras")]
pub use rehead::{rehead, ReheadOptions, ReheadReport, Top};
pub use subsample_early::{subsample_early, SubsampleReport};
