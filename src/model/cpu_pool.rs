//! [`max_pool3d_2`](super::ops::max_pool3d_2) on the CPU in one pass, in inference and, in
//! training, as an autodiff step of its own.
//!
//! On other devices the op is three `max_dim` reductions over a rank-6 view; on `flex` each
//! is a pass over the volume with a new output, and in training each records its winners for
//! a scatter in the backward pass: 2.0 s forward and backward for 24 channels at 128³ (a
//! training step of the default network has one such layer), 0.4 s of it forward. Here the
//! forward pass reads each window once and keeps each output's winner (one byte); the
//! backward pass writes the output gradient at the winners, zero elsewhere.
//!
//! The winner of a window is its first maximum in the order (z, y, x), as the three
//! reductions pick it; a NaN wins over numbers (the first NaN), so a NaN is not hidden.
//! With gradient checkpointing (`Balanced`) the autodiff tensors do not convert, and the
//! reductions run instead.

use super::flex::{self, f32_values, is_flex_autodiff, tensor, values, Ad};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{DispatchDevice, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

/// `max_pool3d_2(x)` by this module on a flex device (with or without autodiff) and f32
/// values, else `x` back.
pub(super) fn max_pool3d_2(x: Tensor<5>) -> Result<Tensor<5>, Tensor<5>> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    let device = x.device();
    if is_flex_autodiff(&device) {
        let Ok(ad) = x.clone().try_into_primitive::<Ad>() else {
            return Err(x);
        };
        let dims = flex::dims::<5>(ad.primitive());
        let Some(xs) = values(ad.primitive()) else {
            return Err(x);
        };
        let y = match PoolStep
            .prepare::<NoCheckpointing>([ad.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, winners) = pool_f32(&xs, dims, true);
                let y = tensor(out, pooled(dims), ad.primitive());
                prep.finish(State { winners, dims }, y)
            }
            OpsKind::UnTracked(prep) => {
                let (out, _) = pool_f32(&xs, dims, false);
                prep.finish(tensor(out, pooled(dims), ad.primitive()))
            }
        };
        Ok(Tensor::from_primitive::<Ad>(y))
    } else if matches!(device.as_dispatch(), DispatchDevice::Flex(_)) {
        let Ok(t) = x.clone().try_into_primitive::<Flex>() else {
            return Err(x);
        };
        let dims = flex::dims::<5>(&t);
        let Some(xs) = values(&t) else {
            return Err(x);
        };
        let (out, _) = pool_f32(&xs, dims, false);
        Ok(Tensor::from_primitive::<Flex>(tensor(
            out,
            pooled(dims),
            &t,
        )))
    } else {
        Err(x)
    }
}

/// The output's dimensions (floor mode).
fn pooled([n, c, d, h, w]: [usize; 5]) -> [usize; 5] {
    [n, c, d / 2, h / 2, w / 2]
}

/// The step's backward state: each output's winner and the input's dimensions.
#[derive(Clone, Debug)]
struct State {
    winners: Vec<u8>,
    dims: [usize; 5],
}

/// The pooling's backward step ([module docs](self)).
#[derive(Debug)]
struct PoolStep;

impl Backward<Flex, 1> for PoolStep {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else {
            return;
        };
        let State { winners, dims } = ops.state;
        let gs = f32_values(&grad);
        let dx = unpool_f32(&gs, &winners, dims);
        grads.register::<Flex>(node.id, tensor(dx, dims, &grad));
    }
}

/// The window offset `(dz, dy, dx)` of winner code `k` (`(dz 2 + dy) 2 + dx`).
fn offset(k: u8) -> (usize, usize, usize) {
    ((k >> 2) as usize, ((k >> 1) & 1) as usize, (k & 1) as usize)
}

/// 2 x 2 x 2 max pooling of `x` (`(n, c, d, h, w)`, row-major): the output and, when
/// `winners`, each output's winner code ([`offset`]), else an empty vector.
fn pool_f32(x: &[f32], [n, c, d, h, w]: [usize; 5], winners: bool) -> (Vec<f32>, Vec<u8>) {
    assert_eq!(x.len(), n * c * d * h * w, "input length");
    let (d2, h2, w2) = (d / 2, h / 2, w / 2);
    let plane = h2 * w2;
    let mut out = vec![0f32; n * c * d2 * plane];
    let mut codes = vec![0u8; if winners { out.len() } else { 0 }];
    if out.is_empty() {
        return (out, codes);
    }
    // One output plane (and its codes, when kept) per task.
    let pool_plane = |p: usize, out: &mut [f32], mut codes: Option<&mut [u8]>| {
        let (nc, z) = (p / d2, p % d2);
        let volume = &x[nc * d * h * w..][..d * h * w];
        for y in 0..h2 {
            for xx in 0..w2 {
                let mut best = f32::NEG_INFINITY;
                let mut at = 0u8;
                for k in 0..8u8 {
                    let (dz, dy, dx) = offset(k);
                    let v = volume[((2 * z + dz) * h + 2 * y + dy) * w + 2 * xx + dx];
                    if k == 0 || v > best || (v.is_nan() && !best.is_nan()) {
                        best = v;
                        at = k;
                    }
                }
                out[y * w2 + xx] = best;
                if let Some(codes) = codes.as_deref_mut() {
                    codes[y * w2 + xx] = at;
                }
            }
        }
    };
    if winners {
        out.par_chunks_mut(plane)
            .zip(codes.par_chunks_mut(plane))
            .enumerate()
            .for_each(|(p, (out, codes))| pool_plane(p, out, Some(codes)));
    } else {
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(p, out)| pool_plane(p, out, None));
    }
    (out, codes)
}

