//! The paper's preprocessing (`read_resize_img` + DMImageDataGenerator):
//! resize (cv2 cubic on the native dtype) -> float32 -> optional `target_scale`
//! (`img *= target_scale / img.max()`) -> `*= rescale` -> optional histogram equalisation
//! (`cv2.equalizeHist(img.astype('uint8'))`, [`super::equalize`]) -> `-= mean` -> optional
//! duplication of grey to 3 channels. Output is HWC (channels last), as Keras expects.

use std::fmt;
use std::str::FromStr;

use super::{resize::resize_cubic, DataError, GrayImage};

/// [`Preprocess::range_warning`]'s bounds on brightest-pixel / mean, in scaled units.
const RANGE_HIGH: f32 = 16.0;
const RANGE_LOW: f32 = 1.0;

/// Preprocessing parameters; see the module doc for the order of operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Output size (H, W); `None` keeps the image size.
    pub target: Option<(usize, usize)>,
    /// If set, the image is scaled so that its maximum becomes this value.
    pub target_scale: Option<f32>,
    /// Multiplier after `target_scale` (255/65535 = 0.003891 for 16-bit PNGs).
    pub rescale: f32,
    /// Featurewise mean subtracted last (DDSM 52.18, INbreast 44.33).
    pub mean: f32,
    /// 1, or 3 to duplicate grey into RGB-like channels (ImageNet backbones).
    pub channels: usize,
    /// `cv2.equalizeHist` on the scaled image cast to 8 bits, as the paper's
    /// `--equalize-hist` (the default of patch_clf_train.py).
    pub equalize_hist: bool,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            target: None,
            target_scale: None,
            rescale: 1.0,
            mean: 0.0,
            channels: 1,
            equalize_hist: false,
        }
    }
}

impl Preprocess {
    /// Runs the pipeline; returns HWC data and its shape `[H, W, C]`.
    pub fn apply(&self, img: &GrayImage) -> Result<(Vec<f32>, [usize; 3]), DataError> {
        if self.channels != 1 && self.channels != 3 {
            return Err(DataError::Invalid(format!(
                "preprocess: channels must be 1 or 3, got {}",
                self.channels
            )));
        }
        let resized;
        let img = match self.target {
            // cv2.resize is always called by the paper; a same-size resize is a copy.
            Some((h, w)) if (h, w) != (img.height, img.width) => {
                resized = resize_cubic(img, h, w)?;
                &resized
            }
            _ => img,
        };
        let ts_factor = self.target_scale.map(|ts| {
            let max = img.max();
            // As in the paper: a black image is left unscaled (img_max = target_scale).
            let max = if max != 0.0 { max } else { ts };
            // NumPy 1.x: Python-float division, then the factor is cast to float32.
            (f64::from(ts) / f64::from(max)) as f32
        });
        // Separate float32 multiplications, as the in-place NumPy ops do.
        let rescale = self.rescale;
        let values = img.pixels.iter().map(|&v| match ts_factor {
            Some(f) => v * f * rescale,
            None => v * rescale,
        });
        if self.equalize_hist {
            let mut px: Vec<u8> = values.map(super::equalize::numpy_f32_to_u8).collect();
            super::equalize::equalize_hist_u8(&mut px);
            let values = px.into_iter().map(f32::from);
            return Ok(self.finish(values, img.height, img.width));
        }
        Ok(self.finish(values, img.height, img.width))
    }

