//! The paper's first step, `ddsm_train/sample_patches_combined.py`: patches cut around
//! annotated lesions and from background tissue of full mammograms, for the patch
//! classifier. Reproduces the script with the functions it imports
//! (`dm_image.read_resize_img`, `crop_img`, `add_img_margins`,
//! `dm_preprocess.segment_breast`):
//!
//! - the patient-level train/val split stratified by malignancy ([`split`]);
//! - per view: read + OpenCV-exact bicubic resize, breast segmentation (8-bit threshold at
//!   5% of the max, largest contour filled, bounding-box crop, the same box on the masks),
//!   zero margins of half a patch;
//! - per abnormality: the bounding box of the largest ROI contour, abnormal patches drawn
//!   by `np.random.RandomState(seed).randint` until the overlap rule holds (cutoff lowered
//!   by 0.05 after 1000 tries), background patches under the negative cutoff, and for the
//!   first abnormality of a view hard negatives at `cv2.SimpleBlobDetector` keypoints in a
//!   permuted order ([`blob`]);
//! - patches written as the script writes them (`toimage(patch, high=max, low=min,
//!   mode='I')` then PNG: 16-bit, a constant patch all zero).
//!
//! Bad input (a missing or unreadable image or mask, a mask with no ROI, a patient with no
//! rows, a patch larger than the image) skips that item with its name and reason; the
//! rest is sampled.

pub mod blob;
pub mod contours;
pub mod mias;
pub mod mt19937;
pub mod split;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::data::{read_image, resize_cubic, DataError, GrayImage};
use crate::error::{Error, Result};
use contours::{bounding_rect, contour_area, fill_outer, find_all, moments, tree_order, Approx};
use mt19937::RandomState;

/// The script's options (names and defaults of its command line) plus the seed.
#[derive(Debug, Clone)]
pub struct Options {
    pub target_height: usize,
    pub target_width: Option<usize>,
    pub segment_breast: bool,
    pub patch_size: usize,
    pub nb_bkg: i64,
    pub nb_abn: i64,
    pub nb_hns: i64,
    pub pos_cutoff: f64,
    pub neg_cutoff: f64,
    pub val_size: f64,
    pub bkg_dir: String,
    pub calc_pos_dir: String,
    pub calc_neg_dir: String,
    pub mass_pos_dir: String,
    pub mass_neg_dir: String,
    /// `np.random.RandomState(seed)` of every view and `random_state` of the split
    /// (the script: 12345).
    pub seed: u32,
    pub jobs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target_height: 4096,
            target_width: None,
            segment_breast: true,
            patch_size: 256,
            nb_bkg: 30,
            nb_abn: 30,
            nb_hns: 15,
            pos_cutoff: 0.75,
            neg_cutoff: 0.35,
            val_size: 0.1,
            bkg_dir: "background".into(),
            calc_pos_dir: "calc_mal".into(),
            calc_neg_dir: "calc_ben".into(),
            mass_pos_dir: "mass_mal".into(),
            mass_neg_dir: "mass_ben".into(),
            seed: 12345,
            jobs: 1,
        }
    }
}

/// Where an abnormality's ROI comes from.
#[derive(Debug, Clone)]
pub enum Roi {
    /// A mask image (non-zero = lesion), read as `cv2.imread(IMREAD_GRAYSCALE)`.
    Mask(PathBuf),
    /// A circle in the original image's pixel coordinates (column, row from the top,
    /// radius), drawn as a 0/255 mask of the image's size.
    Circle { x: f64, y: f64, r: f64 },
}

/// One row of the table: an abnormality of a view.
#[derive(Debug, Clone)]
pub struct Abnormality {
    pub abn: String,
    pub pathology: String,
    /// `calc` or `mass`.
    pub itype: String,
    pub roi: Roi,
}

/// One view (one full image) and its abnormalities in table order.
#[derive(Debug, Clone)]
pub struct View {
    pub patient: String,
    /// `PAT_SIDE_VIEW` (the script's img_id).
    pub id: String,
    pub image: PathBuf,
    pub abnormalities: Vec<Abnormality>,
}

