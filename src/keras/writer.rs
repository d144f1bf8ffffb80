//! IR -> Keras full-model `.h5`, the mirror of [`super::import`] / [`super::weights`].
//!
//! The file is written the way the Keras that made the source writes it (see
//! `shared/reference/keras-h5-format.md` §1-§2):
//!
//! * root attributes `keras_version`, `backend`, `model_config` as scalar variable-length
//!   ASCII strings; `model_config` is the source's own config JSON (verbatim when the
//!   graph still carries the text it was read from, else re-serialised like Python's
//!   `json.dumps`). The IR is not a Keras config, so the config always comes from the
//!   source.
//! * `/model_weights` with `layer_names`, `backend`, `keras_version`, and one group per
//!   top-level layer, weights or not, each with `weight_names`; datasets are named
//!   `layer/var:0` (relative paths, so they create a nested group, as `h5py` does).
//! * A nested model's group holds the weights of every layer inside it: all trainable
//!   weights first (inner layers in order), then all non-trainable ones, each named
//!   `inner_layer/var:0`.
//! * Lists of names: fixed-length NUL-padded strings for Keras < 2.4 (h5py 2.x, the
//!   end2end-all-conv checkpoints), variable-length for tf.keras 2.4+ / Keras 3 (h5py 3);
//!   an empty list is a float64 array of shape (0,). From Keras 2.1.5 on, a list above
//!   64512 bytes is split into `name0`, `name1`, ... as Keras does; Keras < 2.1.5 could
//!   not store it and neither do we.
//!
//! Kernels are written TensorFlow-oriented, exactly as the IR holds them, and `backend`
//! is always `"tensorflow"`. A model read from a Theano-backend file is therefore
//! re-labelled `tensorflow` (its kernels were flipped on import); genuine Keras 2.0.8
//! running on Theano flips them back itself (`convert_kernel`) when it loads the file.
//!
//! Dropped on purpose: `training_config` and `/optimizer_weights` (inference only; a
//! reloaded model must be compiled again to train). Keras 1.x sources are refused: their
//! dialect stores kernels in the Keras 1 layout with no backend record, which the IR
//! does not keep.
//!
//! The write is atomic: a temporary file in the target directory, flushed, then renamed
//! over the target. On any error the temporary file is removed and the target is left
//! as it was.

use crate::error::{Error, Result};
use crate::ir::{Graph, LayerRecord};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Keras's `HDF5_OBJECT_HEADER_LIMIT`.
const HDF5_OBJECT_HEADER_LIMIT: usize = 64512;

/// How the source Keras stored things, decided from its version.
#[derive(Debug, Clone)]
struct Dialect {
    keras_version: String,
    /// `layer/var:0` (TensorFlow variables) or `layer/var` (Theano shared variables,
    /// Keras 3 variable paths).
    name_suffix: &'static str,
    /// Name lists as variable-length strings (h5py 3) rather than fixed `S<n>`.
    vlen_lists: bool,
    /// Keras >= 2.1.5 splits long attributes into `name0`, `name1`...
    chunking: bool,
    /// Keras 3 legacy h5: `top_level_model_weights` group, DepthwiseConv2D `kernel`.
    keras3: bool,
}

fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut it = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

fn dialect_of(graph: &Graph, out: &Path) -> Result<Dialect> {
    let src = &graph.source;
    let keras_version = src.keras_version.clone().unwrap_or_else(|| "2.0.8".into());
    let v = version_tuple(&keras_version);
    if v.0 < 2 || src.dialect.starts_with("Keras 1") {
        return Err(Error::Io {
            file: out.to_path_buf(),
            message: format!(
                "writing a Keras 1.x file is not supported (source {}, {}): Keras 1 stores kernels in its own layout; write .safetensors or read the model with Keras 2 first",
                src.file, src.dialect
            ),
        });
    }
    let keras3 = v.0 >= 3;
    let theano = src.backend.as_deref() == Some("theano");
    Ok(Dialect {
        name_suffix: if keras3 || theano { "" } else { ":0" },
        vlen_lists: v >= (2, 4, 0),
        chunking: v >= (2, 1, 5),
        keras3,
        keras_version,
    })
}

