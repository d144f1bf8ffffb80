//! The command line's own documentation: every command's `--help` ends with two or three
//! examples that parse (and, where they are quick, run) from the repository root on the
//! bundled files; shell completions and man pages generated from the same definitions name
//! every command; `--version` names the libraries this build has in it.

// The examples test needs the full build; the inference-only build runs the rest.
#![cfg_attr(not(all(feature = "keras", feature = "torch")), allow(dead_code))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_allconv");

fn allconv(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("allconv runs")
}

fn stdout_of(args: &[&str]) -> String {
    let o = allconv(args);
    assert!(
        o.status.success(),
        "allconv {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("UTF-8 output")
}

/// The command names of a help text's `Commands:` section (clap's own `help` left out).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every command path: `[]` (allconv itself), `["convert"]`, `["bench", "run"]`, ...
fn command_paths() -> Vec<Vec<String>> {
    let mut paths = vec![vec![]];
    let mut i = 0;
    while i < paths.len() {
        let path: Vec<String> = paths[i].clone();
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        for sub in subcommands(&stdout_of(&args)) {
            let mut p = path.clone();
            p.push(sub);
            paths.push(p);
        }
        i += 1;
    }
    paths
}

/// The commands of a help text's `Examples:` section, continuation lines (` \`) joined.
fn examples(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in help
        .lines()
        .skip_while(|l| l.trim() != "Examples:")
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        current.push_str(line.trim_end_matches('\\').trim_end());
        if line.ends_with('\\') {
            current.push(' ');
        } else {
            out.push(std::mem::take(&mut current));
        }
    }
    assert!(
        current.is_empty(),
        "a continued example never ends: {current}"
    );
    out
}

/// An example split into allconv's arguments and what follows them: `>` (stdout to a
/// file), `|` or `&&` (another program; not run here).
struct Example {
    args: Vec<String>,
    redirected: bool,
}

fn parse_example(text: &str) -> Example {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(tokens.first(), Some(&"allconv"), "{text}");
    for t in &tokens {
        assert!(
            !t.contains(['\'', '"', '*', '?', '`', '$', ';']),
            "{text}: keep examples free of quoting and globs, so they split on spaces alone"
        );
    }
    let end = tokens
        .iter()
        .position(|t| [">", "|", "&&"].contains(t))
        .unwrap_or(tokens.len());
    Example {
        args: tokens[1..end].iter().map(|t| t.to_string()).collect(),
        redirected: tokens.get(end) == Some(&">"),
    }
}

/// Commands whose examples run here in full; the others (training, timing) only parse.
const RUN: &[&str] = &[
    "inspect",
    "predict",
    "convert",
    "verify",
    "rehead",
    "synth",
    "completions",
    "man",
];

/// A scratch folder standing in for the repository root: `fixtures` links to the real one,
/// and what the examples write lands here.
fn scratch_root() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-help-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let link = d.join("fixtures");
    if !link.exists() {
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
            &link,
        )
        .unwrap();
    }
    d
}

#[cfg(all(feature = "keras", feature = "torch"))]
#[test]
fn every_help_ends_with_examples_that_parse_and_the_quick_ones_run() {
    let paths = command_paths();
    // allconv itself, its commands, bench's two: the walk must have found them.
    assert!(paths.len() >= 12, "commands found: {paths:?}");
    let root = scratch_root();
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut parsed = 0;
    for path in &paths {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = stdout_of(&args);
        let found = examples(&help);
        let name = format!("allconv {}", path.join(" "));
        if !(2..=3).contains(&found.len()) {
            failures.push(format!(
                "{name}: {} examples in --help, want 2 or 3",
                found.len()
            ));
        }
        // `-h` shows them too.
        args.pop();
        args.push("-h");
        if examples(&stdout_of(&args)) != found {
            failures.push(format!("{name}: -h shows other examples than --help"));
        }
        for text in found {
            let ex = parse_example(&text);
            if !ex.args.starts_with(path) {
                failures.push(format!("{name}: example of another command: {text}"));
            }
            let parse = Command::new(BIN)
                .args(&ex.args)
                .env("ALLCONV_PARSE_ONLY", "1")
                .current_dir(&root)
                .output()
                .unwrap();
            if !parse.status.success() {
                failures.push(format!(
                    "{text}: does not parse: {}",
                    String::from_utf8_lossy(&parse.stderr)
                ));
                continue;
            }
            parsed += 1;
            let quick = ex.args.first().is_some_and(|c| RUN.contains(&c.as_str()));
            if !quick || ex.args.iter().any(|a| a.starts_with('~')) {
                continue;
            }
            let run = Command::new(BIN)
                .args(&ex.args)
                .current_dir(&root)
                .output()
                .unwrap();
            ran += 1;
            if !run.status.success() {
                failures.push(format!(
                    "{text}: exit {:?}: {}",
                    run.status.code(),
                    String::from_utf8_lossy(&run.stderr)
                ));
            } else if ex.redirected && run.stdout.is_empty() {
                failures.push(format!("{text}: printed nothing to redirect"));
            }
        }
    }
    std::fs::remove_dir_all(&root).ok();
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!("{parsed} examples parsed, {ran} ran");
    assert!(parsed >= 2 * paths.len(), "{parsed} examples parsed");
    assert!(ran >= 15, "only {ran} examples ran");
}

