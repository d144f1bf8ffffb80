//! `cv2.resize(img, (W, H), interpolation=cv2.INTER_CUBIC)` reproduced bit for bit.
//!
//! Mirrors OpenCV's `resizeGeneric_` (imgproc/src/resize.cpp) on an x86-64 build with
//! the SSE baseline (opencv-python wheels):
//! - source coordinate `fx = (float)((dx + 0.5) * (1/inv_scale) - 0.5)` with
//!   `inv_scale = dst/src` in double, taps `floor(fx) - 1 ..= floor(fx) + 2`, Keys cubic
//!   weights with `A = -0.75` in float; border taps clamp to the edge (replicate),
//!   both horizontally and vertically. No antialiasing on downscale (OpenCV has none).
//! - uint8: weights rounded to Q11 `short`s; the horizontal pass sums in `int`; the
//!   vertical pass runs in SIMD float (`S0*b0 + (S1*b1 + (S2*b2 + S3*b3))` with
//!   `b = beta / 2^22`, round-half-even, saturate) for the first
//!   `width - width % 8` columns, and in exact integer arithmetic
//!   (`(sum + 2^21) >> 22`, saturate) for the remaining tail columns.
//! - uint16: float weights, float sums; SIMD order as above for blocks of 8 columns,
//!   left-to-right order in the tail; round-half-even and saturate to 0..=65535.
//! - float32: as uint16 without rounding; SIMD blocks of 4 columns.
//! - Same size: a plain copy, as OpenCV does.

use super::{DataError, GrayImage};

const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;
/// Columns per SIMD block of OpenCV's vertical pass (128-bit baseline).
const LANES_U8: usize = 8;
const LANES_U16: usize = 8;
const LANES_F32: usize = 4;

/// OpenCV `interpolateCubic` (float arithmetic, same operation order).
fn cubic_coeffs(x: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    let c3 = 1.0 - c0 - c1 - c2;
    [c0, c1, c2, c3]
}

/// Per output index: the 4 clamped source indices and the float weights.
struct Taps {
    idx: Vec<[usize; 4]>,
    w: Vec<[f32; 4]>,
}

fn taps(src: usize, dst: usize) -> Taps {
    let inv_scale = dst as f64 / src as f64;
    let scale = 1.0 / inv_scale;
    let last = src as i64 - 1;
    let mut idx = Vec::with_capacity(dst);
    let mut w = Vec::with_capacity(dst);
    for d in 0..dst {
        let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
        let s = f.floor();
        let frac = f - s;
        let s = s as i64;
        let mut i = [0usize; 4];
        for (k, slot) in i.iter_mut().enumerate() {
            *slot = (s - 1 + k as i64).clamp(0, last) as usize;
        }
        idx.push(i);
        w.push(cubic_coeffs(frac));
    }
    Taps { idx, w }
}

/// OpenCV `cvRound` / `saturate_cast<short>` on a float weight.
fn fixed(w: [f32; 4]) -> [i32; 4] {
    w.map(|c| (c * COEF_SCALE).round_ties_even() as i32)
}

fn check(src_len: usize, sh: usize, sw: usize, dh: usize, dw: usize) -> Result<(), DataError> {
    if sh == 0 || sw == 0 || dh == 0 || dw == 0 {
        return Err(DataError::Invalid(format!(
            "resize: empty size ({sh}x{sw} -> {dh}x{dw})"
        )));
    }
    if sh.checked_mul(sw) != Some(src_len) {
        return Err(DataError::Invalid(format!(
            "resize: {src_len} pixels do not fill {sh}x{sw}"
        )));
    }
    if let Some(msg) = super::size_over_limits(dw, dh, &crate::limits::current()) {
        return Err(DataError::Invalid(format!("resize target: {msg}")));
    }
    Ok(())
}

/// Source rows that some output row reads (the horizontal pass skips the rest).
fn used_rows(sh: usize, ty: &Taps) -> Vec<bool> {
    let mut used = vec![false; sh];
    for i in ty.idx.iter().flatten() {
        used[*i] = true;
    }
    used
}

