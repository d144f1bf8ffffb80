//! Subsample where a value is made, not where it is read.
//!
//! A 1x1 convolution at stride `s` reads its input only at every `s`-th position. When
//! every reader of a value is such a convolution (a ResNet stage's last block feeding the
//! next stage's first: `relu(bn(conv1x1(x)) + shortcut)` read by two stride-2 1x1
//! convolutions), the value is needed only at those positions. Per-position ops (a 1x1
//! convolution, batch norm on the channel axis, an elementwise activation, merges)
//! commute with that sampling, so the sampling moves up to the value's maker: the
//! convolution there takes the stride (a quarter of its work at stride 2; a `same` window
//! gets its padding written out in front), the ops between run on a quarter of the
//! positions, an input that other nodes also read is sampled by a 1x1 max pooling (a
//! strided copy), and the readers run at stride 1. It goes on up while every reader of a
//! value is on the sampled path: through a whole block's 1x1 and 3x3 convolutions when
//! they feed only the next strided ones.
//!
//! Every output is the same sums of the same products as before. A runtime may pick
//! other kernels for the new shapes, so the results agree to float32 rounding (the
//! full-width model on tract: 2.9e-6 from Keras 2.0.8's output before, 6.4e-6 after).
//! What changes: the rewritten layers' own outputs now hold only the sampled positions,
//! so [`SubsampleReport::subsampled_layers`] lists them (their layer records lose their
//! value) and per-layer verification, which compares every layer with Keras, never runs
//! on a rewritten graph.
//!
//! On the paper's full-width ResNet50 + [512-512-1024]x2 whole-image model at 1152x896 it
//! moves 11 strides, 162.0 -> 139.6 GFLOP a run (README, "Benchmark"): tract 1407 -> 1161
//! ms at 1 thread, onnxruntime 741 -> 616 ms on the rewritten file, libtorch 711 -> 619 ms.
//!
//! It ends: a stride only ever moves to an earlier node, never back.

use crate::error::Result;
use crate::ir::*;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SubsampleReport {
    /// Convolutions that now take the stride (were stride 1).
    pub strided: Vec<String>,
    /// Convolutions that read at stride 1 now (were the stride-`s` readers).
    pub unstrided: Vec<String>,
    /// 1x1 max poolings inserted to sample a value that other nodes also read.
    pub samplers: Vec<String>,
    /// Zero paddings written out in front of a `same` window that took the stride.
    pub padded: Vec<String>,
    /// Keras layer paths whose output now holds only the sampled positions.
    pub subsampled_layers: Vec<String>,
}

impl SubsampleReport {
    pub fn is_empty(&self) -> bool {
        self.strided.is_empty()
    }
}

/// Rewrite `g` in place (weights untouched) until no value is left whose readers are all
/// strided 1x1 convolutions and whose maker can take the stride.
pub fn subsample_early(g: &mut Graph) -> Result<SubsampleReport> {
    let mut report = SubsampleReport::default();
    // One rewrite at a time: each changes who reads what.
    while let Some(plan) = find_plan(g) {
        apply(g, plan, &mut report);
    }
    Ok(report)
}

/// What one rewrite does.
struct Plan {
    /// The stride-`s` readers, to run at stride 1.
    readers: Vec<usize>,
    strides: Vec<usize>,
    data_format: DataFormat,
    /// Stride-1 convolutions that take the stride.
    strided: Vec<usize>,
    /// Of those, `same`-padded windows wider than 1: their padding written out in front
    /// (a zero padding node), the convolution made `valid`.
    padded: Vec<(usize, Vec<(usize, usize)>)>,
    /// Values that now hold only the sampled positions.
    sampled_values: Vec<ValueId>,
    /// (node, input slot): inputs read through an inserted 1x1 max pooling.
    samplers: Vec<(usize, usize)>,
}

/// Who reads each value, once per input slot; graph outputs count as a reader that
/// cannot be rewritten.
struct Readers {
    of: Vec<Vec<usize>>,
    is_output: Vec<bool>,
}

impl Readers {
    fn of(g: &Graph) -> Readers {
        let mut of = vec![Vec::new(); g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for &v in &n.inputs {
                of[v].push(i);
            }
        }
        let mut is_output = vec![false; g.values.len()];
        for &v in &g.outputs {
            is_output[v] = true;
        }
        Readers { of, is_output }
    }

    /// `v` is read once, by `node`, and is not a graph output.
    fn only_by(&self, v: ValueId, node: usize) -> bool {
        !self.is_output[v] && self.of[v] == [node]
    }
}

