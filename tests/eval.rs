//! Integration tests of `lungcad::eval` through its public API.
//!
//! The tests marked "real data" use the LUNA16 reference standard at
//! `$LUNGCAD_DATA/luna16` (default `../shared/data/luna16` from the crate root) and skip,
//! saying so, when it is absent. Their expected numbers were printed by the independent
//! Python implementation `tests/scripts/luna16_cpm_reference.py` (see
//! docs/EVALUATION.md), which builds the same seeded synthetic submissions.

use lungcad::eval::synthetic::{generate, generate_with_total, SyntheticSpec};
use lungcad::eval::{
    evaluate, plot_froc_png, read_seriesuids, report_json, report_text, write_predictions_csv,
    Annotations, Candidate, EvalConfig, EvalInputs, Finding, FrocResult, PlotOptions, Predictions,
    OPERATING_POINTS,
};
use lungcad::Error;
use std::path::PathBuf;
use std::sync::OnceLock;

// ----------------------------------------------------------------------------- no data

fn finding(uid: &str, x: f64, d: Option<f64>) -> Finding {
    Finding {
        seriesuid: uid.into(),
        coord_x: x,
        coord_y: 0.0,
        coord_z: 0.0,
        diameter_mm: d,
    }
}

fn cand(uid: &str, x: f64, p: f64) -> Candidate {
    Candidate {
        seriesuid: uid.into(),
        coord_x: x,
        coord_y: 0.0,
        coord_z: 0.0,
        probability: p,
    }
}

#[test]
fn small_case_through_the_public_api() {
    let inputs = EvalInputs {
        annotations: Annotations::from_findings(vec![
            finding("a", 0.0, Some(8.0)),
            finding("a", 100.0, None),
            finding("b", 0.0, Some(20.0)),
        ]),
        excluded: Annotations::from_findings(vec![finding("b", 50.0, None)]),
        seriesuids: vec!["a".into(), "b".into(), "c".into()],
        predictions: Predictions::from_candidates(vec![
            cand("a", 1.0, 0.9),   // TP on the 8 mm nodule
            cand("a", -1.0, 0.3),  // double detection
            cand("a", 104.9, 0.6), // TP on the nodule without diameter (10 mm)
            cand("b", 52.0, 0.99), // on the excluded finding: ignored
            cand("b", 30.0, 0.8),  // FP
            cand("c", 0.0, 0.7),   // FP on a scan without nodules
            cand("d", 0.0, 0.7),   // unlisted series: ignored
        ]),
    };
    let r = evaluate(&inputs, &EvalConfig::default()).expect("evaluation");
    assert_eq!((r.tp, r.fp, r.fn_, r.nodules, r.scans), (2, 2, 1, 3, 3));
    assert_eq!(
        (
            r.ignored_on_excluded,
            r.ignored_double_detections,
            r.candidates_unknown_series
        ),
        (1, 1, 1)
    );
    // Items: 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP -> (fp, tp) = (0,1) (1,1) (2,1) (2,2); (1,1) is
    // dropped; FP/scan = fp / 3, sensitivity = tp / 3.
    assert_eq!(r.curve.fps_per_scan, vec![0.0, 0.0, 2.0 / 3.0, 2.0 / 3.0]);
    assert_eq!(
        r.curve.sensitivity,
        vec![0.0, 1.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0]
    );
    assert_eq!(r.fps_per_scan, OPERATING_POINTS);
    let expected = [
        1.0 / 3.0,
        1.0 / 3.0,
        1.0 / 3.0,
        2.0 / 3.0,
        2.0 / 3.0,
        2.0 / 3.0,
        2.0 / 3.0,
    ];
    assert_eq!(r.sensitivities, expected);
    assert!(r.cpm_ci.0 <= r.cpm_ci.1);
    let json = report_json(&r);
    assert_eq!(json["fn"], 1);
    assert!(report_text(&r).contains("CPM"));
}

