//! 3-D tensor ops burn 0.22 lacks, built from reshapes and reductions (differentiable, on
//! every backend), each tested against a plain loop.

use burn::prelude::*;

/// 3-D max pooling with a 2 x 2 x 2 window and stride 2 on `(N, C, D, H, W)`, as PyTorch's
/// `max_pool3d(x, 2)` (floor mode: an odd last plane, row or column is dropped).
///
/// Each window's eight values are laid out on three axes of length 2 by a reshape to rank
/// 6, then reduced with `max_dim`.
pub fn max_pool3d_2(x: Tensor<5>) -> Tensor<5> {
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
            let out = max_pool3d_2(x);
            let od = [dims[0], dims[1], dims[2] / 2, dims[3] / 2, dims[4] / 2];
            assert_eq!(out.dims(), od);
            let got = out.into_data().try_into_vec::<f32>().unwrap();
            for n in 0..od[0] {
                for c in 0..od[1] {
                    for z in 0..od[2] {
                        for y in 0..od[3] {
                            for x in 0..od[4] {
                                let mut m = f32::NEG_INFINITY;
                                for (a, b, e) in (0..8).map(|k| (k >> 2, (k >> 1) & 1, k & 1)) {
                                    m = m
                                        .max(v[idx(dims, [n, c, 2 * z + a, 2 * y + b, 2 * x + e])]);
                                }
                                assert_eq!(got[idx(od, [n, c, z, y, x])], m);
                            }
                        }
                    }
                }
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
}
