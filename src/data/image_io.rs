//! Reading mammograms into [`GrayImage`], reproducing what the paper's Python sees:
//! `cv2.imread(path, cv2.IMREAD_UNCHANGED)` for PNG/PGM/JPEG/TIFF and pydicom's
//! `pixel_array` for DICOM (plus the modality rescale and MONOCHROME1 inversion, see
//! [`read_image`]).

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

pub use super::dicom::DicomAttributes;
use super::{check_dims, dicom, pnm, DataError};

/// A single-channel image. `pixels` is row-major, `height * width` values.
///
/// `bit_depth` names the numeric type the OpenCV pipeline would hold, because
/// `cv2.resize` rounds differently per type:
/// - `8`: integers in 0..=255 (`uint8`),
/// - `16`: integers in 0..=65535 (`uint16`),
/// - `32`: arbitrary `float32` values.
///
/// Every uint8/uint16 value is exact in `f32`, so one storage type serves all three.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub bit_depth: u8,
    pub pixels: Vec<f32>,
}

impl GrayImage {
    /// Builds an image, checking the buffer length and the bit depth.
    pub fn new(
        width: usize,
        height: usize,
        bit_depth: u8,
        pixels: Vec<f32>,
    ) -> Result<Self, DataError> {
        if !matches!(bit_depth, 8 | 16 | 32) {
            return Err(DataError::Invalid(format!(
                "bit depth {bit_depth} is not one of 8, 16, 32"
            )));
        }
        if width.checked_mul(height) != Some(pixels.len()) {
            return Err(DataError::Invalid(format!(
                "{} pixels do not fill a {width}x{height} image",
                pixels.len()
            )));
        }
        Ok(GrayImage {
            width,
            height,
            bit_depth,
            pixels,
        })
    }

    /// Largest pixel value (`img.max()` in NumPy); 0 for an empty image.
    pub fn max(&self) -> f32 {
        self.pixels
            .iter()
            .copied()
            .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v))))
            .unwrap_or(0.0)
    }
}

/// Reads a PNG, PGM/PPM (P2, P3, P5, P6), JPEG, TIFF or DICOM file, sniffing the
/// format from its content (DICOM also by a `.dcm` extension when it lacks a preamble).
///
/// Values are the stored values as the paper's pipeline sees them:
/// - PNG / TIFF / JPEG: `cv2.imread(IMREAD_UNCHANGED)`; 8 and 16 bit kept as is.
///   PNG, TIFF and PGM are exact; JPEG goes through zune-jpeg, whose IDCT differs from
///   libjpeg-turbo's by at most 1 grey level on a few percent of pixels.
/// - PGM: OpenCV's PxM rules: binary (P5) samples are taken raw, whatever `maxval`;
///   ASCII (P2) samples are clamped to `maxval`, and for `maxval < 256` scaled by
///   `v * 255 / maxval` (integer division), as OpenCV does.
/// - Colour files (RGB, RGBA, palette, colour PPM) are converted to grey exactly like
///   `cv2.cvtColor(img, COLOR_BGR2GRAY)` after `IMREAD_UNCHANGED`: for 8 and 16 bit
///   `(9798 R + 19235 G + 3735 B + 2^14) >> 15`; alpha is ignored. Grey+alpha keeps grey.
/// - DICOM (through dicom-rs): native, deflated, JPEG Lossless, JPEG Baseline/Extended,
///   RLE and JPEG 2000 transfer syntaxes; JPEG-LS with the `jpegls` feature (the default
///   build, not `edge`); anything else is refused with its UID in the message. Colour and
///   multi-frame images are refused. Stored values `s` are pydicom's `pixel_array`; MONOCHROME1 is first inverted over the stored-bits range
///   (`s' = 2^BitsStored - 1 - s` unsigned, `s' = -1 - s` signed) so that high values
///   are bright as in MONOCHROME2; then `v = s' * RescaleSlope + RescaleIntercept` is
///   applied in `f64` and stored as `f32`. The result is `bit_depth` 8/16 (the
///   BitsAllocated) when the data are unsigned and slope/intercept are absent or 1/0,
///   else `bit_depth` 32 (resized as float32).
pub fn read_image(path: &Path) -> Result<GrayImage, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_image_bytes(path, &bytes)
}

/// [`read_image`] plus, for a DICOM file, its identifying attributes (PatientID,
/// StudyInstanceUID, SOPInstanceUID, ImageLaterality, ViewPosition); `None` for every
/// other format. The pixels are exactly [`read_image`]'s.
pub fn read_image_with_attributes(
    path: &Path,
) -> Result<(GrayImage, Option<DicomAttributes>), DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(DataError::decode(path, "empty file"));
    }
    if is_dicom(path, &bytes) {
        let (img, attrs) = dicom::read_with_attributes(path, &bytes)?;
        return Ok((img, Some(attrs)));
    }
    read_image_bytes(path, &bytes).map(|img| (img, None))
}

