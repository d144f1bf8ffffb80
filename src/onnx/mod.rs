//! IR -> ONNX.
//!
//! Design:
//! - Internally channels-first. The graph input keeps the Keras layout (NHWC for
//!   `channels_last` models) unless `nchw_input`; the first op that needs NCHW adds the
//!   single Transpose. Every IR value is tracked with its physical layout
//!   ([`lower::Val`]); axis-sensitive ops (Flatten, Dense on >2-D, Softmax, Concatenate,
//!   BatchNorm, Reshape/Permute, PRelu alpha, padding/cropping) map Keras axes through
//!   `src/layout.rs`.
//! - Explicit `pads`, never `auto_pad`. `same` padding follows the backend that trained
//!   the model ([`lower::SameRule`]); Theano's rule does not depend on the size.
//!   TensorFlow's rule for a strided window depends on the input size modulo the stride:
//!   with a size (or where no such window exists) its pads are static attributes, as
//!   always; in a symbolic-size export they are computed in the graph (Shape -> Gather ->
//!   int64 arithmetic -> Concat -> Pad, then the op with zero pads; -inf before a max
//!   pool, and an average pool divided by the share of real pixels per window), so one
//!   file serves every size. Not `auto_pad=SAME_UPPER`: onnxruntime 1.32 refuses it with
//!   dilations and computes negative pads for a pool window smaller than its stride.
//! - Graph input `input`, graph output `output` (`output_{i}` for several), in Keras
//!   layout. Initializers are `{layer}.{slot}` (in ONNX layout), node names the Keras
//!   layer path (helper nodes `{layer}/Op`).
//! - `debug_outputs` adds every IR node's output, in Keras layout, as a graph output
//!   named by the node name.

pub mod builder;
pub mod f16;
pub mod lower;
pub mod meta;
pub mod prep;

use crate::error::{Error, Result};
use crate::ir::*;
use crate::layout;
use builder::*;
use lower::{Lowering, SameRule, Val};
use onnx_protobuf::{GraphProto, Message, ModelProto, OperatorSetIdProto};
use serde::Serialize;
use std::collections::BTreeMap;

pub use prep::{InGraphPreprocess, Tta};

pub const DEFAULT_OPSET: i64 = 13;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// ONNX opset, >= 13.
    pub opset: i64,
    /// Fix the spatial size (static shapes); `None` keeps symbolic "height"/"width".
    pub input_size: Option<Vec<usize>>,
    /// The model takes NCHW instead of the Keras layout.
    pub nchw_input: bool,
    pub preprocess: Option<InGraphPreprocess>,
    pub tta: Option<Tta>,
    /// Expose every node's output (Keras layout) as an extra graph output.
    pub debug_outputs: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            input_size: None,
            nchw_input: false,
            preprocess: None,
            tta: None,
            debug_outputs: false,
        }
    }
}

/// Where an IR node's output lives in the exported graph.
#[derive(Debug, Clone, Serialize)]
pub struct NodeTensor {
    /// The ONNX tensor holding it.
    pub tensor: String,
    /// Its physical layout (`layout[i]` = Keras axis at physical axis `i`).
    pub layout: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Exported {
    pub model: ModelProto,
    pub input_names: Vec<String>,
    pub output_names: Vec<String>,
    /// IR node name -> tensor. With `debug_outputs`, each node name is also a graph output.
    pub nodes: BTreeMap<String, NodeTensor>,
}

impl Exported {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        model_bytes(&self.model)
    }
}

/// A model as ONNX bytes.
pub fn model_bytes(model: &ModelProto) -> Result<Vec<u8>> {
    model
        .write_to_bytes()
        .map_err(|e| Error::Other(format!("serialising ONNX: {e}")))
}

/// Keras bilinear UpSampling: Keras < 2.3 resized with align_corners=False and no half
/// pixel centres (`asymmetric`); tf.keras (TF 2) uses `half_pixel`.
fn bilinear_mode(src: &Source) -> &'static str {
    match src.keras_version.as_deref() {
        Some(v) if v.ends_with("-tf") => "half_pixel",
        Some(v) => {
            let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            if (a, b) >= (2, 4) {
                "half_pixel"
            } else {
                "asymmetric"
            }
        }
        None => "asymmetric",
    }
}

