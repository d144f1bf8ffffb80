//! One, two and three Keras `train_on_batch` steps replayed through `allconv::train` against
//! genuine Keras (`fixtures/train_step/<case>/`, written by `converters/train_step_ref.py`
//! with tf-keras 2.21 and Keras 2.0.8 on Theano): every weight (BatchNorm moving statistics
//! included), every optimizer state tensor, the training-mode output and the reported loss
//! after each step, within `|a - b| <= 1e-5 * max(1, |b|)`.
//!
//! Each case starts from the model Keras saved before compiling (`model.h5`, checked equal to
//! the recorded initial weights), trains with the flavour of the Keras that recorded it, and
//! replays its schedule: the flat cases two steps of one optimizer; the `*_nested_2stage`
//! cases `do_2stage_training` (stage 1: `model.layers[:top_layer_nb]` frozen, L2 re-assigned
//! to `weight_decay`, two steps; stage 2: all trainable, `weight_decay2`, a fresh optimizer at
//! `lr * all_layer_multiplier`, one step). The `k208_patch_3stage_*` cases replay
//! `do_3stage_training` on a `get_dl_model`-style patch classifier through the schedule API
//! ([`Schedule::three_stage`]: each stage's freeze, re-assigned L2, learning rate and fresh
//! optimizer), the trainable weights of every stage checked equal to Keras's
//! `model.trainable_weights`; their Dropout(0.5) draws its mask inside `train_on_batch`, so
//! the fixture records each step's mask and the Dropout node is replaced here by a
//! multiplication with it (every other op is allconv's). The `k208_patch_3stage_resumed_*`
//! cases start the same schedule from a checkpoint Keras saved in stage 1 and loaded back
//! with `load_model` (the paper's `--resume-from`): the file marks every layer but the
//! classifier `trainable: false`, and stages 2 and 3 still train what Keras's assignments
//! make trainable. The `*_wide` cases are the flat model at 32 filters with a 1x1
//! convolution at stride 1: the only ones allconv trains channels-last, with that
//! convolution routed to oneDNN. The `*_nested_2stage_resumed` cases do the same for
//! [`Schedule::two_stage`] on the nested whole-image model: tf-keras's checkpoint marks the
//! nested model and every layer in it `trainable: false`, and stage 2's assignment on the
//! nested model trains them all (tf-keras's setter recurses); Keras 2.0.8's checkpoint
//! records no flag for a nested model.

mod common;

use allconv::ir::{Dim, Graph, MergeKind, Op};
use allconv::keras::{read_model, ReadOptions};
use allconv::train::schedule::{ThreeStage, TwoStage};
use allconv::train::{
    auto_batch_balance, class_weights_to_sample, train_step, Flavour, Optimizer, Regularizers,
    Schedule, TrainModel,
};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::NpzReader;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

const TOL: f64 = 1e-5;