/// The annotation table: per patient, its views (sorted by side and view, as the script's
/// sorted index), in the order patients first appear.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub patients: BTreeMap<String, Vec<View>>,
}

impl Table {
    /// Is the patient malignant (any pathology starting with `MALIGNANT`)?
    pub fn malignant(&self, patient: &str) -> bool {
        self.patients.get(patient).is_some_and(|vs| {
            vs.iter()
                .flat_map(|v| &v.abnormalities)
                .any(|a| a.pathology.starts_with("MALIGNANT"))
        })
    }
}

/// Reads `roi_mask_path.csv` (columns patient_id, side, view, abn_num, pathology, type)
/// into views whose images are `FULL_IMG_DIR/PAT_SIDE_VIEW.png` and masks
/// `ROI_MASK_DIR/{Calc,Mass}-Training_PAT_SIDE_VIEW_N.png` (the script's
/// `const_filename`).
pub fn read_cbis_table(csv: &Path, mask_dir: &Path, full_dir: &Path) -> Result<Table> {
    let text = std::fs::read_to_string(csv).map_err(|e| Error::Io {
        file: csv.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let bad = |line: usize, message: String| Error::BadFormat {
        file: csv.to_path_buf(),
        what: format!("line {}", line + 1),
        message,
    };
    let (_, header) = lines.next().ok_or_else(|| bad(0, "empty file".into()))?;
    let header: Vec<String> = split_csv_line(header)
        .into_iter()
        .map(|h| h.trim().to_string())
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| bad(0, format!("no column `{name}` in the header {header:?}")))
    };
    let cols = [
        col("patient_id")?,
        col("side")?,
        col("view")?,
        col("abn_num")?,
        col("pathology")?,
        col("type")?,
    ];
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in lines {
        let f = split_csv_line(line);
        let get = |c: usize| f.get(c).map(|s| s.trim().to_string());
        match cols.map(get) {
            [Some(p), Some(s), Some(v), Some(a), Some(pa), Some(t)] => {
                let a = match a.parse::<f64>() {
                    Ok(n) if n.fract() == 0.0 => format!("{}", n as i64),
                    _ => a,
                };
                let t = t.to_ascii_lowercase();
                if t != "calc" && t != "mass" {
                    problems.push(format!("line {}: type `{t}` is not calc or mass", i + 1));
                    continue;
                }
                rows.push([p, s, v, a, pa, t]);
            }
            _ => problems.push(format!(
                "line {}: {} fields, the header has {}",
                i + 1,
                f.len(),
                header.len()
            )),
        }
    }
    if !problems.is_empty() {
        return Err(Error::BadFormat {
            file: csv.to_path_buf(),
            what: format!("{} bad row(s)", problems.len()),
            message: problems.join("; "),
        });
    }
    // sort_index on (patient_id, side, view): stable, so a view keeps its rows' order.
    rows.sort_by(|a, b| (&a[0], &a[1], &a[2]).cmp(&(&b[0], &b[1], &b[2])));
    let mut table = Table::default();
    for [p, s, v, a, pa, t] in rows {
        let id = format!("{p}_{s}_{v}");
        let views = table.patients.entry(p.clone()).or_default();
        if views.last().is_none_or(|l| l.id != id) {
            views.push(View {
                patient: p.clone(),
                id: id.clone(),
                image: full_dir.join(format!("{id}.png")),
                abnormalities: Vec::new(),
            });
        }
        let prefix = if t == "calc" { "Calc" } else { "Mass" };
        let mask = mask_dir.join(format!("{prefix}-Training_{id}_{a}.png"));
        if let Some(view) = views.last_mut() {
            view.abnormalities.push(Abnormality {
                abn: a,
                pathology: pa,
                itype: t,
                roi: Roi::Mask(mask),
            });
        }
    }
    Ok(table)
}

