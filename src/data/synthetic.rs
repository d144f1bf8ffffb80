//! A synthetic, mammogram-like two-class image set for training tests: 16-bit PNGs in
//! `dir/neg/` and `dir/pos/`. Every image has a breast-shaped region (a half ellipse
//! against the left edge, dark outside) filled with smooth texture (box-filtered noise);
//! `pos` images also carry a bright, blurred round mass at a random position inside
//! the breast. Deterministic from the seed; the same seed writes the same bytes.

use std::path::{Path, PathBuf};

use super::augment::Rng;
use super::DataError;

/// What [`write_two_class`] wrote.
#[derive(Debug, Clone)]
pub struct SyntheticSet {
    /// `["neg", "pos"]`: label 0 and 1.
    pub classes: Vec<String>,
    /// Written files with their labels, in order.
    pub files: Vec<(PathBuf, usize)>,
    /// Mass centre (row, col) and radius of each `pos` image, in file order.
    pub masses: Vec<(f64, f64, f64)>,
}

/// Box blur of radius `r` along rows then columns (edges clamped).
fn box_blur(v: &[f64], h: usize, w: usize, r: usize) -> Vec<f64> {
    let norm = 1.0 / (2 * r + 1) as f64;
    let mut tmp = vec![0.0; v.len()];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for d in 0..=2 * r {
                let xx = (x + d).saturating_sub(r).min(w - 1);
                s += v[y * w + xx];
            }
            tmp[y * w + x] = s * norm;
        }
    }
    let mut out = vec![0.0; v.len()];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for d in 0..=2 * r {
                let yy = (y + d).saturating_sub(r).min(h - 1);
                s += tmp[yy * w + x];
            }
            out[y * w + x] = s * norm;
        }
    }
    out
}

/// Creates `dir` (and its parents).
fn create_dir(dir: &Path) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `px` (row-major, `height x width`) as a 16-bit grey PNG.
fn save_png16(path: &Path, width: usize, height: usize, px: Vec<u16>) -> Result<(), DataError> {
    let img =
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(width as u32, height as u32, px)
            .ok_or_else(|| DataError::Invalid("synthetic: buffer size".into()))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
}

/// Renders one image (row-major `height * width` 16-bit values). With `mass`, returns
/// the mass's (row, col, radius) too.
pub fn render(
    rng: &mut Rng,
    height: usize,
    width: usize,
    mass: bool,
) -> (Vec<u16>, Option<(f64, f64, f64)>) {
    let (h, w) = (height.max(1), width.max(1));
    let tex = texture(rng, h, w);
    // Breast: half ellipse against the left edge, slightly varied per image.
    let cy = h as f64 * rng.uniform(0.45, 0.55);
    let ry = h as f64 * rng.uniform(0.42, 0.5);
    let rx = w as f64 * rng.uniform(0.7, 0.9);
    let inside = |y: f64, x: f64| ((y - cy) / ry).powi(2) + (x / rx).powi(2);
    let spot = if mass {
        // Keep the mass well inside the breast.
        loop {
            let my = rng.uniform(0.2, 0.8) * h as f64;
            let mx = rng.uniform(0.1, 0.6) * w as f64;
            let mr = rng.uniform(0.06, 0.1) * h.min(w) as f64 + 1.0;
            if inside(my, mx) < 0.55 {
                break Some((my, mx, mr));
            }
        }
    } else {
        None
    };
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let (yf, xf) = (y as f64 + 0.5, x as f64 + 0.5);
            let e = inside(yf, xf);
            // Tissue fades to the skin line; background stays dark.
            let tissue = ((1.0 - e) * 6.0).clamp(0.0, 1.0);
            let mut v = 1500.0 + tissue * (16000.0 + 14000.0 * tex[y * w + x]);
            if let Some((my, mx, mr)) = spot {
                let d2 = (yf - my).powi(2) + (xf - mx).powi(2);
                v += 16000.0 * (-d2 / (2.0 * mr * mr)).exp();
            }
            out.push(v.round().clamp(0.0, 65535.0) as u16);
        }
    }
    (out, spot)
}

/// Writes `n_per_class` 16-bit PNGs of `height x width` to `dir/neg/neg_NNNN.png` and
/// `dir/pos/pos_NNNN.png` (creating the folders). Deterministic from `seed`.
pub fn write_two_class(
    dir: &Path,
    n_per_class: usize,
    seed: u64,
    height: usize,
    width: usize,
) -> Result<SyntheticSet, DataError> {
    if height == 0 || width == 0 {
        return Err(DataError::Invalid(format!(
            "synthetic: bad image size {height}x{width}"
        )));
    }
    if let Some(msg) = super::size_over_limits(width, height, &crate::limits::current()) {
        return Err(DataError::Invalid(format!("synthetic: {msg}")));
    }
    let classes = vec!["neg".to_string(), "pos".to_string()];
    let mut files = Vec::new();
    let mut masses = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let sub = dir.join(class);
        create_dir(&sub)?;
        for i in 0..n_per_class {
            let mut rng = Rng::for_stream(&[seed, label as u64, i as u64, 0x5359_4E54]);
            let (px, spot) = render(&mut rng, height, width, label == 1);
            masses.extend(spot);
            let path = sub.join(format!("{class}_{i:04}.png"));
            save_png16(&path, width, height, px)?;
            files.push((path, label));
        }
    }
    Ok(SyntheticSet {
        classes,
        files,
        masses,
    })
}

