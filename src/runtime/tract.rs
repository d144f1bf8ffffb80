//! tract: a model with its input shapes fixed, optimised into a plan, run.

use crate::error::{Error, Result};
use tract_onnx::prelude::*;

pub(crate) fn terr(what: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Other(format!("tract: {what}: {e:#}"))
}

/// One output tensor: its shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// An optimised tract plan for one input shape.
pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    input_shapes: Vec<Vec<usize>>,
    executor: Option<multithread::Executor>,
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
        let model = tract_onnx::onnx()
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
        let model = tract_onnx::onnx()
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
        let plan = typed.into_runnable().map_err(terr("building the plan"))?;
        let executor = if threads > 1 {
            Some(multithread::Executor::multithread(threads))
        } else {
            None
        };
        Ok(TractModel {
            plan,
            input_shapes: input_shapes.to_vec(),
            executor,
        })
    }

    pub fn input_shapes(&self) -> &[Vec<usize>] {
        &self.input_shapes
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