/// One CSV line, with double-quoted fields.
fn split_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Reads a patient list (one ID a line, as `pd.read_csv(header=None)` reads it).
pub fn read_patient_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let pats: Vec<String> = text
        .lines()
        .map(|l| l.split(',').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if pats.is_empty() {
        return Err(Error::BadFormat {
            file: path.to_path_buf(),
            what: "patient list".into(),
            message: "no patient IDs".into(),
        });
    }
    Ok(pats)
}

/// Why an item was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    MissingImage,
    MissingMask,
    UnreadableFile,
    MaskWithoutRoi,
    PatientWithoutRows,
    PatchLargerThanImage,
    BlankImage,
    NoPosition,
    WriteFailed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MissingImage => "missing image",
            SkipReason::MissingMask => "missing mask",
            SkipReason::UnreadableFile => "unreadable file",
            SkipReason::MaskWithoutRoi => "mask with no ROI",
            SkipReason::PatientWithoutRows => "patient with no rows",
            SkipReason::PatchLargerThanImage => "patch larger than image",
            SkipReason::BlankImage => "blank image",
            SkipReason::NoPosition => "no position meets the overlap rule",
            SkipReason::WriteFailed => "write error",
        }
    }
}

/// A skipped item: the reason, what (a file, a patient, a view) and the detail.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skip {
    pub reason: SkipReason,
    pub item: String,
    pub message: String,
}

/// One written patch: kind (`abn`, `bkg`, `hns`), its abnormality, its centre in the
/// script's coordinates (the segmented, margin-padded image) and its file (relative to
/// the output folder).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Patch {
    pub kind: &'static str,
    pub abn: String,
    pub x: i64,
    pub y: i64,
    pub file: String,
}

/// What happened to one view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewReport {
    pub set: String,
    pub id: String,
    /// Size of the image as read (HxW).
    pub original: [usize; 2],
    /// Size after `read_resize_img` (HxW).
    pub resized: [usize; 2],
    /// `segment_breast`'s box (x, y, w, h) in the resized image.
    pub breast_bbox: Option<[usize; 4]>,
    /// Half a patch: the zero margin added on every side.
    pub margin: usize,
    /// The blob detector's keypoints (x, y, size) in OpenCV's order, and the permutation
    /// drawn over them.
    pub keypoints: Vec<[f32; 3]>,
    pub permutation: Vec<usize>,
    /// Per abnormality: the ROI box (x, y, w, h) in margin coordinates.
    pub roi_bbox: BTreeMap<String, [i64; 4]>,
    pub patches: Vec<Patch>,
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub views: Vec<ViewReport>,
    pub skipped: Vec<Skip>,
}

impl Report {
    /// Patches written per class folder.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for v in &self.views {
            for p in &v.patches {
                let class = p.file.split('/').next().unwrap_or("").to_string();
                *m.entry(class).or_insert(0) += 1;
            }
        }
        m
    }

    /// Skips per reason.
    pub fn skip_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for s in &self.skipped {
            *m.entry(s.reason.as_str()).or_insert(0) += 1;
        }
        m
    }
}

