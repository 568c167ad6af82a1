//! MONAI's 3-D RetinaNet, as its `lung_nodule_ct_detection` bundle builds it: a ResNet
//! (`monai.networks.nets.resnet.ResNet`, bottleneck or basic blocks) whose returned layers
//! feed a feature pyramid (`resnet_fpn_feature_extractor`: lateral 1x1 convs, nearest
//! top-down upsampling, 3x3 output convs, an extra max-pool level), and the RetinaNet
//! classification and regression heads shared by every level (4 x (3x3 conv, GroupNorm,
//! ReLU), then the output conv). Field names and a few key renamings
//! ([`state_dict_remapping`]) make MONAI's `state_dict` load by name.
//!
//! The network sees MONAI's axis order: `(B, C, X, Y, Z)` with X, Y, Z the image's
//! first, second and third index axes (after MONAI's orientation), which is why the stem's
//! stride is `[2, 2, 1]` (the slice axis last). Outputs, per pyramid level: classification
//! logits `(B, A * classes, X', Y', Z')` (no sigmoid) and box regression
//! `(B, A * 6, X', Y', Z')`, as MONAI's `RetinaNet.forward`.
//!
//! ```text
//! stem:   conv k7 (stride [2,2,1], pad 3, no bias), BN, ReLU, max pool k3 s2 p1
//! layerN: blocks; bottleneck: 1x1, 3x3 (stride), 1x1 (x4 channels), BN after each,
//!         shortcut 1x1 conv (bias) + BN when the shape changes
//! FPN:    P_last = out(lat(C_last)); P_i = out(lat(C_i) + nearest(lat-sum above));
//!         P_extra = P_last[::2, ::2, ::2]
//! heads:  per level, 4 x (conv3 + GroupNorm(groups) + ReLU), conv3 to A*classes / A*6
//! ```

use super::cpu_conv::{conv3d, conv3d_bn};
use super::ops::{max_pool3d, resize_nearest3d};
use super::Device;
use crate::detect::retina::RetinaDecodeConfig;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::preprocess::monai::MonaiPreprocessConfig;
use crate::volume::Volume;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The residual block of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// `ResNetBlock` (resnet10/18/34): two 3x3 convs, expansion 1.
    Basic,
    /// `ResNetBottleneck` (resnet50/101/...): 1x1, 3x3, 1x1, expansion 4.
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The network's settings; the defaults are the bundle's (ResNet-50, FPN on layers 1 and 2
/// with 256 channels, 3 anchors, 1 class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetinaNetConfig {
    pub in_channels: usize,
    pub block: BlockKind,
    /// Blocks per ResNet layer (only the layers up to the last returned one are built).
    /// Default `[3, 4, 6, 3]` (ResNet-50).
    pub layers: [usize; 4],
    /// Channels of each layer before expansion. Default `[64, 128, 256, 512]`.
    pub block_inplanes: [usize; 4],
    /// The stem convolution's kernel. Default `[7, 7, 7]`.
    pub conv1_size: [usize; 3],
    /// The stem convolution's stride. Default `[2, 2, 1]`.
    pub conv1_stride: [usize; 3],
    /// The layers (1-based) the pyramid is built on. Default `[1, 2]`.
    pub returned_layers: Vec<usize>,
    /// Channels of the pyramid and the heads. Default 256.
    pub fpn_channels: usize,
    pub num_anchors: usize,
    pub num_classes: usize,
    /// GroupNorm groups in the heads. Default 8.
    pub head_groups: usize,
    /// 3x3 conv + GroupNorm + ReLU layers in each head. Default 4.
    pub head_layers: usize,
}

/// Most anchors per position a [`RetinaNetConfig`] may have (the bundle's: 3).
pub const MAX_ANCHORS: usize = 64;
/// Most classes (the bundle's: 1; MONAI's detector here decodes one).
pub const MAX_CLASSES: usize = 1024;
/// Most conv + GroupNorm layers per head (the bundle's: 4).
pub const MAX_HEAD_LAYERS: usize = 16;
/// Most blocks per ResNet layer (ResNet-200 has 36).
pub const MAX_BLOCKS: usize = 64;

impl Default for RetinaNetConfig {
    fn default() -> Self {
        RetinaNetConfig {
            in_channels: 1,
            block: BlockKind::Bottleneck,
            layers: [3, 4, 6, 3],
            block_inplanes: [64, 128, 256, 512],
            conv1_size: [7, 7, 7],
            conv1_stride: [2, 2, 1],
            returned_layers: vec![1, 2],
            fpn_channels: 256,
            num_anchors: 3,
            num_classes: 1,
            head_groups: 8,
            head_layers: 4,
        }
    }
}

