//! `--weights f16`: the weights stored as IEEE half floats, half the file. Each large
//! float initializer becomes a FLOAT16 initializer and a `Cast` to float, so every
//! runtime computes in float32 as before (tract folds the casts when it loads the model);
//! only the weights' rounding changes (10-bit mantissa: ~5e-4 relative per weight).

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, NodeProto, TensorProto};

pub use crate::meta::F16_MIN_ELEMENTS as MIN_F16_ELEMENTS;

/// Rewrite `graph`'s large float32 initializers to float16 + Cast; returns how many.
pub fn store_weights_f16(graph: &mut GraphProto) -> usize {
    let mut casts = Vec::new();
    for t in graph.initializer.iter_mut() {
        if t.data_type != DataType::FLOAT as i32 || t.raw_data.len() < 4 * MIN_F16_ELEMENTS {
            continue;
        }
        let half: Vec<u8> = t
            .raw_data
            .chunks_exact(4)
            .flat_map(|b| {
                half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
            })
            .collect();
        let float_name = t.name.clone();
        let half_name = format!("{float_name}.f16");
        *t = TensorProto {
            name: half_name.clone(),
            dims: t.dims.clone(),
            data_type: DataType::FLOAT16 as i32,
            raw_data: half,
            ..Default::default()
        };
        casts.push(NodeProto {
            op_type: "Cast".into(),
            name: format!("{float_name}/to_f32"),
            input: vec![half_name],
            output: vec![float_name],
            attribute: vec![super::builder::attr_i("to", DataType::FLOAT as i64)],
            ..Default::default()
        });
    }
    let n = casts.len();
    // Casts first: the node list stays in topological order.
    casts.append(&mut graph.node);
    graph.node = casts;
    n
}
