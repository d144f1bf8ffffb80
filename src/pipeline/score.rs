//! Scoring a list of images: the reader thread, the jobs, and one row per image.

use super::engine::{load_model, run_view, Job, MemoryBudget, Model};
use super::plan::plan_preprocess;
use super::reader::{read_images, EarlyDecode, Prepared, ReadAhead};
use super::{Res, ScoreOptions};
use crate::data::{flip_h, flip_v, write_overlay, DicomAttributes, OverlayOptions};
use crate::passes::heatmap::HeatmapReport;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// The heatmap files written for one image.
#[derive(Debug, Clone)]
pub struct HeatmapOut {
    pub png: PathBuf,
    pub npy: PathBuf,
    /// (h, w, classes) of the map.
    pub shape: [usize; 3],
}

/// One image's result.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Class probabilities (the mean over the 4 flips with TTA; a heatmap's mean).
    pub probabilities: Vec<f32>,
    /// (h, w) the model ran at.
    pub input_size: [usize; 2],
    pub heatmap: Option<HeatmapOut>,
}

/// One image as the pipeline scored it, or why it could not.
#[derive(Debug, Clone)]
pub struct Row {
    pub file: PathBuf,
    pub result: Res<Scored>,
    /// The unflipped view's own output when host TTA ran (`result` holds the mean).
    pub single: Option<Vec<f32>>,
    /// The image's values do not fit the preprocessing (scored anyway).
    pub warning: Option<String>,
    /// A DICOM file's identifying attributes (also when scoring it failed after reading).
    pub dicom: Option<DicomAttributes>,
}

/// Run the model on a prepared image's views; the mean over views, the heatmap
/// (written under `name`), and, where several views ran, the first (unflipped) view's
/// own output.
pub(crate) fn score(
    name: &str,
    prepared: Prepared,
    m: &Model,
    job: &mut Job,
    budget: &MemoryBudget,
    opts: &ScoreOptions,
) -> Res<(Scored, Option<Vec<f32>>)> {
    let Prepared {
        img, views, shape, ..
    } = prepared;
    let mut first: Option<Vec<f32>> = None;
    let heat = m.heatmap.is_some();
    let mut acc: Vec<f32> = Vec::new();
    let mut out_shape = Vec::new();
    for (i, v) in views.iter().enumerate() {
        let (mut y, s) = run_view(m, job, budget, v, shape)?;
        if heat {
            let [mh, mw, k] = match s.as_slice() {
                [1, a, b, c] => [*a, *b, *c],
                _ => {
                    return Err(format!(
                        "the heatmap model returned shape {s:?}, expected (1, h, w, classes)"
                    ))
                }
            };
            let e = |e: crate::data::DataError| e.to_string();
            // Flip the map back to the image's orientation.
            y = match i {
                1 => flip_h(&y, [mh, mw, k]).map_err(e)?,
                2 => flip_v(&y, [mh, mw, k]).map_err(e)?,
                3 => flip_v(&flip_h(&y, [mh, mw, k]).map_err(e)?, [mh, mw, k]).map_err(e)?,
                _ => y,
            };
        } else if s.len() != 2 || s[0] != 1 {
            return Err(format!(
                "the model returned shape {s:?}; predict expects (1, classes) (use --heatmap for a patch classifier's map)"
            ));
        }
        if acc.is_empty() {
            if views.len() > 1 && !heat {
                first = Some(y.clone());
            }
            acc = y;
            out_shape = s;
        } else {
            for (a, b) in acc.iter_mut().zip(&y) {
                *a += b;
            }
        }
    }
    let n = views.len() as f32;
    for a in &mut acc {
        *a /= n;
    }
    let hw = [shape[0], shape[1]];
    if !heat {
        let scored = Scored {
            probabilities: acc,
            input_size: hw,
            heatmap: None,
        };
        return Ok((scored, first));
    }
    // Heatmap: class probabilities of the image = mean of the map; write the files.
    let (mh, mw, k) = (out_shape[1], out_shape[2], out_shape[3]);
    let class = opts.heatmap_class.unwrap_or(k.saturating_sub(1));
    if class >= k {
        return Err(format!(
            "--heatmap-class {class}: the model has {k} classes"
        ));
    }
    let mut mean = vec![0.0f32; k];
    for px in acc.chunks_exact(k) {
        for (s, v) in mean.iter_mut().zip(px) {
            *s += v;
        }
    }
    for s in &mut mean {
        *s /= (mh * mw) as f32;
    }
    let dir = opts.heatmap.clone().unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let png = dir.join(format!("{name}_heatmap.png"));
    let npy = dir.join(format!("{name}_heatmap.npy"));
    let plane: Vec<f32> = acc.chunks_exact(k).map(|px| px[class]).collect();
    write_overlay(&png, &img, &plane, (mh, mw), &OverlayOptions::default())
        .map_err(|e| e.to_string())?;
    write_npy(&npy, &acc, [mh, mw, k])?;
    let scored = Scored {
        probabilities: mean,
        input_size: hw,
        heatmap: Some(HeatmapOut {
            png,
            npy,
            shape: [mh, mw, k],
        }),
    };
    Ok((scored, None))
}

