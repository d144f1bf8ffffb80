//! One file per subcommand: its arguments and its printing, over the library modules.

pub mod bench;
#[cfg(feature = "keras")]
pub mod convert;
pub mod evaluate;
pub mod examples;
#[cfg(feature = "torch")]
pub mod finetune;
#[cfg(feature = "keras")]
pub mod inspect;
pub mod merge;
pub mod predict;
pub mod progress;
#[cfg(feature = "keras")]
pub mod rehead;
pub mod sample_patches;
pub mod shell;
pub mod synth;
#[cfg(feature = "torch")]
pub mod train_patch;
pub mod verify;

/// A command this build leaves out (the inference-only edge build): its arguments are
/// taken whole so that the error names the command, not a flag.
#[cfg(not(all(feature = "keras", feature = "torch")))]
#[derive(clap::Args)]
pub struct FullBuildOnly {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

#[cfg(not(all(feature = "keras", feature = "torch")))]
pub fn full_build_only(command: &str, feature: &str) -> std::process::ExitCode {
    eprintln!(
        "error: `allconv {command}` is not in this build of allconv (built without the `{feature}` feature: this is the inference-only build, with predict, verify and bench run on .onnx and .nnef.tgz files). Use the full build (cargo build --release) for {command}."
    );
    std::process::ExitCode::FAILURE
}

/// A `--X` / `--no-X` pair (clap's `overrides_with` leaves at most one set): `Some(true)`,
/// `Some(false)`, or `None` when neither was given.
pub fn flag_pair(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}
