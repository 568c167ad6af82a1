//! The detector network through the public API, on small shapes: output shapes, determinism,
//! model files, wgpu against the CPU, and batched inference over a phantom's tiles.
//!
//! The wgpu test needs a Vulkan, Metal or DX12 adapter (on Linux without a GPU, Mesa's
//! lavapipe: `apt-get install mesa-vulkan-drivers`). Without one it skips, unless
//! `LUNGCAD_REQUIRE_WGPU=1` (set by `.ci/run`), when it fails.

mod common;

use lungcad::detect::{DecodeConfig, Flips, HeadLayout};
use lungcad::model::{select_device, Detector, DetectorConfig, DeviceChoice};
use lungcad::preprocess::{preprocess, PreprocessConfig};
use lungcad::{Geometry, Limits};

fn tiny() -> (DetectorConfig, PreprocessConfig) {
    (
        common::tiny_detector_config(),
        common::tiny_preprocess_config(),
    )
}

/// The tiny network (seed 3) saved as `m.safetensors` in `dir`: the file's path and bytes.
fn saved_tiny(
    dir: &std::path::Path,
    device: &lungcad::model::Device,
) -> (std::path::PathBuf, Vec<u8>) {
    let (config, pre) = tiny();
    let path = dir.join("m.safetensors");
    Detector::new(config, pre, device, 3)
        .unwrap()
        .save(&path)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn input(batch: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..batch * 32 * 32 * 32)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// `bytes` with the first `from` replaced by `to` (same length, so the header length holds).
fn replace_once(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{} not in the file", String::from_utf8_lossy(from)));
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn forward_shapes_and_determinism_on_the_cpu() {
    let (config, pre) = tiny();
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let a = Detector::new(config.clone(), pre.clone(), &device, 7).unwrap();
    let b = Detector::new(config.clone(), pre.clone(), &device, 7).unwrap();
    let c = Detector::new(config.clone(), pre.clone(), &device, 8).unwrap();
    let x = input(2, 1);
    let ya = a.forward_batch(x.clone(), 2, [32; 3]).unwrap();
    assert_eq!(ya.len(), 2 * 15 * 8 * 8 * 8);
    assert_eq!(
        ya,
        a.forward_batch(x.clone(), 2, [32; 3]).unwrap(),
        "same input, same output"
    );
    assert_eq!(
        ya,
        b.forward_batch(x.clone(), 2, [32; 3]).unwrap(),
        "same seed, same weights"
    );
    assert!(max_abs_diff(&ya, &c.forward_batch(x.clone(), 2, [32; 3]).unwrap()) > 1e-3);
    // Each sample of a batch is computed on its own.
    let y0 = a
        .forward_batch(x[..32 * 32 * 32].to_vec(), 1, [32; 3])
        .unwrap();
    assert!(max_abs_diff(&y0, &ya[..y0.len()]) < 1e-5);
    assert!(a.forward_batch(x, 3, [32; 3]).is_err(), "wrong buffer size");
}

#[test]
fn network_cost_is_documented_for_128_cubed() {
    let cost = DetectorConfig::default().cost([128; 3]);
    println!(
        "default detector: {} parameters, {:.1} GFLOPs per 128^3 patch",
        cost.parameters,
        cost.gflops()
    );
    assert!(cost.parameters > 500_000 && cost.parameters < 5_000_000);
    // The count from the config matches the network's own tensors (burn's num_params counts
    // the batch-norm running statistics too).
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let (_, pre) = tiny();
    let d = Detector::new(DetectorConfig::default(), pre, &device, 1).unwrap();
    use burn::module::Module;
    assert_eq!(
        d.net.num_params() as u64,
        cost.parameters + cost.running_stats
    );
}

#[test]
fn model_files_round_trip_and_bad_files_are_clear_errors() {
    let (config, pre) = tiny();
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let d = Detector::new(config, pre, &device, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    d.save(&path).unwrap();
    let back = Detector::load(&path, &device).unwrap();
    assert_eq!(back.config, d.config);
    assert_eq!(back.preprocess, d.preprocess);
    let x = input(1, 5);
    assert_eq!(
        back.forward_batch(x.clone(), 1, [32; 3]).unwrap(),
        d.forward_batch(x, 1, [32; 3]).unwrap()
    );
    let bytes = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("garbage", b"not a model at all, just text".to_vec()),
        ("empty", Vec::new()),
        (
            "other format",
            replace_once(
                &bytes,
                br#""lungcad_model_format":"1""#,
                br#""lungcad_model_format":"9""#,
            ),
        ),
        (
            "mismatched config",
            replace_once(
                &bytes,
                br#"\"decoder_channels\":8"#,
                br#"\"decoder_channels\":9"#,
            ),
        ),
    ];
    for (what, b) in cases {
        let p = dir.path().join(format!("{what}.safetensors"));
        std::fs::write(&p, &b).unwrap();
        let e = Detector::load(&p, &device).unwrap_err();
        println!("{what}: {e}");
        assert!(
            matches!(e.category(), "model" | "io"),
            "{what}: {e} ({})",
            e.category()
        );
        assert!(
            e.to_string().contains(&*p.display().to_string()),
            "{what}: {e}"
        );
    }
}

/// A model file is input: a small file whose config describes a huge network must not make
/// lungcad build it (a 98 kB file once made it allocate until it aborted).
#[test]
fn a_model_file_whose_config_outgrows_its_tensors_is_refused_before_building() {
    let (config, _) = tiny();
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = saved_tiny(dir.path(), &device);
    let huge = DetectorConfig {
        channels: [1024, 1024, 1024, 512, 512],
        blocks: [1, 1, 1, 1],
        decoder_channels: 512,
        ..config.clone()
    };
    let past_limit = DetectorConfig {
        channels: [1024; 5],
        blocks: [16; 4],
        decoder_channels: 1024,
        decoder_blocks: 16,
        ..config
    };
    println!(
        "values: {} in the file's network, {} and {} claimed",
        DetectorConfig::default().stored_values(),
        huge.stored_values(),
        past_limit.stored_values()
    );
    assert!(
        huge.validate().is_ok(),
        "a valid config, just not this file's"
    );
    let mut many_anchors = huge.clone();
    many_anchors.head.anchors_mm = vec![5.0; 65];
    let e = many_anchors.validate().unwrap_err().to_string();
    assert!(e.contains("1 to 64"), "{e}");
    let e = past_limit.validate().unwrap_err().to_string();
    assert!(e.contains("more than the 536870912"), "{e}");
    for (what, cfg, says) in [
        ("huge", &huge, "its tensors hold"),
        ("past the limit", &past_limit, "more than the 536870912"),
    ] {
        let json = serde_json::to_string(cfg).unwrap();
        let p = dir.path().join("claims.safetensors");
        std::fs::write(&p, common::with_metadata(&bytes, "detector_config", &json)).unwrap();
        let e = Detector::load(&p, &device).unwrap_err();
        println!("{what}: {e}");
        assert_eq!(e.category(), "model", "{what}: {e}");
        assert!(e.to_string().contains(says), "{what}: {e}");
    }
}

/// A model file sets its tiles' size and overlap and its network's widths. Tiles that
/// would cover each voxel thousands of times, too many tiles, or a tile whose largest
/// tensor is past the limit are a limit error before the network runs; batches are cut
/// to the tensor limit; the file's own settings run within the default limits.
#[test]
fn a_model_files_tiles_are_held_to_the_limits_before_the_network_runs() {
    let (config, pre_cfg) = tiny();
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = saved_tiny(dir.path(), &device);
    let g = Geometry::new([2.5, 2.0, 2.0], [-150.0, -120.0, -100.0]);
    let (v, _, _) = common::chest_phantom(g, [60, 120, 150], true);
    let own = pre_cfg.patch.clone();
    let run = |patch: &lungcad::preprocess::PatchConfig, limits: &Limits| {
        let mut cfg = pre_cfg.clone();
        cfg.patch = patch.clone();
        let json = serde_json::to_string(&cfg).unwrap();
        let file = common::with_metadata(&bytes, "preprocess_config", &json);
        let d = Detector::from_bytes(file, &path, &device).unwrap();
        let mut batches = 0;
        let r = d.detect(
            v.clone(),
            4,
            &DecodeConfig::default(),
            limits,
            &mut |_, _| batches += 1,
        );
        (r, batches)
    };
    let (r, batches) = run(&own, &Limits::default());
    let tiles = r.unwrap().tiles;
    assert_eq!(batches, tiles.div_ceil(4));
    let what = |r: lungcad::Result<lungcad::model::DetectionRun>| match r {
        Err(lungcad::Error::Limit { what, value, .. }) => (what, value),
        Err(e) => panic!("{e}"),
        Ok(run) => panic!("{} tiles were run", run.tiles),
    };
    // Overlaps of 31 on 32-voxel tiles: every voxel of the crop starts a tile (213,444
    // tiles; the file's own settings: 54), past the default tile count.
    let overlap_31 = lungcad::preprocess::PatchConfig {
        overlap_vox: [31; 3],
        ..own.clone()
    };
    let (r, batches) = run(&overlap_31, &Limits::default());
    let (limit, count) = what(r);
    println!("overlap 31: {count} tiles");
    assert!(limit == "tile count" && count > 131_072, "{limit} {count}");
    assert_eq!(batches, 0, "refused before the network ran");
    // With no bound on the count, the coverage bounds it: each voxel covered 8,967 times.
    let any_count = Limits {
        max_tiles: u64::MAX,
        ..Limits::default()
    };
    let (r, batches) = run(&overlap_31, &any_count);
    let (limit, coverage) = what(r);
    println!("overlap 31: coverage {coverage}");
    assert!(
        limit.starts_with("tile coverage") && coverage > 1_000,
        "{limit} {coverage}"
    );
    assert_eq!(batches, 0, "refused before the network ran");
    // The same past a tile count of the file's own tiles less one.
    let fewer = Limits {
        max_tiles: tiles as u64 - 1,
        ..Limits::default()
    };
    let (r, batches) = run(&own, &fewer);
    assert_eq!(what(r), ("tile count", tiles as u64));
    assert_eq!(batches, 0);
    // Tiles of 1024³: the first layer's output alone is 32 GiB, refused (before the
    // limit it was an allocation failure that aborted the process).
    let huge = lungcad::preprocess::PatchConfig {
        size_vox: [1024; 3],
        ..own.clone()
    };
    let (r, batches) = run(&huge, &Limits::default());
    let per_huge_tile = 4 * config.largest_tensor_per_patch([1024; 3]) as u64;
    assert_eq!(
        what(r),
        ("largest tensor of the network in bytes", per_huge_tile)
    );
    assert!(per_huge_tile > Limits::default().max_tensor_bytes);
    assert_eq!(batches, 0);
    // A limit holding one of the file's own tiles: batches of 4 are cut to 1.
    let one_tile = Limits {
        max_tensor_bytes: 4 * config.largest_tensor_per_patch(own.size_vox) as u64,
        ..Limits::default()
    };
    let (r, batches) = run(&own, &one_tile);
    assert_eq!(r.unwrap().tiles, tiles);
    assert_eq!(batches, tiles, "one tile per pass");
}

#[test]
fn wgpu_and_cpu_agree() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let (config, pre) = tiny();
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let d = Detector::new(config, pre, &cpu, 11).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    d.save(&path).unwrap();
    let g = Detector::load(&path, &gpu).unwrap();
    let x = input(2, 9);
    let yc = d.forward_batch(x.clone(), 2, [32; 3]).unwrap();
    let yg = g.forward_batch(x.clone(), 2, [32; 3]).unwrap();
    let diff = max_abs_diff(&yc, &yg);
    println!("wgpu vs cpu: max |logit difference| {diff:.2e}");
    assert!(diff < 1e-3, "{diff}");
    assert_eq!(
        yg,
        g.forward_batch(x, 2, [32; 3]).unwrap(),
        "same input, same output on wgpu"
    );
}

#[test]
fn batched_inference_over_a_phantom_is_bounded_and_reproducible() {
    let (config, pre_cfg) = tiny();
    let g = Geometry::new([2.5, 2.0, 2.0], [-150.0, -120.0, -100.0]);
    let (v, _, _) = common::chest_phantom(g, [60, 120, 150], true);
    let pre = preprocess(&v, &pre_cfg, &Limits::default()).unwrap();
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let d = Detector::new(config, pre_cfg, &device, 2).unwrap();
    let tiles = pre.tiles().unwrap().len();
    let mut calls = Vec::new();
    let all = DecodeConfig {
        min_probability: 0.0,
        ..DecodeConfig::default()
    };
    let a = d
        .candidates(&pre, 4, &all, &mut |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(calls.len(), tiles.div_ceil(4));
    assert_eq!(calls.last(), Some(&(tiles, tiles)));
    // Every anchor of every output cell of every tile, at probability threshold 0.
    let per_tile = HeadLayout::default().anchors_mm.len() * 8 * 8 * 8;
    assert_eq!(a.len(), tiles * per_tile);
    let b = d.candidates(&pre, 4, &all, &mut |_, _| {}).unwrap();
    assert_eq!(a, b, "same input, same device: same output");
    let c = d.candidates(&pre, 1, &all, &mut |_, _| {}).unwrap();
    let worst = a
        .iter()
        .zip(&c)
        .map(|(x, y)| (x.probability - y.probability).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "batch size changes results by {worst}");
    // Held to the most probable 1,000 as they come (cut at 2,000, batch by batch): the
    // same candidates as the most probable 1,000 of all, the same detections.
    let capped = DecodeConfig {
        max_candidates: 1000,
        ..all.clone()
    };
    let mut k = d.candidates(&pre, 4, &capped, &mut |_, _| {}).unwrap();
    let mut top = a.clone();
    lungcad::detect::keep_most_probable(&mut top, 1000);
    let order = |x: &lungcad::detect::Candidate, y: &lungcad::detect::Candidate| {
        y.probability
            .total_cmp(&x.probability)
            .then(x.centre_vox.partial_cmp(&y.centre_vox).unwrap())
    };
    k.sort_by(order);
    top.sort_by(order);
    assert_eq!(k.len(), 1000);
    assert_eq!(k, top);
    let nms =
        |c: Vec<lungcad::detect::Candidate>| lungcad::detect::detections(c, pre.geometry(), &all);
    assert_eq!(nms(k), nms(a.clone()));
    // Test-time flips: the same cells and anchors, other values.
    let flipped = DecodeConfig {
        flips: Flips::All,
        ..all
    };
    let f = d.candidates(&pre, 4, &flipped, &mut |_, _| {}).unwrap();
    assert_eq!(f.len(), a.len());
    assert!(f
        .iter()
        .zip(&a)
        .any(|(x, y)| x.probability != y.probability));
}

/// `maps` `(B, C, Dz, Dy, Dx)` mirrored along the flagged patch axes `(z, y, x)`, with the
/// centre offsets of those axes negated: what the map of the mirrored input should be.
fn mirror_map(maps: &[f32], shape: [usize; 5], axes: [bool; 3]) -> Vec<f32> {
    let mut m = ndarray::ArrayView5::from_shape(shape, maps)
        .unwrap()
        .to_owned();
    for (a, &flipped) in axes.iter().enumerate() {
        if flipped {
            m.invert_axis(ndarray::Axis(a + 2));
        }
    }
    for c in 0..shape[1] {
        let k = c % 5;
        if (1..=3).contains(&k) && axes[k - 1] {
            m.index_axis_mut(ndarray::Axis(1), c).mapv_inplace(|v| -v);
        }
    }
    m.iter().copied().collect()
}

#[test]
fn test_time_flips_average_mirrored_passes() {
    let (config, pre_cfg) = tiny();
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let d = Detector::new(config, pre_cfg, &device, 5).unwrap();
    let x = input(2, 11);
    let plain = d.forward_batch(x.clone(), 2, [32; 3]).unwrap();
    assert_eq!(
        d.forward_flips(x.clone(), 2, [32; 3], Flips::None).unwrap(),
        plain
    );
    let shape = [2, 15, 8, 8, 8];
    // The input mirrored along z and x.
    let mut xm = ndarray::Array4::from_shape_vec((2, 32, 32, 32), x.clone()).unwrap();
    xm.invert_axis(ndarray::Axis(1));
    xm.invert_axis(ndarray::Axis(3));
    let xm: Vec<f32> = xm.iter().copied().collect();
    // A single pass is not mirror-symmetric ...
    let plain_m = d.forward_batch(xm.clone(), 2, [32; 3]).unwrap();
    let gap = max_abs_diff(&mirror_map(&plain, shape, [true, false, true]), &plain_m);
    assert!(gap > 1e-3, "an untrained network is not symmetric ({gap})");
    // ... the average over all 8 flips is: the mirrored input's map is the mirrored map.
    let avg = d.forward_flips(x.clone(), 2, [32; 3], Flips::All).unwrap();
    let avg_m = d.forward_flips(xm.clone(), 2, [32; 3], Flips::All).unwrap();
    let gap = max_abs_diff(&mirror_map(&avg, shape, [true, false, true]), &avg_m);
    assert!(gap < 1e-5, "flip-averaged maps differ by {gap}");
    // Flips::X is the mean of the plain pass and the x-mirrored pass mapped back.
    let mut xx = ndarray::Array4::from_shape_vec((2, 32, 32, 32), x.clone()).unwrap();
    xx.invert_axis(ndarray::Axis(3));
    let xx: Vec<f32> = xx.iter().copied().collect();
    let back = mirror_map(
        &d.forward_batch(xx, 2, [32; 3]).unwrap(),
        shape,
        [false, false, true],
    );
    let mean: Vec<f32> = plain
        .iter()
        .zip(&back)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let gap = max_abs_diff(
        &d.forward_flips(x.clone(), 2, [32; 3], Flips::X).unwrap(),
        &mean,
    );
    assert!(gap < 1e-6, "Flips::X differs from its definition by {gap}");
    assert!(d.forward_flips(x.clone(), 3, [32; 3], Flips::All).is_err());
}

/// Writes `v` as little-endian f32.
fn write_f32(path: &std::path::Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The committed PyTorch fixture (tests/fixtures/README.md) run on `device`: lungcad's
/// output against PyTorch's.
fn pytorch_fixture_difference(device: &lungcad::model::Device) -> f32 {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/detector_tiny"
    ));
    let d = Detector::load(dir.join("model.safetensors"), device).unwrap();
    let x = read_f32(&dir.join("input.f32"));
    let torch = read_f32(&dir.join("output.f32"));
    let ours = d.forward_batch(x, 2, [32; 3]).unwrap();
    max_abs_diff(&ours, &torch)
}

#[test]
fn pytorch_fixture_on_the_cpu() {
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let diff = pytorch_fixture_difference(&device);
    println!("PyTorch fixture on the CPU: max |difference| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn pytorch_fixture_on_wgpu() {
    let Some(device) = common::wgpu_or_skip() else {
        return;
    };
    let diff = pytorch_fixture_difference(&device);
    println!("PyTorch fixture on wgpu: max |difference| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn pytorch_reference_gives_the_same_outputs_both_ways() {
    let Some(python) = common::python_with("torch, safetensors, numpy") else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/reference/detector.py");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&python)
            .arg(script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (config, pre) = tiny();
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let x = input(2, 4);
    write_f32(std::path::Path::new(&p("x.f32")), &x);

    // lungcad weights -> PyTorch.
    let d = Detector::new(config, pre, &device, 21).unwrap();
    d.save(p("ours.safetensors")).unwrap();
    run(&[
        "forward",
        &p("ours.safetensors"),
        &p("x.f32"),
        &p("y.f32"),
        "2",
        "32",
        "32",
        "32",
    ]);
    let ours = d.forward_batch(x.clone(), 2, [32; 3]).unwrap();
    let torch = read_f32(std::path::Path::new(&p("y.f32")));
    let diff = max_abs_diff(&ours, &torch);
    println!("lungcad weights: lungcad vs PyTorch max |difference| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");

    // PyTorch weights (with non-trivial batch-norm statistics) -> lungcad.
    run(&[
        "export",
        &p("ours.safetensors"),
        &p("torch.safetensors"),
        "5",
    ]);
    let t = Detector::load(p("torch.safetensors"), &device).unwrap();
    run(&[
        "forward",
        &p("torch.safetensors"),
        &p("x.f32"),
        &p("y2.f32"),
        "2",
        "32",
        "32",
        "32",
    ]);
    let ours = t.forward_batch(x, 2, [32; 3]).unwrap();
    let torch = read_f32(std::path::Path::new(&p("y2.f32")));
    let diff = max_abs_diff(&ours, &torch);
    println!("PyTorch weights: lungcad vs PyTorch max |difference| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn the_shipped_model_finds_a_held_out_phantoms_nodules() {
    use lungcad::model::{SHIPPED_MODEL, SHIPPED_MODEL_NAME};
    let (device, _) = select_device(DeviceChoice::Cpu).unwrap();
    assert!(
        SHIPPED_MODEL.len() <= 25 << 20,
        "{} bytes",
        SHIPPED_MODEL.len()
    );
    let d = Detector::shipped(&device).unwrap();
    // It carries the configs its model card documents.
    let train = lungcad::train::run::TrainConfig::from_json(include_str!(
        "../models/phantom-v2/train_config.json"
    ))
    .unwrap();
    assert_eq!(d.config, train.detector);
    assert_eq!(d.preprocess, train.preprocess);
    // Seed 5010: the smallest of the model card's held-out phantoms (training used seeds
    // 1000 to 1127).
    let synth: lungcad::synth::SynthConfig =
        serde_json::from_str(include_str!("../models/phantom-v2/synth_config.json")).unwrap();
    let phantom = lungcad::synth::generate(5010, &synth).unwrap();
    let run = d
        .detect(
            phantom.volume,
            32,
            &lungcad::detect::DecodeConfig::default(),
            &Limits::default(),
            &mut |_, _| {},
        )
        .unwrap();
    assert!(run.tiles > 0 && run.candidates >= run.detections.len());
    for n in &phantom.nodules {
        let hit = run.detections.iter().find(|det| {
            let dist = (0..3)
                .map(|k| (det.centre_world[k] - n.centre_world[k]).powi(2))
                .sum::<f64>()
                .sqrt();
            dist <= n.diameter_mm / 2.0
        });
        println!("{n:?}: {hit:?}");
        assert!(
            hit.is_some_and(|h| h.probability >= 0.5),
            "missed {n:?} among {:?}",
            &run.detections[..run.detections.len().min(10)]
        );
    }
    // Corrupt bytes are an error naming where they came from.
    let e = Detector::from_bytes(
        SHIPPED_MODEL[..1000].to_vec(),
        std::path::Path::new(SHIPPED_MODEL_NAME),
        &device,
    )
    .unwrap_err();
    assert_eq!(e.category(), "model");
    assert!(e.to_string().contains(SHIPPED_MODEL_NAME), "{e}");
}

/// A GPU tensor lives in one buffer, and wgpu devices cap buffers (lavapipe: 128 MiB): a
/// batch whose largest tensor is bigger is a device error naming the limit before any GPU
/// work, not a failure inside burn; the default batch size stays within it; the CPU has no
/// such limit.
#[test]
fn batches_larger_than_the_gpus_buffers_are_refused_with_the_limit() {
    let (cpu, _) = select_device(DeviceChoice::Cpu).unwrap();
    let default = || (DetectorConfig::default(), PreprocessConfig::default());
    let (config, pre) = default();
    let d = Detector::new(config, pre, &cpu, 0).unwrap();
    assert_eq!(lungcad::model::max_tensor_bytes(&cpu), None);
    assert_eq!(d.max_batch([128; 3]), None);
    // The default network's largest tensor: the stem's output, 24 channels at full size.
    assert_eq!(
        DetectorConfig::default().largest_tensor_per_patch([128; 3]),
        24 * 128 * 128 * 128
    );
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let limit = lungcad::model::max_tensor_bytes(&gpu).expect("the wgpu device's buffer limit");
    println!("wgpu: at most {} MiB per buffer", limit >> 20);
    let (config, pre) = tiny();
    let g = Detector::new(config.clone(), pre, &gpu, 0).unwrap();
    let per_patch = 4 * config.largest_tensor_per_patch([32; 3]) as u64;
    let max = g.max_batch([32; 3]).unwrap();
    assert_eq!(max as u64, limit / per_patch);
    assert!(g.default_batch_size("wgpu") <= max.max(1));
    if max < 4096 {
        let e = g
            .forward_batch(vec![0.0; (max + 1) * 32 * 32 * 32], max + 1, [32; 3])
            .unwrap_err();
        assert!(
            matches!(e, lungcad::Error::Device(_))
                && e.to_string().contains(&format!("at most {max} patches")),
            "{e}"
        );
    }
    let (config, pre) = default();
    let big = Detector::new(config, pre, &gpu, 0).unwrap();
    if big.max_batch([128; 3]) == Some(0) {
        let e = big
            .forward_batch(vec![0.0; 128 * 128 * 128], 1, [128; 3])
            .unwrap_err();
        assert!(e.to_string().contains("not even one patch fits"), "{e}");
    }
}

/// `--device auto` does not keep a GPU that cannot hold one patch of the network (a small
/// integrated GPU; here lavapipe, 128 MiB, with the default network's 192 MiB per 128³
/// patch): the detector moves to the CPU and gives the CPU's outputs; a network that fits
/// stays.
#[test]
fn auto_moves_a_network_the_gpu_cannot_hold_to_the_cpu() {
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let (config, pre) = tiny();
    let small = Detector::new(config, pre, &gpu, 3).unwrap();
    let (small, name) = small.or_cpu_if_unfit("wgpu".into()).unwrap();
    assert_eq!(name, "wgpu");
    assert_eq!(small.device(), &gpu);
    let big = Detector::new(
        DetectorConfig::default(),
        PreprocessConfig::default(),
        &gpu,
        3,
    )
    .unwrap();
    if big.max_batch([128; 3]) != Some(0) {
        eprintln!("SKIP: this GPU holds a 128³ patch of the default network");
        return;
    }
    let (moved, name) = big.or_cpu_if_unfit("wgpu".into()).unwrap();
    let (cpu, cpu_name) = select_device(DeviceChoice::Cpu).unwrap();
    assert_eq!(name, cpu_name);
    assert_eq!(moved.device(), &cpu);
    // The same weights as the same network made on the CPU.
    let reference = Detector::new(
        DetectorConfig::default(),
        PreprocessConfig::default(),
        &cpu,
        3,
    )
    .unwrap();
    let x = vec![0.25f32; 32 * 32 * 32];
    assert_eq!(
        moved.forward_batch(x.clone(), 1, [32; 3]).unwrap(),
        reference.forward_batch(x, 1, [32; 3]).unwrap()
    );
}

/// Training on a GPU that cannot hold one patch of the network (lavapipe, 128 MiB per
/// buffer, and the default network's 192 MiB per 128³ patch) stops at once with a device
/// error, before any folder is made or scan prepared.
#[test]
fn training_a_network_the_gpu_cannot_hold_fails_at_once() {
    // Here, not in tests/train.rs: burn loads a resumed optimizer's state onto its default
    // device, which starts the wgpu runtime, and the explicit wgpu start then fails in that
    // process (see docs/TRAINING.md).
    use lungcad::train::run::{train, Dataset, TrainConfig};
    let Some(gpu) = common::wgpu_or_skip() else {
        return;
    };
    let config = TrainConfig::default();
    let patch = config.preprocess.patch.size_vox;
    if lungcad::model::check_patches_fit(&gpu, &config.detector, 1, patch).is_ok() {
        eprintln!("SKIP: this GPU holds a {patch:?} patch of the default network");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = Dataset {
        scans: Vec::new(),
        load: lungcad::LoadConfig::default(),
        cache_dir: dir.path().join("cache"),
    };
    let out = dir.path().join("run");
    let e = train(&config, &data, &out, &gpu, false, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, lungcad::Error::Device(_)) && e.to_string().contains("not even one patch"),
        "{e}"
    );
    assert!(!out.exists() && !data.cache_dir.exists());
}
