//! `allconv predict`: arguments and printing. The pipeline (engines, read-ahead,
//! preprocessing, TTA, heatmaps, manifests and shards) is [`allconv::pipeline`].

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `allconv predict`.
#[derive(clap::Args, Clone, Debug)]
pub struct PredictArgs {
    /// Model: an .onnx or .nnef.tgz file, or a Keras .h5 (converted in memory).
    pub model: PathBuf,
    /// Images: PNG, PGM/PPM, JPEG, TIFF or DICOM.
    #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
    pub images: Vec<PathBuf>,
    /// Archive scoring: a CSV manifest with a `path` column (relative paths resolve against
    /// the manifest's folder); its other columns are carried into the results. Needs --out.
    #[arg(long, requires = "out", value_name = "CSV")]
    pub manifest: Option<PathBuf>,
    /// Archive scoring: the results folder (one subfolder per shard, written in atomic
    /// chunks; a re-run resumes). `allconv merge DIR` joins the shards.
    #[arg(long, requires = "manifest", value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The manifest rows this task scores: `I/N` (the I-th of N contiguous slices, from 0),
    /// or `auto`: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (a Slurm job array), else
    /// JOB_COMPLETION_INDEX with --shard-count (a Kubernetes Indexed Job). Default: 0/1.
    #[arg(long, requires = "manifest", value_name = "I/N|auto")]
    pub shard: Option<String>,
    /// Shards in all, with `--shard auto` under Kubernetes (JOB_COMPLETION_INDEX).
    #[arg(long, requires = "manifest", value_name = "N")]
    pub shard_count: Option<usize>,
    /// The manifest's column of image paths.
    #[arg(
        long,
        default_value = "path",
        requires = "manifest",
        value_name = "NAME"
    )]
    pub path_column: String,
    /// Rows per results chunk: each chunk is written whole (temp file, then rename), so a
    /// killed task loses at most the rows of the chunk in progress.
    #[arg(long, default_value_t = 64, requires = "manifest", value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_rows: u64,
    /// Archive scoring: score again the rows an earlier run of this shard recorded as
    /// failed (they leave their chunks first: no row is written twice).
    #[arg(long, requires = "manifest")]
    pub retry_failed: bool,
    /// Format of the result chunks (default: parquet; csv in the edge build, which has no
    /// Parquet writer).
    #[arg(long, requires = "manifest", value_parser = ["parquet", "csv"])]
    pub format: Option<String>,
    /// Preprocessing, e.g. `rescale=0.003891,mean=52.18,gray,size=1152x896`
    /// (keys: size=HxW, target_scale=F, rescale=F, mean=F, channels=1|3, gray).
    /// Overrides the parameters recorded in the ONNX metadata.
    #[arg(long)]
    pub preprocess: Option<String>,
    /// 4-flip test-time augmentation: mean over the image and its h, v and h+v flips.
    #[arg(long)]
    pub tta: bool,
    /// Threads in all (default: every available core), shared among the --jobs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Runtime: `tract`, `ort` (ONNX Runtime, loaded at run time: docs/engines.md),
    /// `torch` (libtorch, Keras .h5 models only), or `auto`: torch for a .h5 where this
    /// build has libtorch, ort for an .onnx file where ONNX Runtime loads, tract otherwise
    /// (the engine chosen is named on stderr and in --json).
    #[arg(long, default_value = "auto", value_parser = ["auto", "tract", "ort", "torch"])]
    pub backend: String,
    /// Images scored at once on tract, each on threads/jobs threads (default: one per
    /// thread, at most one per image; always one with torch, which spreads one run over the
    /// threads). Several single-threaded runs use the cores better than one run spread over
    /// all of them; jobs wait while their estimated activations would pass the
    /// `activation-bytes` limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// CSV output on stdout: `file,p0,p1,...,error`.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// JSON output: an array with one object per image (with --manifest: the shard's
    /// report).
    #[arg(long)]
    pub json: bool,
    /// Patch classifier (.h5) only: run it fully convolutionally over each whole image
    /// and write `<stem>_heatmap.png` (overlay) and `<stem>_heatmap.npy` (h, w, classes)
    /// into this directory.
    #[arg(long, value_name = "DIR")]
    pub heatmap: Option<PathBuf>,
    /// Class drawn in the heatmap overlay (default: the last class).
    #[arg(long, value_name = "K", requires = "heatmap")]
    pub heatmap_class: Option<usize>,
}

#[cfg(not(feature = "runtime"))]
pub fn main(_args: PredictArgs) -> ExitCode {
    eprintln!("error: predict needs allconv built with the `runtime` feature");
    ExitCode::FAILURE
}