/// Whether [`read_image_bytes`] reads these bytes as DICOM: the `DICM` code after the
/// preamble, or a `.dcm`/`.dicom` name on a file no other format claims.
fn is_dicom(path: &Path, bytes: &[u8]) -> bool {
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        return true;
    }
    let other = (bytes.len() >= 2 && bytes[0] == b'P' && matches!(bytes[1], b'1'..=b'7'))
        || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        || bytes.starts_with(b"II*\0")
        || bytes.starts_with(b"MM\0*");
    !other
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("dcm") || e.eq_ignore_ascii_case("dicom"))
}

/// [`read_image`] on an in-memory file; `path` is used for messages and for the
/// `.dcm` extension hint only.
pub fn read_image_bytes(path: &Path, bytes: &[u8]) -> Result<GrayImage, DataError> {
    if bytes.is_empty() {
        return Err(DataError::decode(path, "empty file"));
    }
    let is_dcm_ext = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("dcm") || e.eq_ignore_ascii_case("dicom"));
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        return dicom::read(path, bytes);
    }
    if bytes.len() >= 2 && bytes[0] == b'P' && matches!(bytes[1], b'1'..=b'7') {
        return pnm::read(path, bytes);
    }
    let known = bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        || bytes.starts_with(b"II*\0")
        || bytes.starts_with(b"MM\0*");
    if known {
        // zune-jpeg decodes truncated JPEGs silently (grey fill); require the EOI marker.
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) && !bytes.windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err(DataError::decode(
                path,
                "truncated JPEG (no end-of-image marker)",
            ));
        }
        return read_with_image_crate(path, bytes);
    }
    if is_dcm_ext {
        return dicom::read(path, bytes);
    }
    Err(DataError::unsupported(
        path,
        "unrecognised format (expected PNG, PGM/PPM, JPEG, TIFF or DICOM)",
    ))
}

fn read_with_image_crate(path: &Path, bytes: &[u8]) -> Result<GrayImage, DataError> {
    let err = |e: image::ImageError| match e {
        image::ImageError::Unsupported(u) => DataError::unsupported(path, u.to_string()),
        other => DataError::decode(path, other.to_string()),
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::decode(path, e.to_string()))?;
    let bounds = crate::limits::current();
    let side = u32::try_from(bounds.image_side).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    // Worst case: the pixel limit in 16-bit RGBA.
    limits.max_alloc = Some((bounds.image_pixels as u64).saturating_mul(8));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(err)?;
    let (w, h) = decoder.dimensions();
    check_dims(path, w as usize, h as usize)?;
    let img = DynamicImage::from_decoder(decoder).map_err(err)?;
    from_dynamic(path, img)
}

/// OpenCV's fixed-point BGR2GRAY (15-bit coefficients), identical for u8 and u16.
fn cv_gray(r: u32, g: u32, b: u32) -> f32 {
    ((r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15) as f32
}

fn from_dynamic(path: &Path, img: DynamicImage) -> Result<GrayImage, DataError> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (bit_depth, pixels): (u8, Vec<f32>) = match img {
        DynamicImage::ImageLuma8(b) => (8, b.into_raw().into_iter().map(f32::from).collect()),
        DynamicImage::ImageLuma16(b) => (16, b.into_raw().into_iter().map(f32::from).collect()),
        DynamicImage::ImageLumaA8(b) => (8, b.pixels().map(|p| f32::from(p.0[0])).collect()),
        DynamicImage::ImageLumaA16(b) => (16, b.pixels().map(|p| f32::from(p.0[0])).collect()),
        DynamicImage::ImageRgb8(b) => (
            8,
            b.pixels()
                .map(|p| cv_gray(p.0[0].into(), p.0[1].into(), p.0[2].into()))
                .collect(),
        ),
        DynamicImage::ImageRgba8(b) => (
            8,
            b.pixels()
                .map(|p| cv_gray(p.0[0].into(), p.0[1].into(), p.0[2].into()))
                .collect(),
        ),
        DynamicImage::ImageRgb16(b) => (
            16,
            b.pixels()
                .map(|p| cv_gray(p.0[0].into(), p.0[1].into(), p.0[2].into()))
                .collect(),
        ),
        DynamicImage::ImageRgba16(b) => (
            16,
            b.pixels()
                .map(|p| cv_gray(p.0[0].into(), p.0[1].into(), p.0[2].into()))
                .collect(),
        ),
        other => {
            return Err(DataError::unsupported(
                path,
                format!("pixel layout {:?}", other.color()),
            ))
        }
    };
    GrayImage::new(w, h, bit_depth, pixels).map_err(|e| DataError::decode(path, e.to_string()))
}
