//! The graph: values, nodes in topological order, named parameters, and the Keras layer
//! table that `inspect` and the `.h5` writer need.

use super::op::*;
use super::shape::*;
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// A dense f32 tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let n = checked_product(&shape).ok_or_else(|| {
            Error::graph(format!(
                "tensor of shape {shape:?}: the value count overflows"
            ))
        })?;
        if n != data.len() {
            return Err(Error::graph(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

pub type ValueId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Producer {
    Input(usize),
    Node(usize),
}

#[derive(Debug, Clone, Serialize)]
pub struct Value {
    pub name: String,
    pub producer: Producer,
    /// Filled by [`Graph::infer_shapes`]; excludes the batch axis.
    pub shape: Shape,
}

#[derive(Debug, Clone, Serialize)]
pub struct GraphInput {
    pub name: String,
    pub value: ValueId,
    /// Declared shape without the batch axis; unknown spatial dims are symbols.
    pub shape: Shape,
    pub data_format: DataFormat,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Unique node name: the Keras layer path, plus `:k` for the k-th call of a shared layer.
    pub name: String,
    /// The Keras layer path whose weights this node uses (`model_1/conv1`).
    pub layer: String,
    /// The Keras class it came from (`Conv2D`, `Convolution2D`...).
    pub class: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

impl Node {
    pub fn param_key(&self, slot: &str) -> String {
        format!("{}.{slot}", self.layer)
    }
}

/// One Keras layer as the source file lists it, for tables and for writing `.h5` back.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRecord {
    pub path: String,
    pub class: String,
    /// 0 for top-level layers, n for layers inside n nested models.
    pub depth: usize,
    /// Whether it trains: its own flag and every nested model's around it.
    pub trainable: bool,
    /// Its own `trainable` flag in the file.
    pub own_trainable: bool,
    /// The value this layer produced on its first call (for a nested model: its output).
    pub output: Option<ValueId>,
    /// Weight slots present in the file for this layer, in storage order.
    pub weights: Vec<String>,
}

/// Where the graph came from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Source {
    pub file: String,
    pub keras_version: Option<String>,
    pub backend: Option<String>,
    pub dialect: String,
    pub model_class: String,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub model_config: Option<String>, // the model_config JSON text as read, for the .h5 writer
}

/// How `padding="same"` was computed by the backend that trained the model: backends
/// lower `Padding::Same` with the rule of the model's source so a converted model computes
/// what it computed in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameRule {
    /// TensorFlow: total = max((ceil(n/s)-1)*s + k_eff - n, 0), the odd pixel
    /// bottom/right; average pooling divides by real pixels only.
    TensorFlow,
    /// Theano (Keras 1 and 2): convs use `border_mode="half"` (k_eff//2 before), pools pad
    /// `k-2` (odd k > 2) or `k-1` before; the result is cropped to ceil(n/s).
    /// `avg_include_pad`: Keras 2's Theano backend uses `average_inc_pad` for `same`,
    /// Keras 1 `average_exc_pad`.
    Theano { avg_include_pad: bool },
}

impl SameRule {
    /// From the graph's recorded source (backend and Keras version).
    pub fn for_source(src: &Source) -> SameRule {
        match src.backend.as_deref() {
            Some("theano") => SameRule::Theano {
                avg_include_pad: !src
                    .keras_version
                    .as_deref()
                    .is_some_and(|v| v.starts_with('1')),
            },
            _ => SameRule::TensorFlow,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub inputs: Vec<GraphInput>,
    pub outputs: Vec<ValueId>,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    /// `"{layer}.{slot}"` -> tensor, Keras layout.
    pub params: BTreeMap<String, Tensor>,
    pub layers: Vec<LayerRecord>,
    pub source: Source,
}

impl Graph {
    pub fn add_input(&mut self, name: &str, shape: Shape, data_format: DataFormat) -> ValueId {
        let value = self.values.len();
        self.values.push(Value {
            name: name.to_string(),
            producer: Producer::Input(self.inputs.len()),
            shape: shape.clone(),
        });
        self.inputs.push(GraphInput {
            name: name.to_string(),
            value,
            shape,
            data_format,
        });
        value
    }

    pub fn add_node(
        &mut self,
        name: String,
        layer: String,
        class: String,
        op: Op,
        inputs: Vec<ValueId>,
    ) -> ValueId {
        let output = self.values.len();
        self.values.push(Value {
            name: name.clone(),
            producer: Producer::Node(self.nodes.len()),
            shape: vec![],
        });
        self.nodes.push(Node {
            name,
            layer,
            class,
            op,
            inputs,
            output,
        });
        output
    }

    /// A copy of everything but the weights (`params` left empty): for a runtime that
    /// keeps the weights in its own storage and needs only the structure.
    pub fn structure(&self) -> Graph {
        // Destructured in full, so that a new field is a compile error here, not a loss.
        let Graph {
            name,
            inputs,
            outputs,
            values,
            nodes,
            params: _,
            layers,
            source,
        } = self;
        Graph {
            name: name.clone(),
            inputs: inputs.clone(),
            outputs: outputs.clone(),
            values: values.clone(),
            nodes: nodes.clone(),
            params: BTreeMap::new(),
            layers: layers.clone(),
            source: source.clone(),
        }
    }

    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Parameters of one Keras layer (shared layers count once, as in Keras).
    pub fn layer_params(&self, path: &str) -> usize {
        let prefix = format!("{path}.");
        let nested = format!("{path}/");
        self.params
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) || k.starts_with(&nested))
            .map(|(_, t)| t.len())
            .sum()
    }

    /// The most activation memory (f32, batch 1) live at once when the nodes run in order,
    /// from the shapes [`Graph::infer_shapes`] filled: a value lives from its producer to
    /// its last consumer (graph outputs to the end), inputs included. Returns the bytes and
    /// the node at the peak; a symbolic dimension counts as 0. The same estimate as
    /// tract's plan (`runtime::tract::peak_activation_bytes`), for runtimes without one.
    pub fn peak_activation_bytes(&self) -> (u64, String) {
        let bytes = |v: ValueId| {
            self.values[v]
                .shape
                .iter()
                .map(|d| d.known().map_or(0, |n| n as u128))
                .fold(4u128, u128::saturating_mul)
        };
        let mut last_use = vec![None; self.values.len()];
        for (step, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                last_use[v] = Some(step);
            }
        }
        for &o in &self.outputs {
            last_use[o] = Some(usize::MAX);
        }
        let mut freed_after = vec![0u128; self.nodes.len()];
        let mut live: u128 = self.inputs.iter().map(|i| bytes(i.value)).sum();
        let mut peak = (live, String::from("input"));
        for (step, n) in self.nodes.iter().enumerate() {
            live = live.saturating_add(bytes(n.output));
            if live > peak.0 {
                peak = (live, n.name.clone());
            }
            for v in n.inputs.iter().copied().chain([n.output]) {
                if last_use[v].map_or(v == n.output, |l| l == step) {
                    freed_after[step] = freed_after[step].saturating_add(bytes(v));
                    last_use[v] = None; // counted once, even if used twice by this node
                }
            }
            live -= freed_after[step].min(live);
        }
        (peak.0.min(u64::MAX as u128) as u64, peak.1)
    }

    /// Total parameters, equal to Keras's `count_params()`.
    pub fn total_params(&self) -> usize {
        self.params.values().map(Tensor::len).sum()
    }

    /// The spatial size of a Keras-layout batch `shape` fed to the first input.
    pub fn input_spatial(&self, shape: &[usize]) -> Option<Vec<usize>> {
        let inp = self.inputs.first()?;
        if shape.len() < 3 {
            return None;
        }
        Some(match inp.data_format {
            DataFormat::ChannelsLast => shape[1..shape.len() - 1].to_vec(),
            DataFormat::ChannelsFirst => shape[2..].to_vec(),
        })
    }

    /// Set the spatial size of every 4-D input (rank-3 inputs: the length), then infer
    /// every value's shape. `None` keeps the declared sizes (symbols where unknown).
    pub fn infer_shapes(&mut self, spatial: Option<&[usize]>) -> Result<()> {
        let params = std::mem::take(&mut self.params);
        let r = self.infer_shapes_with(spatial, |key| params.get(key).map(|t| t.shape.clone()));
        self.params = params;
        r
    }

    /// [`Graph::infer_shapes`] with the weights' shapes from `param_shape` (keyed by
    /// [`Node::param_key`]), for a graph whose weights live elsewhere ([`Graph::structure`]).
    pub fn infer_shapes_with(
        &mut self,
        spatial: Option<&[usize]>,
        param_shape: impl Fn(&str) -> Option<Vec<usize>>,
    ) -> Result<()> {
        for i in 0..self.inputs.len() {
            let input = &self.inputs[i];
            let mut shape = input.shape.clone();
            if let Some(size) = spatial {
                let (sp, c) = split_channels(&shape, input.data_format)?;
                if sp.len() != size.len() {
                    return Err(Error::graph(format!(
                        "input {} has {} spatial dims, the size given has {}",
                        input.name,
                        sp.len(),
                        size.len()
                    )));
                }
                shape = join_channels(
                    size.iter().map(|&n| Dim::Known(n)).collect(),
                    c,
                    input.data_format,
                );
            }
            check_shape(&shape)
                .map_err(|e| Error::graph(format!("input {}: {}", input.name, e.message())))?;
            let v = input.value;
            self.values[v].shape = shape;
        }
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let ins: Vec<&Shape> = node.inputs.iter().map(|&v| &self.values[v].shape).collect();
            let shape = infer_op(&node.op, &ins, |slot| param_shape(&node.param_key(slot)))
                .map_err(|e| Error::graph(format!("node {} ({}): {e}", node.name, node.class)))?;
            let out = node.output;
            self.values[out].shape = shape;
        }
        Ok(())
    }
}