#[test]
fn malformed_files_are_reported_with_their_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("p.csv");
    std::fs::write(
        &p,
        "seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.5\na,1,2,3,NaN\n",
    )
    .expect("write");
    match Predictions::from_csv(&p) {
        Err(Error::Csv { line, .. }) => assert_eq!(line, 3),
        other => panic!("expected a CSV error, got {other:?}"),
    }
    std::fs::write(
        &p,
        "seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,x,5\n",
    )
    .expect("write");
    match Annotations::from_csv(&p) {
        Err(Error::Csv { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected a CSV error, got {other:?}"),
    }
    std::fs::write(&p, "a\nb\na\n").expect("write");
    assert!(matches!(
        read_seriesuids(&p),
        Err(Error::Csv { line: 3, .. })
    ));
}

// ----------------------------------------------------------------------------- real data

fn luna16_dir() -> Option<PathBuf> {
    let base = std::env::var_os("LUNGCAD_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let dir = base.join("luna16");
    if dir.join("annotations.csv").is_file()
        && dir.join("annotations_excluded.csv").is_file()
        && dir.join("seriesuids.csv").is_file()
    {
        Some(dir)
    } else {
        None
    }
}

struct Reference {
    annotations: Annotations,
    excluded: Annotations,
    seriesuids: Vec<String>,
}

/// The reference standard, loaded once; `None` (after saying that `test` is skipped) when the
/// data is absent.
fn reference(test: &str) -> Option<&'static Reference> {
    static REF: OnceLock<Option<Reference>> = OnceLock::new();
    let found = REF
        .get_or_init(|| {
            let dir = luna16_dir()?;
            Some(Reference {
                annotations: Annotations::from_csv(dir.join("annotations.csv"))
                    .expect("annotations.csv"),
                excluded: Annotations::from_csv(dir.join("annotations_excluded.csv"))
                    .expect("annotations_excluded.csv"),
                seriesuids: read_seriesuids(dir.join("seriesuids.csv")).expect("seriesuids.csv"),
            })
        })
        .as_ref();
    if found.is_none() {
        eprintln!("skipping {test}: LUNA16 reference standard not found at $LUNGCAD_DATA/luna16 (default ../shared/data/luna16)");
    }
    found
}

impl Reference {
    fn inputs(&self, candidates: Vec<Candidate>) -> EvalInputs {
        EvalInputs {
            annotations: self.annotations.clone(),
            excluded: self.excluded.clone(),
            seriesuids: self.seriesuids.clone(),
            predictions: Predictions::from_candidates(candidates),
        }
    }
}

#[test]
fn reference_standard_matches_the_official_kit() {
    let Some(r) = reference("reference_standard_matches_the_official_kit") else {
        return;
    };
    assert_eq!(r.seriesuids.len(), 888);
    assert_eq!(r.annotations.len(), 1186);
    assert_eq!(r.excluded.len(), 35192);
    assert!(r
        .annotations
        .findings
        .iter()
        .all(|f| f.diameter_mm.is_some()));
    let no_diameter = r
        .excluded
        .findings
        .iter()
        .filter(|f| f.diameter_mm.is_none())
        .count();
    assert!(
        no_diameter > 30_000,
        "{no_diameter} excluded findings without diameter"
    );

    let result = evaluate(&r.inputs(vec![]), &EvalConfig::default()).expect("evaluation");
    assert_eq!(
        (result.scans, result.nodules, result.fn_, result.tp),
        (888, 1186, 1186, 0)
    );
    assert_eq!(result.findings_unknown_series, 0);
    assert_eq!(result.cpm, 0.0);

    // The official kit's own analysis of its sample submission counts the same nodules.
    let Some(dir) = luna16_dir() else { return };
    let analysis = dir.join("example-evaluation/CADAnalysis.txt");
    match std::fs::read_to_string(&analysis) {
        Ok(text) => {
            let nodules: usize = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Total number of nodules:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("CADAnalysis.txt names the number of nodules");
            assert_eq!(nodules, result.nodules);
            let tp: usize = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("True positives:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("true positives");
            let fn_: usize = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("False negatives:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("false negatives");
            assert_eq!(tp + fn_, result.nodules);
        }
        Err(_) => eprintln!(
            "skipping the CADAnalysis.txt check: {} not found",
            analysis.display()
        ),
    }
}

/// A submission and evaluation settings, as `SCENARIOS` in the Python script.
fn scenario(name: &str) -> (SyntheticSpec, Option<usize>, EvalConfig) {
    let base = SyntheticSpec {
        seed: 1,
        detect_fraction: 0.9,
        duplicate_fraction: 0.2,
        jitter: 0.7,
        excluded_hit_fraction: 0.1,
        false_positives: 100_000,
        probability_levels: 1000,
    };
    let config = EvalConfig::default();
    match name {
        "capped" => (base, None, config),
        "sparse" => (
            SyntheticSpec {
                seed: 2,
                detect_fraction: 0.6,
                duplicate_fraction: 0.5,
                jitter: 0.5,
                excluded_hit_fraction: 0.3,
                false_positives: 300,
                probability_levels: 0,
            },
            None,
            config,
        ),
        "excluded_as_fp" => (
            SyntheticSpec {
                seed: 3,
                detect_fraction: 0.8,
                duplicate_fraction: 0.1,
                jitter: 0.6,
                excluded_hit_fraction: 0.5,
                false_positives: 20_000,
                probability_levels: 100,
            },
            None,
            EvalConfig {
                excluded_as_irrelevant: false,
                ..config
            },
        ),
        "bench500k" => (SyntheticSpec { seed: 4, ..base }, Some(500_000), config),
        "bench500k_uncapped" => (
            SyntheticSpec { seed: 4, ..base },
            Some(500_000),
            EvalConfig {
                max_candidates_per_scan: 0,
                bootstrap_resamples: 200,
                ..config
            },
        ),
        other => panic!("unknown scenario {other}"),
    }
}

fn submission(r: &Reference, spec: &SyntheticSpec, total: Option<usize>) -> Vec<Candidate> {
    match total {
        None => generate(&r.annotations, &r.excluded, &r.seriesuids, spec),
        Some(t) => generate_with_total(&r.annotations, &r.excluded, &r.seriesuids, spec, t),
    }
}

/// Numbers printed by `python3 tests/scripts/luna16_cpm_reference.py` (numpy 2.4.6;
/// its numpy roc_curve checked against scikit-learn 1.9.1 with --check-sklearn).
struct Expected {
    name: &'static str,
    submitted: usize,
    candidates: usize,
    tp: usize,
    fp: usize,
    fn_: usize,
    ignored_on_excluded: usize,
    ignored_double_detections: usize,
    curve_points: usize,
    sensitivities: [f64; 7],
    cpm: f64,
    cpm_ci: (f64, f64),
    cpm_bootstrap_mean: f64,
    sensitivity_ci: [(f64, f64); 7],
}

const EXPECTED: &[Expected] = &[
    Expected {
        name: "capped",
        submitted: 104774,
        candidates: 85169,
        tp: 1090,
        fp: 80407,
        fn_: 96,
        ignored_on_excluded: 3161,
        ignored_double_detections: 511,
        curve_points: 981,
        sensitivities: [
            0.08010118043844856,
            0.11431757602132404,
            0.1734822934232715,
            0.24446669477234398,
            0.3484401349072513,
            0.4928330522765599,
            0.6669878744077732,
        ],
        cpm: 0.30294697232099604,
        cpm_ci: (0.28236584129752285, 0.3229398331645794),
        cpm_bootstrap_mean: 0.3024131382665569,
        sensitivity_ci: [
            (0.06272292886466115, 0.09750134467752189),
            (0.09388646288209608, 0.13614035087719298),
            (0.14847446565508243, 0.19544652877986213),
            (0.21437076007199224, 0.27252631973324337),
            (0.32164767747589834, 0.37726061568116104),
            (0.4631490787269682, 0.5223175700703792),
            (0.6380718954248366, 0.6931818181818182),
        ],
    },
    Expected {
        name: "sparse",
        submitted: 11843,
        candidates: 11843,
        tp: 1018,
        fp: 300,
        fn_: 168,
        ignored_on_excluded: 9497,
        ignored_double_detections: 1028,
        curve_points: 236,
        sensitivities: [
            0.8145025295109612,
            0.8583473861720068,
            0.8583473861720068,
            0.8583473861720068,
            0.8583473861720068,
            0.8583473861720068,
            0.8583473861720068,
        ],
        cpm: 0.8520838352204286,
        cpm_ci: (0.8314389046757943, 0.8724447101016138),
        cpm_bootstrap_mean: 0.8515512602513344,
        sensitivity_ci: [
            (0.78, 0.8423005565862709),
            (0.8372513562386981, 0.8778242677824267),
            (0.8384615384615385, 0.8788898233809924),
            (0.8384615384615385, 0.8788898233809924),
            (0.8384615384615385, 0.8788898233809924),
            (0.8384615384615385, 0.8788898233809924),
            (0.8384615384615385, 0.8788898233809924),
        ],
    },
    Expected {
        name: "excluded_as_fp",
        submitted: 38715,
        candidates: 38614,
        tp: 1149,
        fp: 35761,
        fn_: 37,
        ignored_on_excluded: 0,
        ignored_double_detections: 1704,
        curve_points: 100,
        sensitivities: [
            0.1817747939800821,
            0.24836050215476863,
            0.3426178984706635,
            0.40731812407604134,
            0.494471766141949,
            0.6380419409236795,
            0.8067688607524949,
        ],
        cpm: 0.4456219837856685,
        cpm_ci: (0.4234424475479562, 0.46609415176265845),
        cpm_bootstrap_mean: 0.4454054849963358,
        sensitivity_ci: [
            (0.15841476393188852, 0.20517241379310344),
            (0.22089640842980113, 0.2761273666092944),
            (0.3118914604948124, 0.3733739837398374),
            (0.37829042638777155, 0.43605150214592275),
            (0.4649217050307539, 0.521607027724049),
            (0.610693646037182, 0.6657631366131049),
            (0.7824026815513034, 0.8311760501866117),
        ],
    },
    Expected {
        name: "bench500k",
        submitted: 500000,
        candidates: 88679,
        tp: 1052,
        fp: 85830,
        fn_: 134,
        ignored_on_excluded: 1449,
        ignored_double_detections: 348,
        curve_points: 622,
        sensitivities: [
            0.05073192852183032,
            0.06646166054954865,
            0.08293033043914541,
            0.11692331587822845,
            0.16349344503073493,
            0.23826093152506947,
            0.3212419121428486,
        ],
        cpm: 0.14857764629820083,
        cpm_ci: (0.13213692596964707, 0.16447622160178627),
        cpm_bootstrap_mean: 0.14828442925496782,
        sensitivity_ci: [
            (0.037056702285347666, 0.06395442792501616),
            (0.05232484055074544, 0.08080171285833235),
            (0.06781151942442265, 0.09808891019932872),
            (0.09874456252409008, 0.13498404313854956),
            (0.1419580026599564, 0.1845946604158422),
            (0.21277829170521123, 0.26526510782566143),
            (0.2938369681980564, 0.3491114472067303),
        ],
    },
    Expected {
        name: "bench500k_uncapped",
        submitted: 500000,
        candidates: 500000,
        tp: 1083,
        fp: 495202,
        fn_: 103,
        ignored_on_excluded: 3196,
        ignored_double_detections: 519,
        curve_points: 992,
        sensitivities: [
            0.05073192852183032,
            0.06646166054954866,
            0.08293033043914541,
            0.11692331587822845,
            0.16349344503073493,
            0.23826093152506947,
            0.3212419121428486,
        ],
        cpm: 0.14857764629820083,
        cpm_ci: (0.13255559039438777, 0.16317324993916418),
        cpm_bootstrap_mean: 0.14821717512118496,
        sensitivity_ci: [
            (0.03560804899387576, 0.0641510781093817),
            (0.053877584826481875, 0.07913845149710369),
            (0.0692555476020043, 0.0968117763334446),
            (0.10017727026165538, 0.1336131295414683),
            (0.14200491116567962, 0.18326325505076402),
            (0.21331566533945373, 0.2620442849111274),
            (0.2953967548090628, 0.34727011494252874),
        ],
    },
];

/// Largest difference allowed between the Rust and Python numbers.
const TOLERANCE: f64 = 1e-9;

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{what}: Rust {got:?}, Python {want:?}, difference {:e}",
        (got - want).abs()
    );
}

fn check_scenario(name: &str) {
    let Some(r) = reference(&format!("scenario {name}")) else {
        return;
    };
    let want = EXPECTED
        .iter()
        .find(|e| e.name == name)
        .expect("expected numbers");
    let (spec, total, config) = scenario(name);
    let candidates = submission(r, &spec, total);
    assert_eq!(candidates.len(), want.submitted, "{name}: submission size");
    let got = evaluate(&r.inputs(candidates), &config).expect("evaluation");
    check_result(name, &got, want);
    println!(
        "{name}: CPM {} (Python {}), 95% CI {:?}",
        got.cpm, want.cpm, got.cpm_ci
    );
}

fn check_result(name: &str, got: &FrocResult, want: &Expected) {
    assert_eq!(
        (
            got.candidates,
            got.tp,
            got.fp,
            got.fn_,
            got.ignored_on_excluded,
            got.ignored_double_detections
        ),
        (
            want.candidates,
            want.tp,
            want.fp,
            want.fn_,
            want.ignored_on_excluded,
            want.ignored_double_detections
        ),
        "{name}: counts (candidates, tp, fp, fn, on excluded, double)"
    );
    assert_eq!(
        got.curve.fps_per_scan.len(),
        want.curve_points,
        "{name}: curve points"
    );
    for (i, fp) in OPERATING_POINTS.iter().enumerate() {
        let (g, w) = (got.sensitivity_ci[i], want.sensitivity_ci[i]);
        close(
            &format!("{name}: sensitivity at {fp}"),
            got.sensitivities[i],
            want.sensitivities[i],
        );
        close(&format!("{name}: CI low at {fp}"), g.0, w.0);
        close(&format!("{name}: CI high at {fp}"), g.1, w.1);
    }
    close(&format!("{name}: CPM"), got.cpm, want.cpm);
    close(&format!("{name}: CPM CI low"), got.cpm_ci.0, want.cpm_ci.0);
    close(&format!("{name}: CPM CI high"), got.cpm_ci.1, want.cpm_ci.1);
    close(
        &format!("{name}: bootstrap mean CPM"),
        got.cpm_bootstrap_mean,
        want.cpm_bootstrap_mean,
    );
}

#[test]
fn cpm_matches_python_reference_capped() {
    check_scenario("capped");
}

#[test]
fn cpm_matches_python_reference_sparse() {
    check_scenario("sparse");
}

#[test]
fn cpm_matches_python_reference_excluded_as_false_positives() {
    check_scenario("excluded_as_fp");
}

#[test]
fn cpm_matches_python_reference_500k_candidates() {
    check_scenario("bench500k");
}

#[test]
fn cpm_matches_python_reference_500k_candidates_uncapped() {
    check_scenario("bench500k_uncapped");
}

#[test]
fn csv_files_give_the_same_result_as_memory() {
    let Some(r) = reference("csv_files_give_the_same_result_as_memory") else {
        return;
    };
    let Some(dir) = luna16_dir() else { return };
    let (spec, total, config) = scenario("sparse");
    let candidates = submission(r, &spec, total);
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("submission.csv");
    write_predictions_csv(&candidates, &path).expect("write submission");
    let from_files = EvalInputs::from_csv(
        dir.join("annotations.csv"),
        dir.join("annotations_excluded.csv"),
        dir.join("seriesuids.csv"),
        &path,
    )
    .expect("read CSVs");
    let a = evaluate(&from_files, &config).expect("evaluation");
    let b = evaluate(&r.inputs(candidates), &config).expect("evaluation");
    assert_eq!(a, b);
    let want = EXPECTED
        .iter()
        .find(|e| e.name == "sparse")
        .expect("expected numbers");
    check_result("sparse (CSV)", &a, want);

    let png = tmp.path().join("froc.png");
    plot_froc_png(&a, &png, &PlotOptions::default()).expect("plot");
    let decoder = png::Decoder::new(std::fs::File::open(&png).expect("open png"));
    let reader = decoder.read_info().expect("png header");
    assert_eq!((reader.info().width, reader.info().height), (800, 600));
}
