//! The model as the scoring pipeline runs it: which engine (tract, ONNX Runtime,
//! libtorch), its input layout and static size, the preprocessing and TTA compiled into
//! its graph, and one run of one view.

use super::{Backend, Res, ScoreOptions};
#[cfg(feature = "keras")]
use crate::ir::{split_channels, DataFormat, Graph};
#[cfg(feature = "keras")]
use crate::keras::{read_model, ReadOptions};
use crate::meta;
#[cfg(feature = "keras")]
use crate::onnx::{self, ExportOptions};
#[cfg(feature = "keras")]
use crate::passes::heatmap::to_heatmap;
use crate::passes::heatmap::HeatmapReport;
use crate::runtime::{ModelFile, TractModel};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

/// Preprocessing compiled into the ONNX graph (metadata `allconv.preprocess`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct InGraph {
    pub(crate) rescale: f32,
    pub(crate) mean: f32,
    pub(crate) gray: bool,
}

pub(crate) enum Engine {
    /// An ONNX or NNEF file.
    File(Box<ModelFile>),
    /// A Keras graph, exported to ONNX in memory at each size it is run at.
    #[cfg(feature = "keras")]
    Keras(Box<Graph>),
    /// A Keras graph on libtorch (CPU), any input size; one job (libtorch tensors are
    /// not `Sync`, and one run already spreads over the threads).
    #[cfg(feature = "torch")]
    Torch(Mutex<Box<crate::torch::TorchModel>>),
    /// ONNX Runtime: the file's bytes (or a Keras graph exported at each size), one
    /// session per input size; one run at a time, spread over the threads.
    #[cfg(feature = "ort")]
    Ort {
        source: OrtSource,
        sessions: Mutex<HashMap<(usize, usize), Arc<crate::runtime::OrtModel>>>,
    },
}

#[cfg(feature = "ort")]
pub(crate) enum OrtSource {
    File(Vec<u8>),
    #[cfg(feature = "keras")]
    Keras(Box<Graph>),
}

pub(crate) struct Model {
    pub(crate) engine: Engine,
    pub(crate) nchw: bool,
    /// Channels the graph input takes (1 when grey duplication runs in-graph).
    pub(crate) channels: usize,
    /// Static input size (H, W) the model must be fed at.
    pub(crate) fixed_hw: Option<(usize, usize)>,
    pub(crate) in_graph_pre: Option<InGraph>,
    pub(crate) in_graph_tta: bool,
    pub(crate) heatmap: Option<HeatmapReport>,
    /// The engine takes the grey image itself where the model declares 3 channels of
    /// it ([`crate::passes::fold_grey_input`]): the host feeds one channel.
    pub(crate) grey_folded: bool,
    pub(crate) threads: usize,
    /// One optimised plan per input size, shared by the jobs (each runs it on its own
    /// executor, [`TractModel::with_threads`]).
    pub(crate) plans: Mutex<HashMap<(usize, usize), Arc<TractModel>>>,
}

