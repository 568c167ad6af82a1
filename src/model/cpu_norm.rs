//! Batch norm in training (the batch's statistics), then optionally a ReLU, on the CPU as one
//! autodiff step of its own.
//!
//! burn computes a training batch norm out of tensor operations: on `flex` about four passes
//! over the activation forward and ten backward, each with a new output, then the ReLU's two.
//! For 24 channels at 128³ that was 1.35 s forward and backward, and a training step of the
//! default network has two such layers. Here the forward pass reads the input three times
//! (its per-channel mean, its variance about the mean, then the output) and the backward
//! pass twice (the per-channel sums of the gradient, then the input's gradient), with the
//! ReLU's mask recomputed from the input. With gradient checkpointing (`Balanced`) the
//! autodiff tensors do not convert, and burn's batch norm runs instead.
//!
//! Same formulas as burn's: `y = (x - mean) / sqrt(var + eps) gamma + beta` with the batch's
//! mean and biased variance over every axis but the channels, the running statistics updated
//! with the same momentum; the backward pass is burn's
//! `dx = gamma / sqrt(var + eps) (g - mean(g) - x_hat mean(g x_hat))`. Sums are in f64, per
//! channel, in a fixed order, so the results do not depend on the number of threads.

use super::flex::{self, f32_values, is_flex_autodiff, tensor, values, Ad};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::tensor::FloatTensor;
use burn::backend::Flex;
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::DType;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// `bn.forward(x)` in training, then ReLU when `relu`, by this module's step when `bn` trains
/// (`x` on flex with autodiff, `bn.training` enabled) and all values are f32; else `x` back.
pub(super) fn batch_norm_train(
    bn: &BatchNorm,
    x: Tensor<5>,
    relu: bool,
) -> Result<Tensor<5>, Tensor<5>> {
    let device = x.device();
    if !is_flex_autodiff(&device)
        || !bn.training.is_enabled()
        || x.dtype() != DType::F32
        || bn.gamma.val().dtype() != DType::F32
        || bn.beta.val().dtype() != DType::F32
        || x.dims()[1] != bn.gamma.dims()[0]
    {
        return Err(x);
    }
    let Ok(x_ad) = x.clone().try_into_primitive::<Ad>() else {
        return Err(x);
    };
    let Ok(gamma_ad) = bn.gamma.val().try_into_primitive::<Ad>() else {
        return Err(x);
    };
    let Ok(beta_ad) = bn.beta.val().try_into_primitive::<Ad>() else {
        return Err(x);
    };
    let (Some(xs), Some(gamma), Some(beta)) = (
        values(x_ad.primitive()),
        values(gamma_ad.primitive()),
        values(beta_ad.primitive()),
    ) else {
        return Err(x);
    };
    drop(x);
    let dims = flex::dims::<5>(x_ad.primitive());
    let layout = Layout::of(dims);
    let stats = statistics(&xs, layout, bn.epsilon);
    let norm = Norm {
        gamma: gamma.into_owned(),
        beta: beta.into_owned(),
        mean: stats.iter().map(|s| s.mean).collect(),
        inv_std: stats.iter().map(|s| s.inv_std).collect(),
        relu,
    };
    let y = tensor(normalise(&xs, layout, &norm), dims, x_ad.primitive());
    drop(xs);
    let y = match NormStep
        .prepare::<NoCheckpointing>([x_ad.node(), gamma_ad.node(), beta_ad.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x = prep.checkpoint(&x_ad);
            prep.finish(State { x, norm }, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };

    // The running statistics, as burn's BatchNorm updates them.
    let channels = dims[1];
    let vector = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [channels]), &device);
    let mean = vector(stats.iter().map(|s| s.mean).collect());
    let var = vector(stats.iter().map(|s| s.var).collect());
    for (running, batch) in [(&bn.running_mean, mean), (&bn.running_var, var)] {
        let updated = running
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - bn.momentum)
            .add(batch.mul_scalar(bn.momentum));
        running.update(updated.detach());
    }
    Ok(Tensor::from_primitive::<Ad>(y))
}

