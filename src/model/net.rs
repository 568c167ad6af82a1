//! The detector network: a residual 3-D encoder down to stride 16 and a decoder back to
//! stride 4 with skip connections, ending in the per-anchor head (grt123 / DeepLung
//! lineage). Field names match the PyTorch reference (`python/reference/detector.py`) so
//! safetensors weights map one to one.
//!
//! ```text
//! input (B, 1, D, H, W)
//! stem:    conv3 + BN + ReLU, conv3 + BN + ReLU            c0   stride 1
//! enc1..4: maxpool 2, residual blocks                    c1..c4 stride 2, 4, 8, 16
//! dec3:    upsample 2 (enc4), concat enc3, 1x1 conv, blocks  cd   stride 8
//! dec2:    upsample 2 (dec3), concat enc2, 1x1 conv, blocks  cd   stride 4
//! head:    1x1 conv + ReLU, 1x1 conv -> 5 x anchors          (B, 5A, D/4, H/4, W/4)
//! ```

use super::cpu_conv::{conv3d, conv3d_bn};
use super::ops::{max_pool3d_2, upsample_nearest3d_2};
use super::DetectorConfig;
use crate::rng::SplitMix64;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::relu;

fn conv3(c_in: usize, c_out: usize, device: &Device) -> Conv3d {
    Conv3dConfig::new([c_in, c_out], [3, 3, 3])
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .with_bias(false)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

fn conv1(c_in: usize, c_out: usize, bias: bool, device: &Device) -> Conv3d {
    Conv3dConfig::new([c_in, c_out], [1, 1, 1])
        .with_bias(bias)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// Convolution, batch norm, ReLU.
#[derive(Module, Debug)]
pub struct ConvBnRelu {
    pub conv: Conv3d,
    pub bn: BatchNorm,
}

impl ConvBnRelu {
    fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        ConvBnRelu {
            conv: conv3(c_in, c_out, device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        conv3d_bn(&self.conv, &self.bn, x, true)
    }
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, the shortcut a 1x1 conv + BN
/// when the channel count changes.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv3d,
    pub bn1: BatchNorm,
    pub conv2: Conv3d,
    pub bn2: BatchNorm,
    pub shortcut: Option<Conv3d>,
    pub shortcut_bn: Option<BatchNorm>,
}

impl ResBlock {
    fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        let projection = c_in != c_out;
        ResBlock {
            conv1: conv3(c_in, c_out, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv3(c_out, c_out, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            shortcut: projection.then(|| conv1(c_in, c_out, false, device)),
            shortcut_bn: projection.then(|| BatchNormConfig::new(c_out).init(device)),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let skip = match (&self.shortcut, &self.shortcut_bn) {
            (Some(c), Some(b)) => conv3d_bn(c, b, x.clone(), false),
            _ => x.clone(),
        };
        let y = conv3d_bn(&self.conv1, &self.bn1, x, true);
        relu(conv3d_bn(&self.conv2, &self.bn2, y, false) + skip)
    }
}

/// A stage: residual blocks, the first changing the channel count.
#[derive(Module, Debug)]
pub struct Stage {
    pub blocks: Vec<ResBlock>,
}

impl Stage {
    fn new(c_in: usize, c_out: usize, n: usize, device: &Device) -> Self {
        Stage {
            blocks: (0..n.max(1))
                .map(|i| ResBlock::new(if i == 0 { c_in } else { c_out }, c_out, device))
                .collect(),
        }
    }

    pub fn forward(&self, mut x: Tensor<5>) -> Tensor<5> {
        for b in &self.blocks {
            x = b.forward(x);
        }
        x
    }
}

/// The network; build it with [`DetectorConfig::init_net`].
#[derive(Module, Debug)]
pub struct DetectorNet {
    pub stem1: ConvBnRelu,
    pub stem2: ConvBnRelu,
    pub enc1: Stage,
    pub enc2: Stage,
    pub enc3: Stage,
    pub enc4: Stage,
    pub dec3: Stage,
    pub dec2: Stage,
    pub head1: Conv3d,
    pub head2: Conv3d,
}

impl DetectorNet {
    /// The network with weights drawn from `seed` (see [`initialise`]).
    pub(crate) fn new(cfg: &DetectorConfig, device: &Device, seed: u64) -> Self {
        let [c0, c1, c2, c3, c4] = cfg.channels;
        let cd = cfg.decoder_channels;
        let b = cfg.blocks;
        DetectorNet {
            stem1: ConvBnRelu::new(cfg.in_channels, c0, device),
            stem2: ConvBnRelu::new(c0, c0, device),
            enc1: Stage::new(c0, c1, b[0], device),
            enc2: Stage::new(c1, c2, b[1], device),
            enc3: Stage::new(c2, c3, b[2], device),
            enc4: Stage::new(c3, c4, b[3], device),
            dec3: Stage::new(c4 + c3, cd, cfg.decoder_blocks, device),
            dec2: Stage::new(cd + c2, cd, cfg.decoder_blocks, device),
            head1: conv1(cd, cd, true, device),
            head2: conv1(cd, cfg.head.channels(), true, device),
        }
        .map(&mut Initialise {
            seed,
            path: Vec::new(),
            anchors: cfg.head.anchors_mm.len(),
        })
    }

    /// `(B, C_in, D, H, W)` with D, H, W multiples of 16, to `(B, 5A, D/4, H/4, W/4)`.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = self.stem2.forward(self.stem1.forward(x));
        let e1 = self.enc1.forward(max_pool3d_2(x));
        let e2 = self.enc2.forward(max_pool3d_2(e1));
        let e3 = self.enc3.forward(max_pool3d_2(e2.clone()));
        let e4 = self.enc4.forward(max_pool3d_2(e3.clone()));
        let d3 = self
            .dec3
            .forward(Tensor::cat(vec![upsample_nearest3d_2(e4), e3], 1));
        let d2 = self
            .dec2
            .forward(Tensor::cat(vec![upsample_nearest3d_2(d3), e2], 1));
        conv3d(&self.head2, relu(conv3d(&self.head1, d2)))
    }
}

/// Prior probability of a nodule at an anchor, which the head's objectness biases start at
/// (RetinaNet's `-ln((1 - p) / p)`), so the first training steps are not swamped by the
/// loss of thousands of easy background anchors.
pub const OBJECTNESS_PRIOR: f64 = 0.01;

/// Standard deviation of the head's last layer's initial weights.
pub const HEAD_WEIGHT_STD: f64 = 0.01;

/// Weight initialisation, deterministic and the same on every backend: each tensor is drawn
/// from its own SplitMix64 stream, seeded by the run's seed and the tensor's path in the
/// module tree (so adding a layer leaves the others' weights as they were).
///
/// - Convolution weights: He normal in fan-out mode as torchvision's ResNets
///   (`std = sqrt(2 / (C_out * k^3))`), except the head's last layer: normal with standard
///   deviation [`HEAD_WEIGHT_STD`] (RetinaNet's), so training starts from outputs near the
///   prior and offsets near 0.
/// - Convolution biases: 0, except the head's objectness logits (channel `5a`), which
///   start at the logit of [`OBJECTNESS_PRIOR`].
/// - Batch norm: scale 1, shift 0, running mean 0 and variance 1 (burn's constants).
struct Initialise {
    seed: u64,
    path: Vec<String>,
    anchors: usize,
}

impl ModuleMapper for Initialise {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(format!("{name}@{container_type}"));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(last) = self.path.last() else {
            return param;
        };
        let in_conv = last.ends_with("@Struct:Conv3d");
        let field = last.split('@').next().unwrap_or_default().to_string();
        let path = self.path.join(".");
        let is_head = self.path.first().is_some_and(|p| p.starts_with("head2@"));
        let anchors = self.anchors;
        let seed = self.seed;
        // Ids from the path, so the same network always has the same ids: an optimiser's
        // state (keyed by id) then fits the network again after a checkpoint is reloaded.
        let id = ParamId::from(fnv1a(path.as_bytes()) ^ 0x6c75_6e67_6361_6400);
        let mut param = param;
        param.id = id;
        param.map(|t| {
            let dims = t.dims();
            let n: usize = dims.iter().product();
            let values: Vec<f32> = match (in_conv, field.as_str()) {
                (true, "weight") => {
                    let fan_out = dims[0] * dims[2..].iter().product::<usize>();
                    let std = if is_head {
                        HEAD_WEIGHT_STD
                    } else {
                        (2.0 / fan_out as f64).sqrt()
                    };
                    let mut rng = SplitMix64::new(seed ^ fnv1a(path.as_bytes()));
                    (0..n).map(|_| (rng.normal() * std) as f32).collect()
                }
                (true, "bias") => {
                    let logit = (OBJECTNESS_PRIOR / (1.0 - OBJECTNESS_PRIOR)).ln() as f32;
                    (0..n)
                        .map(|c| {
                            if is_head && c % 5 == 0 && c / 5 < anchors {
                                logit
                            } else {
                                0.0
                            }
                        })
                        .collect()
                }
                _ => return t,
            };
            Tensor::from_data(TensorData::new(values, dims), &t.device())
        })
    }
}

/// FNV-1a, 64-bit: a tensor path to a seed offset.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
