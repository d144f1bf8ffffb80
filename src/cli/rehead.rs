//! `allconv rehead`: a patch classifier becomes a whole-image classifier
//! ([`allconv::passes::rehead`]), written as `.h5`, `.onnx` or `.safetensors`.

use allconv::keras::{read_model, ReadOptions};
use allconv::passes::rehead::{rehead, ReheadOptions, ReheadReport, Top};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ReheadArgs {
    /// The patch classifier (Keras 2.0-2.1 .h5, fully convolutional up to the cut).
    pub patch: PathBuf,
    /// Output: .h5 (Keras 2.0.8 file, as the paper's code saves it), .onnx or .safetensors.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Whole-image size HxW, e.g. 1152x896 (any size the recipe fits).
    #[arg(long, value_parser = crate::parse_size)]
    pub input_size: crate::Size,
    /// The top: resnet:512x1,512x1:enlarge=2 | vgg:512x1 |
    /// heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut | heatmap:...+vgg:512x1.
    #[arg(long)]
    pub top: String,
    /// Last patch layer kept (default: found per backbone: ResNet50's relu before
    /// avg_pool, VGG's block5_pool, YaroslavNet's block6_pool).
    #[arg(long)]
    pub cut: Option<String>,
    /// Classes of the whole-image classifier (the paper: 2, neg/pos).
    #[arg(long, default_value_t = 2)]
    pub classes: usize,
    /// Dropout rate of the new layers (image_clf_train.py --hidden-dropout).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// L2 factor of the new layers' kernels (image_clf_train.py --weight-decay).
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f32,
    /// Seed of the new layers' initialisation (he_normal, as Keras).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn write(g: &allconv::ir::Graph, patch: &Path, out: &Path, size: &[usize]) -> allconv::Result<()> {
    match out.extension().and_then(|e| e.to_str()) {
        Some("h5") => allconv::keras::writer::write_h5_from_graph(g, out),
        Some("safetensors") => allconv::safetensors::write_safetensors(g, out),
        Some("onnx") => {
            use allconv::onnx::{
                export_for_inference, meta, sha256_file, write_atomic, ExportOptions,
            };
            let eo = ExportOptions {
                input_size: Some(size.to_vec()),
                ..Default::default()
            };
            let mut ex = export_for_inference(g, &eo)?;
            meta::set_metadata(&mut ex.model, meta::SOURCE_SHA256, sha256_file(patch)?);
            write_atomic(out, &ex.to_bytes()?)
        }
        _ => Err(allconv::Error::Other(format!(
            "{}: the output format follows the extension: .h5, .onnx or .safetensors",
            out.display()
        ))),
    }
}

fn text(r: &ReheadReport, out: &Path) -> String {
    format!(
        "wrote {}\n  recipe {} at {}x{}x{}, cut after {} ({})\n  inner model {}: {} layers, {} params (unchanged)\n  new: {} layers, {} params{}; final {}\n  output {:?}; stage-1 frozen layers (top_layer_nb) {}\n",
        out.display(),
        r.recipe,
        r.input_size[0],
        r.input_size[1],
        r.channels,
        r.cut,
        r.cut_rule,
        r.inner_model,
        r.inner_layers,
        r.inner_params,
        r.new_layers.len(),
        r.new_params,
        r.heatmap_dense
            .as_ref()
            .map(|d| format!(" (heatmap Dense {d} took the patch classifier's weights)"))
            .unwrap_or_default(),
        r.final_dense.join(" + "),
        r.output_shape,
        r.top_layer_nb,
    )
}

pub fn main(a: ReheadArgs) -> ExitCode {
    let run = || -> allconv::Result<ReheadReport> {
        let (h, w) = match a.input_size.as_slice() {
            [h, w] => (*h, *w),
            other => {
                return Err(allconv::Error::Other(format!(
                    "--input-size: expected HxW, got {other:?}"
                )))
            }
        };
        let top: Top = a.top.parse()?;
        let patch = read_model(&a.patch, &ReadOptions::default())?;
        let opts = ReheadOptions {
            cut: a.cut.clone(),
            classes: a.classes,
            dropout: a.dropout,
            weight_decay: a.weight_decay,
            seed: a.seed,
            ..ReheadOptions::new(top, (h, w))
        };
        let (g, r) = rehead(&patch, &opts)?;
        write(&g, &a.patch, &a.output, &a.input_size)?;
        Ok(r)
    };
    match run() {
        Ok(r) => {
            if a.json {
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                v["output"] = a.output.display().to_string().into();
                outln!("{v}");
            } else {
                out!("{}", text(&r, &a.output));
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(a.json, e),
    }
}
