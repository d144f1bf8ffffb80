//! `graph.params` <-> `.safetensors`, through the maintained `safetensors` crate
//! (huggingface/safetensors: 8-byte little-endian header length, JSON header padded to 8
//! bytes, raw little-endian data).
//!
//! Tensors are named `{layer_path}.{slot}` (`model_1/conv1.kernel`), f32, Keras layout
//! with TensorFlow-oriented kernels (HWIO; Dense `(in, out)`), whatever backend the
//! source was trained on. `__metadata__` records where they came from: `keras_version`,
//! `source_backend`, `kernel_orientation` (`tensorflow`), `source_sha256` when the
//! source file can still be read, `source_file`, `dialect`. The write is atomic (temp file
//! + rename, nothing left behind on error).

use crate::error::{Error, Result};
use crate::ir::Graph;
use ::safetensors::{tensor::View, Dtype, SafeTensors};
use std::borrow::Cow;
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

/// One f32 tensor of the graph as the crate's [`View`]: its bytes little-endian.
struct F32View<'a>(&'a crate::ir::Tensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        4 * self.0.data.len()
    }
}

/// The whole `.safetensors` file in memory.
pub fn to_bytes(graph: &Graph) -> Result<Vec<u8>> {
    for (name, t) in &graph.params {
        if Some(t.data.len()) != t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
            return Err(Error::Graph(format!(
                "tensor {name} does not match its shape"
            )));
        }
    }
    let views = graph
        .params
        .iter()
        .map(|(name, t)| (name.as_str(), F32View(t)));
    ::safetensors::serialize(views, Some(metadata(graph).into_iter().collect()))
        .map_err(|e| Error::Graph(format!("safetensors: {e}")))
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

/// Parse a `.safetensors` file (F32 tensors only, as [`write_safetensors`] writes them):
/// metadata and tensors by name. The crate checks the header, the offsets and that the
/// data covers the file exactly.
pub fn read_safetensors(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(format!("{name}: {} tensor, expected F32", view.dtype()));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let t = crate::ir::Tensor::new(view.shape().to_vec(), data)
            .map_err(|e| format!("{name}: {}", e.message()))?;
        tensors.insert(name.to_string(), t);
    }
    Ok((meta, tensors))
}
