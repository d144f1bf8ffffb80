//! Archive scoring on a real Slurm: a one-node cluster started on this machine
//! (scripts/slurm/local-cluster.sh: Debian's slurm-wlm and munge), a 4-task job array of
//! scripts/slurm/score-array.sbatch over a 41-row manifest with one corrupt file, one task
//! cancelled midway with `scancel` and resubmitted, then `allconv merge`: every row once,
//! the corrupt file a failure row, the scores those of one plain `allconv predict` run.
//! A cluster that cannot start fails the test with its reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_allconv");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cluster, stopped when the test ends (also on failure).
struct Cluster {
    state: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(state: &Path) -> Cluster {
        let script = root().join("scripts/slurm/local-cluster.sh");
        let o = Command::new(&script)
            .arg("start")
            .arg(state)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "the local Slurm cluster did not start:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        let conf = out
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .unwrap_or_else(|| panic!("no SLURM_CONF in {out}"))
            .trim_matches(['\'', '"'])
            .to_string();
        Cluster {
            state: state.to_path_buf(),
            conf,
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `sbatch --parsable ...`: the job id.
    fn sbatch(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let o = self
            .cmd("sbatch")
            .arg("--parsable")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "sbatch {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let id = String::from_utf8_lossy(&o.stdout);
        id.trim().split(';').next().unwrap().to_string()
    }

    /// The states of a job's tasks (`JobState=` of `scontrol show job -o`).
    fn states(&self, job: &str) -> Vec<String> {
        let o = self
            .cmd("scontrol")
            .args(["show", "job", "-o", job])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("JobState="))
                    .map(String::from)
            })
            .collect()
    }

    /// Waits until no task of `job` is pending or running; their final states.
    fn wait(&self, job: &str, limit: Duration) -> Vec<String> {
        const ACTIVE: &[&str] = &[
            "PENDING",
            "RUNNING",
            "CONFIGURING",
            "COMPLETING",
            "REQUEUED",
            "REQUEUE_HOLD",
            "SUSPENDED",
        ];
        let t0 = Instant::now();
        loop {
            let s = self.states(job);
            if !s.is_empty() && s.iter().all(|x| !ACTIVE.contains(&x.as_str())) {
                return s;
            }
            assert!(
                t0.elapsed() < limit,
                "job {job} still active after {limit:?}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/slurm/local-cluster.sh"))
            .arg("stop")
            .arg(&self.state)
            .output();
    }
}

/// mdb001.pgm enlarged 3x (nearest neighbour, 3072x3072): slow enough to read and resize
/// that a task is still running when it is cancelled.
fn large_pgm(to: &Path) {
    let src = std::fs::read(root().join("fixtures/images/mdb001.pgm")).unwrap();
    // P5 1024 1024 255: the header is the first four whitespace-separated fields.
    let mut fields = 0;
    let mut i = 0;
    while fields < 4 {
        while src[i].is_ascii_whitespace() {
            i += 1;
        }
        while !src[i].is_ascii_whitespace() {
            i += 1;
        }
        fields += 1;
    }
    let pixels = &src[i + 1..];
    assert_eq!(pixels.len(), 1024 * 1024);
    let mut out = b"P5\n3072 3072\n255\n".to_vec();
    for y in 0..3072 {
        for x in 0..3072 {
            out.push(pixels[(y / 3) * 1024 + x / 3]);
        }
    }
    std::fs::write(to, out).unwrap();
}