/// Splits the patients, writes `pat_lst.txt` in both output folders and samples every
/// view. `progress(done, total)` is called after each view.
pub fn run(
    table: &Table,
    patients: &[String],
    train_out: &Path,
    val_out: &Path,
    opts: &Options,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Report> {
    if opts.patch_size < 2 {
        return Err(Error::Other(format!(
            "--patch-size {} is too small (at least 2)",
            opts.patch_size
        )));
    }
    let mut skipped = Vec::new();
    let mut pats: Vec<String> = Vec::new();
    for p in patients {
        if table.patients.contains_key(p) {
            pats.push(p.clone());
        } else {
            skipped.push(Skip {
                reason: SkipReason::PatientWithoutRows,
                item: p.clone(),
                message: "listed in the patient list but has no row in the annotation table".into(),
            });
        }
    }
    if pats.is_empty() {
        return Err(Error::Other(
            "no patient of the list has a row in the annotation table".into(),
        ));
    }
    let labels: Vec<i64> = pats.iter().map(|p| i64::from(table.malignant(p))).collect();
    let (train, val): (Vec<String>, Vec<String>) = if opts.val_size > 0.0 {
        let (tr, te) = split::stratified_split(&labels, opts.val_size, opts.seed)
            .map_err(|e| Error::Other(format!("train/val split: {e}")))?;
        (
            tr.iter().map(|&i| pats[i].clone()).collect(),
            te.iter().map(|&i| pats[i].clone()).collect(),
        )
    } else {
        (pats.clone(), Vec::new())
    };
    let mut dirs = vec![(train_out, &train)];
    if opts.val_size > 0.0 {
        dirs.push((val_out, &val));
    }
    let mut jobs: Vec<(String, &Path, &View)> = Vec::new();
    for (dir, list) in &dirs {
        for sub in [
            &opts.bkg_dir,
            &opts.calc_pos_dir,
            &opts.calc_neg_dir,
            &opts.mass_pos_dir,
            &opts.mass_neg_dir,
        ] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::Io {
                file: d.clone(),
                message: format!("cannot create the output folder: {e}"),
            })?;
        }
        let text: String = list.iter().map(|p| format!("{p}\n")).collect();
        crate::files::write_atomic(&dir.join("pat_lst.txt"), text.as_bytes())?;
        let set = if std::ptr::eq(*list, &train) {
            "train"
        } else {
            "val"
        };
        for p in list.iter() {
            for v in table.patients.get(p).into_iter().flatten() {
                jobs.push((set.to_string(), dir, v));
            }
        }
    }
    let total = jobs.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<(Option<ViewReport>, Vec<Skip>)>>> =
        Mutex::new(vec![None; total]);
    let params = blob::BlobParams::paper(opts.patch_size);
    let worker = || loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= total {
            break;
        }
        let (set, dir, view) = &jobs[i];
        let r = sample_view(view, set, dir, opts, &params);
        if let Ok(mut g) = results.lock() {
            g[i] = Some(r);
        }
        progress(done.fetch_add(1, Ordering::SeqCst) + 1, total);
    };
    let n_threads = opts.jobs.clamp(1, total.max(1));
    std::thread::scope(|s| {
        for _ in 1..n_threads {
            s.spawn(worker);
        }
        worker();
    });
    let mut views = Vec::new();
    let results = results
        .into_inner()
        .map_err(|_| Error::Other("a sampling thread panicked".into()))?;
    for r in results {
        let (v, s) = r.ok_or_else(|| Error::Other("a view was not sampled".into()))?;
        views.extend(v);
        skipped.extend(s);
    }
    Ok(Report {
        train,
        val,
        views,
        skipped,
    })
}

fn data_skip(e: &DataError, missing: SkipReason, path: &Path) -> Skip {
    let reason = match e {
        DataError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => missing,
        _ => SkipReason::UnreadableFile,
    };
    let message = match e {
        DataError::Io { source, .. } => source.to_string(),
        DataError::Decode { msg, .. } => format!("cannot decode image: {msg}"),
        DataError::Unsupported { msg, .. } => format!("unsupported image: {msg}"),
        other => other.to_string(),
    };
    Skip {
        reason,
        item: path.display().to_string(),
        message,
    }
}

/// `read_resize_img`: the target width from the target height keeps the aspect
/// (`int(float(target_height) / h * w)`), OpenCV bicubic on the native type.
fn read_resize(
    img: &GrayImage,
    opts: &Options,
    path: &Path,
) -> std::result::Result<GrayImage, String> {
    let th = opts.target_height;
    let tw = opts
        .target_width
        .unwrap_or((th as f64 / img.height as f64 * img.width as f64) as usize);
    if th == 0 || tw == 0 {
        return Err(format!(
            "{}: a {}x{} image resized to {th}x{tw}",
            path.display(),
            img.height,
            img.width
        ));
    }
    resize_cubic(img, th, tw).map_err(|e| format!("{}: {e}", path.display()))
}

