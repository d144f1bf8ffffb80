//! IR -> ONNX nodes, one function per IR op. Values are computed channels-first inside
//! the graph; every IR value carries its physical layout (see [`Val`]) and ops that
//! need another layout get a Transpose from [`Lowering::get`] (cached, so a value is
//! transposed at most once per layout).

use super::builder::*;
use crate::error::{Error, Result};
pub use crate::ir::SameRule;
use crate::ir::*;
use crate::layout;
use std::collections::{BTreeMap, HashMap};

/// An IR value as it exists in the ONNX graph: its tensor name and its physical layout
/// (`layout[i]` = the Keras axis, batch included, stored at physical axis `i`).
#[derive(Debug, Clone, PartialEq)]
pub struct Val {
    pub name: String,
    pub layout: Vec<usize>,
}

pub struct Lowering<'g> {
    /// The graph's structure with its shapes inferred at the export's size.
    pub g: &'g Graph,
    /// Its weights, kept where the caller holds them (not copied with the structure).
    params: &'g BTreeMap<String, Tensor>,
    pub b: Builder,
    pub vals: Vec<Option<Val>>,
    pub same: SameRule,
    /// `coordinate_transformation_mode` for bilinear UpSampling.
    pub bilinear_mode: &'static str,
    cache: HashMap<(String, Vec<usize>), String>,
    /// In-graph `same` pads (`pads`, spatial sizes) by input and window.
    pads_cache: HashMap<WindowKey, (String, String)>,
    /// In-graph `same`-padded tensors by input, window and pad value (bits).
    padded_cache: HashMap<(WindowKey, u32), String>,
}

/// A tensor and a window (kernel, strides, dilations).
type WindowKey = (String, Vec<usize>, Vec<usize>, Vec<usize>);

fn rank_of(g: &Graph, v: ValueId) -> usize {
    g.values[v].shape.len() + 1
}

fn fmt_cl(fmt: DataFormat) -> bool {
    fmt == DataFormat::ChannelsLast
}

impl<'g> Lowering<'g> {
    pub fn new(
        g: &'g Graph,
        params: &'g BTreeMap<String, Tensor>,
        same: SameRule,
        bilinear_mode: &'static str,
    ) -> Self {
        Lowering {
            g,
            params,
            b: Builder::default(),
            vals: vec![None; g.values.len()],
            same,
            bilinear_mode,
            cache: HashMap::new(),
            pads_cache: HashMap::new(),
            padded_cache: HashMap::new(),
        }
    }

    pub fn val(&self, v: ValueId) -> Result<Val> {
        self.vals[v].clone().ok_or_else(|| {
            Error::graph(format!(
                "value {} used before it is computed",
                self.g.values[v].name
            ))
        })
    }

    /// Tensor name of `val` in physical layout `want` (adds one cached Transpose).
    pub fn in_layout(&mut self, val: &Val, want: &[usize], node: &str) -> String {
        match layout::transpose_between(&val.layout, want) {
            None => val.name.clone(),
            Some(perm) => {
                let key = (val.name.clone(), want.to_vec());
                if let Some(n) = self.cache.get(&key) {
                    return n.clone();
                }
                let out = self.b.node(
                    "Transpose",
                    &format!("{node}/Transpose"),
                    &[&val.name],
                    &format!(
                        "{}.t{}",
                        val.name,
                        perm.iter().map(|p| p.to_string()).collect::<String>()
                    ),
                    vec![attr_ints("perm", &usize_i64(&perm))],
                );
                self.cache.insert(key, out.clone());
                out
            }
        }
    }

    /// IR value `v` in physical layout `want`.
    pub fn get(&mut self, v: ValueId, want: &[usize], node: &str) -> Result<String> {
        let val = self.val(v)?;
        Ok(self.in_layout(&val, want, node))
    }

    /// IR value `v` in Keras layout.
    pub fn get_keras(&mut self, v: ValueId, node: &str) -> Result<String> {
        let r = rank_of(self.g, v);
        self.get(v, &layout::identity_perm(r), node)
    }

    /// Name for a node's main output in `layout`.
    fn out_base(n: &Node, lay: &[usize]) -> String {
        if lay.iter().enumerate().all(|(i, &a)| i == a) {
            n.name.clone()
        } else {
            format!("{}.cf", n.name)
        }
    }

