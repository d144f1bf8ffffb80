//! One function per IR op; the `match` in [`run_node`] is exhaustive over [`Op`].

use super::{permute_to, terr, BilinearMode, BnTrain, BnVar, Mode, SameRule, TorchModel, Val};
use crate::error::{Error, Result};
use crate::ir::{self, *};
use crate::layout;
use tch::{Kind, Tensor};

/// A Keras-layout weight in the layout the VarStore keeps (see the module table).
pub(crate) fn to_torch_layout(op: &Op, slot: &str, p: &ir::Tensor) -> Result<ir::Tensor> {
    let need_rank = |r: usize| -> Result<()> {
        if p.shape.len() == r {
            Ok(())
        } else {
            Err(Error::graph(format!(
                "weight {slot} has shape {:?}, expected rank {r}",
                p.shape
            )))
        }
    };
    Ok(match (op, slot) {
        (Op::Conv(c), "kernel") => {
            need_rank(c.kernel.len() + 2)?;
            layout::kernel_to_channels_first(p)
        }
        (Op::DepthwiseConv(c), "depthwise_kernel") => {
            need_rank(c.kernel.len() + 2)?;
            layout::depthwise_to_grouped(p)
        }
        (Op::DepthwiseConv(_), "pointwise_kernel") => layout::kernel_to_channels_first(p),
        (Op::Dense(_), "kernel") => {
            need_rank(2)?;
            layout::dense_to_linear(p)
        }
        (
            Op::Conv(_)
            | Op::DepthwiseConv(_)
            | Op::Dense(_)
            | Op::BatchNorm(_)
            | Op::Activation(_)
            | Op::PRelu { .. }
            | Op::Dropout { .. }
            | Op::Flatten
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::ZeroPadding(_)
            | Op::Cropping(_)
            | Op::UpSampling(_)
            | Op::Pool(_)
            | Op::GlobalPool(_)
            | Op::Merge(_)
            | Op::Concatenate { .. }
            | Op::RepeatVector { .. },
            _,
        ) => p.clone(),
    })
}

/// Inverse of [`to_torch_layout`]: a VarStore tensor back in Keras layout, `keras_shape`
/// being the weight's Keras shape (the graph's parameter).
pub(crate) fn from_torch_layout(
    op: &Op,
    slot: &str,
    t: &ir::Tensor,
    keras_shape: &[usize],
) -> Result<ir::Tensor> {
    let r = keras_shape.len();
    // Undo `kernel_to_channels_first`: (out, in, spatial...) -> (spatial..., in, out).
    let kernel_back = |t: &ir::Tensor| {
        let mut perm = vec![r - 1, r - 2];
        perm.extend(0..r - 2);
        layout::transpose(t, &layout::inverse_perm(&perm))
    };
    let out = match (op, slot) {
        (Op::Conv(_), "kernel") | (Op::DepthwiseConv(_), "pointwise_kernel") if r >= 3 => {
            kernel_back(t)
        }
        (Op::DepthwiseConv(_), "depthwise_kernel") if r >= 3 => {
            // (in*mult, 1, spatial...) -> (in, mult, spatial...) -> (spatial..., in, mult)
            let mut shape = vec![keras_shape[r - 2], keras_shape[r - 1]];
            shape.extend_from_slice(&keras_shape[..r - 2]);
            let grouped = ir::Tensor::new(shape, t.data.clone())?;
            let mut perm = vec![r - 2, r - 1];
            perm.extend(0..r - 2);
            layout::transpose(&grouped, &layout::inverse_perm(&perm))
        }
        (Op::Dense(_), "kernel") if r == 2 => layout::transpose(t, &[1, 0]),
        _ => t.clone(),
    };
    if out.shape != keras_shape {
        return Err(Error::graph(format!(
            "weight {slot}: VarStore shape {:?} does not give the Keras shape {keras_shape:?}",
            t.shape
        )));
    }
    Ok(out)
}

/// A node whose fused activation is a softmax, as the same op without it (linear) and
/// the softmax: a training forward keeps the logits for Keras's cross-entropy.
pub(crate) fn split_softmax(op: &Op) -> Option<(Op, Activation)> {
    let act = match op {
        Op::Conv(c) => &c.activation,
        Op::DepthwiseConv(c) => &c.activation,
        Op::Dense(c) => &c.activation,
        _ => return None,
    };
    if !matches!(act, Activation::Softmax { .. }) {
        return None;
    }
    let act = *act;
    let mut lin = op.clone();
    match &mut lin {
        Op::Conv(c) => c.activation = Activation::Linear,
        Op::DepthwiseConv(c) => c.activation = Activation::Linear,
        Op::Dense(c) => c.activation = Activation::Linear,
        _ => return None,
    }
    Some((lin, act))
}

struct Cx<'a> {
    m: &'a TorchModel,
    vals: &'a [Option<Val>],
    n: &'a Node,
    /// Dropout active, BatchNorm on batch statistics (unless the fit spec says otherwise).
    train: bool,
    mode: Mode<'a>,
    /// The first input is this node's alone (its last use, storage shared with no other
    /// value, no gradients): an element-wise op may overwrite it instead of allocating.
    reuse_first: bool,
}

/// Whether `n`'s output has storage of its own, shared with no other value: what
/// convolutions, dense layers, batch norm, merges of two or more inputs and non-linear
/// activations return. Views (reshapes, an inference-mode dropout, a linear activation)
/// and the graph's inputs do not.
pub(crate) fn returns_new_storage(n: &Node) -> bool {
    match &n.op {
        Op::Conv(_) | Op::DepthwiseConv(_) | Op::Dense(_) | Op::BatchNorm(_) => true,
        Op::Merge(_) => n.inputs.len() >= 2,
        Op::Activation(a) => !matches!(a, Activation::Linear),
        _ => false,
    }
}

