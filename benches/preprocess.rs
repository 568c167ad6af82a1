//! Preprocessing speed: resampling LIDC-IDRI-0001 (133 x 512 x 512, 2.5 x 0.703 x 0.703 mm)
//! to 1 mm isotropic. SimpleITK's time on the same grid: tests/scripts/resample_sitk.py
//! (see docs/PERFORMANCE.md).

use criterion::{criterion_group, criterion_main, Criterion};
use lungcad::preprocess::{resample, Interpolation};
use lungcad::{load, LoadConfig, Limits};
use std::path::PathBuf;

fn lidc_series() -> Option<PathBuf> {
    let data = std::env::var_os("LUNGCAD_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let study = std::fs::read_dir(data.join("lidc/LIDC-IDRI-0001")).ok()?.flatten().next()?.path();
    Some(std::fs::read_dir(study).ok()?.flatten().next()?.path())
}

fn bench(c: &mut Criterion) {
    let Some(dir) = lidc_series() else {
        eprintln!("SKIP: LIDC-IDRI-0001 not found (set LUNGCAD_DATA)");
        return;
    };
    let v = load(&dir, &LoadConfig::default()).expect("loads");
    let mut g = c.benchmark_group("resample");
    g.sample_size(10);
    for (name, interp) in [("lidc_to_1mm_linear", Interpolation::Linear), ("lidc_to_1mm_nearest", Interpolation::Nearest)] {
        g.bench_function(name, |b| {
            b.iter(|| resample(&v, [1.0, 1.0, 1.0], interp, -1024, &Limits::default()).expect("resamples"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
