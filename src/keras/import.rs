//! `.h5` (+ optional JSON architecture) -> [`Graph`].
//!
//! Order of work: open the file hardened, read the root attributes, parse the config,
//! refuse every code-carrying or unknown layer at once, then walk the calls of each
//! model (nested models inlined under their name as a path prefix), converting each
//! layer through the registry and loading its weights by name with shape checks.

use super::config::{self, LayerConfig, ModelConfig, TensorRef};
use super::h5::H5File;
use super::layers::{registry, LayerCtx};
use super::weights::WeightIndex;
use crate::error::{Error, RefusedLayer, Result};
use crate::ir::*;
use crate::layout;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How to read a model.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Architecture JSON (`model.to_json()`) for weights-only files.
    pub config_json: Option<PathBuf>,
    /// Backend that wrote the kernels, for files that do not say (Keras 1).
    pub assume_backend: Option<String>,
    /// Spatial size to fix the inputs to (H, W) or (L,); `None` keeps the declared one.
    pub input_size: Option<Vec<usize>>,
    /// Free a declared spatial size: every input's height and width (or length) become
    /// symbols, so a whole-image model saved at 1152x896 exports as one file for all sizes
    /// (`--input-size any`). Ignored when `input_size` is given.
    pub any_size: bool,
}

/// Where a file's layer groups are: the root of a `save_weights` file (it lists
/// `layer_names` there), `/model_weights` of a whole-model file.
pub fn weights_root(file: &H5File) -> Result<&'static str> {
    let weights_only = file
        .attr_names("/")?
        .iter()
        .any(|n| n.starts_with("layer_names"));
    Ok(if weights_only { "/" } else { "/model_weights" })
}

/// Read a Keras `.h5` file into the IR.
pub fn read_model(path: &Path, opts: &ReadOptions) -> Result<Graph> {
    let _deadline = super::hang_guard::Guard::start(path);
    let file = H5File::open(path)?;
    let bad = |what: &str, message: String| Error::BadFormat {
        file: path.to_path_buf(),
        what: what.into(),
        message,
    };

    let (config_text, json_version, json_backend) = match &opts.config_json {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::Io { file: p.clone(), message: e.to_string() })?;
            let v = config::parse_json(&text).map_err(|message| Error::BadJson { file: p.clone(), message })?;
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            (text, s("keras_version"), s("backend"))
        }
        None => match file.string_attr("/", "model_config")? {
            Some(t) => (t, None, None),
            None => {
                return Err(bad(
                    "model_config",
                    "no model_config attribute: this is a weights-only file; give the architecture with --config model.json".into(),
                ))
            }
        },
    };
    let json_file = opts
        .config_json
        .clone()
        .unwrap_or_else(|| path.to_path_buf());
    let root_json = config::parse_json(&config_text).map_err(|message| Error::BadJson {
        file: json_file.clone(),
        message,
    })?;
    let model = config::parse_model(&root_json).map_err(|message| Error::BadJson {
        file: json_file.clone(),
        message,
    })?;

    let weights_root = weights_root(&file)?;
    let index = WeightIndex::read(&file, weights_root)?;

    let root_version = file.string_attr("/", "keras_version")?.or(json_version);
    let keras_version = root_version.clone().or(index.keras_version.clone());
    // Keras 2 treats a weights group without keras_version as written by Keras 1.
    let keras1 = index.keras_version.is_none()
        && !root_version
            .as_deref()
            .is_some_and(|v| v.starts_with('2') || v.starts_with('3'))
        || root_version.as_deref().is_some_and(|v| v.starts_with('1'));
    let keras3 = keras_version.as_deref().is_some_and(|v| v.starts_with('3'));
    let mut warnings = Vec::new();
    let file_backend = index
        .backend
        .clone()
        .or(file.string_attr("/", "backend")?)
        .or(json_backend);
    let backend = match (&file_backend, &opts.assume_backend) {
        (_, Some(b)) => Some(b.clone()),
        (Some(b), None) => Some(b.clone()),
        (None, None) => {
            if keras1 {
                warnings.push("Keras 1 file without a backend attribute: kernels read as TensorFlow-oriented, as Keras 2 does; pass --source-backend theano for a Theano-trained model".into());
            }
            None
        }
    };
    let dialect = dialect_name(&model, keras1, keras3, keras_version.as_deref());

    let source = Source {
        file: path.display().to_string(),
        keras_version,
        backend: file_backend,
        dialect,
        model_class: model.class.clone(),
        warnings,
        model_config: Some(config_text),
    };
    let weights = WeightSource::H5 {
        file: &file,
        index: &index,
    };
    let theano = backend.as_deref() == Some("theano");
    let size = match (&opts.input_size, opts.any_size) {
        (Some(s), _) => Size::Fixed(s),
        (None, true) => Size::Any,
        (None, false) => Size::Declared,
    };
    build_graph(&model, weights, source, keras1, keras3, theano, size)
}

