//! Fuzzes LIDC-IDRI reader XML: any bytes must parse to a read or an error, and a read's
//! findings (against a synthetic axial series) must be made or refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lungcad::eval::lidc::lidc_fuzz(data);
});