/// Write `graph` as a full-model Keras `.h5` at `path`. `source_config` is the
/// `model_config` JSON the model was read from (`{"class_name", "config"}`).
pub fn write_h5(graph: &Graph, source_config: &Value, path: &Path) -> Result<()> {
    let dialect = dialect_of(graph, path)?;
    let config_text = config_text(graph, source_config);
    let plan = plan_groups(graph, source_config, &dialect, path)?;
    atomic_write(path, |tmp| {
        write_file(tmp, &dialect, &config_text, &plan, graph).map_err(|message| Error::Io {
            file: path.to_path_buf(),
            message: format!("writing HDF5: {message}"),
        })
    })
}

/// [`write_h5`] with the config text the graph was read from.
pub fn write_h5_from_graph(graph: &Graph, path: &Path) -> Result<()> {
    let text = graph
        .source
        .model_config
        .as_deref()
        .ok_or_else(|| Error::Io {
            file: path.to_path_buf(),
            message: "the graph does not carry the model_config it was read from".into(),
        })?;
    let cfg = super::config::parse_json(text).map_err(|message| Error::BadJson {
        file: PathBuf::from(&graph.source.file),
        message,
    })?;
    write_h5(graph, &cfg, path)
}

/// The `model_config` attribute: the source's own text when `source_config` is exactly
/// what it parses to (key order and number spelling as Keras wrote them), otherwise
/// `source_config` re-serialised as Python's `json.dumps` does (keys sorted, since
/// `serde_json` does not keep their order). `model.to_json()` extras (`keras_version`,
/// `backend`) are not part of `model_config` and are removed.
fn config_text(graph: &Graph, source_config: &Value) -> String {
    let mut cfg = source_config.clone();
    let mut stripped = false;
    if let Some(o) = cfg.as_object_mut() {
        stripped |= o.remove("keras_version").is_some();
        stripped |= o.remove("backend").is_some();
    }
    if !stripped {
        if let Some(text) = &graph.source.model_config {
            if serde_json::from_str::<Value>(text).ok().as_ref() == Some(source_config) {
                return text.clone();
            }
        }
    }
    let mut s = String::new();
    python_json(&cfg, &mut s);
    s
}

/// `json.dumps(v)` with Python's defaults: `", "` and `": "` separators, `ensure_ascii`,
/// floats spelled as `repr`.
pub fn python_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str(&n.to_string())
            } else {
                out.push_str(&python_float(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Value::String(s) => python_str(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_json(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_str(k, out);
                out.push_str(": ");
                python_json(x, out);
            }
            out.push('}');
        }
    }
}

fn python_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, positional for 1e-4 <= |x| < 1e16.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{x:e}"); // e.g. "-1.5e-7"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let e = exp as usize;
            let (int, frac) = if digits.len() > e + 1 {
                (digits[..e + 1].to_string(), digits[e + 1..].to_string())
            } else {
                (
                    format!("{digits}{}", "0".repeat(e + 1 - digits.len())),
                    "0".to_string(),
                )
            };
            format!("{int}.{frac}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let es = if exp < 0 { "-" } else { "+" };
        format!("{sign}{mant}e{es}{:02}", exp.abs())
    }
}

/// One group under `/model_weights`: a top-level layer and its datasets in order.
#[derive(Debug)]
struct GroupPlan {
    name: String,
    /// (weight name as listed in `weight_names`, param key)
    weights: Vec<(String, String)>,
}

const NON_TRAINABLE_SLOTS: &[&str] = &["moving_mean", "moving_variance"];

