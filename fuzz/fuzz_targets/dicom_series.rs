//! Fuzzes DICOM series assembly (`lungcad::io::dicom::assemble_fuzz`): arbitrary bytes must
//! be refused or assembled, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lungcad::io::dicom::assemble_fuzz(data);
});