/// Smooth tissue texture: box-filtered noise scaled to [0, 1].
fn texture(rng: &mut Rng, h: usize, w: usize) -> Vec<f64> {
    let noise: Vec<f64> = (0..h * w).map(|_| rng.random()).collect();
    let r = (h.min(w) / 16).max(1);
    let mut tex = box_blur(&box_blur(&noise, h, w, r), h, w, r);
    let (lo, hi) = tex
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (hi - lo).max(1e-12);
    tex.iter_mut().for_each(|v| *v = (*v - lo) / span);
    tex
}

/// Writes a three-class patch set, `n_per_class` 16-bit `size x size` PNGs in each of
/// `dir/background/` (tissue texture), `dir/malignant/` (texture with a bright round
/// blob) and `dir/benign/` (texture with a bright straight bar, at any angle), the
/// class folders `train-patch` reads by default. The classes differ by shape only:
/// blob and bar carry about the same brightness. Deterministic from `seed`.
pub fn write_patch_shapes(
    dir: &Path,
    n_per_class: usize,
    seed: u64,
    size: usize,
) -> Result<SyntheticSet, DataError> {
    if size < 8 {
        return Err(DataError::Invalid(format!(
            "synthetic: patch size {size} < 8"
        )));
    }
    let classes: Vec<String> = ["background", "malignant", "benign"]
        .map(String::from)
        .to_vec();
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let sub = dir.join(class);
        create_dir(&sub)?;
        for i in 0..n_per_class {
            let mut rng = Rng::for_stream(&[seed, label as u64, i as u64, 0x5348_4150]);
            let tex = texture(&mut rng, size, size);
            let s = size as f64;
            let (cy, cx) = (rng.uniform(0.35, 0.65) * s, rng.uniform(0.35, 0.65) * s);
            let r = rng.uniform(0.12, 0.18) * s;
            let angle = rng.uniform(0.0, std::f64::consts::PI);
            let (dy, dx) = (angle.sin(), angle.cos());
            let px: Vec<u16> = (0..size * size)
                .map(|k| {
                    let (y, x) = ((k / size) as f64 + 0.5, (k % size) as f64 + 0.5);
                    let shape = match label {
                        1 => {
                            let d2 = (y - cy).powi(2) + (x - cx).powi(2);
                            (-d2 / (2.0 * r * r)).exp()
                        }
                        2 => {
                            // Distance across and along the bar through (cy, cx).
                            let across = (y - cy) * dx - (x - cx) * dy;
                            let along = (y - cy) * dy + (x - cx) * dx;
                            let half = 0.4 * s;
                            (-(across * across) / (2.0 * (0.08 * s).powi(2))).exp()
                                * f64::from(u8::from(along.abs() < half))
                        }
                        _ => 0.0,
                    };
                    let v = 8000.0 + 8000.0 * tex[k] + 30000.0 * shape;
                    v.round().clamp(0.0, 65535.0) as u16
                })
                .collect();
            let path = sub.join(format!("{class}_{i:04}.png"));
            save_png16(&path, size, size, px)?;
            files.push((path, label));
        }
    }
    Ok(SyntheticSet {
        classes,
        files,
        masses: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("allconv-synth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn deterministic_two_class_pngs() {
        let (a, b) = (tmp("a"), tmp("b"));
        let sa = write_two_class(&a, 3, 42, 48, 64).unwrap();
        let sb = write_two_class(&b, 3, 42, 48, 64).unwrap();
        assert_eq!(sa.files.len(), 6);
        assert_eq!(sa.masses.len(), 3);
        for ((pa, la), (pb, lb)) in sa.files.iter().zip(&sb.files) {
            assert_eq!(la, lb);
            assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
            let img = crate::data::read_image(pa).unwrap();
            assert_eq!((img.height, img.width, img.bit_depth), (48, 64, 16));
        }
        // A different seed gives different images.
        let c = tmp("c");
        let sc = write_two_class(&c, 1, 43, 48, 64).unwrap();
        assert_ne!(
            std::fs::read(&sa.files[0].0).unwrap(),
            std::fs::read(&sc.files[0].0).unwrap()
        );
        for d in [a, b, c] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn mass_is_brighter_than_its_surroundings() {
        let mut rng = Rng::new(5);
        let (px, spot) = render(&mut rng, 48, 64, true);
        let (my, mx, _) = spot.unwrap();
        let at = |y: usize, x: usize| f64::from(px[y * 64 + x]);
        let centre = at(my as usize, mx as usize);
        let mut rng = Rng::new(5);
        let (plain, none) = render(&mut rng, 48, 64, false);
        assert!(none.is_none());
        // Same texture stream, so the difference at the centre is the mass (~16000).
        assert!(centre - f64::from(plain[my as usize * 64 + mx as usize]) > 10000.0);
    }
}
