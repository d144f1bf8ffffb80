//! The image input path against genuine OpenCV / pydicom outputs
//! (fixtures/images/reference.npz, built by converters/opencv_ref.py).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use allconv::data::{
    flip_h, flip_v, read_image, read_image_bytes, resize_cubic, write_overlay, DataError,
    GrayImage, OverlayOptions, Preprocess,
};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::NpzReader;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images")
}

/// A reference array: its values as f32 and the bit depth its dtype implies.
struct Ref {
    shape: Vec<usize>,
    bit_depth: u8,
    values: Vec<f32>,
}

fn load_refs() -> BTreeMap<String, Ref> {
    let file = File::open(fixtures().join("reference.npz")).expect("reference.npz");
    let mut npz = NpzReader::new(file).expect("npz");
    let names: Vec<String> = npz.names().expect("names");
    let mut out = BTreeMap::new();
    for name in names {
        let key = name.trim_end_matches(".npy").to_string();
        let r = if let Ok(a) = npz.by_name::<_, IxDyn>(&name) {
            let a: ArrayD<u8> = a;
            to_ref(a.shape(), 8, a.iter().map(|&v| f32::from(v)))
        } else if let Ok(a) = npz.by_name::<_, IxDyn>(&name) {
            let a: ArrayD<u16> = a;
            to_ref(a.shape(), 16, a.iter().map(|&v| f32::from(v)))
        } else if let Ok(a) = npz.by_name::<_, IxDyn>(&name) {
            let a: ArrayD<f32> = a;
            to_ref(a.shape(), 32, a.iter().copied())
        } else {
            let a: ArrayD<f64> = npz.by_name(&name).expect("f64 array");
            to_ref(a.shape(), 64, a.iter().map(|&v| v as f32))
        };
        out.insert(key, r);
    }
    out
}

fn to_ref(shape: &[usize], bit_depth: u8, values: impl Iterator<Item = f32>) -> Ref {
    Ref {
        shape: shape.to_vec(),
        bit_depth,
        values: values.collect(),
    }
}

