//! `allconv sample-patches`: the paper's patch sampling (`sample_patches_combined.py`),
//! over `allconv::sample`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use allconv::sample::{self, Options};

pub const EXAMPLES: &str = "Examples:
  # The paper's CBIS-DDSM layout (the script's arguments, names and defaults)
  allconv sample-patches roi_mask_path.csv masks/ pat_train.txt full/ train/ val/

  # The bundled synthetic set, as its fixture was made
  allconv sample-patches fixtures/sample_patches/input/roi_mask_path.csv \\
      fixtures/sample_patches/input/masks fixtures/sample_patches/input/pat_train.txt \\
      fixtures/sample_patches/input/full out/train out/val --target-height 256 \\
      --patch-size 32 --nb-bkg 6 --nb-abn 4 --nb-hns 3 --val-size 0.25

  # mini-MIAS: circles of Info.txt as masks (FULL_IMG_DIR TRAIN_OUT VAL_OUT)
  allconv sample-patches --annotations mias:mini-mias/Info.txt mini-mias out/train out/val \\
      --target-height 512 --patch-size 64 --val-size 0.3";

#[derive(clap::Args)]
pub struct SamplePatchesArgs {
    /// ROI_MASK_PATH.csv ROI_MASK_DIR PAT_TRAIN.txt FULL_IMG_DIR TRAIN_OUT VAL_OUT; with
    /// --annotations: FULL_IMG_DIR TRAIN_OUT VAL_OUT.
    #[arg(num_args = 3..=6, required = true, value_name = "PATHS")]
    pub paths: Vec<PathBuf>,
    /// Another annotation source: `mias:INFO.txt` (mini-MIAS circles as masks).
    #[arg(long)]
    pub annotations: Option<String>,
    /// With --annotations: the patients (image refnums) to use, one a line (default: every
    /// image with a located abnormality).
    #[arg(long)]
    pub patients: Option<PathBuf>,
    #[arg(long, default_value_t = 4096)]
    pub target_height: usize,
    #[arg(long, conflicts_with = "no_target_width")]
    pub target_width: Option<usize>,
    #[arg(long)]
    pub no_target_width: bool,
    #[arg(long, overrides_with = "no_segment_breast")]
    pub segment_breast: bool,
    #[arg(long, overrides_with = "segment_breast")]
    pub no_segment_breast: bool,
    #[arg(long, default_value_t = 256)]
    pub patch_size: usize,
    #[arg(long, default_value_t = 30)]
    pub nb_bkg: i64,
    #[arg(long, default_value_t = 30)]
    pub nb_abn: i64,
    #[arg(long, default_value_t = 15)]
    pub nb_hns: i64,
    #[arg(long, default_value_t = 0.75)]
    pub pos_cutoff: f64,
    #[arg(long, default_value_t = 0.35)]
    pub neg_cutoff: f64,
    #[arg(long, default_value_t = 0.1)]
    pub val_size: f64,
    #[arg(long, default_value = "background")]
    pub bkg_dir: String,
    #[arg(long, default_value = "calc_mal")]
    pub calc_pos_dir: String,
    #[arg(long, default_value = "calc_ben")]
    pub calc_neg_dir: String,
    #[arg(long, default_value = "mass_mal")]
    pub mass_pos_dir: String,
    #[arg(long, default_value = "mass_ben")]
    pub mass_neg_dir: String,
    /// Seed of `np.random.RandomState` for every view and of the split's random_state.
    #[arg(long, default_value_t = 12345)]
    pub seed: u32,
    /// Views sampled in parallel (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Exit 0 even when items were skipped.
    #[arg(long)]
    pub keep_going: bool,
    /// The script's per-patch lines ("ID:..., sampled ... at (x,y)") are not printed; this
    /// is accepted for compatibility.
    #[arg(long, hide = true)]
    pub verbose: bool,
    #[arg(long, hide = true)]
    pub no_verbose: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn main(a: SamplePatchesArgs) -> ExitCode {
    let opts = Options {
        target_height: a.target_height,
        target_width: if a.no_target_width {
            None
        } else {
            a.target_width
        },
        segment_breast: !a.no_segment_breast,
        patch_size: a.patch_size,
        nb_bkg: a.nb_bkg,
        nb_abn: a.nb_abn,
        nb_hns: a.nb_hns,
        pos_cutoff: a.pos_cutoff,
        neg_cutoff: a.neg_cutoff,
        val_size: a.val_size,
        bkg_dir: a.bkg_dir.clone(),
        calc_pos_dir: a.calc_pos_dir.clone(),
        calc_neg_dir: a.calc_neg_dir.clone(),
        mass_pos_dir: a.mass_pos_dir.clone(),
        mass_neg_dir: a.mass_neg_dir.clone(),
        seed: a.seed,
        jobs: if a.jobs == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            a.jobs
        },
    };
    let loaded = match &a.annotations {
        None => {
            let [csv, mask_dir, pat_file, full_dir, train, val] = &a.paths[..] else {
                return crate::fail(
                    a.json,
                    "expected ROI_MASK_PATH.csv ROI_MASK_DIR PAT_TRAIN.txt FULL_IMG_DIR TRAIN_OUT VAL_OUT",
                );
            };
            sample::read_cbis_table(csv, mask_dir, full_dir).and_then(|t| {
                sample::read_patient_list(pat_file)
                    .map(|p| (t, p, train.clone(), val.clone(), Vec::new()))
            })
        }
        Some(spec) => {
            let Some(info) = spec.strip_prefix("mias:") else {
                return crate::fail(
                    a.json,
                    format!("--annotations {spec}: expected mias:PATH/Info.txt"),
                );
            };
            let [full_dir, train, val] = &a.paths[..] else {
                return crate::fail(
                    a.json,
                    "with --annotations: expected FULL_IMG_DIR TRAIN_OUT VAL_OUT",
                );
            };
            sample::mias::read_info(std::path::Path::new(info), full_dir).and_then(|(t, u)| {
                let pats = match &a.patients {
                    Some(p) => sample::read_patient_list(p)?,
                    None => t.patients.keys().cloned().collect(),
                };
                let notes = u
                    .iter()
                    .map(|u| {
                        format!(
                            "{info} line {}: {} has no centre; not sampled",
                            u.line, u.refnum
                        )
                    })
                    .collect();
                Ok((t, pats, train.clone(), val.clone(), notes))
            })
        }
    };
    let (table, patients, train, val, notes) = match loaded {
        Ok(v) => v,
        Err(e) => return crate::fail(a.json, e),
    };
    let show = !a.json && std::io::stderr().is_terminal();
    let start = std::time::Instant::now();
    let last = Mutex::new(std::time::Instant::now());
    let progress = |done: usize, total: usize| {
        if !show {
            return;
        }
        if let Ok(mut l) = last.lock() {
            if done < total && l.elapsed().as_millis() < 100 {
                return;
            }
            *l = std::time::Instant::now();
            let el = start.elapsed().as_secs_f64();
            super::progress::draw(&super::progress::line(
                done,
                total,
                el,
                &format!(" views, {:.1} img/s", done as f64 / el.max(1e-9)),
            ));
        }
    };
    let report = match sample::run(&table, &patients, &train, &val, &opts, &progress) {
        Ok(r) => r,
        Err(e) => {
            if show {
                super::progress::clear();
            }
            return crate::fail(a.json, e);
        }
    };
    if show {
        super::progress::clear();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let counts = report.counts();
    let skip_counts = report.skip_counts();
    let failed = !report.skipped.is_empty() && !a.keep_going;
    if a.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["counts"] = serde_json::json!(counts);
        v["skip_counts"] = serde_json::json!(skip_counts);
        v["notes"] = serde_json::json!(notes);
        v["elapsed_s"] = serde_json::json!(elapsed);
        v["images_per_s"] = serde_json::json!(report.views.len() as f64 / elapsed.max(1e-9));
        v["passed"] = serde_json::json!(!failed);
        outln!("{v}");
    } else {
        outln!(
            "train: {} patients, val: {} patients; {} views sampled in {elapsed:.2} s",
            report.train.len(),
            report.val.len(),
            report.views.len()
        );
        for (class, n) in &counts {
            outln!("  {class}: {n} patches");
        }
        for n in &notes {
            eprintln!("note: {n}");
        }
        for s in &report.skipped {
            eprintln!("skipped ({}): {}: {}", s.reason.as_str(), s.item, s.message);
        }
        if !skip_counts.is_empty() {
            let parts: Vec<String> = skip_counts
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            eprintln!("skipped: {}", parts.join(", "));
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