fn one<'a>(ins: &[&'a Shape]) -> Result<&'a Shape> {
    match ins {
        [s] => Ok(s),
        _ => Err(Error::graph(format!("expects 1 input, got {}", ins.len()))),
    }
}

fn channels_of(c: &Dim) -> Result<usize> {
    c.known()
        .ok_or_else(|| Error::graph("the channel dimension must be known"))
}

/// Every size in an op's config (they come from files) at most [`MAX_DIM`], named by its
/// Keras config key, and each dilated window representable. Run before any arithmetic on
/// them: by [`infer_op`], and by the Keras reader before it looks at the layer's weights.
pub fn check_op_sizes(op: &Op) -> Result<()> {
    fn each(key: &str, v: &[usize]) -> Result<()> {
        v.iter().try_for_each(|&n| check_dim(key, n).map(drop))
    }
    fn windows(k: &[usize], d: &[usize]) -> Result<()> {
        k.iter()
            .zip(d)
            .try_for_each(|(&k, &d)| dilated_window(k.max(1), d.max(1)).map(drop))
    }
    match op {
        Op::Conv(c) => {
            check_dim("filters", c.filters)?;
            each("kernel_size", &c.kernel)?;
            each("strides", &c.strides)?;
            each("dilation_rate", &c.dilation)?;
            windows(&c.kernel, &c.dilation)
        }
        Op::DepthwiseConv(c) => {
            check_dim("depth_multiplier", c.depth_multiplier)?;
            if let Some(f) = c.pointwise_filters {
                check_dim("filters", f)?;
            }
            each("kernel_size", &c.kernel)?;
            each("strides", &c.strides)?;
            each("dilation_rate", &c.dilation)?;
            windows(&c.kernel, &c.dilation)
        }
        Op::Dense(c) => check_dim("units", c.units).map(drop),
        Op::Pool(p) => {
            each("pool_size", &p.pool)?;
            each("strides", &p.strides)
        }
        Op::ZeroPadding(e) | Op::Cropping(e) => {
            let key = if matches!(op, Op::ZeroPadding(_)) {
                "padding"
            } else {
                "cropping"
            };
            for &(a, b) in &e.edges {
                check_dim(key, a)?;
                check_dim(key, b)?;
            }
            Ok(())
        }
        Op::UpSampling(u) => each("size", &u.size),
        Op::Reshape { target } => {
            let fixed: Vec<usize> = target
                .iter()
                .filter(|&&t| t > 0)
                .map(|&t| t as usize)
                .collect();
            each("target_shape", &fixed)?;
            if checked_product(&fixed).is_none() {
                return Err(Error::graph(format!(
                    "target_shape {target:?} holds more values than a 64-bit count"
                )));
            }
            Ok(())
        }
        Op::RepeatVector { n } => check_dim("n", *n).map(drop),
        Op::BatchNorm(_)
        | Op::Activation(_)
        | Op::PRelu { .. }
        | Op::Dropout { .. }
        | Op::Flatten
        | Op::Permute { .. }
        | Op::GlobalPool(_)
        | Op::Merge(_)
        | Op::Concatenate { .. } => Ok(()),
    }
}

