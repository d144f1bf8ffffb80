//! Keras `.h5` -> IR.

pub mod build;
pub mod config;
pub mod h5;
pub mod hang_guard;
pub mod import;
pub mod layers;
pub mod nets;
pub mod weights;
pub mod writer;

pub use import::{graph_from_config, read_model, ReadOptions};
