//! `allconv bench`: the measurements behind the README's benchmark table. Each half runs
//! in its own process (scripts/bench.sh) so that its peak memory is its own, like the
//! Python peers in converters/bench_peers.py. Timings are reported, never asserted.

use crate::error::Result;
#[cfg(feature = "keras")]
use crate::keras::{read_model, ReadOptions};
#[cfg(feature = "keras")]
use crate::onnx::{export_for_inference, write_atomic, ExportOptions};
use crate::runtime::ModelFile;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct ConvertBench {
    pub model: String,
    /// Median over `repeats` of read .h5 + build IR + export + write .onnx.
    pub convert_s: f64,
    pub repeats: usize,
    pub onnx_bytes: usize,
    pub peak_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct RunBench {
    pub model: String,
    pub input_shape: Vec<usize>,
    pub threads: usize,
    /// `tract` (an ONNX or NNEF file), `onnxruntime` (an ONNX file, `--backend ort`) or
    /// `libtorch` (a Keras .h5).
    pub runtime: &'static str,
    /// The file's format in tract; none for a Keras file.
    pub format: Option<crate::runtime::Format>,
    /// Read the file + optimize (tract) or build the VarStore (libtorch).
    pub load_s: f64,
    /// Time to first result: load_s plus the first (cold) run.
    pub first_result_s: f64,
    /// Median of `runs` after one warm-up run.
    pub latency_ms: f64,
    pub runs: usize,
    pub peak_mb: f64,
    /// The activation memory allconv estimates before running (`--limit activation-bytes`
    /// is held against it), beside the measured `peak_mb`; tract only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_estimate_mb: Option<f64>,
    /// tract only: what chose its matrix kernels on this CPU (the user's `TRACT_CPU_ISA`,
    /// allconv's edit for this CPU, or tract's own choice: [`crate::runtime::kernels`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tract_kernels: Option<String>,
    /// With `--profile`: time per tract op type, most expensive first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<OpTime>>,
    /// With `--profile`: the slowest nodes of the first profiled run, with tract's
    /// description (for matrix products: m, k, n and the kernel it picked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slowest_nodes: Vec<crate::runtime::NodeTime>,
}

/// One op type's share of a run: its nodes' summed time, median over the profiled runs.
#[derive(Debug, Serialize)]
pub struct OpTime {
    pub op: String,
    pub nodes: usize,
    pub ms: f64,
}

/// Sum each run's node times per op type; the median per op over runs.
fn per_op(runs: &[Vec<crate::runtime::NodeTime>]) -> Vec<OpTime> {
    use std::collections::BTreeMap;
    let mut by_op: BTreeMap<&str, (usize, Vec<f64>)> = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        for t in run {
            let e = by_op
                .entry(&t.op)
                .or_insert_with(|| (0, vec![0.0; runs.len()]));
            if i == 0 {
                e.0 += 1;
            }
            e.1[i] += t.ms;
        }
    }
    let mut ops: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (nodes, ms))| OpTime {
            op: op.to_string(),
            nodes,
            ms: median(ms),
        })
        .collect();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    ops
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Peak resident set size of this process (VmHWM), in MiB; 0 where /proc is missing.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(feature = "keras")]
/// Time the whole conversion, .h5 to .onnx on disk, `repeats` times.
pub fn bench_convert(
    h5: &Path,
    read: &ReadOptions,
    export_opts: &ExportOptions,
    out: &Path,
    repeats: usize,
) -> Result<ConvertBench> {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let graph = read_model(h5, read)?;
        let onnx = export_for_inference(&graph, export_opts)?.to_bytes()?;
        write_atomic(out, &onnx)?;
        times.push(t.elapsed().as_secs_f64());
        bytes = onnx.len();
    }
    Ok(ConvertBench {
        model: h5.display().to_string(),
        convert_s: median(times),
        repeats: repeats.max(1),
        onnx_bytes: bytes,
        peak_mb: peak_rss_mb(),
    })
}

/// Load a model file (ONNX or NNEF) into tract at `input_shape` (batch first) and time
/// `runs` runs on a deterministic input, after the first. With `profile_nodes`, as many
/// more runs with every node timed, and that many of the slowest nodes reported.
pub fn bench_run(
    path: &Path,
    input_shape: &[usize],
    threads: usize,
    runs: usize,
    profile_nodes: Option<usize>,
) -> Result<RunBench> {
    let mut format = None;
    let (model, input, mut report) = timed(
        path,
        input_shape,
        threads,
        runs,
        "tract",
        || {
            let file = ModelFile::open(path)?;
            format = Some(file.format);
            Ok((
                file.load(&[input_shape.to_vec()], threads)?,
                input_shape.to_vec(),
            ))
        },
        |model, input| model.run(input).map(drop),
    )?;
    report.format = format;
    report.activation_estimate_mb = Some(model.activation_bytes() as f64 / (1u64 << 20) as f64);
    report.tract_kernels = Some(crate::runtime::kernels::describe());
    if let Some(keep) = profile_nodes {
        let runs = (0..runs.max(1))
            .map(|_| model.profile(&input))
            .collect::<Result<Vec<_>>>()?;
        let mut slowest = runs[0].clone();
        slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        slowest.truncate(keep);
        report.profile = Some(per_op(&runs));
        report.slowest_nodes = slowest;
        report.peak_mb = peak_rss_mb();
    }
    Ok(report)
}

