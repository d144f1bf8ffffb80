//! mini-MIAS's ground-truth table (`Info.txt`): `REFNUM TISSUE CLASS SEVERITY X Y RADIUS`,
//! one abnormality a line (NORM lines have no abnormality). The centre's y is counted from
//! the bottom of the image (the database's convention; checked on the images: the
//! circumscribed masses of mdb023, mdb028 and mdb134 are brighter than their surroundings
//! at row `height - y` and not at row `y`), so the circle's row is `height - y`.
//! CALC rows are calcifications; every other class (CIRC, SPIC, MISC, ARCH, ASYM) a mass.
//! Severity M is malignant, B benign.

use std::path::Path;

use super::{Abnormality, Roi, Table, View};
use crate::data::GrayImage;
use crate::error::{Error, Result};

/// A row of Info.txt that names an abnormality but no centre (the table's `*NOTE*`
/// rows): reported, not sampled.
#[derive(Debug, Clone)]
pub struct Unlocated {
    pub refnum: String,
    pub line: usize,
}

/// Reads Info.txt into a table whose images are `IMG_DIR/REFNUM.pgm`; each image is its
/// own patient (`REFNUM`) and view (ID `REFNUM`). The circle's row is filled in when the
/// image's height is known (see [`circle_mask`]); here `y` is the table's value.
pub fn read_info(info: &Path, img_dir: &Path) -> Result<(Table, Vec<Unlocated>)> {
    let text = std::fs::read_to_string(info).map_err(|e| Error::Io {
        file: info.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut table = Table::default();
    let mut unlocated = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 3 || !t[0].starts_with("mdb") || t[2] == "NORM" {
            continue;
        }
        let refnum = t[0].to_string();
        let severity = t.get(3).copied().unwrap_or("");
        let nums: Vec<f64> = t
            .iter()
            .skip(4)
            .take(3)
            .filter_map(|s| s.parse().ok())
            .collect();
        let pathology = match severity {
            "M" => "MALIGNANT",
            "B" => "BENIGN",
            _ => {
                return Err(Error::BadFormat {
                    file: info.to_path_buf(),
                    what: format!("line {}", i + 1),
                    message: format!("severity `{severity}` is not B or M"),
                })
            }
        };
        let views = table.patients.entry(refnum.clone()).or_default();
        if views.is_empty() {
            views.push(View {
                patient: refnum.clone(),
                id: refnum.clone(),
                image: img_dir.join(format!("{refnum}.pgm")),
                abnormalities: Vec::new(),
            });
        }
        if nums.len() < 3 {
            unlocated.push(Unlocated {
                refnum,
                line: i + 1,
            });
            continue;
        }
        let view = &mut views[0];
        let n = view.abnormalities.len() + 1;
        view.abnormalities.push(Abnormality {
            abn: n.to_string(),
            pathology: pathology.into(),
            itype: if t[2] == "CALC" { "calc" } else { "mass" }.into(),
            roi: Roi::Circle {
                x: nums[0],
                y: nums[1],
                r: nums[2],
            },
        });
    }
    table
        .patients
        .retain(|_, v| v.iter().any(|v| !v.abnormalities.is_empty()));
    Ok((table, unlocated))
}

/// The circle (`x`, `y` from the bottom, radius `r`, in pixels of an `h x w` image) as an
/// 8-bit 0/255 mask: pixel (row, col) is inside when
/// `(col - x)^2 + (row - (h - y))^2 <= r^2`.
pub fn circle_mask(h: usize, w: usize, x: f64, y: f64, r: f64) -> GrayImage {
    let cy = h as f64 - y;
    let mut px = vec![0.0f32; h * w];
    for row in 0..h {
        let dy = row as f64 - cy;
        for col in 0..w {
            let dx = col as f64 - x;
            if dx * dx + dy * dy <= r * r {
                px[row * w + col] = 255.0;
            }
        }
    }
    GrayImage {
        width: w,
        height: h,
        bit_depth: 8,
        pixels: px,
    }
}