/// Horizontal pass for all used rows, in float (uint16 and float32 paths); `load` gives a
/// source value as the float OpenCV computes with (a uint16 image is read in place, its
/// values converted as they are used rather than in a pass of their own).
fn hpass_f32<T: Copy>(
    src: &[T],
    sh: usize,
    sw: usize,
    tx: &Taps,
    used: &[bool],
    load: impl Fn(T) -> f32,
) -> Vec<f32> {
    let dw = tx.idx.len();
    let mut out = vec![0f32; sh * dw];
    // One source row converted at a time (a vectorised pass, each value once), then every
    // output reads its four taps from it; the sum keeps OpenCV's order.
    let mut row = vec![0f32; sw];
    for y in (0..sh).filter(|&y| used[y]) {
        for (r, &v) in row.iter_mut().zip(&src[y * sw..(y + 1) * sw]) {
            *r = load(v);
        }
        let d = &mut out[y * dw..(y + 1) * dw];
        for ((o, i), a) in d.iter_mut().zip(&tx.idx).zip(&tx.w) {
            // Inside the image the taps are four neighbours: one slice, one bounds check.
            let v: [f32; 4] = match row.get(i[0]..i[0] + 4) {
                Some(w) if i[3] == i[0] + 3 => [w[0], w[1], w[2], w[3]],
                _ => i.map(|k| row[k]),
            };
            *o = v[0] * a[0] + v[1] * a[1] + v[2] * a[2] + v[3] * a[3];
        }
    }
    out
}

/// Vertical pass in float with OpenCV's SIMD/tail split; `finish` rounds/saturates.
#[allow(clippy::needless_range_loop)] // four rows indexed in lockstep
fn vpass_f32<T>(
    h: &[f32],
    dw: usize,
    ty: &Taps,
    lanes: usize,
    finish: impl Fn(f32) -> T,
) -> Vec<T> {
    let simd_end = dw - dw % lanes;
    let mut out = Vec::with_capacity(ty.idx.len() * dw);
    for (i, b) in ty.idx.iter().zip(&ty.w) {
        let r: [&[f32]; 4] = i.map(|y| &h[y * dw..(y + 1) * dw]);
        for x in 0..dw {
            let v = if x < simd_end {
                r[0][x] * b[0] + (r[1][x] * b[1] + (r[2][x] * b[2] + r[3][x] * b[3]))
            } else {
                r[0][x] * b[0] + r[1][x] * b[1] + r[2][x] * b[2] + r[3][x] * b[3]
            };
            out.push(finish(v));
        }
    }
    out
}

/// `cv2.resize(INTER_CUBIC)` on a uint8 image.
#[allow(clippy::needless_range_loop)] // four rows indexed in lockstep
pub fn resize_cubic_u8(
    src: &[u8],
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
) -> Result<Vec<u8>, DataError> {
    check(src.len(), sh, sw, dh, dw)?;
    if (sh, sw) == (dh, dw) {
        return Ok(src.to_vec());
    }
    let (tx, ty) = (taps(sw, dw), taps(sh, dh));
    let ax: Vec<[i32; 4]> = tx.w.iter().map(|&w| fixed(w)).collect();
    let used = used_rows(sh, &ty);
    let mut h = vec![0i32; sh * dw];
    for y in (0..sh).filter(|&y| used[y]) {
        let s = &src[y * sw..(y + 1) * sw];
        for ((o, i), a) in h[y * dw..(y + 1) * dw].iter_mut().zip(&tx.idx).zip(&ax) {
            *o = (0..4).map(|k| i32::from(s[i[k]]) * a[k]).sum();
        }
    }
    let scale = 1.0f32 / (COEF_SCALE * COEF_SCALE);
    let simd_end = dw - dw % LANES_U8;
    let mut out = Vec::with_capacity(dh * dw);
    for (i, w) in ty.idx.iter().zip(&ty.w) {
        let b = fixed(*w);
        let bf = b.map(|c| c as f32 * scale);
        let r: [&[i32]; 4] = i.map(|y| &h[y * dw..(y + 1) * dw]);
        for x in 0..dw {
            let v = if x < simd_end {
                let f = |k: usize| r[k][x] as f32;
                let s = f(0) * bf[0] + (f(1) * bf[1] + (f(2) * bf[2] + f(3) * bf[3]));
                // v_round (ties to even; out-of-range gives INT_MIN) then saturating packs.
                let s = s.round_ties_even();
                if s >= 255.0 {
                    255
                } else if s > 0.0 {
                    s as u8
                } else {
                    0
                }
            } else {
                let sum = (0..4).fold(0i32, |acc, k| acc.wrapping_add(r[k][x].wrapping_mul(b[k])));
                (sum.wrapping_add(1 << 21) >> 22).clamp(0, 255) as u8
            };
            out.push(v);
        }
    }
    Ok(out)
}

