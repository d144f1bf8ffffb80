//! DICOM reading through dicom-rs (`dicom-object` parses the file, `dicom-pixeldata`
//! decodes the pixel data with the transfer syntax registry's decoders).
//!
//! Transfer syntaxes: native (implicit and explicit VR little endian, explicit VR big
//! endian), deflated explicit VR little endian, JPEG Lossless (process 14 and its SV1
//! form), JPEG Baseline/Extended, RLE Lossless and JPEG 2000 (lossless and lossy) in
//! every build, all pure Rust; JPEG-LS (lossless and near-lossless) through CharLS
//! only with the `jpegls` cargo feature (the default build, not `edge`).
//!
//! Semantics (documented on [`read_image`](super::read_image)): pydicom's
//! `pixel_array` values, MONOCHROME1 inverted over the stored-bits range, then
//! `RescaleSlope`/`RescaleIntercept` applied in `f64`.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use dicom_object::{
    file::ReadPreamble, FileDicomObject, FileMetaTable, FileMetaTableBuilder, InMemDicomObject,
    OpenFileOptions, Tag,
};
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::dataset::LazyDataToken;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::{check_dims, DataError, GrayImage};

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
const JPEG_LS: [&str; 2] = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"];

/// The identifying attributes an analyst needs beside the pixels: each the element's
/// text with surrounding spaces and NULs removed, `None` when absent or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DicomAttributes {
    /// PatientID (0010,0020).
    pub patient_id: Option<String>,
    /// StudyInstanceUID (0020,000D).
    pub study_instance_uid: Option<String>,
    /// SOPInstanceUID (0008,0018).
    pub sop_instance_uid: Option<String>,
    /// ImageLaterality (0020,0062): `L`, `R` or `B`.
    pub image_laterality: Option<String>,
    /// ViewPosition (0018,5101): `CC`, `MLO`, ...
    pub view_position: Option<String>,
}

type Object = FileDicomObject<InMemDicomObject>;

/// The error and its causes, `outer: inner: innermost`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        src = s.source();
    }
    msg
}

fn syntax_label(uid: &str) -> String {
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => format!("{uid} ({})", ts.name()),
        None => format!("{uid} (unknown)"),
    }
}

/// Refuses a transfer syntax this build cannot decode, naming it.
fn check_syntax(path: &Path, uid: &str) -> Result<(), DataError> {
    let Some(ts) = TransferSyntaxRegistry.get(uid) else {
        return Err(DataError::unsupported(
            path,
            format!("DICOM transfer syntax {uid} is unknown"),
        ));
    };
    if ts.can_decode_all() {
        return Ok(());
    }
    let label = syntax_label(uid);
    let msg = if JPEG_LS.contains(&uid) {
        format!(
            "DICOM transfer syntax {label} is not decoded by this build of allconv \
             (built without the `jpegls` feature, e.g. the edge build); the full (default) \
             build reads it"
        )
    } else {
        format!("DICOM transfer syntax {label} is not supported (no decoder)")
    };
    Err(DataError::unsupported(path, msg))
}

/// Parses the file: preamble + `DICM`, `DICM` without preamble, a bare file meta group,
/// or a bare data set (DICOM's default, implicit VR little endian).
fn parse(path: &Path, bytes: &[u8]) -> Result<Object, DataError> {
    let body: Cow<'_, [u8]> = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Cow::Borrowed(&bytes[128..])
    } else if bytes.starts_with(b"DICM") {
        Cow::Borrowed(bytes)
    } else if bytes.starts_with(&[0x02, 0x00]) {
        // A file meta group without preamble or magic code.
        let mut v = b"DICM".to_vec();
        v.extend_from_slice(bytes);
        Cow::Owned(v)
    } else {
        return parse_dataset(path, bytes);
    };
    let meta = FileMetaTable::from_reader(&body[..])
        .map_err(|e| DataError::decode(path, format!("DICOM file meta group: {}", chain(&e))))?;
    check_syntax(path, meta.transfer_syntax())?;
    let start = meta_end(&body)
        .ok_or_else(|| DataError::decode(path, "DICOM file meta group: truncated element"))?;
    check_lengths(path, &body[start..], meta.transfer_syntax())?;
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&body[..])
        .map_err(|e| DataError::decode(path, format!("DICOM data set: {}", chain(&e))))
}

