//! libtorch backend through `tch`: the IR run op by op, with Keras semantics.
//!
//! * Layout: every value carries its physical layout (`lay[i]` = the Keras axis, batch
//!   included, stored at physical axis `i`), as in the ONNX lowering. Spatial ops want
//!   channels-first (N, C, spatial...); a `channels_last` input is permuted once at the
//!   input (a view: libtorch keeps its channels-last memory order, the fast one for its
//!   CPU convolutions) and stays channels-first through convs, pools and BatchNorm. Ops defined on
//!   the Keras layout (Flatten, Reshape, Permute, RepeatVector) get a Keras-layout view.
//!   Every output (and every tensor of [`TorchModel::forward_all`]) is in Keras layout.
//! * `padding="same"` follows the backend that produced the model ([`SameRule`], the same
//!   rule as `onnx::lower::SameRule`, so tch, ONNX and tract agree): TensorFlow's
//!   asymmetric padding (odd pixel bottom/right) is applied explicitly with `pad` before
//!   the conv/pool; max pooling pads with -inf; TF average pooling divides by the real
//!   pixels only (Keras 2 on Theano: by the whole window).
//! * BatchNorm uses the moving statistics in eval mode; in training mode (`train=true`)
//!   it uses batch statistics and updates them with torch momentum `1 - keras_momentum`.
//! * [`TorchModel::forward_fit`] is the pass a Keras training step runs (`crate::train`):
//!   gradients enabled, dropout on, and each BatchNorm layer as its [`FitSpec`] says
//!   (Keras's moving-average update, or inference mode for a frozen layer in tf-keras);
//!   it also returns the logits of softmax outputs. The inference paths are unchanged.
//!
//! Weights live in an [`nn::VarStore`] (frozen: no gradients; `crate::train` turns
//! gradients on for the trainable ones and updates them in place). Variable names are
//! [`var_name`]`(layer, slot)`: the Keras layer path split on `/` into VarStore path
//! components, each component escaped (`%` -> `%25`, `.` -> `%2E`; tch forbids `.` inside a
//! component), then the slot: `model_1/conv1` + `kernel` -> `model_1.conv1.kernel`;
//! [`parse_var_name`] inverts it. Tensors are stored in torch layout:
//!
//! | op | slot | VarStore layout |
//! |----|------|-----------------|
//! | Conv (1-D/2-D) | `kernel` | (out, in, spatial...) |
//! | DepthwiseConv | `depthwise_kernel` | (in*mult, 1, spatial...) (grouped conv) |
//! | SeparableConv | `pointwise_kernel` | (out, in*mult, 1, 1) |
//! | Dense | `kernel` | (units, in), as `nn::Linear` |
//! | BatchNorm | `gamma`, `beta`, `moving_mean`, `moving_variance` | (C,) |
//! | PReLU | `alpha` | Keras layout (without batch) |
//! | all | `bias` | (out,) |

pub mod memory_format;
mod ops;
pub mod verify;

pub use verify::*;

use crate::error::{Error, Result};
pub use crate::ir::SameRule;
use crate::ir::{DataFormat, Graph, Node, Producer, Source};
use crate::layout;
use std::borrow::Cow;
use std::collections::HashMap;
use tch::{nn, Device, Kind, Tensor};

pub use tch;

/// Make CUDA visible to libtorch, if this machine has it: `libtorch_cuda.so` registers the
/// CUDA backend when it is loaded, but the linker's `--as-needed` drops it from a tch
/// binary (no symbol of it is referenced; tch-rs issue 980), and `Cuda::is_available()`
/// then reads false even on a GPU machine. Loading it by name at run time (found through
/// the binary's rpath or `LD_LIBRARY_PATH`) lets one binary serve CPU and GPU machines.
/// Returns whether CUDA is available afterwards; a CPU-only libtorch is not an error.
pub fn load_cuda() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        if tch::Cuda::is_available() {
            return true;
        }
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the
        // process lifetime on purpose (the library must stay loaded).
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !handle.is_null() && tch::Cuda::is_available()
    })
}

pub(crate) fn terr(what: &str) -> impl Fn(tch::TchError) -> Error + '_ {
    move |e| Error::Other(format!("tch: {what}: {e}"))
}

