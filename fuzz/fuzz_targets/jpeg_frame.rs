//! Fuzzes lungcad's sequential DCT JPEG decoder (`lungcad::io::dicom::jpeg`, 12-bit JPEG
//! extended): arbitrary bytes must decode to an image of the frame header's size or be
//! refused, never panic. Seed it with `tests/fixtures/jpeg/*.jpg`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lungcad::io::dicom::jpeg;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = jpeg::frame_info(data) else {
        return;
    };
    // Bounded like a DICOM frame the limits let through, small enough to keep runs fast.
    if info.rows as usize * info.columns as usize > 1 << 20 {
        return;
    }
    if let Ok(d) = jpeg::decode(data, (info.rows, info.columns)) {
        assert_eq!(d.samples.len(), info.rows as usize * info.columns as usize);
        assert!(d.bytes_read <= data.len());
        let max = (1u32 << d.precision) - 1;
        assert!(d.samples.iter().all(|&s| s as u32 <= max));
    }
});
