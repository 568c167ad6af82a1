//! What a training epoch is made of: patches centred on nodules (jittered, balanced over
//! nodule sizes) and patches centred on random lung voxels, each augmented, with its
//! target map.
//!
//! An epoch is planned up front ([`plan_epoch`]) as a list of [`SampleSpec`]s, each with its
//! own seed drawn from the run's seed and the epoch, so samples can be made on any number
//! of threads, in any order, and still be the same.

use super::augment::{cut_patch, AugmentConfig, PatchTransform};
use super::cache::CachedScan;
use crate::detect::{encode_targets, HeadLayout, TargetConfig, VoxelNodule};
use crate::error::{Error, Result};
use crate::eval::Finding;
use crate::preprocess::{Preprocessed, VoxelBox};
use crate::rng::SplitMix64;
use crate::volume::Geometry;
use ndarray::{Array3, Array4};
use serde::{Deserialize, Serialize};

/// How patches are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Fraction of an epoch's patches centred on a nodule. Default 0.5.
    pub positive_fraction: f64,
    /// A positive patch's centre moves from the nodule's by up to this fraction of the
    /// room left between the nodule and the patch border (per axis, uniform), so the
    /// nodule is seen anywhere in the patch but always whole. Default 0.8.
    pub jitter: f64,
    /// Upper edges (mm) of the nodule-size bins a positive is balanced over: a positive
    /// draws a non-empty bin uniformly, then a nodule in it, so large nodules (rare) are
    /// seen as often as small ones. Default 6, 10, 20 (bins: under 6, 6 to 10, 10 to 20,
    /// 20 mm and over).
    pub size_bins_mm: Vec<f64>,
    pub augment: AugmentConfig,
    pub targets: TargetConfig,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            positive_fraction: 0.5,
            jitter: 0.8,
            size_bins_mm: vec![6.0, 10.0, 20.0],
            augment: AugmentConfig::default(),
            targets: TargetConfig::default(),
        }
    }
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<()> {
        self.augment.validate()?;
        if !(0.0..=1.0).contains(&self.positive_fraction) || !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::InvalidArgument(format!(
                "positive_fraction {} and jitter {} must be within [0, 1]",
                self.positive_fraction, self.jitter
            )));
        }
        if self.size_bins_mm.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(format!(
                "size bins {:?} must increase",
                self.size_bins_mm
            )));
        }
        Ok(())
    }
}

/// Where a training scan's voxels are: in memory, or in the on-disk cache (read region by
/// region; [`super::cache`]). Both give the same patches.
pub enum ScanData {
    Memory(Preprocessed),
    Cached(CachedScan),
}

impl ScanData {
    pub fn geometry(&self) -> &Geometry {
        match self {
            ScanData::Memory(p) => p.geometry(),
            ScanData::Cached(c) => c.geometry(),
        }
    }

    /// The preprocessing the scan went through.
    pub fn config(&self) -> &crate::preprocess::PreprocessConfig {
        match self {
            ScanData::Memory(p) => &p.config,
            ScanData::Cached(c) => c.config(),
        }
    }

    pub fn crop(&self) -> VoxelBox {
        match self {
            ScanData::Memory(p) => p.crop,
            ScanData::Cached(c) => c.crop(),
        }
    }

    fn in_lung(&self, zyx: [usize; 3]) -> Result<bool> {
        match self {
            ScanData::Memory(p) => Ok(p.lung.mask.get(zyx).copied().unwrap_or(0) != 0),
            ScanData::Cached(c) => c.in_lung(zyx),
        }
    }

    fn cut(&self, t: &PatchTransform) -> Result<Array3<f32>> {
        match self {
            ScanData::Memory(p) => cut_patch(p, t),
            ScanData::Cached(c) => c.cut_patch(t),
        }
    }
}

/// A scan ready for sampling: its preprocessed grid and its nodules on that grid.
pub struct TrainScan {
    pub series_uid: String,
    pub data: ScanData,
    /// Nodules in the preprocessed grid's voxels.
    pub nodules: Vec<VoxelNodule>,
}

