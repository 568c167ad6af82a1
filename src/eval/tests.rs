//! Hand-computed cases of the whole protocol.

use super::*;

fn finding(uid: &str, x: f64, y: f64, z: f64, d: Option<f64>) -> Finding {
    Finding {
        seriesuid: uid.into(),
        coord_x: x,
        coord_y: y,
        coord_z: z,
        diameter_mm: d,
    }
}

fn cand(uid: &str, x: f64, y: f64, z: f64, p: f64) -> Candidate {
    Candidate {
        seriesuid: uid.into(),
        coord_x: x,
        coord_y: y,
        coord_z: z,
        probability: p,
    }
}

fn inputs(
    scans: &[&str],
    nodules: Vec<Finding>,
    excluded: Vec<Finding>,
    cands: Vec<Candidate>,
) -> EvalInputs {
    EvalInputs {
        annotations: Annotations::from_findings(nodules),
        excluded: Annotations::from_findings(excluded),
        seriesuids: scans.iter().map(|s| s.to_string()).collect(),
        predictions: Predictions::from_candidates(cands),
    }
}

fn no_bootstrap() -> EvalConfig {
    EvalConfig {
        bootstrap_resamples: 0,
        ..EvalConfig::default()
    }
}

fn run(i: &EvalInputs) -> FrocResult {
    evaluate(i, &no_bootstrap()).expect("evaluation")
}

#[test]
fn double_detections_count_once_with_the_highest_probability() {
    let i = inputs(
        &["s1", "s2"],
        vec![finding("s1", 0.0, 0.0, 0.0, Some(10.0))],
        vec![],
        vec![
            cand("s1", 1.0, 0.0, 0.0, 0.4),
            cand("s1", 0.0, 1.0, 0.0, 0.9),
            cand("s1", 0.0, 0.0, -2.0, 0.5),
            cand("s1", 100.0, 0.0, 0.0, 0.7),
        ],
    );
    let r = run(&i);
    assert_eq!((r.tp, r.fp, r.fn_, r.nodules), (1, 1, 0, 1));
    assert_eq!(r.ignored_double_detections, 2);
    // Items: TP 0.9, FP 0.7 -> points (0,0) (0 FP, 1 TP) (1 FP, 1 TP); 2 scans.
    assert_eq!(r.curve.thresholds, vec![f64::INFINITY, 0.9, 0.7]);
    assert_eq!(r.curve.fps_per_scan, vec![0.0, 0.0, 0.5]);
    assert_eq!(r.curve.sensitivity, vec![0.0, 1.0, 1.0]);
    assert_eq!(r.sensitivities, [1.0; 7]);
    assert_eq!(r.cpm, 1.0);
    assert!(r.cpm_ci.0.is_nan() && r.band.is_none());
}

#[test]
fn candidates_on_excluded_findings_are_ignored_unless_they_hit_a_nodule() {
    let i = inputs(
        &["s1"],
        vec![finding("s1", 0.0, 0.0, 0.0, Some(6.0))],
        vec![
            // -1 diameter: 10 mm. Overlaps the nodule.
            finding("s1", 2.0, 0.0, 0.0, None),
            finding("s1", 50.0, 50.0, 50.0, None),
            finding("s1", -50.0, 0.0, 0.0, Some(4.0)),
        ],
        vec![
            // Hits the nodule (distance 1 < 3) and the first excluded finding: a TP.
            cand("s1", 1.0, 0.0, 0.0, 0.6),
            // Hits only the first excluded finding (distance 4 < 5): ignored.
            cand("s1", 6.0, 0.0, 0.0, 0.8),
            // Within 5 mm of the second excluded finding: ignored.
            cand("s1", 53.0, 50.0, 50.0, 0.95),
            // 7 mm away from it: a false positive.
            cand("s1", 57.0, 50.0, 50.0, 0.3),
            // 3 mm from an excluded finding of 4 mm (radius 2): a false positive.
            cand("s1", -53.0, 0.0, 0.0, 0.2),
        ],
    );
    let r = run(&i);
    assert_eq!((r.tp, r.fp, r.fn_), (1, 2, 0));
    assert_eq!(r.ignored_on_excluded, 2);
    assert_eq!(r.ignored_double_detections, 0);
    assert_eq!(r.candidates, 5);

    let all_fp = evaluate(
        &i,
        &EvalConfig {
            excluded_as_irrelevant: false,
            ..no_bootstrap()
        },
    )
    .expect("evaluation");
    assert_eq!(
        (all_fp.tp, all_fp.fp, all_fp.ignored_on_excluded),
        (1, 4, 0)
    );
}

