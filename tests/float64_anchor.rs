//! The float64 anchor: each fixture's graph run in float64 by libtorch (same float32
//! weights and input, no float32 rounding) against genuine Keras's float32 numbers.
//!
//! Why: float32 runtimes round differently (per instruction set, per kernel), so a float32
//! runtime compared straight to Keras's float32 numbers mixes two roundings with any
//! semantic difference. Anchoring on the float64 run separates them:
//!   * here, |Keras - float64| is Keras's own float32 rounding plus any semantic
//!     difference of allconv's graph: outputs are held to the absolute 1e-4, layers to
//!     1e-4 x max(1, max|Keras|), except the fixtures listed in
//!     `common::KERAS_FLOAT32_DRIFT`, whose deep layers Keras itself computes further from
//!     exact arithmetic (measured bound per fixture, stated there);
//!   * in tract_parity.rs and torch_parity.rs, |runtime - float64| is the runtime's own
//!     rounding, held to `common::runtime_bound`: 3x Keras's own float32 error on the
//!     fixture, and never tighter than 1e-4 (outputs absolute, layers times range).
//! So a runtime's distance to Keras is at most the sum, and a semantic error shows here in
//! float64, where no rounding can explain it.
#![cfg(feature = "torch")]

mod common;

use allconv::keras::read_model;
use allconv::torch::float64_reference;
use allconv::verify::{compare, layer_atol, npz::read_npz};

#[test]
fn keras_float32_is_within_bounds_of_the_float64_graph() {
    let dirs = common::model_fixtures();
    assert!(dirs.len() >= 30, "only {} fixtures", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (model, ropts) = common::read_options(dir);
        let g = read_model(&model, &ropts).expect("fixture reads");
        let npz = dir.join("io.npz");
        let keras = read_npz(&npz).expect("io.npz");
        let exact = float64_reference(&g, &keras, &npz).expect("float64 run");
        let (k, t) = (&keras["output"], &exact["output"]);
        let out = compare("output", &t.data, &t.shape, &k.data, &k.shape, 1e-4, 0.0);
        if !out.passed {
            failures.push(format!(
                "{name}: output: float64 graph vs Keras {:.3e} > 1e-4",
                out.max_abs_err
            ));
        }
        let drift = common::keras_drift_bound(&name);
        let (mut worst, mut worst_layer, mut compared) = (0f32, String::new(), Vec::new());
        for (key, kl) in keras.iter().filter(|(k, _)| k.starts_with("layer/")) {
            let path = key.trim_start_matches("layer/");
            let Some(tl) = exact.get(key) else { continue };
            let scale = layer_atol(1.0, true, &kl.data);
            let c = compare(
                path,
                &tl.data,
                &tl.shape,
                &kl.data,
                &kl.shape,
                f32::INFINITY,
                0.0,
            );
            if c.max_abs_err / scale > worst {
                (worst, worst_layer) = (c.max_abs_err / scale, path.to_string());
            }
            compared.push(path.to_string());
        }
        println!(
            "{name}: Keras float32 vs float64 graph: output {:.2e}, layers worst {worst:.2e} x range ({worst_layer})",
            out.max_abs_err
        );
        if worst > drift {
            failures.push(format!(
                "{name}: layer {worst_layer}: Keras vs float64 graph {worst:.3e} x range > {drift:e}"
            ));
        }
        failures.extend(common::coverage_failures(&name, dir, &compared, &[]));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
