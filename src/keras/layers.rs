//! One converter per Keras layer class, in an explicit registry keyed by the exact
//! `class_name` (Keras 1 names included). A converter reads the layer's config through
//! [`LayerCtx`], which records every key read so that keys nobody read are reported,
//! never silently ignored.

use crate::ir::*;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

pub type ConvertResult = std::result::Result<Vec<Op>, String>;
pub type Converter = fn(&LayerCtx) -> ConvertResult;

/// Keys that carry no inference semantics (initialisers, regularisers, training-only).
const IGNORED_KEYS: &[&str] = &[
    "name",
    "trainable",
    "dtype",
    "batch_input_shape",
    "batch_shape",
    "input_dim",
    "input_length",
    "input_shape",
    "sparse",
    "ragged",
    "kernel_initializer",
    "bias_initializer",
    "init",
    "depthwise_initializer",
    "pointwise_initializer",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "alpha_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "depthwise_regularizer",
    "pointwise_regularizer",
    "beta_regularizer",
    "gamma_regularizer",
    "alpha_regularizer",
    "W_regularizer",
    "b_regularizer",
    "kernel_constraint",
    "bias_constraint",
    "depthwise_constraint",
    "pointwise_constraint",
    "beta_constraint",
    "gamma_constraint",
    "alpha_constraint",
    "W_constraint",
    "b_constraint",
    "noise_shape",
    "seed",
    "renorm",
    "renorm_clipping",
    "renorm_momentum",
    "virtual_batch_size",
    "adjustment",
    "fused",
    "synchronized",
    "weights",
    "build_config",
    "stddev",
];