fn input_dims(shape: &Shape, fmt: DataFormat, lay: &[usize]) -> Vec<OnnxDim> {
    let names = ["height", "width", "depth"];
    let mut keras = vec![OnnxDim::Named("batch".into())];
    let n_sp = shape.len().saturating_sub(1);
    for (i, d) in shape.iter().enumerate() {
        let sp_index = match fmt {
            DataFormat::ChannelsLast if i + 1 < shape.len() => Some(i),
            DataFormat::ChannelsFirst if i > 0 => Some(i - 1),
            _ => None,
        };
        keras.push(match (d, sp_index) {
            (Dim::Known(n), _) => OnnxDim::Fixed(*n),
            (Dim::Sym(_), Some(s)) if n_sp == 1 => OnnxDim::Named(if s == 0 {
                "length".into()
            } else {
                names[s].into()
            }),
            (Dim::Sym(_), Some(s)) => OnnxDim::Named(names.get(s).unwrap_or(&"dim").to_string()),
            (Dim::Sym(s), None) => OnnxDim::Named(s.clone()),
        });
    }
    lay.iter().map(|&a| keras[a].clone()).collect()
}

fn output_dims(shape: &Shape) -> Vec<OnnxDim> {
    let mut v = vec![OnnxDim::Named("batch".into())];
    v.extend(shape.iter().map(|d| match d {
        Dim::Known(n) => OnnxDim::Fixed(*n),
        Dim::Sym(_) => OnnxDim::Unknown,
    }));
    v
}

/// The file a user gets (`convert`, `rehead -o .onnx`, `finetune`): the graph with
/// [`crate::passes::subsample_early`] applied (the same outputs, less work), exported, and
/// what the rewrite did recorded under `allconv.subsampled`.
/// The rewrite runs on a copy of the structure; the weights are read where they lie.
pub fn export_for_inference(graph: &Graph, opts: &ExportOptions) -> Result<Exported> {
    let mut structure = graph.structure();
    let report = crate::passes::subsample_early(&mut structure)?;
    let mut ex = export_with_params(&structure, &graph.params, opts)?;
    record_subsampled(&mut ex.model, &report);
    Ok(ex)
}

/// Record a [`crate::passes::SubsampleReport`] in the file's metadata (nothing when the
/// rewrite did not fire): its layers' outputs hold only the sampled positions.
pub fn record_subsampled(model: &mut ModelProto, report: &crate::passes::SubsampleReport) {
    if !report.is_empty() {
        meta::set_metadata(
            model,
            meta::SUBSAMPLED,
            serde_json::to_string(report).unwrap_or_default(),
        );
    }
}

/// Build the ONNX model of `graph`.
pub fn export(graph: &Graph, opts: &ExportOptions) -> Result<Exported> {
    export_with_params(graph, &graph.params, opts)
}

