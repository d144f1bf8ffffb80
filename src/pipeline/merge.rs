//! `allconv merge`: the shards of an archive run joined into one table, sorted by
//! manifest row, after checking that every shard scored the same manifest with the same
//! model and preprocessing, and that every manifest row is there exactly once.

use super::archive::chunk_files;
use super::manifest::{Manifest, Shard};
use super::table::{read_table, write_table, Table, Values};
use super::Res;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A failed row: its manifest index, path and reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedRow {
    pub row: usize,
    pub path: String,
    pub error: String,
}

/// A manifest row with no result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MissingRow {
    pub row: usize,
    /// From the manifest, where it can still be read.
    pub path: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    pub output: PathBuf,
    pub manifest: String,
    pub manifest_rows: usize,
    pub shards: usize,
    /// Shards with no results folder, or none written yet.
    pub shards_missing: Vec<usize>,
    pub rows: usize,
    pub ok: usize,
    pub failed: Vec<FailedRow>,
    pub missing: Vec<MissingRow>,
    /// Every manifest row is there exactly once (failed rows count: they are recorded).
    pub complete: bool,
}

/// The fields every shard's run record must agree on.
const SAME: &[&str] = &[
    "manifest_sha256",
    "manifest_rows",
    "path_column",
    "model_sha256",
    "preprocess",
    "tta",
];

/// Joins the shard folders under `dir` into `output` (.parquet or .csv, written whole).
/// The file is written when the shards agree and no row appears twice, complete or not;
/// the report says what is missing. Disagreeing shards or a duplicated row: an error,
/// nothing written.
pub fn merge(dir: &Path, output: &Path) -> Res<MergeReport> {
    super::table::Format::of(output)?;
    let mut shard_dirs: Vec<(Shard, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = Shard::from_dir_name(&name) {
            shard_dirs.push((s, e.path()));
        }
    }
    shard_dirs.sort_by_key(|(s, _)| s.index);
    if shard_dirs.is_empty() {
        return Err(format!(
            "{}: no shard folders (shard-NNNNN-of-NNNNN): is this the --out of `allconv predict --manifest`?",
            dir.display()
        ));
    }
    let count = shard_dirs[0].0.count;
    let mut problems = Vec::new();
    if let Some((s, _)) = shard_dirs.iter().find(|(s, _)| s.count != count) {
        problems.push(format!(
            "shard folders of different splits: {} shards and {}",
            count, s.count
        ));
    }
    // Run records: the first one found is the reference.
    let mut reference: Option<(PathBuf, Value)> = None;
    let mut started = Vec::new();
    for (s, d) in &shard_dirs {
        let p = d.join("run.json");
        let v: Value = match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        started.push(s.index);
        match &reference {
            None => reference = Some((p, v)),
            Some((rp, rv)) => {
                for k in SAME {
                    if rv[*k] != v[*k] {
                        problems.push(format!(
                            "{k}: {} in {}, {} in {}",
                            rv[*k],
                            rp.display(),
                            v[*k],
                            p.display()
                        ));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "{}: the shards are not one run, nothing merged:\n  {}",
            dir.display(),
            problems.join("\n  ")
        ));
    }
    let (_, reference) = reference.ok_or_else(|| {
        format!(
            "{}: no shard has started (no run.json): nothing to merge",
            dir.display()
        )
    })?;
    let manifest_rows = reference["manifest_rows"]
        .as_u64()
        .ok_or("run.json: no manifest_rows")? as usize;
    let manifest_file = reference["manifest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut table = Table::default();
    for (_, d) in &shard_dirs {
        for f in chunk_files(d)? {
            table.append(read_table(&f)?)?;
        }
    }
    // Every row once: duplicates refuse the merge, missing rows make it incomplete.
    let rows: Vec<usize> = match table.column("row") {
        Some(Values::Int(v)) => v
            .iter()
            .map(|r| r.and_then(|r| usize::try_from(r).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or("a chunk has a null or negative `row`")?,
        None if table.rows() == 0 => Vec::new(),
        _ => return Err("the chunks have no integer column `row`".into()),
    };
    let mut seen = vec![false; manifest_rows];
    let mut duplicated = Vec::new();
    for &r in &rows {
        match seen.get_mut(r) {
            Some(s) if *s => duplicated.push(r),
            Some(s) => *s = true,
            None => {
                return Err(format!(
                    "row {r} is beyond the manifest's {manifest_rows} rows"
                ))
            }
        }
    }
    if !duplicated.is_empty() {
        duplicated.sort_unstable();
        duplicated.dedup();
        return Err(format!(
            "{}: {} row(s) appear more than once (first: {:?}); nothing merged",
            dir.display(),
            duplicated.len(),
            &duplicated[..duplicated.len().min(10)]
        ));
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i]);
    let mut table = table.take(&order);
    table.order_columns();
    write_table(output, &table)?;

    let strs = |name: &str| match table.column(name) {
        Some(Values::Str(v)) => v.clone(),
        _ => vec![None; table.rows()],
    };
    let (status, paths, errors) = (strs("status"), strs("path"), strs("error"));
    let sorted_rows: Vec<usize> = order.iter().map(|&i| rows[i]).collect();
    let mut failed = Vec::new();
    let mut ok = 0;
    for (k, &r) in sorted_rows.iter().enumerate() {
        if status[k].as_deref() == Some("ok") {
            ok += 1;
        } else {
            failed.push(FailedRow {
                row: r,
                path: paths[k].clone().unwrap_or_default(),
                error: errors[k].clone().unwrap_or_default(),
            });
        }
    }
    // Missing rows named by path where the manifest is still the one that was scored.
    let manifest = Manifest::read(
        Path::new(&manifest_file),
        reference["path_column"].as_str().unwrap_or("path"),
    )
    .ok()
    .filter(|m| Value::from(m.sha256.clone()) == reference["manifest_sha256"]);
    let missing: Vec<MissingRow> = (0..manifest_rows)
        .filter(|&r| !seen[r])
        .map(|row| MissingRow {
            row,
            path: manifest
                .as_ref()
                .and_then(|m| m.rows.get(row))
                .map(|r| r.path.clone()),
        })
        .collect();
    let shards_missing: Vec<usize> = (0..count).filter(|i| !started.contains(i)).collect();
    Ok(MergeReport {
        output: output.to_path_buf(),
        manifest: manifest_file,
        manifest_rows,
        shards: count,
        shards_missing,
        rows: rows.len(),
        ok,
        complete: missing.is_empty(),
        failed,
        missing,
    })
}
