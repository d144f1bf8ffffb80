//! tract: a model with its input shapes fixed, optimised into a plan, run.

use crate::error::{Error, Result};
use tract_onnx::prelude::*;

/// tract's ONNX framework, with tract's kernels tuned for this CPU first
/// ([`super::kernels`]): every tract model allconv builds starts here or at
/// [`super::nnef`]'s framework.
pub(crate) fn onnx_framework() -> tract_onnx::Onnx {
    super::kernels::tune_for_this_cpu();
    tract_onnx::onnx()
}

pub(crate) fn terr(what: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Other(format!("tract: {what}: {e:#}"))
}

/// One output tensor: its shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One node's time in a profiled run ([`TractModel::profile`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeTime {
    /// tract's name for the op after optimisation (`OptMatMul`, `Im2col`, `MaxPool`...).
    pub op: String,
    pub node: String,
    pub ms: f64,
    /// tract's description of the node (for matrix products: m, k, n and the kernel).
    pub info: String,
}

/// An optimised tract plan for one input shape.
pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    input_shapes: Vec<Vec<usize>>,
    executor: Option<multithread::Executor>,
    activation_bytes: u64,
}

impl TractModel {
    /// Load an ONNX model with its (single) input fixed to `input_shape` (batch included).
    /// `threads` > 1 runs matrix products on a tract multithread executor.
    pub fn load(onnx: &[u8], input_shape: &[usize], threads: usize) -> Result<TractModel> {
        Self::load_multi(onnx, &[input_shape.to_vec()], threads)
    }

    /// Load a model with one shape per graph input (batch included).
    pub fn load_multi(
        onnx: &[u8],
        input_shapes: &[Vec<usize>],
        threads: usize,
    ) -> Result<TractModel> {
        let model = onnx_framework()
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(terr("reading the ONNX model"))?;
        Self::from_inference(model, input_shapes, threads)
    }

    /// Parse ONNX bytes and fix one shape per input (batch included): the start of both
    /// a plan and an NNEF export.
    pub(crate) fn onnx_with_shapes(
        onnx: &[u8],
        input_shapes: &[Vec<usize>],
    ) -> Result<InferenceModel> {
        let model = onnx_framework()
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(terr("reading the ONNX model"))?;
        with_shapes(model, input_shapes)
    }

    /// An ONNX graph as tract parsed it, with one shape per input (batch included).
    pub fn from_inference(
        model: InferenceModel,
        input_shapes: &[Vec<usize>],
        threads: usize,
    ) -> Result<TractModel> {
        let typed = with_shapes(model, input_shapes)?
            .into_optimized()
            .map_err(terr("optimising"))?;
        Self::from_plan(typed, input_shapes, threads)
    }

    /// A decluttered typed graph read from NNEF, whose inputs already have `input_shapes`.
    pub fn from_typed(
        model: TypedModel,
        input_shapes: &[Vec<usize>],
        threads: usize,
    ) -> Result<TractModel> {
        for (i, shape) in input_shapes.iter().enumerate() {
            let fact = model
                .input_fact(i)
                .map_err(terr("reading the input shape"))?;
            let declared: Option<Vec<usize>> = fact.shape.as_concrete().map(|s| s.to_vec());
            if declared.as_deref() != Some(shape.as_slice()) {
                return Err(Error::Other(format!(
                    "input {i} is declared {:?}, asked for {shape:?}: an NNEF file has one fixed input shape",
                    fact.shape
                )));
            }
        }
        let typed = super::nnef::optimize(model).map_err(terr("optimising"))?;
        Self::from_plan(typed, input_shapes, threads)
    }

    fn from_plan(
        typed: TypedModel,
        input_shapes: &[Vec<usize>],
        threads: usize,
    ) -> Result<TractModel> {
        let (activation_bytes, at) = peak_activation_bytes(&typed)?;
        crate::limits::check_activations(activation_bytes, &at, input_shapes)?;
        let plan = typed.into_runnable().map_err(terr("building the plan"))?;
        let executor = (threads > 1).then(|| multithread::Executor::multithread(threads));
        Ok(TractModel {
            plan,
            input_shapes: input_shapes.to_vec(),
            executor,
            activation_bytes,
        })
    }

    /// The same optimised plan (shared, not copied) on its own executor of `threads`:
    /// how several images run at once, each on its own share of the cores.
    pub fn with_threads(&self, threads: usize) -> TractModel {
        TractModel {
            plan: self.plan.clone(),
            input_shapes: self.input_shapes.clone(),
            executor: (threads > 1).then(|| multithread::Executor::multithread(threads)),
            activation_bytes: self.activation_bytes,
        }
    }

    pub fn input_shapes(&self) -> &[Vec<usize>] {
        &self.input_shapes
    }

    /// The activation memory estimated from the plan's shapes (see [`peak_activation_bytes`]).
    pub fn activation_bytes(&self) -> u64 {
        self.activation_bytes
    }

