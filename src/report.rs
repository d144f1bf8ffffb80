//! What `allconv inspect` shows, as one serialisable value: the text table and the
//! `--json` object come from the same data.

use crate::ir::{display_shape, Dim, Graph};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub class: String,
    /// With the batch axis first (`null`); symbolic dims as expressions.
    pub output_shape: Option<Vec<Option<Dim>>>,
    pub params: usize,
    pub depth: usize,
    pub trainable: bool,
}

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub file: String,
    pub keras_version: Option<String>,
    pub backend: Option<String>,
    pub dialect: String,
    pub model_class: String,
    pub params: usize,
    pub trainable_params: usize,
    pub inputs: Vec<(String, Vec<Option<Dim>>)>,
    pub outputs: Vec<(String, Vec<Option<Dim>>)>,
    pub layers: Vec<LayerRow>,
    pub ir_nodes: usize,
    pub warnings: Vec<String>,
    pub unsupported: Vec<String>,
}

fn with_batch(shape: &[Dim]) -> Vec<Option<Dim>> {
    std::iter::once(None)
        .chain(shape.iter().cloned().map(Some))
        .collect()
}

impl InspectReport {
    pub fn new(g: &Graph) -> InspectReport {
        let layers: Vec<LayerRow> = g
            .layers
            .iter()
            .map(|l| LayerRow {
                name: l.path.clone(),
                class: l.class.clone(),
                output_shape: l.output.map(|v| with_batch(&g.values[v].shape)),
                params: g.layer_params(&l.path),
                depth: l.depth,
                trainable: l.trainable,
            })
            .collect();
        let trainable_params = g
            .params
            .iter()
            .filter(|(k, _)| {
                let (layer, slot) = k.rsplit_once('.').unwrap_or((k, ""));
                !matches!(slot, "moving_mean" | "moving_variance")
                    && g.layers
                        .iter()
                        .find(|l| l.path == layer)
                        .is_none_or(|l| l.trainable)
            })
            .map(|(_, t)| t.len())
            .sum();
        InspectReport {
            file: g.source.file.clone(),
            keras_version: g.source.keras_version.clone(),
            backend: g.source.backend.clone(),
            dialect: g.source.dialect.clone(),
            model_class: g.source.model_class.clone(),
            params: g.total_params(),
            trainable_params,
            inputs: g
                .inputs
                .iter()
                .map(|i| (i.name.clone(), with_batch(&g.values[i.value].shape)))
                .collect(),
            outputs: g
                .outputs
                .iter()
                .map(|&v| (g.values[v].name.clone(), with_batch(&g.values[v].shape)))
                .collect(),
            layers,
            ir_nodes: g.nodes.len(),
            warnings: g.source.warnings.clone(),
            unsupported: vec![],
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let shape = |v: &Option<Vec<Option<Dim>>>| match v {
            Some(d) => display_shape(
                &d.iter()
                    .skip(1)
                    .map(|x| x.clone().unwrap_or(Dim::sym("?")))
                    .collect::<Vec<_>>(),
            ),
            None => "-".into(),
        };
        s += &format!("file:          {}\n", self.file);
        s += &format!(
            "keras_version: {}\n",
            self.keras_version.as_deref().unwrap_or("(not recorded)")
        );
        s += &format!(
            "backend:       {}\n",
            self.backend.as_deref().unwrap_or("(not recorded)")
        );
        s += &format!("dialect:       {}\n", self.dialect);
        for (n, d) in &self.inputs {
            s += &format!("input:         {n} {}\n", shape(&Some(d.clone())));
        }
        let w = self
            .layers
            .iter()
            .map(|l| l.name.len() + 2 * l.depth)
            .max()
            .unwrap_or(10)
            .max(10);
        let c = self
            .layers
            .iter()
            .map(|l| l.class.len())
            .max()
            .unwrap_or(10)
            .max(10);
        s += &format!(
            "\n{:<w$}  {:<c$}  {:<28}  {:>10}\n",
            "layer", "class", "output shape", "params"
        );
        s += &format!("{}\n", "-".repeat(w + c + 44));
        for l in &self.layers {
            let name = format!(
                "{}{}",
                "  ".repeat(l.depth),
                l.name.rsplit('/').next().unwrap_or(&l.name)
            );
            s += &format!(
                "{:<w$}  {:<c$}  {:<28}  {:>10}\n",
                name,
                l.class,
                shape(&l.output_shape),
                l.params
            );
        }
        s += &format!("{}\n", "-".repeat(w + c + 44));
        s += &format!(
            "total params: {}  (trainable {}, non-trainable {})\n",
            self.params,
            self.trainable_params,
            self.params - self.trainable_params
        );
        for (n, d) in &self.outputs {
            s += &format!("output: {n} {}\n", shape(&Some(d.clone())));
        }
        for w in &self.warnings {
            s += &format!("warning: {w}\n");
        }
        s
    }
}