/// The inputs' spatial size for shape inference.
enum Size<'a> {
    Declared,
    Fixed(&'a [usize]),
    Any,
}

/// The IR of a Keras `model_config` whose weights are already in memory, under
/// `{layer_path}.{slot}` in Keras 2 TensorFlow layout (what [`crate::passes::rehead`] makes):
/// the same importer as [`read_model`], so the graph is the one the written `.h5` holds.
/// `source` describes it (`model_config` must be the config's text).
pub fn graph_from_config(
    config: &Value,
    params: &std::collections::BTreeMap<String, Tensor>,
    source: Source,
    input_size: Option<&[usize]>,
) -> Result<Graph> {
    let label = PathBuf::from(&source.file);
    let model = config::parse_model(config).map_err(|message| Error::BadJson {
        file: label.clone(),
        message,
    })?;
    let weights = WeightSource::Memory {
        label: &label,
        params,
    };
    let size = input_size.map_or(Size::Declared, Size::Fixed);
    build_graph(&model, weights, source, false, false, false, size)
}

/// Build the graph of a parsed config: refused layers all reported at once, weights from
/// `weights`, shapes inferred at `input_size`.
fn build_graph(
    model: &ModelConfig,
    weights: WeightSource,
    mut source: Source,
    keras1: bool,
    keras3: bool,
    theano: bool,
    size: Size,
) -> Result<Graph> {
    let path = PathBuf::from(&source.file);
    let path = path.as_path();
    refuse_code_and_unknowns(model, "", path)?;
    let bad = |what: &str, message: String| Error::BadFormat {
        file: path.to_path_buf(),
        what: what.into(),
        message,
    };
    let mut b = Builder {
        weights,
        graph: Graph::default(),
        keras1,
        keras3,
        theano,
        problems: Vec::new(),
        weight_group: None,
        records: HashMap::new(),
        warnings: std::mem::take(&mut source.warnings),
    };
    b.graph.name = model.name.clone();
    b.collect_records(model, "", 0, true);
    let outs = b.build_container(model, "", "", None)?;
    if !b.problems.is_empty() {
        return Err(Error::Refused {
            file: path.to_path_buf(),
            layers: b.problems,
        });
    }
    let mut graph = b.graph;
    graph.outputs = outs
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("output_layers", "a model output is never produced".into()))?;
    let channels_first = graph.nodes.iter().any(|n| uses_channels_first(&n.op));
    for i in &mut graph.inputs {
        i.data_format = if channels_first {
            DataFormat::ChannelsFirst
        } else {
            DataFormat::ChannelsLast
        };
    }
    source.warnings = b.warnings;
    graph.source = source;
    let fixed = match size {
        Size::Fixed(s) => Some(s),
        Size::Declared => None,
        Size::Any => {
            for i in 0..graph.inputs.len() {
                let input = &graph.inputs[i];
                let (sp, c) = split_channels(&input.shape, input.data_format)
                    .map_err(|e| Error::Graph(format!("{}: {e}", path.display())))?;
                let names: &[&str] = if sp.len() == 2 { &["H", "W"] } else { &["L"] };
                let free = (0..sp.len())
                    .map(|k| Dim::sym(names.get(k).copied().unwrap_or("N")))
                    .collect();
                let shape = join_channels(free, c, input.data_format);
                let v = input.value;
                graph.inputs[i].shape = shape.clone();
                graph.values[v].shape = shape;
            }
            None
        }
    };
    graph
        .infer_shapes(fixed)
        .map_err(|e| Error::Graph(format!("{}: {e}", path.display())))?;
    Ok(graph)
}

