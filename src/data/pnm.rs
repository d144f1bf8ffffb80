//! Minimal PGM/PPM reader with OpenCV's PxM semantics (the `image` crate rescales
//! samples by `maxval`, OpenCV does not for binary files, so we read them ourselves).

use std::path::Path;

use super::{check_dims, DataError, GrayImage};

struct Header {
    ascii: bool,
    channels: usize,
    width: usize,
    height: usize,
    maxval: u32,
    data_start: usize,
}

fn skip_space_and_comments(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() {
        match bytes[pos] {
            b'#' => {
                while pos < bytes.len() && bytes[pos] != b'\n' && bytes[pos] != b'\r' {
                    pos += 1;
                }
            }
            c if c.is_ascii_whitespace() => pos += 1,
            _ => break,
        }
    }
    pos
}

/// Reads an unsigned decimal number, skipping leading whitespace and comments.
fn read_number(path: &Path, bytes: &[u8], pos: &mut usize, what: &str) -> Result<u32, DataError> {
    *pos = skip_space_and_comments(bytes, *pos);
    let start = *pos;
    let mut value: u32 = 0;
    while *pos < bytes.len() && bytes[*pos].is_ascii_digit() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u32::from(bytes[*pos] - b'0')))
            .ok_or_else(|| DataError::decode(path, format!("{what} is out of range")))?;
        *pos += 1;
    }
    if *pos == start {
        let msg = if *pos >= bytes.len() {
            format!("truncated: missing {what}")
        } else {
            format!("expected a number for {what}")
        };
        return Err(DataError::decode(path, msg));
    }
    Ok(value)
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header, DataError> {
    let (ascii, channels) = match bytes.get(..2) {
        Some(b"P2") => (true, 1),
        Some(b"P5") => (false, 1),
        Some(b"P3") => (true, 3),
        Some(b"P6") => (false, 3),
        _ => {
            return Err(DataError::unsupported(
                path,
                "only PGM/PPM (P2, P3, P5, P6) netpbm files are supported",
            ))
        }
    };
    let mut pos = 2;
    let width = read_number(path, bytes, &mut pos, "width")? as usize;
    let height = read_number(path, bytes, &mut pos, "height")? as usize;
    let maxval = read_number(path, bytes, &mut pos, "maxval")?;
    if maxval == 0 || maxval > 65535 {
        return Err(DataError::decode(
            path,
            format!("maxval {maxval} is not in 1..=65535"),
        ));
    }
    check_dims(path, width, height)?;
    // Exactly one whitespace byte separates the header from binary data.
    if !ascii {
        match bytes.get(pos) {
            Some(c) if c.is_ascii_whitespace() => pos += 1,
            _ => return Err(DataError::decode(path, "truncated header")),
        }
    }
    Ok(Header {
        ascii,
        channels,
        width,
        height,
        maxval,
        data_start: pos,
    })
}

pub(crate) fn read(path: &Path, bytes: &[u8]) -> Result<GrayImage, DataError> {
    let h = parse_header(path, bytes)?;
    let wide = h.maxval > 255;
    let n = h.width * h.height * h.channels;
    // Every sample takes at least one byte: cheap truncation check before allocating.
    if bytes.len().saturating_sub(h.data_start) < n {
        return Err(DataError::decode(
            path,
            format!(
                "truncated: {}x{} samples do not fit in the file",
                h.width, h.height
            ),
        ));
    }
    let mut samples: Vec<u32> = Vec::with_capacity(n);
    if h.ascii {
        let mut pos = h.data_start;
        for _ in 0..n {
            let v = read_number(path, bytes, &mut pos, "sample")?.min(h.maxval);
            // OpenCV scales 8-bit ASCII samples to 0..255; 16-bit ones are kept.
            samples.push(if wide { v } else { v * 255 / h.maxval });
        }
    } else {
        let bps = if wide { 2 } else { 1 };
        let data = bytes
            .get(h.data_start..)
            .filter(|d| d.len() >= n * bps)
            .ok_or_else(|| {
                DataError::decode(
                    path,
                    format!(
                        "truncated: {}x{} needs {} bytes of samples, file has {}",
                        h.width,
                        h.height,
                        n * bps,
                        bytes.len().saturating_sub(h.data_start)
                    ),
                )
            })?;
        if wide {
            samples.extend(
                data[..n * 2]
                    .chunks_exact(2)
                    .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))),
            );
        } else {
            samples.extend(data[..n].iter().map(|&b| u32::from(b)));
        }
    }
    let pixels: Vec<f32> = if h.channels == 1 {
        samples.into_iter().map(|v| v as f32).collect()
    } else {
        // PPM is RGB order; same BGR2GRAY weights as the other colour paths.
        samples
            .chunks_exact(3)
            .map(|p| ((p[0] * 9798 + p[1] * 19235 + p[2] * 3735 + (1 << 14)) >> 15) as f32)
            .collect()
    };
    GrayImage::new(h.width, h.height, if wide { 16 } else { 8 }, pixels)
        .map_err(|e| DataError::decode(path, e.to_string()))
}
