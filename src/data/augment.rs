//! The paper's training augmentation, as Keras 2.0.8's
//! `ImageDataGenerator.random_transform` computes it (keras/preprocessing/image.py),
//! on one HWC float32 image:
//!
//! 1. Parameters, drawn in this order (each only when its range is non-zero):
//!    `theta = pi / 180 * U(-rotation_range, rotation_range)`,
//!    `tx = U(-height_shift_range, height_shift_range) * H` (rows),
//!    `ty = U(-width_shift_range, width_shift_range) * W` (columns),
//!    `shear = U(-shear_range, shear_range)` (radians in Keras 2.0.8),
//!    `zx, zy = U(zoom_range[0], zoom_range[1])` twice (skipped when both bounds are 1),
//!    one `U(-channel_shift_range, channel_shift_range)` per channel,
//!    then `random() < 0.5` for the horizontal and for the vertical flip.
//! 2. Matrix (homogeneous, row/column coordinates; a factor only when it is not the
//!    identity): `T = R(theta) . S(tx, ty) . Sh(shear) . Z(zx, zy)` with
//!    `R = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]`, `S = [[1, 0, tx], [0, 1, ty], ..]`,
//!    `Sh = [[1, -sin(shear), 0], [0, cos(shear), 0], ..]`, `Z = diag(zx, zy, 1)`, then
//!    `transform_matrix_offset_center`: `M = O . T . O^-1` with the centre
//!    `o = (H / 2 + 0.5, W / 2 + 0.5)` (Keras's choice, not `(H - 1) / 2`).
//! 3. Warp (when a matrix exists): every channel through
//!    `scipy.ndimage.affine_transform(x_c, M[:2, :2], M[:2, 2], order=0, mode, cval)`:
//!    output pixel `(r, c)` takes input pixel `round_half_up(clamp(M . (r, c, 1)))`
//!    (nearest neighbour, no interpolation); `mode='nearest'` clamps the coordinate to
//!    `[0, len - 1]`, `mode='constant'` gives `cval` when it falls outside that range.
//! 4. Channel shift: `clip(x_c + shift_c, min(x), max(x))` per channel, float32, with
//!    min/max over the whole warped image (all channels). Channels duplicated from grey
//!    therefore diverge, as in the paper.
//! 5. Horizontal flip (columns), then vertical flip (rows).
//!
//! The featurewise mean is subtracted after all of this (Keras's `standardize`); see
//! [`crate::data::dataset`].
//!
//! Exactness: given a [`Transform`] this module reproduces Keras bit for bit. The
//! matrix products are evaluated in the order NumPy's `dot` writes them, in `f64`
//! without fused multiply-adds, and the coordinate sum in the order of SciPy's C loop
//! (`((r * m00) + c * m01) + m02`). NumPy computes `cos`/`sin` and the 3x3 `dot` with
//! its own SIMD/BLAS routines, which may differ from Rust's by an ulp; that only moves a
//! pixel when a source coordinate lies within ~1e-15 of a half-integer.
//! `tests/augment_keras.rs` measures both against genuine Keras.
//!
//! Random parameters: [`Augment::sample`] draws from the same distributions in the same
//! order as Keras, but from this crate's [`Rng`] (xoshiro256**), not NumPy's Mersenne
//! Twister: a seed gives a reproducible stream here, not NumPy's numbers.

use super::DataError;

/// How pixels mapped from outside the input are filled (Keras `fill_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FillMode {
    /// Repeat the edge pixel (Keras's default and the paper's setting).
    #[default]
    Nearest,
    /// The constant `cval`.
    Constant,
}

impl std::str::FromStr for FillMode {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "nearest" => Ok(FillMode::Nearest),
            "constant" => Ok(FillMode::Constant),
            other => Err(DataError::Invalid(format!(
                "fill mode '{other}' is not supported (nearest, constant)"
            ))),
        }
    }
}

/// The parameters of one random transform, as Keras's `random_transform` derives them.
/// Angles in radians; `tx` is the row shift and `ty` the column shift in pixels;
/// `zx` scales rows and `zy` columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    pub theta: f64,
    pub tx: f64,
    pub ty: f64,
    pub shear: f64,
    pub zx: f64,
    pub zy: f64,
    /// One additive shift per channel; `None` when `channel_shift_range` is 0 (then no
    /// clipping either).
    pub channel_shift: Option<Vec<f64>>,
    pub flip_h: bool,
    pub flip_v: bool,
}

