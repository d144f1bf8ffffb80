//! Builds functional Keras 2.0.8 models natively: the `model_config` JSON Keras saves
//! (layer classes, every config key, the names Keras gives — explicit ones like `conv1`
//! or `block1_conv1`, or its per-process counters `conv2d_1`, `activation_3` — and the
//! order `Container` sorts layers in) and the weights by layer path, initialised from a
//! seeded generator with the distributions of Keras's initialisers.
//!
//! The IR is read from that pair by the same importer that reads `.h5` files
//! ([`crate::keras::graph_from_config`]), so the graph that runs is the graph a written
//! `.h5` holds. Used by [`crate::passes::rehead`] (whole-image tops) and
//! [`crate::keras::nets`] (the paper's patch classifiers).

use crate::error::{Error, Result};
use crate::ir::{Graph, Source, Tensor};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A Keras model as Keras saves it: its `model_config` and its weights by layer path
/// (`model_1/conv1.kernel`, `conv2d_1.bias`), Keras layout.
#[derive(Debug, Clone)]
pub struct KerasModel {
    pub config: Value,
    pub params: BTreeMap<String, Tensor>,
}

impl KerasModel {
    /// The IR of this model, read by the `.h5` importer. `source` describes it; its
    /// `model_config` is filled in here (Keras's JSON text of `config`).
    pub fn to_graph(&self, mut source: Source) -> Result<Graph> {
        let mut text = String::new();
        crate::keras::writer::python_json(&self.config, &mut text);
        source.model_config = Some(text);
        crate::keras::graph_from_config(&self.config, &self.params, source, None)
    }

    /// Keras's `count_params`: every weight, BatchNorm moving statistics included.
    pub fn count_params(&self) -> usize {
        self.params.values().map(Tensor::len).sum()
    }
}

/// One layer call in a functional Keras model, before ordering.
#[derive(Debug, Clone)]
pub(crate) struct KLayer {
    pub name: String,
    pub class: String,
    pub config: Value,
    /// (layer, node index) of each input; empty for an InputLayer.
    pub inbound: Vec<(String, usize)>,
    /// A nested model's own config (`class_name: Model`).
    pub nested: Option<Value>,
}

impl KLayer {
    pub fn to_json(&self) -> Value {
        let nodes: Vec<Value> = if self.inbound.is_empty() {
            vec![]
        } else {
            vec![Value::Array(
                self.inbound
                    .iter()
                    .map(|(l, n)| json!([l, n, 0, {}]))
                    .collect(),
            )]
        };
        json!({
            "name": self.name,
            "class_name": self.class,
            "config": self.nested.clone().unwrap_or_else(|| self.config.clone()),
            "inbound_nodes": nodes,
        })
    }
}

/// Keras 2.0.8 `Container.__init__`'s layer order: a depth-first walk from the outputs
/// numbers layers on first visit; node depths grow towards the inputs; layers are listed
/// by decreasing depth, ties in walk order. (Each layer here is called once.)
pub(crate) fn keras_order(layers: &[KLayer], outputs: &[String]) -> Vec<usize> {
    let index: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let mut walk_index: HashMap<usize, usize> = HashMap::new();
    let mut finished: HashSet<usize> = HashSet::new();
    let mut post: Vec<usize> = Vec::new();
    // An explicit stack: a 50-layer-deep ResNet must not lean on the thread's stack.
    for o in outputs {
        let Some(&root) = index.get(o.as_str()) else {
            continue;
        };
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some((i, next)) = stack.pop() {
            if next == 0 {
                if finished.contains(&i) {
                    continue;
                }
                let n = walk_index.len();
                walk_index.entry(i).or_insert(n);
            }
            let ins = &layers[i].inbound;
            if let Some(j) = ins.get(next).map(|(l, _)| index.get(l.as_str()).copied()) {
                stack.push((i, next + 1));
                if let Some(j) = j {
                    stack.push((j, 0));
                }
            } else if finished.insert(i) {
                post.push(i);
            }
        }
    }
    let mut depth: HashMap<usize, usize> = HashMap::new();
    for &i in post.iter().rev() {
        let d = *depth.entry(i).or_insert(0);
        for (l, _) in &layers[i].inbound {
            if let Some(&j) = index.get(l.as_str()) {
                let e = depth.entry(j).or_insert(0);
                *e = (*e).max(d + 1);
            }
        }
    }
    let mut order: Vec<usize> = post.clone();
    order.sort_by(|a, b| {
        depth[b]
            .cmp(&depth[a])
            .then(walk_index[a].cmp(&walk_index[b]))
    });
    order
}

