//! DICOM series loading through the public API: real LIDC-IDRI data (when present) and
//! synthetic series written by lungcad itself.

mod common;

use lungcad::io::dicom::{list_series, write_series, SeriesWriteOptions, StoredFormat};
use lungcad::{load, Error, Geometry, LoadConfig, SeriesProblem, Volume};
use ndarray::Array3;
use std::path::Path;

fn cfg() -> LoadConfig {
    LoadConfig::default()
}

/// A small volume with distinct values everywhere, in HU range.
fn phantom(shape: [usize; 3], geometry: Geometry) -> Volume {
    let hu = Array3::from_shape_fn((shape[0], shape[1], shape[2]), |(z, y, x)| {
        ((z * 331 + y * 37 + x * 7) % 3000) as i16 - 1024
    });
    Volume::new(hu, geometry).unwrap()
}

/// Every voxel of `a` is found, with the same HU, at the same world position in `b`.
fn assert_same_world_content(a: &Volume, b: &Volume) {
    assert_eq!(a.hu.len(), b.hu.len());
    for ((z, y, x), v) in a.hu.indexed_iter() {
        let w = a.voxel_to_world([z as f64, y as f64, x as f64]);
        let idx = b.world_to_voxel(w);
        for k in 0..3 {
            assert!(
                (idx[k] - idx[k].round()).abs() < 1e-3,
                "{idx:?} not on the grid"
            );
        }
        let got = b.hu[[
            idx[0].round() as usize,
            idx[1].round() as usize,
            idx[2].round() as usize,
        ]];
        assert_eq!(got, *v, "voxel {:?}", (z, y, x));
    }
}

fn geometry_close(a: &Geometry, b: &Geometry, tol: f64) {
    for k in 0..3 {
        assert!(
            (a.spacing_mm[k] - b.spacing_mm[k]).abs() < tol,
            "{a:?} vs {b:?}"
        );
        assert!(
            (a.origin_mm[k] - b.origin_mm[k]).abs() < tol,
            "{a:?} vs {b:?}"
        );
        for w in 0..3 {
            assert!(
                (a.direction[k][w] - b.direction[k][w]).abs() < tol,
                "{a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn synthetic_axial_series_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new([1.25, 0.75, 0.7], [-120.5, 30.25, -200.0]);
    let v = phantom([9, 12, 10], g);
    let opts = SeriesWriteOptions {
        shuffle_names_seed: Some(7),
        reverse_instance_numbers: true,
        ..SeriesWriteOptions::default()
    };
    write_series(&v, dir.path(), &opts).unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    assert_eq!(back.hu, v.hu, "voxels in (z, y, x) order");
    geometry_close(&back.geometry, &v.geometry, 1e-9);
    assert_eq!(back.info.slice_count, 9);
    assert_eq!(back.info.modality.as_deref(), Some("CT"));
    assert_eq!(back.info.transfer_syntaxes, ["1.2.840.10008.1.2.1"]);
}

#[test]
fn unsigned_12_bit_implicit_vr_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let v = phantom([5, 8, 6], Geometry::new([2.0, 0.5, 0.5], [0.0, 0.0, 0.0]));
    let opts = SeriesWriteOptions {
        explicit_vr: false,
        stored: StoredFormat::Unsigned12,
        ..SeriesWriteOptions::default()
    };
    write_series(&v, dir.path(), &opts).unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    let expect = v.hu.mapv(|h| h.clamp(-1024, 3071));
    assert_eq!(back.hu, expect);
    assert_eq!(back.info.transfer_syntaxes, ["1.2.840.10008.1.2"]);
}

/// The data set of a Part 10 file: what follows its preamble, "DICM" and file meta group.
fn data_set_of(part10: &[u8]) -> &[u8] {
    assert_eq!(&part10[128..132], b"DICM");
    assert_eq!(&part10[132..138], &[0x02, 0x00, 0x00, 0x00, b'U', b'L']);
    let group_len = u32::from_le_bytes(part10[140..144].try_into().unwrap()) as usize;
    &part10[144 + group_len..]
}

/// Rewrites every file in `dir` with `edit` applied to its bytes.
fn edit_files(dir: &Path, edit: impl Fn(&[u8]) -> Vec<u8>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, edit(&bytes)).unwrap();
    }
}

/// Replaces the first occurrence of tag `from` (group, element; little endian) with `to`
/// (in the files written here, nothing before a tag of group 0020 holds its bytes).
fn retag(bytes: &[u8], from: (u16, u16), to: (u16, u16)) -> Vec<u8> {
    let pat = [from.0.to_le_bytes(), from.1.to_le_bytes()].concat();
    let rep = [to.0.to_le_bytes(), to.1.to_le_bytes()].concat();
    let mut out = bytes.to_vec();
    let at = out.windows(4).position(|w| w == pat).expect("tag present");
    out[at..at + 4].copy_from_slice(&rep);
    out
}

#[test]
fn series_without_part10_headers_loads_like_with_them() {
    let g = Geometry::new([1.25, 0.75, 0.7], [-120.5, 30.25, -200.0]);
    let v = phantom([6, 12, 10], g);
    for (explicit_vr, ts) in [(true, "1.2.840.10008.1.2.1"), (false, "1.2.840.10008.1.2")] {
        let dir = tempfile::tempdir().unwrap();
        let opts = SeriesWriteOptions {
            explicit_vr,
            shuffle_names_seed: Some(3),
            ..SeriesWriteOptions::default()
        };
        write_series(&v, dir.path(), &opts).unwrap();
        let with = load(dir.path(), &cfg()).unwrap();
        edit_files(dir.path(), |b| data_set_of(b).to_vec());
        // a text file beside them is still not taken for DICOM
        let readme = dir.path().join("README");
        std::fs::write(&readme, "# not DICOM\n").unwrap();
        let without = load(dir.path(), &cfg()).unwrap();
        assert_eq!(without.hu, v.hu, "explicit VR {explicit_vr}");
        assert_eq!(without.geometry, with.geometry);
        assert_eq!(without.info.series_uid, with.info.series_uid);
        assert_eq!(without.info.transfer_syntaxes, [ts]);
        let e = load(&readme, &cfg()).unwrap_err().to_string();
        assert!(e.contains("not a DICOM file"), "{e}");
        // one such file on its own too
        let one = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "dcm"))
            .unwrap();
        assert_eq!(load(&one, &cfg()).unwrap().shape(), [1, 12, 10]);
    }
}

