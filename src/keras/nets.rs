//! The paper's patch classifiers, built natively as Keras 2.0.8 builds them in a fresh
//! process for end2end-all-conv's `get_dl_model(net, nb_class, use_pretrained=False,
//! hidden_dropout, weight_decay)` (dm_keras_ext.py):
//!
//! - `resnet50`, `vgg16`, `vgg19`: `keras.applications.X(weights=None, include_top=False,
//!   input_shape=None, pooling='avg')` (Keras 2.0.8's ResNet50 applies its 7x7
//!   `avg_pool` before the global average pooling, so it takes inputs of 197 px and more;
//!   the VGGs take 32 px and more), then `Dropout(hidden_dropout)` when it is above 0,
//!   then `Dense(nb_class, softmax, kernel_regularizer=l2(weight_decay))`, in one flat
//!   `Model` (`model_1`);
//! - `yaroslav`: dm_keras_ext's `Yaroslav(classes=nb_class)`: one-channel input, six
//!   blocks of two [Conv2D 3x3 same, BatchNormalization, relu] and a 2x2 max pooling, then
//!   global average pooling and `Dense(classes, softmax, name='predictions')` (its own
//!   regulariser-free head: `hidden_dropout` and `weight_decay` do not apply). It takes
//!   inputs of 64 px and more.
//!
//! Names, layer order and every config key are Keras's; weights are drawn from Keras's
//! initialisers' distributions (glorot_uniform kernels, zero biases, BatchNorm gamma 1,
//! beta 0, moving mean 0, moving variance 1), reproducible from the seed.
//!
//! [`load_weights_by_name`] reads a Keras `save_weights` file (keras.applications'
//! ImageNet `*_notop.h5` files among them) into such a graph by layer name.

use crate::error::{Error, Result};
use crate::ir::{Graph, Op, Source};
use crate::keras::build::{KerasModel, ModelBuilder};
use crate::keras::h5::H5File;
use crate::keras::weights::WeightIndex;
use serde::Serialize;
use std::path::Path;
use std::str::FromStr;

/// A patch classifier of end2end-all-conv's `get_dl_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchNet {
    Resnet50,
    Vgg16,
    Vgg19,
    Yaroslav,
}

impl FromStr for PatchNet {
    type Err = Error;
    fn from_str(s: &str) -> Result<PatchNet> {
        match s.trim().to_ascii_lowercase().as_str() {
            "resnet50" => Ok(PatchNet::Resnet50),
            "vgg16" => Ok(PatchNet::Vgg16),
            "vgg19" => Ok(PatchNet::Vgg19),
            "yaroslav" => Ok(PatchNet::Yaroslav),
            _ => Err(Error::Other(format!(
                "unknown patch network {s:?}: the networks are resnet50, vgg16, vgg19, yaroslav"
            ))),
        }
    }
}

