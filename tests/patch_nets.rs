//! The paper's four patch classifiers, built natively (`allconv::keras::nets`), against
//! genuine Keras 2.0.8 running end2end-all-conv's `get_dl_model` (converters/patch_nets_ref.py,
//! one process per net, full width):
//!
//! - `fixtures/patch_nets/*.json` (committed): the `model_config` Keras saves and its
//!   `count_params`; ours must be equal, key for key.
//! - Weight files (written at test time into a temporary directory, ResNet50's is 94 MB):
//!   `base_model.save_weights` with seeded random weights, the full model's top Dense and
//!   its predictions. `load_weights_by_name` reads the file into our graph (Theano
//!   kernels flipped), the top Dense takes Keras's values, and the graph must compute
//!   Keras's predictions: Keras's float32 output within 1e-4 of our graph run in float64
//!   (the float64 anchor), libtorch's float32 run within `runtime_bound` of it
//!   (tests/torch_parity.rs's bound).

mod common;

use allconv::ir::Graph;
use allconv::keras::build::KerasModel;
use allconv::keras::nets::{
    load_weights_by_name, patch_classifier, patch_classifier_keras, PatchNet, PatchNetOptions,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture_cases() -> Vec<(String, Value)> {
    let dir = common::fixtures_dir().join("patch_nets");
    let mut v: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("fixtures/patch_nets")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable");
            (
                p.file_stem().unwrap().to_string_lossy().to_string(),
                serde_json::from_str(&text).expect("JSON"),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn options_of(rec: &Value) -> (PatchNet, PatchNetOptions) {
    let a = &rec["get_dl_model"];
    let net: PatchNet = a["net"].as_str().expect("net").parse().expect("a net");
    assert_eq!(a["use_pretrained"], Value::Bool(false));
    let o = PatchNetOptions {
        classes: a["nb_class"].as_u64().expect("nb_class") as usize,
        hidden_dropout: a["hidden_dropout"].as_f64().expect("hidden_dropout"),
        weight_decay: a["weight_decay"].as_f64().expect("weight_decay"),
        seed: 7,
    };
    (net, o)
}

#[test]
fn configs_and_parameter_counts_are_genuine_keras() {
    let cases = fixture_cases();
    let nets: std::collections::BTreeSet<String> = cases
        .iter()
        .map(|(_, r)| r["get_dl_model"]["net"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(nets.len(), 4, "fixtures cover {nets:?}");
    assert!(
        cases.iter().any(
            |(_, r)| r["get_dl_model"]["hidden_dropout"].as_f64() == Some(0.0)
                && r["get_dl_model"]["net"] == "resnet50"
        ),
        "no resnet50 case without Dropout"
    );
    let mut failures = Vec::new();
    for (name, rec) in &cases {
        let (net, opts) = options_of(rec);
        let km = patch_classifier_keras(net, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(d) = common::json_diff(&km.config, &rec["model_config"], "model_config") {
            failures.push(format!("{name}: config differs from Keras's: {d}"));
        }
        let want = rec["count_params"].as_u64().unwrap() as usize;
        if km.count_params() != want {
            failures.push(format!(
                "{name}: count_params {} vs Keras {want}",
                km.count_params()
            ));
        }
        let g = patch_classifier(net, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(g.total_params(), want, "{name}: graph parameters");
        assert_eq!(
            g.layers.len() as u64,
            rec["layers"].as_u64().unwrap(),
            "{name}: layers"
        );
        let out = &g.values[g.outputs[0]].shape;
        assert_eq!(
            out.last().and_then(|d| d.known()),
            Some(opts.classes),
            "{name}: output {out:?}"
        );
        println!(
            "{name}: config equal to Keras 2.0.8's ({} layers), {want} parameters",
            g.layers.len()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn kernels(km: &KerasModel) -> Vec<(&String, &allconv::ir::Tensor)> {
    km.params
        .iter()
        .filter(|(k, _)| k.ends_with(".kernel"))
        .collect()
}

#[test]
fn weights_follow_keras_initialisers_and_the_seed() {
    let o = |seed| PatchNetOptions {
        seed,
        hidden_dropout: 0.5,
        ..Default::default()
    };
    for net in PatchNet::ALL {
        let a = patch_classifier_keras(net, &o(1)).unwrap();
        let b = patch_classifier_keras(net, &o(1)).unwrap();
        let c = patch_classifier_keras(net, &o(2)).unwrap();
        assert_eq!(a.params, b.params, "{net}: same seed, same weights");
        assert_ne!(a.params, c.params, "{net}: another seed, other weights");
        let ks = kernels(&a);
        assert!(!ks.is_empty(), "{net}: no kernels");
        for (k, t) in ks {
            // glorot_uniform: uniform in +-sqrt(6 / (fan_in + fan_out)), variance limit^2/3.
            let s = &t.shape;
            let rf: usize = s[..s.len() - 2].iter().product();
            let (fi, fo) = (rf * s[s.len() - 2], rf * s[s.len() - 1]);
            let limit = (6.0 / (fi + fo) as f64).sqrt();
            assert!(
                t.data.iter().all(|&v| (v as f64).abs() <= limit),
                "{net}: {k} outside +-{limit}"
            );
            if t.len() >= 10_000 {
                let var = t.data.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / t.len() as f64;
                let want = limit * limit / 3.0;
                assert!(
                    (var / want - 1.0).abs() < 0.05,
                    "{net}: {k} variance {var} vs {want}"
                );
            }
        }
        for (k, t) in &a.params {
            let want =
                if k.ends_with(".bias") || k.ends_with(".beta") || k.ends_with(".moving_mean") {
                    Some(0.0)
                } else if k.ends_with(".gamma") || k.ends_with(".moving_variance") {
                    Some(1.0)
                } else {
                    None
                };
            if let Some(w) = want {
                assert!(t.data.iter().all(|&v| v == w), "{net}: {k} is not all {w}");
            }
        }
    }
}

/// `fixtures/k208_weights_only` was written by Keras 2.0.8 on Theano (`backend` theano,
/// flipped kernels): loading its weights by name must give exactly what the importer
/// reads from the same file with the architecture.
#[test]
fn theano_weights_are_flipped_as_the_importer_flips_them() {
    let dir = common::fixtures_dir().join("k208_weights_only");
    let (path, o) = common::read_options(&dir);
    let reference = allconv::keras::read_model(&path, &o).expect("fixture reads");
    assert_eq!(reference.source.backend.as_deref(), Some("theano"));
    let mut g = reference.clone();
    for t in g.params.values_mut() {
        t.data.iter_mut().for_each(|v| *v = 0.0);
    }
    let report = load_weights_by_name(&mut g, &path).expect("loads");
    assert!(report.kernels_flipped);
    assert!(!report.loaded.is_empty());
    assert!(report.kept.is_empty(), "{:?}", report.kept);
    let mut convs = 0;
    for (k, t) in &reference.params {
        assert_eq!(&g.params[k], t, "{k}");
        if k.ends_with(".kernel") && t.shape.len() == 4 && t.shape[0] > 1 {
            convs += 1;
        }
    }
    assert!(convs > 0, "the fixture has no spatial kernel to flip");
}

fn keras208_python() -> Option<PathBuf> {
    let p = match std::env::var_os("ALLCONV_KERAS208_PYTHON") {
        Some(v) => PathBuf::from(v),
        None => common::fixtures_dir()
            .parent()
            .unwrap()
            .join(".venv-keras208/bin/python"),
    };
    p.exists().then_some(p)
}

fn run_converter(py: &Path, case: &str, out: &Path) -> Result<(), String> {
    let root = common::fixtures_dir().parent().unwrap().to_path_buf();
    let o = std::process::Command::new(py)
        .current_dir(&root)
        .arg(root.join("converters/patch_nets_ref.py"))
        .arg(case)
        .arg("--out")
        .arg(out)
        .output()
        .map_err(|e| format!("{case}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{case}: patch_nets_ref.py failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

#[cfg(feature = "torch")]
#[test]
fn keras_weight_files_load_by_name_and_predict_like_keras() {
    use allconv::torch::{float64_reference, verify_torch_refs, TorchVerifyOptions};
    use allconv::verify::{compare, npz::read_npz};
    let Some(py) = keras208_python() else {
        return common::skip_or_fail("genuine Keras 2.0.8 (.venv-keras208) missing");
    };
    let started = std::time::Instant::now();
    let tmp = std::env::temp_dir().join(format!("allconv-patch-nets-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // ResNet50 alone in one process, the three smaller nets after each other in another.
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let a = s.spawn(|| run_converter(&py, "resnet50", &tmp));
        let b = s.spawn(|| {
            ["vgg16", "vgg19", "yaroslav"]
                .iter()
                .try_for_each(|c| run_converter(&py, c, &tmp))
        });
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    println!(
        "genuine Keras wrote the weight files in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for net in PatchNet::ALL {
        let case = net.name();
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.join(format!("{case}_io.json"))).unwrap(),
        )
        .unwrap();
        let opts = PatchNetOptions {
            classes: 3,
            hidden_dropout: 0.5,
            weight_decay: 0.01,
            seed: 11,
        };
        let mut g: Graph = patch_classifier(net, &opts).unwrap();
        let file = tmp.join(format!("{case}_notop.h5"));
        let report = match load_weights_by_name(&mut g, &file) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{case}: {e}"));
                continue;
            }
        };
        assert_eq!(report.backend.as_deref(), Some("theano"), "{case}");
        let top = meta["top_dense"].as_str().unwrap();
        if net == PatchNet::Yaroslav {
            assert!(report.kept.is_empty(), "{case}: {:?}", report.kept);
        } else {
            assert_eq!(report.kept, vec![top.to_string()], "{case}: kept");
        }
        let npz = tmp.join(format!("{case}_io.npz"));
        let keras = read_npz(&npz).expect("io.npz");
        for (slot, key) in [("kernel", "top_kernel"), ("bias", "top_bias")] {
            let t = &keras[key];
            let p = g.params.get_mut(&format!("{top}.{slot}")).unwrap();
            assert_eq!(p.shape, t.shape, "{case}: {slot}");
            p.data.clone_from(&t.data);
        }
        let exact = float64_reference(&g, &keras, &npz).expect("float64 run");
        println!(
            "{case}: float64 run at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let (keras_err, _) = common::keras_float32_error(&keras, &exact);
        let (k, t) = (&keras["output"], &exact["output"]);
        let semantic = compare("output", &t.data, &t.shape, &k.data, &k.shape, 1e-4, 0.0);
        if !semantic.passed {
            failures.push(format!(
                "{case}: Keras vs the float64 graph: output {:.2e}",
                semantic.max_abs_err
            ));
        }
        let bound = common::runtime_bound(keras_err);
        let to = TorchVerifyOptions {
            atol: bound,
            ..Default::default()
        };
        match verify_torch_refs(&g, case, &exact, "float64 graph", &to) {
            Ok(r) if r.passed => println!(
                "{case}: {} layers loaded by name ({} tensors), {:?} kept; Keras vs float64 graph output {:.2e}; libtorch f32 vs float64 {:.2e} (bound {bound:.1e})",
                report.loaded.len(),
                report.tensors,
                report.kept,
                semantic.max_abs_err,
                r.outputs[0].max_abs_err
            ),
            Ok(r) => failures.push(format!("{case}: libtorch:\n{}", r.to_text())),
            Err(e) => failures.push(format!("{case}: libtorch: {e}")),
        }
        checked += 1;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(checked, 4, "{}", failures.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