/// The strides of a 1x1 convolution that only samples its input, or `None`.
fn one_by_one(op: &Op) -> Option<(&[usize], DataFormat)> {
    let Op::Conv(c) = op else { return None };
    let samples = c.kernel.iter().all(|&k| k == 1)
        && c.dilation.iter().all(|&d| d == 1)
        && matches!(c.padding, Padding::Valid | Padding::Same)
        && !matches!(c.activation, Activation::Softmax { .. });
    samples.then_some((c.strides.as_slice(), c.data_format))
}

fn find_plan(g: &Graph) -> Option<Plan> {
    let readers = Readers::of(g);
    for (v, value) in g.values.iter().enumerate() {
        let Producer::Node(_) = value.producer else {
            continue;
        };
        let rs = &readers.of[v];
        if readers.is_output[v] || rs.is_empty() {
            continue;
        }
        // Every reader: a 1x1 convolution at the same stride (> 1 somewhere), same layout.
        let Some((strides, fmt)) = one_by_one(&g.nodes[rs[0]].op) else {
            continue;
        };
        if strides.iter().all(|&s| s == 1) || strides.len() != 2 {
            continue;
        }
        let alike = rs.iter().all(|&r| {
            one_by_one(&g.nodes[r].op) == Some((strides, fmt)) && g.nodes[r].inputs == [v]
        });
        if !alike {
            continue;
        }
        let mut plan = Plan {
            readers: rs.clone(),
            strides: strides.to_vec(),
            data_format: fmt,
            strided: Vec::new(),
            padded: Vec::new(),
            sampled_values: Vec::new(),
            samplers: Vec::new(),
        };
        // Worth it only where a convolution takes the stride (the work saved).
        if sink(g, &readers, v, &mut plan) && !plan.strided.is_empty() {
            return Some(plan);
        }
    }
    None
}

/// Plan making `v` (read only by the sampled path) hold only the sampled positions.
/// `false`: its maker cannot; the caller samples `v` itself.
fn sink(g: &Graph, readers: &Readers, v: ValueId, plan: &mut Plan) -> bool {
    let Producer::Node(p) = g.values[v].producer else {
        return false;
    };
    let node = &g.nodes[p];
    match &node.op {
        Op::Conv(c) => {
            let window_ok = c.data_format == plan.data_format
                && c.kernel.len() == 2
                && c.strides.iter().all(|&s| s == 1)
                && c.dilation.iter().all(|&d| d == 1)
                && !matches!(c.activation, Activation::Softmax { .. });
            if !window_ok {
                return false;
            }
            match c.padding {
                Padding::Valid => {}
                // An odd window's `same` padding at stride 1 is (k-1)/2 on both sides, in
                // TensorFlow's rule and Theano's: written out, a valid convolution at stride
                // s over it reads the windows centred on 0, s, 2s... and makes ceil(n/s) of
                // them, whatever n is. (`same` at stride s would not: TensorFlow then pads
                // by the size's remainder.)
                Padding::Same if c.kernel.iter().all(|&k| k % 2 == 1) => {
                    if c.kernel.iter().any(|&k| k > 1) {
                        let edges = c.kernel.iter().map(|&k| ((k - 1) / 2, (k - 1) / 2));
                        plan.padded.push((p, edges.collect()));
                    }
                }
                _ => return false,
            }
            plan.strided.push(p);
        }
        Op::BatchNorm(bn) => {
            // 2-D maps (the readers have two strides): rank 3 without the batch.
            if !super::fold_bn::channel_axis_ok(bn, plan.data_format, 3) {
                return false;
            }
            sink_inputs(g, readers, p, plan);
        }
        Op::Activation(a) if !matches!(a, Activation::Softmax { .. }) => {
            sink_inputs(g, readers, p, plan);
        }
        Op::Dropout { .. } | Op::Merge(_) => sink_inputs(g, readers, p, plan),
        _ => return false,
    }
    plan.sampled_values.push(v);
    true
}

/// Sink each input of per-position node `p`, or sample it where that is not possible.
fn sink_inputs(g: &Graph, readers: &Readers, p: usize, plan: &mut Plan) {
    for (slot, &u) in g.nodes[p].inputs.iter().enumerate() {
        if !(readers.only_by(u, p) && sink(g, readers, u, plan)) {
            plan.samplers.push((p, slot));
        }
    }
}

