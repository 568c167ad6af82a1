//! Preprocessing through the public API, cross-checked against SimpleITK when installed.

mod common;

use lungcad::preprocess::{resample, Interpolation};
use lungcad::{load, save, Geometry, Limits, LoadConfig, Volume};
use std::path::Path;
use std::process::Command;

/// Mean and max absolute HU difference between lungcad's and SimpleITK's resampling of
/// `v` to `spacing`, over voxels inside both results.
fn compare_with_sitk(python: &str, v: &Volume, spacing: [f64; 3], dir: &Path) -> (f64, i32) {
    let src = dir.join("in.mha");
    let dst = dir.join("sitk.mha");
    save(v, &src).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/scripts/resample_sitk.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(&src)
        .arg(&dst)
        .args(spacing.map(|s| s.to_string()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sitk = load(&dst, &LoadConfig::default()).unwrap();
    let ours = resample(v, spacing, Interpolation::Linear, -1024, &Limits::default()).unwrap();
    assert_eq!(ours.shape(), sitk.shape());
    for k in 0..3 {
        assert!((ours.geometry.origin_mm[k] - sitk.geometry.origin_mm[k]).abs() < 1e-6);
        assert!((ours.geometry.spacing_mm[k] - sitk.geometry.spacing_mm[k]).abs() < 1e-9);
    }
    let (mut sum, mut n, mut max) = (0i64, 0i64, 0i32);
    for (a, b) in ours.hu.iter().zip(sitk.hu.iter()) {
        let d = (*a as i32 - *b as i32).abs();
        if *a != -1024 || *b != -1024 {
            sum += d as i64;
            n += 1;
            max = max.max(d);
        }
    }
    (sum as f64 / n.max(1) as f64, max)
}

#[test]
fn resample_matches_simpleitk_on_an_oblique_anisotropic_volume() {
    let Some(python) = common::python_with("SimpleITK") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (s, c) = (20f64.to_radians().sin(), 20f64.to_radians().cos());
    let g = Geometry {
        spacing_mm: [2.5, 0.7, 0.8],
        origin_mm: [-30.0, 12.5, 100.0],
        direction: [[0.0, 0.0, 1.0], [-s, c, 0.0], [c, s, 0.0]],
    };
    let hu = ndarray::Array3::from_shape_fn((9, 23, 21), |(z, y, x)| {
        (((z * 37 + y * 11 + x * 5) % 400) as i16) - 1000 + ((x * y) % 90) as i16 * 7
    });
    let v = Volume::new(hu, g).unwrap();
    let (mean, max) = compare_with_sitk(&python, &v, [1.0, 1.0, 1.0], tmp.path());
    println!("oblique: mean |diff| {mean:.4} HU, max {max}");
    assert!(mean < 0.5 && max <= 1, "mean {mean} max {max}");
}

#[test]
fn resample_lidc_idri_0001_matches_simpleitk() {
    let Some(dir) = common::lidc_0001() else {
        return;
    };
    let Some(python) = common::python_with("SimpleITK") else {
        return;
    };
    let v = load(&dir, &LoadConfig::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (mean, max) = compare_with_sitk(&python, &v, [1.0, 1.0, 1.0], tmp.path());
    println!("LIDC-IDRI-0001 to 1 mm: mean |diff| {mean:.4} HU, max {max}");
    assert!(mean < 1.0, "mean {mean}");
    // the LUNA16 nodule centre keeps soft-tissue HU after resampling
    let r = resample(
        &v,
        [1.0, 1.0, 1.0],
        Interpolation::Linear,
        -1024,
        &Limits::default(),
    )
    .unwrap();
    let hu = r.hu_at_world(common::LIDC_0001_NODULE.0).unwrap();
    assert!((-300..200).contains(&hu), "{hu}");
}
