//! Patch classifier -> whole-image classifier, built the way end2end-all-conv's
//! `add_top_layers` (dm_resnet.py) builds it under Keras 2.0.8: the patch network is cut
//! (`model0 = Model(patch.inputs, cut.output)`), called on a new `Input((H, W, C))` (so the
//! top layers consume it with node index 1), and top layers are added: residual stages of
//! `bottleneck_org` units, VGG blocks, or the heatmap head (average pooling, the patch
//! classifier's own Dense applied per position with relu, max pooling, then FC layers with
//! an optional shortcut, or conv blocks).
//!
//! The pass produces the Keras model as Keras would save it — the `model_config` JSON of
//! Keras 2.0.8 (layer classes, auto-generated names, the order `Container` sorts layers
//! in) and the weights by layer path — and the IR is read from that pair by the same
//! importer that reads `.h5` files ([`crate::keras::graph_from_config`]). So the graph that
//! tract, tch and the ONNX lowering run is exactly the graph the written `.h5` holds.
//!
//! New layers are initialised as Keras 2.0.8 initialises them (he_normal: truncated normal,
//! stddev `sqrt(2 / fan_in)`, cut at 2 stddev; zero biases; BatchNorm gamma 1, beta 0,
//! moving mean 0, moving variance 1), from a seeded generator; the inner network keeps its
//! weights bit for bit; the heatmap Dense takes the patch classifier's Dense weights.

use crate::error::{Error, Result};
use crate::ir::*;
use crate::keras::build::{keras_order, Init, KLayer, ModelBuilder};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

/// `DEPTHxREPETITIONS`: one residual stage or VGG block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stage {
    pub depth: usize,
    pub repetitions: usize,
}

/// The top added on the cut patch network (the recipe).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Top {
    /// `resnet:512x1,512x1:enlarge=2`: residual stages of `bottleneck_org` units (unit 0
    /// strided with a projection shortcut + BatchNorm), then GAP, Dropout, Dense softmax.
    Resnet { stages: Vec<Stage>, enlarge: usize },
    /// `vgg:512x1`: per block, repetitions x [Conv 3x3 same -> BN -> relu -> Dropout], then
    /// MaxPooling 2x2/2; then GAP, Dropout, Dense softmax.
    Vgg { blocks: Vec<Stage> },
    /// `heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut` (FC head), or
    /// `heatmap:avg=7,stride=1,pool=5+resnet:...` / `+vgg:...` (`add_conv`).
    Heatmap {
        avg: usize,
        stride: usize,
        pool: usize,
        after: AfterHeatmap,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AfterHeatmap {
    /// Flatten, Dropout, then `units.len()` x [Dense -> BN -> relu -> Dropout] (units halve
    /// each layer, as `fc_init_units` does), then Dense softmax, or with `shortcut` a Dense
    /// on the FC output plus a Dense on the flattened map, added, then softmax.
    Fc { units: Vec<usize>, shortcut: bool },
    /// Conv blocks on the pooled heatmap (`add_conv=True`).
    Conv(Box<Top>),
}

fn recipe_err(spec: &str, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!(
        "--top {spec:?}: {msg} (recipes: resnet:512x1,512x1:enlarge=2 | vgg:512x1 | heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut | heatmap:avg=7,stride=1,pool=5+vgg:512x1)"
    ))
}

