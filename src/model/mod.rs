//! The 3-D CNN detector on burn: its config ([`DetectorConfig`]), network ([`net`]), the
//! tensor ops burn lacks ([`ops`]), device selection, batched inference over a scan's
//! tiles, and model files.
//!
//! Backends are chosen at run time ([`select_device`]): wgpu (Vulkan, Metal, DX12) when an
//! adapter exists, else burn's pure-Rust CPU backend `flex`; `cuda` behind the crate
//! feature of that name.
//!
//! ## Model files
//!
//! A model file is a [safetensors](https://github.com/huggingface/safetensors) file: the
//! network's weights under PyTorch's names for the same modules (`enc1.blocks.0.conv1.weight`,
//! `stem1.bn.running_var`, ...; batch-norm scale and shift as `weight` and `bias`) and, in
//! the header's metadata, `lungcad_model_format` (currently `1`), `detector_config` and
//! `preprocess_config` (JSON). The PyTorch reference (`python/reference/detector.py`) loads
//! it as a `state_dict` and saves its own weights in the same form.

pub mod cpu_conv;
mod cpu_norm;
mod cpu_pool;
mod flex;
pub mod monai;
pub mod net;
pub mod ops;
#[cfg(test)]
mod test_util;

/// burn's run-time device handle, as [`select_device`] returns it.
pub use burn::tensor::Device;
pub use net::DetectorNet;

use crate::detect::head::CHANNELS_PER_ANCHOR;
use crate::detect::{decode_patch, Candidate, DecodeConfig, Detection, Flips, HeadLayout};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::preprocess::{PreprocessConfig, Preprocessed};
use crate::volume::Volume;
use burn::prelude::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The model file format this build reads and writes.
pub const MODEL_FORMAT: &str = "1";

/// Shape of the network. Defaults follow grt123's widths at a lighter decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Input channels (1: the windowed CT).
    pub in_channels: usize,
    /// Channels of the stem and of encoder stages 1 to 4 (strides 1, 2, 4, 8, 16).
    /// Default 24, 32, 64, 64, 64.
    pub channels: [usize; 5],
    /// Residual blocks in encoder stages 1 to 4. Default 2, 2, 3, 3.
    pub blocks: [usize; 4],
    /// Channels of the decoder (strides 8 and 4) and the head. Default 64.
    pub decoder_channels: usize,
    /// Residual blocks per decoder stage. Default 1.
    pub decoder_blocks: usize,
    /// Output stride (must be 4) and anchors.
    pub head: HeadLayout,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            in_channels: 1,
            channels: [24, 32, 64, 64, 64],
            blocks: [2, 2, 3, 3],
            decoder_channels: 64,
            decoder_blocks: 1,
            head: HeadLayout::default(),
        }
    }
}

/// Parameters and multiply-accumulates of a network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NetworkCost {
    /// Learnable parameters (convolution weights and biases, batch-norm scales and shifts).
    pub parameters: u64,
    /// Batch-norm running means and variances: stored in the model file, not learned
    /// (burn's `num_params` counts them with the parameters, PyTorch's `parameters()` not).
    pub running_stats: u64,
    /// Multiply-accumulate operations of one forward pass of one patch (convolutions).
    pub macs: u64,
}

impl NetworkCost {
    /// GFLOPs of one forward pass (2 per multiply-accumulate).
    pub fn gflops(&self) -> f64 {
        2.0 * self.macs as f64 / 1e9
    }
}

impl DetectorConfig {
    pub fn validate(&self) -> Result<()> {
        self.head.validate()?;
        if self.head.stride_vox != 4 {
            return Err(Error::InvalidArgument(format!(
                "the detector's output stride is 4, the head layout says {}",
                self.head.stride_vox
            )));
        }
        if self.in_channels == 0
            || self.decoder_channels == 0
            || self.channels.contains(&0)
            || self
                .channels
                .iter()
                .chain([&self.decoder_channels, &self.in_channels])
                .any(|&c| c > 1024)
        {
            return Err(Error::InvalidArgument(format!(
                "channel counts must be 1 to 1024: input {}, {:?}, decoder {}",
                self.in_channels, self.channels, self.decoder_channels
            )));
        }
        if self
            .blocks
            .iter()
            .chain([&self.decoder_blocks])
            .any(|&b| b == 0 || b > 16)
        {
            return Err(Error::InvalidArgument(format!(
                "block counts must be 1 to 16: {:?}, decoder {}",
                self.blocks, self.decoder_blocks
            )));
        }
        match too_many_values(self.stored_values()) {
            Some(why) => Err(Error::InvalidArgument(why)),
            None => Ok(()),
        }
    }

    /// Values a model file stores for this network: its parameters and its batch norms'
    /// running statistics. Exact for a config within [`DetectorConfig::validate`]'s
    /// channel and block ranges (which it checks before counting); past them the count
    /// may overflow.
    pub fn stored_values(&self) -> u64 {
        let cost = self.cost([16; 3]);
        cost.parameters + cost.running_stats
    }

