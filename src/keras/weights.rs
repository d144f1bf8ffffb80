//! Weight lookup by name, the way a careful human would match them, not by position.
//!
//! A top-level layer's weights sit in `/model_weights/<layer>/<weight_name>`. A nested
//! model's group holds the weights of all its inner layers, trainable ones first and
//! frozen ones after, each named `<inner_layer>/<var>:0`; matching by position would
//! silently scramble frozen layers, so the inner layer name and variable name decide.

use super::h5::H5File;
use crate::error::{Error, Result};
use crate::ir::Tensor;
use std::collections::BTreeMap;

/// One entry of a group's `weight_names`.
#[derive(Debug, Clone)]
pub struct WeightEntry {
    /// HDF5 path of the dataset.
    pub path: String,
    /// Name scope of the variable, as the file spells it: the owning layer's name, maybe
    /// behind enclosing scopes or with a TF `_1` suffix.
    pub layer_hint: String,
    /// The slot it fills (`kernel`, `moving_mean`...), if the variable name says so.
    pub slot: Option<&'static str>,
}

/// Where each top-level layer's weights are.
pub struct WeightIndex {
    pub groups: BTreeMap<String, Vec<WeightEntry>>,
    pub keras_version: Option<String>,
    pub backend: Option<String>,
}

/// Keras 2/3 variable names and their Keras 1 spellings.
fn slot_of(var: &str) -> Option<&'static str> {
    Some(match var {
        "kernel" | "W" => "kernel",
        "bias" | "b" => "bias",
        "gamma" => "gamma",
        "beta" => "beta",
        "moving_mean" | "running_mean" => "moving_mean",
        "moving_variance" | "running_std" => "moving_variance",
        "depthwise_kernel" => "depthwise_kernel",
        "pointwise_kernel" => "pointwise_kernel",
        "alpha" | "alphas" => "alpha",
        _ => return None,
    })
}

const KERAS1_SUFFIXES: &[&str] = &[
    "running_mean",
    "running_std",
    "moving_mean",
    "moving_variance",
    "depthwise_kernel",
    "pointwise_kernel",
    "gamma",
    "beta",
    "alphas",
    "kernel",
    "bias",
    "W",
    "b",
];

/// `conv1/kernel:0` -> (`conv1`, kernel); Keras 1 `conv1_W` -> (`conv1`, kernel).
pub fn parse_weight_name(name: &str) -> (String, Option<&'static str>) {
    let base = match name.rfind(':') {
        Some(i) if name[i + 1..].chars().all(|c| c.is_ascii_digit()) => &name[..i],
        _ => name,
    };
    let parts: Vec<&str> = base.split('/').collect();
    if parts.len() >= 2 {
        return (
            parts[..parts.len() - 1].join("/"),
            slot_of(parts[parts.len() - 1]),
        );
    }
    for suffix in KERAS1_SUFFIXES {
        if let Some(layer) = base.strip_suffix(suffix).and_then(|s| s.strip_suffix('_')) {
            return (layer.to_string(), slot_of(suffix));
        }
    }
    (String::new(), None)
}

impl WeightIndex {
    /// Read `layer_names` and every group's `weight_names` under `root`
    /// (`/model_weights`, or `/` for weights-only files).
    pub fn read(file: &H5File, root: &str) -> Result<WeightIndex> {
        let layer_names =
            file.string_list_attr(root, "layer_names")?
                .ok_or_else(|| Error::BadFormat {
                    file: file.path().to_path_buf(),
                    what: root.to_string(),
                    message: "no layer_names attribute: this is not a Keras weights group".into(),
                })?;
        let mut groups = BTreeMap::new();
        for layer in layer_names {
            let gpath = format!("{}/{}", root.trim_end_matches('/'), layer);
            if !file.exists(&gpath)? {
                return Err(Error::MissingWeight {
                    file: file.path().to_path_buf(),
                    layer: layer.clone(),
                    weight: "(its whole weight group)".into(),
                });
            }
            let names = file
                .string_list_attr(&gpath, "weight_names")?
                .unwrap_or_default();
            let entries = names
                .iter()
                .map(|n| {
                    let (layer_hint, slot) = parse_weight_name(n);
                    WeightEntry {
                        path: format!("{gpath}/{n}"),
                        layer_hint,
                        slot,
                    }
                })
                .collect();
            groups.insert(layer, entries);
        }
        Ok(WeightIndex {
            groups,
            keras_version: file.string_attr(root, "keras_version")?,
            backend: file.string_attr(root, "backend")?,
        })
    }