impl RetinaNetConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("RetinaNet config: {m}")));
        let r = &self.returned_layers;
        if r.is_empty()
            || r.iter().any(|&l| !(1..=4).contains(&l))
            || r.windows(2).any(|w| w[0] >= w[1])
        {
            return bad(format!(
                "returned_layers must be increasing layers 1 to 4, got {r:?}"
            ));
        }
        if self.in_channels == 0
            || self.fpn_channels == 0
            || self.num_anchors == 0
            || self.num_classes == 0
        {
            return bad("channels, anchors and classes must be at least 1".into());
        }
        // Bounds beyond the value count: the heads' outputs grow with anchors and classes at
        // a fixed cost in weights, and each head layer and block adds key patterns to load.
        if self.num_anchors > MAX_ANCHORS || self.num_classes > MAX_CLASSES {
            return bad(format!(
                "at most {MAX_ANCHORS} anchors and {MAX_CLASSES} classes, got {} and {}",
                self.num_anchors, self.num_classes
            ));
        }
        if self.head_layers > MAX_HEAD_LAYERS
            || self.layers[..self.last_layer()]
                .iter()
                .any(|&n| n > MAX_BLOCKS)
        {
            return bad(format!(
                "at most {MAX_HEAD_LAYERS} head layers and {MAX_BLOCKS} blocks per layer, got \
                 {} and {:?}",
                self.head_layers, self.layers
            ));
        }
        if self.head_groups == 0 || !self.fpn_channels.is_multiple_of(self.head_groups) {
            return bad(format!(
                "fpn_channels {} must be a multiple of head_groups {}",
                self.fpn_channels, self.head_groups
            ));
        }
        if self.block_inplanes.contains(&0)
            || self.conv1_size.contains(&0)
            || self.conv1_stride.contains(&0)
        {
            return bad("block_inplanes, conv1_size and conv1_stride must be positive".into());
        }
        if self.layers[..self.last_layer()].contains(&0) {
            return bad(format!(
                "every built layer needs a block, got {:?}",
                self.layers
            ));
        }
        match super::too_many_values(self.stored_values()) {
            Some(why) => bad(why),
            None => Ok(()),
        }
    }

    /// Values a model file stores for this network: its parameters (group norms' included)
    /// and its batch norms' running statistics, not `num_batches_tracked`. On absurd
    /// configs it saturates rather than overflows, and stops counting blocks once past
    /// [`super::MAX_MODEL_VALUES`], so the count is then a lower bound.
    pub fn stored_values(&self) -> u64 {
        let n = |v: usize| v as u64;
        let product = |f: &[u64]| f.iter().fold(1u64, |p, &x| p.saturating_mul(x));
        // A batch norm stores weight, bias, running mean and variance.
        let bn = |c: u64| c.saturating_mul(4);
        let [k0, k1, k2] = self.conv1_size.map(n);
        let stem = n(self.block_inplanes[0]);
        let mut total = product(&[n(self.in_channels), stem, k0, k1, k2]).saturating_add(bn(stem));
        let expansion = n(self.block.expansion());
        let mut c_in = stem;
        for l in 1..=self.last_layer().min(4) {
            let planes = n(self.block_inplanes[l - 1]);
            let out = planes.saturating_mul(expansion);
            for b in 0..self.layers[l - 1] {
                let stride = if l > 1 && b == 0 { 2 } else { 1 };
                let block = match self.block {
                    BlockKind::Basic => [
                        product(&[c_in, planes, 27]),
                        product(&[planes, planes, 27]),
                        bn(planes).saturating_mul(2),
                    ],
                    BlockKind::Bottleneck => [
                        product(&[c_in, planes]).saturating_add(product(&[planes, planes, 27])),
                        product(&[planes, out]),
                        bn(planes).saturating_mul(2).saturating_add(bn(out)),
                    ],
                };
                total = block.iter().fold(total, |t, &v| t.saturating_add(v));
                if stride != 1 || c_in != out {
                    // The shortcut: a 1x1x1 convolution with bias, and its batch norm.
                    let shortcut = product(&[c_in, out]).saturating_add(out);
                    total = total.saturating_add(shortcut).saturating_add(bn(out));
                }
                c_in = out;
                if total > super::MAX_MODEL_VALUES {
                    return total; // enough to refuse it; no need to count 10^9 blocks
                }
            }
        }
        let f = n(self.fpn_channels);
        let conv3 = |cin: u64, cout: u64| product(&[cin, cout, 27]).saturating_add(cout);
        // Layers outside 1 to 4 are `validate`'s to refuse; here they count nothing.
        let inplanes = |l: usize| l.checked_sub(1).and_then(|i| self.block_inplanes.get(i));
        for &planes in self.returned_layers.iter().filter_map(|&l| inplanes(l)) {
            let channels = n(planes).saturating_mul(expansion);
            let lateral = product(&[channels, f]).saturating_add(f);
            total = total.saturating_add(lateral).saturating_add(conv3(f, f));
        }
        // Each head: head_layers of conv + group norm (weight and bias), then its output.
        let layer = conv3(f, f).saturating_add(f.saturating_mul(2));
        let body = layer.saturating_mul(n(self.head_layers));
        let anchors = n(self.num_anchors);
        for out in [
            anchors.saturating_mul(n(self.num_classes)),
            anchors.saturating_mul(6),
        ] {
            total = total.saturating_add(body).saturating_add(conv3(f, out));
        }
        total
    }

    fn last_layer(&self) -> usize {
        self.returned_layers.iter().copied().max().unwrap_or(1)
    }

    /// Elements of the largest tensor the network makes for one image of `size`
    /// (X, Y, Z): with the bundle's settings, the stem's output (64 channels at half the
    /// in-plane resolution: 3.2 GB for a 512 x 512 x 192 window). A GPU buffer holds a
    /// whole tensor: see [`super::max_tensor_bytes`].
    pub fn largest_tensor(&self, size: [usize; 3]) -> usize {
        let vox = |g: [usize; 3]| g.iter().product::<usize>();
        let half = |g: [usize; 3]| g.map(|n| n.div_ceil(2));
        let mut grid: [usize; 3] = std::array::from_fn(|d| size[d].div_ceil(self.conv1_stride[d]));
        let mut largest = (self.in_channels * vox(size)).max(self.block_inplanes[0] * vox(grid));
        grid = half(grid); // the stem's max pool
        for l in 1..=self.last_layer() {
            if l > 1 {
                // A bottleneck's first 1x1 convolution runs before the stride.
                largest = largest.max(self.block_inplanes[l - 1] * vox(grid));
                grid = half(grid);
            }
            largest = largest.max(self.layer_channels(l) * vox(grid));
            if self.returned_layers.contains(&l) {
                // The pyramid level and the heads' outputs on it.
                let heads = (self.num_anchors * self.num_classes).max(self.num_anchors * 6);
                largest = largest.max(self.fpn_channels.max(heads) * vox(grid));
            }
        }
        largest
    }

    /// Values the sliding window accumulates over a whole image of `size` (X, Y, Z): per
    /// cell of each pyramid level (the returned layers' and the FPN's extra max-pooled
    /// one), the classification and regression maps and a count. Saturating.
    pub fn head_maps_values(&self, size: [usize; 3]) -> u64 {
        let vox = |g: [usize; 3]| g.iter().fold(1u64, |p, &n| p.saturating_mul(n as u64));
        let half = |g: [usize; 3]| g.map(|n| n.div_ceil(2));
        let per_cell = (self.num_anchors as u64)
            .saturating_mul(self.num_classes as u64 + 6)
            .saturating_add(1);
        let mut grid: [usize; 3] = half(std::array::from_fn(|d| {
            size[d].div_ceil(self.conv1_stride[d].max(1))
        }));
        let mut total = 0u64;
        for l in 1..=self.last_layer() {
            if l > 1 {
                grid = half(grid);
            }
            if self.returned_layers.contains(&l) {
                total = total.saturating_add(per_cell.saturating_mul(vox(grid)));
            }
        }
        total.saturating_add(per_cell.saturating_mul(vox(half(grid))))
    }

    /// Output channels of ResNet layer `l` (1-based).
    fn layer_channels(&self, l: usize) -> usize {
        self.block_inplanes[l - 1] * self.block.expansion()
    }

    /// The network with burn's default initialisation (weights are meant to be imported).
    pub fn init(&self, device: &Device) -> Result<RetinaNet> {
        self.validate()?;
        Ok(RetinaNet::new(self, device))
    }
}

fn conv(
    c_in: usize,
    c_out: usize,
    k: [usize; 3],
    stride: [usize; 3],
    bias: bool,
    device: &Device,
) -> Conv3d {
    Conv3dConfig::new([c_in, c_out], k)
        .with_stride(stride)
        .with_padding(PaddingConfig3d::Explicit(k[0] / 2, k[1] / 2, k[2] / 2))
        .with_bias(bias)
        .init(device)
}

fn bn(c: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(c).init(device)
}

/// A residual block (basic or bottleneck); `conv3`/`bn3` only in bottlenecks.
#[derive(Module, Debug)]
pub struct Block {
    pub conv1: Conv3d,
    pub bn1: BatchNorm,
    pub conv2: Conv3d,
    pub bn2: BatchNorm,
    pub conv3: Option<Conv3d>,
    pub bn3: Option<BatchNorm>,
    /// MONAI's `downsample.0` and `downsample.1`.
    pub downsample_conv: Option<Conv3d>,
    pub downsample_bn: Option<BatchNorm>,
}

