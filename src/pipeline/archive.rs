//! Archive scoring: one shard of a manifest scored into its own folder in chunks, each
//! written whole (temp file, then rename), so that a task killed at any moment loses at
//! most the rows of the chunk in progress, and a re-run skips every row already written.
//!
//! ```text
//! OUT/shard-00002-of-00004/run.json           what ran: manifest, model, preprocessing (SHA-256s)
//! OUT/shard-00002-of-00004/part-000000.parquet  rows, in the order they finished
//! OUT/shard-00002-of-00004/part-000001.parquet
//! ```
//!
//! A failed image (unreadable, wrong bit depth, too small) is a row with status `failed`
//! and its reason; the shard goes on. `allconv merge` ([`super::merge`]) joins the shards.

use super::manifest::{Manifest, ManifestRow, Shard};
use super::table::{write_table, Column, Format, Table, Values};
use super::{Res, Row, RunInfo, ScoreOptions};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Where and how one shard is scored.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub manifest: PathBuf,
    pub path_column: String,
    pub out: PathBuf,
    pub shard: Shard,
    /// Rows per chunk file.
    pub chunk_rows: usize,
    pub format: Format,
    /// Score again the rows earlier runs recorded as failed (a file that was unreadable
    /// on a flaky mount, say): they are taken out of their chunks first, so that no row
    /// is ever written twice.
    pub retry_failed: bool,
}

/// What a shard run did.
#[derive(Debug, Clone)]
pub struct ShardReport {
    pub dir: PathBuf,
    pub shard: Shard,
    /// The manifest rows this shard owns (`start..end`).
    pub rows: std::ops::Range<usize>,
    /// Rows found done in earlier runs' chunks (skipped).
    pub resumed: usize,
    /// Failed rows taken out of earlier chunks to be scored again (`retry_failed`).
    pub retried: usize,
    /// Rows scored by this run, and of those, failures.
    pub scored: usize,
    pub failed: usize,
    pub chunks_written: usize,
    pub seconds: f64,
    pub model_sha256: String,
    pub info: Option<RunInfo>,
}

/// The run record's fields that a resumed run must share with the one before.
const MUST_MATCH: &[&str] = &[
    "manifest_sha256",
    "manifest_rows",
    "path_column",
    "shard",
    "model_sha256",
    "preprocess",
    "tta",
];

/// Scores `so.shard` of the manifest into `so.out`, resuming from the chunks there;
/// `on_row(row, to_score)` sees each row as it finishes (progress, warnings; `to_score`:
/// the rows this run scores in all).
pub fn run_shard(
    opts: &ScoreOptions,
    so: &ShardOptions,
    mut on_row: impl FnMut(&Row, usize),
) -> Res<ShardReport> {
    let start = std::time::Instant::now();
    let manifest = Manifest::read(&so.manifest, &so.path_column)?;
    let n = manifest.rows.len();
    let range = so.shard.rows(n);
    let dir = so.out.join(so.shard.dir_name());
    refuse_other_splits(&so.out, so.shard)?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    remove_stale_temps(&dir)?;
    let mut done = rows_done(&dir)?;
    if let Some(r) = done.iter().find(|r| !range.contains(r)) {
        return Err(format!(
            "{}: holds row {r}, outside this shard's rows {}..{}: the folder belongs to another manifest or shard",
            dir.display(),
            range.start,
            range.end
        ));
    }
    let model_sha256 = crate::files::sha256_file(&opts.model).map_err(|e| e.to_string())?;
    let mut record = json!({
        "allconv": env!("CARGO_PKG_VERSION"),
        // Absolute, so that `merge` run from another folder still finds it.
        "manifest": absolute(&manifest.file).display().to_string(),
        "manifest_sha256": manifest.sha256,
        "manifest_rows": n,
        "path_column": so.path_column,
        "shard": so.shard.to_string(),
        "rows": [range.start, range.end],
        "model": absolute(&opts.model).display().to_string(),
        "model_sha256": model_sha256,
    });
    let record_path = dir.join("run.json");
    let earlier: Option<Value> = match std::fs::read(&record_path) {
        Ok(b) => Some(
            serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", record_path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", record_path.display())),
    };
    check_same(&record_path, earlier.as_ref(), &record, false)?;
    let retried = if so.retry_failed {
        drop_failed_rows(&dir, &mut done)?
    } else {
        0
    };
    let todo: Vec<&ManifestRow> = manifest.rows[range.clone()]
        .iter()
        .filter(|r| !done.contains(&r.index))
        .collect();
    let images: Vec<PathBuf> = todo.iter().map(|r| r.image.clone()).collect();
    let to_score = images.len();
    let mut next_part = next_part_number(&dir)?;
    let mut report = ShardReport {
        dir: dir.clone(),
        shard: so.shard,
        rows: range.clone(),
        resumed: done.len(),
        retried,
        scored: 0,
        failed: 0,
        chunks_written: 0,
        seconds: 0.0,
        model_sha256,
        info: None,
    };
    let mut pending: Vec<(usize, Row)> = Vec::new();
    let engine = std::cell::RefCell::new(String::new());
    let mut flush = |pending: &mut Vec<(usize, Row)>, engine: &str| -> Res<usize> {
        if pending.is_empty() {
            return Ok(0);
        }
        let table = chunk_table(&manifest, &todo, pending, engine);
        let path = dir.join(format!("part-{next_part:06}.{}", so.format.extension()));
        write_table(&path, &table)?;
        next_part += 1;
        pending.clear();
        Ok(1)
    };
    let info = super::score_stream(
        opts,
        &images,
        |info| {
            record["preprocess"] = json!(info.preprocess);
            record["preprocess_source"] = json!(info.preprocess_source);
            record["tta"] = json!(info.tta);
            record["engine"] = json!(info.engine);
            check_same(&record_path, earlier.as_ref(), &record, true)?;
            *engine.borrow_mut() = info.engine.clone();
            let bytes = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
            crate::files::write_atomic(&record_path, &bytes).map_err(|e| e.to_string())
        },
        |i, row| {
            on_row(&row, to_score);
            report.scored += 1;
            report.failed += usize::from(row.result.is_err());
            pending.push((i, row));
            if pending.len() >= so.chunk_rows {
                report.chunks_written += flush(&mut pending, &engine.borrow())?;
            }
            Ok(())
        },
    );
    // What finished before an error is kept: the next run resumes after it.
    report.chunks_written += flush(&mut pending, &engine.borrow())?;
    report.info = Some(info?);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Refuses to mix runs: the earlier record's fields in [`MUST_MATCH`] must equal this