fn dialect_name(model: &ModelConfig, keras1: bool, keras3: bool, version: Option<&str>) -> String {
    let v = version.unwrap_or("unknown version");
    let form = match (model.class.as_str(), keras1) {
        (_, true) => "Keras 1.x",
        _ if keras3 => "Keras 3 legacy h5",
        ("Functional", _) => "tf.keras 2.3+",
        ("Sequential", _) if v.starts_with("2.0") || v.starts_with("2.1") => "Keras 2.0-2.1",
        ("Sequential", _) => "Keras 2.2+/tf.keras",
        _ => "Keras 2.0-2.2",
    };
    format!("{form} ({}, keras_version {v})", model.class)
}

fn uses_channels_first(op: &Op) -> bool {
    let f = match op {
        Op::Conv(c) => c.data_format,
        Op::DepthwiseConv(c) => c.data_format,
        Op::Pool(p) => p.data_format,
        Op::GlobalPool(g) => g.data_format,
        Op::ZeroPadding(e) | Op::Cropping(e) => e.data_format,
        Op::UpSampling(u) => u.data_format,
        _ => return false,
    };
    f == DataFormat::ChannelsFirst
}

/// Walk the whole config and refuse, all at once, every layer that carries code or that
/// allconv does not know. Nothing in the config is ever evaluated.
fn refuse_code_and_unknowns(model: &ModelConfig, prefix: &str, file: &Path) -> Result<()> {
    let mut refused = Vec::new();
    scan(model, prefix, &mut refused);
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused {
            file: file.to_path_buf(),
            layers: refused,
        })
    }
}

fn scan(model: &ModelConfig, prefix: &str, out: &mut Vec<RefusedLayer>) {
    for l in &model.layers {
        let path = format!("{prefix}{}", l.name);
        let refuse = |reason: &str| RefusedLayer {
            path: path.clone(),
            class: l.class.clone(),
            reason: reason.into(),
        };
        if let Some(m) = l.raw.get("module").and_then(Value::as_str) {
            if !(m == "keras"
                || m.starts_with("keras.")
                || m.starts_with("tf_keras")
                || m.starts_with("tensorflow.keras")
                || m.starts_with("tensorflow.python.keras"))
            {
                out.push(refuse(&format!(
                    "module {m:?} is outside Keras; custom code is refused, never imported"
                )));
                continue;
            }
        }
        if let Some(r) = l.raw.get("registered_name").and_then(Value::as_str) {
            if r != l.class && !r.starts_with("keras") {
                out.push(refuse(&format!("registered custom object {r:?}; refused")));
                continue;
            }
        }
        match l.class.as_str() {
            "Lambda" => out.push(refuse(
                "Lambda layer carries Python bytecode; refused, never executed",
            )),
            "TFOpLambda" | "SlicingOpLambda" => out.push(refuse(
                "TF op layer calls an arbitrary TensorFlow function; refused",
            )),
            "Merge" if merge_carries_code(&l.config) => out.push(refuse(
                "Keras 1 Merge with a Python function as mode; refused, never executed",
            )),
            "InputLayer" => {}
            c if config::is_container(c) => {
                if let Some(n) = &l.nested {
                    scan(n, &format!("{path}/"), out);
                }
            }
            c if registry().contains_key(c) => {}
            _ => out.push(refuse("unknown or custom layer class; not supported")),
        }
    }
}

fn merge_carries_code(cfg: &Value) -> bool {
    let typed = |k: &str| {
        cfg.get(k)
            .and_then(Value::as_str)
            .is_some_and(|t| t != "raw")
    };
    !cfg.get("mode").map(Value::is_string).unwrap_or(true)
        || typed("mode_type")
        || typed("output_shape_type")
        || typed("output_mask_type")
}

/// Where a layer's weights come from: an `.h5` file's weight groups, or tensors already
/// in memory under `{layer_path}.{slot}` in Keras 2 TensorFlow layout ([`graph_from_config`]).
enum WeightSource<'a> {
    H5 {
        file: &'a H5File,
        index: &'a WeightIndex,
    },
    Memory {
        label: &'a Path,
        params: &'a std::collections::BTreeMap<String, Tensor>,
    },
}

struct Builder<'a> {
    weights: WeightSource<'a>,
    graph: Graph,
    keras1: bool,
    keras3: bool,
    theano: bool,
    problems: Vec<RefusedLayer>,
    /// The top-level nested model being built, whose `.h5` group holds the weights.
    weight_group: Option<String>,
    /// layer path -> index in graph.layers
    records: HashMap<String, usize>,
    warnings: Vec<String>,
}

