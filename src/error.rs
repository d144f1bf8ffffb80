//! The one error type of allconv. Every variant names the file and, where there is one,
//! the Keras layer, so a user can act on the message without a debugger.

use std::path::PathBuf;

/// A refused layer: its name (with nesting path) and class, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLayer {
    pub path: String,
    pub class: String,
    pub reason: String,
}

impl std::fmt::Display for RefusedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.path, self.class, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {message}")]
    Io { file: PathBuf, message: String },

    #[error("{file}: not a readable HDF5 file ({message})")]
    NotHdf5 { file: PathBuf, message: String },

    /// Something in the HDF5 structure that allconv refuses on purpose (links, external
    /// storage, shape bombs...). `object` is the HDF5 path.
    #[error("{file}: refused HDF5 object {object}: {reason}")]
    UnsafeHdf5 {
        file: PathBuf,
        object: String,
        reason: String,
    },

    #[error("{file}: {what}: {message}")]
    BadFormat {
        file: PathBuf,
        what: String,
        message: String,
    },

    #[error("{file}: bad model_config JSON: {message}")]
    BadJson { file: PathBuf, message: String },

    /// All layers that cannot be read, reported at once.
    #[error("{file}: {} layer(s) refused or unsupported:\n{}", layers.len(), list_layers(layers))]
    Refused {
        file: PathBuf,
        layers: Vec<RefusedLayer>,
    },

    #[error("{file}: layer {layer} ({class}): {message}")]
    Layer {
        file: PathBuf,
        layer: String,
        class: String,
        message: String,
    },

    #[error("{file}: layer {layer}: missing weight {weight}")]
    MissingWeight {
        file: PathBuf,
        layer: String,
        weight: String,
    },

    #[error("{file}: layer {layer}: weight {weight} has shape {got:?}, expected {expected:?}")]
    WeightShape {
        file: PathBuf,
        layer: String,
        weight: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("graph: {0}")]
    Graph(String),

    #[error("{0}")]
    Other(String),
}

fn list_layers(layers: &[RefusedLayer]) -> String {
    layers
        .iter()
        .map(|l| format!("  - {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn graph(msg: impl Into<String>) -> Self {
        Error::Graph(msg.into())
    }

    /// The message alone, for a caller that names the file and the layer itself: a
    /// [`Error::Graph`] without its `graph:` prefix, any other error as displayed.
    pub fn message(&self) -> String {
        match self {
            Error::Graph(m) => m.clone(),
            other => other.to_string(),
        }
    }
}
