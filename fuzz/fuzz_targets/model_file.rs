//! Fuzzes reading model files: a model file is input too (downloaded weights, a vendor's
//! file). The first byte picks the reader: 0 a lungcad model file (`Detector::from_bytes`),
//! 1 a MONAI model file (`MonaiDetector::from_bytes`), 2 and 3 `lungcad import-monai` of a
//! PyTorch checkpoint (`.pt`: a zip of pickles, read by pytorch-reader) or of a safetensors
//! state_dict, into a model file for the small fixture network. The rest is the file. Any
//! input must give a model or an error, never a panic or a memory error. Seeds: the
//! fixtures in tests/fixtures and small checkpoints written by torch (docs/FUZZING.md).
#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;
use lungcad::model::monai::{MonaiDetector, RetinaNetConfig};
use lungcad::model::{select_device, Detector, Device, DeviceChoice};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The fixture network's settings (tests/fixtures/monai, `settings` in its metadata).
const SMALL: &str = r#"{"block":"bottleneck","layers":[2,2,1,1],"block_inplanes":[8,16,32,64],
    "conv1_size":[7,7,7],"conv1_stride":[2,2,1],"returned_layers":[1,2],"fpn_channels":16,
    "num_anchors":3,"num_classes":1}"#;

struct Setup {
    device: Device,
    config: RetinaNetConfig,
    dir: PathBuf,
}

/// The CPU device, the import config and one folder per fuzzing process (in /dev/shm when
/// it exists).
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = scratch::path("model");
        std::fs::create_dir_all(&dir).expect("a folder for the fuzzed files");
        Setup {
            device: select_device(DeviceChoice::Cpu).expect("the CPU device").0,
            config: serde_json::from_str(SMALL).expect("the fixture's settings"),
            dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let s = setup();
    let name = std::path::Path::new("fuzzed.safetensors");
    match kind % 4 {
        0 => {
            let _ = Detector::from_bytes(rest.to_vec(), name, &s.device);
        }
        1 => {
            let _ = MonaiDetector::from_bytes(rest.to_vec(), name, &s.device);
        }
        k => {
            let source = s.dir.join(if k == 2 { "in.pt" } else { "in.safetensors" });
            let out = s.dir.join("out.safetensors");
            if std::fs::write(&source, rest).is_err() {
                return;
            }
            let _ = std::fs::remove_file(&out);
            let _ = MonaiDetector::import(&source, &s.config, &out, &s.device);
            let _ = std::fs::remove_file(&source);
        }
    }
});
