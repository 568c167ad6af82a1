//! The training data pipeline's speed: augmented 128³ patches with their targets, made from
//! a preprocessed scan (LIDC-IDRI-0001 at 1 mm) on all cores, in patches per second, one
//! at a time and as batches of 32 through the prefetching pipeline (`for_each_batch`),
//! from the scan in memory and from the on-disk cache that training reads (each patch
//! reads its region from the file). Compare with the network's training step
//! (docs/PERFORMANCE.md): the data must come faster than the device consumes it.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lungcad::detect::{HeadLayout, VoxelNodule};
use lungcad::eval::Finding;
use lungcad::preprocess::{preprocess, PreprocessConfig};
use lungcad::train::cache::ScanCache;
use lungcad::train::dataset::ScanSource;
use lungcad::train::sampler::{
    for_each_batch, make_sample, plan_epoch, SamplerConfig, ScanData, TrainScan,
};
use lungcad::{load, Limits, LoadConfig};

fn bench(c: &mut Criterion) {
    let Some(dir) = common::lidc_0001() else {
        return; // common::lidc_0001 said why
    };
    let v = load(&dir, &LoadConfig::default()).expect("loads");
    let pre =
        preprocess(&v, &PreprocessConfig::default(), &Limits::default()).expect("preprocesses");
    let (centre, diameter_mm) = common::LIDC_0001_NODULE;
    let scans = vec![TrainScan {
        series_uid: "LIDC-IDRI-0001".into(),
        nodules: vec![VoxelNodule {
            centre_vox: pre.geometry().world_to_voxel(centre),
            diameter_mm,
        }],
        data: ScanData::Memory(pre),
    }];
    let cfg = SamplerConfig::default();
    let head = HeadLayout::default();
    let size = [128; 3];
    // The same scan in the training cache.
    let tmp = tempfile::tempdir().expect("temporary folder");
    let cache = ScanCache::open(tmp.path(), &PreprocessConfig::default()).expect("cache");
    let source = ScanSource {
        series_uid: common::LIDC_0001_UID.into(),
        path: dir.clone(),
        dicom: true,
        nodules: vec![Finding {
            seriesuid: common::LIDC_0001_UID.into(),
            coord_x: centre[0],
            coord_y: centre[1],
            coord_z: centre[2],
            diameter_mm: Some(diameter_mm),
        }],
        excluded: Vec::new(),
    };
    let (cached, _) = cache
        .prepare(&source, &LoadConfig::default())
        .expect("caches");
    let cached = vec![TrainScan::new(
        &source.series_uid,
        ScanData::Cached(cached),
        &source.nodules,
    )];

    let mut g = c.benchmark_group("training_patches_128cubed");
    g.sample_size(10);
    for (name, scans) in [("memory", &scans), ("cache", &cached)] {
        g.throughput(Throughput::Elements(1));
        let plan = plan_epoch(scans, 64, 0, 1, &cfg).expect("plans");
        let mut i = 0;
        g.bench_function(format!("one_augmented_patch_from_{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % plan.len();
                make_sample(&scans[0], &plan[i], size, &head, &cfg).expect("samples")
            })
        });
        g.throughput(Throughput::Elements(32));
        let plan = plan_epoch(scans, 32, 0, 2, &cfg).expect("plans");
        g.bench_function(format!("batch_of_32_prefetched_from_{name}"), |b| {
            b.iter(|| {
                let mut n = 0;
                for_each_batch(scans, &plan, 32, size, &head, &cfg, 2, |_, batch| {
                    n += batch.len();
                    Ok(())
                })
                .expect("batches");
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
