//! Decoding through the public API: a phantom nodule at a known world position, encoded
//! into per-tile head maps as a perfect network would output them, decoded, merged by NMS
//! and mapped back to world millimetres.

mod common;

use lungcad::detect::{
    decode_patch, detections, encode_targets, ideal_output, write_csv, write_json, DecodeConfig,
    HeadLayout, TargetConfig, VoxelNodule,
};
use lungcad::preprocess::{preprocess, PreprocessConfig};
use lungcad::{Geometry, Limits};

#[test]
fn a_phantom_nodule_is_found_at_its_world_position() {
    let (s, c) = (10f64.to_radians().sin(), 10f64.to_radians().cos());
    let g = Geometry {
        spacing_mm: [2.5, 1.6, 1.4],
        origin_mm: [-180.0, -140.0, -125.0],
        direction: [[0.0, 0.0, 1.0], [-s, c, 0.0], [c, s, 0.0]],
    };
    let (v, nodule_world, _) = common::chest_phantom(g, [100, 160, 240], true);
    let diameter_mm = 12.0;
    let config = PreprocessConfig {
        spacing_mm: [1.5; 3],
        patch: lungcad::preprocess::PatchConfig {
            size_vox: [32; 3],
            overlap_vox: [8; 3],
            pad_hu: 0.0,
        },
        ..PreprocessConfig::default()
    };
    let pre = preprocess(&v, &config, &Limits::default()).unwrap();
    let layout = HeadLayout::default();
    let spacing = pre.geometry().spacing_mm;
    let centre = pre.geometry().world_to_voxel(nodule_world);
    let tiles = pre.tiles().unwrap();
    let mut candidates = Vec::new();
    let mut tiles_with_nodule = 0;
    for o in tiles.offsets() {
        let local = [0, 1, 2].map(|a| centre[a] - o[a] as f64);
        let nodules: Vec<VoxelNodule> = if local.iter().all(|&v| (0.0..32.0).contains(&v)) {
            tiles_with_nodule += 1;
            vec![VoxelNodule {
                centre_vox: local,
                diameter_mm,
            }]
        } else {
            vec![]
        };
        let t = encode_targets(
            &layout,
            [32; 3],
            spacing,
            &nodules,
            &TargetConfig::default(),
        )
        .unwrap();
        let out = ideal_output(&t, 8.0);
        decode_patch(out.view(), &layout, spacing, o, 0.05, &mut candidates).unwrap();
    }
    assert!(
        tiles_with_nodule >= 2,
        "the nodule lies where tiles overlap, so NMS has duplicates to merge"
    );
    println!(
        "{} tiles, nodule in {tiles_with_nodule}, {} candidates before NMS",
        tiles.len(),
        candidates.len()
    );
    assert!(candidates.len() >= tiles_with_nodule);
    let dets = detections(candidates, pre.geometry(), &DecodeConfig::default());
    assert_eq!(dets.len(), 1, "NMS merges the duplicates: {dets:?}");
    let d = dets[0];
    let err = (0..3)
        .map(|a| (d.centre_world[a] - nodule_world[a]).powi(2))
        .sum::<f64>()
        .sqrt();
    println!("found at {:?}, {err:.2e} mm from the truth", d.centre_world);
    assert!(err < 1.0, "{err} mm");
    assert!((d.diameter_mm - diameter_mm).abs() < 1e-3);

    // Outputs: the CSV is a LUNA16 submission the evaluator reads; the JSON adds the size.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("det.csv");
    write_csv(&dets, "1.2.3.4", &csv).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("seriesuid,coordX,coordY,coordZ,probability\n1.2.3.4,"));
    let back = lungcad::eval::Predictions::from_csv(&csv).unwrap();
    assert_eq!(back.len(), 1);
    let json = dir.path().join("det.json");
    write_json(&dets, "1.2.3.4", &json).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["seriesuid"], "1.2.3.4");
    assert!((j["detections"][0]["diameter_mm"].as_f64().unwrap() - 12.0).abs() < 1e-3);
    assert!((j["detections"][0]["coordX"].as_f64().unwrap() - d.centre_world[0]).abs() < 1e-9);
}
