//! DICOM in every transfer syntax a screening archive exports, read by allconv against
//! pydicom's decoding of the same files (fixtures/dicom_codecs/, made by
//! converters/make_dicom_codecs.py with DCMTK and GDCM encoding, pydicom + pylibjpeg
//! decoding). No Python at run time.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use allconv::data::{
    read_image, read_image_bytes, read_image_with_attributes, DataError, DicomAttributes,
};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::NpzReader;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dicom_codecs")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("json")
}

fn arrays() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let file = File::open(dir().join("reference.npz")).expect("reference.npz");
    let mut npz = NpzReader::new(file).expect("npz");
    let mut out = BTreeMap::new();
    for name in npz.names().expect("names") {
        // The fixtures are unsigned, unrescaled: pydicom's uint16 arrays.
        let a: ArrayD<u16> = npz.by_name::<_, IxDyn>(&name).expect("uint16 array");
        let key = name.trim_end_matches(".npy").to_string();
        out.insert(
            key,
            (
                a.shape().to_vec(),
                a.iter().map(|&v| f32::from(v)).collect(),
            ),
        );
    }
    out
}

fn opt(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

const JPEG_LS: [&str; 2] = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"];

#[test]
fn every_transfer_syntax_reads_like_pydicom() {
    let meta = reference();
    let arrays = arrays();
    let files = meta["files"].as_object().expect("files");
    // Every syntax the archives export is covered.
    let syntaxes: std::collections::BTreeSet<&str> = files
        .values()
        .map(|f| f["transfer_syntax"].as_str().expect("uid"))
        .collect();
    for uid in [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    ] {
        assert!(syntaxes.contains(uid), "no fixture in {uid}");
    }
    assert_eq!(files.len(), 16);

    let mut compared = 0;
    for (name, info) in files {
        let path = dir().join(name);
        let uid = info["transfer_syntax"].as_str().expect("uid");
        if JPEG_LS.contains(&uid) && !cfg!(feature = "jpegls") {
            let err = read_image(&path).expect_err(name);
            assert!(
                matches!(err, DataError::Unsupported { .. }),
                "{name}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(name) && msg.contains(uid) && msg.contains("JPEG-LS"),
                "{msg}"
            );
            assert!(msg.contains("full (default) build"), "{msg}");
            continue;
        }
        let (img, attrs) =
            read_image_with_attributes(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (shape, want) = &arrays[info["array"].as_str().expect("array")];
        assert_eq!(info["dtype"], "uint16", "{name}");
        assert_eq!((img.height, img.width), (shape[0], shape[1]), "{name}");
        assert_eq!(img.bit_depth, 16, "{name}: pydicom gives uint16");
        let diff = img.pixels.iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name} ({uid}): {diff} pixels differ from pydicom");
        assert_eq!(img.pixels.len(), want.len());

        let a = &info["attributes"];
        let want_attrs = DicomAttributes {
            patient_id: opt(&a["PatientID"]),
            study_instance_uid: opt(&a["StudyInstanceUID"]),
            sop_instance_uid: opt(&a["SOPInstanceUID"]),
            image_laterality: opt(&a["ImageLaterality"]),
            view_position: opt(&a["ViewPosition"]),
        };
        assert!(want_attrs.patient_id.is_some() && want_attrs.view_position.is_some());
        assert_eq!(attrs.as_ref(), Some(&want_attrs), "{name}");

        // The plain reader gives the same pixels.
        assert_eq!(read_image(&path).expect(name), img, "{name}");
        compared += 1;
    }
    let expected = if cfg!(feature = "jpegls") { 16 } else { 13 };
    assert_eq!(compared, expected);
}

#[test]
fn lossless_syntaxes_agree_with_the_native_file() {
    // Independent of the fixture's arrays: each lossless encoding of a base decodes to the
    // very pixels of the native file (MONOCHROME1 inverted to the same image).
    let m2_12 = read_image(&dir().join("explicit_le_m2_12.dcm")).expect("native 12");
    let m2_16 = read_image(&dir().join("deflated_m2_16.dcm")).expect("deflated 16");
    assert_ne!(m2_12.pixels, m2_16.pixels);
    let mut n = 0;
    for (file, base) in [
        ("implicit_le_m1_12.dcm", &m2_12),
        ("jpeg_ll_sv1_m2_12.dcm", &m2_12),
        ("jpeg_ll_sv1_m1_12.dcm", &m2_12),
        ("rle_m1_12.dcm", &m2_12),
        ("j2k_ll_m2_12.dcm", &m2_12),
        ("explicit_be_m2_16.dcm", &m2_16),
        ("jpeg_ll_sv1_m2_16.dcm", &m2_16),
        ("jpeg_ll_p14_m2_16.dcm", &m2_16),
        ("rle_m2_16.dcm", &m2_16),
        ("j2k_ll_m2_16.dcm", &m2_16),
    ] {
        let img = read_image(&dir().join(file)).expect(file);
        assert_eq!(&img, base, "{file}");
        n += 1;
    }
    assert_eq!(n, 10);
}

#[test]
fn other_formats_have_no_attributes() {
    let pgm = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images/mdb001.pgm");
    let (img, attrs) = read_image_with_attributes(&pgm).expect("pgm");
    assert_eq!(attrs, None);
    assert_eq!(img, read_image(&pgm).expect("pgm"));
    // The old native fixture carries no identifying attributes: all None, not an error.
    let dcm = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images/mdb001_m2.dcm");
    let (_, attrs) = read_image_with_attributes(&dcm).expect("dcm");
    assert!(attrs.is_some());
    let missing = read_image_with_attributes(&dir().join("missing.dcm")).expect_err("missing");
    assert!(missing.to_string().contains("missing.dcm"), "{missing}");
}

/// The encapsulated pixel data's fragments: (offset of the item's data, length).
fn fragments(bytes: &[u8]) -> Vec<(usize, usize)> {
    let head = [
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    let at = bytes
        .windows(head.len())
        .rposition(|w| w == head)
        .expect("encapsulated pixel data");
    let mut pos = at + head.len();
    let mut out = vec![];
    loop {
        let tag = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if tag == [0xFE, 0xFF, 0xDD, 0xE0] {
            return out;
        }
        assert_eq!(tag, [0xFE, 0xFF, 0x00, 0xE0]);
        out.push((pos + 8, len));
        pos += 8 + len;
    }
}

/// The file with its last fragment cut to `keep` of its bytes, lengths kept consistent.
fn cut_last_fragment(bytes: &[u8], keep: f64) -> Vec<u8> {
    let frags = fragments(bytes);
    let &(start, len) = frags.last().expect("a fragment");
    let new_len = ((len as f64 * keep) as usize) & !1;
    let mut out = bytes[..start - 4].to_vec();
    out.extend_from_slice(&(new_len as u32).to_le_bytes());
    out.extend_from_slice(&bytes[start..start + new_len]);
    out.extend_from_slice(&bytes[start + len..]);
    out
}

#[test]
fn corrupt_compressed_files_give_errors_naming_the_file() {
    let tmp = std::env::temp_dir().join(format!("allconv_dicom_codecs_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let meta = reference();
    let files = meta["files"].as_object().expect("files");
    let mut cases: Vec<(String, Vec<u8>)> = vec![];
    for (name, info) in files {
        let uid = info["transfer_syntax"].as_str().expect("uid");
        if !uid.starts_with("1.2.840.10008.1.2.4.") && uid != "1.2.840.10008.1.2.5" {
            continue;
        }
        let bytes = std::fs::read(dir().join(name)).expect(name);
        // The file cut short (the pixel data item runs past the end).
        for frac in [0.5, 0.97] {
            let n = (bytes.len() as f64 * frac) as usize;
            cases.push((format!("cut{n}_{name}"), bytes[..n].to_vec()));
        }
        // A well-formed file whose codestream is cut short.
        for keep in [0.0, 0.1, 0.6] {
            cases.push((
                format!("stream{}_{name}", (keep * 100.0) as u32),
                cut_last_fragment(&bytes, keep),
            ));
        }
    }
    assert_eq!(cases.len(), 12 * 5);
    for (name, bytes) in &cases {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).expect("write");
        let result = std::panic::catch_unwind(|| read_image(&path));
        let err = match result {
            Ok(Ok(img)) => panic!(
                "{name}: decoded a corrupt file as {}x{}",
                img.width, img.height
            ),
            Ok(Err(e)) => e,
            Err(_) => panic!("{name}: panicked"),
        };
        let msg = err.to_string();
        assert!(
            msg.contains(name.as_str()),
            "{name}: error does not name the file: {msg}"
        );
        // In memory too, without a file.
        let r = std::panic::catch_unwind(|| read_image_bytes(Path::new(name), bytes));
        assert!(
            matches!(r, Ok(Err(_))),
            "{name}: in-memory read did not fail cleanly"
        );
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn colour_and_multi_frame_are_refused_by_name() {
    let bytes = std::fs::read(dir().join("explicit_le_m2_12.dcm")).expect("dcm");
    let tmp = std::env::temp_dir().join(format!("allconv_dicom_refuse_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    // Photometric interpretation: MONOCHROME2 -> RGB (same length, padded to even).
    let mut rgb = bytes.clone();
    let pi = b"MONOCHROME2 ";
    let at = rgb
        .windows(pi.len())
        .position(|w| w == pi)
        .expect("photometric");
    rgb[at..at + pi.len()].copy_from_slice(b"PALETTE COLO");
    let path = tmp.join("palette.dcm");
    std::fs::write(&path, &rgb).expect("write");
    let err = read_image(&path).expect_err("palette");
    let msg = err.to_string();
    assert!(
        msg.contains("palette.dcm") && msg.contains("PhotometricInterpretation"),
        "{msg}"
    );
    std::fs::remove_dir_all(&tmp).ok();
}

/// Where the data set starts: after the preamble, `DICM` and the file meta group, whose
/// group length (0002,0000) is the first element.
fn data_set_start(bytes: &[u8]) -> usize {
    assert_eq!(&bytes[128..132], b"DICM");
    assert_eq!(&bytes[132..138], &[0x02, 0x00, 0x00, 0x00, b'U', b'L']);
    144 + u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize
}

#[test]
fn huge_declared_lengths_are_refused_before_allocating() {
    // A private OB element declaring ~4 GB at the end of a data set: refused by name from
    // the length alone (no 4 GB allocation), native and deflated.
    let bomb = [
        0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
    ];
    let tmp = std::env::temp_dir().join(format!("allconv_dicom_bomb_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");

    let native = std::fs::read(dir().join("explicit_le_m2_12.dcm")).expect("dcm");
    let start = data_set_start(&native);
    // Before the pixel data: right after the data set's first element (8-byte header).
    let first_len = u16::from_le_bytes(native[start + 6..start + 8].try_into().unwrap());
    let cut = start + 8 + usize::from(first_len);
    let mut a = native[..cut].to_vec();
    a.extend_from_slice(&bomb);
    a.extend_from_slice(&native[cut..]);

    let deflated = std::fs::read(dir().join("deflated_m2_16.dcm")).expect("dcm");
    let start = data_set_start(&deflated);
    let mut inner = vec![];
    std::io::Read::read_to_end(
        &mut flate2::read::DeflateDecoder::new(&deflated[start..]),
        &mut inner,
    )
    .expect("inflate");
    inner.extend_from_slice(&bomb);
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &inner).expect("deflate");
    let mut b = deflated[..start].to_vec();
    b.extend_from_slice(&z.finish().expect("deflate"));

    let mut n = 0;
    for (name, bytes) in [("bomb_native.dcm", a), ("bomb_deflated.dcm", b)] {
        let path = tmp.join(name);
        std::fs::write(&path, &bytes).expect("write");
        let err = read_image(&path).expect_err(name);
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains("(0009,0010)") && msg.contains("4294967280"),
            "{msg}"
        );
        n += 1;
    }
    assert_eq!(n, 2);
    std::fs::remove_dir_all(&tmp).ok();
}
