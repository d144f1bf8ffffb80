//! Heatmap overlays: a probability map (usually the coarse patch-classifier output)
//! bilinearly upsampled to the image, coloured with the jet map and alpha-blended
//! over the grey image, written as an RGB PNG.

use std::fs::{self, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder};

use super::{DataError, GrayImage};

/// Overlay appearance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayOptions {
    /// Blend weight at probability 1; the weight scales with the probability so that
    /// low-probability regions stay grey.
    pub max_alpha: f32,
    /// Probabilities below this are not drawn at all.
    pub threshold: f32,
    /// Draw the colour scale (probability 0 to 1, with the map's highest value marked)
    /// in the image's top-right corner; images under 96 pixels a side get none.
    pub legend: bool,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        OverlayOptions {
            max_alpha: 0.6,
            threshold: 0.0,
            legend: true,
        }
    }
}

/// Matplotlib-style jet colour map for `t` in 0..=1.
fn jet(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let ch = |offset: f32| (1.5 - (4.0 * t - offset).abs()).clamp(0.0, 1.0);
    [ch(3.0), ch(2.0), ch(1.0)]
}

/// Bilinear upsampling of an `mh x mw` map to `h x w` (half-pixel centres, clamped
/// edges, like `cv2.resize(INTER_LINEAR)` in spirit, not bit for bit).
fn upsample(map: &[f32], mh: usize, mw: usize, h: usize, w: usize) -> Vec<f32> {
    let coord = |d: usize, src: usize, dst: usize| -> (usize, usize, f32) {
        let f = ((d as f32 + 0.5) * src as f32 / dst as f32 - 0.5).max(0.0);
        let i0 = (f.floor() as usize).min(src - 1);
        let i1 = (i0 + 1).min(src - 1);
        (i0, i1, f - i0 as f32)
    };
    let xs: Vec<_> = (0..w).map(|x| coord(x, mw, w)).collect();
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        let (y0, y1, fy) = coord(y, mh, h);
        for &(x0, x1, fx) in &xs {
            let top = map[y0 * mw + x0] * (1.0 - fx) + map[y0 * mw + x1] * fx;
            let bot = map[y1 * mw + x0] * (1.0 - fx) + map[y1 * mw + x1] * fx;
            out.push(top * (1.0 - fy) + bot * fy);
        }
    }
    out
}

/// Renders the overlay as RGB8 bytes (`img.height x img.width x 3`). The grey image
/// is min-max stretched to 0..255 for display.
pub fn render_overlay(
    img: &GrayImage,
    heat: &[f32],
    heat_shape: (usize, usize),
    opts: &OverlayOptions,
) -> Result<Vec<u8>, DataError> {
    let (mh, mw) = heat_shape;
    if mh == 0 || mw == 0 || mh.checked_mul(mw) != Some(heat.len()) {
        return Err(DataError::Invalid(format!(
            "overlay: heatmap of {} values does not match shape {mh}x{mw}",
            heat.len()
        )));
    }
    if img.width.checked_mul(img.height) != Some(img.pixels.len()) || img.pixels.is_empty() {
        return Err(DataError::Invalid(
            "overlay: empty or inconsistent image".into(),
        ));
    }
    let (lo, hi) = img
        .pixels
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let up = upsample(heat, mh, mw, img.height, img.width);
    let mut rgb = Vec::with_capacity(img.pixels.len() * 3);
    for (&g, &p) in img.pixels.iter().zip(&up) {
        let g = if g.is_finite() { (g - lo) / span } else { 0.0 };
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let a = if p >= opts.threshold && p > 0.0 {
            opts.max_alpha.clamp(0.0, 1.0) * p
        } else {
            0.0
        };
        for c in jet(p) {
            rgb.push(((g * (1.0 - a) + c * a) * 255.0).round().clamp(0.0, 255.0) as u8);
        }
    }
    Ok(rgb)
}

