//! MONAI's RetinaNet in burn against MONAI itself: a small network of the bundle's design
//! with random weights, built and run by MONAI (tests/scripts/make_monai_fixture.py wrote
//! tests/fixtures/monai/), loaded by name and run here on the CPU and on wgpu.

mod common;

use lungcad::model::monai::{HeadOutputs, RetinaNetConfig};
use lungcad::model::{select_device, Device, DeviceChoice};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monai")
}

fn read(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let p = dir.join(name);
    let bytes = std::fs::read(&p).unwrap();
    (p, bytes)
}

fn fixture(name: &str) -> (PathBuf, Vec<u8>) {
    read(&fixtures(), name)
}

/// The float32 tensors of a safetensors file: name to (shape, values).
fn tensors(bytes: &[u8]) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = HashMap::new();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" || t["dtype"] != "F32" {
            continue;
        }
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        let [a, b]: [usize; 2] = serde_json::from_value(t["data_offsets"].clone()).unwrap();
        let values = data[a..b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(name.clone(), (shape, values));
    }
    out
}

/// The fixture's network settings (the script's SETTINGS, in this config's field names).
fn fixture_config(weights: &[u8]) -> RetinaNetConfig {
    let meta = lungcad::model::safetensors_metadata(weights, Path::new("fixture")).unwrap();
    serde_json::from_str(&meta["settings"]).unwrap()
}

type Io = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The fixture network (its state_dict's path and bytes, its config) and a MONAI model
/// file made from it in `dir` (its path and bytes) on `device`.
struct FixtureModel {
    state_dict: PathBuf,
    weights: Vec<u8>,
    config: RetinaNetConfig,
    path: PathBuf,
    bytes: Vec<u8>,
}

fn fixture_model(dir: &Path, device: &Device) -> FixtureModel {
    use lungcad::model::monai::MonaiDetector;
    let (state_dict, weights) = fixture("retinanet_small.safetensors");
    let config = fixture_config(&weights);
    let path = dir.join("m.safetensors");
    MonaiDetector::write_model(&weights, &state_dict, &config, &path, device).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    FixtureModel {
        state_dict,
        weights,
        config,
        path,
        bytes,
    }
}

/// MONAI's network `stem` in `dir` (weights and io), run here on `device`.
fn run_fixture(dir: &Path, stem: &str, device: &Device) -> (HeadOutputs, Io) {
    use burn::prelude::*;
    let (path, weights) = read(dir, &format!("{stem}.safetensors"));
    let cfg = fixture_config(&weights);
    let mut net = cfg.init(device).unwrap();
    net.load_state_dict(weights, &path, &cfg).unwrap();
    let (_, io) = read(dir, &format!("{stem}_io.safetensors"));
    let io = tensors(&io);
    let (shape, x) = io["input"].clone();
    let x = Tensor::<5>::from_data(TensorData::new(x, shape), device);
    (net.forward(x), io)
}

fn run(device: &Device) -> (HeadOutputs, Io) {
    run_fixture(&fixtures(), "retinanet_small", device)
}

fn check(out: &HeadOutputs, io: &Io, tolerance: f32) {
    for (key, maps) in [
        ("classification", &out.classification),
        ("box_regression", &out.box_regression),
    ] {
        assert_eq!(maps.len(), 3, "{key}: three pyramid levels");
        for (i, m) in maps.iter().enumerate() {
            let (shape, expected) = &io[&format!("{key}.{i}")];
            assert_eq!(&m.dims().to_vec(), shape, "{key}.{i} shape");
            let got = m.clone().into_data().try_into_vec::<f32>().unwrap();
            let worst = got
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let scale = expected.iter().map(|v| v.abs()).fold(0f32, f32::max);
            eprintln!("{key}.{i}: max |lungcad - MONAI| {worst:.2e}, outputs up to {scale:.2e}");
            assert!(
                worst < tolerance,
                "{key}.{i}: max |lungcad - MONAI| = {worst} (outputs up to {scale})"
            );
        }
    }
}

#[test]
fn head_outputs_match_monai_on_the_cpu() {
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let (out, io) = run(&cpu);
    check(&out, &io, 1e-4);
}

#[test]
fn head_outputs_match_monai_on_wgpu() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let (out, io) = run(&gpu);
    check(&out, &io, 1e-4);
}

