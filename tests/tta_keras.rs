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

/// `convert --preprocess ... --tta flips4 --reference prep_tta.npz` embeds genuine Keras's
/// vectors: raw grey mammogram pixels in, tf-keras's 4-flip mean out (converters/tta_ref.py
/// --raw), and `verify` on the file alone then checks against Keras, not against itself.
/// A reference that does not fit the wrapped graph is an error, never dropped silently.
#[test]
fn convert_embeds_genuine_keras_vectors_through_preprocess_and_tta() {
    use allconv::onnx::InGraphPreprocess;
    use allconv::verify::{convert, verify_onnx, ConvertOptions, VerifyOptions, SELF_RUN};
    let dir = common::fixtures_dir().join("k208tf_resnet50_whole_resnet");
    let tmp = std::env::temp_dir().join(format!("allconv-tta-ref-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (model, ropts) = common::read_options(&dir);
    let prep: InGraphPreprocess = "rescale=0.0078125,mean=0.5,gray".parse().unwrap();
    let opts = |preprocess: Option<InGraphPreprocess>, tta: bool, reference: Option<&str>| {
        ConvertOptions {
            read: ropts.clone(),
            export: ExportOptions {
                input_size: Some(vec![225, 177]),
                preprocess,
                tta: tta.then_some(Tta::Flips4),
                ..Default::default()
            },
            reference: reference.map(|r| dir.join(r)),
            threads: 2,
            ..Default::default()
        }
    };
    // Genuine vectors through the whole wrapped graph.
    let out = tmp.join("whole.onnx");
    let r = convert(
        &model,
        &out,
        &opts(Some(prep.clone()), true, Some("prep_tta.npz")),
    )
    .expect("converts with the genuine prep+TTA reference");
    assert_eq!(r.test_vector_source, "keras_reference");
    let err = r.reference_max_abs_err.expect("compared at conversion");
    println!("prep+TTA: tract vs tf-keras at conversion {err:.2e}");
    assert!(err <= 1e-4, "{err}");
    let v = verify_onnx(&out, None, &VerifyOptions::default()).expect("verify runs");
    assert!(v.passed, "{}", v.to_text());
    assert!(v.reference.contains("keras_reference"), "{}", v.reference);
    // TTA only, against tta.npz.
    let r = convert(&model, &out, &opts(None, true, Some("tta.npz"))).expect("tta only");
    assert_eq!(r.test_vector_source, "keras_reference");
    // References that do not fit: clear errors, nothing written.
    for (p, tta, reference, phrase) in [
        (Some(prep.clone()), true, "io.npz", "preprocessed"),
        (None, true, "io.npz", "flips"),
        (None, false, "tta.npz", "--tta flips4"),
        (None, true, "prep_tta.npz", "--preprocess"),
        (
            Some("rescale=0.00390625,mean=0.5,gray".parse().unwrap()),
            true,
            "prep_tta.npz",
            "other parameters",
        ),
    ] {
        let out = tmp.join("refused.onnx");
        let e = convert(&model, &out, &opts(p, tta, Some(reference)))
            .expect_err("an ill-fitting reference is refused")
            .to_string();
        assert!(e.contains(phrase), "{reference}: {e}");
        assert!(!out.exists(), "{reference}: nothing written");
    }
    // Without a reference, the vector is a labelled self-run.
    let r = convert(&model, &out, &opts(Some(prep), true, None)).expect("self-run");
    assert_eq!(r.test_vector_source, SELF_RUN);
    let v = verify_onnx(&out, None, &VerifyOptions::default()).expect("verify runs");
    assert!(v.reference.contains("not parity"), "{}", v.reference);
    std::fs::remove_dir_all(&tmp).ok();
}
