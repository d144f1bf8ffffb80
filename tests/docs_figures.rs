//! Every figure in docs/benchmarks.md's tables comes from a committed script output.
//!
//! Each benchmark script (scripts/bench.sh, scripts/bench_train.sh, scripts/bench_tract.sh,
//! scripts/bench_edge.sh, scripts/bench_archive.sh) writes its results to `docs/bench/<name>.json`
//! (scripts/bench_json.py): date, CPU, versions, the command that reproduces it, and its
//! tables, each figure a number with the decimals it is printed with. docs/benchmarks.md holds one region per script between
//! `<!-- bench-tables: NAME -->` and `<!-- end bench-tables: NAME -->`, and this file is
//! the generator of those regions: `ALLCONV_WRITE_BENCH_TABLES=1 cargo test --test
//! docs_figures` rewrites them from the JSON files (the scripts do this when they finish).
//!
//! Without that variable it checks:
//! - each region is exactly what the generator makes from the committed JSON;
//! - each figure printed in a region's tables equals the JSON's figure to the printed
//!   decimals (read back from the page, independently of the renderer);
//! - a script with no committed JSON shows no table and no number in its region;
//! - no table with a number stands outside the regions;
//! - README.md and docs/*.md carry no dated runs or development narration;
//! - every option `allconv <command> --help` lists is named in docs/commands.md's section
//!   for the command (or on the command's own page, docs/<command>.md);
//! - docs/tolerances.md describes every test file in tests/.
//!
//! `the_check_fails_where_it_should` feeds the checker pages that break each rule.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The benchmark scripts whose results docs/benchmarks.md shows.
const SCRIPTS: [&str; 7] = [
    "bench",
    "bench_train",
    "bench_train_patch",
    "bench_tract_amd",
    "bench_tract_intel",
    "bench_edge",
    "bench_archive",
];

/// What writes `docs/bench/<name>.json`, as the page says it.
fn producer(name: &str) -> &'static str {
    match name {
        "bench" => "`scripts/bench.sh`",
        "bench_train" => "`scripts/bench_train.sh`",
        "bench_train_patch" => "`scripts/bench_train.sh --patch`",
        "bench_tract_amd" => "`scripts/bench_tract.sh` on an AMD CPU",
        "bench_tract_intel" => "`scripts/bench_tract.sh` on an Intel CPU",
        "bench_edge" => "`scripts/bench_edge.sh`",
        "bench_archive" => "`scripts/bench_archive.sh`",
        other => panic!("no benchmark script writes docs/bench/{other}.json"),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn begin_marker(name: &str) -> String {
    format!("<!-- bench-tables: {name} -->")
}

fn end_marker(name: &str) -> String {
    format!("<!-- end bench-tables: {name} -->")
}

/// A figure cell: `{"value": x, "decimals": d}`.
fn figure(cell: &Value) -> Option<(f64, usize)> {
    let v = cell.get("value")?.as_f64()?;
    let d = cell.get("decimals")?.as_u64()?;
    Some((v, d as usize))
}

fn render_cell(cell: &Value) -> Result<String, String> {
    match cell {
        Value::Null => Ok(String::new()),
        Value::String(s) if s.contains('|') || s.contains('\n') => {
            Err(format!("label {s:?} would break the table"))
        }
        Value::String(s) => Ok(s.clone()),
        c => figure(c)
            .map(|(v, d)| format!("{v:.d$}"))
            .ok_or_else(|| format!("cell {c} is neither a label, a figure nor null")),
    }
}

/// Text on one line, runs of white space as one space (a header line stays one paragraph).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn str_field<'a>(v: &'a Value, key: &str, script: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("docs/bench/{script}.json: no string {key:?}"))
}

