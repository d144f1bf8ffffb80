//! One file per subcommand: its arguments and its printing, over the library modules.
//! (inspect, convert, verify and bench still live in `main.rs`.)

#[cfg(feature = "torch")]
pub mod finetune;
pub mod rehead;
pub mod synth;
