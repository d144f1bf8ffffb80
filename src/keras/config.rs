//! `model_config` JSON in every Keras dialect, normalised into one functional form.
//!
//! Keras 1.x, 2.0-2.1 (`Model`, Sequential as a bare list), 2.2+/tf.keras (`Functional`,
//! Sequential as a dict, InputLayer entries) and Keras 3 (`inbound_nodes` as
//! `{"args": [...]}` with `keras_history`) all become a [`ModelConfig`]: layers with
//! their calls, each call a list of [`TensorRef`]s. Sequential models get the explicit
//! input layer and chain of calls Keras builds implicitly.

use serde_json::Value;

/// A reference to a tensor: output `tensor` of call `node` of layer `layer`, with the
/// node index exactly as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub layer: String,
    pub node: usize,
    pub tensor: usize,
}

#[derive(Debug, Clone)]
pub struct LayerConfig {
    pub name: String,
    pub class: String,
    /// The layer's own `config` object.
    pub config: Value,
    /// The raw entry (for `module` / `registered_name` checks).
    pub raw: Value,
    /// One entry per call; each call lists its input tensors.
    pub calls: Vec<Vec<TensorRef>>,
    /// Set for nested models (`Model`, `Functional`, `Sequential`).
    pub nested: Option<Box<ModelConfig>>,
    /// Not a row of Keras's `model.layers`: the input layer of a Sequential model (implied
    /// or listed), and the branches of a Keras 1 `Merge` layer.
    pub synthetic: bool,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub class: String,
    pub name: String,
    pub layers: Vec<LayerConfig>,
    pub inputs: Vec<TensorRef>,
    pub outputs: Vec<TensorRef>,
}

pub fn is_container(class: &str) -> bool {
    matches!(class, "Model" | "Functional" | "Sequential")
}

/// Depth of `[`/`{` nesting outside strings, without building anything.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parse the JSON text with size and depth caps ([`crate::limits`]), checked before parsing.
pub fn parse_json(text: &str) -> Result<Value, String> {
    let limits = crate::limits::current();
    if text.len() > limits.json_bytes {
        return Err(format!(
            "{} bytes of JSON is beyond the {} limit (--limit json-bytes=SIZE raises it)",
            text.len(),
            crate::limits::bytes_text(limits.json_bytes as u64)
        ));
    }
    let depth = json_depth(text);
    if depth > limits.json_depth {
        return Err(format!(
            "JSON nested {depth} levels deep, beyond the limit of {} (--limit json-depth=N raises it)",
            limits.json_depth
        ));
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Layers in a model config, nested models' layers included: every entry of every
/// `layers` list, and of every Keras 2.0 Sequential's bare `config` list, wherever it sits.
pub fn count_layers(v: &Value) -> usize {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, x)| match (k.as_str(), x) {
                ("layers" | "config", Value::Array(items)) => items.len() + count_layers(x),
                _ => count_layers(x),
            })
            .sum(),
        Value::Array(items) => items.iter().map(count_layers).sum(),
        _ => 0,
    }
}

/// `{"class_name": ..., "config": ...}` at the root of `model_config`.
pub fn parse_model(root: &Value) -> Result<ModelConfig, String> {
    let class = root
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or("model_config has no class_name")?;
    let config = root.get("config").ok_or("model_config has no config")?;
    let max_layers = crate::limits::current().layers;
    let layers = count_layers(config);
    if layers > max_layers {
        return Err(format!(
            "{layers} layers, beyond the limit of {max_layers} (--limit layers=N raises it)"
        ));
    }
    parse_container(class, config, "model")
}

fn parse_container(
    class: &str,
    config: &Value,
    fallback_name: &str,
) -> Result<ModelConfig, String> {
    match class {
        "Sequential" => parse_sequential(config, fallback_name),
        "Model" | "Functional" => parse_functional(class, config),
        other => Err(format!(
            "model class {other} is not Model, Functional or Sequential"
        )),
    }
}

fn name_of(v: &Value) -> Option<String> {
    v.get("name")
        .or_else(|| v.get("config").and_then(|c| c.get("name")))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn parse_layer_entry(entry: &Value, calls: Vec<Vec<TensorRef>>) -> Result<LayerConfig, String> {
    let class = entry
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or("a layer entry has no class_name")?
        .to_string();
    let name = name_of(entry).ok_or_else(|| format!("a {class} layer has no name"))?;
    let config = entry.get("config").cloned().unwrap_or(Value::Null);
    let nested = if is_container(&class) {
        Some(Box::new(
            parse_container(&class, &config, &name).map_err(|e| format!("{name}: {e}"))?,
        ))
    } else {
        None
    };
    Ok(LayerConfig {
        name,
        class,
        config,
        raw: entry.clone(),
        calls,
        nested,
        synthetic: false,
    })
}

fn parse_functional(class: &str, config: &Value) -> Result<ModelConfig, String> {
    let name = config
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("model")
        .to_string();
    let entries = config
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("functional config has no layers")?;
    let mut layers = Vec::new();
    for e in entries {
        let calls = match e.get("inbound_nodes") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(nodes)) => nodes.iter().map(parse_call).collect::<Result<_, _>>()?,
            Some(_) => return Err("inbound_nodes is not a list".into()),
        };
        layers.push(parse_layer_entry(e, calls)?);
    }
    Ok(ModelConfig {
        class: class.to_string(),
        name,
        layers,
        inputs: parse_endpoints(config.get("input_layers"))?,
        outputs: parse_endpoints(config.get("output_layers"))?,
    })
}

