//! Preprocessing: resampling to a target spacing (more stages to come: HU windowing, lung
//! mask, patch tiling).

pub mod resample;

pub use resample::{resample, resampled_grid, Interpolation};