impl Block {
    fn new(kind: BlockKind, c_in: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let out = planes * kind.expansion();
        let s = [stride; 3];
        let shortcut = stride != 1 || c_in != out;
        let (conv1, conv2, conv3) = match kind {
            BlockKind::Basic => (
                conv(c_in, planes, [3; 3], s, false, device),
                conv(planes, planes, [3; 3], [1; 3], false, device),
                None,
            ),
            BlockKind::Bottleneck => (
                conv(c_in, planes, [1; 3], [1; 3], false, device),
                conv(planes, planes, [3; 3], s, false, device),
                Some(conv(planes, out, [1; 3], [1; 3], false, device)),
            ),
        };
        Block {
            conv1,
            bn1: bn(planes, device),
            conv2,
            bn2: bn(planes, device),
            bn3: conv3.as_ref().map(|_| bn(out, device)),
            conv3,
            // MONAI keeps the shortcut conv's bias (bias_downsample=True, the default).
            downsample_conv: shortcut.then(|| conv(c_in, out, [1; 3], s, true, device)),
            downsample_bn: shortcut.then(|| bn(out, device)),
        }
    }

    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let skip = match (&self.downsample_conv, &self.downsample_bn) {
            (Some(c), Some(b)) => conv3d_bn(c, b, x.clone(), false),
            _ => x.clone(),
        };
        let y = conv3d_bn(&self.conv1, &self.bn1, x, true);
        let y = conv3d_bn(&self.conv2, &self.bn2, y, false);
        let y = match (&self.conv3, &self.bn3) {
            (Some(c), Some(b)) => conv3d_bn(c, b, relu(y), false),
            _ => y,
        };
        relu(y + skip)
    }
}

/// The ResNet up to the last returned layer (MONAI's `feature_extractor.body`).
#[derive(Module, Debug)]
pub struct Body {
    pub conv1: Conv3d,
    pub bn1: BatchNorm,
    /// MONAI's `layer1`, `layer2`, ...
    pub layers: Vec<Vec<Block>>,
}

/// The feature pyramid (MONAI's `feature_extractor.fpn`).
#[derive(Module, Debug)]
pub struct Fpn {
    pub inner_blocks: Vec<Conv3d>,
    pub layer_blocks: Vec<Conv3d>,
}

/// `feature_extractor`.
#[derive(Module, Debug)]
pub struct FeatureExtractor {
    pub body: Body,
    pub fpn: Fpn,
}

/// A RetinaNet head: MONAI's `conv` Sequential (convs at 0, 3, 6, 9; GroupNorms at 1, 4, 7,
/// 10) and its output conv (`cls_logits` or `bbox_reg`).
#[derive(Module, Debug)]
pub struct Head {
    pub convs: Vec<Conv3d>,
    pub norms: Vec<GroupNorm>,
    pub out: Conv3d,
}

impl Head {
    fn new(cfg: &RetinaNetConfig, out_channels: usize, device: &Device) -> Self {
        let c = cfg.fpn_channels;
        Head {
            convs: (0..cfg.head_layers)
                .map(|_| conv(c, c, [3; 3], [1; 3], true, device))
                .collect(),
            norms: (0..cfg.head_layers)
                .map(|_| GroupNormConfig::new(cfg.head_groups, c).init(device))
                .collect(),
            out: conv(c, out_channels, [3; 3], [1; 3], true, device),
        }
    }

    pub fn forward(&self, mut x: Tensor<5>) -> Tensor<5> {
        for (c, n) in self.convs.iter().zip(&self.norms) {
            x = relu(n.forward(conv3d(c, x)));
        }
        conv3d(&self.out, x)
    }
}

/// The network; build it with [`RetinaNetConfig::init`], fill it with [`RetinaNet::load_state_dict`].
#[derive(Module, Debug)]
pub struct RetinaNet {
    pub feature_extractor: FeatureExtractor,
    pub classification_head: Head,
    pub regression_head: Head,
    #[module(skip)]
    returned_layers: Vec<usize>,
}

/// Per pyramid level (finest first): classification logits and box regression.
#[derive(Debug, Clone)]
pub struct HeadOutputs {
    pub classification: Vec<Tensor<5>>,
    pub box_regression: Vec<Tensor<5>>,
}

impl RetinaNet {
    fn new(cfg: &RetinaNetConfig, device: &Device) -> Self {
        // MONAI's stem has block_inplanes[0] channels.
        let stem = cfg.block_inplanes[0];
        let mut c_in = stem;
        let mut layers = Vec::new();
        for l in 1..=cfg.last_layer() {
            let planes = cfg.block_inplanes[l - 1];
            let stride = if l == 1 { 1 } else { 2 };
            let blocks = (0..cfg.layers[l - 1])
                .map(|b| {
                    let blk = Block::new(
                        cfg.block,
                        c_in,
                        planes,
                        if b == 0 { stride } else { 1 },
                        device,
                    );
                    c_in = planes * cfg.block.expansion();
                    blk
                })
                .collect();
            layers.push(blocks);
        }
        let f = cfg.fpn_channels;
        RetinaNet {
            feature_extractor: FeatureExtractor {
                body: Body {
                    conv1: conv(
                        cfg.in_channels,
                        stem,
                        cfg.conv1_size,
                        cfg.conv1_stride,
                        false,
                        device,
                    ),
                    bn1: bn(stem, device),
                    layers,
                },
                fpn: Fpn {
                    inner_blocks: cfg
                        .returned_layers
                        .iter()
                        .map(|&l| conv(cfg.layer_channels(l), f, [1; 3], [1; 3], true, device))
                        .collect(),
                    layer_blocks: cfg
                        .returned_layers
                        .iter()
                        .map(|_| conv(f, f, [3; 3], [1; 3], true, device))
                        .collect(),
                },
            },
            classification_head: Head::new(cfg, cfg.num_anchors * cfg.num_classes, device),
            regression_head: Head::new(cfg, cfg.num_anchors * 6, device),
            returned_layers: cfg.returned_layers.clone(),
        }
    }

    /// The pyramid's levels, finest first (MONAI's "0", "1", ..., "pool").
    pub fn features(&self, x: Tensor<5>) -> Vec<Tensor<5>> {
        let body = &self.feature_extractor.body;
        let mut x = conv3d_bn(&body.conv1, &body.bn1, x, true);
        x = max_pool3d(x, [3; 3], [2; 3], [1; 3]);
        let mut taps = Vec::new();
        for (i, layer) in body.layers.iter().enumerate() {
            for b in layer {
                x = b.forward(x);
            }
            if self.returned_layers.contains(&(i + 1)) {
                taps.push(x.clone());
            }
        }
        let fpn = &self.feature_extractor.fpn;
        let n = taps.len();
        let mut last_inner = conv3d(&fpn.inner_blocks[n - 1], taps[n - 1].clone());
        let mut levels = vec![conv3d(&fpn.layer_blocks[n - 1], last_inner.clone())];
        for i in (0..n - 1).rev() {
            let lateral = conv3d(&fpn.inner_blocks[i], taps[i].clone());
            let [_, _, d, h, w] = lateral.dims();
            last_inner = lateral + resize_nearest3d(last_inner, [d, h, w]);
            levels.insert(0, conv3d(&fpn.layer_blocks[i], last_inner.clone()));
        }
        let top = levels[levels.len() - 1].clone();
        levels.push(max_pool3d(top, [1; 3], [2; 3], [0; 3]));
        levels
    }

    /// The heads' outputs on every level, as MONAI's `RetinaNet.forward`.
    pub fn forward(&self, x: Tensor<5>) -> HeadOutputs {
        let levels = self.features(x);
        HeadOutputs {
            classification: levels
                .iter()
                .map(|l| self.classification_head.forward(l.clone()))
                .collect(),
            box_regression: levels
                .into_iter()
                .map(|l| self.regression_head.forward(l))
                .collect(),
        }
    }

