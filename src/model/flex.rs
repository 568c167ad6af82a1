//! burn's CPU backend (`flex`) at the level of its tensors, for this crate's CPU kernels that
//! run as autodiff steps of their own (burn's backend-extension API): reading a flex tensor's
//! values and making one.

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, DispatchDevice, Flex, TensorMetadata};
use burn::prelude::*;
use burn::tensor::DType;
use std::borrow::Cow;

/// burn's autodiff over flex, as `Device::flex().autodiff()` makes it (no checkpointing).
pub(crate) type Ad = Autodiff<Flex>;

/// Whether `device` is flex with autodiff (training on the CPU).
pub(crate) fn is_flex_autodiff(device: &Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        _ => false,
    }
}

/// A flex tensor's values, borrowed when contiguous; `None` unless f32.
pub(crate) fn values(t: &FloatTensor<Flex>) -> Option<Cow<'_, [f32]>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    match t.as_slice::<f32>() {
        Some(v) => Some(Cow::Borrowed(v)),
        None => t
            .clone()
            .into_data()
            .try_into_vec::<f32>()
            .ok()
            .map(Cow::Owned),
    }
}

/// A flex tensor's values as f32 whatever its type, for a backward step, which cannot fail:
/// borrowed when f32 and contiguous, else converted (zeros, never expected, if even that
/// cannot be read).
pub(crate) fn f32_values(t: &FloatTensor<Flex>) -> Cow<'_, [f32]> {
    if let Some(v) = values(t) {
        return v;
    }
    let n = t.shape().num_elements();
    Cow::Owned(
        t.clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_else(|_| vec![0.0; n]),
    )
}

/// A flex tensor's dimensions (`D` must be its rank).
pub(crate) fn dims<const D: usize>(t: &FloatTensor<Flex>) -> [usize; D] {
    let s = t.shape();
    std::array::from_fn(|i| s[i])
}

/// A flex tensor of `values` with `dims`, on `like`'s device.
pub(crate) fn tensor<const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
    like: &FloatTensor<Flex>,
) -> FloatTensor<Flex> {
    Flex::float_from_data(TensorData::new(values, dims), &like.device())
}
