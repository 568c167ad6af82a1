//! MetaImage and NIfTI through the public API (`lungcad::load` / `lungcad::save`), the real
//! TotalSegmentator NIfTI when the shared data is present, and agreement with SimpleITK when
//! `python3` can import it (each skipped, with a message, otherwise); with SimpleITK, also
//! the corpus' ACR-NEMA DICOM file, which only ITK's reader (GDCM) of the peers reads as it is.

use lungcad::io::metaimage::{self, WriteOptions};
use lungcad::{load, save, Error, Geometry, LoadConfig, Volume};
use ndarray::Array3;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

/// TotalSegmentator's small NIfTI CT in `$LUNGCAD_DATA` (`None`, after saying so, when absent).
fn example_ct() -> Option<PathBuf> {
    common::data_dir("dicom-corpus/totalsegmentator/example_ct.nii.gz")
}

/// A direction `(z, y, x)` rotated about all three axes; `flip = -1` makes it left-handed.
fn oblique(flip: f64) -> [[f64; 3]; 3] {
    let (a, b) = (0.4f64, -0.25f64);
    let row = [a.cos(), a.sin(), 0.0];
    let col = [-a.sin() * b.cos(), a.cos() * b.cos(), b.sin()];
    let n = [
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    ];
    [[n[0] * flip, n[1] * flip, n[2] * flip], col, row]
}

fn sample(direction: [[f64; 3]; 3]) -> Volume {
    let hu = Array3::from_shape_fn((6, 7, 8), |(z, y, x)| {
        ((z * 7919 + y * 104_729 + x * 1_299_709) % 65_536) as i32 as i16
    });
    let geometry = Geometry {
        spacing_mm: [1.25, 0.742188, 0.6],
        origin_mm: [-171.5, -12.3456789, 301.0],
        direction,
    };
    Volume::new(hu, geometry).unwrap()
}

