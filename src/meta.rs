//! allconv's metadata of an exported model, whatever the file format: ONNX keeps it in
//! `metadata_props`, NNEF in an `allconv.json` entry of its archive. Embedded test vectors
//! are `{"shape": [...], "dtype": "float32", "base64": "<little-endian f32>"}`.

use crate::error::{Error, Result};
use base64::Engine;
use std::collections::BTreeMap;

pub const SOURCE_SHA256: &str = "allconv.source_sha256";
pub const KERAS_VERSION: &str = "allconv.keras_version";
pub const BACKEND: &str = "allconv.backend";
pub const DIALECT: &str = "allconv.dialect";
pub const INPUT_LAYOUT: &str = "allconv.input_layout";
pub const PREPROCESS: &str = "allconv.preprocess";
pub const TTA: &str = "allconv.tta";
pub const NODE_NAMES: &str = "allconv.node_names";
pub const FOLDED: &str = "allconv.folded_layers";
/// JSON: the `SubsampleReport` of the strided 1x1 convolutions moved up (`passes::subsample_early`).
pub const SUBSAMPLED: &str = "allconv.subsampled";
pub const TEST_INPUT: &str = "allconv.test_input";
pub const TEST_OUTPUT: &str = "allconv.test_output";
pub const TEST_SOURCE: &str = "allconv.test_vector_source";
/// `--weights f16` keeps tensors smaller than this in float32, in ONNX and NNEF alike:
/// scalars and per-channel vectors cost nothing and keep preprocessing constants exact.
pub const F16_MIN_ELEMENTS: usize = 64;

/// `f16` when the weights are stored as float16.
pub const WEIGHTS: &str = "allconv.weights";
/// Float16 weights: the output's max abs difference from genuine Keras's (the
/// `--reference`), measured at conversion.
pub const F16_REFERENCE_ERR: &str = "allconv.f16_reference_max_abs_err";

/// A dense f32 array with its full shape (batch included).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn encode_array(a: &Array) -> String {
    let mut raw = Vec::with_capacity(a.data.len() * 4);
    for x in &a.data {
        raw.extend_from_slice(&x.to_le_bytes());
    }
    serde_json::json!({
        "shape": a.shape,
        "dtype": "float32",
        "base64": base64::engine::general_purpose::STANDARD.encode(raw),
    })
    .to_string()
}

pub fn decode_array(s: &str) -> Result<Array> {
    let bad = |m: &str| Error::Other(format!("embedded test vector: {m}"));
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| bad(&e.to_string()))?;
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .ok_or_else(|| bad("no shape"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or_else(|| bad("bad shape"))
        })
        .collect::<Result<_>>()?;
    if v["dtype"].as_str() != Some("float32") {
        return Err(bad("dtype is not float32"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["base64"].as_str().ok_or_else(|| bad("no base64"))?)
        .map_err(|e| bad(&e.to_string()))?;
    // The shape is the file's claim: its byte count is computed checked, never trusted.
    let bytes = shape
        .iter()
        .try_fold(4usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(&format!(
                "shape {shape:?} claims more bytes than a 64-bit count"
            ))
        })?;
    if raw.len() != bytes {
        return Err(bad(&format!(
            "{} bytes for shape {shape:?}, which needs {bytes}",
            raw.len()
        )));
    }
    let data = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Array { shape, data })
}

/// Key -> value, as stored in the model file.
pub type Metadata = BTreeMap<String, String>;

/// The embedded test vectors, if any.
pub fn test_vectors(md: &Metadata) -> Result<Option<(Array, Array)>> {
    match (md.get(TEST_INPUT), md.get(TEST_OUTPUT)) {
        (Some(i), Some(o)) => {
            let named = |key: &str, e: Error| match e {
                Error::Other(m) => Error::Other(format!("{key}: {m}")),
                other => other,
            };
            Ok(Some((
                decode_array(i).map_err(|e| named(TEST_INPUT, e))?,
                decode_array(o).map_err(|e| named(TEST_OUTPUT, e))?,
            )))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vector_shape_is_checked_before_use() {
        // 2^32 x 2^32 x 2 float32s: the byte count overflows (old code: a multiply panic).
        let bomb = r#"{"shape": [4294967296, 4294967296, 2], "dtype": "float32", "base64": ""}"#;
        let e = decode_array(bomb).unwrap_err().to_string();
        assert!(e.contains("64-bit"), "{e}");
        let a = Array {
            shape: vec![1, 2],
            data: vec![0.5, -1.0],
        };
        assert_eq!(decode_array(&encode_array(&a)).unwrap(), a);
        let short = r#"{"shape": [1, 2], "dtype": "float32", "base64": "AAAAAA=="}"#;
        assert!(decode_array(short).is_err());
    }
}