/// Output shape of one op. `weight` gives a parameter's shape by slot (used to check
/// that channels agree with the stored kernels). The op's sizes are checked first
/// ([`check_op_sizes`]) and the result is a checked shape ([`check_shape`]): no size
/// arithmetic here can overflow.
pub fn infer_op(
    op: &Op,
    ins: &[&Shape],
    weight: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<Shape> {
    check_op_sizes(op)?;
    let out = infer_op_unchecked(op, ins, weight)?;
    check_shape(&out)?;
    Ok(out)
}

fn infer_op_unchecked(
    op: &Op,
    ins: &[&Shape],
    weight: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<Shape> {
    let spatial_window = |x: &Shape,
                          fmt: DataFormat,
                          k: &[usize],
                          s: &[usize],
                          d: &[usize],
                          p: Padding|
     -> Result<(Vec<Dim>, Dim)> {
        let (sp, c) = split_channels(x, fmt)?;
        if sp.len() != k.len() || s.len() != k.len() || d.len() != k.len() {
            return Err(Error::graph(format!(
                "window {k:?} (strides {s:?}, dilation {d:?}) on an input with {} spatial dims",
                sp.len()
            )));
        }
        let out = sp
            .iter()
            .enumerate()
            .map(|(i, dim)| dim.window(k[i], s[i], d[i], p))
            .collect::<Result<Vec<_>>>()?;
        Ok((out, c))
    };
    let check_in = |slot: &str, axis_from_end: usize, c: &Dim| -> Result<()> {
        if let (Some(w), Some(c)) = (weight(slot), c.known()) {
            let Some(&got) = w.len().checked_sub(axis_from_end).and_then(|i| w.get(i)) else {
                return Err(Error::graph(format!(
                    "{slot} of shape {w:?} has too few axes"
                )));
            };
            if got != c {
                return Err(Error::graph(format!(
                    "{slot} expects {got} input channels, the input has {c}"
                )));
            }
        }
        Ok(())
    };
    match op {
        Op::Conv(c) => {
            let x = one(ins)?;
            let (sp, ch) = spatial_window(
                x,
                c.data_format,
                &c.kernel,
                &c.strides,
                &c.dilation,
                c.padding,
            )?;
            check_in("kernel", 2, &ch)?;
            Ok(join_channels(sp, Dim::Known(c.filters), c.data_format))
        }
        Op::DepthwiseConv(c) => {
            let x = one(ins)?;
            let (sp, ch) = spatial_window(
                x,
                c.data_format,
                &c.kernel,
                &c.strides,
                &c.dilation,
                c.padding,
            )?;
            check_in("depthwise_kernel", 2, &ch)?;
            let out = match c.pointwise_filters {
                Some(f) => f,
                None => channels_of(&ch)?
                    .checked_mul(c.depth_multiplier)
                    .ok_or_else(|| {
                        Error::graph(format!(
                            "{} channels x depth_multiplier {} overflows",
                            ch, c.depth_multiplier
                        ))
                    })?,
            };
            Ok(join_channels(sp, Dim::Known(out), c.data_format))
        }
        Op::Dense(c) => {
            let x = one(ins)?;
            let last = x
                .last()
                .ok_or_else(|| Error::graph("Dense needs at least a feature axis"))?;
            check_in("kernel", 2, last)?;
            let mut out = x.clone();
            let n = out.len();
            out[n - 1] = Dim::Known(c.units);
            Ok(out)
        }
        Op::BatchNorm(c) => {
            let x = one(ins)?;
            if c.axis == 0 || c.axis > x.len() {
                return Err(Error::graph(format!(
                    "axis {} out of range for rank {}",
                    c.axis,
                    x.len() + 1
                )));
            }
            check_in("moving_mean", 1, &x[c.axis - 1])?;
            Ok(x.clone())
        }
        Op::Activation(a) => {
            let x = one(ins)?;
            if let Activation::Softmax { axis } = a {
                let rank = x.len() as i64 + 1;
                if *axis >= rank || *axis < -rank || *axis == 0 || *axis == -rank {
                    return Err(Error::graph(format!(
                        "softmax axis {axis} invalid for rank {rank}"
                    )));
                }
            }
            Ok(x.clone())
        }
        Op::PRelu { .. } | Op::Dropout { .. } => Ok(one(ins)?.clone()),
        Op::Flatten => {
            let x = one(ins)?;
            Ok(vec![match num_elements(x)? {
                Some(n) => Dim::Known(n),
                None => Dim::Sym(
                    x.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("*"),
                ),
            }])
        }
        Op::Reshape { target } => {
            let x = one(ins)?;
            let unknown = target.iter().filter(|&&t| t == -1).count();
            if unknown > 1 || target.iter().any(|&t| t < -1 || t == 0) {
                return Err(Error::graph(format!("invalid target shape {target:?}")));
            }
            let positive: Vec<usize> = target
                .iter()
                .filter(|&&t| t > 0)
                .map(|&t| t as usize)
                .collect();
            let fixed = checked_product(&positive).ok_or_else(|| {
                Error::graph(format!(
                    "target_shape {target:?} holds more values than a 64-bit count"
                ))
            })?;
            let total = num_elements(x)?;
            let mut out = Vec::new();
            for &t in target {
                out.push(if t > 0 {
                    Dim::Known(t as usize)
                } else {
                    match total {
                        Some(n) if fixed > 0 && n % fixed == 0 => Dim::Known(n / fixed),
                        Some(n) => {
                            return Err(Error::graph(format!(
                                "cannot reshape {n} values into {target:?}"
                            )))
                        }
                        None => Dim::sym("?"),
                    }
                });
            }
            if unknown == 0 {
                if let Some(n) = total {
                    if n != fixed {
                        return Err(Error::graph(format!(
                            "cannot reshape {n} values into {target:?}"
                        )));
                    }
                }
            }
            Ok(out)
        }
        Op::Permute { dims } => {
            let x = one(ins)?;
            let mut sorted = dims.clone();
            sorted.sort();
            if sorted != (1..=x.len()).collect::<Vec<_>>() {
                return Err(Error::graph(format!(
                    "{dims:?} is not a permutation of the {} non-batch axes",
                    x.len()
                )));
            }
            Ok(dims.iter().map(|&d| x[d - 1].clone()).collect())
        }
        Op::ZeroPadding(e) | Op::Cropping(e) => {
            let x = one(ins)?;
            let (sp, c) = split_channels(x, e.data_format)?;
            if sp.len() != e.edges.len() {
                return Err(Error::graph("padding rank does not match the input"));
            }
            let pad = matches!(op, Op::ZeroPadding(_));
            let sp = sp
                .iter()
                .zip(&e.edges)
                .map(|(d, &(a, b))| {
                    let both = a
                        .checked_add(b)
                        .ok_or_else(|| Error::graph(format!("edges {a} + {b} overflow")))?;
                    if pad {
                        d.add(both)
                    } else {
                        d.sub(both)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(join_channels(sp, c, e.data_format))
        }
        Op::UpSampling(u) => {
            let x = one(ins)?;
            let (sp, c) = split_channels(x, u.data_format)?;
            if sp.len() != u.size.len() {
                return Err(Error::graph("upsampling rank does not match the input"));
            }
            let sp = sp
                .iter()
                .zip(&u.size)
                .map(|(d, &f)| d.mul(f))
                .collect::<Result<Vec<_>>>()?;
            Ok(join_channels(sp, c, u.data_format))
        }
        Op::Pool(p) => {
            let x = one(ins)?;
            let ones = vec![1; p.pool.len()];
            let (sp, c) = spatial_window(x, p.data_format, &p.pool, &p.strides, &ones, p.padding)?;
            Ok(join_channels(sp, c, p.data_format))
        }
        Op::GlobalPool(g) => {
            let x = one(ins)?;
            let (sp, c) = split_channels(x, g.data_format)?;
            if sp.len() != g.rank {
                return Err(Error::graph(format!(
                    "global pooling of rank {} on rank {} input",
                    g.rank,
                    sp.len()
                )));
            }
            Ok(if g.keepdims {
                join_channels(vec![Dim::Known(1); g.rank], c, g.data_format)
            } else {
                vec![c]
            })
        }
        Op::Merge(kind) => {
            if ins.len() < 2 || (*kind == MergeKind::Subtract && ins.len() != 2) {
                return Err(Error::graph(format!("{kind:?} got {} inputs", ins.len())));
            }
            broadcast_all(ins)
        }
        Op::Concatenate { axis } => {
            let first = ins
                .first()
                .ok_or_else(|| Error::graph("Concatenate needs inputs"))?;
            if *axis == 0 || *axis > first.len() {
                return Err(Error::graph(format!("concat axis {axis} out of range")));
            }
            let a = axis - 1;
            let mut out = (*first).clone();
            for s in &ins[1..] {
                if s.len() != first.len() {
                    return Err(Error::graph("Concatenate inputs differ in rank"));
                }
                for (i, (d, e)) in out.iter().zip(s.iter()).enumerate() {
                    if i != a && d.known().is_some() && e.known().is_some() && d != e {
                        return Err(Error::graph(format!(
                            "Concatenate inputs differ on axis {}",
                            i + 1
                        )));
                    }
                }
                out[a] = match (&out[a], &s[a]) {
                    (Dim::Known(x), Dim::Known(y)) => Dim::Known(check_dim(
                        "dimension",
                        x.checked_add(*y).ok_or_else(|| {
                            Error::graph(format!("Concatenate: {x} + {y} overflows"))
                        })?,
                    )?),
                    (x, y) => Dim::Sym(format!("{x}+{y}")),
                };
            }
            Ok(out)
        }
        Op::RepeatVector { n } => {
            let x = one(ins)?;
            if x.len() != 1 {
                return Err(Error::graph("RepeatVector needs a 2-D input"));
            }
            Ok(vec![Dim::Known(*n), x[0].clone()])
        }
    }
}

/// Keras merge layers broadcast like numpy on the non-batch axes.
fn broadcast_all(ins: &[&Shape]) -> Result<Shape> {
    let rank = ins.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::Known(1); rank];
    for s in ins {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            *o = match (&*o, d) {
                (Dim::Known(1), x) => x.clone(),
                (x, Dim::Known(1)) => x.clone(),
                (Dim::Known(a), Dim::Known(b)) if a == b => Dim::Known(*a),
                (Dim::Known(a), Dim::Known(b)) => {
                    return Err(Error::graph(format!(
                        "merge inputs have incompatible dims {a} and {b}"
                    )))
                }
                (Dim::Sym(_), x) | (x, Dim::Sym(_)) if x.known().is_none() => d.clone(),
                (Dim::Sym(_), known) | (known, Dim::Sym(_)) => known.clone(),
            };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 62;

    fn known(dims: &[usize]) -> Shape {
        dims.iter().map(|&d| Dim::Known(d)).collect()
    }

    fn infer(op: Op, ins: &[Shape]) -> Result<Shape> {
        let refs: Vec<&Shape> = ins.iter().collect();
        infer_op(&op, &refs, |_| None)
    }

    fn conv(kernel: usize, strides: usize, dilation: usize) -> Op {
        Op::Conv(ConvConfig::square(kernel, strides, dilation))
    }

    /// Activation bytes live at once: a value lives from its node to its last consumer,
    /// graph outputs to the end. in(1000) -> a -> b, c = a + b: the peak is at `c`, with
    /// `a`, `b` and `c` live (`in` freed after `a`): 3 x 4000 bytes.
    #[test]
    fn peak_activation_bytes_follows_lifetimes() {
        let mut g = Graph::default();
        let x = g.add_input("in", known(&[1000]), DataFormat::ChannelsLast);
        let relu = || Op::Activation(Activation::RELU);
        let node = |g: &mut Graph, name: &str, op: Op, ins: Vec<ValueId>| {
            g.add_node(name.into(), name.into(), "Test".into(), op, ins)
        };
        let a = node(&mut g, "a", relu(), vec![x]);
        let b = node(&mut g, "b", relu(), vec![a]);
        let c = node(&mut g, "c", Op::Merge(MergeKind::Add), vec![a, b]);
        let d = node(&mut g, "d", relu(), vec![c]);
        g.outputs = vec![d];
        g.infer_shapes(None).unwrap();
        assert_eq!(g.peak_activation_bytes(), (12000, "c".to_string()));
        // A symbolic size counts as nothing (unknown until a size is given).
        g.inputs[0].shape = vec![Dim::sym("n")];
        g.infer_shapes(None).unwrap();
        assert_eq!(g.peak_activation_bytes().0, 0);
    }

    /// Every size-carrying op with a size from a hostile config: an error naming the
    /// config key, never a panic (old code: overflow panics, or silent acceptance).
    #[test]
    fn hostile_sizes_are_errors_not_panics() {
        let x = known(&[6, 6, 3]);
        let err = |op: Op, ins: &[Shape]| match infer(op, ins) {
            Ok(s) => panic!("accepted, shape {s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err(conv(3, 1, BIG), &[x.clone()]).contains("dilation_rate"));
        assert!(err(conv(3, BIG, 1), &[x.clone()]).contains("strides"));
        assert!(err(conv(BIG, 1, 1), &[x.clone()]).contains("kernel_size"));
        // Each size in bounds, the dilated window not.
        assert!(err(conv(1 << 16, 1, 1 << 16), &[x.clone()]).contains("dilated"));
        let pool = Op::Pool(PoolConfig {
            kind: PoolKind::Max,
            pool: vec![BIG; 2],
            strides: vec![BIG; 2],
            padding: Padding::Same,
            data_format: DataFormat::ChannelsLast,
        });
        assert!(err(pool, &[x.clone()]).contains("pool_size"));
        let dense = Op::Dense(DenseConfig {
            units: BIG,
            use_bias: true,
            activation: Activation::Linear,
        });
        assert!(err(dense, &[known(&[4])]).contains("units"));
        let depthwise = |m: usize| {
            Op::DepthwiseConv(DepthwiseConfig {
                depth_multiplier: m,
                pointwise_filters: None,
                kernel: vec![3, 3],
                strides: vec![1, 1],
                dilation: vec![1, 1],
                padding: Padding::Same,
                data_format: DataFormat::ChannelsLast,
                use_bias: false,
                activation: Activation::Linear,
            })
        };
        assert!(err(depthwise(1 << 63), &[x.clone()]).contains("depth_multiplier"));
        // In bounds, but channels x multiplier is not.
        assert!(err(depthwise(1 << 30), &[known(&[6, 6, 4])]).contains("larger than"));
        let edges = |e: usize| SpatialEdges {
            edges: vec![(e, e), (1, 1)],
            data_format: DataFormat::ChannelsLast,
        };
        assert!(err(Op::ZeroPadding(edges(1 << 63)), &[x.clone()]).contains("padding"));
        assert!(err(Op::ZeroPadding(edges(1 << 30)), &[x.clone()]).contains("larger than"));
        assert!(err(Op::Cropping(edges(1 << 63)), &[x.clone()]).contains("cropping"));
        let up = |f: usize| {
            Op::UpSampling(UpSamplingConfig {
                size: vec![f, 1],
                data_format: DataFormat::ChannelsLast,
                interpolation: Interpolation::Nearest,
            })
        };
        assert!(err(up(BIG), &[x.clone()]).contains("size"));
        assert!(err(up(1 << 30), &[x.clone()]).contains("larger than"));
        let reshape = Op::Reshape {
            target: vec![1 << 30, 1 << 30, 1 << 30, -1],
        };
        assert!(err(reshape, &[known(&[2])]).contains("target_shape"));
        assert!(err(Op::RepeatVector { n: 1 << 63 }, &[known(&[2])]).contains("n "));
        // Flatten and Concatenate of in-bounds shapes whose result is not.
        assert!(err(Op::Flatten, &[known(&[1 << 30, 1 << 30, 4])]).contains("larger than"));
        assert!(err(Op::Flatten, &[known(&[1 << 31, 1 << 31, 4])]).contains("64-bit"));
        let half = known(&[MAX_DIM, 2]);
        assert!(err(Op::Concatenate { axis: 1 }, &[half.clone(), half]).contains("larger than"));
    }

    #[test]
    fn ordinary_sizes_still_infer() {
        let x = known(&[6, 6, 3]);
        assert_eq!(
            infer(conv(3, 2, 1), &[x.clone()]).unwrap(),
            known(&[3, 3, 2])
        );
        assert_eq!(infer(Op::Flatten, &[x.clone()]).unwrap(), known(&[108]));
        let r = Op::Reshape {
            target: vec![-1, 9],
        };
        assert_eq!(infer(r, &[known(&[108])]).unwrap(), known(&[12, 9]));
    }

    #[test]
    fn tensor_and_input_sizes_are_checked() {
        assert!(Tensor::new(vec![1 << 32, 1 << 32, 2], vec![]).is_err());
        let mut g = Graph::default();
        g.add_input(
            "img",
            vec![Dim::sym("H"), Dim::sym("W"), Dim::Known(3)],
            DataFormat::ChannelsLast,
        );
        // --input-size is a size from the command line: bounded like the file's.
        let e = g
            .infer_shapes(Some(&[1usize << 40, 8][..]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("input img") && e.contains("larger than"), "{e}");
        assert!(g.infer_shapes(Some(&[8usize, 8][..])).is_ok());
    }
}
