//! The closed set of operations. Every backend matches on [`Op`] exhaustively, so a new
//! variant does not compile until each lowering handles it.
//!
//! Configs are typed and framework-neutral. Tensors keep the layout of the source model
//! (Keras: NHWC for `channels_last`, NCHW for `channels_first`); ops that care say which
//! through [`DataFormat`]. Weights live in [`super::Graph::params`] under
//! `"{layer}.{slot}"` in Keras layout (conv kernels HWIO, dense kernels (in, out)).

use serde::Serialize;

/// Where the channel axis sits for spatial ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    ChannelsLast,
    ChannelsFirst,
}

/// Keras/TensorFlow padding modes. `Same` is TensorFlow's: `out = ceil(in / stride)`, the
/// odd pixel of padding goes to the bottom/right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    Valid,
    Same,
    /// Keras 1 / Conv1D `causal`: pad `(k-1)*d` on the left only.
    Causal,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    Linear,
    /// `max(x, threshold)`-style ReLU with Keras's optional cap and leak:
    /// `x > threshold ? min(x, max_value) : negative_slope * (x - threshold)` (strict, as
    /// Keras and both lowerings compute it; ThresholdedReLU is this with slope 0).
    Relu {
        max_value: Option<f32>,
        negative_slope: f32,
        threshold: f32,
    },
    Softmax {
        axis: i64,
    },
    Sigmoid,
    /// `clip(slope * x + offset, 0, 1)`.
    HardSigmoid {
        slope: f32,
        offset: f32,
    },
    Tanh,
    Elu {
        alpha: f32,
    },
    Selu,
    Softplus,
    Softsign,
    Exponential,
    /// `x * sigmoid(x)`: tf.keras `swish`/`silu`.
    Swish,
}

impl Activation {
    pub const RELU: Activation = Activation::Relu {
        max_value: None,
        negative_slope: 0.0,
        threshold: 0.0,
    };