/// Sampling grid of bilinear UpSampling (mirrors the ONNX lowering's `bilinear_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BilinearMode {
    /// Keras >= 2.4 / tf.keras: `src = (o + 0.5) / s - 0.5`.
    HalfPixel,
    /// Older Keras (`resize_images` without half-pixel centers): `src = o / s`.
    Asymmetric,
}

impl BilinearMode {
    pub fn for_source(src: &Source) -> BilinearMode {
        match src.keras_version.as_deref() {
            Some(v) if v.ends_with("-tf") => BilinearMode::HalfPixel,
            Some(v) => {
                let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
                let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                if (a, b) >= (2, 4) {
                    BilinearMode::HalfPixel
                } else {
                    BilinearMode::Asymmetric
                }
            }
            None => BilinearMode::Asymmetric,
        }
    }
}

fn escape_component(c: &str) -> String {
    let mut s = String::with_capacity(c.len());
    for ch in c.chars() {
        match ch {
            '%' => s.push_str("%25"),
            '.' => s.push_str("%2E"),
            _ => s.push(ch),
        }
    }
    s
}

fn unescape_component(c: &str) -> Option<String> {
    let mut s = String::with_capacity(c.len());
    let mut rest = c;
    while let Some(i) = rest.find('%') {
        s.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        s.push(match code {
            "25" => '%',
            "2E" => '.',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    s.push_str(rest);
    Some(s)
}

fn components(layer: &str) -> Vec<String> {
    layer.split('/').map(escape_component).collect()
}

/// VarStore name of the weight `slot` of Keras layer `layer`: the layer path's `/`
/// components and the slot, each escaped (`%` -> `%25`, `.` -> `%2E`), joined by `.`.
pub fn var_name(layer: &str, slot: &str) -> String {
    let mut c = components(layer);
    c.push(escape_component(slot));
    c.join(".")
}

/// Inverse of [`var_name`]: `(layer path, slot)`.
pub fn parse_var_name(name: &str) -> Option<(String, String)> {
    let mut parts: Vec<String> = name
        .split('.')
        .map(unescape_component)
        .collect::<Option<_>>()?;
    let slot = parts.pop()?;
    if parts.is_empty() {
        return None;
    }
    Some((parts.join("/"), slot))
}

/// Parse a device name: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto`
/// (`Device::cuda_if_available()`).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Ok(Device::Cuda(0)),
        "auto" => Ok(Device::cuda_if_available()),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Device::Cuda(i)),
            _ => Err(Error::Other(format!(
                "unknown device {s:?}: cpu, cuda, cuda:N or auto"
            ))),
        },
    }
}

/// How a BatchNorm layer behaves in a Keras training step ([`TorchModel::forward_fit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnTrain {
    /// Normalise with the moving statistics and update nothing (tf-keras: a layer whose
    /// `trainable` is false runs in inference mode inside `fit`).
    Inference,
    /// Normalise with the batch mean and biased variance; then, unless `var` is `None`,
    /// `moving = momentum * moving + (1 - momentum) * batch` for the mean and the variance
    /// taken as `var` says.
    Batch { var: Option<BnVar> },
}

/// The batch variance a BatchNorm layer feeds its moving average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnVar {
    /// Biased (divided by n): Keras 2.0.8 on TensorFlow (`tf.nn.moments`), tf-keras's
    /// non-fused path (inputs other than 4-D/5-D with the channel axis first or last).
    Biased,
    /// Bessel-corrected (n / (n - 1)): tf-keras's fused kernel (4-D/5-D inputs).
    Unbiased,
    /// Biased plus epsilon: Keras 2.0.8 on Theano (`normalize_batch_in_training` returns
    /// `1 / stdinv^2`).
    BiasedPlusEps,
    /// tf-keras: `Unbiased` where its fused kernel runs (4-D or 5-D input normalised on
    /// axis 1 or the last axis), `Biased` elsewhere (`tf.nn.moments`).
    TfKeras,
}

/// What [`TorchModel::forward_fit`] needs: every BatchNorm layer's behaviour, by Keras
/// layer path.
#[derive(Debug, Clone, Default)]
pub struct FitSpec {
    pub bn: HashMap<String, BnTrain>,
}

/// Outputs of a training forward pass (Keras layout, in the autograd graph).
pub struct FitOutputs {
    pub outputs: Vec<Tensor>,
    /// Per output: the logits when the output is a softmax (fused into a Conv/Dense or an
    /// `Activation` layer), as Keras's cross-entropy from logits takes them.
    pub logits: Vec<Option<Tensor>>,
}

