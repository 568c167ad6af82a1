//! LIDC-IDRI reader annotations (XML) made into LUNA16-style findings, through the public
//! API: a synthetic series with an XML whose answers are known, and LIDC-IDRI-0001 against
//! LUNA16's own rows for it (skipped without `$LUNGCAD_DATA`).

mod common;

use lungcad::eval::lidc::{
    find_lidc_xml, lidc_findings, parse_lidc_xml, read_lidc_file, LidcConfig,
};
use lungcad::eval::Annotations;
use lungcad::io::dicom::scan;
use lungcad::LoadConfig;

/// LIDC-IDRI-0001 against LUNA16: the same 22 point findings (13 non-nodules, 9 nodules
/// under 3 mm) to a micrometre, the one nodule marked by all four readers, and reader 4's
/// measurement of it as LUNA16's row.
#[test]
fn lidc_0001_gives_luna16s_findings() {
    let Some(series) = common::lidc_0001() else {
        return;
    };
    let Some(luna) = common::data_dir("luna16") else {
        return;
    };
    let xml = find_lidc_xml(&series).unwrap();
    assert_eq!(xml.len(), 1, "{xml:?}");
    let text = std::fs::read_to_string(&xml[0]).unwrap();
    let read = parse_lidc_xml(&text, &xml[0]).unwrap();
    assert_eq!(read.sessions.len(), 4);
    let found = read_lidc_file(&xml[0], &LidcConfig::default()).unwrap();
    assert_eq!(found.series_uid, read.series_uid);
    let uid = &read.series_uid;
    let of_series = |name: &str| -> Vec<lungcad::eval::Finding> {
        Annotations::from_csv(luna.join(name))
            .unwrap()
            .findings
            .into_iter()
            .filter(|f| &f.seriesuid == uid)
            .collect()
    };
    let xyz = |f: &lungcad::eval::Finding| [f.coord_x, f.coord_y, f.coord_z];
    let close = |a: [f64; 3], b: [f64; 3], tol: f64| (0..3).all(|w| (a[w] - b[w]).abs() < tol);
    // LUNA16's .mhd origins lie 0.44 micrometres off the DICOM positions in x and y.
    const LUNA_ORIGIN_MM: f64 = 0.001;
    // The point findings: as many, each at one of LUNA16's.
    let luna_points: Vec<[f64; 3]> = of_series("annotations_excluded.csv")
        .iter()
        .filter(|f| f.diameter_mm.is_none())
        .map(xyz)
        .collect();
    assert_eq!(found.excluded.len(), 22);
    assert_eq!(luna_points.len(), 22);
    let mut unmatched = luna_points.clone();
    for f in &found.excluded {
        assert_eq!(f.diameter_mm, None);
        let i = unmatched
            .iter()
            .position(|p| close(*p, xyz(f), LUNA_ORIGIN_MM))
            .unwrap_or_else(|| panic!("{f:?} is not among LUNA16's {unmatched:?}"));
        unmatched.remove(i);
    }
    // The nodule: four readers. Reader 4 measures it as LUNA16 did, to LUNA16's origin and
    // its file's precision; the others' contours in this XML differ from those LUNA16
    // measured, so the merged nodule lies 0.25 mm from LUNA16's.
    let [nodule] = &found.nodules[..] else {
        panic!("{:?}", found.nodules)
    };
    assert_eq!(nodule.readers, 4);
    // Each reader's ratings come with their measurement.
    let malignancy: Vec<_> = nodule
        .annotations
        .iter()
        .map(|m| m.characteristics.as_ref().and_then(|c| c.malignancy))
        .collect();
    assert_eq!(malignancy, [Some(5), Some(5), Some(5), Some(4)]);
    let reader4 = &nodule.annotations[3];
    let luna_reader4 = of_series("annotations_excluded.csv")
        .into_iter()
        .find(|f| f.diameter_mm.is_some_and(|d| (d - 23.5).abs() < 0.01))
        .unwrap();
    assert!(
        close(reader4.centre_world, xyz(&luna_reader4), LUNA_ORIGIN_MM),
        "{reader4:?}"
    );
    assert!((reader4.diameter_mm - luna_reader4.diameter_mm.unwrap()).abs() < 1e-7);
    let [luna_nodule] = &of_series("annotations.csv")[..] else {
        panic!()
    };
    assert!(
        close(nodule.centre_world, xyz(luna_nodule), 0.25),
        "{nodule:?}"
    );
    assert!((nodule.diameter_mm - luna_nodule.diameter_mm.unwrap()).abs() < 0.25);
    // The rows make LIDC-IDRI's folder a training dataset: its one scan, with its nodule.
    let lidc = common::data_dir("lidc").unwrap();
    let annotations = Annotations::from_findings(found.nodule_findings());
    let excluded = Annotations::from_findings(found.excluded.clone());
    let (scans, missing) = lungcad::train::dataset::find_scans(
        &lidc,
        &annotations,
        Some(&excluded),
        &LoadConfig::default(),
    )
    .unwrap();
    assert!(missing.is_empty());
    let [scan] = &scans[..] else {
        panic!("{scans:?}")
    };
    assert!(scan.dicom && scan.series_uid == *uid);
    assert_eq!((scan.nodules.len(), scan.excluded.len()), (1, 22));
}

