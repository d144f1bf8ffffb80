//! Minimal DICOM reader for native (uncompressed) single-frame greyscale images.
//!
//! Hand-rolled instead of `dicom-object`/`dicom-pixeldata` to keep the from-scratch
//! build small: mammography archives are mostly native little-endian, and anything
//! encapsulated (JPEG, JPEG-LS, JPEG 2000, RLE) or deflated is refused with its UID.
//!
//! Semantics (documented on [`read_image`](super::read_image)): pydicom's
//! `pixel_array` values, MONOCHROME1 inverted over the stored-bits range, then
//! `RescaleSlope`/`RescaleIntercept` applied in `f64`.

use std::path::Path;

use super::{check_dims, DataError, GrayImage};

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Nesting limit for sequences: deeper data is treated as corrupt (no stack overflow).
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy)]
struct Syntax {
    explicit: bool,
    big_endian: bool,
}

/// The attributes we need from the top-level dataset.
#[derive(Default)]
struct Attrs {
    rows: Option<u16>,
    columns: Option<u16>,
    bits_allocated: Option<u16>,
    bits_stored: Option<u16>,
    pixel_representation: Option<u16>,
    samples_per_pixel: Option<u16>,
    photometric: Option<String>,
    number_of_frames: Option<String>,
    slope: Option<String>,
    intercept: Option<String>,
    pixel_data: Option<(usize, usize)>,
}

struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
    syntax: Syntax,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> DataError {
        DataError::decode(self.path, msg)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DataError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: needs {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.bytes.len()
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, DataError> {
        let b = self.take(2)?;
        Ok(if self.syntax.big_endian {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    fn u32(&mut self) -> Result<u32, DataError> {
        let b = self.take(4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if self.syntax.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    /// Reads one element header: (group, element, VR if explicit, length).
    fn header(&mut self) -> Result<(u16, u16, [u8; 2], u32), DataError> {
        let group = self.u16()?;
        let elem = self.u16()?;
        // Item and delimiter tags never carry a VR.
        if group == 0xFFFE || !self.syntax.explicit {
            return Ok((group, elem, *b"  ", self.u32()?));
        }
        let vr = self.take(2)?;
        let vr = [vr[0], vr[1]];
        let long = matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        );
        let len = if long {
            self.take(2)?;
            self.u32()?
        } else {
            u32::from(self.u16()?)
        };
        Ok((group, elem, vr, len))
    }

    fn skip(&mut self, len: u32) -> Result<(), DataError> {
        self.take(len as usize).map(|_| ())
    }

    /// Skips an undefined-length sequence up to its Sequence Delimitation Item.
    fn skip_undefined_sequence(&mut self, depth: usize) -> Result<(), DataError> {
        if depth > MAX_DEPTH {
            return Err(self.err("sequences nested too deeply"));
        }
        loop {
            let (g, e, _, len) = self.header()?;
            match (g, e) {
                (0xFFFE, 0xE0DD) => return Ok(()),
                (0xFFFE, 0xE000) if len == UNDEFINED => self.skip_item(depth + 1)?,
                (0xFFFE, 0xE000) => self.skip(len)?,
                _ => {
                    return Err(self.err(format!(
                        "unexpected tag ({g:04X},{e:04X}) inside a sequence"
                    )))
                }
            }
        }
    }

    /// Skips the elements of an undefined-length item up to its Item Delimitation.
    fn skip_item(&mut self, depth: usize) -> Result<(), DataError> {
        loop {
            let (g, e, _, len) = self.header()?;
            if (g, e) == (0xFFFE, 0xE00D) {
                return Ok(());
            }
            if len == UNDEFINED {
                self.skip_undefined_sequence(depth + 1)?;
            } else {
                self.skip(len)?;
            }
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

fn syntax_name(uid: &str) -> Option<&'static str> {
    Some(match uid {
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended",
        "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => "JPEG Lossless",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "JPEG-LS",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "HTJ2K"
        }
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => return None,
    })
}

pub(crate) fn read(path: &Path, bytes: &[u8]) -> Result<GrayImage, DataError> {
    let has_preamble = bytes.len() >= 132 && &bytes[128..132] == b"DICM";
    let mut r = Reader {
        path,
        bytes,
        pos: if has_preamble { 132 } else { 0 },
        syntax: Syntax {
            explicit: true,
            big_endian: false,
        },
    };

    // File meta group (0002): always explicit VR little endian.
    let mut transfer_syntax = None;
    while r.bytes.get(r.pos..r.pos + 2) == Some(&[0x02, 0x00]) {
        let (_, e, _, len) = r.header()?;
        if len == UNDEFINED {
            return Err(r.err("undefined length in the file meta group"));
        }
        let value = r.take(len as usize)?;
        if e == 0x0010 {
            transfer_syntax = Some(text(value));
        }
    }
    // Without a meta group, DICOM's default is implicit VR little endian.
    let uid = transfer_syntax.unwrap_or_else(|| IMPLICIT_LE.to_string());
    r.syntax = match uid.as_str() {
        IMPLICIT_LE => Syntax {
            explicit: false,
            big_endian: false,
        },
        EXPLICIT_LE => Syntax {
            explicit: true,
            big_endian: false,
        },
        EXPLICIT_BE => Syntax {
            explicit: true,
            big_endian: true,
        },
        other => {
            let what = syntax_name(other).unwrap_or("unknown");
            return Err(DataError::unsupported(
                path,
                format!(
                    "DICOM transfer syntax {other} ({what}) is compressed or unknown; \
                     only native (uncompressed) pixel data can be decoded, \
                     e.g. convert with `gdcmconv --raw` or `dcmdjpeg`"
                ),
            ));
        }
    };

    let mut a = Attrs::default();
    while r.pos < r.bytes.len() {
        let (g, e, vr, len) = r.header()?;
        if (g, e) == (0x7FE0, 0x0010) {
            if len == UNDEFINED {
                return Err(DataError::unsupported(
                    path,
                    "encapsulated (compressed) pixel data",
                ));
            }
            let start = r.pos;
            r.skip(len)?;
            a.pixel_data = Some((start, len as usize));
            break;
        }
        if len == UNDEFINED {
            // Only sequences (or UN holding one) may have undefined length here.
            if r.syntax.explicit && !matches!(&vr, b"SQ" | b"UN") {
                return Err(r.err(format!(
                    "undefined length for ({g:04X},{e:04X}) with VR {}",
                    String::from_utf8_lossy(&vr)
                )));
            }
            r.skip_undefined_sequence(0)?;
            continue;
        }
        let value = r.take(len as usize)?;
        let us = |v: &[u8], big: bool| -> Option<u16> {
            let b: [u8; 2] = v.get(..2)?.try_into().ok()?;
            Some(if big {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            })
        };
        let big = r.syntax.big_endian;
        if g == 0x0028 {
            match e {
                0x0002 => a.samples_per_pixel = us(value, big),
                0x0004 => a.photometric = Some(text(value)),
                0x0008 => a.number_of_frames = Some(text(value)),
                0x0010 => a.rows = us(value, big),
                0x0011 => a.columns = us(value, big),
                0x0100 => a.bits_allocated = us(value, big),
                0x0101 => a.bits_stored = us(value, big),
                0x0103 => a.pixel_representation = us(value, big),
                0x1052 => a.intercept = Some(text(value)),
                0x1053 => a.slope = Some(text(value)),
                _ => {}
            }
        }
    }
    decode_pixels(path, bytes, &a, r.syntax.big_endian)
}

/// Parses a DS value (first of a multi-valued string).
fn decimal(path: &Path, name: &str, v: &Option<String>, default: f64) -> Result<f64, DataError> {
    match v
        .as_deref()
        .map(|s| s.split('\\').next().unwrap_or("").trim())
    {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| DataError::decode(path, format!("{name} '{s}' is not a number"))),
    }
}

fn decode_pixels(
    path: &Path,
    bytes: &[u8],
    a: &Attrs,
    big_endian: bool,
) -> Result<GrayImage, DataError> {
    let missing = |what: &str| DataError::decode(path, format!("DICOM attribute {what} missing"));
    let (start, len) = a
        .pixel_data
        .ok_or_else(|| missing("PixelData (7FE0,0010)"))?;
    let rows = usize::from(a.rows.ok_or_else(|| missing("Rows (0028,0010)"))?);
    let cols = usize::from(a.columns.ok_or_else(|| missing("Columns (0028,0011)"))?);
    check_dims(path, cols, rows)?;
    let spp = a.samples_per_pixel.unwrap_or(1);
    if spp != 1 {
        return Err(DataError::unsupported(
            path,
            format!("{spp} samples per pixel (only greyscale DICOM is supported)"),
        ));
    }
    let frames = match a.number_of_frames.as_deref() {
        None | Some("") => 1,
        Some(s) => s.trim().parse::<u64>().unwrap_or(0),
    };
    if frames != 1 {
        return Err(DataError::unsupported(
            path,
            format!(
                "NumberOfFrames '{}' (only single-frame images are supported)",
                a.number_of_frames.as_deref().unwrap_or("")
            ),
        ));
    }
    let bits_allocated = a
        .bits_allocated
        .ok_or_else(|| missing("BitsAllocated (0028,0100)"))?;
    if bits_allocated != 8 && bits_allocated != 16 {
        return Err(DataError::unsupported(
            path,
            format!("BitsAllocated {bits_allocated} (only 8 and 16 are supported)"),
        ));
    }
    let bits_stored = a.bits_stored.unwrap_or(bits_allocated);
    if bits_stored == 0 || bits_stored > bits_allocated {
        return Err(DataError::decode(
            path,
            format!("BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}"),
        ));
    }
    let signed = match a.pixel_representation.unwrap_or(0) {
        0 => false,
        1 => true,
        p => return Err(DataError::decode(path, format!("PixelRepresentation {p}"))),
    };
    let photometric = a.photometric.as_deref().unwrap_or("MONOCHROME2");
    let invert = match photometric {
        "MONOCHROME2" => false,
        "MONOCHROME1" => true,
        other => {
            return Err(DataError::unsupported(
                path,
                format!("PhotometricInterpretation {other} (only MONOCHROME1/2)"),
            ))
        }
    };
    let slope = decimal(path, "RescaleSlope", &a.slope, 1.0)?;
    let intercept = decimal(path, "RescaleIntercept", &a.intercept, 0.0)?;

    let bytes_per = usize::from(bits_allocated / 8);
    let needed = rows * cols * bytes_per;
    if len < needed {
        return Err(DataError::decode(
            path,
            format!("truncated pixel data: {rows}x{cols}x{bits_allocated} bit needs {needed} bytes, has {len}"),
        ));
    }
    let data = &bytes[start..start + needed];
    let raw: Vec<u16> = if bytes_per == 1 {
        data.iter().map(|&b| u16::from(b)).collect()
    } else if big_endian {
        data.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    } else {
        data.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    };

    // Like pydicom 3: unsigned values are masked to BitsStored; signed values are
    // sign-extended from BitsStored.
    let shift = 32 - u32::from(bits_stored);
    let max_unsigned = (1i64 << bits_stored) - 1;
    let stored = |v: u16| -> i64 {
        if signed {
            i64::from(((u32::from(v)) << shift) as i32 >> shift)
        } else {
            i64::from(v) & max_unsigned
        }
    };
    let identity = slope == 1.0 && intercept == 0.0;
    let pixels: Vec<f32> = raw
        .into_iter()
        .map(|v| {
            let mut s = stored(v);
            if invert {
                s = if signed { -1 - s } else { max_unsigned - s };
            }
            if identity {
                s as f32
            } else {
                (s as f64 * slope + intercept) as f32
            }
        })
        .collect();
    // Unsigned data (inverted or not) stays within 0..2^BitsAllocated without a rescale.
    let bit_depth = if !signed && identity {
        bits_allocated as u8
    } else {
        32
    };
    GrayImage::new(cols, rows, bit_depth, pixels)
        .map_err(|e| DataError::decode(path, e.to_string()))
}