/// How a pass runs.
#[derive(Clone, Copy)]
pub(crate) enum Mode<'a> {
    /// Inference: moving statistics, no dropout, no gradients.
    Eval,
    /// `forward_t(.., true)`: batch statistics with torch's update, dropout, no gradients.
    Train,
    /// A Keras training step: gradients, dropout, BatchNorm per the spec.
    Fit(&'a FitSpec),
}

/// A tensor and its physical layout (see the module docs).
pub(crate) struct Val {
    pub t: Tensor,
    pub lay: Vec<usize>,
}

/// An IR graph ready to run on libtorch.
pub struct TorchModel {
    pub vs: nn::VarStore,
    /// The graph's structure ([`Graph::structure`]: `params` is empty; the weights live in
    /// `vs`, and their Keras shapes in `param_shapes`).
    pub graph: Graph,
    /// `"{layer}.{slot}"` -> the weight's Keras shape (to give weights back in Keras layout).
    param_shapes: HashMap<String, Vec<usize>>,
    pub same: SameRule,
    pub bilinear: BilinearMode,
    /// Compute precision (`Kind::Float` unless changed with [`TorchModel::with_kind`]).
    pub kind: Kind,
    /// Variable name -> tensor (shallow clones of the VarStore's variables).
    weights: HashMap<String, Tensor>,
    /// Activations in channels-last memory (else contiguous NCHW): see [`memory_format`].
    pub channels_last: bool,
}

/// A row-major f32 tensor copied out of libtorch.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Copy a tensor to the host as f32, row-major.
pub fn to_host(t: &Tensor) -> Result<HostTensor> {
    let t = t
        .f_to(Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_contiguous())
        .map_err(terr("copying to the host"))?;
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let n = t.numel();
    let mut data = vec![0f32; n];
    t.f_copy_data(&mut data, n)
        .map_err(terr("copying to the host"))?;
    Ok(HostTensor { shape, data })
}

/// A host f32 buffer as a tensor of `shape` on `device`.
pub fn from_host(shape: &[usize], data: &[f32], device: Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(Error::Other(format!(
            "shape {shape:?} needs {n} values, got {}",
            data.len()
        )));
    }
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_slice(data)
        .and_then(|t| t.f_reshape(dims.as_slice()))
        .and_then(|t| t.f_to(device))
        .map_err(terr("building a tensor"))
}

impl TorchModel {
    /// Load the graph's weights into a frozen VarStore on `device`.
    pub fn new(graph: &Graph, device: Device) -> Result<TorchModel> {
        Self::build(graph, device, |key| {
            graph.params.get(key).map(Cow::Borrowed)
        })
    }

    /// [`TorchModel::new`] consuming the graph: each weight is dropped once it is a
    /// tensor, so the next one reuses its memory instead of faulting in fresh pages
    /// (full-width model: 136 MB of weights, ~34k page faults fewer on the load).
    pub fn from_graph(mut graph: Graph, device: Device) -> Result<TorchModel> {
        let mut params = std::mem::take(&mut graph.params);
        Self::build(&graph, device, |key| params.remove(key).map(Cow::Owned))
    }

