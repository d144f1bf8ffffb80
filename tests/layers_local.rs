//! Every recorded Keras layer, run alone on the very activations genuine Keras fed it,
//! matches Keras's output within the absolute 1e-4 — no allowance for depth — in tract and
//! in libtorch. This is the layer-by-layer parity proof; the end-to-end per-layer check
//! (tract_parity.rs, torch_parity.rs) adds what accumulates through the whole network.
//!
//! Coverage is asserted per fixture: each compares every layer its `expect.json` records
//! (minus the activations it lists as omitted from `io.npz`), so isolation cannot quietly
//! stop working on one fixture while the others carry the count.

mod common;

use allconv::keras::read_model;
use allconv::verify::{verify_layers_local, VerifyOptions};
use std::collections::BTreeSet;

/// The bound the README states for a layer run alone (absolute).
const ISOLATED_ATOL: f32 = 1e-4;

/// Layers whose inputs exist in `io.npz` only under a name the IR does not map, so they
/// cannot run alone (they are compared end to end): (fixture, layer, why).
const NOT_ISOLABLE: &[(&str, &str, &str)] = &[
    (
        "k122_merge_layer",
        "merge_layer",
        "Keras 1 Merge of two Sequential branches: the branch outputs are not layers of their own",
    ),
    (
        "k208_nested_shared",
        "add_branches",
        "adds the second call of a nested model (`middle#1`), recorded under the call's name",
    ),
];

/// Skips allowed: a layer whose input activation Keras's `io.npz` omits (counted against
/// the fixture's omissions), or one listed in [`NOT_ISOLABLE`]. Returns (starved, errors).
fn starved(name: &str, skipped: &[(String, String)]) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (k, why) in skipped {
        let path = k.trim_start_matches("layer/");
        if NOT_ISOLABLE
            .iter()
            .any(|(f, l, _)| *f == name && *l == path)
        {
            continue;
        }
        if why.contains("input activation of this layer is not recorded") {
            ok.push(path.to_string());
        } else {
            bad.push(format!("{k}: {why}"));
        }
    }
    (ok, bad)
}

/// The [`NOT_ISOLABLE`] layers of a fixture, as covered.
fn not_isolable(name: &str) -> impl Iterator<Item = String> + '_ {
    NOT_ISOLABLE
        .iter()
        .filter(move |(f, _, _)| *f == name)
        .map(|(_, l, _)| l.to_string())
}

/// Prints the README's figures: layer checks, distinct Keras activations (the `k208tf_*`
/// fixtures share the `k208_*` references through a symlinked `io.npz`), worst error.
fn summary(runtime: &str, checks: usize, distinct: &BTreeSet<(String, String)>, worst: f32) {
    println!(
        "{runtime}: {checks} isolated layer checks, {} distinct genuine-Keras activations, worst {worst:.2e} (bound {ISOLATED_ATOL:e})",
        distinct.len()
    );
}

/// The npz a fixture's references live in, resolved through symlinks.
fn npz_identity(dir: &std::path::Path) -> String {
    std::fs::canonicalize(dir.join("io.npz"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn every_layer_alone_matches_keras_within_1e_4() {
    let mut failures = Vec::new();
    let (mut checks, mut worst_all) = (0, 0f32);
    let mut distinct = BTreeSet::new();
    let dirs = common::model_fixtures();
    assert!(dirs.len() >= 30, "only {} fixtures found", dirs.len());
    for dir in dirs {
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
            atol: ISOLATED_ATOL,
            ..Default::default()
        };
        let (cmps, skipped) =
            verify_layers_local(&g, &dir.join("io.npz"), &opts).expect("reference readable");
        let (starved, bad) = starved(&name, &skipped);
        failures.extend(bad.into_iter().map(|b| format!("{name}: {b}")));
        let compared: Vec<String> = cmps.iter().map(|c| c.name.clone()).collect();
        let covered: Vec<String> = compared
            .iter()
            .cloned()
            .chain(not_isolable(&name))
            .collect();
        failures.extend(common::coverage_failures(&name, &dir, &covered, &starved));
        checks += cmps.len();
        for c in &compared {
            distinct.insert((npz_identity(&dir), c.clone()));
        }
        let worst = cmps.iter().map(|c| c.max_abs_err).fold(0f32, f32::max);
        worst_all = worst_all.max(worst);
        println!("{name}: {} layers alone, worst {worst:.2e}", cmps.len());
        for c in cmps.iter().filter(|c| !c.passed) {
            failures.push(format!(
                "{name}: layer {} alone differs from Keras by {:.3e}",
                c.name, c.max_abs_err
            ));
        }
    }
    summary("tract", checks, &distinct, worst_all);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same isolation through the libtorch lowering: tch alone on Keras's inputs.
#[cfg(feature = "torch")]
#[test]
fn every_layer_alone_in_libtorch_matches_keras_within_1e_4() {
    use allconv::torch::{from_host, to_host, TorchModel};
    use allconv::verify::{compare, isolated_layers, npz::read_npz};
    let mut failures = Vec::new();
    let (mut checks, mut worst_all) = (0, 0f32);
    let mut distinct = BTreeSet::new();
    let dirs = common::model_fixtures();
    assert!(dirs.len() >= 30, "only {} fixtures found", dirs.len());
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (model, ropts) = common::read_options(&dir);
        let g = read_model(&model, &ropts).expect("fixture reads");
        let refs = read_npz(&dir.join("io.npz")).expect("reference readable");
        let (layers, skipped) = isolated_layers(&g, &refs);
        let (starved, bad) = starved(&name, &skipped);
        failures.extend(bad.into_iter().map(|b| format!("{name}: {b}")));
        let mut compared = Vec::new();
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
                        ISOLATED_ATOL,
                        0.0,
                    );
                    worst = worst.max(c.max_abs_err);
                    compared.push(l.graph.name.clone());
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
        let covered: Vec<String> = compared
            .iter()
            .cloned()
            .chain(not_isolable(&name))
            .collect();
        failures.extend(common::coverage_failures(&name, &dir, &covered, &starved));
        checks += compared.len();
        for c in &compared {
            distinct.insert((npz_identity(&dir), c.clone()));
        }
        worst_all = worst_all.max(worst);
        println!("{name}: {} layers alone, worst {worst:.2e}", compared.len());
    }
    summary("libtorch", checks, &distinct, worst_all);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