/// For each node, `Some(add)` when it is a plain ReLU whose input comes from the
/// two-input Add node `add` and is read by nothing else (not a graph output either;
/// `uses` counts both): the pair can run as one pass over memory ([`add_relu`]), a
/// ResNet's residual add and activation, 2% of a full-width run.
pub(crate) fn relus_after_adds(g: &ir::Graph, uses: &[usize]) -> Vec<Option<usize>> {
    g.nodes
        .iter()
        .map(|n| {
            let [v] = n.inputs.as_slice() else {
                return None;
            };
            let ir::Producer::Node(a) = g.values[*v].producer else {
                return None;
            };
            let add = &g.nodes[a];
            (n.op == Op::Activation(Activation::RELU)
                && uses[*v] == 1
                && add.op == Op::Merge(MergeKind::Add)
                && add.inputs.len() == 2)
                .then_some(a)
        })
        .collect()
}

/// Whether a training step may run ReLU node `n` in place on its input (given that the
/// input is read by nothing else and owns its storage): the input's producer must not read
/// its own output in its backward pass (a convolution, dense layer, BatchNorm or add reads
/// only its inputs), and ReLU's backward needs only its result. Saves one activation per
/// conv-BN-ReLU block, as torchvision's `ReLU(inplace=True)`; autograd's version counters
/// would refuse the step if this were wrong.
pub(crate) fn relu_in_place_keeps_gradients(g: &ir::Graph, n: &Node) -> bool {
    let [v] = n.inputs.as_slice() else {
        return false;
    };
    let ir::Producer::Node(p) = g.values[*v].producer else {
        return false;
    };
    is_plain_relu(&n.op)
        && matches!(
            g.nodes[p].op,
            Op::Conv(_) | Op::Dense(_) | Op::BatchNorm(_) | Op::Merge(MergeKind::Add)
        )
}

fn is_plain_relu(op: &Op) -> bool {
    matches!(
        op,
        Op::Activation(Activation::Relu {
            max_value: None,
            negative_slope,
            threshold,
        }) if *negative_slope == 0.0 && *threshold == 0.0
    )
}

/// A layer's own activation on the fresh output `y` of its convolution or matrix product:
/// ReLU overwrites `y` (nothing else holds it, and neither op's backward reads its output).
fn fused_activation(y: &Tensor, act: &Activation, lay: &[usize]) -> Result<Tensor> {
    if is_plain_relu(&Op::Activation(*act)) {
        y.shallow_clone().f_relu_().map_err(terr("relu"))
    } else {
        activation(y, act, lay)
    }
}

/// A two-input Add followed by ReLU in one pass (libtorch's fused `_add_relu`), into the
/// first input's storage on its last use, as [`merge`] would.
pub(crate) fn add_relu(
    m: &TorchModel,
    vals: &[Option<Val>],
    n: &Node,
    reuse_first: bool,
) -> Result<Val> {
    let cx = Cx {
        m,
        vals,
        n,
        train: false,
        mode: Mode::Eval,
        reuse_first,
    };
    let (ts, lay) = aligned_inputs(&cx)?;
    let [a, b] = ts.as_slice() else {
        return Err(Error::graph(format!(
            "add expects 2 inputs, got {}",
            ts.len()
        )));
    };
    let t = if reuse_first && a.size() == b.size() {
        a.shallow_clone().f_internal_add_relu_(b)
    } else {
        a.f_internal_add_relu(b)
    }
    .map_err(terr("add + relu"))?;
    Ok(Val { t, lay })
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

fn fmt_cl(fmt: DataFormat) -> bool {
    fmt == DataFormat::ChannelsLast
}

/// Keras axis (with batch) of spatial dim `i`.
fn spatial_axis(fmt: DataFormat, i: usize) -> usize {
    match fmt {
        DataFormat::ChannelsLast => 1 + i,
        DataFormat::ChannelsFirst => 2 + i,
    }
}

impl<'a> Cx<'a> {
    fn val(&self, v: ValueId) -> Result<&'a Val> {
        self.vals.get(v).and_then(Option::as_ref).ok_or_else(|| {
            Error::graph(format!(
                "value {} used before it is computed",
                self.m.graph.values[v].name
            ))
        })
    }

    fn single(&self) -> Result<&'a Val> {
        match self.n.inputs.as_slice() {
            [v] => self.val(*v),
            _ => Err(Error::graph(format!(
                "expects 1 input, got {}",
                self.n.inputs.len()
            ))),
        }
    }

    /// The single input in physical layout `want`.
    fn single_in(&self, want: &[usize]) -> Result<Tensor> {
        let v = self.single()?;
        if v.lay.len() != want.len() {
            return Err(Error::graph(format!(
                "input has rank {}, expected {}",
                v.lay.len(),
                want.len()
            )));
        }
        permute_to(&v.t, &v.lay, want)
    }

    /// The single input, channels-first for data format `fmt`, and that layout.
    fn single_cf(&self, fmt: DataFormat) -> Result<(Tensor, Vec<usize>)> {
        let r = self.single()?.lay.len();
        if r < 3 {
            return Err(Error::graph(format!(
                "a spatial op needs rank >= 3, got {r}"
            )));
        }
        let lay = layout::channels_first_layout(r, fmt_cl(fmt));
        Ok((self.single_in(&lay)?, lay))
    }

    fn w(&self, slot: &str) -> Result<&'a Tensor> {
        self.m.weight(&self.n.layer, slot)
    }

    /// `(before, after)` per spatial axis of a channels-first tensor for a window op.
    fn pads(
        &self,
        x: &Tensor,
        k: &[usize],
        s: &[usize],
        d: &[usize],
        padding: Padding,
        pool: bool,
    ) -> Result<Vec<(i64, i64)>> {
        let size = x.size();
        if size.len() != k.len() + 2 || s.len() != k.len() || d.len() != k.len() {
            return Err(Error::graph(format!(
                "window of rank {} (strides {s:?}, dilation {d:?}) on a tensor of shape {size:?}",
                k.len()
            )));
        }
        (0..k.len())
            .map(|i| {
                window_pads(
                    size[i + 2],
                    k[i] as i64,
                    s[i] as i64,
                    d[i] as i64,
                    padding,
                    pool,
                    self.m.same,
                )
            })
            .collect()
    }
}

