//! Fuzzes loading one DICOM file end to end, pixel data included: the bytes are written to
//! a file and read by `lungcad::load` as a CT would be (the length guard, header parsing,
//! series assembly, then decoding by the file's transfer syntax: native, deflate, RLE,
//! JPEG baseline/extended/lossless, JPEG-LS through CharLS, JPEG 2000 through openjp2, and
//! rescale to HU). Any input must give a volume or an error, never a panic or a memory
//! error. Seed it with real files of every transfer syntax (docs/FUZZING.md): random bytes
//! alone seldom reach a decoder.
#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;
use lungcad::{Limits, LoadConfig};
use std::path::PathBuf;
use std::sync::OnceLock;

/// One file per fuzzing process, rewritten for each input (in /dev/shm when it exists).
///
/// Also puts back Rust's default panic hook in place of libfuzzer-sys's, which aborts on
/// every panic, even one that `lungcad::load` catches on purpose (it runs the pixel
/// decoders under `catch_unwind`). A panic that escapes `load` still ends the run: it
/// unwinds into libfuzzer-sys's wrapper, which aborts, after the default hook has printed
/// where it happened.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let _ = std::panic::take_hook();
        scratch::path("dicom").with_extension("dcm")
    })
}

fuzz_target!(|data: &[u8]| {
    if std::fs::write(path(), data).is_err() {
        return;
    }
    // Any modality (the corpus holds MR, US and RT files too), and a voxel bound that keeps
    // a legitimate decode within the fuzzer's memory limit.
    let config = LoadConfig {
        allow_modality: true,
        limits: Limits {
            max_voxels: 1 << 24,
            ..Limits::default()
        },
        ..LoadConfig::default()
    };
    if let Ok(v) = lungcad::load(path(), &config) {
        let _ = v.hu_range();
    }
});
