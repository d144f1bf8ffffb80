//! `allconv completions SHELL` and `allconv man [-o DIR]`: shell completions and man pages
//! generated from the command line's own definitions (clap_complete, clap_mangen), so they
//! always name the options this build has.

use clap::CommandFactory;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
    /// Print one JSON object `{"shell", "script"}` instead of the script.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Write one page per command (allconv.1, allconv-convert.1, allconv-bench-run.1, ...)
    /// into this folder, made if missing; without it, print allconv.1 to stdout.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Print what was written as one JSON object.
    #[arg(long, requires = "output")]
    pub json: bool,
}

pub fn completions(a: CompletionsArgs) -> ExitCode {
    let mut cmd = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "allconv", &mut script);
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"shell": a.shell.to_string(),
                "script": String::from_utf8_lossy(&script)})
        );
    } else {
        let _ = std::io::stdout().write_all(&script);
    }
    ExitCode::SUCCESS
}

pub fn man(a: ManArgs) -> ExitCode {
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = a.output else {
        let mut page = Vec::new();
        return match render(&cmd, &mut page) {
            Ok(()) => {
                let _ = std::io::stdout().write_all(&page);
                ExitCode::SUCCESS
            }
            Err(e) => crate::fail(false, e),
        };
    };
    match write_pages(&cmd, &dir) {
        Ok(files) => {
            if a.json {
                outln!(
                    "{}",
                    serde_json::json!({"dir": dir.display().to_string(), "pages": files})
                );
            } else {
                outln!("wrote {} man pages into {}", files.len(), dir.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(a.json, e),
    }
}

/// Every page (the command and its visible subcommands, depth first), each written whole
/// or not at all; the file names written.
fn write_pages(cmd: &clap::Command, dir: &Path) -> allconv::Result<Vec<String>> {
    let io = |e: std::io::Error| allconv::Error::Io {
        file: dir.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut names = Vec::new();
    let mut todo = vec![cmd.clone()];
    while let Some(c) = todo.pop() {
        todo.extend(c.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let name = clap_mangen::Man::new(c.clone()).get_filename();
        let mut page = Vec::new();
        render(&c, &mut page).map_err(io)?;
        let path = dir.join(&name);
        allconv::files::atomic_write(&path, |tmp| {
            std::fs::write(tmp, &page).map_err(|e| allconv::Error::Io {
                file: path.clone(),
                message: e.to_string(),
            })
        })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// clap_mangen's page, with the `Examples:` of `--help` as an EXAMPLES section kept line
/// for line (clap_mangen would fill them into one paragraph), then VERSION, likewise.
fn render(cmd: &clap::Command, w: &mut Vec<u8>) -> std::io::Result<()> {
    let examples = cmd.get_after_help().map(|h| h.to_string());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone().after_help(None::<&str>))
        .source(concat!("allconv ", env!("CARGO_PKG_VERSION")))
        .render(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    let mut section = String::new();
    if let Some(examples) = examples {
        section.push_str(".SH EXAMPLES\n.nf\n");
        for line in examples.lines().filter(|l| l.trim() != "Examples:") {
            section.push_str(&roff_line(line));
            section.push('\n');
        }
        section.push_str(".fi\n");
    }
    // clap_mangen's VERSION would fill the long version's lines into one paragraph too.
    let (at, rest) = match page.find("\n.SH VERSION") {
        Some(i) => {
            let end = page[i + 1..]
                .find("\n.SH ")
                .map_or(page.len(), |j| i + 1 + j + 1);
            (i + 1, &page[end..])
        }
        None => (page.len(), ""),
    };
    if let Some(v) = cmd.get_long_version().or(cmd.get_version()) {
        section.push_str(".SH VERSION\n.nf\n");
        for line in v.lines() {
            section.push_str(&roff_line(line));
            section.push('\n');
        }
        section.push_str(".fi\n");
    }
    w.extend_from_slice(page[..at].as_bytes());
    w.extend_from_slice(section.as_bytes());
    w.extend_from_slice(rest.as_bytes());
    Ok(())
}

/// One line of literal text for roff: backslashes escaped, and a leading `.` or `'` (a
/// request) made harmless.
fn roff_line(line: &str) -> String {
    let s = line.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