    /// The VarStore from `graph`'s weights, each taken through `param` once.
    fn build<'g>(
        graph: &Graph,
        device: Device,
        mut param: impl FnMut(&str) -> Option<Cow<'g, crate::ir::Tensor>>,
    ) -> Result<TorchModel> {
        let mut vs = nn::VarStore::new(device);
        let mut seen: HashMap<String, ()> = HashMap::new();
        let mut param_shapes = HashMap::new();
        for n in &graph.nodes {
            for slot in n.op.weight_slots() {
                let name = var_name(&n.layer, slot);
                if seen.contains_key(&name) {
                    continue; // shared layer: one set of weights
                }
                let key = n.param_key(slot);
                let p = param(&key).ok_or_else(|| {
                    Error::graph(format!("node {}: missing parameter {key}", n.name))
                })?;
                let torch_layout = ops::to_torch_layout(&n.op, slot, &p)?;
                // A fresh tensor of its own, so it becomes the variable as it is (not
                // `var_copy`'s zero-filled variable and a second copy).
                let t = from_host(&torch_layout.shape, &torch_layout.data, device)?;
                let mut path = vs.root();
                for c in components(&n.layer) {
                    path = path.sub(c);
                }
                let _var = path.add(&escape_component(slot), t, true);
                param_shapes.insert(key, p.shape.clone());
                drop((torch_layout, p));
                seen.insert(name, ());
            }
        }
        vs.freeze();
        let weights = vs.variables();
        let channels_last =
            memory_format::channels_last_pays(graph, |key| param_shapes.get(key).cloned());
        Ok(TorchModel {
            vs,
            graph: graph.structure(),
            param_shapes,
            same: SameRule::for_source(&graph.source),
            bilinear: BilinearMode::for_source(&graph.source),
            kind: Kind::Float,
            weights,
            channels_last,
        })
    }

    /// [`TorchModel::new`] for inference only: strided 1x1 convolutions' sampling moved to
    /// where their input is made ([`crate::passes::subsample_early`]), BatchNormalization
    /// folded into the convolution before it (one pass over each activation fewer; the
    /// moving statistics are gone, so this model does not train).
    /// Takes the graph by value: folding rewrites its kernels where they lie.
    pub fn for_inference(mut graph: Graph, device: Device) -> Result<TorchModel> {
        crate::passes::subsample_early(&mut graph)?;
        crate::passes::fold_batch_norm_in_place(&mut graph)?;
        TorchModel::from_graph(graph, device)
    }

    /// Refuse `input_shape` (Keras layout, batch 1) if its activations would exceed the
    /// `activation-bytes` limit ([`Graph::peak_activation_bytes`] on the graph as it runs
    /// here), before anything is allocated.
    pub fn check_activations(&self, input_shape: &[usize]) -> Result<()> {
        let mut g = self.graph.clone();
        let spatial = g.input_spatial(input_shape);
        g.infer_shapes_with(spatial.as_deref(), |key| {
            self.param_shapes.get(key).cloned()
        })?;
        let (bytes, at) = g.peak_activation_bytes();
        crate::limits::check_activations(bytes, &at, &[input_shape.to_vec()])
    }

    /// Override the `same`-padding rule (e.g. run a Theano-saved model with TensorFlow's
    /// padding, as tf-keras would).
    pub fn with_same_rule(mut self, rule: SameRule) -> TorchModel {
        self.same = rule;
        self
    }

    /// Run in another precision (`Kind::Double` for a float64 reference, `Kind::Half`
    /// on a GPU): converts the VarStore; inputs are converted on the way in.
    pub fn with_kind(mut self, kind: Kind) -> TorchModel {
        self.vs.set_kind(kind);
        self.weights = self.vs.variables();
        self.kind = kind;
        self
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub(crate) fn weight(&self, layer: &str, slot: &str) -> Result<&Tensor> {
        let name = var_name(layer, slot);
        self.weights.get(&name).ok_or_else(|| {
            Error::graph(format!("layer {layer}: no variable {name} in the VarStore"))
        })
    }

    /// The first output for one input (Keras layout in and out, batch included).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_outputs(std::slice::from_ref(x), train)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Other("the model has no output".into()))
    }

    /// Every graph output, Keras layout, for one tensor per graph input.
    pub fn forward_outputs(&self, inputs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let vals = self.execute(inputs, train, false)?;
        self.graph
            .outputs
            .iter()
            .map(|&o| match &vals[o] {
                Some(v) => keras_layout(v),
                None => Err(Error::graph(format!(
                    "output {} was not computed",
                    self.graph.values[o].name
                ))),
            })
            .collect()
    }

    /// Every node's output (inference mode), in node order and Keras layout.
    pub fn forward_all(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.forward_all_inputs(std::slice::from_ref(x))
    }

    /// [`TorchModel::forward_all`] for one tensor per graph input.
    pub fn forward_all_inputs(&self, inputs: &[Tensor]) -> Result<Vec<(String, Tensor)>> {
        let vals = self.execute(inputs, false, true)?;
        self.graph
            .nodes
            .iter()
            .map(|n| match &vals[n.output] {
                Some(v) => Ok((n.name.clone(), keras_layout(v)?)),
                None => Err(Error::graph(format!("node {} was not computed", n.name))),
            })
            .collect()
    }

    /// Every value (inputs included) in Keras layout, indexed by `ValueId`, for one
    /// tensor per graph input (inference mode).
    pub fn forward_values(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let vals = self.execute(inputs, false, true)?;
        vals.iter()
            .map(|v| v.as_ref().map(keras_layout).transpose())
            .collect()
    }

    /// The training-step pass (see [`FitSpec`]): gradients flow to every variable that
    /// requires them; moving statistics are updated in place as the spec says. Outputs
    /// in Keras layout, with the logits of softmax outputs.
    pub fn forward_fit(&self, inputs: &[Tensor], spec: &FitSpec) -> Result<FitOutputs> {
        let mut logits: HashMap<usize, Val> = HashMap::new();
        let vals = self.execute_mode(inputs, Mode::Fit(spec), false, Some(&mut logits))?;
        let mut outputs = Vec::with_capacity(self.graph.outputs.len());
        let mut lg = Vec::with_capacity(self.graph.outputs.len());
        for &o in &self.graph.outputs {
            match &vals[o] {
                Some(v) => outputs.push(keras_layout(v)?),
                None => {
                    return Err(Error::graph(format!(
                        "output {} was not computed",
                        self.graph.values[o].name
                    )))
                }
            }
            lg.push(logits.get(&o).map(keras_layout).transpose()?);
        }
        Ok(FitOutputs {
            outputs,
            logits: lg,
        })
    }

    /// The VarStore variable of weight `slot` of layer `layer` (a handle on the same
    /// storage; torch layout, see the module table).
    pub fn variable(&self, layer: &str, slot: &str) -> Result<Tensor> {
        self.weight(layer, slot).map(Tensor::shallow_clone)
    }

    /// Every weight back in Keras layout, keyed like [`Graph::params`]
    /// (`{layer}.{slot}`): the graph's parameters as the VarStore holds them now (after
    /// training steps, for a checkpoint).
    pub fn keras_params(&self) -> Result<std::collections::BTreeMap<String, crate::ir::Tensor>> {
        let mut out = std::collections::BTreeMap::new();
        for n in &self.graph.nodes {
            for slot in n.op.weight_slots() {
                let key = n.param_key(slot);
                if out.contains_key(&key) {
                    continue;
                }
                let shape = self.param_shapes.get(&key).ok_or_else(|| {
                    Error::graph(format!("node {}: missing parameter {key}", n.name))
                })?;
                let h = to_host(self.weight(&n.layer, slot)?)?;
                let t = crate::ir::Tensor::new(h.shape, h.data)?;
                out.insert(key, ops::from_torch_layout(&n.op, slot, &t, shape)?);
            }
        }
        Ok(out)
    }

    /// The node that owns weight `{layer}.{slot}` and the weight's Keras shape.
    fn weight_node(&self, layer: &str, slot: &str) -> Result<(&crate::ir::Node, &Vec<usize>)> {
        let key = format!("{layer}.{slot}");
        let n = self
            .graph
            .nodes
            .iter()
            .find(|n| n.layer == layer && n.op.weight_slots().contains(&slot))
            .ok_or_else(|| Error::graph(format!("no weight {key} in the graph")))?;
        let shape = self
            .param_shapes
            .get(&key)
            .ok_or_else(|| Error::graph(format!("no parameter {key}")))?;
        Ok((n, shape))
    }

    /// A tensor laid out like weight `{layer}.{slot}` in the VarStore (an optimizer's
    /// moment of it, say) in Keras layout.
    pub fn keras_layout_of(
        &self,
        layer: &str,
        slot: &str,
        t: &Tensor,
    ) -> Result<crate::ir::Tensor> {
        let (n, shape) = self.weight_node(layer, slot)?;
        let h = to_host(t)?;
        let t = crate::ir::Tensor::new(h.shape, h.data)?;
        ops::from_torch_layout(&n.op, slot, &t, shape)
    }

    /// Replace weight `{layer}.{slot}` with a Keras-layout tensor (shape checked): loading a
    /// checkpoint into the live VarStore.
    pub fn set_keras_param(
        &self,
        layer: &str,
        slot: &str,
        value: &crate::ir::Tensor,
    ) -> Result<()> {
        let key = format!("{layer}.{slot}");
        let (n, want) = self.weight_node(layer, slot)?;
        if &value.shape != want {
            return Err(Error::graph(format!(
                "{key}: shape {:?}, the model's is {want:?}",
                value.shape
            )));
        }
        let t = ops::to_torch_layout(&n.op, slot, value)?;
        let src = from_host(&t.shape, &t.data, self.device())?;
        let mut var = self.weight(layer, slot)?.shallow_clone();
        let _guard = tch::no_grad_guard();
        let src = src
            .f_to_kind(var.kind())
            .map_err(terr("loading a weight"))?;
        var.f_copy_(&src).map_err(terr(&format!("loading {key}")))
    }

    /// Convenience: host data in (Keras layout, batch included), host outputs out.
    pub fn run_host(&self, shape: &[usize], data: &[f32]) -> Result<Vec<HostTensor>> {
        let x = from_host(shape, data, self.device())?;
        self.forward_outputs(&[x], false)?
            .iter()
            .map(to_host)
            .collect()
    }

    /// Run the graph; keeps every value when `keep_all`, else frees each value after its
    /// last use.
    pub(crate) fn execute(
        &self,
        inputs: &[Tensor],
        train: bool,
        keep_all: bool,
    ) -> Result<Vec<Option<Val>>> {
        let mode = if train { Mode::Train } else { Mode::Eval };
        self.execute_mode(inputs, mode, keep_all, None)
    }

    /// [`TorchModel::execute`] in any [`Mode`]; without gradients unless `Mode::Fit`. With
    /// `logits`, softmax outputs leave their logits there (by value id).
    pub(crate) fn execute_mode(
        &self,
        inputs: &[Tensor],
        mode: Mode,
        keep_all: bool,
        mut logits: Option<&mut HashMap<usize, Val>>,
    ) -> Result<Vec<Option<Val>>> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(Error::Other(format!(
                "the model has {} input(s), got {}",
                g.inputs.len(),
                inputs.len()
            )));
        }
        let _guard = match mode {
            Mode::Fit(_) => None,
            Mode::Eval | Mode::Train => Some(tch::no_grad_guard()),
        };
        let mut vals: Vec<Option<Val>> = (0..g.values.len()).map(|_| None).collect();
        for (inp, x) in g.inputs.iter().zip(inputs) {
            let rank = inp.shape.len() + 1;
            if x.dim() != rank {
                return Err(Error::Other(format!(
                    "input {}: expected rank {rank} (batch + {:?}), got shape {:?}",
                    inp.name,
                    inp.shape,
                    x.size()
                )));
            }
            let x = x
                .f_to(self.device())
                .and_then(|t| t.f_to_kind(self.kind))
                .map_err(terr("moving the input"))?;
            let lay =
                layout::channels_first_layout(rank, inp.data_format == DataFormat::ChannelsLast);
            // A channels-last input stays in its memory order where that pays
            // ([`memory_format`]): the permuted view has channels-last strides, which
            // libtorch's convolutions keep end to end (oneDNN without a layout reorder per
            // layer). 2-thread full-width model: 600 -> 490 ms.
            let mut t = permute_to(&x, &layout::identity_perm(rank), &lay)?;
            if !self.channels_last {
                t = t.f_contiguous().map_err(terr("contiguous input"))?;
            }
            vals[inp.value] = Some(Val { t, lay });
        }
        // Remaining uses of each value, to free activations early.
        let mut uses = vec![0usize; g.values.len()];
        for n in &g.nodes {
            for &v in &n.inputs {
                uses[v] += 1;
            }
        }
        for &o in &g.outputs {
            uses[o] += 1;
        }
        // Values whose storage is theirs alone (ops::returns_new_storage): in inference, an
        // element-wise op on such a value's last use overwrites it.
        let mut own_storage = vec![false; g.values.len()];
        let may_reuse = matches!(mode, Mode::Eval) && !keep_all;
        let fit = matches!(mode, Mode::Fit(_));
        // A residual add whose only reader is a ReLU runs as one fused pass (no value in
        // between is ever seen, so only in inference without `keep_all`).
        let absorbed_relu = if may_reuse {
            ops::relus_after_adds(g, &uses)
        } else {
            vec![None; g.nodes.len()]
        };
        let mut add_then_relu = vec![false; g.nodes.len()];
        for &a in absorbed_relu.iter().flatten() {
            add_then_relu[a] = true;
        }
        for (i, n) in g.nodes.iter().enumerate() {
            let reuse_first = n
                .inputs
                .first()
                .is_some_and(|&v| uses[v] == 1 && own_storage[v])
                && (may_reuse || (fit && !keep_all && ops::relu_in_place_keeps_gradients(g, n)));
            let name = |e: Error| match e {
                Error::Graph(m) if !m.contains(&n.name) => {
                    Error::graph(format!("node {} ({}): {m}", n.name, n.class))
                }
                Error::Other(m) => Error::Other(format!("node {} ({}): {m}", n.name, n.class)),
                e => e,
            };
            let sink = match logits.as_deref_mut() {
                Some(s) if g.outputs.contains(&n.output) => Some(s),
                _ => None,
            };
            let out = match sink {
                // The add before it already applied this ReLU.
                None if absorbed_relu[i].is_some() => match n.inputs.as_slice() {
                    [v] => vals[*v].as_ref().map(|x| Val {
                        t: x.t.shallow_clone(),
                        lay: x.lay.clone(),
                    }),
                    _ => None,
                }
                .ok_or_else(|| Error::graph(format!("node {}: fused input missing", n.name)))?,
                None if add_then_relu[i] => {
                    ops::add_relu(self, &vals, n, reuse_first).map_err(name)?
                }
                None => ops::run_node(self, &vals, n, mode, reuse_first).map_err(name)?,
                Some(sink) => match ops::split_softmax(&n.op) {
                    // Softmax fused into a Conv/Dense: run it linear, keep the logits.
                    Some((lin, act)) => {
                        let lin_node = Node {
                            op: lin,
                            ..n.clone()
                        };
                        let z = ops::run_node(self, &vals, &lin_node, mode, false).map_err(name)?;
                        let t = ops::activation(&z.t, &act, &z.lay).map_err(name)?;
                        let lay = z.lay.clone();
                        sink.insert(n.output, z);
                        Val { t, lay }
                    }
                    None => {
                        let out = ops::run_node(self, &vals, n, mode, false).map_err(name)?;
                        if let (
                            crate::ir::Op::Activation(crate::ir::Activation::Softmax { .. }),
                            [v],
                        ) = (&n.op, n.inputs.as_slice())
                        {
                            if let Some(z) = &vals[*v] {
                                sink.insert(
                                    n.output,
                                    Val {
                                        t: z.t.shallow_clone(),
                                        lay: z.lay.clone(),
                                    },
                                );
                            }
                        }
                        out
                    }
                },
            };
            vals[n.output] = Some(out);
            own_storage[n.output] = ops::returns_new_storage(n);
            if !keep_all {
                for &v in &n.inputs {
                    uses[v] -= 1;
                    if uses[v] == 0 && matches!(g.values[v].producer, Producer::Node(_)) {
                        vals[v] = None;
                    }
                }
            }
        }
        Ok(vals)
    }
}

