//! Patch classifier -> fully convolutional heatmap model (the paper's patch-to-whole-image
//! idea): a classifier ending in `GlobalPool(avg) -> [Dropout] -> Dense(softmax)` loses
//! its global pooling; the Dense then acts per pixel (Dense on a 4-D tensor acts on the
//! last axis) and the softmax runs over that axis, so the output is an
//! `(N, h, w, classes)` probability map. Everything before the pooling (ResNet50's
//! `avg_pool` 7x7 included) stays where it is.
//!
//! Because the Dense is affine, the mean over the map of the per-pixel logits equals
//! the patch classifier's logits: `softmax(mean(log p))` over the map reproduces the
//! classifier's output at any input size.

use crate::error::{Error, Result};
use crate::ir::*;
use std::collections::HashMap;

/// What [`to_heatmap`] changed.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapReport {
    /// The global pooling node that was removed.
    pub removed_pool: String,
    /// The Dropout between pooling and Dense, kept (identity at inference).
    pub dropout: Option<String>,
    /// The Dense applied per pixel.
    pub dense: String,
    /// The node whose softmax now runs over the last axis (the Dense itself, or a
    /// separate softmax Activation after it).
    pub softmax: String,
    pub classes: usize,
    /// A Permute was inserted to move channels last (channels_first models).
    pub permuted: bool,
}

fn not_patch(msg: impl std::fmt::Display) -> Error {
    Error::Other(format!(
        "not a patch classifier ending in GlobalAveragePooling2D -> [Dropout] -> Dense(softmax): {msg}"
    ))
}

fn is_softmax(a: &Activation) -> bool {
    matches!(a, Activation::Softmax { axis } if *axis == -1 || *axis == 1)
}