struct Arr {
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// Every array of an npz as f64 (float32, float64 and int64 arrays).
fn read_all(path: &Path) -> BTreeMap<String, Arr> {
    let f = std::fs::File::open(path).expect("steps.npz opens");
    let mut z = NpzReader::new(f).expect("an npz");
    let names = z.names().expect("names");
    let mut out = BTreeMap::new();
    for name in names {
        let key = name.trim_end_matches(".npy").to_string();
        let (shape, data): (Vec<usize>, Vec<f64>) =
            if let Ok(a) = z.by_name::<ndarray::OwnedRepr<f32>, IxDyn>(&name) {
                (a.shape().to_vec(), a.iter().map(|&x| x as f64).collect())
            } else if let Ok(a) = z.by_name::<ndarray::OwnedRepr<f64>, IxDyn>(&name) {
                (a.shape().to_vec(), a.iter().copied().collect())
            } else {
                let a: ArrayD<i64> = z
                    .by_name::<ndarray::OwnedRepr<i64>, IxDyn>(&name)
                    .unwrap_or_else(|e| panic!("{}: array {name}: {e}", path.display()));
                (a.shape().to_vec(), a.iter().map(|&x| x as f64).collect())
            };
        out.insert(key, Arr { shape, data });
    }
    out
}

fn tensor(a: &Arr) -> Tensor {
    let d: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
    let shape: Vec<i64> = a.shape.iter().map(|&s| s as i64).collect();
    Tensor::from_slice(&d).reshape(shape.as_slice())
}

fn host(t: &Tensor) -> Vec<f64> {
    let t = t.to_kind(tch::Kind::Double).contiguous().flatten(0, -1);
    Vec::<f64>::try_from(&t).expect("host copy")
}

/// Running worst relative error of one case.
#[derive(Default)]
struct Worst {
    err: f64,
    what: String,
    compared: usize,
    failures: Vec<String>,
    /// Noise-driven weights ([`noise_driven`]): worst absolute error and its bound.
    noise: Option<(f64, f64, String)>,
    /// Optimizer moments of noise-driven weights: matched to Keras's by name, shape and
    /// finiteness only (their values are rounding noise); not counted in `compared`.
    noise_moments: usize,
    /// Schedule cases: per stage, the worst absolute difference of a weight after a step
    /// (noise-driven weights apart).
    stage_abs: BTreeMap<u64, f64>,
}

impl Worst {
    fn check(&mut self, what: &str, got: &[f64], want: &[f64]) {
        if got.len() != want.len() {
            self.failures.push(format!(
                "{what}: {} values, Keras has {}",
                got.len(),
                want.len()
            ));
            return;
        }
        let mut worst = 0f64;
        for (&a, &b) in got.iter().zip(want) {
            let e = (a - b).abs() / b.abs().max(1.0);
            if e.is_nan() {
                worst = f64::INFINITY;
            } else if e > worst {
                worst = e;
            }
        }
        self.compared += 1;
        if self.what.is_empty() || worst > self.err {
            self.err = worst;
            self.what = what.to_string();
        }
        if worst > TOL {
            self.failures
                .push(format!("{what}: relative error {worst:.3e}"));
        }
    }
}

impl Worst {
    /// A noise-driven weight: both Keras and we move it by at most `bound / 2` from
    /// where the step started; they must stay within `bound` of each other.
    fn check_noise(&mut self, what: &str, got: &[f64], want: &[f64], bound: f64) {
        let err = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0f64,
                |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
            );
        self.compared += 1;
        if self.noise.as_ref().is_none_or(|(e, _, _)| err > *e) {
            self.noise = Some((err, bound, what.to_string()));
        }
        if err.is_nan() || err > bound || got.len() != want.len() {
            self.failures.push(format!(
                "{what} (noise-driven): absolute error {err:.3e} > {bound:.3e}"
            ));
        }
    }
}

fn cases() -> Vec<PathBuf> {
    let root = common::fixtures_dir().join("train_step");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures/train_step exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("meta.json").is_file() && p.join("steps.npz").is_file())
        .collect();
    v.sort();
    v
}

/// `create_optimizer('sgd', 0.01)` -> "sgd".
fn optimizer_name(call: &str) -> String {
    call.split('\'')
        .nth(1)
        .expect("a quoted optimizer name")
        .to_string()
}

/// Theano-oriented kernels (Keras 2.0.8 on Theano stores them flipped): our Keras-layout
/// (TensorFlow-oriented) tensor in the orientation the fixture records.
fn orient(theano: bool, slot: &str, t: allconv::ir::Tensor) -> allconv::ir::Tensor {
    if theano && slot == "kernel" && t.shape.len() >= 3 {
        allconv::layout::flip_spatial(&t)
    } else {
        t
    }
}

/// The fixture's name of an optimizer state tensor for our `slot/key`.
fn keras_state_name(framework: &str, class: &str, slot: &str, keras_path: &str) -> String {
    if framework == "tf-keras" {
        format!("{class}/{slot}/{keras_path}")
    } else {
        let slot = match (class, slot) {
            ("SGD", "m") => "moment",
            (_, s) => s,
        };
        format!("{slot}/{keras_path}")
    }
}

/// Weights whose gradient is analytically zero, so that their update is float noise: the
/// bias of a linear Conv/Dense whose output only feeds BatchNorm layers normalising with
/// batch statistics (the BN removes any per-channel shift). Keras's gradient and ours are
/// both rounding noise (~1e-8), which SGD turns into a negligible step but Adam-style
/// optimizers (the step scaled by 1/(sqrt(v) + eps) with eps 1e-7/1e-8) into a step of a
/// sizeable fraction of lr in a random direction: not reproducible by any implementation.
/// Returns those bias keys and the BN layers whose moving mean inherits the noise.
fn noise_driven(model: &TrainModel, opt: &Optimizer) -> (Vec<String>, Vec<String>) {
    use allconv::ir::Op;
    use allconv::torch::BnTrain;
    // Only the optimizers whose step is ~lr whatever the gradient's size (SGD, RMSprop,
    // Adagrad and Adadelta turn the noise into negligible steps: compared strictly).
    if !matches!(opt.rule.class(), "Adam" | "Adamax" | "Nadam") {
        return (Vec::new(), Vec::new());
    }
    let g = model.graph();
    let mut biases = Vec::new();
    let mut bns = Vec::new();
    for n in &g.nodes {
        let (use_bias, linear) = match &n.op {
            Op::Conv(c) => (c.use_bias, c.activation.is_linear()),
            Op::Dense(c) => (c.use_bias, c.activation.is_linear()),
            _ => continue,
        };
        if !use_bias || !linear || !model.layer_trainable(&n.layer) {
            continue;
        }
        let consumers: Vec<_> = g
            .nodes
            .iter()
            .filter(|c| c.inputs.contains(&n.output))
            .collect();
        let all_batch_bn = !consumers.is_empty()
            && !g.outputs.contains(&n.output)
            && consumers.iter().all(|c| {
                matches!(c.op, Op::BatchNorm(_))
                    && matches!(
                        model.fit_spec().bn.get(&c.layer),
                        Some(BnTrain::Batch { .. })
                    )
            });
        if all_batch_bn {
            biases.push(format!("{}.bias", n.layer));
            bns.extend(consumers.iter().map(|c| format!("{}.moving_mean", c.layer)));
        }
    }
    (biases, bns)
}