#[test]
fn a_state_dict_that_does_not_fit_is_an_error_naming_the_tensor() {
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let (path, weights) = fixture("retinanet_small.safetensors");
    let good = fixture_config(&weights);
    let load = |cfg: RetinaNetConfig| {
        let mut net = cfg.init(&cpu).unwrap();
        net.load_state_dict(weights.clone(), &path, &cfg)
            .unwrap_err()
            .to_string()
    };
    // Other widths: shapes differ.
    let e = load(RetinaNetConfig {
        fpn_channels: 8,
        ..good.clone()
    });
    assert!(
        e.contains("retinanet_small.safetensors") && e.contains("fit"),
        "{e}"
    );
    // More blocks than the file: the network's extra tensors are missing.
    let mut more = good.clone();
    more.layers[1] += 1;
    let e = load(more);
    assert!(e.contains("missing") && e.contains("body.layer2.2."), "{e}");
    // Fewer layers than the file: its layer2 tensors have no place.
    let e = load(RetinaNetConfig {
        returned_layers: vec![1],
        ..good.clone()
    });
    assert!(
        e.contains("not in the network") && e.contains("body.layer2.0."),
        "{e}"
    );
    // Not safetensors at all.
    let mut net = good.init(&cpu).unwrap();
    let e = net
        .load_state_dict(b"not a state dict".to_vec(), &path, &good)
        .unwrap_err();
    assert!(e.to_string().contains("MONAI state_dict"), "{e}");
}

#[test]
fn the_bundles_network_has_monais_parameter_count() {
    use burn::module::Module;
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let net = RetinaNetConfig::default().init(&cpu).unwrap();
    // torch's count for the bundle's network (ResNet-50 layers 1-2, FPN 256, heads),
    // sum(p.numel() for p in net.parameters()) with MONAI 1.3.2 and 1.6.1: 20,902,741.
    // burn also counts the batch norms' running means and variances (torch's buffers):
    // 2 x (64 + 3 x (64 + 64 + 256) + 256 + 4 x (128 + 128 + 512) + 512) = 10,112.
    assert_eq!(net.num_params(), 20_902_741 + 10_112);
    // What the config counts before building anything (the bound a model file is held to)
    // is what the network holds, for this and other shapes.
    let (_, weights) = fixture("retinanet_small.safetensors");
    let small = fixture_config(&weights);
    let configs = [
        RetinaNetConfig::default(),
        small.clone(),
        RetinaNetConfig {
            block: lungcad::model::monai::BlockKind::Basic,
            layers: [2, 2, 2, 2],
            returned_layers: vec![1, 2, 3],
            ..small.clone()
        },
        RetinaNetConfig {
            in_channels: 2,
            conv1_size: [3, 5, 7],
            num_classes: 2,
            num_anchors: 4,
            head_layers: 2,
            ..small
        },
    ];
    for cfg in configs {
        let net = cfg.init(&cpu).unwrap();
        assert_eq!(cfg.stored_values(), net.num_params() as u64, "{cfg:?}");
    }
}