/// `(before, after)` padding of one axis of size `n` (the rule of `onnx::lower`).
fn window_pads(
    n: i64,
    k: i64,
    s: i64,
    d: i64,
    padding: Padding,
    pool: bool,
    rule: SameRule,
) -> Result<(i64, i64)> {
    if k < 1 || s < 1 || d < 1 {
        return Err(Error::graph(format!(
            "bad window: kernel {k}, stride {s}, dilation {d}"
        )));
    }
    let eff = (k - 1) * d + 1;
    Ok(match padding {
        Padding::Valid => (0, 0),
        Padding::Causal => (eff - 1, 0),
        Padding::Same => match rule {
            SameRule::Theano { .. } => {
                let before = if pool {
                    if k > 2 && k % 2 == 1 {
                        k - 2
                    } else {
                        k - 1
                    }
                } else {
                    eff / 2
                };
                (before, (eff - 1 - before).max(0))
            }
            SameRule::TensorFlow => {
                let out = (n + s - 1) / s;
                let total = ((out - 1) * s + eff - n).max(0);
                (total / 2, total - total / 2)
            }
        },
    })
}

/// Pad the spatial axes (2..) of a channels-first tensor with `value`.
fn pad_spatial(x: &Tensor, pads: &[(i64, i64)], value: f64) -> Result<Tensor> {
    if pads.iter().all(|&(a, b)| a == 0 && b == 0) {
        return Ok(x.shallow_clone());
    }
    let mut p = Vec::with_capacity(2 * pads.len());
    for &(a, b) in pads.iter().rev() {
        p.push(a);
        p.push(b);
    }
    x.f_pad(p.as_slice(), "constant", Some(value))
        .map_err(terr("pad"))
}

fn symmetric(pads: &[(i64, i64)]) -> Option<Vec<i64>> {
    pads.iter()
        .all(|&(a, b)| a == b)
        .then(|| pads.iter().map(|&(a, _)| a).collect())
}

pub(crate) fn run_node(
    m: &TorchModel,
    vals: &[Option<Val>],
    n: &Node,
    mode: Mode,
    reuse_first: bool,
) -> Result<Val> {
    let train = !matches!(mode, Mode::Eval);
    let cx = Cx {
        m,
        vals,
        n,
        train,
        mode,
        reuse_first,
    };
    match &n.op {
        Op::Conv(c) => conv(&cx, c),
        Op::DepthwiseConv(c) => depthwise(&cx, c),
        Op::Dense(c) => dense(&cx, c),
        Op::BatchNorm(c) => batch_norm(&cx, c),
        Op::Activation(a) => {
            let v = cx.single()?;
            let t = match a {
                Activation::Relu {
                    max_value: None,
                    negative_slope,
                    threshold,
                } if cx.reuse_first && *negative_slope == 0.0 && *threshold == 0.0 => {
                    v.t.shallow_clone().f_relu_().map_err(terr("relu"))?
                }
                _ => activation(&v.t, a, &v.lay)?,
            };
            Ok(Val {
                t,
                lay: v.lay.clone(),
            })
        }
        Op::PRelu { .. } => prelu(&cx),
        Op::Dropout { rate, spatial } => {
            let v = cx.single()?;
            let t = match (cx.train && *rate > 0.0, *spatial) {
                (false, _) => v.t.shallow_clone(),
                (true, false) => v.t.f_dropout(*rate as f64, true).map_err(terr("dropout"))?,
                // Spatial dropout drops whole channels: channel axis at physical 1.
                (true, true) => {
                    v.t.f_feature_dropout(*rate as f64, true)
                        .map_err(terr("dropout"))?
                }
            };
            Ok(Val {
                t,
                lay: v.lay.clone(),
            })
        }
        Op::Flatten => {
            let r = cx.single()?.lay.len();
            let x = cx.single_in(&layout::identity_perm(r))?;
            let t = x.f_flatten(1, -1).map_err(terr("flatten"))?;
            Ok(Val { t, lay: vec![0, 1] })
        }
        Op::Reshape { target } => {
            let r = cx.single()?.lay.len();
            let x = cx.single_in(&layout::identity_perm(r))?;
            let mut shape = vec![x.size()[0]];
            shape.extend_from_slice(target);
            let t = x.f_reshape(shape.as_slice()).map_err(terr("reshape"))?;
            Ok(Val {
                t,
                lay: layout::identity_perm(shape.len()),
            })
        }
        Op::Permute { dims } => {
            let r = cx.single()?.lay.len();
            if dims.len() + 1 != r {
                return Err(Error::graph(format!("permutation {dims:?} for rank {r}")));
            }
            let x = cx.single_in(&layout::identity_perm(r))?;
            let mut perm = vec![0i64];
            perm.extend(dims.iter().map(|&d| d as i64));
            let t = x.f_permute(perm.as_slice()).map_err(terr("permute"))?;
            Ok(Val {
                t,
                lay: layout::identity_perm(r),
            })
        }
        Op::ZeroPadding(e) => zero_padding(&cx, e),
        Op::Cropping(e) => cropping(&cx, e),
        Op::UpSampling(u) => upsampling(&cx, u),
        Op::Pool(p) => pool(&cx, p),
        Op::GlobalPool(p) => global_pool(&cx, p),
        Op::Merge(k) => merge(&cx, *k),
        Op::Concatenate { axis } => concatenate(&cx, *axis),
        Op::RepeatVector { n: times } => {
            let x = cx.single_in(&[0, 1])?;
            let t = x
                .f_unsqueeze(1)
                .and_then(|t| t.f_repeat([1, *times as i64, 1].as_slice()))
                .map_err(terr("repeat_vector"))?;
            Ok(Val {
                t,
                lay: vec![0, 1, 2],
            })
        }
    }
}