impl TrainScan {
    /// A scan with its annotated nodules (world millimetres) mapped onto its grid.
    pub fn new(series_uid: impl Into<String>, data: ScanData, nodules: &[Finding]) -> Self {
        let g = data.geometry();
        let nodules = nodules
            .iter()
            .map(|f| VoxelNodule {
                centre_vox: g.world_to_voxel([f.coord_x, f.coord_y, f.coord_z]),
                diameter_mm: f.effective_diameter_mm(),
            })
            .collect();
        TrainScan {
            series_uid: series_uid.into(),
            data,
            nodules,
        }
    }
}

/// One patch of an epoch, before it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleSpec {
    /// Index of the scan.
    pub scan: usize,
    /// The nodule the patch is centred on, or `None` for a random lung voxel.
    pub nodule: Option<usize>,
    /// Seed of this patch's jitter, centre and augmentation.
    pub seed: u64,
}

/// The patches of epoch `epoch`: `patches` of them, `positive_fraction` centred on nodules
/// (size-balanced), the rest on lung voxels of scans drawn uniformly; shuffled. The same
/// `(seed, epoch)` gives the same plan.
pub fn plan_epoch(
    scans: &[TrainScan],
    patches: usize,
    epoch: u64,
    seed: u64,
    config: &SamplerConfig,
) -> Result<Vec<SampleSpec>> {
    config.validate()?;
    if scans.is_empty() {
        return Err(Error::InvalidArgument("no scans to train on".into()));
    }
    let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
    // Nodules by size bin.
    let mut bins: Vec<Vec<(usize, usize)>> = vec![Vec::new(); config.size_bins_mm.len() + 1];
    for (s, scan) in scans.iter().enumerate() {
        for (n, nod) in scan.nodules.iter().enumerate() {
            let bin = config
                .size_bins_mm
                .iter()
                .take_while(|&&edge| nod.diameter_mm >= edge)
                .count();
            bins[bin].push((s, n));
        }
    }
    bins.retain(|b| !b.is_empty());
    let n_pos = if bins.is_empty() {
        0
    } else {
        (patches as f64 * config.positive_fraction).round() as usize
    };
    let mut plan = Vec::with_capacity(patches);
    for i in 0..patches {
        let seed = rng.next_u64();
        if i < n_pos {
            let bin = &bins[rng.below(bins.len())];
            let (scan, nodule) = bin[rng.below(bin.len())];
            plan.push(SampleSpec {
                scan,
                nodule: Some(nodule),
                seed,
            });
        } else {
            plan.push(SampleSpec {
                scan: rng.below(scans.len()),
                nodule: None,
                seed,
            });
        }
    }
    // Fisher-Yates.
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i + 1));
    }
    Ok(plan)
}

/// A made patch: the windowed image and its target map.
#[derive(Debug, Clone)]
pub struct TrainSample {
    pub image: Array3<f32>,
    pub targets: Array4<f32>,
    /// The nodules inside the patch, in its voxels (after augmentation).
    pub nodules: Vec<VoxelNodule>,
}