    /// Loads a MONAI `state_dict` saved as safetensors (PyTorch names). Every tensor of the
    /// network must be there with its shape, and every tensor of the file must belong to the
    /// network (batch norms' `num_batches_tracked` aside); the first mismatch is an
    /// [`Error::Model`] naming the file and the tensor (by MONAI's name).
    pub fn load_state_dict(
        &mut self,
        bytes: Vec<u8>,
        origin: &Path,
        cfg: &RetinaNetConfig,
    ) -> Result<()> {
        use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
        // burn keeps a loaded tensor's dtype, and the network runs in float32.
        let bytes = floats_as_f32(bytes, origin)?;
        // Checked below, to name the first problem rather than list them all.
        let mut store = SafetensorsStore::from_bytes(Some(bytes))
            .with_from_adapter(PyTorchToBurnAdapter)
            .validate(false)
            .allow_partial(true);
        for (from, to) in state_dict_remapping(cfg) {
            store = store.with_key_remapping(from, to);
        }
        let applied = self
            .load_from(&mut store)
            .map_err(|e| model_err(origin, format!("reading a MONAI state_dict: {e}")))?;
        check_applied(&applied, origin)
    }
}

/// IEEE half precision to single (exact).
fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let magnitude = match exp {
        0 => man as f32 * (-24f32).exp2(),
        0x1f => f32::from_bits(0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(((exp + 112) << 23) | (man << 13)),
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// A safetensors state_dict with its float16, bfloat16 and float64 tensors turned into
/// float32 (exactly, but for float64's rounding), the network's precision; the bytes as
/// they are when every float tensor is float32 already, or when they are no safetensors
/// file (for the loader to refuse). Tensors that do not fit the file as
/// [`super::safetensors_values`] checks are an [`Error::Model`], before anything is copied.
fn floats_as_f32(bytes: Vec<u8>, origin: &Path) -> Result<Vec<u8>> {
    let Ok((header, start)) = super::safetensors_header(&bytes, origin) else {
        return Ok(bytes);
    };
    // The tensors' spans must fit the file without overlapping before any is copied out
    // and widened: claims on the same bytes would each be widened.
    super::safetensors_values(&bytes, origin)?;
    let dtype = |v: &serde_json::Value| v.get("dtype").and_then(|d| d.as_str()).map(str::to_owned);
    if header
        .values()
        .all(|v| !matches!(dtype(v).as_deref(), Some("F16" | "BF16" | "F64")))
    {
        return Ok(bytes);
    }
    let err = |m: String| model_err(origin, m);
    let data = &bytes[start..];
    let mut entries: Vec<(&String, &serde_json::Value, [usize; 2])> = Vec::new();
    let mut out_header = serde_json::Map::new();
    for (name, v) in &header {
        if name == "__metadata__" {
            out_header.insert(name.clone(), v.clone());
            continue;
        }
        let offsets: [usize; 2] = v
            .get("data_offsets")
            .and_then(|o| serde_json::from_value(o.clone()).ok())
            .filter(|[a, b]: &[usize; 2]| a <= b && *b <= data.len())
            .ok_or_else(|| err(format!("tensor {name}: bad data_offsets")))?;
        entries.push((name, v, offsets));
    }
    entries.sort_by_key(|e| e.2[0]);
    let mut out = Vec::with_capacity(data.len() * 2);
    for (name, v, [a, b]) in entries {
        let raw = &data[a..b];
        let begin = out.len();
        let mut entry = v.clone();
        let widen = |width: usize, f: &dyn Fn(&[u8]) -> f32, out: &mut Vec<u8>| {
            for c in raw.chunks_exact(width) {
                out.extend_from_slice(&f(c).to_le_bytes());
            }
        };
        let half = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
        match dtype(v).as_deref() {
            Some("F16") => widen(2, &|c| f16_to_f32(half(c)), &mut out),
            Some("BF16") => widen(2, &|c| f32::from_bits(u32::from(half(c)) << 16), &mut out),
            Some("F64") => widen(
                8,
                &|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32,
                &mut out,
            ),
            _ => {
                out.extend_from_slice(raw);
                entry["data_offsets"] = serde_json::json!([begin, out.len()]);
                out_header.insert(name.clone(), entry);
                continue;
            }
        }
        entry["dtype"] = "F32".into();
        entry["data_offsets"] = serde_json::json!([begin, out.len()]);
        out_header.insert(name.clone(), entry);
    }
    safetensors_bytes(&out_header, &out, origin)
}

/// Start of the error message of [`pytorch_state_dict`] for a file that is no checkpoint.
const NOT_PYTORCH: &str = "a PyTorch checkpoint";

/// A MONAI RetinaNet state_dict out of a PyTorch checkpoint at `path` (any container
/// `torch.save` writes, read by burn's hardened `pytorch-reader`, no Python), as safetensors
/// bytes with the state_dict's names and tensors unchanged. The state_dict may be the saved
/// object itself (`torch.save(net.state_dict())`, the bundle's `model.pt`) or nested in it
/// (`{"model": ..., "epoch": ...}`, a `DataParallel` `module.` prefix): the prefix of
/// `feature_extractor.body.conv1.weight` is found and only the tensors under it are taken.
pub fn pytorch_state_dict(path: &Path) -> Result<Vec<u8>> {
    use pytorch_reader::{DType, PytorchReader};
    const ANCHOR: &str = "feature_extractor.body.conv1.weight";
    let reader =
        PytorchReader::new(path).map_err(|e| model_err(path, format!("{NOT_PYTORCH}: {e}")))?;
    // Each tensor is read on its own, so many views of one storage would expand a small
    // file up to the cap; a state_dict's tensors hold at most the file's bytes (twice that
    // leaves room for tied weights).
    let file_len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let max_bytes = super::MAX_MODEL_BYTES.min(file_len.saturating_mul(2));
    let tensors = reader.tensors();
    let prefix = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(ANCHOR))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .min_by_key(|p| p.len())
        .ok_or_else(|| {
            let mut names: Vec<&String> = tensors.keys().collect();
            names.sort();
            model_err(
                path,
                format!(
                    "no MONAI RetinaNet state_dict in this PyTorch checkpoint (no tensor named \
                     {ANCHOR}, with or without a prefix; {} tensors, the first: {:?})",
                    names.len(),
                    names.iter().take(3).collect::<Vec<_>>()
                ),
            )
        })?;
    let mut entries: Vec<(&str, &pytorch_reader::Tensor)> = tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|name| (name, t)))
        .collect();
    entries.sort_by_key(|e| e.0);
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in entries {
        let dtype = match t.dtype() {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U64 => "U64",
            DType::U32 => "U32",
            DType::U16 => "U16",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        };
        if (data.len() as u64).saturating_add(t.byte_len() as u64) > max_bytes {
            return Err(model_err(
                path,
                format!(
                    "its state_dict's tensors hold more than {max_bytes} bytes: more than \
                     twice the file's {file_len} (tensors that view one storage are read \
                     one by one) or the {} a model file may have",
                    super::MAX_MODEL_BYTES
                ),
            ));
        }
        // Native-endian bytes; safetensors is little-endian, as every host burn runs on.
        let bytes = t.read().map_err(|e| Error::io(path, e))?;
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": t.shape(), "data_offsets": [start, data.len()]}),
        );
    }
    safetensors_bytes(&header, &data, path)
}