/// Whether a 2-D convolution goes straight to oneDNN: float32 on the CPU, nothing needing
/// gradients (a frozen inference model). libtorch's own dispatch sends a 1x1 convolution
/// at stride 1 and batch < 16 to its native im2col path when it runs on one thread
/// ("faster single-threaded", `ConvParams::use_mkldnn`); on these channels-last activations
/// that path made the full-width model 1044 ms a run at 1 thread against 717 through oneDNN
/// (2 threads: oneDNN either way, 373-382 against 372-391 ms).
fn onednn_inference(x: &Tensor, w: &Tensor, spatial: usize) -> bool {
    spatial == 2
        && x.device() == tch::Device::Cpu
        && x.kind() == tch::Kind::Float
        && w.kind() == tch::Kind::Float
        && !x.requires_grad()
        && !w.requires_grad()
}

/// The dilation that sends a channels-last 1x1 convolution at stride 1 to oneDNN when it
/// trains. libtorch's dispatch (`ConvParams::use_mkldnn`) routes such a convolution at
/// batch < 16 on one thread to its native im2col + BLAS path, forward and backward; a
/// dilation changes nothing in a 1x1 kernel's output, but a dilated convolution always
/// goes to oneDNN, which still runs its 1x1 kernels on it. Measured on one AVX-512 EPYC,
/// a `finetune` step of the full-width model at 1152x896, batch 2, 1 thread: 0.171-0.177
/// images/s against 0.162 on the native path. The narrow contiguous fixture stays on the
/// native path, which is as fast there or faster (4-128 channels, oneDNN's blocked layout
/// needs a reorder each way). With more threads libtorch already picks oneDNN.
fn onednn_1x1_dilation(c: &ConvConfig, channels_last: bool, x: &Tensor) -> Option<Vec<i64>> {
    let pointwise = c.kernel.len() == 2
        && c.kernel.iter().all(|&k| k == 1)
        && c.strides.iter().all(|&s| s == 1)
        && c.dilation.iter().all(|&d| d == 1);
    (pointwise && channels_last && x.device() == tch::Device::Cpu && x.kind() == tch::Kind::Float)
        .then(|| vec![2, 2])
}

fn conv(cx: &Cx, c: &ConvConfig) -> Result<Val> {
    let (x, lay) = cx.single_cf(c.data_format)?;
    let pads = cx.pads(&x, &c.kernel, &c.strides, &c.dilation, c.padding, false)?;
    let (x, padding) = match symmetric(&pads) {
        Some(p) => (x, p),
        None => (pad_spatial(&x, &pads, 0.0)?, vec![0; pads.len()]),
    };
    let bias = if c.use_bias {
        Some(cx.w("bias")?)
    } else {
        None
    };
    let w = cx.w("kernel")?;
    let (strides, dilation) = (i64s(&c.strides), i64s(&c.dilation));
    let y = if onednn_inference(&x, w, pads.len()) {
        x.f_mkldnn_convolution(w, bias, padding.as_slice(), &strides, &dilation, 1)
    } else {
        let dilation = onednn_1x1_dilation(c, cx.m.channels_last, &x).unwrap_or(dilation);
        x.f_convolution(
            w,
            bias,
            strides.as_slice(),
            padding.as_slice(),
            dilation.as_slice(),
            false,
            vec![0i64; pads.len()].as_slice(),
            1,
        )
    }
    .map_err(terr("conv"))?;
    Ok(Val {
        t: fused_activation(&y, &c.activation, &lay)?,
        lay,
    })
}

fn depthwise(cx: &Cx, c: &DepthwiseConfig) -> Result<Val> {
    let (x, lay) = cx.single_cf(c.data_format)?;
    let cin = x.size()[1];
    let pads = cx.pads(&x, &c.kernel, &c.strides, &c.dilation, c.padding, false)?;
    let (x, padding) = match symmetric(&pads) {
        Some(p) => (x, p),
        None => (pad_spatial(&x, &pads, 0.0)?, vec![0; pads.len()]),
    };
    let bias = if c.use_bias {
        Some(cx.w("bias")?)
    } else {
        None
    };
    let zeros = vec![0i64; pads.len()];
    let dw_bias = if c.pointwise_filters.is_some() {
        None
    } else {
        bias
    };
    let mut y = x
        .f_convolution(
            cx.w("depthwise_kernel")?,
            dw_bias,
            i64s(&c.strides).as_slice(),
            padding.as_slice(),
            i64s(&c.dilation).as_slice(),
            false,
            zeros.as_slice(),
            cin,
        )
        .map_err(terr("depthwise conv"))?;
    if c.pointwise_filters.is_some() {
        let ones = vec![1i64; pads.len()];
        y = y
            .f_convolution(
                cx.w("pointwise_kernel")?,
                bias,
                ones.as_slice(),
                zeros.as_slice(),
                ones.as_slice(),
                false,
                zeros.as_slice(),
                1,
            )
            .map_err(terr("pointwise conv"))?;
    }
    Ok(Val {
        t: activation(&y, &c.activation, &lay)?,
        lay,
    })
}