impl Default for Transform {
    fn default() -> Self {
        Transform::identity()
    }
}

type Mat3 = [[f64; 3]; 3];

/// `np.dot` of two 3x3 matrices, each entry summed left to right.
fn dot(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    c
}

impl Transform {
    /// No warp, no shift, no flip.
    pub fn identity() -> Self {
        Transform {
            theta: 0.0,
            tx: 0.0,
            ty: 0.0,
            shear: 0.0,
            zx: 1.0,
            zy: 1.0,
            channel_shift: None,
            flip_h: false,
            flip_v: false,
        }
    }

    fn check(&self) -> Result<(), DataError> {
        let finite = [self.theta, self.tx, self.ty, self.shear, self.zx, self.zy]
            .iter()
            .chain(self.channel_shift.iter().flatten())
            .all(|v| v.is_finite());
        if !finite {
            return Err(DataError::Invalid(format!(
                "augmentation transform has a non-finite parameter: {self:?}"
            )));
        }
        Ok(())
    }

    /// Keras's composed matrix before centring (`None`: Keras warps nothing).
    pub fn matrix(&self) -> Option<Mat3> {
        let mut m: Option<Mat3> = None;
        let mut then = |f: Mat3| m = Some(m.map_or(f, |t| dot(&t, &f)));
        if self.theta != 0.0 {
            let (s, c) = (self.theta.sin(), self.theta.cos());
            then([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]);
        }
        if self.tx != 0.0 || self.ty != 0.0 {
            then([[1.0, 0.0, self.tx], [0.0, 1.0, self.ty], [0.0, 0.0, 1.0]]);
        }
        if self.shear != 0.0 {
            then([
                [1.0, -self.shear.sin(), 0.0],
                [0.0, self.shear.cos(), 0.0],
                [0.0, 0.0, 1.0],
            ]);
        }
        if self.zx != 1.0 || self.zy != 1.0 {
            then([[self.zx, 0.0, 0.0], [0.0, self.zy, 0.0], [0.0, 0.0, 1.0]]);
        }
        m
    }

    /// The matrix Keras passes to `apply_transform` for an `h x w` image
    /// (`transform_matrix_offset_center`), or `None` when there is no warp.
    pub fn centered_matrix(&self, h: usize, w: usize) -> Option<Mat3> {
        self.matrix().map(|m| offset_center(&m, h, w))
    }
}

/// Keras's `transform_matrix_offset_center(matrix, x=h, y=w)`.
pub fn offset_center(m: &Mat3, h: usize, w: usize) -> Mat3 {
    let o_x = h as f64 / 2.0 + 0.5;
    let o_y = w as f64 / 2.0 + 0.5;
    let offset = [[1.0, 0.0, o_x], [0.0, 1.0, o_y], [0.0, 0.0, 1.0]];
    let reset = [[1.0, 0.0, -o_x], [0.0, 1.0, -o_y], [0.0, 0.0, 1.0]];
    dot(&dot(&offset, m), &reset)
}

fn check_shape(len: usize, shape: [usize; 3]) -> Result<(), DataError> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(len) || shape.contains(&0) {
        return Err(DataError::Invalid(format!(
            "augment: buffer of {len} values does not match HWC shape {shape:?}"
        )));
    }
    Ok(())
}

/// The input index along one axis that SciPy's order-0 `affine_transform` reads for
/// source coordinate `cc`, or `None` for the constant fill.
#[inline]
fn source_index(cc: f64, len: usize, mode: FillMode) -> Option<usize> {
    let last = (len - 1) as f64;
    let cc = if cc < 0.0 {
        match mode {
            FillMode::Nearest => 0.0,
            FillMode::Constant => return None,
        }
    } else if cc > last {
        match mode {
            FillMode::Nearest => last,
            FillMode::Constant => return None,
        }
    } else if cc.is_nan() {
        return None;
    } else {
        cc
    };
    // Order 0 (even): start = floor(cc + 0.5); cc is within [0, len - 1] here.
    Some(((cc + 0.5).floor() as usize).min(len - 1))
}