/// A model file is input: a small file whose config describes a huge network must not make
/// lungcad build it (a 450 kB file with a billion blocks per layer once aborted it).
#[test]
fn a_model_file_whose_config_outgrows_its_tensors_is_refused_before_building() {
    use lungcad::model::monai::MonaiDetector;
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let FixtureModel {
        state_dict: path,
        weights,
        config: cfg,
        bytes,
        ..
    } = fixture_model(dir.path(), &cpu);
    // (what, the config the file claims, what reading the file says, what importing the
    // state_dict with that config says)
    let cases = [
        (
            "wider",
            RetinaNetConfig {
                block_inplanes: [64, 128, 256, 512],
                ..cfg.clone()
            },
            "its tensors hold",
            "do not fit",
        ),
        (
            "a few more blocks",
            RetinaNetConfig {
                layers: [60, 2, 1, 1],
                ..cfg.clone()
            },
            "its tensors hold",
            "missing",
        ),
        (
            "deeper",
            RetinaNetConfig {
                layers: [1_000_000_000, 2, 1, 1],
                ..cfg.clone()
            },
            "blocks per layer",
            "blocks per layer",
        ),
        (
            "deeper heads",
            RetinaNetConfig {
                head_layers: 1_000_000_000,
                ..cfg.clone()
            },
            "head layers",
            "head layers",
        ),
        (
            "many anchors",
            RetinaNetConfig {
                num_anchors: 1 << 40,
                ..cfg.clone()
            },
            "anchors",
            "anchors",
        ),
        (
            "two classes",
            RetinaNetConfig {
                num_classes: 2,
                ..cfg.clone()
            },
            "one class",
            "one class",
        ),
        (
            "many inputs",
            RetinaNetConfig {
                in_channels: usize::MAX / 2,
                ..cfg.clone()
            },
            "a model file may hold",
            "a model file may hold",
        ),
    ];
    for (what, claimed, reading, importing) in cases {
        let json = serde_json::to_string(&claimed).unwrap();
        let p = dir.path().join("claims.safetensors");
        std::fs::write(&p, common::with_metadata(&bytes, "retinanet_config", &json)).unwrap();
        let e = MonaiDetector::from_bytes(std::fs::read(&p).unwrap(), &p, &cpu).unwrap_err();
        println!("{what}: {e}");
        assert_eq!(e.category(), "model", "{what}: {e}");
        assert!(e.to_string().contains(reading), "{what}: {e}");
        // The same config given to `import-monai` for this state_dict.
        let out = dir.path().join("out.safetensors");
        let e = MonaiDetector::write_model(&weights, &path, &claimed, &out, &cpu).unwrap_err();
        println!("{what}, imported: {e}");
        assert!(e.to_string().contains(importing), "{what}: {e}");
        assert!(!out.exists());
    }
    // A state_dict whose tensors claim the same bytes is refused before its tensors are
    // copied out (a float16 file's would be widened to float32, once per claim).
    let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&weights[8..8 + n]).unwrap();
    let first = header["feature_extractor.body.conv1.weight"].clone();
    header["feature_extractor.body.bn1.weight"] = first;
    let text = serde_json::to_vec(&header).unwrap();
    let mut shared = (text.len() as u64).to_le_bytes().to_vec();
    shared.extend_from_slice(&text);
    shared.extend_from_slice(&weights[8 + n..]);
    let out = dir.path().join("out.safetensors");
    let e = MonaiDetector::write_model(&shared, &path, &cfg, &out, &cpu).unwrap_err();
    println!("shared bytes: {e}");
    assert!(e.to_string().contains("claim"), "{e}");
}

/// The bundle's full-size network on a full-size random state_dict from MONAI: 84 MB, so not
/// committed; `python3 tests/scripts/make_monai_fixture.py --full --out DIR` writes it and
/// `LUNGCAD_MONAI_FULL=DIR` runs this test (it skips otherwise).
#[test]
fn the_full_size_network_loads_monais_weights_and_matches_its_outputs() {
    let Ok(dir) = std::env::var("LUNGCAD_MONAI_FULL") else {
        eprintln!("SKIP: LUNGCAD_MONAI_FULL not set (make_monai_fixture.py --full --out DIR)");
        return;
    };
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let (out, io) = run_fixture(Path::new(&dir), "retinanet_full", &cpu);
    check(&out, &io, 1e-4);
}

/// MONAI's whole detector (the bundle's anchors, decoding, selection and NMS), on an image
/// that needs padding, without and with the sliding window: the same boxes and scores.
#[test]
fn detections_match_monais_detector() {
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    detections_match_on(&cpu);
}

#[test]
fn detections_match_monais_detector_on_wgpu() {
    if let Some(gpu) = common::wgpu_or_skip() {
        detections_match_on(&gpu);
    }
}

