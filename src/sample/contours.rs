//! `cv2.findContours` on a binary image (non-zero = foreground): Suzuki-Abe border
//! following as OpenCV implements it (8-connected foreground, the image padded with one
//! pixel of zeros), with OpenCV's output order for `RETR_LIST` (the reverse of discovery)
//! and `RETR_TREE` (depth first, each level in reverse discovery order), plus
//! `contourArea`, `boundingRect` and contour `moments` (m00, m10, m01) computed as OpenCV
//! computes them.

/// One border: its points (CHAIN_APPROX_NONE: every border pixel; SIMPLE: the corners),
/// whether it is a hole border, and its parent in discovery numbering (`None`: the frame).
#[derive(Debug, Clone, PartialEq)]
pub struct Contour {
    pub points: Vec<(i32, i32)>,
    pub is_hole: bool,
    pub parent: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approx {
    None,
    Simple,
}

const CODE_DELTAS: [(i32, i32); 8] = [
    (1, 0),
    (1, -1),
    (0, -1),
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
];

/// Every border of `bin` (`h x w`, row-major, non-zero = 1), in discovery order.
pub fn find_all(bin: &[u8], h: usize, w: usize, approx: Approx) -> Vec<Contour> {
    let (ph, pw) = (h + 2, w + 2);
    let mut img = vec![0i32; ph * pw];
    for y in 0..h {
        for x in 0..w {
            if bin[y * w + x] != 0 {
                img[(y + 1) * pw + x + 1] = 1;
            }
        }
    }
    let step = pw as isize;
    let d8 = [1, -step + 1, -step, -step - 1, -1, step - 1, step, step + 1];
    let mut deltas = [0isize; 16];
    for i in 0..16 {
        deltas[i] = d8[i % 8];
    }
    let mut out: Vec<Contour> = Vec::new();
    for y in 1..ph - 1 {
        let mut prev = 0i32;
        let mut lnbd: Option<usize> = None; // last border met on this row (None: the frame)
        let mut x = 1;
        while x < pw - 1 {
            let p = img[y * pw + x];
            if p != prev {
                let outer = prev == 0 && p == 1;
                let hole = !outer && p == 0 && prev >= 1;
                if outer || hole {
                    let idx = out.len();
                    let nbd = idx as i32 + 2;
                    let ox = if hole { x - 1 } else { x };
                    // Suzuki's table: the parent from the last border met (LNBD).
                    let lnbd_is_hole = lnbd.is_none_or(|l| out[l].is_hole);
                    let parent = if outer == lnbd_is_hole {
                        lnbd
                    } else {
                        lnbd.and_then(|l| out[l].parent)
                    };
                    let points = fetch(
                        &mut img,
                        &deltas,
                        (y * pw + ox) as isize,
                        (ox as i32 - 1, y as i32 - 1),
                        hole,
                        approx,
                        nbd,
                    );
                    out.push(Contour {
                        points,
                        is_hole: hole,
                        parent,
                    });
                }
                let now = img[y * pw + x];
                if now != 0 && now != 1 {
                    lnbd = Some(now.unsigned_abs() as usize - 2);
                }
                prev = now;
            }
            x += 1;
        }
    }
    out
}

/// OpenCV's `icvFetchContour`: follows one border from `i0`, marking it with `nbd`
/// (`-nbd` where the pixel's right neighbour was examined and is background).
fn fetch(
    img: &mut [i32],
    deltas: &[isize; 16],
    i0: isize,
    mut pt: (i32, i32),
    is_hole: bool,
    approx: Approx,
    nbd: i32,
) -> Vec<(i32, i32)> {
    let at = |img: &[i32], i: isize| img[i as usize];
    let mut points = Vec::new();
    let mut s: usize = if is_hole { 0 } else { 4 };
    let mut s_end = s;
    let mut i1;
    loop {
        s = (s + 7) & 7;
        i1 = i0 + deltas[s];
        if at(img, i1) != 0 || s == s_end {
            break;
        }
    }
    if s == s_end && at(img, i1) == 0 {
        img[i0 as usize] = -nbd;
        points.push(pt);
        return points;
    }
    let mut i3 = i0;
    let mut prev_s = s ^ 4;
    loop {
        s_end = s;
        let mut i4 = i3;
        while s < 15 {
            s += 1;
            i4 = i3 + deltas[s];
            if at(img, i4) != 0 {
                break;
            }
        }
        s &= 7;
        if (s as u32).wrapping_sub(1) < s_end as u32 {
            img[i3 as usize] = -nbd;
        } else if at(img, i3) == 1 {
            img[i3 as usize] = nbd;
        }
        if s != prev_s || approx == Approx::None {
            points.push(pt);
            prev_s = s;
        }
        pt.0 += CODE_DELTAS[s].0;
        pt.1 += CODE_DELTAS[s].1;
        if i4 == i0 && i3 == i1 {
            break;
        }
        i3 = i4;
        s = (s + 4) & 7;
    }
    points
}

/// `RETR_LIST` order: the reverse of discovery.
pub fn list_order(all: &[Contour]) -> Vec<usize> {
    (0..all.len()).rev().collect()
}

/// `RETR_TREE` order: depth first from the frame, the children of every node in reverse
/// discovery order.
pub fn tree_order(all: &[Contour]) -> Vec<usize> {
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); all.len() + 1];
    for (i, c) in all.iter().enumerate() {
        children[c.parent.map_or(0, |p| p + 1)].push(i);
    }
    let mut order = Vec::with_capacity(all.len());
    let mut stack: Vec<usize> = children[0].clone(); // popped from the end: last first
    while let Some(i) = stack.pop() {
        order.push(i);
        stack.extend(children[i + 1].iter().copied());
    }
    order
}