/// `cv2.resize(INTER_CUBIC)` on a uint16 image.
pub fn resize_cubic_u16(
    src: &[u16],
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
) -> Result<Vec<u16>, DataError> {
    check(src.len(), sh, sw, dh, dw)?;
    if (sh, sw) == (dh, dw) {
        return Ok(src.to_vec());
    }
    Ok(resize_u16_values(src, sh, sw, dh, dw, f32::from)
        .into_iter()
        .map(|v| v as u16)
        .collect())
}

/// The uint16 resize on any storage of uint16 values (`load` reads one); the result is the
/// uint16 output as float.
fn resize_u16_values<T: Copy>(
    src: &[T],
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    load: impl Fn(T) -> f32,
) -> Vec<f32> {
    let (tx, ty) = (taps(sw, dw), taps(sh, dh));
    let used = used_rows(sh, &ty);
    let h = hpass_f32(src, sh, sw, &tx, &used, load);
    // Both SIMD (v_round + v_pack_u) and scalar (saturate_cast) round ties to even.
    vpass_f32(&h, dw, &ty, LANES_U16, |v| {
        v.round_ties_even().clamp(0.0, 65535.0)
    })
}

/// `cv2.resize(INTER_CUBIC)` on a float32 image.
pub fn resize_cubic_f32(
    src: &[f32],
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
) -> Result<Vec<f32>, DataError> {
    check(src.len(), sh, sw, dh, dw)?;
    if (sh, sw) == (dh, dw) {
        return Ok(src.to_vec());
    }
    let (tx, ty) = (taps(sw, dw), taps(sh, dh));
    let used = used_rows(sh, &ty);
    let h = hpass_f32(src, sh, sw, &tx, &used, |v| v);
    Ok(vpass_f32(&h, dw, &ty, LANES_F32, |v| v))
}

/// Resizes a [`GrayImage`] to `height x width` on its native type (`bit_depth` 8, 16
/// or 32), as `cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)`.
pub fn resize_cubic(img: &GrayImage, height: usize, width: usize) -> Result<GrayImage, DataError> {
    let (sh, sw) = (img.height, img.width);
    let pixels = match img.bit_depth {
        8 => {
            let src: Vec<u8> = img
                .pixels
                .iter()
                .map(|&v| v.clamp(0.0, 255.0) as u8)
                .collect();
            resize_cubic_u8(&src, sh, sw, height, width)?
                .into_iter()
                .map(f32::from)
                .collect()
        }
        16 => {
            check(img.pixels.len(), sh, sw, height, width)?;
            // The pixels as uint16 (saturated, truncated), read where they are.
            let as_u16 = |v: f32| f32::from(v.clamp(0.0, 65535.0) as u16);
            if (sh, sw) == (height, width) {
                img.pixels.iter().map(|&v| as_u16(v)).collect()
            } else {
                resize_u16_values(&img.pixels, sh, sw, height, width, as_u16)
            }
        }
        32 => resize_cubic_f32(&img.pixels, sh, sw, height, width)?,
        b => return Err(DataError::Invalid(format!("resize: bit depth {b}"))),
    };
    GrayImage::new(width, height, img.bit_depth, pixels)
}