/// The view of one layer that converters get.
pub struct LayerCtx<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub config: &'a Value,
    /// Shapes of the inputs (no batch axis).
    pub inputs: Vec<Shape>,
    /// Keras 1.x file: Keras 1 defaults apply.
    pub keras1: bool,
    /// Keras 3 file: Keras 3 activation definitions apply.
    pub keras3: bool,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> LayerCtx<'a> {
    pub fn new(
        name: &'a str,
        class: &'a str,
        config: &'a Value,
        inputs: Vec<Shape>,
        keras1: bool,
        keras3: bool,
    ) -> Self {
        LayerCtx {
            name,
            class,
            config,
            inputs,
            keras1,
            keras3,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// Config keys present that no converter read and that are not known to be inert.
    pub fn unread_keys(&self) -> Vec<String> {
        let used = self.used.borrow();
        match self.config.as_object() {
            Some(o) => o
                .keys()
                .filter(|k| !used.contains(*k) && !IGNORED_KEYS.contains(&k.as_str()))
                .cloned()
                .collect(),
            None => vec![],
        }
    }

    /// The first of `keys` present (Keras 2 name first, then Keras 1 aliases).
    pub fn get(&self, keys: &[&str]) -> Option<&'a Value> {
        for k in keys {
            if let Some(v) = self.config.get(*k) {
                self.used.borrow_mut().insert(k.to_string());
                if !v.is_null() {
                    return Some(v);
                }
            }
        }
        None
    }

    pub fn usize(&self, keys: &[&str]) -> Result<Option<usize>, String> {
        self.get(keys)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| format!("{} must be a non-negative integer, got {v}", keys[0]))
            })
            .transpose()
    }

    pub fn req_usize(&self, keys: &[&str]) -> Result<usize, String> {
        self.usize(keys)?
            .ok_or_else(|| format!("missing {}", keys[0]))
    }

    pub fn f32(&self, keys: &[&str], default: f32) -> Result<f32, String> {
        match self.get(keys) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| format!("{} must be a number, got {v}", keys[0])),
        }
    }

    pub fn opt_f32(&self, keys: &[&str]) -> Result<Option<f32>, String> {
        self.get(keys)
            .map(|v| {
                v.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| format!("{} must be a number, got {v}", keys[0]))
            })
            .transpose()
    }

    pub fn bool(&self, keys: &[&str], default: bool) -> Result<bool, String> {
        match self.get(keys) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("{} must be true or false, got {v}", keys[0])),
        }
    }

    pub fn str(&self, keys: &[&str]) -> Option<&'a str> {
        self.get(keys).and_then(Value::as_str)
    }

    /// An int or a list of `n` ints (Keras normalises tuples to lists in JSON).
    pub fn tuple(&self, keys: &[&str], n: usize) -> Result<Option<Vec<usize>>, String> {
        let Some(v) = self.get(keys) else {
            return Ok(None);
        };
        let bad = || format!("{} must be an int or a list of {n} ints, got {v}", keys[0]);
        match v {
            Value::Number(x) => Ok(Some(vec![x.as_u64().ok_or_else(bad)? as usize; n])),
            Value::Array(a) if a.len() == n => a
                .iter()
                .map(|x| x.as_u64().map(|u| u as usize).ok_or_else(bad))
                .collect::<Result<_, _>>()
                .map(Some),
            _ => Err(bad()),
        }
    }

    /// Keras 1 spells spatial parameters as separate keys (`nb_row`, `nb_col`).
    pub fn tuple_or_split(
        &self,
        keys: &[&str],
        split: &[&str],
        n: usize,
    ) -> Result<Option<Vec<usize>>, String> {
        if let Some(t) = self.tuple(keys, n)? {
            return Ok(Some(t));
        }
        if split.len() == n && split.iter().all(|k| self.config.get(*k).is_some()) {
            return split
                .iter()
                .map(|k| self.req_usize(&[k]))
                .collect::<Result<_, _>>()
                .map(Some);
        }
        Ok(None)
    }

    pub fn data_format(&self) -> Result<DataFormat, String> {
        match self.str(&["data_format", "dim_ordering"]) {
            None | Some("channels_last") | Some("tf") | Some("default") => {
                Ok(DataFormat::ChannelsLast)
            }
            Some("channels_first") | Some("th") => Ok(DataFormat::ChannelsFirst),
            Some(o) => Err(format!("unknown data_format {o:?}")),
        }
    }

    pub fn padding(&self) -> Result<Padding, String> {
        match self.str(&["padding", "border_mode"]) {
            None | Some("valid") => Ok(Padding::Valid),
            Some("same") => Ok(Padding::Same),
            Some("causal") => Ok(Padding::Causal),
            Some(o) => Err(format!("unsupported padding {o:?}")),
        }
    }

    /// The fused `activation` of Conv/Dense layers.
    pub fn activation(&self) -> Result<Activation, String> {
        match self.get(&["activation"]) {
            None => Ok(Activation::Linear),
            Some(Value::String(s)) => activation_by_name(s, self.keras3),
            Some(other) => Err(format!("activation {other} is not a built-in Keras activation name (custom activations are refused)")),
        }
    }

    pub fn rank(&self) -> Result<usize, String> {
        Ok(self.input()?.len() + 1)
    }

    pub fn input(&self) -> Result<&Shape, String> {
        match self.inputs.as_slice() {
            [s] => Ok(s),
            other => Err(format!("expects one input, got {}", other.len())),
        }
    }

    /// A Keras axis (negative counts from the end, batch axis is 0) as a non-negative axis.
    pub fn axis(&self, axis: i64) -> Result<usize, String> {
        let rank = self.inputs.first().map(|s| s.len() + 1).ok_or("no input")? as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        if a <= 0 || a >= rank {
            return Err(format!(
                "axis {axis} is out of range for a rank-{rank} input"
            ));
        }
        Ok(a as usize)
    }
}