/// Keras's per-process layer names: `conv2d_1`, `conv2d_2`, ... per class prefix.
#[derive(Default, Debug, Clone)]
pub(crate) struct Namer(HashMap<&'static str, usize>);

impl Namer {
    pub fn next(&mut self, prefix: &'static str) -> String {
        let n = self.0.entry(prefix).or_insert(0);
        *n += 1;
        format!("{prefix}_{n}")
    }
}

/// SplitMix64 with Box-Muller: reproducible from a seed, no dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// Keras 2.0.8 `truncated_normal`: redrawn outside two standard deviations.
    pub fn truncated_normal(&mut self, n: usize, stddev: f64) -> Vec<f32> {
        (0..n)
            .map(|_| loop {
                let z = self.normal();
                if z.abs() <= 2.0 {
                    break (z * stddev) as f32;
                }
            })
            .collect()
    }
    /// Uniform in (-limit, limit) (Keras's `random_uniform(-limit, limit)`).
    pub fn symmetric_uniform(&mut self, n: usize, limit: f64) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.uniform() * 2.0 - 1.0) * limit) as f32)
            .collect()
    }
}

/// A kernel initialiser of Keras 2.0.8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Keras's default for Conv2D and Dense: `VarianceScaling(1, fan_avg, uniform)`,
    /// uniform in `±sqrt(6 / (fan_in + fan_out))`.
    GlorotUniform,
    /// `VarianceScaling(2, fan_in, normal)`: truncated normal, stddev `sqrt(2 / fan_in)`,
    /// cut at two standard deviations.
    HeNormal,
}

impl Init {
    /// The `kernel_initializer` entry of a layer config.
    pub fn config(self) -> Value {
        match self {
            Init::HeNormal => {
                json!({"class_name": "VarianceScaling", "config": {"scale": 2.0, "mode": "fan_in", "distribution": "normal", "seed": null}})
            }
            Init::GlorotUniform => {
                json!({"class_name": "VarianceScaling", "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": null}})
            }
        }
    }

    /// Keras's `_compute_fans`: a kernel (..., in, out) has fan_in = receptive field x in,
    /// fan_out = receptive field x out; a Dense kernel (in, out).
    pub fn fans(shape: &[usize]) -> (usize, usize) {
        match shape {
            [] => (1, 1),
            [n] => (*n, *n),
            _ => {
                let rf: usize = shape[..shape.len() - 2].iter().product();
                (rf * shape[shape.len() - 2], rf * shape[shape.len() - 1])
            }
        }
    }
}

/// A layer's input: (layer name, node index). Node 0 unless a layer was called twice
/// (a nested model called on a new input produces node 1).
pub type Inbound<'a> = (&'a str, usize);

/// Builds one functional Keras 2.0.8 model, layer call by layer call, in creation order.
/// Every layer method takes an optional explicit name; `None` takes Keras's counter name.
/// Kernels are initialised by [`ModelBuilder::kernel_init`] and regularised by
/// [`ModelBuilder::kernel_l2`] (Conv2D and Dense), which may change between layers.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    pub(crate) names: Namer,
    pub(crate) layers: Vec<KLayer>,
    pub(crate) params: BTreeMap<String, Tensor>,
    rng: Rng,
    /// Output channels of each layer (units where flat).
    pub(crate) channels: HashMap<String, usize>,
    pub kernel_init: Init,
    /// `kernel_regularizer=l2(value)`, or none.
    pub kernel_l2: Option<f32>,
}

impl ModelBuilder {
    /// An empty model; weights drawn from a generator seeded with `seed`.
    pub fn new(seed: u64) -> ModelBuilder {
        ModelBuilder {
            names: Namer::default(),
            layers: Vec::new(),
            params: BTreeMap::new(),
            rng: Rng(seed),
            channels: HashMap::new(),
            kernel_init: Init::GlorotUniform,
            kernel_l2: None,
        }
    }

    /// The next counter name for `prefix` (`model` -> `model_1`), as Keras would give it.
    pub fn auto_name(&mut self, prefix: &'static str) -> String {
        self.names.next(prefix)
    }