/// `cv2.contourArea(c)` (not oriented).
pub fn contour_area(pts: &[(i32, i32)]) -> f64 {
    let Some(&last) = pts.last() else {
        return 0.0;
    };
    let mut prev = (f64::from(last.0), f64::from(last.1));
    let mut a = 0.0f64;
    for &(x, y) in pts {
        let (x, y) = (f64::from(x), f64::from(y));
        a += prev.0 * y - prev.1 * x;
        prev = (x, y);
    }
    (a * 0.5).abs()
}

/// `cv2.boundingRect(c)`: (x, y, w, h).
pub fn bounding_rect(pts: &[(i32, i32)]) -> (i32, i32, i32, i32) {
    if pts.is_empty() {
        return (0, 0, 0, 0);
    }
    let (mut x0, mut y0, mut x1, mut y1) = (i32::MAX, i32::MAX, i32::MIN, i32::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
}

/// `cv2.moments(contour)`: (m00, m10, m01), Green's formula as OpenCV sums it.
pub fn moments(pts: &[(i32, i32)]) -> (f64, f64, f64) {
    let Some(&last) = pts.last() else {
        return (0.0, 0.0, 0.0);
    };
    let (mut xp, mut yp) = (f64::from(last.0), f64::from(last.1));
    let (mut a00, mut a10, mut a01) = (0.0f64, 0.0f64, 0.0f64);
    for &(x, y) in pts {
        let (xi, yi) = (f64::from(x), f64::from(y));
        let dxy = xp * yi - xi * yp;
        a00 += dxy;
        a10 += dxy * (xp + xi);
        a01 += dxy * (yp + yi);
        xp = xi;
        yp = yi;
    }
    if a00.abs() > f64::from(f32::EPSILON) {
        #[allow(clippy::excessive_precision)]
        let (h, s) = if a00 > 0.0 {
            (0.5, 0.16666666666666666666666666666667)
        } else {
            (-0.5, -0.16666666666666666666666666666667)
        };
        (a00 * h, a10 * s, a01 * s)
    } else {
        (0.0, 0.0, 0.0)
    }
}

/// Fills the inside of border `c` (its pixels and every pixel it encloses), as
/// `cv2.drawContours(..., idx, 255, -1)` of an outer border does, into `out` (`h x w`).
pub fn fill_outer(all: &[Contour], c: usize, h: usize, w: usize) -> Vec<bool> {
    // Pixels of this border: a flood fill from outside, which the border stops, leaves the
    // inside. The border is 8-connected, so the flood moves 4-connected.
    let (ph, pw) = (h + 2, w + 2);
    let mut wall = vec![false; ph * pw];
    for &(x, y) in &trace_pixels(&all[c].points) {
        wall[(y as usize + 1) * pw + x as usize + 1] = true;
    }
    let mut outside = vec![false; ph * pw];
    let mut stack = vec![0usize];
    outside[0] = true;
    while let Some(i) = stack.pop() {
        let (y, x) = (i / pw, i % pw);
        let mut push = |j: usize| {
            if !outside[j] && !wall[j] {
                outside[j] = true;
                stack.push(j);
            }
        };
        if x > 0 {
            push(i - 1);
        }
        if x + 1 < pw {
            push(i + 1);
        }
        if y > 0 {
            push(i - pw);
        }
        if y + 1 < ph {
            push(i + pw);
        }
    }
    let mut out = vec![false; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = !outside[(y + 1) * pw + x + 1];
        }
    }
    out
}

/// The pixels of a (possibly SIMPLE-approximated) border: the straight 8-connected runs
/// between its vertices.
fn trace_pixels(pts: &[(i32, i32)]) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for (k, &a) in pts.iter().enumerate() {
        let b = pts[(k + 1) % pts.len()];
        let (dx, dy) = ((b.0 - a.0).signum(), (b.1 - a.1).signum());
        let n = (b.0 - a.0).abs().max((b.1 - a.1).abs());
        for t in 0..=n {
            out.push((a.0 + dx * t, a.1 + dy * t));
        }
    }
    out
}