fn detections_match_on(device: &Device) {
    use lungcad::detect::retina::RetinaDecodeConfig;
    use lungcad::model::monai::SlidingWindowConfig;
    let (path, weights) = fixture("retinanet_small.safetensors");
    let cfg = fixture_config(&weights);
    let mut net = cfg.init(device).unwrap();
    net.load_state_dict(weights, &path, &cfg).unwrap();
    let (_, det) = fixture("retinanet_small_detections.safetensors");
    let det = tensors(&det);
    let (shape, image) = &det["input"];
    let size = [shape[2], shape[3], shape[4]];
    for (window, suffix) in [
        (None, ""),
        (
            Some(SlidingWindowConfig {
                roi_size: [32, 32, 16],
                overlap: 0.25,
            }),
            "_sliding_window",
        ),
    ] {
        let found = net
            .detect_boxes(
                image,
                1,
                size,
                &RetinaDecodeConfig::default(),
                window.as_ref(),
            )
            .unwrap();
        let (bshape, boxes) = &det[&format!("boxes{suffix}")];
        let (_, scores) = &det[&format!("scores{suffix}")];
        assert_eq!(found.len(), bshape[0], "box count");
        let mut worst_box = 0f32;
        let mut worst_score = 0f32;
        for (k, f) in found.iter().enumerate() {
            let expected = &boxes[6 * k..6 * k + 6];
            for d in 0..3 {
                worst_box = worst_box
                    .max((f.min[d] - expected[d]).abs())
                    .max((f.max[d] - expected[3 + d]).abs());
            }
            worst_score = worst_score.max((f.score - scores[k]).abs());
        }
        eprintln!(
        "{suffix}: {} boxes; max |box diff| {worst_box:.2e} voxels, max |score diff| {worst_score:.2e}",
        found.len()
    );
        assert!(
            worst_box < 1e-3 && worst_score < 1e-4,
            "{suffix}: box {worst_box}, score {worst_score}"
        );
    }
}

/// The bundle's preprocessing (orientation to RAS, spacing, intensity) of a small NIfTI
/// scan stored with x and y reversed: the same image and affine as MONAI's transforms.
#[test]
fn preprocessing_matches_monais_transforms() {
    use lungcad::preprocess::monai::{monai_preprocess, MonaiPreprocessConfig};
    let volume = lungcad::load(
        fixtures().join("preprocess_input.nii.gz"),
        &lungcad::LoadConfig::default(),
    )
    .unwrap();
    let image = monai_preprocess(
        &volume,
        &MonaiPreprocessConfig::default(),
        &lungcad::Limits::default(),
    )
    .unwrap();
    let (_, out) = fixture("preprocess_output.safetensors");
    let n = u64::from_le_bytes(out[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&out[8..8 + n]).unwrap();
    let data = &out[8 + n..];
    let [a, b]: [usize; 2] =
        serde_json::from_value(header["affine"]["data_offsets"].clone()).unwrap();
    let affine: Vec<f64> = data[a..b]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let t = tensors(&out);
    let (shape, expected) = &t["image"];
    assert_eq!(&image.size[..], &shape[1..], "size");
    let worst = image
        .values
        .iter()
        .zip(expected)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "preprocessing: {:?}, max |lungcad - MONAI| {worst:.2e}",
        image.size
    );
    assert!(worst < 1e-5, "values differ by {worst}");
    for r in 0..3 {
        for c in 0..4 {
            assert!(
                (image.affine_ras[r][c] - affine[4 * r + c]).abs() < 1e-5,
                "affine[{r}][{c}]: {} vs {}",
                image.affine_ras[r][c],
                affine[4 * r + c]
            );
        }
    }
}