/// A safetensors file: its `header` (JSON, padded to 8 bytes) then `data`.
fn safetensors_bytes(
    header: &serde_json::Map<String, serde_json::Value>,
    data: &[u8],
    origin: &Path,
) -> Result<Vec<u8>> {
    let mut text = serde_json::to_vec(header).map_err(|e| model_err(origin, e.to_string()))?;
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    Ok(out)
}

fn model_err(path: &Path, message: String) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        message,
    }
}

/// The first problem of a state_dict load, as an error.
fn check_applied(applied: &burn::store::ApplyResult, origin: &Path) -> Result<()> {
    let err = |m: String| model_err(origin, m);
    let unused: Vec<&String> = applied
        .unused
        .iter()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    if let Some(e) = applied.errors.first() {
        return Err(err(format!(
            "{} tensor(s) do not fit the network, the first: {e:?}",
            applied.errors.len()
        )));
    }
    if let Some(m) = applied.missing.first() {
        return Err(err(format!(
            "{} network tensor(s) missing from the state_dict, the first: {}",
            applied.missing.len(),
            monai_name(&m.0)
        )));
    }
    if let Some(u) = unused.first() {
        return Err(err(format!(
            "{} tensor(s) of the state_dict are not in the network, the first: {} (is the config the one the weights were trained with?)",
            unused.len(),
            monai_name(u)
        )));
    }
    Ok(())
}

/// MONAI's `SlidingWindowInferer` as its RetinaNet detector uses it: windows of `roi_size`
/// over the padded image (`overlap` of their size shared, the last window of an axis moved
/// back inside), the heads' maps of each window summed into the whole image's maps at each
/// level's scale, then divided by how many windows covered each position ("constant"
/// mode). The bundle: roi 512 x 512 x 192, overlap 0.25.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlidingWindowConfig {
    pub roi_size: [usize; 3],
    pub overlap: f64,
}

impl Default for SlidingWindowConfig {
    fn default() -> Self {
        SlidingWindowConfig {
            roi_size: [512, 512, 192],
            overlap: 0.25,
        }
    }
}

impl SlidingWindowConfig {
    /// A window of at least one voxel per axis, an overlap from 0 to below 1 (MONAI's).
    pub fn validate(&self) -> Result<()> {
        if self.roi_size.contains(&0) || !(0.0..1.0).contains(&self.overlap) {
            return Err(Error::InvalidArgument(format!(
                "sliding window of {:?} with overlap {}: the window needs at least a voxel \
                 per axis and the overlap must be at least 0 and below 1",
                self.roi_size, self.overlap
            )));
        }
        Ok(())
    }
}

/// One pyramid level's maps for one image: grid `(X, Y, Z)`, classification and regression
/// values, row-major `(C, X, Y, Z)`.
type LevelValues = ([usize; 3], Vec<f32>, Vec<f32>);

/// The sliding windows over an image of `padded` voxels (padded to `size_divisible`).
struct Windows {
    /// The image's size padded to at least the window on every axis: an axis shorter than
    /// the window is padded on both sides (MONAI's SpatialPad).
    size: [usize; 3],
    /// The padding in front of the image per axis.
    front: [usize; 3],
    /// The windows' starts per axis.
    starts: [Vec<usize>; 3],
}

impl Windows {
    fn new(padded: [usize; 3], sw: &SlidingWindowConfig) -> Windows {
        let roi = sw.roi_size;
        let size: [usize; 3] = std::array::from_fn(|d| padded[d].max(roi[d]));
        let front: [usize; 3] = std::array::from_fn(|d| (size[d] - padded[d]) / 2);
        let interval: [usize; 3] = std::array::from_fn(|d| {
            if roi[d] == size[d] {
                roi[d]
            } else {
                ((roi[d] as f64 * (1.0 - sw.overlap)) as usize).max(1)
            }
        });
        let starts = std::array::from_fn(|d| window_starts(size[d], roi[d], interval[d]));
        Windows {
            size,
            front,
            starts,
        }
    }

    /// How many windows the network runs on.
    fn count(&self) -> u64 {
        self.starts
            .iter()
            .fold(1u64, |p, s| p.saturating_mul(s.len() as u64))
    }
}

/// The window starts along one axis of `size`, as MONAI's `dense_patch_slices`.
fn window_starts(size: usize, roi: usize, interval: usize) -> Vec<usize> {
    if roi >= size {
        return vec![0];
    }
    let num = size.div_ceil(interval);
    let n = (0..num)
        .find(|d| d * interval + roi >= size)
        .map_or(1, |d| d + 1);
    (0..n)
        .map(|i| {
            let s = i * interval;
            s - (s + roi).saturating_sub(size)
        })
        .collect()
}

