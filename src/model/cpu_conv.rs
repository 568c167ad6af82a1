//! A faster 3-D convolution for inference on the CPU.
//!
//! burn's CPU backend (`flex`) convolves by tiled im2col + gemm: for every tile of 512
//! output voxels it copies the `C_in x kd x kh x kw` inputs of each voxel into a buffer, then
//! multiplies, in products as short as the layer has output channels. On the default
//! network's 3 x 3 x 3 layers that runs at 65 to 130 GFLOP/s on the project's two-core
//! machine, this kernel at 110 to 250 (docs/PERFORMANCE.md, `cargo bench --bench detector`).
//!
//! This kernel copies the input once, channels-last and zero-padded, and computes the output
//! on the padded grid. In that layout the `kw x C_in` inputs of a kernel row are contiguous,
//! and moving a kernel row by `(a, b)` moves every output voxel's window by the same flat
//! offset. A kernel row is therefore one matrix product over a run of output voxels, reading
//! its left matrix in place (rows `C_in` apart, overlapping): `kd x kh` products of
//! `(voxels, kw C_in) x (kw C_in, C_out)` per run, with no im2col buffer. Voxels of the
//! padded grid that are not outputs (the last `kh - 1` rows of a plane, `kw - 1` columns of a
//! row) are computed and dropped. When a kernel row is short (`kw C_in` under
//! [`SHORT_ROW`], as in a first layer on one channel) the run's rows are gathered into one
//! `(voxels, kd kh kw C_in)` matrix instead, one product per run.
//!
//! A batch norm that follows the convolution (in inference, a per-channel scale and shift)
//! and a ReLU are applied as the kernel writes its output ([`conv3d_bn`]), which saves two
//! passes over it.
//!
//! Wide 3 x 3 x 3 layers, 64 channels or more in and out (the default network's deeper
//! layers, and those of MONAI's RetinaNet), take Winograd's algorithm instead
//! (`cpu_conv/winograd.rs`): 3.4 times fewer multiplications.
//!
//! Runs are independent (each writes its own output voxels, summing in a fixed order), so the
//! output does not depend on the number of threads. Used by [`conv3d`] for stride-1,
//! ungrouped, undilated f32 convolutions larger than 1 x 1 x 1 on a plain `flex` device.
//! On `flex` with autodiff (training), stride-1 convolutions of any kernel size are a step of
//! the autodiff graph whose forward and backward passes run on these kernels
//! (`cpu_conv/autodiff.rs`). Every other case, and every other device, goes to burn's
//! `Conv3d::forward`. Measured in docs/PERFORMANCE.md.

