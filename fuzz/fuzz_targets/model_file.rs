//! ONNX and NNEF model files (the first byte picks the format). See allconv::fuzz_entry.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    allconv::fuzz_entry::model_file(data);
});
