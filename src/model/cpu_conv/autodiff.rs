//! Training on the CPU: the convolution as one step of burn's autodiff graph, computed by this
//! crate's kernels in both directions (burn's backend-extension API).
//!
//! burn's autodiff convolution on `flex` runs flex's forward convolution, its input gradient
//! as a transposed convolution, and its weight gradient as a convolution of the input by the
//! output gradient used as a kernel as large as the volume: an im2col copy of the whole input
//! for each of the 27 weight positions of a 3 x 3 x 3 layer. That made a training step of the
//! default network 2.8x slower than PyTorch's on the same cores (docs/PERFORMANCE.md).
//!
//! Here, for a stride-1 convolution with zero padding `p < k` on each axis:
//! - forward: the inference kernel ([`conv3d_f32`], Winograd's path included);
//! - input gradient: the same kernel on the output gradient, with the weights transposed
//!   (`C_in` and `C_out` swapped) and flipped on the three axes, padding `k - 1 - p`;
//! - weight gradient: [`weight_grad_f32`], in the inference kernel's layout (channels-last,
//!   zero-padded): for each kernel row `(a, b)`, one matrix product
//!   `(kw C_in, positions) x (positions, C_out)` with the input read in place.
//!
//! A bias is added by burn's own ops after the step, so its gradient is burn's. The sums are
//! in a fixed order (blocks of positions fixed by the shapes alone), so gradients do not
//! depend on the number of threads.

use super::{
    channels_last_into, conv3d_f32, pad_channels_last, product, stride1_padding, Epilogue, Layout,
};
use crate::model::flex::{self, is_flex_autodiff, tensor, values, Ad};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::Flex;
use burn::nn::conv::Conv3d;
use burn::prelude::*;
use rayon::prelude::*;

/// Values of the weight gradient's per-block partial sums held at once, at most (32 M f32,
/// 128 MB), which bounds the number of blocks of positions for wide layers.
const PARTIAL_VALUES: usize = 32 << 20;

/// Blocks of positions the weight gradient is split into, at most (each a parallel task).
const MAX_BLOCKS: usize = 16;

/// Positions per block, at least: below this a block's products are too short to pay.
const MIN_BLOCK: usize = 4096;

/// `conv.forward(x)` as a step of the autodiff graph computed by this module ([module
/// docs](self)), or `x` back when it does not apply: not on flex with autodiff (without
/// checkpointing), not f32, strided, dilated, grouped, or padded by `k` or more.
pub(super) fn conv3d(conv: &Conv3d, x: Tensor<5>) -> Result<Tensor<5>, Tensor<5>> {
    let Some(padding) = applies(conv, &x) else {
        return Err(x);
    };
    let Ok(x_ad) = x.clone().try_into_primitive::<Ad>() else {
        return Err(x);
    };
    let Ok(w_ad) = conv.weight.val().try_into_primitive::<Ad>() else {
        return Err(x);
    };
    drop(x);
    let c_out = conv.weight.dims()[0];
    let y = forward(x_ad.primitive(), w_ad.primitive(), padding);
    let y = match ConvStep
        .prepare::<NoCheckpointing>([x_ad.node(), w_ad.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = State {
                x: prep.checkpoint(&x_ad),
                weight: prep.checkpoint(&w_ad),
                padding,
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    let y = Tensor::<5>::from_primitive::<Ad>(y);
    Ok(match &conv.bias {
        Some(b) => y + b.val().reshape([1, c_out, 1, 1, 1]),
        None => y,
    })
}

/// The padding when [`conv3d`] applies (before the tensors' own checks), else `None`.
fn applies(conv: &Conv3d, x: &Tensor<5>) -> Option<[usize; 3]> {
    if !is_flex_autodiff(&x.device()) {
        return None;
    }
    let k = conv.kernel_size;
    stride1_padding(conv, x).filter(|p| (0..3).all(|a| p[a] < k[a]))
}

/// The step's backward state: its two inputs (checkpointed nodes) and the padding.
#[derive(Clone, Debug)]
struct State {
    x: NodeId,
    weight: NodeId,
    padding: [usize; 3],
}

/// The convolution's backward step ([module docs](self)).
#[derive(Debug)]
struct ConvStep;

impl Backward<Flex, 2> for ConvStep {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let x = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(ops.state.x);
        let weight = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(ops.state.weight);
        let padding = ops.state.padding;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, input_grad(&x, &weight, &grad, padding));
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, weight_grad(&x, &weight, &grad, padding));
        }
    }
}

