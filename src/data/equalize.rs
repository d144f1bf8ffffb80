//! `--equalize-hist`: the paper's `cv2.equalizeHist(img.astype('uint8'))` (dm_image.py
//! `read_img_for_pred`), applied after resizing and scaling. Both halves are reproduced bit
//! for bit: numpy's float32 -> uint8 cast (truncation, then the low 8 bits: 300.7 -> 44) and
//! OpenCV's 8-bit equalisation (tests/data_preprocess.rs against genuine numpy and OpenCV,
//! fixtures/images/equalize.npz from converters/equalize_ref.py).

/// numpy's `float32.astype('uint8')` on x86-64: truncate toward zero to a 32-bit integer
/// (out of its range or NaN: `i32::MIN`, as `cvttss2si` gives), keep the low 8 bits.
pub fn numpy_f32_to_u8(v: f32) -> u8 {
    let i = if v.is_finite() && v > -2_147_483_648.0 && v < 2_147_483_648.0 {
        v.trunc() as i32
    } else {
        i32::MIN
    };
    i as u8
}

/// `cv2.equalizeHist` on an 8-bit image, in place: the lookup table from the cumulative
/// histogram, scaled in float32 by 255 / (pixels - count of the darkest level) and rounded
/// half to even (`saturate_cast<uchar>`); a single-level image keeps its level.
pub fn equalize_hist_u8(px: &mut [u8]) {
    let mut hist = [0usize; 256];
    for &p in px.iter() {
        hist[p as usize] += 1;
    }
    let Some(first) = hist.iter().position(|&n| n > 0) else {
        return;
    };
    let total = px.len();
    if hist[first] == total {
        return;
    }
    let scale = 255f32 / (total - hist[first]) as f32;
    let mut lut = [0u8; 256];
    let mut sum = 0usize;
    for level in first + 1..256 {
        sum += hist[level];
        // `sum * scale` in float32, then cvRound (round half to even) saturated to 0..255.
        lut[level] = (sum as i32 as f32 * scale)
            .round_ties_even()
            .clamp(0.0, 255.0) as u8;
    }
    for p in px.iter_mut() {
        *p = lut[*p as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_and_empty_images_keep_their_level() {
        let mut px = vec![7u8; 12];
        equalize_hist_u8(&mut px);
        assert_eq!(px, vec![7u8; 12]);
        let mut none: Vec<u8> = vec![];
        equalize_hist_u8(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn two_levels_map_to_the_ends() {
        let mut px = vec![10, 10, 200, 200];
        equalize_hist_u8(&mut px);
        assert_eq!(px, vec![0, 0, 255, 255]);
    }

    #[test]
    fn cast_wraps_like_numpy() {
        assert_eq!(numpy_f32_to_u8(300.7), 44);
        assert_eq!(numpy_f32_to_u8(255.9), 255);
        assert_eq!(numpy_f32_to_u8(256.0), 0);
        assert_eq!(numpy_f32_to_u8(f32::NAN), 0);
    }
}