/// Where a channel's values are: `samples` blocks of `len` values, `stride` apart, the first
/// at `channel len`.
#[derive(Clone, Copy, Debug)]
struct Layout {
    samples: usize,
    channels: usize,
    len: usize,
}

impl Layout {
    fn of([n, c, d, h, w]: [usize; 5]) -> Self {
        Layout {
            samples: n,
            channels: c,
            len: d * h * w,
        }
    }

    /// Channel `c`'s blocks of `v`.
    fn blocks<'a>(&self, v: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (len, stride) = (self.len, self.channels * self.len);
        (0..self.samples).map(move |s| &v[s * stride + c * len..][..len])
    }

    /// Values per channel.
    fn count(&self) -> usize {
        self.samples * self.len
    }
}

/// One channel's batch statistics.
#[derive(Clone, Copy, Debug)]
struct Statistics {
    mean: f32,
    /// Biased (over the count), as burn's.
    var: f32,
    inv_std: f32,
}

/// Sums of `v` and of `(v - centre)^2`, in f64, in eight lanes added in order at the end.
#[inline(always)]
fn sums(v: &[f32], centre: f64) -> (f64, f64) {
    let (mut s, mut q) = ([0f64; 8], [0f64; 8]);
    let (chunks, tail) = v.as_chunks::<8>();
    for chunk in chunks {
        for l in 0..8 {
            let x = chunk[l] as f64;
            s[l] += x;
            q[l] += (x - centre) * (x - centre);
        }
    }
    for (l, x) in tail.iter().enumerate() {
        s[l] += *x as f64;
        q[l] += (*x as f64 - centre) * (*x as f64 - centre);
    }
    (s.iter().sum(), q.iter().sum())
}

/// Each channel's mean and biased variance (two passes, the second about the mean).
fn statistics(x: &[f32], layout: Layout, epsilon: f64) -> Vec<Statistics> {
    let count = layout.count().max(1) as f64;
    (0..layout.channels)
        .into_par_iter()
        .map(|c| {
            pulp::Arch::new().dispatch(|| {
                let mean = layout.blocks(x, c).map(|b| sums(b, 0.0).0).sum::<f64>() / count;
                let var = layout.blocks(x, c).map(|b| sums(b, mean).1).sum::<f64>() / count;
                Statistics {
                    mean: mean as f32,
                    var: var as f32,
                    inv_std: (1.0 / (var + epsilon).sqrt()) as f32,
                }
            })
        })
        .collect()
}

/// The per-channel constants of the forward pass, kept for the backward one.
#[derive(Clone, Debug)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    relu: bool,
}

impl Norm {
    /// Channel `c`'s constants.
    fn channel(&self, c: usize) -> Channel {
        Channel {
            mean: self.mean[c],
            inv_std: self.inv_std[c],
            gamma: self.gamma[c],
            beta: self.beta[c],
            relu: self.relu,
        }
    }
}

/// One channel's constants.
#[derive(Clone, Copy)]
struct Channel {
    mean: f32,
    inv_std: f32,
    gamma: f32,
    beta: f32,
    relu: bool,
}

impl Channel {
    /// The normalised value of `v`.
    #[inline(always)]
    fn x_hat(self, v: f32) -> f32 {
        (v - self.mean) * self.inv_std
    }

    /// Whether the ReLU zeroes the output of normalised value `x_hat`.
    #[inline(always)]
    fn cut(self, x_hat: f32) -> bool {
        // `&`, not `&&`: no branch, so the loops using it are vector code.
        self.relu & (x_hat * self.gamma + self.beta <= 0.0)
    }
}

/// The forward output.
fn normalise(x: &[f32], layout: Layout, norm: &Norm) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let len = layout.len.max(1);
    y.par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .enumerate()
        .for_each(|(block, (y, x))| {
            let ch = norm.channel(block % layout.channels);
            pulp::Arch::new().dispatch(|| {
                for (y, v) in y.iter_mut().zip(x) {
                    let x_hat = ch.x_hat(*v);
                    *y = if ch.cut(x_hat) {
                        0.0
                    } else {
                        x_hat * ch.gamma + ch.beta
                    };
                }
            })
        });
    y
}

