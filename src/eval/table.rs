//! The per-image table an evaluation runs on: path, true class and the model's class
//! probabilities (single view, and with 4-flip TTA where it ran), and its CSV form.
//!
//! Scores CSV (`--scores`, read back by `--from-scores`), RFC 4180 quoting:
//!
//! ```text
//! path,label,p:neg,p:pos,tta:neg,tta:pos
//! test/neg/a.png,neg,0.8125,0.1875,0.75,0.25
//! ```
//!
//! `label` is the class name; one `p:<class>` column per class, in the model's output
//! order (which defines the class list); `tta:<class>` columns, the same classes in the
//! same order, only where TTA ran. Numbers are written in the shortest form that reads
//! back to the same `f64`, so metrics recomputed from the file are the same numbers.
//!
//! Manifest CSV (`--manifest`): a header with `path` and `label` columns (others are
//! ignored); a relative path is taken from the manifest's folder.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One row per image.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreTable {
    /// Class names in the model's output order.
    pub classes: Vec<String>,
    pub paths: Vec<String>,
    /// Index into `classes`.
    pub labels: Vec<usize>,
    /// The model's output per image (single view; or the model's own in-graph TTA).
    pub probs: Vec<Vec<f64>>,
    /// The mean over the image and its 3 flips, where TTA ran on the host.
    pub probs_tta: Option<Vec<Vec<f64>>>,
}

fn bad(file: &Path, what: impl Into<String>, message: impl Into<String>) -> Error {
    Error::BadFormat {
        file: file.to_path_buf(),
        what: what.into(),
        message: message.into(),
    }
}

/// Parses CSV text (RFC 4180: quoted fields, `""` inside quotes, CR LF or LF) into
/// records, each with the line it starts on (1-based). Blank lines are skipped.
pub fn parse_csv(text: &str, file: &Path) -> Result<Vec<(usize, Vec<String>)>> {
    let mut records = Vec::new();
    let mut field = String::new();
    let mut record: Vec<String> = Vec::new();
    let mut line = 1;
    let mut start_line = 1;
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            '"' => {
                return Err(bad(
                    file,
                    format!("line {line}"),
                    "a quote inside an unquoted field (quote the whole field and double the quote)",
                ))
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
                if !(record.len() == 1 && record[0].is_empty()) {
                    records.push((start_line, std::mem::take(&mut record)));
                }
                record.clear();
                line += 1;
                start_line = line;
            }
            _ => {
                if was_quoted {
                    return Err(bad(
                        file,
                        format!("line {line}"),
                        "text after a closing quote",
                    ));
                }
                field.push(c)
            }
        }
    }
    if quoted {
        return Err(bad(
            file,
            format!("line {start_line}"),
            "a quoted field is not closed",
        ));
    }
    if !field.is_empty() || !record.is_empty() || was_quoted {
        record.push(field);
        records.push((start_line, record));
    }
    Ok(records)
}

/// A field quoted where CSV needs it.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = crate::files::read(path)?;
    String::from_utf8(bytes).map_err(|_| bad(path, "encoding", "not UTF-8 text"))
}

impl ScoreTable {
    /// The table as a scores CSV (see the module docs).
    pub fn to_csv(&self) -> String {
        let mut head = vec!["path".to_string(), "label".to_string()];
        head.extend(self.classes.iter().map(|c| csv_field(&format!("p:{c}"))));
        if self.probs_tta.is_some() {
            head.extend(self.classes.iter().map(|c| csv_field(&format!("tta:{c}"))));
        }
        let mut out = head.join(",");
        out.push('\n');
        for i in 0..self.paths.len() {
            let mut f = vec![
                csv_field(&self.paths[i]),
                csv_field(&self.classes[self.labels[i]]),
            ];
            f.extend(self.probs[i].iter().map(|v| format!("{v}")));
            if let Some(t) = &self.probs_tta {
                f.extend(t[i].iter().map(|v| format!("{v}")));
            }
            out.push_str(&f.join(","));
            out.push('\n');
        }
        out
    }