/// `DMImagePreprocessor.segment_breast`: returns the masked crop and its box.
fn segment_breast(px: &[f32], h: usize, w: usize) -> Option<(Vec<f32>, [usize; 4])> {
    let max = px.iter().copied().fold(f32::MIN, f32::max);
    if max.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let img8: Vec<u8> = px.iter().map(|&v| (v / max * 255.0f32) as u8).collect();
    let max8 = img8.iter().copied().max().unwrap_or(0);
    let low_th = (f64::from(max8) * 0.05) as i32;
    let bin: Vec<u8> = img8
        .iter()
        .map(|&v| u8::from(i32::from(v) > low_th))
        .collect();
    let all = find_all(&bin, h, w, Approx::Simple);
    let order = tree_order(&all);
    let idx = argmax_area(&all, &order)?;
    let fill = fill_outer(&all, idx, h, w);
    let (x, y, bw, bh) = bounding_rect(&all[idx].points);
    let (x, y, bw, bh) = (x as usize, y as usize, bw as usize, bh as usize);
    let mut out = Vec::with_capacity(bw * bh);
    for r in y..y + bh {
        for c in x..x + bw {
            out.push(if fill[r * w + c] { px[r * w + c] } else { 0.0 });
        }
    }
    Some((out, [x, y, bw, bh]))
}

/// `np.argmax([cv2.contourArea(c) for c in contours])` in OpenCV's order.
fn argmax_area(all: &[contours::Contour], order: &[usize]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for &i in order {
        let a = contour_area(&all[i].points);
        if best.is_none_or(|(_, b)| a > b) {
            best = Some((i, a));
        }
    }
    best.map(|(i, _)| i)
}

/// A 2-D image in f32 (`h x w`).
struct Plane {
    h: usize,
    w: usize,
    px: Vec<f32>,
}

impl Plane {
    /// `add_img_margins(img, m)`.
    fn with_margins(px: &[f32], h: usize, w: usize, m: usize) -> Plane {
        let (hh, ww) = (h + 2 * m, w + 2 * m);
        let mut out = vec![0.0f32; hh * ww];
        for r in 0..h {
            out[(r + m) * ww + m..(r + m) * ww + m + w].copy_from_slice(&px[r * w..(r + 1) * w]);
        }
        Plane {
            h: hh,
            w: ww,
            px: out,
        }
    }
}

/// The overlap rule of `overlap_patch_roi`, with a summed-area table of `mask > 0`.
struct Overlap {
    h: i64,
    w: i64,
    sat: Vec<u64>,
    roi_area: u64,
    half: i64,
}

impl Overlap {
    fn new(mask: &Plane, half: i64) -> Overlap {
        let (h, w) = (mask.h, mask.w);
        let mut sat = vec![0u64; (h + 1) * (w + 1)];
        for r in 0..h {
            let mut row = 0u64;
            for c in 0..w {
                row += u64::from(mask.px[r * w + c] > 0.0);
                sat[(r + 1) * (w + 1) + c + 1] = sat[r * (w + 1) + c + 1] + row;
            }
        }
        let roi_area = sat[h * (w + 1) + w];
        Overlap {
            h: h as i64,
            w: w as i64,
            sat,
            roi_area,
            half,
        }
    }

    fn test(&self, x: i64, y: i64, cutoff: f64) -> bool {
        let x1 = (x - self.half).clamp(0, self.w) as usize;
        let y1 = (y - self.half).clamp(0, self.h) as usize;
        let x2 = (x + self.half).clamp(0, self.w) as usize;
        let y2 = (y + self.half).clamp(0, self.h) as usize;
        let (x2, y2) = (x2.max(x1), y2.max(y1));
        let w1 = self.w as usize + 1;
        let inter = self.sat[y2 * w1 + x2] + self.sat[y1 * w1 + x1]
            - self.sat[y1 * w1 + x2]
            - self.sat[y2 * w1 + x1];
        let patch_area = ((y2 - y1) * (x2 - x1)) as f64;
        // float32 count / int64 count: float64 division in numpy.
        let inter = inter as f32 as f64;
        inter / self.roi_area as f64 > cutoff || inter / patch_area > cutoff
    }
}

