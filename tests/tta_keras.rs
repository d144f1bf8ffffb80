//! In-graph 4-flip TTA (`--tta flips4`) equals the mean of four genuine-Keras predictions:
//! fixtures/<case>/tta.npz holds tf-keras's predictions on the input, its horizontal flip,
//! its vertical flip and both, and their mean (converters/tta_ref.py).

mod common;

use allconv::keras::read_model;
use allconv::onnx::{export, ExportOptions, Tta};
use allconv::runtime::TractModel;
use allconv::verify::{compare, npz::read_npz};

#[test]
fn in_graph_flips4_equals_the_mean_of_four_keras_predictions() {
    let dirs: Vec<_> = common::model_fixtures()
        .into_iter()
        .filter(|d| d.join("tta.npz").is_file())
        .collect();
    assert!(
        dirs.len() >= 3,
        "expected the tta.npz references, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let refs = read_npz(&dir.join("tta.npz")).expect("tta.npz");
        let (x, want) = (&refs["input"], &refs["output"]);
        let (model, opts) = common::read_options(&dir);
        let g = read_model(&model, &opts).expect("fixture reads");
        let eo = ExportOptions {
            input_size: Some(x.shape[1..3].to_vec()),
            tta: Some(Tta::Flips4),
            ..Default::default()
        };
        let bytes = export(&g, &eo)
            .and_then(|e| e.to_bytes())
            .expect("export with flips4");
        let out = TractModel::load(&bytes, &x.shape, 1)
            .and_then(|m| m.run(&x.data))
            .expect("tract runs");
        let c = compare(
            "tta",
            &out[0].data,
            &out[0].shape,
            &want.data,
            &want.shape,
            1e-4,
            0.0,
        );
        println!(
            "{name}: in-graph flips4 vs Keras mean of 4: max abs err {:.2e}",
            c.max_abs_err
        );
        // The TTA mean must differ from the plain prediction, or the test proves nothing.
        let plain = &read_npz(&dir.join("io.npz")).expect("io.npz")["output"];
        let moved = plain
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        if moved < 1e-3 {
            failures.push(format!("{name}: TTA reference equals the plain output ({moved:.1e}): not a discriminating case"));
        }
        if !c.passed {
            failures.push(format!(
                "{name}: in-graph TTA differs from Keras by {:.3e}",
                c.max_abs_err
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
