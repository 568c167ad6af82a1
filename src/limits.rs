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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_voxels: 1 << 31,
            max_slices: 8192,
            max_files: 200_000,
            max_file_bytes: 8 << 30,
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
        let voxels = shape
            .iter()
            .try_fold(1u64, |acc, &n| acc.checked_mul(n))
            .unwrap_or(u64::MAX);
        Self::check("voxel count", voxels, self.max_voxels)
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
}
