//! 3-D tensor ops burn 0.22 lacks, built from reshapes and reductions (differentiable, on
//! every backend), each tested against a plain loop; on the CPU, steps of this crate's own
//! where they are faster (pooling, batch norm + ReLU in training).

use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::activation;

/// 3-D max pooling with a 2 x 2 x 2 window and stride 2 on `(N, C, D, H, W)`, as PyTorch's
/// `max_pool3d(x, 2)` (floor mode: an odd last plane, row or column is dropped).
///
/// Each window's eight values are laid out on three axes of length 2 by a reshape to rank
/// 6, then reduced with `max_dim`. On the CPU (`flex`, with or without autodiff) one pass
/// does it instead, with the same winners (`cpu_pool.rs`).
pub fn max_pool3d_2(x: Tensor<5>) -> Tensor<5> {
    match super::cpu_pool::max_pool3d_2(x) {
        Ok(y) => y,
        Err(x) => max_pool3d_2_by_reductions(x),
    }
}

/// [`max_pool3d_2`] by three `max_dim` reductions, on any device (what every device but the
/// CPU runs; public for the benches, which compare the two).
pub fn max_pool3d_2_by_reductions(x: Tensor<5>) -> Tensor<5> {
    let [n, c, d, h, w] = x.dims();
    let (d2, h2, w2) = (d / 2, h / 2, w / 2);
    let x = if d % 2 == 1 || h % 2 == 1 || w % 2 == 1 {
        x.slice(s![.., .., 0..2 * d2, 0..2 * h2, 0..2 * w2])
    } else {
        x
    };
    x.reshape([n * c * d2, 2, h2, 2, w2, 2])
        .max_dim(5)
        .max_dim(3)
        .max_dim(1)
        .reshape([n, c, d2, h2, w2])
}

/// `bn.forward(x)`, then a ReLU when `relu`. In training on the CPU (`flex` with autodiff,
/// `bn` training) one step of this crate's does both (`cpu_norm.rs`: three passes over the
/// activation forward, two backward); elsewhere burn's `BatchNorm::forward` and `relu`.
pub fn batch_norm_relu(bn: &BatchNorm, x: Tensor<5>, relu: bool) -> Tensor<5> {
    match super::cpu_norm::batch_norm_train(bn, x, relu) {
        Ok(y) => y,
        Err(y) if relu => activation::relu(bn.forward(y)),
        Err(y) => bn.forward(y),
    }
}

/// Nearest-neighbour upsampling by 2 on each spatial axis of `(N, C, D, H, W)`, as PyTorch's
/// `interpolate(x, scale_factor=2, mode="nearest")`.
pub fn upsample_nearest3d_2(x: Tensor<5>) -> Tensor<5> {
    let [n, c, d, h, w] = x.dims();
    x.reshape([n * c * d, 1, h, 1, w, 1])
        .repeat_dim(5, 2)
        .repeat_dim(3, 2)
        .repeat_dim(1, 2)
        .reshape([n, c, 2 * d, 2 * h, 2 * w])
}

