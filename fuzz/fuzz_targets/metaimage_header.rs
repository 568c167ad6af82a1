//! Fuzzes the MetaImage header parser: any text must give a header or an error, never a
//! panic, and a parsed header's derived values must be computable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lungcad::io::metaimage::{header_len, parse_header};
use lungcad::Limits;

fuzz_target!(|data: &[u8]| {
    // What `read` does with a file's first bytes.
    let end = header_len(data).unwrap_or(data.len());
    let text = String::from_utf8_lossy(data.get(..end).unwrap_or(data));
    if let Ok(header) = parse_header(&text) {
        let shape = header.shape_zyx();
        let _ = Limits::default().check_shape(shape);
        let _ = header.geometry().validate();
    }
});
