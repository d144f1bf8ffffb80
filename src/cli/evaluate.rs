//! `allconv evaluate`: a model on a labelled test set (class folders or a manifest), or a
//! scores CSV alone; the metrics are `allconv::eval`'s, the scoring is `predict`'s.

use allconv::eval::{self, AurocReport, EvalOptions, EvalReport, ScoreTable};
use std::path::PathBuf;
use std::process::ExitCode;

/// The examples that end `allconv evaluate --help` (each parses; see tests/cli_help.rs).
pub const EXAMPLES: &str = "Examples:
  # A whole-image model on a test folder (one sub-folder per class), single view and 4-flip TTA
  allconv evaluate whole.onnx test/ --tta --roc roc.png --scores scores.csv

  # Every metric again from the scores file alone, as JSON
  allconv evaluate --from-scores scores.csv --bootstrap 2000 --seed 1 --json

  # A labelled list instead of folders, the positive class named, sensitivity at 95% specificity
  allconv evaluate fixtures/k208tf_vgg16_whole_vgg/model.h5 --manifest labels.csv \\
      --preprocess rescale=0.0039,mean=0.5,gray --positive-class pos --at-specificity 0.95";

#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// Model: .onnx, .nnef.tgz or Keras .h5 (as `predict` takes it).
    #[arg(required_unless_present = "from_scores")]
    pub model: Option<PathBuf>,
    /// Test folder: one sub-folder per class (as `finetune` reads them).
    #[arg(required_unless_present_any = ["from_scores", "manifest"])]
    pub test_dir: Option<PathBuf>,
    /// Labelled image list instead of TEST_DIR: a CSV with `path` and `label` columns
    /// (relative paths from the manifest's folder).
    #[arg(long, conflicts_with = "test_dir")]
    pub manifest: Option<PathBuf>,
    /// Recompute every metric from a scores CSV written by `--scores` (no model).
    #[arg(long, conflicts_with_all = ["model", "test_dir", "manifest", "preprocess", "tta", "class_list", "threads"])]
    pub from_scores: Option<PathBuf>,
    /// Classes in the model's output order (default: the class folders, or the manifest's
    /// labels, sorted by name).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub class_list: Option<Vec<String>>,
    /// Preprocessing as `predict --preprocess` takes it.
    #[arg(long)]
    pub preprocess: Option<String>,
    /// Score every image both as it is and with 4-flip TTA; report both and the difference.
    #[arg(long)]
    pub tta: bool,
    /// The class whose probability is the score (default: the last class).
    #[arg(long)]
    pub positive_class: Option<String>,
    /// Bootstrap resamples for the 95% intervals (0: none).
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Report the best sensitivity at this specificity or more.
    #[arg(long, default_value_t = 0.9)]
    pub at_specificity: f64,
    /// Write the ROC curve(s) as a PNG.
    #[arg(long, value_name = "PNG")]
    pub roc: Option<PathBuf>,
    /// Write the per-image scores CSV (path, label, probabilities).
    #[arg(long, value_name = "CSV")]
    pub scores: Option<PathBuf>,
    /// Threads in all (default: every available core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Runtime, as `predict --backend`: auto, tract, ort or torch.
    #[arg(long, default_value = "auto", value_parser = ["auto", "tract", "ort", "torch"])]
    pub backend: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The JSON report: the metrics and where they came from.
#[derive(serde::Serialize)]
struct Output {
    model: Option<String>,
    source: String,
    preprocess: Option<String>,
    preprocess_source: Option<String>,
    tta: String,
    /// The engine that ran the model (none from a scores file).
    engine: Option<String>,
    #[serde(flatten)]
    report: EvalReport,
    outputs: Outputs,
    warnings: Vec<String>,
}

#[derive(serde::Serialize)]
struct Outputs {
    scores: Option<String>,
    roc: Option<String>,
}

struct Scored {
    table: ScoreTable,
    preprocess: Option<String>,
    preprocess_source: Option<String>,
    tta: String,
    engine: Option<String>,
    warnings: Vec<String>,
}

/// The f32 a model returned, as the f64 its scores CSV reads back (the shortest decimal
/// that gives the same f32): metrics from a run and from its CSV are the same numbers.
fn f64_of(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(f64::NAN)
}