/// 3-D max pooling of `(N, C, D, H, W)` with any window, stride and padding, as PyTorch's
/// `max_pool3d(x, kernel, stride, padding)` (floor mode; padding never wins: it is `-inf`).
/// A box window's max is separable: one axis at a time, each a max over the window's
/// strided slices along that axis (3 + 3 + 3 slices for a 3 x 3 x 3 window, not 27).
pub fn max_pool3d(
    x: Tensor<5>,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Tensor<5> {
    use burn::tensor::ops::PadMode;
    use burn::tensor::Slice;
    let mut x = x;
    for a in 0..3 {
        let n = x.dims()[2 + a];
        let out = (n + 2 * padding[a] - kernel[a]) / stride[a] + 1;
        if padding[a] > 0 {
            let mut pads = [(0, 0); 3];
            pads[a] = (padding[a], padding[a]);
            x = x.pad(pads, PadMode::Constant(f32::NEG_INFINITY));
        }
        let full = Slice {
            start: 0,
            end: None,
            step: 1,
        };
        let mut acc: Option<Tensor<5>> = None;
        for off in 0..kernel[a] {
            let mut sl = [full; 5];
            sl[2 + a] = Slice {
                start: off as isize,
                end: Some((off + stride[a] * (out - 1) + 1) as isize),
                step: stride[a] as isize,
            };
            let v = x.clone().slice(sl);
            acc = Some(match acc {
                None => v,
                Some(m) => m.max_pair(v),
            });
        }
        if let Some(m) = acc {
            x = m;
        }
    }
    x
}

/// Nearest-neighbour resizing of `(N, C, D, H, W)` to `size`, as PyTorch's
/// `interpolate(x, size=size, mode="nearest")`: output index `o` of an axis of `n` reads
/// input index `min(floor(o * (n / size)), n - 1)`, the scale in `f32` as PyTorch's.
pub fn resize_nearest3d(x: Tensor<5>, size: [usize; 3]) -> Tensor<5> {
    let dims = x.dims();
    let device = x.device();
    let mut x = x;
    for a in 0..3 {
        let (n, m) = (dims[2 + a], size[a]);
        if n == m {
            continue;
        }
        let scale = n as f32 / m as f32;
        let idx: Vec<i64> = (0..m)
            .map(|o| ((o as f32 * scale).floor() as usize).min(n - 1) as i64)
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [m]), &device);
        x = x.select(2 + a, idx);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(dims: [usize; 5], seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        (0..dims.iter().product::<usize>())
            .map(|_| (rng.uniform() * 200.0 - 100.0) as f32)
            .collect()
    }

    fn idx(dims: [usize; 5], i: [usize; 5]) -> usize {
        (((i[0] * dims[1] + i[1]) * dims[2] + i[2]) * dims[3] + i[3]) * dims[4] + i[4]
    }

    #[test]
    fn max_pool_matches_a_plain_loop() {
        let device = Device::flex();
        for dims in [[2, 3, 4, 6, 8], [1, 2, 5, 7, 3], [1, 1, 2, 2, 2]] {
            let v = data(dims, 1);
            let x = Tensor::<5>::from_data(TensorData::new(v.clone(), dims), &device);
            let (expected, od) = pool_loop(&v, dims, [2; 3], [2; 3], [0; 3]);
            // The CPU's one-pass path (cpu_pool.rs), then the reductions other devices run.
            for out in [max_pool3d_2(x.clone()), max_pool3d_2_by_reductions(x)] {
                assert_eq!(out.dims(), od);
                assert_eq!(out.into_data().try_into_vec::<f32>().unwrap(), expected);
            }
        }
    }

    #[test]
    fn upsample_matches_a_plain_loop() {
        let device = Device::flex();
        let dims = [2, 3, 2, 3, 4];
        let v = data(dims, 2);
        let x = Tensor::<5>::from_data(TensorData::new(v.clone(), dims), &device);
        let out = upsample_nearest3d_2(x);
        let od = [2, 3, 4, 6, 8];
        assert_eq!(out.dims(), od);
        let got = out.into_data().try_into_vec::<f32>().unwrap();
        for n in 0..2 {
            for c in 0..3 {
                for z in 0..4 {
                    for y in 0..6 {
                        for x in 0..8 {
                            assert_eq!(
                                got[idx(od, [n, c, z, y, x])],
                                v[idx(dims, [n, c, z / 2, y / 2, x / 2])]
                            );
                        }
                    }
                }
            }
        }
    }

    /// `max_pool3d` against a plain loop, padding as `-inf`.
    fn pool_loop(
        v: &[f32],
        dims: [usize; 5],
        k: [usize; 3],
        st: [usize; 3],
        p: [usize; 3],
    ) -> (Vec<f32>, [usize; 5]) {
        let o: [usize; 3] = std::array::from_fn(|a| (dims[2 + a] + 2 * p[a] - k[a]) / st[a] + 1);
        let od = [dims[0], dims[1], o[0], o[1], o[2]];
        let mut out = vec![f32::NEG_INFINITY; od.iter().product()];
        for n in 0..od[0] {
            for c in 0..od[1] {
                for z in 0..o[0] {
                    for y in 0..o[1] {
                        for x in 0..o[2] {
                            let mut m = f32::NEG_INFINITY;
                            for a in 0..k[0] {
                                for b in 0..k[1] {
                                    for e in 0..k[2] {
                                        let iz = (z * st[0] + a) as isize - p[0] as isize;
                                        let iy = (y * st[1] + b) as isize - p[1] as isize;
                                        let ix = (x * st[2] + e) as isize - p[2] as isize;
                                        if iz < 0 || iy < 0 || ix < 0 {
                                            continue;
                                        }
                                        let (iz, iy, ix) = (iz as usize, iy as usize, ix as usize);
                                        if iz >= dims[2] || iy >= dims[3] || ix >= dims[4] {
                                            continue;
                                        }
                                        m = m.max(v[idx(dims, [n, c, iz, iy, ix])]);
                                    }
                                }
                            }
                            out[idx(od, [n, c, z, y, x])] = m;
                        }
                    }
                }
            }
        }
        (out, od)
    }

    #[test]
    fn general_max_pool_matches_a_plain_loop() {
        let device = Device::flex();
        let cases = [
            ([1, 2, 7, 6, 5], [3, 3, 3], [2, 2, 2], [1, 1, 1]),
            ([2, 1, 6, 9, 4], [3, 2, 1], [2, 1, 2], [1, 0, 0]),
            ([1, 3, 5, 6, 7], [1, 1, 1], [2, 2, 2], [0, 0, 0]),
        ];
        for (dims, k, st, p) in cases {
            let v = data(dims, 3);
            let x = Tensor::<5>::from_data(TensorData::new(v.clone(), dims), &device);
            let out = max_pool3d(x, k, st, p);
            let (expected, od) = pool_loop(&v, dims, k, st, p);
            assert_eq!(out.dims(), od);
            assert_eq!(out.into_data().try_into_vec::<f32>().unwrap(), expected);
        }
    }

    #[test]
    fn nearest_resize_matches_a_plain_loop() {
        let device = Device::flex();
        let dims = [1, 2, 3, 5, 4];
        let size = [6, 10, 3];
        let v = data(dims, 4);
        let x = Tensor::<5>::from_data(TensorData::new(v.clone(), dims), &device);
        let out = resize_nearest3d(x, size);
        let od = [1, 2, 6, 10, 3];
        assert_eq!(out.dims(), od);
        let got = out.into_data().try_into_vec::<f32>().unwrap();
        let src = |o: usize, n: usize, m: usize| {
            ((o as f32 * (n as f32 / m as f32)).floor() as usize).min(n - 1)
        };
        for c in 0..2 {
            for z in 0..6 {
                for y in 0..10 {
                    for x in 0..3 {
                        let i = [0, c, src(z, 3, 6), src(y, 5, 10), src(x, 4, 3)];
                        assert_eq!(got[idx(od, [0, c, z, y, x])], v[idx(dims, i)]);
                    }
                }
            }
        }
    }
}
