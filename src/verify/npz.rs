//! Reading `io.npz` reference files (float32 or float64 arrays).

use crate::error::{Error, Result};
use crate::meta::Array;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::NpzReader;
use std::collections::BTreeMap;
use std::path::Path;

/// Every array of an `.npz`, as f32, by name (without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>> {
    let io = |m: String| Error::Io {
        file: path.to_path_buf(),
        message: m,
    };
    let f = std::fs::File::open(path).map_err(|e| io(e.to_string()))?;
    let mut z = NpzReader::new(f).map_err(|e| io(format!("not an npz file: {e}")))?;
    let names = z.names().map_err(|e| io(e.to_string()))?;
    let mut out = BTreeMap::new();
    for name in names {
        let a: ArrayD<f32> = match z.by_name::<ndarray::OwnedRepr<f32>, IxDyn>(&name) {
            Ok(a) => a,
            Err(_) => {
                let a: ArrayD<f64> = z
                    .by_name::<ndarray::OwnedRepr<f64>, IxDyn>(&name)
                    .map_err(|e| io(format!("array {name}: {e}")))?;
                a.mapv(|x| x as f32)
            }
        };
        let shape = a.shape().to_vec();
        let data = a.iter().copied().collect();
        out.insert(name, Array { shape, data });
    }
    Ok(out)
}

/// The first `n` items of the batch axis.
pub fn first_items(a: &Array, n: usize) -> Array {
    let n = n.min(a.shape.first().copied().unwrap_or(0));
    let per: usize = a.shape.iter().skip(1).product();
    let mut shape = a.shape.clone();
    if !shape.is_empty() {
        shape[0] = n;
    }
    Array {
        shape,
        data: a.data[..n * per].to_vec(),
    }
}
