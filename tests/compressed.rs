//! Weights stored gzip-compressed (h5py `compression="gzip"`, HDF5's deflate filter, built
//! in with the `zlib` feature) read exactly as the uncompressed file's
//! (converters/compress_fixture.py rewrote fixtures/k208_conv/model.h5).

mod common;

use allconv::keras::{read_model, ReadOptions};

#[test]
fn gzip_compressed_weights_read_bit_for_bit() {
    let dir = common::fixtures_dir();
    let plain = read_model(&dir.join("k208_conv/model.h5"), &ReadOptions::default()).unwrap();
    let gz = read_model(
        &dir.join("compressed/k208_conv_gzip.h5"),
        &ReadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("compressed file: {e}"));
    assert_eq!(plain.params.len(), gz.params.len());
    for (k, t) in &plain.params {
        let u = &gz.params[k];
        assert_eq!(t.shape, u.shape, "{k}");
        assert!(
            t.data
                .iter()
                .zip(&u.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{k} differs"
        );
    }
}