impl Builder<'_> {
    /// The Keras layer table, in file order, nested models expanded after their entry.
    fn collect_records(
        &mut self,
        model: &ModelConfig,
        prefix: &str,
        depth: usize,
        trainable: bool,
    ) {
        for l in &model.layers {
            let path = format!("{prefix}{}", l.name);
            let own = l
                .config
                .get("trainable")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let t = trainable && own;
            if !l.synthetic {
                self.records.insert(path.clone(), self.graph.layers.len());
                self.graph.layers.push(LayerRecord {
                    path: path.clone(),
                    class: l.class.clone(),
                    depth,
                    trainable: t,
                    own_trainable: own,
                    output: None,
                    weights: vec![],
                });
            }
            if let Some(n) = &l.nested {
                self.collect_records(n, &format!("{path}/"), depth + 1, t);
            }
        }
    }

    fn file_err(&self) -> PathBuf {
        match &self.weights {
            WeightSource::H5 { file, .. } => file.path().to_path_buf(),
            WeightSource::Memory { label, .. } => label.to_path_buf(),
        }
    }

    /// Instantiate one call of a model. `inputs` is `None` for the outermost model (its
    /// input layers become graph inputs). Returns its outputs (`None` where a refused
    /// layer upstream made them unavailable).
    fn build_container(
        &mut self,
        model: &ModelConfig,
        prefix: &str,
        suffix: &str,
        inputs: Option<Vec<Option<ValueId>>>,
    ) -> Result<Vec<Option<ValueId>>> {
        let by_name: HashMap<&str, &LayerConfig> =
            model.layers.iter().map(|l| (l.name.as_str(), l)).collect();
        // (layer, call) -> outputs; None marks "unavailable because of an earlier problem".
        let mut produced: HashMap<(String, usize), Vec<Option<ValueId>>> = HashMap::new();
        for (i, r) in model.inputs.iter().enumerate() {
            let l = by_name.get(r.layer.as_str()).ok_or_else(|| {
                self.bad_json(format!("input layer {} is not among the layers", r.layer))
            })?;
            let v = match &inputs {
                Some(given) => *given.get(i).ok_or_else(|| {
                    self.bad_json(format!("model {} called with too few inputs", model.name))
                })?,
                None => Some(self.add_graph_input(l, prefix)?),
            };
            produced.insert((r.layer.clone(), 0), vec![v]);
            if let (Some(v), Some(&rec)) = (v, self.records.get(&format!("{prefix}{}", l.name))) {
                self.graph.layers[rec].output.get_or_insert(v);
            }
        }
        let mut pending: Vec<(usize, usize)> = model
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.class != "InputLayer")
            .flat_map(|(i, l)| (0..l.calls.len()).map(move |c| (i, c)))
            .collect();
        while !pending.is_empty() {
            let before = pending.len();
            let mut still = Vec::new();
            for (li, call) in pending {
                let l = &model.layers[li];
                let refs = &l.calls[call];
                let resolved: Option<Vec<Option<ValueId>>> = refs
                    .iter()
                    .map(|r| self.lookup(&by_name, &produced, r))
                    .collect();
                let Some(ins) = resolved else {
                    still.push((li, call));
                    continue;
                };
                let outs = self.build_call(l, prefix, suffix, call, ins)?;
                produced.insert((l.name.clone(), call), outs);
            }
            if still.len() == before {
                let names: Vec<_> = still
                    .iter()
                    .map(|&(i, _)| model.layers[i].name.clone())
                    .collect();
                return Err(self.bad_json(format!("layers {names:?} wait for inputs that no layer produces (broken inbound_nodes)")));
            }
            pending = still;
        }
        model
            .outputs
            .iter()
            .map(|r| {
                self.lookup(&by_name, &produced, r).ok_or_else(|| {
                    self.bad_json(format!(
                        "output {} of model {} is never produced",
                        r.layer, model.name
                    ))
                })
            })
            .collect()
    }

    fn bad_json(&self, message: String) -> Error {
        Error::BadJson {
            file: self.file_err(),
            message,
        }
    }

    /// The value a [`TensorRef`] points to, if already produced. Nested models number
    /// their calls from 1 in configs (node 0 is their internal node).
    fn lookup(
        &self,
        by_name: &HashMap<&str, &LayerConfig>,
        produced: &HashMap<(String, usize), Vec<Option<ValueId>>>,
        r: &TensorRef,
    ) -> Option<Option<ValueId>> {
        let is_container = by_name
            .get(r.layer.as_str())
            .is_some_and(|l| l.nested.is_some());
        let call = if is_container && r.node >= 1 {
            r.node - 1
        } else {
            r.node
        };
        let outs = produced.get(&(r.layer.clone(), call))?;
        Some(outs.get(r.tensor).copied().flatten())
    }

    fn add_graph_input(&mut self, l: &LayerConfig, prefix: &str) -> Result<ValueId> {
        let cfg = &l.config;
        let shape = cfg
            .get("batch_input_shape")
            .or_else(|| cfg.get("batch_shape"))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                self.bad_json(format!("input layer {} has no batch_input_shape", l.name))
            })?;
        let input_err = |message: String| Error::Layer {
            file: self.file_err(),
            layer: format!("{prefix}{}", l.name),
            class: l.class.clone(),
            message,
        };
        // null is an unknown size; anything else must be a size allconv accepts.
        let dims: Vec<Option<usize>> = shape
            .iter()
            .skip(1)
            .map(|d| match d {
                Value::Null => Ok(None),
                _ => match d.as_u64() {
                    Some(u) => check_dim("batch_input_shape dimension", u as usize)
                        .map(Some)
                        .map_err(|e| input_err(e.message())),
                    None => Err(input_err(format!(
                        "batch_input_shape dimension {d} is neither a size nor null"
                    ))),
                },
            })
            .collect::<Result<_>>()?;
        let rank = dims.len();
        let names: &[&str] = match rank {
            3 => &["H", "W", "C"],
            2 => &["L", "C"],
            _ => &[],
        };
        let shape: Shape = dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Some(n) => Dim::Known(*n),
                None => Dim::sym(names.get(i).copied().unwrap_or("N")),
            })
            .collect();
        check_shape(&shape)
            .map_err(|e| input_err(format!("batch_input_shape: {}", e.message())))?;
        Ok(self.graph.add_input(
            &format!("{prefix}{}", l.name),
            shape,
            DataFormat::ChannelsLast,
        ))
    }

    fn build_call(
        &mut self,
        l: &LayerConfig,
        prefix: &str,
        suffix: &str,
        call: usize,
        ins: Vec<Option<ValueId>>,
    ) -> Result<Vec<Option<ValueId>>> {
        let path = format!("{prefix}{}", l.name);
        let call_suffix = if call == 0 {
            suffix.to_string()
        } else {
            format!("{suffix}:{call}")
        };
        // An upstream problem was already reported: skip quietly.
        let Some(ins) = ins.into_iter().collect::<Option<Vec<ValueId>>>() else {
            return Ok(vec![None]);
        };
        if let Some(nested) = &l.nested {
            // Weights of every layer inside live in the outermost nested model's group.
            let outer = self.weight_group.is_none();
            if outer {
                self.weight_group = Some(l.name.clone());
            }
            let outs = self.build_container(
                nested,
                &format!("{path}/"),
                &call_suffix,
                Some(ins.into_iter().map(Some).collect()),
            );
            if outer {
                self.weight_group = None;
            }
            let outs = outs?;
            if let (Some(Some(v)), Some(&rec)) = (outs.first(), self.records.get(&path)) {
                self.graph.layers[rec].output.get_or_insert(*v);
            }
            return Ok(outs);
        }
        let shapes: Vec<Shape> = ins
            .iter()
            .map(|&v| self.graph.values[v].shape.clone())
            .collect();
        let ctx = LayerCtx::new(
            &l.name,
            &l.class,
            &l.config,
            shapes.clone(),
            self.keras1,
            self.keras3,
        );
        let converter = registry()[l.class.as_str()];
        let ops = match converter(&ctx) {
            Ok(ops) => ops,
            Err(reason) => {
                self.problems.push(RefusedLayer {
                    path,
                    class: l.class.clone(),
                    reason,
                });
                return Ok(vec![None]);
            }
        };
        // Every size in the config bounded before any arithmetic on it or any weight read.
        if let Err(e) = ops.iter().try_for_each(check_op_sizes) {
            self.problems.push(RefusedLayer {
                path,
                class: l.class.clone(),
                reason: e.message(),
            });
            return Ok(vec![None]);
        }
        let unread = ctx.unread_keys();
        if !unread.is_empty() && call == 0 {
            self.warnings.push(format!(
                "{path} ({}): config keys not understood and ignored: {}",
                l.class,
                unread.join(", ")
            ));
        }
        if call == 0 && suffix.is_empty()
            || !self
                .graph
                .params
                .keys()
                .any(|k| k.starts_with(&format!("{path}.")))
        {
            if let Err(e) = self.load_weights(&path, l, &ops, &shapes) {
                match e {
                    Error::Layer { message, .. } => {
                        self.problems.push(RefusedLayer {
                            path,
                            class: l.class.clone(),
                            reason: message,
                        });
                        return Ok(vec![None]);
                    }
                    other => return Err(other),
                }
            }
        }
        let mut current = ins;
        let n = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            let name = if i + 1 == n {
                format!("{path}{call_suffix}")
            } else {
                format!("{path}{call_suffix}/pre{i}")
            };
            let node = self
                .graph
                .add_node(name, path.clone(), l.class.clone(), op, current);
            let idx = self.graph.nodes.len() - 1;
            self.infer_node(idx).map_err(|message| Error::Layer {
                file: self.file_err(),
                layer: path.clone(),
                class: l.class.clone(),
                message,
            })?;
            current = vec![node];
        }
        if let Some(&rec) = self.records.get(&path) {
            self.graph.layers[rec].output.get_or_insert(current[0]);
        }
        Ok(vec![Some(current[0])])
    }

    fn infer_node(&mut self, idx: usize) -> std::result::Result<(), String> {
        let g = &self.graph;
        let node = &g.nodes[idx];
        let ins: Vec<&Shape> = node.inputs.iter().map(|&v| &g.values[v].shape).collect();
        let shape = infer_op(&node.op, &ins, |slot| {
            g.params.get(&node.param_key(slot)).map(|t| t.shape.clone())
        })
        .map_err(|e| e.message())?;
        let out = node.output;
        self.graph.values[out].shape = shape;
        Ok(())
    }

    /// Find, convert and shape-check the layer's weights; store them as `{path}.{slot}`.
    fn load_weights(
        &mut self,
        path: &str,
        l: &LayerConfig,
        ops: &[Op],
        shapes: &[Shape],
    ) -> Result<()> {
        let layer_err = |message: String| Error::Layer {
            file: self.file_err(),
            layer: path.to_string(),
            class: l.class.clone(),
            message,
        };
        let Some(op) = ops.iter().find(|o| !o.weight_slots().is_empty()) else {
            return Ok(());
        };
        let slots = op.weight_slots();
        let input = shapes.first().ok_or_else(|| layer_err("no input".into()))?;
        let expected = expected_shapes(op, input).map_err(layer_err)?;
        let (h5, index) = match &self.weights {
            WeightSource::H5 { file, index } => (*file, *index),
            WeightSource::Memory { params, .. } => {
                // Already in Keras 2 TensorFlow layout: shape-checked, copied.
                let mut names = Vec::new();
                for slot in &slots {
                    let key = format!("{path}.{slot}");
                    let t = params.get(&key).ok_or_else(|| Error::MissingWeight {
                        file: self.file_err(),
                        layer: path.to_string(),
                        weight: slot.to_string(),
                    })?;
                    let want = expected.get(*slot).ok_or_else(|| Error::Layer {
                        file: self.file_err(),
                        layer: path.to_string(),
                        class: l.class.clone(),
                        message: format!("no expected shape for weight {slot}"),
                    })?;
                    if &t.shape != want {
                        return Err(Error::WeightShape {
                            file: self.file_err(),
                            layer: path.to_string(),
                            weight: key,
                            expected: want.clone(),
                            got: t.shape.clone(),
                        });
                    }
                    self.graph.params.insert(key, t.clone());
                    names.push(slot.to_string());
                }
                if let Some(&rec) = self.records.get(path) {
                    self.graph.layers[rec].weights = names;
                }
                return Ok(());
            }
        };
        // Layer names may contain '/' (tf.keras DenseNet: `conv1/conv`): the group comes
        // from the nesting, never from splitting the path.
        let (group, inner) = match &self.weight_group {
            None => (l.name.as_str(), None),
            Some(g) => (g.as_str(), Some(l.name.as_str())),
        };
        let found = index
            .find(group, inner, &slots)
            .map_err(|slot| Error::MissingWeight {
                file: self.file_err(),
                layer: path.to_string(),
                weight: slot,
            })?;
        let file = self.file_err();
        let want_of = |slot: &str| {
            expected.get(slot).ok_or_else(|| Error::Layer {
                file: file.clone(),
                layer: path.to_string(),
                class: l.class.clone(),
                message: format!("no expected shape for weight {slot}"),
            })
        };
        // Each dataset's declared shape (HDF5 dataspace metadata, after the safety checks)
        // against the config's, before a byte of any of them is read.
        let mut stored_shapes = Vec::with_capacity(found.len());
        for (slot, hdf5_path) in &found {
            let stored = h5.weight_shape(hdf5_path)?;
            let got = self.kernel_fix(op, slot, &stored).shape(&stored);
            let want = want_of(*slot)?;
            if &got != want {
                return Err(Error::WeightShape {
                    file: self.file_err(),
                    layer: path.to_string(),
                    weight: hdf5_path.clone(),
                    expected: want.clone(),
                    got,
                });
            }
            stored_shapes.push(stored);
        }
        let tensors = WeightIndex::load(h5, &found, &stored_shapes)?;
        let mut names = Vec::new();
        for ((slot, mut t), (_, hdf5_path)) in tensors.into_iter().zip(&found) {
            t = self.convert_kernel(op, slot, t);
            let want = want_of(slot)?;
            if &t.shape != want {
                return Err(Error::WeightShape {
                    file: self.file_err(),
                    layer: path.to_string(),
                    weight: hdf5_path.clone(),
                    expected: want.clone(),
                    got: t.shape,
                });
            }
            names.push(slot.to_string());
            self.graph.params.insert(format!("{path}.{slot}"), t);
        }
        if let Some(&rec) = self.records.get(path) {
            self.graph.layers[rec].weights = names;
        }
        Ok(())
    }

    /// How a stored weight of shape `stored` is brought to Keras 2 layout; decided from
    /// the shape alone, so the declared shape can be checked before the data is read.
    fn kernel_fix(&self, op: &Op, slot: &str, stored: &[usize]) -> KernelFix {
        let is_spatial_kernel = matches!(slot, "kernel" | "depthwise_kernel")
            && matches!(op, Op::Conv(_) | Op::DepthwiseConv(_));
        if !is_spatial_kernel || !self.keras1 {
            return KernelFix::Keep;
        }
        match op {
            // Keras 1 `th` kernels: (out, in, rows, cols).
            Op::Conv(c)
                if c.kernel.len() == 2
                    && c.data_format == DataFormat::ChannelsFirst
                    && stored.len() == 4 =>
            {
                KernelFix::OihwToHwio
            }
            // Keras 1 Convolution1D: (k, 1, in, out).
            Op::Conv(c) if c.kernel.len() == 1 && stored.len() == 4 && stored[1] == 1 => {
                KernelFix::DropAxis1
            }
            _ => KernelFix::Keep,
        }
    }

    /// Bring a stored kernel to Keras 2 TensorFlow orientation (HWIO, correlation).
    fn convert_kernel(&self, op: &Op, slot: &str, t: Tensor) -> Tensor {
        let is_spatial_kernel = matches!(slot, "kernel" | "depthwise_kernel")
            && matches!(op, Op::Conv(_) | Op::DepthwiseConv(_));
        if !is_spatial_kernel {
            return t;
        }
        let mut t = match self.kernel_fix(op, slot, &t.shape) {
            KernelFix::Keep => t,
            KernelFix::OihwToHwio => layout::oihw_to_hwio(&t),
            KernelFix::DropAxis1 => Tensor {
                shape: KernelFix::DropAxis1.shape(&t.shape),
                data: t.data,
            },
        };
        if self.theano {
            t = layout::flip_spatial(&t);
        }
        t
    }
}