/// The graph with its one Dropout node replaced by a multiplication with a second input,
/// the step's recorded mask (0 or `1 / (1 - rate)` per entry, as Keras's and torch's
/// inverted dropout scale). Returns the graph and the node's rate.
fn with_recorded_dropout(case: &str, mut g: Graph) -> (Graph, f32) {
    let idx: Vec<usize> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Dropout { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(idx.len(), 1, "{case}: one Dropout node");
    let Op::Dropout { rate, spatial } = g.nodes[idx[0]].op.clone() else {
        unreachable!()
    };
    assert!(!spatial, "{case}: plain Dropout");
    let shape = g.values[g.nodes[idx[0]].inputs[0]].shape.clone();
    assert!(
        matches!(shape.as_slice(), [Dim::Known(_)]),
        "{case}: the dropout's input is (batch, features): {shape:?}"
    );
    let mask = g.add_input("dropout_mask", shape, allconv::ir::DataFormat::ChannelsLast);
    let n = &mut g.nodes[idx[0]];
    n.op = Op::Merge(MergeKind::Multiply);
    n.inputs.push(mask);
    (g, rate)
}

/// `Schedule::three_stage` with the fixture's `do_3stage_training` arguments.
fn fixture_schedule(t: &Value) -> Schedule {
    let f = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("three_stage.{k}"));
    Schedule::three_stage(&ThreeStage {
        use_pretrained: true,
        optimizer: t["optimizer"].as_str().unwrap().to_string(),
        init_lr: f("init_lr"),
        top_layer_multiplier: f("top_layer_multiplier"),
        all_layer_multiplier: f("all_layer_multiplier"),
        top_layer_nb: Some(t["top_layer_nb"].as_u64().unwrap() as usize),
        nb_epoch: 1,
        top_layer_epochs: 2,
        all_layer_epochs: 3,
        weight_decay2: f("weight_decay2"),
        es_patience: 5,
        lr_patience: 2,
    })
}