    fn param(&self, n: &Node, slot: &str) -> Result<&'g Tensor> {
        self.params.get(&n.param_key(slot)).ok_or_else(|| {
            Error::graph(format!(
                "node {}: missing parameter {}",
                n.name,
                n.param_key(slot)
            ))
        })
    }

    /// Spatial input sizes of `v` for data format `fmt`.
    fn spatial(&self, v: ValueId, fmt: DataFormat) -> Result<Vec<Dim>> {
        Ok(split_channels(&self.g.values[v].shape, fmt)?.0)
    }

    /// `(before, after)` padding of one spatial axis for a window op; `None` when it
    /// depends on a size that is symbolic (TensorFlow's `same` with a stride and a window
    /// wider than one pixel), for [`Lowering::tf_same_pad`] to compute in the graph.
    fn window_pads(
        &self,
        size: &Dim,
        k: usize,
        s: usize,
        d: usize,
        padding: Padding,
        pool: bool,
    ) -> Option<(usize, usize)> {
        let eff = (k - 1) * d + 1;
        Some(match padding {
            Padding::Valid => (0, 0),
            Padding::Causal => (eff - 1, 0),
            Padding::Same => match self.same {
                SameRule::Theano { .. } => {
                    // Theano pads `before` on both sides and Keras crops to ceil(n/s); the
                    // windows kept are exactly those of pads (before, eff-1-before).
                    let before = if pool {
                        if k > 2 && k % 2 == 1 {
                            k - 2
                        } else {
                            k - 1
                        }
                    } else {
                        eff / 2
                    };
                    (before, (eff - 1).saturating_sub(before))
                }
                SameRule::TensorFlow => {
                    if s == 1 {
                        ((eff - 1) / 2, eff - 1 - (eff - 1) / 2)
                    } else if let Some(n_in) = size.known() {
                        let out = n_in.div_ceil(s);
                        let total = ((out - 1) * s + eff).saturating_sub(n_in);
                        (total / 2, total - total / 2)
                    } else if eff == 1 {
                        // max(ceil(n/s)*s - n + 1 - s, 0) = 0 for every n.
                        (0, 0)
                    } else {
                        return None;
                    }
                }
            },
        })
    }

    /// ONNX `pads` of a window op, or `None` when one axis needs them computed in the
    /// graph (see [`Lowering::window_pads`]).
    #[allow(clippy::too_many_arguments)]
    fn all_pads(
        &self,
        v: ValueId,
        fmt: DataFormat,
        k: &[usize],
        s: &[usize],
        d: &[usize],
        padding: Padding,
        pool: bool,
    ) -> Result<Option<Vec<i64>>> {
        let sp = self.spatial(v, fmt)?;
        let mut before = Vec::new();
        let mut after = Vec::new();
        for i in 0..k.len() {
            match self.window_pads(&sp[i], k[i], s[i], d[i], padding, pool) {
                Some((b, a)) => {
                    before.push(b as i64);
                    after.push(a as i64);
                }
                None => return Ok(None),
            }
        }
        before.extend(after);
        Ok(Some(before))
    }

    /// TensorFlow's `same` pads of a window op on channels-first `x` (spatial axes 2..),
    /// computed in the graph from `x`'s runtime shape, for a symbolic-size export:
    /// `out = ceil(n/s)`, `total = max((out-1)*s + k_eff - n, 0)`, `before = total/2`
    /// (floor), `after = total - before`, all axes at once on int64 vectors. Returns the
    /// `pads` tensor of a `Pad` (`[0, 0, before.., 0, 0, after..]`) and the spatial sizes
    /// `n`. Cached per (`x`, window).
    fn tf_same_pads(
        &mut self,
        node: &str,
        x: &str,
        k: &[usize],
        s: &[usize],
        d: &[usize],
    ) -> (String, String) {
        let key = (x.to_string(), k.to_vec(), s.to_vec(), d.to_vec());
        if let Some(hit) = self.pads_cache.get(&key) {
            return hit.clone();
        }
        let nsp = k.len();
        let base = format!("{node}/same_pads");
        let t = |what: &str| format!("{node}.same_pads.{what}");
        let shape = self
            .b
            .node("Shape", &format!("{base}/Shape"), &[x], &t("shape"), vec![]);
        let axes: Vec<i64> = (2..2 + nsp as i64).collect();
        let axes = self.b.init_i64(&t("spatial_axes"), &axes);
        let n = self.b.node(
            "Gather",
            &format!("{base}/Gather"),
            &[&shape, &axes],
            &t("size"),
            vec![attr_i("axis", 0)],
        );
        let s_m1: Vec<i64> = s.iter().map(|&v| v as i64 - 1).collect();
        let s_m1 = self.b.init_i64(&t("stride_minus_1"), &s_m1);
        let st = self.b.init_i64(&t("strides"), &usize_i64(s));
        // k_eff - s, may be negative.
        let eff_m_s: Vec<i64> = (0..nsp)
            .map(|i| ((k[i] as i64 - 1) * d[i] as i64 + 1) - s[i] as i64)
            .collect();
        let eff_m_s = self.b.init_i64(&t("window_minus_stride"), &eff_m_s);
        let zero = self.b.init_i64(&t("zero"), &[0]);
        let two = self.b.init_i64(&t("two"), &[2]);
        let zeros2 = self.b.init_i64(&t("zeros_nc"), &[0, 0]);
        let op = |cx: &mut Self, ty: &str, ins: &[&str], what: &str| {
            cx.b.node(ty, &format!("{base}/{ty}"), ins, &t(what), vec![])
        };
        // out * s - n + (k_eff - s) = (out - 1) * s + k_eff - n
        let up = op(self, "Add", &[&n, &s_m1], "size_plus");
        let out = op(self, "Div", &[&up, &st], "out");
        let span = op(self, "Mul", &[&out, &st], "span");
        let over = op(self, "Sub", &[&span, &n], "overhang");
        let total = op(self, "Add", &[&over, &eff_m_s], "total_raw");
        let total = op(self, "Max", &[&total, &zero], "total");
        let before = op(self, "Div", &[&total, &two], "before");
        let after = op(self, "Sub", &[&total, &before], "after");
        let pads = self.b.node(
            "Concat",
            &format!("{base}/Concat"),
            &[&zeros2, &before, &zeros2, &after],
            &t("pads"),
            vec![attr_i("axis", 0)],
        );
        self.pads_cache.insert(key, (pads.clone(), n.clone()));
        (pads, n)
    }

    /// `x` (channels-first) padded by TensorFlow's `same` rule computed in the graph
    /// (constant `value`: 0 before a convolution, -inf before a max pool). Cached.
    #[allow(clippy::too_many_arguments)]
    fn tf_same_pad(
        &mut self,
        node: &str,
        x: &str,
        k: &[usize],
        s: &[usize],
        d: &[usize],
        value: f32,
    ) -> String {
        let key = (
            (x.to_string(), k.to_vec(), s.to_vec(), d.to_vec()),
            value.to_bits(),
        );
        if let Some(hit) = self.padded_cache.get(&key) {
            return hit.clone();
        }
        let (pads, _) = self.tf_same_pads(node, x, k, s, d);
        let mut ins = vec![x.to_string(), pads];
        if value != 0.0 {
            ins.push(self.b.scalar_f32(&format!("{node}.same_pads.value"), value));
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        let y = self.b.node(
            "Pad",
            &format!("{node}/same_pads/Pad"),
            &ins,
            &format!("{node}.padded"),
            vec![attr_s("mode", "constant")],
        );
        self.padded_cache.insert(key, y.clone());
        y
    }

    /// The input and `pads` attribute of a window op on channels-first `x`: the static
    /// pads, or, when they depend on a symbolic size, `x` padded in the graph by
    /// TensorFlow's rule (with `value`) and zero pads.
    #[allow(clippy::too_many_arguments)]
    fn window_input(
        &mut self,
        n: &Node,
        v: ValueId,
        x: String,
        fmt: DataFormat,
        k: &[usize],
        s: &[usize],
        d: &[usize],
        padding: Padding,
        pool: bool,
        value: f32,
    ) -> Result<(String, Vec<i64>)> {
        Ok(match self.all_pads(v, fmt, k, s, d, padding, pool)? {
            Some(p) => (x, p),
            None => (
                self.tf_same_pad(&n.name, &x, k, s, d, value),
                vec![0; 2 * k.len()],
            ),
        })
    }

    /// Apply a Keras activation to `x` stored in `lay`; the last tensor gets `out` as base.
    pub fn activation(
        &mut self,
        n: &Node,
        x: &str,
        act: &Activation,
        lay: &[usize],
        out: &str,
    ) -> Result<String> {
        let name = n.name.as_str();
        Ok(match *act {
            Activation::Linear => self.b.node("Identity", name, &[x], out, vec![]),
            Activation::Relu {
                max_value,
                negative_slope,
                threshold,
            } => {
                match (max_value, negative_slope, threshold) {
                    (None, s, t) if s == 0.0 && t == 0.0 => {
                        self.b.node("Relu", name, &[x], out, vec![])
                    }
                    (None, s, t) if t == 0.0 && s > 0.0 => {
                        self.b
                            .node("LeakyRelu", name, &[x], out, vec![attr_f("alpha", s)])
                    }
                    (Some(m), s, t) if s == 0.0 && t == 0.0 => {
                        let lo = self.b.scalar_f32(&format!("{name}.clip_min"), 0.0);
                        let hi = self.b.scalar_f32(&format!("{name}.clip_max"), m);
                        self.b.node("Clip", name, &[x, &lo, &hi], out, vec![])
                    }
                    (m, s, t) => {
                        // Keras: x > t ? min(x, m) : s * (x - t)
                        let tt = self.b.scalar_f32(&format!("{name}.threshold"), t);
                        let ss = self.b.scalar_f32(&format!("{name}.negative_slope"), s);
                        let cond = self.b.node(
                            "Greater",
                            name,
                            &[x, &tt],
                            &format!("{name}.above"),
                            vec![],
                        );
                        let pos = match m {
                            Some(m) => {
                                let mm = self.b.scalar_f32(&format!("{name}.max_value"), m);
                                self.b.node(
                                    "Min",
                                    name,
                                    &[x, &mm],
                                    &format!("{name}.capped"),
                                    vec![],
                                )
                            }
                            None => x.to_string(),
                        };
                        let d =
                            self.b
                                .node("Sub", name, &[x, &tt], &format!("{name}.shifted"), vec![]);
                        let neg =
                            self.b
                                .node("Mul", name, &[&d, &ss], &format!("{name}.leak"), vec![]);
                        self.b
                            .node("Where", name, &[&cond, &pos, &neg], out, vec![])
                    }
                }
            }
            Activation::Softmax { axis } => {
                let r = lay.len() as i64;
                let a = if axis < 0 { axis + r } else { axis };
                if a <= 0 || a >= r {
                    return Err(Error::graph(format!(
                        "node {name}: softmax axis {axis} invalid for rank {r}"
                    )));
                }
                let p = layout::physical_axis(lay, a as usize);
                self.b
                    .node("Softmax", name, &[x], out, vec![attr_i("axis", p as i64)])
            }
            Activation::Sigmoid => self.b.node("Sigmoid", name, &[x], out, vec![]),
            Activation::HardSigmoid { slope, offset } => self.b.node(
                "HardSigmoid",
                name,
                &[x],
                out,
                vec![attr_f("alpha", slope), attr_f("beta", offset)],
            ),
            Activation::Tanh => self.b.node("Tanh", name, &[x], out, vec![]),
            Activation::Elu { alpha } => {
                self.b
                    .node("Elu", name, &[x], out, vec![attr_f("alpha", alpha)])
            }
            Activation::Selu => self.b.node(
                "Selu",
                name,
                &[x],
                out,
                vec![attr_f("alpha", 1.673_263_2), attr_f("gamma", 1.050_701)],
            ),
            Activation::Softplus => self.b.node("Softplus", name, &[x], out, vec![]),
            Activation::Softsign => self.b.node("Softsign", name, &[x], out, vec![]),
            Activation::Exponential => self.b.node("Exp", name, &[x], out, vec![]),
            Activation::Swish => {
                let s = self
                    .b
                    .node("Sigmoid", name, &[x], &format!("{name}.sigmoid"), vec![]);
                self.b.node("Mul", name, &[x, &s], out, vec![])
            }
        })
    }

    /// Lower one IR node; records and returns its output value.
    pub fn lower(&mut self, n: &Node) -> Result<Val> {
        let v = match &n.op {
            Op::Conv(c) => conv(self, n, c),
            Op::DepthwiseConv(c) => depthwise(self, n, c),
            Op::Dense(c) => dense(self, n, c),
            Op::BatchNorm(c) => batch_norm(self, n, c),
            Op::Activation(a) => activation_layer(self, n, a),
            Op::PRelu { .. } => prelu(self, n),
            Op::Dropout { .. } => identity(self, n),
            Op::Flatten => flatten(self, n),
            Op::Reshape { target } => reshape(self, n, target),
            Op::Permute { dims } => permute(self, n, dims),
            Op::ZeroPadding(e) => zero_padding(self, n, e),
            Op::Cropping(e) => cropping(self, n, e),
            Op::UpSampling(u) => upsampling(self, n, u),
            Op::Pool(p) => pool(self, n, p),
            Op::GlobalPool(p) => global_pool(self, n, p),
            Op::Merge(k) => merge(self, n, *k),
            Op::Concatenate { axis } => concatenate(self, n, *axis),
            Op::RepeatVector { n: times } => repeat_vector(self, n, *times),
        }
        .map_err(|e| match e {
            Error::Graph(m) if !m.contains(&n.name) => {
                Error::graph(format!("node {} ({}): {m}", n.name, n.class))
            }
            e => e,
        })?;
        self.vals[n.output] = Some(v.clone());
        Ok(v)
    }
}