/// A model file's other settings are input too: checked when the file is read, and the
/// sizes they lead to held to the caller's limits before anything is allocated.
#[test]
fn a_model_files_pipeline_settings_are_checked_and_held_to_the_limits() {
    use lungcad::model::monai::MonaiDetector;
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let FixtureModel { bytes, config, .. } = fixture_model(dir.path(), &cpu);
    let p = dir.path().join("changed.safetensors");
    let with = |key: &str, json: &str| {
        std::fs::write(&p, common::with_metadata(&bytes, key, json)).unwrap();
        MonaiDetector::from_bytes(std::fs::read(&p).unwrap(), &p, &cpu).map_err(Box::new)
    };
    let refused = [
        (
            "retina_decode_config",
            r#"{"feature_map_scales":[0.0,2.0,4.0]}"#,
            "feature_map_scales",
        ),
        (
            "retina_decode_config",
            r#"{"feature_map_scales":[1.0,2.0]}"#,
            "one per pyramid level",
        ),
        (
            "retina_decode_config",
            r#"{"base_anchor_shapes":[[6,8,4]]}"#,
            "base_anchor_shapes",
        ),
        (
            "retina_decode_config",
            r#"{"size_divisible":[16,0,8]}"#,
            "size_divisible",
        ),
        (
            "retina_decode_config",
            r#"{"score_thresh":-1.0}"#,
            "score_thresh",
        ),
        (
            "retina_decode_config",
            r#"{"topk_candidates_per_level":1000000}"#,
            "topk",
        ),
        (
            "sliding_window_config",
            r#"{"roi_size":[512,512,192],"overlap":1.0}"#,
            "overlap",
        ),
        (
            "monai_preprocess_config",
            r#"{"pixdim":[0.7,-0.7,1.25]}"#,
            "pixdim",
        ),
    ];
    for (key, json, says) in refused {
        let e = with(key, json)
            .err()
            .unwrap_or_else(|| panic!("{key} {json} was accepted"));
        println!("{key} {json}: {e}");
        assert_eq!(e.category(), "model", "{e}");
        assert!(
            e.to_string().contains(key) && e.to_string().contains(says),
            "{e}"
        );
    }
    // Valid settings whose sizes are past the limits: an error, not an allocation.
    let volume = lungcad::load(
        fixtures().join("preprocess_input.nii.gz"),
        &lungcad::LoadConfig::default(),
    )
    .unwrap();
    let small = lungcad::Limits {
        max_voxels: 1 << 24,
        ..lungcad::Limits::default()
    };
    for (key, json) in [
        ("monai_preprocess_config", r#"{"pixdim":[0.01,0.01,0.01]}"#),
        (
            "retina_decode_config",
            r#"{"size_divisible":[4096,4096,4096]}"#,
        ),
    ] {
        let detector = with(key, json).unwrap();
        let e = detector.detect(&volume, &small).unwrap_err();
        println!("{key} {json}: {e}");
        assert!(matches!(e, lungcad::Error::Limit { .. }), "{key}: {e}");
    }
    // The same file with its own settings runs within those limits.
    let detector = with("retina_decode_config", r#"{}"#).unwrap();
    detector.detect(&volume, &small).unwrap();
    // Windows that would run the network thousands of times (an overlap of 0.99), or on
    // every voxel: refused by the default limits before any window runs.
    for (json, says) in [
        (r#"{"roi_size":[32,32,32],"overlap":0.99}"#, "tile coverage"),
        (r#"{"roi_size":[1,1,1],"overlap":0.25}"#, "tile count"),
    ] {
        let detector = with("sliding_window_config", json).unwrap();
        let t = std::time::Instant::now();
        let e = detector
            .detect(&volume, &lungcad::Limits::default())
            .unwrap_err();
        println!("{json}: {e} ({:.2} s)", t.elapsed().as_secs_f64());
        assert!(
            matches!(&e, lungcad::Error::Limit { what, .. } if what.starts_with(says)),
            "{json}: {e}"
        );
    }
    // The largest tensor is held to the tensor bytes: the whole image's (the bundle's
    // window is larger than this image), and with 32³ windows the heads' maps summed
    // over the whole image (963,600 bytes; a window's largest tensor is 262,144).
    let tight = |bytes: u64| lungcad::Limits {
        max_tensor_bytes: bytes,
        ..lungcad::Limits::default()
    };
    let small_windows = r#"{"roi_size":[32,32,32],"overlap":0.25}"#;
    assert_eq!(4 * config.head_maps_values([96, 80, 40]), 963_600);
    assert_eq!(4 * config.largest_tensor([32, 32, 32]), 262_144);
    for (json, bytes, says, enough) in [
        ("{}", 1 << 20, "largest tensor", 4 << 20),
        (small_windows, 512 << 10, "heads' maps", 1 << 20),
    ] {
        let detector = with("sliding_window_config", json).unwrap();
        let e = detector.detect(&volume, &tight(bytes)).unwrap_err();
        assert!(
            matches!(&e, lungcad::Error::Limit { what, .. } if what.starts_with(says)),
            "{json}: {e}"
        );
        // Within them, it runs.
        detector.detect(&volume, &tight(enough)).unwrap();
    }
}

/// The bundle's whole pipeline (preprocessing, detector, boxes to the world) on a small
/// NIfTI scan (a piece of a phantom around a nodule), through a model file made by `MonaiDetector::write_model` and through
/// `lungcad import-monai` + `lungcad detect`: MONAI's boxes, centres in LPS millimetres.
#[test]
fn the_whole_pipeline_matches_monai_through_a_model_file_and_the_cli() {
    use lungcad::model::monai::MonaiDetector;
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let (path, weights) = fixture("retinanet_small.safetensors");
    let cfg = fixture_config(&weights);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("monai.safetensors");
    MonaiDetector::write_model(&weights, &path, &cfg, &model, &cpu).unwrap();
    let detector = MonaiDetector::from_bytes(std::fs::read(&model).unwrap(), &model, &cpu).unwrap();
    let ct = fixtures().join("preprocess_input.nii.gz");
    let volume = lungcad::load(&ct, &lungcad::LoadConfig::default()).unwrap();
    let found = detector
        .detect(&volume, &lungcad::Limits::default())
        .unwrap();
    let (_, expected) = fixture("end_to_end.safetensors");
    let expected = tensors(&expected);
    let (bshape, boxes) = &expected["boxes_world"];
    let (_, scores) = &expected["scores"];
    assert_eq!(found.len(), bshape[0], "box count");
    let (mut worst_centre, mut worst_size, mut worst_score) = (0f64, 0f64, 0f32);
    for (k, f) in found.iter().enumerate() {
        let e = &boxes[6 * k..6 * k + 6];
        for d in 0..3 {
            worst_centre = worst_centre.max((f.centre_world[d] - e[d] as f64).abs());
            worst_size = worst_size.max((f.size_mm[d] - e[3 + d] as f64).abs());
        }
        worst_score = worst_score.max((f.probability - scores[k]).abs());
    }
    eprintln!(
        "{} boxes; centres within {worst_centre:.2e} mm, sizes {worst_size:.2e} mm, scores {worst_score:.2e}",
        found.len()
    );
    assert!(worst_centre < 0.1 && worst_size < 0.1 && worst_score < 1e-4);

    // The same through the command line, from the state_dict as PyTorch saves it.
    let bin = env!("CARGO_BIN_EXE_lungcad");
    let config = dir.path().join("retinanet.json");
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    let imported = dir.path().join("imported.safetensors");
    let st = std::process::Command::new(bin)
        .args(["import-monai"])
        .arg(fixtures().join("retinanet_small.pt"))
        .arg("--out")
        .arg(&imported)
        .arg("--config")
        .arg(&config)
        .status()
        .unwrap();
    assert!(st.success());
    let csv = dir.path().join("det.csv");
    let st = std::process::Command::new(bin)
        .arg("detect")
        .arg(&ct)
        .arg("--model")
        .arg(&imported)
        .args([
            "--device",
            "cpu",
            "--threshold",
            "0.5",
            "--max-detections",
            "300",
        ])
        .arg("--out")
        .arg(&csv)
        .status()
        .unwrap();
    assert!(st.success());
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect();
    let above: Vec<usize> = (0..found.len()).filter(|&k| scores[k] >= 0.5).collect();
    assert_eq!(rows.len(), above.len());
    for (row, &k) in rows.iter().zip(&above) {
        for d in 0..3 {
            assert!((row[d] - boxes[6 * k + d] as f64).abs() < 0.1, "{row:?}");
        }
    }
    // Importing weights that do not fit the config names the first tensor.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"fpn_channels": 8}"#).unwrap();
    let out = std::process::Command::new(bin)
        .args(["import-monai"])
        .arg(&path)
        .arg("--out")
        .arg(dir.path().join("x.safetensors"))
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("do not fit") || err.contains("not in the network"),
        "{err}"
    );
}

/// The bundle ships its weights as PyTorch's `model.pt`: `import-monai` reads such a file,
/// as `torch.save(net.state_dict())` writes it and nested in a checkpoint
/// (`{"epoch": 7, "model": <state_dict under DataParallel's "module.">}`), into the same
/// model file as from safetensors, and the network from it gives MONAI's head outputs. A
/// file that is neither, or a checkpoint without a RetinaNet in it, is an error saying so.
#[test]
fn import_monai_reads_pytorch_checkpoints() {
    use lungcad::model::monai::MonaiDetector;
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let (path, weights) = fixture("retinanet_small.safetensors");
    let cfg = fixture_config(&weights);
    let dir = tempfile::tempdir().unwrap();
    let from_safetensors = dir.path().join("st.safetensors");
    MonaiDetector::import(&path, &cfg, &from_safetensors, &cpu).unwrap();
    let expected = tensors(&std::fs::read(&from_safetensors).unwrap());
    let (_, io) = fixture("retinanet_small_io.safetensors");
    let io = tensors(&io);
    for name in ["retinanet_small.pt", "retinanet_small_checkpoint.pt"] {
        let model = dir.path().join(format!("{name}.safetensors"));
        MonaiDetector::import(&fixtures().join(name), &cfg, &model, &cpu).unwrap();
        let bytes = std::fs::read(&model).unwrap();
        let got = tensors(&bytes);
        assert_eq!(got.len(), expected.len(), "{name}: tensor count");
        for (k, v) in &expected {
            assert_eq!(got.get(k), Some(v), "{name}: {k}");
        }
        let detector = MonaiDetector::from_bytes(bytes, &model, &cpu).unwrap();
        use burn::prelude::*;
        let (shape, x) = io["input"].clone();
        let out = detector
            .net
            .forward(Tensor::<5>::from_data(TensorData::new(x, shape), &cpu));
        check(&out, &io, 1e-4);
    }
    // Neither safetensors nor a checkpoint.
    let junk = dir.path().join("junk.pt");
    std::fs::write(&junk, b"PK\x03\x04 not really a zip").unwrap();
    let e = MonaiDetector::import(&junk, &cfg, &dir.path().join("x"), &cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("junk.pt") && e.contains("neither safetensors") && e.contains("PyTorch"),
        "{e}"
    );
    // A pickle (protocol 2) of an empty dict: a checkpoint with no RetinaNet in it.
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"\x80\x02}q\x00.").unwrap();
    let e = MonaiDetector::import(&empty, &cfg, &dir.path().join("x"), &cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("empty.pt") && e.contains("no MONAI RetinaNet state_dict"),
        "{e}"
    );
    // 101 views of one 16 kB storage (tests/fixtures/README.md): read view by view they
    // would hold 1.6 MB from 25 kB, and a few thousand views of 1 MB cost gigabytes.
    let e = MonaiDetector::import(
        &fixtures().join("views.pt"),
        &cfg,
        &dir.path().join("x"),
        &cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("views.pt") && e.contains("view one storage"),
        "{e}"
    );
    assert!(!dir.path().join("x").exists());
}

/// The largest tensor of the bundle's network on its 512 x 512 x 192 window is the stem's
/// output (64 channels, stride 2, 2, 1): what a GPU buffer must hold.
#[test]
fn the_bundles_largest_tensor_is_its_stems_output() {
    let cfg = RetinaNetConfig::default();
    assert_eq!(cfg.largest_tensor([512, 512, 192]), 64 * 256 * 256 * 192);
    // Narrower stems move it: to the FPN's finest level (256 channels on layer 1's grid,
    // 16 x 16 x 16 here), and with a narrow FPN to layer 2's first 1 x 1 convolution, which
    // runs before its block's stride (128 channels on that grid).
    let narrow = RetinaNetConfig {
        block_inplanes: [4, 128, 256, 512],
        ..cfg
    };
    assert_eq!(narrow.largest_tensor([64, 64, 32]), 256 * 16 * 16 * 16);
    let narrow_fpn = RetinaNetConfig {
        fpn_channels: 8,
        ..narrow
    };
    assert_eq!(narrow_fpn.largest_tensor([64, 64, 32]), 128 * 16 * 16 * 16);
}

/// A state_dict in other float precisions (here bfloat16 and float64; half precision's
/// widening is a unit test) is imported as float32, the network's precision: the model
/// file's tensors are the widened values and the network runs (it failed inside burn
/// before, on a dtype mismatch).
#[test]
fn other_float_precisions_are_imported_as_float32() {
    use lungcad::model::monai::MonaiDetector;
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let (path, weights) = fixture("retinanet_small.safetensors");
    let cfg = fixture_config(&weights);
    let original = tensors(&weights);
    // Even tensors (by name) as bfloat16 (float32's upper half), odd ones as float64.
    let mut names: Vec<&String> = original.keys().collect();
    names.sort();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut expected = HashMap::new();
    for (i, name) in names.into_iter().enumerate() {
        let (shape, values) = &original[name];
        let start = data.len();
        let dtype = if i % 2 == 0 {
            for v in values {
                data.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
            let widened = values
                .iter()
                .map(|v| f32::from_bits(v.to_bits() & 0xffff_0000))
                .collect::<Vec<_>>();
            expected.insert(name.clone(), widened);
            "BF16"
        } else {
            for v in values {
                data.extend_from_slice(&f64::from(*v).to_le_bytes());
            }
            expected.insert(name.clone(), values.clone());
            "F64"
        };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&text);
    bytes.extend_from_slice(&data);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    MonaiDetector::write_model(&bytes, &path, &cfg, &model, &cpu).unwrap();
    let file = std::fs::read(&model).unwrap();
    let got = tensors(&file);
    assert_eq!(got.len(), expected.len());
    for (name, values) in &expected {
        assert_eq!(&got[name].1, values, "{name}");
    }
    let detector = MonaiDetector::from_bytes(file, &model, &cpu).unwrap();
    let (_, io) = fixture("retinanet_small_io.safetensors");
    let io = tensors(&io);
    use burn::prelude::*;
    let (shape, x) = io["input"].clone();
    let out = detector
        .net
        .forward(Tensor::<5>::from_data(TensorData::new(x, shape), &cpu));
    let first = out.classification[0]
        .clone()
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    assert!(first.iter().all(|v| v.is_finite()));
}

/// An image whose largest tensor does not fit one of the GPU's buffers (lavapipe: 128 MiB)
/// is a device error before any GPU work, not a failure inside burn.
#[test]
fn an_image_too_big_for_the_gpus_buffers_is_a_device_error() {
    use lungcad::model::monai::MonaiDetector;
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let FixtureModel {
        config: cfg,
        path: model,
        bytes,
        ..
    } = fixture_model(dir.path(), &gpu);
    let detector = MonaiDetector::from_bytes(bytes, &model, &gpu).unwrap();
    let limit = lungcad::model::max_tensor_bytes(&gpu).unwrap();
    let size = [512, 512, 72];
    let needed = 4 * cfg.largest_tensor(size) as u64;
    if needed <= limit {
        eprintln!("SKIP: this device holds {limit} bytes in one buffer, {needed} needed");
        return;
    }
    let e = detector
        .detect_image(
            &vec![0.0; 512 * 512 * 72],
            size,
            &lungcad::Limits::default(),
        )
        .unwrap_err();
    assert!(
        matches!(e, lungcad::Error::Device(_)) && e.to_string().contains("MiB"),
        "{e}"
    );
}