    /// The datasets of one layer, by slot. `group` is its top-level layer name, `inner`
    /// its own name when it sits inside a nested model (None for a top-level layer).
    /// `slots` is the layer's expected slots, in Keras order (positional fallback for
    /// files whose variable names say nothing, like `param_0`).
    pub fn find(
        &self,
        group: &str,
        inner: Option<&str>,
        slots: &[&'static str],
    ) -> std::result::Result<Vec<(&'static str, String)>, String> {
        let entries = self
            .groups
            .get(group)
            .ok_or_else(|| format!("no weight group {group} in the file"))?;
        let mine: Vec<&WeightEntry> = match inner {
            None => entries.iter().collect(),
            Some(name) => {
                let nested = format!("/{name}");
                let exact: Vec<_> = entries
                    .iter()
                    .filter(|e| e.layer_hint == name || e.layer_hint.ends_with(&nested))
                    .collect();
                if exact.is_empty() {
                    // TF uniquifies scopes (`conv1_1`) when a model is rebuilt in one process.
                    entries
                        .iter()
                        .filter(|e| {
                            let last = e.layer_hint.rsplit('/').next().unwrap_or("");
                            strip_uniquifier(last) == name
                        })
                        .collect()
                } else {
                    exact
                }
            }
        };
        let mut out = Vec::new();
        let named = mine.iter().all(|e| e.slot.is_some());
        for (i, slot) in slots.iter().enumerate() {
            let found = if named {
                // Keras 3 calls a DepthwiseConv2D's weight plain `kernel`.
                let alias = (*slot == "depthwise_kernel" && !slots.contains(&"pointwise_kernel"))
                    .then_some("kernel");
                mine.iter()
                    .find(|e| e.slot == Some(*slot))
                    .or_else(|| mine.iter().find(|e| alias.is_some() && e.slot == alias))
            } else if inner.is_none() && mine.len() == slots.len() {
                mine.get(i)
            } else {
                None
            };
            match found {
                Some(e) => out.push((*slot, e.path.clone())),
                None => return Err(slot.to_string()),
            }
        }
        if named && inner.is_none() && mine.len() > slots.len() {
            let used: Vec<&String> = out.iter().map(|(_, p)| p).collect();
            let extra: Vec<_> = mine
                .iter()
                .filter(|e| !used.contains(&&e.path))
                .map(|e| e.path.clone())
                .collect();
            return Err(format!("unexpected weights {extra:?}"));
        }
        Ok(out)
    }

    /// Read a list of (slot, path), each dataset with the shape it must have as stored
    /// (`shapes[i]` for `found[i]`, checked against the dataspace before a byte is read).
    pub fn load(
        file: &H5File,
        found: &[(&'static str, String)],
        shapes: &[Vec<usize>],
    ) -> Result<Vec<(&'static str, Tensor)>> {
        if shapes.len() != found.len() {
            return Err(Error::Other(format!(
                "{}: {} weights found, {} shapes to check them against",
                file.path().display(),
                found.len(),
                shapes.len()
            )));
        }
        found
            .iter()
            .zip(shapes)
            .map(|((slot, path), shape)| Ok((*slot, file.read_tensor(path, Some(shape))?)))
            .collect()
    }
}

fn strip_uniquifier(name: &str) -> &str {
    match name.rfind('_') {
        Some(i) if i + 1 < name.len() && name[i + 1..].chars().all(|c| c.is_ascii_digit()) => {
            &name[..i]
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_names_of_every_generation() {
        assert_eq!(
            parse_weight_name("conv1/kernel:0"),
            ("conv1".into(), Some("kernel"))
        );
        assert_eq!(
            parse_weight_name("model_1/bn_conv1/moving_variance:0"),
            ("model_1/bn_conv1".into(), Some("moving_variance"))
        );
        assert_eq!(
            parse_weight_name("conv2d/kernel"),
            ("conv2d".into(), Some("kernel"))
        );
        assert_eq!(
            parse_weight_name("convolution2d_1_W"),
            ("convolution2d_1".into(), Some("kernel"))
        );
        assert_eq!(
            parse_weight_name("batchnormalization_1_running_std"),
            ("batchnormalization_1".into(), Some("moving_variance"))
        );
        assert_eq!(parse_weight_name("param_0").1, None);
    }
}