    pub fn is_linear(&self) -> bool {
        matches!(self, Activation::Linear)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Max,
    Avg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeKind {
    Add,
    Subtract,
    Multiply,
    Average,
    Maximum,
    Minimum,
}

/// Convolution over 1 or 2 spatial dims (`kernel.len()` is the rank).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConvConfig {
    pub filters: usize,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilation: Vec<usize>,
    pub padding: Padding,
    pub data_format: DataFormat,
    pub use_bias: bool,
    pub activation: Activation,
}

#[cfg(test)]
impl ConvConfig {
    /// Tests' shorthand: a square 2-D convolution of 2 filters with bias, `same` padding,
    /// channels-last, no activation.
    pub(crate) fn square(kernel: usize, strides: usize, dilation: usize) -> ConvConfig {
        ConvConfig {
            filters: 2,
            kernel: vec![kernel; 2],
            strides: vec![strides; 2],
            dilation: vec![dilation; 2],
            padding: Padding::Same,
            data_format: DataFormat::ChannelsLast,
            use_bias: true,
            activation: Activation::Linear,
        }
    }
}

/// Depthwise (`pointwise == false`) or separable (`pointwise == true`) 2-D convolution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthwiseConfig {
    pub depth_multiplier: usize,
    /// Output channels of the pointwise stage; `None` for a pure depthwise conv.
    pub pointwise_filters: Option<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilation: Vec<usize>,
    pub padding: Padding,
    pub data_format: DataFormat,
    pub use_bias: bool,
    pub activation: Activation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DenseConfig {
    pub units: usize,
    pub use_bias: bool,
    pub activation: Activation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchNormConfig {
    /// Normalised axis, counted on the full tensor including the batch axis, non-negative.
    pub axis: usize,
    pub epsilon: f32,
    /// Keras momentum (0.99): `moving = moving * momentum + batch * (1 - momentum)`.
    pub momentum: f32,
    pub center: bool,
    pub scale: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolConfig {
    pub kind: PoolKind,
    pub pool: Vec<usize>,
    pub strides: Vec<usize>,
    pub padding: Padding,
    pub data_format: DataFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlobalPoolConfig {
    pub kind: PoolKind,
    /// Spatial rank: 1 or 2.
    pub rank: usize,
    pub data_format: DataFormat,
    pub keepdims: bool,
}

/// `(before, after)` per spatial dim, for padding and cropping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpatialEdges {
    pub edges: Vec<(usize, usize)>,
    pub data_format: DataFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Nearest,
    Bilinear,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpSamplingConfig {
    pub size: Vec<usize>,
    pub data_format: DataFormat,
    pub interpolation: Interpolation,
}

/// One IR operation. Inputs are positional; see each variant for the arity.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// 1 input. Weights: `kernel` (spatial..., in, out), `bias`.
    Conv(ConvConfig),
    /// 1 input. Weights: `depthwise_kernel` (spatial..., in, multiplier), optional
    /// `pointwise_kernel` (1, 1, in*multiplier, out), `bias`.
    DepthwiseConv(DepthwiseConfig),
    /// 1 input; acts on the last axis whatever the rank. Weights: `kernel` (in, units), `bias`.
    Dense(DenseConfig),
    /// 1 input. Weights: `gamma` (if scale), `beta` (if center), `moving_mean`, `moving_variance`.
    BatchNorm(BatchNormConfig),
    /// 1 input.
    Activation(Activation),
    /// 1 input. Weight: `alpha`, shaped like the input without batch, with shared axes as 1.
    PRelu {
        shared_axes: Vec<usize>,
    },
    /// Identity at inference; `spatial` drops whole feature maps in training.
    Dropout {
        rate: f32,
        spatial: bool,
    },
    /// Row-major flatten of everything but the batch, in the stored layout (Keras).
    Flatten,
    /// Target shape without the batch axis; one entry may be -1.
    Reshape {
        target: Vec<i64>,
    },
    /// Permutation of the non-batch axes, 1-based as in Keras.
    Permute {
        dims: Vec<usize>,
    },
    ZeroPadding(SpatialEdges),
    Cropping(SpatialEdges),
    UpSampling(UpSamplingConfig),
    Pool(PoolConfig),
    GlobalPool(GlobalPoolConfig),
    /// n inputs of equal shape (Subtract: exactly 2).
    Merge(MergeKind),
    /// n inputs; `axis` counted with the batch axis, non-negative.
    Concatenate {
        axis: usize,
    },
    /// 1 input (batch, features) -> (batch, n, features).
    RepeatVector {
        n: usize,
    },
}

#[cfg(test)]
impl Op {
    /// A square 2-D convolution for tests: `same` padding, channels-last, no bias, linear.
    pub(crate) fn test_conv(filters: usize, kernel: usize, stride: usize) -> Op {
        Op::Conv(ConvConfig {
            filters,
            kernel: vec![kernel; 2],
            strides: vec![stride; 2],
            dilation: vec![1; 2],
            padding: Padding::Same,
            data_format: DataFormat::ChannelsLast,
            use_bias: false,
            activation: Activation::Linear,
        })
    }
}

impl Op {
    /// The weight slots this op reads, in Keras's storage order.
    pub fn weight_slots(&self) -> Vec<&'static str> {
        match self {
            Op::Conv(c) => with_bias(vec!["kernel"], c.use_bias),
            Op::DepthwiseConv(c) => {
                let mut v = vec!["depthwise_kernel"];
                if c.pointwise_filters.is_some() {
                    v.push("pointwise_kernel");
                }
                with_bias(v, c.use_bias)
            }
            Op::Dense(c) => with_bias(vec!["kernel"], c.use_bias),
            Op::BatchNorm(c) => {
                let mut v = Vec::new();
                if c.scale {
                    v.push("gamma");
                }
                if c.center {
                    v.push("beta");
                }
                v.extend(["moving_mean", "moving_variance"]);
                v
            }
            Op::PRelu { .. } => vec!["alpha"],
            Op::Activation(_)
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
            | Op::RepeatVector { .. } => vec![],
        }
    }

    /// Short lowercase name for tables and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv(_) => "conv",
            Op::DepthwiseConv(c) if c.pointwise_filters.is_some() => "separable_conv",
            Op::DepthwiseConv(_) => "depthwise_conv",
            Op::Dense(_) => "dense",
            Op::BatchNorm(_) => "batch_norm",
            Op::Activation(_) => "activation",
            Op::PRelu { .. } => "prelu",
            Op::Dropout { .. } => "dropout",
            Op::Flatten => "flatten",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::ZeroPadding(_) => "zero_padding",
            Op::Cropping(_) => "cropping",
            Op::UpSampling(_) => "upsampling",
            Op::Pool(_) => "pool",
            Op::GlobalPool(_) => "global_pool",
            Op::Merge(_) => "merge",
            Op::Concatenate { .. } => "concatenate",
            Op::RepeatVector { .. } => "repeat_vector",
        }
    }
}

fn with_bias(mut v: Vec<&'static str>, use_bias: bool) -> Vec<&'static str> {
    if use_bias {
        v.push("bias");
    }
    v
}
