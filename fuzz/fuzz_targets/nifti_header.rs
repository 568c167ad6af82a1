//! Fuzzes the NIfTI-1/NIfTI-2 header parser and the geometry derived from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lungcad::io::nifti::parse_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = parse_header(data) {
        let _ = header.shape_zyx();
        let _ = header.element_type();
        let _ = header.scaling();
        let (geometry, _warnings) = header.geometry();
        let _ = geometry.validate();
    }
});