impl RetinaNet {
    fn run_maps(&self, input: Vec<f32>, dims: [usize; 5]) -> Result<Vec<LevelValues>> {
        let device = self.feature_extractor.body.conv1.weight.device();
        let out = self.forward(Tensor::<5>::from_data(
            TensorData::new(input, dims),
            &device,
        ));
        let read = |m: &Tensor<5>| {
            m.clone()
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| Error::Device(format!("reading the heads' output: {e:?}")))
        };
        let mut maps = Vec::new();
        for (c, r) in out.classification.iter().zip(&out.box_regression) {
            let [_, _, gx, gy, gz] = c.dims();
            maps.push(([gx, gy, gz], read(c)?, read(r)?));
        }
        Ok(maps)
    }

    /// The heads' maps over a whole padded image `(C, P)` by sliding windows.
    fn sliding_maps(
        &self,
        image: &[f32],
        channels: usize,
        padded: [usize; 3],
        sw: &SlidingWindowConfig,
    ) -> Result<Vec<LevelValues>> {
        let roi = sw.roi_size;
        sw.validate()?;
        let Windows {
            size,
            front,
            starts,
        } = Windows::new(padded, sw);
        let img: std::borrow::Cow<'_, [f32]> = if size == padded {
            image.into()
        } else {
            pad_into(image, channels, padded, size, front).into()
        };
        // Per level: its scale to the window, its size over the whole image, the summed
        // classification and regression maps, and how many windows covered each position.
        struct LevelSum {
            scale: [f64; 3],
            out: [usize; 3],
            maps: [Vec<f32>; 2],
            count: Vec<f32>,
        }
        let mut sums: Vec<LevelSum> = Vec::new();
        for &sx in &starts[0] {
            for &sy in &starts[1] {
                for &sz in &starts[2] {
                    let st = [sx, sy, sz];
                    let mut window = vec![0f32; channels * roi.iter().product::<usize>()];
                    copy_box(&img, size, st, &mut window, roi, [0; 3], roi, channels);
                    let maps = self.run_maps(window, [1, channels, roi[0], roi[1], roi[2]])?;
                    for (level, (grid, cls, reg)) in maps.into_iter().enumerate() {
                        let cells = grid.iter().product::<usize>();
                        if sums.len() <= level {
                            let scale: [f64; 3] =
                                std::array::from_fn(|d| grid[d] as f64 / roi[d] as f64);
                            let out: [usize; 3] =
                                std::array::from_fn(|d| (size[d] as f64 * scale[d]) as usize);
                            let n = out.iter().product::<usize>();
                            sums.push(LevelSum {
                                scale,
                                out,
                                maps: [
                                    vec![0f32; cls.len() / cells * n],
                                    vec![0f32; reg.len() / cells * n],
                                ],
                                count: vec![0f32; n],
                            });
                        }
                        let sum = &mut sums[level];
                        let lo: [usize; 3] =
                            std::array::from_fn(|d| (st[d] as f64 * sum.scale[d]) as usize);
                        let hi: [usize; 3] = std::array::from_fn(|d| {
                            (((st[d] + roi[d]) as f64 * sum.scale[d]) as usize).min(sum.out[d])
                        });
                        let len: [usize; 3] = std::array::from_fn(|d| (hi[d] - lo[d]).min(grid[d]));
                        for (acc, values) in sum.maps.iter_mut().zip([&cls, &reg]) {
                            let ch = values.len() / cells;
                            add_box(values, grid, acc, sum.out, lo, len, ch);
                        }
                        let count = &mut sum.count;
                        box_rows(grid, [0; 3], sum.out, lo, len, 1, |_, d| {
                            count[d..d + len[2]].iter_mut().for_each(|c| *c += 1.0)
                        });
                    }
                }
            }
        }
        let mut levels = Vec::new();
        for LevelSum {
            scale,
            out,
            maps,
            count,
        } in sums
        {
            let n = count.len();
            // Crop what the window padding added (MONAI: int(round(...)), half to even).
            let a: [usize; 3] =
                std::array::from_fn(|d| (front[d] as f64 * scale[d]).round_ties_even() as usize);
            let b: [usize; 3] = std::array::from_fn(|d| {
                ((front[d] + padded[d]) as f64 * scale[d]).round_ties_even() as usize
            });
            let grid: [usize; 3] = std::array::from_fn(|d| b[d] - a[d]);
            let [cls, reg] = maps.map(|mut m| {
                for (idx, v) in m.iter_mut().enumerate() {
                    *v /= count[idx % n];
                }
                if grid == out {
                    return m;
                }
                let ch = m.len() / n;
                let mut cropped = vec![0f32; ch * grid.iter().product::<usize>()];
                copy_box(&m, out, a, &mut cropped, grid, [0; 3], grid, ch);
                cropped
            });
            levels.push((grid, cls, reg));
        }
        Ok(levels)
    }

    /// MONAI's `RetinaNetDetector` on one image: `image` holds `(C, X, Y, Z)` values of
    /// `size` (X, Y, Z), zero-padded at the end of each axis to a multiple of
    /// `cfg.size_divisible`, run through the network (whole, or by `sliding_window`) and
    /// decoded ([`crate::detect::retina::detect_boxes`]). Boxes are `xyzxyz` voxel
    /// coordinates of the unpadded image, most probable first.
    pub fn detect_boxes(
        &self,
        image: &[f32],
        channels: usize,
        size: [usize; 3],
        cfg: &RetinaDecodeConfig,
        sliding_window: Option<&SlidingWindowConfig>,
    ) -> Result<Vec<crate::detect::retina::RetinaBox>> {
        use crate::detect::retina::{detect_boxes, LevelMaps};
        let [x, y, z] = size;
        if image.len() != channels * x * y * z || cfg.size_divisible.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "{} values are not a {channels} x {x} x {y} x {z} image",
                image.len()
            )));
        }
        let padded: [usize; 3] = std::array::from_fn(|d| {
            size[d].div_ceil(cfg.size_divisible[d]) * cfg.size_divisible[d]
        });
        let input = pad_into(image, channels, size, padded, [0; 3]);
        let maps = match sliding_window {
            None => self.run_maps(input, [1, channels, padded[0], padded[1], padded[2]])?,
            Some(sw) => self.sliding_maps(&input, channels, padded, sw)?,
        };
        let levels: Vec<LevelMaps<'_>> = maps
            .iter()
            .map(|(grid, c, r)| LevelMaps {
                grid: *grid,
                classification: c,
                box_regression: r,
            })
            .collect();
        detect_boxes(&levels, padded, size, cfg)
    }
}

/// `(C, size)` values placed at `front` in a zero `(C, into)` buffer.
fn pad_into(
    image: &[f32],
    channels: usize,
    size: [usize; 3],
    into: [usize; 3],
    front: [usize; 3],
) -> Vec<f32> {
    let mut out = vec![0f32; channels * into.iter().product::<usize>()];
    copy_box(image, size, [0; 3], &mut out, into, front, size, channels);
    out
}

/// Calls `row(s, d)` for each row (`len[2]` values along the last axis) of the `(C, len)`
/// box at `from` in `(C, src_shape)` values and at `to` in `(C, dst_shape)` values, `s` and
/// `d` being the row's first index in each.
#[allow(clippy::too_many_arguments)]
fn box_rows(
    src_shape: [usize; 3],
    from: [usize; 3],
    dst_shape: [usize; 3],
    to: [usize; 3],
    len: [usize; 3],
    channels: usize,
    mut row: impl FnMut(usize, usize),
) {
    for c in 0..channels {
        for i in 0..len[0] {
            for j in 0..len[1] {
                let s = ((c * src_shape[0] + from[0] + i) * src_shape[1] + from[1] + j)
                    * src_shape[2]
                    + from[2];
                let d = ((c * dst_shape[0] + to[0] + i) * dst_shape[1] + to[1] + j) * dst_shape[2]
                    + to[2];
                row(s, d);
            }
        }
    }
}

/// Copies the `(C, len)` box at `from` of the `(C, src_shape)` values `src` to `to` in the
/// `(C, dst_shape)` values `dst`, a row (last axis) at a time.
#[allow(clippy::too_many_arguments)]
fn copy_box(
    src: &[f32],
    src_shape: [usize; 3],
    from: [usize; 3],
    dst: &mut [f32],
    dst_shape: [usize; 3],
    to: [usize; 3],
    len: [usize; 3],
    channels: usize,
) {
    let n = len[2];
    box_rows(src_shape, from, dst_shape, to, len, channels, |s, d| {
        dst[d..d + n].copy_from_slice(&src[s..s + n])
    });
}

/// Adds the `(C, len)` box at the origin of the `(C, src_shape)` values `src` into `dst`
/// (`(C, dst_shape)`) at `to`.
fn add_box(
    src: &[f32],
    src_shape: [usize; 3],
    dst: &mut [f32],
    dst_shape: [usize; 3],
    to: [usize; 3],
    len: [usize; 3],
    channels: usize,
) {
    let n = len[2];
    box_rows(src_shape, [0; 3], dst_shape, to, len, channels, |s, d| {
        for (o, v) in dst[d..d + n].iter_mut().zip(&src[s..s + n]) {
            *o += v;
        }
    });
}

/// MONAI's name of a tensor of this module tree (the inverse of
/// [`state_dict_remapping`]), for messages.
fn monai_name(ours: &str) -> String {
    let mut parts: Vec<String> = ours.split('.').map(String::from).collect();
    let mut i = 0;
    while i < parts.len() {
        let next = parts.get(i + 1).and_then(|p| p.parse::<usize>().ok());
        match (parts[i].as_str(), next) {
            ("layers", Some(n)) => {
                parts[i] = format!("layer{}", n + 1);
                parts.remove(i + 1);
            }
            ("convs", Some(n)) => {
                parts[i] = "conv".into();
                parts[i + 1] = (3 * n).to_string();
            }
            ("norms", Some(n)) => {
                parts[i] = "conv".into();
                parts[i + 1] = (3 * n + 1).to_string();
            }
            ("downsample_conv", _) => parts[i] = "downsample.0".into(),
            ("downsample_bn", _) => parts[i] = "downsample.1".into(),
            ("gamma", _) => parts[i] = "weight".into(),
            ("beta", _) => parts[i] = "bias".into(),
            ("out", _) if parts[0] == "classification_head" => parts[i] = "cls_logits".into(),
            ("out", _) if parts[0] == "regression_head" => parts[i] = "bbox_reg".into(),
            _ => {}
        }
        i += 1;
    }
    parts.join(".")
}