#[test]
fn large_headless_files_are_read_past_their_prefix() {
    // 256 x 256 planes (128 KiB of pixels, past the guard's 64 KiB prefix), each followed by
    // a trailing padding element so that PixelData is not the file's tail: pixels come
    // through the parser, not the uncompressed fast path
    let v = phantom(
        [3, 256, 256],
        Geometry::new([2.0, 0.5, 0.5], [10.0, -5.0, 3.0]),
    );
    for explicit_vr in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let opts = SeriesWriteOptions {
            explicit_vr,
            ..SeriesWriteOptions::default()
        };
        write_series(&v, dir.path(), &opts).unwrap();
        let padding: &[u8] = if explicit_vr {
            &[0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 0]
        } else {
            &[0xFC, 0xFF, 0xFC, 0xFF, 2, 0, 0, 0, 0, 0]
        };
        edit_files(dir.path(), |b| [data_set_of(b), padding].concat());
        let back = load(dir.path(), &cfg()).unwrap();
        assert_eq!(back.hu, v.hu, "explicit VR {explicit_vr}");
        assert_eq!(back.geometry, v.geometry);
    }
}

#[test]
fn acr_nema_retired_geometry_is_read_only_without_the_part10_header() {
    // ImagePositionPatient and ImageOrientationPatient renamed to ACR-NEMA's retired Image
    // Position (0020,0030) and Image Orientation (0020,0035), in an oblique series
    let [normal, col, row] = OBLIQUE;
    let g = Geometry {
        spacing_mm: [1.5, 0.8, 0.7],
        origin_mm: [-30.0, 12.5, 40.0],
        direction: [normal, col, row],
    };
    let v = phantom([4, 9, 11], g);
    let retire = |b: &[u8]| {
        retag(
            &retag(b, (0x20, 0x32), (0x20, 0x30)),
            (0x20, 0x37),
            (0x20, 0x35),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    write_series(&v, dir.path(), &SeriesWriteOptions::default()).unwrap();
    // in Part 10 files they are not DICOM's attributes: the series has no geometry
    edit_files(dir.path(), retire);
    let e = load(dir.path(), &cfg()).unwrap_err().to_string();
    assert!(e.contains("slices lack ImageOrientationPatient"), "{e}");
    // so is a Part 10 series with only its position retired
    let only_position = tempfile::tempdir().unwrap();
    write_series(&v, only_position.path(), &SeriesWriteOptions::default()).unwrap();
    edit_files(only_position.path(), |b| {
        retag(b, (0x20, 0x32), (0x20, 0x30))
    });
    let e = load(only_position.path(), &cfg()).unwrap_err().to_string();
    assert!(e.contains("slices lack ImagePositionPatient"), "{e}");
    // without the Part 10 header (ACR-NEMA) they are the geometry
    edit_files(dir.path(), |b| data_set_of(b).to_vec());
    let back = load(dir.path(), &cfg()).unwrap();
    assert_eq!(back.hu, v.hu);
    // DICOM decimal strings carry about 1e-6 relative precision
    geometry_close(&back.geometry, &v.geometry, 1e-5);
}

#[test]
fn negative_slice_direction_is_sorted_back() {
    let dir = tempfile::tempdir().unwrap();
    // slices run towards the feet: direction[0] = -z
    let g = Geometry {
        spacing_mm: [2.5, 0.7, 0.7],
        origin_mm: [-100.0, -50.0, 40.0],
        direction: [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
    };
    let v = phantom([6, 7, 5], g);
    write_series(&v, dir.path(), &SeriesWriteOptions::default()).unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    // Loaded stacks always increase along the slice normal (+z here): z is reversed.
    assert_eq!(back.geometry.direction[0], [0.0, 0.0, 1.0]);
    assert!((back.geometry.origin_mm[2] - (40.0 - 5.0 * 2.5)).abs() < 1e-9);
    assert_same_world_content(&v, &back);
}

/// An oblique orientation: rows turned 25 degrees about z, columns tilted out of the axial
/// plane; `[normal, column, row]`, as `Geometry::direction`.
const OBLIQUE: [[f64; 3]; 3] = {
    // sin and cos of 25 degrees
    let (s, c) = (0.42261826174069944, 0.9063077870366499);
    let row = [c, s, 0.0];
    let col = [-s * 0.6, c * 0.6, -0.8];
    let normal = [
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    ];
    [normal, col, row]
};

#[test]
fn oblique_series_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let [normal, col, row] = OBLIQUE;
    let g = Geometry {
        spacing_mm: [1.5, 0.8, 0.9],
        origin_mm: [12.5, -30.0, 100.0],
        direction: [normal, col, row],
    };
    let v = phantom([5, 6, 7], g);
    write_series(
        &v,
        dir.path(),
        &SeriesWriteOptions {
            shuffle_names_seed: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    assert_eq!(back.hu, v.hu);
    // DICOM decimal strings carry about 1e-6 relative precision
    geometry_close(&back.geometry, &v.geometry, 1e-5);
}

fn series_in(dir: &Path, shape: [usize; 3], uid: &str) -> Volume {
    let v = phantom(shape, Geometry::new([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]));
    let opts = SeriesWriteOptions {
        series_uid: Some(uid.into()),
        ..Default::default()
    };
    write_series(&v, dir, &opts).unwrap();
    v
}

#[test]
fn missing_slice_is_refused_with_series_uid() {
    let dir = tempfile::tempdir().unwrap();
    series_in(dir.path(), [6, 4, 4], "1.2.826.0.1.1");
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::remove_file(&files[3]).unwrap(); // names follow z without shuffling
    match load(dir.path(), &cfg()) {
        Err(
            e @ Error::Series {
                problem: SeriesProblem::MissingSlices { .. },
                ..
            },
        ) => {
            assert!(e.to_string().contains("1.2.826.0.1.1"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_slice_kept_once_with_warning() {
    let dir = tempfile::tempdir().unwrap();
    let v = series_in(dir.path(), [4, 3, 3], "1.2.826.0.1.2");
    std::fs::copy(dir.path().join("IM00002.dcm"), dir.path().join("copy.dcm")).unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    assert_eq!(back.hu, v.hu);
    assert!(
        back.info
            .warnings
            .iter()
            .any(|w| w.contains("same position")),
        "{:?}",
        back.info.warnings
    );
}

#[test]
fn series_selection_default_and_by_uid() {
    let dir = tempfile::tempdir().unwrap();
    let big = series_in(&dir.path().join("a"), [5, 3, 3], "1.2.826.0.1.10");
    let small = series_in(&dir.path().join("b/c"), [3, 3, 3], "1.2.826.0.1.11");
    let v = load(dir.path(), &cfg()).unwrap();
    assert_eq!(v.hu, big.hu);
    assert!(v.info.warnings.iter().any(|w| w.contains("1.2.826.0.1.11")));
    let v = load(
        dir.path(),
        &LoadConfig {
            series_uid: Some("1.2.826.0.1.11".into()),
            ..cfg()
        },
    )
    .unwrap();
    assert_eq!(v.hu, small.hu);
    match load(
        dir.path(),
        &LoadConfig {
            series_uid: Some("9.9".into()),
            ..cfg()
        },
    ) {
        Err(Error::SeriesNotFound {
            requested,
            available,
        }) => {
            assert_eq!(requested, "9.9");
            assert!(available.contains("1.2.826.0.1.10"));
        }
        other => panic!("{other:?}"),
    }
}

/// Two stacks of three planes each, axial and coronal, in one series: neither is the
/// largest, so the series is refused (`--stack` would pick one).
#[test]
fn two_stacks_of_one_size_in_one_series_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = phantom([3, 4, 4], Geometry::new([1.0; 3], [0.0; 3]));
    let b = phantom(
        [3, 4, 4],
        Geometry {
            spacing_mm: [1.0; 3],
            origin_mm: [0.0, 0.0, 10.0],
            direction: [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]],
        },
    );
    let opts = SeriesWriteOptions {
        series_uid: Some("1.2.826.0.1.3".into()),
        ..Default::default()
    };
    write_series(&a, &dir.path().join("a"), &opts).unwrap();
    write_series(&b, &dir.path().join("b"), &opts).unwrap();
    assert!(matches!(
        load(dir.path(), &cfg()),
        Err(Error::Series {
            problem: SeriesProblem::SeveralStacks {
                stacks: 2,
                tied: 2,
                ..
            },
            ..
        })
    ));
}

/// `planes` sagittal planes of 9 x 4 pixels, 2 mm apart: a localizer.
fn sagittal_localizer(planes: usize) -> Volume {
    phantom(
        [planes, 9, 4],
        Geometry {
            spacing_mm: [1.0, 2.0, 2.0],
            origin_mm: [0.0, -50.0, 60.0],
            direction: [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
        },
    )
}

/// A localizer (one sagittal plane of another size) stored in the axial CT series: the
/// axial stack loads, as it was written, and a warning names the plane left out.
#[test]
fn a_localizer_in_the_series_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let axial = phantom(
        [5, 6, 7],
        Geometry::new([1.5, 0.7, 0.7], [-10.0, -20.0, 30.0]),
    );
    let localizer = sagittal_localizer(1);
    let opts = SeriesWriteOptions {
        series_uid: Some("1.2.826.0.1.4".into()),
        ..Default::default()
    };
    write_series(&axial, &dir.path().join("axial"), &opts).unwrap();
    write_series(&localizer, &dir.path().join("localizer"), &opts).unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    assert_eq!(back.hu, axial.hu);
    geometry_close(&back.geometry, &axial.geometry, 1e-6);
    assert_eq!(
        back.info.warnings,
        [
            "the series' planes form 2 stacks (they differ in orientation, size or pixel \
             spacing): loaded the largest, stack 1, 5 plane(s) of 6x7, orientation (1, 0, 0, \
             0, 1, 0), pixel spacing 0.7 x 0.7 mm; not loaded (--stack N loads another): \
             stack 2, 1 plane(s) of 9x4, orientation (0, 1, 0, 0, 0, -1), pixel spacing 2 x \
             2 mm"
        ]
    );
}

/// `list_series`: two series, one with a localizer stored in it; each stack numbered and
/// measured, and the default the series `load` picks (the most planes in one stack, then
/// the most planes).
#[test]
fn series_are_listed_with_their_stacks_and_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new([1.5, 0.7, 0.7], [-10.0, -20.0, 30.0]);
    let with_localizer = SeriesWriteOptions {
        series_uid: Some("1.2.826.0.1.4".into()),
        ..Default::default()
    };
    write_series(
        &phantom([5, 6, 7], g),
        &dir.path().join("a"),
        &with_localizer,
    )
    .unwrap();
    write_series(
        &sagittal_localizer(1),
        &dir.path().join("a_loc"),
        &with_localizer,
    )
    .unwrap();
    let opts = SeriesWriteOptions {
        series_uid: Some("1.2.826.0.1.5".into()),
        ..Default::default()
    };
    write_series(&phantom([5, 6, 7], g), &dir.path().join("b"), &opts).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not DICOM").unwrap();
    let list = list_series(dir.path(), &cfg()).unwrap();
    assert_eq!((list.files_seen, list.skipped), (12, 1));
    let [a, b] = &list.series[..] else {
        panic!("{list:?}")
    };
    assert_eq!(a.series_uid.as_deref(), Some("1.2.826.0.1.4"));
    assert_eq!((a.modality.as_str(), a.planes, a.files), ("CT", 6, 6));
    assert!(a.default && !b.default);
    assert_eq!((a.default_stack, b.default_stack), (Some(1), Some(1)));
    assert_eq!(a.stacks.len(), 2);
    assert_eq!(
        (a.stacks[0].stack, a.stacks[0].planes, a.stacks[0].rows),
        (1, 5, 6)
    );
    assert!((a.stacks[0].extent_mm.unwrap() - 6.0).abs() < 1e-9);
    assert_eq!(a.stacks[0].pixel_spacing_mm, Some([0.7, 0.7]));
    assert_eq!(
        (a.stacks[1].stack, a.stacks[1].planes, a.stacks[1].rows),
        (2, 1, 9)
    );
    assert_eq!(
        a.stacks[1].orientation,
        Some([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    );
    assert_eq!((b.planes, b.stacks.len()), (5, 1));
    assert_eq!(b.transfer_syntaxes, ["1.2.840.10008.1.2.1"]);
    let loaded = load(dir.path(), &cfg()).unwrap();
    assert_eq!(loaded.info.series_uid.as_deref(), Some("1.2.826.0.1.4"));
    let text = list.to_string();
    assert!(
        text.starts_with(
            "1.2.826.0.1.4  CT  6 plane(s) in 6 file(s)  (loaded when no --series is given)\n  \
             stack 1: 5 plane(s) of 6x7, pixel spacing 0.7 x 0.7 mm, orientation (1, 0, 0, 0, \
             1, 0), 6 mm long\n  stack 2: 1 plane(s) of 9x4, pixel spacing 2 x 2 mm, \
             orientation (0, 1, 0, 0, 0, -1)\n"
        ) && text.ends_with("2 series in 12 file(s) looked at; 1 not DICOM images\n"),
        "{text}"
    );
    // Stack 2 as listed is what --stack 2 loads: the localizer.
    let config = LoadConfig {
        series_uid: Some("1.2.826.0.1.4".into()),
        stack: Some(2),
        ..cfg()
    };
    let localizer = load(dir.path(), &config).unwrap();
    assert_eq!(localizer.shape(), [1, 9, 4]);
    assert_eq!(localizer.hu, sagittal_localizer(1).hu);
    // Only a series of another modality: no default, unless any modality is allowed.
    let mr = tempfile::tempdir().unwrap();
    let opts = SeriesWriteOptions {
        modality: "MR".into(),
        ..Default::default()
    };
    write_series(&phantom([3, 6, 7], g), mr.path(), &opts).unwrap();
    let list = list_series(mr.path(), &cfg()).unwrap();
    assert!(!list.series[0].default);
    let any = LoadConfig {
        allow_modality: true,
        ..cfg()
    };
    assert!(list_series(mr.path(), &any).unwrap().series[0].default);
    // A folder of no DICOM: an empty list.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("notes.txt"), "not DICOM").unwrap();
    let list = list_series(empty.path(), &cfg()).unwrap();
    assert_eq!(
        (list.files_seen, list.skipped, list.series.len()),
        (1, 1, 0)
    );
}

/// `list_series` on the Lung-PET-CT-Dx folder: its two series, the default the one `load`
/// picks.
#[test]
fn lung_pet_ct_dx_series_are_listed() {
    let Some(dir) = common::data_dir("lung-pet-ct-dx") else {
        return;
    };
    let list = list_series(&dir, &cfg()).unwrap();
    let planes: Vec<_> = list.series.iter().map(|s| (s.planes, s.default)).collect();
    assert_eq!(planes, [(30, false), (64, true)]);
    let loaded = load(&dir, &cfg()).unwrap();
    assert_eq!(loaded.info.series_uid, list.series[1].series_uid);
    assert!((list.series[1].stacks[0].extent_mm.unwrap() - 63.0 * 5.0).abs() < 0.01);
}

/// `LoadConfig::stack`: two stacks of five planes in one series (the axial stack and a
/// sagittal one) are refused with both named; either loads, as it was written, when asked
/// for by its number; a number past them is refused.
#[test]
fn a_stack_is_picked_by_its_number_and_a_tie_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let axial = phantom(
        [5, 6, 7],
        Geometry::new([1.5, 0.7, 0.7], [-10.0, -20.0, 30.0]),
    );
    let sagittal = sagittal_localizer(5);
    let opts = SeriesWriteOptions {
        series_uid: Some("1.2.826.0.1.4".into()),
        ..Default::default()
    };
    write_series(&axial, &dir.path().join("axial"), &opts).unwrap();
    write_series(&sagittal, &dir.path().join("sagittal"), &opts).unwrap();
    let e = load(dir.path(), &cfg()).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Series {
                problem: SeriesProblem::SeveralStacks {
                    stacks: 2,
                    tied: 2,
                    planes: 5,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("choose one with --stack N"), "{e}");
    let list = list_series(dir.path(), &cfg()).unwrap();
    assert!(list.series[0].default && list.series[0].default_stack.is_none());
    let text = list.to_string();
    assert!(
        text.contains(
            "(picked when no --series is given; its two largest stacks are of one size: name \
             one with --stack N)"
        ),
        "{text}"
    );
    // Equals are numbered in the order of their first files: axial/ before sagittal/.
    // (The sagittal stack was written with a left-handed direction: it loads along its
    // slice normal, -x, so its planes come back in reverse.)
    let mut sagittal_back = sagittal.clone();
    sagittal_back.hu.invert_axis(ndarray::Axis(0));
    sagittal_back.geometry.origin_mm[0] += 4.0;
    sagittal_back.geometry.direction[0] = [-1.0, 0.0, 0.0];
    for (k, want) in [(1, &axial), (2, &sagittal_back)] {
        let config = LoadConfig {
            stack: Some(k),
            ..cfg()
        };
        let back = load(dir.path(), &config).unwrap();
        assert_eq!(back.hu, want.hu, "stack {k}");
        geometry_close(&back.geometry, &want.geometry, 1e-6);
        assert!(
            back.info.warnings[0].contains(&format!("loaded the one asked for, stack {k}, 5")),
            "{:?}",
            back.info.warnings
        );
    }
    let config = LoadConfig {
        stack: Some(3),
        ..cfg()
    };
    assert!(matches!(
        load(dir.path(), &config),
        Err(Error::Series {
            problem: SeriesProblem::NoSuchStack {
                requested: 3,
                stacks: 2
            },
            ..
        })
    ));
}

/// Choosing among series counts the planes of each one's largest stack: a series of four
/// axial planes and two localizer planes (six in all) loses to one of five axial planes.
#[test]
fn a_localizer_does_not_make_its_series_the_largest() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new([1.5, 0.7, 0.7], [-10.0, -20.0, 30.0]);
    let localizer = sagittal_localizer(2);
    let with_localizer = SeriesWriteOptions {
        series_uid: Some("1.2.826.0.1.4".into()),
        ..Default::default()
    };
    write_series(
        &phantom([4, 6, 7], g),
        &dir.path().join("a"),
        &with_localizer,
    )
    .unwrap();
    write_series(&localizer, &dir.path().join("a_loc"), &with_localizer).unwrap();
    let five = phantom([5, 6, 7], g);
    let opts = SeriesWriteOptions {
        series_uid: Some("1.2.826.0.1.5".into()),
        ..Default::default()
    };
    write_series(&five, &dir.path().join("b"), &opts).unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    assert_eq!(back.info.series_uid.as_deref(), Some("1.2.826.0.1.5"));
    assert_eq!(back.hu, five.hu);
    assert_eq!(
        back.info.warnings,
        ["other series not loaded: 1.2.826.0.1.4 (6 slices, CT)"]
    );
}

#[test]
fn non_ct_modality_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let v = phantom([3, 4, 4], Geometry::new([1.0; 3], [0.0; 3]));
    let opts = SeriesWriteOptions {
        modality: "MR".into(),
        ..Default::default()
    };
    write_series(&v, dir.path(), &opts).unwrap();
    assert!(matches!(
        load(dir.path(), &cfg()),
        Err(Error::Series {
            problem: SeriesProblem::Modality { .. },
            ..
        })
    ));
    let back = load(
        dir.path(),
        &LoadConfig {
            allow_modality: true,
            ..cfg()
        },
    )
    .unwrap();
    assert_eq!(back.hu, v.hu);
}

#[test]
fn truncated_pixel_data_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    series_in(dir.path(), [3, 16, 16], "1.2.826.0.1.4");
    let f = dir.path().join("IM00001.dcm");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let e = load(dir.path(), &cfg()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("IM00001.dcm"), "{msg}");
}

/// Found by fuzzing (`fuzz/fuzz_targets/dicom_file.rs`): RLE pixel data whose segments
/// decode to fewer bytes than the image holds made dicom-rs 0.10.1's RLE decoder index past
/// its buffer and panic. Loading such a file is an error naming it.
#[test]
fn short_rle_segments_are_an_error_not_a_panic() {
    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, VR};
    let dir = tempfile::tempdir().unwrap();
    series_in(dir.path(), [1, 4, 4], "1.2.826.0.1.6");
    let f = dir.path().join("IM00000.dcm");
    let mut obj = dicom_object::open_file(&f).unwrap();
    // An RLE frame of 16-bit pixels: the header (2 segments, at 64 and 67), then two
    // PackBits segments of 2 bytes each where 16 are needed.
    let mut fragment = vec![0u8; 64];
    fragment[..4].copy_from_slice(&2u32.to_le_bytes());
    fragment[4..8].copy_from_slice(&64u32.to_le_bytes());
    fragment[8..12].copy_from_slice(&67u32.to_le_bytes());
    fragment.extend_from_slice(&[1, 0, 0, 1, 0, 0]);
    obj.put(DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        VR::OB,
        Value::from(PixelFragmentSequence::new(
            Vec::<u32>::new(),
            vec![fragment],
        )),
    ));
    obj.update_meta(|m| {
        m.set_transfer_syntax(&dicom_transfer_syntax_registry::entries::RLE_LOSSLESS)
    });
    obj.write_to_file(&f).unwrap();
    let e = load(&f, &cfg()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Dicom { .. }), "{msg}");
    assert!(msg.contains("IM00000.dcm") && msg.contains("RLE"), "{msg}");
}

/// 12-bit lossy CT in JPEG Extended (1.2.840.10008.1.2.4.51), which dicom-rs refuses:
/// lungcad decodes it with libjpeg's integer inverse DCT, so the HU are libjpeg-turbo's
/// samples (`tests/fixtures/jpeg/ct12_q90.*`, from `tests/scripts/make_jpeg_fixtures.py`)
/// plus the intercept. One slice has its frame in one fragment, one in two, one after a
/// second frame's worth of padding bytes; a damaged slice is an error naming its file.
#[test]
fn twelve_bit_jpeg_extended_series_decodes_as_libjpeg() {
    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let jpg = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jpeg/ct12_q90.jpg"
    ))
    .unwrap();
    let samples: Vec<i16> = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jpeg/ct12_q90.u16"
    ))
    .unwrap()
    .chunks_exact(2)
    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i16)
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let v = phantom([3, 37, 53], Geometry::new([2.0, 0.7, 0.7], [0.0, 0.0, 0.0]));
    let opts = SeriesWriteOptions {
        stored: StoredFormat::Unsigned12,
        ..SeriesWriteOptions::default()
    };
    write_series(&v, dir.path(), &opts).unwrap();
    let encapsulate = |z: usize, fragments: Vec<Vec<u8>>| {
        let f = dir.path().join(format!("IM{z:05}.dcm"));
        let mut obj = dicom_object::open_file(&f).unwrap();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::from(PixelFragmentSequence::new(Vec::<u32>::new(), fragments)),
        ));
        obj.put(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION,
            VR::CS,
            PrimitiveValue::from("01"),
        ));
        obj.update_meta(|m| {
            m.set_transfer_syntax(&dicom_transfer_syntax_registry::entries::JPEG_EXTENDED)
        });
        obj.write_to_file(&f).unwrap();
    };
    let (a, b) = jpg.split_at(1000);
    let mut padded = jpg.clone();
    padded.extend_from_slice(&[0, 0]);
    encapsulate(0, vec![jpg.clone()]);
    encapsulate(1, vec![a.to_vec(), b.to_vec()]);
    encapsulate(2, vec![padded]);
    let back = load(dir.path(), &cfg()).unwrap();
    assert_eq!(back.shape(), [3, 37, 53]);
    assert_eq!(back.info.transfer_syntaxes, ["1.2.840.10008.1.2.4.51"]);
    for z in 0..3 {
        let plane: Vec<i16> = back
            .hu
            .index_axis(ndarray::Axis(0), z)
            .iter()
            .copied()
            .collect();
        let want: Vec<i16> = samples.iter().map(|&s| s - 1024).collect();
        assert_eq!(plane, want, "slice {z}");
    }
    // Cut inside its entropy-coded data: an error naming the file and the frame.
    encapsulate(1, vec![jpg[..jpg.len() - 300].to_vec()]);
    let e = load(dir.path(), &cfg()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Dicom { .. }), "{msg}");
    assert!(
        msg.contains("IM00001.dcm") && msg.contains("12-bit") && msg.contains("ends early"),
        "{msg}"
    );
    // A header whose BitsStored cannot hold the 12-bit samples: refused, not masked.
    encapsulate(1, vec![jpg.clone()]);
    let f = dir.path().join("IM00002.dcm");
    let mut obj = dicom_object::open_file(&f).unwrap();
    obj.put(DataElement::new(
        tags::BITS_STORED,
        VR::US,
        PrimitiveValue::from(8u16),
    ));
    obj.write_to_file(&f).unwrap();
    let msg = load(dir.path(), &cfg()).unwrap_err().to_string();
    assert!(
        msg.contains("IM00002.dcm") && msg.contains("BitsStored is 8"),
        "{msg}"
    );
}