    /// Builds the network on `device` with weights drawn from `seed`: the same weights for
    /// the same seed on every device (see [`net`] for the initialisation).
    pub fn init_net(&self, device: &Device, seed: u64) -> Result<DetectorNet> {
        self.validate()?;
        Ok(DetectorNet::new(self, device, seed))
    }

    /// Elements of the largest tensor the network makes for one patch of `patch_vox`
    /// (with the default widths, the stem's output: 24 channels at full resolution). A
    /// GPU buffer holds a whole tensor of a batch: see [`Detector::max_batch`].
    pub fn largest_tensor_per_patch(&self, patch_vox: [usize; 3]) -> usize {
        let [c0, c1, c2, c3, c4] = self.channels;
        let cd = self.decoder_channels;
        let voxels = |stride: usize| patch_vox.iter().map(|n| n / stride).product::<usize>();
        [
            (self.in_channels, 1),
            (c0, 1),
            (c1, 2),
            (c2, 4),
            (c3, 8),
            (c4, 16),
            (c4 + c3, 8),
            (cd, 8),
            (cd + c2, 4),
            (cd, 4),
            (self.head.channels(), 4),
        ]
        .iter()
        .map(|&(c, stride)| c * voxels(stride))
        .max()
        .unwrap_or(0)
    }

    /// Parameter count and per-patch cost for a patch of `patch_vox` (multiples of 16).
    pub fn cost(&self, patch_vox: [usize; 3]) -> NetworkCost {
        let vox =
            |stride: usize| -> u64 { patch_vox.iter().map(|&n| (n / stride) as u64).product() };
        let mut p = 0u64;
        let mut m = 0u64;
        let mut conv = |k: u64, cin: usize, cout: usize, bias: bool, stride: usize| {
            let w = k * k * k * cin as u64 * cout as u64;
            p += w + if bias { cout as u64 } else { 0 };
            m += w * vox(stride);
        };
        let mut bn_params = 0u64;
        let [c0, c1, c2, c3, c4] = self.channels;
        conv(3, self.in_channels, c0, false, 1);
        conv(3, c0, c0, false, 1);
        bn_params += 2 * 2 * c0 as u64;
        let stage = |cin: usize,
                     cout: usize,
                     n: usize,
                     stride: usize,
                     conv: &mut dyn FnMut(u64, usize, usize, bool, usize)| {
            let mut bn = 0u64;
            for i in 0..n {
                let ci = if i == 0 { cin } else { cout };
                conv(3, ci, cout, false, stride);
                conv(3, cout, cout, false, stride);
                bn += 2 * 2 * cout as u64;
                if ci != cout {
                    conv(1, ci, cout, false, stride);
                    bn += 2 * cout as u64;
                }
            }
            bn
        };
        bn_params += stage(c0, c1, self.blocks[0], 2, &mut conv);
        bn_params += stage(c1, c2, self.blocks[1], 4, &mut conv);
        bn_params += stage(c2, c3, self.blocks[2], 8, &mut conv);
        bn_params += stage(c3, c4, self.blocks[3], 16, &mut conv);
        let cd = self.decoder_channels;
        bn_params += stage(c4 + c3, cd, self.decoder_blocks, 8, &mut conv);
        bn_params += stage(cd + c2, cd, self.decoder_blocks, 4, &mut conv);
        conv(1, cd, cd, true, 4);
        conv(1, cd, self.head.channels(), true, 4);
        NetworkCost {
            parameters: p + bn_params,
            running_stats: bn_params,
            macs: m,
        }
    }
}

/// Where the network runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// wgpu when a hardware adapter exists, else the CPU.
    Auto,
    /// wgpu (Vulkan, Metal, DX12); an error when no adapter exists.
    Wgpu,
    /// burn's pure-Rust CPU backend (flex), multi-threaded.
    Cpu,
    /// CUDA (the `cuda` feature).
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "wgpu" => Ok(DeviceChoice::Wgpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(Error::InvalidArgument(format!(
                "device {other:?}: use auto, wgpu, cpu or cuda"
            ))),
        }
    }
}

/// The process's wgpu device and its adapter, once initialised (burn refuses a second
/// initialisation).
static WGPU: std::sync::OnceLock<std::result::Result<(Device, WgpuAdapter), String>> =
    std::sync::OnceLock::new();

/// The process's wgpu device and a description of its adapter, initialised once.
fn wgpu_device() -> std::result::Result<(Device, WgpuAdapter), String> {
    WGPU.get_or_init(|| {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| e.to_string())?;
        let info = setup.adapter.get_info();
        let limits = setup.device.limits();
        Ok((
            device,
            WgpuAdapter {
                name: info.name,
                backend: format!("{:?}", info.backend),
                software: info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu,
                // What burn's GPU runtime (cubecl) takes as its largest allocation.
                max_buffer_bytes: limits
                    .max_storage_buffer_binding_size
                    .min(limits.max_buffer_size),
            },
        ))
    })
    .clone()
}