    /// Whether `img`'s values fit this preprocessing, judged against its `mean` (the
    /// training set's mean pixel, in scaled units): a mammogram's brightest pixel scales to
    /// about 4-5x that mean (255 vs 52.18 in the paper). Beyond 16x, or below 1x, the image
    /// almost surely has another bit depth than the scaling was set for (a 12-bit DICOM
    /// given 8-bit scaling scores nonsense, confidently). `None` when it fits, or when
    /// there is nothing to judge by (no mean, or `target_scale` rescales every image).
    pub fn range_warning(&self, img: &GrayImage) -> Option<String> {
        if self.target_scale.is_some() || !(self.mean > 0.0) || !(self.rescale > 0.0) {
            return None;
        }
        let max = img.max();
        let ratio = max * self.rescale / self.mean;
        let bits = (max.max(1.0) + 1.0).log2().ceil() as u32;
        let what = if ratio > RANGE_HIGH {
            "far above"
        } else if ratio < RANGE_LOW {
            "below"
        } else {
            return None;
        };
        // The bit depth the scaling was set for: the one whose full scale lands near the
        // middle of the 4-5x band.
        let meant_bits = (4.5 * self.mean / self.rescale)
            .log2()
            .round()
            .clamp(1.0, 32.0) as u32;
        let suggested = f64::from(self.rescale) * 2f64.powi(meant_bits as i32 - bits as i32);
        Some(format!(
            "its brightest pixel ({max}, {bits} bits used of {}) scales to {:.3} with rescale={}, {ratio:.1}x the mean {}; a correctly scaled mammogram reaches about 4-5x, so this is {what} the range the preprocessing is set for. The scaling looks set for {meant_bits}-bit images: --preprocess rescale={suggested} would scale this {bits}-bit one alike",
            img.bit_depth,
            max * self.rescale,
            self.rescale,
            self.mean,
        ))
    }

    fn finish(
        &self,
        values: impl Iterator<Item = f32>,
        h: usize,
        w: usize,
    ) -> (Vec<f32>, [usize; 3]) {
        let c = self.channels;
        let mut out = Vec::with_capacity(h * w * c);
        for v in values {
            let v = v - self.mean;
            out.extend(std::iter::repeat_n(v, c));
        }
        (out, [h, w, c])
    }
}

impl FromStr for Preprocess {
    type Err = DataError;

    /// Parses the CLI form, e.g. `rescale=0.003891,mean=52.18,gray,size=1152x896`.
    /// Keys: `size=HxW`, `target_scale=F`, `rescale=F`, `mean=F`, `channels=1|3`,
    /// and the flags `gray` (= `channels=3`, duplicate grey to 3 channels) and `equalize`
    /// (`cv2.equalizeHist` after scaling).
    fn from_str(spec: &str) -> Result<Self, DataError> {
        let err = |msg: String| DataError::Spec {
            spec: spec.to_string(),
            msg,
        };
        let float = |key: &str, v: &str| -> Result<f32, DataError> {
            v.trim()
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(format!("{key}: '{v}' is not a finite number")))
        };
        let mut p = Preprocess::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            match (key, value) {
                ("gray" | "grey", None) => p.channels = 3,
                ("equalize", None) => p.equalize_hist = true,
                ("channels", Some(v)) => {
                    p.channels = match v {
                        "1" => 1,
                        "3" => 3,
                        _ => return Err(err(format!("channels: '{v}' is not 1 or 3"))),
                    }
                }
                ("rescale", Some(v)) => p.rescale = float(key, v)?,
                ("mean", Some(v)) => p.mean = float(key, v)?,
                ("target_scale", Some(v)) => {
                    let ts = float(key, v)?;
                    if ts <= 0.0 {
                        return Err(err(format!("target_scale: '{v}' must be positive")));
                    }
                    p.target_scale = Some(ts);
                }
                ("size", Some(v)) => {
                    let parsed = v.split_once(['x', 'X']).and_then(|(h, w)| {
                        Some((h.trim().parse::<usize>().ok()?, w.trim().parse::<usize>().ok()?))
                    });
                    match parsed {
                        Some((h, w)) if h > 0 && w > 0 => {
                            let limits = crate::limits::current();
                            if let Some(msg) = super::size_over_limits(w, h, &limits) {
                                return Err(err(format!("size: {msg}")));
                            }
                            p.target = Some((h, w))
                        }
                        _ => return Err(err(format!("size: '{v}' is not HxW, e.g. 1152x896"))),
                    }
                }
                (
                    "gray" | "grey" | "equalize" | "channels" | "rescale" | "mean"
                    | "target_scale" | "size",
                    _,
                ) => {
                    return Err(err(format!(
                        "'{item}': wrong form (flags: gray, equalize; keys: size=HxW, target_scale=F, rescale=F, mean=F, channels=1|3)"
                    )))
                }
                _ => {
                    return Err(err(format!(
                        "unknown key '{key}' (known: size, target_scale, rescale, mean, channels, gray, equalize)"
                    )))
                }
            }
        }
        Ok(p)
    }
}

