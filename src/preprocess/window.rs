//! HU windowing: the intensity normalisation the network sees.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Maps HU to `[0, 1]`: `clamp((hu - min_hu) * (1 / (max_hu - min_hu)), 0, 1)`, and sets voxels
/// outside the lung mask to the value of `outside_lung_hu`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// HU mapped to 0. Default -1200.
    pub min_hu: f32,
    /// HU mapped to 1. Default 600.
    pub max_hu: f32,
    /// HU given to every voxel outside the lung mask before windowing; `None` keeps the
    /// image there. Default `Some(0.0)`: everything outside the (dilated) lungs looks like
    /// soft tissue, which is 0.667 after windowing, as in grt123's preprocessing.
    pub outside_lung_hu: Option<f32>,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            min_hu: -1200.0,
            max_hu: 600.0,
            outside_lung_hu: Some(0.0),
        }
    }
}

impl WindowConfig {
    /// Checks the window is finite and not empty.
    pub fn validate(&self) -> Result<()> {
        if !(self.min_hu.is_finite() && self.max_hu.is_finite() && self.min_hu < self.max_hu) {
            return Err(Error::InvalidArgument(format!(
                "HU window [{}, {}] must be finite with min < max",
                self.min_hu, self.max_hu
            )));
        }
        if self.outside_lung_hu.is_some_and(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(
                "outside_lung_hu must be finite".into(),
            ));
        }
        Ok(())
    }

    /// The windowed value of `hu`.
    #[inline]
    pub fn normalize(&self, hu: f32) -> f32 {
        // A product with the reciprocal, which the compiler hoists out of loops over voxels.
        ((hu - self.min_hu) * (1.0 / (self.max_hu - self.min_hu))).clamp(0.0, 1.0)
    }

    /// The windowed value of a voxel, inside the lung mask or not.
    #[inline]
    pub fn value(&self, hu: i16, in_lung: bool) -> f32 {
        match (in_lung, self.outside_lung_hu) {
            (false, Some(outside)) => self.normalize(outside),
            _ => self.normalize(hu as f32),
        }
    }

    /// [`Self::value`] of each voxel of a row, into `out`: the same values, in a loop the
    /// compiler can vectorise. Writes as many values as the shortest of `out`, `hu` and
    /// `in_lung` has; callers pass three of one length.
    #[inline]
    pub fn values_into(
        &self,
        out: &mut [f32],
        hu: impl Iterator<Item = i16>,
        in_lung: impl Iterator<Item = bool>,
    ) {
        let outside = self.outside_lung_hu.map(|v| self.normalize(v));
        for ((v, hu), lung) in out.iter_mut().zip(hu).zip(in_lung) {
            let inside = self.normalize(hu as f32);
            *v = match outside {
                Some(o) if !lung => o,
                _ => inside,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_maps_the_range_and_the_outside() {
        let w = WindowConfig::default();
        assert_eq!(w.normalize(-1200.0), 0.0);
        assert_eq!(w.normalize(600.0), 1.0);
        assert_eq!(w.normalize(-3000.0), 0.0);
        assert_eq!(w.normalize(2000.0), 1.0);
        assert!((w.normalize(-300.0) - 0.5).abs() < 1e-6);
        assert!((w.value(-1000, false) - 2.0 / 3.0).abs() < 1e-6);
        assert!((w.value(-1000, true) - 200.0 / 1800.0).abs() < 1e-6);
        let keep = WindowConfig {
            outside_lung_hu: None,
            ..w
        };
        assert_eq!(keep.value(-300, false), keep.value(-300, true));
        assert!(WindowConfig {
            min_hu: 5.0,
            max_hu: 5.0,
            ..WindowConfig::default()
        }
        .validate()
        .is_err());
    }
}