#[cfg(feature = "runtime")]
pub fn main(args: PredictArgs) -> ExitCode {
    let result = if args.manifest.is_some() {
        archive(&args)
    } else {
        list(&args)
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            if args.json {
                emit(&format!("{}\n", serde_json::json!({ "error": msg })));
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "runtime")]
impl PredictArgs {
    /// The pipeline's options.
    pub fn score_options(&self) -> Result<allconv::pipeline::ScoreOptions, String> {
        Ok(allconv::pipeline::ScoreOptions {
            model: self.model.clone(),
            preprocess: self.preprocess.clone(),
            tta: self.tta,
            threads: self.threads,
            backend: self.backend.parse()?,
            jobs: self.jobs,
            heatmap: self.heatmap.clone(),
            heatmap_class: self.heatmap_class,
        })
    }
}

/// `[3/20] 0.42 images/s` on a terminal's stderr, rewritten in place; silent when
/// stderr is not a terminal, for one image, or with machine-readable output.
pub struct Progress {
    total: usize,
    start: std::time::Instant,
    on: bool,
}

impl Progress {
    pub fn new(total: usize, machine_output: bool) -> Progress {
        use std::io::IsTerminal;
        Progress {
            total,
            start: std::time::Instant::now(),
            on: total > 1 && !machine_output && std::io::stderr().is_terminal(),
        }
    }

    pub fn step(&self, done: usize) {
        if self.on && done < self.total {
            let elapsed = self.start.elapsed().as_secs_f64();
            let rate = format!(" {:.2} images/s", done as f64 / elapsed.max(1e-9));
            super::progress::draw(&super::progress::line(done, self.total, elapsed, &rate));
        }
    }

    pub fn clear(&self) {
        if self.on {
            super::progress::clear();
        }
    }

    /// The progress line as text, for logs that are not a terminal (a cluster task's).
    pub fn log_line(&self, done: usize) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = format!(" {:.2} images/s", done as f64 / elapsed.max(1e-9));
        super::progress::line(done, self.total, elapsed, &rate)
    }

    pub fn drawing(&self) -> bool {
        self.on
    }
}

/// The heatmap pass's summary, on stderr before the images run.
#[cfg(feature = "runtime")]
pub fn announce(info: &allconv::pipeline::RunInfo) {
    if let Some((r, class)) = &info.heatmap {
        eprintln!(
            "heatmap: removed {}, Dense {} applied per pixel ({} classes); overlay class {class}",
            r.removed_pool, r.dense, r.classes
        );
    }
}

/// A row's warning and error on stderr, as they come.
#[cfg(feature = "runtime")]
pub fn report_row(progress: &Progress, row: &allconv::pipeline::Row) {
    if let Some(w) = &row.warning {
        progress.clear();
        eprintln!("warning: {}: {w}", row.file.display());
    }
    if let Err(e) = &row.result {
        progress.clear();
        let file = row.file.display().to_string();
        if e.contains(&file) {
            eprintln!("error: {e}");
        } else {
            eprintln!("error: {file}: {e}");
        }
    }
}

