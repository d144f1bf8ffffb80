//! Archive scoring: `predict --manifest` in shards, resumed after a kill -9, merged; the
//! results equal one plain `predict` run over the same images, failures are rows, and the
//! Parquet file reads in pandas/pyarrow as written.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_allconv");
const MODEL: &str = "fixtures/k208tf_vgg16_whole_vgg/model.h5";
const PRE: &str = "rescale=0.0078125,mean=0.5";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("archive-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// `predict MODEL --backend tract --manifest M --out OUT --preprocess PRE` and `extra`.
fn scored(m: &str, out: &str, pre: &str, extra: &[&str]) -> Output {
    let mut a = vec![
        "predict",
        MODEL,
        "--backend",
        "tract",
        "--preprocess",
        pre,
        "--manifest",
        m,
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    run(&a)
}

/// `merge DIR -o OUT --json`: its exit status and report.
fn merge_report(dir: &str, out: &Path) -> (Option<i32>, serde_json::Value) {
    let o = run(&["merge", dir, "-o", &out.display().to_string(), "--json"]);
    let rep = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code(), rep)
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "allconv {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A manifest of `copies` x the bundled grey images (relative paths, a carried column with
/// a comma), one missing file and one corrupt file; returns it and the image paths in order.
fn manifest(dir: &Path, copies: usize) -> (PathBuf, Vec<PathBuf>) {
    let imgs = root().join("fixtures/images");
    let names = [
        "mdb001.pgm",
        "mdb028.pgm",
        "mdb028_8.png",
        "mdb028.jpg",
        "mdb001_16.pgm",
    ];
    std::fs::create_dir_all(dir.join("img")).unwrap();
    std::fs::write(dir.join("img/corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let mut csv = String::from("accession,path,note\n");
    let mut paths = Vec::new();
    for c in 0..copies {
        for n in names {
            let rel = format!("img/{c}_{n}");
            std::fs::copy(imgs.join(n), dir.join(&rel)).unwrap();
            csv.push_str(&format!("A{c}{n},{rel},\"copy {c}, {n}\"\n"));
            paths.push(dir.join(&rel));
        }
        if c == 0 {
            csv.push_str("A-corrupt,img/corrupt.png,bad\n");
            paths.push(dir.join("img/corrupt.png"));
            csv.push_str("A-missing,img/missing.png,gone\n");
            paths.push(dir.join("img/missing.png"));
        }
    }
    // Compressed DICOM, whose attributes go into the rows.
    for (k, f) in DICOM.iter().enumerate() {
        let rel = format!("img/{f}");
        std::fs::copy(root().join("fixtures/dicom_codecs").join(f), dir.join(&rel)).unwrap();
        csv.push_str(&format!("D{k},{rel},dicom\n"));
        paths.push(dir.join(&rel));
    }
    let m = dir.join("manifest.csv");
    std::fs::write(&m, csv).unwrap();
    (m, paths)
}

/// DICOM files of three transfer syntaxes (fixtures/dicom_codecs, attributes by pydicom).
const DICOM: [&str; 3] = ["jpeg_ll_sv1_m2_12.dcm", "j2k_ll_m2_16.dcm", "rle_m1_12.dcm"];

/// `predict --json` over the images: path -> probabilities (None: failed).
fn plain_predict(paths: &[PathBuf]) -> HashMap<PathBuf, Option<Vec<f64>>> {
    let mut args = vec![
        "predict",
        MODEL,
        "--backend",
        "tract",
        "--preprocess",
        PRE,
        "--json",
    ];
    let ps: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    args.extend(ps.iter().map(String::as_str));
    let o = run(&args); // exits 1: two images fail
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let p = r["probabilities"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_f64().unwrap()).collect());
            (PathBuf::from(r["file"].as_str().unwrap()), p)
        })
        .collect()
}

/// A merged CSV as rows of column -> text.
fn read_csv(p: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(p).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let head: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            head.iter()
                .cloned()
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect()
}

fn chunks(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn shards_resume_and_merge_to_one_plain_run() {
    let dir = scratch("shards");
    let (m, paths) = manifest(&dir, 2);
    let out = dir.join("out");
    let (m_s, out_s) = (m.display().to_string(), out.display().to_string());
    let run_shard = |spec: &str, format: &str| -> serde_json::Value {
        let o = scored(
            &m_s,
            &out_s,
            PRE,
            &[
                "--shard",
                spec,
                "--chunk-rows",
                "2",
                "--format",
                format,
                "--json",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let r0 = run_shard("0/3", "parquet");
    assert_eq!(r0["rows"], serde_json::json!([0, 5]));
    assert_eq!(r0["scored"], 5);
    assert_eq!(r0["chunks_written"], 3);
    run_shard("2/3", "csv");
    // Incomplete: shard 1 has not run.
    let merged = dir.join("scores.csv");
    let (status, rep) = merge_report(&out_s, &merged);
    assert_eq!(status, Some(1), "{rep}");
    assert_eq!(rep["complete"], false);
    assert_eq!(rep["shards_missing"], serde_json::json!([1]));
    let missing: Vec<u64> = rep["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["row"].as_u64().unwrap())
        .collect();
    assert_eq!(missing, vec![5, 6, 7, 8, 9]);
    assert_eq!(rep["missing"][0]["path"], "img/corrupt.png");
    // A re-run of a finished shard scores nothing and writes nothing.
    let again = run_shard("0/3", "parquet");
    assert_eq!(
        (again["resumed"].as_u64(), again["scored"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(chunks(&out.join("shard-00000-of-00003")).len(), 3);
    run_shard("1/3", "parquet");
    let (status, rep) = merge_report(&out_s, &merged);
    assert_eq!(status, Some(0), "{rep}");
    assert_eq!(rep["complete"], true);
    assert_eq!(rep["rows"], 15);
    assert_eq!(rep["ok"], 13);
    let failed: Vec<&str> = rep["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec!["img/corrupt.png", "img/missing.png"]);

    // Every row once, in manifest order, the carried columns intact, the scores equal to
    // one plain predict (same engine and pipeline: identical floats, written shortest).
    let rows = read_csv(&merged);
    assert_eq!(rows.len(), paths.len());
    let plain = plain_predict(&paths);
    assert_eq!(plain.len(), paths.len());
    for (i, (row, path)) in rows.iter().zip(&paths).enumerate() {
        assert_eq!(row["row"], i.to_string());
        let expected_note = match path.file_name().unwrap().to_str().unwrap() {
            "corrupt.png" => "bad".to_string(),
            "missing.png" => "gone".to_string(),
            f if f.ends_with(".dcm") => "dicom".to_string(),
            f => {
                let (c, n) = f.split_once('_').unwrap();
                format!("copy {c}, {n}")
            }
        };
        assert_eq!(row["note"], expected_note, "carried column");
        match &plain[path] {
            Some(p) => {
                assert_eq!(row["status"], "ok", "{row:?}");
                for (k, v) in p.iter().enumerate() {
                    let got: f32 = row[&format!("p{k}")].parse().unwrap();
                    assert_eq!(got, *v as f32, "row {i} p{k}");
                }
            }
            None => {
                assert_eq!(row["status"], "failed");
                let file = path.display().to_string();
                assert!(row["error"].contains(&file), "{row:?}");
            }
        }
    }

    // DICOM rows carry the attributes pydicom read; other files leave them empty.
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/dicom_codecs/reference.json")).unwrap(),
    )
    .unwrap();
    let dicom_rows: Vec<_> = rows
        .iter()
        .filter(|r| r["path"].ends_with(".dcm"))
        .collect();
    assert_eq!(dicom_rows.len(), DICOM.len());
    for (row, f) in dicom_rows.iter().zip(DICOM) {
        let a = &reference["files"][f]["attributes"];
        for (col, key) in [
            ("dicom_patient_id", "PatientID"),
            ("dicom_study_instance_uid", "StudyInstanceUID"),
            ("dicom_sop_instance_uid", "SOPInstanceUID"),
            ("dicom_image_laterality", "ImageLaterality"),
            ("dicom_view_position", "ViewPosition"),
        ] {
            assert_eq!(row[col], a[key].as_str().unwrap(), "{f} {col}");
        }
    }
    assert!(rows
        .iter()
        .filter(|r| !r["path"].ends_with(".dcm"))
        .all(|r| r["dicom_patient_id"].is_empty()));

    // --retry-failed: the corrupt file, now readable, is scored again; the missing one fails
    // again; each row is still there once, and the rest of the shard is not rerun.
    std::fs::copy(
        root().join("fixtures/images/mdb028_8.png"),
        dir.join("img/corrupt.png"),
    )
    .unwrap();
    let o = scored(
        &m_s,
        &out_s,
        PRE,
        &["--shard", "1/3", "--retry-failed", "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            r["retried"].as_u64(),
            r["scored"].as_u64(),
            r["failed"].as_u64()
        ),
        (Some(2), Some(2), Some(1)),
        "{r}"
    );
    assert_eq!(r["resumed"], 3);
    let (status, rep) = merge_report(&out_s, &merged);
    assert_eq!(status, Some(0), "{rep}");
    assert_eq!(
        (rep["rows"].as_u64(), rep["ok"].as_u64()),
        (Some(15), Some(14)),
        "{rep}"
    );
    let rows = read_csv(&merged);
    assert_eq!(rows[5]["status"], "ok");
    assert_eq!(rows[6]["status"], "failed");

    // Another split of the same folder, or another preprocessing, is refused: nothing written.
    let before = chunks(&out.join("shard-00001-of-00003"));
    let o = scored(&m_s, &out_s, PRE, &["--shard", "0/2"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("split into 3 shards"));
    let o = scored(&m_s, &out_s, "rescale=0.5", &["--shard", "1/3"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("preprocess: was"), "{err}");
    assert_eq!(chunks(&out.join("shard-00001-of-00003")), before);

    // A chunk copied under another name: a row twice, the merge refuses (status 2).
    let d0 = out.join("shard-00000-of-00003");
    std::fs::copy(
        d0.join("part-000000.parquet"),
        d0.join("part-000009.parquet"),
    )
    .unwrap();
    let o = run(&[
        "merge",
        &out_s,
        "-o",
        &dir.join("dup.csv").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("more than once"));
    assert!(!dir.join("dup.csv").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_kill_9_loses_at_most_the_chunk_in_progress() {
    let dir = scratch("kill");
    let (m, paths) = manifest(&dir, 6);
    let out = dir.join("out");
    let args = |chunk: &str| -> Vec<String> {
        [
            "predict",
            MODEL,
            "--backend",
            "tract",
            "--preprocess",
            PRE,
            "--jobs",
            "1",
            "--threads",
            "1",
            "--manifest",
            &m.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--chunk-rows",
            chunk,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let shard_dir = out.join("shard-00000-of-00001");
    let mut child = Command::new(BIN)
        .args(args("3"))
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the second chunk is in place.
    let t0 = std::time::Instant::now();
    while chunks(&shard_dir).len() < 2 {
        assert!(t0.elapsed().as_secs() < 120, "no second chunk in 120 s");
        if let Ok(Some(s)) = child.try_wait() {
            panic!("finished before the kill ({s}): make the manifest longer");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let on_disk = chunks(&shard_dir);
    assert!(on_disk.len() >= 2);
    let o = Command::new(BIN)
        .args(args("3"))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Whole chunks only: what was written survived, in multiples of the chunk size.
    let resumed = rep["resumed"].as_u64().unwrap() as usize;
    assert_eq!(resumed, 3 * on_disk.len(), "{rep}");
    assert_eq!(
        resumed + rep["scored"].as_u64().unwrap() as usize,
        paths.len()
    );
    let merged = dir.join("all.parquet");
    ok(&[
        "merge",
        &out.display().to_string(),
        "-o",
        &merged.display().to_string(),
    ]);
    // No temp file left behind by the killed run.
    let leftovers: Vec<_> = std::fs::read_dir(&shard_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let py = common::tf_python();
    let script = format!(
        r#"
import pandas as pd, json, sys
t = pd.read_parquet({merged:?})
print(json.dumps({{"rows": t["row"].tolist(), "status": t["status"].tolist(),
  "p1": [None if pd.isna(v) else float(v) for v in t["p1"]], "path": t["path"].tolist()}}))
"#,
        merged = merged.display().to_string()
    );
    let pyout = Command::new(&py).arg("-c").arg(&script).output();
    let pyout = match pyout {
        Ok(o) if o.status.success() => o,
        other => {
            common::skip_or_fail(&format!(
                "pandas/pyarrow cannot read the Parquet file: {other:?}"
            ));
            return;
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&pyout.stdout).unwrap();
    let rows: Vec<u64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(rows, (0..paths.len() as u64).collect::<Vec<_>>());
    let plain = plain_predict(&paths);
    for (i, p) in paths.iter().enumerate() {
        match &plain[p] {
            Some(probs) => {
                assert_eq!(v["status"][i], "ok");
                assert_eq!(
                    v["p1"][i].as_f64().unwrap() as f32,
                    probs[1] as f32,
                    "row {i}"
                );
            }
            None => assert_eq!(v["status"][i], "failed"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_manifests_are_refused_with_every_problem_named() {
    let dir = scratch("bad");
    let m = dir.join("m.csv");
    std::fs::write(&m, "file,status,x\na.png,1,2\nb.png,1\n,1,2\n").unwrap();
    let (m_s, out_s) = (
        m.display().to_string(),
        dir.join("out").display().to_string(),
    );
    let o = scored(&m_s, &out_s, PRE, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "no column \"path\"",
        "\"status\" is also an output column",
        "line 3: 2 fields",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert!(
        !dir.join("out").exists() || std::fs::read_dir(dir.join("out")).unwrap().next().is_none()
    );
    let o = scored(&m_s, "x", PRE, &["--shard", "auto"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("SLURM_ARRAY_TASK_ID"));
    std::fs::remove_dir_all(&dir).ok();
}