#[test]
fn ties_in_probability_make_one_threshold() {
    let i = inputs(
        &["s1"],
        vec![
            finding("s1", 0.0, 0.0, 0.0, Some(10.0)),
            finding("s1", 100.0, 0.0, 0.0, Some(10.0)),
        ],
        vec![],
        vec![
            cand("s1", 0.0, 0.0, 0.0, 0.8),
            cand("s1", 100.0, 0.0, 0.0, 0.5),
            cand("s1", 0.0, 50.0, 0.0, 0.8),
            cand("s1", 0.0, -50.0, 0.0, 0.8),
            cand("s1", 0.0, 0.0, 50.0, 0.3),
        ],
    );
    let r = run(&i);
    assert_eq!((r.tp, r.fp, r.fn_), (2, 3, 0));
    // Raw points (fp, tp): 0.8 -> (2, 1), 0.5 -> (2, 2), 0.3 -> (3, 2); none dropped.
    assert_eq!(r.curve.thresholds, vec![f64::INFINITY, 0.8, 0.5, 0.3]);
    assert_eq!(r.curve.fps_per_scan, vec![0.0, 2.0, 2.0, 3.0]);
    assert_eq!(r.curve.sensitivity, vec![0.0, 0.5, 1.0, 1.0]);
    // Below 2 FP/scan: the line from (0, 0) to (2, 0.5); at exactly 2 numpy takes the last
    // of the two points at x = 2.
    assert_eq!(
        r.sensitivities,
        [0.03125, 0.0625, 0.125, 0.25, 1.0, 1.0, 1.0]
    );
    assert_eq!(
        r.cpm,
        (0.03125 + 0.0625 + 0.125 + 0.25 + 1.0 + 1.0 + 1.0) / 7.0
    );
}

#[test]
fn scans_without_candidates_count_in_the_divisor_and_their_nodules_are_missed() {
    let i = inputs(
        &["s1", "s2", "s3", "s4"],
        vec![
            finding("s1", 0.0, 0.0, 0.0, Some(10.0)),
            finding("s2", 0.0, 0.0, 0.0, Some(10.0)),
        ],
        vec![],
        vec![
            cand("s1", 0.0, 0.0, 0.0, 0.9),
            cand("s1", 40.0, 0.0, 0.0, 0.6),
            cand("s1", 80.0, 0.0, 0.0, 0.4),
        ],
    );
    let r = run(&i);
    assert_eq!((r.tp, r.fp, r.fn_, r.nodules, r.scans), (1, 2, 1, 2, 4));
    // Raw (fp, tp): (0,1) (1,1) (2,1): the middle one is dropped (both linear).
    assert_eq!(r.curve.fps_per_scan, vec![0.0, 0.0, 0.5]);
    assert_eq!(r.curve.sensitivity, vec![0.0, 0.5, 0.5]);
    assert_eq!(r.cpm, 0.5);
}

#[test]
fn more_than_100_candidates_keep_those_above_the_101st_probability() {
    let mut cands = Vec::new();
    // 98 distinct high probabilities, far from the nodule.
    for k in 0..98 {
        cands.push(cand(
            "s1",
            200.0 + k as f64 * 10.0,
            0.0,
            0.0,
            0.5 + k as f64 / 1000.0,
        ));
    }
    // Three candidates at 0.2 take ranks 99 to 101; one of them hits the nodule.
    cands.push(cand("s1", 0.0, 0.0, 0.0, 0.2));
    cands.push(cand("s1", 0.0, 100.0, 0.0, 0.2));
    cands.push(cand("s1", 0.0, -100.0, 0.0, 0.2));
    for k in 0..49 {
        cands.push(cand(
            "s1",
            0.0,
            0.0,
            200.0 + k as f64 * 10.0,
            0.01 * (k % 10) as f64,
        ));
    }
    assert_eq!(cands.len(), 150);
    let i = inputs(
        &["s1"],
        vec![finding("s1", 0.0, 0.0, 0.0, Some(8.0))],
        vec![],
        cands,
    );
    let r = run(&i);
    // probs[100] is 0.2: only the 98 strictly above it are kept, so the nodule is missed.
    assert_eq!(r.candidates_submitted, 150);
    assert_eq!(r.candidates, 98);
    assert_eq!(r.candidates_over_cap, 52);
    assert_eq!((r.tp, r.fp, r.fn_), (0, 98, 1));
    assert_eq!(r.cpm, 0.0);

    let uncapped = evaluate(
        &i,
        &EvalConfig {
            max_candidates_per_scan: 0,
            ..no_bootstrap()
        },
    )
    .expect("evaluation");
    assert_eq!(
        (uncapped.tp, uncapped.fp, uncapped.candidates),
        (1, 149, 150)
    );

    // Without the tie the cap keeps exactly 100.
    let mut distinct = i.clone();
    for (k, c) in distinct.predictions.candidates.iter_mut().enumerate() {
        c.probability = 1.0 - k as f64 / 1000.0;
    }
    let r = run(&distinct);
    assert_eq!(r.candidates, 100);
    assert_eq!((r.tp, r.fp), (1, 99));
}