/// Heatmap file names, one per image in order: the file's stem, then `stem_ext`,
/// `stem_ext2`... where stems repeat; fixed before the jobs start, so that the names do
/// not depend on which image finishes first.
pub(crate) fn heatmap_names(images: &[PathBuf]) -> Vec<String> {
    let mut taken = HashSet::new();
    images
        .iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let mut name = stem.clone();
            if !taken.insert(name.clone()) {
                let ext = path
                    .extension()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name = format!("{stem}_{ext}");
                let mut i = 2;
                while !taken.insert(name.clone()) {
                    name = format!("{stem}_{ext}{i}");
                    i += 1;
                }
            }
            name
        })
        .collect()
}

/// Minimal `.npy` (version 1.0, little-endian float32, C order).
pub(crate) fn write_npy(path: &Path, data: &[f32], shape: [usize; 3]) -> Res<()> {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        shape[0], shape[1], shape[2]
    );
    let total = 10 + dict.len() + 1;
    let pad = (64 - total % 64) % 64;
    let header_len = dict.len() + pad + 1;
    let mut bytes = Vec::with_capacity(10 + header_len + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header_len as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', pad));
    bytes.push(b'\n');
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::files::write_atomic(path, &bytes).map_err(|e| e.to_string())
}

/// What a scoring run uses, known once the model is loaded and before any image runs.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The preprocessing in effect, as a spec, and where it came from.
    pub preprocess: String,
    pub preprocess_source: String,
    /// How TTA runs (`off`, host, in-graph).
    pub tta: String,
    /// The engine that runs the model (tract, ort, torch).
    pub engine: String,
    /// The model applies 4-flip TTA in its graph (ONNX metadata): no single-view scores.
    pub in_graph_tta: bool,
    /// With heatmaps: what the heatmap pass did, and the class drawn.
    pub heatmap: Option<(HeatmapReport, usize)>,
}