fn parse_stages(spec: &str, list: &str) -> Result<Vec<Stage>> {
    let stages = list
        .split(',')
        .map(|s| {
            let (d, r) = s
                .split_once(['x', 'X'])
                .ok_or_else(|| recipe_err(spec, format!("{s:?} is not DEPTHxREPETITIONS")))?;
            let n = |t: &str| -> Result<usize> {
                t.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0 && n <= 1 << 16)
                    .ok_or_else(|| recipe_err(spec, format!("{t:?} is not a size in 1..65536")))
            };
            Ok(Stage {
                depth: n(d)?,
                repetitions: n(r)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if stages.is_empty() {
        return Err(recipe_err(spec, "no stage"));
    }
    Ok(stages)
}

fn parse_conv_top(spec: &str, s: &str) -> Result<Top> {
    let (kind, rest) = s
        .split_once(':')
        .ok_or_else(|| recipe_err(spec, format!("{s:?} has no ':'")))?;
    match kind {
        "resnet" => {
            let (list, opts) = match rest.split_once(':') {
                Some((l, o)) => (l, Some(o)),
                None => (rest, None),
            };
            // add_top_layers' default bottleneck_enlarge_factor.
            let mut enlarge = 4;
            if let Some(o) = opts {
                let v = o
                    .strip_prefix("enlarge=")
                    .ok_or_else(|| recipe_err(spec, format!("unknown option {o:?}")))?;
                enlarge = v
                    .parse()
                    .ok()
                    .filter(|&e| e > 0 && e <= 64)
                    .ok_or_else(|| recipe_err(spec, format!("enlarge={v:?}")))?;
            }
            Ok(Top::Resnet {
                stages: parse_stages(spec, list)?,
                enlarge,
            })
        }
        "vgg" => Ok(Top::Vgg {
            blocks: parse_stages(spec, rest)?,
        }),
        _ => Err(recipe_err(spec, format!("unknown top {kind:?}"))),
    }
}

impl FromStr for Top {
    type Err = Error;
    fn from_str(spec: &str) -> Result<Top> {
        let s = spec.trim();
        let Some(rest) = s
            .strip_prefix("heatmap:")
            .or(s.strip_prefix("heatmap").filter(|r| r.is_empty()))
        else {
            return parse_conv_top(spec, s);
        };
        let (head, conv) = match rest.split_once('+') {
            Some((h, c)) => (h, Some(parse_conv_top(spec, c)?)),
            None => (rest, None),
        };
        // add_top_layers / image_clf_train defaults.
        let (mut avg, mut stride, mut pool) = (7, 1, 5);
        let mut units = vec![64, 32];
        let mut shortcut = false;
        for item in head.split(',').filter(|i| !i.is_empty()) {
            let num = |v: &str| -> Result<usize> {
                v.parse()
                    .ok()
                    .filter(|&n| n > 0 && n <= 1 << 16)
                    .ok_or_else(|| recipe_err(spec, format!("{item:?}: not a size")))
            };
            match item.split_once('=') {
                Some(("avg", v)) => avg = num(v)?,
                Some(("stride", v)) => stride = num(v)?,
                Some(("pool", v)) => pool = num(v)?,
                Some(("fc", v)) => {
                    units = v.split('-').map(num).collect::<Result<Vec<_>>>()?;
                    // fc_init_units halves per layer (Python 2 integer division).
                    for w in units.windows(2) {
                        if w[1] != w[0] / 2 {
                            return Err(recipe_err(
                                spec,
                                format!(
                                    "fc={v}: add_top_layers halves the units each layer ({} -> {})",
                                    w[0],
                                    w[0] / 2
                                ),
                            ));
                        }
                    }
                }
                None if item == "shortcut" => shortcut = true,
                _ => return Err(recipe_err(spec, format!("unknown heatmap option {item:?}"))),
            }
        }
        let after = match conv {
            Some(c) => {
                if shortcut || head.contains("fc=") {
                    return Err(recipe_err(
                        spec,
                        "fc/shortcut and conv blocks after the heatmap exclude each other (add_conv)",
                    ));
                }
                AfterHeatmap::Conv(Box::new(c))
            }
            None => AfterHeatmap::Fc { units, shortcut },
        };
        Ok(Top::Heatmap {
            avg,
            stride,
            pool,
            after,
        })
    }
}

impl Top {
    /// The recipe in the CLI's syntax.
    pub fn to_spec(&self) -> String {
        let stages = |v: &[Stage]| {
            v.iter()
                .map(|s| format!("{}x{}", s.depth, s.repetitions))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Top::Resnet { stages: s, enlarge } => format!("resnet:{}:enlarge={enlarge}", stages(s)),
            Top::Vgg { blocks } => format!("vgg:{}", stages(blocks)),
            Top::Heatmap {
                avg,
                stride,
                pool,
                after,
            } => {
                let head = format!("heatmap:avg={avg},stride={stride},pool={pool}");
                match after {
                    AfterHeatmap::Fc { units, shortcut } => format!(
                        "{head},fc={}{}",
                        units
                            .iter()
                            .map(|u| u.to_string())
                            .collect::<Vec<_>>()
                            .join("-"),
                        if *shortcut { ",shortcut" } else { "" }
                    ),
                    AfterHeatmap::Conv(c) => format!("{head}+{}", c.to_spec()),
                }
            }
        }
    }
}

/// What to build. Defaults are `image_clf_train.py`'s: 2 classes, dropout 0, L2 1e-4.
#[derive(Debug, Clone)]
pub struct ReheadOptions {
    pub top: Top,
    /// (H, W) of the whole image.
    pub input_size: (usize, usize),
    /// The last layer of the patch network kept; `None`: found per backbone.
    pub cut: Option<String>,
    pub classes: usize,
    pub dropout: f32,
    pub weight_decay: f32,
    pub seed: u64,
}

impl ReheadOptions {
    pub fn new(top: Top, input_size: (usize, usize)) -> ReheadOptions {
        ReheadOptions {
            top,
            input_size,
            cut: None,
            classes: 2,
            dropout: 0.0,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

/// What [`rehead`] built.
#[derive(Debug, Clone, Serialize)]
pub struct ReheadReport {
    pub recipe: String,
    pub input_size: [usize; 2],
    pub channels: usize,
    /// The patch layer the network was cut after, and how it was chosen.
    pub cut: String,
    pub cut_rule: String,
    /// Keras name of the nested patch network (`model_1`).
    pub inner_model: String,
    /// Layers of the patch network kept.
    pub inner_layers: usize,
    pub inner_params: usize,
    /// New top-level layers, in the model's layer order.
    pub new_layers: Vec<String>,
    pub new_params: usize,
    /// The Dense that took the patch classifier's weights (heatmap recipes).
    pub heatmap_dense: Option<String>,
    /// The final classification Dense layer(s).
    pub final_dense: Vec<String>,
    /// `add_top_layers`' `top_layer_nb`: training stage 1 freezes the model's first this
    /// many layers (2 without a heatmap: input and inner model; 8 with one).
    pub top_layer_nb: usize,
    /// Those layers by name, in the model's layer order (with the heatmap they reach into
    /// the top: `flatten_1`/`dropout_2`, or `conv2d_1`/`batch_normalization_1` with conv
    /// blocks, exactly as the paper's code freezes them).
    pub frozen_in_stage1: Vec<String>,
    pub output_shape: Vec<usize>,
    pub seed: u64,
}

pub use crate::keras::build::KerasModel;

/// The top layers in `add_top_layers`' creation order, on the shared Keras model builder
/// (he_normal kernels, `l2(weight_decay)`, `Dropout(dropout)` throughout).
struct TopBuilder<'a> {
    opts: &'a ReheadOptions,
    b: ModelBuilder,
}

impl TopBuilder<'_> {
    fn conv(
        &mut self,
        x: (&str, usize),
        filters: usize,
        k: usize,
        strides: usize,
        padding: &str,
    ) -> Result<String> {
        self.b.conv(x, filters, k, strides, padding, "linear", None)
    }

    /// `BatchNormalization(axis=CHANNEL_AXIS)` (3) in the residual units,
    /// `BatchNormalization()` (-1) in VGG blocks and FC layers.
    fn bn(&mut self, x: &str, axis: i64) -> Result<String> {
        self.b.bn(x, axis, None)
    }

    fn activation(&mut self, x: &str, act: &str) -> Result<String> {
        self.b.activation(x, act, None)
    }

    fn dropout(&mut self, x: &str) -> Result<String> {
        self.b.dropout(x, self.opts.dropout as f64, None)
    }

    fn pool(
        &mut self,
        x: (&str, usize),
        class: &'static str,
        pool: usize,
        strides: usize,
    ) -> Result<String> {
        self.b.pool(x, class, pool, strides, None)
    }

    /// A Dense; `weights`: given (kernel, bias) instead of initialised + zeros.
    fn dense(
        &mut self,
        x: &str,
        units: usize,
        activation: &str,
        init: Init,
        weights: Option<(Tensor, Tensor)>,
    ) -> Result<String> {
        self.b
            .dense(x, units, activation, Some(init), weights, None)
    }

    /// `bottleneck_org`: conv1x1(strides)-BN-relu-Dropout, conv3x3-BN-relu-Dropout,
    /// conv1x1(depth*enlarge)-BN; projection shortcut conv1x1(strides, valid)-BN on unit 0;
    /// add, relu, Dropout.
    fn bottleneck(
        &mut self,
        x: (&str, usize),
        depth: usize,
        strides: usize,
        identity: bool,
        enlarge: usize,
    ) -> Result<String> {
        let c1 = self.conv(x, depth, 1, strides, "same")?;
        let b1 = self.bn(&c1, 3)?;
        let a1 = self.activation(&b1, "relu")?;
        let d1 = self.dropout(&a1)?;
        let c2 = self.conv((&d1, 0), depth, 3, 1, "same")?;
        let b2 = self.bn(&c2, 3)?;
        let a2 = self.activation(&b2, "relu")?;
        let d2 = self.dropout(&a2)?;
        let c3 = self.conv((&d2, 0), depth * enlarge, 1, 1, "same")?;
        let residual = self.bn(&c3, 3)?;
        let shortcut = if identity {
            x.0.to_string()
        } else {
            let s = self.conv(x, depth * enlarge, 1, strides, "valid")?;
            self.bn(&s, 3)?
        };
        let sum = self.b.add(&shortcut, &residual, None)?;
        let r = self.activation(&sum, "relu")?;
        self.dropout(&r)
    }

    /// Conv blocks then GAP and Dropout (`add_residual_blocks` / `add_vgg_blocks`).
    fn conv_top(&mut self, top: &Top, x: (&str, usize)) -> Result<String> {
        let mut cur = (x.0.to_string(), x.1);
        match top {
            Top::Resnet { stages, enlarge } => {
                for s in stages {
                    for i in 0..s.repetitions {
                        let (strides, identity) = if i == 0 { (2, false) } else { (1, true) };
                        let o =
                            self.bottleneck((&cur.0, cur.1), s.depth, strides, identity, *enlarge)?;
                        cur = (o, 0);
                    }
                }
            }
            Top::Vgg { blocks } => {
                for b in blocks {
                    for _ in 0..b.repetitions {
                        let c = self.conv((&cur.0, cur.1), b.depth, 3, 1, "same")?;
                        let n = self.bn(&c, -1)?;
                        let a = self.activation(&n, "relu")?;
                        cur = (self.dropout(&a)?, 0);
                    }
                    cur = (self.pool((&cur.0, cur.1), "MaxPooling2D", 2, 2)?, 0);
                }
            }
            Top::Heatmap { .. } => {
                return Err(Error::Other("a heatmap cannot follow a heatmap".into()))
            }
        }
        let g = self.b.gap(&cur.0, None)?;
        self.dropout(&g)
    }
}

/// Spatial sizes through the cut network (the patch graph's own shape inference) and the
/// recipe, to refuse a size that is too small and name the smallest that works.
struct SizeProbe<'a> {
    /// The patch graph without weights: shapes only.
    skeleton: Graph,
    cut: ValueId,
    top: &'a Top,
}

impl<'a> SizeProbe<'a> {
    fn new(patch: &Graph, cut: ValueId, top: &'a Top) -> SizeProbe<'a> {
        // Only what the cut depends on: the patch's head (a 7x7 avg_pool, a Flatten) may not
        // fit sizes the whole-image model takes.
        let mut needed = vec![false; patch.values.len()];
        needed[cut] = true;
        for n in patch.nodes.iter().rev() {
            if needed[n.output] {
                for &i in &n.inputs {
                    needed[i] = true;
                }
            }
        }
        let skeleton = Graph {
            name: patch.name.clone(),
            inputs: patch.inputs.clone(),
            outputs: vec![cut],
            values: patch.values.clone(),
            nodes: patch
                .nodes
                .iter()
                .filter(|n| needed[n.output])
                .cloned()
                .collect(),
            ..Default::default()
        };
        SizeProbe { skeleton, cut, top }
    }

    fn cut_size(&self, h: usize, w: usize) -> std::result::Result<(usize, usize), String> {
        let mut g = self.skeleton.clone();
        g.infer_shapes(Some(&[h, w]))
            .map_err(|e| format!("the patch network itself fails: {e}"))?;
        let s = &g.values[self.cut].shape;
        match (
            s.first().and_then(Dim::known),
            s.get(1).and_then(Dim::known),
        ) {
            (Some(a), Some(b)) if a > 0 && b > 0 => Ok((a, b)),
            _ => Err(format!("the cut output is {s:?}")),
        }
    }

    /// One axis through a valid window.
    fn window(x: usize, k: usize, s: usize, what: &str) -> std::result::Result<usize, String> {
        if x < k {
            Err(format!("{what} ({k}x{k}) gets a map of {x} px"))
        } else {
            Ok((x - k) / s + 1)
        }
    }

    /// The pooled heatmap's size for heatmap recipes (`None` otherwise).
    fn top_sizes(
        top: &Top,
        (mut a, mut b): (usize, usize),
    ) -> std::result::Result<Option<(usize, usize)>, String> {
        match top {
            Top::Resnet { .. } => Ok(None),
            Top::Vgg { blocks } => {
                for (i, _) in blocks.iter().enumerate() {
                    let what = format!("the 2x2 max pooling of VGG block {}", i + 1);
                    a = Self::window(a, 2, 2, &what)?;
                    b = Self::window(b, 2, 2, &what)?;
                }
                Ok(None)
            }
            Top::Heatmap {
                avg,
                stride,
                pool,
                after,
            } => {
                a = Self::window(a, *avg, *stride, "the heatmap's average pooling")?;
                b = Self::window(b, *avg, *stride, "the heatmap's average pooling")?;
                a = Self::window(a, *pool, *pool, "the heatmap's max pooling")?;
                b = Self::window(b, *pool, *pool, "the heatmap's max pooling")?;
                if let AfterHeatmap::Conv(t) = after {
                    Self::top_sizes(t, (a, b))?;
                }
                Ok(Some((a, b)))
            }
        }
    }

    fn fits(&self, h: usize, w: usize) -> std::result::Result<Option<(usize, usize)>, String> {
        let c = self.cut_size(h, w)?;
        Self::top_sizes(self.top, c)
            .map_err(|e| format!("the cut output is {}x{}, and {e}", c.0, c.1))
    }

    /// Smallest (H, W) that works: each axis alone (every op acts per axis), by bisection.
    fn smallest(&self) -> Option<(usize, usize)> {
        const BIG: usize = 1 << 16;
        let first = |ok: &dyn Fn(usize) -> bool| -> Option<usize> {
            if !ok(BIG) {
                return None;
            }
            let (mut lo, mut hi) = (0, BIG); // ok(hi), !ok(lo) or lo == 0
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if ok(mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            Some(hi)
        };
        let h = first(&|h| self.fits(h, BIG).is_ok())?;
        let w = first(&|w| self.fits(BIG, w).is_ok())?;
        Some((h, w))
    }
}

/// The patch classifier's final Dense (the heatmap Dense copies it) and its input layer.
fn classifier_dense(g: &Graph) -> Result<&Node> {
    let out = *g
        .outputs
        .first()
        .ok_or_else(|| Error::Other("the patch model has no output".into()))?;
    let Producer::Node(i) = g.values[out].producer else {
        return Err(Error::Other("the patch model's output is its input".into()));
    };
    let n = &g.nodes[i];
    let n = match &n.op {
        Op::Activation(_) => match g.values[n.inputs[0]].producer {
            Producer::Node(j) => &g.nodes[j],
            Producer::Input(_) => n,
        },
        _ => n,
    };
    match n.op {
        Op::Dense(_) => Ok(n),
        _ => Err(Error::Other(format!(
            "the heatmap recipe copies the patch classifier's final Dense, but the model ends in {} ({})",
            n.layer, n.class
        ))),
    }
}

/// The default cut, from the layer names and structure of the paper's backbones.
fn default_cut(patch: &Graph, names: &[String]) -> Result<(String, String)> {
    let has = |n: &str| names.iter().any(|x| x == n);
    if has("avg_pool") {
        // Keras 2.0.8 ResNet50: the last relu, before AveragePooling2D avg_pool.
        let node = patch
            .nodes
            .iter()
            .find(|n| n.layer == "avg_pool")
            .ok_or_else(|| Error::Other("avg_pool has no node".into()))?;
        if let Producer::Node(i) = patch.values[node.inputs[0]].producer {
            return Ok((
                patch.nodes[i].layer.clone(),
                "ResNet50: the layer before avg_pool".into(),
            ));
        }
    }
    for (layer, rule) in [
        ("block6_pool", "YaroslavNet: block6_pool"),
        ("block5_pool", "VGG16/19: block5_pool"),
    ] {
        if has(layer) {
            return Ok((layer.into(), rule.into()));
        }
    }
    Err(Error::Other(
        "no default cut: the model is not ResNet50 (avg_pool), VGG16/19 (block5_pool) or YaroslavNet (block6_pool); name the last layer to keep with --cut".into(),
    ))
}

fn config_layers(cfg: &Value) -> Option<&Vec<Value>> {
    cfg.get("config")?.get("layers")?.as_array()
}

fn inbound_of(entry: &Value) -> Vec<(String, usize)> {
    entry
        .get("inbound_nodes")
        .and_then(Value::as_array)
        .and_then(|n| n.first())
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| {
                    let a = r.as_array()?;
                    Some((
                        a.first()?.as_str()?.to_string(),
                        a.get(1)?.as_u64()? as usize,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Re-head `patch` into a whole-image classifier: the Keras model (config + weights) and
/// what was built. [`rehead`] turns it into the IR.
pub fn rehead_keras(patch: &Graph, opts: &ReheadOptions) -> Result<(KerasModel, ReheadReport)> {
    let (h, w) = opts.input_size;
    if h == 0 || w == 0 || opts.classes == 0 {
        return Err(Error::Other(
            "input size and classes must be positive".into(),
        ));
    }
    if !(0.0..1.0).contains(&opts.dropout) || !(opts.weight_decay >= 0.0) {
        return Err(Error::Other(format!(
            "dropout {} must be in [0, 1) and weight decay {} non-negative",
            opts.dropout, opts.weight_decay
        )));
    }
    let text = patch.source.model_config.as_deref().ok_or_else(|| {
        Error::Other(format!(
            "{}: the graph carries no Keras model_config",
            patch.source.file
        ))
    })?;
    let cfg: Value = serde_json::from_str(text)
        .map_err(|e| Error::Other(format!("{}: model_config: {e}", patch.source.file)))?;
    let class = cfg.get("class_name").and_then(Value::as_str).unwrap_or("");
    let version = patch.source.keras_version.as_deref().unwrap_or("");
    if class != "Model" || !(version.starts_with("2.0") || version.starts_with("2.1")) {
        return Err(Error::Other(format!(
            "{}: re-heading writes the Keras 2.0.8 form the paper's code saves and needs a Keras 2.0-2.1 functional patch model (class Model); this one is Keras {} {class:?}",
            patch.source.file,
            if version.is_empty() { "of unknown version" } else { version }
        )));
    }
    let entries = config_layers(&cfg).ok_or_else(|| {
        Error::Other(format!("{}: model_config has no layers", patch.source.file))
    })?;
    if patch.inputs.len() != 1 || patch.inputs[0].shape.len() != 3 {
        return Err(Error::Other(
            "re-heading needs a single image input (H, W, C)".into(),
        ));
    }
    if patch.inputs[0].data_format != DataFormat::ChannelsLast {
        return Err(Error::Other("re-heading builds channels_last models, as the paper's code does; this patch model is channels_first".into()));
    }
    let names: Vec<String> = entries
        .iter()
        .filter_map(|e| e.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    if entries
        .iter()
        .any(|e| e.get("config").and_then(|c| c.get("layers")).is_some())
    {
        return Err(Error::Other(
            "the patch model nests another model; re-heading takes a flat patch classifier".into(),
        ));
    }
    let (cut, cut_rule) = match &opts.cut {
        Some(c) if names.contains(c) => (c.clone(), "--cut".to_string()),
        Some(c) => {
            return Err(Error::Other(format!(
                "--cut {c}: no such layer in {} (its layers end with {:?})",
                patch.source.file,
                &names[names.len().saturating_sub(6)..]
            )))
        }
        None => default_cut(patch, &names)?,
    };

    // The patch network up to the cut: every ancestor of the cut layer.
    let by_name: HashMap<&str, &Value> = entries
        .iter()
        .filter_map(|e| Some((e.get("name")?.as_str()?, e)))
        .collect();
    let mut keep: HashSet<String> = HashSet::new();
    let mut stack = vec![cut.clone()];
    while let Some(l) = stack.pop() {
        if keep.insert(l.clone()) {
            if let Some(e) = by_name.get(l.as_str()) {
                stack.extend(inbound_of(e).into_iter().map(|(n, _)| n));
            }
        }
    }
    // Fully convolutional up to the cut: nothing that fixes or drops the spatial size.
    for n in patch.nodes.iter().filter(|n| keep.contains(&n.layer)) {
        let flat = match &n.op {
            Op::Flatten | Op::Reshape { .. } | Op::GlobalPool(_) | Op::RepeatVector { .. } => true,
            Op::Dense(_) => n
                .inputs
                .first()
                .is_some_and(|&v| patch.values[v].shape.len() < 3),
            _ => false,
        };
        if flat {
            return Err(Error::Other(format!(
                "{}: not fully convolutional up to {cut}: layer {} ({}) fixes or removes the spatial size; choose an earlier --cut",
                patch.source.file, n.layer, n.class
            )));
        }
    }
    let cut_value = patch
        .layers
        .iter()
        .find(|l| l.path == cut)
        .and_then(|l| l.output)
        .ok_or_else(|| Error::Other(format!("layer {cut} has no output value")))?;
    let cut_channels = patch.values[cut_value]
        .shape
        .last()
        .and_then(Dim::known)
        .ok_or_else(|| Error::Other(format!("{cut}: unknown channel count")))?;
    let channels = patch.inputs[0].shape[2]
        .known()
        .ok_or_else(|| Error::Other("the patch model's channel count is unknown".into()))?;

    let probe = SizeProbe::new(patch, cut_value, &opts.top);
    let map = match probe.fits(h, w) {
        Ok(m) => m.unwrap_or((0, 0)),
        Err(why) => {
            let smallest = probe
                .smallest()
                .map(|(a, b)| format!("the smallest size that works is {a}x{b}"))
                .unwrap_or_else(|| "no size up to 65536 works".into());
            return Err(Error::Other(format!(
                "input {h}x{w} is too small for {} on {}: {why}; {smallest}",
                opts.top.to_spec(),
                patch.source.file
            )));
        }
    };

    let mut mb = ModelBuilder::new(opts.seed ^ 0xA11C_0417);
    mb.kernel_init = Init::HeNormal;
    mb.kernel_l2 = Some(opts.weight_decay);
    let input_name = mb.auto_name("input");
    let inner_name = mb.auto_name("model");
    // The inner model: the kept layers, in Keras's order for Model(patch.inputs, cut).
    let inner_layers: Vec<KLayer> = entries
        .iter()
        .filter(|e| {
            e.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| keep.contains(n))
        })
        .map(|e| KLayer {
            name: e["name"].as_str().unwrap_or_default().to_string(),
            class: e
                .get("class_name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            config: e.get("config").cloned().unwrap_or(Value::Null),
            inbound: inbound_of(e),
            nested: None,
        })
        .collect();
    let patch_inputs = cfg["config"]["input_layers"].clone();
    let order = keras_order(&inner_layers, std::slice::from_ref(&cut));
    let inner_config = json!({
        "name": inner_name,
        "layers": order.iter().map(|&i| {
            // Keep each layer's entry as the patch file has it.
            let e = by_name[inner_layers[i].name.as_str()];
            (*e).clone()
        }).collect::<Vec<_>>(),
        "input_layers": patch_inputs,
        "output_layers": [[cut, 0, 0]],
    });
    let mut params: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut inner_params = 0;
    for (k, t) in &patch.params {
        let layer = k.rsplit_once('.').map(|(l, _)| l).unwrap_or(k);
        if keep.contains(layer) {
            inner_params += t.len();
            params.insert(format!("{inner_name}/{k}"), t.clone());
        }
    }

    let input_name = mb.input((Some(h), Some(w)), channels, Some(&input_name));
    mb.nested(
        inner_name.clone(),
        inner_config,
        (&input_name, 0),
        cut_channels,
    );
    let mut b = TopBuilder { opts, b: mb };
    let mut heatmap_dense = None;
    let final_dense;
    let top_layer_nb;
    // The model is called once on the new input: its output is node index 1.
    let block = (inner_name.clone(), 1);
    match &opts.top {
        Top::Resnet { .. } | Top::Vgg { .. } => {
            top_layer_nb = 2;
            let x = b.conv_top(&opts.top, (&block.0, block.1))?;
            final_dense = vec![b.dense(&x, opts.classes, "softmax", Init::HeNormal, None)?];
        }
        Top::Heatmap {
            avg,
            stride,
            pool,
            after,
        } => {
            top_layer_nb = 8;
            let clf = classifier_dense(patch)?;
            let kernel = patch.params.get(&clf.param_key("kernel")).cloned();
            let bias = patch.params.get(&clf.param_key("bias")).cloned();
            let (Some(kernel), Some(bias)) = (kernel, bias) else {
                return Err(Error::Other(format!("{}: the classifier Dense has no bias; the heatmap Dense copies kernel and bias", clf.layer)));
            };
            if kernel.shape.first() != Some(&cut_channels) {
                return Err(Error::Other(format!(
                    "the classifier Dense {} takes {:?} features, the cut {cut} gives {cut_channels} channels: the heatmap cannot apply it per position",
                    clf.layer, kernel.shape.first()
                )));
            }
            let classes = kernel.shape[1];
            debug_assert!(map.0 > 0 && map.1 > 0);
            let p = b.pool((&block.0, block.1), "AveragePooling2D", *avg, *stride)?;
            let d = b.dropout(&p)?;
            let hm = b.dense(
                &d,
                classes,
                "relu",
                Init::GlorotUniform,
                Some((kernel, bias)),
            )?;
            heatmap_dense = Some(hm.clone());
            let m = b.pool((&hm, 0), "MaxPooling2D", *pool, *pool)?;
            match after {
                AfterHeatmap::Conv(top) => {
                    let x = b.conv_top(top, (&m, 0))?;
                    final_dense =
                        vec![b.dense(&x, opts.classes, "softmax", Init::HeNormal, None)?];
                }
                AfterHeatmap::Fc { units, shortcut } => {
                    let (mh, mw) = map;
                    let f = b.b.flatten(&m, mh * mw * classes, None);
                    let mut x = b.dropout(&f)?;
                    for &u in units {
                        let fc = b.dense(&x, u, "linear", Init::HeNormal, None)?;
                        let n = b.bn(&fc, -1)?;
                        let a = b.activation(&n, "relu")?;
                        x = b.dropout(&a)?;
                    }
                    if *shortcut {
                        let d1 = b.dense(&x, opts.classes, "linear", Init::HeNormal, None)?;
                        let d2 = b.dense(&f, opts.classes, "linear", Init::HeNormal, None)?;
                        let s = b.b.add(&d1, &d2, None)?;
                        b.activation(&s, "softmax")?;
                        final_dense = vec![d1, d2];
                    } else {
                        final_dense =
                            vec![b.dense(&x, opts.classes, "softmax", Init::HeNormal, None)?];
                    }
                }
            }
        }
    }
    let mut mb = b.b;
    let output = mb.layers.last().map(|l| l.name.clone()).unwrap_or_default();
    let order = mb.order(&output);
    let frozen_in_stage1 = order.iter().take(top_layer_nb).cloned().collect();
    let new_params = mb.params.values().map(Tensor::len).sum();
    let new_layers = order
        .iter()
        .filter(|n| **n != input_name && **n != inner_name)
        .cloned()
        .collect();
    // The nested model's weights are under its name; the builder holds the new layers'.
    params.extend(std::mem::take(&mut mb.params));
    let KerasModel { config, .. } = mb.finish(&[&input_name], &output, None);
    let report = ReheadReport {
        recipe: opts.top.to_spec(),
        input_size: [h, w],
        channels,
        cut: cut.clone(),
        cut_rule,
        inner_model: inner_name,
        inner_layers: keep.len(),
        inner_params,
        new_layers,
        new_params,
        heatmap_dense,
        final_dense,
        top_layer_nb,
        frozen_in_stage1,
        output_shape: vec![],
        seed: opts.seed,
    };
    Ok((KerasModel { config, params }, report))
}

/// Re-head `patch` (see the module doc): the whole-image graph, carrying its Keras 2.0.8
/// `model_config`, so the `.h5` writer, the ONNX lowering, tract and tch take it as it is.
pub fn rehead(patch: &Graph, opts: &ReheadOptions) -> Result<(Graph, ReheadReport)> {
    let (km, mut report) = rehead_keras(patch, opts)?;
    let source = Source {
        file: format!("{} re-headed ({})", patch.source.file, report.recipe),
        keras_version: Some("2.0.8".into()),
        // The inner network computes what it computed in training (its backend's `same`
        // rule); the `.h5` writer labels kernels TensorFlow-oriented, as for any source.
        backend: patch.source.backend.clone(),
        dialect: "Keras 2.0-2.2 (Model, keras_version 2.0.8)".into(),
        model_class: "Model".into(),
        warnings: vec![],
        // Filled in with the config's text.
        model_config: None,
    };
    let g = km.to_graph(source)?;
    if let Some(&o) = g.outputs.first() {
        report.output_shape = g.values[o]
            .shape
            .iter()
            .map(|d| d.known().unwrap_or(0))
            .collect();
    }
    Ok((g, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_parse_and_print_back() {
        for (spec, back) in [
            (
                "resnet:512x1,512x1:enlarge=2",
                "resnet:512x1,512x1:enlarge=2",
            ),
            ("resnet:512x3", "resnet:512x3:enlarge=4"),
            ("vgg:512x1", "vgg:512x1"),
            (
                "heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut",
                "heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut",
            ),
            ("heatmap", "heatmap:avg=7,stride=1,pool=5,fc=64-32"),
            (
                "heatmap:avg=3,pool=2+vgg:32x1",
                "heatmap:avg=3,stride=1,pool=2+vgg:32x1",
            ),
        ] {
            let t: Top = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(t.to_spec(), back);
            assert_eq!(back.parse::<Top>().unwrap(), t);
        }
        for bad in [
            "resnet",
            "resnet:512",
            "resnet:0x1",
            "vgg:",
            "mlp:3x3",
            "heatmap:fc=16-4",
            "heatmap:avg=x",
            "heatmap:fc=16-8+vgg:32x1",
            "heatmap:pool=2+heatmap:avg=1",
            "resnet:512x1:widen=2",
        ] {
            assert!(bad.parse::<Top>().is_err(), "{bad} should be refused");
        }
    }
}
