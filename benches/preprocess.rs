//! Preprocessing speed: resampling LIDC-IDRI-0001 (133 x 512 x 512, 2.5 x 0.703 x 0.703 mm)
//! to 1 mm isotropic. SimpleITK's time on the same grid: tests/scripts/resample_sitk.py
//! (see docs/PERFORMANCE.md).

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use lungcad::preprocess::{resample, Interpolation};
use lungcad::{load, Limits, LoadConfig};

fn bench(c: &mut Criterion) {
    let Some(dir) = common::lidc_0001() else {
        return; // common::lidc_0001 said why
    };
    let v = load(&dir, &LoadConfig::default()).expect("loads");
    let mut g = c.benchmark_group("resample");
    g.sample_size(10);
    for (name, interp) in [
        ("lidc_to_1mm_linear", Interpolation::Linear),
        ("lidc_to_1mm_nearest", Interpolation::Nearest),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                resample(&v, [1.0, 1.0, 1.0], interp, -1024, &Limits::default()).expect("resamples")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
