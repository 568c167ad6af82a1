//! LUNA16 evaluation of a 500,000-candidate submission against the full reference standard
//! (888 scans, 1186 nodules, 35,192 excluded findings), bootstrap of 1000 resamples
//! included: in memory, and from the CSV files (parsing included).
//!
//! Needs the LUNA16 CSVs at `$LUNGCAD_DATA/luna16` (default `../shared/data/luna16`);
//! without them it prints why and measures nothing. Run with `cargo bench --bench eval`.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use lungcad::eval::synthetic::{generate_with_total, SyntheticSpec};
use lungcad::eval::{
    evaluate, read_seriesuids, write_predictions_csv, Annotations, EvalConfig, EvalInputs,
    Predictions,
};
use std::time::Duration;

const CANDIDATES: usize = 500_000;

fn bench_eval(c: &mut Criterion) {
    let Some(dir) = common::data_dir("luna16") else {
        return; // common::data_dir said why
    };
    let annotations = Annotations::from_csv(dir.join("annotations.csv")).expect("annotations.csv");
    let excluded = Annotations::from_csv(dir.join("annotations_excluded.csv"))
        .expect("annotations_excluded.csv");
    let seriesuids = read_seriesuids(dir.join("seriesuids.csv")).expect("seriesuids.csv");
    // The "bench500k" submission of tests/eval.rs and the Python cross-check.
    let spec = SyntheticSpec {
        seed: 4,
        ..SyntheticSpec::default()
    };
    let candidates = generate_with_total(&annotations, &excluded, &seriesuids, &spec, CANDIDATES);
    assert_eq!(candidates.len(), CANDIDATES);
    let tmp = tempfile::tempdir().expect("temp dir");
    let submission = tmp.path().join("submission.csv");
    write_predictions_csv(&candidates, &submission).expect("write submission");
    let inputs = EvalInputs {
        annotations,
        excluded,
        seriesuids,
        predictions: Predictions::from_candidates(candidates),
    };
    let config = EvalConfig::default();

    let mut group = c.benchmark_group("luna16");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("evaluate_500k_bootstrap1000", |b| {
        b.iter(|| evaluate(&inputs, &config).expect("evaluation"))
    });
    group.bench_function("read_csv_and_evaluate_500k_bootstrap1000", |b| {
        b.iter(|| {
            let from_files = EvalInputs::from_csv(
                dir.join("annotations.csv"),
                dir.join("annotations_excluded.csv"),
                dir.join("seriesuids.csv"),
                &submission,
            )
            .expect("read CSVs");
            evaluate(&from_files, &config).expect("evaluation")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_eval);
criterion_main!(benches);