/// The boundary of the square of pixels from `lo` to `hi` (columns and rows), in order.
fn square(lo: i64, hi: i64, dx: i64) -> Vec<[i64; 2]> {
    let mut p = Vec::new();
    for x in lo..hi {
        p.push([x + dx, lo]);
    }
    for y in lo..hi {
        p.push([hi + dx, y]);
    }
    for x in (lo + 1..=hi).rev() {
        p.push([x + dx, hi]);
    }
    for y in (lo + 1..=hi).rev() {
        p.push([lo + dx, y]);
    }
    p
}

fn roi(z: f64, inclusion: bool, points: &[[i64; 2]]) -> String {
    let edges: String = points
        .iter()
        .map(|[x, y]| format!("<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"))
        .collect();
    format!(
        "<roi><imageZposition>{z:.6} </imageZposition><imageSOP_UID>1.2</imageSOP_UID>\
         <inclusion>{}</inclusion>{edges}</roi>",
        if inclusion { "TRUE" } else { "FALSE" }
    )
}

/// Writes a synthetic series (slices 2 mm apart from z = 30; columns 0.7 mm apart from
/// x = -10, rows 0.5 mm apart from y = -20) to `dir` with an LIDC XML of four readers: three mark one nodule (a 7 x 7 pixel
/// boundary on two slices, one reader a pixel to the right, one with a hole of one pixel),
/// the fourth a nodule elsewhere, a nodule under 3 mm and a non-nodule. Returns the XML's
/// path and text.
fn synthetic_read(dir: &std::path::Path, uid: &str) -> (std::path::PathBuf, String) {
    use lungcad::io::dicom::{write_series, SeriesWriteOptions};
    use lungcad::{Geometry, Volume};
    let v = Volume::new(
        ndarray::Array3::zeros((6, 32, 32)),
        Geometry::new([2.0, 0.5, 0.7], [-10.0, -20.0, 30.0]),
    )
    .unwrap();
    let opts = SeriesWriteOptions {
        series_uid: Some(uid.into()),
        ..Default::default()
    };
    write_series(&v, dir, &opts).unwrap();
    let nodule = |dx: i64, hole: bool| {
        let mut r = roi(34.0, true, &square(10, 16, dx)) + &roi(36.0, true, &square(10, 16, dx));
        if hole {
            r += &roi(36.0, false, &square(12, 14, 0));
        }
        format!("<unblindedReadNodule><noduleID>n</noduleID>{r}</unblindedReadNodule>")
    };
    let session = |body: String| format!("<readingSession>{body}</readingSession>");
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LidcReadMessage xmlns=\"http://www.nih.gov\">\
         <ResponseHeader><SeriesInstanceUid>{uid}</SeriesInstanceUid></ResponseHeader>{}{}{}{}\
         </LidcReadMessage>",
        session(nodule(0, false)),
        session(nodule(0, true)),
        session(nodule(1, false)),
        session(format!(
            "<unblindedReadNodule><noduleID>far</noduleID>{}</unblindedReadNodule>\
             <unblindedReadNodule><noduleID>small</noduleID>{}</unblindedReadNodule>\
             <nonNodule><nonNoduleID>x</nonNoduleID><imageZposition>38.0</imageZposition>\
             <locus><xCoord>3</xCoord><yCoord>4</yCoord></locus></nonNodule>",
            roi(32.0, true, &square(20, 28, 0)),
            roi(40.0, true, &[[30, 31]])
        ))
    );
    let path = dir.join("001.xml");
    std::fs::write(&path, &xml).unwrap();
    (path, xml)
}