fn labelled_images(
    a: &EvaluateArgs,
) -> Result<(Vec<String>, Vec<(PathBuf, usize)>, Vec<String>), String> {
    let mut warnings = Vec::new();
    if let Some(m) = &a.manifest {
        let rows = eval::table::read_manifest(m).map_err(|e| e.to_string())?;
        let classes = match &a.class_list {
            Some(c) => c.clone(),
            None => {
                let mut c: Vec<String> = rows.iter().map(|(_, l)| l.clone()).collect();
                c.sort();
                c.dedup();
                c
            }
        };
        let mut bad = Vec::new();
        let mut out = Vec::new();
        for (p, l) in rows {
            match classes.iter().position(|c| *c == l) {
                Some(i) => out.push((p, i)),
                None => bad.push(format!("{}: label {l:?}", p.display())),
            }
        }
        if !bad.is_empty() {
            return Err(format!(
                "{}: labels not in the class list {classes:?}: {}",
                m.display(),
                bad.join("; ")
            ));
        }
        return Ok((classes, out, warnings));
    }
    let dir = a.test_dir.as_ref().ok_or("give TEST_DIR or --manifest")?;
    let classes = match &a.class_list {
        Some(c) => c.clone(),
        None => eval::table::class_folders(dir).map_err(|e| e.to_string())?,
    };
    let (samples, w) =
        allconv::data::dataset::list_class_folders(dir, &classes).map_err(|e| e.to_string())?;
    for w in &w {
        eprintln!("warning: {w}");
    }
    warnings.extend(w.iter().map(|w| w.to_string()));
    Ok((
        classes,
        samples.into_iter().map(|s| (s.path, s.label)).collect(),
        warnings,
    ))
}

#[cfg(feature = "runtime")]
fn score(a: &EvaluateArgs) -> Result<Scored, String> {
    let model = a.model.clone().ok_or("give MODEL")?;
    let (classes, images, mut warnings) = labelled_images(a)?;
    let opts = allconv::pipeline::ScoreOptions {
        model,
        preprocess: a.preprocess.clone(),
        tta: a.tta,
        threads: a.threads,
        backend: a.backend.parse()?,
        ..Default::default()
    };
    if !a.json {
        eprintln!(
            "scoring {} images{}",
            images.len(),
            if a.tta {
                " (single view and 4-flip TTA)"
            } else {
                ""
            }
        );
    }
    let paths: Vec<_> = images.iter().map(|(p, _)| p.clone()).collect();
    let progress = crate::cli::predict::Progress::new(paths.len(), a.json);
    let mut done = 0;
    let run = allconv::pipeline::score_images(
        &opts,
        &paths,
        |info| {
            crate::cli::predict::announce(info);
            Ok(())
        },
        |_, row| {
            crate::cli::predict::report_row(&progress, row);
            done += 1;
            progress.step(done);
        },
    )?;
    progress.clear();
    if a.tta && run.info.in_graph_tta {
        return Err(format!(
            "{}: the model applies 4-flip TTA in its graph, so single-view scores cannot be had from it; evaluate it without --tta (its scores are the TTA scores), or evaluate a model exported without --tta",
            opts.model.display()
        ));
    }
    let k = classes.len();
    let widen = |p: &[f32]| -> Result<Vec<f64>, String> {
        match p.len() {
            n if n == k => Ok(p.iter().map(|&v| f64_of(v)).collect()),
            // One sigmoid output for two classes: the probability of the second.
            1 if k == 2 => {
                let q = f64_of(p[0]);
                Ok(vec![1.0 - q, q])
            }
            n => Err(format!(
                "the model gives {n} outputs for the {k} classes {classes:?}"
            )),
        }
    };
    let mut table = ScoreTable {
        classes: classes.clone(),
        paths: Vec::new(),
        labels: Vec::new(),
        probs: Vec::new(),
        probs_tta: a.tta.then(Vec::new),
    };
    let mut errors = Vec::new();
    let info = run.info.clone();
    for (row, (_, label)) in run.image_scores().into_iter().zip(&images) {
        if let Some(w) = &row.warning {
            warnings.push(format!("{}: {w}", row.file.display()));
        }
        let file = row.file.display().to_string();
        let probs = row.probs.and_then(|p| widen(&p));
        let probs = match (probs, a.tta) {
            (Ok(mean), true) => match row.single.as_deref().map(widen) {
                Some(Ok(single)) => Ok((single, Some(mean))),
                Some(Err(e)) => Err(e),
                None => Err("internal: no single-view scores under TTA".into()),
            },
            (Ok(p), false) => Ok((p, None)),
            (Err(e), _) => Err(e),
        };
        match probs {
            Ok((p, t)) => {
                table.paths.push(file);
                table.labels.push(*label);
                table.probs.push(p);
                if let (Some(tt), Some(t)) = (&mut table.probs_tta, t) {
                    tt.push(t);
                }
            }
            Err(e) => errors.push(if e.contains(&file) {
                e
            } else {
                format!("{file}: {e}")
            }),
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "{} of {} images could not be scored (no metrics on a partial test set):\n  {}",
            errors.len(),
            images.len(),
            errors.join("\n  ")
        ));
    }
    Ok(Scored {
        table,
        preprocess: Some(info.preprocess),
        preprocess_source: Some(info.preprocess_source),
        tta: info.tta,
        engine: Some(info.engine),
        warnings,
    })
}