/// Keras activation names. `hard_sigmoid` is `clip(0.2x + 0.5)` before Keras 3 and
/// `relu6(x + 3) / 6` in Keras 3.
pub fn activation_by_name(name: &str, keras3: bool) -> Result<Activation, String> {
    Ok(match name {
        "linear" => Activation::Linear,
        "relu" => Activation::RELU,
        "relu6" => Activation::Relu {
            max_value: Some(6.0),
            negative_slope: 0.0,
            threshold: 0.0,
        },
        "softmax" => Activation::Softmax { axis: -1 },
        "sigmoid" => Activation::Sigmoid,
        "hard_sigmoid" if keras3 => Activation::HardSigmoid {
            slope: 1.0 / 6.0,
            offset: 0.5,
        },
        "hard_sigmoid" => Activation::HardSigmoid {
            slope: 0.2,
            offset: 0.5,
        },
        "tanh" => Activation::Tanh,
        "elu" => Activation::Elu { alpha: 1.0 },
        "selu" => Activation::Selu,
        "softplus" => Activation::Softplus,
        "softsign" => Activation::Softsign,
        "exponential" => Activation::Exponential,
        "swish" | "silu" => Activation::Swish,
        other => return Err(format!("unsupported activation {other:?}")),
    })
}

/// The registry: exact Keras class name -> converter. Duplicates are a bug (tested).
pub fn registry() -> &'static BTreeMap<&'static str, Converter> {
    static REG: OnceLock<BTreeMap<&'static str, Converter>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut r = BTreeMap::new();
        for (name, f) in registrations() {
            let previous = r.insert(name, f);
            debug_assert!(previous.is_none(), "{name} registered twice");
        }
        r
    })
}

/// Every registration, as a list so a test can check for duplicates.
pub fn registrations() -> Vec<(&'static str, Converter)> {
    vec![
        ("Conv2D", conv2d as Converter),
        ("Convolution2D", conv2d),
        ("AtrousConvolution2D", conv2d),
        ("Conv1D", conv1d),
        ("Convolution1D", conv1d),
        ("SeparableConv2D", separable_conv2d),
        ("SeparableConvolution2D", separable_conv2d),
        ("DepthwiseConv2D", depthwise_conv2d),
        ("Dense", dense),
        ("BatchNormalization", batch_normalization),
        ("Activation", activation),
        ("ReLU", relu),
        ("LeakyReLU", leaky_relu),
        ("ELU", elu),
        ("PReLU", prelu),
        ("Softmax", softmax),
        ("ThresholdedReLU", thresholded_relu),
        ("Dropout", dropout),
        ("SpatialDropout1D", spatial_dropout),
        ("SpatialDropout2D", spatial_dropout),
        ("GaussianNoise", dropout),
        ("GaussianDropout", dropout),
        ("AlphaDropout", dropout),
        ("Flatten", flatten),
        ("Reshape", reshape),
        ("Permute", permute),
        ("ZeroPadding1D", zero_padding),
        ("ZeroPadding2D", zero_padding),
        ("Cropping1D", cropping),
        ("Cropping2D", cropping),
        ("UpSampling1D", upsampling),
        ("UpSampling2D", upsampling),
        ("MaxPooling1D", pool),
        ("MaxPooling2D", pool),
        ("MaxPool1D", pool),
        ("MaxPool2D", pool),
        ("AveragePooling1D", pool),
        ("AveragePooling2D", pool),
        ("AvgPool1D", pool),
        ("AvgPool2D", pool),
        ("GlobalMaxPooling1D", global_pool),
        ("GlobalMaxPooling2D", global_pool),
        ("GlobalAveragePooling1D", global_pool),
        ("GlobalAveragePooling2D", global_pool),
        ("GlobalMaxPool1D", global_pool),
        ("GlobalMaxPool2D", global_pool),
        ("GlobalAvgPool1D", global_pool),
        ("GlobalAvgPool2D", global_pool),
        ("Add", merge),
        ("Subtract", merge),
        ("Multiply", merge),
        ("Average", merge),
        ("Maximum", merge),
        ("Minimum", merge),
        ("Concatenate", concatenate),
        ("Merge", legacy_merge),
        ("RepeatVector", repeat_vector),
    ]
}

fn conv_common(
    ctx: &LayerCtx,
    rank: usize,
) -> Result<
    (
        Vec<usize>,
        Vec<usize>,
        Vec<usize>,
        Padding,
        DataFormat,
        bool,
        Activation,
    ),
    String,