/// An implicit VR slice with a defined-length sequence (0008,1140) whose item holds an
/// element declaring 2 GB: the length guard looks the VR up in the dictionary and walks into
/// the sequence as the parser does, so loading is an error, not a 2 GB allocation.
#[test]
fn length_hidden_in_an_implicit_vr_sequence_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = phantom([1, 4, 4], Geometry::new([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]));
    let opts = SeriesWriteOptions {
        explicit_vr: false,
        ..SeriesWriteOptions::default()
    };
    write_series(&v, dir.path(), &opts).unwrap();
    let f = dir.path().join("IM00000.dcm");
    let bytes = std::fs::read(&f).unwrap();
    // the data set starts after the meta group: 132 + 12-byte group length element + its value
    let meta_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let start = 144 + meta_len;
    let element = |g: u16, e: u16, len: u32, value: &[u8]| {
        let mut v = [g.to_le_bytes(), e.to_le_bytes()].concat();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(value);
        v
    };
    let write_with = |declared: u32| {
        let inner = element(0x0008, 0x1150, declared, b"1.2\0");
        let item = element(0xFFFE, 0xE000, inner.len() as u32, &inner);
        let sq = element(0x0008, 0x1140, item.len() as u32, &item);
        std::fs::write(&f, [&bytes[..start], &sq, &bytes[start..]].concat()).unwrap();
    };
    write_with(4);
    assert_eq!(load(&f, &cfg()).unwrap().hu, v.hu);
    write_with(0x7FFF_FFF0);
    let e = load(&f, &cfg()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Dicom { .. }), "{msg}");
    assert!(
        msg.contains("IM00000.dcm") && msg.contains("(0008,1150) declares 2147483632 bytes"),
        "{msg}"
    );
}