#[test]
fn nodule_without_diameter_counts_as_10_mm_and_hits_are_strict() {
    let i = inputs(
        &["s1", "s2"],
        vec![
            finding("s1", 0.0, 0.0, 0.0, None),
            finding("s2", 0.0, 0.0, 0.0, Some(4.0)),
        ],
        vec![],
        vec![
            cand("s1", 4.9, 0.0, 0.0, 0.9),
            cand("s1", 0.0, 5.0, 0.0, 0.8),
            cand("s2", 1.9, 0.0, 0.0, 0.7),
            cand("s2", 0.0, 2.0, 0.0, 0.6),
        ],
    );
    let r = run(&i);
    // 4.9 < 5 hits; exactly 5 (or exactly 2 for the 4 mm nodule) does not.
    assert_eq!((r.tp, r.fp, r.fn_), (2, 2, 0));
    assert_eq!(r.ignored_double_detections, 0);
}

#[test]
fn a_candidate_can_detect_two_nodules() {
    let i = inputs(
        &["s1"],
        vec![
            finding("s1", 0.0, 0.0, 0.0, Some(10.0)),
            finding("s1", 4.0, 0.0, 0.0, Some(10.0)),
        ],
        vec![],
        vec![
            cand("s1", 2.0, 0.0, 0.0, 0.7),
            cand("s1", 50.0, 0.0, 0.0, 0.1),
        ],
    );
    let r = run(&i);
    assert_eq!((r.tp, r.fp, r.fn_), (2, 1, 0));
}

#[test]
fn unknown_series_are_ignored_and_bad_inputs_refused() {
    let mut i = inputs(
        &["s1"],
        vec![
            finding("s1", 0.0, 0.0, 0.0, Some(10.0)),
            finding("zz", 0.0, 0.0, 0.0, None),
        ],
        vec![],
        vec![
            cand("s1", 0.0, 0.0, 0.0, 0.9),
            cand("other", 0.0, 0.0, 0.0, 0.9),
        ],
    );
    let r = run(&i);
    assert_eq!(
        (
            r.tp,
            r.fp,
            r.candidates_unknown_series,
            r.findings_unknown_series
        ),
        (1, 0, 1, 1)
    );
    // No false positive at all: the curve stays at 0 FP/scan, sensitivity 1 everywhere.
    assert_eq!(r.sensitivities, [1.0; 7]);

    i.predictions.candidates[0].probability = f64::NAN;
    assert!(matches!(evaluate(&i, &no_bootstrap()), Err(Error::Eval(_))));
    i.predictions.candidates[0].probability = 0.5;
    i.seriesuids.push("s1".into());
    assert!(matches!(evaluate(&i, &no_bootstrap()), Err(Error::Eval(_))));
    i.seriesuids.clear();
    assert!(matches!(evaluate(&i, &no_bootstrap()), Err(Error::Eval(_))));
    i.seriesuids.push("s1".into());
    let bad = EvalConfig {
        confidence: 1.0,
        ..EvalConfig::default()
    };
    assert!(matches!(evaluate(&i, &bad), Err(Error::InvalidArgument(_))));
}

#[test]
fn no_detection_gives_zero_sensitivity_not_nan() {
    let i = inputs(
        &["s1"],
        vec![finding("s1", 0.0, 0.0, 0.0, Some(10.0))],
        vec![],
        vec![cand("s1", 90.0, 0.0, 0.0, 0.9)],
    );
    let r = run(&i);
    assert_eq!((r.tp, r.fp, r.fn_), (0, 1, 1));
    assert_eq!(r.cpm, 0.0);
    let empty = inputs(&["s1"], vec![], vec![], vec![]);
    let r = run(&empty);
    assert_eq!(r.cpm, 0.0);
    assert_eq!(r.curve.fps_per_scan, vec![0.0]);
}

/// A small pseudo-random case with many scans, for the bootstrap.
fn random_case(seed: u64, scans: usize) -> EvalInputs {
    let mut rng = crate::rng::SplitMix64::new(seed);
    let uids: Vec<String> = (0..scans).map(|s| format!("scan{s}")).collect();
    let mut nodules = Vec::new();
    let mut cands = Vec::new();
    for uid in &uids {
        let n = rng.below(3);
        for k in 0..n {
            let x = k as f64 * 100.0;
            nodules.push(finding(uid, x, 0.0, 0.0, Some(5.0 + 10.0 * rng.uniform())));
            if rng.uniform() < 0.7 {
                cands.push(cand(
                    uid,
                    x + rng.uniform(),
                    0.0,
                    0.0,
                    (rng.uniform() * 20.0).floor() / 20.0,
                ));
            }
        }
        for _ in 0..rng.below(12) {
            cands.push(cand(
                uid,
                1000.0,
                rng.uniform() * 100.0,
                0.0,
                (rng.uniform() * 20.0).floor() / 20.0,
            ));
        }
    }
    inputs(
        &uids.iter().map(String::as_str).collect::<Vec<_>>(),
        nodules,
        vec![],
        cands,
    )
}

