//! Image input path: read mammograms the way the paper's Python code sees them
//! (cv2 / pydicom), resize bit-exactly like `cv2.resize(..., INTER_CUBIC)`, apply the
//! paper's preprocessing, and write heatmap overlays.

pub mod augment;
pub mod dataset;
mod dicom;
pub mod equalize;
pub mod image_io;
pub mod overlay;
mod pnm;
pub mod preprocess;
pub mod resize;
pub mod roc;
pub mod synthetic;

use std::path::{Path, PathBuf};

pub use augment::{Augment, FillMode, RandomSource, Rng, Transform};
pub use dataset::{
    Batch, BatchOptions, Dataset, DatasetOptions, DatasetWarning, EpochIter, FileCheck, KeepInRam,
    LoaderStats, Sample, Weighting,
};
pub use image_io::{
    read_image, read_image_bytes, read_image_with_attributes, DicomAttributes, GrayImage,
};
pub use overlay::{render_overlay, write_overlay, OverlayOptions};
pub use preprocess::{flip_h, flip_v, Preprocess};
pub use resize::{resize_cubic, resize_cubic_f32, resize_cubic_u16, resize_cubic_u8};

/// Errors of the data module. File errors always carry the offending path.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is corrupt, truncated or not what its header claims.
    #[error("{}: cannot decode image: {msg}", path.display())]
    Decode { path: PathBuf, msg: String },
    /// A valid file using a feature this reader does not implement.
    #[error("{}: unsupported image: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    /// A dataset folder problem (missing or empty class folder, bad label).
    #[error("{}: {msg}", path.display())]
    Dataset { path: PathBuf, msg: String },
    #[error("invalid preprocessing spec '{spec}': {msg}")]
    Spec { spec: String, msg: String },
    /// Bad in-memory arguments (shapes, sizes).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn decode(path: &Path, msg: impl Into<String>) -> Self {
        DataError::Decode {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, msg: impl Into<String>) -> Self {
        DataError::Unsupported {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Rejects empty or absurd dimensions before anything is allocated (bounds: [`crate::limits`]).
pub(crate) fn check_dims(path: &Path, width: usize, height: usize) -> Result<(), DataError> {
    let limits = crate::limits::current();
    if width == 0 || height == 0 {
        return Err(DataError::decode(
            path,
            format!("zero-sized image ({width}x{height})"),
        ));
    }
    if let Some(msg) = size_over_limits(width, height, &limits) {
        return Err(DataError::unsupported(path, msg));
    }
    Ok(())
}

/// Why a `width` x `height` image is over the limits, or `None` if it fits.
pub(crate) fn size_over_limits(
    width: usize,
    height: usize,
    limits: &crate::limits::Limits,
) -> Option<String> {
    let side = limits.image_side;
    let pixels = limits.image_pixels;
    if width > side || height > side {
        Some(format!(
            "dimensions {width}x{height} exceed the limit of {side} per side (--limit image-side=N raises it)"
        ))
    } else if width.saturating_mul(height) > pixels {
        Some(format!(
            "dimensions {width}x{height} exceed the limit of {pixels} pixels (--limit image-pixels=N raises it)"
        ))
    } else {
        None
    }
}