/// What the region of `script` holds: its tables from the JSON, or, without one, a line
/// naming the script that produces them and no number.
fn render(script: &str, json: Option<&Value>) -> Result<String, String> {
    let Some(j) = json else {
        return Ok(format!(
            "No results are committed for this script: {} writes \
             `docs/bench/{script}.json` and renders its tables here.\n",
            producer(script)
        ));
    };
    let cpu = j
        .get("cpu")
        .ok_or_else(|| format!("docs/bench/{script}.json: no cpu"))?;
    let flags: Vec<&str> = cpu
        .get("flags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let cores = cpu.get("cores").and_then(Value::as_u64).unwrap_or(0);
    let versions: Vec<String> = j
        .get("versions")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    let mut out = format!(
        "From [`docs/bench/{script}.json`](bench/{script}.json), written by `{}` on {}. \
         CPU: {} ({}), {cores} cores. Versions: {}. Reproduce: `{}`.\n",
        str_field(j, "script", script)?,
        str_field(j, "date", script)?,
        one_line(cpu.get("model").and_then(Value::as_str).unwrap_or("?")),
        flags.join(", "),
        one_line(&versions.join("; ")),
        one_line(str_field(j, "command", script)?),
    );
    let tables = j
        .get("tables")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("docs/bench/{script}.json: no tables"))?;
    for t in tables {
        let columns: Vec<&str> = t
            .get("columns")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let rows = t.get("rows").and_then(Value::as_array);
        let (true, Some(rows)) = (!columns.is_empty(), rows.filter(|r| !r.is_empty())) else {
            return Err(format!(
                "docs/bench/{script}.json: a table without columns or rows"
            ));
        };
        out += &format!("\n**{}**\n\n", str_field(t, "title", script)?);
        out += &format!("| {} |\n", columns.join(" | "));
        out += &format!("|{}\n", "---|".repeat(columns.len()));
        for r in rows {
            let cells = r
                .as_array()
                .filter(|c| c.len() == columns.len())
                .ok_or_else(|| {
                    format!(
                        "docs/bench/{script}.json: row {r} does not have {} cells",
                        columns.len()
                    )
                })?;
            let cells = cells
                .iter()
                .map(render_cell)
                .collect::<Result<Vec<_>, _>>()?;
            out += &format!("| {} |\n", cells.join(" | "));
        }
    }
    Ok(out)
}

/// The byte range of a region's content (between its markers), if both appear once.
fn region(md: &str, name: &str) -> Result<std::ops::Range<usize>, String> {
    let (b, e) = (begin_marker(name), end_marker(name));
    let (nb, ne) = (md.matches(&b).count(), md.matches(&e).count());
    if nb != 1 || ne != 1 {
        return Err(format!(
            "{b} appears {nb} times and {e} {ne} times (want once each)"
        ));
    }
    let start = md.find(&b).unwrap() + b.len();
    let end = md.find(&e).unwrap();
    if end < start {
        return Err(format!("{e} comes before {b}"));
    }
    Ok(start..end)
}

fn table_cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let inner = t.strip_prefix('|').unwrap_or(t);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

fn is_table_line(line: &str) -> bool {
    line.trim_start().starts_with('|')
}

/// Text without its `code spans` (paths like `scripts/bench.sh` are not figures).
fn without_code(s: &str) -> String {
    s.split('`').step_by(2).collect()
}

/// Each figure the page prints in the region's tables against the JSON's figures, read
/// back from the page: tables in order, rows in order, cell by cell.
fn check_figures(script: &str, text: &str, json: &Value, errors: &mut Vec<String>) {
    let empty = vec![];
    let tables = json
        .get("tables")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    // Body rows of each table on the page (the header and the --- line dropped).
    let mut page: Vec<Vec<Vec<String>>> = vec![];
    let mut in_table = false;
    for line in text.lines() {
        if is_table_line(line) {
            if !in_table {
                page.push(vec![]);
                in_table = true;
            }
            page.last_mut().unwrap().push(table_cells(line));
        } else {
            in_table = false;
        }
    }
    if page.len() != tables.len() {
        errors.push(format!(
            "{script}: the page shows {} tables, docs/bench/{script}.json holds {}",
            page.len(),
            tables.len()
        ));
        return;
    }
    let mut figures = 0;
    for (ti, (shown, t)) in page.iter().zip(tables).enumerate() {
        let rows = t.get("rows").and_then(Value::as_array).unwrap_or(&empty);
        let body = shown.get(2..).unwrap_or(&[]);
        if body.len() != rows.len() {
            errors.push(format!(
                "{script} table {ti}: {} rows on the page, {} in the JSON",
                body.len(),
                rows.len()
            ));
            continue;
        }
        for (ri, (cells, row)) in body.iter().zip(rows).enumerate() {
            let want = row.as_array().unwrap_or(&empty);
            if cells.len() != want.len() {
                errors.push(format!("{script} table {ti} row {ri}: cell count differs"));
                continue;
            }
            for (ci, (got, w)) in cells.iter().zip(want).enumerate() {
                let Some((value, decimals)) = figure(w) else {
                    continue;
                };
                figures += 1;
                let half_unit = 0.5 * 10f64.powi(-(decimals as i32)) + 1e-9;
                match got.parse::<f64>() {
                    Ok(x) if (x - value).abs() <= half_unit => {}
                    _ => errors.push(format!(
                        "{script} table {ti} row {ri} cell {ci}: the page shows {got:?}, \
                         docs/bench/{script}.json holds {value} ({decimals} decimals)"
                    )),
                }
            }
        }
    }
    if figures == 0 {
        errors.push(format!("{script}: the tables hold no figure"));
    }
}