#[test]
fn bootstrap_is_deterministic_and_matches_resampling_by_concatenation() {
    let i = random_case(3, 40);
    let cfg = EvalConfig {
        bootstrap_resamples: 200,
        band_points: 9,
        ..EvalConfig::default()
    };
    let a = evaluate(&i, &cfg).expect("evaluation");
    let b = evaluate(&i, &cfg).expect("evaluation");
    assert_eq!(a, b);
    assert!(a.cpm_ci.0 <= a.cpm_ci.1);
    for (lo, hi) in a.sensitivity_ci {
        assert!(lo <= hi);
    }
    let band = a.band.as_ref().expect("band");
    assert_eq!(band.fps_per_scan.len(), 9);
    assert!(band.lower.iter().zip(&band.upper).all(|(l, u)| l <= u));

    // The official way: rebuild each resample as a list of scans (a scan drawn twice appears
    // twice, under a new name) and evaluate it with the plain curve; the CPM percentile
    // interval must be the same.
    let mut master = crate::rng::SplitMix64::new(cfg.seed);
    let n = i.seriesuids.len();
    let mut cpms = Vec::new();
    for _ in 0..cfg.bootstrap_resamples {
        let mut w = Vec::new();
        bootstrap::resample_weights(master.next_u64(), n, &mut w);
        let mut r = EvalInputs::default();
        for (s, &count) in w.iter().enumerate() {
            for copy in 0..count {
                let name = format!("{}#{copy}", i.seriesuids[s]);
                r.seriesuids.push(name.clone());
                for f in i
                    .annotations
                    .findings
                    .iter()
                    .filter(|f| f.seriesuid == i.seriesuids[s])
                {
                    r.annotations.findings.push(Finding {
                        seriesuid: name.clone(),
                        ..f.clone()
                    });
                }
                for c in i
                    .predictions
                    .candidates
                    .iter()
                    .filter(|c| c.seriesuid == i.seriesuids[s])
                {
                    r.predictions.candidates.push(Candidate {
                        seriesuid: name.clone(),
                        ..c.clone()
                    });
                }
            }
        }
        // The divisor is the number of listed scans, n, in every resample.
        assert_eq!(r.seriesuids.len(), n);
        cpms.push(run(&r).cpm);
    }
    let (mean, lo, hi) = bootstrap::mean_ci(&mut cpms, cfg.confidence);
    assert_eq!((lo, hi), a.cpm_ci);
    assert!((mean - a.cpm_bootstrap_mean).abs() < 1e-12);
}

#[test]
fn reports_and_plot() {
    let i = random_case(5, 30);
    let r = evaluate(
        &i,
        &EvalConfig {
            bootstrap_resamples: 50,
            ..EvalConfig::default()
        },
    )
    .expect("evaluation");
    let text = report_text(&r);
    assert!(text.contains("CPM: "), "{text}");
    assert!(text.contains("0.125") && text.contains("95% CI"), "{text}");
    let json = report_json(&r);
    for key in ["sensitivities", "cpm", "cpm_ci", "tp", "fp", "fn"] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["sensitivities"].as_array().map(Vec::len), Some(7));
    assert_eq!(json["cpm_ci"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["fn"].as_u64(), Some(r.fn_ as u64));
    let full = serde_json::to_value(&r).expect("serialize");
    assert!(full.get("fn").is_some() && full.get("fn_").is_none());

    let img = render_froc(&r, &PlotOptions::default()).expect("render");
    assert_eq!(img.data.len(), 800 * 600 * 3);
    // Red operating-point markers are drawn.
    let red = img
        .data
        .chunks(3)
        .filter(|p| p[0] > 180 && p[1] < 80 && p[2] < 80)
        .count();
    assert!(red > 7 * 20, "{red} red pixels");
    assert!(render_froc(
        &r,
        &PlotOptions {
            width: 10,
            ..PlotOptions::default()
        }
    )
    .is_err());

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("froc.png");
    plot_froc_png(&r, &path, &PlotOptions::default()).expect("write png");
    let decoder = png::Decoder::new(std::fs::File::open(&path).expect("open png"));
    let reader = decoder.read_info().expect("png header");
    assert_eq!((reader.info().width, reader.info().height), (800, 600));
}

#[test]
fn predictions_csv_round_trip() {
    let i = random_case(9, 5);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.csv");
    write_predictions_csv(&i.predictions.candidates, &path).expect("write");
    let back = Predictions::from_csv(&path).expect("read");
    assert_eq!(back, i.predictions);
}