/// Dense on the last Keras axis: `linear` on 2-D; a 1x1 conv when that axis is the
/// physical channel axis of a channels-first tensor; else `linear` on the Keras layout.
fn dense(cx: &Cx, c: &DenseConfig) -> Result<Val> {
    let v = cx.single()?;
    let r = v.lay.len();
    let w = cx.w("kernel")?;
    let bias = if c.use_bias {
        Some(cx.w("bias")?)
    } else {
        None
    };
    let (y, lay) = if r > 2 && v.lay.get(1) == Some(&(r - 1)) {
        let mut shape = w.size();
        shape.extend(std::iter::repeat_n(1i64, r - 2));
        let wk = w
            .f_reshape(shape.as_slice())
            .map_err(terr("dense kernel"))?;
        let ones = vec![1i64; r - 2];
        let zeros = vec![0i64; r - 2];
        let y =
            v.t.f_convolution(
                &wk,
                bias,
                ones.as_slice(),
                zeros.as_slice(),
                ones.as_slice(),
                false,
                zeros.as_slice(),
                1,
            )
            .map_err(terr("dense (1x1 conv)"))?;
        (y, v.lay.clone())
    } else {
        let lay = layout::identity_perm(r);
        let x = permute_to(&v.t, &v.lay, &lay)?;
        (x.f_linear(w, bias).map_err(terr("dense"))?, lay)
    };
    Ok(Val {
        t: fused_activation(&y, &c.activation, &lay)?,
        lay,
    })
}

fn batch_norm(cx: &Cx, c: &BatchNormConfig) -> Result<Val> {
    let v = cx.single()?;
    let r = v.lay.len();
    if c.axis == 0 || c.axis >= r {
        return Err(Error::graph(format!(
            "BatchNorm axis {} for rank {r}",
            c.axis
        )));
    }
    let p = layout::physical_axis(&v.lay, c.axis);
    // Keras normalises axis `c.axis`; torch normalises physical axis 1.
    let x = if p == 1 {
        v.t.shallow_clone()
    } else {
        v.t.f_movedim(&[p as i64][..], &[1i64][..])
            .map_err(terr("movedim"))?
    };
    let gamma = if c.scale { Some(cx.w("gamma")?) } else { None };
    let beta = if c.center { Some(cx.w("beta")?) } else { None };
    let y = match cx.mode {
        Mode::Fit(spec) => {
            let how = spec.bn.get(&cx.n.layer).copied().ok_or_else(|| {
                Error::graph(format!(
                    "BatchNorm layer {}: no training behaviour in the fit spec",
                    cx.n.layer
                ))
            })?;
            batch_norm_fit(cx, c, &x, gamma, beta, how)?
        }
        // Eval: the moving statistics. Train: batch statistics, moving ones updated with
        // torch momentum = 1 - Keras momentum.
        Mode::Eval | Mode::Train => x
            .f_batch_norm(
                gamma,
                beta,
                Some(cx.w("moving_mean")?),
                Some(cx.w("moving_variance")?),
                cx.train,
                1.0 - c.momentum as f64,
                c.epsilon as f64,
                true,
            )
            .map_err(terr("batch_norm"))?,
    };
    let y = if p == 1 {
        y
    } else {
        y.f_movedim(&[1i64][..], &[p as i64][..])
            .map_err(terr("movedim"))?
    };
    Ok(Val {
        t: y,
        lay: v.lay.clone(),
    })
}

/// BatchNorm in a Keras training step (`x` channels at axis 1). `Inference`: the moving
/// statistics, nothing updated. `Batch`: normalised with the batch mean and biased
/// variance (differentiable), and the moving statistics updated in place, outside the
/// autograd graph: `moving = momentum * moving + (1 - momentum) * batch`, the variance
/// taken as [`BnVar`] says.
fn batch_norm_fit(
    cx: &Cx,
    c: &BatchNormConfig,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    how: BnTrain,
) -> Result<Tensor> {
    let e = terr("batch_norm");
    let mm = cx.w("moving_mean")?;
    let mv = cx.w("moving_variance")?;
    let eps = c.epsilon as f64;
    match how {
        BnTrain::Inference => x
            .f_batch_norm(gamma, beta, Some(mm), Some(mv), false, 0.0, eps, true)
            .map_err(e),
        BnTrain::Batch { var } => {
            // One pass for the statistics: the kernel's own batch mean and inverse standard
            // deviation feed the moving averages (a second reduction over the activations
            // cost 13% of a narrow model's training step).
            let (y, batch_mean, invstd) = x
                .f_native_batch_norm(
                    gamma,
                    beta,
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.0,
                    eps,
                )
                .map_err(&e)?;
            if let Some(var) = var {
                let _guard = tch::no_grad_guard();
                let ch = x.size()[1].max(1);
                let n = (x.numel() as i64 / ch) as f64;
                let rank = x.dim();
                let fused = (rank == 4 || rank == 5) && (c.axis == 1 || c.axis == rank - 1);
                let unbiased = match var {
                    BnVar::Unbiased => true,
                    BnVar::TfKeras => fused,
                    BnVar::Biased | BnVar::BiasedPlusEps => false,
                };
                // invstd = 1 / sqrt(biased variance + eps), so 1 / invstd^2 is Theano's
                // `BiasedPlusEps` as it is; in double, so the subtraction of eps keeps
                // float32's precision.
                let plus_eps = invstd
                    .f_to_kind(Kind::Double)
                    .and_then(|t| t.f_pow_tensor_scalar(-2.0))
                    .map_err(&e)?;
                let stat = if var == BnVar::BiasedPlusEps {
                    plus_eps
                } else {
                    let f = if unbiased && n > 1.0 {
                        n / (n - 1.0)
                    } else {
                        1.0
                    };
                    plus_eps
                        .f_sub_scalar(eps)
                        .and_then(|t| t.f_mul_scalar(f))
                        .map_err(&e)?
                };
                let m = c.momentum as f64;
                for (var_t, batch) in [(mm, batch_mean.detach()), (mv, stat)] {
                    let kept = var_t.f_mul_scalar(m).map_err(&e)?;
                    let new = batch
                        .f_to_kind(var_t.kind())
                        .and_then(|b| b.f_mul_scalar(1.0 - m))
                        .and_then(|b| kept.f_add(&b))
                        .map_err(&e)?;
                    // A handle on the same storage: the VarStore variable changes.
                    let mut target = var_t.shallow_clone();
                    target.f_copy_(&new).map_err(&e)?;
                }
            }
            Ok(y)
        }
    }
}