    fn name_or(&mut self, name: Option<&str>, prefix: &'static str) -> String {
        match name {
            Some(n) => n.to_string(),
            None => self.names.next(prefix),
        }
    }

    fn channels_of(&self, x: &str) -> Result<usize> {
        self.channels
            .get(x)
            .copied()
            .ok_or_else(|| Error::Other(format!("model builder: no layer {x} to connect to")))
    }

    fn regularizer(&self) -> Value {
        match self.kernel_l2 {
            // Keras stores the regulariser factor as float32 (K.cast_to_floatx).
            Some(l2) => json!({"class_name": "L1L2", "config": {"l1": 0.0, "l2": l2 as f64}}),
            None => Value::Null,
        }
    }

    fn kernel(&mut self, init: Init, shape: Vec<usize>) -> Result<Tensor> {
        let n = shape.iter().product();
        let data = match init {
            Init::HeNormal => {
                let fan_in: usize = shape[..shape.len() - 1].iter().product();
                self.rng
                    .truncated_normal(n, (2.0 / fan_in.max(1) as f64).sqrt())
            }
            Init::GlorotUniform => {
                let (fi, fo) = Init::fans(&shape);
                let limit = (6.0 / (fi + fo).max(1) as f64).sqrt();
                self.rng.symmetric_uniform(n, limit)
            }
        };
        Tensor::new(shape, data)
    }

    /// Adds a layer with one input.
    pub(crate) fn push(
        &mut self,
        name: String,
        class: &str,
        config: Value,
        input: Inbound,
        channels: usize,
    ) -> String {
        self.channels.insert(name.clone(), channels);
        self.layers.push(KLayer {
            name: name.clone(),
            class: class.into(),
            config,
            inbound: vec![(input.0.to_string(), input.1)],
            nested: None,
        });
        name
    }

    /// `Input(shape=(h, w, channels))`; `None` sizes are free.
    pub fn input(
        &mut self,
        size: (Option<usize>, Option<usize>),
        channels: usize,
        name: Option<&str>,
    ) -> String {
        let name = self.name_or(name, "input");
        self.channels.insert(name.clone(), channels);
        self.layers.push(KLayer {
            name: name.clone(),
            class: "InputLayer".into(),
            config: json!({"batch_input_shape": [null, size.0, size.1, channels], "dtype": "float32", "sparse": false, "name": name}),
            inbound: vec![],
            nested: None,
        });
        name
    }

    /// A nested model (its `Model` config) called on `input`; `channels`: its output's.
    pub(crate) fn nested(
        &mut self,
        name: String,
        config: Value,
        input: Inbound,
        channels: usize,
    ) -> String {
        self.channels.insert(name.clone(), channels);
        self.layers.push(KLayer {
            name: name.clone(),
            class: "Model".into(),
            config: Value::Null,
            inbound: vec![(input.0.to_string(), input.1)],
            nested: Some(config),
        });
        name
    }

