//! Preprocessing through the public API, cross-checked against SimpleITK when installed.

mod common;

use lungcad::preprocess::{
    lung_mask, preprocess, resample, Interpolation, LungMaskConfig, PatchSampler, PreprocessConfig,
    StitchMode, Stitcher,
};
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

/// An oblique, anisotropic grid for the phantom: 2.5 mm slices, 1.6 x 1.4 mm pixels,
/// rotated 10 degrees in-plane.
fn phantom_grid() -> (Geometry, [usize; 3]) {
    let (s, c) = (10f64.to_radians().sin(), 10f64.to_radians().cos());
    let g = Geometry {
        spacing_mm: [2.5, 1.6, 1.4],
        origin_mm: [-180.0, -140.0, -125.0],
        direction: [[0.0, 0.0, 1.0], [-s, c, 0.0], [c, s, 0.0]],
    };
    (g, [100, 160, 240])
}

fn small_config() -> PreprocessConfig {
    let mut c = PreprocessConfig {
        spacing_mm: [2.0; 3],
        ..PreprocessConfig::default()
    };
    c.patch.size_vox = [32; 3];
    c.patch.overlap_vox = [8, 6, 4];
    c
}

#[test]
fn phantom_lung_mask_keeps_the_juxtapleural_nodule_and_the_lungs_volume() {
    let (g, shape) = phantom_grid();
    let (v, nodule, lungs_ml) = common::chest_phantom(g, shape, true);
    let mut cfg = small_config();
    cfg.lung_mask.dilation_mm = 0.0;
    let pre = preprocess(&v, &cfg, &Limits::default()).unwrap();
    assert_eq!(pre.geometry().spacing_mm, [2.0; 3]);
    assert_eq!(pre.geometry().origin_mm, g.origin_mm);
    let lung = &pre.lung;
    println!(
        "phantom: lungs {:.0} mL (analytic {lungs_ml:.0}), {} component(s)",
        lung.lung_volume_ml, lung.components
    );
    assert_eq!(lung.components, 2);
    // Hulls add the nodule and the vessel; partial voxels at 2 mm move the rest a little.
    assert!(
        (lung.lung_volume_ml / lungs_ml - 1.0).abs() < 0.06,
        "{} vs {lungs_ml}",
        lung.lung_volume_ml
    );
    let at = |w: [f64; 3]| {
        let c = pre.geometry().world_to_voxel(w).map(|v| v.round() as usize);
        pre.lung.mask[c]
    };
    assert_eq!(at(nodule), 1, "juxtapleural nodule centre inside the mask");
    // The vessel inside the left lung is filled in; the body outside the lungs is not.
    let vessel = [
        v.voxel_to_world(shape.map(|n| (n as f64 - 1.0) / 2.0))[0] + 75.0,
        v.voxel_to_world(shape.map(|n| (n as f64 - 1.0) / 2.0))[1] + 10.0,
        v.voxel_to_world(shape.map(|n| (n as f64 - 1.0) / 2.0))[2],
    ];
    assert_eq!(at(vessel), 1);
    let centre = v.voxel_to_world(shape.map(|n| (n as f64 - 1.0) / 2.0));
    assert_eq!(at(centre), 0, "mediastinum outside the mask");
    assert_eq!(
        at([centre[0] - 140.0, centre[1], centre[2]]),
        0,
        "chest wall"
    );
    // Dilation grows the mask; the lungs' own volume and box do not change.
    let dilated = lung_mask(&pre.volume, &LungMaskConfig::default()).unwrap();
    assert!(dilated.mask_volume_ml > lung.mask_volume_ml * 1.1);
    assert_eq!(dilated.lung_box, lung.lung_box);
}

#[test]
fn a_volume_without_lungs_is_a_clear_error() {
    let (g, shape) = phantom_grid();
    let (v, _, _) = common::chest_phantom(g, shape, false);
    let e = preprocess(&v, &small_config(), &Limits::default()).unwrap_err();
    assert_eq!(e.category(), "preprocess");
    let msg = e.to_string();
    assert!(
        msg.contains("1.2.826.0.1.3680043.10.1234.1") && msg.contains("no air-filled region"),
        "{msg}"
    );
}

