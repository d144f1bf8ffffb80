//! The memory order of libtorch's activations: channels-last (NHWC) or contiguous (NCHW).
//!
//! A Keras `channels_last` input is permuted to libtorch's (N, C, H, W) as a view, which
//! keeps channels-last memory; convolutions then keep that order end to end. oneDNN's
//! convolutions are fastest on it, but libtorch's channels-last BatchNorm, pooling and
//! element-wise kernels vectorise across channels, so a layer with fewer channels than a
//! vector register's lanes wastes most of each vector. Measured on one AVX-512 EPYC, 2
//! threads, a `finetune` step (`scripts/bench_train.sh`): the paper's full-width ResNet50 at
//! 1152x896 trains 1.35x faster channels-last than contiguous; the narrow test fixture
//! (4-128 channels, most of its activations at 4-16) 1.6x faster contiguous.

use crate::ir::{Dim, Graph, Op};

/// The channel count at or above which channels-last pays: compared with the median of the
/// convolutions' output channels, each convolution weighted by its output's size.
pub const CHANNELS_LAST_FROM: usize = 32;

/// The spatial size at which the weights are taken when the input's own is not declared.
const NOMINAL_SPATIAL: usize = 256;

/// Whether `g`'s activations should be channels-last in libtorch: the activation-weighted
/// median of its 2-D convolutions' output channels is at least [`CHANNELS_LAST_FROM`].
/// A graph without 2-D convolutions, or whose shapes cannot be inferred, stays
/// channels-last (what a Keras input is as it comes).
pub fn channels_last_pays(g: &Graph, param_shape: impl Fn(&str) -> Option<Vec<usize>>) -> bool {
    let mut g = g.structure();
    let undeclared = g
        .inputs
        .iter()
        .any(|i| i.shape.iter().any(|d| d.known().is_none()));
    let nominal = undeclared
        .then(|| g.inputs.first())
        .flatten()
        .map(|i| vec![NOMINAL_SPATIAL; i.shape.len().saturating_sub(1)]);
    if g.infer_shapes_with(nominal.as_deref(), param_shape)
        .is_err()
    {
        return true;
    }
    let mut convs: Vec<(usize, u128)> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv(c) if c.kernel.len() == 2 => {
                let elements = g.values[n.output]
                    .shape
                    .iter()
                    .map(Dim::known)
                    .try_fold(1u128, |acc, d| d.map(|d| acc * d as u128))?;
                Some((c.filters, elements))
            }
            _ => None,
        })
        .collect();
    if convs.is_empty() {
        return true;
    }
    convs.sort_unstable();
    let total: u128 = convs.iter().map(|c| c.1).sum();
    let mut seen = 0u128;
    for (channels, elements) in convs {
        seen += elements;
        if 2 * seen >= total {
            return channels >= CHANNELS_LAST_FROM;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataFormat;

    /// A chain of 3x3 convolutions (filters, stride) on a `size`-square RGB input
    /// (`None`: undeclared spatial size).
    fn chain(size: Option<usize>, layers: &[(usize, usize)]) -> Graph {
        let mut g = Graph::default();
        let d = |n: Option<usize>, s: &str| n.map_or(Dim::sym(s), Dim::Known);
        let mut v = g.add_input(
            "x",
            vec![d(size, "h"), d(size, "w"), Dim::Known(3)],
            DataFormat::ChannelsLast,
        );
        for (i, &(f, s)) in layers.iter().enumerate() {
            v = g.add_node(
                format!("c{i}"),
                format!("c{i}"),
                "Conv2D".into(),
                Op::test_conv(f, 3, s),
                vec![v],
            );
        }
        g.outputs = vec![v];
        g
    }

    #[test]
    fn wide_networks_go_channels_last_and_narrow_ones_contiguous() {
        let shapes = |_: &str| None;
        // Full-width ResNet-like: 64 channels at full size, then wider and smaller.
        let wide = chain(
            Some(224),
            &[(64, 2), (64, 1), (256, 1), (512, 2), (2048, 2)],
        );
        assert!(channels_last_pays(&wide, shapes));
        // The narrow fixture's pattern: 4 channels at full size, 16 and 32 later.
        let narrow = chain(Some(224), &[(4, 2), (4, 1), (16, 1), (32, 2), (128, 2)]);
        assert!(!channels_last_pays(&narrow, shapes));
        // A late wide layer does not outweigh the large narrow ones, whatever its width.
        let late = chain(Some(224), &[(8, 1), (8, 1), (8, 1), (4096, 16)]);
        assert!(!channels_last_pays(&late, shapes));
        // Undeclared sizes are weighed at a nominal size; no convolution keeps the input's.
        assert!(!channels_last_pays(
            &chain(None, &[(4, 1), (16, 1), (64, 4)]),
            shapes
        ));
        assert!(channels_last_pays(&chain(Some(8), &[]), shapes));
    }
}