> {
    let (kernel, strides, dilation) = if rank == 2 {
        (
            ctx.tuple_or_split(&["kernel_size"], &["nb_row", "nb_col"], 2)?
                .ok_or("missing kernel_size")?,
            ctx.tuple(&["strides", "subsample"], 2)?
                .unwrap_or(vec![1, 1]),
            ctx.tuple(&["dilation_rate", "atrous_rate"], 2)?
                .unwrap_or(vec![1, 1]),
        )
    } else {
        (
            ctx.tuple(&["kernel_size", "filter_length"], 1)?
                .ok_or("missing kernel_size")?,
            ctx.tuple(&["strides", "subsample_length"], 1)?
                .unwrap_or(vec![1]),
            ctx.tuple(&["dilation_rate"], 1)?.unwrap_or(vec![1]),
        )
    };
    if kernel.contains(&0) || strides.contains(&0) || dilation.contains(&0) {
        return Err("kernel, strides and dilation must be positive".into());
    }
    if strides.iter().any(|&s| s > 1) && dilation.iter().any(|&d| d > 1) {
        return Err("strides > 1 together with dilation > 1 is not allowed by Keras".into());
    }
    if let Some(g) = ctx.usize(&["groups"])? {
        if g != 1 {
            return Err(format!("grouped convolution (groups={g}) is not supported"));
        }
    }
    let padding = ctx.padding()?;
    // Conv1D has a `data_format` since Keras 2.2 / tf.keras (Keras 2.0.8 drops it from its
    // config, Keras 1 never had it): `channels_first` is (batch, channels, steps). The
    // kernel is (kernel_size, in, out) in both formats, so only the tensor layout changes.
    let data_format = ctx.data_format()?;
    let use_bias = ctx.bool(&["use_bias", "bias"], true)?;
    Ok((
        kernel,
        strides,
        dilation,
        padding,
        data_format,
        use_bias,
        ctx.activation()?,
    ))
}

fn conv2d(ctx: &LayerCtx) -> ConvertResult {
    conv(ctx, 2)
}

fn conv1d(ctx: &LayerCtx) -> ConvertResult {
    conv(ctx, 1)
}

fn conv(ctx: &LayerCtx, rank: usize) -> ConvertResult {
    let filters = ctx.req_usize(&["filters", "nb_filter"])?;
    let (kernel, strides, dilation, padding, data_format, use_bias, activation) =
        conv_common(ctx, rank)?;
    if padding == Padding::Causal && rank != 1 {
        return Err("causal padding is only defined for Conv1D".into());
    }
    Ok(vec![Op::Conv(ConvConfig {
        filters,
        kernel,
        strides,
        dilation,
        padding,
        data_format,
        use_bias,
        activation,
    })])
}

fn separable_conv2d(ctx: &LayerCtx) -> ConvertResult {
    let filters = ctx.req_usize(&["filters", "nb_filter"])?;
    let depth_multiplier = ctx.usize(&["depth_multiplier"])?.unwrap_or(1);
    let (kernel, strides, dilation, padding, data_format, use_bias, activation) =
        conv_common(ctx, 2)?;
    Ok(vec![Op::DepthwiseConv(DepthwiseConfig {
        depth_multiplier,
        pointwise_filters: Some(filters),
        kernel,
        strides,
        dilation,
        padding,
        data_format,
        use_bias,
        activation,
    })])
}

fn depthwise_conv2d(ctx: &LayerCtx) -> ConvertResult {
    let depth_multiplier = ctx.usize(&["depth_multiplier"])?.unwrap_or(1);
    let (kernel, strides, dilation, padding, data_format, use_bias, activation) =
        conv_common(ctx, 2)?;
    Ok(vec![Op::DepthwiseConv(DepthwiseConfig {
        depth_multiplier,
        pointwise_filters: None,
        kernel,
        strides,
        dilation,
        padding,
        data_format,
        use_bias,
        activation,
    })])
}

fn dense(ctx: &LayerCtx) -> ConvertResult {
    let units = ctx.req_usize(&["units", "output_dim"])?;
    let use_bias = ctx.bool(&["use_bias", "bias"], true)?;
    Ok(vec![Op::Dense(DenseConfig {
        units,
        use_bias,
        activation: ctx.activation()?,
    })])
}