/// Makes the patch `spec` describes: its centre (the nodule's, jittered, or a random lung
/// voxel's), its augmentation, the image and the targets of every nodule of the scan that
/// falls in it.
pub fn make_sample(
    scan: &TrainScan,
    spec: &SampleSpec,
    size_vox: [usize; 3],
    head: &HeadLayout,
    config: &SamplerConfig,
) -> Result<TrainSample> {
    let mut rng = SplitMix64::new(spec.seed);
    let data = &scan.data;
    let spacing = data.geometry().spacing_mm;
    let transform = {
        // Draw the augmentation first: the jitter room depends on its scale.
        let t = PatchTransform::draw([0.0; 3], size_vox, spacing, &config.augment, &mut rng);
        let centre = match spec.nodule {
            Some(n) => {
                let nod = scan.nodules.get(n).ok_or_else(|| {
                    Error::InvalidArgument(format!("scan {} has no nodule {n}", scan.series_uid))
                })?;
                let mut c = nod.centre_vox;
                for a in 0..3 {
                    // Room, in grid voxels, between the nodule (plus 2 voxels) and the border.
                    let half = (size_vox[a] as f64 - 1.0) / 2.0 / t.scale;
                    let room = (half - nod.diameter_mm / 2.0 / spacing[a] - 2.0).max(0.0);
                    c[a] += config.jitter * room * (2.0 * rng.uniform() - 1.0);
                }
                c
            }
            None => random_lung_voxel(data, &mut rng)?,
        };
        PatchTransform {
            centre_vox: centre,
            ..t
        }
    };
    let image = data.cut(&transform)?;
    let inside: Vec<VoxelNodule> = scan
        .nodules
        .iter()
        .map(|n| transform.nodule_to_patch(n))
        .filter(|n| {
            // Nodules whose centre lies in the patch (others may still touch it: the target
            // encoder ignores or labels cells by overlap).
            (0..3).all(|a| n.centre_vox[a] >= -0.5 && n.centre_vox[a] <= size_vox[a] as f64 - 0.5)
        })
        .collect();
    // Patch voxels keep the grid's spacing (permuted): a scaled patch shows a magnified
    // world, whose nodules have scaled diameters (`nodule_to_patch`).
    let patch_spacing = transform.perm.map(|a| spacing[a]);
    let targets = encode_targets(head, size_vox, patch_spacing, &inside, &config.targets)?;
    Ok(TrainSample {
        image,
        targets,
        nodules: inside,
    })
}

/// A uniformly drawn voxel of the lung mask inside the crop (by rejection; the crop's
/// centre when 1,000 tries find none).
fn random_lung_voxel(data: &ScanData, rng: &mut SplitMix64) -> Result<[f64; 3]> {
    let c = data.crop();
    let size = [0, 1, 2].map(|a| c.end[a].saturating_sub(c.start[a]).max(1));
    for _ in 0..1000 {
        let v = [0, 1, 2].map(|a| c.start[a] + rng.below(size[a]));
        if data.in_lung(v)? {
            return Ok(v.map(|x| x as f64));
        }
    }
    Ok([0, 1, 2].map(|a| c.start[a] as f64 + size[a] as f64 / 2.0))
}

/// Stacks samples' images into one `(B, 1, D, H, W)` buffer.
pub fn stack_images(samples: &[TrainSample]) -> Vec<f32> {
    let mut out = Vec::with_capacity(samples.iter().map(|s| s.image.len()).sum());
    for s in samples {
        out.extend(s.image.iter().copied());
    }
    out
}

/// Makes the batches of `plan` (consecutive chunks of `batch_size` specs) on worker threads,
/// up to `ahead` batches before the consumer, and hands them to `consume` in plan order on
/// the calling thread: the data pipeline runs while the network trains on the previous
/// batch. Samples within a batch are made in parallel (rayon); the result does not depend
/// on the threads (each sample has its own seed). Stops at the first error, from either
/// side.
#[allow(clippy::too_many_arguments)]
pub fn for_each_batch(
    scans: &[TrainScan],
    plan: &[SampleSpec],
    batch_size: usize,
    size_vox: [usize; 3],
    head: &HeadLayout,
    config: &SamplerConfig,
    ahead: usize,
    mut consume: impl FnMut(usize, Vec<TrainSample>) -> Result<()>,
) -> Result<()> {
    use rayon::prelude::*;
    if batch_size == 0 {
        return Err(Error::InvalidArgument(
            "batch size must be at least 1".into(),
        ));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<TrainSample>>>(ahead.max(1));
    std::thread::scope(|s| {
        s.spawn(move || {
            for chunk in plan.chunks(batch_size) {
                let batch: Result<Vec<TrainSample>> = chunk
                    .par_iter()
                    .map(|spec| {
                        let scan = scans.get(spec.scan).ok_or_else(|| {
                            Error::InvalidArgument(format!("no scan {}", spec.scan))
                        })?;
                        make_sample(scan, spec, size_vox, head, config)
                    })
                    .collect();
                let failed = batch.is_err();
                // The consumer hung up (it failed): stop making batches.
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        for (i, batch) in rx.iter().enumerate() {
            consume(i, batch?)?;
        }
        Ok(())
    })
}