/// Every image of `args` scored; the whole table printed at the end.
#[cfg(feature = "runtime")]
fn list(args: &PredictArgs) -> Result<ExitCode, String> {
    use serde_json::{json, Value};
    let opts = args.score_options()?;
    let progress = Progress::new(args.images.len(), args.json || args.csv);
    let mut done = 0;
    let run = allconv::pipeline::score_images(
        &opts,
        &args.images,
        |info| {
            announce(info);
            Ok(())
        },
        |_, row| {
            report_row(&progress, row);
            done += 1;
            progress.step(done);
        },
    )?;
    progress.clear();
    let (info, rows) = (&run.info, &run.rows);
    let mut out = String::new();
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    let classes = rows
        .iter()
        .find_map(|r| r.result.as_ref().ok().map(|s| s.probabilities.len()))
        .unwrap_or(0);
    if args.json {
        let arr: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut o = json!({
                    "file": r.file.display().to_string(),
                    "preprocess": info.preprocess,
                    "preprocess_source": info.preprocess_source,
                    "engine": info.engine,
                    "tta": info.tta,
                });
                match &r.result {
                    Ok(s) => {
                        o["probabilities"] = json!(s.probabilities);
                        o["input_size"] = json!(s.input_size);
                        if let Some(h) = &s.heatmap {
                            o["heatmap"] = json!({
                                "png": h.png.display().to_string(),
                                "npy": h.npy.display().to_string(),
                                "shape": h.shape,
                            });
                        }
                    }
                    Err(e) => o["error"] = json!(e),
                }
                if let Some(w) = &r.warning {
                    o["warning"] = json!(w);
                }
                o
            })
            .collect();
        let s = serde_json::to_string_pretty(&arr).map_err(|e| e.to_string())?;
        outln(&mut out, &s);
    } else if args.csv {
        eprintln!(
            "preprocess: {} [{}]; tta: {}; engine: {}",
            info.preprocess, info.preprocess_source, info.tta, info.engine
        );
        let mut head = vec!["file".to_string()];
        head.extend((0..classes).map(|i| format!("p{i}")));
        head.push("error".into());
        outln(&mut out, &head.join(","));
        for r in rows {
            let mut f = vec![allconv::eval::table::csv_field(
                &r.file.display().to_string(),
            )];
            match &r.result {
                Ok(s) => {
                    f.extend(s.probabilities.iter().map(|v| v.to_string()));
                    f.push(String::new());
                }
                Err(e) => {
                    f.extend((0..classes).map(|_| String::new()));
                    f.push(allconv::eval::table::csv_field(e));
                }
            }
            outln(&mut out, &f.join(","));
        }
    } else {
        outln(&mut out, &format!("model:      {}", args.model.display()));
        outln(
            &mut out,
            &format!(
                "preprocess: {} [{}]",
                info.preprocess, info.preprocess_source
            ),
        );
        outln(&mut out, &format!("tta:        {}", info.tta));
        outln(&mut out, &format!("engine:     {}", info.engine));
        let width = rows
            .iter()
            .map(|r| r.file.display().to_string().len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut head = format!("{:<width$}", "file");
        for i in 0..classes {
            head.push_str(&format!("  {:>10}", format!("p{i}")));
        }
        outln(&mut out, &head);
        for r in rows {
            let mut line = format!("{:<width$}", r.file.display().to_string());
            match &r.result {
                Ok(s) => {
                    for v in &s.probabilities {
                        line.push_str(&format!("  {v:>10.6}"));
                    }
                    if let Some(h) = &s.heatmap {
                        line.push_str(&format!("  -> {}", h.png.display()));
                    }
                }
                Err(e) => line.push_str(&format!("  error: {e}")),
            }
            outln(&mut out, &line);
        }
    }
    emit(&out);
    if failed > 0 {
        eprintln!("{failed} of {} images failed", rows.len());
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn outln(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

/// Writes to stdout, ignoring a closed pipe (`allconv predict ... | head`).
pub fn emit(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes()).and_then(|_| o.flush());
}

/// One shard of a manifest scored into `--out`, resuming what an earlier run finished.
#[cfg(feature = "runtime")]
fn archive(args: &PredictArgs) -> Result<ExitCode, String> {
    use allconv::pipeline::archive::{run_shard, ShardOptions};
    use allconv::pipeline::manifest::Shard;
    use allconv::pipeline::table::Format;
    if args.heatmap.is_some() {
        return Err(
            "--heatmap writes image files per image; it does not combine with --manifest".into(),
        );
    }
    let (Some(manifest), Some(out)) = (&args.manifest, &args.out) else {
        return Err("--manifest needs --out".into());
    };
    let shard = match &args.shard {
        Some(spec) => Shard::parse(spec, args.shard_count, |k| std::env::var(k).ok())?,
        None => match args.shard_count {
            Some(_) => return Err("--shard-count goes with --shard auto".into()),
            None => Shard::ALL,
        },
    };
    let so = ShardOptions {
        manifest: manifest.clone(),
        path_column: args.path_column.clone(),
        out: out.clone(),
        shard,
        chunk_rows: args.chunk_rows.try_into().unwrap_or(usize::MAX),
        format: match args.format.as_deref() {
            Some("csv") => Format::Csv,
            Some(_) => Format::Parquet,
            None => Format::DEFAULT,
        },
        retry_failed: args.retry_failed,
    };
    let opts = args.score_options()?;
    let mut progress: Option<Progress> = None;
    let mut done = 0;
    let every = so.chunk_rows.max(1);
    let report = run_shard(&opts, &so, |row, total| {
        let p = progress.get_or_insert_with(|| Progress::new(total, args.json));
        report_row(p, row);
        done += 1;
        p.step(done);
        // A cluster task's log is a file: one line per chunk's worth of rows instead.
        if !p.drawing() && !args.json && (done % every == 0 || done == total) {
            eprintln!("shard {}: {}", so.shard, p.log_line(done));
        }
    });
    if let Some(p) = &progress {
        p.clear();
    }
    let report = report?;
    let info = report.info.as_ref();
    if args.json {
        let v = serde_json::json!({
            "dir": report.dir.display().to_string(),
            "shard": report.shard.to_string(),
            "rows": [report.rows.start, report.rows.end],
            "resumed": report.resumed,
            "retried": report.retried,
            "scored": report.scored,
            "failed": report.failed,
            "chunks_written": report.chunks_written,
            "seconds": report.seconds,
            "images_per_second": report.scored as f64 / report.seconds.max(1e-9),
            "model_sha256": report.model_sha256,
            "preprocess": info.map(|i| i.preprocess.clone()),
            "preprocess_source": info.map(|i| i.preprocess_source.clone()),
            "tta": info.map(|i| i.tta.clone()),
            "engine": info.map(|i| i.engine.clone()),
        });
        emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        ));
    } else {
        if let Some(i) = info {
            eprintln!(
                "preprocess: {} [{}]; tta: {}; engine: {}",
                i.preprocess, i.preprocess_source, i.tta, i.engine
            );
        }
        let retried = if report.retried > 0 {
            format!(" ({} failed rows taken out to retry)", report.retried)
        } else {
            String::new()
        };
        eprintln!(
            "shard {}: rows {}..{}: {} done before{retried}, {} scored now ({} failed) in {:.1} s, {} chunk(s) written to {}",
            report.shard,
            report.rows.start,
            report.rows.end,
            report.resumed,
            report.scored,
            report.failed,
            report.seconds,
            report.chunks_written,
            report.dir.display()
        );
    }
    // Failed images are recorded rows: the shard itself succeeded.
    Ok(ExitCode::SUCCESS)
}
