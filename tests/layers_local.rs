//! Every recorded Keras layer, run alone by tract on the very activations genuine Keras fed
//! it, matches Keras's output within the absolute 1e-4 — no allowance for depth. This is
//! the layer-by-layer parity proof; the end-to-end per-layer check (tract_parity.rs) adds
//! what accumulates through the whole network.

mod common;

use allconv::keras::read_model;
use allconv::verify::{verify_layers_local, VerifyOptions};

#[test]
fn every_layer_alone_matches_keras_within_1e_4() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in common::model_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (model, ropts) = common::read_options(&dir);
        let g = match read_model(&model, &ropts) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let opts = VerifyOptions {
            per_layer: true,
            ..Default::default()
        };
        let (cmps, skipped) =
            verify_layers_local(&g, &dir.join("io.npz"), &opts).expect("reference readable");
        for (k, why) in &skipped {
            if why.starts_with("could not run") {
                failures.push(format!("{name}: {k}: {why}"));
            }
        }
        checked += cmps.len();
        let worst = cmps.iter().map(|c| c.max_abs_err).fold(0f32, f32::max);
        println!("{name}: {} layers alone, worst {worst:.2e}", cmps.len());
        for c in cmps.iter().filter(|c| !c.passed) {
            failures.push(format!(
                "{name}: layer {} alone differs from Keras by {:.3e}",
                c.name, c.max_abs_err
            ));
        }
    }
    assert!(checked > 300, "only {checked} layers checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
