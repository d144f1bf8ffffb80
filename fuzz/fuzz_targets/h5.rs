//! A `.h5` file end to end (HDF5, Keras config, weights, IR). See allconv::fuzz_entry.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    allconv::fuzz_entry::h5(data);
});