/// Keras PReLU: `relu(x) + alpha * min(x, 0)`; alpha (Keras layout, no batch) gets a
/// leading 1 and the value's physical layout.
fn prelu(cx: &Cx) -> Result<Val> {
    let v = cx.single()?;
    let a = cx.w("alpha")?;
    let mut shape = vec![1i64];
    shape.extend(a.size());
    if shape.len() != v.lay.len() {
        return Err(Error::graph(format!(
            "alpha of shape {:?} does not match the input rank {}",
            a.size(),
            v.lay.len()
        )));
    }
    let a = a.f_reshape(shape.as_slice()).map_err(terr("prelu"))?;
    let a = permute_to(&a, &layout::identity_perm(shape.len()), &v.lay)?;
    let t =
        v.t.f_clamp_min(0.0)
            .and_then(|pos| {
                v.t.f_clamp_max(0.0)
                    .and_then(|neg| neg.f_mul(&a))
                    .and_then(|neg| pos.f_add(&neg))
            })
            .map_err(terr("prelu"))?;
    Ok(Val {
        t,
        lay: v.lay.clone(),
    })
}

/// A Keras activation on `x` stored in physical layout `lay`.
pub(crate) fn activation(x: &Tensor, act: &Activation, lay: &[usize]) -> Result<Tensor> {
    let e = terr("activation");
    match *act {
        Activation::Linear => Ok(x.shallow_clone()),
        Activation::Relu {
            max_value,
            negative_slope,
            threshold,
        } => match (max_value, negative_slope, threshold) {
            (None, s, t) if s == 0.0 && t == 0.0 => x.f_relu().map_err(e),
            (Some(m), s, t) if s == 0.0 && t == 0.0 => x.f_clamp(0.0, m as f64).map_err(e),
            (m, s, t) => {
                // Keras: x > t ? min(x, m) : s * (x - t)
                let cond = x.f_gt(t as f64).map_err(&e)?;
                let pos = match m {
                    Some(m) => x.f_clamp_max(m as f64).map_err(&e)?,
                    None => x.shallow_clone(),
                };
                let neg = x
                    .f_sub_scalar(t as f64)
                    .and_then(|d| d.f_mul_scalar(s as f64))
                    .map_err(&e)?;
                pos.f_where_self(&cond, &neg).map_err(e)
            }
        },
        Activation::Softmax { axis } => {
            let r = lay.len() as i64;
            let a = if axis < 0 { axis + r } else { axis };
            if a <= 0 || a >= r {
                return Err(Error::graph(format!(
                    "softmax axis {axis} invalid for rank {r}"
                )));
            }
            let p = layout::physical_axis(lay, a as usize);
            x.f_softmax(p as i64, None::<Kind>).map_err(e)
        }
        Activation::Sigmoid => x.f_sigmoid().map_err(e),
        Activation::HardSigmoid { slope, offset } => x
            .f_mul_scalar(slope as f64)
            .and_then(|t| t.f_add_scalar(offset as f64))
            .and_then(|t| t.f_clamp(0.0, 1.0))
            .map_err(e),
        Activation::Tanh => x.f_tanh().map_err(e),
        Activation::Elu { alpha } => {
            let cond = x.f_gt(0.0).map_err(&e)?;
            let neg = x
                .f_expm1()
                .and_then(|t| t.f_mul_scalar(alpha as f64))
                .map_err(&e)?;
            x.f_where_self(&cond, &neg).map_err(e)
        }
        Activation::Selu => x.f_selu().map_err(e),
        Activation::Softplus => x.f_softplus().map_err(e),
        Activation::Softsign => x
            .f_abs()
            .and_then(|a| a.f_add_scalar(1.0))
            .and_then(|d| x.f_div(&d))
            .map_err(e),
        Activation::Exponential => x.f_exp().map_err(e),
        Activation::Swish => x.f_silu().map_err(e),
    }
}

fn zero_padding(cx: &Cx, e: &SpatialEdges) -> Result<Val> {
    let v = cx.single()?;
    let r = v.lay.len();
    let mut phys = vec![(0i64, 0i64); r];
    for (i, &(a, b)) in e.edges.iter().enumerate() {
        let ax = spatial_axis(e.data_format, i);
        if ax >= r {
            return Err(Error::graph(format!("padding axis {ax} for rank {r}")));
        }
        phys[layout::physical_axis(&v.lay, ax)] = (a as i64, b as i64);
    }
    let mut p = Vec::with_capacity(2 * r);
    for &(a, b) in phys.iter().rev() {
        p.push(a);
        p.push(b);
    }
    let t =
        v.t.f_constant_pad_nd(p.as_slice())
            .map_err(terr("zero padding"))?;
    Ok(Val {
        t,
        lay: v.lay.clone(),
    })
}

fn cropping(cx: &Cx, e: &SpatialEdges) -> Result<Val> {
    let v = cx.single()?;
    let r = v.lay.len();
    let mut t = v.t.shallow_clone();
    for (i, &(a, b)) in e.edges.iter().enumerate() {
        let ax = spatial_axis(e.data_format, i);
        if ax >= r {
            return Err(Error::graph(format!("cropping axis {ax} for rank {r}")));
        }
        let p = layout::physical_axis(&v.lay, ax);
        let n = t.size()[p];
        let len = n - a as i64 - b as i64;
        if len <= 0 {
            return Err(Error::graph(format!(
                "cropping ({a}, {b}) leaves nothing of {n}"
            )));
        }
        t = t
            .f_narrow(p as i64, a as i64, len)
            .map_err(terr("cropping"))?;
    }
    Ok(Val {
        t,
        lay: v.lay.clone(),
    })
}