fn apply(g: &mut Graph, plan: Plan, report: &mut SubsampleReport) {
    for &r in &plan.readers {
        if let Op::Conv(c) = &mut g.nodes[r].op {
            c.strides = vec![1; c.strides.len()];
        }
        report.unstrided.push(g.nodes[r].name.clone());
    }
    for &p in &plan.strided {
        if let Op::Conv(c) = &mut g.nodes[p].op {
            c.strides = plan.strides.clone();
        }
        report.strided.push(g.nodes[p].name.clone());
    }
    for l in g.layers.iter_mut() {
        if l.output.is_some_and(|v| plan.sampled_values.contains(&v)) {
            l.output = None;
            report.subsampled_layers.push(l.path.clone());
        }
    }
    if plan.samplers.is_empty() && plan.padded.is_empty() {
        return;
    }
    // Each new node goes just before the node that reads it: still topological order.
    let mut before: Vec<Vec<Node>> = vec![Vec::new(); g.nodes.len()];
    for (p, edges) in plan.padded {
        let name = format!("{}/same_padding", g.nodes[p].name);
        let op = Op::ZeroPadding(SpatialEdges {
            edges,
            data_format: plan.data_format,
        });
        insert_before(g, &mut before, (p, 0), &name, "ZeroPadding2D", op);
        if let Op::Conv(c) = &mut g.nodes[p].op {
            c.padding = Padding::Valid;
        }
        report.padded.push(name);
    }
    for &(p, slot) in &plan.samplers {
        let name = format!("{}/subsample_input_{slot}", g.nodes[p].name);
        let op = Op::Pool(PoolConfig {
            kind: PoolKind::Max,
            pool: vec![1; plan.strides.len()],
            strides: plan.strides.clone(),
            padding: Padding::Valid,
            data_format: plan.data_format,
        });
        insert_before(g, &mut before, (p, slot), &name, "MaxPooling2D", op);
        report.samplers.push(name);
    }
    let old = std::mem::take(&mut g.nodes);
    for (pre, n) in before.into_iter().zip(old) {
        g.nodes.extend(pre);
        g.nodes.push(n);
    }
    for (k, n) in g.nodes.iter().enumerate() {
        g.values[n.output].producer = Producer::Node(k);
    }
}

