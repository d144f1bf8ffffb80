//! Every layout permutation of allconv lives here: kernel orientations (Keras HWIO,
//! Theano's flipped kernels, Keras 1 `th` OIHW) and tensor layouts (NHWC <-> NCHW).
//! Backends call these instead of permuting on their own.

use crate::ir::Tensor;

/// Transpose a row-major tensor: output axis `i` is input axis `perm[i]`. A full-width
/// ResNet50 has 25M weights to permute at export (HWIO -> OIHW), so the permutation is
/// first reduced to its essential axes, then moved in cache-sized tiles.
pub fn transpose(t: &Tensor, perm: &[usize]) -> Tensor {
    debug_assert_eq!(perm.len(), t.shape.len());
    let out_shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
    let (shape, perm) = essential_axes(&t.shape, perm);
    Tensor {
        shape: out_shape,
        data: permute(&t.data, &shape, &perm),
    }
}

/// The same permutation with size-1 axes dropped and input axes that stay adjacent and in
/// order merged: HWIO -> OIHW of a 1x1 kernel is a plain 2D transpose, and of a 3x3 one a
/// transpose of (9, I, O) to (O, I, 9).
fn essential_axes(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let kept: Vec<usize> = (0..shape.len()).filter(|&a| shape[a] > 1).collect();
    let rank_in_kept = |a: usize| kept.iter().position(|&k| k == a);
    // Runs of output axes whose input axes are consecutive, in output order.
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for k in perm.iter().filter_map(|&a| rank_in_kept(a)) {
        match runs.last_mut() {
            Some(run) if k > 0 && run.last() == Some(&(k - 1)) => run.push(k),
            _ => runs.push(vec![k]),
        }
    }
    // Each run is one axis; in the input they sit in the order of their first axis.
    let mut by_input: Vec<usize> = (0..runs.len()).collect();
    by_input.sort_by_key(|&r| runs[r][0]);
    let merged_shape = by_input
        .iter()
        .map(|&r| runs[r].iter().map(|&k| shape[kept[k]]).product())
        .collect();
    let merged_perm = (0..runs.len())
        .map(|r| by_input.iter().position(|&x| x == r).unwrap_or(r))
        .collect();
    (merged_shape, merged_perm)
}

/// Move `src` (row-major `shape`) to the row-major order of `perm`'s output. Walks every
/// output axis but two with an odometer; those two (the output's last axis and the one
/// holding the input's contiguous axis) are moved in 16x16 tiles, so that reads and writes
/// both stay within a few cache lines.
fn permute(src: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    if rank <= 1 || src.is_empty() {
        return src.to_vec();
    }
    let strides = |dims: &[usize]| {
        let mut s = vec![1usize; rank];
        for i in (0..rank - 1).rev() {
            s[i] = s[i + 1] * dims[i + 1];
        }
        s
    };
    let in_strides = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out_strides = strides(&out_shape);
    let last = rank - 1;
    // The output axis that holds the input's contiguous one.
    let q = perm.iter().position(|&p| p == last).unwrap_or(last);
    let outer: Vec<usize> = (0..rank).filter(|&k| k != q && k != last).collect();
    let (rows, row_len) = (out_shape[q], out_shape[last]);
    let (row_step, read_step) = (out_strides[q], in_strides[perm[last]]);
    let mut out = vec![0f32; src.len()];
    let mut idx = vec![0usize; outer.len()];
    let (mut at_in, mut at_out) = (0usize, 0usize);
    loop {
        if q == last {
            // The contiguous axis stays last: whole rows copy.
            out[at_out..at_out + row_len].copy_from_slice(&src[at_in..at_in + row_len]);
        } else {
            const TILE: usize = 16;
            for i0 in (0..rows).step_by(TILE) {
                for j0 in (0..row_len).step_by(TILE) {
                    for i in i0..(i0 + TILE).min(rows) {
                        let o = at_out + i * row_step;
                        let base = at_in + i;
                        for j in j0..(j0 + TILE).min(row_len) {
                            out[o + j] = src[base + j * read_step];
                        }
                    }
                }
            }
        }
        // Advance the odometer over the outer axes, the innermost first.
        let mut k = outer.len();
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            let axis = outer[k];
            idx[k] += 1;
            at_in += in_strides[perm[axis]];
            at_out += out_strides[axis];
            if idx[k] < out_shape[axis] {
                break;
            }
            at_in -= in_strides[perm[axis]] * out_shape[axis];
            at_out -= out_strides[axis] * out_shape[axis];
            idx[k] = 0;
        }
    }
}

