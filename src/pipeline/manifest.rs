//! An archive's manifest (a CSV with a column of image paths and any other columns, carried
//! into the results) and the deterministic slice of it one task scores.

use super::Res;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Output columns that a manifest column may not shadow.
pub const RESERVED: &[&str] = &[
    "row",
    "status",
    "error",
    "warning",
    "engine",
    "input_h",
    "input_w",
    "dicom_patient_id",
    "dicom_study_instance_uid",
    "dicom_sop_instance_uid",
    "dicom_image_laterality",
    "dicom_view_position",
];

/// One data row of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestRow {
    /// 0-based index among the data rows: the row's identity in every result.
    pub index: usize,
    /// The image as the manifest writes it.
    pub path: String,
    /// The image resolved against the manifest's folder.
    pub image: PathBuf,
    /// Every field of the row, in header order (the path column included).
    pub fields: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: PathBuf,
    /// SHA-256 of the manifest file: a resumed or merged run must be over the same rows.
    pub sha256: String,
    pub header: Vec<String>,
    /// Which header column holds the paths.
    pub path_column: usize,
    pub rows: Vec<ManifestRow>,
}

impl Manifest {
    /// Reads `file`; every problem (missing path column, short rows, empty paths, a column
    /// named like an output column) is reported at once, by line.
    pub fn read(file: &Path, path_column: &str) -> Res<Manifest> {
        let at = |e: String| format!("{}: {e}", file.display());
        let bytes = crate::files::read(file).map_err(|e| e.to_string())?;
        let sha256 = crate::files::sha256_bytes(&bytes);
        let mut r = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(bytes.as_slice());
        let header: Vec<String> = r
            .headers()
            .map_err(|e| at(e.to_string()))?
            .iter()
            .map(str::to_string)
            .collect();
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for h in &header {
            if !seen.insert(h.as_str()) {
                problems.push(format!("header: column {h:?} appears twice"));
            }
            if RESERVED.contains(&h.as_str()) || super::table::probability_column(h).is_some() {
                problems.push(format!(
                    "header: column {h:?} is also an output column; rename it"
                ));
            }
        }
        let pc = header.iter().position(|h| h == path_column);
        if pc.is_none() {
            problems.push(format!(
                "header: no column {path_column:?} of image paths (columns: {}); name it with --path-column",
                header.join(", ")
            ));
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let mut rows = Vec::new();
        for (index, rec) in r.records().enumerate() {
            let line = index + 2;
            let rec = match rec {
                Ok(rec) => rec,
                Err(e) => {
                    problems.push(format!("line {line}: {e}"));
                    continue;
                }
            };
            if rec.len() != header.len() {
                problems.push(format!(
                    "line {line}: {} fields, the header has {}",
                    rec.len(),
                    header.len()
                ));
                continue;
            }
            let fields: Vec<String> = rec.iter().map(str::to_string).collect();
            let Some(pc) = pc else { continue };
            let path = fields[pc].trim().to_string();
            if path.is_empty() {
                problems.push(format!("line {line}: empty {path_column}"));
                continue;
            }
            rows.push(ManifestRow {
                index,
                image: base.join(&path),
                path,
                fields,
            });
        }
        if !problems.is_empty() {
            let n = problems.len();
            let shown: Vec<_> = problems.into_iter().take(20).collect();
            let more = if n > 20 {
                format!("\n  ... and {} more", n - 20)
            } else {
                String::new()
            };
            return Err(at(format!(
                "{n} problem(s):\n  {}{more}",
                shown.join("\n  ")
            )));
        }
        Ok(Manifest {
            file: file.to_path_buf(),
            sha256,
            header,
            path_column: pc.unwrap_or(0),
            rows,
        })
    }
}

/// The `index`-th of `count` contiguous slices of the manifest's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// `I/N`, or `auto`: a Slurm array task (SLURM_ARRAY_TASK_ID minus
    /// SLURM_ARRAY_TASK_MIN, of SLURM_ARRAY_TASK_COUNT), else a Kubernetes Indexed Job's
    /// JOB_COMPLETION_INDEX of `count` (`--shard-count`). `env` reads the environment.
    pub fn parse(
        spec: &str,
        count: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Res<Shard> {
        let num = |name: &str, v: &str| -> Res<usize> {
            v.trim()
                .parse()
                .map_err(|_| format!("{name}={v:?} is not a non-negative integer"))
        };
        let shard = if spec == "auto" {
            if let Some(id) = env("SLURM_ARRAY_TASK_ID") {
                let id = num("SLURM_ARRAY_TASK_ID", &id)?;
                let min = match env("SLURM_ARRAY_TASK_MIN") {
                    Some(m) => num("SLURM_ARRAY_TASK_MIN", &m)?,
                    None => 0,
                };
                let n = match (env("SLURM_ARRAY_TASK_COUNT"), count) {
                    (Some(n), _) => num("SLURM_ARRAY_TASK_COUNT", &n)?,
                    (None, Some(n)) => n,
                    (None, None) => {
                        return Err("--shard auto: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT; give --shard-count".into())
                    }
                };
                let index = id.checked_sub(min).ok_or_else(|| {
                    format!("--shard auto: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")
                })?;
                if index >= n {
                    return Err(format!(
                        "--shard auto: array task {id} (from {min}) is not one of {n} shards: submit a contiguous array, e.g. --array=0-{}",
                        n.saturating_sub(1)
                    ));
                }
                Shard { index, count: n }
            } else if let Some(i) = env("JOB_COMPLETION_INDEX") {
                let index = num("JOB_COMPLETION_INDEX", &i)?;
                let n = count.ok_or(
                    "--shard auto under a Kubernetes Indexed Job needs --shard-count N (the Job's completions)",
                )?;
                Shard { index, count: n }
            } else {
                return Err("--shard auto: neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) is set; give --shard I/N".into());
            }
        } else {
            let (i, n) = spec
                .split_once('/')
                .ok_or_else(|| format!("--shard {spec:?}: expected I/N (e.g. 0/4) or auto"))?;
            let index = num("--shard index", i)?;
            let n = num("--shard count", n)?;
            if let Some(c) = count {
                if c != n {
                    return Err(format!("--shard {spec} and --shard-count {c} disagree"));
                }
            }
            Shard { index, count: n }
        };
        if shard.count == 0 || shard.index >= shard.count {
            return Err(format!(
                "shard {}/{}: the index must be below the count (from 0)",
                shard.index, shard.count
            ));
        }
        Ok(shard)
    }

    /// The rows of `n` this shard takes: every row is in exactly one shard, and shards
    /// differ in size by at most one row.
    pub fn rows(&self, n: usize) -> Range<usize> {
        let at = |k: usize| (n as u128 * k as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// The shard's results folder under `--out`.
    pub fn dir_name(&self) -> String {
        format!("shard-{:05}-of-{:05}", self.index, self.count)
    }

    /// A folder name from [`Shard::dir_name`], read back.
    pub fn from_dir_name(name: &str) -> Option<Shard> {
        let rest = name.strip_prefix("shard-")?;
        let (i, n) = rest.split_once("-of-")?;
        Some(Shard {
            index: i.parse().ok()?,
            count: n.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_in_exactly_one_shard() {
        for n in [0usize, 1, 7, 40, 1001] {
            for count in [1usize, 2, 3, 4, 7, 64] {
                let mut owner = vec![0u32; n];
                for index in 0..count {
                    let r = Shard { index, count }.rows(n);
                    assert!(r.len() <= n / count + 1);
                    for i in r {
                        owner[i] += 1;
                    }
                }
                assert!(owner.iter().all(|&k| k == 1), "n {n} count {count}");
            }
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_reads_slurm_and_kubernetes() {
        let s = Shard::parse(
            "auto",
            None,
            env(&[
                ("SLURM_ARRAY_TASK_ID", "3"),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(s, Shard { index: 2, count: 4 });
        let k = Shard::parse("auto", Some(8), env(&[("JOB_COMPLETION_INDEX", "7")])).unwrap();
        assert_eq!(k, Shard { index: 7, count: 8 });
        assert!(Shard::parse("auto", None, env(&[("JOB_COMPLETION_INDEX", "7")])).is_err());
        assert!(Shard::parse("auto", None, env(&[])).is_err());
        assert!(Shard::parse(
            "auto",
            None,
            env(&[
                ("SLURM_ARRAY_TASK_ID", "4"),
                ("SLURM_ARRAY_TASK_COUNT", "4")
            ])
        )
        .is_err());
        assert_eq!(
            Shard::parse("1/3", None, env(&[])).unwrap(),
            Shard { index: 1, count: 3 }
        );
        for bad in ["3/3", "0/0", "x/2", "1", "-1/2"] {
            assert!(Shard::parse(bad, None, env(&[])).is_err(), "{bad}");
        }
        let d = Shard {
            index: 12,
            count: 40,
        };
        assert_eq!(Shard::from_dir_name(&d.dir_name()), Some(d));
    }
}
