//! The `lungcad` binary: exit codes, one-line errors, `info`, `convert`, `preprocess`, `eval`.

mod common;

use lungcad::io::dicom::{write_series, SeriesWriteOptions};
use lungcad::{Geometry, Volume};
use std::process::Command;

fn lungcad() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lungcad"))
}

fn small_series(dir: &std::path::Path) -> Volume {
    let hu =
        ndarray::Array3::from_shape_fn((4, 6, 5), |(z, y, x)| (z * 100 + y * 10 + x) as i16 - 500);
    let v = Volume::new(hu, Geometry::new([2.0, 0.8, 0.8], [-10.0, 5.0, 100.0])).unwrap();
    write_series(
        &v,
        dir,
        &SeriesWriteOptions {
            series_uid: Some("1.2.826.0.1.77".into()),
            ..Default::default()
        },
    )
    .unwrap();
    v
}

/// `lungcad <args> <path>`, which must succeed, its output read as JSON.
fn json_of(args: &[&str], path: &std::path::Path) -> serde_json::Value {
    let out = lungcad().args(args).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `lungcad info --json <ct>`, which must succeed.
fn info_json(ct: &std::path::Path) -> serde_json::Value {
    json_of(&["info", "--json"], ct)
}

#[test]
fn info_json_describes_the_series() {
    let dir = tempfile::tempdir().unwrap();
    small_series(dir.path());
    let j = info_json(dir.path());
    assert_eq!(j["series_uid"], "1.2.826.0.1.77");
    assert_eq!(j["modality"], "CT");
    assert_eq!(j["shape_zyx"], serde_json::json!([4, 6, 5]));
    assert_eq!(j["spacing_mm_zyx"], serde_json::json!([2.0, 0.8, 0.8]));
    assert_eq!(j["origin_mm_xyz"], serde_json::json!([-10.0, 5.0, 100.0]));
    assert_eq!(j["hu_min"], -500);
    assert_eq!(j["hu_max"], 300 + 50 + 4 - 500);
    assert_eq!(j["slice_count"], 4);
}

#[test]
fn convert_round_trips_through_metaimage_and_nifti() {
    let dir = tempfile::tempdir().unwrap();
    let v = small_series(&dir.path().join("dcm"));
    for name in ["out.mhd", "out.mha", "out.nii.gz"] {
        let dst = dir.path().join(name);
        let st = lungcad()
            .arg("convert")
            .arg(dir.path().join("dcm"))
            .arg(&dst)
            .status()
            .unwrap();
        assert!(st.success(), "{name}");
        let back = lungcad::load(&dst, &lungcad::LoadConfig::default()).unwrap();
        assert_eq!(back.hu, v.hu, "{name}");
        for k in 0..3 {
            assert!(
                (back.geometry.origin_mm[k] - v.geometry.origin_mm[k]).abs() < 1e-4,
                "{name}"
            );
            assert!(
                (back.geometry.spacing_mm[k] - v.geometry.spacing_mm[k]).abs() < 1e-4,
                "{name}"
            );
        }
    }
}

#[test]
fn failures_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.mhd"), "NDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_SHORT\nElementDataFile = x.raw\n").unwrap();
    for args in [
        vec![
            "info".to_string(),
            dir.path().join("absent").display().to_string(),
        ],
        vec![
            "info".to_string(),
            dir.path().join("x.mhd").display().to_string(),
        ],
        vec!["info".to_string(), dir.path().display().to_string()],
        vec![
            "convert".to_string(),
            dir.path().join("x.mhd").display().to_string(),
            "out.png".into(),
        ],
    ] {
        let out = lungcad().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
}

#[test]
fn lidc_info_has_no_patient_identifiers_and_convert_matches_pydicom() {
    let Some(dir) = common::lidc_0001() else {
        return;
    };
    let out = lungcad()
        .args(["info", "--json"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // PatientID and PatientName of this series are both "LIDC-IDRI-0001"
    assert!(!text.contains("LIDC-IDRI-0001"), "{text}");
    let j: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(j["shape_zyx"], serde_json::json!([133, 512, 512]));

    let Some(python) = common::python_with("SimpleITK, pydicom, numpy") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("lidc.mha");
    assert!(lungcad()
        .arg("convert")
        .arg(&dir)
        .arg(&dst)
        .status()
        .unwrap()
        .success());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/scripts/check_convert_against_pydicom.py"
    );
    let out = Command::new(&python)
        .arg(script)
        .arg(&dst)
        .arg(&dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
}

#[test]
fn eval_json_and_malformed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(
        p("a.csv"),
        "seriesuid,coordX,coordY,coordZ,diameter_mm\ns1,0,0,0,10\ns2,5,5,5,6\n",
    )
    .unwrap();
    std::fs::write(
        p("e.csv"),
        "seriesuid,coordX,coordY,coordZ,diameter_mm\ns1,50,50,50,-1\n",
    )
    .unwrap();
    std::fs::write(p("s.csv"), "s1\ns2\n").unwrap();
    // one hit on s1's nodule, one candidate on the excluded finding (ignored), one FP on s2
    std::fs::write(
        p("p.csv"),
        "seriesuid,coordX,coordY,coordZ,probability\ns1,1,1,1,0.9\ns1,50,51,50,0.8\ns2,100,100,100,0.7\n",
    )
    .unwrap();
    let run = |pred: &str| {
        lungcad()
            .arg("eval")
            .arg("--annotations")
            .arg(p("a.csv"))
            .arg("--excluded")
            .arg(p("e.csv"))
            .arg("--seriesuids")
            .arg(p("s.csv"))
            .arg("--predictions")
            .arg(p(pred))
            .args(["--json", "--plot"])
            .arg(p("froc.png"))
            .output()
            .unwrap()
    };
    let out = run("p.csv");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (j["tp"].as_u64(), j["fp"].as_u64(), j["fn"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(j["sensitivities"].as_array().unwrap().len(), 7);
    assert!(j["cpm"].as_f64().unwrap() > 0.0 && j["cpm"].as_f64().unwrap() <= 0.5);
    assert_eq!(j["cpm_ci"].as_array().unwrap().len(), 2);
    assert!(std::fs::metadata(p("froc.png")).unwrap().len() > 1000);

    std::fs::write(
        p("bad.csv"),
        "seriesuid,coordX,coordY,coordZ,probability\ns1,1,1,1,0.9\ns1,abc,1,1,0.5\n",
    )
    .unwrap();
    let out = run("bad.csv");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv:3"), "{err}");
    std::fs::write(
        p("nan.csv"),
        "seriesuid,coordX,coordY,coordZ,probability\ns1,1,1,1,NaN\n",
    )
    .unwrap();
    assert_eq!(run("nan.csv").status.code(), Some(1));
}

#[test]
fn preprocess_writes_volume_mask_and_preview_with_their_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new([2.5, 1.5, 1.5], [-190.0, -150.0, 40.0]);
    let (v, nodule, _) = common::chest_phantom(g, [90, 170, 220], true);
    let input = dir.path().join("phantom.mha");
    lungcad::save(&v, &input).unwrap();
    let (out, mask, png) = (
        dir.path().join("pre.mhd"),
        dir.path().join("mask.mha"),
        dir.path().join("preview.png"),
    );
    let run = lungcad()
        .arg("preprocess")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--mask-out")
        .arg(&mask)
        .arg("--preview")
        .arg(&png)
        .args(["--spacing", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        summary["spacing_mm_zyx"],
        serde_json::json!([2.0, 2.0, 2.0])
    );
    assert_eq!(summary["lung_components"], 2);
    let pre = lungcad::load(&out, &lungcad::LoadConfig::default()).unwrap();
    let m = lungcad::load(&mask, &lungcad::LoadConfig::default()).unwrap();
    assert_eq!(pre.geometry.spacing_mm, [2.0; 3]);
    assert_eq!(pre.geometry.origin_mm, g.origin_mm);
    assert_eq!(m.geometry, pre.geometry);
    assert_eq!(m.shape(), pre.shape());
    assert!(m.hu.iter().all(|&v| v == 0 || v == 1));
    assert_eq!(
        summary["shape_zyx"],
        serde_json::json!(pre.shape()),
        "the summary describes the file written"
    );
    // The nodule is bright in the resampled volume and inside the mask.
    assert!(pre.hu_at_world(nodule).unwrap() > -100);
    assert_eq!(m.hu_at_world(nodule), Some(1));
    // The preview is a PNG of the documented layout: 3 panels of 330 px (x) per row.
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    assert_eq!(width, 3 * 165 + 4 * 6);

    // --crop writes only the crop, whose geometry starts at the crop's first voxel.
    let cropped = dir.path().join("crop.mha");
    assert!(lungcad()
        .arg("preprocess")
        .arg(&input)
        .arg("--out")
        .arg(&cropped)
        .args(["--spacing", "2", "--crop"])
        .output()
        .unwrap()
        .status
        .success());
    let c = lungcad::load(&cropped, &lungcad::LoadConfig::default()).unwrap();
    let start = &summary["crop_vox"]["start"];
    let first = pre.voxel_to_world([0, 1, 2].map(|a| start[a].as_f64().unwrap()));
    for a in 0..3 {
        assert!((c.geometry.origin_mm[a] - first[a]).abs() < 1e-9);
    }
    assert_eq!(c.hu_at_world(nodule), pre.hu_at_world(nodule));

    // Errors: a mask file name that is not MetaImage, a volume without lungs.
    let bad = lungcad()
        .arg("preprocess")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--mask-out")
        .arg(dir.path().join("mask.nii.gz"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let (solid, _, _) = common::chest_phantom(g, [20, 170, 220], false);
    let solid_path = dir.path().join("solid.mha");
    lungcad::save(&solid, &solid_path).unwrap();
    let none = lungcad()
        .arg("preprocess")
        .arg(&solid_path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        err.starts_with("error: preprocessing") && err.contains("no air-filled region"),
        "{err}"
    );
    // --print-config prints the defaults as JSON a --config file accepts.
    let cfg = lungcad()
        .args(["preprocess", "x", "--out", "y.mha", "--print-config"])
        .output()
        .unwrap();
    assert!(cfg.status.success());
    let text = String::from_utf8(cfg.stdout).unwrap();
    assert_eq!(
        lungcad::preprocess::PreprocessConfig::from_json(&text).unwrap(),
        lungcad::preprocess::PreprocessConfig::default()
    );
}

/// Reads a detection CSV: header and rows of (seriesuid, x, y, z, probability).
fn read_detections_csv(path: &std::path::Path) -> (String, Vec<(String, [f64; 3], f64)>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let rows = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "{l}");
            let n = |i: usize| f[i].parse::<f64>().unwrap();
            (f[0].to_string(), [n(1), n(2), n(3)], n(4))
        })
        .collect();
    (header, rows)
}

/// The world box (min, max per x, y, z) of a volume's voxel centres.
fn world_box(v: &Volume) -> ([f64; 3], [f64; 3]) {
    let s = v.shape();
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for c in 0..8 {
        let corner = [0, 1, 2].map(|a| {
            if c >> a & 1 == 1 {
                (s[a] - 1) as f64
            } else {
                0.0
            }
        });
        let w = v.voxel_to_world(corner);
        for a in 0..3 {
            lo[a] = lo[a].min(w[a]);
            hi[a] = hi[a].max(w[a]);
        }
    }
    (lo, hi)
}

#[test]
fn detect_writes_csv_json_and_overlay_and_refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new([2.5, 2.0, 2.0], [-150.0, -120.0, -100.0]);
    let (v, _, _) = common::chest_phantom(g, [60, 120, 150], true);
    let input = dir.path().join("1.2.3.4.mha");
    lungcad::save(&v, &input).unwrap();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/detector_tiny/model.safetensors"
    );
    let (csv, json, png) = (
        dir.path().join("det.csv"),
        dir.path().join("det.json"),
        dir.path().join("overlay.png"),
    );
    let detect = |extra: &[&str]| {
        lungcad()
            .arg("detect")
            .arg(&input)
            .args(["--model", model])
            .args(extra)
            .output()
            .unwrap()
    };
    let run = detect(&[
        "--device",
        "cpu",
        "--batch-size",
        "3",
        "--threshold",
        "0",
        "--max-detections",
        "7",
        "--out",
        csv.to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
        "--overlay",
        png.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("on cpu (flex)"), "{stderr}");
    // The table on stdout: a header and one line per detection.
    let table = String::from_utf8_lossy(&run.stdout);
    assert_eq!(table.lines().count(), 1 + 7, "{table}");

    // CSV: LUNA16 submission columns, the series named by the file stem (MetaImage has no
    // series UID), probabilities in decreasing order, centres inside the scan.
    let (header, rows) = read_detections_csv(&csv);
    assert_eq!(header, "seriesuid,coordX,coordY,coordZ,probability");
    assert_eq!(rows.len(), 7);
    let (lo, hi) = world_box(&v);
    for (i, (uid, c, p)) in rows.iter().enumerate() {
        assert_eq!(uid, "1.2.3.4");
        assert!((0.0..=1.0).contains(p));
        if i > 0 {
            assert!(*p <= rows[i - 1].2);
        }
        for a in 0..3 {
            assert!(c[a] >= lo[a] - 1.0 && c[a] <= hi[a] + 1.0, "{c:?}");
        }
    }
    // JSON: the same detections with their diameters.
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let dets = j["detections"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert_eq!(dets.len(), 7);
    for (d, (_, c, p)) in dets.iter().zip(&rows) {
        assert!(d["diameter_mm"].as_f64().unwrap() > 0.0);
        assert!((d["probability"].as_f64().unwrap() - p).abs() < 1e-4);
        assert!((d["coordX"].as_f64().unwrap() - c[0]).abs() < 1e-2);
    }
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    // Same input, same device: the same file (the default flips are x).
    let again = dir.path().join("again.csv");
    let run = detect(&[
        "--device",
        "cpu",
        "--flips",
        "x",
        "--threshold",
        "0",
        "--max-detections",
        "7",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    assert_eq!(std::fs::read(&csv).unwrap(), std::fs::read(&again).unwrap());
    // ... on any number of threads.
    for threads in ["1", "3"] {
        let other = dir.path().join(format!("threads{threads}.csv"));
        let run = lungcad()
            .env("RAYON_NUM_THREADS", threads)
            .arg("detect")
            .arg(&input)
            .args(["--model", model, "--device", "cpu", "--batch-size", "3"])
            .args(["--threshold", "0", "--max-detections", "7", "--out"])
            .arg(&other)
            .output()
            .unwrap();
        assert!(run.status.success());
        assert_eq!(
            std::fs::read(&csv).unwrap(),
            std::fs::read(&other).unwrap(),
            "{threads} thread(s)"
        );
    }
    // Test-time flips: the default is x; without them, as many detections, other values.
    let flipped = dir.path().join("flipped.csv");
    let run = detect(&[
        "--device",
        "cpu",
        "--flips",
        "none",
        "--threshold",
        "0",
        "--max-detections",
        "7",
        "--out",
        flipped.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (_, flipped_rows) = read_detections_csv(&flipped);
    assert_eq!(flipped_rows.len(), 7);
    assert_ne!(flipped_rows, rows);

    // Refused, with a one-line error and exit 1: an output that is neither CSV nor JSON,
    // a model file that is not one, a batch size of 0, an unknown device, more tiles,
    // tile coverage or tensor bytes than the limits.
    let not_a_model = dir.path().join("notes.safetensors");
    std::fs::write(&not_a_model, b"hello").unwrap();
    for (args, expect) in [
        (vec!["--out", "det.txt"], ".csv, .json or .jsonl"),
        (vec!["--batch-size", "0"], "batch size"),
        (vec!["--device", "tpu"], "auto, wgpu, cpu or cuda"),
        (vec!["--flips", "mirror"], "none, x or all"),
        (vec!["--max-tiles", "1"], "tile count is"),
        (vec!["--max-tile-coverage", "1"], "tile coverage"),
        (vec!["--max-tensor-bytes", "1000"], "largest tensor"),
    ] {
        let run = detect(&args);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let run = lungcad()
        .arg("detect")
        .arg(&input)
        .arg("--model")
        .arg(&not_a_model)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("notes.safetensors"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// `lungcad detect` over several CTs: one model load, one submission CSV with every scan's
/// rows (each scan's rows as a run on it alone writes them), a JSON line and an overlay
/// per scan, and a scan that cannot be read reported and skipped with exit status 1.
#[test]
fn detect_runs_several_cts_into_one_submission_and_skips_unreadable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = common::chest_phantom(
        Geometry::new([2.5, 2.0, 2.0], [-150.0, -120.0, -100.0]),
        [60, 120, 150],
        true,
    );
    let (b, _, _) = common::chest_phantom(
        Geometry::new([2.0, 2.5, 2.5], [-140.0, -110.0, -300.0]),
        [70, 100, 120],
        true,
    );
    let (pa, pb) = (
        dir.path().join("1.2.3.1.mha"),
        dir.path().join("1.2.3.2.nii.gz"),
    );
    lungcad::save(&a, &pa).unwrap();
    lungcad::save(&b, &pb).unwrap();
    let broken = dir.path().join("9.9.mhd");
    std::fs::write(&broken, "not a header\n").unwrap();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/detector_tiny/model.safetensors"
    );
    let detect = |cts: &[&std::path::Path], extra: &[&str]| {
        lungcad()
            .arg("detect")
            .args(cts)
            .args(["--model", model, "--device", "cpu", "--threshold", "0"])
            .args(["--max-detections", "6"])
            .args(extra)
            .output()
            .unwrap()
    };
    let (csv, jsonl, overlays) = (
        dir.path().join("all.csv"),
        dir.path().join("all.jsonl"),
        dir.path().join("overlays"),
    );
    let run = detect(
        &[&pa, &broken, &pb],
        &[
            "--out",
            csv.to_str().unwrap(),
            "--out",
            jsonl.to_str().unwrap(),
            "--overlay-dir",
            overlays.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[2/3] skipped"), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("1 of 3 CTs skipped")
            && stderr.contains("9.9.mhd: MetaImage"),
        "{stderr}"
    );
    // One line per scan on stdout, named by the file without its extension(s).
    let stdout = String::from_utf8_lossy(&run.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("[1/3] 1.2.3.1: 6 detection(s)"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("[3/3] 1.2.3.2: 6 detection(s)"),
        "{stdout}"
    );

    // The CSV: one header, then each scan's rows, as a run on that scan alone writes them.
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.matches("seriesuid,").count(), 1);
    let mut expected = String::new();
    for (i, ct) in [&pa, &pb].into_iter().enumerate() {
        let one = dir.path().join(format!("one{i}.csv"));
        let run = detect(&[ct], &["--out", one.to_str().unwrap()]);
        assert!(run.status.success());
        let single = std::fs::read_to_string(&one).unwrap();
        if i == 0 {
            expected += single.lines().next().unwrap();
            expected += "\n";
        }
        expected += &single[single.find('\n').unwrap() + 1..];
    }
    assert_eq!(text, expected);
    // JSON lines: one object per scan, the CSV's detections with their diameters.
    let objects: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 2);
    let (_, rows) = read_detections_csv(&csv);
    for (o, uid) in objects.iter().zip(["1.2.3.1", "1.2.3.2"]) {
        assert_eq!(o["seriesuid"], uid);
        let dets = o["detections"].as_array().unwrap();
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == uid).collect();
        assert_eq!(dets.len(), mine.len());
        for (d, r) in dets.iter().zip(mine) {
            assert!((d["coordX"].as_f64().unwrap() - r.1[0]).abs() < 1e-6);
            assert!(d["diameter_mm"].as_f64().unwrap() > 0.0);
        }
    }
    for uid in ["1.2.3.1", "1.2.3.2"] {
        let png = std::fs::read(overlays.join(format!("{uid}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    // A scan given twice is detected once.
    let twice = dir.path().join("twice.csv");
    let run = detect(&[&pa, &pa], &["--out", twice.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("already detected from"), "{err}");
    assert_eq!(read_detections_csv(&twice).1.len(), 6);
    // When no scan could be read, no output is left behind, and a file already at an
    // output's path is left as it was.
    let none = dir.path().join("none.csv");
    let run = detect(&[&broken, &broken], &["--out", none.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    assert!(!none.exists());
    std::fs::write(&none, "earlier results\n").unwrap();
    for cts in [vec![broken.as_path()], vec![&broken, &broken]] {
        let run = detect(&cts, &["--out", none.to_str().unwrap()]);
        assert_eq!(run.status.code(), Some(1));
        assert_eq!(std::fs::read_to_string(&none).unwrap(), "earlier results\n");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Refused before any work: one-scan outputs, --series and --stack with several CTs, an output
    // given twice or that is also an input.
    let twice_csv = dir.path().join("t.csv");
    let twice_csv = twice_csv.to_str().unwrap();
    for (args, expect) in [
        (vec!["--out", "x.json"], ".jsonl"),
        (vec!["--overlay", "x.png"], "--overlay-dir"),
        (vec!["--series", "1.2"], "--series"),
        (vec!["--stack", "2"], "--stack picks a stack of one"),
        (vec!["--out", "x.txt"], ".csv, .json or .jsonl"),
        (vec!["--out", twice_csv, "--out", twice_csv], "given twice"),
    ] {
        let run = detect(&[&pa, &pb], &args);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let named_csv = dir.path().join("scan.csv");
    let run = detect(&[&pa, &named_csv], &["--out", named_csv.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("also a CT to read"), "{err}");
}

/// `lungcad detect` end to end on the real LIDC-IDRI-0001: an untrained network (small, so
/// CI can afford it on the CPU) at the default preprocessing (1 mm, 128³ tiles), writing
/// the CSV, the JSON and the overlay.
#[test]
fn detect_runs_end_to_end_on_lidc() {
    let Some(series) = common::lidc_0001() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/detector_tiny/detector_config.json"
    );
    let model = dir.path().join("untrained.safetensors");
    let init = lungcad()
        .args(["init-model", "--seed", "3", "--out"])
        .arg(&model)
        .arg("--detector-config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (csv, json, png) = (
        dir.path().join("det.csv"),
        dir.path().join("det.json"),
        dir.path().join("overlay.png"),
    );
    let run = lungcad()
        .arg("detect")
        .arg(&series)
        .arg("--model")
        .arg(&model)
        .args(["--device", "cpu", "--batch-size", "8", "--threshold", "0"])
        .arg("--out")
        .arg(&csv)
        .arg("--out")
        .arg(&json)
        .arg("--overlay")
        .arg(&png)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    println!("{stderr}");
    let (header, rows) = read_detections_csv(&csv);
    assert_eq!(header, "seriesuid,coordX,coordY,coordZ,probability");
    assert_eq!(rows.len(), 100, "--max-detections defaults to 100");
    let v = lungcad::load(&series, &lungcad::LoadConfig::default()).unwrap();
    let uid = v.info.series_uid.clone().unwrap();
    let (lo, hi) = world_box(&v);
    for (u, c, _) in &rows {
        assert_eq!(u, &uid);
        for a in 0..3 {
            assert!(c[a] >= lo[a] - 1.0 && c[a] <= hi[a] + 1.0, "{c:?}");
        }
    }
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["detections"].as_array().map(|a| a.len()), Some(100));
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
}

/// `lungcad train` on `lungcad synth` phantoms: a config file and flags, progress to stderr, a run folder
/// whose model `lungcad detect` reads; `--resume` extends the run; bad input fails in one
/// line.
#[test]
fn train_writes_a_run_that_detect_reads_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // The project's own phantoms, as `lungcad synth` writes them.
    let data = dir.path().join("data");
    let synth = lungcad()
        .args(["synth", "--coarse", "--count", "2", "--seed", "1", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        synth.status.success(),
        "{}",
        String::from_utf8_lossy(&synth.stderr)
    );
    let config = lungcad::train::run::TrainConfig {
        detector: common::tiny_detector_config(),
        preprocess: common::tiny_preprocess_config(),
        ..Default::default()
    };
    let config_path = dir.path().join("train.json");
    std::fs::write(&config_path, config.to_json()).unwrap();
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        lungcad()
            .args(["train", "--device", "cpu", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let printed = train(&[
        "--config",
        config_path.to_str().unwrap(),
        "--print-config",
        "--epochs",
        "3",
    ]);
    assert!(printed.status.success());
    let shown =
        lungcad::train::run::TrainConfig::from_json(&String::from_utf8_lossy(&printed.stdout))
            .unwrap();
    assert_eq!(shown.epochs, 3);
    assert_eq!(shown.detector, config.detector);
    assert!(!out.exists(), "--print-config writes nothing");

    let args = [
        "--config",
        config_path.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--patches-per-epoch",
        "4",
        "--val-fraction",
        "0.5",
    ];
    let run = train(&args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("epoch 1: loss"), "{err}");
    assert!(err.contains("validation CPM"), "{err}");
    let model = out.join("model.safetensors");
    for f in [
        "metrics.jsonl",
        "curves.png",
        "split.json",
        "train_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let scan = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "mhd"))
        .unwrap();
    let det = lungcad()
        .arg("detect")
        .arg(&scan)
        .arg("--model")
        .arg(&model)
        .args(["--device", "cpu", "--threshold", "0.5"])
        .output()
        .unwrap();
    assert!(
        det.status.success(),
        "{}",
        String::from_utf8_lossy(&det.stderr)
    );

    // Again without --resume: refused; with it, epoch 2 follows.
    let again = train(&args);
    assert!(!again.status.success());
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(
        e.contains("already holds a training run") && e.lines().count() == 1,
        "{e}"
    );
    let resumed = train(&["--resume", "--epochs", "2"]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(
        err.contains("epoch 2: loss") && !err.contains("epoch 1: loss"),
        "{err}"
    );

    // No annotations: one line naming the file.
    let bad = lungcad()
        .args(["train", "--data"])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && e.contains("annotations.csv"),
        "{e}"
    );
}

/// `lungcad synth`: deterministic phantoms as MetaImage and DICOM (the same voxels and
/// geometry), with a LUNA16 annotations.csv whose nodules lie in the lungs of the image.
#[test]
fn synth_writes_phantoms_as_metaimage_and_dicom_with_their_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("phantoms");
    let run = lungcad()
        .args([
            "synth", "--count", "2", "--seed", "40", "--coarse", "--format", "both", "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ann = lungcad::eval::Annotations::from_csv(out.join("annotations.csv")).unwrap();
    assert!(ann.len() >= 2);
    assert_eq!(
        std::fs::read(out.join("annotations.csv")).unwrap(),
        std::fs::read(out.join("mhd/annotations.csv")).unwrap()
    );
    let listing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("phantoms.json")).unwrap()).unwrap();
    assert_eq!(listing["phantoms"].as_array().unwrap().len(), 2);
    let uid = ann.findings[0].seriesuid.clone();
    let mhd = lungcad::load(out.join(format!("mhd/{uid}.mhd")), &Default::default()).unwrap();
    let dcm = lungcad::load(out.join(format!("dicom/{uid}")), &Default::default()).unwrap();
    assert_eq!(mhd.hu, dcm.hu);
    assert_eq!(dcm.info.series_uid.as_deref(), Some(uid.as_str()));
    for a in 0..3 {
        assert!((mhd.origin_mm()[a] - dcm.origin_mm()[a]).abs() < 1e-3);
        assert!((mhd.spacing_mm()[a] - dcm.spacing_mm()[a]).abs() < 1e-4);
    }
    // Same seed, same phantom.
    let again = dir.path().join("again");
    let run = lungcad()
        .args(["synth", "--count", "1", "--seed", "40", "--coarse", "--out"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(run.status.success());
    let v = lungcad::load(again.join(format!("{uid}.mhd")), &Default::default()).unwrap();
    assert_eq!(v.hu, mhd.hu);
    // The nodules are in the lungs lungcad's own preprocessing finds.
    let pre =
        lungcad::preprocess::preprocess(&mhd, &Default::default(), &Default::default()).unwrap();
    assert_eq!(pre.lung.components, 1, "two lungs joined by the airways");
    assert!(
        (2000.0..9000.0).contains(&pre.lung.lung_volume_ml),
        "{}",
        pre.lung.lung_volume_ml
    );
    for f in ann.findings.iter().filter(|f| f.seriesuid == uid) {
        let c = pre
            .geometry()
            .world_to_voxel([f.coord_x, f.coord_y, f.coord_z]);
        let c = c.map(|v| v.round() as usize);
        assert_eq!(pre.lung.mask[c], 1, "{f:?} outside the lung mask");
    }
    let bad = lungcad()
        .args(["synth", "--format", "png", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn demo_finds_the_phantoms_nodules_with_the_shipped_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let run = lungcad()
        .args(["demo", "--device", "cpu", "--threshold", "0.9", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{stdout}");
    // The truth it prints is the phantom's: the same seed gives the same nodules.
    let truth = lungcad::eval::Annotations::from_csv(out.join("truth.csv")).unwrap();
    let phantom = lungcad::synth::generate(
        5000,
        &serde_json::from_str(include_str!("../models/phantom-v2/synth_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(truth.len(), phantom.nodules.len());
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("found "))
        .expect("a summary line");
    let words: Vec<&str> = summary.split_whitespace().collect();
    let (found, total): (usize, usize) = (words[1].parse().unwrap(), words[3].parse().unwrap());
    assert_eq!(total, truth.len(), "{summary}");
    // Seed 5000 has 4 nodules. The shipped model finds 3 at p >= 0.9; its 6.2 mm
    // ground-glass nodule has a detection 3.7 mm from its centre, outside the 3.1 mm radius
    // LUNA16 counts as a hit (models/phantom-v2/README.md).
    assert!(
        found + 1 >= total,
        "the shipped model misses nodules: {summary}"
    );
    if found < total {
        assert!(
            stdout.contains("from nodule 1's centre, outside its 3.1 mm radius"),
            "the near miss is named: {stdout}"
        );
    }
    let (_, dets) = read_detections_csv(&out.join("detections.csv"));
    assert!(!dets.is_empty());
    assert!(dets.iter().all(|d| d.0 == phantom.series_uid));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("detections.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["detections"].as_array().map(|a| a.len()),
        Some(dets.len())
    );
    let png = std::fs::read(out.join("overlay.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // detect without --model runs the shipped model too.
    let ct = dir.path().join("phantom.mha");
    lungcad::save(&phantom.volume, &ct).unwrap();
    let csv = dir.path().join("det.csv");
    let run = lungcad()
        .arg("detect")
        .arg(&ct)
        .args(["--device", "cpu", "--out"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The file holds the phantom to MetaImage's precision, so allow rounding.
    let (_, again) = read_detections_csv(&csv);
    assert_eq!(
        again.len(),
        dets.len(),
        "detect and demo disagree on the same phantom"
    );
    for (a, b) in again.iter().zip(&dets) {
        assert!((a.2 - b.2).abs() < 1e-3, "{a:?} against {b:?}");
        assert!(
            (0..3).all(|k| (a.1[k] - b.1[k]).abs() < 0.1),
            "{a:?} against {b:?}"
        );
    }

    let bad = lungcad()
        .args(["demo", "--threshold", "2", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// `--gantry-tilt`: a tilted series is corrected by default (its warning in `info --json`,
/// the rows grown to cover every slice) and refused with `refuse`, exit 1 and one line.
#[test]
fn gantry_tilt_is_corrected_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hu = ndarray::Array3::from_shape_fn((4, 6, 5), |(z, y, x)| (z * 100 + y * 10 + x) as i16);
    let v = Volume::new(hu, Geometry::new([2.0, 0.8, 0.8], [-10.0, 5.0, 100.0])).unwrap();
    let opts = SeriesWriteOptions {
        slice_offsets_mm: (0..4).map(|k| [0.0, 0.4 * k as f64, 0.0]).collect(),
        ..Default::default()
    };
    write_series(&v, dir.path(), &opts).unwrap();
    let j = info_json(dir.path());
    assert_eq!(j["shape_zyx"], serde_json::json!([4, 6 + 2, 5]));
    let warnings = j["warnings"].to_string();
    assert!(
        warnings.contains("gantry tilt of 11.31 degrees corrected"),
        "{warnings}"
    );

    let out = lungcad()
        .args(["info", "--gantry-tilt", "refuse"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gantry tilt of 11.31 degrees, over the 0.05 degrees allowed"),
        "{err}"
    );
    let out = lungcad()
        .args(["info", "--gantry-tilt", "sideways"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown value");
}

/// `lungcad series`: the series found, from headers alone, as JSON and as text; a path
/// that is not there is an error.
#[test]
fn series_lists_the_series_of_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    small_series(&dir.path().join("a"));
    let j = json_of(&["series", "--json"], dir.path());
    assert_eq!(j["files_seen"], 4);
    let s = &j["series"][0];
    assert_eq!(s["series_uid"], "1.2.826.0.1.77");
    assert_eq!(
        (s["planes"].as_u64(), s["default"].as_bool()),
        (Some(4), Some(true))
    );
    assert_eq!(s["stacks"][0]["extent_mm"], 6.0);
    assert_eq!(
        s["stacks"][0]["pixel_spacing_mm"],
        serde_json::json!([0.8, 0.8])
    );
    let out = lungcad().arg("series").arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1.2.826.0.1.77  CT  4 plane(s) in 4 file(s)  (loaded when no --series")
            && text.contains("  stack 1: 4 plane(s) of 6x5, pixel spacing 0.8 x 0.8 mm"),
        "{text}"
    );
    let out = lungcad()
        .arg("series")
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// `--stack N`: the series above is one stack, so stack 1 loads it and stack 2 is refused
/// (exit 1, one line naming the stacks there are); stack 0 is refused by clap.
#[test]
fn stack_picks_a_stack_of_the_series() {
    let dir = tempfile::tempdir().unwrap();
    let hu = ndarray::Array3::from_shape_fn((3, 4, 5), |(z, y, x)| (z * 100 + y * 10 + x) as i16);
    let v = Volume::new(hu, Geometry::new([2.0, 0.8, 0.8], [-10.0, 5.0, 100.0])).unwrap();
    write_series(&v, dir.path(), &SeriesWriteOptions::default()).unwrap();
    let run = |k: &str| {
        lungcad()
            .args(["info", "--json", "--stack", k])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let j = json_of(&["info", "--json", "--stack", "1"], dir.path());
    assert_eq!(j["shape_zyx"], serde_json::json!([3, 4, 5]));
    let out = run("2");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stack 2 asked for, but the series' planes form 1 stack(s)")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert_eq!(run("0").status.code(), Some(2), "clap refuses stack 0");
}