/// Every rule over one benchmarks page and the JSON files present (by script name).
fn check(md: &str, jsons: &BTreeMap<String, Value>) -> Vec<String> {
    check_regions(md, &SCRIPTS, jsons, true)
}

/// The regions of `scripts` in `md` checked; with `outside`, also that no table with
/// figures stands outside them (README.md has the mini-MIAS table, checked on its own).
fn check_regions(
    md: &str,
    scripts: &[&str],
    jsons: &BTreeMap<String, Value>,
    outside: bool,
) -> Vec<String> {
    let mut errors = vec![];
    let mut regions = vec![];
    for &script in scripts {
        let r = match region(md, script) {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("{script}: {e}"));
                continue;
            }
        };
        let text = &md[r.clone()];
        regions.push(r);
        let json = jsons.get(script);
        match render(script, json) {
            Ok(want) if text.trim() == want.trim() => {}
            Ok(_) => errors.push(format!(
                "{script}: the region is not what the generator makes from {}; run \
                 ALLCONV_WRITE_BENCH_TABLES=1 cargo test --test docs_figures",
                if json.is_some() {
                    format!("docs/bench/{script}.json")
                } else {
                    "no JSON (no committed results)".into()
                }
            )),
            Err(e) => errors.push(format!("{script}: {e}")),
        }
        match json {
            Some(j) => check_figures(script, text, j, &mut errors),
            None => {
                if text.lines().any(is_table_line) {
                    errors.push(format!(
                        "{script}: a table is shown but docs/bench/{script}.json is not committed"
                    ));
                }
                if without_code(text).chars().any(|c| c.is_ascii_digit()) {
                    errors.push(format!(
                        "{script}: a number is shown but docs/bench/{script}.json is not committed"
                    ));
                }
            }
        }
    }
    for (i, line) in md.lines().enumerate().filter(|_| outside) {
        let at = line.as_ptr() as usize - md.as_ptr() as usize;
        let inside = regions.iter().any(|r| r.contains(&at));
        if !inside && is_table_line(line) && line.chars().any(|c| c.is_ascii_digit()) {
            errors.push(format!(
                "line {}: a table with figures outside the generated regions: {line}",
                i + 1
            ));
        }
    }
    errors
}

fn committed_jsons() -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for script in SCRIPTS {
        let p = root().join(format!("docs/bench/{script}.json"));
        if let Ok(text) = std::fs::read_to_string(&p) {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            m.insert(script.to_string(), v);
        }
    }
    m
}

/// The page with every region replaced by what the generator makes.
fn regenerate(md: &str, jsons: &BTreeMap<String, Value>) -> Result<String, String> {
    regenerate_regions(md, &SCRIPTS, jsons)
}

fn regenerate_regions(
    md: &str,
    scripts: &[&str],
    jsons: &BTreeMap<String, Value>,
) -> Result<String, String> {
    let mut out = md.to_string();
    for &script in scripts {
        let r = region(&out, script).map_err(|e| format!("{script}: {e}"))?;
        let body = render(script, jsons.get(script))?;
        out.replace_range(r, &format!("\n\n{body}\n"));
    }
    Ok(out)
}