/// Each layer's own `trainable` flag by path (`model_1/conv1`), from the source config.
fn own_trainable(cfg: &Value, prefix: &str, out: &mut HashMap<String, bool>) {
    let inner = cfg.get("config").unwrap_or(&Value::Null);
    let layers = match inner {
        Value::Array(a) => a.as_slice(),
        Value::Object(o) => o
            .get("layers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
        _ => &[],
    };
    for l in layers {
        let lc = l.get("config").unwrap_or(&Value::Null);
        let name = lc
            .get("name")
            .or_else(|| l.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let path = format!("{prefix}{name}");
        let t = lc.get("trainable").and_then(Value::as_bool).unwrap_or(true);
        out.insert(path.clone(), t);
        let class = l.get("class_name").and_then(Value::as_str).unwrap_or("");
        if super::config::is_container(class) {
            own_trainable(l, &format!("{path}/"), out);
        }
    }
}

fn var_name(rec: &LayerRecord, slot: &str, d: &Dialect) -> String {
    let var = if d.keras3 && slot == "depthwise_kernel" && rec.class == "DepthwiseConv2D" {
        "kernel"
    } else {
        slot
    };
    var.to_string()
}

fn plan_groups(
    graph: &Graph,
    source_config: &Value,
    d: &Dialect,
    out: &Path,
) -> Result<Vec<GroupPlan>> {
    let mut own = HashMap::new();
    own_trainable(source_config, "", &mut own);
    let mut plans = Vec::new();
    let mut used = BTreeSet::new();
    let layers = &graph.layers;
    let mut i = 0;
    while i < layers.len() {
        let top = &layers[i];
        if top.depth != 0 {
            return Err(Error::Graph(format!(
                "layer table: {} at depth {} has no enclosing model",
                top.path, top.depth
            )));
        }
        let mut j = i + 1;
        while j < layers.len() && layers[j].depth > 0 {
            j += 1;
        }
        let mut weights = Vec::new();
        if j == i + 1 {
            for slot in &top.weights {
                let key = format!("{}.{slot}", top.path);
                let name = format!("{}/{}{}", top.path, var_name(top, slot, d), d.name_suffix);
                weights.push((name, key));
            }
        } else {
            // Nested model: trainable weights of the inner layers first, then the rest.
            // A layer counts as trainable when it and every model between it and this
            // group are; the group's own flag does not change the order (Keras 2.0.8
            // `Container.non_trainable_weights`).
            let mut stack: Vec<(usize, String, bool)> = vec![(0, top.path.clone(), true)];
            let mut entries = Vec::new(); // (effective trainable, inner name, record)
            for rec in &layers[i + 1..j] {
                while stack.last().is_some_and(|(dep, _, _)| *dep >= rec.depth) {
                    stack.pop();
                }
                let (_, parent, parent_t) =
                    stack.last().cloned().unwrap_or((0, top.path.clone(), true));
                let name = rec
                    .path
                    .strip_prefix(&format!("{parent}/"))
                    .unwrap_or(&rec.path)
                    .to_string();
                let t = parent_t && own.get(&rec.path).copied().unwrap_or(rec.trainable);
                stack.push((rec.depth, rec.path.clone(), t));
                entries.push((t, name, rec));
            }
            for pass_trainable in [true, false] {
                for (t, name, rec) in &entries {
                    for slot in &rec.weights {
                        let slot_trainable = *t && !NON_TRAINABLE_SLOTS.contains(&slot.as_str());
                        if slot_trainable == pass_trainable {
                            let key = format!("{}.{slot}", rec.path);
                            let wname =
                                format!("{name}/{}{}", var_name(rec, slot, d), d.name_suffix);
                            weights.push((wname, key));
                        }
                    }
                }
            }
        }
        for (_, key) in &weights {
            if !graph.params.contains_key(key) {
                return Err(Error::Graph(format!(
                    "layer table lists weight {key}, which the graph does not hold"
                )));
            }
            if !used.insert(key.clone()) {
                return Err(Error::Graph(format!("weight {key} would be written twice")));
            }
        }
        plans.push(GroupPlan {
            name: top.path.clone(),
            weights,
        });
        i = j;
    }
    let missing: Vec<&String> = graph.params.keys().filter(|k| !used.contains(*k)).collect();
    if !missing.is_empty() {
        return Err(Error::Io {
            file: out.to_path_buf(),
            message: format!(
                "parameters not listed in any layer's weights, refusing to drop them: {missing:?}"
            ),
        });
    }
    Ok(plans)
}

/// Write through `f` into a temporary file next to `path`, then rename it over `path`.
/// The temporary file never outlives an error.
pub(crate) use crate::files::atomic_write;

type WResult<T> = std::result::Result<T, String>;

fn write_file(
    tmp: &Path,
    d: &Dialect,
    config_text: &str,
    plan: &[GroupPlan],
    graph: &Graph,
) -> WResult<()> {
    let file = hdf5::File::create(tmp).map_err(|e| e.to_string())?;
    let root: &hdf5::Group = &file;
    attr_scalar_str(root.id(), "keras_version", &d.keras_version)?;
    attr_scalar_str(root.id(), "backend", "tensorflow")?;
    attr_scalar_str(root.id(), "model_config", config_text)?;
    let mw = root
        .create_group("model_weights")
        .map_err(|e| e.to_string())?;
    let mut layer_names: Vec<String> = plan.iter().map(|g| g.name.clone()).collect();
    if d.keras3 {
        layer_names.retain(|n| n != "top_level_model_weights");
    }
    attr_str_list(mw.id(), "layer_names", &layer_names, d)?;
    attr_scalar_str(mw.id(), "backend", "tensorflow")?;
    attr_scalar_str(mw.id(), "keras_version", &d.keras_version)?;
    for g in plan {
        let group = ensure_group(&mw, &g.name)?;
        let names: Vec<String> = g.weights.iter().map(|(n, _)| n.clone()).collect();
        attr_str_list(group.id(), "weight_names", &names, d)?;
        for (name, key) in &g.weights {
            let t = graph
                .params
                .get(key)
                .ok_or_else(|| format!("missing tensor {key}"))?;
            let (dir, leaf) = match name.rsplit_once('/') {
                Some((a, b)) => (Some(a), b),
                None => (None, name.as_str()),
            };
            let parent = match dir {
                Some(dir) => ensure_group(&group, dir)?,
                None => group.clone(),
            };
            let ds = parent
                .new_dataset::<f32>()
                .shape(t.shape.clone())
                .create(leaf)
                .map_err(|e| format!("{}/{name}: {e}", g.name))?;
            ds.write_raw(&t.data)
                .map_err(|e| format!("{}/{name}: {e}", g.name))?;
        }
    }
    if d.keras3 {
        let g = ensure_group(&mw, "top_level_model_weights")?;
        attr_str_list(g.id(), "weight_names", &[], d)?;
    }
    file.flush().map_err(|e| e.to_string())?;
    file.close().map_err(|e| e.to_string())?;
    Ok(())
}

fn ensure_group(parent: &hdf5::Group, path: &str) -> WResult<hdf5::Group> {
    let mut g = parent.clone();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        g = if g.link_exists(part) {
            g.group(part).map_err(|e| format!("{path}: {e}"))?
        } else {
            g.create_group(part).map_err(|e| format!("{path}: {e}"))?
        };
    }
    Ok(g)
}

fn cname(name: &str) -> WResult<CString> {
    CString::new(name).map_err(|_| format!("name {name:?} contains a NUL byte"))
}

/// A scalar variable-length ASCII string attribute (h5py 2.x `bytes`; Python's
/// `json.dumps` output is ASCII). Non-ASCII text is stored as UTF-8.
fn attr_scalar_str(loc: hdf5_sys::h5i::hid_t, name: &str, value: &str) -> WResult<()> {
    use hdf5_sys::h5a::{H5Aclose, H5Acreate2, H5Awrite};
    use hdf5_sys::h5p::H5P_DEFAULT;
    use hdf5_sys::h5s::{H5S_class_t, H5Sclose, H5Screate};
    use hdf5_sys::h5t::*;
    let cn = cname(name)?;
    let cv = cname(value)?;
    hdf5::sync::sync(|| unsafe {
        let ty = H5Tcopy(*H5T_C_S1);
        H5Tset_size(ty, H5T_VARIABLE);
        H5Tset_strpad(ty, H5T_str_t::H5T_STR_NULLTERM);
        let cset = if value.is_ascii() {
            H5T_cset_t::H5T_CSET_ASCII
        } else {
            H5T_cset_t::H5T_CSET_UTF8
        };
        H5Tset_cset(ty, cset);
        let space = H5Screate(H5S_class_t::H5S_SCALAR);
        let attr = H5Acreate2(loc, cn.as_ptr(), ty, space, H5P_DEFAULT, H5P_DEFAULT);
        let ptr = cv.as_ptr();
        let rc = if attr < 0 {
            -1
        } else {
            H5Awrite(
                attr,
                ty,
                (&ptr as *const *const std::os::raw::c_char).cast(),
            )
        };
        if attr >= 0 {
            H5Aclose(attr);
        }
        H5Sclose(space);
        H5Tclose(ty);
        if rc < 0 {
            Err(format!("cannot write attribute {name}"))
        } else {
            Ok(())
        }
    })
}

/// A list-of-strings attribute the way Keras stores it: empty -> float64 (0,); chunked
/// into `name0..` above 64512 bytes (Keras >= 2.1.5, fixed-length chunks, as numpy's
/// `array_split` keeps the `S<n>` dtype); else fixed `S<n>` NULLPAD or variable-length.
fn attr_str_list(
    loc: hdf5_sys::h5i::hid_t,
    name: &str,
    items: &[String],
    d: &Dialect,
) -> WResult<()> {
    if items.is_empty() {
        return attr_empty_f64(loc, name);
    }
    let width = items.iter().map(String::len).max().unwrap_or(1).max(1);
    if let Some(bad) = items.iter().find(|s| s.len() > HDF5_OBJECT_HEADER_LIMIT) {
        return Err(format!(
            "{name}: the name {:?}... is longer than {HDF5_OBJECT_HEADER_LIMIT} bytes, which Keras cannot store",
            &bad[..40]
        ));
    }
    let n = items.len();
    if n * width > HDF5_OBJECT_HEADER_LIMIT {
        if !d.chunking {
            return Err(format!(
                "{name}: {n} names of up to {width} bytes exceed the {HDF5_OBJECT_HEADER_LIMIT}-byte HDF5 header limit, which Keras {} cannot store (Keras >= 2.1.5 splits it)",
                d.keras_version
            ));
        }
        let mut k = 1;
        let split = |k: usize| -> Vec<&[String]> {
            let (q, r) = (n / k, n % k);
            let mut out = Vec::new();
            let mut at = 0;
            for c in 0..k {
                let len = q + usize::from(c < r);
                out.push(&items[at..at + len]);
                at += len;
            }
            out
        };
        while split(k)
            .iter()
            .any(|c| c.len() * width > HDF5_OBJECT_HEADER_LIMIT)
        {
            k += 1;
        }
        for (c, chunk) in split(k).into_iter().enumerate() {
            attr_fixed_list(loc, &format!("{name}{c}"), chunk, width)?;
        }
        return Ok(());
    }
    if d.vlen_lists {
        attr_vlen_list(loc, name, items)
    } else {
        attr_fixed_list(loc, name, items, width)
    }
}

fn attr_empty_f64(loc: hdf5_sys::h5i::hid_t, name: &str) -> WResult<()> {
    use hdf5_sys::h5a::{H5Aclose, H5Acreate2};
    use hdf5_sys::h5p::H5P_DEFAULT;
    use hdf5_sys::h5s::{H5Sclose, H5Screate_simple};
    use hdf5_sys::h5t::H5T_IEEE_F64LE;
    let cn = cname(name)?;
    hdf5::sync::sync(|| unsafe {
        let dims = [0 as hdf5_sys::h5::hsize_t];
        let space = H5Screate_simple(1, dims.as_ptr(), std::ptr::null());
        let attr = H5Acreate2(
            loc,
            cn.as_ptr(),
            *H5T_IEEE_F64LE,
            space,
            H5P_DEFAULT,
            H5P_DEFAULT,
        );
        let ok = attr >= 0;
        if ok {
            H5Aclose(attr);
        }
        H5Sclose(space);
        if ok {
            Ok(())
        } else {
            Err(format!("cannot write attribute {name}"))
        }
    })
}

fn attr_fixed_list(
    loc: hdf5_sys::h5i::hid_t,
    name: &str,
    items: &[String],
    width: usize,
) -> WResult<()> {
    use hdf5_sys::h5a::{H5Aclose, H5Acreate2, H5Awrite};
    use hdf5_sys::h5p::H5P_DEFAULT;
    use hdf5_sys::h5s::{H5Sclose, H5Screate_simple};
    use hdf5_sys::h5t::*;
    let cn = cname(name)?;
    let mut buf = vec![0u8; width * items.len()];
    for (i, s) in items.iter().enumerate() {
        if s.as_bytes().contains(&0) {
            return Err(format!("{name}: {s:?} contains a NUL byte"));
        }
        buf[i * width..i * width + s.len()].copy_from_slice(s.as_bytes());
    }
    hdf5::sync::sync(|| unsafe {
        let ty = H5Tcopy(*H5T_C_S1);
        H5Tset_size(ty, width);
        H5Tset_strpad(ty, H5T_str_t::H5T_STR_NULLPAD);
        H5Tset_cset(ty, H5T_cset_t::H5T_CSET_ASCII);
        let dims = [items.len() as hdf5_sys::h5::hsize_t];
        let space = H5Screate_simple(1, dims.as_ptr(), std::ptr::null());
        let attr = H5Acreate2(loc, cn.as_ptr(), ty, space, H5P_DEFAULT, H5P_DEFAULT);
        let rc = if attr < 0 {
            -1
        } else {
            H5Awrite(attr, ty, buf.as_ptr().cast())
        };
        if attr >= 0 {
            H5Aclose(attr);
        }
        H5Sclose(space);
        H5Tclose(ty);
        if rc < 0 {
            Err(format!("cannot write attribute {name}"))
        } else {
            Ok(())
        }
    })
}

fn attr_vlen_list(loc: hdf5_sys::h5i::hid_t, name: &str, items: &[String]) -> WResult<()> {
    use hdf5_sys::h5a::{H5Aclose, H5Acreate2, H5Awrite};
    use hdf5_sys::h5p::H5P_DEFAULT;
    use hdf5_sys::h5s::{H5Sclose, H5Screate_simple};
    use hdf5_sys::h5t::*;
    let cn = cname(name)?;
    let cs: Vec<CString> = items.iter().map(|s| cname(s)).collect::<WResult<_>>()?;
    let ptrs: Vec<*const std::os::raw::c_char> = cs.iter().map(|c| c.as_ptr()).collect();
    let ascii = items.iter().all(|s| s.is_ascii());
    hdf5::sync::sync(|| unsafe {
        let ty = H5Tcopy(*H5T_C_S1);
        H5Tset_size(ty, H5T_VARIABLE);
        H5Tset_strpad(ty, H5T_str_t::H5T_STR_NULLTERM);
        H5Tset_cset(
            ty,
            if ascii {
                H5T_cset_t::H5T_CSET_ASCII
            } else {
                H5T_cset_t::H5T_CSET_UTF8
            },
        );
        let dims = [items.len() as hdf5_sys::h5::hsize_t];
        let space = H5Screate_simple(1, dims.as_ptr(), std::ptr::null());
        let attr = H5Acreate2(loc, cn.as_ptr(), ty, space, H5P_DEFAULT, H5P_DEFAULT);
        let rc = if attr < 0 {
            -1
        } else {
            H5Awrite(attr, ty, ptrs.as_ptr().cast())
        };
        if attr >= 0 {
            H5Aclose(attr);
        }
        H5Sclose(space);
        H5Tclose(ty);
        if rc < 0 {
            Err(format!("cannot write attribute {name}"))
        } else {
            Ok(())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_python_repr() {
        for (x, want) in [
            (0.001, "0.001"),
            (1e-05, "1e-05"),
            (1.0, "1.0"),
            (0.8999999761581421, "0.8999999761581421"),
            (1e16, "1e+16"),
            (123.5, "123.5"),
            (-2.5e-7, "-2.5e-07"),
            (0.0001, "0.0001"),
        ] {
            assert_eq!(python_float(x), want, "{x}");
        }
    }

    #[test]
    fn json_like_python_dumps() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, 2.0, null], "a": "x\u00e9\"", "c": {}}"#).unwrap();
        let mut s = String::new();
        python_json(&v, &mut s);
        assert_eq!(s, r#"{"a": "x\u00e9\"", "b": [1, 2.0, null], "c": {}}"#);
    }
}