impl Model {
    /// libtorch and ONNX Runtime spread one run over every thread: one job.
    pub(crate) fn is_torch(&self) -> bool {
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
    pub(crate) fn engine_name(&self) -> &'static str {
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
    pub(crate) fn ort_session(&self, h: usize, w: usize) -> Res<Arc<crate::runtime::OrtModel>> {
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
        let m = crate::runtime::OrtModel::load(&bytes, &shape, self.threads)
            .map_err(|e| format!("loading the model at {h}x{w}: {e}"))?;
        let m = Arc::new(m);
        sessions.insert((h, w), Arc::clone(&m));
        Ok(m)
    }

    /// The plan at (h, w), optimised by the first job that needs it.
    pub(crate) fn plan(&self, h: usize, w: usize) -> Res<Arc<TractModel>> {
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
pub(crate) fn onnx_at(g: &Graph, h: usize, w: usize) -> Res<Vec<u8>> {
    let opts = ExportOptions {
        input_size: Some(vec![h, w]),
        ..Default::default()
    };
    onnx::export(g, &opts)
        .and_then(|e| e.to_bytes())
        .map_err(|e| format!("converting the model at {h}x{w}: {e}"))
}

/// What one job owns: its executors (one per input size) and its share of the threads.
pub(crate) struct Job {
    pub(crate) threads: usize,
    pub(crate) plans: HashMap<(usize, usize), TractModel>,
    /// Input sizes whose activations libtorch has checked against the limit.
    #[cfg(feature = "torch")]
    pub(crate) torch_checked: std::collections::HashSet<(usize, usize)>,
}

/// Activation memory the running jobs may hold between them (the `activation-bytes`
/// limit): a job waits for its plan's estimate before it runs.
pub(crate) struct MemoryBudget {
    pub(crate) free: Mutex<u64>,
    pub(crate) freed: Condvar,
}

impl MemoryBudget {
    pub(crate) fn run<T>(&self, bytes: u64, f: impl FnOnce() -> T) -> T {
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

pub(crate) fn load_model(opts: &ScoreOptions) -> Res<Model> {
    let path = &opts.model;
    let is_h5 = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"));
    let threads = opts.threads();
    if !is_h5 {
        if opts.backend == Backend::Torch {
            return Err(format!(
                "{}: --backend torch runs Keras .h5 models; ONNX and NNEF files run in tract",
                path.display()
            ));
        }
        if opts.heatmap.is_some() {
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
            engine: file_engine(opts, file)?,
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
        load_keras(opts, threads)
    }
}

#[cfg(not(feature = "keras"))]
pub(crate) fn load_keras(opts: &ScoreOptions, _threads: usize) -> Res<Model> {
    Err(format!(
        "{}: Keras .h5 models need the full build of allconv (this is the inference-only edge build); convert it to .onnx or .nnef.tgz first",
        opts.model.display()
    ))
}

#[cfg(feature = "keras")]
pub(crate) fn load_keras(opts: &ScoreOptions, threads: usize) -> Res<Model> {
    let path = &opts.model;
    {
        let g = read_model(path, &ReadOptions::default()).map_err(|e| e.to_string())?;
        let (g, heatmap) = if opts.heatmap.is_some() {
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
        let channels = c
            .known()
            .ok_or_else(|| format!("{}: the model's input channels are unknown", path.display()))?;
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
        let (engine, grey_folded) = keras_engine(opts, g, threads)?;
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
pub(crate) fn file_engine(opts: &ScoreOptions, file: ModelFile) -> Res<Engine> {
    let onnx = file.format == crate::runtime::Format::Onnx;
    let ort = match opts.backend {
        Backend::Ort if !onnx => {
            return Err(format!(
                "{}: --backend ort runs ONNX files; an NNEF file runs in tract",
                file.path.display()
            ))
        }
        Backend::Ort => {
            crate::runtime::Engine::ort().map_err(|e| e.to_string())?;
            true
        }
        Backend::Auto => onnx && ort_loads(),
        _ => false,
    };
    #[cfg(feature = "ort")]
    if ort {
        crate::runtime::ort::library().map_err(|e| e.to_string())?;
        let bytes = crate::files::read(&file.path).map_err(|e| e.to_string())?;
        return Ok(Engine::Ort {
            source: OrtSource::File(bytes),
            sessions: Mutex::new(HashMap::new()),
        });
    }
    let _ = ort;
    Ok(Engine::File(Box::new(file)))
}

/// Whether ONNX Runtime opens here (`--backend auto`).
pub(crate) fn ort_loads() -> bool {
    #[cfg(feature = "ort")]
    return crate::runtime::ort::available().is_ok();
    #[cfg(not(feature = "ort"))]
    false
}

/// tract (ONNX in memory) or libtorch for a Keras graph, as `--backend` says, and
/// whether the engine takes the grey image as one channel (libtorch: predict feeds grey
/// images only, so a 3-channel model always gets three equal channels).
#[cfg(feature = "keras")]
pub(crate) fn keras_engine(opts: &ScoreOptions, g: Graph, threads: usize) -> Res<(Engine, bool)> {
    if opts.backend == Backend::Ort {
        crate::runtime::Engine::ort().map_err(|e| e.to_string())?;
        #[cfg(feature = "ort")]
        {
            crate::runtime::ort::library().map_err(|e| e.to_string())?;
            let engine = Engine::Ort {
                source: OrtSource::Keras(Box::new(g)),
                sessions: Mutex::new(HashMap::new()),
            };
            return Ok((engine, false));
        }
    }
    #[cfg(feature = "torch")]
    if opts.backend != Backend::Tract {
        let mut g = g;
        let err = |e: crate::Error| format!("{}: {e}", opts.model.display());
        let grey_folded = crate::passes::fold_grey_input(&mut g).map_err(err)?;
        tch::set_num_threads(threads.try_into().unwrap_or(i32::MAX));
        let t = crate::torch::TorchModel::for_inference(g, tch::Device::Cpu).map_err(err)?;
        return Ok((Engine::Torch(Mutex::new(Box::new(t))), grey_folded));
    }
    #[cfg(not(feature = "torch"))]
    if opts.backend == Backend::Torch {
        return Err("--backend torch needs allconv built with the `torch` feature".into());
    }
    let _ = threads;
    Ok((Engine::Keras(Box::new(g)), false))
}

/// The host-side pipeline and how it was chosen.

pub(crate) fn hwc_to_chw(x: &[f32], [h, w, c]: [usize; 3]) -> Vec<f32> {
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
pub(crate) fn run_view(
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
        use crate::torch::{from_host, to_host};
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