/// `images` scored as `allconv predict` scores them: the model loaded from `opts` (its
/// first images decoded meanwhile), `on_start` told what runs, then `on_row(i, row)` for
/// each image as it finishes, in any order (`i` is its index in `images`). An error from
/// either callback stops the run (the images in flight are dropped) and is returned; a
/// failed image is a row with its error, not an `Err`.
pub fn score_stream(
    opts: &ScoreOptions,
    images: &[PathBuf],
    on_start: impl FnOnce(&RunInfo) -> Res<()>,
    mut on_row: impl FnMut(usize, Row) -> Res<()>,
) -> Res<RunInfo> {
    let threads = opts.threads();
    let early = EarlyDecode::start(images, threads);
    let model = load_model(opts)?;
    let plan = plan_preprocess(opts, &model)?;
    let info = RunInfo {
        preprocess: plan.spec.clone(),
        preprocess_source: plan.source.clone(),
        tta: plan.tta.to_string(),
        engine: plan.engine.to_string(),
        in_graph_tta: model.in_graph_tta,
        heatmap: model.heatmap.clone().map(|r| {
            let class = opts.heatmap_class.unwrap_or(r.classes.saturating_sub(1));
            (r, class)
        }),
    };
    on_start(&info)?;
    if images.is_empty() {
        return Ok(info);
    }
    let host_tta = opts.tta && !model.in_graph_tta;
    let names = heatmap_names(images);
    let jobs = if model.is_torch() {
        1
    } else {
        opts.jobs
            .map_or(model.threads, |j| j.try_into().unwrap_or(usize::MAX))
            .min(images.len())
            .max(1)
    };
    let budget = MemoryBudget {
        free: Mutex::new(crate::limits::current().activation_bytes),
        freed: Condvar::new(),
    };
    // How the reader shares the cores with the network: see `ReadAhead`.
    let read_ahead = if model.is_torch() {
        ReadAhead::BetweenRuns {
            batch: model.threads.min(images.len()).max(1),
        }
    } else {
        ReadAhead::Overlapped
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(jobs.max(read_ahead.batch()));
    // Held by the jobs only: when they stop (the caller's error), the reader's sends fail.
    let rx = Arc::new(Mutex::new(rx));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // One message per image scored, so that a `BetweenRuns` reader knows the cores are free.
    let (scored_tx, scored_rx) = std::sync::mpsc::channel::<()>();
    let mut failure = None;
    std::thread::scope(|scope| {
        let plan = &plan;
        scope
            .spawn(move || read_images(images, early, plan, host_tta, read_ahead, &tx, &scored_rx));
        for _ in 0..jobs {
            let (rx, done_tx, scored_tx) = (Arc::clone(&rx), done_tx.clone(), scored_tx.clone());
            let (model, budget, names) = (&model, &budget, &names);
            scope.spawn(move || {
                let mut job = Job {
                    threads: (model.threads / jobs).max(1),
                    plans: HashMap::new(),
                    #[cfg(feature = "torch")]
                    torch_checked: Default::default(),
                };
                loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((i, (prepared, warning))) = next else {
                        break;
                    };
                    let dicom = prepared.as_ref().ok().and_then(|p| p.dicom.clone());
                    let (result, single) = match prepared
                        .and_then(|p| score(&names[i], p, model, &mut job, budget, opts))
                    {
                        Ok((s, single)) => (Ok(s), single),
                        Err(e) => (Err(e), None),
                    };
                    let _ = scored_tx.send(());
                    if done_tx.send((i, result, warning, single, dicom)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((rx, done_tx, scored_tx));
        for (i, result, warning, single, dicom) in done_rx {
            let row = Row {
                file: images[i].clone(),
                result,
                single,
                warning,
                dicom,
            };
            if let Err(e) = on_row(i, row) {
                failure = Some(e);
                break; // drops the receiver: the jobs stop at their next image
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(info),
    }
}

/// One image's scores, for `allconv evaluate`.
pub struct ImageScores {
    pub file: PathBuf,
    /// The model's output (the mean over the 4 flips with TTA), or why it failed.
    pub probs: Res<Vec<f32>>,
    /// With host TTA: the unflipped image's own output.
    pub single: Option<Vec<f32>>,
    /// The image's values do not fit the preprocessing (scored anyway).
    pub warning: Option<String>,
}

/// Scores of a list of images, through the same pipeline as `allconv predict`.
pub struct ScoreRun {
    pub info: RunInfo,
    /// One per image, in order.
    pub rows: Vec<Row>,
}

impl ScoreRun {
    /// The rows as `evaluate` reads them.
    pub fn image_scores(self) -> Vec<ImageScores> {
        self.rows
            .into_iter()
            .map(|r| ImageScores {
                file: r.file,
                probs: r.result.map(|s| s.probabilities),
                single: r.single,
                warning: r.warning,
            })
            .collect()
    }
}

/// `images` scored as `allconv predict` scores them (model loading, preprocessing, TTA,
/// engine, threads and read-ahead), one row per image in order; `on_row` sees each row as
/// it finishes (progress, warnings). With host TTA each image also keeps its unflipped
/// view's output.
pub fn score_images(
    opts: &ScoreOptions,
    images: &[PathBuf],
    on_start: impl FnOnce(&RunInfo) -> Res<()>,
    mut on_row: impl FnMut(usize, &Row),
) -> Res<ScoreRun> {
    let mut slots: Vec<Option<Row>> = images.iter().map(|_| None).collect();
    let info = score_stream(opts, images, on_start, |i, row| {
        on_row(i, &row);
        slots[i] = Some(row);
        Ok(())
    })?;
    let rows = slots
        .into_iter()
        .zip(images)
        .map(|(r, path)| {
            r.unwrap_or_else(|| Row {
                file: path.clone(),
                result: Err("internal: the image was not scored".into()),
                single: None,
                warning: None,
                dicom: None,
            })
        })
        .collect();
    Ok(ScoreRun { info, rows })
}