/// The synthetic read: the nodule of three readers at the mean of their centres, with the
/// mean of their diameters; the rest excluded, each at its pixels.
#[test]
fn readers_marks_become_nodules_and_excluded_findings() {
    let dir = tempfile::tempdir().unwrap();
    let uid = "1.2.826.0.1.3680043.99";
    let (path, xml) = synthetic_read(dir.path(), uid);
    std::fs::write(dir.path().join("other.xml"), "<IdriReadMessage/>").unwrap();
    // A link back to the folder is not followed.
    std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
    assert_eq!(
        find_lidc_xml(dir.path()).unwrap(),
        std::slice::from_ref(&path)
    );
    let read = parse_lidc_xml(&xml, &path).unwrap();
    let slices: Vec<_> = scan(dir.path(), &LoadConfig::default())
        .unwrap()
        .series
        .into_values()
        .flatten()
        .collect();
    let found = lidc_findings(&read, &slices, &LidcConfig::default(), 1 << 20, &path).unwrap();
    let [n] = &found.nodules[..] else {
        panic!("{:?}", found.nodules)
    };
    assert_eq!(n.readers, 3);
    let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
    // Columns and rows 11 to 15 (columns 12 to 16) inside, centred on pixel 13 (14):
    // x = -10 + 0.7 x 13, y = -20 + 0.5 x 13.
    let pixels: Vec<usize> = n.annotations.iter().map(|m| m.pixels).collect();
    assert_eq!(pixels, [50, 49, 50]);
    let xs: Vec<f64> = n.annotations.iter().map(|m| m.centre_world[0]).collect();
    assert!(
        near(xs[0], -0.9) && near(xs[1], -0.9) && near(xs[2], -0.2),
        "{xs:?}"
    );
    let d = |pixels: f64| (6.0 * pixels * 0.35 * 2.0 / std::f64::consts::PI).cbrt();
    assert!(near(n.annotations[1].diameter_mm, d(49.0)));
    assert!(near(n.centre_world[0], -2.0 / 3.0));
    assert!(near(n.centre_world[1], -13.5));
    // The hole takes a pixel of the upper slice from reader 2's nodule.
    let z2 = (25.0 * 34.0 + 24.0 * 36.0) / 49.0;
    assert!(near(n.annotations[1].centre_world[2], z2));
    assert!(near(n.centre_world[2], (70.0 + z2) / 3.0));
    assert!(near(n.diameter_mm, (2.0 * d(50.0) + d(49.0)) / 3.0));
    // Excluded: the small nodule, the non-nodule and the far nodule (one reader; 7 x 7
    // pixels on one slice), at their pixels.
    let want = [
        ([11.0, -4.5, 40.0], None),
        ([-7.9, -18.0, 38.0], None),
        ([6.8, -8.0, 32.0], Some(d(49.0))),
    ];
    assert_eq!(found.excluded.len(), 3);
    for (f, (c, diameter)) in found.excluded.iter().zip(want) {
        assert!(
            near(f.coord_x, c[0]) && near(f.coord_y, c[1]) && near(f.coord_z, c[2]),
            "{f:?}"
        );
        assert_eq!(f.diameter_mm.is_some(), diameter.is_some());
        assert!(near(f.diameter_mm.unwrap_or(0.0), diameter.unwrap_or(0.0)));
    }
    assert_eq!(found.nodule_findings()[0].seriesuid, uid);
    // With four readers asked for, no nodule: its three readers' marks are excluded.
    let four = LidcConfig {
        min_readers: 4,
        ..LidcConfig::default()
    };
    let found = lidc_findings(&read, &slices, &four, 1 << 20, &path).unwrap();
    assert!(found.nodules.is_empty());
    assert_eq!(found.excluded.len(), 6);
    // The nodules not kept, with their readers: the three readers' one and the far one.
    let readers: Vec<usize> = found.other_nodules.iter().map(|n| n.readers).collect();
    assert_eq!(readers, [3, 1]);
    // A small nodule marked by one point on each of two slices: one point, their mean.
    let small = roi(40.0, true, &[[30, 31]]);
    let twice = xml.replace(&small, &(small.clone() + &roi(38.0, true, &[[28, 31]])));
    assert_ne!(twice, xml);
    let found = lidc_findings(
        &parse_lidc_xml(&twice, &path).unwrap(),
        &slices,
        &LidcConfig::default(),
        1 << 20,
        &path,
    )
    .unwrap();
    let f = &found.excluded[0];
    assert!(near(f.coord_x, 10.3) && near(f.coord_z, 39.0) && f.diameter_mm.is_none());
    // Refused: a contour on a slice the series does not have, a point past the slice's 32
    // columns, contours past the fill bound, a minimum diameter that is not a number.
    let off = parse_lidc_xml(&xml.replace("34.000000", "35.000000"), &path).unwrap();
    let e = lidc_findings(&off, &slices, &LidcConfig::default(), 1 << 20, &path).unwrap_err();
    assert!(
        e.to_string()
            .contains("no slice of the series is SOP instance \"1.2\" or at imageZposition 35 mm"),
        "{e}"
    );
    // The same contours naming their slice by its SOPInstanceUID are placed on it, whatever
    // their imageZposition says.
    let sop34 = &slices
        .iter()
        .find(|h| h.position.is_some_and(|p| p[2] == 34.0))
        .unwrap()
        .sop_instance_uid;
    assert!(!sop34.is_empty());
    let named = xml.replace(
        "<imageZposition>34.000000 </imageZposition><imageSOP_UID>1.2</imageSOP_UID>",
        &format!("<imageZposition>35.000000 </imageZposition><imageSOP_UID>{sop34}</imageSOP_UID>"),
    );
    assert_ne!(named, xml);
    let by_sop = lidc_findings(
        &parse_lidc_xml(&named, &path).unwrap(),
        &slices,
        &LidcConfig::default(),
        1 << 20,
        &path,
    )
    .unwrap();
    let plain = lidc_findings(&read, &slices, &LidcConfig::default(), 1 << 20, &path).unwrap();
    assert_eq!(by_sop.nodules, plain.nodules);
    // Two slices sharing a SOPInstanceUID (as frames of one file do): marks naming it are
    // found by their imageZposition.
    let sop36 = slices
        .iter()
        .find(|h| h.position.is_some_and(|p| p[2] == 36.0))
        .unwrap()
        .sop_instance_uid
        .clone();
    let mut shared = slices.clone();
    for h in &mut shared {
        if h.position.is_some_and(|p| p[2] == 34.0) {
            h.sop_instance_uid = sop36.clone();
        }
    }
    let naming36 = xml.replace(
        "<imageZposition>34.000000 </imageZposition><imageSOP_UID>1.2</imageSOP_UID>",
        &format!("<imageZposition>34.000000 </imageZposition><imageSOP_UID>{sop36}</imageSOP_UID>"),
    );
    let by_z = lidc_findings(
        &parse_lidc_xml(&naming36, &path).unwrap(),
        &shared,
        &LidcConfig::default(),
        1 << 20,
        &path,
    )
    .unwrap();
    assert_eq!(by_z.nodules, plain.nodules);
    let wide = parse_lidc_xml(
        &xml.replace("<xCoord>30</xCoord>", "<xCoord>32</xCoord>"),
        &path,
    )
    .unwrap();
    let e = lidc_findings(&wide, &slices, &LidcConfig::default(), 1 << 20, &path).unwrap_err();
    assert!(
        e.to_string().contains(
            "pixel (x 32, y 31) marked on SOP instance \"1.2\" at imageZposition 40 mm lies outside the slice's 32 columns"
        ),
        "{e}"
    );
    let e = lidc_findings(&read, &slices, &LidcConfig::default(), 100, &path).unwrap_err();
    assert!(matches!(e, lungcad::Error::Limit { .. }), "{e}");
    let nan = LidcConfig {
        min_diameter_mm: f64::NAN,
        ..LidcConfig::default()
    };
    let e = lidc_findings(&read, &slices, &nan, 1 << 20, &path).unwrap_err();
    assert!(matches!(e, lungcad::Error::InvalidArgument(_)), "{e}");
}