/// The largest tensor, in bytes, `device` can hold: for the wgpu device, its largest
/// storage buffer (the smaller of the adapter's `max_storage_buffer_binding_size` and
/// `max_buffer_size`; Mesa's lavapipe: 128 MiB), since a GPU tensor lives in one buffer.
/// `None` where no such limit applies: the CPU, CUDA, or wgpu not started.
pub fn max_tensor_bytes(device: &Device) -> Option<u64> {
    match WGPU.get() {
        Some(Ok((d, adapter))) if d == device => Some(adapter.max_buffer_bytes),
        _ => None,
    }
}

/// Bytes of the largest tensor (float32) one patch of `patch_vox` makes in `config`'s
/// network; at least 1.
fn bytes_per_patch(config: &DetectorConfig, patch_vox: [usize; 3]) -> u64 {
    4 * config.largest_tensor_per_patch(patch_vox).max(1) as u64
}

/// [`Error::Device`] naming both sizes when `batch` patches of `patch_vox` through the
/// network of `config` make a tensor larger than `device` holds in one buffer
/// ([`max_tensor_bytes`]); `Ok` where the device sets no such limit.
pub fn check_patches_fit(
    device: &Device,
    config: &DetectorConfig,
    batch: usize,
    patch_vox: [usize; 3],
) -> Result<()> {
    let Some(limit) = max_tensor_bytes(device) else {
        return Ok(());
    };
    let per_patch = bytes_per_patch(config, patch_vox);
    let max = (limit / per_patch) as usize;
    if batch <= max {
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let [d, h, w] = patch_vox;
    Err(Error::Device(format!(
        "{batch} patch{} of {d} x {h} x {w} make{} a tensor of {:.0} MiB and this device \
         holds at most {:.0} MiB in one buffer: {}",
        if batch == 1 { "" } else { "es" },
        if batch == 1 { "s" } else { "" },
        mib(per_patch * batch as u64),
        mib(limit),
        if max == 0 {
            "not even one patch fits; use a smaller patch".to_string()
        } else {
            format!("at most {max} patches per pass")
        }
    )))
}

/// The adapter behind the wgpu device.
#[derive(Debug, Clone)]
struct WgpuAdapter {
    name: String,
    backend: String,
    /// A CPU implementation of the graphics API (Mesa's lavapipe, WARP, SwiftShader).
    software: bool,
    /// The largest buffer the device allocates, bytes.
    max_buffer_bytes: u64,
}

impl WgpuAdapter {
    fn describe(&self) -> String {
        let soft = if self.software { ", software" } else { "" };
        format!("wgpu ({}, {}{soft})", self.name, self.backend)
    }
}

/// The device for `choice`, and a short description of it (`wgpu (NVIDIA H100, Vulkan)`,
/// `cpu (flex)`, `cuda:0`). `Auto` takes a wgpu GPU when there is one, and otherwise the CPU:
/// a software adapter (lavapipe) runs the network far slower than `flex` on the same cores,
/// so `auto` does not pick it; `wgpu` does.
pub fn select_device(choice: DeviceChoice) -> Result<(Device, String)> {
    let cpu = || (Device::flex(), "cpu (flex)".to_string());
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Wgpu => wgpu_device()
            .map(|(d, a)| (d, a.describe()))
            .map_err(|e| Error::Device(format!("no wgpu adapter: {e}"))),
        DeviceChoice::Auto => Ok(match wgpu_device() {
            Ok((d, a)) if !a.software => (d, a.describe()),
            Ok((_, a)) => {
                tracing::info!(
                    "only a software wgpu adapter ({}); running on the CPU",
                    a.describe()
                );
                cpu()
            }
            Err(e) => {
                tracing::info!("no wgpu adapter ({e}); running on the CPU");
                cpu()
            }
        }),
        DeviceChoice::Cuda => cuda_device(),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<(Device, String)> {
    Ok((Device::cuda(0), "cuda:0".into()))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<(Device, String)> {
    Err(Error::Device(
        "this build has no CUDA support (rebuild with --features cuda)".into(),
    ))
}

/// A detector ready to run: the network on its device, with the configs it was built and
/// trained with.
#[derive(Debug, Clone)]
pub struct Detector {
    pub net: DetectorNet,
    pub config: DetectorConfig,
    pub preprocess: PreprocessConfig,
    device: Device,
}

fn model_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Detector {
    /// A detector with freshly initialised weights, seeded.
    pub fn new(
        config: DetectorConfig,
        preprocess: PreprocessConfig,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        preprocess.validate()?;
        config.head.output_shape(preprocess.patch.size_vox)?;
        if preprocess.patch.size_vox.iter().any(|n| n % 16 != 0) {
            return Err(Error::InvalidArgument(format!(
                "patch size {:?} must be a multiple of 16 (the encoder's stride)",
                preprocess.patch.size_vox
            )));
        }
        let net = config.init_net(device, seed)?;
        Ok(Detector {
            net,
            config,
            preprocess,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Tiles per forward pass when the caller does not choose: [`DEFAULT_GPU_BATCH`] on a
    /// GPU; on the CPU (a `device_name` from [`select_device`] starting with `cpu`), as many
    /// tiles as hold [`DEFAULT_CPU_BATCH_VOXELS`], at most [`DEFAULT_GPU_BATCH`].
    /// Either way no more than the device holds ([`Detector::max_batch`]).
    pub fn default_batch_size(&self, device_name: &str) -> usize {
        let patch = self.preprocess.patch.size_vox;
        let wanted = if device_name.starts_with("cpu") {
            let voxels: usize = patch.iter().product();
            (DEFAULT_CPU_BATCH_VOXELS / voxels.max(1)).clamp(1, DEFAULT_GPU_BATCH)
        } else {
            DEFAULT_GPU_BATCH
        };
        wanted.min(self.max_batch(patch).unwrap_or(wanted)).max(1)
    }

    /// The most patches of `patch_vox` one pass can take on this detector's device: its
    /// largest tensor ([`DetectorConfig::largest_tensor_per_patch`] per patch, float32)
    /// within [`max_tensor_bytes`]. `None` where the device sets no such limit. Inference
    /// ([`Detector::candidates`]) runs smaller batches than asked when it must; training
    /// accumulates gradients over micro-batches of at most this many.
    pub fn max_batch(&self, patch_vox: [usize; 3]) -> Option<usize> {
        let per_patch = bytes_per_patch(&self.config, patch_vox);
        max_tensor_bytes(&self.device).map(|limit| (limit / per_patch) as usize)
    }

    /// The last step of `--device auto`: a detector whose device cannot hold even one of
    /// its patches (a GPU with small buffers; see [`Detector::max_batch`]) moved to the
    /// CPU, with the CPU's device name; otherwise itself and `device_name`.
    pub fn or_cpu_if_unfit(self, device_name: String) -> Result<(Detector, String)> {
        if self.max_batch(self.preprocess.patch.size_vox) != Some(0) {
            return Ok((self, device_name));
        }
        let (cpu, cpu_name) = select_device(DeviceChoice::Cpu)?;
        tracing::info!(
            "{device_name} cannot hold one {:?} patch of this network; running on {cpu_name}",
            self.preprocess.patch.size_vox
        );
        Ok((
            Detector {
                net: burn::module::Module::fork(self.net, &cpu),
                device: cpu,
                ..self
            },
            cpu_name,
        ))
    }

    /// `wanted` patches of `patch_vox` per pass, or fewer when the device holds fewer
    /// ([`Detector::max_batch`]); [`Error::Device`] when it does not hold even one.
    pub(crate) fn fit_batch(&self, wanted: usize, patch_vox: [usize; 3]) -> Result<usize> {
        match self.max_batch(patch_vox) {
            Some(max) if wanted > max => {
                self.check_batch(1, patch_vox)?;
                Ok(max)
            }
            _ => Ok(wanted),
        }
    }

    /// [`Error::Device`] when `batch` patches of `patch_vox` do not fit the device.
    pub(crate) fn check_batch(&self, batch: usize, patch_vox: [usize; 3]) -> Result<()> {
        check_patches_fit(&self.device, &self.config, batch, patch_vox)
    }

    /// This detector's configs and device with another network of the same shape.
    pub(crate) fn with_net(&self, net: DetectorNet) -> Detector {
        Detector {
            net,
            ..self.clone()
        }
    }

    /// Runs the network on `batch` patches of `patch_vox` given as one `(B, 1, D, H, W)`
    /// buffer; returns the output map `(B, 5A, D/4, H/4, W/4)` as one buffer.
    pub fn forward_batch(
        &self,
        input: Vec<f32>,
        batch: usize,
        patch_vox: [usize; 3],
    ) -> Result<Vec<f32>> {
        let [d, h, w] = patch_vox;
        if input.len() != batch * d * h * w {
            return Err(Error::InvalidArgument(format!(
                "input holds {} values, not {batch} x {d} x {h} x {w}",
                input.len()
            )));
        }
        self.check_batch(batch, patch_vox)?;
        let x = Tensor::<5>::from_data(TensorData::new(input, [batch, 1, d, h, w]), &self.device);
        self.net
            .forward(x)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Device(format!("reading the network's output: {e:?}")))
    }

    /// [`Detector::forward_batch`] under test-time `flips`: each pass runs the patches
    /// mirrored, its output map is mirrored back (cells reversed, the flipped axes' centre
    /// offsets negated) and the maps are averaged. [`Flips::None`] is `forward_batch`.
    pub fn forward_flips(
        &self,
        input: Vec<f32>,
        batch: usize,
        patch_vox: [usize; 3],
        flips: Flips,
    ) -> Result<Vec<f32>> {
        use ndarray::{Array5, ArrayView4, Axis};
        let passes = flips.passes();
        if passes.len() == 1 {
            return self.forward_batch(input, batch, patch_vox);
        }
        let [d, h, w] = patch_vox;
        let source = ArrayView4::from_shape((batch, d, h, w), &input).map_err(|_| {
            Error::InvalidArgument(format!(
                "input holds {} values, not {batch} x {d} x {h} x {w}",
                input.len()
            ))
        })?;
        let [oz, oy, ox] = self.config.head.output_shape(patch_vox)?;
        let channels = self.config.head.channels();
        let out_dims = (batch, channels, oz, oy, ox);
        let mut sum = Array5::<f32>::zeros(out_dims);
        for axes in &passes {
            let mut view = source.view();
            for (a, _) in axes.iter().enumerate().filter(|(_, f)| **f) {
                view.invert_axis(Axis(a + 1));
            }
            let output = self.forward_batch(view.iter().copied().collect(), batch, patch_vox)?;
            let mut map = Array5::from_shape_vec(out_dims, output)
                .map_err(|e| Error::Device(format!("the network's output: {e}")))?;
            for (a, _) in axes.iter().enumerate().filter(|(_, f)| **f) {
                map.invert_axis(Axis(a + 2));
            }
            for c in 0..channels {
                // Channels 1 to 3 of an anchor are the centre offsets (dz, dy, dx).
                let k = c % CHANNELS_PER_ANCHOR;
                let sign = if (1..=3).contains(&k) && axes[k - 1] {
                    -1.0
                } else {
                    1.0
                };
                sum.index_axis_mut(Axis(1), c)
                    .scaled_add(sign, &map.index_axis(Axis(1), c));
            }
        }
        sum /= passes.len() as f32;
        Ok(sum.iter().copied().collect())
    }

    /// Candidates of a preprocessed scan: its tiles cut in batches of `batch_size`, run
    /// through the network (under `decode.flips`) and decoded (probability at least
    /// `decode.min_probability`; the `decode.max_candidates` most probable, in no
    /// particular order). Memory is bounded by the batch and `max_candidates`. The tiles
    /// are not held to [`Limits`]: [`Detector::detect`] does that first. `progress(done, total)`
    /// is called after each batch.
    pub fn candidates(
        &self,
        pre: &Preprocessed,
        batch_size: usize,
        decode: &DecodeConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Candidate>> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        if decode.max_candidates == 0 {
            return Err(Error::InvalidArgument(
                "max_candidates must be at least 1".into(),
            ));
        }
        let patch = self.preprocess.patch.size_vox;
        let fitted = self.fit_batch(batch_size, patch)?;
        if fitted < batch_size {
            tracing::warn!(
                "batches of {batch_size} patches do not fit this device's buffers: {fitted} per pass"
            );
        }
        let batch_size = fitted;
        let grid =
            crate::preprocess::PatchGrid::new(pre.crop, patch, self.preprocess.patch.overlap_vox)?;
        let offsets: Vec<[i64; 3]> = grid.offsets().collect();
        let out_shape = self.config.head.output_shape(patch)?;
        let channels = self.config.head.channels();
        let per_patch_in = patch.iter().product::<usize>();
        let per_patch_out = channels * out_shape.iter().product::<usize>();
        let mut candidates = Vec::new();
        for (done, chunk) in offsets.chunks(batch_size).enumerate() {
            let mut input = vec![0f32; chunk.len() * per_patch_in];
            for (k, o) in chunk.iter().enumerate() {
                let view = ndarray::ArrayViewMut3::from_shape(
                    patch,
                    &mut input[k * per_patch_in..(k + 1) * per_patch_in],
                )
                .map_err(|e| Error::InvalidArgument(format!("patch buffer: {e}")))?;
                pre.patch_into(*o, view);
            }
            let output = self.forward_flips(input, chunk.len(), patch, decode.flips)?;
            for (k, o) in chunk.iter().enumerate() {
                let map = ndarray::ArrayView4::from_shape(
                    (channels, out_shape[0], out_shape[1], out_shape[2]),
                    &output[k * per_patch_out..(k + 1) * per_patch_out],
                )
                .map_err(|e| Error::InvalidArgument(format!("output buffer: {e}")))?;
                decode_patch(
                    map,
                    &self.config.head,
                    pre.geometry().spacing_mm,
                    *o,
                    decode.min_probability,
                    &mut candidates,
                )?;
                // Held to the most probable `max_candidates`, cut when twice that, so the
                // cost stays linear.
                if candidates.len() > decode.max_candidates.saturating_mul(2) {
                    crate::detect::keep_most_probable(&mut candidates, decode.max_candidates);
                }
            }
            progress(
                (done * batch_size + chunk.len()).min(offsets.len()),
                offsets.len(),
            );
        }
        crate::detect::keep_most_probable(&mut candidates, decode.max_candidates);
        Ok(candidates)
    }

    /// Writes the model file (see the module docs); an existing file is replaced.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
        let path = path.as_ref();
        let to_json = |v: std::result::Result<String, serde_json::Error>| {
            v.map_err(|e| model_error(path, format!("config to JSON: {e}")))
        };
        let mut store = SafetensorsStore::from_file(path)
            .with_to_adapter(BurnToPyTorchAdapter)
            .skip_enum_variants(true)
            .overwrite(true)
            .metadata("lungcad_model_format", MODEL_FORMAT)
            .metadata(
                "detector_config",
                to_json(serde_json::to_string(&self.config))?,
            )
            .metadata(
                "preprocess_config",
                to_json(serde_json::to_string(&self.preprocess))?,
            );
        self.net
            .save_into(&mut store)
            .map_err(|e| model_error(path, format!("writing: {e}")))
    }

    /// Reads a model file onto `device`. A file that is not a lungcad model, of another
    /// format version, with configs that do not parse, or whose tensors are missing, of the
    /// wrong shape or corrupt, is an [`Error::Model`] naming the file.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        Detector::from_bytes(read_model_file(path)?, path, device)
    }

    /// [`Detector::load`] from the bytes of a model file; `origin` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, origin: &Path, device: &Device) -> Result<Self> {
        use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
        let path = origin;
        let meta = safetensors_metadata(&bytes, path)?;
        let format = meta.get("lungcad_model_format").ok_or_else(|| {
            model_error(
                path,
                "not a lungcad model (no lungcad_model_format in its metadata)",
            )
        })?;
        if format != MODEL_FORMAT {
            return Err(model_error(
                path,
                format!("model format {format}, this build reads format {MODEL_FORMAT}"),
            ));
        }
        let parse = |key: &str| {
            meta.get(key)
                .ok_or_else(|| model_error(path, format!("no {key} in its metadata")))
        };
        let config: DetectorConfig = serde_json::from_str(parse("detector_config")?)
            .map_err(|e| model_error(path, format!("detector_config: {e}")))?;
        let preprocess: PreprocessConfig = serde_json::from_str(parse("preprocess_config")?)
            .map_err(|e| model_error(path, format!("preprocess_config: {e}")))?;
        config
            .validate()
            .map_err(|e| model_error(path, format!("its configs: {e}")))?;
        check_file_holds(config.stored_values(), &bytes, path)?;
        let mut detector = Detector::new(config, preprocess, device, 0)
            .map_err(|e| model_error(path, format!("its configs: {e}")))?;
        let mut store =
            SafetensorsStore::from_bytes(Some(bytes)).with_from_adapter(PyTorchToBurnAdapter);
        let applied = detector
            .net
            .load_from(&mut store)
            .map_err(|e| model_error(path, format!("reading weights: {e}")))?;
        if !applied.errors.is_empty() || !applied.missing.is_empty() {
            return Err(model_error(
                path,
                format!(
                    "weights do not fit the network: {} missing ({}), {} errors ({})",
                    applied.missing.len(),
                    first_three(&applied.missing),
                    applied.errors.len(),
                    first_three(&applied.errors),
                ),
            ));
        }
        Ok(detector)
    }

    /// The model shipped inside lungcad ([`SHIPPED_MODEL`]), on `device`.
    pub fn shipped(device: &Device) -> Result<Self> {
        Detector::from_bytes(
            SHIPPED_MODEL.to_vec(),
            Path::new(SHIPPED_MODEL_NAME),
            device,
        )
    }

    /// How many tiles one pass may take within `limits`' tensor bytes (at least 1); an
    /// [`Error::Limit`] when one tile's largest tensor is past them. It depends on the
    /// model only, so a tool can check it before reading any scan.
    pub fn tiles_within(&self, limits: &Limits) -> Result<usize> {
        let per_tile = bytes_per_patch(&self.config, self.preprocess.patch.size_vox);
        limits.check_tensor_bytes(per_tile)?;
        Ok(usize::try_from(limits.max_tensor_bytes / per_tile).unwrap_or(usize::MAX))
    }

    /// Finds the nodules of a CT: preprocesses it with this model's settings (the volume is
    /// dropped once resampled), runs the network over the lung tiles in batches of
    /// `batch_size` (memory is bounded by the batch), decodes and applies NMS. The
    /// resampled volume is held to `limits`' voxel count, the tiles to its tile count and
    /// coverage ([`Limits::check_tiles`]) and one tile's largest tensor to its tensor
    /// bytes (the batch is cut to hold it), before the network runs. Detections
    /// are in world millimetres, most probable first. `progress(done, total)` is called
    /// after each batch of tiles.
    pub fn detect(
        &self,
        volume: Volume,
        batch_size: usize,
        decode: &DecodeConfig,
        limits: &Limits,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DetectionRun> {
        let t0 = Instant::now();
        let pre = crate::preprocess::preprocess_owned(volume, &self.preprocess, limits)?;
        let t1 = Instant::now();
        // The model file sets the tiles' size and overlap: their count and coverage are
        // held to the limits before the network runs.
        let grid = pre.tiles()?;
        grid.check_limits(limits)?;
        let tiles = grid.len();
        // The widths and the tile size set the largest tensor: one tile's must be within
        // the limit, and the batch is cut to hold it.
        let most = self.tiles_within(limits)?;
        if batch_size > most {
            tracing::warn!(
                "batches of {batch_size} tiles make a tensor larger than the limit of {} bytes: {most} per pass",
                limits.max_tensor_bytes
            );
        }
        let batch_size = batch_size.min(most);
        let found = self.candidates(&pre, batch_size, decode, progress)?;
        // What `candidates` ran: cut to the device's buffers too.
        let batch_size = self.fit_batch(batch_size, self.preprocess.patch.size_vox)?;
        let candidates = found.len();
        let detections = crate::detect::detections(found, pre.geometry(), decode);
        Ok(DetectionRun {
            detections,
            tiles,
            batch_size,
            candidates,
            preprocess_s: (t1 - t0).as_secs_f64(),
            network_s: t1.elapsed().as_secs_f64(),
            preprocessed: pre,
        })
    }
}

/// The model compiled into lungcad: trained on synthetic phantoms only (see
/// `models/phantom-v2/README.md`, its model card). It is what `lungcad demo` and
/// `lungcad detect` without `--model` run. It has not been trained on real CT.
pub const SHIPPED_MODEL: &[u8] = include_bytes!("../../models/phantom-v2/model.safetensors");
/// How errors name [`SHIPPED_MODEL`].
pub const SHIPPED_MODEL_NAME: &str = "<shipped model phantom-v2>";

/// Default tiles per forward pass on a GPU.
pub const DEFAULT_GPU_BATCH: usize = 32;
/// Voxels per forward pass on the CPU by default: the CPU backend is as fast per tile at
/// batch 1 as at 8 (docs/PERFORMANCE.md), and each 128³ tile holds about 0.6 GB of
/// activations.
pub const DEFAULT_CPU_BATCH_VOXELS: usize = 4 * 128 * 128 * 128;

/// Largest model file [`Detector::load`] reads (2 GiB).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Most values (parameters and batch-norm statistics) a network may have: as many as a
/// model file of [`MAX_MODEL_BYTES`] holds in float32 (536,870,912; the bundle's RetinaNet
/// has 20.9 M). A config past it is refused before anything is allocated.
pub const MAX_MODEL_VALUES: u64 = MAX_MODEL_BYTES / 4;

/// Why a network of `values` values (a count that may stop early or saturate, hence "at
/// least") is refused, if it has more than [`MAX_MODEL_VALUES`].
fn too_many_values(values: u64) -> Option<String> {
    (values > MAX_MODEL_VALUES).then(|| {
        format!(
            "the network would have at least {values} values (parameters and batch-norm \
             statistics), more than the {MAX_MODEL_VALUES} a model file may hold"
        )
    })
}

/// Refuses to build, from a model file's config, a network of more values than the file's
/// tensors hold (see [`safetensors_values`]): such a file cannot fill it, and building it
/// first would let a small file claim any amount of memory.
fn check_file_holds(needed: u64, bytes: &[u8], origin: &Path) -> Result<()> {
    let held = safetensors_values(bytes, origin)?;
    if needed > held {
        return Err(model_error(
            origin,
            format!(
                "its config describes a network of {needed} values (parameters and \
                 batch-norm statistics) and its tensors hold {held}"
            ),
        ));
    }
    Ok(())
}

/// What [`Detector::detect`] found in one CT, and what it took.
#[derive(Debug, Clone)]
pub struct DetectionRun {
    /// Most probable first, world millimetres.
    pub detections: Vec<Detection>,
    /// The preprocessed scan the network saw.
    pub preprocessed: Preprocessed,
    /// Tiles run through the network.
    pub tiles: usize,
    /// Tiles per pass, as run: the one asked for, cut to `Limits::max_tensor_bytes`
    /// and to the device's buffers.
    pub batch_size: usize,
    /// Candidates held for NMS: those decoded, at most `DecodeConfig::max_candidates`.
    pub candidates: usize,
    /// Seconds spent preprocessing (resample, lung mask, crop).
    pub preprocess_s: f64,
    /// Seconds spent in the network, decoding and NMS.
    pub network_s: f64,
}

/// Whether a model file's bytes hold a MONAI RetinaNet (`lungcad import-monai`) rather than
/// a lungcad network.
pub fn is_monai_model(bytes: &[u8], origin: &Path) -> Result<bool> {
    let meta = safetensors_metadata(bytes, origin)?;
    Ok(meta.get("architecture").map(String::as_str) == Some(monai::MONAI_RETINANET))
}

/// The bytes of a model file, refused past [`MAX_MODEL_BYTES`].
pub fn read_model_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > MAX_MODEL_BYTES {
        return Err(model_error(
            path,
            format!("{len} bytes, more than the {MAX_MODEL_BYTES} a model file may have"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_MODEL_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// The first three items of a list, for an error message.
fn first_three<T: std::fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(3).map(|m| format!("{m:?}")).collect();
    shown.join(", ")
}

/// A safetensors file's header (`__metadata__` included) and where its data starts;
/// `origin` names the file in errors.
pub(crate) fn safetensors_header(
    bytes: &[u8],
    origin: &Path,
) -> Result<(serde_json::Map<String, serde_json::Value>, usize)> {
    let path = origin;
    let file_len = bytes.len() as u64;
    let len: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            model_error(
                path,
                "not a safetensors file (shorter than its 8-byte header length)",
            )
        })?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || n + 8 > file_len {
        return Err(model_error(
            path,
            format!("not a safetensors file (header length {n} for a file of {file_len} bytes)"),
        ));
    }
    let end = 8 + n as usize;
    let header = serde_json::from_slice(&bytes[8..end])
        .map_err(|e| model_error(path, format!("safetensors header is not JSON: {e}")))?;
    Ok((header, end))
}

/// How many values the tensors of a safetensors file hold (the products of their shapes),
/// each tensor checked to lie in the file, its bytes exactly its values times its dtype's
/// size (at least a byte per value for a dtype not known here), and the tensors' bytes
/// together no more than the file's data, so the count is at most the file's length. A
/// tensor entry that is not an object with a `shape` and `data_offsets`, or that breaks
/// these rules, is an [`Error::Model`].
pub(crate) fn safetensors_values(bytes: &[u8], origin: &Path) -> Result<u64> {
    let (header, start) = safetensors_header(bytes, origin)?;
    let data_len = (bytes.len() - start) as u64;
    let mut total = 0u64;
    let mut spans = 0u64;
    for (name, entry) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let bad = || model_error(origin, format!("tensor {name:?}: not a safetensors entry"));
        let numbers = |key: &str| -> Result<Vec<u64>> {
            entry
                .get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(bad)?
                .iter()
                .map(|n| n.as_u64().ok_or_else(bad))
                .collect()
        };
        let shape = numbers("shape")?;
        let (begin, end) = match numbers("data_offsets")?[..] {
            [b, e] if b <= e && e <= data_len => (b, e),
            _ => {
                return Err(model_error(
                    origin,
                    format!("tensor {name:?}: its data lies outside the file"),
                ))
            }
        };
        let values = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let size = match entry.get("dtype").and_then(|d| d.as_str()) {
            Some("F64" | "I64" | "U64") => Some(8),
            Some("F32" | "I32" | "U32") => Some(4),
            Some("F16" | "BF16" | "I16" | "U16") => Some(2),
            Some("F8_E5M2" | "F8_E4M3" | "I8" | "U8" | "BOOL") => Some(1),
            _ => None,
        };
        let fits = |n: u64| match size {
            Some(size) => n.checked_mul(size) == Some(end - begin),
            None => n <= end - begin,
        };
        match values {
            Some(n) if fits(n) => {
                total += n;
                spans += end - begin;
            }
            _ => {
                return Err(model_error(
                    origin,
                    format!(
                        "tensor {name:?}: shape {shape:?} in {} bytes of data",
                        end - begin
                    ),
                ))
            }
        }
    }
    if spans > data_len {
        return Err(model_error(
            origin,
            format!("its tensors claim {spans} bytes of data and the file has {data_len}"),
        ));
    }
    Ok(total)
}

/// The `__metadata__` map of a safetensors file's header; `origin` names the file in errors.
pub fn safetensors_metadata(
    bytes: &[u8],
    origin: &Path,
) -> Result<std::collections::HashMap<String, String>> {
    let (header, _) = safetensors_header(bytes, origin)?;
    let mut out = std::collections::HashMap::new();
    if let Some(m) = header.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in m {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of `entries` (name, header JSON) with `data` bytes after the header.
    fn file(entries: &str, data: usize) -> Vec<u8> {
        let header = format!("{{{entries}}}");
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + data, 0);
        out
    }

    #[test]
    fn safetensors_values_counts_only_what_the_file_can_hold() {
        let p = Path::new("m.safetensors");
        let ok = file(
            r#""a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},
               "b":{"dtype":"U8","shape":[4],"data_offsets":[24,28]},
               "e":{"dtype":"F16","shape":[0,5],"data_offsets":[28,28]},
               "__metadata__":{"k":"v"}"#,
            28,
        );
        assert_eq!(safetensors_values(&ok, p).unwrap(), 10);
        let refused = [
            // More values than bytes.
            r#""a":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,24]}"#,
            r#""a":{"dtype":"X9","shape":[25],"data_offsets":[0,24]}"#,
            // Fewer or more bytes than the dtype's size times the values.
            r#""a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}"#,
            r#""a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,24]}"#,
            // A shape whose product overflows.
            r#""a":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,24]}"#,
            // Data past the end of the file, or backwards.
            r#""a":{"dtype":"F32","shape":[2],"data_offsets":[0,4096]}"#,
            r#""a":{"dtype":"F32","shape":[2],"data_offsets":[24,8]}"#,
            // Tensors that share the same bytes.
            r#""a":{"dtype":"U8","shape":[28],"data_offsets":[0,28]},
               "b":{"dtype":"U8","shape":[28],"data_offsets":[0,28]}"#,
            // Not an entry.
            r#""a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}"#,
            r#""a":7"#,
        ];
        for entries in refused {
            let e = safetensors_values(&file(entries, 28), p).unwrap_err();
            assert!(matches!(e, Error::Model { .. }), "{entries}: {e}");
            println!("{e}");
        }
    }
}