fn ref_image(r: &Ref) -> GrayImage {
    GrayImage::new(r.shape[1], r.shape[0], r.bit_depth, r.values.clone()).expect("image")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_bundled_image_reads_like_cv2_and_pydicom() {
    let refs = load_refs();
    let mut checked = 0;
    for (key, r) in &refs {
        let (kind, file) = key.split_once('/').expect("key");
        if !matches!(kind, "read" | "readsub") {
            continue;
        }
        let img = read_image(&fixtures().join(file)).expect(file);
        if kind == "read" {
            assert_eq!([img.height, img.width], [r.shape[0], r.shape[1]], "{file}");
            assert_eq!(img.bit_depth, r.bit_depth, "{file}: bit depth");
            let d = max_abs_diff(&img.pixels, &r.values);
            // JPEG: zune-jpeg's IDCT vs libjpeg-turbo's may differ by one grey level.
            let (tol, frac) = if file.ends_with(".jpg") {
                (1.0, 0.05)
            } else {
                (0.0, 0.0)
            };
            let off = img
                .pixels
                .iter()
                .zip(&r.values)
                .filter(|(a, b)| a != b)
                .count();
            assert!(d <= tol, "{file}: max abs diff {d} vs genuine reader");
            assert!(
                off as f64 <= frac * img.pixels.len() as f64,
                "{file}: {off} pixels differ from the genuine reader"
            );
        } else {
            let sub: Vec<f32> = (0..img.height)
                .step_by(3)
                .flat_map(|y| (0..img.width).step_by(3).map(move |x| (y, x)))
                .map(|(y, x)| img.pixels[y * img.width + x])
                .collect();
            assert_eq!(max_abs_diff(&sub, &r.values), 0.0, "{file}: subsample");
            let sums = &refs[&format!("readsum/{file}")].values;
            let v: Vec<f64> = img.pixels.iter().map(|&p| f64::from(p)).collect();
            let s0: f64 = v.iter().sum();
            let s1: f64 = v.iter().map(|x| x * x).sum();
            let s2: f64 = v.iter().enumerate().map(|(i, x)| i as f64 * x).sum();
            for (got, want) in [s0, s1, s2].iter().zip(sums) {
                assert!(
                    (got - f64::from(*want)).abs() <= 1e-6 * got.abs().max(1.0),
                    "{file}: checksum {got} vs {want}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 11, "every bundled image has a read reference");
}

#[test]
fn resize_matches_cv2_inter_cubic_exactly() {
    let refs = load_refs();
    let mut checked = 0;
    for (key, r) in &refs {
        let Some(rest) = key.strip_prefix("resize/") else {
            continue;
        };
        let (file, size) = rest.rsplit_once('/').expect("key");
        let src = refs
            .get(&format!("read/{file}"))
            .map(ref_image)
            .unwrap_or_else(|| read_image(&fixtures().join(file)).expect(file));
        let out = resize_cubic(&src, r.shape[0], r.shape[1]).expect("resize");
        assert_eq!(out.bit_depth, r.bit_depth, "{key}: dtype");
        let d = max_abs_diff(&out.pixels, &r.values);
        // Bit-identical to OpenCV's, integer outputs (8/16-bit images) and float32 outputs
        // (DICOM after rescale slope/intercept) alike.
        assert!(d == 0.0, "{file} -> {size}: max abs diff {d} vs cv2.resize");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} resize references");
}

#[test]
fn preprocessing_matches_the_genuine_cv2_pipeline() {
    let refs = load_refs();
    let mut checked = 0;
    for (key, r) in &refs {
        let Some(rest) = key.strip_prefix("pre/") else {
            continue;
        };
        let (file, _) = rest.rsplit_once('/').expect("key");
        let params = &refs[&format!("params/{rest}")].values;
        let src = refs
            .get(&format!("read/{file}"))
            .map(ref_image)
            .unwrap_or_else(|| read_image(&fixtures().join(file)).expect(file));
        let p = Preprocess {
            target: Some((r.shape[0], r.shape[1])),
            target_scale: (params[2] != 0.0).then_some(params[2]),
            rescale: params[0],
            mean: params[1],
            channels: 3,
            equalize_hist: false,
        };
        let (data, shape) = p.apply(&src).expect("apply");
        assert_eq!(shape, [r.shape[0], r.shape[1], 3]);
        for c in 0..3 {
            let ch: Vec<f32> = data.iter().skip(c).step_by(3).copied().collect();
            let d = max_abs_diff(&ch, &r.values);
            assert!(d <= 1e-3, "{key} channel {c}: max abs diff {d}");
        }
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} preprocessing references");
}

#[test]
fn paper_size_preprocessing_runs() {
    let img = read_image(&fixtures().join("mdb001.pgm")).expect("read");
    let p: Preprocess = "size=1152x896,rescale=0.003891,mean=52.18,gray"
        .parse()
        .expect("spec");
    let (data, shape) = p.apply(&img).expect("apply");
    assert_eq!(shape, [1152, 896, 3]);
    assert_eq!(data.len(), 1152 * 896 * 3);
}

#[test]
fn spec_parsing() {
    let p: Preprocess = "rescale=0.003891,mean=52.18,gray".parse().expect("spec");
    assert_eq!(p.rescale, 0.003891);
    assert_eq!(p.mean, 52.18);
    assert_eq!(p.channels, 3);
    assert_eq!(p.target, None);
    let q: Preprocess = p.to_string().parse().expect("round trip");
    assert_eq!(p, q);
    let s: Preprocess = "size=1152x896,target_scale=4095".parse().expect("spec");
    assert_eq!(s.target, Some((1152, 896)));
    assert_eq!(s.target_scale, Some(4095.0));
    for bad in [
        "rescal=1",
        "mean=abc",
        "size=1152",
        "gray=1",
        "channels=2",
        "size=0x5",
    ] {
        let e = bad.parse::<Preprocess>().expect_err(bad);
        assert!(matches!(e, DataError::Spec { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(bad), "{bad}: {e}");
    }
}

#[test]
fn flips() {
    let data: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 2x3x2
    let h = flip_h(&data, [2, 3, 2]).expect("flip_h");
    assert_eq!(h, [4., 5., 2., 3., 0., 1., 10., 11., 8., 9., 6., 7.]);
    let v = flip_v(&data, [2, 3, 2]).expect("flip_v");
    assert_eq!(v, [6., 7., 8., 9., 10., 11., 0., 1., 2., 3., 4., 5.]);
    assert!(flip_h(&data, [2, 2, 2]).is_err());
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("allconv-data-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn corrupt_files_give_errors_naming_the_file() {
    let dir = temp_dir("corrupt");
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty.png".into(), vec![]),
        ("garbage.png".into(), b"not an image at all".to_vec()),
        ("huge.pgm".into(), b"P5\n70000 10\n255\n\0".to_vec()),
        (
            "manypixels.pgm".into(),
            b"P5\n60000 60000\n255\n\0".to_vec(),
        ),
        ("zero.pgm".into(), b"P5\n0 10\n255\n".to_vec()),
        ("badnum.pgm".into(), b"P2\n2 2\n255\n1 x 3 4\n".to_vec()),
        ("bigmax.pgm".into(), b"P5\n2 2\n70000\n".to_vec()),
    ];
    // Truncations of every bundled file at a few points.
    for file in [
        "mdb001.pgm",
        "mdb001_16.png",
        "mdb001_16.tif",
        "mdb001_16.pgm",
        "mdb028.jpg",
        "mdb028_rgb.png",
        "mdb028_p2.pgm",
        "mdb001_m2.dcm",
        "mdb028_m1.dcm",
    ] {
        let bytes = std::fs::read(fixtures().join(file)).expect(file);
        for frac in [0.01, 0.3, 0.9] {
            let n = (bytes.len() as f64 * frac) as usize;
            cases.push((format!("trunc{n}_{file}"), bytes[..n].to_vec()));
        }
    }
    // A compressed transfer syntax must be refused, not misread.
    let mut dcm = std::fs::read(fixtures().join("mdb001_m2.dcm")).expect("dcm");
    let uid = b"1.2.840.10008.1.2.1\0";
    let at = dcm.windows(uid.len()).position(|w| w == uid).expect("uid");
    dcm[at..at + uid.len()].copy_from_slice(b"1.2.840.10008.1.2.5\0");
    cases.push(("rle.dcm".into(), dcm));

    for (name, bytes) in &cases {
        let path = dir.join(name);
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
    }
    let rle = read_image(&dir.join("rle.dcm")).expect_err("rle");
    assert!(rle.to_string().contains("RLE"), "{rle}");
    let missing = read_image(&dir.join("missing.png")).expect_err("missing");
    assert!(missing.to_string().contains("missing.png"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn random_bytes_never_panic() {
    // Deterministic xorshift fuzz over mutated headers of the bundled files.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for file in [
        "mdb001_16.pgm",
        "mdb028_m1.dcm",
        "mdb001_m2.dcm",
        "mdb028_rgb.png",
    ] {
        let orig = std::fs::read(fixtures().join(file)).expect(file);
        for _ in 0..200 {
            let mut bytes = orig[..orig.len().min(4096)].to_vec();
            for _ in 0..4 {
                let i = (next() as usize) % bytes.len().min(600);
                bytes[i] = next() as u8;
            }
            let path = Path::new(file);
            let r = std::panic::catch_unwind(|| read_image_bytes(path, &bytes));
            assert!(r.is_ok(), "{file}: panicked on mutated input");
        }
    }
}

#[test]
fn overlay_is_written_atomically() {
    let dir = temp_dir("overlay");
    let img = read_image(&fixtures().join("mdb028_rgb.png")).expect("read");
    let heat: Vec<f32> = (0..12).map(|v| v as f32 / 11.0).collect();
    let out = dir.join("overlay.png");
    write_overlay(&out, &img, &heat, (3, 4), &OverlayOptions::default()).expect("overlay");
    let back = read_image(&out).expect("read back");
    assert_eq!((back.width, back.height), (img.width, img.height));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "overlay.png")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    assert!(write_overlay(&out, &img, &heat, (5, 4), &OverlayOptions::default()).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// `equalize` (`--equalize-hist`): `cv2.equalizeHist(img.astype('uint8'))` after resizing
/// and scaling, bit for bit against genuine numpy and OpenCV (fixtures/images/equalize.npz,
/// converters/equalize_ref.py) on 8- and 16-bit images, including 16-bit values above 255
/// that numpy's cast wraps; and that cast itself.
#[test]
fn equalize_hist_matches_numpy_and_cv2_exactly() {
    let file = File::open(fixtures().join("equalize.npz")).expect("equalize.npz");
    let mut npz = NpzReader::new(file).expect("npz");
    let cast_in: ArrayD<f32> = npz.by_name("cast/in.npy").expect("cast/in");
    let cast_out: ArrayD<u8> = npz.by_name("cast/out.npy").expect("cast/out");
    assert!(!cast_in.is_empty());
    for (&v, &want) in cast_in.iter().zip(cast_out.iter()) {
        assert_eq!(
            allconv::data::equalize::numpy_f32_to_u8(v),
            want,
            "astype(uint8) of {v}"
        );
    }
    let names: Vec<String> = npz.names().expect("names");
    let cases: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("eq/"))
        .map(|n| n.trim_end_matches(".npy").to_string())
        .collect();
    assert!(
        cases.len() >= 5,
        "only {} equalisation references",
        cases.len()
    );
    let mut wrapped = false;
    for case in &cases {
        let want: ArrayD<u8> = npz.by_name(&format!("eq/{case}.npy")).expect("eq");
        let params: ArrayD<f64> = npz.by_name(&format!("params/{case}.npy")).expect("params");
        let name: ArrayD<u8> = npz.by_name(&format!("file/{case}.npy")).expect("file");
        let name = String::from_utf8(name.iter().copied().collect()).expect("file name");
        let p = params.as_slice().expect("params");
        let pre = Preprocess {
            target: Some((p[0] as usize, p[1] as usize)),
            target_scale: (p[2] != 0.0).then_some(p[2] as f32),
            rescale: p[3] as f32,
            mean: 0.0,
            channels: 1,
            equalize_hist: true,
        };
        let img = read_image(&fixtures().join(&name)).expect("read");
        wrapped |= img.max() * pre.rescale > 255.0 && pre.target_scale.is_none();
        let (got, shape) = pre.apply(&img).expect("apply");
        assert_eq!(&shape[..2], want.shape(), "{case}");
        let differ = got
            .iter()
            .zip(want.iter())
            .filter(|(a, b)| **a != f32::from(**b))
            .count();
        assert_eq!(
            differ, 0,
            "{case}: {differ} pixels differ from cv2.equalizeHist"
        );
    }
    assert!(wrapped, "no case with 16-bit values beyond 255");
    // The spec form round-trips the flag.
    let p: Preprocess = "rescale=0.003891,equalize,gray".parse().expect("spec");
    assert!(p.equalize_hist && p.channels == 3);
    assert_eq!(p.to_string().parse::<Preprocess>().expect("round trip"), p);
}
