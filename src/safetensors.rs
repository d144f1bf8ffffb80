//! `graph.params` -> `.safetensors` (hand-written: 8-byte little-endian header length,
//! JSON header, raw little-endian data; see huggingface/safetensors).
//!
//! Tensors are named `{layer_path}.{slot}` (`model_1/conv1.kernel`), f32, Keras layout
//! with TensorFlow-oriented kernels (HWIO; Dense `(in, out)`), whatever backend the
//! source was trained on. `__metadata__` records where they came from: `keras_version`,
//! `source_backend`, `kernel_orientation` (`tensorflow`), `source_sha256` when the
//! source file can still be read, `source_file`, `dialect`. The write is atomic (temp file
//! + rename, nothing left behind on error).

use crate::error::{Error, Result};
use crate::ir::Graph;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The `__metadata__` map written for `graph`.
pub fn metadata(graph: &Graph) -> BTreeMap<String, String> {
    let s = &graph.source;
    let mut m = BTreeMap::new();
    m.insert("format".into(), "allconv keras params".into());
    m.insert("layout".into(), "keras".into());
    m.insert("kernel_orientation".into(), "tensorflow".into());
    if let Some(v) = &s.keras_version {
        m.insert("keras_version".into(), v.clone());
    }
    if let Some(b) = &s.backend {
        m.insert("source_backend".into(), b.clone());
    }
    m.insert("backend".into(), "tensorflow".into());
    if !s.dialect.is_empty() {
        m.insert("dialect".into(), s.dialect.clone());
    }
    if !s.file.is_empty() {
        let p = Path::new(&s.file);
        if let Some(name) = p.file_name() {
            m.insert("source_file".into(), name.to_string_lossy().into_owned());
        }
        if let Ok(bytes) = std::fs::read(p) {
            use sha2::Digest;
            let d = sha2::Sha256::digest(&bytes);
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            m.insert("source_sha256".into(), hex);
        }
    }
    m
}

/// The whole `.safetensors` file in memory.
pub fn to_bytes(graph: &Graph) -> Result<Vec<u8>> {
    let mut header = Map::new();
    header.insert(
        "__metadata__".into(),
        Value::Object(
            metadata(graph)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    );
    let mut offset = 0usize;
    for (name, t) in &graph.params {
        if t.data.len() != t.shape.iter().product::<usize>() {
            return Err(Error::Graph(format!(
                "tensor {name} does not match its shape"
            )));
        }
        let end = offset + 4 * t.data.len();
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::Graph(format!("safetensors header: {e}")))?;
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for t in graph.params.values() {
        for x in &t.data {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(out)
}

/// Write `graph.params` as `.safetensors` at `path`, atomically.
pub fn write_safetensors(graph: &Graph, path: &Path) -> Result<()> {
    let bytes = to_bytes(graph)?;
    crate::files::atomic_write(path, |tmp| {
        std::fs::File::create(tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .map_err(|e| Error::Io {
                file: path.to_path_buf(),
                message: e.to_string(),
            })
    })
}

/// Metadata and tensors by name.
pub type Parsed = (
    BTreeMap<String, String>,
    BTreeMap<String, crate::ir::Tensor>,
);

/// Parse a `.safetensors` file written by [`write_safetensors`] (F32 only): metadata and
/// tensors by name. For tests and round-trip checks.
pub fn read_safetensors(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    if bytes.len() < 8 {
        return Err("shorter than the header length".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len) as usize;
    let head = bytes
        .get(8..8usize.checked_add(n).ok_or("header length overflows")?)
        .ok_or("header runs past the end")?;
    let data = &bytes[8 + n..];
    let v: Value = serde_json::from_slice(head).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("header is not an object")?;
    let mut meta = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (k, e) in obj {
        if k == "__metadata__" {
            for (mk, mv) in e.as_object().ok_or("bad __metadata__")? {
                meta.insert(
                    mk.clone(),
                    mv.as_str()
                        .ok_or("metadata value not a string")?
                        .to_string(),
                );
            }
            continue;
        }
        if e.get("dtype").and_then(Value::as_str) != Some("F32") {
            return Err(format!("{k}: not F32"));
        }
        let shape: Vec<usize> = e
            .get("shape")
            .and_then(Value::as_array)
            .ok_or(format!("{k}: no shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .map(|d| d as usize)
                    .ok_or(format!("{k}: bad shape"))
            })
            .collect::<std::result::Result<_, _>>()?;
        let off = e
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or(format!("{k}: no data_offsets"))?;
        let (a, b) = match off.as_slice() {
            [a, b] => (
                a.as_u64().ok_or("bad offset")? as usize,
                b.as_u64().ok_or("bad offset")? as usize,
            ),
            _ => return Err(format!("{k}: bad data_offsets")),
        };
        let raw = data
            .get(a..b)
            .filter(|_| a <= b)
            .ok_or(format!("{k}: offsets out of range"))?;
        if raw.len() != 4 * shape.iter().product::<usize>() {
            return Err(format!("{k}: {} bytes for shape {shape:?}", raw.len()));
        }
        let vals = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(k.clone(), crate::ir::Tensor { shape, data: vals });
    }
    Ok((meta, tensors))
}