    /// One run of a single-input model with every node timed, in execution order: tract's
    /// own evaluation of each node, wrapped in a clock (as its command-line profiler does).
    pub fn profile(&self, data: &[f32]) -> Result<Vec<NodeTime>> {
        let shape = self
            .input_shapes
            .first()
            .ok_or_else(|| Error::Other("the model has no input".into()))?;
        let input = Tensor::from_shape(shape, data).map_err(terr("building the input"))?;
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&self.plan)
            .map_err(terr("making a run state"))?;
        let mut times = Vec::new();
        let run = || {
            state.run_plan_with_eval(tvec![input.into_tvalue()], |ctx, op_state, node, inputs| {
                let start = std::time::Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                times.push(NodeTime {
                    op: node.op().name().to_string(),
                    node: node.name.clone(),
                    ms: start.elapsed().as_secs_f64() * 1000.0,
                    info: node.op().info().map(|i| i.join("; ")).unwrap_or_default(),
                });
                r
            })
        };
        match &self.executor {
            Some(ex) => multithread::multithread_tract_scope(ex.clone(), run),
            None => run(),
        }
        .map_err(terr("running"))?;
        Ok(times)
    }

    /// Run on `data` (row-major, `input_shape`); returns every graph output in order.
    pub fn run(&self, data: &[f32]) -> Result<Vec<Output>> {
        self.run_multi(&[data])
    }

    /// Run with one buffer per graph input.
    pub fn run_multi(&self, data: &[&[f32]]) -> Result<Vec<Output>> {
        if data.len() != self.input_shapes.len() {
            return Err(Error::Other(format!(
                "the model has {} inputs, {} given",
                self.input_shapes.len(),
                data.len()
            )));
        }
        let mut inputs = TVec::new();
        for (shape, d) in self.input_shapes.iter().zip(data) {
            let t = Tensor::from_shape(shape, d).map_err(terr("building the input"))?;
            inputs.push(t.into_tvalue());
        }
        let run = || self.plan.run(inputs.clone());
        let outs = match &self.executor {
            Some(ex) => multithread::multithread_tract_scope(ex.clone(), run),
            None => run(),
        }
        .map_err(terr("running"))?;
        outs.iter()
            .map(|o| {
                let v = o
                    .to_plain_array_view::<f32>()
                    .map_err(terr("reading an output"))?;
                Ok(Output {
                    shape: v.shape().to_vec(),
                    data: v.iter().copied().collect(),
                })
            })
            .collect()
    }
}

/// Fix one f32 input shape per graph input.
fn with_shapes(mut model: InferenceModel, input_shapes: &[Vec<usize>]) -> Result<InferenceModel> {
    for (i, shape) in input_shapes.iter().enumerate() {
        model = model
            .with_input_fact(i, f32::fact(shape).into())
            .map_err(terr("setting the input shape"))?;
    }
    Ok(model)
}

/// Load and run once.
pub fn run_once(
    onnx: &[u8],
    input_shape: &[usize],
    data: &[f32],
    threads: usize,
) -> Result<Vec<Output>> {
    TractModel::load(onnx, input_shape, threads)?.run(data)
}

/// The most activation memory live at once when `model` runs node by node in its eval
/// order: an output lives from its node until its last consumer (graph outputs until the
/// end); constants are weights and not counted. Returns the bytes and the node at the peak.
/// An estimate from declared shapes, made before anything is allocated; tract's own
/// scratch (im2col, packing) comes on top.
pub(crate) fn peak_activation_bytes(model: &TypedModel) -> Result<(u64, String)> {
    let order = model.eval_order().map_err(terr("ordering the graph"))?;
    let position: std::collections::HashMap<usize, usize> =
        order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let graph_outputs: std::collections::HashSet<OutletId> = model
        .output_outlets()
        .map_err(terr("reading the outputs"))?
        .iter()
        .copied()
        .collect();
    // Bytes freed after each step.
    let mut freed_after = vec![0u128; order.len()];
    let mut live = 0u128;
    let mut peak = (0u128, String::new());
    for (step, &id) in order.iter().enumerate() {
        let node = model.node(id);
        for (slot, outlet) in node.outputs.iter().enumerate() {
            let fact = &outlet.fact;
            if fact.konst.is_some() {
                continue;
            }
            let elements = fact
                .shape
                .iter()
                .map(|d| d.as_i64().map_or(0, |n| n.max(0) as u128))
                .fold(1u128, u128::saturating_mul);
            let bytes = elements.saturating_mul(fact.datum_type.size_of() as u128);
            live = live.saturating_add(bytes);
            // Graph outputs live to the end; the rest until their last consumer has run.
            if !graph_outputs.contains(&OutletId::new(id, slot)) {
                let last = outlet
                    .successors
                    .iter()
                    .filter_map(|s| position.get(&s.node).copied())
                    .max()
                    .unwrap_or(step);
                freed_after[last] = freed_after[last].saturating_add(bytes);
            }
        }
        if live > peak.0 {
            peak = (live, node.name.clone());
        }
        live -= freed_after[step].min(live);
    }
    Ok((peak.0.min(u64::MAX as u128) as u64, peak.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math;

    /// 1000 f32 = 4000 bytes per tensor.
    fn source(m: &mut TypedModel) -> OutletId {
        m.add_source("in", f32::fact([1, 1000])).unwrap()
    }

    #[test]
    fn a_chain_holds_two_tensors_at_once() {
        let mut m = TypedModel::default();
        let x = source(&mut m);
        let a = m.wire_node("a", math::abs(), &[x]).unwrap()[0];
        let b = m.wire_node("b", math::abs(), &[a]).unwrap()[0];
        m.select_output_outlets(&[b]).unwrap();
        assert_eq!(peak_activation_bytes(&m).unwrap().0, 8000);
    }

    #[test]
    fn a_fork_keeps_its_branches_alive_until_they_join() {
        let mut m = TypedModel::default();
        let x = source(&mut m);
        let a = m.wire_node("a", math::abs(), &[x]).unwrap()[0];
        let b = m.wire_node("b", math::abs(), &[x]).unwrap()[0];
        let c = m.wire_node("c", math::add(), &[a, b]).unwrap()[0];
        m.select_output_outlets(&[c]).unwrap();
        // At the second branch: the input, both branches.
        let (bytes, at) = peak_activation_bytes(&m).unwrap();
        assert_eq!(bytes, 12000);
        assert!(at == "a" || at == "b", "{at}");
    }
}