#[test]
fn a_job_array_cancelled_resubmitted_and_merged_equals_one_run() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("img")).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    // The self-contained model: preprocessing and 4-flip TTA inside the ONNX file.
    let model = dir.join("model.onnx");
    let o = Command::new(BIN)
        .args(["convert", "fixtures/k208tf_vgg16_whole_vgg/model.h5", "-o"])
        .arg(&model)
        .args([
            "--preprocess",
            "rescale=0.0078125,mean=0.5,gray",
            "--tta",
            "flips4",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 41 rows: 4 tasks of 10-11 rows; shard 2 (rows 20..30) is the large images.
    let small = [
        "mdb001.pgm",
        "mdb028.pgm",
        "mdb028_8.png",
        "mdb028.jpg",
        "mdb001_16.pgm",
    ];
    large_pgm(&dir.join("img/large.pgm"));
    std::fs::write(dir.join("img/corrupt.pgm"), b"P5\n4000 4000\n255\nshort").unwrap();
    let mut csv = String::from("path,accession\n");
    let mut images = Vec::new();
    for r in 0..41 {
        let rel = match r {
            7 => "img/corrupt.pgm".to_string(),
            20..=29 => format!("img/large_{r}.pgm"),
            _ => format!("img/{r}_{}", small[r % small.len()]),
        };
        let abs = dir.join(&rel);
        if !abs.exists() {
            let src = if (20..=29).contains(&r) {
                dir.join("img/large.pgm")
            } else {
                root().join("fixtures/images").join(small[r % small.len()])
            };
            std::fs::copy(src, &abs).unwrap();
        }
        csv.push_str(&format!("{rel},ACC{r:03}\n"));
        images.push(abs);
    }
    let manifest = dir.join("manifest.csv");
    std::fs::write(&manifest, csv).unwrap();
    let out = dir.join("scores");

    let cluster = Cluster::start(&dir.join("slurm"));
    let export = format!(
        "ALL,ALLCONV={BIN},MODEL={},MANIFEST={},OUT={},SHARD_COUNT=4",
        model.display(),
        manifest.display(),
        out.display()
    );
    let sbatch_args = |array: &str| -> Vec<String> {
        vec![
            format!("--array={array}"),
            format!("--chdir={}", dir.display()),
            format!("--output={}/logs/%A_%a.out", dir.display()),
            "--cpus-per-task=1".into(),
            "--mem=1000M".into(),
            format!("--export={export}"),
            root()
                .join("scripts/slurm/score-array.sbatch")
                .display()
                .to_string(),
        ]
    };
    let extra = [("PREDICT_ARGS", "--chunk-rows 1 --format parquet")];
    let args = sbatch_args("0-3");
    let job = cluster.sbatch(&args.iter().map(String::as_str).collect::<Vec<_>>(), &extra);
    // Cancel task 2 once it has written its first chunk.
    let shard2 = out.join("shard-00002-of-00004");
    let t0 = Instant::now();
    let parts = |d: &Path| -> usize {
        std::fs::read_dir(d)
            .map(|e| {
                e.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("part-"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    while parts(&shard2) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "task 2 wrote nothing in 180 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = cluster
        .cmd("scancel")
        .arg(format!("{job}_2"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "scancel: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let states = cluster.wait(&job, Duration::from_secs(300));
    assert_eq!(states.len(), 4, "{states:?}");
    assert_eq!(
        states.iter().filter(|s| *s == "CANCELLED").count(),
        1,
        "task 2 cancelled, the others completed: {states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "COMPLETED").count(),
        3,
        "{states:?}"
    );
    let done_at_cancel = parts(&shard2);
    eprintln!("task 2 had written {done_at_cancel} of its 10 rows when cancelled");
    assert!(
        (1..10).contains(&done_at_cancel),
        "task 2 was cancelled midway: {done_at_cancel} of its 10 rows written"
    );

    // Merging now: incomplete, exit status 1, the missing rows are task 2's.
    let merged = dir.join("scores.parquet");
    let merge = || {
        Command::new(BIN)
            .args(["merge"])
            .arg(&out)
            .arg("-o")
            .arg(&merged)
            .arg("--json")
            .output()
            .unwrap()
    };
    let o = merge();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let missing: Vec<u64> = rep["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["row"].as_u64().unwrap())
        .collect();
    assert_eq!(missing.len(), 10 - done_at_cancel);
    assert!(missing.iter().all(|r| (20..30).contains(r)), "{missing:?}");

    // Task 2 alone, resubmitted: it resumes, and the merge is complete.
    let args = sbatch_args("2");
    let again = cluster.sbatch(&args.iter().map(String::as_str).collect::<Vec<_>>(), &extra);
    let states = cluster.wait(&again, Duration::from_secs(300));
    assert_eq!(states, vec!["COMPLETED".to_string()]);
    let log = std::fs::read_to_string(dir.join(format!("logs/{again}_2.out"))).unwrap_or_default();
    assert!(
        log.contains(&format!("{done_at_cancel} done before")),
        "the resubmitted task resumed after the cancelled one: {log}"
    );
    let o = merge();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["complete"], true);
    assert_eq!(rep["rows"], 41);
    assert_eq!(rep["failed"].as_array().unwrap().len(), 1);
    assert_eq!(rep["failed"][0]["row"], 7);
    drop(cluster);

    // One plain run over the same images, one thread as each task had: the same floats.
    let csv_out = dir.join("scores.csv");
    let o = Command::new(BIN)
        .args(["merge"])
        .arg(&out)
        .arg("-o")
        .arg(&csv_out)
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut args = vec![
        "predict".to_string(),
        model.display().to_string(),
        "--threads".into(),
        "1".into(),
        "--json".into(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    let o = Command::new(BIN).args(&args).output().unwrap();
    let plain: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let plain: HashMap<String, serde_json::Value> = plain
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["file"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    let text = std::fs::read_to_string(&csv_out).unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let head: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    let rows: Vec<HashMap<String, String>> = rdr
        .records()
        .map(|r| {
            head.iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 41);
    for (i, (row, img)) in rows.iter().zip(&images).enumerate() {
        assert_eq!(row["row"], i.to_string());
        assert_eq!(row["accession"], format!("ACC{i:03}"));
        let p = &plain[&img.display().to_string()];
        match p["probabilities"].as_array() {
            Some(probs) => {
                assert_eq!(row["status"], "ok", "row {i}: {row:?}");
                for (k, v) in probs.iter().enumerate() {
                    let got: f32 = row[&format!("p{k}")].parse().unwrap();
                    assert_eq!(got, v.as_f64().unwrap() as f32, "row {i} p{k}");
                }
            }
            None => {
                assert_eq!(i, 7);
                assert_eq!(row["status"], "failed");
                assert!(!row["error"].is_empty());
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