impl std::fmt::Display for PatchNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PatchNet {
    pub const ALL: [PatchNet; 4] = [
        PatchNet::Resnet50,
        PatchNet::Vgg16,
        PatchNet::Vgg19,
        PatchNet::Yaroslav,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PatchNet::Resnet50 => "resnet50",
            PatchNet::Vgg16 => "vgg16",
            PatchNet::Vgg19 => "vgg19",
            PatchNet::Yaroslav => "yaroslav",
        }
    }

    /// `get_dl_model`'s default `top_layer_nb`: the layers the first training stage
    /// freezes (`None` for yaroslav, which is trained whole).
    pub fn default_top_layer_nb(self) -> Option<usize> {
        match self {
            PatchNet::Resnet50 => Some(162),
            PatchNet::Vgg16 => Some(15),
            PatchNet::Vgg19 => Some(17),
            PatchNet::Yaroslav => None,
        }
    }

    /// Input channels: 3, or 1 for yaroslav.
    pub fn input_channels(self) -> usize {
        match self {
            PatchNet::Yaroslav => 1,
            _ => 3,
        }
    }

    /// The smallest input side the network takes (each spatial size must be at least this).
    pub fn min_input_size(self) -> usize {
        match self {
            // conv1 /2, max pooling 3x3/2, three strided stages, then the 7x7 avg_pool.
            PatchNet::Resnet50 => 197,
            PatchNet::Vgg16 | PatchNet::Vgg19 => 32,
            PatchNet::Yaroslav => 64,
        }
    }

    /// The keras.applications ImageNet file without the top (`None` for yaroslav).
    pub fn imagenet_notop_file(self) -> Option<&'static str> {
        match self {
            PatchNet::Resnet50 => Some("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
            PatchNet::Vgg16 => Some("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
            PatchNet::Vgg19 => Some("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
            PatchNet::Yaroslav => None,
        }
    }

    /// What to give `--imagenet-weights` for this network, and where Keras published it.
    pub fn imagenet_weights_help(self) -> String {
        match (self, self.imagenet_notop_file()) {
            (PatchNet::Resnet50, Some(f)) => format!(
                "resnet50 takes ImageNet weights from {f}, published by Keras at {IMAGENET_RELEASES} (release v0.2)"
            ),
            (_, Some(f)) => format!(
                "{self} takes ImageNet weights from {f}, published by Keras at {IMAGENET_RELEASES} (release v0.1)"
            ),
            (_, None) => format!("{self} has no ImageNet weights: it is trained from scratch"),
        }
    }
}

/// Where Keras published the ImageNet weights of keras.applications.
pub const IMAGENET_RELEASES: &str = "https://github.com/fchollet/deep-learning-models/releases";

/// For an error when pretrained weights are asked for without a file.
pub const IMAGENET_WEIGHTS_HELP: &str = "ImageNet weights are the Keras `save_weights` files without the top that keras.applications downloads: resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 (release v0.2), vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 and vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 (release v0.1), published by Keras at https://github.com/fchollet/deep-learning-models/releases; yaroslav has none";

/// `get_dl_model`'s arguments (its defaults: 3 classes, no dropout, L2 0.01).
#[derive(Debug, Clone)]
pub struct PatchNetOptions {
    pub classes: usize,
    /// `Dropout(hidden_dropout)` before the Dense, only when above 0 (not yaroslav).
    pub hidden_dropout: f64,
    /// The Dense's `l2(weight_decay)`, stored as float32 as Keras does (not yaroslav).
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for PatchNetOptions {
    fn default() -> Self {
        PatchNetOptions {
            classes: 3,
            hidden_dropout: 0.0,
            weight_decay: 0.01,
            seed: 0,
        }
    }
}

/// `bn_axis` of keras.applications and `CHANNEL_AXIS` of dm_keras_ext (channels_last).
const CHANNEL_AXIS: i64 = 3;

/// keras.applications.resnet50's `identity_block` / `conv_block` (`strides: None`).
fn resnet_block(
    b: &mut ModelBuilder,
    x: &str,
    filters: [usize; 3],
    stage: usize,
    block: char,
    strides: Option<usize>,
) -> Result<String> {
    let conv = |p: &str| format!("res{stage}{block}_branch{p}");
    let bn = |p: &str| format!("bn{stage}{block}_branch{p}");
    let s = strides.unwrap_or(1);
    let y = b.conv(
        (x, 0),
        filters[0],
        1,
        s,
        "valid",
        "linear",
        Some(&conv("2a")),
    )?;
    let y = b.bn(&y, CHANNEL_AXIS, Some(&bn("2a")))?;
    let y = b.activation(&y, "relu", None)?;
    let y = b.conv(
        (&y, 0),
        filters[1],
        3,
        1,
        "same",
        "linear",
        Some(&conv("2b")),
    )?;
    let y = b.bn(&y, CHANNEL_AXIS, Some(&bn("2b")))?;
    let y = b.activation(&y, "relu", None)?;
    let y = b.conv(
        (&y, 0),
        filters[2],
        1,
        1,
        "valid",
        "linear",
        Some(&conv("2c")),
    )?;
    let y = b.bn(&y, CHANNEL_AXIS, Some(&bn("2c")))?;
    let shortcut = match strides {
        Some(s) => {
            let c = b.conv(
                (x, 0),
                filters[2],
                1,
                s,
                "valid",
                "linear",
                Some(&conv("1")),
            )?;
            b.bn(&c, CHANNEL_AXIS, Some(&bn("1")))?
        }
        None => x.to_string(),
    };
    let y = b.add(&y, &shortcut, None)?;
    b.activation(&y, "relu", None)
}

/// keras.applications.ResNet50(include_top=False, pooling='avg') up to its output.
fn resnet50_base(b: &mut ModelBuilder, input: &str) -> Result<String> {
    let x = b.conv((input, 0), 64, 7, 2, "same", "linear", Some("conv1"))?;
    let x = b.bn(&x, CHANNEL_AXIS, Some("bn_conv1"))?;
    let x = b.activation(&x, "relu", None)?;
    let mut x = b.pool((&x, 0), "MaxPooling2D", 3, 2, None)?;
    let stages: [(usize, [usize; 3], &str, usize); 4] = [
        (2, [64, 64, 256], "abc", 1),
        (3, [128, 128, 512], "abcd", 2),
        (4, [256, 256, 1024], "abcdef", 2),
        (5, [512, 512, 2048], "abc", 2),
    ];
    for (stage, filters, blocks, strides) in stages {
        for (i, block) in blocks.chars().enumerate() {
            let s = (i == 0).then_some(strides);
            x = resnet_block(b, &x, filters, stage, block, s)?;
        }
    }
    let x = b.pool((&x, 0), "AveragePooling2D", 7, 7, Some("avg_pool"))?;
    b.gap(&x, None)
}

/// keras.applications.VGG16 / VGG19(include_top=False, pooling='avg').
fn vgg_base(b: &mut ModelBuilder, input: &str, convs: [usize; 5]) -> Result<String> {
    let mut x = input.to_string();
    for (i, (n, f)) in convs.iter().zip([64, 128, 256, 512, 512]).enumerate() {
        for c in 1..=*n {
            let name = format!("block{}_conv{c}", i + 1);
            x = b.conv((&x, 0), f, 3, 1, "same", "relu", Some(&name))?;
        }
        let name = format!("block{}_pool", i + 1);
        x = b.pool((&x, 0), "MaxPooling2D", 2, 2, Some(&name))?;
    }
    b.gap(&x, None)
}

/// The patch classifier as Keras 2.0.8 builds it (see the module doc): config and weights.
pub fn patch_classifier_keras(net: PatchNet, opts: &PatchNetOptions) -> Result<KerasModel> {
    if opts.classes == 0 {
        return Err(Error::Other(format!("{net}: 0 classes")));
    }
    if !(0.0..1.0).contains(&opts.hidden_dropout) {
        return Err(Error::Other(format!(
            "{net}: hidden dropout {} is not in [0, 1)",
            opts.hidden_dropout
        )));
    }
    if !(opts.weight_decay >= 0.0 && opts.weight_decay.is_finite()) {
        return Err(Error::Other(format!(
            "{net}: weight decay {} is not a finite value >= 0",
            opts.weight_decay
        )));
    }
    let mut b = ModelBuilder::new(opts.seed);
    let input = b.input((None, None), net.input_channels(), None);
    if net == PatchNet::Yaroslav {
        let mut x = input.clone();
        for (i, f) in [32, 64, 128, 256, 256, 512].into_iter().enumerate() {
            for c in 1..=2 {
                let name = format!("block{}_conv{c}", i + 1);
                x = b.conv((&x, 0), f, 3, 1, "same", "linear", Some(&name))?;
                x = b.bn(&x, CHANNEL_AXIS, None)?;
                x = b.activation(&x, "relu", None)?;
            }
            let name = format!("block{}_pool", i + 1);
            x = b.pool((&x, 0), "MaxPooling2D", 2, 2, Some(&name))?;
        }
        let x = b.gap(&x, None)?;
        let out = b.dense(&x, opts.classes, "softmax", None, None, Some("predictions"))?;
        return Ok(b.finish(&[&input], &out, Some("yaroslav")));
    }
    let mut x = match net {
        PatchNet::Resnet50 => resnet50_base(&mut b, &input)?,
        PatchNet::Vgg16 => vgg_base(&mut b, &input, [2, 2, 3, 3, 3])?,
        _ => vgg_base(&mut b, &input, [2, 2, 4, 4, 4])?,
    };
    if opts.hidden_dropout > 0.0 {
        x = b.dropout(&x, opts.hidden_dropout, None)?;
    }
    b.kernel_l2 = Some(opts.weight_decay as f32);
    let out = b.dense(&x, opts.classes, "softmax", None, None, None)?;
    Ok(b.finish(&[&input], &out, None))
}

/// The patch classifier's graph (see the module doc), read from its Keras config by the
/// `.h5` importer; spatial input size free.
pub fn patch_classifier(net: PatchNet, opts: &PatchNetOptions) -> Result<Graph> {
    let km = patch_classifier_keras(net, opts)?;
    km.to_graph(built_source(format!(
        "{net} patch classifier (get_dl_model, Keras 2.0.8)"
    )))
}

/// The [`Source`] of a model built here: Keras 2.0.8, TensorFlow's `same` rule.
fn built_source(file: String) -> Source {
    Source {
        file,
        keras_version: Some("2.0.8".into()),
        backend: None,
        dialect: "Keras 2.0-2.2 (Model, keras_version 2.0.8)".into(),
        model_class: "Model".into(),
        warnings: vec![],
        model_config: None,
    }
}

/// What [`load_weights_by_name`] did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub file: String,
    /// The file's `backend` attribute (`theano`: its kernels were flipped on reading).
    pub backend: Option<String>,
    pub keras_version: Option<String>,
    pub kernels_flipped: bool,
    /// Model layers that took the file's weights, in the model's order.
    pub loaded: Vec<String>,
    /// The classifier head absent from a file without the top: it keeps its weights.
    pub kept: Vec<String>,
    /// Weight tensors read.
    pub tensors: usize,
}

/// Keras's `load_weights(path, by_name=True)` for a `save_weights` file (root attribute
/// `layer_names`, per-layer `weight_names`; a whole-model `.h5` is read from its
/// `model_weights`), checked: every problem is reported at once, naming the file and the
/// layer: a model layer with weights that the file lacks (only the classifier head — the
/// Dense layers after the model's last other weighted layer — may be absent: they keep
/// their weights, as the top of a `*_notop.h5` file), a file layer with weights that the
/// model lacks, a weight of another shape. Nothing is changed unless all is well.
///
/// Kernels of a file whose `backend` attribute is `theano` are flipped to TensorFlow
/// orientation, as the importer does for Theano-written models; the ImageNet files of
/// keras.applications are TensorFlow-oriented.
pub fn load_weights_by_name(graph: &mut Graph, path: &Path) -> Result<LoadReport> {
    let _deadline = super::hang_guard::Guard::start(path);
    let file = H5File::open(path)?;
    let root = super::import::weights_root(&file)?;
    let index = WeightIndex::read(&file, root)?;
    let backend = index.backend.clone().or(file.string_attr("/", "backend")?);
    let theano = backend.as_deref() == Some("theano");

    // The model's top-level weighted layers, in its order.
    let weighted: Vec<(String, String, Vec<String>)> = graph
        .layers
        .iter()
        .filter(|l| l.depth == 0 && !l.weights.is_empty())
        .map(|l| (l.path.clone(), l.class.clone(), l.weights.clone()))
        .collect();
    let head_start = weighted
        .iter()
        .rposition(|(_, class, _)| class != "Dense")
        .map_or(0, |i| i + 1);
    let mut problems: Vec<String> = Vec::new();
    let mut plan: Vec<(String, &'static str, String, Vec<usize>, bool)> = Vec::new();
    let mut loaded = Vec::new();
    let mut kept = Vec::new();
    for (i, (layer, class, slots)) in weighted.iter().enumerate() {
        let in_file = index.groups.get(layer).is_some_and(|e| !e.is_empty());
        if !in_file {
            if i >= head_start {
                kept.push(layer.clone());
            } else {
                problems.push(format!(
                    "layer {layer} ({class}): the file has no weights for it"
                ));
            }
            continue;
        }
        let slot_refs: Vec<&'static str> = slots
            .iter()
            .map(|s| static_slot(s))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        if slot_refs.len() != slots.len() {
            problems.push(format!(
                "layer {layer} ({class}): weights {slots:?} cannot be loaded by name"
            ));
            continue;
        }
        let found = match index.find(layer, None, &slot_refs) {
            Ok(f) => f,
            Err(why) => {
                let entries: Vec<&str> = index.groups[layer]
                    .iter()
                    .map(|e| e.path.rsplit('/').next().unwrap_or(""))
                    .collect();
                problems.push(format!(
                    "layer {layer} ({class}): the file's weights {entries:?} do not give {slots:?} ({why})"
                ));
                continue;
            }
        };
        let is_conv = graph
            .nodes
            .iter()
            .any(|n| n.layer == *layer && matches!(n.op, Op::Conv(_) | Op::DepthwiseConv(_)));
        let mut ok = true;
        for (slot, dpath) in found {
            let key = format!("{layer}.{slot}");
            let Some(want) = graph.params.get(&key).map(|t| t.shape.clone()) else {
                problems.push(format!("layer {layer}: the model has no {slot}"));
                ok = false;
                continue;
            };
            match file.dataset_shape(&dpath)? {
                Some(got) if got == want => {
                    let flip = theano && is_conv && slot == "kernel";
                    plan.push((key, slot, dpath, want, flip));
                }
                Some(got) => {
                    problems.push(format!(
                        "layer {layer} ({class}): {slot} has shape {got:?} in the file, the model's is {want:?}"
                    ));
                    ok = false;
                }
                None => {
                    problems.push(format!("layer {layer}: dataset {dpath} is missing"));
                    ok = false;
                }
            }
        }
        if ok {
            loaded.push(layer.clone());
        }
    }
    let model_layers: std::collections::HashSet<&str> =
        graph.layers.iter().map(|l| l.path.as_str()).collect();
    for (group, entries) in &index.groups {
        if !entries.is_empty() && !model_layers.contains(group.as_str()) {
            problems.push(format!(
                "layer {group}: in the file ({} weights), not in the model",
                entries.len()
            ));
        }
    }
    if loaded.is_empty() && problems.is_empty() {
        problems.push("no layer of the model has weights in the file".into());
    }
    if !problems.is_empty() {
        return Err(Error::BadFormat {
            file: path.to_path_buf(),
            what: format!(
                "weights by layer name into {} ({} problem(s))",
                graph.name,
                problems.len()
            ),
            message: format!(
                "\n{}",
                problems
                    .iter()
                    .map(|p| format!("  - {p}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        });
    }
    let mut tensors = Vec::with_capacity(plan.len());
    for (key, _slot, dpath, want, flip) in &plan {
        let t = file.read_tensor(dpath, Some(want))?;
        let t = if *flip {
            crate::layout::flip_spatial(&t)
        } else {
            t
        };
        tensors.push((key.clone(), t));
    }
    let n = tensors.len();
    for (key, t) in tensors {
        graph.params.insert(key, t);
    }
    Ok(LoadReport {
        file: path.display().to_string(),
        backend,
        keras_version: index.keras_version.clone(),
        kernels_flipped: theano,
        loaded,
        kept,
        tensors: n,
    })
}

/// The slot names [`WeightIndex::find`] knows.
fn static_slot(s: &str) -> Option<&'static str> {
    const SLOTS: &[&str] = &[
        "kernel",
        "bias",
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
        "depthwise_kernel",
        "pointwise_kernel",
        "alpha",
    ];
    SLOTS.iter().copied().find(|k| *k == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_list_the_four() {
        for net in PatchNet::ALL {
            assert_eq!(net.name().parse::<PatchNet>().unwrap(), net);
        }
        let e = "resnet18".parse::<PatchNet>().unwrap_err().to_string();
        for n in ["resnet50", "vgg16", "vgg19", "yaroslav"] {
            assert!(e.contains(n), "{e}");
        }
        assert_eq!(PatchNet::Resnet50.default_top_layer_nb(), Some(162));
        assert_eq!(PatchNet::Vgg16.default_top_layer_nb(), Some(15));
        assert_eq!(PatchNet::Vgg19.default_top_layer_nb(), Some(17));
        assert_eq!(PatchNet::Yaroslav.default_top_layer_nb(), None);
        assert_eq!(PatchNet::Yaroslav.input_channels(), 1);
        assert!(PatchNet::Yaroslav.imagenet_notop_file().is_none());
        assert!(IMAGENET_WEIGHTS_HELP.contains(IMAGENET_RELEASES));
    }

    #[test]
    fn bad_options_are_refused() {
        for o in [
            PatchNetOptions {
                classes: 0,
                ..Default::default()
            },
            PatchNetOptions {
                hidden_dropout: 1.0,
                ..Default::default()
            },
            PatchNetOptions {
                weight_decay: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(patch_classifier_keras(PatchNet::Vgg16, &o).is_err());
        }
    }

    /// c1 (conv) -> b1 (BN) -> c2 or c9 (conv) -> GAP -> optional Dense `top`.
    fn tiny(c1: usize, extra: bool, head: bool, seed: u64) -> Graph {
        let mut b = ModelBuilder::new(seed);
        let i = b.input((None, None), 3, None);
        let x = b
            .conv((&i, 0), c1, 3, 1, "same", "linear", Some("c1"))
            .unwrap();
        let x = b.bn(&x, 3, Some("b1")).unwrap();
        let last = if extra { "c9" } else { "c2" };
        let x = b
            .conv((&x, 0), 4, 1, 1, "valid", "relu", Some(last))
            .unwrap();
        let x = b.gap(&x, None).unwrap();
        let out = if head {
            b.dense(&x, 2, "softmax", None, None, Some("top")).unwrap()
        } else {
            x
        };
        b.finish(&[&i], &out, None)
            .to_graph(built_source("tiny".into()))
            .unwrap()
    }

    fn write(g: &Graph, name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("allconv-nets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        crate::keras::writer::write_h5_from_graph(g, &p).unwrap();
        p
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_the_file_and_layers() {
        let model = tiny(8, false, true, 1);
        // c1 and b1 6 channels wide (wrong shapes), c2 missing, c9 not in the model.
        let bad = write(&tiny(6, true, false, 2), "bad.h5");
        let mut g = model.clone();
        let e = load_weights_by_name(&mut g, &bad).unwrap_err().to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        assert!(
            e.contains("c1 (Conv2D): kernel has shape [3, 3, 3, 6]"),
            "{e}"
        );
        assert!(
            e.contains("b1 (BatchNormalization): gamma has shape [6]"),
            "{e}"
        );
        assert!(
            e.contains("layer c2 (Conv2D): the file has no weights"),
            "{e}"
        );
        assert!(e.contains("layer c9: in the file"), "{e}");
        assert!(!e.contains("layer top"), "the head may be absent: {e}");
        assert_eq!(g.params, model.params, "nothing changes on an error");
        let _ = std::fs::remove_file(&bad);
    }

    #[test]
    fn a_file_without_the_top_loads_and_the_head_keeps_its_weights() {
        let notop = tiny(8, false, false, 3);
        let first = write(&notop, "notop.h5");
        let path = first.clone();
        let mut g = tiny(8, false, true, 4);
        let before = g.params.clone();
        let r = load_weights_by_name(&mut g, &path).unwrap();
        assert_eq!(r.loaded, ["c1", "b1", "c2"]);
        assert_eq!(r.kept, ["top"]);
        assert_eq!(r.tensors, 8);
        for (k, t) in &g.params {
            match notop.params.get(k) {
                Some(want) => assert_eq!(t, want, "{k}"),
                None => assert_eq!(t, &before[k], "{k}"),
            }
        }
        let _ = std::fs::remove_file(&first);
        // A missing layer that is not the head is an error: this file lacks c2.
        let path = write(&tiny(8, true, false, 5), "no_c2.h5");
        let e = load_weights_by_name(&mut g, &path).unwrap_err().to_string();
        assert!(e.contains("c2") && e.contains("c9"), "{e}");
        let _ = std::fs::remove_file(&path);
    }
}
