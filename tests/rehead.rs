//! `allconv rehead` against genuine Keras 2.0.8 running the paper's `add_top_layers`.
//!
//! Each `fixtures/rehead_*` case (converters/rehead_ref.py) is a patch fixture loaded with
//! `keras.models.load_model` in a fresh process and re-headed by the paper's code, then
//! saved: its `model_config` is what allconv's pass must produce, layer for layer (classes,
//! names, order, parameters), and with the new layers' weights copied across, its `io.npz`
//! is what the re-headed graph must compute (tract and tch). Structure-only cases
//! (`rehead_structure_*`, no weights) check the paper's full-width recipes.
#![cfg(all(feature = "runtime", feature = "torch"))]

mod common;

use allconv::ir::Graph;
use allconv::keras::{read_model, ReadOptions};
use allconv::passes::rehead::{rehead, ReheadOptions, Top};
use allconv::torch::{float64_reference, verify_torch_refs, TorchVerifyOptions};
use allconv::verify::{compare, npz::read_npz, verify_graph_refs, VerifyOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn rehead_cases(with_model: bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(common::fixtures_dir())
        .expect("fixtures/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("rehead_"))
                && p.join("expect.json").is_file()
                && p.join("model.h5").is_file() == with_model
        })
        .collect();
    v.sort();
    v
}

/// The options the fixture was built with, and its patch fixture's graph.
fn options(dir: &Path) -> (Graph, ReheadOptions) {
    let e = common::expect(dir);
    let r = &e["rehead"];
    let patch = r["patch"].as_str().expect("rehead.patch");
    let top: Top = r["top"]
        .as_str()
        .expect("rehead.top")
        .parse()
        .expect("recipe");
    let size = r["input_size"].as_array().expect("rehead.input_size");
    let (h, w) = (
        size[0].as_u64().unwrap() as usize,
        size[1].as_u64().unwrap() as usize,
    );
    let g = read_model(
        &common::fixtures_dir().join(patch).join("model.h5"),
        &ReadOptions::default(),
    )
    .expect("patch fixture reads");
    let mut o = ReheadOptions::new(top, (h, w));
    o.classes = r["classes"].as_u64().expect("rehead.classes") as usize;
    o.dropout = r["dropout"].as_f64().expect("rehead.dropout") as f32;
    o.weight_decay = r["weight_decay"].as_f64().expect("rehead.weight_decay") as f32;
    // No `cut` recorded: the paper's default cut, as add_top_layers was called.
    if let Some(c) = r["cut"].as_str() {
        o.cut = Some(c.into());
    }
    (g, o)
}

fn config_of(text: &str) -> Value {
    serde_json::from_str(text).expect("model_config is JSON")
}