#[test]
fn a_bad_example_would_be_caught() {
    // The parse check refuses what clap refuses: an unknown flag, a bad value.
    for bad in [
        &["verify", "m.onnx", "--no-such-flag"][..],
        &["verify", "m.onnx", "--backend", "nope"],
        &["predict", "m.onnx"],
    ] {
        let o = Command::new(BIN)
            .args(bad)
            .env("ALLCONV_PARSE_ONLY", "1")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad:?} parsed");
    }
    // The help parser finds examples and joins continued lines.
    let help =
        "Usage: x\n\nExamples:\n  # one\n  allconv a b \\\n      c\n\n  # two\n  allconv d > f\n";
    assert_eq!(examples(help), ["allconv a b c", "allconv d > f"]);
    let ex = parse_example("allconv d > f");
    assert_eq!((ex.args, ex.redirected), (vec!["d".to_string()], true));
}

#[test]
fn completions_name_every_command() {
    let top = subcommands(&stdout_of(&["--help"]));
    assert!(top.len() >= 10, "{top:?}");
    for name in ["completions", "man", "convert", "predict"] {
        assert!(top.iter().any(|c| c == name), "{name} missing from {top:?}");
    }
    let bash = stdout_of(&["completions", "bash"]);
    assert!(
        bash.contains("_allconv()"),
        "not a bash completion function"
    );
    for sub in &top {
        assert!(
            bash.contains(&format!("allconv__{}", sub.replace('-', "__")))
                || bash.contains(&format!("allconv,{sub})")),
            "bash completion does not know `{sub}`"
        );
    }
    // Loaded into bash, it completes commands, bench's own commands, options and values.
    let script =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("allconv-{}.bash", std::process::id()));
    std::fs::write(&script, &bash).unwrap();
    let complete = |words: &[&str]| -> Vec<String> {
        let line = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}'; COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 COMPREPLY=(); _allconv allconv \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .expect("bash runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let all = complete(&["allconv", ""]);
    for sub in &top {
        assert!(
            all.contains(sub),
            "bash completes `allconv ` without `{sub}`: {all:?}"
        );
    }
    let bench = complete(&["allconv", "bench", ""]);
    assert!(bench.contains(&"run".to_string()), "{bench:?}");
    // `bench convert` is in the full build only.
    assert_eq!(
        bench.contains(&"convert".to_string()),
        cfg!(feature = "keras"),
        "{bench:?}"
    );
    assert_eq!(
        complete(&["allconv", "predict", "--heat"]),
        ["--heatmap", "--heatmap-class"]
    );
    let shells = complete(&["allconv", "completions", ""]);
    for shell in ["bash", "elvish", "fish", "powershell", "zsh"] {
        assert!(shells.contains(&shell.to_string()), "{shells:?}");
    }
    std::fs::remove_file(&script).ok();
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let s = stdout_of(&["completions", shell]);
        for sub in &top {
            assert!(
                s.contains(sub.as_str()),
                "{shell} completion does not know `{sub}`"
            );
        }
    }
    let o = allconv(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "an unknown shell is refused");
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&["completions", "bash", "--json"])).unwrap();
    assert_eq!(json["script"].as_str(), Some(bash.as_str()));
}