#[cfg(not(feature = "runtime"))]
fn score(_a: &EvaluateArgs) -> Result<Scored, String> {
    Err("running a model needs allconv built with the `runtime` feature; --from-scores works without".into())
}

fn run(a: &EvaluateArgs) -> Result<Output, String> {
    let (scored, source, model) = match &a.from_scores {
        Some(csv) => {
            let table = ScoreTable::read_csv(csv).map_err(|e| e.to_string())?;
            let tta = if table.probs_tta.is_some() {
                "host (4 flips), from the scores file"
            } else {
                "as in the scores file"
            };
            (
                Scored {
                    table,
                    preprocess: None,
                    preprocess_source: None,
                    tta: tta.into(),
                    engine: None,
                    warnings: Vec::new(),
                },
                csv.display().to_string(),
                None,
            )
        }
        None => {
            let s = score(a)?;
            let source = a
                .manifest
                .as_ref()
                .or(a.test_dir.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (s, source, a.model.as_ref().map(|m| m.display().to_string()))
        }
    };
    let opts = EvalOptions {
        positive_class: a.positive_class.clone(),
        bootstrap: a.bootstrap,
        seed: a.seed,
        at_specificity: a.at_specificity,
    };
    let report =
        eval::evaluate(&scored.table, &opts).map_err(|e| format!("{source}: {}", e.message()))?;
    if let Some(p) = &a.scores {
        scored.table.write_csv(p).map_err(|e| e.to_string())?;
    }
    if let Some(p) = &a.roc {
        let b = report.binary.as_ref().ok_or(
            "--roc draws a binary ROC curve: give --positive-class for a model of more than two classes",
        )?;
        eval::plot::write_binary_roc(p, "ROC", b).map_err(|e| e.to_string())?;
    }
    Ok(Output {
        model,
        source,
        preprocess: scored.preprocess,
        preprocess_source: scored.preprocess_source,
        tta: scored.tta,
        engine: scored.engine,
        report,
        outputs: Outputs {
            scores: a.scores.as_ref().map(|p| p.display().to_string()),
            roc: a.roc.as_ref().map(|p| p.display().to_string()),
        },
        warnings: scored.warnings,
    })
}

fn ci(c: Option<[f64; 2]>) -> String {
    c.map_or("n/a".into(), |[a, b]| format!("{a:.4}-{b:.4}"))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn auroc_line(name: &str, r: &AurocReport) -> String {
    format!(
        "{name:<14} {:.4}   {:<15}   {:<15}   {}\n",
        r.auroc,
        ci(r.ci_bootstrap),
        ci(r.ci_delong),
        opt(r.delong_se, 4)
    )
}

fn text(o: &Output) -> String {
    let r = &o.report;
    let mut s = String::new();
    if let Some(m) = &o.model {
        s += &format!("model:       {m}\n");
    }
    let counts: Vec<String> = r
        .classes
        .iter()
        .zip(&r.class_counts)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    s += &format!(
        "test set:    {} ({} images: {})\n",
        o.source,
        r.images,
        counts.join(", ")
    );
    if let (Some(p), Some(src)) = (&o.preprocess, &o.preprocess_source) {
        s += &format!("preprocess:  {p} [{src}]\n");
    }
    s += &format!("tta:         {}\n", o.tta);
    if let Some(e) = &o.engine {
        s += &format!("engine:      {e}\n");
    }
    if let Some(b) = &r.binary {
        s += &format!(
            "\npositive class {:?}: {} positive, {} negative; 95% intervals, bootstrap {} resamples (seed {})\n",
            b.positive_class, b.positives, b.negatives, r.bootstrap_resamples, r.seed
        );
        s += &format!(
            "{:<14} {:<6}   {:<15}   {:<15}   {}\n",
            "", "AUROC", "CI bootstrap", "CI DeLong", "DeLong SE"
        );
        s += &auroc_line(
            if b.tta.is_some() {
                "single view"
            } else {
                "model"
            },
            &b.single,
        );
        if let Some(t) = &b.tta {
            s += &auroc_line("4-flip TTA", t);
        }
        if let Some(d) = &b.tta_minus_single {
            s += &format!(
                "{:<14} {:+.4}  {:<15}   {:<15}   {}   z {}, p {}\n",
                "TTA - single",
                d.difference,
                ci(d.ci_bootstrap),
                ci(d.ci_delong),
                opt(d.delong_se, 4),
                opt(d.z, 3),
                opt(d.p_value, 4)
            );
        }
        let mut points = |name: &str, a: &AurocReport| {
            if let Some(p) = &a.youden {
                s += &format!(
                    "{name:<14} Youden point: score >= {:.6}: sensitivity {:.4}, specificity {:.4}\n",
                    p.threshold, p.sensitivity, p.specificity
                );
            }
            match &a.at_specificity {
                Some(p) => {
                    s += &format!(
                        "{name:<14} at specificity >= {:.2}: score >= {:.6}: sensitivity {:.4}, specificity {:.4}\n",
                        b.target_specificity, p.threshold, p.sensitivity, p.specificity
                    )
                }
                None => {
                    s += &format!(
                        "{name:<14} no threshold reaches specificity {:.2}\n",
                        b.target_specificity
                    )
                }
            }
        };
        points(
            if b.tta.is_some() {
                "single view"
            } else {
                "model"
            },
            &b.single,
        );
        if let Some(t) = &b.tta {
            points("4-flip TTA", t);
        }
    }
    let mut multi = |name: &str, m: &eval::MultiClass| {
        s += &format!(
            "\n{name}: accuracy {:.4} (highest probability)\n",
            m.accuracy
        );
        let w = r.classes.iter().map(String::len).max().unwrap_or(4).max(6);
        s += &format!(
            "{:<w$}  {:>8}  {:>9}  confusion (columns: predicted {})\n",
            "class",
            "recall",
            "OvR AUROC",
            r.classes.join(", ")
        );
        for (k, c) in r.classes.iter().enumerate() {
            let row: Vec<String> = m.confusion[k].iter().map(|n| format!("{n:>6}")).collect();
            s += &format!(
                "{c:<w$}  {:>8}  {:>9}  {}\n",
                opt(m.recall[k], 4),
                opt(m.ovr_auroc[k], 4),
                row.join("")
            );
        }
        if r.classes.len() > 2 {
            s += &format!("macro one-vs-rest AUROC {}\n", opt(m.macro_ovr_auroc, 4));
        }
    };
    multi(
        if r.multiclass_tta.is_some() {
            "single view"
        } else {
            "classes"
        },
        &r.multiclass,
    );
    if let Some(m) = &r.multiclass_tta {
        multi("4-flip TTA", m);
    }
    for p in [&o.outputs.scores, &o.outputs.roc].into_iter().flatten() {
        s += &format!("wrote {p}\n");
    }
    s
}

pub fn main(a: EvaluateArgs) -> ExitCode {
    match run(&a) {
        // Warnings were printed to stderr as they came (predict's, the folder listing's).
        Ok(o) => {
            if let Err(e) = crate::print_report(a.json, &o, || text(&o)) {
                return crate::fail(a.json, e);
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(a.json, e),
    }
}