/// The 16-bit values the script writes for the patch centred at (x, y):
/// `toimage(patch.astype('int32'), high=max, low=min, mode='I')` saved as PNG.
fn patch_values(img: &Plane, x: i64, y: i64, half: i64) -> Option<Vec<u16>> {
    let (x0, y0) = (x - half, y - half);
    let side = 2 * half;
    if x0 < 0 || y0 < 0 || x0 + side > img.w as i64 || y0 + side > img.h as i64 {
        return None;
    }
    let (x0, y0, side) = (x0 as usize, y0 as usize, side as usize);
    let mut v = Vec::with_capacity(side * side);
    for r in y0..y0 + side {
        for c in x0..x0 + side {
            v.push(img.px[r * img.w + c] as i32);
        }
    }
    let lo = v.iter().copied().min().unwrap_or(0);
    let hi = v.iter().copied().max().unwrap_or(0);
    let out = v
        .iter()
        .map(|&p| {
            if hi == lo {
                // 0 * 0 / 0 = nan, cast to uint32 then clipped: 0.
                return 0;
            }
            let r = f64::from(hi) - f64::from(lo);
            let d = (f64::from(p) * 1.0 - f64::from(lo)) * r / r + f64::from(lo);
            let t = d.trunc();
            if t < 0.0 || t >= 2147483648.0 {
                0
            } else {
                t.min(65535.0) as u16
            }
        })
        .collect();
    Some(out)
}

fn write_patch(path: &Path, side: usize, values: Vec<u16>) -> Result<()> {
    let buf = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(
        side as u32,
        side as u32,
        values,
    )
    .ok_or_else(|| Error::Other(format!("{}: patch buffer size", path.display())))?;
    crate::files::atomic_write(path, |tmp| {
        buf.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| Error::Io {
                file: path.to_path_buf(),
                message: e.to_string(),
            })
    })
}

/// The mask as `cv2.imread(path, IMREAD_GRAYSCALE)` gives it: 8-bit (16-bit files keep
/// their high byte, as libpng's strip_16 does).
fn as_grayscale_8(img: GrayImage) -> GrayImage {
    match img.bit_depth {
        16 => {
            let px = img
                .pixels
                .iter()
                .map(|&v| f32::from((v as u16) >> 8))
                .collect();
            GrayImage {
                bit_depth: 8,
                pixels: px,
                ..img
            }
        }
        _ => img,
    }
}

