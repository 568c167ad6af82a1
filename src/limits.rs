//! Limits on untrusted input sizes, checked before anything is allocated.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Upper bounds on what lungcad will read from untrusted input. Every bound is checked
/// before the corresponding allocation, so a malicious header cannot make lungcad
/// allocate more than these allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Maximum number of voxels in one volume (default 2^31).
    pub max_voxels: u64,
    /// Maximum number of slices (frames) in one DICOM series (default 8192).
    pub max_slices: u64,
    /// Maximum number of files looked at when scanning a folder (default 200,000).
    pub max_files: u64,
    /// Maximum size in bytes of one input file (default 8 GiB).
    pub max_file_bytes: u64,
    /// Maximum number of network inputs for one scan: the detector's tiles, or the
    /// sliding windows of MONAI's RetinaNet (default 131,072). Model files set the tile
    /// size, so this bounds the network's calls per scan.
    pub max_tiles: u64,
    /// Maximum number of times the tiles (or windows) cover each voxel of what they tile,
    /// on average (default 64: overlaps of three quarters of a tile on every axis). Model
    /// files set the overlap, so this bounds the network's work per scan at this many times
    /// the work of tiling the region once.
    pub max_tile_coverage: u64,
    /// Maximum size in bytes of the largest tensor one forward pass of the network makes
    /// (default 8 GiB): a batch is cut to fit, and one tile (MONAI: one window, or the
    /// whole image) past it is refused; MONAI's sliding window also sums the heads' maps
    /// over the whole image, held to the same bound. Model files set the widths and the
    /// tile size, so this bounds the network's memory to a multiple of it (on the CPU,
    /// `lungcad detect` with lungcad's default network peaked at 2.5 to 4 times its
    /// largest tensor).
    pub max_tensor_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_voxels: 1 << 31,
            max_slices: 8192,
            max_files: 200_000,
            max_file_bytes: 8 << 30,
            max_tiles: 1 << 17,
            max_tile_coverage: 64,
            max_tensor_bytes: 8 << 30,
        }
    }
}

impl Limits {
    /// No limits at all (trusted input only).
    pub fn none() -> Self {
        Limits {
            max_voxels: u64::MAX,
            max_slices: u64::MAX,
            max_files: u64::MAX,
            max_file_bytes: u64::MAX,
            max_tiles: u64::MAX,
            max_tile_coverage: u64::MAX,
            max_tensor_bytes: u64::MAX,
        }
    }

    fn check(what: &'static str, value: u64, limit: u64) -> Result<()> {
        if value > limit {
            Err(Error::Limit { what, value, limit })
        } else {
            Ok(())
        }
    }

    /// Checks a volume shape `(z, y, x)`; the product is computed without overflow.
    pub fn check_shape(&self, shape: [u64; 3]) -> Result<()> {
        self.check_shape_of("voxel count", shape)
    }

    /// [`check_shape`](Self::check_shape), the error naming what the shape is of.
    pub fn check_shape_of(&self, what: &'static str, shape: [u64; 3]) -> Result<()> {
        let voxels = shape
            .iter()
            .try_fold(1u64, |acc, &n| acc.checked_mul(n))
            .unwrap_or(u64::MAX);
        Self::check(what, voxels, self.max_voxels)
    }

    pub fn check_slices(&self, n: u64) -> Result<()> {
        Self::check("slice count", n, self.max_slices)
    }

    pub fn check_files(&self, n: u64) -> Result<()> {
        Self::check("file count", n, self.max_files)
    }

    pub fn check_file_bytes(&self, n: u64) -> Result<()> {
        Self::check("file size in bytes", n, self.max_file_bytes)
    }

    /// Checks the largest tensor a forward pass makes, in bytes.
    pub fn check_tensor_bytes(&self, bytes: u64) -> Result<()> {
        Self::check(
            "largest tensor of the network in bytes",
            bytes,
            self.max_tensor_bytes,
        )
    }

    /// Checks the heads' maps a sliding window sums over the whole image, in bytes (held
    /// to `max_tensor_bytes`).
    pub fn check_map_bytes(&self, bytes: u64) -> Result<()> {
        Self::check(
            "heads' maps over the image in bytes",
            bytes,
            self.max_tensor_bytes,
        )
    }

    /// Checks the network's inputs for one scan before any runs: `tiles` tiles (or sliding
    /// windows) of `tile` voxels per axis over a region of `region` voxels (the axes in
    /// the same order), each axis of the region counted at least one tile long (a shorter
    /// region is padded to a tile).
    /// The coverage is the tiles' voxels over the region's, rounded up.
    pub fn check_tiles(&self, tiles: u64, tile: [u64; 3], region: [u64; 3]) -> Result<()> {
        Self::check("tile count", tiles, self.max_tiles)?;
        let product = |v: [u64; 3]| v.iter().fold(1u128, |p, &n| p.saturating_mul(n as u128));
        let covered = product(tile).saturating_mul(tiles as u128);
        let area = product(std::array::from_fn(|a| region[a].max(tile[a]))).max(1);
        let coverage = u64::try_from(covered.div_ceil(area)).unwrap_or(u64::MAX);
        Self::check(
            "tile coverage (times the tiles cover each voxel, on average)",
            coverage,
            self.max_tile_coverage,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_limit_is_checked_without_overflow() {
        let l = Limits::default();
        assert!(l.check_shape([300, 512, 512]).is_ok());
        assert!(matches!(
            l.check_shape([u64::MAX, 2, 2]),
            Err(Error::Limit {
                what: "voxel count",
                ..
            })
        ));
        assert!(l.check_shape([2048, 1024, 1025]).is_err());
        assert!(Limits::none().check_shape([2048, 1024, 1025]).is_ok());
    }

    #[test]
    fn tiles_are_held_to_their_count_and_coverage() {
        let l = Limits::default();
        let what = |r: Result<()>| match r {
            Err(Error::Limit { what, value, .. }) => Some((what, value)),
            Ok(()) => None,
            Err(e) => panic!("{e}"),
        };
        // 128³ tiles overlapping by 32 over 300 x 300 x 300: 4 per axis.
        assert_eq!(what(l.check_tiles(64, [128; 3], [300; 3])), None);
        // A region shorter than a tile is padded to it: one tile covers it once.
        assert_eq!(what(l.check_tiles(1, [128; 3], [10, 500, 20])), None);
        // Overlaps of 31 on 32-voxel tiles over 40³: 9 per axis, 374 times coverage.
        let (w, v) = what(l.check_tiles(9 * 9 * 9, [32; 3], [40; 3])).unwrap();
        assert!(w.starts_with("tile coverage"), "{w}");
        assert_eq!(v, 374);
        // Exactly the limit passes; one more tile of the region's size is over it.
        assert_eq!(what(l.check_tiles(64, [100; 3], [100; 3])), None);
        assert_eq!(
            what(l.check_tiles(65, [100; 3], [100; 3])),
            Some((
                "tile coverage (times the tiles cover each voxel, on average)",
                65
            ))
        );
        // Single-voxel windows cover each voxel once, but their count is bounded.
        assert_eq!(
            what(l.check_tiles(200 * 200 * 200, [1; 3], [200; 3])),
            Some(("tile count", 8_000_000))
        );
        // No overflow on absurd counts.
        assert!(what(l.check_tiles(u64::MAX, [u64::MAX; 3], [1; 3])).is_some());
        assert!(Limits::none()
            .check_tiles(u64::MAX, [u64::MAX; 3], [1; 3])
            .is_ok());
    }
}
