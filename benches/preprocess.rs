//! Preprocessing speed on LIDC-IDRI-0001 (133 x 512 x 512, 2.5 x 0.703 x 0.703 mm):
//! resampling to 1 mm isotropic, the lung mask on the 1 mm grid, and the whole
//! `preprocess` (resample, mask, crop) with the default config. SimpleITK's time on the
//! same grid, in the same run: benches/compare_preprocess.py (see docs/PERFORMANCE.md).

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use lungcad::preprocess::{lung_mask, preprocess, resample, Interpolation, PreprocessConfig};
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

    let config = PreprocessConfig::default();
    let mut g = c.benchmark_group("preprocess");
    g.sample_size(10);
    let resampled = resample(
        &v,
        [1.0; 3],
        Interpolation::Linear,
        -1024,
        &Limits::default(),
    )
    .expect("resamples");
    g.bench_function("lidc_lung_mask_1mm", |b| {
        b.iter(|| lung_mask(&resampled, &config.lung_mask).expect("finds the lungs"))
    });
    g.bench_function("lidc_whole", |b| {
        b.iter(|| preprocess(&v, &config, &Limits::default()).expect("preprocesses"))
    });
    let pre = preprocess(&v, &config, &Limits::default()).expect("preprocesses");
    let tiles = pre.tiles().expect("tiles");
    let mut batch = ndarray::Array4::<f32>::zeros((4, 128, 128, 128));
    g.bench_function("lidc_cut_4_tiles_128", |b| {
        b.iter(|| {
            for (k, o) in tiles.offsets().take(4).enumerate() {
                pre.patch_into(o, batch.index_axis_mut(ndarray::Axis(0), k));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