fn batch_normalization(ctx: &LayerCtx) -> ConvertResult {
    if let Some(mode) = ctx.usize(&["mode"])? {
        if mode != 0 {
            return Err(format!(
                "Keras 1 BatchNormalization mode {mode} is not supported (only mode 0)"
            ));
        }
    }
    let axis = match ctx.get(&["axis"]) {
        None => -1,
        Some(Value::Number(n)) => n.as_i64().ok_or("axis must be an integer")?,
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64().ok_or("axis must be an integer")?,
        Some(v) => {
            return Err(format!(
                "BatchNormalization over several axes {v} is not supported"
            ))
        }
    };
    Ok(vec![Op::BatchNorm(BatchNormConfig {
        axis: ctx.axis(axis)?,
        epsilon: ctx.f32(&["epsilon"], 1e-3)?,
        momentum: ctx.f32(&["momentum"], 0.99)?,
        center: ctx.bool(&["center"], true)?,
        scale: ctx.bool(&["scale"], true)?,
    })])
}

fn activation(ctx: &LayerCtx) -> ConvertResult {
    Ok(vec![Op::Activation(ctx.activation()?)])
}

fn relu(ctx: &LayerCtx) -> ConvertResult {
    Ok(vec![Op::Activation(Activation::Relu {
        max_value: ctx.opt_f32(&["max_value"])?,
        negative_slope: ctx.f32(&["negative_slope"], 0.0)?,
        threshold: ctx.f32(&["threshold"], 0.0)?,
    })])
}

/// Keras `ThresholdedReLU(theta)`: `x * cast(x > theta)`, i.e. `x` where `x > theta` and 0
/// elsewhere (Keras 1.2.2, 2.x and tf.keras alike; default `theta = 1.0`). Mapped onto the
/// IR ReLU with `threshold = theta`, no cap and no leak. The comparison is strict in Keras,
/// and strict in every lowering of that ReLU (ONNX `Greater`, libtorch `gt`: at `x ==
/// theta` both give `negative_slope * 0 = 0`), so the two agree everywhere, including at
/// `x == theta` exactly (`src/ir/op.rs` words that ReLU as `x >= threshold`, which would
/// give `theta` there; the lowerings do not). The fixtures `k208_layers_1d` and
/// `tfk_act_merge` put `theta` exactly on a value present in the input, so a non-strict
/// lowering fails them.
fn thresholded_relu(ctx: &LayerCtx) -> ConvertResult {
    Ok(vec![Op::Activation(Activation::Relu {
        max_value: None,
        negative_slope: 0.0,
        threshold: ctx.f32(&["theta"], 1.0)?,
    })])
}

fn leaky_relu(ctx: &LayerCtx) -> ConvertResult {
    let default = if ctx.keras3 { 0.3 } else { 0.3 };
    let slope = ctx.f32(&["alpha", "negative_slope"], default)?;
    Ok(vec![Op::Activation(Activation::Relu {
        max_value: None,
        negative_slope: slope,
        threshold: 0.0,
    })])
}

fn elu(ctx: &LayerCtx) -> ConvertResult {
    Ok(vec![Op::Activation(Activation::Elu {
        alpha: ctx.f32(&["alpha"], 1.0)?,
    })])
}

fn prelu(ctx: &LayerCtx) -> ConvertResult {
    let shared_axes = match ctx.get(&["shared_axes"]) {
        None => vec![],
        Some(Value::Number(n)) => vec![n.as_u64().ok_or("shared_axes must be positive")? as usize],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|u| u as usize)
                    .ok_or("shared_axes must be positive")
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(format!("bad shared_axes {v}")),
    };
    Ok(vec![Op::PRelu { shared_axes }])
}

fn softmax(ctx: &LayerCtx) -> ConvertResult {
    let axis = match ctx.get(&["axis"]) {
        None => -1,
        Some(Value::Number(n)) => n.as_i64().ok_or("axis must be an integer")?,
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64().ok_or("axis must be an integer")?,
        Some(v) => return Err(format!("softmax over several axes {v} is not supported")),
    };
    Ok(vec![Op::Activation(Activation::Softmax { axis })])
}