/// Keras's `apply_transform` (SciPy `affine_transform`, order 0) on an HWC image with a
/// 3x3 homogeneous matrix mapping output (row, col) to input (row, col).
pub fn apply_matrix(
    x: &[f32],
    shape: [usize; 3],
    m: &Mat3,
    mode: FillMode,
    cval: f64,
) -> Result<Vec<f32>, DataError> {
    check_shape(x.len(), shape)?;
    if m.iter().flatten().any(|v| !v.is_finite()) {
        return Err(DataError::Invalid(format!(
            "augment: non-finite transform matrix {m:?}"
        )));
    }
    let [h, w, c] = shape;
    let fill = cval as f32;
    let mut out = Vec::with_capacity(x.len());
    for r in 0..h {
        let rf = r as f64;
        for col in 0..w {
            let cf = col as f64;
            // SciPy: icoor = 0.0; icoor += r * m[0]; icoor += c * m[1]; icoor += shift.
            let ri = 0.0 + rf * m[0][0] + cf * m[0][1] + m[0][2];
            let ci = 0.0 + rf * m[1][0] + cf * m[1][1] + m[1][2];
            match (source_index(ri, h, mode), source_index(ci, w, mode)) {
                (Some(sr), Some(sc)) => {
                    let i = (sr * w + sc) * c;
                    out.extend_from_slice(&x[i..i + c]);
                }
                _ => out.extend(std::iter::repeat_n(fill, c)),
            }
        }
    }
    Ok(out)
}

/// Keras's `random_channel_shift` with given shifts (one per channel), in place:
/// `clip(x_c + float32(shift_c), min(x), max(x))`.
pub fn channel_shift(x: &mut [f32], shape: [usize; 3], shifts: &[f64]) -> Result<(), DataError> {
    check_shape(x.len(), shape)?;
    let c = shape[2];
    if shifts.len() != c {
        return Err(DataError::Invalid(format!(
            "augment: {} channel shifts for {c} channels",
            shifts.len()
        )));
    }
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let shifts: Vec<f32> = shifts.iter().map(|&s| s as f32).collect();
    for px in x.chunks_exact_mut(c) {
        for (v, &s) in px.iter_mut().zip(&shifts) {
            // np.clip = minimum(maximum(v, lo), hi)
            *v = (*v + s).max(lo).min(hi);
        }
    }
    Ok(())
}

fn flip_cols(x: &mut [f32], shape: [usize; 3]) {
    let [h, w, c] = shape;
    for r in 0..h {
        for col in 0..w / 2 {
            for k in 0..c {
                x.swap((r * w + col) * c + k, (r * w + (w - 1 - col)) * c + k);
            }
        }
    }
}

fn flip_rows(x: &mut [f32], shape: [usize; 3]) {
    let [h, w, c] = shape;
    let row = w * c;
    for r in 0..h / 2 {
        let (top, bottom) = x.split_at_mut((h - 1 - r) * row);
        top[r * row..(r + 1) * row].swap_with_slice(&mut bottom[..row]);
    }
}

/// `ImageDataGenerator` augmentation settings (Keras 2.0.8 names and meanings).
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    /// Degrees.
    pub rotation_range: f64,
    /// Fraction of the width.
    pub width_shift_range: f64,
    /// Fraction of the height.
    pub height_shift_range: f64,
    /// Radians (Keras 2.0.8; later Keras versions take degrees).
    pub shear_range: f64,
    /// `[lower, upper]`; `zx` and `zy` are drawn independently.
    pub zoom_range: [f64; 2],
    /// Intensity units (after rescale, before the mean is subtracted).
    pub channel_shift_range: f64,
    pub horizontal_flip: bool,
    pub vertical_flip: bool,
    pub fill_mode: FillMode,
    pub cval: f64,
}

impl Default for Augment {
    /// Keras's defaults: no augmentation.
    fn default() -> Self {
        Augment {
            rotation_range: 0.0,
            width_shift_range: 0.0,
            height_shift_range: 0.0,
            shear_range: 0.0,
            zoom_range: [1.0, 1.0],
            channel_shift_range: 0.0,
            horizontal_flip: false,
            vertical_flip: false,
            fill_mode: FillMode::Nearest,
            cval: 0.0,
        }
    }
}