#[test]
fn benchmark_tables_are_the_committed_json() {
    let path = root().join("docs/benchmarks.md");
    let md = std::fs::read_to_string(&path).expect("docs/benchmarks.md");
    let jsons = committed_jsons();
    if std::env::var("ALLCONV_WRITE_BENCH_TABLES").is_ok_and(|v| v == "1") {
        let new = regenerate(&md, &jsons).unwrap_or_else(|e| panic!("{e}"));
        allconv::files::write_atomic(&path, new.as_bytes()).expect("write docs/benchmarks.md");
        eprintln!(
            "docs_figures: rendered {} from {:?}",
            path.display(),
            jsons.keys()
        );
        return;
    }
    let errors = check(&md, &jsons);
    assert!(
        errors.is_empty(),
        "docs/benchmarks.md:\n{}",
        errors.join("\n")
    );
}

/// README.md sits one folder above docs/: its links to the results, and the pages' form.
const README_LINK: (&str, &str) = ("](docs/bench/", "](bench/");

/// The scripts whose tables README.md shows too (training against tf-keras, archive
/// scoring's cost model).
const README_SCRIPTS: [&str; 3] = ["bench_train", "bench_train_patch", "bench_archive"];

#[test]
fn readme_benchmark_tables_are_the_committed_json() {
    let path = root().join("README.md");
    let md = std::fs::read_to_string(&path).expect("README.md");
    let jsons = committed_jsons();
    if std::env::var("ALLCONV_WRITE_BENCH_TABLES").is_ok_and(|v| v == "1") {
        let new = regenerate_regions(&md, &README_SCRIPTS, &jsons)
            .unwrap_or_else(|e| panic!("{e}"))
            .replace(README_LINK.1, README_LINK.0);
        allconv::files::write_atomic(&path, new.as_bytes()).expect("write README.md");
        return;
    }
    let as_in_docs = md.replace(README_LINK.0, README_LINK.1);
    let errors = check_regions(&as_in_docs, &README_SCRIPTS, &jsons, false);
    assert!(errors.is_empty(), "README.md:\n{}", errors.join("\n"));
}

#[test]
fn the_check_fails_where_it_should() {
    let json: Value = serde_json::json!({
        "script": "scripts/bench_train.sh",
        "command": "scripts/bench_train.sh",
        "date": "DATE",
        "cpu": {"model": "CPU", "flags": ["avx2"], "cores": 2},
        "versions": {"tract": "0.23.9"},
        "tables": [{"title": "T", "columns": ["measure", "allconv", "peer", "ratio"],
                    "rows": [["images/s", {"value": 0.431, "decimals": 2},
                              {"value": 0.5, "decimals": 2}, null]]}]
    });
    let page = |train: &str| {
        let mut md = String::from("# Benchmarks\n");
        for s in SCRIPTS {
            let body = if s == "bench_train" {
                train.to_string()
            } else {
                render(s, None).unwrap()
            };
            md += &format!("{}\n{body}{}\n", begin_marker(s), end_marker(s));
        }
        md
    };
    let with = BTreeMap::from([("bench_train".to_string(), json.clone())]);
    let without = BTreeMap::new();
    let rendered = render("bench_train", Some(&json)).unwrap();
    assert!(
        rendered.contains("| images/s | 0.43 | 0.50 |  |"),
        "{rendered}"
    );

    // What the generator makes passes, with and without a JSON.
    assert_eq!(check(&page(&rendered), &with), Vec::<String>::new());
    let absent = render("bench_train", None).unwrap();
    assert_eq!(check(&page(&absent), &without), Vec::<String>::new());

    // A table whose JSON is not committed.
    let e = check(&page(&rendered), &without);
    assert!(e.iter().any(|e| e.contains("not committed")), "{e:?}");
    // A figure that differs from its JSON (the rest of the page as generated).
    let e = check(&page(&rendered.replace("0.43", "0.44")), &with);
    assert!(
        e.iter().any(|e| e.contains("the page shows \"0.44\"")),
        "{e:?}"
    );
    // A JSON committed but the page not regenerated.
    let e = check(&page(&absent), &with);
    assert!(
        e.iter().any(|e| e.contains("not what the generator makes")),
        "{e:?}"
    );
    // A region missing.
    let md = page(&rendered).replace(&end_marker("bench"), "");
    assert!(!check(&md, &with).is_empty());
    // A hand-written table with figures outside the regions.
    let md = page(&rendered) + "\n| measure | s |\n|---|---|\n| convert | 1.12 |\n";
    let e = check(&md, &with);
    assert!(
        e.iter()
            .any(|e| e.contains("outside the generated regions")),
        "{e:?}"
    );
    // A number in a region without JSON, even in prose.
    let e = check(&page(&(absent.clone() + "It took 3 s.\n")), &without);
    assert!(e.iter().any(|e| e.contains("a number is shown")), "{e:?}");
    // The generator refuses a malformed JSON rather than rendering a partial table.
    let mut bad = json.clone();
    bad["tables"][0]["rows"][0] = serde_json::json!(["images/s", 1]);
    assert!(render("bench_train", Some(&bad)).is_err());
}