fn dropout(ctx: &LayerCtx) -> ConvertResult {
    Ok(vec![Op::Dropout {
        rate: ctx.f32(&["rate", "p"], 0.0)?,
        spatial: false,
    }])
}

fn spatial_dropout(ctx: &LayerCtx) -> ConvertResult {
    ctx.data_format()?;
    Ok(vec![Op::Dropout {
        rate: ctx.f32(&["rate", "p"], 0.0)?,
        spatial: true,
    }])
}

fn flatten(ctx: &LayerCtx) -> ConvertResult {
    // tf.keras Flatten(data_format='channels_first') moves channels last before flattening.
    let rank = ctx.rank()?;
    if ctx.str(&["data_format"]) == Some("channels_first") && rank > 2 {
        let mut dims: Vec<usize> = (2..rank).collect();
        dims.push(1);
        return Ok(vec![Op::Permute { dims }, Op::Flatten]);
    }
    Ok(vec![Op::Flatten])
}

fn reshape(ctx: &LayerCtx) -> ConvertResult {
    let v = ctx
        .get(&["target_shape", "dims"])
        .ok_or("missing target_shape")?;
    let target = v
        .as_array()
        .ok_or("target_shape must be a list")?
        .iter()
        .map(|x| x.as_i64().ok_or_else(|| format!("bad target_shape {v}")))
        .collect::<Result<_, _>>()?;
    Ok(vec![Op::Reshape { target }])
}