impl Augment {
    /// The paper's training augmentation (image_clf_train.py `augmentation=True`):
    /// flips both ways, rotation 25 degrees, shear 0.2 rad, zoom 0.8-1.2, channel
    /// shift 20, fill 'nearest'.
    pub fn paper() -> Self {
        Augment {
            rotation_range: 25.0,
            shear_range: 0.2,
            zoom_range: [0.8, 1.2],
            channel_shift_range: 20.0,
            horizontal_flip: true,
            vertical_flip: true,
            ..Augment::default()
        }
    }

    /// Checks the settings (finite, non-negative ranges, zoom bounds ordered, > 0).
    pub fn validate(&self) -> Result<(), DataError> {
        let ranges = [
            ("rotation_range", self.rotation_range),
            ("width_shift_range", self.width_shift_range),
            ("height_shift_range", self.height_shift_range),
            ("shear_range", self.shear_range),
            ("channel_shift_range", self.channel_shift_range),
        ];
        for (name, v) in ranges {
            if !v.is_finite() || v < 0.0 {
                return Err(DataError::Invalid(format!(
                    "augment: {name} must be finite and >= 0, got {v}"
                )));
            }
        }
        let [z0, z1] = self.zoom_range;
        if !(z0.is_finite() && z1.is_finite() && z0 > 0.0 && z0 <= z1) {
            return Err(DataError::Invalid(format!(
                "augment: zoom_range must be 0 < lower <= upper, got [{z0}, {z1}]"
            )));
        }
        if !self.cval.is_finite() {
            return Err(DataError::Invalid("augment: cval must be finite".into()));
        }
        Ok(())
    }

    /// Draws a transform for an image of `shape` (HWC) in Keras's order (see module doc).
    pub fn sample(&self, rng: &mut Rng, shape: [usize; 3]) -> Transform {
        self.sample_from(rng, shape)
    }

    /// [`Augment::sample`] from any source of draws (e.g. a replay of Keras's).
    pub fn sample_from<R: RandomSource>(&self, rng: &mut R, shape: [usize; 3]) -> Transform {
        let [h, w, c] = shape;
        let mut t = Transform::identity();
        if self.rotation_range != 0.0 {
            let deg = rng.uniform(-self.rotation_range, self.rotation_range);
            t.theta = std::f64::consts::PI / 180.0 * deg;
        }
        if self.height_shift_range != 0.0 {
            t.tx = rng.uniform(-self.height_shift_range, self.height_shift_range) * h as f64;
        }
        if self.width_shift_range != 0.0 {
            t.ty = rng.uniform(-self.width_shift_range, self.width_shift_range) * w as f64;
        }
        if self.shear_range != 0.0 {
            t.shear = rng.uniform(-self.shear_range, self.shear_range);
        }
        if !(self.zoom_range[0] == 1.0 && self.zoom_range[1] == 1.0) {
            t.zx = rng.uniform(self.zoom_range[0], self.zoom_range[1]);
            t.zy = rng.uniform(self.zoom_range[0], self.zoom_range[1]);
        }
        if self.channel_shift_range != 0.0 {
            let r = self.channel_shift_range;
            t.channel_shift = Some((0..c).map(|_| rng.uniform(-r, r)).collect());
        }
        if self.horizontal_flip {
            t.flip_h = rng.random() < 0.5;
        }
        if self.vertical_flip {
            t.flip_v = rng.random() < 0.5;
        }
        t
    }

    /// Applies `t` to an HWC image with this generator's fill mode and `cval`.
    pub fn apply(
        &self,
        x: &[f32],
        shape: [usize; 3],
        t: &Transform,
    ) -> Result<Vec<f32>, DataError> {
        apply_transform(x, shape, t, self.fill_mode, self.cval)
    }

    /// `sample` + `apply`.
    pub fn random_transform(
        &self,
        rng: &mut Rng,
        x: &[f32],
        shape: [usize; 3],
    ) -> Result<Vec<f32>, DataError> {
        let t = self.sample(rng, shape);
        self.apply(x, shape, &t)
    }
}

/// Keras's `random_transform` body for given parameters: warp, channel shift,
/// horizontal flip, vertical flip.
pub fn apply_transform(
    x: &[f32],
    shape: [usize; 3],
    t: &Transform,
    mode: FillMode,
    cval: f64,
) -> Result<Vec<f32>, DataError> {
    check_shape(x.len(), shape)?;
    t.check()?;
    let mut out = match t.centered_matrix(shape[0], shape[1]) {
        Some(m) => apply_matrix(x, shape, &m, mode, cval)?,
        None => x.to_vec(),
    };
    if let Some(shifts) = &t.channel_shift {
        channel_shift(&mut out, shape, shifts)?;
    }
    if t.flip_h {
        flip_cols(&mut out, shape);
    }
    if t.flip_v {
        flip_rows(&mut out, shape);
    }
    Ok(out)
}

