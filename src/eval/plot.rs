//! The ROC curve as a PNG, drawn with `plotters` into a memory buffer and encoded by
//! `image`: axes with ticks and labels, the chance diagonal, each curve with its
//! bootstrap band, its AUROC and 95% CI in the legend, and its operating points (Youden,
//! and the sensitivity at the chosen specificity). Text is set in DejaVu Sans, bundled
//! (assets/fonts/, Bitstream Vera licence beside it): no system font is read.

use super::{AurocReport, OperatingPoint};
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family every text of the plots uses.
pub(crate) const FAMILY: &str = "sans-serif";

/// Registers the bundled font under [`FAMILY`] (once per process).
pub(crate) fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Other("the bundled plot font does not load".into()))
    }
}

/// One curve of the plot.
pub struct RocSeries<'a> {
    /// e.g. `single view` or `4-flip TTA`.
    pub name: String,
    pub report: &'a AurocReport,
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

fn fmt_ci(c: Option<[f64; 2]>) -> String {
    c.map_or(String::new(), |[a, b]| format!(" (95% CI {a:.3}-{b:.3})"))
}

fn fmt_point(p: &OperatingPoint) -> String {
    format!(
        "sens {:.2}, spec {:.2} at {:.3}",
        p.sensitivity, p.specificity, p.threshold
    )
}

/// Draws the curves into an RGB buffer of `width` x `height`.
pub fn render_roc(
    title: &str,
    series: &[RocSeries],
    target_specificity: f64,
    width: u32,
    height: u32,
) -> Result<image::RgbImage> {
    register_font()?;
    let (w, h) = (width.max(320), height.max(320));
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let e = |e: &dyn std::fmt::Display| Error::Other(format!("drawing the ROC plot: {e}"));
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_labels(11)
            .y_labels(11)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .x_desc("1 - specificity (false positive rate)")
            .y_desc("sensitivity (true positive rate)")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                RGBColor(150, 150, 150).stroke_width(1),
            ))
            .map_err(|x| e(&x))?
            .label("chance (AUROC 0.5)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(150, 150, 150)));
        for (i, s) in series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            if let Some(b) = &s.report.roc_band {
                let mut poly: Vec<(f64, f64)> = b
                    .fpr
                    .iter()
                    .copied()
                    .zip(b.tpr_upper.iter().copied())
                    .collect();
                poly.extend(b.fpr.iter().copied().zip(b.tpr_lower.iter().copied()).rev());
                chart
                    .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.18).filled())))
                    .map_err(|x| e(&x))?;
            }
        }
        for (i, s) in series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            let r = s.report;
            let pts: Vec<(f64, f64)> = r
                .roc
                .fpr
                .iter()
                .copied()
                .zip(r.roc.tpr.iter().copied())
                .collect();
            let band = if r.roc_band.is_some() {
                ", band: bootstrap 95%"
            } else {
                ""
            };
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(format!(
                    "{}: AUROC {:.3}{}{band}",
                    s.name,
                    r.auroc,
                    fmt_ci(r.ci_bootstrap.or(r.ci_delong))
                ))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
            if let Some(p) = &r.youden {
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (1.0 - p.specificity, p.sensitivity),
                        6,
                        c.stroke_width(2),
                    )))
                    .map_err(|x| e(&x))?
                    .label(format!("  Youden: {}", fmt_point(p)))
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.stroke_width(2)));
            }
            if let Some(p) = &r.at_specificity {
                chart
                    .draw_series(std::iter::once(TriangleMarker::new(
                        (1.0 - p.specificity, p.sensitivity),
                        7,
                        c.filled(),
                    )))
                    .map_err(|x| e(&x))?
                    .label(format!(
                        "  spec >= {target_specificity:.2}: {}",
                        fmt_point(p)
                    ))
                    .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, c.filled()));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::Other("internal: plot buffer size".into()))
}

/// A binary report's ROC plot: the single-view curve, and the 4-flip TTA curve where the
/// report has one; the title names the set (`"test ROC"`, `"ROC"`) and its class counts.
pub fn write_binary_roc(path: &Path, set: &str, b: &super::BinaryReport) -> Result<()> {
    let mut series = vec![RocSeries {
        name: if b.tta.is_some() {
            "single view"
        } else {
            "model"
        }
        .into(),
        report: &b.single,
    }];
    if let Some(t) = &b.tta {
        series.push(RocSeries {
            name: "4-flip TTA".into(),
            report: t,
        });
    }
    let title = format!(
        "{set}: {} vs rest ({} positive, {} negative)",
        b.positive_class, b.positives, b.negatives
    );
    write_roc_png(path, &title, &series, b.target_specificity)
}

/// [`render_roc`] written as a PNG, whole or not at all.
pub fn write_roc_png(
    path: &Path,
    title: &str,
    series: &[RocSeries],
    target_specificity: f64,
) -> Result<()> {
    let img = render_roc(title, series, target_specificity, 760, 760)?;
    write_png(path, &img)
}

/// An RGB image as a PNG file, written atomically.
pub fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    crate::files::atomic_write(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| Error::Io {
                file: path.to_path_buf(),
                message: e.to_string(),
            })
    })
}