/// run's (those known so far unless `complete`).
fn check_same(path: &Path, earlier: Option<&Value>, now: &Value, complete: bool) -> Res<()> {
    let Some(earlier) = earlier else {
        return Ok(());
    };
    let differ: Vec<String> = MUST_MATCH
        .iter()
        .filter(|k| complete || !now[**k].is_null())
        .filter(|k| earlier[**k] != now[**k])
        .map(|k| format!("{k}: was {}, now {}", earlier[*k], now[*k]))
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: this shard's results were made by another run ({}); write to another --out, or remove the folder to start over",
            path.display(),
            differ.join("; ")
        ))
    }
}

/// A folder already split another way (`--shard I/N` with another N): the shards would
/// not cover the manifest once each.
fn refuse_other_splits(out: &Path, shard: Shard) -> Res<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = Shard::from_dir_name(&name) {
            if s.count != shard.count {
                return Err(format!(
                    "{}: holds {name}, results of a split into {} shards; this task is shard {shard} (another split of the same manifest would score rows twice): use another --out",
                    out.display(),
                    s.count
                ));
            }
        }
    }
    Ok(())
}

/// Temp files of a run killed while writing a chunk: never part of the results.
fn remove_stale_temps(dir: &Path) -> Res<()> {
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            std::fs::remove_file(e.path())
                .map_err(|err| format!("{}: {err}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The chunk files of a shard folder, in order.
pub fn chunk_files(dir: &Path) -> Res<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") && (name.ends_with(".parquet") || name.ends_with(".csv")) {
            files.push(e.path());
        }
    }
    files.sort();
    Ok(files)
}

fn next_part_number(dir: &Path) -> Res<usize> {
    Ok(chunk_files(dir)?
        .iter()
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?;
            stem.strip_prefix("part-")?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |k| k + 1))
}

/// Manifest rows present in the folder's chunks; a row written twice is an error (a
/// folder written by two tasks at once).
fn rows_done(dir: &Path) -> Res<HashSet<usize>> {
    let mut done = HashSet::new();
    for f in chunk_files(dir)? {
        let t = super::table::read_table(&f)?;
        let Some(Values::Int(rows)) = t.column("row") else {
            return Err(format!("{}: no integer column `row`", f.display()));
        };
        for r in rows {
            let r = r.ok_or_else(|| format!("{}: a null `row`", f.display()))?;
            let r = usize::try_from(r).map_err(|_| format!("{}: row {r}", f.display()))?;
            if !done.insert(r) {
                return Err(format!(
                    "{}: row {r} is already in another chunk: were two tasks writing this shard at once?",
                    f.display()
                ));
            }
        }
    }
    Ok(done)
}