/// `Schedule::two_stage` with the fixture's `do_2stage_training` arguments (the resumed
/// nested cases).
fn fixture_two_stage(n: &Value) -> Schedule {
    let f = |k: &str| n[k].as_f64().unwrap_or_else(|| panic!("nested.{k}"));
    Schedule::two_stage(&TwoStage {
        optimizer: "sgd".into(),
        init_lr: f("init_lr"),
        all_layer_multiplier: f("all_layer_multiplier"),
        top_layer_nb: Some(n["top_layer_nb"].as_u64().unwrap() as usize),
        nb_epoch: 1,
        all_layer_epochs: 2,
        weight_decay: f("weight_decay"),
        weight_decay2: f("weight_decay2"),
        es_patience: 5,
        lr_patience: 2,
    })
    .unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn run_case(dir: &Path) -> Worst {
    let case = dir.file_name().unwrap().to_string_lossy().to_string();
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let z = read_all(&dir.join("steps.npz"));
    let framework = meta["framework"].as_str().unwrap().to_string();
    let theano = meta["backend"].as_str() == Some("theano");
    let flavour = match framework.as_str() {
        "tf-keras" => Flavour::TfKeras,
        "keras" => Flavour::Keras2 { theano },
        f => panic!("{case}: unknown framework {f}"),
    };
    let mut w = Worst::default();

    let g = read_model(&dir.join("model.h5"), &ReadOptions::default())
        .unwrap_or_else(|e| panic!("{case}: model.h5: {e}"));
    assert_eq!(
        Flavour::for_source(&g.source),
        flavour,
        "{case}: the flavour read from model.h5"
    );
    // The file holds the recorded initial weights.
    for (key, p) in &g.params {
        let (layer, slot) = key.rsplit_once('.').unwrap();
        let want = z
            .get(&format!("w0/{layer}/{slot}"))
            .unwrap_or_else(|| panic!("{case}: no w0 for {key}"));
        let p = orient(theano, slot, p.clone());
        let got: Vec<f64> = p.data.iter().map(|&x| x as f64).collect();
        w.check(&format!("w0 {key} (model.h5)"), &got, &want.data);
    }

    // Resumed cases: model.h5 is Keras's stage-1 checkpoint, and its `trainable` flags are
    // the ones Keras wrote: false on every layer of the patch classifier but the last; on
    // the whole-image model, tf-keras writes false on the nested model and every layer in
    // it, Keras 2.0.8 nothing (a Model's config has no `trainable`).
    let resumed = &meta["resumed_from"];
    if !resumed.is_null() && !resumed["nested_file_trainable_flags"].is_null() {
        let flags = resumed["nested_file_trainable_flags"].as_object().unwrap();
        assert_eq!(g.layers.len(), flags.len(), "{case}: layers");
        for r in &g.layers {
            let want = flags[&r.path].as_bool().unwrap_or(true);
            assert_eq!(r.own_trainable, want, "{case}: {}: the file's flag", r.path);
        }
        let off: Vec<&str> = g
            .layers
            .iter()
            .filter(|r| !r.own_trainable)
            .map(|r| r.path.as_str())
            .collect();
        let want: &[&str] = if framework == "tf-keras" {
            &["patch", "patch/conv_a", "patch/bn_a", "patch/relu_a"]
        } else {
            &[]
        };
        assert_eq!(off, want, "{case}: the checkpoint's frozen layers");
    }
    if !resumed.is_null() && !resumed["file_trainable_flags"].is_null() {
        let flags = resumed["file_trainable_flags"].as_object().unwrap();
        let top: Vec<_> = g.layers.iter().filter(|r| r.depth == 0).collect();
        assert_eq!(top.len(), flags.len(), "{case}: top-level layers");
        for r in &top {
            let want = flags[&r.path].as_bool().unwrap_or(true);
            assert_eq!(r.own_trainable, want, "{case}: {}: the file's flag", r.path);
        }
        assert!(
            top.iter().filter(|r| !r.own_trainable).count() + 2 == top.len(),
            "{case}: the checkpoint freezes every layer but the input and the classifier"
        );
    }

    // do_3stage_training cases: the schedule, and the graph with Keras's dropout masks.
    let three = &meta["three_stage"];
    let nested = &meta["nested"];
    let schedule = if !three.is_null() {
        Some(fixture_schedule(three))
    } else if !resumed.is_null() {
        Some(fixture_two_stage(nested))
    } else {
        None
    };
    let g = if three.is_null() {
        g
    } else {
        let (g, rate) = with_recorded_dropout(&case, g);
        assert_eq!(
            rate as f64,
            three["hidden_dropout"].as_f64().unwrap(),
            "{case}: the rate the model was built with"
        );
        // Keras applied the built rate in every stage (the re-assigned hidden_dropout2
        // is ignored): each recorded mask is 0 or 1 / (1 - rate), with both present.
        let keep = 1.0 / (1.0 - rate as f64);
        for k in 1..=meta["n_steps"].as_u64().unwrap() {
            let m = &z[&format!("dropout{k}")].data;
            assert!(
                m.iter().all(|&v| v == 0.0 || (v - keep).abs() < 1e-7)
                    && m.contains(&0.0)
                    && m.iter().any(|&v| v != 0.0),
                "{case}: step {k}: dropout mask {m:?} is not rate {rate}'s"
            );
        }
        // The reported loss of stages 2 and 3 is the built L2 and dropout's, and the
        // re-assigned alternatives are far from it.
        let fnd = &meta["findings"];
        assert_eq!(
            strings(&fnd["reported_loss_is_in_stages_2_3"]),
            ["l2 as built, dropout as built"],
            "{case}"
        );
        assert!(
            fnd["next_best_candidate_abs_err_in_stages_2_3"]
                .as_f64()
                .unwrap()
                > 1e3 * TOL,
            "{case}: the loss tells the candidates apart"
        );
        g
    };
    let mut model = TrainModel::new(&g, Device::Cpu, flavour).unwrap();
    // Only the wide cases train channels-last (and their 1x1 convolution through oneDNN):
    // the others are too narrow for it.
    assert_eq!(
        model.torch.channels_last,
        case.ends_with("_wide"),
        "{case}: channels-last activations"
    );
    let mut regs = Regularizers::from_graph(&g).unwrap();
    let x = tensor(&z["x"]);
    let y = tensor(&z["y"]);
    let labels: Vec<i64> = z["labels"].data.iter().map(|&l| l as i64).collect();
    let sw = match z.get("sample_weight") {
        Some(a) => {
            let ours: Vec<f64> = auto_batch_balance(&labels)
                .iter()
                .map(|&v| v as f64)
                .collect();
            w.check("sample_weight (auto_batch_balance)", &ours, &a.data);
            tensor(a)
        }
        None => {
            let cw = meta["weighting"]["class_weight"]
                .as_object()
                .expect("class_weight");
            let mut weights = vec![0.0; cw.len()];
            for (k, v) in cw {
                weights[k.parse::<usize>().unwrap()] = v.as_f64().unwrap();
            }
            let t = class_weights_to_sample(&y, &weights).unwrap();
            w.check(
                "class_weight_per_sample",
                &host(&t),
                &z["class_weight_per_sample"].data,
            );
            t
        }
    };

    let steps = meta["steps"].as_array().unwrap();
    let opts = meta["optimizer"].as_array().unwrap();
    let mut opt: Option<Optimizer> = None;
    let mut stage = 0;
    // Sum of the learning rates so far: an Adam-family step moves a weight by about lr at
    // most in the first steps (Adam at t = 1: exactly lr * g / (|g| + eps / sqrt(1-b2)));
    // noise-driven weights may differ by twice 2 lr per step.
    // (per weight: the steps in which it trained).
    let mut lr_steps: BTreeMap<String, f64> = BTreeMap::new();
    let mut stages_run = Vec::new();
    let bn_momentum = meta["bn"]["momentum"].as_f64().unwrap();
    for s in steps {
        let k = s["step"].as_u64().unwrap();
        let st = s["stage"].as_u64().unwrap();
        if st != stage {
            stage = st;
            stages_run.push(st);
            let o = opts
                .iter()
                .find(|o| o["stage"].as_u64() == Some(st))
                .expect("the stage's optimizer");
            if let Some(sch) = &schedule {
                // The schedule API, as fit runs it: freeze, re-assigned L2, a fresh
                // optimizer at the stage's learning rate.
                let n_stages = if three.is_null() { 2 } else { 3 };
                assert_eq!(
                    sch.stages.len(),
                    n_stages,
                    "{case}: do_2stage_training has 2 stages, do_3stage_training 3"
                );
                let stage = &sch.stages[st as usize - 1];
                let frozen = model
                    .set_stage_trainable(&sch.stages, st as usize - 1)
                    .unwrap();
                let keras_frozen = strings(&o["frozen_layers"]);
                assert_eq!(frozen, keras_frozen, "{case}: stage {st}: frozen layers");
                assert_eq!(
                    frozen.is_empty(),
                    st == n_stages as u64,
                    "{case}: stage {st}"
                );
                if !three.is_null() {
                    if let Some(wd) = stage.weight_decay {
                        assert_eq!(st, 2, "{case}: the re-assigned L2 is stage 2's");
                        assert_eq!(wd.l2, three["weight_decay2"].as_f64().unwrap());
                        let changed = regs.stage_reassign(&g, wd, flavour);
                        assert!(
                            !changed,
                            "{case}: Keras 2.0.8 ignores the re-assigned L2, so must we"
                        );
                    }
                } else {
                    // do_2stage_training re-assigns weight_decay, then weight_decay2: taken
                    // by tf-keras, ignored by Keras 2.0.8 (which trains with the L2 the
                    // checkpoint's config carries).
                    let wd = stage.weight_decay.expect("a re-assigned L2 in each stage");
                    let key = if st == 1 {
                        "weight_decay"
                    } else {
                        "weight_decay2"
                    };
                    assert_eq!(wd.l2, nested[key].as_f64().unwrap(), "{case}: stage {st}");
                    let changed = regs.stage_reassign(&g, wd, flavour);
                    assert_eq!(
                        changed,
                        framework == "tf-keras",
                        "{case}: stage {st}: the re-assigned L2 counts in tf-keras only"
                    );
                }
                let lr = s["lr"].as_f64().unwrap();
                assert_eq!(stage.lr, lr, "{case}: stage {st}: learning rate");
                let keras_trainable = strings(&o["model_trainable_weights"]);
                let ours: Vec<String> = model
                    .params()
                    .iter()
                    .map(|(k, _)| k.replacen('.', "/", 1))
                    .collect();
                if ours != keras_trainable {
                    w.failures.push(format!(
                        "stage {st}: trainable weights {ours:?}, Keras's model.trainable_weights {keras_trainable:?}"
                    ));
                }
                let made = Optimizer::paper(&sch.optimizer, stage.lr, flavour).unwrap();
                assert_eq!(made.rule.class(), o["class"].as_str().unwrap(), "{case}");
                opt = Some(made);
            }
            if !nested.is_null() && schedule.is_none() {
                if st == 1 {
                    let n = nested["top_layer_nb"].as_u64().unwrap() as usize;
                    model.freeze_first(n).unwrap();
                    regs.stage_weight_decay(&g, nested["weight_decay"].as_f64().unwrap(), flavour);
                } else {
                    model.set_frozen::<&str>(&[]).unwrap();
                    regs.stage_weight_decay(&g, nested["weight_decay2"].as_f64().unwrap(), flavour);
                }
            }
            let name = optimizer_name(o["call"].as_str().unwrap());
            let lr = s["lr"].as_f64().unwrap();
            let made = Optimizer::paper(&name, lr, flavour).unwrap();
            assert_eq!(made.rule.class(), o["class"].as_str().unwrap(), "{case}");
            // Keras's update order (`model.trainable_weights`) is ours: tf-keras's Nadam
            // schedule depends on it (optim.rs).
            let order: Vec<String> = model
                .params()
                .iter()
                .map(|(k, _)| {
                    let (layer, slot) = k.rsplit_once('.').unwrap();
                    format!("{layer}/{slot}")
                })
                .collect();
            let keras_order: Vec<String> = o["trainable_params_in_order"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            if order != keras_order {
                w.failures.push(format!(
                    "stage {st}: trainable weights in order {order:?}, Keras's {keras_order:?}"
                ));
            }
            if schedule.is_none() {
                opt = Some(made);
            }
        }
        // The weights Keras trained in this step are ours.
        let ours: Vec<String> = model
            .params()
            .iter()
            .map(|(k, _)| {
                let (layer, slot) = k.rsplit_once('.').unwrap();
                format!("{layer}/{slot}")
            })
            .collect();
        let mut theirs: Vec<String> = s["trainable_params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let mut ours_sorted = ours.clone();
        ours_sorted.sort();
        theirs.sort();
        if ours_sorted != theirs {
            w.failures.push(format!(
                "step {k}: trainable weights {ours_sorted:?}, Keras trained {theirs:?}"
            ));
        }

        for (key, _) in model.params() {
            *lr_steps.entry(key.clone()).or_default() += s["lr"].as_f64().unwrap();
        }
        let o = opt.as_mut().unwrap();
        let (noise_biases, noise_bns) = noise_driven(&model, o);
        let bias_lr = noise_biases
            .iter()
            .map(|b| lr_steps[b])
            .fold(0f64, f64::max);
        let mut xs = vec![x.shallow_clone()];
        if !three.is_null() {
            xs.push(tensor(&z[&format!("dropout{k}")]));
        }
        let r = train_step(&model, &regs, o, &xs, &y, Some(&sw), None)
            .unwrap_or_else(|e| panic!("{case}: step {k}: {e}"));
        w.check(
            &format!("step {k} loss"),
            &[r.loss],
            &z[&format!("loss{k}")].data,
        );
        w.check(
            &format!("step {k} training-mode output"),
            &host(&r.output),
            &z[&format!("pred{k}")].data,
        );
        // Every weight after the step.
        let params = model.torch.keras_params().unwrap();
        let mut n_w = 0;
        for (key, p) in params {
            let (layer, slot) = key.rsplit_once('.').unwrap();
            let name = format!("w{k}/{layer}/{slot}");
            let want = z
                .get(&name)
                .unwrap_or_else(|| panic!("{case}: no {name} in steps.npz"));
            let p = orient(theano, slot, p);
            let got: Vec<f64> = p.data.iter().map(|&x| x as f64).collect();
            if noise_biases.contains(&key) {
                w.check_noise(&name, &got, &want.data, 2.0 * 2.0 * lr_steps[&key]);
            } else if noise_bns.contains(&key) {
                w.check_noise(
                    &name,
                    &got,
                    &want.data,
                    (1.0 - bn_momentum) * 2.0 * 2.0 * bias_lr,
                );
            } else {
                w.check(&name, &got, &want.data);
                let abs = got
                    .iter()
                    .zip(&want.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f64, f64::max);
                let e = w.stage_abs.entry(st).or_default();
                *e = e.max(abs);
            }
            n_w += 1;
        }
        let recorded = z
            .keys()
            .filter(|n| n.starts_with(&format!("w{k}/")))
            .count();
        assert_eq!(
            n_w, recorded,
            "{case}: step {k}: every recorded weight compared"
        );
        // The optimizer's state.
        let class = o.rule.class();
        let (mut n_s, mut n_noise) = (0, 0);
        for (name, t) in o.state() {
            let (want_name, got) = match name.as_str() {
                "iterations" => (
                    if framework == "tf-keras" {
                        "iteration"
                    } else {
                        "iterations"
                    }
                    .to_string(),
                    host(&t),
                ),
                "nadam_counter_base" => continue, // ours only (see optim.rs)
                "u_product" => {
                    let n = if framework == "tf-keras" {
                        format!("{class}/u_product")
                    } else {
                        "m_schedule".to_string()
                    };
                    (n, host(&t))
                }
                _ => {
                    let (slot_name, key) = name.split_once('/').unwrap();
                    let (layer, slot) = key.rsplit_once('.').unwrap();
                    let kt = model.torch.keras_layout_of(layer, slot, &t).unwrap();
                    let kt = orient(theano, slot, kt);
                    (
                        keras_state_name(&framework, class, slot_name, &format!("{layer}/{slot}")),
                        kt.data.iter().map(|&x| x as f64).collect(),
                    )
                }
            };
            let mut full = format!("opt{k}/{want_name}");
            if !z.contains_key(&full) && framework == "tf-keras" {
                // tf-keras names slots after the variable, without the nested model's name.
                let parts: Vec<&str> = want_name.split('/').collect();
                if parts.len() > 4 {
                    let tail = &parts[parts.len() - 2..];
                    full = format!("opt{k}/{}/{}/{}", parts[0], parts[1], tail.join("/"));
                }
            }
            let noisy = name
                .split_once('/')
                .is_some_and(|(_, key)| noise_biases.iter().any(|b| b == key));
            match z.get(&full) {
                // A noise-driven weight's moments are noise too: their values are not
                // compared, only that Keras has the same tensor and ours is finite.
                Some(a) if noisy => {
                    if a.data.len() != got.len() || got.iter().any(|x| !x.is_finite()) {
                        w.failures.push(format!(
                            "{full} (noise-driven moment): {} values, Keras has {}, or not finite",
                            got.len(),
                            a.data.len()
                        ));
                    }
                    w.noise_moments += 1;
                    n_noise += 1;
                }
                Some(a) => {
                    w.check(&full, &got, &a.data);
                    n_s += 1;
                }
                None => w.failures.push(format!("{full}: not in steps.npz")),
            }
        }
        let recorded = z
            .keys()
            .filter(|n| n.starts_with(&format!("opt{k}/")))
            .count();
        if n_s + n_noise != recorded {
            w.failures.push(format!(
                "step {k}: compared {n_s} optimizer state tensors and matched {n_noise} noise-driven moments, Keras recorded {recorded}"
            ));
        }
    }
    if let Some(sch) = &schedule {
        let all: Vec<u64> = (1..=sch.stages.len() as u64).collect();
        assert_eq!(stages_run, all, "{case}: every stage replayed");
    } else {
        w.stage_abs.clear();
    }
    w
}

#[test]
fn train_steps_match_genuine_keras() {
    let cases = cases();
    assert!(!cases.is_empty(), "no fixtures/train_step cases");
    let mut failed = Vec::new();
    for dir in &cases {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let w = run_case(dir);
        println!(
            "{case:24} worst relative error {:.2e} ({}), {} tensors compared, {} noise-driven moments matched by shape only",
            w.err, w.what, w.compared, w.noise_moments
        );
        for (st, e) in &w.stage_abs {
            println!(
                "{:24} stage {st}: worst absolute weight difference {e:.2e}",
                ""
            );
        }
        if let Some((e, b, what)) = &w.noise {
            println!(
                "{:24} noise-driven weights: worst absolute error {e:.2e} ({what}), bound {b:.2e}",
                ""
            );
        }
        for f in &w.failures {
            println!("    FAIL {f}");
            failed.push(format!("{case}: {f}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} mismatches with genuine Keras:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// `TorchModel::keras_params` (what a checkpoint writes) gives back every fixture's weights
/// bit for bit: the VarStore layouts of every op (conv, depthwise/separable, dense, BN,
/// PReLU...) invert exactly. Large models are skipped (the same layouts, more bytes).
#[test]
fn keras_params_round_trip_every_fixture() {
    let mut n = 0;
    for dir in common::model_fixtures() {
        let (model, opts) = common::read_options(&dir);
        let g = read_model(&model, &opts).expect("reads");
        if g.total_params() > 3_000_000 {
            continue;
        }
        let tm = allconv::torch::TorchModel::new(&g, Device::Cpu).expect("loads");
        let back = tm.keras_params().expect("keras_params");
        assert_eq!(back.len(), g.params.len(), "{}", dir.display());
        for (k, p) in &g.params {
            assert_eq!(&back[k], p, "{}: {k}", dir.display());
        }
        if n == 0 {
            // Loading a checkpoint: set every weight to 2x, read it back.
            for (k, p) in &g.params {
                let (layer, slot) = k.rsplit_once('.').unwrap();
                let mut q = p.clone();
                q.data.iter_mut().for_each(|v| *v *= 2.0);
                tm.set_keras_param(layer, slot, &q)
                    .expect("set_keras_param");
                assert_eq!(tm.keras_params().unwrap()[k], q, "{k}");
                let wrong =
                    allconv::ir::Tensor::new(vec![q.len() + 1], vec![0.0; q.len() + 1]).unwrap();
                assert!(tm.set_keras_param(layer, slot, &wrong).is_err());
            }
        }
        n += 1;
    }
    assert!(n >= 20, "only {n} fixtures round-tripped");
    // TrainModel::variables / load_variables (a checkpoint of the live weights).
    let dir = common::fixtures_dir().join("train_step/tfk_sgd_balance");
    let g = read_model(&dir.join("model.h5"), &ReadOptions::default()).unwrap();
    let a = TrainModel::new(&g, Device::Cpu, Flavour::TfKeras).unwrap();
    let b = TrainModel::new(&g, Device::Cpu, Flavour::TfKeras).unwrap();
    let saved: Vec<(String, Tensor)> = a
        .variables()
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy() * 3.0))
        .collect();
    b.load_variables(&saved).unwrap();
    for ((k, x), (_, y)) in saved.iter().zip(b.variables().unwrap()) {
        assert_eq!(host(x), host(&y), "{k}");
    }
    assert!(b.load_variables(&saved[1..]).is_err());
    println!("{n} fixtures: keras_params == graph params");
}

/// `--amp`'s loss scaling, run on the CPU (where libtorch's float16 autocast is off): the
/// scale is a power of two and so is its reciprocal, so the scaled gradients unscale exactly
/// and two scaled steps land on the plain steps' weights and optimizer state bit for bit
/// (the plain step being the one held to genuine Keras above). A step whose scaled gradients
/// overflow changes nothing, halves the scale and restarts its growth count.
#[test]
fn loss_scaled_steps_equal_plain_steps() {
    use allconv::train::GradScaler;
    let dir = common::fixtures_dir().join("train_step/k208_adam_balance");
    let z = read_all(&dir.join("steps.npz"));
    let g = read_model(&dir.join("model.h5"), &ReadOptions::default()).unwrap();
    let flavour = Flavour::for_source(&g.source);
    let (x, y) = (tensor(&z["x"]), tensor(&z["y"]));
    let labels: Vec<i64> = z["labels"].data.iter().map(|&l| l as i64).collect();
    let sw = Tensor::from_slice(&auto_batch_balance(&labels));
    // Two steps from the file's weights; every variable and optimizer state tensor after.
    let run = |mut scaler: Option<GradScaler>| {
        tch::manual_seed(7);
        let model = TrainModel::new(&g, Device::Cpu, flavour).unwrap();
        let regs = Regularizers::from_graph(&g).unwrap();
        let mut opt = Optimizer::paper("adam", 1e-3, flavour).unwrap();
        let mut skipped = Vec::new();
        for _ in 0..2 {
            let xs = [x.shallow_clone()];
            let r =
                train_step(&model, &regs, &mut opt, &xs, &y, Some(&sw), scaler.as_mut()).unwrap();
            skipped.push(r.skipped);
        }
        // Trainable weights, then every variable (moving statistics too), then the
        // optimizer's state.
        let mut state: Vec<(String, Vec<f64>)> = model
            .params()
            .iter()
            .chain(&model.variables().unwrap())
            .map(|(k, t)| (k.clone(), host(t)))
            .collect();
        state.extend(opt.state().iter().map(|(k, t)| (k.clone(), host(t))));
        (state, skipped, scaler)
    };
    let (plain, _, _) = run(None);
    let (scaled, skipped, scaler) = run(Some(GradScaler::default()));
    assert!(plain.len() > 4, "{} tensors", plain.len());
    assert_eq!(skipped, [false, false]);
    assert_eq!(
        plain, scaled,
        "a power-of-two loss scale changed the update"
    );
    assert_eq!(
        scaler,
        Some(GradScaler {
            scale: 65536.0,
            growth_tracker: 2
        })
    );

    // 2^200 overflows float32: both steps are skipped, the trainable weights stay the
    // file's (BatchNorm's moving statistics follow the forward pass, as in PyTorch).
    let initial: Vec<(String, Vec<f64>)> = TrainModel::new(&g, Device::Cpu, flavour)
        .unwrap()
        .params()
        .iter()
        .map(|(k, t)| (k.clone(), host(t)))
        .collect();
    let huge = GradScaler {
        scale: 2f64.powi(200),
        growth_tracker: 5,
    };
    let (after, skipped, scaler) = run(Some(huge));
    assert_eq!(skipped, [true, true]);
    assert_eq!(
        &after[..initial.len()],
        &initial[..],
        "an overflowing step moved a weight"
    );
    assert_eq!(
        scaler,
        Some(GradScaler {
            scale: 2f64.powi(198),
            growth_tracker: 0
        })
    );
}