#[test]
fn rehead_builds_what_the_papers_code_builds_and_computes_what_keras_computes() {
    let cases = rehead_cases(true);
    assert!(cases.len() >= 4, "only {} rehead fixtures", cases.len());
    let mut failures = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (patch, opts) = options(dir);
        let (ours, report) = match rehead(&patch, &opts) {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let genuine =
            read_model(&dir.join("model.h5"), &ReadOptions::default()).expect("fixture reads");
        // 1. The model_config is the one Keras 2.0.8 saved.
        let (a, b) = (
            config_of(ours.source.model_config.as_deref().unwrap()),
            config_of(genuine.source.model_config.as_deref().unwrap()),
        );
        if let Some(d) = common::json_diff(&a, &b, "model_config") {
            failures.push(format!("{name}: config differs from Keras's: {d}"));
            continue;
        }
        // 2. The same layer table, shapes and parameter counts; the layers the paper's
        // stage 1 freezes; the smallest size Keras can build, per side.
        let e = common::expect(dir);
        let r = &e["rehead"];
        {
            let frozen = r["frozen_in_stage1"]
                .as_array()
                .expect("rehead.frozen_in_stage1");
            let want: Vec<&str> = frozen.iter().filter_map(Value::as_str).collect();
            assert!(!want.is_empty(), "{name}: Keras froze no layer in stage 1");
            assert_eq!(
                report.frozen_in_stage1, want,
                "{name}: stage-1 frozen layers"
            );
            assert_eq!(
                report.top_layer_nb as u64,
                r["top_layer_nb"].as_u64().unwrap()
            );
        }
        {
            let m = r["min_input_size"]
                .as_object()
                .expect("rehead.min_input_size");
            let side = |k: &str| m[k]["all_shapes_positive"].as_u64().map(|v| v as usize);
            let (want_h, want_w) = (side("height"), side("width"));
            let e = rehead(
                &patch,
                &ReheadOptions {
                    input_size: (1, 1),
                    ..opts.clone()
                },
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            let got = e
                .rsplit("works is ")
                .next()
                .and_then(|s| s.split_once('x'))
                .map(|(h, w)| {
                    (
                        h.trim().parse::<usize>().ok(),
                        w.trim().parse::<usize>().ok(),
                    )
                });
            assert_eq!(
                got,
                Some((want_h, want_w)),
                "{name}: smallest size vs Keras ({e})"
            );
        }
        assert_eq!(
            ours.total_params() as u64,
            e["count_params"].as_u64().unwrap(),
            "{name}: count_params"
        );
        let table = |g: &Graph| {
            g.layers
                .iter()
                .map(|l| {
                    let shape = l.output.map(|v| format!("{:?}", g.values[v].shape));
                    (
                        l.path.clone(),
                        l.class.clone(),
                        l.depth,
                        shape,
                        g.layer_params(&l.path),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(table(&ours), table(&genuine), "{name}: layer table");
        // 3. The inner network's weights bit for bit.
        let inner = format!("{}/", report.inner_model);
        let inner_params = ours.params.iter().filter(|(k, _)| k.starts_with(&inner));
        assert!(
            inner_params.clone().count() > 0,
            "{name}: no weights under {inner}"
        );
        for (k, t) in inner_params {
            let src = &patch.params[&k[inner.len()..]];
            assert!(
                t.shape == src.shape
                    && t.data
                        .iter()
                        .zip(&src.data)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {k} changed"
            );
        }
        // The heatmap Dense holds the patch classifier's weights (heatmap recipes only).
        assert_eq!(
            report.heatmap_dense.is_some(),
            report.recipe.starts_with("heatmap"),
            "{name}: heatmap Dense {:?} for recipe {}",
            report.heatmap_dense,
            report.recipe
        );
        if let Some(hm) = &report.heatmap_dense {
            for slot in ["kernel", "bias"] {
                assert_eq!(
                    ours.params[&format!("{hm}.{slot}")],
                    genuine.params[&format!("{hm}.{slot}")],
                    "{name}: heatmap {slot}"
                );
            }
        }
        // 4. With the new layers' weights copied across, Keras's numbers.
        let mut copied = ours.clone();
        for (k, t) in copied.params.iter_mut() {
            if !k.starts_with(&inner) {
                *t = genuine.params[k].clone();
            }
        }
        // The bound of tract_parity.rs / torch_parity.rs: Keras's float32 numbers against
        // the float64 run of our graph (semantics), then each runtime against that run
        // within 3x Keras's own float32 error (at least 1e-4).
        let npz = dir.join("io.npz");
        let keras = read_npz(&npz).expect("io.npz");
        let exact = float64_reference(&copied, &keras, &npz).expect("float64 run");
        let (keras_err, at) = common::keras_float32_error(&keras, &exact);
        let (k, t) = (&keras["output"], &exact["output"]);
        let semantic = compare("output", &t.data, &t.shape, &k.data, &k.shape, 1e-4, 0.0);
        if !semantic.passed || keras_err > common::keras_drift_bound(&name) {
            failures.push(format!(
                "{name}: Keras vs the float64 graph: output {:.2e}, worst {keras_err:.2e} x range at {at}",
                semantic.max_abs_err
            ));
        }
        let bound = common::runtime_bound(keras_err);
        let label = Path::new("float64 graph");
        let vo = VerifyOptions {
            per_layer: true,
            layer_atol_scaled: true,
            atol: bound,
            threads: 2,
            ..Default::default()
        };
        // And the plain check: tract's output within 1e-4 of Keras's.
        match verify_graph_refs(
            &copied,
            &name,
            &keras,
            &npz,
            &VerifyOptions {
                per_layer: false,
                threads: 2,
                ..Default::default()
            },
        ) {
            Ok(r) if r.outputs[0].max_abs_err <= 1e-4 => {}
            Ok(r) => failures.push(format!(
                "{name}: tract output vs Keras {:.3e}",
                r.outputs[0].max_abs_err
            )),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
        match verify_graph_refs(&copied, &name, &exact, label, &vo) {
            Ok(r) if r.passed => {
                // Every layer Keras recorded was compared, not merely some.
                failures.extend(common::report_coverage_failures(&name, dir, &r, false));
                println!(
                "{name}: {} ({} new layers): tract vs float64 output {:.2e}, {} layers, bound {bound:.1e}; Keras vs float64 output {:.2e}",
                report.recipe,
                report.new_layers.len(),
                r.outputs[0].max_abs_err,
                r.layers.len(),
                semantic.max_abs_err
                )
            }
            Ok(r) => failures.push(format!("{name}: tract:\n{}", r.to_text())),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
        {
            let to = TorchVerifyOptions {
                per_layer: true,
                layer_atol_scaled: true,
                atol: bound,
                ..Default::default()
            };
            match verify_torch_refs(&copied, &name, &exact, "float64 graph", &to) {
                Ok(r) if r.passed => {}
                Ok(r) => failures.push(format!("{name}: tch:\n{}", r.to_text())),
                Err(e) => failures.push(format!("{name}: tch: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The paper's full recipes (512-wide tops) on the narrow patch fixtures: the structure
/// genuine Keras 2.0.8 built, without weights.
#[test]
fn full_recipes_match_keras_structure() {
    let cases = rehead_cases(false);
    assert!(!cases.is_empty(), "no rehead_structure_* fixtures");
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (patch, opts) = options(dir);
        let (ours, _) = rehead(&patch, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = common::expect(dir);
        assert_eq!(
            ours.total_params() as u64,
            e["count_params"].as_u64().unwrap(),
            "{name}: count_params"
        );
        let rows = e["layers"].as_array().expect("layers");
        let top: Vec<_> = ours.layers.iter().filter(|l| l.depth == 0).collect();
        let want: Vec<_> = rows
            .iter()
            .filter(|r| !r["path"].as_str().unwrap_or("").contains('/'))
            .collect();
        assert!(
            !want.is_empty(),
            "{name}: expect.json lists no top-level layer"
        );
        assert_eq!(top.len(), want.len(), "{name}: top-level layer count");
        for (l, r) in top.iter().zip(&want) {
            assert_eq!(l.path, r["path"].as_str().unwrap(), "{name}: order");
            assert_eq!(
                l.class,
                r["class_name"].as_str().unwrap(),
                "{name}: {}",
                l.path
            );
            assert_eq!(
                ours.layer_params(&l.path) as u64,
                r["params"].as_u64().unwrap(),
                "{name}: {} params",
                l.path
            );
            {
                let want_shape = r["output_shape"].as_array().expect("output_shape");
                let got: Vec<Option<usize>> = ours.values[l.output.unwrap()]
                    .shape
                    .iter()
                    .map(|d| d.known())
                    .collect();
                let want_shape: Vec<Option<usize>> = want_shape[1..]
                    .iter()
                    .map(|d| d.as_u64().map(|x| x as usize))
                    .collect();
                assert_eq!(got, want_shape, "{name}: {} shape", l.path);
            }
        }
    }
}

#[test]
fn seed_reproduces_and_inner_network_is_untouched() {
    let patch = read_model(
        &common::fixtures_dir().join("k208_vgg16_patch/model.h5"),
        &ReadOptions::default(),
    )
    .unwrap();
    let top: Top = "vgg:16x1".parse().unwrap();
    let mut o = ReheadOptions::new(top, (131, 97));
    o.seed = 7;
    let (a, _) = rehead(&patch, &o).unwrap();
    let (b, _) = rehead(&patch, &o).unwrap();
    assert_eq!(a.params, b.params, "same seed, same weights");
    o.seed = 8;
    let (c, r) = rehead(&patch, &o).unwrap();
    let k = format!("{}.kernel", r.final_dense[0]);
    assert_ne!(a.params[&k], c.params[&k], "another seed, other weights");
    // he_normal: stddev sqrt(2 / fan_in), truncated at 2 sigma.
    let conv = c
        .params
        .iter()
        .find(|(k, t)| !k.contains('/') && k.ends_with(".kernel") && t.shape.len() == 4)
        .map(|(_, t)| t)
        .unwrap();
    let fan_in: usize = conv.shape[..3].iter().product();
    let sd = (2.0 / fan_in as f64).sqrt();
    let var = conv.data.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / conv.len() as f64;
    assert!(conv
        .data
        .iter()
        .all(|&x| (x as f64).abs() <= 2.0 * sd + 1e-6));
    assert!(
        (var.sqrt() / sd - 0.88).abs() < 0.1,
        "{} vs {sd}",
        var.sqrt()
    );
}

#[test]
fn refusals_name_the_layer_and_the_smallest_size() {
    let read = |c: &str| {
        read_model(
            &common::fixtures_dir().join(c).join("model.h5"),
            &ReadOptions::default(),
        )
        .unwrap()
    };
    let yaroslav = read("k208_yaroslav_patch");
    let top: Top = "heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut"
        .parse()
        .unwrap();
    let e = rehead(&yaroslav, &ReheadOptions::new(top.clone(), (300, 200)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("too small") && e.contains("smallest size that works is"),
        "{e}"
    );
    // The smallest size it names works, and one pixel less does not.
    let smallest = e.rsplit("works is ").next().unwrap();
    let (h, w) = smallest.split_once('x').unwrap();
    let (h, w): (usize, usize) = (h.trim().parse().unwrap(), w.trim().parse().unwrap());
    assert!(rehead(&yaroslav, &ReheadOptions::new(top.clone(), (h, w))).is_ok());
    assert!(rehead(&yaroslav, &ReheadOptions::new(top.clone(), (h - 1, w))).is_err());
    assert!(rehead(&yaroslav, &ReheadOptions::new(top, (h, w - 1))).is_err());
    // Not fully convolutional up to the cut: the layer that prevents it.
    let vgg = read("k208_vgg16_patch");
    let mut o = ReheadOptions::new("vgg:8x1".parse().unwrap(), (64, 64));
    o.cut = Some(vgg.layers.last().unwrap().path.clone());
    let e = rehead(&vgg, &o).unwrap_err().to_string();
    assert!(
        e.contains("not fully convolutional") && e.contains("GlobalAveragePooling2D"),
        "{e}"
    );
    // A user's own cut: any layer up to which the network is fully convolutional.
    let mut own = ReheadOptions::new("vgg:8x1".parse().unwrap(), (97, 131));
    own.cut = Some("block4_pool".into());
    let (g, r) = rehead(&vgg, &own).expect("explicit cut");
    assert_eq!(
        (r.cut.as_str(), r.cut_rule.as_str()),
        ("block4_pool", "--cut")
    );
    assert!(
        !g.layers.iter().any(|l| l.path.ends_with("block5_conv1")),
        "cut after block4_pool"
    );
    o.cut = Some("no_such_layer".into());
    assert!(rehead(&vgg, &o)
        .unwrap_err()
        .to_string()
        .contains("no_such_layer"));
    // A tf.keras patch model is not a Keras 2.0.8 one.
    let tfk = read_model(
        &common::fixtures_dir().join("tfk_functional/model.h5"),
        &ReadOptions::default(),
    )
    .unwrap();
    let e = rehead(
        &tfk,
        &ReheadOptions::new("vgg:8x1".parse().unwrap(), (64, 64)),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Keras 2.0-2.1"), "{e}");
}

/// The heatmap is the patch classifier applied per window: at every position (i, j) of
/// the YaroslavNet heatmap, genuine Keras's whole-image `dense_1` (relu of the copied Dense
/// on the 7x7 average of the cut features) equals the genuine patch classifier's head —
/// its global average pooling and its Dense, with the patch file's weights — applied to
/// that 7x7 window of Keras's own cut features, which is what the patch classifier
/// computes for a patch whose features those are; and allconv's graph reproduces the map
/// (above). On image crops the two agree only approximately, because a crop's border
/// sees zero `same` padding where the whole image has pixels: converters/rehead_ref.py
/// measured it on 30 genuine 448 px crops (`crops.npz`) and this test restates the figure.
#[test]
fn heatmap_is_the_patch_classifier_per_window() {
    let dir = common::fixtures_dir().join("rehead_yaroslav_heatmap");
    let io = read_npz(&dir.join("io.npz")).unwrap();
    let (feat, map) = (&io["layer/model_1"], &io["layer/dense_1"]);
    let patch = read_model(
        &common::fixtures_dir().join("k208_yaroslav_patch/model.h5"),
        &ReadOptions::default(),
    )
    .unwrap();
    let dense = patch
        .nodes
        .iter()
        .rev()
        .find(|n| matches!(n.op, allconv::ir::Op::Dense(_)))
        .unwrap();
    let (w, b) = (
        &patch.params[&dense.param_key("kernel")],
        &patch.params[&dense.param_key("bias")],
    );
    let (n, fh, fw, c) = (feat.shape[0], feat.shape[1], feat.shape[2], feat.shape[3]);
    let (mh, mw, k) = (map.shape[1], map.shape[2], map.shape[3]);
    assert_eq!((mh, mw), (fh - 6, fw - 6), "avg=7, stride=1");
    let mut worst = 0f32;
    for s in 0..n {
        for i in 0..mh {
            for j in 0..mw {
                // The patch head on the window: mean over 7x7, then the Dense.
                let mut gap = vec![0f32; c];
                for y in i..i + 7 {
                    for x in j..j + 7 {
                        for ch in 0..c {
                            gap[ch] += feat.data[((s * fh + y) * fw + x) * c + ch] / 49.0;
                        }
                    }
                }
                for o in 0..k {
                    let logit: f32 =
                        b.data[o] + (0..c).map(|ch| gap[ch] * w.data[ch * k + o]).sum::<f32>();
                    let got = map.data[((s * mh + i) * mw + j) * k + o];
                    worst = worst.max((logit.max(0.0) - got).abs());
                }
            }
        }
    }
    println!(
        "heatmap vs the patch head per window: worst {worst:.2e} over {} positions",
        n * mh * mw
    );
    assert!(worst <= 1e-4, "{worst}");
    // Image crops: approximate, as measured with genuine Keras.
    let mut z =
        ndarray_npy::NpzReader::new(std::fs::File::open(dir.join("crops.npz")).unwrap()).unwrap();
    let mut get = |k: &str| -> ndarray::ArrayD<f32> { z.by_name(k).unwrap() };
    let (p, h) = (get("logits"), get("heatmap_logits"));
    let diff = p
        .iter()
        .zip(h.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "image crops ({} genuine 448 px crops): patch logits vs heatmap logits differ by up to {diff:.2}",
        p.shape()[0]
    );
    assert!(diff > 0.1, "the crops would agree exactly; update the doc");
}

/// The re-headed `.h5` opens in genuine Keras: tf-keras loads it and predicts the
/// fixture's `io.npz` (the new layers' weights copied from the Keras-built model, so the
/// expected numbers are Keras's own); Keras 2.0.8 loads it with the same layers and
/// parameter count. (Keras 2.0.8 runs only on Theano here, where it leaves the kernels of
/// a TensorFlow-labelled nested model unflipped, README "convert -o OUT.h5": its
/// predictions are not compared.)
#[test]
fn rehead_h5_opens_in_genuine_keras() {
    use allconv::keras::writer::write_h5_from_graph;
    let py = |v: &str| common::fixtures_dir().parent().unwrap().join(v);
    let (tf, k208) = (py(".venv-tf/bin/python"), py(".venv-keras208/bin/python"));
    if !tf.exists() || !k208.exists() {
        return common::skip_or_fail("genuine Keras venvs (converters/setup.sh) missing");
    }
    let tmp = std::env::temp_dir().join(format!("allconv-rehead-h5-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut failures = Vec::new();
    for case in [
        "rehead_vgg16_heatmap_vgg",
        "rehead_yaroslav_heatmap",
        "rehead_vgg19_resnet",
    ] {
        let dir = common::fixtures_dir().join(case);
        let (patch, opts) = options(&dir);
        let (mut ours, report) = rehead(&patch, &opts).unwrap();
        let genuine = read_model(&dir.join("model.h5"), &ReadOptions::default()).unwrap();
        let inner = format!("{}/", report.inner_model);
        for (k, t) in ours.params.iter_mut() {
            if !k.starts_with(&inner) {
                *t = genuine.params[k].clone();
            }
        }
        let out = tmp.join(format!("{case}.h5"));
        write_h5_from_graph(&ours, &out).unwrap();
        let run = |python: &Path, extra: &[&str]| {
            let o = std::process::Command::new(python)
                .arg(py("converters/h5_loadback.py"))
                .arg(&out)
                .arg(dir.join("io.npz"))
                .args(extra)
                .output()
                .expect("python runs");
            let stdout = String::from_utf8_lossy(&o.stdout).to_string();
            let line = stdout
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .unwrap_or("{}")
                .to_string();
            (
                serde_json::from_str::<Value>(&line).unwrap_or(Value::Null),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        };
        let (v, err) = run(&tf, &[]);
        println!("{case}: tf-keras on our .h5: {v}");
        if v["passed"] != Value::Bool(true) {
            failures.push(format!("{case}: tf-keras: {v}\n{err}"));
        }
        let (v, err) = run(&k208, &["--no-predict"]);
        let want_names: Vec<String> = genuine
            .layers
            .iter()
            .filter(|l| l.depth == 0)
            .map(|l| l.path.clone())
            .collect();
        let names: Vec<String> = v["layer_names"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{case}: Keras 2.0.8 loads our .h5: {} layers, {} params",
            names.len(),
            v["params"]
        );
        if v["passed"] != Value::Bool(true)
            || names != want_names
            || v["params"].as_u64() != Some(genuine.total_params() as u64)
        {
            failures.push(format!("{case}: Keras 2.0.8: {v}\n{err}"));
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
