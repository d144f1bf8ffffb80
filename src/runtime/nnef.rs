//! NNEF, tract's own model format, as a device-ready file beside ONNX: `.nnef.tgz` is
//! tract's archive (`graph.nnef` + one `.dat` per tensor) plus `allconv.json`, the same
//! metadata an ONNX export carries (preprocessing, TTA, test vectors). tract's loader
//! skips entries it does not know, so the file stays a plain NNEF archive for other
//! tract users.

use super::tract::terr;
use crate::error::{Error, Result};
use crate::meta::Metadata;
use std::io::Read;
use std::path::Path;
use tract_onnx::prelude::*;
use tract_onnx::WithOnnx;

/// The archive entry holding allconv's metadata.
pub const METADATA_ENTRY: &str = "allconv.json";

/// Largest `allconv.json` read (test vectors of a 1152x896 RGB input are ~17 MB).
const MAX_METADATA_BYTES: u64 = 256 << 20;

fn framework() -> tract_nnef::framework::Nnef {
    super::kernels::tune_for_this_cpu();
    tract_nnef::nnef().with_onnx()
}

/// A gzip or tar signature, or an NNEF file name.
pub fn looks_like_nnef(path: &Path, bytes: &[u8]) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".nnef.tgz")
        || name.ends_with(".nnef.tar")
        || name.ends_with(".tgz")
        || bytes.starts_with(&[0x1f, 0x8b])
        || bytes.get(257..262) == Some(b"ustar")
}

/// Make a loaded archive runnable: float16 weights cast back once (not on every run),
/// then tract's code generation for this CPU. The graph was decluttered before it was
/// written, and a second declutter of the read-back graph was seen to fail in tract 0.23
/// on ResNet50 (pulling a Downsample over a Reshape: "Invalid axis"), so it is skipped.
pub fn optimize(mut model: TypedModel) -> TractResult<TypedModel> {
    super::kernels::tune_for_this_cpu();
    fold_casts_of_consts(&mut model)?;
    model.optimize()?;
    Ok(model)
}

/// `Cast(Const)` -> `Const` of the cast value.
fn fold_casts_of_consts(model: &mut TypedModel) -> TractResult<usize> {
    use tract_onnx::tract_core::ops::{cast::Cast, konst::Const};
    let mut patch = TypedModelPatch::default();
    let mut n = 0;
    for node in model.nodes() {
        let Some(cast) = node.op_as::<Cast>() else {
            continue;
        };
        let Some(k) = model.node(node.inputs[0].node).op_as::<Const>() else {
            continue;
        };
        let v = k.val().cast_to_dt(cast.to)?.into_owned();
        let c = patch.add_const(format!("{}.folded", node.name), v)?;
        patch.shunt_outside(model, node.id.into(), c)?;
        n += 1;
    }
    patch.apply(model)?;
    Ok(n)
}

/// Parse an archive: tract's model and allconv's metadata (empty when absent).
pub fn read(bytes: &[u8]) -> Result<(TypedModel, Metadata)> {
    let metadata = read_metadata(bytes)?;
    let model = framework()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(terr("reading the NNEF archive"))?;
    Ok((model, metadata))
}

fn archive(bytes: &[u8]) -> tar::Archive<Box<dyn Read + '_>> {
    let r: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    tar::Archive::new(r)
}

fn read_metadata(bytes: &[u8]) -> Result<Metadata> {
    let bad = |m: String| Error::Other(format!("NNEF archive: {m}"));
    let mut ar = archive(bytes);
    for entry in ar.entries().map_err(|e| bad(e.to_string()))? {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if path.as_os_str() != METADATA_ENTRY {
            continue;
        }
        let size = entry.header().size().map_err(|e| bad(e.to_string()))?;
        if size > MAX_METADATA_BYTES {
            return Err(bad(format!(
                "{METADATA_ENTRY} claims {size} bytes, more than the {MAX_METADATA_BYTES} allowed"
            )));
        }
        let mut text = String::new();
        entry
            .take(MAX_METADATA_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("{METADATA_ENTRY}: {e}")))?;
        return serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "{METADATA_ENTRY} is not a JSON object of strings: {e}"
            ))
        });
    }
    Ok(Metadata::new())
}

