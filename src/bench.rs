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
    let t = Instant::now();
    let file = ModelFile::open(path)?;
    let model = file.load(&[input_shape.to_vec()], threads)?;
    let load_s = t.elapsed().as_secs_f64();
    let format = file.format;
    drop(file);
    let input = bench_input(input_shape);
    model.run(&input)?;
    let first_result_s = t.elapsed().as_secs_f64();
    let times = time_runs(runs, || model.run(&input).map(drop))?;
    let (profile, slowest_nodes) = if let Some(keep) = profile_nodes {
        let runs = (0..runs.max(1))
            .map(|_| model.profile(&input))
            .collect::<Result<Vec<_>>>()?;
        let mut slowest = runs[0].clone();
        slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        slowest.truncate(keep);
        (Some(per_op(&runs)), slowest)
    } else {
        (None, vec![])
    };
    Ok(RunBench {
        model: path.display().to_string(),
        input_shape: input_shape.to_vec(),
        threads,
        runtime: "tract",
        format: Some(format),
        load_s,
        first_result_s,
        latency_ms: median(times),
        runs: runs.max(1),
        peak_mb: peak_rss_mb(),
        activation_estimate_mb: Some(model.activation_bytes() as f64 / (1u64 << 20) as f64),
        profile,
        slowest_nodes,
    })
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
    let t = Instant::now();
    let model = crate::runtime::OrtModel::load_file(path, &[input_shape.to_vec()], threads)?;
    let load_s = t.elapsed().as_secs_f64();
    let input = bench_input(input_shape);
    model.run(&input)?;
    let first_result_s = t.elapsed().as_secs_f64();
    let times = time_runs(runs, || model.run(&input).map(drop))?;
    Ok(RunBench {
        model: path.display().to_string(),
        input_shape: input_shape.to_vec(),
        threads,
        runtime: "onnxruntime",
        format: Some(crate::runtime::Format::Onnx),
        load_s,
        first_result_s,
        latency_ms: median(times),
        runs: runs.max(1),
        peak_mb: peak_rss_mb(),
        activation_estimate_mb: None,
        profile: None,
        slowest_nodes: vec![],
    })
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
    let t = Instant::now();
    let mut graph = read_model(path, &ReadOptions::default())?;
    let mut fed_shape = input_shape.to_vec();
    if crate::passes::fold_grey_input(&mut graph)? {
        if let Some(c) = fed_shape.last_mut() {
            *c = 1;
        }
    }
    let model = TorchModel::for_inference(graph, tch::Device::Cpu)?;
    model
        .check_activations(&fed_shape)
        .map_err(|e| crate::error::Error::Other(format!("{}: {e}", path.display())))?;
    let load_s = t.elapsed().as_secs_f64();
    let input = bench_input(&fed_shape);
    let run = || -> Result<()> {
        let x = from_host(&fed_shape, &input, tch::Device::Cpu)?;
        model.forward_t(&x, false).map(drop)
    };
    run()?;
    let first_result_s = t.elapsed().as_secs_f64();
    let times = time_runs(runs, run)?;
    Ok(RunBench {
        model: path.display().to_string(),
        input_shape: input_shape.to_vec(),
        threads,
        runtime: "libtorch",
        format: None,
        load_s,
        first_result_s,
        latency_ms: median(times),
        runs: runs.max(1),
        peak_mb: peak_rss_mb(),
        activation_estimate_mb: None,
        profile: None,
        slowest_nodes: vec![],
    })
}