impl fmt::Display for Preprocess {
    /// The CLI form, parseable by [`FromStr`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some((h, w)) = self.target {
            parts.push(format!("size={h}x{w}"));
        }
        if let Some(ts) = self.target_scale {
            parts.push(format!("target_scale={ts}"));
        }
        parts.push(format!("rescale={}", self.rescale));
        parts.push(format!("mean={}", self.mean));
        if self.equalize_hist {
            parts.push("equalize".to_string());
        }
        if self.channels == 3 {
            parts.push("gray".to_string());
        }
        f.write_str(&parts.join(","))
    }
}

fn check_hwc(len: usize, shape: [usize; 3]) -> Result<(), DataError> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(len) {
        return Err(DataError::Invalid(format!(
            "buffer of {len} values does not match HWC shape {shape:?}"
        )));
    }
    Ok(())
}

/// Horizontal (left-right) flip of an HWC buffer, as `np.flip(x, axis=1)`; used by
/// the paper's 4-way test-time augmentation.
pub fn flip_h(data: &[f32], shape: [usize; 3]) -> Result<Vec<f32>, DataError> {
    check_hwc(data.len(), shape)?;
    let [h, w, c] = shape;
    let mut out = Vec::with_capacity(data.len());
    for y in 0..h {
        for x in (0..w).rev() {
            let i = (y * w + x) * c;
            out.extend_from_slice(&data[i..i + c]);
        }
    }
    Ok(out)
}

/// Vertical (top-bottom) flip of an HWC buffer, as `np.flip(x, axis=0)`.
pub fn flip_v(data: &[f32], shape: [usize; 3]) -> Result<Vec<f32>, DataError> {
    check_hwc(data.len(), shape)?;
    let [h, w, c] = shape;
    let row = w * c;
    let mut out = Vec::with_capacity(data.len());
    for y in (0..h).rev() {
        out.extend_from_slice(&data[y * row..(y + 1) * row]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(max: f32, bit_depth: u8) -> GrayImage {
        GrayImage::new(2, 1, bit_depth, vec![0.0, max]).unwrap()
    }

    fn spec(s: &str) -> Preprocess {
        s.parse().unwrap()
    }

    #[test]
    fn images_at_the_scale_they_were_meant_for_pass() {
        // The paper's 16-bit parameters on a full-range 16-bit PNG; the demo's 8-bit and
        // 12-bit scalings on their own images.
        assert_eq!(
            spec("rescale=0.003891,mean=52.18").range_warning(&image(65535.0, 16)),
            None
        );
        assert_eq!(
            spec("rescale=0.0078125,mean=0.5").range_warning(&image(255.0, 8)),
            None
        );
        assert_eq!(
            spec("rescale=0.00048828125,mean=0.5").range_warning(&image(4095.0, 16)),
            None
        );
    }

    #[test]
    fn a_bit_depth_mismatch_is_named() {
        // The demo's 12-bit DICOM given the 8-bit scaling: 64x the mean.
        let w = spec("rescale=0.0078125,mean=0.5")
            .range_warning(&image(4095.0, 16))
            .unwrap();
        assert!(
            w.contains("far above") && w.contains("12 bits used of 16"),
            "{w}"
        );
        assert!(
            w.contains("set for 8-bit") && w.contains("rescale=0.00048828125 "),
            "{w}"
        );
        // A 12-bit image given the paper's 16-bit parameters: 0.3x the mean.
        let w = spec("rescale=0.003891,mean=52.18")
            .range_warning(&image(4095.0, 16))
            .unwrap();
        assert!(w.contains("below"), "{w}");
    }

    #[test]
    fn nothing_to_judge_by_means_no_warning() {
        assert_eq!(
            Preprocess::default().range_warning(&image(4095.0, 16)),
            None
        );
        let scaled = spec("target_scale=65535,rescale=0.003891,mean=52.18");
        assert_eq!(scaled.range_warning(&image(4095.0, 16)), None);
    }
}