/// The step's backward state: its input (checkpointed) and the forward pass's constants.
#[derive(Clone, Debug)]
struct State {
    x: NodeId,
    norm: Norm,
}

/// The batch norm's backward step ([module docs](self)).
#[derive(Debug)]
struct NormStep;

impl Backward<Flex, 3> for NormStep {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let x = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(ops.state.x);
        let norm = ops.state.norm;
        let dims = flex::dims::<5>(&x);
        let layout = Layout::of(dims);
        let (xs, gs) = (f32_values(&x), f32_values(&grad));
        let sums = gradient_sums(&xs, &gs, layout, &norm);
        let channels = layout.channels;
        let vector = |v: Vec<f32>| tensor(v, [channels], &grad);
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, vector(sums.iter().map(|s| s.1 as f32).collect()));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, vector(sums.iter().map(|s| s.0 as f32).collect()));
        }
        if let Some(node) = node_x {
            let dx = input_gradient(&xs, &gs, layout, &norm, &sums);
            grads.register::<Flex>(node.id, tensor(dx, dims, &grad));
        }
    }
}

/// Each channel's `(sum of g, sum of g x_hat)`, `g` the gradient before the ReLU: the
/// gradients of `beta` and `gamma`.
fn gradient_sums(x: &[f32], grad: &[f32], layout: Layout, norm: &Norm) -> Vec<(f64, f64)> {
    (0..layout.channels)
        .into_par_iter()
        .map(|c| {
            let ch = norm.channel(c);
            let mut sums = (0f64, 0f64);
            for (x, g) in layout.blocks(x, c).zip(layout.blocks(grad, c)) {
                let (sg, sgx) = pulp::Arch::new().dispatch(BlockSums { ch, x, g });
                sums = (sums.0 + sg, sums.1 + sgx);
            }
            sums
        })
        .collect()
}

/// [`gradient_sums`] over one block, in eight lanes added in order at the end, compiled for
/// the CPU's vector instructions (a closure's body would not be inlined into the dispatch).
struct BlockSums<'a> {
    ch: Channel,
    x: &'a [f32],
    g: &'a [f32],
}

impl WithSimd for BlockSums<'_> {
    type Output = (f64, f64);

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> (f64, f64) {
        block_gradient_sums(self.ch, self.x, self.g)
    }
}

#[inline(always)]
fn block_gradient_sums(ch: Channel, x: &[f32], g: &[f32]) -> (f64, f64) {
    let (mut sg, mut sgx) = ([0f64; 8], [0f64; 8]);
    let ((xs, x_tail), (gs, g_tail)) = (x.as_chunks::<8>(), g.as_chunks::<8>());
    let tail = x_tail.iter().zip(g_tail);
    for (x, g) in xs.iter().zip(gs) {
        for l in 0..8 {
            let x_hat = ch.x_hat(x[l]);
            let g = if ch.cut(x_hat) { 0.0 } else { g[l] };
            sg[l] += g as f64;
            sgx[l] += (g * x_hat) as f64;
        }
    }
    for (l, (x, g)) in tail.enumerate() {
        let x_hat = ch.x_hat(*x);
        let g = if ch.cut(x_hat) { 0.0 } else { *g };
        sg[l] += g as f64;
        sgx[l] += (g * x_hat) as f64;
    }
    (sg.iter().sum(), sgx.iter().sum())
}