#[test]
fn voxel_limit_refuses_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    series_in(dir.path(), [4, 8, 8], "1.2.826.0.1.5");
    let mut c = cfg();
    c.limits.max_voxels = 100;
    assert!(matches!(
        load(dir.path(), &c),
        Err(Error::Limit {
            what: "voxel count",
            ..
        })
    ));
}

#[test]
fn empty_folder_and_non_dicom_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    assert!(matches!(
        load(dir.path(), &cfg()),
        Err(Error::NoSeries { files_seen: 1, .. })
    ));
    assert!(matches!(
        load(dir.path().join("notes.txt"), &cfg()),
        Err(Error::Dicom { .. })
    ));
    assert!(matches!(
        load(dir.path().join("absent"), &cfg()),
        Err(Error::Io { .. })
    ));
}

#[test]
fn lidc_idri_0001_geometry_and_nodule() {
    let Some(dir) = common::lidc_0001() else {
        return;
    };
    let v = load(&dir, &cfg()).unwrap();
    assert_eq!(v.info.series_uid.as_deref(), Some(common::LIDC_0001_UID));
    assert_eq!(v.shape(), [133, 512, 512]);
    geometry_close(
        &v.geometry,
        &Geometry::new([2.5, 0.703125, 0.703125], [-166.0, -171.699997, -340.0]),
        1e-4,
    );
    let (centre, _) = common::LIDC_0001_NODULE;
    let idx = v.world_to_voxel(centre);
    let [z, y, x] = [
        idx[0].round() as usize,
        idx[1].round() as usize,
        idx[2].round() as usize,
    ];
    // mean over a 3x3x3 neighbourhood: soft tissue, not lung air
    let mut sum = 0i64;
    for dz in 0..3 {
        for dy in 0..3 {
            for dx in 0..3 {
                sum += v.hu[[z + dz - 1, y + dy - 1, x + dx - 1]] as i64;
            }
        }
    }
    let mean = sum as f64 / 27.0;
    assert!(
        (-300.0..200.0).contains(&mean),
        "nodule centre mean HU {mean}"
    );
    // and the lungs around it are air
    assert!(v.hu[[z, y, 60]] < -500 || v.hu[[z, 100, x]] < -500);
}