/// Permute a tensor stored as `from` to `to` (a view; no copy when they agree).
pub(crate) fn permute_to(t: &Tensor, from: &[usize], to: &[usize]) -> Result<Tensor> {
    match layout::transpose_between(from, to) {
        None => Ok(t.shallow_clone()),
        Some(p) => {
            let p: Vec<i64> = p.iter().map(|&a| a as i64).collect();
            t.f_permute(p.as_slice()).map_err(terr("permute"))
        }
    }
}

/// A value in Keras layout, contiguous.
pub(crate) fn keras_layout(v: &Val) -> Result<Tensor> {
    permute_to(&v.t, &v.lay, &layout::identity_perm(v.lay.len()))?
        .f_contiguous()
        .map_err(terr("contiguous"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_names_round_trip() {
        for (layer, slot) in [
            ("conv1", "kernel"),
            ("model_1/conv1", "bias"),
            ("block1_conv1/kernel.0", "kernel"),
            ("a%2E.b/c", "moving_mean"),
            ("%", "gamma"),
        ] {
            let n = var_name(layer, slot);
            assert_eq!(
                parse_var_name(&n),
                Some((layer.to_string(), slot.to_string())),
                "{n}"
            );
        }
        assert_eq!(var_name("model_1/conv1", "kernel"), "model_1.conv1.kernel");
        assert_eq!(var_name("bn.1", "beta"), "bn%2E1.beta");
        assert_eq!(parse_var_name("x.%zz.kernel"), None);
    }

    #[test]
    fn devices() {
        assert_eq!(parse_device("cpu").ok(), Some(Device::Cpu));
        assert_eq!(parse_device("cuda:1").ok(), Some(Device::Cuda(1)));
        assert!(parse_device("tpu").is_err());
    }
}