/// The two kinds of draw `random_transform` makes.
pub trait RandomSource {
    /// `np.random.uniform(low, high)`.
    fn uniform(&mut self, low: f64, high: f64) -> f64;
    /// `np.random.random()`.
    fn random(&mut self) -> f64;
}

impl RandomSource for Rng {
    fn uniform(&mut self, low: f64, high: f64) -> f64 {
        Rng::uniform(self, low, high)
    }
    fn random(&mut self) -> f64 {
        Rng::random(self)
    }
}

/// A small, fast, seedable generator (xoshiro256**, seeded through SplitMix64). Its
/// streams are reproducible across platforms; they are not NumPy's.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        Rng { s }
    }

    /// A generator for one item of a structured stream, e.g. `(seed, epoch, sample)`:
    /// the words are mixed one after the other, so different tuples give unrelated
    /// streams.
    pub fn for_stream(words: &[u64]) -> Self {
        let mut st = 0x6A09_E667_F3BC_C908u64;
        for &w in words {
            st ^= w;
            st = splitmix64(&mut st);
        }
        Rng::new(st)
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits (as `np.random.random`).
    pub fn random(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `low + (high - low) * random()`, as `np.random.uniform`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.random()
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_a_copy() {
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let y = apply_transform(
            &x,
            [2, 4, 3],
            &Transform::identity(),
            FillMode::Nearest,
            0.0,
        )
        .unwrap();
        assert_eq!(x, y);
    }

    #[test]
    fn flips_match_preprocess_flips() {
        let x: Vec<f32> = (0..60).map(|v| v as f32 * 0.5).collect();
        let shape = [4, 5, 3];
        let t = Transform {
            flip_h: true,
            flip_v: true,
            ..Transform::identity()
        };
        let y = apply_transform(&x, shape, &t, FillMode::Nearest, 0.0).unwrap();
        let want = crate::data::flip_v(&crate::data::flip_h(&x, shape).unwrap(), shape).unwrap();
        assert_eq!(y, want);
    }

    #[test]
    fn rejects_bad_input() {
        let x = vec![0.0f32; 10];
        assert!(apply_transform(
            &x,
            [2, 4, 3],
            &Transform::identity(),
            FillMode::Nearest,
            0.0
        )
        .is_err());
        let t = Transform {
            theta: f64::NAN,
            ..Transform::identity()
        };
        assert!(apply_transform(&x, [2, 5, 1], &t, FillMode::Nearest, 0.0).is_err());
        let t = Transform {
            channel_shift: Some(vec![1.0, 2.0]),
            ..Transform::identity()
        };
        assert!(apply_transform(&x, [2, 5, 1], &t, FillMode::Nearest, 0.0).is_err());
    }

    #[test]
    fn rng_is_reproducible_and_uniform() {
        let mut a = Rng::for_stream(&[7, 1, 2]);
        let mut b = Rng::for_stream(&[7, 1, 2]);
        let mut c = Rng::for_stream(&[7, 2, 1]);
        let va: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        let mut r = Rng::new(3);
        let n = 20000;
        let mean = (0..n).map(|_| r.uniform(-2.0, 4.0)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
    }

    #[test]
    fn sample_respects_ranges() {
        let aug = Augment::paper();
        let mut rng = Rng::new(11);
        for _ in 0..200 {
            let t = aug.sample(&mut rng, [10, 8, 3]);
            assert!(t.theta.abs() <= 25.0f64.to_radians() + 1e-12);
            assert!(t.shear.abs() <= 0.2);
            assert!((0.8..=1.2).contains(&t.zx) && (0.8..=1.2).contains(&t.zy));
            let cs = t.channel_shift.unwrap();
            assert_eq!(cs.len(), 3);
            assert!(cs.iter().all(|s| s.abs() <= 20.0));
            assert_eq!((t.tx, t.ty), (0.0, 0.0));
        }
        assert!(Augment::default().sample(&mut rng, [4, 4, 1]) == Transform::identity());
    }
}