#[test]
fn lung_pet_ct_dx_series_load() {
    for (name, slices, spacing_z) in [
        ("lung-pet-ct-dx/A0001-5mm", 64, 5.0),
        ("lung-pet-ct-dx/A0002-8mm-B40f", 30, 8.0),
    ] {
        let Some(dir) = common::data_dir(name) else {
            continue;
        };
        let v = load(&dir, &cfg()).unwrap();
        assert_eq!(v.shape(), [slices, 512, 512], "{name}");
        assert!(
            (v.spacing_mm()[0] - spacing_z).abs() < 1e-3,
            "{name}: {:?}",
            v.spacing_mm()
        );
        let (lo, hi) = v.hu_range();
        assert!(lo >= -3024 && hi > 300, "{name}: HU {lo}..{hi}");
    }
}

#[test]
fn fuzz_entry_survives_small_inputs() {
    for data in [&b""[..], b"DICM", &[0u8; 200][..], &[0xFFu8; 300][..]] {
        lungcad::io::dicom::assemble_fuzz(data);
    }
}

/// A gantry-tilted series (each slice shifted in its plane, 15 degrees off the normal) of an
/// oblique stack, whose pixels hold a linear function of their world position: loaded, every
/// voxel holds the function at its own world position (bilinear resampling is exact on a
/// linear function, up to rounding), and voxels no slice covers are air. Refused when asked.
#[test]
fn gantry_tilted_series_is_resampled_onto_its_world_positions() {
    let dir = tempfile::tempdir().unwrap();
    let [normal, col, row] = OBLIQUE;
    let g = Geometry {
        spacing_mm: [2.0, 0.8, 0.9],
        origin_mm: [12.5, -30.0, 100.0],
        direction: [normal, col, row],
    };
    // Slice k moves by k x (0.5 mm along the columns, -0.2 mm along the rows).
    let shift: [f64; 3] = std::array::from_fn(|w| 0.5 * col[w] - 0.2 * row[w]);
    let f = |w: [f64; 3]| 3.0 * w[0] - 2.0 * w[1] + 1.5 * w[2];
    let slice_world = |k: usize, i: f64, j: f64| {
        let p = g.voxel_to_world([k as f64, i, j]);
        std::array::from_fn::<f64, 3, _>(|w| p[w] + k as f64 * shift[w])
    };
    let hu = Array3::from_shape_fn((6, 10, 12), |(k, i, j)| {
        f(slice_world(k, i as f64, j as f64)).round() as i16
    });
    let written = Volume::new(hu, g).unwrap();
    write_series(
        &written,
        dir.path(),
        &SeriesWriteOptions {
            slice_offsets_mm: (0..6).map(|k| shift.map(|s| k as f64 * s)).collect(),
            shuffle_names_seed: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    let angle = (0.5f64.hypot(0.2) / 2.0).atan().to_degrees();

    let back = load(dir.path(), &cfg()).unwrap();
    assert!(
        back.info
            .warnings
            .iter()
            .any(|w| w.starts_with(&format!("gantry tilt of {angle:.2} degrees corrected"))),
        "{:?}",
        back.info.warnings
    );
    // The rows grow by the last slice's 5 x 0.5 / 0.8 rows, the columns by its 5 x 0.2 /
    // 0.9 columns (the other way, so the output starts 2 columns before the first slice).
    assert_eq!(back.shape(), [6, 14, 14]);
    geometry_close(
        &Geometry {
            origin_mm: std::array::from_fn(|w| g.origin_mm[w] - 2.0 * 0.9 * row[w]),
            ..g
        },
        &back.geometry,
        1e-5,
    );
    let mut counted = [0usize; 2];
    for ((k, i, j), &v) in back.hu.indexed_iter() {
        let w = back.voxel_to_world([k as f64, i as f64, j as f64]);
        // Where this world point lies in slice k: on its plane, at some row and column.
        let p = slice_world(k, 0.0, 0.0);
        let d: [f64; 3] = std::array::from_fn(|a| w[a] - p[a]);
        let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
        assert!(
            dot(d, normal).abs() < 1e-4,
            "voxel {:?} off slice {k}",
            (k, i, j)
        );
        let (r, cc) = (dot(d, col) / 0.8, dot(d, row) / 0.9);
        if (-1e-6..=9.0 + 1e-6).contains(&r) && (-1e-6..=11.0 + 1e-6).contains(&cc) {
            let want = f(w);
            assert!(
                (v as f64 - want).abs() <= 1.0,
                "{:?}: {v} for {want}",
                (k, i, j)
            );
            counted[0] += 1;
        } else if !(-1.0..=10.0).contains(&r) || !(-1.0..=12.0).contains(&cc) {
            assert_eq!(v, -1024, "{:?} is outside slice {k}", (k, i, j));
            counted[1] += 1;
        }
    }
    assert!(counted[0] >= 6 * 9 * 11 && counted[1] > 0, "{counted:?}");

    match load(
        dir.path(),
        &LoadConfig {
            gantry_tilt: lungcad::GantryTilt::Refuse,
            ..cfg()
        },
    ) {
        Err(Error::Series {
            problem: SeriesProblem::GantryTilt { angle_deg, max_deg },
            ..
        }) => {
            assert!((angle_deg - angle).abs() < 1e-3, "{angle_deg} vs {angle}");
            assert_eq!(max_deg, 0.05);
        }
        other => panic!("{other:?}"),
    }
}

/// A tilt of whole rows per slice (the stack's positions move one row per slice) is undone
/// without interpolation: the loaded volume is the untilted one wherever a slice covers it.
#[test]
fn gantry_tilt_of_whole_rows_is_undone_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new([2.5, 0.7, 0.6], [-50.0, -40.0, 30.0]);
    let original = phantom([7, 9, 8], g);
    // Slice k of the tilted series starts k rows further along y: its row i is the
    // original's row i + k (air past the original's last row).
    let tilted = Array3::from_shape_fn((7, 9, 8), |(k, i, j)| {
        original.hu.get([k, i + k, j]).copied().unwrap_or(-1024)
    });
    write_series(
        &Volume::new(tilted, g).unwrap(),
        dir.path(),
        &SeriesWriteOptions {
            slice_offsets_mm: (0..7).map(|k| [0.0, 0.7 * k as f64, 0.0]).collect(),
            ..Default::default()
        },
    )
    .unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    assert_eq!(back.shape(), [7, 9 + 6, 8]);
    geometry_close(&back.geometry, &g, 1e-5);
    for ((k, i, j), &v) in back.hu.indexed_iter() {
        let want = if i < k {
            -1024
        } else {
            *original.hu.get([k, i, j]).unwrap_or(&-1024)
        };
        assert_eq!(v, want, "{:?}", (k, i, j));
    }
}

/// A stack whose first and last slices are in line but whose middle slices are shifted in
/// their plane (slices 3 and 4 start two rows further along y, their pixels moved back to
/// match): loaded, the volume is the unshifted one wherever a slice covers it, with a
/// warning that the positions are off a straight stack. Measured from its ends alone, the
/// stack would read as untilted and those two slices would be two rows off.
#[test]
fn stack_shifted_in_the_middle_is_placed_slice_by_slice() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new([2.0, 0.7, 0.6], [-50.0, -40.0, 30.0]);
    let original = phantom([7, 9, 8], g);
    let rows_shifted = |k: usize| if (3..=4).contains(&k) { 2 } else { 0 };
    let written = Array3::from_shape_fn((7, 9, 8), |(k, i, j)| {
        original
            .hu
            .get([k, i + rows_shifted(k), j])
            .copied()
            .unwrap_or(-1024)
    });
    write_series(
        &Volume::new(written, g).unwrap(),
        dir.path(),
        &SeriesWriteOptions {
            slice_offsets_mm: (0..7)
                .map(|k| [0.0, 0.7 * rows_shifted(k) as f64, 0.0])
                .collect(),
            shuffle_names_seed: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let back = load(dir.path(), &cfg()).unwrap();
    assert!(
        back.info
            .warnings
            .iter()
            .any(|w| w.starts_with("slice positions are up to 1.400 mm off a straight stack")),
        "{:?}",
        back.info.warnings
    );
    assert_eq!(back.shape(), [7, 9 + 2, 8]);
    geometry_close(&back.geometry, &g, 1e-5);
    let mut compared = 0;
    for ((k, i, j), &v) in back.hu.indexed_iter() {
        let want = if i < rows_shifted(k) || i >= 9 {
            -1024
        } else {
            original.hu[[k, i, j]]
        };
        assert_eq!(v, want, "{:?}", (k, i, j));
        compared += (want != -1024) as usize;
    }
    assert!(compared > 7 * 7 * 8 / 2, "{compared}");
}

/// Slices 1.0 mm apart, then 1.5 mm (as when two reconstructions of different spacing are
/// one series), whose pixels hold a linear function of their world position, also with a
/// gantry tilt (each slice 0.3 mm further along y per mm along z): loaded, the planes lie on a regular
/// grid of the smaller median gap (1 mm) from the first slice to the last, and every voxel
/// that all slices cover holds the function at its own world position. Read as a regular
/// stack of the mean spacing, slice 6 would be 1.5 mm off.
#[test]
fn unevenly_spaced_slices_are_interpolated_onto_their_world_positions() {
    for tilt_mm in [0.0, 0.3] {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new([1.0, 0.8, 0.8], [10.0, -20.0, -100.0]);
        let z: Vec<f64> = (0..13)
            .map(|k| {
                if k <= 6 {
                    k as f64
                } else {
                    6.0 + 1.5 * (k - 6) as f64
                }
            })
            .collect();
        let offset = |k: usize| [0.0, tilt_mm * z[k], z[k] - k as f64];
        let f = |w: [f64; 3]| 20.0 * w[2] + 3.0 * w[1] - w[0];
        let hu = Array3::from_shape_fn((13, 12, 5), |(k, i, j)| {
            let p = g.voxel_to_world([k as f64, i as f64, j as f64]);
            f(std::array::from_fn(|w| p[w] + offset(k)[w])).round() as i16
        });
        let opts = SeriesWriteOptions {
            slice_offsets_mm: (0..13).map(offset).collect(),
            shuffle_names_seed: Some(2),
            ..Default::default()
        };
        write_series(&Volume::new(hu, g).unwrap(), dir.path(), &opts).unwrap();
        let back = load(dir.path(), &cfg()).unwrap();
        // A tilt of 4.5 mm over the stack grows the rows by 4.5 / 0.8 = 5.6, rounded up.
        let rows = if tilt_mm > 0.0 { 12 + 6 } else { 12 };
        assert_eq!(back.shape(), [16, rows, 5]);
        assert!((back.geometry.spacing_mm[0] - 1.0).abs() < 1e-6);
        assert!(
            back.info.warnings.iter().any(|w| w.starts_with(
                "slice spacing varies from 1.000 to 1.500 mm, slices up to 1.500 mm off a regular grid: interpolated along the slice normal onto 16 planes 1.000 mm apart"
            )),
            "{:?}",
            back.info.warnings
        );
        // A tilt, in line: no warning of slices shifted off a straight stack.
        assert_eq!(
            back.info.warnings.len(),
            1 + (tilt_mm > 0.0) as usize,
            "{:?}",
            back.info.warnings
        );
        let mut checked = 0;
        for ((k, i, j), &v) in back.hu.indexed_iter() {
            let w = back.voxel_to_world([k as f64, i as f64, j as f64]);
            // Every slice covers world y from -20 + 0.3 x 15 to -20 + 0.8 x 11.
            if w[1] < -20.0 + 15.0 * tilt_mm - 1e-6 || w[1] > -20.0 + 8.8 + 1e-6 {
                continue;
            }
            let want = f(w);
            assert!(
                (v as f64 - want).abs() <= 1.0,
                "{:?}: {v} for {want}",
                (k, i, j)
            );
            checked += 1;
        }
        assert!(checked >= 16 * 6 * 5, "{checked}");
    }
}