/// Words that narrate how the product was made, not what it is (the same words the
/// repository's before-stop hook looks for), and dated runs.
fn narration(text: &str) -> Vec<String> {
    let mut found = vec![];
    for (i, line) in text.lines().enumerate() {
        let lower = line.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .filter(|w| !w.is_empty())
            .collect();
        let hit = words.iter().any(|w| *w == "session" || *w == "sessions")
            || lower.contains("of the day")
            || words.iter().any(|w| *w == "lent")
            || words.iter().any(|w| is_iso_date(w));
        if hit {
            found.push(format!("{}: {line}", i + 1));
        }
    }
    found
}

fn is_iso_date(w: &str) -> bool {
    let b = w.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[test]
fn docs_describe_the_product_not_its_history() {
    let mut pages: Vec<PathBuf> = vec![root().join("README.md")];
    let docs = std::fs::read_dir(root().join("docs")).expect("docs/");
    pages.extend(
        docs.filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md")),
    );
    assert!(pages.len() >= 9, "README.md and the docs pages: {pages:?}");
    let mut errors = vec![];
    for p in &pages {
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // The generated regions (benchmarks.md's, README.md's) carry the JSON's date by
        // design; the regions themselves are checked against the JSON.
        let text = strip_regions(&text);
        for hit in narration(&text) {
            errors.push(format!("{}:{hit}", rel(p)));
        }
    }
    assert!(
        errors.is_empty(),
        "narration in the docs:\n{}",
        errors.join("\n")
    );
    // The detector itself finds what it looks for.
    assert_eq!(narration("Measured 2026-11-29 on this machine.").len(), 1);
    assert_eq!(narration("the third run this session").len(), 1);
    assert!(narration("allconv converts a Keras file").is_empty());
}

fn strip_regions(md: &str) -> String {
    let mut out = md.to_string();
    for s in SCRIPTS {
        if let Ok(r) = region(&out, s) {
            out.replace_range(r, "\n");
        }
    }
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// `allconv ARGS... --help`, without terminal styling.
fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_allconv"))
        .args(args)
        .arg("--help")
        .output()
        .expect("allconv runs");
    assert!(out.status.success(), "allconv {args:?} --help failed");
    strip_ansi(&String::from_utf8_lossy(&out.stdout))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines of a help section (`Commands:`, `Options:`) up to the next blank line or heading.
fn help_section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = help.lines().skip_while(|l| l.trim() != heading);
    lines.next();
    lines
        .take_while(|l| !l.trim().is_empty() && l.starts_with(' '))
        .collect()
}

/// Subcommand names a help text lists (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help_section(help, "Commands:")
        .iter()
        .filter(|l| l.len() - l.trim_start().len() <= 4)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect()
}

/// The long options a help text lists: each option line's own `--name` (not the options
/// its description mentions).
fn long_options(help: &str) -> Vec<String> {
    let mut v = vec![];
    let mut in_options = false;
    for l in help.lines() {
        let t = l.trim();
        if t.ends_with(':') && !l.starts_with(' ') {
            in_options = t == "Options:";
            continue;
        }
        let indent = l.len() - l.trim_start().len();
        if !in_options || indent > 6 || !t.starts_with('-') {
            continue;
        }
        let name = t
            .split([',', ' ', '='])
            .map(str::trim)
            .find(|w| w.starts_with("--"))
            .map(|w| {
                w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                    .to_string()
            });
        if let Some(n) = name.filter(|n| n.len() > 2) {
            v.push(n);
        }
    }
    v
}

