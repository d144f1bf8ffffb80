//! Every fixture read into the IR matches what genuine Keras reported about the same
//! model (expect.json, written by converters/): layer list, classes, output shapes at
//! the fixture's input size, per-layer and total parameter counts.

mod common;

use allconv::ir::{DataFormat, Dim};
use allconv::keras::read_model;

fn check(dir: &std::path::Path) -> Result<(), String> {
    let e = common::expect(dir);
    let (model, opts) = common::read_options(dir);
    let mut g = read_model(&model, &opts).map_err(|e| format!("read failed: {e}"))?;
    let input_shape: Vec<usize> = e["input_shape"]
        .as_array()
        .ok_or("no input_shape")?
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let spatial: Vec<usize> = match (g.inputs[0].data_format, input_shape.len()) {
        (DataFormat::ChannelsFirst, _) => input_shape[2..].to_vec(),
        (_, n) => input_shape[1..n - 1].to_vec(),
    };
    if !spatial.is_empty() {
        g.infer_shapes(Some(&spatial))
            .map_err(|e| format!("shape inference at {spatial:?}: {e}"))?;
    }
    let want_total = e["count_params"].as_u64().unwrap() as usize;
    if g.total_params() != want_total {
        return Err(format!(
            "count_params: allconv {} vs Keras {want_total}",
            g.total_params()
        ));
    }
    let layers = e["layers"].as_array().ok_or("no layers")?;
    if layers.len() != g.layers.len() {
        let ours: Vec<_> = g.layers.iter().map(|l| l.path.as_str()).collect();
        return Err(format!(
            "{} layers vs Keras {}: {ours:?}",
            g.layers.len(),
            layers.len()
        ));
    }
    for (k, ours) in layers.iter().zip(&g.layers) {
        let path = k["path"].as_str().unwrap();
        if ours.path != path || ours.class != k["class_name"].as_str().unwrap() {
            return Err(format!(
                "layer {} ({}) vs Keras {path} ({})",
                ours.path, ours.class, k["class_name"]
            ));
        }
        let params = k["params"].as_u64().unwrap() as usize;
        if g.layer_params(path) != params {
            return Err(format!(
                "{path}: {} params vs Keras {params}",
                g.layer_params(path)
            ));
        }
        if let (Some(v), Some(shape)) = (ours.output, k["output_shape"].as_array()) {
            let want: Vec<Dim> = shape
                .iter()
                .skip(1)
                .map(|d| Dim::Known(d.as_u64().unwrap() as usize))
                .collect();
            if g.values[v].shape != want {
                return Err(format!(
                    "{path}: output shape {:?} vs Keras {want:?}",
                    g.values[v].shape
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn every_fixture_matches_keras() {
    let dirs = common::model_fixtures();
    assert!(
        dirs.len() >= 2,
        "expected the committed fixtures, found {}",
        dirs.len()
    );
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|d| {
            check(d)
                .err()
                .map(|e| format!("{}: {e}", d.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ from Keras:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}