/// Writes the overlay PNG atomically: a temporary file in the destination directory
/// is renamed over `path`, so readers never see a half-written image.
pub fn write_overlay(
    path: &Path,
    img: &GrayImage,
    heat: &[f32],
    heat_shape: (usize, usize),
    opts: &OverlayOptions,
) -> Result<(), DataError> {
    let mut rgb = render_overlay(img, heat, heat_shape, opts)?;
    if opts.legend {
        let max = heat
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, &v| m.max(v));
        draw_colour_scale(&mut rgb, img.width, img.height, max.clamp(0.0, 1.0), opts)
            .map_err(|e| DataError::Invalid(format!("overlay: {e}")))?;
    }
    let io = |source: std::io::Error, p: &Path| DataError::Io {
        path: p.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io(e, &tmp))?;
        let mut w = BufWriter::new(file);
        PngEncoder::new(&mut w)
            .write_image(
                &rgb,
                img.width as u32,
                img.height as u32,
                ExtendedColorType::Rgb8,
            )
            .map_err(|e| DataError::decode(path, format!("PNG encoding failed: {e}")))?;
        let file = w.into_inner().map_err(|e| io(e.into_error(), &tmp))?;
        file.sync_all().map_err(|e| io(e, &tmp))?;
        fs::rename(&tmp, path).map_err(|e| io(e, path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The colour scale drawn into an overlay (`rgb`: `width x height x 3`): a vertical bar
/// of the jet map from probability 0 (bottom) to 1 (top), each colour at the blend weight
/// the overlay gives it over black, ticks at 0, 0.5 and 1, a white line at `max` (the
/// map's highest probability) and `max 0.123` under the bar.
pub fn draw_colour_scale(
    rgb: &mut [u8],
    width: usize,
    height: usize,
    max: f32,
    opts: &OverlayOptions,
) -> Result<(), String> {
    use plotters::prelude::*;
    if width < 96 || height < 96 || rgb.len() != width * height * 3 {
        return Ok(());
    }
    crate::eval::plot::register_font().map_err(|e| e.to_string())?;
    let font = (height / 32).clamp(10, 28) as i32;
    let bar_w = (width / 40).clamp(6, 32) as i32;
    let bar_h = (height as i32 * 2 / 5).max(40);
    let label_w = font * 9 / 2;
    let pad = font / 2 + 2;
    let (x1, y0) = (width as i32 - pad, pad + font / 2);
    let x0 = x1 - bar_w;
    let y1 = y0 + bar_h;
    let to_y = |p: f32| y1 - (p * bar_h as f32).round() as i32;
    let root = BitMapBackend::with_buffer(rgb, (width as u32, height as u32)).into_drawing_area();
    let e = |x: &dyn std::fmt::Display| x.to_string();
    // A panel behind the bar and its labels keeps them legible over any image.
    root.draw(&Rectangle::new(
        [
            (x0 - label_w - pad, y0 - font / 2 - 2),
            (width as i32 - 1, y1 + font / 2 + 2),
        ],
        RGBColor(0, 0, 0).mix(0.55).filled(),
    ))
    .map_err(|x| e(&x))?;
    for y in y0..=y1 {
        let p = (y1 - y) as f32 / bar_h as f32;
        let a = opts.max_alpha.clamp(0.0, 1.0) * p;
        let c = jet(p).map(|v| (v * a * 255.0).round().clamp(0.0, 255.0) as u8);
        root.draw(&PathElement::new(
            [(x0, y), (x1, y)],
            RGBColor(c[0], c[1], c[2]),
        ))
        .map_err(|x| e(&x))?;
    }
    root.draw(&Rectangle::new([(x0, y0), (x1, y1)], WHITE.stroke_width(1)))
        .map_err(|x| e(&x))?;
    let style = TextStyle::from((crate::eval::plot::FAMILY, font).into_font())
        .color(&WHITE)
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Right,
            plotters::style::text_anchor::VPos::Center,
        ));
    for (p, label) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        let y = to_y(p);
        root.draw(&PathElement::new([(x0 - 4, y), (x0, y)], WHITE))
            .map_err(|x| e(&x))?;
        root.draw(&Text::new(label.to_string(), (x0 - 6, y), style.clone()))
            .map_err(|x| e(&x))?;
    }
    let y = to_y(max);
    root.draw(&PathElement::new(
        [(x0 - 2, y), (x1 + 2, y)],
        WHITE.stroke_width(2),
    ))
    .map_err(|x| e(&x))?;
    let below = TextStyle::from((crate::eval::plot::FAMILY, font).into_font())
        .color(&WHITE)
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Right,
            plotters::style::text_anchor::VPos::Top,
        ));
    root.draw(&Text::new(format!("max {max:.3}"), (x1, y1 + 4), below))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "overlay".into());
    let tmp_name = format!(".{name}.{}.{n}.tmp", std::process::id());
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(tmp_name),
        _ => PathBuf::from(tmp_name),
    }
}
