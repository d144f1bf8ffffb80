//! `cv2.SimpleBlobDetector` with the parameters of the paper's `create_blob_detector`:
//! area filter only (circularity, colour, convexity, inertia off), thresholds from
//! `minThreshold` by `thresholdStep` while below `maxThreshold`, `minDistBetweenBlobs` 10,
//! `minRepeatability` 2. Follows OpenCV's `findBlobs` / `detect`: per threshold, the
//! `RETR_LIST` / `CHAIN_APPROX_NONE` borders (holes included), their contour moments,
//! centre and median radius; grouping in OpenCV's order; keypoints in OpenCV's order.

use super::contours::{find_all, list_order, moments, Approx};

#[derive(Debug, Clone, Copy)]
pub struct BlobParams {
    pub min_threshold: f32,
    pub max_threshold: f32,
    pub threshold_step: f32,
    pub min_area: f32,
    pub max_area: f32,
    pub min_dist_between_blobs: f32,
    pub min_repeatability: usize,
}

impl BlobParams {
    /// `create_blob_detector(roi_size=(patch, patch))`: blob_min_area=3,
    /// blob_min_int=.5, blob_max_int=.95, blob_th_step=10.
    pub fn paper(patch_size: usize) -> Self {
        BlobParams {
            min_threshold: (0.5f64 * 255.0) as i32 as f32,
            max_threshold: (0.95f64 * 255.0) as i32 as f32,
            threshold_step: 10.0,
            min_area: 3.0,
            max_area: (patch_size * patch_size) as f32,
            min_dist_between_blobs: 10.0,
            min_repeatability: 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Center {
    loc: (f64, f64),
    radius: f64,
}

/// A keypoint as OpenCV returns it: `pt` (float32) and `size`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyPoint {
    pub x: f32,
    pub y: f32,
    pub size: f32,
}

fn find_blobs(gray: &[u8], h: usize, w: usize, thresh: f64, p: &BlobParams) -> Vec<Center> {
    let t = thresh.floor() as i32;
    let bin: Vec<u8> = gray.iter().map(|&v| u8::from(i32::from(v) > t)).collect();
    let all = find_all(&bin, h, w, Approx::None);
    let mut out = Vec::new();
    for i in list_order(&all) {
        let pts = &all[i].points;
        let (m00, m10, m01) = moments(pts);
        if m00 < f64::from(p.min_area) || m00 >= f64::from(p.max_area) {
            continue;
        }
        if m00 == 0.0 {
            continue;
        }
        let loc = (m10 / m00, m01 / m00);
        let mut d: Vec<f64> = pts
            .iter()
            .map(|&(x, y)| {
                let (dx, dy) = (loc.0 - f64::from(x), loc.1 - f64::from(y));
                (dx * dx + dy * dy).sqrt()
            })
            .collect();
        d.sort_by(f64::total_cmp);
        let n = d.len();
        let radius = (d[(n - 1) / 2] + d[n / 2]) / 2.0;
        out.push(Center { loc, radius });
    }
    out
}

/// `detector.detect(gray)` on an 8-bit image `h x w`.
pub fn detect(gray: &[u8], h: usize, w: usize, p: &BlobParams) -> Vec<KeyPoint> {
    let mut centers: Vec<Vec<Center>> = Vec::new();
    let mut thresh = f64::from(p.min_threshold);
    while thresh < f64::from(p.max_threshold) {
        let cur = find_blobs(gray, h, w, thresh, p);
        let mut new_centers: Vec<Vec<Center>> = Vec::new();
        for c in &cur {
            let mut is_new = true;
            for group in centers.iter_mut() {
                let mid = group[group.len() / 2];
                let (dx, dy) = (mid.loc.0 - c.loc.0, mid.loc.1 - c.loc.1);
                let dist = (dx * dx + dy * dy).sqrt();
                is_new = dist >= f64::from(p.min_dist_between_blobs)
                    && dist >= mid.radius
                    && dist >= c.radius;
                if !is_new {
                    group.push(*c);
                    let mut k = group.len() - 1;
                    while k > 0 && c.radius < group[k - 1].radius {
                        group[k] = group[k - 1];
                        k -= 1;
                    }
                    group[k] = *c;
                    break;
                }
            }
            if is_new {
                new_centers.push(vec![*c]);
            }
        }
        centers.extend(new_centers);
        thresh += f64::from(p.threshold_step);
    }
    let mut kps = Vec::new();
    for group in &centers {
        if group.len() < p.min_repeatability {
            continue;
        }
        let (mut sx, mut sy, mut norm) = (0.0f64, 0.0f64, 0.0f64);
        for c in group {
            sx += 1.0 * c.loc.0;
            sy += 1.0 * c.loc.1;
            norm += 1.0;
        }
        let inv = 1.0 / norm;
        kps.push(KeyPoint {
            x: (sx * inv) as f32,
            y: (sy * inv) as f32,
            size: (group[group.len() / 2].radius as f32) * 2.0,
        });
    }
    kps
}