/// One call of a layer: Keras 1/2 `[[name, node, tensor, kwargs?], ...]`, or Keras 3
/// `{"args": [tensor or [tensors]], "kwargs": {...}}`.
fn parse_call(node: &Value) -> Result<Vec<TensorRef>, String> {
    match node {
        Value::Array(items) => items.iter().map(parse_ref).collect(),
        Value::Object(o) => {
            let mut out = Vec::new();
            if let Some(args) = o.get("args") {
                collect_keras_tensors(args, &mut out)?;
            }
            Ok(out)
        }
        _ => Err(format!("cannot read inbound node {node}")),
    }
}

fn collect_keras_tensors(v: &Value, out: &mut Vec<TensorRef>) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| collect_keras_tensors(i, out)),
        Value::Object(o)
            if o.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") =>
        {
            let h = o
                .get("config")
                .and_then(|c| c.get("keras_history"))
                .ok_or("keras tensor without keras_history")?;
            out.push(parse_ref(h)?);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn parse_ref(v: &Value) -> Result<TensorRef, String> {
    let a = v
        .as_array()
        .ok_or_else(|| format!("inbound tensor {v} is not a list"))?;
    let layer = a
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| format!("inbound tensor {v} has no layer name"))?;
    let idx = |i: usize| a.get(i).and_then(Value::as_u64).map(|n| n as usize);
    Ok(TensorRef {
        layer: layer.to_string(),
        node: idx(1).unwrap_or(0),
        tensor: idx(2).unwrap_or(0),
    })
}

/// `input_layers` / `output_layers`: `[[name, node, tensor], ...]` or a single triple.
fn parse_endpoints(v: Option<&Value>) -> Result<Vec<TensorRef>, String> {
    let Some(Value::Array(items)) = v else {
        return Err("functional config has no input_layers/output_layers".into());
    };
    if items.first().map(Value::is_string).unwrap_or(false) {
        return Ok(vec![parse_ref(&Value::Array(items.clone()))?]);
    }
    items.iter().map(parse_ref).collect()
}