/// Takes the failed rows out of the folder's chunks (each chunk rewritten whole, or removed
/// when nothing is left in it) and out of `done`; how many.
fn drop_failed_rows(dir: &Path, done: &mut HashSet<usize>) -> Res<usize> {
    let mut dropped = 0;
    for f in chunk_files(dir)? {
        let t = super::table::read_table(&f)?;
        let (Some(Values::Str(status)), Some(Values::Int(rows))) =
            (t.column("status"), t.column("row"))
        else {
            return Err(format!("{}: no `status` and `row` columns", f.display()));
        };
        let keep: Vec<usize> = (0..t.rows())
            .filter(|&i| status[i].as_deref() == Some("ok"))
            .collect();
        if keep.len() == t.rows() {
            continue;
        }
        for i in (0..t.rows()).filter(|i| !keep.contains(i)) {
            if let Some(r) = rows[i].and_then(|r| usize::try_from(r).ok()) {
                done.remove(&r);
            }
        }
        dropped += t.rows() - keep.len();
        if keep.is_empty() {
            std::fs::remove_file(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        } else {
            write_table(&f, &t.take(&keep))?;
        }
    }
    Ok(dropped)
}

/// One chunk's rows as a table: `row`, `path`, the manifest's other columns, `status`,
/// `error`, `warning`, `engine`, the input size, then the probabilities (and with host
/// TTA the unflipped view's, `p<k>_single`).
fn chunk_table(m: &Manifest, todo: &[&ManifestRow], rows: &[(usize, Row)], engine: &str) -> Table {
    let src: Vec<&ManifestRow> = rows.iter().map(|(i, _)| todo[*i]).collect();
    let str_col = |name: &str, f: &dyn Fn(usize) -> Option<String>| Column {
        name: name.to_string(),
        values: Values::Str((0..rows.len()).map(f).collect()),
    };
    let mut cols = vec![
        Column {
            name: "row".into(),
            values: Values::Int(src.iter().map(|r| Some(r.index as i64)).collect()),
        },
        str_col("path", &|k| Some(src[k].path.clone())),
    ];
    for (c, name) in m.header.iter().enumerate() {
        if c != m.path_column {
            cols.push(str_col(name, &|k| Some(src[k].fields[c].clone())));
        }
    }
    let res = |k: usize| &rows[k].1;
    cols.push(str_col("status", &|k| {
        Some(
            if res(k).result.is_ok() {
                "ok"
            } else {
                "failed"
            }
            .to_string(),
        )
    }));
    cols.push(str_col("error", &|k| res(k).result.as_ref().err().cloned()));
    cols.push(str_col("warning", &|k| res(k).warning.clone()));
    cols.push(str_col("engine", &|_| Some(engine.to_string())));
    type Attr = fn(&crate::data::DicomAttributes) -> &Option<String>;
    let attrs: [(&str, Attr); 5] = [
        ("dicom_patient_id", |a| &a.patient_id),
        ("dicom_study_instance_uid", |a| &a.study_instance_uid),
        ("dicom_sop_instance_uid", |a| &a.sop_instance_uid),
        ("dicom_image_laterality", |a| &a.image_laterality),
        ("dicom_view_position", |a| &a.view_position),
    ];
    for (name, get) in attrs {
        cols.push(str_col(name, &|k| {
            res(k).dicom.as_ref().and_then(|a| get(a).clone())
        }));
    }
    for (name, d) in [("input_h", 0), ("input_w", 1)] {
        cols.push(Column {
            name: name.into(),
            values: Values::Int(
                (0..rows.len())
                    .map(|k| res(k).result.as_ref().ok().map(|s| s.input_size[d] as i64))
                    .collect(),
            ),
        });
    }
    let classes = rows
        .iter()
        .filter_map(|(_, r)| r.result.as_ref().ok().map(|s| s.probabilities.len()))
        .max()
        .unwrap_or(0);
    for c in 0..classes {
        cols.push(Column {
            name: format!("p{c}"),
            values: Values::Float(
                (0..rows.len())
                    .map(|k| {
                        res(k)
                            .result
                            .as_ref()
                            .ok()
                            .and_then(|s| s.probabilities.get(c).copied())
                    })
                    .collect(),
            ),
        });
    }
    if rows.iter().any(|(_, r)| r.single.is_some()) {
        for c in 0..classes {
            cols.push(Column {
                name: format!("p{c}_single"),
                values: Values::Float(
                    (0..rows.len())
                        .map(|k| res(k).single.as_ref().and_then(|s| s.get(c).copied()))
                        .collect(),
                ),
            });
        }
    }
    Table { columns: cols }
}