fn single_input(n: &Node) -> Result<ValueId> {
    match n.inputs.as_slice() {
        [v] => Ok(*v),
        _ => Err(Error::graph(format!(
            "expects 1 input, got {}",
            n.inputs.len()
        ))),
    }
}

/// Conv / Conv1D: kernel (spatial..., in, out) -> (out, in, spatial...).
fn conv(cx: &mut Lowering, n: &Node, c: &ConvConfig) -> Result<Val> {
    let v = single_input(n)?;
    let lay = layout::channels_first_layout(rank_of(cx.g, v), fmt_cl(c.data_format));
    let x = cx.get(v, &lay, &n.name)?;
    let (x, pads) = cx.window_input(
        n,
        v,
        x,
        c.data_format,
        &c.kernel,
        &c.strides,
        &c.dilation,
        c.padding,
        false,
        0.0,
    )?;
    let k = layout::kernel_to_channels_first(cx.param(n, "kernel")?);
    let w = cx.b.init_f32(&n.param_key("kernel"), &k.shape, &k.data);
    let mut ins = vec![x, w];
    if c.use_bias {
        let b = cx.param(n, "bias")?;
        ins.push(cx.b.init_f32(&n.param_key("bias"), &b.shape, &b.data));
    }
    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
    let out = Lowering::out_base(n, &lay);
    let conv_out = if c.activation.is_linear() {
        out.clone()
    } else {
        format!("{}.conv", n.name)
    };
    let y = cx.b.node(
        "Conv",
        &n.name,
        &ins,
        &conv_out,
        vec![
            attr_ints("kernel_shape", &usize_i64(&c.kernel)),
            attr_ints("strides", &usize_i64(&c.strides)),
            attr_ints("dilations", &usize_i64(&c.dilation)),
            attr_ints("pads", &pads),
            attr_i("group", 1),
        ],
    );
    let y = if c.activation.is_linear() {
        y
    } else {
        cx.activation(n, &y, &c.activation, &lay, &out)?
    };
    Ok(Val {
        name: y,
        layout: lay,
    })
}

