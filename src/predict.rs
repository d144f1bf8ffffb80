//! `allconv predict`: class probabilities for mammograms, and heatmaps from patch
//! classifiers (the paper's patch-to-whole-image idea).
//!
//! Pipeline per image, as the paper's `read_resize_img` + DMImageDataGenerator:
//! read (PNG/PGM/JPEG/TIFF/DICOM) -> OpenCV-exact bicubic resize to the model's input
//! size (static ONNX/Keras input, or `size=` of `--preprocess`; else the image's own
//! size) -> `target_scale`/`rescale`/`mean` -> grey to 3 channels when the model takes
//! 3 -> run. `--tta` averages the image, its horizontal, vertical and double flip
//! (host side, unless the ONNX model already does it in-graph).
//!
//! Preprocessing parameters: `--preprocess` wins; else the ONNX metadata
//! `allconv.preprocess` (preprocessing compiled into the graph at convert time); else
//! none. Which one was used is printed with the results.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `allconv predict`.
#[derive(clap::Args, Clone, Debug)]
pub struct PredictArgs {
    /// Model: an .onnx or .nnef.tgz file, or a Keras .h5 (converted in memory).
    pub model: PathBuf,
    /// Images: PNG, PGM/PPM, JPEG, TIFF or DICOM.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
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
    /// CSV output: `file,p0,p1,...,error`.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// JSON output: an array with one object per image.
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
    imp::main(args)
}

#[cfg(feature = "runtime")]
pub use imp::score_images;

#[cfg(feature = "runtime")]
mod imp {
    use super::PredictArgs;
    use allconv::data::{
        flip_h, flip_v, read_image, write_overlay, GrayImage, OverlayOptions, Preprocess,
    };
    #[cfg(feature = "keras")]
    use allconv::ir::{split_channels, DataFormat, Graph};
    #[cfg(feature = "keras")]
    use allconv::keras::{read_model, ReadOptions};
    use allconv::meta;
    #[cfg(feature = "keras")]
    use allconv::onnx::{self, ExportOptions};
    #[cfg(feature = "keras")]
    use allconv::passes::heatmap::to_heatmap;
    use allconv::passes::heatmap::HeatmapReport;
    use allconv::runtime::{ModelFile, TractModel};
    use serde_json::{json, Value};
    use std::collections::{HashMap, HashSet};
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::{Arc, Condvar, Mutex};

    type Res<T> = std::result::Result<T, String>;

    /// Preprocessing compiled into the ONNX graph (metadata `allconv.preprocess`).
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct InGraph {
        rescale: f32,
        mean: f32,
        gray: bool,
    }

    enum Engine {
        /// An ONNX or NNEF file.
        File(Box<ModelFile>),
        /// A Keras graph, exported to ONNX in memory at each size it is run at.
        #[cfg(feature = "keras")]
        Keras(Box<Graph>),
        /// A Keras graph on libtorch (CPU), any input size; one job (libtorch tensors are
        /// not `Sync`, and one run already spreads over the threads).
        #[cfg(feature = "torch")]
        Torch(Mutex<Box<allconv::torch::TorchModel>>),
        /// ONNX Runtime: the file's bytes (or a Keras graph exported at each size), one
        /// session per input size; one run at a time, spread over the threads.
        #[cfg(feature = "ort")]
        Ort {
            source: OrtSource,
            sessions: Mutex<HashMap<(usize, usize), Arc<allconv::runtime::OrtModel>>>,
        },
    }

    #[cfg(feature = "ort")]
    enum OrtSource {
        File(Vec<u8>),
        #[cfg(feature = "keras")]
        Keras(Box<Graph>),
    }

    struct Model {
        engine: Engine,
        nchw: bool,
        /// Channels the graph input takes (1 when grey duplication runs in-graph).
        channels: usize,
        /// Static input size (H, W) the model must be fed at.
        fixed_hw: Option<(usize, usize)>,
        in_graph_pre: Option<InGraph>,
        in_graph_tta: bool,
        heatmap: Option<HeatmapReport>,
        /// The engine takes the grey image itself where the model declares 3 channels of
        /// it ([`allconv::passes::fold_grey_input`]): the host feeds one channel.
        grey_folded: bool,
        threads: usize,
        /// One optimised plan per input size, shared by the jobs (each runs it on its own
        /// executor, [`TractModel::with_threads`]).
        plans: Mutex<HashMap<(usize, usize), Arc<TractModel>>>,
    }

    impl Model {
        /// libtorch and ONNX Runtime spread one run over every thread: one job.
        fn is_torch(&self) -> bool {
            #[cfg(feature = "torch")]
            if matches!(self.engine, Engine::Torch(_)) {
                return true;
            }
            #[cfg(feature = "ort")]
            if matches!(self.engine, Engine::Ort { .. }) {
                return true;
            }
            false
        }

        /// The engine's name, as `--json` and stderr report it.
        fn engine_name(&self) -> &'static str {
            match &self.engine {
                #[cfg(feature = "torch")]
                Engine::Torch(_) => "torch",
                #[cfg(feature = "ort")]
                Engine::Ort { .. } => "ort",
                _ => "tract",
            }
        }