fn options(padding: [usize; 3]) -> ConvOptions<3> {
    ConvOptions::new([1, 1, 1], padding, [1, 1, 1], 1)
}

/// The forward output (flex's convolution if a tensor is not f32, which [`applies`] rules out).
fn forward(
    x: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
    padding: [usize; 3],
) -> FloatTensor<Flex> {
    let [c_out, _, kd, kh, kw] = flex::dims::<5>(weight);
    match (values(x), values(weight)) {
        (Some(xs), Some(ws)) => {
            let kernel = [c_out, kd, kh, kw];
            let (out, dims) = conv3d_f32(
                &xs,
                flex::dims::<5>(x),
                &ws,
                kernel,
                padding,
                &Epilogue::default(),
            );
            tensor(out, dims, x)
        }
        _ => Flex::conv3d(x.clone(), weight.clone(), None, options(padding)),
    }
}

/// The gradient with respect to the input: the output gradient convolved with the weights
/// transposed and flipped, padding `k - 1 - p`.
fn input_grad(
    x: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
    grad: &FloatTensor<Flex>,
    padding: [usize; 3],
) -> FloatTensor<Flex> {
    let [c_out, c_in, kd, kh, kw] = flex::dims::<5>(weight);
    let (Some(ws), Some(gs)) = (values(weight), values(grad)) else {
        return Flex::conv3d_x_backward(x.clone(), weight.clone(), grad.clone(), options(padding));
    };
    let taps = kd * kh * kw;
    let mut flipped = vec![0f32; ws.len()];
    flipped
        .par_chunks_mut(c_out * taps)
        .enumerate()
        .for_each(|(ci, dst)| {
            for co in 0..c_out {
                for tap in 0..taps {
                    dst[co * taps + tap] = ws[(co * c_in + ci) * taps + taps - 1 - tap];
                }
            }
        });
    let back = [
        kd - 1 - padding[0],
        kh - 1 - padding[1],
        kw - 1 - padding[2],
    ];
    let kernel = [c_in, kd, kh, kw];
    let (out, dims) = conv3d_f32(
        &gs,
        flex::dims::<5>(grad),
        &flipped,
        kernel,
        back,
        &Epilogue::default(),
    );
    debug_assert_eq!(dims, flex::dims::<5>(x));
    tensor(out, dims, x)
}

/// The gradient with respect to the weights ([`weight_grad_f32`]).
fn weight_grad(
    x: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
    grad: &FloatTensor<Flex>,
    padding: [usize; 3],
) -> FloatTensor<Flex> {
    let dims = flex::dims::<5>(weight);
    let [c_out, _, kd, kh, kw] = dims;
    // An infinite or NaN input at a grid position that is not an output would meet a zero
    // there (0 x inf = NaN) where the definition never reads it: burn's, then.
    let finite = |v: &[f32]| v.par_iter().all(|v| v.is_finite());
    let (Some(xs), Some(gs)) = (values(x).filter(|xs| finite(xs)), values(grad)) else {
        return Flex::conv3d_weight_backward(
            x.clone(),
            weight.clone(),
            grad.clone(),
            options(padding),
        );
    };
    let dw = weight_grad_f32(&xs, flex::dims::<5>(x), &gs, [c_out, kd, kh, kw], padding);
    tensor(dw, dims, weight)
}

