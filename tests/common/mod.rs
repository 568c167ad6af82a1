#![allow(dead_code)]
//! Shared helpers for integration tests.

use std::path::PathBuf;

/// The shared real-data folder: `$LUNGCAD_DATA`, default `../shared/data` beside the crate.
/// `None` (after printing why) when it is absent, so tests can skip.
pub fn data_dir(what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LUNGCAD_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let p = dir.join(what);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} not found (set LUNGCAD_DATA to the shared data folder)",
            p.display()
        );
        None
    }
}

/// LIDC-IDRI-0001's series folder.
pub fn lidc_0001() -> Option<PathBuf> {
    let root = data_dir("lidc/LIDC-IDRI-0001")?;
    // <study>/<series>/ : the one folder holding .dcm files
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let mut has_dcm = false;
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().map(|x| x == "dcm").unwrap_or(false) {
                has_dcm = true;
            }
        }
        if has_dcm {
            return Some(d);
        }
    }
    Some(root)
}

/// The LUNA16 nodule of LIDC-IDRI-0001 (world x, y, z mm; diameter mm).
pub const LIDC_0001_UID: &str = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192";
pub const LIDC_0001_NODULE: ([f64; 3], f64) = ([56.208, 86.343, -115.868], 23.35);

/// The Python interpreter (`$LUNGCAD_PYTHON`, default `python3`) when it can import every
/// module of `modules` (e.g. "SimpleITK, numpy"); `None`, after printing why, otherwise.
pub fn python_with(modules: &str) -> Option<String> {
    let python = std::env::var("LUNGCAD_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(python)
    } else {
        eprintln!(
            "SKIP: `{python} -c 'import {modules}'` failed \
             (pip install -r tests/requirements.txt, or set LUNGCAD_PYTHON)"
        );
        None
    }
}

/// A small synthetic chest for preprocessing tests, on the grid `geometry`/`shape`:
/// air outside an elliptic body (40 HU, half-axes 150 x 110 mm in x, y), two ellipsoidal
/// lungs (-850 HU, centres x = -70 and +70 mm, half-axes 50 x 70 x 100 mm), a vessel
/// (40 HU, radius 2.5 mm, along z) in the left lung, and a juxtapleural nodule (30 HU,
/// radius 6 mm) touching the right lung's lateral wall, all centred on the grid's middle.
/// Returns the volume, the nodule's world centre and the lungs' volume in mL.
pub fn chest_phantom(
    geometry: lungcad::Geometry,
    shape: [usize; 3],
    with_lungs: bool,
) -> (lungcad::Volume, [f64; 3], f64) {
    let centre = geometry.voxel_to_world(shape.map(|n| (n as f64 - 1.0) / 2.0));
    let nodule = [centre[0] - 116.0, centre[1], centre[2] + 20.0];
    let hu = ndarray::Array3::from_shape_fn(shape, |(z, y, x)| {
        let w = geometry.voxel_to_world([z as f64, y as f64, x as f64]);
        let d = [w[0] - centre[0], w[1] - centre[1], w[2] - centre[2]];
        let noise = ((z * 7919 + y * 104_729 + x * 1_299_709) % 41) as i16 - 20;
        let in_body = (d[0] / 150.0).powi(2) + (d[1] / 110.0).powi(2) < 1.0;
        if !in_body {
            return -1000 + noise;
        }
        let dn = [w[0] - nodule[0], w[1] - nodule[1], w[2] - nodule[2]];
        if dn.iter().map(|v| v * v).sum::<f64>() < 36.0 {
            return 30 + noise;
        }
        if with_lungs {
            for side in [-70.0, 70.0] {
                let e =
                    ((d[0] - side) / 50.0).powi(2) + (d[1] / 70.0).powi(2) + (d[2] / 100.0).powi(2);
                if e < 1.0 {
                    let vessel = (d[0] - 75.0).powi(2) + (d[1] - 10.0).powi(2) < 6.25;
                    return if vessel { 40 + noise } else { -850 + noise };
                }
            }
        }
        40 + noise
    });
    let mut v = lungcad::Volume::new(hu, geometry).expect("valid phantom geometry");
    v.info.series_uid = Some("1.2.826.0.1.3680043.10.1234.1".into());
    let lungs_ml = 2.0 * 4.0 / 3.0 * std::f64::consts::PI * 50.0 * 70.0 * 100.0 / 1000.0;
    (v, nodule, lungs_ml)
}

/// A detector small enough for tests on the CPU: the shape of `tests/fixtures/detector_tiny`.
pub fn tiny_detector_config() -> lungcad::model::DetectorConfig {
    lungcad::model::DetectorConfig {
        channels: [4, 4, 8, 8, 8],
        blocks: [1, 1, 1, 1],
        decoder_channels: 8,
        decoder_blocks: 1,
        ..Default::default()
    }
}

/// Preprocessing at 2 mm with 32³ patches (8 voxels of overlap), for tiny detectors.
pub fn tiny_preprocess_config() -> lungcad::preprocess::PreprocessConfig {
    lungcad::preprocess::PreprocessConfig {
        spacing_mm: [2.0; 3],
        patch: lungcad::preprocess::PatchConfig {
            size_vox: [32; 3],
            overlap_vox: [8; 3],
            pad_hu: 0.0,
        },
        ..Default::default()
    }
}

/// `n` phantom chests (shifted in the world, so each has its own nodule coordinates) as
/// LUNA16-style `<uid>.mhd` files with an `annotations.csv`.
pub fn phantom_dataset(dir: &std::path::Path, n: usize) {
    use lungcad::io::metaimage::{write, WriteOptions};
    let mut csv = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    for i in 0..n {
        let shift = 7.0 * i as f64;
        let g = lungcad::Geometry::new([2.5, 2.0, 2.0], [-150.0 + shift, -120.0 - shift, -100.0]);
        let (v, c, _) = chest_phantom(g, [60, 120, 150], true);
        let uid = format!("1.2.826.0.1.3680043.9.7.{i}");
        write(
            &v,
            &dir.join(format!("{uid}.mhd")),
            &WriteOptions::default(),
        )
        .unwrap();
        csv += &format!("{uid},{},{},{},12\n", c[0], c[1], c[2]);
    }
    std::fs::write(dir.join("annotations.csv"), csv).unwrap();
}

/// The wgpu device, or None (skip) when there is no adapter, unless
/// `LUNGCAD_REQUIRE_WGPU=1`, when that fails the test.
pub fn wgpu_or_skip() -> Option<lungcad::model::Device> {
    match lungcad::model::select_device(lungcad::model::DeviceChoice::Wgpu) {
        Ok((gpu, _)) => Some(gpu),
        Err(e) => {
            if std::env::var("LUNGCAD_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("{e} but LUNGCAD_REQUIRE_WGPU=1 (install mesa-vulkan-drivers)");
            }
            eprintln!("SKIP: {e} (apt-get install mesa-vulkan-drivers for lavapipe)");
            None
        }
    }
}

/// A safetensors file's bytes with one `__metadata__` entry set to `value` (the header
/// rewritten, the tensors' data kept): a model file whose config says something else.
#[allow(dead_code)]
pub fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][key] = serde_json::Value::String(value.to_string());
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}