    /// `Conv2D(filters, (k, k), strides, padding, activation)`, channels_last, with bias.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        x: Inbound,
        filters: usize,
        k: usize,
        strides: usize,
        padding: &str,
        activation: &str,
        name: Option<&str>,
    ) -> Result<String> {
        let name = self.name_or(name, "conv2d");
        let cin = self.channels_of(x.0)?;
        let config = json!({
            "name": name, "trainable": true, "filters": filters, "kernel_size": [k, k],
            "strides": [strides, strides], "padding": padding, "data_format": "channels_last",
            "dilation_rate": [1, 1], "activation": activation, "use_bias": true,
            "kernel_initializer": self.kernel_init.config(),
            "bias_initializer": {"class_name": "Zeros", "config": {}},
            "kernel_regularizer": self.regularizer(), "bias_regularizer": null,
            "activity_regularizer": null, "kernel_constraint": null, "bias_constraint": null,
        });
        let kernel = self.kernel(self.kernel_init, vec![k, k, cin, filters])?;
        self.params.insert(format!("{name}.kernel"), kernel);
        self.params.insert(
            format!("{name}.bias"),
            Tensor::new(vec![filters], vec![0.0; filters])?,
        );
        Ok(self.push(name, "Conv2D", config, x, filters))
    }

    /// `BatchNormalization(axis=axis)`: gamma 1, beta 0, moving mean 0, variance 1.
    pub fn bn(&mut self, x: &str, axis: i64, name: Option<&str>) -> Result<String> {
        let name = self.name_or(name, "batch_normalization");
        let c = self.channels_of(x)?;
        let config = json!({
            "name": name, "trainable": true, "axis": axis, "momentum": 0.99, "epsilon": 0.001,
            "center": true, "scale": true,
            "beta_initializer": {"class_name": "Zeros", "config": {}},
            "gamma_initializer": {"class_name": "Ones", "config": {}},
            "moving_mean_initializer": {"class_name": "Zeros", "config": {}},
            "moving_variance_initializer": {"class_name": "Ones", "config": {}},
            "beta_regularizer": null, "gamma_regularizer": null,
            "beta_constraint": null, "gamma_constraint": null,
        });
        for (slot, v) in [
            ("gamma", 1.0),
            ("beta", 0.0),
            ("moving_mean", 0.0),
            ("moving_variance", 1.0),
        ] {
            self.params
                .insert(format!("{name}.{slot}"), Tensor::new(vec![c], vec![v; c])?);
        }
        Ok(self.push(name, "BatchNormalization", config, (x, 0), c))
    }

    pub fn activation(&mut self, x: &str, act: &str, name: Option<&str>) -> Result<String> {
        let name = self.name_or(name, "activation");
        let c = self.channels_of(x)?;
        let config = json!({"name": name, "trainable": true, "activation": act});
        Ok(self.push(name, "Activation", config, (x, 0), c))
    }

    /// `Dropout(rate)`; Keras writes the rate as the Python float it was given.
    pub fn dropout(&mut self, x: &str, rate: f64, name: Option<&str>) -> Result<String> {
        let name = self.name_or(name, "dropout");
        let c = self.channels_of(x)?;
        let config = json!({"name": name, "trainable": true, "rate": rate});
        Ok(self.push(name, "Dropout", config, (x, 0), c))
    }

    /// `MaxPooling2D` or `AveragePooling2D((pool, pool), strides)`, valid padding.
    pub fn pool(
        &mut self,
        x: Inbound,
        class: &'static str,
        pool: usize,
        strides: usize,
        name: Option<&str>,
    ) -> Result<String> {
        let prefix = match class {
            "MaxPooling2D" => "max_pooling2d",
            "AveragePooling2D" => "average_pooling2d",
            _ => return Err(Error::Other(format!("model builder: no pooling {class}"))),
        };
        let name = self.name_or(name, prefix);
        let c = self.channels_of(x.0)?;
        let config = json!({
            "name": name, "trainable": true, "pool_size": [pool, pool], "padding": "valid",
            "strides": [strides, strides], "data_format": "channels_last",
        });
        Ok(self.push(name, class, config, x, c))
    }

    pub fn gap(&mut self, x: &str, name: Option<&str>) -> Result<String> {
        let name = self.name_or(name, "global_average_pooling2d");
        let c = self.channels_of(x)?;
        let config = json!({"name": name, "trainable": true, "data_format": "channels_last"});
        Ok(self.push(name, "GlobalAveragePooling2D", config, (x, 0), c))
    }

    /// `Flatten()`; `values`: the flattened length (the next Dense's fan-in).
    pub fn flatten(&mut self, x: &str, values: usize, name: Option<&str>) -> String {
        let name = self.name_or(name, "flatten");
        let config = json!({"name": name, "trainable": true});
        self.push(name, "Flatten", config, (x, 0), values)
    }

    /// `Dense(units, activation)`; `init` overrides [`ModelBuilder::kernel_init`];
    /// `weights`: given (kernel, bias) instead of initialised ones.
    pub fn dense(
        &mut self,
        x: &str,
        units: usize,
        activation: &str,
        init: Option<Init>,
        weights: Option<(Tensor, Tensor)>,
        name: Option<&str>,
    ) -> Result<String> {
        let name = self.name_or(name, "dense");
        let cin = self.channels_of(x)?;
        let init = init.unwrap_or(self.kernel_init);
        let config = json!({
            "name": name, "trainable": true, "units": units, "activation": activation,
            "use_bias": true, "kernel_initializer": init.config(),
            "bias_initializer": {"class_name": "Zeros", "config": {}},
            "kernel_regularizer": self.regularizer(), "bias_regularizer": null,
            "activity_regularizer": null, "kernel_constraint": null, "bias_constraint": null,
        });
        let (kernel, bias) = match weights {
            Some(w) => w,
            None => (
                self.kernel(init, vec![cin, units])?,
                Tensor::new(vec![units], vec![0.0; units])?,
            ),
        };
        self.params.insert(format!("{name}.kernel"), kernel);
        self.params.insert(format!("{name}.bias"), bias);
        Ok(self.push(name, "Dense", config, (x, 0), units))
    }

    /// `layers.add([a, b])`.
    pub fn add(&mut self, a: &str, b: &str, name: Option<&str>) -> Result<String> {
        let name = self.name_or(name, "add");
        let c = self.channels_of(a)?;
        self.channels.insert(name.clone(), c);
        self.layers.push(KLayer {
            name: name.clone(),
            class: "Add".into(),
            config: json!({"name": name, "trainable": true}),
            inbound: vec![(a.to_string(), 0), (b.to_string(), 0)],
            nested: None,
        });
        Ok(name)
    }

    /// The layer names in Keras's order for `Model(inputs, output)`.
    pub fn order(&self, output: &str) -> Vec<String> {
        keras_order(&self.layers, &[output.to_string()])
            .into_iter()
            .map(|i| self.layers[i].name.clone())
            .collect()
    }

    /// `Model(inputs, output, name)` (`None`: Keras's `model_N`): the config in Keras's
    /// layer order, and the weights.
    pub fn finish(mut self, inputs: &[&str], output: &str, name: Option<&str>) -> KerasModel {
        let name = self.name_or(name, "model");
        let order = keras_order(&self.layers, &[output.to_string()]);
        let config = json!({
            "class_name": "Model",
            "config": {
                "name": name,
                "layers": order.iter().map(|&i| self.layers[i].to_json()).collect::<Vec<_>>(),
                "input_layers": inputs.iter().map(|i| json!([i, 0, 0])).collect::<Vec<_>>(),
                "output_layers": [[output, 0, 0]],
            }
        });
        KerasModel {
            config,
            params: self.params,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keras_order_follows_container_sorting() {
        // add(shortcut, residual): the walk from the output visits the shortcut first, so
        // at equal depth the shortcut's layers come first (as in genuine 2.0.8 configs).
        let l = |name: &str, ins: &[&str]| KLayer {
            name: name.into(),
            class: "X".into(),
            config: Value::Null,
            inbound: ins.iter().map(|i| (i.to_string(), 0)).collect(),
            nested: None,
        };
        let layers = vec![
            l("in", &[]),
            l("c1", &["in"]),
            l("c2", &["c1"]),
            l("sc", &["in"]),
            l("bn_sc", &["sc"]),
            l("add", &["bn_sc", "c2"]),
        ];
        let order: Vec<&str> = keras_order(&layers, &["add".into()])
            .into_iter()
            .map(|i| layers[i].name.as_str())
            .collect();
        assert_eq!(order, ["in", "sc", "c1", "bn_sc", "c2", "add"]);
    }

    #[test]
    fn truncated_normal_is_seeded_and_bounded() {
        let a = Rng(7).truncated_normal(10_000, 0.5);
        assert_eq!(a, Rng(7).truncated_normal(10_000, 0.5));
        assert_ne!(a, Rng(8).truncated_normal(10_000, 0.5));
        assert!(a.iter().all(|x| x.abs() <= 1.0));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        // A normal truncated at 2 sigma keeps 0.774 of the variance.
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var / 0.25 - 0.774).abs() < 0.03, "{var}");
    }

    #[test]
    fn glorot_uniform_has_keras_limit_and_variance() {
        let mut b = ModelBuilder::new(3);
        let i = b.input((None, None), 16, None);
        let c = b.conv((&i, 0), 32, 3, 1, "same", "linear", None).unwrap();
        let k = &b.params[&format!("{c}.kernel")];
        assert_eq!(k.shape, vec![3, 3, 16, 32]);
        let limit = (6.0f64 / (9.0 * 16.0 + 9.0 * 32.0)).sqrt();
        assert!(k.data.iter().all(|&v| (v as f64).abs() <= limit));
        let var = k.data.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k.len() as f64;
        assert!((var / (limit * limit / 3.0) - 1.0).abs() < 0.05, "{var}");
        assert!(b.params[&format!("{c}.bias")]
            .data
            .iter()
            .all(|&v| v == 0.0));
    }
}