/// Regex renamings from MONAI's `state_dict` keys to this module tree's.
pub fn state_dict_remapping(cfg: &RetinaNetConfig) -> Vec<(String, String)> {
    let mut m = Vec::new();
    for l in 1..=4 {
        m.push((
            format!(r"^feature_extractor\.body\.layer{l}\."),
            format!("feature_extractor.body.layers.{}.", l - 1),
        ));
    }
    m.push((r"\.downsample\.0\.".into(), ".downsample_conv.".into()));
    m.push((r"\.downsample\.1\.".into(), ".downsample_bn.".into()));
    for head in ["classification_head", "regression_head"] {
        for i in 0..cfg.head_layers {
            m.push((
                format!(r"^{head}\.conv\.{}\.", 3 * i),
                format!("{head}.convs.{i}."),
            ));
            m.push((
                format!(r"^{head}\.conv\.{}\.", 3 * i + 1),
                format!("{head}.norms.{i}."),
            ));
        }
    }
    m.push((
        r"^classification_head\.cls_logits\.".into(),
        "classification_head.out.".into(),
    ));
    m.push((
        r"^regression_head\.bbox_reg\.".into(),
        "regression_head.out.".into(),
    ));
    m
}

/// MONAI's detector as lungcad runs it decodes one class (the bundle's nodules); a network
/// of more would fail only after running, on the heads' output sizes.
fn check_one_class(config: &RetinaNetConfig) -> std::result::Result<(), String> {
    if config.num_classes != 1 {
        return Err(format!(
            "the detector decodes one class (the bundle's) and this network has {}",
            config.num_classes
        ));
    }
    Ok(())
}

/// A MONAI model file's metadata: the format, the architecture and every config (the
/// network's `config`; the bundle's preprocessing, decoding and sliding window).
fn model_metadata(config: &RetinaNetConfig) -> Result<Vec<(String, String)>> {
    let json = |v: serde_json::Result<String>| {
        v.map_err(|e| Error::InvalidArgument(format!("config to JSON: {e}")))
    };
    Ok(vec![
        ("lungcad_model_format".into(), super::MODEL_FORMAT.into()),
        ("architecture".into(), MONAI_RETINANET.into()),
        (
            "retinanet_config".into(),
            json(serde_json::to_string(config))?,
        ),
        (
            "retina_decode_config".into(),
            json(serde_json::to_string(&RetinaDecodeConfig::default()))?,
        ),
        (
            "monai_preprocess_config".into(),
            json(serde_json::to_string(&MonaiPreprocessConfig::default()))?,
        ),
        (
            "sliding_window_config".into(),
            json(serde_json::to_string(&SlidingWindowConfig::default()))?,
        ),
    ])
}

/// `architecture` in a model file's metadata for a MONAI RetinaNet.
pub const MONAI_RETINANET: &str = "monai_retinanet";

/// MONAI's lung-nodule detector, whole: the network with its configs, the bundle's
/// preprocessing, post-processing and sliding window. Model files are MONAI's `state_dict`
/// (PyTorch names) as safetensors with the configs in the metadata
/// (`architecture = monai_retinanet`); [`MonaiDetector::write_model`] makes one from a
/// state_dict (`lungcad import-monai`).
#[derive(Debug)]
pub struct MonaiDetector {
    pub net: RetinaNet,
    pub config: RetinaNetConfig,
    pub decode: RetinaDecodeConfig,
    pub preprocess: MonaiPreprocessConfig,
    pub sliding_window: SlidingWindowConfig,
}

/// A detection of [`MonaiDetector::detect`]: the box's centre (LPS mm), its size along world
/// x, y, z (mm) and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonaiDetection {
    pub centre_world: [f64; 3],
    pub size_mm: [f64; 3],
    pub probability: f32,
}

impl MonaiDetection {
    /// As a lungcad detection: the diameter is the mean of the box's three sizes.
    pub fn to_detection(&self) -> crate::detect::Detection {
        crate::detect::Detection {
            centre_world: self.centre_world,
            diameter_mm: self.size_mm.iter().sum::<f64>() / 3.0,
            probability: self.probability,
        }
    }
}

/// The detections of `found` (most probable first) at `min_probability` and up, at most
/// `max`, as lungcad detections ([`MonaiDetection::to_detection`]).
pub fn select(
    found: &[MonaiDetection],
    min_probability: f32,
    max: usize,
) -> Vec<crate::detect::Detection> {
    found
        .iter()
        .filter(|d| d.probability >= min_probability)
        .take(max)
        .map(MonaiDetection::to_detection)
        .collect()
}

impl MonaiDetector {
    /// A model file from a MONAI `state_dict` in safetensors (`bytes`, named `origin` in
    /// errors) and the network's config: every tensor is checked by loading it, then the
    /// file is written to `out` with the configs (the defaults: the bundle's) in its
    /// metadata; the tensors are copied as they are, but float16, bfloat16 and float64
    /// ones as float32, the network's precision.
    pub fn write_model(
        bytes: &[u8],
        origin: &Path,
        config: &RetinaNetConfig,
        out: &Path,
        device: &Device,
    ) -> Result<()> {
        check_one_class(config).map_err(|m| model_err(origin, m))?;
        let bytes = floats_as_f32(bytes.to_vec(), origin)?;
        // The config is the caller's (`import-monai --config`), held to what a model file
        // may hold by `init`; a state_dict that does not fit it is named tensor by tensor.
        let mut net = config.init(device)?;
        net.load_state_dict(bytes.clone(), origin, config)?;
        let (mut header, start) = super::safetensors_header(&bytes, origin)?;
        let meta: serde_json::Map<String, serde_json::Value> = model_metadata(config)?
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
        let file = safetensors_bytes(&header, &bytes[start..], origin)?;
        crate::io::metaimage::AtomicFile::write_bytes(out, &file)
    }

    /// `lungcad import-monai`: a model file ([`MonaiDetector::write_model`]) from a MONAI
    /// state_dict saved as safetensors, or in a PyTorch checkpoint (`torch.save`; see
    /// [`pytorch_state_dict`]), as the bundle ships it (`models/model.pt`).
    pub fn import(
        source: &Path,
        config: &RetinaNetConfig,
        out: &Path,
        device: &Device,
    ) -> Result<()> {
        let bytes = super::read_model_file(source)?;
        let state = match super::safetensors_metadata(&bytes, source) {
            Ok(_) => bytes,
            Err(not_safetensors) => {
                drop(bytes);
                pytorch_state_dict(source).map_err(|e| match e {
                    Error::Model { message, .. } if message.starts_with(NOT_PYTORCH) => model_err(
                        source,
                        format!("neither safetensors ({not_safetensors}) nor {message}"),
                    ),
                    e => e,
                })?
            }
        };
        MonaiDetector::write_model(&state, source, config, out, device)
    }

