//! The ONNX side of [`crate::meta`]: reading and setting `metadata_props` on the
//! protobuf model the exporter builds.

use crate::error::{Error, Result};
pub use crate::meta::{
    decode_array, encode_array, Array, Metadata, BACKEND, DIALECT, F16_REFERENCE_ERR, FOLDED,
    INPUT_LAYOUT, KERAS_VERSION, NODE_NAMES, PREPROCESS, SOURCE_SHA256, SUBSAMPLED, TEST_INPUT,
    TEST_OUTPUT, TEST_SOURCE, TTA, WEIGHTS,
};
use onnx_protobuf::{Message, ModelProto};

/// Parse an ONNX file's bytes.
pub fn parse_model(bytes: &[u8]) -> Result<ModelProto> {
    ModelProto::parse_from_bytes(bytes).map_err(|e| Error::Other(format!("not an ONNX model: {e}")))
}

/// `metadata_props` as a map.
pub fn metadata(m: &ModelProto) -> Metadata {
    m.metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

/// Set (or replace) one metadata entry.
pub fn set_metadata(m: &mut ModelProto, key: &str, value: String) {
    if let Some(p) = m.metadata_props.iter_mut().find(|p| p.key == key) {
        p.value = value;
    } else {
        m.metadata_props
            .push(onnx_protobuf::StringStringEntryProto {
                key: key.into(),
                value,
                ..Default::default()
            });
    }
}

/// Metadata entries serialised on their own, to append to a serialised `ModelProto`: a
/// protobuf message followed by more of its fields parses as one message, the repeated
/// `metadata_props` gaining these entries (keys the file does not hold yet).
pub fn metadata_appendix(entries: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut m = ModelProto::new();
    for (k, v) in entries {
        set_metadata(&mut m, k, v.clone());
    }
    crate::onnx::model_bytes(&m)
}

/// The embedded test vectors of an ONNX model, if any.
pub fn test_vectors(m: &ModelProto) -> Result<Option<(Array, Array)>> {
    crate::meta::test_vectors(&metadata(m))
}