#[test]
fn man_pages_render_with_every_command() {
    let top = subcommands(&stdout_of(&["--help"]));
    assert!(top.len() >= 10, "{top:?}");
    let page = stdout_of(&["man"]);
    assert!(
        page.contains("\n.TH allconv 1 "),
        "{}",
        &page[..page.len().min(300)]
    );
    assert_eq!(page.matches(".TH ").count(), 1, "one page");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH SUBCOMMANDS",
        ".SH EXAMPLES",
        ".SH VERSION",
    ] {
        assert!(page.contains(section), "allconv.1 lacks {section}");
    }
    // Rendered by man's own formatter: every command named, examples line for line.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("man-{}", std::process::id()));
    let o = allconv(&["man", "-o", dir.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pages: Vec<String> = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        std::fs::read_to_string(dir.join("allconv.1")).unwrap(),
        page
    );
    for sub in &top {
        let name = format!("allconv-{sub}.1");
        assert!(pages.contains(&name), "{name} not written: {pages:?}");
        assert!(dir.join(&name).is_file(), "{name}");
    }
    if cfg!(feature = "runtime") {
        assert!(
            pages.contains(&"allconv-bench-run.1".to_string()),
            "{pages:?}"
        );
    }
    let rendered = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .arg(dir.join("allconv.1"))
        .output();
    match rendered {
        Ok(r) if r.status.success() => {
            let text = String::from_utf8_lossy(&r.stdout);
            // -P-cbou: plain text, no bold or underline.
            for sub in &top {
                assert!(
                    text.contains(&format!("allconv-{sub}(1)")),
                    "rendered page lacks {sub}:\n{text}"
                );
            }
            assert!(
                text.contains("allconv convert fixtures/"),
                "rendered page lacks the examples:\n{text}"
            );
            assert!(
                text.contains("  --reference"),
                "a continued example lost its line break:\n{text}"
            );
        }
        _ => eprintln!(
            "groff is not installed: the man page's source was checked, not its rendering"
        ),
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `name = "X"` then `version = "V"` in Cargo.lock.
fn locked_version(name: &str) -> String {
    let lock =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).unwrap();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == format!("name = \"{name}\"") {
            return lines
                .next()
                .unwrap()
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_string();
        }
    }
    panic!("{name} not in Cargo.lock")
}

#[test]
fn version_names_the_libraries_built_in() {
    let short = stdout_of(&["-V"]);
    assert_eq!(
        short.trim(),
        format!("allconv {}", env!("CARGO_PKG_VERSION"))
    );
    let long = stdout_of(&["--version"]);
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(
        lines[0],
        format!("allconv {}", env!("CARGO_PKG_VERSION")),
        "{long}"
    );
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(!long.contains("unknown"), "{long}");
    let tract = format!("tract {} ", locked_version("tract-onnx"));
    assert_eq!(has(&tract), cfg!(feature = "runtime"), "{long}");
    #[cfg(feature = "keras")]
    {
        let (a, b, c) = hdf5::library_version();
        let want = format!(
            "HDF5 {a}.{b}.{c} (static, hdf5-metno-sys {})",
            locked_version("hdf5-metno-sys")
        );
        assert!(lines.contains(&want.as_str()), "want {want:?} in\n{long}");
    }
    #[cfg(not(feature = "keras"))]
    assert!(!has("HDF5"), "{long}");
    #[cfg(feature = "torch")]
    {
        // The wheel scripts/libtorch.sh installs records its version in version.py.
        let lib = std::env::var("LIBTORCH").expect("LIBTORCH (set by .cargo/config.toml)");
        let py = std::fs::read_to_string(Path::new(&lib).join("version.py")).unwrap();
        let v = py
            .lines()
            .find_map(|l| l.strip_prefix("__version__ = "))
            .unwrap()
            .trim_matches('\'');
        let want = format!("libtorch {v} (tch {})", locked_version("tch"));
        assert!(lines.contains(&want.as_str()), "want {want:?} in\n{long}");
    }
    #[cfg(not(feature = "torch"))]
    assert!(!has("libtorch"), "{long}");
    let features = lines.last().unwrap();
    assert!(features.starts_with("features: "), "{long}");
    for (f, on) in [
        ("edge", cfg!(feature = "edge")),
        ("keras", cfg!(feature = "keras")),
        ("torch", cfg!(feature = "torch")),
    ] {
        assert_eq!(features.contains(f), on, "{f} in {features}");
    }
}
