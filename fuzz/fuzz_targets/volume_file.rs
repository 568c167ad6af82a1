//! Fuzzes loading a MetaImage or NIfTI volume end to end: header, data file, decompression
//! (`.zraw`, `.nii.gz`), limits and orientation. The first byte picks the format: 0 `.nii`,
//! 1 `.nii.gz`, 2 `.mha`, 3 `.mhd` whose header is the bytes up to the first NUL and whose
//! data file `v.raw` (or `v.zraw`) the rest. Any input must give a volume or an error,
//! never a panic or a memory error. Seeds: small volumes written by `lungcad convert`
//! (docs/FUZZING.md).
#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;
use lungcad::{Limits, LoadConfig};
use std::path::PathBuf;
use std::sync::OnceLock;

/// One folder per fuzzing process (in /dev/shm when it exists), emptied for each input.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| scratch::path("volume"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let dir = dir();
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let written = match kind % 4 {
        0 => std::fs::write(dir.join("v.nii"), rest).map(|_| dir.join("v.nii")),
        1 => std::fs::write(dir.join("v.nii.gz"), rest).map(|_| dir.join("v.nii.gz")),
        2 => std::fs::write(dir.join("v.mha"), rest).map(|_| dir.join("v.mha")),
        _ => {
            let (header, raw) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            std::fs::write(dir.join("v.raw"), raw)
                .and_then(|_| std::fs::write(dir.join("v.zraw"), raw))
                .and_then(|_| std::fs::write(dir.join("v.mhd"), header))
                .map(|_| dir.join("v.mhd"))
        }
    };
    let Ok(path) = written else {
        return;
    };
    // A voxel bound that keeps a legitimate read within the fuzzer's memory limit.
    let config = LoadConfig {
        limits: Limits {
            max_voxels: 1 << 24,
            ..Limits::default()
        },
        ..LoadConfig::default()
    };
    if let Ok(v) = lungcad::load(&path, &config) {
        let _ = v.hu_range();
    }
});
