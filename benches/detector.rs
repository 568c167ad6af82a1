//! The detector network's forward pass: the default network (untrained; speed does not
//! depend on the weights) on 64³ patches at batch 1 and 8, in patches per second. The
//! device is `LUNGCAD_BENCH_DEVICE` (auto, wgpu, cpu, cuda; default auto, which takes a
//! wgpu GPU when there is one and the CPU otherwise).
//!
//! 64³ keeps a CPU run to minutes (the network costs 22 GFLOPs per 64³ patch, 180 per
//! 128³). Full 128³ patches at batch 1, 8 and 32, against PyTorch on the same weights in the
//! same run: `lungcad benchmark` and benches/compare_detector.py (docs/PERFORMANCE.md).
//!
//! Group `conv3d`: the default network's 3x3x3 layers on one sample on the CPU, lungcad's
//! inference convolution (`model::cpu_conv`) against burn flex's own (`Conv3d::forward`),
//! in the same run (`cargo bench --bench detector -- conv3d`); the throughput criterion
//! prints is in FLOP/s ("elem/s"). Group `conv3d_train`: the same in training, forward and
//! backward (`cargo bench --bench detector -- conv3d_train`). Group `norm_pool_train`: batch
//! norm + ReLU and 2x2x2 max pooling in training, lungcad's CPU steps against burn's ops
//! (`cargo bench --bench detector -- norm_pool_train`).

use burn::nn::conv::Conv3dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lungcad::model::cpu_conv::conv3d;
use lungcad::model::ops::{batch_norm_relu, max_pool3d_2, max_pool3d_2_by_reductions};
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

fn bench_conv(c: &mut Criterion) {
    let device = Device::flex();
    let mut g = c.benchmark_group("conv3d");
    g.sample_size(10);
    // (input channels, output channels, side): the default network's stem, enc1 and enc3
    // layers, at 64 channels also by Winograd (`model::cpu_conv`), then a width below that
    // path's threshold and two of MONAI's RetinaNet's layers (a bottleneck's, a head's).
    for (c_in, c_out, side) in [
        (1, 24, 128),
        (24, 24, 128),
        (24, 32, 64),
        (32, 32, 64),
        (64, 64, 32),
        (48, 48, 64),
        (128, 128, 16),
        (256, 256, 32),
    ] {
        let conv = Conv3dConfig::new([c_in, c_out], [3, 3, 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .with_bias(false)
            .init(&device);
        let x = Tensor::<5>::random(
            [1, c_in, side, side, side],
            burn::tensor::Distribution::Default,
            &device,
        )
        .into_data();
        let flop = 2 * side * side * side * c_in * c_out * 27;
        g.throughput(Throughput::Elements(flop as u64));
        let name = format!("{c_in}to{c_out}_{side}cubed");
        // A fresh input tensor each time, made outside the timing: a tensor also held
        // elsewhere would be copied by the kernel (flex hands over only unshared buffers).
        let input = || Tensor::<5>::from_data(x.clone(), &device);
        g.bench_function(format!("lungcad/{name}"), |b| {
            b.iter_batched(
                input,
                |x| conv3d(&conv, x).into_data(),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("flex/{name}"), |b| {
            b.iter_batched(
                input,
                |x| conv.forward(x).into_data(),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// Forward and backward pass of one layer in training (`sum(conv(x) r)`, gradients of the
/// input and the weights), lungcad's autodiff step (`model::cpu_conv`) against burn's own
/// autodiff convolution on flex: `cargo bench --bench detector -- conv3d_train`.
fn bench_conv_train(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let mut g = c.benchmark_group("conv3d_train");
    g.sample_size(10);
    // The default network's stem, enc1, enc2 and enc3 layers at 64³ (its 128³ layers take
    // flex several seconds each).
    for (c_in, c_out, side) in [(1, 24, 64), (24, 24, 64), (32, 32, 64), (64, 64, 32)] {
        let conv = Conv3dConfig::new([c_in, c_out], [3, 3, 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .with_bias(false)
            .init(&device);
        let random = |c| {
            Tensor::<5>::random(
                [1, c, side, side, side],
                burn::tensor::Distribution::Default,
                &device,
            )
            .into_data()
        };
        let (x, r) = (random(c_in), random(c_out));
        // Forward, input gradient and weight gradient: three times the forward's products.
        let flop = 3 * 2 * side * side * side * c_in * c_out * 27;
        g.throughput(Throughput::Elements(flop as u64));
        let name = format!("{c_in}to{c_out}_{side}cubed");
        let step = |ours: bool| {
            let x = Tensor::<5>::from_data(x.clone(), &device).require_grad();
            let r = Tensor::<5>::from_data(r.clone(), &device);
            let y = if ours {
                conv3d(&conv, x.clone())
            } else {
                conv.forward(x.clone())
            };
            let grads = (y * r).sum().backward();
            let dx = x.grad(&grads).expect("input gradient").into_data();
            let dw = conv.weight.val().grad(&grads).expect("weight gradient");
            (dx, dw.into_data())
        };
        g.bench_function(format!("lungcad/{name}"), |b| b.iter(|| step(true)));
        g.bench_function(format!("flex/{name}"), |b| b.iter(|| step(false)));
    }
    g.finish();
}

/// Forward and backward pass of batch norm (training: the batch's statistics) + ReLU, and of
/// the 2x2x2 max pooling, on one sample of 24 channels at 128³ (the default network's
/// stem), lungcad's CPU steps (`ops::batch_norm_relu`, `ops::max_pool3d_2`) against burn's
/// own ops on flex with autodiff: `cargo bench --bench detector -- norm_pool_train`.
fn bench_norm_pool_train(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let mut g = c.benchmark_group("norm_pool_train");
    g.sample_size(10);
    let (channels, side) = (24, 128);
    let dims = [1, channels, side, side, side];
    let random = |dims: [usize; 5]| {
        Tensor::<5>::random(dims, burn::tensor::Distribution::Default, &device).into_data()
    };
    let (x, r) = (random(dims), random(dims));
    let r_half = random([1, channels, side / 2, side / 2, side / 2]);
    let bn = BatchNormConfig::new(channels).init(&device);
    g.throughput(Throughput::Elements((channels * side * side * side) as u64));
    // `sum(f(x) r)` and its input gradient (batch norm's gamma and beta gradients too).
    let step = |f: &dyn Fn(Tensor<5>) -> Tensor<5>, r: &TensorData| {
        let x = Tensor::<5>::from_data(x.clone(), &device).require_grad();
        let r = Tensor::<5>::from_data(r.clone(), &device);
        let grads = (f(x.clone()) * r).sum().backward();
        x.grad(&grads).expect("input gradient").into_data()
    };
    let name = format!("{channels}ch_{side}cubed");
    g.bench_function(format!("lungcad/batch_norm_relu_{name}"), |b| {
        b.iter(|| step(&|x| batch_norm_relu(&bn, x, true), &r))
    });
    g.bench_function(format!("burn/batch_norm_relu_{name}"), |b| {
        b.iter(|| step(&|x| relu(bn.forward(x)), &r))
    });
    g.bench_function(format!("lungcad/max_pool_{name}"), |b| {
        b.iter(|| step(&max_pool3d_2, &r_half))
    });
    g.bench_function(format!("burn/max_pool_{name}"), |b| {
        b.iter(|| step(&max_pool3d_2_by_reductions, &r_half))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench,
    bench_conv,
    bench_conv_train,
    bench_norm_pool_train
);
criterion_main!(benches);
