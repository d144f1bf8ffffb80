//! A model file opened for inference: its format, allconv's metadata, its declared input
//! shapes, and the parsed graph, read once. ONNX is decoded with tract's own protobuf
//! types (no protobuf writer needed: the edge build has none); NNEF is a tar archive.

use super::nnef;
use super::tract::{terr, TractModel};
use crate::error::{Error, Result};
use crate::meta::Metadata;
use std::path::{Path, PathBuf};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// The formats the runtime reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Format {
    Onnx,
    Nnef,
}

enum Parsed {
    Onnx(Box<pb::ModelProto>),
    Nnef(Box<TypedModel>),
}

/// An opened model file.
pub struct ModelFile {
    pub path: PathBuf,
    pub format: Format,
    pub metadata: Metadata,
    /// Each graph input's declared dims (batch included); `None` where symbolic.
    pub inputs: Vec<Vec<Option<usize>>>,
    parsed: Parsed,
}

impl ModelFile {
    /// Open `path`: NNEF for `.nnef.tgz`/`.nnef.tar`/`.tgz` or a gzip/tar signature, else ONNX.
    pub fn open(path: &Path) -> Result<ModelFile> {
        let bytes = crate::files::read(path)?;
        let named = |e: Error| match e {
            Error::Other(m) => Error::Other(format!("{}: {m}", path.display())),
            other => other,
        };
        Self::from_bytes(path, &bytes).map_err(named)
    }

    /// A model file's bytes, labelled by `path` (whose name also tells NNEF from ONNX).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<ModelFile> {
        if nnef::looks_like_nnef(path, bytes) {
            Self::from_nnef_bytes(path, bytes)
        } else {
            Self::from_onnx_bytes(path, bytes)
        }
    }

    /// ONNX bytes (a file's, or an export held in memory and labelled by `path`).
    pub fn from_onnx_bytes(path: &Path, bytes: &[u8]) -> Result<ModelFile> {
        use prost::Message;
        let proto = pb::ModelProto::decode(bytes)
            .map_err(|e| Error::Other(format!("not an ONNX model: {e}")))?;
        let metadata = proto
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| Error::Other("the ONNX model has no graph".into()))?;
        // Old exporters list initializers among the inputs; tract does not feed them.
        let init: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|i| !init.contains(i.name.as_str()))
            .map(onnx_dims)
            .collect();
        Ok(ModelFile {
            path: path.to_path_buf(),
            format: Format::Onnx,
            metadata,
            inputs,
            parsed: Parsed::Onnx(Box::new(proto)),
        })
    }

    fn from_nnef_bytes(path: &Path, bytes: &[u8]) -> Result<ModelFile> {
        let (model, metadata) = nnef::read(bytes)?;
        let inputs = (0..model.inputs.len())
            .map(|i| {
                let fact = model.input_fact(i).map_err(terr("reading an input"))?;
                Ok(fact
                    .shape
                    .iter()
                    .map(|d| d.as_i64().and_then(|n| usize::try_from(n).ok()))
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            format: Format::Nnef,
            metadata,
            inputs,
            parsed: Parsed::Nnef(Box::new(model)),
        })
    }

    /// Plan the model for one shape per input (batch included).
    pub fn load(&self, input_shapes: &[Vec<usize>], threads: usize) -> Result<TractModel> {
        if input_shapes.len() != self.inputs.len() {
            return Err(Error::Other(format!(
                "{}: the model has {} inputs, {} shapes given",
                self.path.display(),
                self.inputs.len(),
                input_shapes.len()
            )));
        }
        let m = match &self.parsed {
            Parsed::Onnx(proto) => super::tract::onnx_framework()
                .model_for_proto_model(proto)
                .map_err(terr("reading the ONNX model"))
                .and_then(|m| TractModel::from_inference(m, input_shapes, threads)),
            Parsed::Nnef(model) => TractModel::from_typed((**model).clone(), input_shapes, threads),
        };
        m.map_err(|e| Error::Other(format!("{}: {e}", self.path.display())))
    }
}

#[cfg(feature = "ort")]
impl ModelFile {
    /// The ONNX model in an ONNX Runtime session, one shape per input (batch included). The
    /// bytes handed to ONNX Runtime are the parsed model written back (what tract reads);
    /// to run a file's own bytes use [`super::OrtModel::load_file`].
    pub fn load_ort(&self, input_shapes: &[Vec<usize>], threads: usize) -> Result<super::OrtModel> {
        use prost::Message;
        let named = |e: Error| Error::Other(format!("{}: {e}", self.path.display()));
        match &self.parsed {
            Parsed::Onnx(proto) => {
                super::OrtModel::load_multi(&proto.encode_to_vec(), input_shapes, threads)
                    .map_err(named)
            }
            Parsed::Nnef(_) => Err(named(Error::Other(
                "ONNX Runtime runs ONNX files; an NNEF file runs on tract (--backend tract)".into(),
            ))),
        }
    }
}

/// Declared dims of one ONNX graph input (`None`: symbolic or absent).
fn onnx_dims(v: &pb::ValueInfoProto) -> Vec<Option<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return vec![];
    };
    t.shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(n)) if n > 0 => usize::try_from(n).ok(),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