/// Samples one view: every abnormality, the hard negatives and background with the first.
fn sample_view(
    view: &View,
    set: &str,
    out_dir: &Path,
    opts: &Options,
    params: &blob::BlobParams,
) -> (Option<ViewReport>, Vec<Skip>) {
    let mut skips = Vec::new();
    let skip = |reason, item: String, message: String| Skip {
        reason,
        item,
        message,
    };
    let raw = match read_image(&view.image) {
        Ok(i) => i,
        Err(e) => {
            return (
                None,
                vec![data_skip(&e, SkipReason::MissingImage, &view.image)],
            )
        }
    };
    let (oh, ow) = (raw.height, raw.width);
    let img = match read_resize(&raw, opts, &view.image) {
        Ok(i) => i,
        Err(m) => {
            return (
                None,
                vec![skip(
                    SkipReason::UnreadableFile,
                    view.image.display().to_string(),
                    m,
                )],
            )
        }
    };
    let (rh, rw) = (img.height, img.width);
    let (px, h, w, bbox) = if opts.segment_breast {
        match segment_breast(&img.pixels, rh, rw) {
            Some((px, b)) => (px, b[3], b[2], Some(b)),
            None => {
                return (
                    None,
                    vec![skip(
                        SkipReason::BlankImage,
                        view.image.display().to_string(),
                        "no breast region: the image is blank after resizing".into(),
                    )],
                )
            }
        }
    } else {
        (img.pixels.clone(), rh, rw, None)
    };
    if opts.patch_size > h || opts.patch_size > w {
        return (
            None,
            vec![skip(
                SkipReason::PatchLargerThanImage,
                view.id.clone(),
                format!(
                    "a {0}x{0} patch does not fit the {h}x{w} image{1}",
                    opts.patch_size,
                    if bbox.is_some() {
                        " (after breast segmentation)"
                    } else {
                        ""
                    }
                ),
            )],
        );
    }
    let half = opts.patch_size / 2;
    let big = Plane::with_margins(&px, h, w, half);
    let half_i = half as i64;
    let mut report = ViewReport {
        set: set.to_string(),
        id: view.id.clone(),
        original: [oh, ow],
        resized: [rh, rw],
        breast_bbox: bbox,
        margin: half,
        keypoints: Vec::new(),
        permutation: Vec::new(),
        roi_bbox: BTreeMap::new(),
        patches: Vec::new(),
    };
    let mut bkg_sampled = false;
    let mut keypoints: Option<Vec<blob::KeyPoint>> = None;
    for a in &view.abnormalities {
        // The mask, resized and cropped like the image.
        let (mask_img, mask_name) = match &a.roi {
            Roi::Mask(p) => match read_image(p) {
                Ok(m) => (as_grayscale_8(m), p.display().to_string()),
                Err(e) => {
                    skips.push(data_skip(&e, SkipReason::MissingMask, p));
                    continue;
                }
            },
            Roi::Circle { x, y, r } => (
                mias::circle_mask(oh, ow, *x, *y, *r),
                format!("{} abnormality {}", view.id, a.abn),
            ),
        };
        let mask = match read_resize(&mask_img, opts, Path::new(&mask_name)) {
            Ok(m) => m,
            Err(m) => {
                skips.push(skip(SkipReason::UnreadableFile, mask_name, m));
                continue;
            }
        };
        let (mh, mw, mpx) = match bbox {
            Some([bx, by, bw, bh]) => {
                // numpy slicing: clipped to the mask.
                let (x1, y1) = (bx.min(mask.width), by.min(mask.height));
                let (x2, y2) = ((bx + bw).min(mask.width), (by + bh).min(mask.height));
                let mut v = Vec::with_capacity((x2 - x1) * (y2 - y1));
                for r in y1..y2 {
                    v.extend_from_slice(&mask.pixels[r * mask.width + x1..r * mask.width + x2]);
                }
                (y2 - y1, x2 - x1, v)
            }
            None => (mask.height, mask.width, mask.pixels.clone()),
        };
        let mplane = Plane::with_margins(&mpx, mh, mw, half);
        let bin: Vec<u8> = mplane.px.iter().map(|&v| u8::from(v as u8 != 0)).collect();
        let all = find_all(&bin, mplane.h, mplane.w, Approx::Simple);
        let order = tree_order(&all);
        let Some(idx) = argmax_area(&all, &order) else {
            skips.push(skip(
                SkipReason::MaskWithoutRoi,
                mask_name,
                "the mask has no non-zero pixel after resizing and cropping".into(),
            ));
            continue;
        };
        let (rx, ry, rwid, rhei) = bounding_rect(&all[idx].points);
        let (rx, ry, rwid, rhei) = (
            i64::from(rx),
            i64::from(ry),
            i64::from(rwid),
            i64::from(rhei),
        );
        let (m00, m10, m01) = moments(&all[idx].points);
        let (cx, cy) = if m00 != 0.0 {
            ((m10 / m00) as i64, (m01 / m00) as i64)
        } else {
            (rx + rwid / 2, ry + rhei / 2)
        };
        report.roi_bbox.insert(a.abn.clone(), [rx, ry, rwid, rhei]);
        let ov = Overlap::new(&mplane, half_i);
        let basename = format!("{}_{}", view.id, a.abn);
        let mut write = |kind: &'static str, sub: &str, n: i64, x: i64, y: i64| -> Result<()> {
            let vals = patch_values(&big, x, y, half_i).ok_or_else(|| {
                Error::Other(format!("patch at ({x}, {y}) reaches outside the image"))
            })?;
            let file = format!("{sub}/{basename}_{n:04}.png");
            write_patch(&out_dir.join(&file), 2 * half, vals)?;
            report.patches.push(Patch {
                kind,
                abn: a.abn.clone(),
                x,
                y,
                file,
            });
            Ok(())
        };
        let result: Result<()> = (|| {
            // Hard negatives from the blob detector (first abnormality of the view).
            let nb_hns = if bkg_sampled { 0 } else { opts.nb_hns };
            let mut hns = 0i64;
            if nb_hns > 0 {
                let kps = keypoints.get_or_insert_with(|| {
                    let max = f64::from(big.px.iter().copied().fold(0.0f32, f32::max));
                    let gray: Vec<u8> = big
                        .px
                        .iter()
                        .map(|&v| (f64::from(v) / max * 255.0) as u8)
                        .collect();
                    blob::detect(&gray, big.h, big.w, params)
                });
                let perm = RandomState::new(opts.seed).permutation(kps.len());
                report.keypoints = kps.iter().map(|k| [k.x, k.y, k.size]).collect();
                report.permutation = perm.clone();
                for &k in &perm {
                    if hns >= nb_hns {
                        break;
                    }
                    let (x, y) = (kps[k].x as i64, kps[k].y as i64);
                    if !ov.test(x, y, opts.neg_cutoff) {
                        write("hns", &opts.bkg_dir, hns, x, y)?;
                        hns += 1;
                    }
                }
            }
            let malignant = a.pathology.starts_with("MALIGNANT");
            let roi_dir = match (a.itype.as_str(), malignant) {
                ("calc", true) => &opts.calc_pos_dir,
                ("calc", false) => &opts.calc_neg_dir,
                (_, true) => &opts.mass_pos_dir,
                (_, false) => &opts.mass_neg_dir,
            };
            let nb_bkg = if bkg_sampled { 0 } else { opts.nb_bkg - hns };
            let mut rng = RandomState::new(opts.seed);
            let no_pos = |what: &str| Error::Other(format!("randint: {what}: low >= high"));
            let (mut sampled, mut tries, mut cutoff) = (0i64, 0u32, opts.pos_cutoff);
            while sampled < opts.nb_abn {
                let (x, y) = if opts.nb_abn > 1 {
                    let x = rng.randint(rx, rx + rwid).ok_or_else(|| no_pos("x"))?;
                    let y = rng.randint(ry, ry + rhei).ok_or_else(|| no_pos("y"))?;
                    tries += 1;
                    if tries >= 1000 {
                        cutoff -= 0.05;
                        tries = 0;
                        if cutoff <= 0.0 {
                            return Err(Error::Other(
                                "overlap cutoff becomes non-positive, check roi mask input".into(),
                            ));
                        }
                    }
                    (x, y)
                } else {
                    (cx, cy)
                };
                if opts.nb_abn == 1 || ov.test(x, y, cutoff) {
                    write("abn", roi_dir, sampled, x, y)?;
                    sampled += 1;
                    tries = 0;
                }
            }
            let mut n = hns;
            let mut misses = 0u64;
            while n < hns + nb_bkg {
                let x = rng
                    .randint(half_i, big.w as i64 - half_i)
                    .ok_or_else(|| no_pos("background x"))?;
                let y = rng
                    .randint(half_i, big.h as i64 - half_i)
                    .ok_or_else(|| no_pos("background y"))?;
                if !ov.test(x, y, opts.neg_cutoff) {
                    write("bkg", &opts.bkg_dir, n, x, y)?;
                    n += 1;
                    misses = 0;
                } else {
                    misses += 1;
                    if misses > 1_000_000 {
                        return Err(Error::Other(
                            "no background position under the negative cutoff in a million tries"
                                .into(),
                        ));
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let reason = if matches!(e, Error::Io { .. }) {
                SkipReason::WriteFailed
            } else {
                SkipReason::NoPosition
            };
            skips.push(skip(
                reason,
                format!("{} abnormality {}", view.id, a.abn),
                e.to_string(),
            ));
            continue;
        }
        bkg_sampled = true;
    }
    (Some(report), skips)
}
