//! The scoring pipeline behind `allconv predict`, `evaluate` and archive scoring: a model
//! loaded on an engine, images read ahead and preprocessed as the paper's
//! `read_resize_img` + DMImageDataGenerator, scored by parallel jobs, each image's row
//! handed to the caller as it finishes.
//!
//! Per image: read (PNG/PGM/JPEG/TIFF/DICOM) -> OpenCV-exact bicubic resize to the model's
//! input size (static ONNX/Keras input, or `size=` of the preprocessing; else the image's
//! own size) -> `target_scale`/`rescale`/`mean` -> grey to 3 channels when the model takes
//! 3 -> run. TTA averages the image, its horizontal, vertical and double flip (host side,
//! unless the ONNX model already does it in-graph).
//!
//! Preprocessing parameters: the caller's spec wins; else the ONNX metadata
//! `allconv.preprocess` (preprocessing compiled into the graph at convert time); else
//! none. [`RunInfo`] says which was used.
//!
//! - [`engine`]: the model on tract, ONNX Runtime or libtorch, one view run;
//! - [`plan`]: which preprocessing runs on the host and which in the graph;
//! - [`reader`]: decoding and preprocessing ahead of the jobs;
//! - [`score`]: the jobs, heatmaps, one row per image;
//! - [`manifest`], [`archive`], [`table`], [`merge`]: scoring a CSV manifest in shards,
//!   resumably, into chunked CSV or Parquet results, and merging them.

pub mod archive;
mod engine;
pub mod manifest;
pub mod merge;
mod plan;
mod reader;
mod score;
pub mod table;

pub use score::{
    score_images, score_stream, HeatmapOut, ImageScores, Row, RunInfo, ScoreRun, Scored,
};

/// The pipeline's errors are messages that already name the file or option at fault.
pub(crate) type Res<T> = std::result::Result<T, String>;

/// Which runtime runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// libtorch for a Keras `.h5` where this build has it, ONNX Runtime for an `.onnx`
    /// file where the library loads, tract otherwise.
    #[default]
    Auto,
    Tract,
    Ort,
    Torch,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "tract" => Ok(Backend::Tract),
            "ort" => Ok(Backend::Ort),
            "torch" => Ok(Backend::Torch),
            _ => Err(format!("unknown backend {s:?}: auto, tract, ort or torch")),
        }
    }
}

/// How to load and run a model over images (`allconv predict`'s options).
#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    /// An .onnx or .nnef.tgz file, or a Keras .h5 (converted in memory or run on libtorch).
    pub model: std::path::PathBuf,
    /// Preprocessing spec (`rescale=0.003891,mean=52.18,gray,size=1152x896`); overrides the
    /// ONNX metadata's.
    pub preprocess: Option<String>,
    /// 4-flip test-time augmentation.
    pub tta: bool,
    /// Threads in all (default: every available core).
    pub threads: Option<usize>,
    pub backend: Backend,
    /// Images scored at once on tract (default: one per thread).
    pub jobs: Option<u64>,
    /// Patch classifier only: run it over whole images and write heatmaps here.
    pub heatmap: Option<std::path::PathBuf>,
    /// Class drawn in the heatmap overlay (default: the last).
    pub heatmap_class: Option<usize>,
}

impl ScoreOptions {
    /// The threads in effect.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(crate::runtime::default_threads)
            .max(1)
    }
}