/// [`export`] of `graph`'s structure with the weights in `params` (its own `params` unread).
fn export_with_params(
    graph: &Graph,
    params: &BTreeMap<String, Tensor>,
    opts: &ExportOptions,
) -> Result<Exported> {
    if opts.opset < 13 {
        return Err(Error::Other(format!(
            "opset {} unsupported: allconv writes opset >= 13",
            opts.opset
        )));
    }
    // The structure alone is copied (its shapes change with the size); the weights are
    // read where they lie. Copying them cost the full-width model 137 MB more at its peak
    // (`bench convert`: 669 -> 540 MiB, 0.24 -> 0.23 s warm).
    let mut g = graph.structure();
    g.infer_shapes_with(opts.input_size.as_deref(), |key| {
        params.get(key).map(|t| t.shape.clone())
    })?;
    let same = SameRule::for_source(&g.source);
    let mut cx = Lowering::new(&g, params, same, bilinear_mode(&g.source));
    let wrapped = opts.preprocess.is_some() || opts.tta.is_some();
    if wrapped && (g.inputs.len() != 1 || g.outputs.len() != 1) {
        return Err(Error::Other(
            "--preprocess/--tta need a model with one input and one output".into(),
        ));
    }

    // Inputs.
    let mut input_infos = Vec::new();
    let mut input_names = Vec::new();
    for (i, inp) in g.inputs.iter().enumerate() {
        let rank = inp.shape.len() + 1;
        let cf = layout::channels_first_layout(rank, inp.data_format == DataFormat::ChannelsLast);
        let lay = if opts.nchw_input {
            cf.clone()
        } else {
            layout::identity_perm(rank)
        };
        let name = if g.inputs.len() == 1 {
            "input".to_string()
        } else {
            format!("input_{i}")
        };
        let name = cx.b.fresh(&name);
        // The inferred shape (with --input-size applied), not the declared one.
        let mut shape = g.values[inp.value].shape.clone();
        let val = if wrapped {
            let (v, raw_shape) = wrap_input(&mut cx, inp, &name, &lay, opts)?;
            shape = raw_shape;
            v
        } else {
            Val {
                name: name.clone(),
                layout: lay.clone(),
            }
        };
        input_infos.push(value_info(
            &name,
            &input_dims(&shape, inp.data_format, &lay),
        ));
        input_names.push(name);
        cx.vals[inp.value] = Some(val);
    }

    // Body.
    let mut nodes = BTreeMap::new();
    for n in &g.nodes {
        let v = cx.lower(n)?;
        nodes.insert(
            n.name.clone(),
            NodeTensor {
                tensor: v.name.clone(),
                layout: v.layout.clone(),
            },
        );
    }

    // Outputs, Keras layout.
    let mut output_infos = Vec::new();
    let mut output_names = Vec::new();
    for (i, &o) in g.outputs.iter().enumerate() {
        let name = if g.outputs.len() == 1 {
            "output".to_string()
        } else {
            format!("output_{i}")
        };
        let name = cx.b.fresh(&name);
        let x = cx.get_keras(o, &name)?;
        match opts.tta {
            Some(Tta::Flips4) => tta_output(&mut cx, &g, &x, o, &name)?,
            None => cx.b.node_to("Identity", &name, &[&x], &name, vec![]),
        }
        output_infos.push(value_info(&name, &output_dims(&g.values[o].shape)));
        output_names.push(name);
    }
    if opts.debug_outputs {
        if wrapped {
            return Err(Error::Other(
                "per-node outputs are not available with --preprocess/--tta".into(),
            ));
        }
        for n in &g.nodes {
            let x = cx.get_keras(n.output, &n.name)?;
            let name = if x == n.name {
                x
            } else {
                let name = cx.b.fresh(&n.name);
                if name != n.name {
                    return Err(Error::Other(format!(
                        "tensor name {} is taken; cannot expose node {}",
                        n.name, n.name
                    )));
                }
                cx.b.node_to(
                    "Identity",
                    &format!("{}/debug", n.name),
                    &[&x],
                    &name,
                    vec![],
                );
                name
            };
            output_infos.push(value_info(&name, &output_dims(&g.values[n.output].shape)));
        }
    }

    let graph_proto = GraphProto {
        name: if g.name.is_empty() {
            "allconv".into()
        } else {
            g.name.clone()
        },
        node: std::mem::take(&mut cx.b.nodes),
        initializer: std::mem::take(&mut cx.b.initializers),
        input: input_infos,
        output: output_infos,
        ..Default::default()
    };
    let mut model = ModelProto {
        ir_version: if opts.opset <= 18 {
            8
        } else if opts.opset <= 20 {
            9
        } else {
            10
        },
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
            ..Default::default()
        }],
        producer_name: "allconv".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph_proto).into(),
        ..Default::default()
    };
    let src = &g.source;
    if let Some(v) = &src.keras_version {
        meta::set_metadata(&mut model, meta::KERAS_VERSION, v.clone());
    }
    if let Some(v) = &src.backend {
        meta::set_metadata(&mut model, meta::BACKEND, v.clone());
    }
    meta::set_metadata(&mut model, meta::DIALECT, src.dialect.clone());
    let layout_name = match (opts.nchw_input, g.inputs.first().map(|i| i.data_format)) {
        (true, _) | (_, Some(DataFormat::ChannelsFirst)) => "NCHW",
        _ => "NHWC",
    };
    meta::set_metadata(&mut model, meta::INPUT_LAYOUT, layout_name.into());
    if let Some(p) = &opts.preprocess {
        meta::set_metadata(
            &mut model,
            meta::PREPROCESS,
            serde_json::to_string(p).unwrap_or_default(),
        );
    }
    if let Some(t) = &opts.tta {
        meta::set_metadata(
            &mut model,
            meta::TTA,
            serde_json::to_string(t).unwrap_or_default(),
        );
    }
    meta::set_metadata(
        &mut model,
        meta::NODE_NAMES,
        serde_json::to_string(&nodes).unwrap_or_default(),
    );
    Ok(Exported {
        model,
        input_names,
        output_names,
        nodes,
    })
}