/// A new node `op` reading what input `slot` of node `p` read, which now reads it instead;
/// queued in `before[p]` (spliced in by the caller, producers renumbered there).
fn insert_before(
    g: &mut Graph,
    before: &mut [Vec<Node>],
    (p, slot): (usize, usize),
    name: &str,
    class: &str,
    op: Op,
) {
    let output = g.values.len();
    g.values.push(Value {
        name: name.into(),
        producer: Producer::Node(0), // renumbered by the caller
        shape: vec![],
    });
    before[p].push(Node {
        name: name.into(),
        layer: name.into(),
        class: class.into(),
        op,
        inputs: vec![g.nodes[p].inputs[slot]],
        output,
    });
    g.nodes[p].inputs[slot] = output;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(filters: usize, stride: usize, kernel: usize) -> Op {
        Op::test_conv(filters, kernel, stride)
    }

    /// An empty channels-last graph with one input of this shape (without batch).
    fn graph_of(shape: &[usize]) -> (Graph, ValueId) {
        let mut g = Graph::default();
        let dims = shape.iter().map(|&d| Dim::Known(d)).collect();
        let x = g.add_input("x", dims, DataFormat::ChannelsLast);
        (g, x)
    }

    /// A node and its layer record (the layer's output is that node's value).
    fn node(g: &mut Graph, name: &str, op: Op, inputs: Vec<ValueId>) -> ValueId {
        let v = g.add_node(name.into(), name.into(), "Layer".into(), op, inputs);
        g.layers.push(LayerRecord {
            path: name.into(),
            class: "Layer".into(),
            depth: 0,
            trainable: true,
            own_trainable: true,
            output: Some(v),
            weights: vec![],
        });
        v
    }

    /// x -> c3 (3x3) -> a; [c1 (1x1) -> relu] + a -> add -> relu -> two stride-2 1x1 convs.
    fn resnet_stage_end() -> Graph {
        let (mut g, x) = graph_of(&[9, 7, 4]);
        let a = node(&mut g, "c3", conv(4, 1, 3), vec![x]);
        let b = node(&mut g, "c1", conv(4, 1, 1), vec![a]);
        let r = node(&mut g, "r1", Op::Activation(Activation::RELU), vec![b]);
        let s = node(&mut g, "add", Op::Merge(MergeKind::Add), vec![r, a]);
        let o = node(&mut g, "r2", Op::Activation(Activation::RELU), vec![s]);
        let p = node(&mut g, "s1", conv(8, 2, 1), vec![o]);
        let q = node(&mut g, "s2", conv(8, 2, 1), vec![o]);
        let m = node(&mut g, "sum", Op::Merge(MergeKind::Add), vec![p, q]);
        g.outputs = vec![m];
        g
    }

    fn strides(g: &Graph, name: &str) -> Vec<usize> {
        match &g.node_by_name(name).unwrap().op {
            Op::Conv(c) => c.strides.clone(),
            Op::Pool(p) => p.strides.clone(),
            op => panic!("{name}: {op:?}"),
        }
    }

    #[test]
    fn moves_the_stride_to_the_maker_and_samples_the_shared_input() {
        let mut g = resnet_stage_end();
        let r = subsample_early(&mut g).unwrap();
        assert_eq!(r.strided, ["c1"]);
        assert_eq!(r.unstrided, ["s1", "s2"]);
        assert_eq!(r.samplers, ["add/subsample_input_1"]);
        assert_eq!(r.subsampled_layers, ["c1", "r1", "add", "r2"]);
        assert_eq!(strides(&g, "c1"), [2, 2]);
        assert_eq!(strides(&g, "s1"), [1, 1]);
        assert_eq!(strides(&g, "c3"), [1, 1]);
        assert_eq!(strides(&g, "add/subsample_input_1"), [2, 2]);
        // Still topological, producers renumbered, shapes consistent.
        for (k, n) in g.nodes.iter().enumerate() {
            assert_eq!(g.values[n.output].producer, Producer::Node(k));
            for &i in &n.inputs {
                if let Producer::Node(p) = g.values[i].producer {
                    assert!(p < k, "{} reads a later node", n.name);
                }
            }
        }
        g.infer_shapes(None).unwrap();
        let out = g.outputs[0];
        assert_eq!(
            g.values[out].shape,
            [Dim::Known(5), Dim::Known(4), Dim::Known(8)]
        );
        // Nothing left to move: the 3x3 convolution cannot take the stride.
        assert!(subsample_early(&mut g).unwrap().is_empty());
    }

    #[test]
    fn a_same_window_takes_the_stride_with_its_padding_written_out() {
        // x -> c3 (3x3 same) -> relu -> c1 (1x1) -> s (1x1, stride 2): c1 takes the
        // stride, then c3 on the next round, padded, valid; x is read at full size.
        let (mut g, x) = graph_of(&[10, 7, 4]);
        let a = node(&mut g, "c3", conv(4, 1, 3), vec![x]);
        let r = node(&mut g, "r", Op::Activation(Activation::RELU), vec![a]);
        let b = node(&mut g, "c1", conv(4, 1, 1), vec![r]);
        let o = node(&mut g, "s", conv(8, 2, 1), vec![b]);
        g.outputs = vec![o];
        let rep = subsample_early(&mut g).unwrap();
        assert_eq!(rep.strided, ["c1", "c3"]);
        assert_eq!(rep.padded, ["c3/same_padding"]);
        assert!(rep.samplers.is_empty());
        assert_eq!(strides(&g, "c3"), [2, 2]);
        assert_eq!(strides(&g, "c1"), [1, 1]);
        assert_eq!(strides(&g, "s"), [1, 1]);
        match &g.node_by_name("c3").unwrap().op {
            Op::Conv(c) => assert_eq!(c.padding, Padding::Valid),
            op => panic!("{op:?}"),
        }
        g.infer_shapes(None).unwrap();
        // ceil(10/2) x ceil(7/2), as the stride-2 reader made.
        assert_eq!(
            g.values[g.outputs[0]].shape,
            [Dim::Known(5), Dim::Known(4), Dim::Known(8)]
        );
    }

    #[test]
    fn leaves_values_read_at_full_resolution() {
        let mut g = resnet_stage_end();
        // A third reader at stride 1: the value is needed everywhere.
        let o = g.node_by_name("r2").unwrap().output;
        let t = g.add_node(
            "t".into(),
            "t".into(),
            "Conv2D".into(),
            conv(8, 1, 1),
            vec![o],
        );
        g.outputs.push(t);
        assert!(subsample_early(&mut g).unwrap().is_empty());
        // A graph output is never rewritten either.
        let mut g = resnet_stage_end();
        let o = g.node_by_name("r2").unwrap().output;
        g.outputs.push(o);
        assert!(subsample_early(&mut g).unwrap().is_empty());
    }
}
