//! Loading speed: LIDC-IDRI-0001 (when the shared data is present), a synthetic
//! 512x512x300 DICOM series written by lungcad, and a 12-bit JPEG series when
//! LUNGCAD_BENCH_JPEG12 names one. The peers (SimpleITK, pydicom) are timed
//! on the same series by benches/compare_load.py; see docs/PERFORMANCE.md.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use lungcad::io::dicom::{write_series, SeriesWriteOptions};
use lungcad::{load, Geometry, LoadConfig, Volume};
use std::path::PathBuf;

fn bench(c: &mut Criterion) {
    let config = LoadConfig::default();
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    if let Some(dir) = common::lidc_0001() {
        g.bench_function("lidc_idri_0001_133x512x512", |b| {
            b.iter(|| load(&dir, &config).expect("loads"))
        });
    }
    // Kept in cargo's target tmp dir so benches/compare_load.py can time the peers on it.
    let synth = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthetic_300x512x512");
    if load(&synth, &config)
        .map(|v| v.shape() != [300, 512, 512])
        .unwrap_or(true)
    {
        let _ = std::fs::remove_dir_all(&synth);
        let hu = ndarray::Array3::from_shape_fn((300, 512, 512), |(z, y, x)| {
            ((z + y + x) % 2000) as i16 - 1000
        });
        let v = Volume::new(hu, Geometry::new([1.0, 0.7, 0.7], [0.0, 0.0, 0.0])).expect("volume");
        write_series(&v, &synth, &SeriesWriteOptions::default()).expect("write");
    }
    eprintln!("synthetic series: {}", synth.display());
    g.bench_function("synthetic_300x512x512", |b| {
        b.iter(|| load(&synth, &config).expect("loads"))
    });
    // A 12-bit JPEG Extended series (lungcad's own decoder), written by
    // `benches/make_jpeg12_series.py DIR`, when LUNGCAD_BENCH_JPEG12=DIR names it.
    if let Some(dir) = std::env::var_os("LUNGCAD_BENCH_JPEG12") {
        g.bench_function("jpeg12_series", |b| {
            b.iter(|| load(std::path::Path::new(&dir), &config).expect("loads"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