/// `lungcad lidc`: the synthetic read's CSVs, read back as LUNA16 annotations; a folder
/// whose XML names a series that is not there is skipped with a message and exit status 1,
/// the other still written.
#[test]
fn lidc_command_writes_luna16_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    synthetic_read(&good, "1.2.826.0.1.3680043.99");
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("002.xml"),
        "<LidcReadMessage><ResponseHeader><SeriesInstanceUid>9.9</SeriesInstanceUid>\
         </ResponseHeader></LidcReadMessage>",
    )
    .unwrap();
    let (a, e, j) = (
        dir.path().join("a.csv"),
        dir.path().join("e.csv"),
        dir.path().join("reads.json"),
    );
    let run = |paths: &[&std::path::Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lungcad"))
            .arg("lidc")
            .args(paths)
            .arg("--out")
            .arg(&a)
            .arg("--excluded-out")
            .arg(&e)
            .arg("--json")
            .arg(&j)
            .output()
            .unwrap()
    };
    let out = run(&[&good]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodules = Annotations::from_csv(&a).unwrap().findings;
    assert_eq!(nodules.len(), 1);
    assert!((nodules[0].coord_x + 2.0 / 3.0).abs() < 1e-9);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(json["config"]["min_readers"], 3);
    let read = &json["reads"][0];
    assert_eq!(read["series_uid"], "1.2.826.0.1.3680043.99");
    assert_eq!(read["nodules"][0]["readers"], 3);
    assert_eq!(read["nodules"][0]["annotations"][2]["pixels"], 50);
    assert_eq!(read["excluded"].as_array().unwrap().len(), 3);
    let excluded = Annotations::from_csv(&e).unwrap().findings;
    let diameters: Vec<_> = excluded.iter().map(|f| f.diameter_mm.is_some()).collect();
    assert_eq!(diameters, [false, false, true]);
    // The same folder twice, and a file in it: each read once.
    let out = run(&[&good, &good, &good.join("001.xml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A path that is not there is refused.
    let out = run(&[&good, &dir.path().join("typo")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo"));
    let out = run(&[dir.path()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("002.xml: LIDC XML: series 9.9 is not among the DICOM files beside it"),
        "{err}"
    );
    assert_eq!(Annotations::from_csv(&a).unwrap().findings, nodules);
}