/// `dx = gamma inv_std (g - mean(g) - x_hat mean(g x_hat))`, `g` before the ReLU.
fn input_gradient(
    x: &[f32],
    grad: &[f32],
    layout: Layout,
    norm: &Norm,
    sums: &[(f64, f64)],
) -> Vec<f32> {
    let count = layout.count().max(1) as f64;
    let mut dx = vec![0f32; x.len()];
    let len = layout.len.max(1);
    dx.par_chunks_mut(len)
        .zip(x.par_chunks(len).zip(grad.par_chunks(len)))
        .enumerate()
        .for_each(|(block, (dx, (x, g)))| {
            let c = block % layout.channels;
            let ch = norm.channel(c);
            let mean_g = (sums[c].0 / count) as f32;
            let mean_gx = (sums[c].1 / count) as f32;
            let scale = ch.gamma * ch.inv_std;
            pulp::Arch::new().dispatch(|| {
                for ((dx, x), g) in dx.iter_mut().zip(x).zip(g) {
                    let x_hat = ch.x_hat(*x);
                    let g = if ch.cut(x_hat) { 0.0 } else { *g };
                    *dx = scale * (g - mean_g - x_hat * mean_gx);
                }
            })
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{max_difference, random, scale};
    use crate::rng::SplitMix64;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::activation;

    /// Output, gradients (x, gamma, beta) of `sum(f(x) r)` and the running mean and variance
    /// after the step, with this module's step (`ours`) or burn's BatchNorm then ReLU.
    fn run(x: &[f32], dims: [usize; 5], r: &[f32], relu: bool, ours: bool) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let c = dims[1];
        let mut rng = SplitMix64::new(5);
        let mut bn = BatchNormConfig::new(c).init(&device);
        let vector = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), &device);
        bn.gamma = Param::from_tensor(vector(
            random(c, &mut rng).iter().map(|v| v + 1.5).collect(),
        ));
        bn.beta = Param::from_tensor(vector(random(c, &mut rng)));
        let x = Tensor::<5>::from_data(TensorData::new(x.to_vec(), dims), &device).require_grad();
        let y = if ours {
            batch_norm_train(&bn, x.clone(), relu).unwrap_or_else(|_| panic!("does not apply"))
        } else if relu {
            activation::relu(bn.forward(x.clone()))
        } else {
            bn.forward(x.clone())
        };
        let r = Tensor::<5>::from_data(TensorData::new(r.to_vec(), dims), &device);
        let grads = (y.clone() * r).sum().backward();
        let read5 = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().unwrap();
        let read1 = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().unwrap();
        vec![
            read5(y),
            read5(x.grad(&grads).expect("input gradient")),
            read1(bn.gamma.val().grad(&grads).expect("gamma gradient")),
            read1(bn.beta.val().grad(&grads).expect("beta gradient")),
            read1(bn.running_mean.value()),
            read1(bn.running_var.value()),
        ]
    }

    #[test]
    fn same_as_burns_batch_norm_and_relu_and_independent_of_threads() {
        let mut rng = SplitMix64::new(31);
        for dims in [[2, 3, 5, 6, 7], [1, 4, 9, 1, 3], [3, 2, 1, 1, 1]] {
            let n = dims.iter().product();
            // An offset mean per position, so the statistics are not trivial.
            let x: Vec<f32> = random(n, &mut rng).iter().map(|v| v * 3.0 + 0.7).collect();
            let r = random(n, &mut rng);
            for relu in [false, true] {
                let on = |threads| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| run(&x, dims, &r, relu, true))
                };
                let ours = on(3);
                let burns = run(&x, dims, &r, relu, false);
                let names = [
                    "output",
                    "input gradient",
                    "gamma gradient",
                    "beta gradient",
                    "running mean",
                    "running variance",
                ];
                for ((name, a), b) in names.iter().zip(&ours).zip(&burns) {
                    assert_eq!(a.len(), b.len(), "{name}");
                    let (scale, err) = (scale(b), max_difference(a, b));
                    assert!(err < 2e-5 * scale, "{dims:?} relu {relu}: {name} differs from burn's by {err} (largest {scale})");
                }
                assert_eq!(
                    ours,
                    on(1),
                    "{dims:?} relu {relu}: depends on the thread count"
                );
            }
        }
    }

    #[test]
    fn inference_is_left_to_burn() {
        let device = Device::flex();
        let bn = BatchNormConfig::new(2).init(&device);
        let x = Tensor::<5>::zeros([1, 2, 2, 2, 2], &device);
        assert!(batch_norm_train(&bn, x, true).is_err());
    }
}