fn permute(ctx: &LayerCtx) -> ConvertResult {
    let v = ctx.get(&["dims"]).ok_or("missing dims")?;
    let dims = v
        .as_array()
        .ok_or("dims must be a list")?
        .iter()
        .map(|x| {
            x.as_u64()
                .map(|u| u as usize)
                .ok_or_else(|| format!("bad dims {v}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![Op::Permute { dims }])
}

/// Spatial rank from the class name suffix (`...1D` / `...2D`).
fn spatial_rank(class: &str) -> usize {
    if class.ends_with("1D") {
        1
    } else {
        2
    }
}

/// Padding/cropping edges: an int, `(a, b)` (symmetric per dim for 2-D, before/after for
/// 1-D), `((t, b), (l, r))`, or Keras 1's flat `(t, b, l, r)`.
fn edges(ctx: &LayerCtx, keys: &[&str], default: usize) -> Result<Vec<(usize, usize)>, String> {
    let rank = spatial_rank(ctx.class);
    let Some(v) = ctx.get(keys) else {
        return Ok(vec![(default, default); rank]);
    };
    let bad = || format!("cannot read {} {v}", keys[0]);
    let int = |x: &Value| x.as_u64().map(|u| u as usize).ok_or_else(bad);
    match (rank, v) {
        (_, Value::Number(_)) => Ok(vec![(int(v)?, int(v)?); rank]),
        (1, Value::Array(a)) if a.len() == 2 => Ok(vec![(int(&a[0])?, int(&a[1])?)]),
        (2, Value::Array(a)) if a.len() == 2 && a.iter().all(Value::is_number) => {
            Ok(vec![(int(&a[0])?, int(&a[0])?), (int(&a[1])?, int(&a[1])?)])
        }
        (2, Value::Array(a)) if a.len() == 4 => {
            Ok(vec![(int(&a[0])?, int(&a[1])?), (int(&a[2])?, int(&a[3])?)])
        }
        (2, Value::Array(a)) if a.len() == 2 => a
            .iter()
            .map(|p| match p.as_array() {
                Some(q) if q.len() == 2 => Ok((int(&q[0])?, int(&q[1])?)),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

fn zero_padding(ctx: &LayerCtx) -> ConvertResult {
    let data_format = if spatial_rank(ctx.class) == 1 {
        DataFormat::ChannelsLast
    } else {
        ctx.data_format()?
    };
    Ok(vec![Op::ZeroPadding(SpatialEdges {
        edges: edges(ctx, &["padding"], 1)?,
        data_format,
    })])
}

fn cropping(ctx: &LayerCtx) -> ConvertResult {
    let data_format = if spatial_rank(ctx.class) == 1 {
        DataFormat::ChannelsLast
    } else {
        ctx.data_format()?
    };
    Ok(vec![Op::Cropping(SpatialEdges {
        edges: edges(ctx, &["cropping"], 0)?,
        data_format,
    })])
}

fn upsampling(ctx: &LayerCtx) -> ConvertResult {
    let rank = spatial_rank(ctx.class);
    let data_format = if rank == 1 {
        DataFormat::ChannelsLast
    } else {
        ctx.data_format()?
    };
    let size = ctx
        .tuple(&["size", "length"], rank)?
        .unwrap_or(vec![2; rank]);
    if size.contains(&0) {
        return Err(format!("size {size:?}: every factor must be at least 1"));
    }
    let interpolation = match ctx.str(&["interpolation"]) {
        None | Some("nearest") => Interpolation::Nearest,
        Some("bilinear") => Interpolation::Bilinear,
        Some(o) => return Err(format!("unsupported interpolation {o:?}")),
    };
    Ok(vec![Op::UpSampling(UpSamplingConfig {
        size,
        data_format,
        interpolation,
    })])
}

fn pool(ctx: &LayerCtx) -> ConvertResult {
    let rank = spatial_rank(ctx.class);
    let kind = if ctx.class.starts_with("Max") {
        PoolKind::Max
    } else {
        PoolKind::Avg
    };
    let pool = ctx
        .tuple(&["pool_size", "pool_length"], rank)?
        .unwrap_or(vec![2; rank]);
    let strides = ctx
        .tuple(&["strides", "stride"], rank)?
        .unwrap_or(pool.clone());
    if pool.contains(&0) || strides.contains(&0) {
        return Err("pool size and strides must be positive".into());
    }
    let data_format = if rank == 1 {
        match ctx.str(&["data_format"]) {
            None | Some("channels_last") => DataFormat::ChannelsLast,
            Some(o) => {
                return Err(format!(
                    "1-D pooling with data_format {o:?} is not supported"
                ))
            }
        }
    } else {
        ctx.data_format()?
    };
    let padding = ctx.padding()?;
    if padding == Padding::Causal {
        return Err("causal padding is not defined for pooling".into());
    }
    Ok(vec![Op::Pool(PoolConfig {
        kind,
        pool,
        strides,
        padding,
        data_format,
    })])
}

fn global_pool(ctx: &LayerCtx) -> ConvertResult {
    let rank = spatial_rank(ctx.class);
    let kind = if ctx.class.starts_with("GlobalMax") {
        PoolKind::Max
    } else {
        PoolKind::Avg
    };
    let data_format = ctx.data_format()?;
    Ok(vec![Op::GlobalPool(GlobalPoolConfig {
        kind,
        rank,
        data_format,
        keepdims: ctx.bool(&["keepdims"], false)?,
    })])
}

fn merge(ctx: &LayerCtx) -> ConvertResult {
    let kind = match ctx.class {
        "Add" => MergeKind::Add,
        "Subtract" => MergeKind::Subtract,
        "Multiply" => MergeKind::Multiply,
        "Average" => MergeKind::Average,
        "Maximum" => MergeKind::Maximum,
        "Minimum" => MergeKind::Minimum,
        other => return Err(format!("{other} is not a merge layer")),
    };
    Ok(vec![Op::Merge(kind)])
}

fn concatenate(ctx: &LayerCtx) -> ConvertResult {
    let axis = match ctx.get(&["axis", "concat_axis"]) {
        None => -1,
        Some(v) => v.as_i64().ok_or("axis must be an integer")?,
    };
    Ok(vec![Op::Concatenate {
        axis: ctx.axis(axis)?,
    }])
}

/// Keras 1 `Merge` / `merge(...)`. Modes given as code are refused earlier (security).
fn legacy_merge(ctx: &LayerCtx) -> ConvertResult {
    let mode = ctx.str(&["mode"]).unwrap_or("sum");
    ctx.get(&[
        "mode_type",
        "output_shape",
        "output_shape_type",
        "output_mask",
        "output_mask_type",
        "arguments",
        "dot_axes",
        "layers",
    ]);
    Ok(vec![match mode {
        "sum" => Op::Merge(MergeKind::Add),
        "mul" => Op::Merge(MergeKind::Multiply),
        "ave" => Op::Merge(MergeKind::Average),
        "max" => Op::Merge(MergeKind::Maximum),
        "concat" => {
            let axis = ctx
                .get(&["concat_axis"])
                .and_then(Value::as_i64)
                .unwrap_or(-1);
            Op::Concatenate {
                axis: ctx.axis(axis)?,
            }
        }
        other => return Err(format!("Merge mode {other:?} is not supported")),
    }])
}

fn repeat_vector(ctx: &LayerCtx) -> ConvertResult {
    Ok(vec![Op::RepeatVector {
        n: ctx.req_usize(&["n"])?,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_has_no_duplicates() {
        let regs = registrations();
        let names: BTreeSet<_> = regs.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), regs.len());
    }

    #[test]
    fn keras1_conv_keys() {
        let cfg = serde_json::json!({"nb_filter": 8, "nb_row": 3, "nb_col": 5, "border_mode": "same",
            "subsample": [2, 1], "dim_ordering": "th", "activation": "relu", "bias": false});
        let ctx = LayerCtx::new(
            "c",
            "Convolution2D",
            &cfg,
            vec![vec![Dim::Known(3), Dim::Known(9), Dim::Known(9)]],
            true,
            false,
        );
        let ops = conv2d(&ctx).unwrap();
        let Op::Conv(c) = &ops[0] else { panic!() };
        assert_eq!(
            (c.filters, c.kernel.clone(), c.strides.clone()),
            (8, vec![3, 5], vec![2, 1])
        );
        assert_eq!(
            (c.padding, c.data_format, c.use_bias),
            (Padding::Same, DataFormat::ChannelsFirst, false)
        );
        assert!(ctx.unread_keys().is_empty(), "{:?}", ctx.unread_keys());
    }

    #[test]
    fn upsampling_by_zero_is_refused() {
        let cfg = serde_json::json!({"size": [2, 0], "data_format": "channels_last"});
        let ctx = LayerCtx::new(
            "up",
            "UpSampling2D",
            &cfg,
            vec![vec![Dim::Known(4), Dim::Known(4), Dim::Known(3)]],
            false,
            false,
        );
        let e = upsampling(&ctx).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn conv1d_channels_first_and_thresholded_relu() {
        let cfg = serde_json::json!({"filters": 4, "kernel_size": [3], "strides": [1],
            "padding": "causal", "data_format": "channels_first", "dilation_rate": [2],
            "groups": 1, "activation": "linear", "use_bias": false});
        let ctx = LayerCtx::new(
            "c",
            "Conv1D",
            &cfg,
            vec![vec![Dim::Known(3), Dim::Known(17)]],
            false,
            false,
        );
        let ops = conv1d(&ctx).unwrap();
        let Op::Conv(c) = &ops[0] else { panic!() };
        assert_eq!(c.data_format, DataFormat::ChannelsFirst);
        assert_eq!((c.kernel.clone(), c.padding), (vec![3], Padding::Causal));
        assert!(ctx.unread_keys().is_empty(), "{:?}", ctx.unread_keys());

        let cfg = serde_json::json!({"theta": 0.30158731341362});
        let ctx = LayerCtx::new(
            "t",
            "ThresholdedReLU",
            &cfg,
            vec![vec![Dim::Known(3)]],
            false,
            false,
        );
        let ops = registry()["ThresholdedReLU"](&ctx).unwrap();
        assert_eq!(
            ops,
            vec![Op::Activation(Activation::Relu {
                max_value: None,
                negative_slope: 0.0,
                threshold: 0.30158731341362f64 as f32,
            })]
        );
        assert!(ctx.unread_keys().is_empty(), "{:?}", ctx.unread_keys());
    }
}
