//! The detector network's forward pass: the default network (untrained; speed does not
//! depend on the weights) on 64³ patches at batch 1 and 8, in patches per second. The
//! device is `LUNGCAD_BENCH_DEVICE` (auto, wgpu, cpu, cuda; default auto, which takes a
//! wgpu GPU when there is one and the CPU otherwise).
//!
//! 64³ keeps a CPU run to minutes (the network costs 22 GFLOPs per 64³ patch, 180 per
//! 128³). Full 128³ patches at batch 1, 8 and 32, against PyTorch on the same weights in the
//! same run: `lungcad benchmark` and benches/compare_detector.py (docs/PERFORMANCE.md).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lungcad::model::{select_device, Detector, DetectorConfig, DeviceChoice};
use lungcad::preprocess::PreprocessConfig;

const PATCH: usize = 64;

fn bench(c: &mut Criterion) {
    let choice: DeviceChoice = std::env::var("LUNGCAD_BENCH_DEVICE")
        .unwrap_or_else(|_| "auto".into())
        .parse()
        .expect("LUNGCAD_BENCH_DEVICE: auto, wgpu, cpu or cuda");
    let (device, name) = select_device(choice).expect("the device");
    eprintln!("detector bench on {name}");
    let short = name.split(' ').next().unwrap_or("device").to_string();
    let detector = Detector::new(
        DetectorConfig::default(),
        PreprocessConfig::default(),
        &device,
        0,
    )
    .expect("the default network");
    let mut g = c.benchmark_group(format!("forward_{PATCH}cubed"));
    g.sample_size(10);
    for batch in [1usize, 8] {
        let n = batch * PATCH * PATCH * PATCH;
        let input: Vec<f32> = (0..n)
            .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 1000.0)
            .collect();
        // Warm-up: a GPU compiles (and autotunes) its kernels on the first pass.
        detector
            .forward_batch(input.clone(), batch, [PATCH; 3])
            .expect("runs");
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("{short}/batch_{batch}"), |b| {
            b.iter(|| {
                detector
                    .forward_batch(input.clone(), batch, [PATCH; 3])
                    .expect("runs")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
