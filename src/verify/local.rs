//! Layer-by-layer parity in isolation: every recorded Keras layer runs alone (exported to
//! ONNX, run by tract) on exactly the activations Keras fed it, taken from `io.npz`.
//!
//! Why: end to end, float32 rounding accumulates with depth in every runtime, Keras's own
//! included; in a 50-layer ResNet deep activations of magnitude ~10 differ by ~1e-3 between
//! any two float32 runtimes. Fed Keras's inputs, each layer must match Keras's output to
//! the absolute tolerance: a wrong padding, axis or weight layout cannot hide there.

use super::npz::read_npz;
use super::{compare, TensorCmp, VerifyOptions};
use crate::error::Result;
use crate::ir::{Dim, Graph, Producer, ValueId};
use crate::onnx::{export, ExportOptions};
use crate::runtime::TractModel;
use std::collections::HashMap;
use std::path::Path;

/// One compared layer per recorded `layer/<path>` whose inputs were recorded too;
/// the others are returned with the reason they were skipped.
pub fn verify_layers_local(
    g: &Graph,
    reference: &Path,
    opts: &VerifyOptions,
) -> Result<(Vec<TensorCmp>, Vec<(String, String)>)> {
    let refs = read_npz(reference)?;
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
    let mut cmps = Vec::new();
    let mut skipped = Vec::new();
    for l in &g.layers {
        let key = format!("layer/{}", l.path);
        let (Some(out), Some(want)) = (l.output, refs.get(&key)) else {
            continue;
        };
        let Producer::Node(last) = g.values[out].producer else {
            continue;
        };
        if g.nodes[last].layer != l.path {
            continue; // a nested model's row: its inner layers are checked one by one
        }
        // The IR nodes of this Keras call: a chain ending at `last` within the same layer.
        let mut chain = vec![last];
        while let Some(&first) = chain.first() {
            let prev = g.nodes[first]
                .inputs
                .first()
                .and_then(|&v| match g.values[v].producer {
                    Producer::Node(p)
                        if g.nodes[p].layer == l.path && g.nodes[first].inputs.len() == 1 =>
                    {
                        Some(p)
                    }
                    _ => None,
                });
            match prev {
                Some(p) => chain.insert(0, p),
                None => break,
            }
        }
        let ins = g.nodes[chain[0]].inputs.clone();
        let Some(in_keys) = ins
            .iter()
            .map(|v| key_of.get(v).cloned())
            .collect::<Option<Vec<_>>>()
        else {
            skipped.push((
                key,
                "an input activation of this layer is not recorded".into(),
            ));
            continue;
        };
        let arrays: Vec<_> = in_keys.iter().filter_map(|k| refs.get(k)).collect();
        let mut sub = Graph {
            name: l.path.clone(),
            source: g.source.clone(),
            ..Default::default()
        };
        let mut map = HashMap::new();
        for (i, (&v, a)) in ins.iter().zip(&arrays).enumerate() {
            let shape = a.shape[1..].iter().map(|&d| Dim::Known(d)).collect();
            let fmt = g
                .inputs
                .first()
                .map(|x| x.data_format)
                .unwrap_or(crate::ir::DataFormat::ChannelsLast);
            map.insert(v, sub.add_input(&format!("in{i}"), shape, fmt));
        }
        for &n in &chain {
            let node = &g.nodes[n];
            let inputs = node.inputs.iter().map(|v| map[v]).collect();
            let o = sub.add_node(
                node.name.clone(),
                node.layer.clone(),
                node.class.clone(),
                node.op.clone(),
                inputs,
            );
            map.insert(node.output, o);
        }
        sub.outputs = vec![map[&out]];
        let prefix = format!("{}.", l.path);
        sub.params = g
            .params
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        let run = || -> Result<TensorCmp> {
            let spatial = arrays.first().filter(|a| a.shape.len() >= 3).map(|a| {
                match sub.inputs[0].data_format {
                    crate::ir::DataFormat::ChannelsLast => a.shape[1..a.shape.len() - 1].to_vec(),
                    crate::ir::DataFormat::ChannelsFirst => a.shape[2..].to_vec(),
                }
            });
            let eo = ExportOptions {
                opset: opts.opset,
                input_size: spatial,
                ..Default::default()
            };
            let bytes = export(&sub, &eo)?.to_bytes()?;
            let shapes: Vec<Vec<usize>> = arrays.iter().map(|a| a.shape.clone()).collect();
            let data: Vec<&[f32]> = arrays.iter().map(|a| a.data.as_slice()).collect();
            let outs = TractModel::load_multi(&bytes, &shapes, opts.threads)?.run_multi(&data)?;
            let got = outs
                .first()
                .ok_or_else(|| crate::Error::Other("no output".into()))?;
            Ok(compare(
                &l.path,
                &got.data,
                &got.shape,
                &want.data,
                &want.shape,
                opts.atol,
                opts.rtol,
            ))
        };
        match run() {
            Ok(c) => cmps.push(c),
            Err(e) => skipped.push((key, format!("could not run the layer alone: {e}"))),
        }
    }
    Ok((cmps, skipped))
}
