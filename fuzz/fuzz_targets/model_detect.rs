//! Fuzzes running a model file: detection with the settings a model file carries (patch
//! size and overlap, spacing, lung-mask and window settings, anchors; for a MONAI file its
//! preprocessing, sliding window and decoding). The first byte picks the reader: even a
//! lungcad model file (`Detector::from_bytes`), odd a MONAI model file
//! (`MonaiDetector::from_bytes`). The rest is the file. A file that loads runs on a small
//! synthetic chest under tight `Limits`: any input must give detections or an error, never
//! a panic, a memory error or a run past the limits. Seeds: the fixture models
//! (docs/FUZZING.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lungcad::detect::DecodeConfig;
use lungcad::model::monai::MonaiDetector;
use lungcad::model::{select_device, Detector, Device, DeviceChoice};
use lungcad::{Geometry, Limits, Volume};
use ndarray::Array3;
use std::sync::OnceLock;

struct Setup {
    device: Device,
    /// 64 x 80 x 96 mm at 4 mm: a body with two lungs (about 45 ml each) and a nodule; the
    /// fixture model makes 4 tiles of it.
    chest: Volume,
    /// 24 x 40 x 40 mm at 4 mm, for MONAI's pipeline (about 60,000 voxels of 0.7 mm).
    small: Volume,
}

/// A body (40 HU) in air (-1000 HU) with two lungs (-850 HU) and a nodule (40 HU) in one,
/// `shape` (z, y, x) voxels of 4 mm.
fn chest(shape: [usize; 3]) -> Volume {
    let [nz, ny, nx] = shape.map(|n| n as f64);
    let hu = Array3::from_shape_fn(shape, |(z, y, x)| {
        let (z, y, x) = (z as f64 + 0.5, y as f64 + 0.5, x as f64 + 0.5);
        let (cy, cx) = (ny / 2.0, nx / 2.0);
        let body = ((y - cy) / (0.45 * ny)).powi(2) + ((x - cx) / (0.45 * nx)).powi(2) <= 1.0;
        let lung = |side: f64| {
            ((z - nz / 2.0) / (0.45 * nz)).powi(2)
                + ((y - cy) / (0.3 * ny)).powi(2)
                + ((x - cx - side * 0.2 * nx) / (0.17 * nx)).powi(2)
                <= 1.0
        };
        let nodule = (z - nz / 2.0).powi(2) + (y - cy).powi(2) + (x - cx - 0.2 * nx).powi(2) <= 4.0;
        if !body {
            -1000
        } else if nodule {
            40
        } else if lung(-1.0) || lung(1.0) {
            -850
        } else {
            40
        }
    });
    Volume::new(hu, Geometry::new([4.0; 3], [-96.0, -80.0, -40.0])).expect("a valid geometry")
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| Setup {
        device: select_device(DeviceChoice::Cpu).expect("the CPU device").0,
        chest: chest([16, 20, 24]),
        small: chest([6, 10, 10]),
    })
}

/// Tight bounds, so that every run is short: 1 M voxels, 16 tiles, 64 MB tensors.
fn limits() -> Limits {
    Limits {
        max_voxels: 1 << 20,
        max_tiles: 16,
        max_tensor_bytes: 64 << 20,
        ..Limits::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let s = setup();
    let name = std::path::Path::new("fuzzed.safetensors");
    // LUNGCAD_FUZZ_SAY=1 prints what each input led to (to check that seeds reach detection).
    let say = std::env::var_os("LUNGCAD_FUZZ_SAY").is_some();
    if kind % 2 == 0 {
        match Detector::from_bytes(rest.to_vec(), name, &s.device) {
            Ok(d) => {
                let run = d.detect(
                    s.chest.clone(),
                    4,
                    &DecodeConfig::default(),
                    &limits(),
                    &mut |_, _| {},
                );
                if say {
                    match run {
                        Ok(r) => eprintln!(
                            "lungcad: {} tiles, {} detections",
                            r.tiles,
                            r.detections.len()
                        ),
                        Err(e) => eprintln!("lungcad: {e}"),
                    }
                }
            }
            Err(e) if say => eprintln!("lungcad model: {e}"),
            Err(_) => {}
        }
    } else {
        match MonaiDetector::from_bytes(rest.to_vec(), name, &s.device) {
            Ok(d) => {
                let run = d.detect(&s.small, &limits());
                if say {
                    match run {
                        Ok(r) => eprintln!("MONAI: {} detections", r.len()),
                        Err(e) => eprintln!("MONAI: {e}"),
                    }
                }
            }
            Err(e) if say => eprintln!("MONAI model: {e}"),
            Err(_) => {}
        }
    }
});