/// Depthwise: grouped Conv (group = in); separable: then a 1x1 Conv.
fn depthwise(cx: &mut Lowering, n: &Node, c: &DepthwiseConfig) -> Result<Val> {
    let v = single_input(n)?;
    let lay = layout::channels_first_layout(rank_of(cx.g, v), fmt_cl(c.data_format));
    let x = cx.get(v, &lay, &n.name)?;
    let (x, pads) = cx.window_input(
        n,
        v,
        x,
        c.data_format,
        &c.kernel,
        &c.strides,
        &c.dilation,
        c.padding,
        false,
        0.0,
    )?;
    let dk = cx.param(n, "depthwise_kernel")?;
    let cin = dk.shape[dk.shape.len() - 2];
    let gk = layout::depthwise_to_grouped(dk);
    let w =
        cx.b.init_f32(&n.param_key("depthwise_kernel"), &gk.shape, &gk.data);
    let bias = if c.use_bias {
        let b = cx.param(n, "bias")?;
        Some(cx.b.init_f32(&n.param_key("bias"), &b.shape, &b.data))
    } else {
        None
    };
    let out = Lowering::out_base(n, &lay);
    let last_linear = c.activation.is_linear();
    let attrs = vec![
        attr_ints("kernel_shape", &usize_i64(&c.kernel)),
        attr_ints("strides", &usize_i64(&c.strides)),
        attr_ints("dilations", &usize_i64(&c.dilation)),
        attr_ints("pads", &pads),
        attr_i("group", cin as i64),
    ];
    let y = match c.pointwise_filters {
        None => {
            let mut ins = vec![x.as_str(), w.as_str()];
            if let Some(b) = &bias {
                ins.push(b);
            }
            let base = if last_linear {
                out.clone()
            } else {
                format!("{}.conv", n.name)
            };
            cx.b.node("Conv", &n.name, &ins, &base, attrs)
        }
        Some(_) => {
            let dw = cx.b.node(
                "Conv",
                &n.name,
                &[&x, &w],
                &format!("{}.depthwise", n.name),
                attrs,
            );
            let pk = layout::kernel_to_channels_first(cx.param(n, "pointwise_kernel")?);
            let pw =
                cx.b.init_f32(&n.param_key("pointwise_kernel"), &pk.shape, &pk.data);
            let mut ins = vec![dw.as_str(), pw.as_str()];
            if let Some(b) = &bias {
                ins.push(b);
            }
            let ones = vec![1i64; c.kernel.len()];
            let base = if last_linear {
                out.clone()
            } else {
                format!("{}.conv", n.name)
            };
            cx.b.node(
                "Conv",
                &format!("{}/pointwise", n.name),
                &ins,
                &base,
                vec![attr_ints("kernel_shape", &ones), attr_i("group", 1)],
            )
        }
    };
    let y = if last_linear {
        y
    } else {
        cx.activation(n, &y, &c.activation, &lay, &out)?
    };
    Ok(Val {
        name: y,
        layout: lay,
    })
}