/// Whether `text` names `--opt` as a whole option (not as the start of a longer one).
fn names_option(text: &str, opt: &str) -> bool {
    text.match_indices(opt).any(|(i, _)| {
        let after = text[i + opt.len()..].chars().next();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// docs/commands.md's section for `cmd` (from `## cmd` to the next `## `), if any.
fn section<'a>(md: &'a str, cmd: &str) -> Option<&'a str> {
    let head = format!("## {cmd}\n");
    let (start, _) = md
        .match_indices(&head)
        .find(|(i, _)| *i == 0 || md.as_bytes()[i - 1] == b'\n')?;
    let body = start + head.len();
    let end = md[body..].find("\n## ").map_or(md.len(), |e| body + e);
    Some(&md[start..end])
}

#[test]
fn every_option_in_help_is_documented() {
    let md = std::fs::read_to_string(root().join("docs/commands.md")).expect("docs/commands.md");
    let top = help(&[]);
    let commands = subcommands(&top);
    assert!(
        commands.len() >= 8,
        "commands in allconv --help: {commands:?}"
    );
    // Options every command shares (global ones, the .h5 reading options) are documented
    // once, before the first command's section.
    let first = commands
        .iter()
        .filter_map(|c| md.find(&format!("\n## {c}\n")))
        .min()
        .unwrap_or(md.len());
    let shared = &md[..first];
    let global = long_options(&top);
    let mut errors = vec![];
    for g in &global {
        if !matches!(g.as_str(), "--help" | "--version") && !names_option(shared, g) {
            errors.push(format!("global option {g} is not documented"));
        }
    }
    let mut checked = 0;
    for cmd in &commands {
        let own_page = root().join(format!("docs/{cmd}.md"));
        let text = match (section(&md, cmd), std::fs::read_to_string(&own_page)) {
            (Some(s), _) => s.to_string(),
            (None, Ok(page)) => page,
            (None, Err(_)) => {
                errors.push(format!(
                    "`allconv {cmd}` has neither a `## {cmd}` section in docs/commands.md nor docs/{cmd}.md"
                ));
                continue;
            }
        };
        let h = help(&[cmd.as_str()]);
        let mut helps = vec![(cmd.clone(), h.clone())];
        for sub in subcommands(&h) {
            helps.push((format!("{cmd} {sub}"), help(&[cmd.as_str(), sub.as_str()])));
        }
        for (name, h) in &helps {
            for opt in long_options(h) {
                if global.contains(&opt) || opt == "--help" {
                    continue;
                }
                checked += 1;
                if !names_option(&text, &opt) && !names_option(shared, &opt) {
                    errors.push(format!("`allconv {name} {opt}` is not documented"));
                }
            }
        }
    }
    assert!(
        checked >= 50,
        "only {checked} options found in the help texts"
    );
    assert!(
        errors.is_empty(),
        "docs/commands.md:\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_help_parser_reads_clap_help() {
    let h = "Usage: x [OPTIONS]\n\nCommands:\n  run   Run it\n  help  Print this\n\nOptions:\n      --shape <SHAPE>\n          The --threads option is not this line's\n  -o, --output <OUTPUT>  Output\n  -h, --help  Print help\n";
    assert_eq!(subcommands(h), ["run"]);
    assert_eq!(long_options(h), ["--shape", "--output", "--help"]);
    assert!(names_option("`--top-depths N`", "--top-depths"));
    assert!(!names_option("`--top-depths N`", "--top"));
    let md = "intro\n## run\nuse --shape\n## other\n--output\n";
    assert_eq!(section(md, "run"), Some("## run\nuse --shape"));
    assert!(!section(md, "run").unwrap().contains("--output"));
}

#[test]
fn every_test_file_is_described_in_tolerances() {
    let md = std::fs::read_to_string(root().join("docs/tolerances.md")).expect("tolerances.md");
    let mut files: Vec<String> = std::fs::read_dir(root().join("tests"))
        .expect("tests/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "test files: {files:?}");
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !md.contains(&format!("| `{f}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/tolerances.md has no row for {missing:?} in \"What each test proves\""
    );
}

/// The results of `scripts/mias_end_to_end.sh` as docs/mias.md and README.md show them:
/// one row per task from the committed report (`docs/mias/TASK.json`), or the reason the
/// task was skipped (`docs/mias/TASK.skipped`).
fn mias_table(dir: &Path) -> Result<String, String> {
    let ci = |v: &Value| -> String {
        match v["ci_bootstrap"].as_array() {
            Some(c) if c.len() == 2 => format!(
                " ({:.3} to {:.3})",
                c[0].as_f64().unwrap_or(f64::NAN),
                c[1].as_f64().unwrap_or(f64::NAN)
            ),
            _ => String::new(),
        }
    };
    let mut t = String::from(
        "| task | test views | positive | negative | AUROC, single view (95% CI) | AUROC, 4-flip TTA (95% CI) | TTA minus single (95% CI) |\n|---|---|---|---|---|---|---|\n",
    );
    let mut rows = 0;
    for task in ["malignant", "abnormal"] {
        let skipped = dir.join(format!("{task}.skipped"));
        if let Ok(why) = std::fs::read_to_string(&skipped) {
            t += &format!("| {task} | skipped: {} | | | | | |\n", one_line(why.trim()));
            rows += 1;
            continue;
        }
        let path = dir.join(format!("{task}.json"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let b = &v["binary"];
        let num = |x: &Value| {
            x.as_f64()
                .ok_or_else(|| format!("{}: a number is missing", path.display()))
        };
        let diff = &b["tta_minus_single"];
        t += &format!(
            "| {task} | {} | {} | {} | {:.3}{} | {:.3}{} | {:+.3}{} |\n",
            v["images"],
            b["positives"],
            b["negatives"],
            num(&b["single"]["auroc"])?,
            ci(&b["single"]),
            num(&b["tta"]["auroc"])?,
            ci(&b["tta"]),
            num(&diff["difference"])?,
            ci(diff),
        );
        rows += 1;
    }
    if rows == 0 {
        return Err(format!("{}: no task report", dir.display()));
    }
    Ok(t)
}

/// docs/mias.md's and README.md's results tables (between `<!-- mias-results -->` and
/// `<!-- end mias-results -->`) are exactly what the committed reports give, and each
/// report is what `allconv evaluate --from-scores` computes again from the committed
/// per-image scores alone.
#[test]
fn mias_results_are_the_committed_reports() {
    let dir = root().join("docs/mias");
    let table = mias_table(&dir).expect("the committed mini-MIAS reports");
    for page in ["docs/mias.md", "README.md"] {
        let md = std::fs::read_to_string(root().join(page)).unwrap();
        let (b, e) = ("<!-- mias-results -->\n", "<!-- end mias-results -->");
        let start = md.find(b).unwrap_or_else(|| panic!("{page}: no {b:?}")) + b.len();
        let end = md[start..]
            .find(e)
            .unwrap_or_else(|| panic!("{page}: no {e:?}"))
            + start;
        assert_eq!(
            md[start..end].trim(),
            table.trim(),
            "{page}: the results table"
        );
    }
    let mut checked = 0;
    for task in ["malignant", "abnormal"] {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{task}.json"))) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        let scores = dir.join(format!("{task}.scores.csv"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_allconv"))
            .arg("evaluate")
            .arg("--from-scores")
            .arg(&scores)
            .args(["--bootstrap", &v["bootstrap_resamples"].to_string()])
            .args(["--seed", &v["seed"].to_string()])
            .arg("--json")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let again: Value = serde_json::from_slice(&o.stdout).unwrap();
        for key in [
            "/binary/single/auroc",
            "/binary/single/ci_bootstrap/0",
            "/binary/single/ci_bootstrap/1",
            "/binary/tta/auroc",
            "/binary/tta/ci_bootstrap/0",
            "/binary/tta/ci_bootstrap/1",
            "/binary/tta_minus_single/difference",
            "/binary/tta_minus_single/ci_bootstrap/0",
            "/binary/tta_minus_single/ci_bootstrap/1",
        ] {
            let (a, b) = (v.pointer(key), again.pointer(key));
            let (a, b) = (a.and_then(Value::as_f64), b.and_then(Value::as_f64));
            assert!(
                a.is_some() && b.is_some() && (a.unwrap() - b.unwrap()).abs() <= 1e-12,
                "{task}{key}: report {a:?}, from the scores {b:?}"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no task report was recomputed");
}