    /// Writes the scores CSV whole or not at all.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        crate::files::write_atomic(path, self.to_csv().as_bytes())
    }

    /// Reads a scores CSV; every bad row is reported at once.
    pub fn read_csv(path: &Path) -> Result<ScoreTable> {
        let text = read_text(path)?;
        let records = parse_csv(&text, path)?;
        let Some((_, head)) = records.first() else {
            return Err(bad(path, "header", "the file is empty"));
        };
        let col = |name: &str| head.iter().position(|h| h == name);
        let (Some(pc), Some(lc)) = (col("path"), col("label")) else {
            return Err(bad(
                path,
                "header",
                "expected the columns path, label, p:<class>... (as `allconv evaluate --scores` writes them)",
            ));
        };
        let p_cols: Vec<(usize, String)> = head
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.strip_prefix("p:").map(|c| (i, c.to_string())))
            .collect();
        let t_cols: Vec<(usize, String)> = head
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.strip_prefix("tta:").map(|c| (i, c.to_string())))
            .collect();
        if p_cols.is_empty() {
            return Err(bad(path, "header", "no p:<class> columns"));
        }
        let classes: Vec<String> = p_cols.iter().map(|(_, c)| c.clone()).collect();
        if !t_cols.is_empty() && t_cols.iter().map(|(_, c)| c).ne(classes.iter()) {
            return Err(bad(
                path,
                "header",
                "the tta:<class> columns must name the same classes as the p:<class> columns, in the same order",
            ));
        }
        let mut t = ScoreTable {
            classes,
            paths: Vec::new(),
            labels: Vec::new(),
            probs: Vec::new(),
            probs_tta: (!t_cols.is_empty()).then(Vec::new),
        };
        let mut errors = Vec::new();
        for (line, rec) in &records[1..] {
            if rec.len() != head.len() {
                errors.push(format!(
                    "line {line}: {} fields, the header has {}",
                    rec.len(),
                    head.len()
                ));
                continue;
            }
            let Some(label) = t.classes.iter().position(|c| *c == rec[lc]) else {
                errors.push(format!(
                    "line {line}: label {:?} is not one of the classes {:?}",
                    rec[lc], t.classes
                ));
                continue;
            };
            let nums = |cols: &[(usize, String)], errors: &mut Vec<String>| -> Option<Vec<f64>> {
                let mut v = Vec::new();
                for (i, name) in cols {
                    match rec[*i].trim().parse::<f64>() {
                        Ok(x) if x.is_finite() => v.push(x),
                        _ => {
                            errors.push(format!(
                                "line {line}, column {}: {:?} is not a finite number",
                                head[*i], rec[*i]
                            ));
                            let _ = name;
                            return None;
                        }
                    }
                }
                Some(v)
            };
            let p = nums(&p_cols, &mut errors);
            let q = if t_cols.is_empty() {
                Some(Vec::new())
            } else {
                nums(&t_cols, &mut errors)
            };
            if let (Some(p), Some(q)) = (p, q) {
                t.paths.push(rec[pc].clone());
                t.labels.push(label);
                t.probs.push(p);
                if let Some(tt) = &mut t.probs_tta {
                    tt.push(q);
                }
            }
        }
        if !errors.is_empty() {
            return Err(bad(
                path,
                format!("{} bad row(s)", errors.len()),
                errors.join("; "),
            ));
        }
        if t.paths.is_empty() {
            return Err(bad(path, "rows", "no images"));
        }
        Ok(t)
    }
}

/// A labelled image list: (path, class name) in file order.
pub fn read_manifest(path: &Path) -> Result<Vec<(PathBuf, String)>> {
    let text = read_text(path)?;
    let records = parse_csv(&text, path)?;
    let Some((_, head)) = records.first() else {
        return Err(bad(path, "header", "the file is empty"));
    };
    let col = |name: &str| head.iter().position(|h| h.trim() == name);
    let (Some(pc), Some(lc)) = (col("path"), col("label")) else {
        return Err(bad(
            path,
            "header",
            "expected a header with the columns path and label",
        ));
    };
    let base = path.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (line, rec) in &records[1..] {
        match (rec.get(pc), rec.get(lc)) {
            (Some(p), Some(l)) if !p.is_empty() && !l.is_empty() => {
                let p = PathBuf::from(p);
                out.push((if p.is_absolute() { p } else { base.join(p) }, l.clone()));
            }
            _ => errors.push(format!("line {line}: empty or missing path or label")),
        }
    }
    if !errors.is_empty() {
        return Err(bad(
            path,
            format!("{} bad row(s)", errors.len()),
            errors.join("; "),
        ));
    }
    if out.is_empty() {
        return Err(bad(path, "rows", "no images listed"));
    }
    Ok(out)
}

/// The class folders of a test folder: its non-hidden sub-folders, sorted by name.
pub fn class_folders(root: &Path) -> Result<Vec<String>> {
    let io = |e: std::io::Error| Error::Io {
        file: root.to_path_buf(),
        message: e.to_string(),
    };
    let mut v = Vec::new();
    for e in std::fs::read_dir(root).map_err(io)? {
        let e = e.map_err(io)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_dir() {
            v.push(name);
        }
    }
    v.sort();
    if v.is_empty() {
        return Err(Error::Io {
            file: root.to_path_buf(),
            message: "no class folders (expected one sub-folder per class)".into(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips_quotes_commas_and_numbers() {
        let t = ScoreTable {
            classes: vec!["neg".into(), "p,os".into()],
            paths: vec!["a \"b\".png".into(), "c,d.png".into()],
            labels: vec![0, 1],
            probs: vec![vec![0.1, 0.9], vec![1.0 / 3.0, 2.0 / 3.0]],
            probs_tta: Some(vec![vec![0.25, 0.75], vec![1e-30, 1.0]]),
        };
        let dir = std::env::temp_dir().join(format!("allconv_eval_csv_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.csv");
        t.write_csv(&p).unwrap();
        assert_eq!(ScoreTable::read_csv(&p).unwrap(), t);
        std::fs::write(&p, "path,label,p:a,p:b\nx,a,0.1,zz\ny,c,0.1,0.2\n").unwrap();
        let e = ScoreTable::read_csv(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn the_json_report_reads_back_with_its_infinite_threshold() {
        let t = ScoreTable {
            classes: vec!["neg".into(), "pos".into()],
            paths: (0..6).map(|i| format!("{i}.png")).collect(),
            labels: vec![0, 1, 0, 1, 0, 1],
            probs: [0.1, 0.8, 0.4, 0.4, 0.3, 0.9]
                .iter()
                .map(|&p| vec![1.0 - p, p])
                .collect(),
            probs_tta: None,
        };
        let r = crate::eval::evaluate(
            &t,
            &crate::eval::EvalOptions {
                bootstrap: 50,
                ..Default::default()
            },
        )
        .unwrap();
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"thresholds\":[null,"), "{text}");
        let back: crate::eval::EvalReport = serde_json::from_str(&text).unwrap();
        let b = back.binary.unwrap();
        assert_eq!(b.single.roc.thresholds[0], f64::INFINITY);
        assert_eq!(b.single.roc, r.binary.unwrap().single.roc);
    }
}