/// Dense on the last Keras axis: Gemm on 2-D; a 1x1 Conv when that axis is physically
/// the channel axis of a channels-first tensor; else MatMul in Keras layout.
fn dense(cx: &mut Lowering, n: &Node, c: &DenseConfig) -> Result<Val> {
    let v = single_input(n)?;
    let r = rank_of(cx.g, v);
    let val = cx.val(v)?;
    let k = cx.param(n, "kernel")?;
    let bias = if c.use_bias {
        Some(cx.param(n, "bias")?)
    } else {
        None
    };
    let (y, lay) = if r == 2 {
        let x = cx.in_layout(&val, &[0, 1], &n.name);
        let w = cx.b.init_f32(&n.param_key("kernel"), &k.shape, &k.data);
        let mut ins = vec![x, w];
        if let Some(b) = bias {
            ins.push(cx.b.init_f32(&n.param_key("bias"), &b.shape, &b.data));
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        let base = if c.activation.is_linear() {
            n.name.clone()
        } else {
            format!("{}.dense", n.name)
        };
        (cx.b.node("Gemm", &n.name, &ins, &base, vec![]), vec![0, 1])
    } else if val.layout.get(1) == Some(&(r - 1)) {
        let wk = layout::dense_to_pointwise_conv(k, r - 2);
        let w = cx.b.init_f32(&n.param_key("kernel"), &wk.shape, &wk.data);
        let mut ins = vec![val.name.clone(), w];
        if let Some(b) = bias {
            ins.push(cx.b.init_f32(&n.param_key("bias"), &b.shape, &b.data));
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        let lay = val.layout.clone();
        let base = if c.activation.is_linear() {
            Lowering::out_base(n, &lay)
        } else {
            format!("{}.dense", n.name)
        };
        let ones = vec![1i64; r - 2];
        (
            cx.b.node(
                "Conv",
                &n.name,
                &ins,
                &base,
                vec![attr_ints("kernel_shape", &ones)],
            ),
            lay,
        )
    } else {
        let lay = layout::identity_perm(r);
        let x = cx.in_layout(&val, &lay, &n.name);
        let w = cx.b.init_f32(&n.param_key("kernel"), &k.shape, &k.data);
        let lin = c.activation.is_linear();
        let mm_base = if lin && bias.is_none() {
            n.name.clone()
        } else {
            format!("{}.matmul", n.name)
        };
        let mut y = cx.b.node("MatMul", &n.name, &[&x, &w], &mm_base, vec![]);
        if let Some(b) = bias {
            let bn = cx.b.init_f32(&n.param_key("bias"), &b.shape, &b.data);
            let base = if lin {
                n.name.clone()
            } else {
                format!("{}.dense", n.name)
            };
            y = cx.b.node("Add", &n.name, &[&y, &bn], &base, vec![]);
        }
        (y, lay)
    };
    let y = if c.activation.is_linear() {
        y
    } else {
        let out = Lowering::out_base(n, &lay);
        cx.activation(n, &y, &c.activation, &lay, &out)?
    };
    Ok(Val {
        name: y,
        layout: lay,
    })
}

fn batch_norm(cx: &mut Lowering, n: &Node, c: &BatchNormConfig) -> Result<Val> {
    let v = single_input(n)?;
    let val = cx.val(v)?;
    let p = layout::physical_axis(&val.layout, c.axis);
    let mean = cx.param(n, "moving_mean")?;
    let var = cx.param(n, "moving_variance")?;
    let ch = mean.len();
    let gamma = if c.scale {
        cx.param(n, "gamma")?.data.clone()
    } else {
        vec![1.0; ch]
    };
    let beta = if c.center {
        cx.param(n, "beta")?.data.clone()
    } else {
        vec![0.0; ch]
    };
    let out = Lowering::out_base(n, &val.layout);
    let y = if p == 1 {
        let g = cx.b.init_f32(
            &if c.scale {
                n.param_key("gamma")
            } else {
                format!("{}.ones", n.layer)
            },
            &[ch],
            &gamma,
        );
        let b = cx.b.init_f32(
            &if c.center {
                n.param_key("beta")
            } else {
                format!("{}.zeros", n.layer)
            },
            &[ch],
            &beta,
        );
        let m =
            cx.b.init_f32(&n.param_key("moving_mean"), &[ch], &mean.data);
        let s =
            cx.b.init_f32(&n.param_key("moving_variance"), &[ch], &var.data);
        cx.b.node(
            "BatchNormalization",
            &n.name,
            &[&val.name, &g, &b, &m, &s],
            &out,
            vec![attr_f("epsilon", c.epsilon)],
        )
    } else {
        // Not on the physical channel axis: y = x * scale + shift, broadcast on axis p.
        let scale: Vec<f32> = (0..ch)
            .map(|i| gamma[i] / (var.data[i] + c.epsilon).sqrt())
            .collect();
        let shift: Vec<f32> = (0..ch).map(|i| beta[i] - mean.data[i] * scale[i]).collect();
        let mut shape = vec![1; val.layout.len()];
        shape[p] = ch;
        let sc = cx.b.init_f32(&format!("{}.scale", n.layer), &shape, &scale);
        let sh = cx.b.init_f32(&format!("{}.shift", n.layer), &shape, &shift);
        let m = cx.b.node(
            "Mul",
            &n.name,
            &[&val.name, &sc],
            &format!("{}.scaled", n.name),
            vec![],
        );
        cx.b.node("Add", &n.name, &[&m, &sh], &out, vec![])
    };
    Ok(Val {
        name: y,
        layout: val.layout,
    })
}

fn activation_layer(cx: &mut Lowering, n: &Node, a: &Activation) -> Result<Val> {
    let val = cx.val(single_input(n)?)?;
    let out = Lowering::out_base(n, &val.layout);
    let y = cx.activation(n, &val.name, a, &val.layout, &out)?;
    Ok(Val {
        name: y,
        layout: val.layout,
    })
}

/// PRelu: alpha (Keras shape without batch) gets a leading 1 and the value's layout.
fn prelu(cx: &mut Lowering, n: &Node) -> Result<Val> {
    let val = cx.val(single_input(n)?)?;
    let a = cx.param(n, "alpha")?;
    let mut with_batch = a.clone();
    with_batch.shape.insert(0, 1);
    if with_batch.shape.len() != val.layout.len() {
        return Err(Error::graph(format!(
            "alpha of shape {:?} does not match the input rank",
            a.shape
        )));
    }
    let phys = layout::transpose(&with_batch, &val.layout);
    let s =
        cx.b.init_f32(&n.param_key("alpha"), &phys.shape, &phys.data);
    let out = Lowering::out_base(n, &val.layout);
    let y = cx.b.node("PRelu", &n.name, &[&val.name, &s], &out, vec![]);
    Ok(Val {
        name: y,
        layout: val.layout,
    })
}

fn identity(cx: &mut Lowering, n: &Node) -> Result<Val> {
    let val = cx.val(single_input(n)?)?;
    let out = Lowering::out_base(n, &val.layout);
    let y = cx.b.node("Identity", &n.name, &[&val.name], &out, vec![]);
    Ok(Val {
        name: y,
        layout: val.layout,
    })
}

/// Keras flattens in its own (channels-last) order: back to Keras layout first.
fn flatten(cx: &mut Lowering, n: &Node) -> Result<Val> {
    let x = cx.get_keras(single_input(n)?, &n.name)?;
    let y =
        cx.b.node("Flatten", &n.name, &[&x], &n.name, vec![attr_i("axis", 1)]);
    Ok(Val {
        name: y,
        layout: vec![0, 1],
    })
}

fn reshape(cx: &mut Lowering, n: &Node, target: &[i64]) -> Result<Val> {
    let x = cx.get_keras(single_input(n)?, &n.name)?;
    let mut shape = vec![0i64];
    shape.extend_from_slice(target);
    let s = cx.b.init_i64(&format!("{}.shape", n.name), &shape);
    let y = cx.b.node("Reshape", &n.name, &[&x, &s], &n.name, vec![]);
    Ok(Val {
        name: y,
        layout: layout::identity_perm(shape.len()),
    })
}

fn permute(cx: &mut Lowering, n: &Node, dims: &[usize]) -> Result<Val> {
    let x = cx.get_keras(single_input(n)?, &n.name)?;
    let mut perm = vec![0usize];
    perm.extend_from_slice(dims);
    let y = cx.b.node(
        "Transpose",
        &n.name,
        &[&x],
        &n.name,
        vec![attr_ints("perm", &usize_i64(&perm))],
    );
    Ok(Val {
        name: y,
        layout: layout::identity_perm(perm.len()),
    })
}

/// Keras axis (with batch) of spatial dim `i`.
fn spatial_axis(fmt: DataFormat, i: usize) -> usize {
    match fmt {
        DataFormat::ChannelsLast => 1 + i,
        DataFormat::ChannelsFirst => 2 + i,
    }
}

fn zero_padding(cx: &mut Lowering, n: &Node, e: &SpatialEdges) -> Result<Val> {
    let val = cx.val(single_input(n)?)?;
    let r = val.layout.len();
    let mut pads = vec![0i64; 2 * r];
    for (i, &(a, b)) in e.edges.iter().enumerate() {
        let p = layout::physical_axis(&val.layout, spatial_axis(e.data_format, i));
        pads[p] = a as i64;
        pads[r + p] = b as i64;
    }
    let p = cx.b.init_i64(&format!("{}.pads", n.name), &pads);
    let out = Lowering::out_base(n, &val.layout);
    let y = cx.b.node(
        "Pad",
        &n.name,
        &[&val.name, &p],
        &out,
        vec![attr_s("mode", "constant")],
    );
    Ok(Val {
        name: y,
        layout: val.layout,
    })
}

fn cropping(cx: &mut Lowering, n: &Node, e: &SpatialEdges) -> Result<Val> {
    let val = cx.val(single_input(n)?)?;
    let (mut starts, mut ends, mut axes) = (vec![], vec![], vec![]);
    for (i, &(a, b)) in e.edges.iter().enumerate() {
        if a == 0 && b == 0 {
            continue;
        }
        axes.push(layout::physical_axis(&val.layout, spatial_axis(e.data_format, i)) as i64);
        starts.push(a as i64);
        ends.push(if b == 0 { i64::MAX } else { -(b as i64) });
    }
    let out = Lowering::out_base(n, &val.layout);
    let y = if axes.is_empty() {
        cx.b.node("Identity", &n.name, &[&val.name], &out, vec![])
    } else {
        let s = cx.b.init_i64(&format!("{}.starts", n.name), &starts);
        let en = cx.b.init_i64(&format!("{}.ends", n.name), &ends);
        let ax = cx.b.init_i64(&format!("{}.axes", n.name), &axes);
        cx.b.node("Slice", &n.name, &[&val.name, &s, &en, &ax], &out, vec![])
    };
    Ok(Val {
        name: y,
        layout: val.layout,
    })
}

/// Resize with integer scales: nearest = repeat (asymmetric + floor); bilinear per the
/// Keras version (see `bilinear_mode`).
fn upsampling(cx: &mut Lowering, n: &Node, u: &UpSamplingConfig) -> Result<Val> {
    let v = single_input(n)?;
    let lay = layout::channels_first_layout(rank_of(cx.g, v), fmt_cl(u.data_format));
    let x = cx.get(v, &lay, &n.name)?;
    let mut scales = vec![1.0f32; lay.len()];
    for (i, &f) in u.size.iter().enumerate() {
        scales[layout::physical_axis(&lay, spatial_axis(u.data_format, i))] = f as f32;
    }
    let sc =
        cx.b.init_f32(&format!("{}.scales", n.name), &[scales.len()], &scales);
    let attrs = match u.interpolation {
        Interpolation::Nearest => vec![
            attr_s("mode", "nearest"),
            attr_s("coordinate_transformation_mode", "asymmetric"),
            attr_s("nearest_mode", "floor"),
        ],
        Interpolation::Bilinear => vec![
            attr_s("mode", "linear"),
            attr_s("coordinate_transformation_mode", cx.bilinear_mode),
        ],
    };
    let out = Lowering::out_base(n, &lay);
    let y = cx.b.node("Resize", &n.name, &[&x, "", &sc], &out, attrs);
    Ok(Val {
        name: y,
        layout: lay,
    })
}

fn pool(cx: &mut Lowering, n: &Node, p: &PoolConfig) -> Result<Val> {
    let v = single_input(n)?;
    let lay = layout::channels_first_layout(rank_of(cx.g, v), fmt_cl(p.data_format));
    let x = cx.get(v, &lay, &n.name)?;
    let ones = vec![1; p.pool.len()];
    let Some(pads) = cx.all_pads(
        v,
        p.data_format,
        &p.pool,
        &p.strides,
        &ones,
        p.padding,
        true,
    )?
    else {
        return tf_same_pool_in_graph(cx, n, p, x, lay);
    };
    let mut attrs = vec![
        attr_ints("kernel_shape", &usize_i64(&p.pool)),
        attr_ints("strides", &usize_i64(&p.strides)),
        attr_ints("pads", &pads),
    ];
    let out = Lowering::out_base(n, &lay);
    let y = match p.kind {
        PoolKind::Max => cx.b.node("MaxPool", &n.name, &[&x], &out, attrs),
        PoolKind::Avg => {
            let include = matches!(
                cx.same,
                SameRule::Theano {
                    avg_include_pad: true
                }
            ) && p.padding == Padding::Same;
            attrs.push(attr_i("count_include_pad", include as i64));
            cx.b.node("AveragePool", &n.name, &[&x], &out, attrs)
        }
    };
    Ok(Val {
        name: y,
        layout: lay,
    })
}

/// A TensorFlow `same` pool whose pads depend on a symbolic size: the input padded in
/// the graph, then the pool without pads. Max: padded with -inf, which no window takes
/// (every TensorFlow `same` window holds a real pixel). Average: TensorFlow divides by
/// the real pixels of each window only, so the mean of the zero-padded input is divided
/// by the mean of a zero-padded map of ones (the share of real pixels per window).
fn tf_same_pool_in_graph(
    cx: &mut Lowering,
    n: &Node,
    p: &PoolConfig,
    x: String,
    lay: Vec<usize>,
) -> Result<Val> {
    let ones = vec![1; p.pool.len()];
    let zeros = vec![0i64; 2 * p.pool.len()];
    let attrs = || {
        vec![
            attr_ints("kernel_shape", &usize_i64(&p.pool)),
            attr_ints("strides", &usize_i64(&p.strides)),
            attr_ints("pads", &zeros),
        ]
    };
    let out = Lowering::out_base(n, &lay);
    let y = match p.kind {
        PoolKind::Max => {
            let xp = cx.tf_same_pad(&n.name, &x, &p.pool, &p.strides, &ones, f32::NEG_INFINITY);
            cx.b.node("MaxPool", &n.name, &[&xp], &out, attrs())
        }
        PoolKind::Avg => {
            let xp = cx.tf_same_pad(&n.name, &x, &p.pool, &p.strides, &ones, 0.0);
            let mut a = attrs();
            a.push(attr_i("count_include_pad", 0));
            let mean = cx.b.node(
                "AveragePool",
                &n.name,
                &[&xp],
                &format!("{}.window_mean", n.name),
                a.clone(),
            );
            let (pads, sizes) = cx.tf_same_pads(&n.name, &x, &p.pool, &p.strides, &ones);
            let one_one =
                cx.b.init_i64(&format!("{}.real.batch_channel", n.name), &[1, 1]);
            let shape = cx.b.node(
                "Concat",
                &format!("{}/real/Concat", n.name),
                &[&one_one, &sizes],
                &format!("{}.real.shape", n.name),
                vec![attr_i("axis", 0)],
            );
            let map = cx.b.node(
                "ConstantOfShape",
                &format!("{}/real/ConstantOfShape", n.name),
                &[&shape],
                &format!("{}.real.ones", n.name),
                vec![attr_tensor("value", f32_tensor("value", &[1], &[1.0]))],
            );
            let map = cx.b.node(
                "Pad",
                &format!("{}/real/Pad", n.name),
                &[&map, &pads],
                &format!("{}.real.padded", n.name),
                vec![attr_s("mode", "constant")],
            );
            let share = cx.b.node(
                "AveragePool",
                &format!("{}/real", n.name),
                &[&map],
                &format!("{}.real.share", n.name),
                a,
            );
            cx.b.node("Div", &n.name, &[&mean, &share], &out, vec![])
        }
    };
    Ok(Val {
        name: y,
        layout: lay,
    })
}

fn global_pool(cx: &mut Lowering, n: &Node, p: &GlobalPoolConfig) -> Result<Val> {
    let v = single_input(n)?;
    let lay = layout::channels_first_layout(rank_of(cx.g, v), fmt_cl(p.data_format));
    let x = cx.get(v, &lay, &n.name)?;
    let op = match p.kind {
        PoolKind::Max => "GlobalMaxPool",
        PoolKind::Avg => "GlobalAveragePool",
    };
    if p.keepdims {
        let out = Lowering::out_base(n, &lay);
        let y = cx.b.node(op, &n.name, &[&x], &out, vec![]);
        Ok(Val {
            name: y,
            layout: lay,
        })
    } else {
        let y =
            cx.b.node(op, &n.name, &[&x], &format!("{}.pooled", n.name), vec![]);
        let y =
            cx.b.node("Flatten", &n.name, &[&y], &n.name, vec![attr_i("axis", 1)]);
        Ok(Val {
            name: y,
            layout: vec![0, 1],
        })
    }
}

/// Inputs in the first input's layout when ranks agree, else all in Keras layout.
fn aligned_inputs(cx: &mut Lowering, n: &Node) -> Result<(Vec<String>, Vec<usize>)> {
    let first = cx.val(*n.inputs.first().ok_or_else(|| Error::graph("no inputs"))?)?;
    let same_rank = n
        .inputs
        .iter()
        .all(|&v| rank_of(cx.g, v) == first.layout.len());
    let lay = if same_rank {
        first.layout.clone()
    } else {
        let r = n
            .inputs
            .iter()
            .map(|&v| rank_of(cx.g, v))
            .max()
            .unwrap_or(0);
        layout::identity_perm(r)
    };
    let mut names = Vec::new();
    for &v in &n.inputs {
        let r = rank_of(cx.g, v);
        let want = if r == lay.len() {
            lay.clone()
        } else {
            layout::identity_perm(r)
        };
        names.push(cx.get(v, &want, &n.name)?);
    }
    Ok((names, lay))
}

fn merge(cx: &mut Lowering, n: &Node, k: MergeKind) -> Result<Val> {
    let (ins, lay) = aligned_inputs(cx, n)?;
    let out = Lowering::out_base(n, &lay);
    let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
    let y = match k {
        MergeKind::Add if refs.len() == 2 => cx.b.node("Add", &n.name, &refs, &out, vec![]),
        MergeKind::Add => cx.b.node("Sum", &n.name, &refs, &out, vec![]),
        MergeKind::Subtract => cx.b.node("Sub", &n.name, &refs, &out, vec![]),
        MergeKind::Average => cx.b.node("Mean", &n.name, &refs, &out, vec![]),
        MergeKind::Maximum => cx.b.node("Max", &n.name, &refs, &out, vec![]),
        MergeKind::Minimum => cx.b.node("Min", &n.name, &refs, &out, vec![]),
        MergeKind::Multiply => {
            let mut acc = refs[0].to_string();
            for (i, r) in refs[1..].iter().enumerate() {
                let base = if i + 2 == refs.len() {
                    out.clone()
                } else {
                    format!("{}.prod{i}", n.name)
                };
                acc = cx.b.node("Mul", &n.name, &[&acc, r], &base, vec![]);
            }
            acc
        }
    };
    Ok(Val {
        name: y,
        layout: lay,
    })
}

fn concatenate(cx: &mut Lowering, n: &Node, axis: usize) -> Result<Val> {
    let (ins, lay) = aligned_inputs(cx, n)?;
    let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
    let p = layout::physical_axis(&lay, axis);
    let out = Lowering::out_base(n, &lay);
    let y = cx.b.node(
        "Concat",
        &n.name,
        &refs,
        &out,
        vec![attr_i("axis", p as i64)],
    );
    Ok(Val {
        name: y,
        layout: lay,
    })
}

fn repeat_vector(cx: &mut Lowering, n: &Node, times: usize) -> Result<Val> {
    let x = cx.get_keras(single_input(n)?, &n.name)?;
    let ax = cx.b.init_i64(&format!("{}.axes", n.name), &[1]);
    let u = cx.b.node(
        "Unsqueeze",
        &n.name,
        &[&x, &ax],
        &format!("{}.unsqueezed", n.name),
        vec![],
    );
    let reps =
        cx.b.init_i64(&format!("{}.repeats", n.name), &[1, times as i64, 1]);
    let y = cx.b.node("Tile", &n.name, &[&u, &reps], &n.name, vec![]);
    Ok(Val {
        name: y,
        layout: vec![0, 1, 2],
    })
}
