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

/// The same isolation through the libtorch lowering: tch alone on Keras's inputs.
#[cfg(feature = "torch")]
#[test]
fn every_layer_alone_in_libtorch_matches_keras_within_1e_4() {
    use allconv::torch::{from_host, to_host, TorchModel};
    use allconv::verify::{compare, isolated_layers, npz::read_npz};
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in common::model_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (model, ropts) = common::read_options(&dir);
        let g = read_model(&model, &ropts).expect("fixture reads");
        let refs = read_npz(&dir.join("io.npz")).expect("reference readable");
        let (layers, _) = isolated_layers(&g, &refs);
        let mut worst = 0f32;
        for l in layers {
            let run = || -> allconv::Result<_> {
                let m = TorchModel::new(&l.graph, tch::Device::Cpu)?;
                let xs = l
                    .inputs
                    .iter()
                    .map(|a| from_host(&a.shape, &a.data, tch::Device::Cpu))
                    .collect::<allconv::Result<Vec<_>>>()?;
                let out = m.forward_outputs(&xs, false)?;
                to_host(&out[0])
            };
            match run() {
                Ok(h) => {
                    let c = compare(
                        &l.key,
                        &h.data,
                        &h.shape,
                        &l.want.data,
                        &l.want.shape,
                        1e-4,
                        0.0,
                    );
                    worst = worst.max(c.max_abs_err);
                    checked += 1;
                    if !c.passed {
                        failures.push(format!(
                            "{name}: {} alone in tch differs by {:.3e}",
                            l.key, c.max_abs_err
                        ));
                    }
                }
                Err(e) => failures.push(format!("{name}: {}: {e}", l.key)),
            }
        }
        println!("{name}: worst {worst:.2e}");
    }
    assert!(checked > 300, "only {checked} layers checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