/// Where the data set starts in `DICM` + file meta group (explicit VR little endian
/// elements of group 0002), or `None` when an element runs past the end.
fn meta_end(body: &[u8]) -> Option<usize> {
    let mut pos = 4usize;
    while body.get(pos..pos + 2) == Some(&[0x02, 0x00]) {
        let vr = body.get(pos + 4..pos + 6)?;
        let long = matches!(
            vr,
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
        let (header, len) = if long {
            let b = body.get(pos + 8..pos + 12)?;
            (12, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        } else {
            let b = body.get(pos + 6..pos + 8)?;
            (8, usize::from(u16::from_le_bytes([b[0], b[1]])))
        };
        pos = pos.checked_add(header)?.checked_add(len)?;
        if pos > body.len() {
            return None;
        }
    }
    Some(pos)
}

/// dicom-object allocates (and zero-fills) each element's value at its declared length
/// before reading it: a few hundred hostile bytes could ask for 4 GB. Walks the data set
/// with dicom-parser's lazy reader (values skipped, never loaded) and refuses any length
/// longer than the data set itself.
fn check_lengths(path: &Path, data: &[u8], uid: &str) -> Result<(), DataError> {
    if uid == DEFLATED_LE {
        // Inflated here under a cap (the image-pixel limit at 16 bits plus 64 MiB of
        // attributes), then walked as explicit VR little endian.
        let bounds = crate::limits::current();
        let cap = (bounds.image_pixels as u64).saturating_mul(2) + (64 << 20);
        let mut inflated = Vec::new();
        let mut inflater = flate2::read::DeflateDecoder::new(data).take(cap + 1);
        inflater
            .read_to_end(&mut inflated)
            .map_err(|e| DataError::decode(path, format!("DICOM deflated data set: {e}")))?;
        if inflated.len() as u64 > cap {
            return Err(DataError::unsupported(
                path,
                format!(
                    "DICOM deflated data set inflates past {cap} bytes (the image-pixels limit)"
                ),
            ));
        }
        return check_lengths(path, &inflated, EXPLICIT_LE);
    }
    let Some(ts) = TransferSyntaxRegistry.get(uid) else {
        return Ok(());
    };
    let total = data.len() as u64;
    let mut reader = LazyDataSetReader::new_with_ts(std::io::Cursor::new(data), ts)
        .map_err(|e| DataError::decode(path, format!("DICOM data set: {}", chain(&e))))?;
    while let Some(token) = reader.advance() {
        let token =
            token.map_err(|e| DataError::decode(path, format!("DICOM data set: {}", chain(&e))))?;
        let (tag, len) = match &token {
            LazyDataToken::ElementHeader(h) | LazyDataToken::LazyValue { header: h, .. } => {
                (Some(h.tag), h.len.get())
            }
            LazyDataToken::SequenceStart { tag, len } => (Some(*tag), len.get()),
            LazyDataToken::ItemStart { len } => (None, len.get()),
            LazyDataToken::LazyItemValue { len, .. } => (None, Some(*len)),
            _ => (None, None),
        };
        if let Some(len) = len.filter(|&l| u64::from(l) > total) {
            let what = tag.map_or_else(|| "an item".to_string(), |t| format!("element {t}"));
            return Err(DataError::decode(
                path,
                format!(
                    "truncated or corrupt: {what} declares {len} bytes, the data set has {total}"
                ),
            ));
        }
        token
            .skip()
            .map_err(|e| DataError::decode(path, format!("DICOM data set: {}", chain(&e))))?;
    }
    Ok(())
}

fn parse_dataset(path: &Path, bytes: &[u8]) -> Result<Object, DataError> {
    check_lengths(path, bytes, IMPLICIT_LE)?;
    let ts = TransferSyntaxRegistry
        .get(IMPLICIT_LE)
        .ok_or_else(|| DataError::decode(path, "implicit VR little endian not registered"))?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| DataError::decode(path, format!("DICOM data set: {}", chain(&e))))?;
    // The meta group is only this reader's bookkeeping: the data set names no SOP
    // class/instance of its own in a bare file more often than not.
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(IMPLICIT_LE)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
        .media_storage_sop_instance_uid("2.25.0");
    obj.with_meta(meta)
        .map_err(|e| DataError::decode(path, format!("DICOM data set: {}", chain(&e))))
}

/// An element's text, trimmed; `None` when absent, empty or not text.
fn text(obj: &Object, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    let s = e.value().to_str().ok()?;
    let t = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!t.is_empty()).then(|| t.to_string())
}

/// A US element's first value.
fn us(path: &Path, obj: &Object, tag: Tag, name: &str) -> Result<Option<u16>, DataError> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => {
            e.value().to_int::<u16>().map(Some).map_err(|err| {
                DataError::decode(path, format!("DICOM attribute {name} {tag}: {err}"))
            })
        }
    }
}

/// Parses a DS value (first of a multi-valued string).
fn decimal(path: &Path, name: &str, v: Option<String>, default: f64) -> Result<f64, DataError> {
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

fn attributes(obj: &Object) -> DicomAttributes {
    DicomAttributes {
        patient_id: text(obj, Tag(0x0010, 0x0020)),
        study_instance_uid: text(obj, Tag(0x0020, 0x000D)),
        sop_instance_uid: text(obj, Tag(0x0008, 0x0018)),
        image_laterality: text(obj, Tag(0x0020, 0x0062)),
        view_position: text(obj, Tag(0x0018, 0x5101)),
    }
}

pub(crate) fn read(path: &Path, bytes: &[u8]) -> Result<GrayImage, DataError> {
    read_with_attributes(path, bytes).map(|(img, _)| img)
}

pub(crate) fn read_with_attributes(
    path: &Path,
    bytes: &[u8],
) -> Result<(GrayImage, DicomAttributes), DataError> {
    // The parser and the third-party decoders are not ours: a panic in them on hostile
    // input becomes an error naming the file.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_inner(path, bytes))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown failure".into());
            Err(DataError::decode(
                path,
                format!("DICOM decoder failed on malformed data: {what}"),
            ))
        }
    }
}