/// Turn a patch classifier into a heatmap model. See the module doc.
pub fn to_heatmap(g: &Graph) -> Result<(Graph, HeatmapReport)> {
    if g.inputs.len() != 1 || g.outputs.len() != 1 {
        return Err(not_patch(format!(
            "the model has {} inputs and {} outputs (expected 1 and 1)",
            g.inputs.len(),
            g.outputs.len()
        )));
    }
    if g.inputs[0].shape.len() != 3 {
        return Err(not_patch(format!(
            "the input has rank {} (expected an image: H, W, C)",
            g.inputs[0].shape.len() + 1
        )));
    }
    let producer = |v: ValueId| -> Option<usize> {
        match g.values.get(v)?.producer {
            Producer::Node(i) => Some(i),
            Producer::Input(_) => None,
        }
    };
    let consumers = |v: ValueId| g.nodes.iter().filter(|n| n.inputs.contains(&v)).count();
    let describe = |i: usize| format!("{} ({})", g.nodes[i].name, g.nodes[i].class);

    // Walk back from the output: [Activation(softmax)] <- Dense <- [Dropout] <- GlobalPool(avg).
    let last = producer(g.outputs[0]).ok_or_else(|| not_patch("the output is the input"))?;
    let (dense_i, softmax_i) = match &g.nodes[last].op {
        Op::Dense(d) if is_softmax(&d.activation) => (last, last),
        Op::Activation(a) if is_softmax(a) => {
            let d = producer(g.nodes[last].inputs[0])
                .ok_or_else(|| not_patch("the softmax is applied to the input"))?;
            match &g.nodes[d].op {
                Op::Dense(c) if c.activation.is_linear() => (d, last),
                _ => {
                    return Err(not_patch(format!(
                        "the softmax follows {}, not a linear Dense",
                        describe(d)
                    )))
                }
            }
        }
        Op::Dense(_) => {
            return Err(not_patch(format!(
                "the final Dense {} has no softmax activation",
                describe(last)
            )))
        }
        _ => {
            return Err(not_patch(format!(
                "the output comes from {}",
                describe(last)
            )))
        }
    };
    let mut cur = producer(g.nodes[dense_i].inputs[0])
        .ok_or_else(|| not_patch("the Dense is applied to the input"))?;
    let mut dropout = None;
    if let Op::Dropout { .. } = g.nodes[cur].op {
        dropout = Some(cur);
        cur = producer(g.nodes[cur].inputs[0])
            .ok_or_else(|| not_patch("the Dropout is applied to the input"))?;
    }
    let pool_i = cur;
    let pool_fmt = match &g.nodes[pool_i].op {
        Op::GlobalPool(p) if p.kind == PoolKind::Avg && p.rank == 2 && !p.keepdims => p.data_format,
        Op::GlobalPool(p) if p.kind != PoolKind::Avg => {
            return Err(not_patch(format!(
                "{} is a global max pooling",
                describe(pool_i)
            )))
        }
        _ => {
            return Err(not_patch(format!(
                "the layer before the Dense{} is {}",
                if dropout.is_some() {
                    " and Dropout"
                } else {
                    ""
                },
                describe(pool_i)
            )))
        }
    };
    // The chain must be private: nothing else may read the pooled or dropped values.
    let mut chain = vec![pool_i];
    chain.extend(dropout);
    if softmax_i != dense_i {
        chain.push(dense_i);
    }
    for &i in &chain {
        let n = consumers(g.nodes[i].output);
        if n != 1 {
            return Err(not_patch(format!(
                "{} feeds {n} layers (expected 1)",
                describe(i)
            )));
        }
    }
    let mut probe = g.clone();
    probe.infer_shapes(None)?;
    let classes = probe.values[g.nodes[dense_i].output]
        .shape
        .last()
        .and_then(Dim::known)
        .ok_or_else(|| not_patch("the number of classes is unknown"))?;

    // Rebuild without the pooling node.
    let mut out = Graph {
        name: g.name.clone(),
        params: g.params.clone(),
        source: g.source.clone(),
        ..Default::default()
    };
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for inp in &g.inputs {
        let v = out.add_input(&inp.name, inp.shape.clone(), inp.data_format);
        map.insert(inp.value, v);
    }
    let pool_in = g.nodes[pool_i].inputs[0];
    let mut permuted = false;
    for (i, n) in g.nodes.iter().enumerate() {
        let ins = n
            .inputs
            .iter()
            .map(|v| {
                map.get(v)
                    .copied()
                    .ok_or_else(|| Error::graph(format!("node {}: input not yet defined", n.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        if i == pool_i {
            let src = map
                .get(&pool_in)
                .copied()
                .ok_or_else(|| Error::graph("global pooling input not defined"))?;
            let v = if pool_fmt == DataFormat::ChannelsFirst {
                permuted = true;
                out.add_node(
                    format!("{}/to_channels_last", n.name),
                    n.layer.clone(),
                    "Permute".into(),
                    Op::Permute {
                        dims: vec![2, 3, 1],
                    },
                    vec![src],
                )
            } else {
                src
            };
            map.insert(n.output, v);
            continue;
        }
        let mut op = n.op.clone();
        if i == softmax_i {
            match &mut op {
                Op::Dense(d) => d.activation = Activation::Softmax { axis: -1 },
                Op::Activation(a) => *a = Activation::Softmax { axis: -1 },
                _ => {}
            }
        }
        let v = out.add_node(n.name.clone(), n.layer.clone(), n.class.clone(), op, ins);
        map.insert(n.output, v);
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|v| {
            map.get(v)
                .copied()
                .ok_or_else(|| Error::graph("output not defined"))
        })
        .collect::<Result<_>>()?;
    out.layers = g
        .layers
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.output = l.output.and_then(|v| map.get(&v).copied());
            l
        })
        .collect();
    out.source.warnings.push(format!(
        "heatmap: removed {} ; Dense {} applied per pixel",
        g.nodes[pool_i].name, g.nodes[dense_i].name
    ));
    let report = HeatmapReport {
        removed_pool: g.nodes[pool_i].name.clone(),
        dropout: dropout.map(|i| g.nodes[i].name.clone()),
        dense: g.nodes[dense_i].name.clone(),
        softmax: g.nodes[softmax_i].name.clone(),
        classes,
        permuted,
    };
    Ok((out, report))
}
