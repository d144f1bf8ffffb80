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
        let n: usize = shape.iter().product();
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
    pub trainable: bool,
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

    /// Total parameters, equal to Keras's `count_params()`.
    pub fn total_params(&self) -> usize {
        self.params.values().map(Tensor::len).sum()
    }

    /// Set the spatial size of every 4-D input (rank-3 inputs: the length), then infer
    /// every value's shape. `None` keeps the declared sizes (symbols where unknown).
    pub fn infer_shapes(&mut self, spatial: Option<&[usize]>) -> Result<()> {
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
            let v = input.value;
            self.values[v].shape = shape;
        }
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let ins: Vec<&Shape> = node.inputs.iter().map(|&v| &self.values[v].shape).collect();
            let shape = infer_op(&node.op, &ins, |slot| {
                self.params
                    .get(&node.param_key(slot))
                    .map(|t| t.shape.clone())
            })
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

/// Output shape of one op. `weight` gives a parameter's shape by slot (used to check
/// that channels agree with the stored kernels).
pub fn infer_op(
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
        if sp.len() != k.len() {
            return Err(Error::graph(format!(
                "kernel of rank {} on an input with {} spatial dims",
                k.len(),
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
            let got = w[w.len() - axis_from_end];
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
                None => channels_of(&ch)? * c.depth_multiplier,
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
            Ok(vec![match num_elements(x) {
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
            let fixed: usize = target
                .iter()
                .filter(|&&t| t > 0)
                .map(|&t| t as usize)
                .product();
            let total = num_elements(x);
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
                .map(|(d, (a, b))| if pad { Ok(d.add(a + b)) } else { d.sub(a + b) })
                .collect::<Result<Vec<_>>>()?;
            Ok(join_channels(sp, c, e.data_format))
        }
        Op::UpSampling(u) => {
            let x = one(ins)?;
            let (sp, c) = split_channels(x, u.data_format)?;
            if sp.len() != u.size.len() {
                return Err(Error::graph("upsampling rank does not match the input"));
            }
            let sp = sp.iter().zip(&u.size).map(|(d, &f)| d.mul(f)).collect();
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
                    (Dim::Known(x), Dim::Known(y)) => Dim::Known(x + y),
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
