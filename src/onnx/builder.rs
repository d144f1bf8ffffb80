//! Small constructors for ONNX protobuf messages and a graph builder that keeps tensor
//! names unique. No layout logic here (that is `src/layout.rs` and `lower.rs`).

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::HashSet;

/// One dimension of a graph input/output type.
#[derive(Debug, Clone, PartialEq)]
pub enum OnnxDim {
    Fixed(usize),
    Named(String),
    /// Neither value nor name: unknown.
    Unknown,
}

pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: v,
        ..Default::default()
    }
}

pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::FLOAT.into(),
        f: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::STRING.into(),
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn attr_tensor(name: &str, v: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::TENSOR.into(),
        t: Some(v).into(),
        ..Default::default()
    }
}

pub fn usize_i64(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

pub fn f32_tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    let mut raw = vec![0u8; data.len() * 4];
    for (b, x) in raw.chunks_exact_mut(4).zip(data) {
        b.copy_from_slice(&x.to_le_bytes());
    }
    TensorProto {
        name: name.into(),
        dims: usize_i64(shape),
        data_type: DataType::FLOAT as i32,
        raw_data: raw,
        ..Default::default()
    }
}

pub fn i64_tensor(name: &str, shape: &[usize], data: &[i64]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 8);
    for x in data {
        raw.extend_from_slice(&x.to_le_bytes());
    }
    TensorProto {
        name: name.into(),
        dims: usize_i64(shape),
        data_type: DataType::INT64 as i32,
        raw_data: raw,
        ..Default::default()
    }
}

pub fn value_info(name: &str, dims: &[OnnxDim]) -> ValueInfoProto {
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| {
                let mut dim = tensor_shape_proto::Dimension::new();
                match d {
                    OnnxDim::Fixed(n) => dim.set_dim_value(*n as i64),
                    OnnxDim::Named(s) => dim.set_dim_param(s.clone()),
                    OnnxDim::Unknown => {}
                }
                dim
            })
            .collect(),
        ..Default::default()
    };
    let tensor = type_proto::Tensor {
        elem_type: DataType::FLOAT as i32,
        shape: Some(shape).into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// Collects nodes and initializers; every tensor and node name it hands out is unique.
#[derive(Default)]
pub struct Builder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    names: HashSet<String>,
    node_names: HashSet<String>,
}

impl Builder {
    /// Reserve `base` (or `base.1`, `base.2`...) as a tensor name.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}.{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Is `name` already taken?
    pub fn taken(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn fresh_node_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.node_names.contains(&name) {
            name = format!("{base}.{k}");
            k += 1;
        }
        self.node_names.insert(name.clone());
        name
    }

    /// Add a node named after `node_name` writing a fresh tensor named after `out`;
    /// returns the output tensor name.
    pub fn node(
        &mut self,
        op_type: &str,
        node_name: &str,
        inputs: &[&str],
        out: &str,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(out);
        self.node_to(op_type, node_name, inputs, &out, attrs);
        out
    }

    /// Add a node writing the already-reserved tensor `out`.
    pub fn node_to(
        &mut self,
        op_type: &str,
        node_name: &str,
        inputs: &[&str],
        out: &str,
        attrs: Vec<AttributeProto>,
    ) {
        let name = self.fresh_node_name(node_name);
        self.nodes.push(NodeProto {
            op_type: op_type.into(),
            name,
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Add a node with several outputs (named `{out}.0`, `{out}.1`...).
    pub fn node_multi(
        &mut self,
        op_type: &str,
        node_name: &str,
        inputs: &[&str],
        out: &str,
        n_out: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n_out)
            .map(|i| self.fresh(&format!("{out}.{i}")))
            .collect();
        let name = self.fresh_node_name(node_name);
        self.nodes.push(NodeProto {
            op_type: op_type.into(),
            name,
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outs
    }

    pub fn init_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        let name = self.fresh(name);
        self.initializers.push(f32_tensor(&name, shape, data));
        name
    }

    pub fn init_i64(&mut self, name: &str, data: &[i64]) -> String {
        let name = self.fresh(name);
        self.initializers
            .push(i64_tensor(&name, &[data.len()], data));
        name
    }

    pub fn scalar_f32(&mut self, name: &str, v: f32) -> String {
        let name = self.fresh(name);
        self.initializers.push(f32_tensor(&name, &[], &[v]));
        name
    }
}