/// The timing every engine's bench shares: `load` (the load time; it returns the model and
/// the shape it is fed), one cold run of `run` on [`bench_input`] of that shape (time to
/// first result, from the start), then `runs` timed runs. Returns the model and its input
/// for engine-specific extras, and the report with those extras unset.
fn timed<M>(
    path: &Path,
    input_shape: &[usize],
    threads: usize,
    runs: usize,
    runtime: &'static str,
    load: impl FnOnce() -> Result<(M, Vec<usize>)>,
    run: impl Fn(&M, &[f32]) -> Result<()>,
) -> Result<(M, Vec<f32>, RunBench)> {
    let t = Instant::now();
    let (model, fed_shape) = load()?;
    let load_s = t.elapsed().as_secs_f64();
    let input = bench_input(&fed_shape);
    run(&model, &input)?;
    let first_result_s = t.elapsed().as_secs_f64();
    let times = time_runs(runs, || run(&model, &input))?;
    let report = RunBench {
        model: path.display().to_string(),
        input_shape: input_shape.to_vec(),
        threads,
        runtime,
        format: None,
        load_s,
        first_result_s,
        latency_ms: median(times),
        runs: runs.max(1),
        peak_mb: peak_rss_mb(),
        activation_estimate_mb: None,
        tract_kernels: None,
        profile: None,
        slowest_nodes: vec![],
    };
    Ok((model, input, report))
}

/// [`bench_run`] on ONNX Runtime (the `ort` feature): the file's own bytes in a session
/// with `threads` intra-op threads; the same input, warm-up and timing loop. Load is
/// reading the file and making the session (ONNX Runtime's graph optimisation included).
#[cfg(feature = "ort")]
pub fn bench_run_ort(
    path: &Path,
    input_shape: &[usize],
    threads: usize,
    runs: usize,
) -> Result<RunBench> {
    let (_, _, mut report) = timed(
        path,
        input_shape,
        threads,
        runs,
        "onnxruntime",
        || {
            let shapes = [input_shape.to_vec()];
            let model = crate::runtime::OrtModel::load_file(path, &shapes, threads)?;
            Ok((model, input_shape.to_vec()))
        },
        |model, input| model.run(input).map(drop),
    )?;
    report.format = Some(crate::runtime::Format::Onnx);
    Ok(report)
}

/// The same pseudo-random input for every run and runtime (a fixed LCG: no dependency).
fn bench_input(shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `runs` timed runs (at least one), in ms.
fn time_runs(runs: usize, mut run: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            run()?;
            Ok(t.elapsed().as_secs_f64() * 1000.0)
        })
        .collect()
}

/// [`bench_run`] for a Keras `.h5` on libtorch (CPU), as `predict --backend torch` runs
/// it: read + VarStore is the load, then the same input and timing loop. A 3-channel model
/// takes one channel where predict would feed it a grey image three times
/// ([`crate::passes::fold_grey_input`]); `input_shape` stays the model's.
#[cfg(feature = "torch")]
pub fn bench_run_torch(
    path: &Path,
    input_shape: &[usize],
    threads: usize,
    runs: usize,
) -> Result<RunBench> {
    use crate::torch::{from_host, TorchModel};
    tch::set_num_threads(threads.try_into().unwrap_or(i32::MAX));
    // The model carries the shape it is fed: one channel where the grey input folded.
    type Fed = (TorchModel, Vec<usize>);
    let load = || -> Result<(Fed, Vec<usize>)> {
        let mut graph = read_model(path, &ReadOptions::default())?;
        let mut fed = input_shape.to_vec();
        if crate::passes::fold_grey_input(&mut graph)? {
            if let Some(c) = fed.last_mut() {
                *c = 1;
            }
        }
        let model = TorchModel::for_inference(graph, tch::Device::Cpu)?;
        model
            .check_activations(&fed)
            .map_err(|e| crate::error::Error::Other(format!("{}: {e}", path.display())))?;
        Ok(((model, fed.clone()), fed))
    };
    let run = |(model, fed): &Fed, input: &[f32]| -> Result<()> {
        let x = from_host(fed, input, tch::Device::Cpu)?;
        model.forward_t(&x, false).map(drop)
    };
    let (_, _, report) = timed(path, input_shape, threads, runs, "libtorch", load, run)?;
    Ok(report)
}