/// Keras's `convert_kernel`: reverse every axis but the last two. Theano convolves
/// (flipped kernel), TensorFlow correlates; a Theano-saved kernel needs this to run as
/// a correlation.
pub fn flip_spatial(t: &Tensor) -> Tensor {
    let rank = t.shape.len();
    if rank < 3 {
        return t.clone();
    }
    let spatial = &t.shape[..rank - 2];
    let inner: usize = t.shape[rank - 2..].iter().product();
    let n_spatial: usize = spatial.iter().product();
    let mut data = vec![0f32; t.data.len()];
    let mut idx = vec![0usize; spatial.len()];
    for s in 0..n_spatial {
        // Row-major index of the flipped position.
        let mut flipped = 0usize;
        for (a, &i) in idx.iter().enumerate() {
            flipped = flipped * spatial[a] + (spatial[a] - 1 - i);
        }
        data[flipped * inner..(flipped + 1) * inner]
            .copy_from_slice(&t.data[s * inner..(s + 1) * inner]);
        for a in (0..spatial.len()).rev() {
            idx[a] += 1;
            if idx[a] < spatial[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Tensor {
        shape: t.shape.clone(),
        data,
    }
}

/// Keras 1 `th` kernels are (out, in, rows, cols); Keras 2 keeps HWIO: (2, 3, 1, 0).
pub fn oihw_to_hwio(t: &Tensor) -> Tensor {
    transpose(t, &[2, 3, 1, 0])
}

/// HWIO -> OIHW, the layout of ONNX and libtorch convolutions.
pub fn hwio_to_oihw(t: &Tensor) -> Tensor {
    transpose(t, &[3, 2, 0, 1])
}

/// Permutation that takes a channels-last tensor of `rank` (with batch) to channels-first.
pub fn nhwc_to_nchw_perm(rank: usize) -> Vec<usize> {
    let mut p = vec![0, rank - 1];
    p.extend(1..rank - 1);
    p
}

/// Permutation that takes a channels-first tensor of `rank` (with batch) to channels-last.
pub fn nchw_to_nhwc_perm(rank: usize) -> Vec<usize> {
    let mut p = vec![0];
    p.extend(2..rank);
    p.push(1);
    p
}

/// Identity permutation of `rank` axes.
pub fn identity_perm(rank: usize) -> Vec<usize> {
    (0..rank).collect()
}

/// The inverse permutation: `inverse_perm(p)[p[i]] == i`.
pub fn inverse_perm(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// A physical layout is described by `perm`: physical axis `i` holds logical (Keras)
/// axis `perm[i]`. Returns the Transpose permutation that takes a tensor stored as
/// `from` to one stored as `to`, or `None` when they already agree.
pub fn transpose_between(from: &[usize], to: &[usize]) -> Option<Vec<usize>> {
    if from == to {
        return None;
    }
    let inv = inverse_perm(from);
    Some(to.iter().map(|&k| inv[k]).collect())
}

/// Where logical (Keras) axis `axis` sits physically under layout `perm`.
pub fn physical_axis(perm: &[usize], axis: usize) -> usize {
    inverse_perm(perm)[axis]
}

/// Channels-first physical layout of a Keras tensor of `rank` (with batch) stored in
/// data format `channels_last`: N, C, spatial... (identity when already channels-first).
pub fn channels_first_layout(rank: usize, channels_last: bool) -> Vec<usize> {
    if channels_last && rank >= 3 {
        nhwc_to_nchw_perm(rank)
    } else {
        identity_perm(rank)
    }
}

/// Dense kernel (in, out) -> a 1x..x1 convolution weight (out, in, 1, ...) of `spatial`
/// dims, for a Dense applied to the channel axis of a channels-first tensor.
pub fn dense_to_pointwise_conv(t: &Tensor, spatial: usize) -> Tensor {
    let mut out = transpose(t, &[1, 0]);
    out.shape.extend(std::iter::repeat_n(1, spatial));
    out
}

/// Dense kernel (in, out) -> (out, in), the weight layout of torch's `linear`.
pub fn dense_to_linear(t: &Tensor) -> Tensor {
    transpose(t, &[1, 0])
}

/// Depthwise kernel (spatial..., in, mult) -> grouped-conv weight (in*mult, 1, spatial...):
/// output channel `i*mult + m` reads input channel `i`, as in Keras.
pub fn depthwise_to_grouped(t: &Tensor) -> Tensor {
    let rank = t.shape.len();
    // (spatial..., in, mult) -> (in, mult, spatial...)
    let mut perm = vec![rank - 2, rank - 1];
    perm.extend(0..rank - 2);
    let mut out = transpose(t, &perm);
    let (cin, mult) = (out.shape[0], out.shape[1]);
    let mut shape = vec![cin * mult, 1];
    shape.extend_from_slice(&out.shape[2..]);
    out.shape = shape;
    out
}

/// Convolution kernel (spatial..., in, out) -> (out, in, spatial...) for any spatial rank.
pub fn kernel_to_channels_first(t: &Tensor) -> Tensor {
    let rank = t.shape.len();
    let mut perm = vec![rank - 1, rank - 2];
    perm.extend(0..rank - 2);
    transpose(t, &perm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_reverses_spatial_axes_only() {
        // 2x2 spatial, 1 in, 2 out.
        let t = Tensor::new(vec![2, 2, 1, 2], (0..8).map(|x| x as f32).collect()).unwrap();
        let f = flip_spatial(&t);
        assert_eq!(f.data, vec![6., 7., 4., 5., 2., 3., 0., 1.]);
        assert_eq!(flip_spatial(&f), t);
    }

    /// The incremental walk against the definition, on every permutation up to rank 4.
    #[test]
    fn transpose_matches_its_definition() {
        fn perms(n: usize) -> Vec<Vec<usize>> {
            if n == 0 {
                return vec![vec![]];
            }
            perms(n - 1)
                .into_iter()
                .flat_map(|p| {
                    (0..n).map(move |i| {
                        let mut q = p.clone();
                        q.insert(i, n - 1);
                        q
                    })
                })
                .collect()
        }
        // Small sizes, size-1 axes (dropped before the walk) and sizes past a 16x16 tile.
        let shapes: Vec<Vec<usize>> = (1..=4)
            .map(|rank| [2, 3, 4, 5][..rank].to_vec())
            .chain([
                vec![1, 1, 37, 20],
                vec![3, 1, 17, 33],
                vec![1, 2, 1, 1],
                vec![1],
            ])
            .chain([vec![3, 3, 18, 35], vec![2, 1, 19, 3, 17]])
            .collect();
        for shape in shapes {
            let rank = shape.len();
            let n: usize = shape.iter().product();
            let t = Tensor::new(shape.clone(), (0..n).map(|x| x as f32).collect()).unwrap();
            for perm in perms(rank) {
                let got = transpose(&t, &perm);
                for (o, &v) in got.data.iter().enumerate() {
                    // Unravel o in the output shape, map back to the input index.
                    let (mut rem, mut idx) = (o, vec![0; rank]);
                    for a in (0..rank).rev() {
                        idx[a] = rem % got.shape[a];
                        rem /= got.shape[a];
                    }
                    let mut src = vec![0; rank];
                    for a in 0..rank {
                        src[perm[a]] = idx[a];
                    }
                    let flat = src.iter().zip(&shape).fold(0, |acc, (i, d)| acc * d + i);
                    assert_eq!(v, flat as f32, "perm {perm:?} at {o}");
                }
            }
        }
    }

    #[test]
    fn transpose_round_trip() {
        let t = Tensor::new(vec![2, 3, 4, 5], (0..120).map(|x| x as f32).collect()).unwrap();
        let o = hwio_to_oihw(&t);
        assert_eq!(o.shape, vec![5, 4, 2, 3]);
        assert_eq!(
            oihw_to_hwio(&transpose(&oihw_to_hwio(&o), &[3, 2, 0, 1])),
            oihw_to_hwio(&o)
        );
        assert_eq!(transpose(&o, &[2, 3, 1, 0]), t);
        assert_eq!(nchw_to_nhwc_perm(4), vec![0, 2, 3, 1]);
        assert_eq!(nhwc_to_nchw_perm(4), vec![0, 3, 1, 2]);
    }

    #[test]
    fn layout_bookkeeping() {
        let nchw = channels_first_layout(4, true);
        assert_eq!(nchw, vec![0, 3, 1, 2]);
        assert_eq!(
            transpose_between(&nchw, &identity_perm(4)),
            Some(vec![0, 2, 3, 1])
        );
        assert_eq!(
            transpose_between(&identity_perm(4), &nchw),
            Some(vec![0, 3, 1, 2])
        );
        assert_eq!(transpose_between(&nchw, &nchw), None);
        assert_eq!(physical_axis(&nchw, 3), 1);
        assert_eq!(physical_axis(&nchw, 1), 2);
        let k = Tensor::new(vec![3, 3, 2, 4], (0..72).map(|x| x as f32).collect()).unwrap();
        assert_eq!(kernel_to_channels_first(&k), hwio_to_oihw(&k));
        let d = Tensor::new(vec![1, 1, 2, 3], (0..6).map(|x| x as f32).collect()).unwrap();
        let g = depthwise_to_grouped(&d);
        assert_eq!(g.shape, vec![6, 1, 1, 1]);
        assert_eq!(g.data, vec![0., 1., 2., 3., 4., 5.]);
    }
}