/// Linear interpolation along `axis` by the integer factor `s`.
fn linear_axis(x: &Tensor, axis: i64, s: i64, mode: BilinearMode) -> Result<Tensor> {
    let n = x.size()[axis as usize];
    let (mut i0, mut i1, mut w) = (Vec::new(), Vec::new(), Vec::new());
    for o in 0..n * s {
        let src = match mode {
            BilinearMode::HalfPixel => ((o as f64 + 0.5) / s as f64 - 0.5).max(0.0),
            BilinearMode::Asymmetric => o as f64 / s as f64,
        };
        let lo = (src.floor() as i64).min(n - 1);
        i0.push(lo);
        i1.push((lo + 1).min(n - 1));
        w.push((src - lo as f64) as f32);
    }
    let dev = x.device();
    let e = terr("bilinear upsampling");
    let i0 = Tensor::f_from_slice(&i0)
        .and_then(|t| t.f_to(dev))
        .map_err(&e)?;
    let i1 = Tensor::f_from_slice(&i1)
        .and_then(|t| t.f_to(dev))
        .map_err(&e)?;
    let mut wshape = vec![1i64; x.dim()];
    wshape[axis as usize] = n * s;
    let w = Tensor::f_from_slice(&w)
        .and_then(|t| t.f_reshape(wshape.as_slice()))
        .and_then(|t| t.f_to_kind(x.kind()))
        .and_then(|t| t.f_to(dev))
        .map_err(&e)?;
    let a = x.f_index_select(axis, &i0).map_err(&e)?;
    let b = x.f_index_select(axis, &i1).map_err(&e)?;
    // a + (b - a) * w
    b.f_sub(&a)
        .and_then(|d| d.f_mul(&w))
        .and_then(|d| a.f_add(&d))
        .map_err(e)
}

fn upsampling(cx: &Cx, u: &UpSamplingConfig) -> Result<Val> {
    let (x, lay) = cx.single_cf(u.data_format)?;
    if u.size.len() + 2 != lay.len() {
        return Err(Error::graph(format!(
            "upsampling {:?} for rank {}",
            u.size,
            lay.len()
        )));
    }
    let mut t = x;
    for (i, &f) in u.size.iter().enumerate() {
        let axis = 2 + i as i64;
        t = match u.interpolation {
            Interpolation::Nearest => t
                .f_repeat_interleave_self_int(f as i64, Some(axis), None::<i64>)
                .map_err(terr("upsampling"))?,
            Interpolation::Bilinear => linear_axis(&t, axis, f as i64, cx.m.bilinear)?,
        };
    }
    Ok(Val { t, lay })
}

fn pool(cx: &Cx, p: &PoolConfig) -> Result<Val> {
    let (x, lay) = cx.single_cf(p.data_format)?;
    let rank = p.pool.len();
    let ones = vec![1usize; rank];
    let pads = cx.pads(&x, &p.pool, &p.strides, &ones, p.padding, true)?;
    let k = i64s(&p.pool);
    let s = i64s(&p.strides);
    let zeros = vec![0i64; rank];
    let e = terr("pool");
    let t = match p.kind {
        PoolKind::Max => {
            let xp = pad_spatial(&x, &pads, f64::NEG_INFINITY)?;
            let d = vec![1i64; rank];
            match rank {
                1 => xp.f_max_pool1d(
                    k.as_slice(),
                    s.as_slice(),
                    zeros.as_slice(),
                    d.as_slice(),
                    false,
                ),
                2 => xp.f_max_pool2d(
                    k.as_slice(),
                    s.as_slice(),
                    zeros.as_slice(),
                    d.as_slice(),
                    false,
                ),
                3 => xp.f_max_pool3d(
                    k.as_slice(),
                    s.as_slice(),
                    zeros.as_slice(),
                    d.as_slice(),
                    false,
                ),
                _ => return Err(Error::graph(format!("{rank}-D pooling"))),
            }
            .map_err(e)?
        }
        PoolKind::Avg => {
            // Sum over the zero-padded window / k (count_include_pad on explicit pads).
            let avg = |t: &Tensor| match rank {
                1 => t.f_avg_pool1d(k.as_slice(), s.as_slice(), zeros.as_slice(), false, true),
                2 => t.f_avg_pool2d(
                    k.as_slice(),
                    s.as_slice(),
                    zeros.as_slice(),
                    false,
                    true,
                    None::<i64>,
                ),
                3 => t.f_avg_pool3d(
                    k.as_slice(),
                    s.as_slice(),
                    zeros.as_slice(),
                    false,
                    true,
                    None::<i64>,
                ),
                _ => Err(tch::TchError::Shape(format!("{rank}-D pooling"))),
            };
            let padded = pads.iter().any(|&(a, b)| a != 0 || b != 0);
            let include = matches!(
                cx.m.same,
                SameRule::Theano {
                    avg_include_pad: true
                }
            );
            let num = avg(&pad_spatial(&x, &pads, 0.0)?).map_err(&e)?;
            if padded && !include {
                // Divide by the real pixels: the same pool over a padded mask of ones.
                let size = x.size();
                let mut mshape = vec![1i64, 1];
                mshape.extend_from_slice(&size[2..]);
                let mask = Tensor::f_ones(mshape.as_slice(), (x.kind(), x.device())).map_err(&e)?;
                let den = avg(&pad_spatial(&mask, &pads, 0.0)?).map_err(&e)?;
                num.f_div(&den).map_err(e)?
            } else {
                num
            }
        }
    };
    Ok(Val { t, lay })
}