/// The pooling's input gradient: `grad` (the output's, `(n, c, d / 2, h / 2, w / 2)`) at
/// each window's winner, zero elsewhere (and on an odd last plane, row or column).
fn unpool_f32(grad: &[f32], winners: &[u8], [n, c, d, h, w]: [usize; 5]) -> Vec<f32> {
    let (d2, h2, w2) = (d / 2, h / 2, w / 2);
    let per_channel = d2 * h2 * w2;
    assert_eq!(grad.len(), n * c * per_channel, "gradient length");
    assert_eq!(winners.len(), grad.len(), "winners length");
    let mut dx = vec![0f32; n * c * d * h * w];
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(d * h * w)
        .zip(grad.par_chunks(per_channel.max(1)))
        .zip(winners.par_chunks(per_channel.max(1)))
        .for_each(|((dx, grad), winners)| {
            for (o, (g, k)) in grad.iter().zip(winners).enumerate() {
                let (z, y, xx) = (o / (h2 * w2), o / w2 % h2, o % w2);
                let (dz, dy, dxx) = offset(*k);
                dx[((2 * z + dz) * h + 2 * y + dy) * w + 2 * xx + dxx] = *g;
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::max_pool3d_2_by_reductions;
    use crate::rng::SplitMix64;

    /// Values with many ties, as after a ReLU: zeros and a few repeated levels.
    fn tied(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n)
            .map(|_| ((rng.uniform() * 6.0) as i32 - 2).max(0) as f32)
            .collect()
    }

    /// Output and input gradient of `sum(max_pool3d_2(x) r)` on flex with autodiff, by this
    /// module or by the reductions.
    fn pool_and_gradient(v: &[f32], dims: [usize; 5], ours: bool) -> (Vec<f32>, Vec<f32>) {
        let device = Device::flex().autodiff();
        let x = Tensor::<5>::from_data(TensorData::new(v.to_vec(), dims), &device).require_grad();
        let y = if ours {
            max_pool3d_2(x.clone()).unwrap_or_else(|_| panic!("the step does not apply"))
        } else {
            max_pool3d_2_by_reductions(x.clone())
        };
        let out = pooled(dims).iter().product();
        let r: Vec<f32> = (0..out).map(|i| 1.0 + (i % 7) as f32).collect();
        let r = Tensor::<5>::from_data(TensorData::new(r, pooled(dims)), &device);
        let grads = (y.clone() * r).sum().backward();
        let read = |t: Tensor<5>| t.into_data().try_into_vec::<f32>().unwrap();
        (read(y), read(x.grad(&grads).expect("input gradient")))
    }

    #[test]
    fn same_outputs_and_gradients_as_the_reductions_ties_included() {
        // Even and odd sizes (an odd last plane, row or column gets no gradient), two samples.
        for (i, dims) in [[2, 3, 4, 6, 8], [1, 2, 5, 7, 3], [1, 1, 2, 2, 2]]
            .into_iter()
            .enumerate()
        {
            let v = tied(dims.iter().product(), i as u64);
            let ours = pool_and_gradient(&v, dims, true);
            let theirs = pool_and_gradient(&v, dims, false);
            assert_eq!(ours.0, theirs.0, "{dims:?}: outputs");
            assert_eq!(ours.1, theirs.1, "{dims:?}: gradients");
            assert!(ours.1.iter().filter(|g| **g != 0.0).count() == ours.0.len());
        }
    }

    #[test]
    fn the_first_maximum_wins_and_a_nan_is_not_hidden() {
        let dims = [1, 1, 2, 2, 2];
        let mut v = vec![1.0, 3.0, 0.0, 3.0, 2.0, 3.0, 3.0, 0.0];
        let (out, winners) = pool_f32(&v, dims, true);
        assert_eq!((out, winners), (vec![3.0], vec![1]));
        v[6] = f32::NAN;
        let (out, winners) = pool_f32(&v, dims, true);
        assert!(out[0].is_nan());
        assert_eq!(winners, vec![6]);
        assert_eq!(unpool_f32(&[5.0], &winners, dims)[6], 5.0);
    }

    #[test]
    fn inference_on_flex_takes_this_path() {
        let x = Tensor::<5>::zeros([1, 2, 4, 4, 4], &Device::flex());
        assert!(max_pool3d_2(x).is_ok());
    }
}