fn assert_geometry_close(a: &Geometry, b: &Geometry, tol: f64, what: &str) {
    for i in 0..3 {
        assert!(
            (a.spacing_mm[i] - b.spacing_mm[i]).abs() <= tol,
            "{what}: spacing {a:?} vs {b:?}"
        );
        assert!(
            (a.origin_mm[i] - b.origin_mm[i]).abs() <= tol * 300.0,
            "{what}: origin {a:?} vs {b:?}"
        );
        for j in 0..3 {
            assert!(
                (a.direction[i][j] - b.direction[i][j]).abs() <= tol,
                "{what}: direction {a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn round_trip_through_load_and_save() {
    let dir = tempfile::tempdir().unwrap();
    for (k, direction) in [
        lungcad::volume::IDENTITY_DIRECTION,
        oblique(1.0),
        oblique(-1.0),
    ]
    .into_iter()
    .enumerate()
    {
        let v = sample(direction);
        for name in ["ct.mhd", "ct.mha", "ct.nii", "ct.nii.gz"] {
            let path = dir.path().join(format!("{k}-{name}"));
            save(&v, &path).unwrap();
            let back = load(&path, &LoadConfig::default()).unwrap();
            assert_eq!(back.hu, v.hu, "{name}");
            if name.contains(".nii") {
                // NIfTI stores float32 geometry.
                assert_geometry_close(&v.geometry, &back.geometry, 1e-6, name);
                assert_eq!(back.info.format, "nifti");
            } else {
                assert_eq!(
                    back.geometry, v.geometry,
                    "{name}: MetaImage geometry is exact"
                );
                assert_eq!(back.info.format, "metaimage");
            }
            assert_eq!(back.info.slice_count, 6);
        }
        for name in ["ctz.mhd", "ctz.mha"] {
            let path = dir.path().join(format!("{k}-{name}"));
            metaimage::write(&v, &path, &WriteOptions { compress: true }).unwrap();
            let back = load(&path, &LoadConfig::default()).unwrap();
            assert_eq!(back.hu, v.hu);
            assert_eq!(back.geometry, v.geometry);
        }
        assert!(dir.path().join(format!("{k}-ctz.zraw")).is_file());
        assert!(dir.path().join(format!("{k}-ct.raw")).is_file());
    }
    assert!(matches!(
        save(&sample(oblique(1.0)), dir.path().join("x.png")),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn luna16_style_header() {
    let dir = tempfile::tempdir().unwrap();
    let header = "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
                  CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\n\
                  Offset = -198.100006 -195 -335.209991\nCenterOfRotation = 0 0 0\n\
                  AnatomicalOrientation = RAI\nElementSpacing = 0.7617189884185791 0.7617189884185791 2.5\n\
                  DimSize = 4 3 2\nElementType = MET_SHORT\n\
                  ElementDataFile = 1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860.raw\n";
    let raw: Vec<u8> = (0..24i16)
        .flat_map(|v| (v * 100 - 1000).to_le_bytes())
        .collect();
    std::fs::write(
        dir.path()
            .join("1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860.raw"),
        raw,
    )
    .unwrap();
    let mhd = dir
        .path()
        .join("1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860.mhd");
    std::fs::write(&mhd, header).unwrap();
    let v = load(&mhd, &LoadConfig::default()).unwrap();
    assert_eq!(v.shape(), [2, 3, 4]);
    assert_eq!(v.hu[[1, 2, 3]], 23 * 100 - 1000);
    assert_eq!(
        v.geometry.spacing_mm,
        [2.5, 0.7617189884185791, 0.7617189884185791]
    );
    assert_eq!(v.geometry.origin_mm, [-198.100006, -195.0, -335.209991]);
    // A LUNA16 world coordinate maps to the voxel ITK would give.
    let w = v.voxel_to_world([1.0, 2.0, 3.0]);
    assert!((w[0] - (-198.100006 + 3.0 * 0.7617189884185791)).abs() < 1e-9);
    assert!((w[2] - (-335.209991 + 2.5)).abs() < 1e-9);

    // A header that claims more data than the file has.
    std::fs::write(&mhd, header.replace("DimSize = 4 3 2", "DimSize = 4 3 3")).unwrap();
    let err = load(&mhd, &LoadConfig::default()).unwrap_err();
    assert!(matches!(err, Error::MetaImage { .. }), "{err}");
    assert!(err.to_string().contains("shorter"), "{err}");
    // And one whose size is absurd: refused by the limits.
    std::fs::write(
        &mhd,
        header.replace("DimSize = 4 3 2", "DimSize = 100000 100000 100000"),
    )
    .unwrap();
    assert!(matches!(
        load(&mhd, &LoadConfig::default()),
        Err(Error::Limit { .. })
    ));
}

#[test]
fn totalsegmentator_example_ct() {
    let Some(path) = example_ct() else { return };
    let v = load(&path, &LoadConfig::default()).unwrap();
    assert_eq!(v.info.format, "nifti");
    assert_eq!(v.shape(), [112, 101, 122]);
    assert_eq!(v.info.slice_count, 112);
    assert_eq!(v.geometry.spacing_mm, [3.0, 3.0, 3.0]);
    // sform_code 2 (aligned), qform_code 0: the sform, RAS -> LPS, as SimpleITK reads it.
    assert_eq!(
        v.geometry.origin_mm,
        [177.95632934570312, -11.319000244140625, 94.3017578125]
    );
    assert_eq!(
        v.geometry.itk_direction(),
        [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
    );
    assert_eq!(v.hu_range(), (-1207, 3382));
    let (sum, weighted, _, _) = checksum(&v);
    assert_eq!(
        (sum, weighted),
        (-496_851_173, -16_266_415_428_902),
        "same voxels as SimpleITK"
    );
}

/// The checksum `tests/scripts/check_itk_geometry.py` computes: `(sum, weighted, min, max)`.
fn checksum(v: &Volume) -> (i64, i64, i64, i64) {
    let (mut sum, mut weighted, mut min, mut max) = (0i64, 0i64, i64::MAX, i64::MIN);
    for (i, &h) in v.hu.iter().enumerate() {
        let h = i64::from(h);
        sum += h;
        weighted += h * ((i as i64 % 65_521) + 1);
        min = min.min(h);
        max = max.max(h);
    }
    (sum, weighted, min, max)
}

fn python() -> Option<String> {
    common::python_with("SimpleITK, numpy")
}

fn run_script(python: &str, args: &[&Path]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/check_itk_geometry.py");
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(a) => a,
        other => panic!("unexpected output {other}"),
    }
}

/// Numbers the script writes as decimal strings (parsed here exactly; serde_json's own float
/// parsing may be off by an ulp).
fn floats(v: &Value, key: &str) -> Vec<f64> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().parse().unwrap())
        .collect()
}

/// The geometry SimpleITK reports, as a lungcad `Geometry` (3-D only).
fn itk_geometry(v: &Value) -> Geometry {
    let s = floats(v, "spacing");
    let o = floats(v, "origin");
    let d = floats(v, "direction");
    let dir = [[d[0], d[1], d[2]], [d[3], d[4], d[5]], [d[6], d[7], d[8]]];
    Geometry::from_itk([s[0], s[1], s[2]], [o[0], o[1], o[2]], dir)
}

/// Asserts that SimpleITK's report `itk` and lungcad's volume `v` agree: shape, voxels
/// (checksum) and geometry within `tol`.
fn assert_agrees(itk: &Value, v: &Volume, tol: f64) {
    let what = itk["path"].as_str().unwrap_or("?");
    let shape: Vec<usize> = itk["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(shape, v.shape().to_vec(), "{what}: shape");
    let c = &itk["checksum"];
    let ours = checksum(v);
    let theirs = (
        c["sum"].as_i64().unwrap(),
        c["weighted"].as_i64().unwrap(),
        c["min"].as_i64().unwrap(),
        c["max"].as_i64().unwrap(),
    );
    assert_eq!(ours, theirs, "{what}: voxels differ");
    assert_geometry_close(&itk_geometry(itk), &v.geometry, tol, what);
}

#[test]
fn simpleitk_reads_what_lungcad_writes() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut written = Vec::new();
    for (k, direction) in [oblique(1.0), oblique(-1.0)].into_iter().enumerate() {
        let v = sample(direction);
        for (name, compress) in [
            ("a.mhd", false),
            ("b.mhd", true),
            ("c.mha", false),
            ("d.mha", true),
            ("e.nii", false),
            ("f.nii.gz", false),
        ] {
            let path = dir.path().join(format!("{k}{name}"));
            if name.contains(".nii") {
                save(&v, &path).unwrap();
            } else {
                metaimage::write(&v, &path, &WriteOptions { compress }).unwrap();
            }
            paths.push(path);
            written.push(v.clone());
        }
    }
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let reports = run_script(&python, &refs);
    assert_eq!(reports.len(), paths.len());
    for ((report, v), path) in reports.iter().zip(&written).zip(&paths) {
        let is_nifti = path.to_string_lossy().contains(".nii");
        // MetaImage geometry is written as shortest round-trip decimals: ITK reads it exactly.
        assert_agrees(report, v, if is_nifti { 1e-6 } else { 0.0 });
        assert_eq!(report["pixel_type"], "16-bit signed integer");
        // And lungcad reads its own file as ITK does (bit for bit with SimpleITK 2.5; a
        // little slack for NIfTI, whose float32 fields other ITK versions may treat differently).
        let back = load(path, &LoadConfig::default()).unwrap();
        assert_agrees(report, &back, if is_nifti { 1e-9 } else { 0.0 });
    }
}

#[test]
fn headless_acr_nema_file_reads_as_simpleitk_reads_it() {
    // No preamble, "DICM" or file meta group; implicit VR; no PhotometricInterpretation,
    // SamplesPerPixel or SeriesInstanceUID; ACR-NEMA's retired Image Position and Image
    // Orientation (0020,0030/0035) instead of DICOM's (0020,0032/0037).
    let Some(path) = common::data_dir("dicom-corpus/barre/CT_Implicit_Little_Headless_Retired.dcm")
    else {
        return;
    };
    let v = load(&path, &LoadConfig::default()).unwrap();
    assert_eq!(v.info.transfer_syntaxes, ["1.2.840.10008.1.2"]);
    assert_eq!(v.info.series_uid, None, "it has no SeriesInstanceUID");
    assert_eq!(v.geometry.origin_mm, [-80.30762, -111.3076, 52.0]);
    let Some(python) = python() else { return };
    let report = &run_script(&python, &[&path])[0];
    // A single slice's spacing along the normal: ITK says 1 mm, lungcad takes the
    // SliceThickness (2 mm); everything else is ITK's, exactly.
    assert_eq!(v.geometry.spacing_mm[0], 2.0);
    let mut itk = report.clone();
    itk["spacing"][2] = Value::String("2.0".into());
    assert_agrees(&itk, &v, 0.0);
}

#[test]
fn lungcad_reads_what_simpleitk_writes() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/check_itk_geometry.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("write-reference")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(reports.len() >= 8);
    for report in &reports {
        let path = PathBuf::from(report["path"].as_str().unwrap());
        let v = load(&path, &LoadConfig::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let is_nifti = path.to_string_lossy().contains(".nii");
        assert_agrees(report, &v, if is_nifti { 1e-9 } else { 0.0 });
    }
}

#[test]
fn lungcad_reads_example_ct_as_simpleitk_does() {
    let Some(path) = example_ct() else { return };
    let Some(python) = python() else { return };
    let reports = run_script(&python, &[&path]);
    let v = load(&path, &LoadConfig::default()).unwrap();
    assert_agrees(&reports[0], &v, 0.0);
}
