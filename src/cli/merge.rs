//! `allconv merge`: the shards of `predict --manifest` joined into one results file.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `allconv merge`.
#[derive(clap::Args, Clone, Debug)]
pub struct MergeArgs {
    /// The `--out` folder of `allconv predict --manifest` (its shard-*-of-* folders).
    pub dir: PathBuf,
    /// The merged results: .parquet or .csv, one row per manifest row, sorted by row.
    #[arg(short, long)]
    pub output: PathBuf,
    /// JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Exit status 0 when every manifest row is there exactly once (failed images included:
/// they are recorded with their reason), 1 when rows are missing (the file holds what is
/// there), 2 when the shards disagree or a row appears twice (nothing written).
#[cfg(feature = "runtime")]
pub fn main(args: MergeArgs) -> ExitCode {
    let report = match allconv::pipeline::merge::merge(&args.dir, &args.output) {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                super::predict::emit(&format!("{}\n", serde_json::json!({ "error": e })));
            }
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => super::predict::emit(&format!("{s}\n")),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        let mut out = format!(
            "{}: {} of {} manifest rows ({} ok, {} failed) from {} shards\n",
            report.output.display(),
            report.rows,
            report.manifest_rows,
            report.ok,
            report.failed.len(),
            report.shards
        );
        for f in report.failed.iter().take(50) {
            out.push_str(&format!(
                "failed   row {}: {}: {}\n",
                f.row, f.path, f.error
            ));
        }
        if report.failed.len() > 50 {
            out.push_str(&format!(
                "... and {} more failed\n",
                report.failed.len() - 50
            ));
        }
        if !report.shards_missing.is_empty() {
            out.push_str(&format!(
                "shards not started: {:?}\n",
                report.shards_missing
            ));
        }
        for m in report.missing.iter().take(50) {
            out.push_str(&format!(
                "missing  row {}: {}\n",
                m.row,
                m.path
                    .as_deref()
                    .unwrap_or("(manifest changed or unreadable)")
            ));
        }
        if report.missing.len() > 50 {
            out.push_str(&format!(
                "... and {} more missing\n",
                report.missing.len() - 50
            ));
        }
        out.push_str(if report.complete {
            "complete: every manifest row is there once\n"
        } else {
            "INCOMPLETE: rows are missing; resubmit the shards that did not finish, then merge again\n"
        });
        super::predict::emit(&out);
    }
    if report.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(not(feature = "runtime"))]
pub fn main(_args: MergeArgs) -> ExitCode {
    eprintln!("error: merge needs allconv built with the `runtime` feature");
    ExitCode::FAILURE
}
