//! In-graph preprocessing equals the formula applied on the host, and the flips4 TTA
//! graph equals the mean of 4 tract runs on flipped inputs (a SELF-CONSISTENCY test:
//! the genuine-Keras TTA reference is checked elsewhere).
#![cfg(feature = "runtime")]

mod common;

use allconv::keras::read_model;
use allconv::onnx::{export, ExportOptions, InGraphPreprocess, Tta};
use allconv::runtime::TractModel;

fn fixture(name: &str) -> std::path::PathBuf {
    common::fixtures_dir().join(name)
}

/// Deterministic raw grey image values in [0, 255).
fn raw(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 255) as f32 + 0.25).collect()
}

#[test]
fn in_graph_preprocess_equals_host_formula() {
    // vgg16_patch takes 3 channels: `gray` duplicates the grey image.
    let dir = fixture("k208_vgg16_patch");
    let (model, opts) = common::read_options(&dir);
    let g = read_model(&model, &opts).unwrap();
    let (h, w) = (80, 64);
    let p: InGraphPreprocess = "rescale=0.003891,mean=0.25,gray".parse().unwrap();
    let with = export(
        &g,
        &ExportOptions {
            input_size: Some(vec![h, w]),
            preprocess: Some(p.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let plain = export(
        &g,
        &ExportOptions {
            input_size: Some(vec![h, w]),
            ..Default::default()
        },
    )
    .unwrap();
    let x = raw(h * w);
    let a = TractModel::load(&with.to_bytes().unwrap(), &[1, h, w, 1], 1)
        .unwrap()
        .run(&x)
        .unwrap();
    let host: Vec<f32> = x
        .iter()
        .flat_map(|&v| std::iter::repeat_n(p.apply_value(v), 3))
        .collect();
    let b = TractModel::load(&plain.to_bytes().unwrap(), &[1, h, w, 3], 1)
        .unwrap()
        .run(&host)
        .unwrap();
    assert_eq!(a[0].shape, b[0].shape);
    for (x, y) in a[0].data.iter().zip(&b[0].data) {
        assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
    }
}

fn flip(x: &[f32], h: usize, w: usize, c: usize, fh: bool, fw: bool) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for i in 0..h {
        for j in 0..w {
            let (si, sj) = (
                if fh { h - 1 - i } else { i },
                if fw { w - 1 - j } else { j },
            );
            for k in 0..c {
                out[(i * w + j) * c + k] = x[(si * w + sj) * c + k];
            }
        }
    }
    out
}

#[test]
fn flips4_tta_self_consistency() {
    let dir = fixture("k208_yaroslav_patch");
    let (model, opts) = common::read_options(&dir);
    let g = read_model(&model, &opts).unwrap();
    let (h, w) = (128, 96);
    let tta = export(
        &g,
        &ExportOptions {
            input_size: Some(vec![h, w]),
            tta: Some(Tta::Flips4),
            ..Default::default()
        },
    )
    .unwrap();
    let plain = export(
        &g,
        &ExportOptions {
            input_size: Some(vec![h, w]),
            ..Default::default()
        },
    )
    .unwrap();
    let x: Vec<f32> = raw(h * w).iter().map(|v| v / 255.0 - 0.5).collect();
    let got = TractModel::load(&tta.to_bytes().unwrap(), &[1, h, w, 1], 1)
        .unwrap()
        .run(&x)
        .unwrap();
    let m = TractModel::load(&plain.to_bytes().unwrap(), &[1, h, w, 1], 1).unwrap();
    let mut mean = vec![0f32; got[0].data.len()];
    for (fh, fw) in [(false, false), (false, true), (true, false), (true, true)] {
        let o = m.run(&flip(&x, h, w, 1, fh, fw)).unwrap();
        for (a, b) in mean.iter_mut().zip(&o[0].data) {
            *a += b / 4.0;
        }
    }
    for (a, b) in got[0].data.iter().zip(&mean) {
        assert!((a - b).abs() <= 1e-5, "TTA {a} vs mean of 4 runs {b}");
    }
}