/// What [`Builder::convert_kernel`] does to a stored kernel's layout (the Theano flip
/// keeps the shape and is not listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelFix {
    Keep,
    /// Keras 1 `th` Conv2D kernel (out, in, rows, cols) -> HWIO.
    OihwToHwio,
    /// Keras 1 Convolution1D kernel (k, 1, in, out) -> (k, in, out).
    DropAxis1,
}

impl KernelFix {
    /// The shape the stored shape becomes.
    fn shape(self, stored: &[usize]) -> Vec<usize> {
        match (self, stored) {
            (KernelFix::OihwToHwio, &[o, i, h, w]) => vec![h, w, i, o],
            (KernelFix::DropAxis1, &[k, _, i, o]) => vec![k, i, o],
            _ => stored.to_vec(),
        }
    }
}

/// The weight shapes a layer must have, by slot, given its input shape (no batch).
pub fn expected_shapes(
    op: &Op,
    input: &Shape,
) -> std::result::Result<HashMap<&'static str, Vec<usize>>, String> {
    let known = |d: &Dim| {
        d.known()
            .ok_or_else(|| "the input's channel dimension is unknown".to_string())
    };
    let channels = |f: DataFormat| -> std::result::Result<usize, String> {
        let (_, c) = split_channels(input, f).map_err(|e| e.to_string())?;
        known(&c)
    };
    let mut m = HashMap::new();
    match op {
        Op::Conv(c) => {
            let mut k = c.kernel.clone();
            k.extend([channels(c.data_format)?, c.filters]);
            m.insert("kernel", k);
            m.insert("bias", vec![c.filters]);
        }
        Op::DepthwiseConv(c) => {
            let cin = channels(c.data_format)?;
            let depthwise_out = cin.checked_mul(c.depth_multiplier).ok_or_else(|| {
                format!(
                    "{cin} input channels x depth_multiplier {} overflows",
                    c.depth_multiplier
                )
            })?;
            let mut k = c.kernel.clone();
            k.extend([cin, c.depth_multiplier]);
            m.insert("depthwise_kernel", k);
            let out = match c.pointwise_filters {
                Some(f) => {
                    m.insert("pointwise_kernel", vec![1, 1, depthwise_out, f]);
                    f
                }
                None => depthwise_out,
            };
            m.insert("bias", vec![out]);
        }
        Op::Dense(c) => {
            let cin = known(input.last().ok_or("Dense on a scalar")?)?;
            m.insert("kernel", vec![cin, c.units]);
            m.insert("bias", vec![c.units]);
        }
        Op::BatchNorm(c) => {
            let axis = c.axis.checked_sub(1).ok_or("axis out of range")?;
            let n = known(input.get(axis).ok_or("axis out of range")?)?;
            for s in ["gamma", "beta", "moving_mean", "moving_variance"] {
                m.insert(s, vec![n]);
            }
        }
        Op::PRelu { shared_axes } => {
            let mut s = Vec::new();
            for (i, d) in input.iter().enumerate() {
                s.push(if shared_axes.contains(&(i + 1)) {
                    1
                } else {
                    known(d)?
                });
            }
            m.insert("alpha", s);
        }
        _ => {}
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_weight_shapes_do_not_overflow() {
        let op = |pointwise: Option<usize>| {
            Op::DepthwiseConv(DepthwiseConfig {
                depth_multiplier: 1 << 63,
                pointwise_filters: pointwise,
                kernel: vec![3, 3],
                strides: vec![1, 1],
                dilation: vec![1, 1],
                padding: Padding::Same,
                data_format: DataFormat::ChannelsLast,
                use_bias: true,
                activation: Activation::Linear,
            })
        };
        let input = vec![Dim::Known(6), Dim::Known(6), Dim::Known(3)];
        // 3 channels x 2^63 (old code: a multiply panic, separable and depthwise alike).
        for pointwise in [Some(4), None] {
            let e = expected_shapes(&op(pointwise), &input).unwrap_err();
            assert!(e.contains("depth_multiplier"), "{e}");
        }
    }

    #[test]
    fn kernel_fix_shapes_match_the_data_transforms() {
        let t = Tensor::new(vec![4, 3, 2, 5], (0..120).map(|v| v as f32).collect()).unwrap();
        assert_eq!(
            KernelFix::OihwToHwio.shape(&t.shape),
            layout::oihw_to_hwio(&t).shape
        );
        assert_eq!(KernelFix::DropAxis1.shape(&[5, 1, 3, 2]), vec![5, 3, 2]);
        assert_eq!(KernelFix::Keep.shape(&[3, 3, 3, 2]), vec![3, 3, 3, 2]);
    }
}