/// Sequential: 2.0-2.1 and Keras 1 write a bare list; later versions `{"name", "layers"}`
/// whose first entry may be an `InputLayer`. Produces a chain with an explicit input.
fn parse_sequential(config: &Value, fallback_name: &str) -> Result<ModelConfig, String> {
    let (name, entries) = match config {
        Value::Array(list) => (fallback_name.to_string(), list.clone()),
        Value::Object(o) => (
            o.get("name")
                .and_then(Value::as_str)
                .unwrap_or(fallback_name)
                .to_string(),
            o.get("layers")
                .and_then(Value::as_array)
                .cloned()
                .ok_or("Sequential config has no layers")?,
        ),
        _ => return Err("Sequential config is neither a list nor an object".into()),
    };
    let first = entries.first().ok_or("Sequential model has no layers")?;
    let mut layers = Vec::new();
    let mut prev: String;
    let first_class = first
        .get("class_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut inputs = Vec::new();
    let mut skip = 0;
    if first_class == "InputLayer" {
        let mut l = parse_layer_entry(first, vec![])?;
        l.synthetic = true;
        prev = l.name.clone();
        inputs.push(TensorRef {
            layer: prev.clone(),
            node: 0,
            tensor: 0,
        });
        layers.push(l);
        skip = 1;
    } else if let Some(branches) = keras1_merge_branches(first) {
        // Keras 1: `Sequential([Merge([left, right]), ...])`. The branches' layers are
        // top-level layers of the file (weights included) but not rows of model.layers.
        let mut call = Vec::new();
        for (i, b) in branches.iter().enumerate() {
            let branch = parse_sequential(
                b.get("config").unwrap_or(&Value::Null),
                &format!("branch_{i}"),
            )?;
            call.push(branch.outputs[0].clone());
            inputs.extend(branch.inputs.iter().cloned());
            layers.extend(branch.layers.into_iter().map(|mut l| {
                l.synthetic = true;
                l
            }));
        }
        let merge = parse_layer_entry(first, vec![call])?;
        prev = merge.name.clone();
        layers.push(merge);
        skip = 1;
    } else {
        let fc = first.get("config").cloned().unwrap_or(Value::Null);
        let shape = fc
            .get("batch_input_shape")
            .or_else(|| fc.get("batch_shape"))
            .cloned()
            .ok_or("the first layer of the Sequential model declares no batch_input_shape")?;
        let first_name = name_of(first).unwrap_or_else(|| "layer".into());
        prev = format!("{first_name}_input");
        let mut ic = serde_json::Map::new();
        ic.insert("batch_input_shape".into(), shape);
        ic.insert("name".into(), Value::String(prev.clone()));
        let raw = serde_json::json!({"class_name": "InputLayer", "config": ic.clone()});
        layers.push(LayerConfig {
            name: prev.clone(),
            class: "InputLayer".into(),
            config: Value::Object(ic),
            raw,
            calls: vec![],
            nested: None,
            synthetic: true,
        });
        inputs.push(TensorRef {
            layer: prev.clone(),
            node: 0,
            tensor: 0,
        });
    }
    for e in entries.iter().skip(skip) {
        let call = vec![TensorRef {
            layer: prev.clone(),
            node: container_first_node(&layers, &prev),
            tensor: 0,
        }];
        let l = parse_layer_entry(e, vec![call])?;
        prev = l.name.clone();
        layers.push(l);
    }
    let last_node = container_first_node(&layers, &prev);
    Ok(ModelConfig {
        class: "Sequential".into(),
        name,
        inputs,
        outputs: vec![TensorRef {
            layer: prev,
            node: last_node,
            tensor: 0,
        }],
        layers,
    })
}

/// The branch models of a Keras 1 `Merge` layer that starts a Sequential model.
fn keras1_merge_branches(entry: &Value) -> Option<&Vec<Value>> {
    if entry.get("class_name").and_then(Value::as_str) != Some("Merge") {
        return None;
    }
    entry
        .get("config")?
        .get("layers")?
        .as_array()
        .filter(|b| !b.is_empty())
}

/// The node index a config uses for the first call of `name`: 1 for nested models
/// (their node 0 is the internal one), 0 otherwise.
fn container_first_node(layers: &[LayerConfig], name: &str) -> usize {
    layers
        .iter()
        .find(|l| l.name == name)
        .map(|l| usize::from(l.nested.is_some()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keras208_sequential_list_gets_an_input_chain() {
        let m = parse_model(&json!({"class_name": "Sequential", "config": [
            {"class_name": "Dense", "config": {"name": "d1", "units": 4, "batch_input_shape": [null, 3]}},
            {"class_name": "Dense", "config": {"name": "d2", "units": 2}}]}))
        .unwrap();
        assert_eq!(m.layers.len(), 3);
        assert!(m.layers[0].synthetic);
        assert_eq!(m.layers[0].name, "d1_input");
        assert_eq!(m.layers[2].calls[0][0].layer, "d1");
        assert_eq!(m.outputs[0].layer, "d2");
    }

    #[test]
    fn tf_keras_sequential_dict_with_input_layer() {
        let m = parse_model(
            &json!({"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "InputLayer", "config": {"name": "inp", "batch_input_shape": [null, 3]}},
            {"class_name": "Dense", "config": {"name": "d1", "units": 4}}]}}),
        )
        .unwrap();
        assert_eq!(m.layers.len(), 2);
        assert!(
            m.layers[0].synthetic,
            "Keras does not list it in model.layers"
        );
        assert_eq!(m.inputs[0].layer, "inp");
    }

    #[test]
    fn keras3_inbound_nodes_and_nested_node_index() {
        let m = parse_model(&json!({"class_name": "Functional", "config": {"name": "f",
            "layers": [
                {"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_shape": [null, 8, 8, 3]}, "inbound_nodes": []},
                {"class_name": "Conv2D", "name": "c", "config": {"name": "c"}, "inbound_nodes": [
                    {"args": [{"class_name": "__keras_tensor__", "config": {"shape": [null, 8, 8, 3], "keras_history": ["x", 0, 0]}}], "kwargs": {}}]}],
            "input_layers": [["x", 0, 0]], "output_layers": ["c", 0, 0]}}))
        .unwrap();
        assert_eq!(
            m.layers[1].calls,
            vec![vec![TensorRef {
                layer: "x".into(),
                node: 0,
                tensor: 0
            }]]
        );
        assert_eq!(
            m.outputs,
            vec![TensorRef {
                layer: "c".into(),
                node: 0,
                tensor: 0
            }]
        );
    }

    #[test]
    fn depth_cap_refuses_before_parsing() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let err = parse_json(&deep).unwrap_err();
        assert!(err.contains("nested"), "{err}");
        assert_eq!(json_depth(r#"{"a": "[[[[", "b": [1, {"c": 2}]}"#), 3);
    }

    #[test]
    fn layers_are_counted_through_nested_models() {
        let v: Value = serde_json::from_str(
            r#"{"layers": [{"class_name": "Dense"},
                           {"class_name": "Model", "config": {"layers": [{}, {}, {}]}},
                           {"class_name": "Sequential", "config": [{}, {}]}],
                "input_layers": [["a", 0, 0]]}"#,
        )
        .unwrap();
        // 3 at the top, 3 in the functional model, 2 in the Keras 2.0 Sequential's bare list.
        assert_eq!(count_layers(&v), 8);
        let many = format!(r#"{{"layers": [{}]}}"#, vec!["{}"; 30_000].join(","));
        let root: Value =
            serde_json::from_str(&format!(r#"{{"class_name": "Model", "config": {many}}}"#))
                .unwrap();
        let err = parse_model(&root).unwrap_err();
        assert!(
            err.contains("30000 layers") && err.contains("--limit layers"),
            "{err}"
        );
    }
}