fn read_inner(path: &Path, bytes: &[u8]) -> Result<(GrayImage, DicomAttributes), DataError> {
    let obj = parse(path, bytes)?;
    let uid = obj.meta().transfer_syntax().to_string();
    check_syntax(path, &uid)?;
    let attrs = attributes(&obj);

    let missing = |what: &str| DataError::decode(path, format!("DICOM attribute {what} missing"));
    if obj.get(Tag(0x7FE0, 0x0010)).is_none() {
        return Err(missing("PixelData (7FE0,0010)"));
    }
    let rows = usize::from(
        us(path, &obj, Tag(0x0028, 0x0010), "Rows")?.ok_or_else(|| missing("Rows (0028,0010)"))?,
    );
    let cols = usize::from(
        us(path, &obj, Tag(0x0028, 0x0011), "Columns")?
            .ok_or_else(|| missing("Columns (0028,0011)"))?,
    );
    check_dims(path, cols, rows)?;
    let spp = us(path, &obj, Tag(0x0028, 0x0002), "SamplesPerPixel")?.unwrap_or(1);
    if spp != 1 {
        return Err(DataError::unsupported(
            path,
            format!("{spp} samples per pixel (a colour image; only greyscale DICOM is supported)"),
        ));
    }
    let frames_text = text(&obj, Tag(0x0028, 0x0008));
    let frames = match frames_text.as_deref() {
        None => 1,
        Some(s) => s.parse::<u64>().unwrap_or(0),
    };
    if frames != 1 {
        return Err(DataError::unsupported(
            path,
            format!(
                "NumberOfFrames '{}' (a multi-frame image; only single-frame images are supported)",
                frames_text.as_deref().unwrap_or("")
            ),
        ));
    }
    let bits_allocated = us(path, &obj, Tag(0x0028, 0x0100), "BitsAllocated")?
        .ok_or_else(|| missing("BitsAllocated (0028,0100)"))?;
    if bits_allocated != 8 && bits_allocated != 16 {
        return Err(DataError::unsupported(
            path,
            format!("BitsAllocated {bits_allocated} (only 8 and 16 are supported)"),
        ));
    }
    let bits_stored = us(path, &obj, Tag(0x0028, 0x0101), "BitsStored")?.unwrap_or(bits_allocated);
    if bits_stored == 0 || bits_stored > bits_allocated {
        return Err(DataError::decode(
            path,
            format!("BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}"),
        ));
    }
    let signed = match us(path, &obj, Tag(0x0028, 0x0103), "PixelRepresentation")?.unwrap_or(0) {
        0 => false,
        1 => true,
        p => return Err(DataError::decode(path, format!("PixelRepresentation {p}"))),
    };
    let photometric = text(&obj, Tag(0x0028, 0x0004)).unwrap_or_else(|| "MONOCHROME2".to_string());
    let invert = match photometric.as_str() {
        "MONOCHROME2" => false,
        "MONOCHROME1" => true,
        other => {
            return Err(DataError::unsupported(
                path,
                format!("PhotometricInterpretation {other} (only MONOCHROME1/2)"),
            ))
        }
    };
    let slope = decimal(path, "RescaleSlope", text(&obj, Tag(0x0028, 0x1053)), 1.0)?;
    let intercept = decimal(
        path,
        "RescaleIntercept",
        text(&obj, Tag(0x0028, 0x1052)),
        0.0,
    )?;

    let decoded = obj.decode_pixel_data().map_err(|e| {
        DataError::decode(
            path,
            format!("DICOM pixel data ({}): {}", syntax_label(&uid), chain(&e)),
        )
    })?;
    let data = decoded.data();
    let bytes_per = usize::from(bits_allocated / 8);
    let needed = rows * cols * bytes_per;
    if data.len() < needed {
        return Err(DataError::decode(
            path,
            format!(
                "truncated pixel data: {rows}x{cols}x{bits_allocated} bit needs {needed} bytes, has {}",
                data.len()
            ),
        ));
    }
    let data = &data[..needed];
    // dicom-rs hands samples over in the machine's byte order (little endian on every
    // target allconv builds for), whatever the file's transfer syntax.
    let raw: Vec<u16> = if bytes_per == 1 {
        data.iter().map(|&b| u16::from(b)).collect()
    } else {
        data.chunks_exact(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
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
    let img = GrayImage::new(cols, rows, bit_depth, pixels)
        .map_err(|e| DataError::decode(path, e.to_string()))?;
    Ok((img, attrs))
}