    /// A MONAI model file (see [`MonaiDetector::write_model`]) on `device`.
    pub fn from_bytes(bytes: Vec<u8>, origin: &Path, device: &Device) -> Result<Self> {
        let meta = super::safetensors_metadata(&bytes, origin)?;
        let err = |m: String| Error::Model {
            path: origin.to_path_buf(),
            message: m,
        };
        if meta.get("architecture").map(String::as_str) != Some(MONAI_RETINANET) {
            return Err(err(format!("not a {MONAI_RETINANET} model file")));
        }
        fn parse<T: serde::de::DeserializeOwned>(
            meta: &std::collections::HashMap<String, String>,
            key: &str,
        ) -> std::result::Result<T, String> {
            let text = meta
                .get(key)
                .ok_or_else(|| format!("no {key} in its metadata"))?;
            serde_json::from_str(text).map_err(|e| format!("{key}: {e}"))
        }
        let config: RetinaNetConfig = parse(&meta, "retinanet_config").map_err(err)?;
        let decode: RetinaDecodeConfig = parse(&meta, "retina_decode_config").map_err(err)?;
        let preprocess: MonaiPreprocessConfig =
            parse(&meta, "monai_preprocess_config").map_err(err)?;
        let sliding_window: SlidingWindowConfig =
            parse(&meta, "sliding_window_config").map_err(err)?;
        config
            .validate()
            .map_err(|e| err(format!("its retinanet_config: {e}")))?;
        check_one_class(&config).map_err(err)?;
        decode
            .validate(config.num_anchors, config.returned_layers.len() + 1)
            .map_err(|e| err(format!("its retina_decode_config: {e}")))?;
        preprocess
            .validate()
            .map_err(|e| err(format!("its monai_preprocess_config: {e}")))?;
        sliding_window
            .validate()
            .map_err(|e| err(format!("its sliding_window_config: {e}")))?;
        super::check_file_holds(config.stored_values(), &bytes, origin)?;
        let mut net = config.init(device)?;
        net.load_state_dict(bytes, origin, &config)?;
        Ok(MonaiDetector {
            net,
            config,
            decode,
            preprocess,
            sliding_window,
        })
    }

    /// Whether an image of `size` voxels runs by sliding window: when it holds at least the
    /// window's voxels, as the bundle decides.
    pub fn uses_sliding_window(&self, size: [usize; 3]) -> bool {
        let voxels = |g: [usize; 3]| g.iter().fold(1u64, |p, &n| p.saturating_mul(n as u64));
        voxels(size) >= voxels(self.sliding_window.roi_size)
    }

    /// The network and post-processing on a preprocessed image of `size` (X, Y, Z,
    /// one channel): by sliding window when the image holds at least the window's voxels,
    /// as the bundle decides; boxes in its voxels. The padded image (padded to the window
    /// too, on axes shorter than it) is held to `limits`' voxel count, and the sliding
    /// windows to its tile count and coverage ([`Limits::check_tiles`]), the largest
    /// tensor of a window (or of the whole image) and the heads' maps the windows are
    /// summed into to its tensor bytes, an
    /// [`Error::Limit`] past them; a run whose largest tensor does not fit the device's
    /// buffers ([`RetinaNetConfig::largest_tensor`]) is an [`Error::Device`].
    pub fn detect_image(
        &self,
        values: &[f32],
        size: [usize; 3],
        limits: &Limits,
    ) -> Result<Vec<crate::detect::retina::RetinaBox>> {
        let window = self
            .uses_sliding_window(size)
            .then_some(&self.sliding_window);
        let padded: [u64; 3] = std::array::from_fn(|d| {
            let k = self.decode.size_divisible[d].max(1) as u64;
            (size[d] as u64).div_ceil(k).saturating_mul(k)
        });
        limits.check_shape(padded)?;
        let run: [usize; 3] = match window {
            Some(w) => {
                // The image is padded up to the window on axes shorter than it.
                limits.check_shape(std::array::from_fn(|d| padded[d].max(w.roi_size[d] as u64)))?;
                // The file sets the window and its overlap: the windows' count and
                // coverage are held to the limits before any runs.
                w.validate()?;
                let windows = Windows::new(padded.map(|n| n as usize), w);
                limits.check_tiles(
                    windows.count(),
                    w.roi_size.map(|n| n as u64),
                    windows.size.map(|n| n as u64),
                )?;
                // The heads' maps summed over the whole image, at every level.
                limits.check_map_bytes(
                    self.config.head_maps_values(windows.size).saturating_mul(4),
                )?;
                w.roi_size
            }
            None => padded.map(|n| n as usize),
        };
        let device = self.net.feature_extractor.body.conv1.weight.device();
        let bytes = 4 * self.config.largest_tensor(run) as u64;
        limits.check_tensor_bytes(bytes)?;
        if let Some(limit) = super::max_tensor_bytes(&device).filter(|&l| bytes > l) {
            return Err(Error::Device(format!(
                "MONAI's RetinaNet on {} x {} x {} makes a tensor of {} MiB and this device \
                 holds at most {} MiB in one buffer: run it on the CPU (--device cpu) or on \
                 a device with larger buffers",
                run[0],
                run[1],
                run[2],
                bytes >> 20,
                limit >> 20
            )));
        }
        self.net
            .detect_boxes(values, self.config.in_channels, size, &self.decode, window)
    }

    /// Detections in a CT, most probable first: the bundle's preprocessing, the network
    /// (by sliding window when the image holds at least as many voxels as the window, as
    /// the bundle decides), MONAI's post-processing, boxes mapped to LPS millimetres.
    /// The resampled image and the network's input are held to `limits`' voxel count, the
    /// sliding windows to its tile count and coverage.
    pub fn detect(&self, volume: &Volume, limits: &Limits) -> Result<Vec<MonaiDetection>> {
        let image = crate::preprocess::monai::monai_preprocess(volume, &self.preprocess, limits)?;
        let boxes = self.detect_image(&image.values, image.size, limits)?;
        Ok(boxes
            .iter()
            .map(|b| {
                let (centre_world, size_mm) = image.box_to_world(b.min, b.max);
                MonaiDetection {
                    centre_world,
                    size_mm,
                    probability: b.score,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Window starts as MONAI's `dense_patch_slices` gives them (interval
    /// `int(roi * (1 - 0.25))`), the last one moved back inside.
    #[test]
    fn window_starts_are_monais() {
        assert_eq!(window_starts(48, 32, 24), vec![0, 16]);
        assert_eq!(window_starts(24, 16, 12), vec![0, 8]);
        assert_eq!(window_starts(512, 512, 512), vec![0]);
        assert_eq!(window_starts(700, 512, 384), vec![0, 188]);
        assert_eq!(window_starts(1300, 512, 384), vec![0, 384, 768, 788]);
        assert_eq!(window_starts(200, 512, 384), vec![0]);
    }

    /// Half precision to single, exactly: normal, subnormal, signed, infinite values.
    #[test]
    fn half_precision_values_widen_exactly() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3800, 0.5),
            (0x7bff, 65504.0),
            (0x0001, (-24f32).exp2()),
            (0x03ff, 1023.0 * (-24f32).exp2()),
            (0x8000, -0.0),
            (0x7c00, f32::INFINITY),
            (0x3555, 0.333_251_95),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