fn global_pool(cx: &Cx, p: &GlobalPoolConfig) -> Result<Val> {
    let (x, lay) = cx.single_cf(p.data_format)?;
    let dims: Vec<i64> = (2..lay.len() as i64).collect();
    let e = terr("global pool");
    let t = match p.kind {
        PoolKind::Avg => x.f_mean_dim(dims.as_slice(), p.keepdims, None::<Kind>),
        PoolKind::Max => x.f_amax(dims.as_slice(), p.keepdims),
    }
    .map_err(e)?;
    Ok(if p.keepdims {
        Val { t, lay }
    } else {
        Val { t, lay: vec![0, 1] }
    })
}

/// Inputs in the first input's layout when ranks agree, else all in Keras layout.
fn aligned_inputs(cx: &Cx) -> Result<(Vec<Tensor>, Vec<usize>)> {
    let vs: Vec<&Val> =
        cx.n.inputs
            .iter()
            .map(|&v| cx.val(v))
            .collect::<Result<_>>()?;
    let first = vs.first().ok_or_else(|| Error::graph("no inputs"))?;
    let same_rank = vs.iter().all(|v| v.lay.len() == first.lay.len());
    let lay = if same_rank {
        first.lay.clone()
    } else {
        layout::identity_perm(vs.iter().map(|v| v.lay.len()).max().unwrap_or(0))
    };
    let ts = vs
        .iter()
        .map(|v| {
            let want = if v.lay.len() == lay.len() {
                lay.clone()
            } else {
                layout::identity_perm(v.lay.len())
            };
            permute_to(&v.t, &v.lay, &want)
        })
        .collect::<Result<_>>()?;
    Ok((ts, lay))
}

fn merge(cx: &Cx, k: MergeKind) -> Result<Val> {
    let (ts, lay) = aligned_inputs(cx)?;
    let e = terr("merge");
    let (first, rest) = ts.split_first().ok_or_else(|| Error::graph("no inputs"))?;
    if k == MergeKind::Subtract && rest.len() != 1 {
        return Err(Error::graph(format!(
            "subtract needs 2 inputs, got {}",
            ts.len()
        )));
    }
    let mut acc = first.shallow_clone();
    for (i, t) in rest.iter().enumerate() {
        // The first input's last use: the sum goes into its storage (a residual add of a
        // ResNet; with the in-place ReLU, 7% of a full-width inference on libtorch).
        let in_place = cx.reuse_first && i == 0 && first.size() == t.size();
        acc = match k {
            MergeKind::Add | MergeKind::Average if in_place => acc.f_add_(t),
            MergeKind::Add | MergeKind::Average => acc.f_add(t),
            MergeKind::Subtract => acc.f_sub(t),
            MergeKind::Multiply => acc.f_mul(t),
            MergeKind::Maximum => acc.f_maximum(t),
            MergeKind::Minimum => acc.f_minimum(t),
        }
        .map_err(&e)?;
    }
    if k == MergeKind::Average {
        acc = acc.f_div_scalar(ts.len() as f64).map_err(e)?;
    }
    Ok(Val { t: acc, lay })
}

fn concatenate(cx: &Cx, axis: usize) -> Result<Val> {
    let (ts, lay) = aligned_inputs(cx)?;
    if axis >= lay.len() {
        return Err(Error::graph(format!(
            "concat axis {axis} for rank {}",
            lay.len()
        )));
    }
    let p = layout::physical_axis(&lay, axis);
    let t = Tensor::f_cat(&ts, p as i64).map_err(terr("concatenate"))?;
    Ok(Val { t, lay })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a channels-last float 1x1 convolution at stride 1 on the CPU is dilated; the
    /// genuine-Keras step tests (`tests/train_step.rs`, the `*_wide` cases) check its values.
    #[test]
    fn only_channels_last_pointwise_convolutions_go_dilated() {
        let conv = ConvConfig::square;
        let x = Tensor::zeros([2, 8, 4, 4], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(
            onednn_1x1_dilation(&conv(1, 1, 1), true, &x),
            Some(vec![2, 2])
        );
        assert_eq!(onednn_1x1_dilation(&conv(1, 1, 1), false, &x), None);
        assert_eq!(onednn_1x1_dilation(&conv(3, 1, 1), true, &x), None);
        assert_eq!(onednn_1x1_dilation(&conv(1, 2, 1), true, &x), None);
        assert_eq!(onednn_1x1_dilation(&conv(1, 1, 2), true, &x), None);
        let half = x.to_kind(tch::Kind::Half);
        assert_eq!(onednn_1x1_dilation(&conv(1, 1, 1), true, &half), None);
    }

    #[test]
    fn tf_same_pads() {
        let tf = SameRule::TensorFlow;
        // even size, stride 2, k 3: out 5, total = 4*2+3-10 = 1 -> (0, 1)
        assert_eq!(
            window_pads(10, 3, 2, 1, Padding::Same, false, tf).ok(),
            Some((0, 1))
        );
        // stride 1, even kernel 4: total 3 -> (1, 2)
        assert_eq!(
            window_pads(7, 4, 1, 1, Padding::Same, false, tf).ok(),
            Some((1, 2))
        );
        // dilation 2, k 3: eff 5 -> (2, 2)
        assert_eq!(
            window_pads(9, 3, 1, 2, Padding::Same, false, tf).ok(),
            Some((2, 2))
        );
        assert_eq!(
            window_pads(9, 3, 1, 1, Padding::Causal, false, tf).ok(),
            Some((2, 0))
        );
        let th = SameRule::Theano {
            avg_include_pad: true,
        };
        assert_eq!(
            window_pads(10, 3, 2, 1, Padding::Same, false, th).ok(),
            Some((1, 1))
        );
        assert_eq!(
            window_pads(10, 2, 2, 1, Padding::Same, true, th).ok(),
            Some((1, 0))
        );
        assert_eq!(
            window_pads(9, 3, 2, 1, Padding::Same, true, th).ok(),
            Some((1, 1))
        );
    }
}