/// `dL/dw` of a stride-1 convolution with zero `padding`: `x` `(n, c_in, d, h, w)`, `grad`
/// (`dL/dy`) `(n, c_out, od, oh, ow)`, `kernel` `[c_out, kd, kh, kw]`; returns `(c_out, c_in,
/// kd, kh, kw)`, row-major.
///
/// `dw[co, ci, a, b, c] = sum over n, z, y, x of grad[n, co, z, y, x] xp[n, ci, z + a, y + b,
/// x + c]`, `xp` the padded input. On the padded grid (positions `(z, y, x)`, `y < hp`, `x <
/// wp`) with the input channels-last, a shift by `(a, b)` is a flat offset, so kernel row
/// `(a, b)` is one product `X_ab^T G` over a block of positions: `X_ab` `(positions, kw
/// c_in)` read in place (rows `c_in` apart, overlapping), `G` the output gradient on the same
/// grid, channels-last, zero where the grid is not an output (the last `kh - 1` rows of a
/// plane, `kw - 1` columns of a row). Blocks are summed in order.
fn weight_grad_f32(
    x: &[f32],
    [n, c_in, d, h, w]: [usize; 5],
    grad: &[f32],
    [c_out, kd, kh, kw]: [usize; 4],
    padding: [usize; 3],
) -> Vec<f32> {
    let (dp, hp, wp) = (d + 2 * padding[0], h + 2 * padding[1], w + 2 * padding[2]);
    assert!(
        dp >= kd && hp >= kh && wp >= kw,
        "kernel larger than the padded input"
    );
    let (od, oh, ow) = (dp - kd + 1, hp - kh + 1, wp - kw + 1);
    assert_eq!(x.len(), n * c_in * d * h * w, "input length");
    assert_eq!(grad.len(), n * c_out * od * oh * ow, "gradient length");
    let taps = kd * kh * kw;
    let row = kw * c_in;
    let per_block = taps * c_in * c_out;
    let plane = hp * wp;
    // Positions from the first output to the last one, on the padded grid.
    let positions = (od - 1) * plane + (oh - 1) * wp + ow;
    let blocks = (positions / MIN_BLOCK)
        .min(MAX_BLOCKS)
        .min(PARTIAL_VALUES / per_block.max(1))
        .max(1);
    let block_len = positions.div_ceil(blocks);

    let mut partial = vec![0f32; blocks * per_block];
    // Zeroed once: each sample writes the same positions, so the rest stays zero.
    let mut padded = vec![0f32; dp * plane * c_in];
    let mut g = vec![0f32; od * plane * c_out];
    for (s, (sample, grad)) in x
        .chunks_exact(c_in * d * h * w)
        .zip(grad.chunks_exact(c_out * od * oh * ow))
        .enumerate()
    {
        pad_channels_last(sample, [c_in, d, h, w], padding, &mut padded);
        channels_last_into(grad, [c_out, od, oh, ow], [0; 3], [hp, wp], &mut g);
        let (padded, g) = (&padded, &g);
        partial
            .par_chunks_mut(per_block)
            .enumerate()
            .for_each(|(b, acc)| {
                let start = b * block_len;
                let m = block_len.min(positions.saturating_sub(start));
                if m == 0 {
                    return;
                }
                let rhs = (&g[start * c_out..][..m * c_out], Layout::rows(c_out));
                for a in 0..kd {
                    for bb in 0..kh {
                        let first = (start + a * plane + bb * wp) * c_in;
                        let lhs = &padded[first..first + (m - 1) * c_in + row];
                        // X_ab^T: (row, m), element (j, v) at v c_in + j.
                        let lhs = (lhs, Layout { row: 1, col: c_in });
                        let out = &mut acc[(a * kh + bb) * row * c_out..][..row * c_out];
                        product([row, m, c_out], lhs, rhs, (out, Layout::rows(c_out)), s > 0);
                    }
                }
            });
    }
    // Sum the blocks in order, then (tap, c_in, c_out) to (c_out, c_in, tap).
    let (first, rest) = partial.split_at_mut(per_block);
    for block in rest.chunks_exact(per_block) {
        first
            .par_iter_mut()
            .zip(block.par_iter())
            .for_each(|(a, b)| *a += b);
    }
    let mut dw = vec![0f32; per_block];
    let first = &*first;
    dw.par_chunks_mut(c_in * taps)
        .enumerate()
        .for_each(|(co, dst)| {
            for ci in 0..c_in {
                for tap in 0..taps {
                    dst[ci * taps + tap] = first[(tap * c_in + ci) * c_out + co];
                }
            }
        });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{max_difference, random, scale};
    use crate::rng::SplitMix64;
    use burn::nn::conv::Conv3dConfig;
    use burn::nn::PaddingConfig3d;

    /// The definition, one weight at a time, in f64.
    fn plain_loop(
        x: &[f32],
        [n, c_in, d, h, w]: [usize; 5],
        grad: &[f32],
        [c_out, kd, kh, kw]: [usize; 4],
        p: [usize; 3],
    ) -> Vec<f32> {
        let (od, oh, ow) = (
            d + 2 * p[0] + 1 - kd,
            h + 2 * p[1] + 1 - kh,
            w + 2 * p[2] + 1 - kw,
        );
        let mut dw = Vec::new();
        for co in 0..c_out {
            for ci in 0..c_in {
                for a in 0..kd {
                    for b in 0..kh {
                        for c in 0..kw {
                            let mut s = 0f64;
                            for s_ in 0..n {
                                for z in 0..od {
                                    for y in 0..oh {
                                        for xx in 0..ow {
                                            let zi = (z + a).checked_sub(p[0]).filter(|v| *v < d);
                                            let yi = (y + b).checked_sub(p[1]).filter(|v| *v < h);
                                            let xi = (xx + c).checked_sub(p[2]).filter(|v| *v < w);
                                            let (Some(zi), Some(yi), Some(xi)) = (zi, yi, xi)
                                            else {
                                                continue;
                                            };
                                            let xv =
                                                x[(((s_ * c_in + ci) * d + zi) * h + yi) * w + xi];
                                            let g = grad
                                                [(((s_ * c_out + co) * od + z) * oh + y) * ow + xx];
                                            s += xv as f64 * g as f64;
                                        }
                                    }
                                }
                            }
                            dw.push(s as f32);
                        }
                    }
                }
            }
        }
        dw
    }

    #[test]
    fn weight_gradient_matches_a_plain_loop() {
        // 3 x 3 x 3 padded by 1; valid; uneven kernel and padding; 1 x 1 x 1; two samples;
        // one block and several (positions over MIN_BLOCK), a last block shorter than the others.
        let cases: [([usize; 5], [usize; 4], [usize; 3]); 6] = [
            ([1, 3, 5, 6, 7], [4, 3, 3, 3], [1, 1, 1]),
            ([2, 2, 6, 5, 4], [3, 3, 3, 3], [0, 0, 0]),
            ([1, 4, 5, 7, 6], [2, 2, 3, 1], [1, 2, 0]),
            ([2, 5, 4, 4, 4], [6, 1, 1, 1], [0, 0, 0]),
            ([1, 2, 21, 22, 23], [3, 3, 3, 3], [1, 1, 1]),
            ([2, 17, 9, 30, 31], [5, 3, 3, 3], [1, 1, 1]),
        ];
        let mut rng = SplitMix64::new(23);
        for (dims, kernel, padding) in cases {
            let [n, c_in, d, h, w] = dims;
            let [c_out, kd, kh, kw] = kernel;
            let od = d + 2 * padding[0] + 1 - kd;
            let oh = h + 2 * padding[1] + 1 - kh;
            let ow = w + 2 * padding[2] + 1 - kw;
            let x = random(n * c_in * d * h * w, &mut rng);
            let grad = random(n * c_out * od * oh * ow, &mut rng);
            let got = weight_grad_f32(&x, dims, &grad, kernel, padding);
            let want = plain_loop(&x, dims, &grad, kernel, padding);
            assert_eq!(got.len(), c_out * c_in * kd * kh * kw);
            let (scale, err) = (scale(&want), max_difference(&got, &want));
            assert!(
                err < 1e-5 * scale,
                "{dims:?} {kernel:?} {padding:?}: max error {err} (largest value {scale})"
            );
        }
    }

    /// Gradients of `sum(conv(x) r)` with respect to x, the weights and the bias: with this
    /// module's step (`ours`) or burn's `Conv3d::forward`.
    fn gradients(
        conv: &Conv3d,
        x: &[f32],
        dims: [usize; 5],
        r: &[f32],
        ours: bool,
    ) -> [Vec<f32>; 3] {
        let device = Device::flex().autodiff();
        let x = Tensor::<5>::from_data(TensorData::new(x.to_vec(), dims), &device).require_grad();
        let y = if ours {
            match super::conv3d(conv, x.clone()) {
                Ok(y) => y,
                Err(_) => panic!("the step does not apply"),
            }
        } else {
            conv.forward(x.clone())
        };
        let r = Tensor::<5>::from_data(TensorData::new(r.to_vec(), y.dims()), &device);
        let grads = (y * r).sum().backward();
        let read = |t: Option<Tensor<5>>| t.map(|t| t.into_data().try_into_vec::<f32>().unwrap());
        let bias = conv.bias.as_ref().and_then(|b| b.val().grad(&grads));
        [
            read(x.grad(&grads)).expect("input gradient"),
            read(conv.weight.val().grad(&grads)).expect("weight gradient"),
            bias.map(|b| b.into_data().try_into_vec::<f32>().unwrap())
                .unwrap_or_default(),
        ]
    }

    #[test]
    fn gradients_match_burns_and_do_not_depend_on_threads() {
        // Direct kernels; Winograd's in both directions (64 channels and more); 1 x 1 x 1 with a
        // bias; valid padding.
        let cases = [
            (3, 5, [3, 3, 3], [1, 1, 1], false),
            (64, 72, [3, 3, 3], [1, 1, 1], false),
            (6, 4, [1, 1, 1], [0, 0, 0], true),
            (2, 3, [3, 3, 3], [0, 0, 0], true),
        ];
        let mut rng = SplitMix64::new(29);
        for (c_in, c_out, k, p, bias) in cases {
            let conv = Conv3dConfig::new([c_in, c_out], k)
                .with_padding(PaddingConfig3d::Explicit(p[0], p[1], p[2]))
                .with_bias(bias)
                .init(&Device::flex().autodiff());
            let dims = [2, c_in, 7, 9, 8];
            let out = [
                2,
                c_out,
                7 + 2 * p[0] + 1 - k[0],
                9 + 2 * p[1] + 1 - k[1],
                8 + 2 * p[2] + 1 - k[2],
            ];
            let x = random(dims.iter().product(), &mut rng);
            let r = random(out.iter().product(), &mut rng);
            let on = |threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| gradients(&conv, &x, dims, &r, true))
            };
            let ours = on(3);
            let burns = gradients(&conv, &x, dims, &r, false);
            for (what, (a, b)) in ["input", "weight", "bias"]
                .iter()
                .zip(ours.iter().zip(&burns))
            {
                assert_eq!(a.len(), b.len(), "{what}");
                let (scale, err) = (scale(b), max_difference(a, b));
                assert!(
                    err < 1e-5 * scale,
                    "{c_in} to {c_out}, {k:?}: {what} gradient differs from burn's by {err} (largest {scale})"
                );
            }
            assert_eq!(
                ours,
                on(1),
                "{c_in} to {c_out}: gradients depend on the thread count"
            );
        }
    }

    #[test]
    fn an_infinite_input_gives_burns_weight_gradient() {
        // A NaN where the definition gives a number would come from the products' positions
        // that are not outputs; such an input leaves the weight gradient to burn.
        let conv = Conv3dConfig::new([1, 2], [1, 1, 2])
            .with_bias(false)
            .init(&Device::flex().autodiff());
        let dims = [1, 1, 1, 2, 3];
        let x = [1.0, 2.0, f32::INFINITY, 4.0, 5.0, 6.0];
        let r = [1.0; 8];
        let ours = gradients(&conv, &x, dims, &r, true);
        let burns = gradients(&conv, &x, dims, &r, false);
        let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        assert!(ours[1].iter().any(|v| v.is_finite()));
        assert!(
            ours[1].iter().zip(&burns[1]).all(|(a, b)| same(a, b)),
            "{:?} against burn's {:?}",
            ours[1],
            burns[1]
        );
    }

    #[test]
    fn applies_to_stride_1_convolutions_on_flex_with_autodiff_only() {
        let autodiff = Device::flex().autodiff();
        let x = |device: &Device| Tensor::<5>::zeros([1, 2, 8, 8, 8], device);
        let base = || Conv3dConfig::new([2, 3], [3, 3, 3]);
        let padded = |p| base().with_padding(PaddingConfig3d::Explicit(p, p, p));
        assert_eq!(
            applies(&padded(1).init(&autodiff), &x(&autodiff)),
            Some([1, 1, 1])
        );
        assert!(applies(&base().init(&autodiff), &x(&autodiff)).is_some());
        assert!(applies(
            &Conv3dConfig::new([2, 3], [1, 1, 1]).init(&autodiff),
            &x(&autodiff)
        )
        .is_some());
        // Padded by the kernel size: the input gradient's padding would be negative.
        assert!(applies(&padded(3).init(&autodiff), &x(&autodiff)).is_none());
        assert!(applies(
            &base().with_stride([2, 2, 2]).init(&autodiff),
            &x(&autodiff)
        )
        .is_none());
        assert!(applies(
            &base().with_dilation([2, 2, 2]).init(&autodiff),
            &x(&autodiff)
        )
        .is_none());
        let grouped = Conv3dConfig::new([2, 2], [3, 3, 3]).with_groups(2);
        assert!(applies(&grouped.init(&autodiff), &x(&autodiff)).is_none());
        // An empty axis (the padding alone would fit the kernel).
        let empty = Tensor::<5>::zeros([1, 2, 0, 8, 8], &autodiff);
        assert!(applies(&padded(1).init(&autodiff), &empty).is_none());
        // Inference (no autodiff) is cpu_conv's own path.
        let flex = Device::flex();
        assert!(applies(&base().init(&flex), &x(&flex)).is_none());
    }
}