/// ONNX bytes -> the typed graph an NNEF archive holds, at fixed input shapes, and how
/// many constants were stored as float16. The graph is decluttered (tract's normal form,
/// what its NNEF writer serialises) but not optimised for this CPU, so the file runs on
/// every target. `weights_f16` stores the large constants as float16, each followed by a
/// cast back to float32 (folded once at load).
pub fn typed_from_onnx(
    onnx: &[u8],
    input_shapes: &[Vec<usize>],
    weights_f16: bool,
) -> Result<(TypedModel, usize)> {
    let mut typed = super::TractModel::onnx_with_shapes(onnx, input_shapes)?
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(terr("typing the graph"))?;
    same_lower_to_explicit(&mut typed).map_err(terr("spelling out padding"))?;
    let n = if weights_f16 {
        consts_to_f16(&mut typed).map_err(terr("storing the weights as float16"))?
    } else {
        0
    };
    Ok((typed, n))
}

/// tract's declutter renames explicit pads that happen to equal SAME_LOWER to `SameLower`,
/// which its NNEF writer cannot express (TensorFlow `same` 1-D pools hit this): spell
/// those pads out again, from each node's input shape.
fn same_lower_to_explicit(model: &mut TypedModel) -> TractResult<()> {
    use tract_onnx::tract_core::internal::DimLike;
    use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec, PoolSpec, SumPool};
    let explicit = |spec: &PoolSpec, input: &[TDim]| -> TractResult<PaddingSpec> {
        let shape = spec
            .data_format
            .shape(input.iter().cloned().collect::<TVec<_>>())?;
        let (mut before, mut after) = (tvec!(), tvec!());
        for d in spec.computed_padding(shape.hw_dims()) {
            before.push(d.pad_before.to_usize()?);
            after.push(d.pad_after.to_usize()?);
        }
        Ok(PaddingSpec::Explicit(before, after))
    };
    for id in 0..model.nodes.len() {
        let input: TVec<TDim> = match model.nodes[id].inputs.first() {
            Some(&o) => model.outlet_fact(o)?.shape.iter().cloned().collect(),
            None => continue,
        };
        let op = &mut model.nodes[id].op;
        let spec = if let Some(c) = op.downcast_mut::<Conv>() {
            &mut c.pool_spec
        } else if let Some(p) = op.downcast_mut::<SumPool>() {
            &mut p.pool_spec
        } else if let Some(p) = op.downcast_mut::<MaxPool>() {
            &mut p.pool_spec
        } else {
            continue;
        };
        if spec.padding == PaddingSpec::SameLower {
            spec.padding = explicit(spec, &input)?;
        }
    }
    Ok(())
}

/// Each large float32 constant becomes a float16 constant and a cast to float32.
fn consts_to_f16(model: &mut TypedModel) -> TractResult<usize> {
    use tract_onnx::tract_core::ops::{cast::cast, konst::Const};
    let mut patch = TypedModelPatch::default();
    let mut n = 0;
    for node in model.nodes() {
        let Some(k) = node.op_as::<Const>() else {
            continue;
        };
        let t = k.val();
        if t.datum_type() != f32::datum_type() || t.len() < crate::meta::F16_MIN_ELEMENTS {
            continue;
        }
        let half = t.cast_to::<f16>()?.into_owned();
        let c = patch.add_const(format!("{}.f16", node.name), half)?;
        let out = patch.wire_node(
            format!("{}.to_f32", node.name),
            cast(f32::datum_type()),
            &[c],
        )?;
        patch.shunt_outside(model, node.id.into(), out[0])?;
        n += 1;
    }
    patch.apply(model)?;
    Ok(n)
}

/// A typed model and metadata -> tar (gzip'd when `gzip`), entries in a fixed order and
/// timestamp so the same model gives the same bytes. Weights hardly compress (gzip saves
/// ~1% on the full-width ResNet50) while gunzip costs about 1 s at load there, so
/// `.nnef.tar` is the fast-starting choice and `.nnef.tgz` the conventional one.
pub fn to_archive(model: &TypedModel, metadata: &Metadata, gzip: bool) -> Result<Vec<u8>> {
    let tract_tar = framework()
        .write_to_tar_with_config(model, Vec::new(), false, true)
        .map_err(terr("writing NNEF"))?;
    let io = |e: std::io::Error| Error::Other(format!("packing the NNEF archive: {e}"));
    let mut out = tar::Builder::new(Vec::new());
    let json = serde_json::to_vec(metadata).map_err(|e| Error::Other(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(315_532_800);
    header.set_cksum();
    out.append_data(&mut header, METADATA_ENTRY, json.as_slice())
        .map_err(io)?;
    let mut input = tar::Archive::new(tract_tar.as_slice());
    for entry in input.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let mut header = entry.header().clone();
        let path = entry.path().map_err(io)?.into_owned();
        out.append_data(&mut header, path, &mut entry).map_err(io)?;
    }
    let tar = out.into_inner().map_err(io)?;
    if !gzip {
        return Ok(tar);
    }
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).and_then(|()| gz.finish()).map_err(io)
}