use burn::backend::DispatchDevice;
use burn::nn::conv::Conv3d;
use burn::nn::{BatchNorm, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

mod autodiff;
mod winograd;

/// Output voxels per matrix product (one task): the `RUN x C_out` result stays in L2.
const RUN: usize = 1024;

/// Kernel rows of fewer values than this are gathered ([module docs](self)).
const SHORT_ROW: usize = 16;

/// `conv.forward(x)`, by this module's kernel where it applies ([module docs](self)).
pub fn conv3d(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    let x = match autodiff::conv3d(conv, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let Some(padding) = fast_path(conv, &x) else {
        return conv.forward(x);
    };
    let shift = match &conv.bias {
        None => None,
        Some(b) => match values(b.val()) {
            Some(v) => Some(v),
            None => return conv.forward(x),
        },
    };
    let epilogue = Epilogue {
        shift,
        ..Epilogue::default()
    };
    run(conv, x, padding, &epilogue).unwrap_or_else(|x| conv.forward(x))
}

/// `bn.forward(conv.forward(x))`, then ReLU when `relu`; `bn` in inference (its running
/// statistics), as burn runs it off an autodiff device. Where [`conv3d`]'s kernel applies,
/// the batch norm's per-channel scale and shift and the ReLU are applied as the kernel writes
/// its output, saving two passes over it.
pub fn conv3d_bn(conv: &Conv3d, bn: &BatchNorm, x: Tensor<5>, relu: bool) -> Tensor<5> {
    // In training on the CPU, batch norm and ReLU are one step (`model/cpu_norm.rs`).
    let unfused = |x| super::ops::batch_norm_relu(bn, conv3d(conv, x), relu);
    let Some(padding) = fast_path(conv, &x) else {
        return unfused(x);
    };
    let Some(mut epilogue) = batch_norm_affine(conv, bn) else {
        return unfused(x);
    };
    epilogue.relu = relu;
    run(conv, x, padding, &epilogue).unwrap_or_else(unfused)
}

/// A tensor's values as f32, when it holds f32.
fn values(t: Tensor<1>) -> Option<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().ok()
}

/// `conv`'s bias and then `bn` (inference) as one per-channel scale and shift.
fn batch_norm_affine(conv: &Conv3d, bn: &BatchNorm) -> Option<Epilogue> {
    let c_out = conv.weight.dims()[0];
    let gamma = values(bn.gamma.val())?;
    let beta = values(bn.beta.val())?;
    let mean = values(bn.running_mean.value())?;
    let var = values(bn.running_var.value())?;
    let bias = match &conv.bias {
        Some(b) => values(b.val())?,
        None => vec![0.0; c_out],
    };
    if [&gamma, &beta, &mean, &var, &bias]
        .iter()
        .any(|v| v.len() != c_out)
    {
        return None;
    }
    let scale: Vec<f64> = (0..c_out)
        .map(|c| gamma[c] as f64 / (var[c] as f64 + bn.epsilon).sqrt())
        .collect();
    let shift = (0..c_out)
        .map(|c| (beta[c] as f64 + (bias[c] as f64 - mean[c] as f64) * scale[c]) as f32)
        .collect();
    Some(Epilogue {
        scale: Some(scale.into_iter().map(|v| v as f32).collect()),
        shift: Some(shift),
        relu: false,
    })
}

/// The kernel on `x`, or `x` back (as a tensor) if its data cannot be read as f32, which
/// [`fast_path`] has checked: never expected, but not worth a panic.
fn run(
    conv: &Conv3d,
    x: Tensor<5>,
    padding: [usize; 3],
    epilogue: &Epilogue,
) -> Result<Tensor<5>, Tensor<5>> {
    let device = x.device();
    let dims = x.dims();
    let weight = conv.weight.val();
    let [c_out, _, kd, kh, kw] = weight.dims();
    // Flex hands over its buffer (a copy only when the tensor is shared).
    let x = x.into_data();
    let weight = weight.into_data();
    match (x.as_slice::<f32>(), weight.as_slice::<f32>()) {
        (Ok(xs), Ok(ws)) => {
            let (out, out_dims) = conv3d_f32(xs, dims, ws, [c_out, kd, kh, kw], padding, epilogue);
            Ok(Tensor::from_data(TensorData::new(out, out_dims), &device))
        }
        _ => Err(Tensor::from_data(x, &device)),
    }
}

/// What happens to each output value of channel `c` as it is written: times `scale[c]`,
/// plus `shift[c]`, then ReLU if `relu`.
#[derive(Default)]
struct Epilogue {
    scale: Option<Vec<f32>>,
    shift: Option<Vec<f32>>,
    relu: bool,
}

impl Epilogue {
    /// Channel `c`'s scale and shift.
    fn affine(&self, c: usize) -> (f32, f32) {
        (
            self.scale.as_ref().map_or(1.0, |s| s[c]),
            self.shift.as_ref().map_or(0.0, |s| s[c]),
        )
    }

    /// The ReLU if any.
    fn finish(&self, y: f32) -> f32 {
        if self.relu {
            relu(y)
        } else {
            y
        }
    }
}

/// As burn's relu: negatives to 0, NaN kept.
fn relu(y: f32) -> f32 {
    if y < 0.0 {
        0.0
    } else {
        y
    }
}

/// The padding when [`conv3d`] can take its own path, else `None`.
fn fast_path(conv: &Conv3d, x: &Tensor<5>) -> Option<[usize; 3]> {
    // An autodiff device is a variant of its own, so this is inference on the CPU.
    if !matches!(x.device().as_dispatch(), DispatchDevice::Flex(_))
        || conv.bias.as_ref().is_some_and(|b| b.val().dtype() != DType::F32)
        // flex's own 1 x 1 x 1 path is already one plain matrix product
        || conv.kernel_size == [1, 1, 1]
    {
        return None;
    }
    stride1_padding(conv, x)
}

/// The zero padding of `conv` on `x` when both are f32 and `conv` is stride-1, undilated and
/// ungrouped with explicit (or no) padding, and `x` is not empty and, padded, holds the
/// kernel on each axis; else `None`. What this module's kernels (inference and training)
/// need of any convolution, before their own conditions.
fn stride1_padding(conv: &Conv3d, x: &Tensor<5>) -> Option<[usize; 3]> {
    if x.dtype() != DType::F32
        || conv.weight.val().dtype() != DType::F32
        || conv.groups != 1
        || conv.stride != [1, 1, 1]
        || conv.dilation != [1, 1, 1]
    {
        return None;
    }
    let padding = match conv.padding {
        PaddingConfig3d::Valid => [0, 0, 0],
        PaddingConfig3d::Explicit(d, h, w) => [d, h, w],
        PaddingConfig3d::Same => return None,
    };
    let [n, c_in, d, h, w] = x.dims();
    let fits = (0..3).all(|a| {
        let n = [d, h, w][a];
        n > 0 && n + 2 * padding[a] >= conv.kernel_size[a]
    });
    (n > 0 && c_in > 0 && fits).then_some(padding)
}

/// The convolution of `x` (`(n, c_in, d, h, w)`, row-major) with `weight`
/// (`(c_out, c_in, kd, kh, kw)`; `kernel` is `[c_out, kd, kh, kw]`), stride 1, zero
/// `padding` on both sides of each axis, then the `epilogue`: the output and its dimensions.
fn conv3d_f32(
    x: &[f32],
    [n, c_in, d, h, w]: [usize; 5],
    weight: &[f32],
    [c_out, kd, kh, kw]: [usize; 4],
    padding: [usize; 3],
    epilogue: &Epilogue,
) -> (Vec<f32>, [usize; 5]) {
    assert_eq!(x.len(), n * c_in * d * h * w, "input length");
    assert_eq!(weight.len(), c_out * c_in * kd * kh * kw, "weight length");
    for per_channel in [&epilogue.scale, &epilogue.shift].into_iter().flatten() {
        assert_eq!(per_channel.len(), c_out, "values per output channel");
    }
    let (dp, hp, wp) = (d + 2 * padding[0], h + 2 * padding[1], w + 2 * padding[2]);
    assert!(
        dp >= kd && hp >= kh && wp >= kw,
        "kernel larger than the padded input"
    );
    let (od, oh, ow) = (dp - kd + 1, hp - kh + 1, wp - kw + 1);
    let out_dims = [n, c_out, od, oh, ow];
    let out_len = c_out * od * oh * ow;
    let mut out = vec![0f32; n * out_len];
    if out.is_empty() {
        return (out, out_dims);
    }

    // The weights as kd x kh matrices of (kw c_in) x c_out, row j = kx c_in + ci: in all,
    // (tap, c_in, c_out) with tap (kz kh + ky) kw + kx, as each weight's last index.
    let taps = kd * kh * kw;
    let row = kw * c_in;
    let mut w_rows = vec![0f32; taps * c_in * c_out];
    w_rows
        .par_chunks_mut(c_out)
        .enumerate()
        .for_each(|(r, dst)| {
            let (tap, ci) = (r / c_in, r % c_in);
            for (co, v) in dst.iter_mut().enumerate() {
                *v = weight[(co * c_in + ci) * taps + tap];
            }
        });

    // Winograd's transforms would turn an infinite value into NaN (its module docs).
    let finite = |v: &[f32]| v.par_iter().all(|v| v.is_finite());
    if winograd::applies([kd, kh, kw], c_in, c_out) && finite(x) && finite(weight) {
        let u = winograd::transform_weights(&w_rows, c_in, c_out);
        winograd::conv(
            x,
            [n, c_in, d, h, w],
            padding,
            &u,
            [c_out, od, oh, ow],
            &mut out,
            epilogue,
        );
        return (out, out_dims);
    }

    // A run is a block of output rows (z, y), in order; its matrix products cover the padded
    // grid's positions from its first row's start to its last row's end.
    let plane = hp * wp;
    let rows = od * oh;
    let rows_per_run = (RUN / wp).max(1);
    let gather = row < SHORT_ROW;
    let grid = Grid {
        kd,
        kh,
        wp,
        plane,
        c_in,
        c_out,
        row,
    };
    let position = |t: usize| t / oh * plane + t % oh * wp;
    // Zero once: each sample writes only the interior, so the borders stay zero.
    let mut padded = vec![0f32; dp * plane * c_in];
    for (sample, out) in x
        .chunks_exact(c_in * d * h * w)
        .zip(out.chunks_exact_mut(out_len))
    {
        pad_channels_last(sample, [c_in, d, h, w], padding, &mut padded);
        // Each run's rows in each output channel: runs[r][co].
        let mut runs: Vec<Vec<&mut [f32]>> = Vec::new();
        for channel in out.chunks_exact_mut(od * oh * ow) {
            for (r, rows) in channel.chunks_mut(rows_per_run * ow).enumerate() {
                if r == runs.len() {
                    runs.push(Vec::with_capacity(c_out));
                }
                runs[r].push(rows);
            }
        }
        runs.into_par_iter().enumerate().for_each_init(
            <(Vec<f32>, Vec<f32>)>::default,
            |(acc, cols), (r, mut channels)| {
                let (t0, t1) = (r * rows_per_run, ((r + 1) * rows_per_run).min(rows));
                let start = position(t0);
                acc.clear();
                acc.resize((position(t1 - 1) + ow - start) * c_out, 0.0);
                if gather {
                    run_gathered(&padded, &w_rows, grid, start, acc, cols);
                } else {
                    run_in_place(&padded, &w_rows, grid, start, acc);
                }
                for (co, dst) in channels.iter_mut().enumerate() {
                    let (scale, shift) = epilogue.affine(co);
                    for (t, dst_row) in (t0..t1).zip(dst.chunks_exact_mut(ow)) {
                        let q = position(t) - start;
                        for (xx, v) in dst_row.iter_mut().enumerate() {
                            *v = epilogue.finish(acc[(q + xx) * c_out + co] * scale + shift);
                        }
                    }
                }
            },
        );
    }
    (out, out_dims)
}

/// `sample` (`(c_in, d, h, w)`) into the interior of `padded`, `(d + 2p, h + 2p, w + 2p,
/// c_in)`; its borders are left as they are (zero).
fn pad_channels_last(
    sample: &[f32],
    [c_in, d, h, w]: [usize; 4],
    padding: [usize; 3],
    padded: &mut [f32],
) {
    let grid = [h + 2 * padding[1], w + 2 * padding[2]];
    channels_last_into(sample, [c_in, d, h, w], padding, grid, padded);
}

/// `sample` (`(c, d, h, w)`) into `dst`, channels-last on a grid of planes of `rows x cols`
/// positions, `sample`'s voxel `(z, y, x)` at position `(z, y, x) + offset`; the rest of
/// `dst` is left as it is.
fn channels_last_into(
    sample: &[f32],
    [c, d, h, w]: [usize; 4],
    offset: [usize; 3],
    [rows, cols]: [usize; 2],
    dst: &mut [f32],
) {
    dst.par_chunks_mut(rows * cols * c)
        .enumerate()
        .for_each(|(zp, plane)| {
            let Some(z) = zp.checked_sub(offset[0]).filter(|z| *z < d) else {
                return;
            };
            for y in 0..h {
                let dst = &mut plane[((y + offset[1]) * cols + offset[2]) * c..][..w * c];
                for ch in 0..c {
                    let src = &sample[((ch * d + z) * h + y) * w..][..w];
                    for (xx, v) in src.iter().enumerate() {
                        dst[xx * c + ch] = *v;
                    }
                }
            }
        });
}

/// The shapes a run needs.
#[derive(Clone, Copy)]
struct Grid {
    kd: usize,
    kh: usize,
    /// Padded row length and plane size, in positions.
    wp: usize,
    plane: usize,
    c_in: usize,
    c_out: usize,
    /// Values in a kernel row: `kw c_in`.
    row: usize,
}

/// One run of `acc.len() / c_out` output positions from `start`: a matrix product per
/// kernel row, its left matrix read in place from `padded`.
fn run_in_place(padded: &[f32], w_rows: &[f32], g: Grid, start: usize, acc: &mut [f32]) {
    let m = acc.len() / g.c_out;
    for kz in 0..g.kd {
        for ky in 0..g.kh {
            let first = (start + kz * g.plane + ky * g.wp) * g.c_in;
            // m rows of `row` values, `c_in` apart: the last ends at this slice's end.
            let lhs = &padded[first..first + (m - 1) * g.c_in + g.row];
            let rhs = &w_rows[(kz * g.kh + ky) * g.row * g.c_out..][..g.row * g.c_out];
            let at = Layout::rows(g.c_out);
            let lhs = (lhs, Layout::rows(g.c_in));
            product([m, g.row, g.c_out], lhs, (rhs, at), (acc, at), kz + ky > 0);
        }
    }
}

/// As [`run_in_place`], the kernel rows of each position first gathered into one row of
/// `kd kh row` values (in `cols`, the task's reused buffer), then one matrix product.
fn run_gathered(
    padded: &[f32],
    w_rows: &[f32],
    g: Grid,
    start: usize,
    acc: &mut [f32],
    cols: &mut Vec<f32>,
) {
    let m = acc.len() / g.c_out;
    let k = g.kd * g.kh * g.row;
    cols.resize(m * k, 0.0);
    let cols = &mut cols[..m * k];
    for (i, col) in cols.chunks_exact_mut(k).enumerate() {
        for kz in 0..g.kd {
            for ky in 0..g.kh {
                let src = (start + i + kz * g.plane + ky * g.wp) * g.c_in;
                col[(kz * g.kh + ky) * g.row..][..g.row].copy_from_slice(&padded[src..][..g.row]);
            }
        }
    }
    let at = Layout::rows(g.c_out);
    product(
        [m, k, g.c_out],
        (cols, Layout::rows(k)),
        (w_rows, at),
        (acc, at),
        false,
    );
}

/// A matrix in a slice: element `(i, j)` at `i row + j col`.
#[derive(Clone, Copy)]
struct Layout {
    row: usize,
    col: usize,
}

impl Layout {
    /// Row-major, rows `row` values apart.
    fn rows(row: usize) -> Self {
        Layout { row, col: 1 }
    }

    /// Whether a `rows x cols` matrix in this layout fits in `len` values.
    fn fits(self, rows: usize, cols: usize, len: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row + (cols - 1) * self.col < len
    }
}

/// `acc (m x n) [+]= lhs (m x k) x rhs (k x n)`, each matrix as its layout says (gemm, on
/// the calling thread).
fn product(
    [m, k, n]: [usize; 3],
    (lhs, lhs_at): (&[f32], Layout),
    (rhs, rhs_at): (&[f32], Layout),
    (acc, acc_at): (&mut [f32], Layout),
    accumulate: bool,
) {
    assert!(lhs_at.fits(m, k, lhs.len()) && rhs_at.fits(k, n, rhs.len()));
    assert!(acc_at.fits(m, n, acc.len()));
    // SAFETY: the asserts bound every index gemm reads (lhs[i r + j c] for i < m, j < k, and
    // rhs's likewise) and writes (acc's, i < m, j < n); the three slices do not alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            acc.as_mut_ptr(),
            acc_at.col as isize,
            acc_at.row as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_at.col as isize,
            lhs_at.row as isize,
            rhs.as_ptr(),
            rhs_at.col as isize,
            rhs_at.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{max_difference, random};
    use crate::rng::SplitMix64;
    use burn::nn::conv::Conv3dConfig;
    use burn::tensor::activation;

    /// The definition, one output value at a time, in f64.
    #[allow(clippy::too_many_arguments)]
    fn plain_loop(
        x: &[f32],
        [n, c_in, d, h, w]: [usize; 5],
        weight: &[f32],
        [c_out, kd, kh, kw]: [usize; 4],
        p: [usize; 3],
        epilogue: &Epilogue,
    ) -> Vec<f32> {
        let (od, oh, ow) = (
            d + 2 * p[0] + 1 - kd,
            h + 2 * p[1] + 1 - kh,
            w + 2 * p[2] + 1 - kw,
        );
        let mut out = Vec::new();
        for b in 0..n {
            for co in 0..c_out {
                for z in 0..od {
                    for y in 0..oh {
                        for xx in 0..ow {
                            let mut s = 0f64;
                            for ci in 0..c_in {
                                for a in 0..kd {
                                    for bb in 0..kh {
                                        for c in 0..kw {
                                            let (zi, yi, xi) = (
                                                (z + a) as isize - p[0] as isize,
                                                (y + bb) as isize - p[1] as isize,
                                                (xx + c) as isize - p[2] as isize,
                                            );
                                            if zi < 0 || yi < 0 || xi < 0 {
                                                continue;
                                            }
                                            let (zi, yi, xi) =
                                                (zi as usize, yi as usize, xi as usize);
                                            if zi >= d || yi >= h || xi >= w {
                                                continue;
                                            }
                                            let xv =
                                                x[(((b * c_in + ci) * d + zi) * h + yi) * w + xi];
                                            let wv = weight
                                                [(((co * c_in + ci) * kd + a) * kh + bb) * kw + c];
                                            s += xv as f64 * wv as f64;
                                        }
                                    }
                                }
                            }
                            let scale = epilogue.scale.as_ref().map_or(1.0, |v| v[co] as f64);
                            let shift = epilogue.shift.as_ref().map_or(0.0, |v| v[co] as f64);
                            let y = s * scale + shift;
                            out.push(if epilogue.relu { y.max(0.0) } else { y } as f32);
                        }
                    }
                }
            }
        }
        out
    }

    /// (x dims, kernel [c_out, kd, kh, kw], padding).
    type Case = ([usize; 5], [usize; 4], [usize; 3]);

    /// `conv3d_f32` against [`plain_loop`] on each case, with no epilogue, a bias, and a scale,
    /// shift and ReLU; `winograd`: whether the cases take that path.
    fn check_against_plain_loop(cases: &[Case], seed: u64, winograd: bool) {
        let mut rng = SplitMix64::new(seed);
        for &(dims, kernel, padding) in cases {
            let [n, c_in, d, h, w] = dims;
            let [c_out, kd, kh, kw] = kernel;
            assert_eq!(winograd::applies([kd, kh, kw], c_in, c_out), winograd);
            let x = random(n * c_in * d * h * w, &mut rng);
            let weight = random(c_out * c_in * kd * kh * kw, &mut rng);
            let per_channel = |seed| Some(random(c_out, &mut SplitMix64::new(seed)));
            let epilogues = [
                Epilogue::default(),
                Epilogue {
                    shift: per_channel(1),
                    ..Epilogue::default()
                },
                Epilogue {
                    scale: per_channel(2),
                    shift: per_channel(3),
                    relu: true,
                },
            ];
            for epilogue in &epilogues {
                let (got, got_dims) = conv3d_f32(&x, dims, &weight, kernel, padding, epilogue);
                let want = plain_loop(&x, dims, &weight, kernel, padding, epilogue);
                let od = d + 2 * padding[0] + 1 - kd;
                let oh = h + 2 * padding[1] + 1 - kh;
                let ow = w + 2 * padding[2] + 1 - kw;
                assert_eq!(got_dims, [n, c_out, od, oh, ow], "{dims:?} {kernel:?}");
                assert_eq!(got.len(), want.len());
                let err = max_difference(&got, &want);
                assert!(
                    err < 1e-4,
                    "{dims:?} {kernel:?} {padding:?}: max error {err}"
                );
            }
        }
    }

    #[test]
    fn matches_a_plain_loop() {
        // Both direct paths (in place for kernel rows of SHORT_ROW values or more, gathered
        // below), odd sizes, uneven padding, valid convolution, more outputs than one run,
        // kernel as large as the padded input.
        let cases = [
            ([2, 1, 9, 10, 11], [4, 3, 3, 3], [1, 1, 1]),
            ([1, 6, 7, 8, 9], [5, 3, 3, 3], [1, 1, 1]),
            ([2, 3, 6, 7, 5], [2, 1, 3, 5], [0, 1, 2]),
            ([1, 8, 5, 6, 7], [3, 3, 2, 3], [0, 0, 0]),
            ([1, 16, 12, 13, 14], [8, 3, 3, 3], [1, 1, 1]),
            ([1, 2, 3, 3, 3], [3, 5, 5, 5], [1, 1, 1]),
            ([3, 7, 4, 5, 3], [6, 7, 3, 3], [2, 1, 1]),
        ];
        check_against_plain_loop(&cases, 7, false);
    }

    #[test]
    fn winograd_path_matches_a_plain_loop() {
        // Odd output sizes (tiles past the edge), more tiles in a plane than one batch, a row
        // of tiles longer than one batch, valid and uneven padding, inputs 1 and 2 voxels
        // across, a single output voxel, two samples.
        let cases = [
            ([1, 64, 3, 24, 21], [64, 3, 3, 3], [1, 1, 1]),
            ([1, 64, 1, 2, 300], [64, 3, 3, 3], [1, 1, 1]),
            ([2, 66, 6, 7, 4], [72, 3, 3, 3], [0, 0, 0]),
            ([1, 64, 3, 3, 3], [65, 3, 3, 3], [2, 1, 0]),
            ([1, 64, 2, 1, 2], [64, 3, 3, 3], [1, 1, 1]),
            ([1, 64, 1, 1, 1], [64, 3, 3, 3], [1, 1, 1]),
        ];
        check_against_plain_loop(&cases, 17, true);
    }

    #[test]
    fn an_infinite_input_gives_infinities_as_a_direct_convolution_does() {
        // On Winograd's path the transforms would turn it into NaN (winograd.rs), so such
        // an input is convolved directly.
        let (c, side) = (64, 4);
        let mut x = vec![0f32; c * side * side * side];
        x[((5 * side + 1) * side + 2) * side + 1] = f32::INFINITY;
        let weight = vec![0.01f32; c * c * 27];
        let (out, _) = conv3d_f32(
            &x,
            [1, c, side, side, side],
            &weight,
            [c, 3, 3, 3],
            [1, 1, 1],
            &Epilogue::default(),
        );
        assert!(out.iter().all(|v| !v.is_nan()));
        // Each channel: the 27 outputs around (1, 2, 1) see it.
        assert_eq!(out.iter().filter(|v| **v == f32::INFINITY).count(), 27 * c);
        assert_eq!(
            out.iter().filter(|v| **v == 0.0).count(),
            out.len() - 27 * c
        );
    }

    #[test]
    fn same_as_burn_and_independent_of_threads() {
        // The direct kernel, then the Winograd one.
        for (c_in, c_out) in [(5, 7), (64, 72)] {
            same_as_burn_and_independent_of_threads_at(c_in, c_out);
        }
    }

    fn same_as_burn_and_independent_of_threads_at(c_in: usize, c_out: usize) {
        let device = Device::flex();
        let mut rng = SplitMix64::new(11);
        let conv = Conv3dConfig::new([c_in, c_out], [3, 3, 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .init(&device);
        let dims = [2, c_in, 16, 15, 14];
        let v = random(dims.iter().product(), &mut rng);
        let x = || Tensor::<5>::from_data(TensorData::new(v.clone(), dims), &device);
        assert!(fast_path(&conv, &x()).is_some());
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                conv3d(&conv, x())
                    .into_data()
                    .try_into_vec::<f32>()
                    .unwrap()
            })
        };
        let ours = on(3);
        let burns = conv.forward(x()).into_data().try_into_vec::<f32>().unwrap();
        let err = max_difference(&ours, &burns);
        assert!(
            err < 1e-5,
            "{c_in} to {c_out}: max difference from burn's conv3d {err}"
        );
        let again = on(1);
        assert_eq!(ours, again, "the output depends on the thread count");
    }

    #[test]
    fn batch_norm_and_relu_fused_as_burn_runs_them() {
        use burn::module::{Param, RunningState};
        let device = Device::flex();
        let mut rng = SplitMix64::new(13);
        let c = 6;
        let vector = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), &device);
        let mut bn = burn::nn::BatchNormConfig::new(c).init(&device);
        bn.gamma = Param::from_tensor(vector(random(c, &mut rng)));
        bn.beta = Param::from_tensor(vector(random(c, &mut rng)));
        bn.running_mean = RunningState::new(vector(random(c, &mut rng)));
        let var = random(c, &mut rng).iter().map(|v| v + 1.5).collect();
        bn.running_var = RunningState::new(vector(var));
        let dims = [2, 4, 9, 10, 11];
        let v = random(dims.iter().product(), &mut rng);
        let x = || Tensor::<5>::from_data(TensorData::new(v.clone(), dims), &device);
        for bias in [false, true] {
            let conv = Conv3dConfig::new([4, c], [3, 3, 3])
                .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                .with_bias(bias)
                .init(&device);
            assert!(batch_norm_affine(&conv, &bn).is_some());
            for relu in [false, true] {
                let ours = conv3d_bn(&conv, &bn, x(), relu);
                let y = bn.forward(conv.forward(x()));
                let burns = if relu { activation::relu(y) } else { y };
                let read = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().unwrap();
                let (ours, burns) = (read(ours), read(burns));
                assert!(burns.iter().any(|v| *v < 0.0) != relu);
                let err = max_difference(&ours, &burns);
                assert!(err < 1e-5, "bias {bias}, relu {relu}: max difference {err}");
            }
        }
    }

    #[test]
    fn other_cases_are_left_to_burn() {
        let device = Device::flex();
        let x = Tensor::<5>::zeros([1, 2, 8, 8, 8], &device);
        let conv = |c: Conv3dConfig| c.init(&device);
        let base = || Conv3dConfig::new([2, 3], [3, 3, 3]);
        assert!(fast_path(&conv(base()), &x).is_some());
        assert!(fast_path(&conv(base().with_stride([2, 2, 2])), &x).is_none());
        assert!(fast_path(&conv(base().with_dilation([2, 2, 2])), &x).is_none());
        assert!(fast_path(
            &conv(Conv3dConfig::new([2, 2], [3, 3, 3]).with_groups(2)),
            &x
        )
        .is_none());
        assert!(fast_path(&conv(Conv3dConfig::new([2, 3], [1, 1, 1])), &x).is_none());
        let autodiff = Device::flex().autodiff();
        let tracked = Tensor::<5>::zeros([1, 2, 8, 8, 8], &autodiff);
        assert!(fast_path(&base().init(&autodiff), &tracked).is_none());
    }
}