/// Preprocess and TTA on the raw input; returns the model-ready value and the raw
/// input's Keras-layout shape (without batch).
fn wrap_input(
    cx: &mut Lowering,
    inp: &GraphInput,
    name: &str,
    lay: &[usize],
    opts: &ExportOptions,
) -> Result<(Val, Shape)> {
    if inp.shape.len() != 3 {
        return Err(Error::Other(
            "--preprocess/--tta need an image input (N, H, W, C)".into(),
        ));
    }
    let (sp, c) = split_channels(&inp.shape, inp.data_format)?;
    let c = c
        .known()
        .ok_or_else(|| Error::Other("the input channels must be known".into()))?;
    let ch_axis = layout::physical_axis(
        lay,
        if inp.data_format == DataFormat::ChannelsLast {
            3
        } else {
            1
        },
    );
    let mut x = name.to_string();
    let mut raw_c = c;
    if let Some(p) = &opts.preprocess {
        if c == 3 && !p.gray {
            return Err(Error::Other(
                "the model takes 3 channels: add `gray` to --preprocess to feed it a grey image"
                    .into(),
            ));
        }
        if c != 1 && c != 3 {
            return Err(Error::Other(format!(
                "--preprocess needs a model with 1 or 3 input channels, not {c}"
            )));
        }
        raw_c = 1;
        let r = cx.b.scalar_f32("preprocess.rescale", p.rescale);
        let m = cx.b.scalar_f32("preprocess.mean", p.mean);
        x = cx.b.node(
            "Mul",
            "preprocess/rescale",
            &[&x, &r],
            "preprocess.scaled",
            vec![],
        );
        x = cx.b.node(
            "Sub",
            "preprocess/mean",
            &[&x, &m],
            "preprocess.centred",
            vec![],
        );
        if c == 3 {
            x = cx.b.node(
                "Concat",
                "preprocess/gray_to_rgb",
                &[&x, &x, &x],
                "preprocess.rgb",
                vec![attr_i("axis", ch_axis as i64)],
            );
        }
    }
    if let Some(Tta::Flips4) = opts.tta {
        let keras_sp: Vec<usize> = (0..sp.len())
            .map(|i| {
                if inp.data_format == DataFormat::ChannelsLast {
                    1 + i
                } else {
                    2 + i
                }
            })
            .collect();
        let h = layout::physical_axis(lay, keras_sp[0]) as i64;
        let w = layout::physical_axis(lay, keras_sp[1]) as i64;
        let fw = flip(cx, &x, &[w], "tta/flip_h");
        let fh = flip(cx, &x, &[h], "tta/flip_v");
        let fhw = flip(cx, &x, &[h, w], "tta/flip_hv");
        x = cx.b.node(
            "Concat",
            "tta/batch",
            &[&x, &fw, &fh, &fhw],
            "tta.batch",
            vec![attr_i("axis", 0)],
        );
    }
    let raw = join_channels(sp, Dim::Known(raw_c), inp.data_format);
    Ok((
        Val {
            name: x,
            layout: lay.to_vec(),
        },
        raw,
    ))
}

/// Reverse `axes` with Slice(step -1).
fn flip(cx: &mut Lowering, x: &str, axes: &[i64], node: &str) -> String {
    let n = axes.len();
    let starts = cx.b.init_i64(&format!("{node}.starts"), &vec![-1; n]);
    let ends = cx.b.init_i64(&format!("{node}.ends"), &vec![i64::MIN; n]);
    let ax = cx.b.init_i64(&format!("{node}.axes"), axes);
    let steps = cx.b.init_i64(&format!("{node}.steps"), &vec![-1; n]);
    cx.b.node(
        "Slice",
        node,
        &[x, &starts, &ends, &ax, &steps],
        &format!("{node}.out"),
        vec![],
    )
}

/// Split the 4N batch back into the 4 views, flip spatial outputs back, average.
fn tta_output(cx: &mut Lowering, g: &Graph, x: &str, o: ValueId, name: &str) -> Result<()> {
    let parts = cx.b.node_multi(
        "Split",
        "tta/split",
        &[x],
        "tta.view",
        4,
        vec![attr_i("axis", 0)],
    );
    let shape = &g.values[o].shape;
    let fmt = g.inputs[0].data_format;
    let mut views = vec![parts[0].clone()];
    if shape.len() == 3 {
        let (h, w) = match fmt {
            DataFormat::ChannelsLast => (1, 2),
            DataFormat::ChannelsFirst => (2, 3),
        };
        views.push(flip(cx, &parts[1], &[w], "tta/unflip_h"));
        views.push(flip(cx, &parts[2], &[h], "tta/unflip_v"));
        views.push(flip(cx, &parts[3], &[h, w], "tta/unflip_hv"));
    } else if shape.len() == 1 {
        views.extend(parts[1..].iter().cloned());
    } else {
        return Err(Error::Other(format!(
            "--tta flips4 needs a (N, K) or (N, h, w, K) output, not rank {}",
            shape.len() + 1
        )));
    }
    let refs: Vec<&str> = views.iter().map(String::as_str).collect();
    cx.b.node_to("Mean", "tta/mean", &refs, name, vec![]);
    Ok(())
}

pub use crate::files::{sha256_file, write_atomic};
