//! Every layout permutation of allconv lives here: kernel orientations (Keras HWIO,
//! Theano's flipped kernels, Keras 1 `th` OIHW) and tensor layouts (NHWC <-> NCHW).
//! Backends call these instead of permuting on their own.

use crate::ir::Tensor;

/// Transpose a row-major tensor: output axis `i` is input axis `perm[i]`.
pub fn transpose(t: &Tensor, perm: &[usize]) -> Tensor {
    let rank = t.shape.len();
    debug_assert_eq!(perm.len(), rank);
    let out_shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * t.shape[i + 1];
    }
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut data = Vec::with_capacity(t.data.len());
    let mut idx = vec![0usize; rank];
    for _ in 0..t.data.len() {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        data.push(t.data[off]);
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Tensor {
        shape: out_shape,
        data,
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
}
