//! Layer-by-layer parity in isolation: every recorded Keras layer runs alone on exactly
//! the activations Keras fed it, taken from `io.npz`.
//!
//! Why: end to end, float32 rounding accumulates with depth in every runtime, Keras's own
//! included; in a 50-layer ResNet deep activations of magnitude ~10 differ by ~1e-3 between
//! any two float32 runtimes. Fed Keras's inputs, each layer must match Keras's output to
//! the absolute tolerance: a wrong padding, axis or weight layout cannot hide there.
//! [`isolated_layers`] builds the one-layer graphs; any backend can run them
//! ([`verify_layers_local`] runs them with tract).

use super::npz::read_npz;
use super::{compare, TensorCmp, VerifyOptions};
use crate::error::Result;
use crate::ir::{DataFormat, Dim, Graph, Producer, ValueId};
use crate::onnx::meta::Array;
use crate::onnx::{export, ExportOptions};
use crate::runtime::TractModel;
use std::collections::HashMap;
use std::path::Path;

/// One Keras layer as a graph of its own, with the inputs Keras fed it and its output.
pub struct IsolatedLayer {
    /// The npz key, `layer/<path>`.
    pub key: String,
    pub graph: Graph,
    pub inputs: Vec<Array>,
    pub want: Array,
}

impl IsolatedLayer {
    /// Spatial size of the first input (for a static-shape export).
    pub fn spatial(&self) -> Option<Vec<usize>> {
        let a = self.inputs.first().filter(|a| a.shape.len() >= 3)?;
        Some(match self.graph.inputs[0].data_format {
            DataFormat::ChannelsLast => a.shape[1..a.shape.len() - 1].to_vec(),
            DataFormat::ChannelsFirst => a.shape[2..].to_vec(),
        })
    }
}

/// Every recorded layer whose inputs were recorded too, as a one-layer graph; the others
/// with the reason they cannot be isolated.
pub fn isolated_layers(
    g: &Graph,
    refs: &std::collections::BTreeMap<String, Array>,
) -> (Vec<IsolatedLayer>, Vec<(String, String)>) {
    // Which npz array holds each value, as Keras computed it.
    let mut key_of: HashMap<ValueId, String> = HashMap::new();
    for (i, inp) in g.inputs.iter().enumerate() {
        let k = if g.inputs.len() == 1 {
            "input".to_string()
        } else {
            format!("input_{i}")
        };
        key_of.insert(inp.value, k);
    }
    for l in &g.layers {
        if let Some(v) = l.output {
            let k = format!("layer/{}", l.path);
            if refs.contains_key(&k) {
                key_of.entry(v).or_insert(k);
            }
        }
    }
    let fmt = g
        .inputs
        .first()
        .map(|x| x.data_format)
        .unwrap_or(DataFormat::ChannelsLast);
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for l in &g.layers {
        let key = format!("layer/{}", l.path);
        let (Some(value), Some(want)) = (l.output, refs.get(&key)) else {
            continue;
        };
        let Producer::Node(last) = g.values[value].producer else {
            continue;
        };
        if g.nodes[last].layer != l.path {
            continue; // a nested model's row: its inner layers are isolated one by one
        }
        // The IR nodes of this Keras call: a chain ending at `last` within the same layer.
        let mut chain = vec![last];
        while let Some(&first) = chain.first() {
            let node = &g.nodes[first];
            let prev = match (
                node.inputs.as_slice(),
                node.inputs.first().map(|&v| g.values[v].producer),
            ) {
                ([_], Some(Producer::Node(p))) if g.nodes[p].layer == l.path => Some(p),
                _ => None,
            };
            match prev {
                Some(p) => chain.insert(0, p),
                None => break,
            }
        }
        let ins = g.nodes[chain[0]].inputs.clone();
        let Some(inputs) = ins
            .iter()
            .map(|v| key_of.get(v).and_then(|k| refs.get(k)).cloned())
            .collect::<Option<Vec<Array>>>()
        else {
            skipped.push((
                key,
                "an input activation of this layer is not recorded".into(),
            ));
            continue;
        };
        let mut sub = Graph {
            name: l.path.clone(),
            source: g.source.clone(),
            ..Default::default()
        };
        let mut map = HashMap::new();
        for (i, (&v, a)) in ins.iter().zip(&inputs).enumerate() {
            let shape = a.shape[1..].iter().map(|&d| Dim::Known(d)).collect();
            map.insert(v, sub.add_input(&format!("in{i}"), shape, fmt));
        }
        for &n in &chain {
            let node = &g.nodes[n];
            let node_inputs = node.inputs.iter().map(|v| map[v]).collect();
            let o = sub.add_node(
                node.name.clone(),
                node.layer.clone(),
                node.class.clone(),
                node.op.clone(),
                node_inputs,
            );
            map.insert(node.output, o);
        }
        sub.outputs = vec![map[&value]];
        let prefix = format!("{}.", l.path);
        sub.params = g
            .params
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        out.push(IsolatedLayer {
            key,
            graph: sub,
            inputs,
            want: want.clone(),
        });
    }
    (out, skipped)
}

/// Run every isolated layer with tract and compare it to Keras's output.
pub fn verify_layers_local(
    g: &Graph,
    reference: &Path,
    opts: &VerifyOptions,
) -> Result<(Vec<TensorCmp>, Vec<(String, String)>)> {
    let refs = read_npz(reference)?;
    let (layers, mut skipped) = isolated_layers(g, &refs);
    let mut cmps = Vec::new();
    for l in layers {
        let run = || -> Result<TensorCmp> {
            let eo = ExportOptions {
                opset: opts.opset,
                input_size: l.spatial(),
                ..Default::default()
            };
            let bytes = export(&l.graph, &eo)?.to_bytes()?;
            let shapes: Vec<Vec<usize>> = l.inputs.iter().map(|a| a.shape.clone()).collect();
            let data: Vec<&[f32]> = l.inputs.iter().map(|a| a.data.as_slice()).collect();
            let outs = TractModel::load_multi(&bytes, &shapes, opts.threads)?.run_multi(&data)?;
            let got = outs
                .first()
                .ok_or_else(|| crate::Error::Other("no output".into()))?;
            Ok(compare(
                &l.graph.name,
                &got.data,
                &got.shape,
                &l.want.data,
                &l.want.shape,
                opts.atol,
                opts.rtol,
            ))
        };
        match run() {
            Ok(c) => cmps.push(c),
            Err(e) => skipped.push((l.key.clone(), format!("could not run the layer alone: {e}"))),
        }
    }
    Ok((cmps, skipped))
}