        /// The ONNX Runtime session at (h, w), made by the first run that needs it.
        #[cfg(feature = "ort")]
        fn ort_session(&self, h: usize, w: usize) -> Res<Arc<allconv::runtime::OrtModel>> {
            let Engine::Ort { source, sessions } = &self.engine else {
                return Err("internal: not an ONNX Runtime model".into());
            };
            let mut sessions = sessions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = sessions.get(&(h, w)) {
                return Ok(Arc::clone(s));
            }
            let shape = if self.nchw {
                vec![1, self.channels, h, w]
            } else {
                vec![1, h, w, self.channels]
            };
            let bytes: std::borrow::Cow<'_, [u8]> = match source {
                OrtSource::File(b) => std::borrow::Cow::Borrowed(b),
                #[cfg(feature = "keras")]
                OrtSource::Keras(g) => std::borrow::Cow::Owned(onnx_at(g, h, w)?),
            };
            let m = allconv::runtime::OrtModel::load(&bytes, &shape, self.threads)
                .map_err(|e| format!("loading the model at {h}x{w}: {e}"))?;
            let m = Arc::new(m);
            sessions.insert((h, w), Arc::clone(&m));
            Ok(m)
        }

        /// The plan at (h, w), optimised by the first job that needs it.
        fn plan(&self, h: usize, w: usize) -> Res<Arc<TractModel>> {
            let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
            if !plans.contains_key(&(h, w)) {
                let shape = if self.nchw {
                    vec![1, self.channels, h, w]
                } else {
                    vec![1, h, w, self.channels]
                };
                let m = match &self.engine {
                    Engine::File(f) => f.load(&[shape], 1),
                    #[cfg(feature = "torch")]
                    Engine::Torch(_) => return Err("internal: no tract plan for torch".into()),
                    #[cfg(feature = "ort")]
                    Engine::Ort { .. } => return Err("internal: no tract plan for ort".into()),
                    #[cfg(feature = "keras")]
                    Engine::Keras(g) => TractModel::load(&onnx_at(g, h, w)?, &shape, 1),
                }
                .map_err(|e| format!("loading the model at {h}x{w}: {e}"))?;
                plans.insert((h, w), Arc::new(m));
            }
            plans
                .get(&(h, w))
                .cloned()
                .ok_or_else(|| "internal: plan cache".to_string())
        }
    }

    /// A Keras graph as ONNX bytes at input size (h, w), for tract or ONNX Runtime.
    #[cfg(feature = "keras")]
    fn onnx_at(g: &Graph, h: usize, w: usize) -> Res<Vec<u8>> {
        let opts = ExportOptions {
            input_size: Some(vec![h, w]),
            ..Default::default()
        };
        onnx::export(g, &opts)
            .and_then(|e| e.to_bytes())
            .map_err(|e| format!("converting the model at {h}x{w}: {e}"))
    }

    /// What one job owns: its executors (one per input size) and its share of the threads.
    struct Job {
        threads: usize,
        plans: HashMap<(usize, usize), TractModel>,
        /// Input sizes whose activations libtorch has checked against the limit.
        #[cfg(feature = "torch")]
        torch_checked: std::collections::HashSet<(usize, usize)>,
    }

    /// Activation memory the running jobs may hold between them (the `activation-bytes`
    /// limit): a job waits for its plan's estimate before it runs.
    struct MemoryBudget {
        free: Mutex<u64>,
        freed: Condvar,
    }

    impl MemoryBudget {
        fn run<T>(&self, bytes: u64, f: impl FnOnce() -> T) -> T {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            // A plan above the whole limit was refused when it was built.
            while *free < bytes {
                free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
            }
            *free -= bytes;
            drop(free);
            let out = f();
            *self.free.lock().unwrap_or_else(|e| e.into_inner()) += bytes;
            self.freed.notify_all();
            out
        }
    }

    fn load_model(args: &PredictArgs) -> Res<Model> {
        let path = &args.model;
        let is_h5 = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"));
        let threads = args
            .threads
            .unwrap_or_else(allconv::runtime::default_threads)
            .max(1);
        if !is_h5 {
            if args.backend == "torch" {
                return Err(format!(
                    "{}: --backend torch runs Keras .h5 models; ONNX and NNEF files run in tract",
                    path.display()
                ));
            }
            if args.heatmap.is_some() {
                return Err(
                    "--heatmap needs the Keras .h5 patch classifier: the heatmap pass rewrites the model's IR, not an ONNX or NNEF file"
                        .into(),
                );
            }
            let file = ModelFile::open(path).map_err(|e| e.to_string())?;
            let md = &file.metadata;
            let nchw = md.get(meta::INPUT_LAYOUT).map(String::as_str) == Some("NCHW");
            let in_graph_pre = match md.get(meta::PREPROCESS) {
                Some(s) => {
                    let v: Value = serde_json::from_str(s)
                        .map_err(|e| format!("metadata {}: {e}", meta::PREPROCESS))?;
                    let f = |k: &str| {
                        v[k].as_f64()
                            .map(|x| x as f32)
                            .ok_or_else(|| format!("metadata {}: no {k}", meta::PREPROCESS))
                    };
                    Some(InGraph {
                        rescale: f("rescale")?,
                        mean: f("mean")?,
                        gray: v["gray"].as_bool().unwrap_or(false),
                    })
                }
                None => None,
            };
            let in_graph_tta = md.contains_key(meta::TTA);
            if file.inputs.len() != 1 {
                return Err(format!(
                    "{}: predict needs a model with one input, this one has {}",
                    path.display(),
                    file.inputs.len()
                ));
            }
            let dims = file.inputs[0].clone();
            if dims.len() != 4 {
                return Err(format!(
                    "{}: predict needs an image input (N, H, W, C), the model's input has rank {}",
                    path.display(),
                    dims.len()
                ));
            }
            let (h, w, c) = if nchw {
                (dims[2], dims[3], dims[1])
            } else {
                (dims[1], dims[2], dims[3])
            };
            let channels = c.ok_or_else(|| {
                format!(
                    "{}: the model's input channels are not static",
                    path.display()
                )
            })?;
            let fixed_hw = match (h, w) {
                (Some(h), Some(w)) => Some((h, w)),
                _ => None,
            };
            Ok(Model {
                engine: file_engine(args, file)?,
                nchw,
                channels,
                fixed_hw,
                in_graph_pre,
                in_graph_tta,
                heatmap: None,
                grey_folded: false,
                threads,
                plans: Mutex::new(HashMap::new()),
            })
        } else {
            load_keras(args, threads)
        }
    }

    #[cfg(not(feature = "keras"))]
    fn load_keras(args: &PredictArgs, _threads: usize) -> Res<Model> {
        Err(format!(
            "{}: Keras .h5 models need the full build of allconv (this is the inference-only edge build); convert it to .onnx or .nnef.tgz first",
            args.model.display()
        ))
    }

    #[cfg(feature = "keras")]
    fn load_keras(args: &PredictArgs, threads: usize) -> Res<Model> {
        let path = &args.model;
        {
            let g = read_model(path, &ReadOptions::default()).map_err(|e| e.to_string())?;
            let (g, heatmap) = if args.heatmap.is_some() {
                let (g, r) = to_heatmap(&g).map_err(|e| format!("{}: {e}", path.display()))?;
                (g, Some(r))
            } else {
                (g, None)
            };
            if g.inputs.len() != 1 || g.outputs.len() != 1 {
                return Err(format!(
                    "{}: predict needs a model with one input and one output",
                    path.display()
                ));
            }
            let inp = &g.inputs[0];
            if inp.shape.len() != 3 {
                return Err(format!(
                    "{}: predict needs an image input (N, H, W, C), the model's input has rank {}",
                    path.display(),
                    inp.shape.len() + 1
                ));
            }
            let (sp, c) = split_channels(&inp.shape, inp.data_format).map_err(|e| e.to_string())?;
            let channels = c.known().ok_or_else(|| {
                format!("{}: the model's input channels are unknown", path.display())
            })?;
            // A heatmap runs at the whole image's size, whatever patch size was declared.
            let fixed_hw = match (
                heatmap.is_some(),
                sp.first().and_then(|d| d.known()),
                sp.get(1).and_then(|d| d.known()),
            ) {
                (false, Some(h), Some(w)) => Some((h, w)),
                _ => None,
            };
            let nchw = inp.data_format == DataFormat::ChannelsFirst;
            let (engine, grey_folded) = keras_engine(args, g, threads)?;
            Ok(Model {
                nchw,
                engine,
                channels,
                fixed_hw,
                in_graph_pre: None,
                in_graph_tta: false,
                heatmap,
                grey_folded,
                threads,
                plans: Mutex::new(HashMap::new()),
            })
        }
    }

    /// The engine for an ONNX or NNEF file: ONNX Runtime for `--backend ort`, or for `auto`
    /// on an ONNX file where the library loads; tract otherwise.
    fn file_engine(args: &PredictArgs, file: ModelFile) -> Res<Engine> {
        let onnx = file.format == allconv::runtime::Format::Onnx;
        let ort = match args.backend.as_str() {
            "ort" if !onnx => {
                return Err(format!(
                    "{}: --backend ort runs ONNX files; an NNEF file runs in tract",
                    file.path.display()
                ))
            }
            "ort" => {
                allconv::runtime::Engine::ort().map_err(|e| e.to_string())?;
                true
            }
            "auto" => onnx && ort_loads(),
            _ => false,
        };
        #[cfg(feature = "ort")]
        if ort {
            allconv::runtime::ort::library().map_err(|e| e.to_string())?;
            let bytes = allconv::files::read(&file.path).map_err(|e| e.to_string())?;
            return Ok(Engine::Ort {
                source: OrtSource::File(bytes),
                sessions: Mutex::new(HashMap::new()),
            });
        }
        let _ = ort;
        Ok(Engine::File(Box::new(file)))
    }

    /// Whether ONNX Runtime opens here (`--backend auto`).
    fn ort_loads() -> bool {
        #[cfg(feature = "ort")]
        return allconv::runtime::ort::available().is_ok();
        #[cfg(not(feature = "ort"))]
        false
    }

    /// tract (ONNX in memory) or libtorch for a Keras graph, as `--backend` says, and
    /// whether the engine takes the grey image as one channel (libtorch: predict feeds grey
    /// images only, so a 3-channel model always gets three equal channels).
    #[cfg(feature = "keras")]
    fn keras_engine(args: &PredictArgs, g: Graph, threads: usize) -> Res<(Engine, bool)> {
        if args.backend == "ort" {
            allconv::runtime::Engine::ort().map_err(|e| e.to_string())?;
            #[cfg(feature = "ort")]
            {
                allconv::runtime::ort::library().map_err(|e| e.to_string())?;
                let engine = Engine::Ort {
                    source: OrtSource::Keras(Box::new(g)),
                    sessions: Mutex::new(HashMap::new()),
                };
                return Ok((engine, false));
            }
        }
        #[cfg(feature = "torch")]
        if args.backend != "tract" {
            let mut g = g;
            let err = |e: allconv::Error| format!("{}: {e}", args.model.display());
            let grey_folded = allconv::passes::fold_grey_input(&mut g).map_err(err)?;
            tch::set_num_threads(threads.try_into().unwrap_or(i32::MAX));
            let t = allconv::torch::TorchModel::for_inference(g, tch::Device::Cpu).map_err(err)?;
            return Ok((Engine::Torch(Mutex::new(Box::new(t))), grey_folded));
        }
        #[cfg(not(feature = "torch"))]
        if args.backend == "torch" {
            return Err("--backend torch needs allconv built with the `torch` feature".into());
        }
        let _ = threads;
        Ok((Engine::Keras(Box::new(g)), false))
    }

    /// The host-side pipeline and how it was chosen.
    struct Plan {
        /// What runs on the host (resize, target_scale, rescale, mean, channels).
        host: Preprocess,
        /// The preprocessing in effect, host and in-graph together (judges value ranges).
        effective: Preprocess,
        /// After `host`, map y -> (y + mean_g) / rescale_g so that the in-graph
        /// preprocessing gives back y (a `--preprocess` overriding the metadata).
        compensate: Option<InGraph>,
        /// The effective parameters, as a spec.
        spec: String,
        source: String,
        tta: &'static str,
        /// tract, ort or torch.
        engine: &'static str,
    }

    fn plan_preprocess(args: &PredictArgs, m: &Model) -> Res<Plan> {
        let flag: Option<Preprocess> = match &args.preprocess {
            Some(s) => Some(
                s.parse()
                    .map_err(|e: allconv::data::DataError| e.to_string())?,
            ),
            None => None,
        };
        let mut eff = match (&flag, &m.in_graph_pre) {
            (Some(p), _) => p.clone(),
            (None, Some(g)) => Preprocess {
                rescale: g.rescale,
                mean: g.mean,
                channels: if g.gray { 3 } else { 1 },
                ..Default::default()
            },
            (None, None) => Preprocess::default(),
        };
        let source = match (&flag, &m.in_graph_pre) {
            (Some(_), Some(_)) => {
                "--preprocess (overrides the ONNX metadata's in-graph preprocessing)"
            }
            (Some(_), None) => "--preprocess",
            (None, Some(_)) => "ONNX metadata (allconv.preprocess, applied in-graph)",
            (None, None) => "none (no --preprocess, no ONNX metadata): raw pixel values",
        }
        .to_string();
        // Resize target: the model's static size, else size= of the spec, else the image's.
        if let Some((h, w)) = m.fixed_hw {
            if let Some(t) = eff.target {
                if t != (h, w) {
                    return Err(format!(
                        "--preprocess size={}x{} conflicts with the model's static input size {h}x{w}",
                        t.0, t.1
                    ));
                }
            }
            eff.target = Some((h, w));
        }
        let model_channels = match &m.in_graph_pre {
            Some(g) if g.gray => 3,
            _ => m.channels,
        };
        if model_channels != 1 && model_channels != 3 {
            return Err(format!(
                "the model takes {model_channels} input channels; predict feeds grey images to 1- or 3-channel models"
            ));
        }
        eff.channels = model_channels;
        let spec = eff.to_string();
        let mut host = eff.clone();
        if m.grey_folded {
            host.channels = 1;
        }
        let mut compensate = None;
        if let Some(g) = m.in_graph_pre {
            host.channels = m.channels;
            if flag.is_none() || (eff.rescale == g.rescale && eff.mean == g.mean) {
                host.rescale = 1.0;
                host.mean = 0.0;
            } else {
                if g.rescale == 0.0 {
                    return Err(
                        "the in-graph preprocessing has rescale=0 and cannot be overridden".into(),
                    );
                }
                compensate = Some(g);
            }
        }
        let tta = match (args.tta, m.in_graph_tta) {
            (_, true) => "in-graph (ONNX metadata allconv.tta; not repeated on the host)",
            (true, false) => "host (4 flips)",
            (false, false) => "off",
        };
        Ok(Plan {
            host,
            effective: eff,
            compensate,
            spec,
            source,
            tta,
            engine: m.engine_name(),
        })
    }

    struct HeatmapOut {
        png: PathBuf,
        npy: PathBuf,
        shape: [usize; 3],
    }

    struct Row {
        file: PathBuf,
        result: Res<(Vec<f32>, [usize; 2], Option<HeatmapOut>)>,
        /// The unflipped view's own output when host TTA ran (`result` holds the mean).
        single: Option<Vec<f32>>,
        /// The image's values do not fit the preprocessing (scored anyway).
        warning: Option<String>,
    }

    fn hwc_to_chw(x: &[f32], [h, w, c]: [usize; 3]) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for y in 0..h {
            for xx in 0..w {
                for k in 0..c {
                    out[(k * h + y) * w + xx] = x[(y * w + xx) * c + k];
                }
            }
        }
        out
    }

    /// Runs one view; returns the output (probabilities, or the (h, w, K) map) and its shape.
    fn run_view(
        m: &Model,
        job: &mut Job,
        budget: &MemoryBudget,
        x: &[f32],
        shape: [usize; 3],
    ) -> Res<(Vec<f32>, Vec<usize>)> {
        let [h, w, _] = shape;
        // The model's input layout: NHWC as prepared, or NCHW (a copy) for channels-first.
        let data = if m.nchw {
            std::borrow::Cow::Owned(hwc_to_chw(x, shape))
        } else {
            std::borrow::Cow::Borrowed(x)
        };
        #[cfg(feature = "torch")]
        if let Engine::Torch(t) = &m.engine {
            use allconv::torch::{from_host, to_host};
            let t = t.lock().unwrap_or_else(|e| e.into_inner());
            let c = shape[2];
            let dims = if m.nchw { [1, c, h, w] } else { [1, h, w, c] };
            if !job.torch_checked.contains(&(h, w)) {
                t.check_activations(&dims).map_err(|e| e.to_string())?;
                job.torch_checked.insert((h, w));
            }
            let input = from_host(&dims, &data, t.device()).map_err(|e| e.to_string())?;
            let outs = t
                .forward_outputs(&[input], false)
                .map_err(|e| e.to_string())?;
            let o = outs.first().ok_or("the model has no output")?;
            let o = to_host(o).map_err(|e| e.to_string())?;
            return Ok((o.data, o.shape));
        }
        #[cfg(feature = "ort")]
        if matches!(m.engine, Engine::Ort { .. }) {
            let session = m.ort_session(h, w)?;
            let mut outs = session.run(&data).map_err(|e| e.to_string())?;
            if outs.is_empty() {
                return Err("the model has no output".into());
            }
            let o = outs.swap_remove(0);
            return Ok((o.data, o.shape));
        }
        let key = (h, w);
        if !job.plans.contains_key(&key) {
            let shared = m.plan(h, w)?;
            job.plans.insert(key, shared.with_threads(job.threads));
        }
        let plan = &job.plans[&key];
        let mut outs = budget
            .run(plan.activation_bytes(), || plan.run(&data))
            .map_err(|e| e.to_string())?;
        if outs.is_empty() {
            return Err("the model has no output".into());
        }
        let o = outs.swap_remove(0);
        Ok((o.data, o.shape))
    }

    /// When the reader decodes and resizes the next images.
    #[derive(Debug, Clone, Copy)]
    enum ReadAhead {
        /// While the jobs run (tract: each job is one thread of its own, so a busy reader
        /// only slows the job it shares a core with).
        Overlapped,
        /// Only while no network runs, `batch` images at once on as many threads
        /// (libtorch: one run spreads over every core through OpenMP, and a reader taking
        /// a core stalls the whole run at each barrier: 20 images took 520 ms a run
        /// overlapped against 400 alone).
        BetweenRuns { batch: usize },
    }

    impl ReadAhead {
        fn batch(self) -> usize {
            match self {
                ReadAhead::Overlapped => 1,
                ReadAhead::BetweenRuns { batch } => batch,
            }
        }
    }

    type ReadMessage = (usize, (Res<Prepared>, Option<String>));

    /// The first images, decoded on a thread of their own while the model loads (which
    /// keeps one core: reading the `.h5` and building the weights). Preprocessing waits for
    /// the model (its input size), decoding does not. Full-width model on libtorch: the
    /// first run starts 27 ms after the load instead of 88 (two 4096x3328 PNGs).
    ///
    /// The thread decodes one image after another, and stops at the first one the reader
    /// has claimed: on a many-core machine, the images it has not reached when the model is
    /// loaded are decoded by the reader, in parallel, not queued behind it.
    struct EarlyDecode {
        /// Image `i`'s result arrives on `images[i]` once the thread has claimed it.
        images: Vec<Option<std::sync::mpsc::Receiver<Res<GrayImage>>>>,
        /// Per image: [`UNCLAIMED`], [`EARLY`] (the thread decodes it) or [`READER`].
        claims: std::sync::Arc<Vec<std::sync::atomic::AtomicU8>>,
    }

    const UNCLAIMED: u8 = 0;
    const EARLY: u8 = 1;
    const READER: u8 = 2;

    impl EarlyDecode {
        /// Decode at most as many images as the reader's first batch takes (one per thread).
        fn start(args: &PredictArgs) -> EarlyDecode {
            use std::sync::atomic::{AtomicU8, Ordering};
            let threads = args
                .threads
                .unwrap_or_else(allconv::runtime::default_threads)
                .max(1);
            let paths: Vec<PathBuf> = args.images.iter().take(threads).cloned().collect();
            let claims: std::sync::Arc<Vec<AtomicU8>> =
                std::sync::Arc::new(paths.iter().map(|_| AtomicU8::new(UNCLAIMED)).collect());
            let (senders, images): (Vec<_>, Vec<_>) = paths
                .iter()
                .map(|_| {
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    (tx, Some(rx))
                })
                .unzip();
            let theirs = std::sync::Arc::clone(&claims);
            // Detached: if the model fails to load, the process ends without waiting.
            std::thread::spawn(move || {
                for (i, (path, tx)) in paths.iter().zip(senders).enumerate() {
                    let claimed = theirs[i].compare_exchange(
                        UNCLAIMED,
                        EARLY,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    if claimed.is_err() {
                        return; // the reader has taken over from here
                    }
                    if tx
                        .send(read_image(path).map_err(|e| e.to_string()))
                        .is_err()
                    {
                        return;
                    }
                }
            });
            EarlyDecode { images, claims }
        }

        /// Image `i`, if the thread decodes it (waits for it); `None`: the reader decodes it.
        fn take(&mut self, i: usize) -> Option<Res<GrayImage>> {
            use std::sync::atomic::Ordering;
            let rx = self.images.get_mut(i)?.take()?;
            let mine = self.claims[i].compare_exchange(
                UNCLAIMED,
                READER,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if mine.is_ok() {
                return None;
            }
            Some(
                rx.recv()
                    .unwrap_or_else(|_| Err("internal: the early decoder stopped".into())),
            )
        }
    }

    /// The reader thread: every image prepared and sent in order, as `ahead` says.
    fn read_images(
        images: &[PathBuf],
        mut early: EarlyDecode,
        plan: &Plan,
        host_tta: bool,
        ahead: ReadAhead,
        tx: &std::sync::mpsc::SyncSender<ReadMessage>,
        scored: &std::sync::mpsc::Receiver<()>,
    ) {
        let batch = ahead.batch();
        for (b, chunk) in images.chunks(batch).enumerate() {
            let first = b * batch;
            let prepared: Vec<_> = if chunk.len() == 1 {
                vec![prepare(&chunk[0], early.take(first), plan, host_tta)]
            } else {
                std::thread::scope(|s| {
                    let handles: Vec<_> = chunk
                        .iter()
                        .enumerate()
                        .map(|(k, path)| {
                            let decoded = early.take(first + k);
                            s.spawn(move || prepare(path, decoded, plan, host_tta))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .zip(chunk)
                        .map(|(h, path)| {
                            h.join().unwrap_or_else(|_| {
                                (
                                    Err(format!("{}: the reader panicked", path.display())),
                                    None,
                                )
                            })
                        })
                        .collect()
                })
            };
            for (k, p) in prepared.into_iter().enumerate() {
                if tx.send((first + k, p)).is_err() {
                    return;
                }
            }
            if let ReadAhead::BetweenRuns { .. } = ahead {
                // Wait until the jobs have scored this batch: the cores are then free.
                for _ in 0..chunk.len() {
                    if scored.recv().is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// An image read, preprocessed and flipped, ready to score. Made on a reader thread
    /// while the previous image runs, so decoding and resizing overlap inference.
    struct Prepared {
        img: GrayImage,
        views: Vec<Vec<f32>>,
        shape: [usize; 3],
    }

    /// Read (unless `decoded` already holds it) and preprocess one image; the warning says
    /// its values do not fit `p`.
    fn prepare(
        path: &Path,
        decoded: Option<Res<GrayImage>>,
        p: &Plan,
        host_tta: bool,
    ) -> (Res<Prepared>, Option<String>) {
        let decoded = decoded.unwrap_or_else(|| read_image(path).map_err(|e| e.to_string()));
        let img: GrayImage = match decoded {
            Ok(i) => i,
            Err(e) => return (Err(e), None),
        };
        let warning = p.effective.range_warning(&img);
        let prepared = (|| {
            let (mut x, shape) = p.host.apply(&img).map_err(|e| e.to_string())?;
            if let Some(g) = p.compensate {
                for v in &mut x {
                    *v = (*v + g.mean) / g.rescale;
                }
            }
            let mut views = vec![x];
            if host_tta {
                let e = |e: allconv::data::DataError| e.to_string();
                let h = flip_h(&views[0], shape).map_err(e)?;
                views.push(flip_v(&views[0], shape).map_err(e)?);
                views.push(flip_v(&h, shape).map_err(e)?);
                views.insert(1, h);
            }
            Ok((views, shape))
        })();
        let prepared = prepared.map(|(views, shape)| Prepared { img, views, shape });
        (prepared, warning)
    }

    /// Run the model on a prepared image's views; the mean over views, the heatmap
    /// (written under `name`), and, where several views ran, the first (unflipped) view's
    /// own output.
    fn score(
        name: &str,
        prepared: Prepared,
        m: &Model,
        job: &mut Job,
        budget: &MemoryBudget,
        args: &PredictArgs,
    ) -> Res<(Vec<f32>, [usize; 2], Option<HeatmapOut>, Option<Vec<f32>>)> {
        let Prepared { img, views, shape } = prepared;
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
                let e = |e: allconv::data::DataError| e.to_string();
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
            return Ok((acc, hw, None, first));
        }
        // Heatmap: class probabilities of the image = mean of the map; write the files.
        let (mh, mw, k) = (out_shape[1], out_shape[2], out_shape[3]);
        let class = args.heatmap_class.unwrap_or(k.saturating_sub(1));
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
        let dir = args.heatmap.clone().unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let png = dir.join(format!("{name}_heatmap.png"));
        let npy = dir.join(format!("{name}_heatmap.npy"));
        let plane: Vec<f32> = acc.chunks_exact(k).map(|px| px[class]).collect();
        write_overlay(&png, &img, &plane, (mh, mw), &OverlayOptions::default())
            .map_err(|e| e.to_string())?;
        write_npy(&npy, &acc, [mh, mw, k])?;
        Ok((
            mean,
            hw,
            Some(HeatmapOut {
                png,
                npy,
                shape: [mh, mw, k],
            }),
            None,
        ))
    }

    /// Heatmap file names, one per image in order: the file's stem, then `stem_ext`,
    /// `stem_ext2`... where stems repeat; fixed before the jobs start, so that the names do
    /// not depend on which image finishes first.
    fn heatmap_names(images: &[PathBuf]) -> Vec<String> {
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
    fn write_npy(path: &Path, data: &[f32], shape: [usize; 3]) -> Res<()> {
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
        allconv::files::write_atomic(path, &bytes).map_err(|e| e.to_string())
    }

    /// `[3/20] 0.42 images/s` on a terminal's stderr, rewritten in place; silent when
    /// stderr is not a terminal, for one image, or with machine-readable output.
    struct Progress {
        total: usize,
        start: std::time::Instant,
        on: bool,
    }

    impl Progress {
        fn new(total: usize, machine_output: bool) -> Progress {
            use std::io::IsTerminal;
            Progress {
                total,
                start: std::time::Instant::now(),
                on: total > 1 && !machine_output && std::io::stderr().is_terminal(),
            }
        }

        fn step(&self, done: usize) {
            if self.on && done < self.total {
                let elapsed = self.start.elapsed().as_secs_f64();
                let rate = format!(" {:.2} images/s", done as f64 / elapsed.max(1e-9));
                crate::cli::progress::draw(&crate::cli::progress::line(
                    done, self.total, elapsed, &rate,
                ));
            }
        }

        fn clear(&self) {
            if self.on {
                crate::cli::progress::clear();
            }
        }
    }

    fn csv_field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }

    /// Writes to stdout, ignoring a closed pipe (`allconv predict ... | head`).
    fn emit(s: &str) {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(s.as_bytes()).and_then(|_| o.flush());
    }

    macro_rules! outln {
        ($buf:expr, $($t:tt)*) => {{
            use std::fmt::Write as _;
            let _ = writeln!($buf, $($t)*);
        }};
    }

    fn fail(args: &PredictArgs, msg: &str) -> ExitCode {
        if args.json {
            emit(&format!("{}\n", json!({ "error": msg })));
        }
        eprintln!("error: {msg}");
        ExitCode::FAILURE
    }

    /// Every image of `args` read, preprocessed and scored: the plan in effect, one row
    /// per image in order, and whether the model applies TTA in its graph.
    fn score_all(args: &PredictArgs) -> Res<(Plan, Vec<Row>, bool)> {
        let early = EarlyDecode::start(args);
        let model = load_model(args)?;
        let plan = plan_preprocess(args, &model)?;
        if let Some(r) = &model.heatmap {
            eprintln!(
                "heatmap: removed {}, Dense {} applied per pixel ({} classes); overlay class {}",
                r.removed_pool,
                r.dense,
                r.classes,
                args.heatmap_class.unwrap_or(r.classes.saturating_sub(1))
            );
        }
        let host_tta = args.tta && !model.in_graph_tta;
        let progress = Progress::new(args.images.len(), args.json || args.csv);
        let images = &args.images;
        let names = heatmap_names(images);
        let jobs = if model.is_torch() {
            1
        } else {
            args.jobs
                .map_or(model.threads, |j| j.try_into().unwrap_or(usize::MAX))
                .min(images.len())
                .max(1)
        };
        let budget = MemoryBudget {
            free: Mutex::new(allconv::limits::current().activation_bytes),
            freed: Condvar::new(),
        };
        let mut slots: Vec<Option<Row>> = images.iter().map(|_| None).collect();
        // How the reader shares the cores with the network: see `ReadAhead`.
        let read_ahead = if model.is_torch() {
            ReadAhead::BetweenRuns {
                batch: model.threads.min(images.len()).max(1),
            }
        } else {
            ReadAhead::Overlapped
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(jobs.max(read_ahead.batch()));
        let rx = Mutex::new(rx);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // One message per image scored, so that a `BetweenRuns` reader knows the cores are free.
        let (scored_tx, scored_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let plan = &plan;
            scope.spawn(move || {
                read_images(images, early, plan, host_tta, read_ahead, &tx, &scored_rx)
            });
            for _ in 0..jobs {
                let (rx, done_tx, scored_tx) = (&rx, done_tx.clone(), scored_tx.clone());
                let (model, budget, args, names) = (&model, &budget, &args, &names);
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
                        let (result, single) = match prepared
                            .and_then(|p| score(&names[i], p, model, &mut job, budget, args))
                        {
                            Ok((p, hw, hm, single)) => (Ok((p, hw, hm)), single),
                            Err(e) => (Err(e), None),
                        };
                        let _ = scored_tx.send(());
                        if done_tx.send((i, result, warning, single)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop((done_tx, scored_tx));
            let mut done = 0;
            for (i, result, warning, single) in done_rx {
                let path = &images[i];
                if let Some(w) = &warning {
                    progress.clear();
                    eprintln!("warning: {}: {w}", path.display());
                }
                if let Err(e) = &result {
                    progress.clear();
                    let file = path.display().to_string();
                    if e.contains(&file) {
                        eprintln!("error: {e}");
                    } else {
                        eprintln!("error: {file}: {e}");
                    }
                }
                slots[i] = Some(Row {
                    file: path.clone(),
                    result,
                    single,
                    warning,
                });
                done += 1;
                progress.step(done);
            }
        });
        progress.clear();
        let rows: Vec<Row> = slots
            .into_iter()
            .zip(images)
            .map(|(r, path)| {
                r.unwrap_or_else(|| Row {
                    file: path.clone(),
                    result: Err("internal: the image was not scored".into()),
                    single: None,
                    warning: None,
                })
            })
            .collect();
        Ok((plan, rows, model.in_graph_tta))
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
        /// The preprocessing in effect, as a spec, and where it came from.
        pub preprocess: String,
        pub preprocess_source: String,
        /// How TTA ran (`off`, host, in-graph).
        pub tta: String,
        /// The engine that ran the model (tract, ort, torch).
        pub engine: String,
        /// The model applies 4-flip TTA in its graph (ONNX metadata): no single-view scores.
        pub in_graph_tta: bool,
        pub images: Vec<ImageScores>,
    }

    /// `args.images` scored as `allconv predict` scores them (model loading, `--preprocess`,
    /// `--tta`, engine, threads and read-ahead); with host TTA each image also keeps its
    /// unflipped view's output. A failed image is a row with its error, not an `Err`.
    pub fn score_images(args: &PredictArgs) -> Res<ScoreRun> {
        let (plan, rows, in_graph_tta) = score_all(args)?;
        Ok(ScoreRun {
            preprocess: plan.spec,
            preprocess_source: plan.source,
            tta: plan.tta.to_string(),
            engine: plan.engine.to_string(),
            in_graph_tta,
            images: rows
                .into_iter()
                .map(|r| ImageScores {
                    file: r.file,
                    probs: r.result.map(|(p, _, _)| p),
                    single: r.single,
                    warning: r.warning,
                })
                .collect(),
        })
    }

    pub fn main(args: PredictArgs) -> ExitCode {
        let (plan, rows, _) = match score_all(&args) {
            Ok(x) => x,
            Err(e) => return fail(&args, &e),
        };
        let mut out = String::new();
        let failed = rows.iter().filter(|r| r.result.is_err()).count();
        let classes = rows
            .iter()
            .find_map(|r| r.result.as_ref().ok().map(|(p, _, _)| p.len()))
            .unwrap_or(0);
        if args.json {
            let arr: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let mut o = json!({
                        "file": r.file.display().to_string(),
                        "preprocess": plan.spec,
                        "preprocess_source": plan.source,
                        "engine": plan.engine,
                        "tta": plan.tta,
                    });
                    match &r.result {
                        Ok((p, hw, hm)) => {
                            o["probabilities"] = json!(p);
                            o["input_size"] = json!(hw);
                            if let Some(h) = hm {
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
            match serde_json::to_string_pretty(&arr) {
                Ok(s) => outln!(out, "{s}"),
                Err(e) => return fail(&args, &e.to_string()),
            }
        } else if args.csv {
            eprintln!(
                "preprocess: {} [{}]; tta: {}; engine: {}",
                plan.spec, plan.source, plan.tta, plan.engine
            );
            let mut head = vec!["file".to_string()];
            head.extend((0..classes).map(|i| format!("p{i}")));
            head.push("error".into());
            outln!(out, "{}", head.join(","));
            for r in &rows {
                let mut f = vec![csv_field(&r.file.display().to_string())];
                match &r.result {
                    Ok((p, _, _)) => {
                        f.extend(p.iter().map(|v| v.to_string()));
                        f.push(String::new());
                    }
                    Err(e) => {
                        f.extend((0..classes).map(|_| String::new()));
                        f.push(csv_field(e));
                    }
                }
                outln!(out, "{}", f.join(","));
            }
        } else {
            outln!(out, "model:      {}", args.model.display());
            outln!(out, "preprocess: {} [{}]", plan.spec, plan.source);
            outln!(out, "tta:        {}", plan.tta);
            outln!(out, "engine:     {}", plan.engine);
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
            outln!(out, "{head}");
            for r in &rows {
                let mut line = format!("{:<width$}", r.file.display().to_string());
                match &r.result {
                    Ok((p, _, hm)) => {
                        for v in p {
                            line.push_str(&format!("  {v:>10.6}"));
                        }
                        if let Some(h) = hm {
                            line.push_str(&format!("  -> {}", h.png.display()));
                        }
                    }
                    Err(e) => line.push_str(&format!("  error: {e}")),
                }
                outln!(out, "{line}");
            }
        }
        emit(&out);
        if failed > 0 {
            eprintln!("{failed} of {} images failed", rows.len());
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}