#[test]
fn tiles_cover_the_crop_stitch_back_exactly_and_round_trip_to_world() {
    let (g, shape) = phantom_grid();
    let (v, nodule, _) = common::chest_phantom(g, shape, true);
    let pre = preprocess(&v, &small_config(), &Limits::default()).unwrap();
    let grid = pre.tiles().unwrap();
    let crop = pre.crop;
    assert!(grid.len() > 8, "{} tiles", grid.len());
    let windowed = pre.windowed_crop();
    let mut covered = ndarray::Array3::<u8>::zeros(crop.len());
    let mut max_world_err = 0.0f64;
    for mode in [StitchMode::Mean, StitchMode::Max] {
        let mut st = Stitcher::new(crop, mode);
        for o in grid.offsets() {
            let p = pre.patch(o, [32; 3]).unwrap();
            assert_eq!(p.offset_vox, o);
            st.add(o, p.data.view());
            for (idx, _) in p.data.indexed_iter() {
                let q = [
                    o[0] + idx.0 as i64,
                    o[1] + idx.1 as i64,
                    o[2] + idx.2 as i64,
                ];
                let c = [0, 1, 2].map(|a| q[a] - crop.start[a] as i64);
                if (0..3).all(|a| c[a] >= 0 && c[a] < crop.len()[a] as i64) {
                    covered[[c[0] as usize, c[1] as usize, c[2] as usize]] = 1;
                }
            }
            // Patch voxel -> world -> preprocessed voxel -> world -> original voxel -> world.
            for corner in [[0usize, 0, 0], [31, 0, 17], [31, 31, 31], [5, 29, 3]] {
                let pv = corner.map(|c| c as f64);
                let w = p.geometry.voxel_to_world(pv);
                let back = pre.geometry().world_to_voxel(w);
                for a in 0..3 {
                    assert!((back[a] - (o[a] as f64 + pv[a])).abs() < 1e-6);
                }
                let w2 = pre.geometry().voxel_to_world(back);
                let w3 = v.voxel_to_world(v.world_to_voxel(w2));
                let crop_w = pre
                    .crop_geometry()
                    .voxel_to_world([0, 1, 2].map(|a| back[a] - crop.start[a] as f64));
                for a in 0..3 {
                    max_world_err = max_world_err
                        .max((w3[a] - w[a]).abs())
                        .max((crop_w[a] - w[a]).abs());
                }
                let inside = (0..3).all(|a| {
                    let q = o[a] + corner[a] as i64;
                    q >= 0 && q < pre.shape()[a] as i64
                });
                if inside {
                    let q = [0, 1, 2].map(|a| (o[a] + corner[a] as i64) as usize);
                    assert_eq!(p.data[corner], pre.value(q));
                }
            }
        }
        let stitched = st.finish();
        let diff = stitched
            .iter()
            .zip(windowed.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-6, "{mode:?}: max difference {diff}");
    }
    assert!(covered.iter().all(|&c| c == 1), "tiles cover the crop");
    println!(
        "tiles: {} ({:?}), world round trip error {max_world_err:.2e} mm",
        grid.len(),
        grid.counts()
    );
    assert!(max_world_err < 0.01);

    // A patch centred on the nodule: its centre voxel lies within half a voxel of it and
    // holds the nodule's intensity; the sampler's shifts stay within the jitter.
    let p = pre.patch_at_world(nodule, [32; 3], [0; 3]).unwrap();
    let w = p.geometry.voxel_to_world([16.0; 3]);
    let dist = (0..3)
        .map(|a| (w[a] - nodule[a]).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(dist <= 3f64.sqrt() + 1e-9, "{dist} mm");
    assert!(p.data[[16, 16, 16]] > pre.config.window.normalize(-100.0));
    let mut a = PatchSampler::new(5, [32; 3], 8.0).unwrap();
    let mut b = PatchSampler::new(5, [32; 3], 8.0).unwrap();
    for _ in 0..20 {
        let pa = a.sample(&pre, nodule).unwrap();
        assert_eq!(pa, b.sample(&pre, nodule).unwrap());
        let c = pa.geometry.world_to_voxel(nodule);
        for v in c {
            assert!((v - 16.0).abs() <= 4.0 + 0.5 + 1e-9, "centre at {c:?}");
        }
    }
    // Patches far outside the grid are all padding.
    let far = pre.patch([-100, -100, -100], [8; 3]).unwrap();
    let pad = pre.config.window.normalize(pre.config.patch.pad_hu);
    assert!(far.data.iter().all(|&v| v == pad));
}

/// Checks a real scan's mask: lung volume within 2 to 8 litres, both lungs (at least 500 mL
/// on each side of the lungs' box's middle), and the mask inside the body (its box inside
/// the box of voxels denser than -500 HU, never on the image's edge).
fn check_real_mask(name: &str, v: &Volume) -> lungcad::preprocess::Preprocessed {
    let pre = preprocess(v, &PreprocessConfig::default(), &Limits::default()).unwrap();
    assert_eq!(pre.geometry().spacing_mm, [1.0; 3]);
    let lung = &pre.lung;
    let [nz, ny, nx] = pre.shape();
    let mid_x = (lung.lung_box.start[2] + lung.lung_box.end[2]) / 2;
    let (mut left, mut right) = (0u64, 0u64);
    let mut body = ([usize::MAX; 3], [0usize; 3]);
    for ((z, y, x), &m) in lung.mask.indexed_iter() {
        if m != 0 {
            if x < mid_x {
                left += 1;
            } else {
                right += 1;
            }
            assert!(
                y > 0 && x > 0 && y + 1 < ny && x + 1 < nx,
                "{name}: mask on the edge"
            );
        }
        if pre.volume.hu[(z, y, x)] > -500 {
            for (a, i) in [z, y, x].into_iter().enumerate() {
                body.0[a] = body.0[a].min(i);
                body.1[a] = body.1[a].max(i + 1);
            }
        }
    }
    let ml = |n: u64| n as f64 / 1000.0;
    println!(
        "{name}: lungs {:.0} mL, mask {:.0} mL, {} component(s), halves {:.0} / {:.0} mL (dilated), {nz}x{ny}x{nx}",
        lung.lung_volume_ml,
        lung.mask_volume_ml,
        lung.components,
        ml(left),
        ml(right)
    );
    assert!((2000.0..8000.0).contains(&lung.lung_volume_ml), "{name}");
    assert!(ml(left) > 500.0 && ml(right) > 500.0, "{name}: both lungs");
    for a in 1..3 {
        assert!(lung.lung_box.start[a] >= body.0[a] && lung.lung_box.end[a] <= body.1[a]);
    }
    pre
}

#[test]
fn lidc_idri_0001_preprocesses_with_its_nodule_in_the_lungs() {
    let Some(dir) = common::lidc_0001() else {
        return;
    };
    let v = load(&dir, &LoadConfig::default()).unwrap();
    let pre = check_real_mask("LIDC-IDRI-0001", &v);
    let (nodule, _) = common::LIDC_0001_NODULE;
    let hu = pre.volume.hu_at_world(nodule).unwrap();
    assert!((-300..300).contains(&hu), "nodule centre at {hu} HU");
    let c = pre
        .geometry()
        .world_to_voxel(nodule)
        .map(|v| v.round() as usize);
    assert_eq!(pre.lung.mask[c], 1, "nodule inside the mask");
    assert!(pre.crop.contains(c));
    // Also inside the lungs before dilation.
    let undilated = lung_mask(
        &pre.volume,
        &LungMaskConfig {
            dilation_mm: 0.0,
            ..LungMaskConfig::default()
        },
    )
    .unwrap();
    assert_eq!(undilated.mask[c], 1, "nodule inside the undilated lungs");
}

#[test]
fn lung_pet_ct_dx_thick_slice_series_get_plausible_masks() {
    for name in ["A0001-5mm", "A0002-8mm-B40f"] {
        let Some(dir) = common::data_dir(&format!("lung-pet-ct-dx/{name}")) else {
            return;
        };
        let v = load(&dir, &LoadConfig::default()).unwrap();
        check_real_mask(name, &v);
    }
}
