//! The project's own DICOM reader. See allconv::fuzz_entry.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    allconv::fuzz_entry::dicom(data);
});
