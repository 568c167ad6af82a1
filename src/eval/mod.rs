//! LUNA16 FROC/CPM evaluation, computed exactly as the official LUNA16 evaluation script
//! (`noduleCADEvaluationLUNA16.py`) computes it.
//!
//! # The protocol
//!
//! Inputs are the four CSV files of the LUNA16 kit: `annotations.csv` (the nodules),
//! `annotations_excluded.csv` (irrelevant findings), `seriesuids.csv` (the scans) and a
//! submission of candidates. Scans are processed one by one, in `seriesuids.csv` order:
//!
//! 1. **Candidates per scan.** Candidates whose `seriesuid` is not listed in `seriesuids.csv`
//!    are ignored (with a warning). A scan with more than
//!    [`EvalConfig::max_candidates_per_scan`] (100) candidates keeps only those whose
//!    probability is *strictly greater* than the 101st-highest probability of the scan. This
//!    is what the official script does (`probThreshold = probs[100]`, then `> probThreshold`):
//!    when the 100th and 101st candidates tie, every candidate at that probability is
//!    dropped and the scan keeps fewer than 100.
//! 2. **Hits.** A candidate hits a finding when the squared distance between their centres
//!    is strictly below the squared radius (`diameter_mm / 2`; a finding with a negative
//!    diameter such as `-1`, or an empty one, counts as 10 mm).
//! 3. **Nodules first.** Each nodule is a true positive when at least one candidate hits it;
//!    its score is the highest probability among all candidates that hit it. The other
//!    hitting candidates are neither true nor false positives (the official
//!    "double detections"). A candidate that hits two nodules counts for both.
//!    A nodule that no candidate hits is a false negative.
//! 4. **Excluded findings second.** A candidate that hits no nodule but hits an excluded
//!    finding is ignored. A candidate that hits both a nodule and an excluded finding is
//!    taken by the nodule (the script processes all nodules of a scan before its excluded
//!    findings).
//! 5. **False positives.** Every remaining candidate is a false positive.
//!
//! The FROC curve is the official `computeFROC`: `sklearn.metrics.roc_curve` (with its
//! default `drop_intermediate=True`) on the true-positive scores and false-positive
//! probabilities, then `fps = fpr * FP / scans` and `sens = tpr * TP / nodules`; missed
//! nodules lower the sensitivity but add no point. The sensitivity at each of the seven
//! operating points 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan is `numpy.interp`
//! on that curve ([`OPERATING_POINTS`]); the CPM (competition performance metric) is their
//! mean.
//!
//! The confidence interval resamples scans with replacement, as the official
//! `computeFROC_bootstrap` does ([`EvalConfig::bootstrap_resamples`] resamples of all listed
//! scans, a FROC curve per resample with the scan count as divisor, the percentile interval
//! `sorted[floor(p * n)]` of `compute_mean_ci`). The official script draws with an unseeded
//! `numpy.random`; lungcad uses a seeded SplitMix64 so intervals are reproducible, and
//! reports an interval for the CPM (the mean of the seven interpolated sensitivities of each
//! resample) beside the per-point intervals and a band along the curve.
//!
//! Where the official script would crash or return NaN, lungcad defines the answer:
//! no detected nodule (or no nodule at all) gives sensitivity 0 everywhere; a submission
//! without false positives gives a curve at 0 FP/scan, as the script's own special case does.
//!
//! # Example
//!
//! ```no_run
//! use lungcad::eval::{evaluate, report_text, EvalConfig, EvalInputs};
//!
//! let inputs = EvalInputs::from_csv(
//!     "annotations.csv",
//!     "annotations_excluded.csv",
//!     "seriesuids.csv",
//!     "submission.csv",
//! )?;
//! let result = evaluate(&inputs, &EvalConfig::default())?;
//! println!("{}", report_text(&result));
//! lungcad::eval::plot_froc_png(&result, "froc.png", &Default::default())?;
//! # Ok::<(), lungcad::Error>(())
//! ```

mod bootstrap;
mod csv;
mod froc;
pub mod lidc;
mod matching;
mod plot;
mod report;
pub mod synthetic;

pub use csv::{
    read_seriesuids, write_annotations_csv, write_prediction_rows, write_predictions_csv,
    ANNOTATIONS_CSV_HEADER, PREDICTIONS_CSV_HEADER,
};
pub use plot::{plot_froc_png, render_froc, PlotOptions, RgbImage};
pub use report::{report_json, report_text};

use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The seven operating points of the CPM, in false positives per scan.
pub const OPERATING_POINTS: [f64; 7] = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0];

/// The diameter given to a finding whose diameter is negative (LUNA16 writes `-1`) or
/// empty, in millimetres, as in the official script.
pub const DEFAULT_DIAMETER_MM: f64 = 10.0;

/// One reference finding: a row of `annotations.csv` (a nodule) or of
/// `annotations_excluded.csv` (an irrelevant finding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The SeriesInstanceUID of the scan.
    pub seriesuid: String,
    /// World x in mm (LPS).
    pub coord_x: f64,
    /// World y in mm (LPS).
    pub coord_y: f64,
    /// World z in mm (LPS).
    pub coord_z: f64,
    /// Diameter in mm; `None` when the CSV gives a negative value (`-1`) or nothing, in which
    /// case the finding counts as [`DEFAULT_DIAMETER_MM`].
    pub diameter_mm: Option<f64>,
}

impl Finding {
    /// The diameter used for hit testing: the annotated one, or [`DEFAULT_DIAMETER_MM`] when
    /// it is missing or negative (the official `if diameter < 0.0: diameter = 10.0`).
    pub fn effective_diameter_mm(&self) -> f64 {
        match self.diameter_mm {
            Some(d) if d >= 0.0 => d,
            _ => DEFAULT_DIAMETER_MM,
        }
    }

    /// The squared hit radius in mm², computed as the official `pow(diameter / 2.0, 2.0)`.
    pub fn radius_squared_mm2(&self) -> f64 {
        let r = self.effective_diameter_mm() / 2.0;
        r * r
    }
}

/// One candidate of a submission: a row of the predictions CSV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The SeriesInstanceUID of the scan.
    pub seriesuid: String,
    /// World x in mm (LPS).
    pub coord_x: f64,
    /// World y in mm (LPS).
    pub coord_y: f64,
    /// World z in mm (LPS).
    pub coord_z: f64,
    /// The detector's score; higher is more suspicious. Must be finite.
    pub probability: f64,
}

/// A list of reference findings (`annotations.csv` or `annotations_excluded.csv`), in file
/// order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Annotations {
    pub findings: Vec<Finding>,
}

impl Annotations {
    /// Reads a LUNA16 annotation CSV: a header naming at least `seriesuid`, `coordX`,
    /// `coordY`, `coordZ` and `diameter_mm` (in any order, other columns ignored), then one
    /// finding per row. A negative or empty diameter means [`DEFAULT_DIAMETER_MM`]. A
    /// malformed row is an [`Error::Csv`] naming its line.
    pub fn from_csv(path: impl AsRef<Path>) -> Result<Self> {
        csv::read_annotations(path.as_ref()).map(|findings| Annotations { findings })
    }

    /// Wraps findings built in memory.
    pub fn from_findings(findings: Vec<Finding>) -> Self {
        Annotations { findings }
    }

    /// The number of findings.
    pub fn len(&self) -> usize {
        self.findings.len()
    }

    /// Whether there are no findings.
    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }
}

/// A submission: candidates in file order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Predictions {
    pub candidates: Vec<Candidate>,
}

impl Predictions {
    /// Reads a LUNA16 submission CSV: a header naming at least `seriesuid`, `coordX`,
    /// `coordY`, `coordZ` and `probability` (any order, other columns ignored), then one
    /// candidate per row. A malformed row, a non-finite coordinate and a NaN or infinite
    /// probability are [`Error::Csv`]s naming the line.
    pub fn from_csv(path: impl AsRef<Path>) -> Result<Self> {
        csv::read_predictions(path.as_ref()).map(|candidates| Predictions { candidates })
    }

    /// Wraps candidates built in memory (checked by [`evaluate`]).
    pub fn from_candidates(candidates: Vec<Candidate>) -> Self {
        Predictions { candidates }
    }

    /// The number of candidates.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Whether there are no candidates.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }
}

/// Everything an evaluation needs: the reference standard and a submission.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalInputs {
    /// The nodules (`annotations.csv`).
    pub annotations: Annotations,
    /// The irrelevant findings (`annotations_excluded.csv`).
    pub excluded: Annotations,
    /// The scans evaluated (`seriesuids.csv`); false positives per scan divide by its length.
    pub seriesuids: Vec<String>,
    /// The submission.
    pub predictions: Predictions,
}

impl EvalInputs {
    /// Reads the four CSV files of a LUNA16 evaluation.
    pub fn from_csv(
        annotations: impl AsRef<Path>,
        excluded: impl AsRef<Path>,
        seriesuids: impl AsRef<Path>,
        predictions: impl AsRef<Path>,
    ) -> Result<Self> {
        Ok(EvalInputs {
            annotations: Annotations::from_csv(annotations)?,
            excluded: Annotations::from_csv(excluded)?,
            seriesuids: read_seriesuids(seriesuids)?,
            predictions: Predictions::from_csv(predictions)?,
        })
    }
}

/// How to evaluate. The defaults are the official LUNA16 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// At most this many candidates per scan are evaluated (default 100, as in the official
    /// evaluation); see the module documentation for how ties at the cut are treated.
    /// `0` keeps every candidate (the official `maxNumberOfCADMarks=-1`).
    pub max_candidates_per_scan: usize,
    /// Candidates that hit only an excluded finding are ignored (default `true`, the official
    /// `bOtherNodulesAsIrrelevant`); with `false` they are false positives.
    pub excluded_as_irrelevant: bool,
    /// Number of bootstrap resamples of the scans (default 1000, as the official script).
    /// `0` skips the bootstrap: confidence intervals are then NaN and there is no band.
    pub bootstrap_resamples: usize,
    /// Seed of the bootstrap's SplitMix64 generator (default 16, for LUNA16).
    pub seed: u64,
    /// Confidence level of the intervals (default 0.95), strictly between 0 and 1.
    pub confidence: f64,
    /// Number of points of the bootstrap band, log-spaced from 1/8 to 8 FP/scan (default 200;
    /// at least 2).
    pub band_points: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            max_candidates_per_scan: 100,
            excluded_as_irrelevant: true,
            bootstrap_resamples: 1000,
            seed: 16,
            confidence: 0.95,
            band_points: 200,
        }
    }
}

impl EvalConfig {
    fn validate(&self) -> Result<()> {
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "confidence must be strictly between 0 and 1, got {}",
                self.confidence
            )));
        }
        if self.bootstrap_resamples > 0 && self.band_points < 2 {
            return Err(Error::InvalidArgument(format!(
                "band_points must be at least 2, got {}",
                self.band_points
            )));
        }
        Ok(())
    }
}

/// The FROC curve: one point per distinct score threshold, as `roc_curve` returns it (after
/// `drop_intermediate`), starting at (0, 0) with an infinite threshold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrocCurve {
    /// Average false positives per scan, non-decreasing.
    pub fps_per_scan: Vec<f64>,
    /// Sensitivity (detected nodules / all nodules), non-decreasing.
    pub sensitivity: Vec<f64>,
    /// The probability threshold of each point (the first is `+inf`, written as JSON `null`).
    pub thresholds: Vec<f64>,
}

impl FrocCurve {
    /// The sensitivity at `fps_per_scan` false positives per scan, by `numpy.interp` on the
    /// curve (constant beyond its ends).
    pub fn sensitivity_at(&self, fps_per_scan: f64) -> f64 {
        froc::interp(fps_per_scan, &self.fps_per_scan, &self.sensitivity)
    }
}

/// The bootstrap band along the curve: mean and percentile bounds of the resampled
/// sensitivities at log-spaced false-positive rates (the official
/// `froc_*_bootstrapping.csv`, on a log grid).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootstrapBand {
    /// False positives per scan, log-spaced from 1/8 to 8.
    pub fps_per_scan: Vec<f64>,
    /// Mean sensitivity over the resamples.
    pub mean: Vec<f64>,
    /// Lower bound of the confidence interval.
    pub lower: Vec<f64>,
    /// Upper bound of the confidence interval.
    pub upper: Vec<f64>,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrocResult {
    /// The operating points, [`OPERATING_POINTS`].
    pub fps_per_scan: [f64; 7],
    /// Sensitivity at each operating point.
    pub sensitivities: [f64; 7],
    /// Competition performance metric: the mean of `sensitivities`.
    pub cpm: f64,
    /// Bootstrap confidence interval of the CPM (NaN without bootstrap).
    pub cpm_ci: (f64, f64),
    /// Bootstrap confidence interval of each sensitivity (NaN without bootstrap).
    pub sensitivity_ci: [(f64, f64); 7],
    /// Mean CPM over the bootstrap resamples (NaN without bootstrap).
    pub cpm_bootstrap_mean: f64,
    /// Detected nodules.
    pub tp: usize,
    /// False-positive candidates.
    pub fp: usize,
    /// Missed nodules.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// Nodules on the listed scans (`tp + fn`).
    pub nodules: usize,
    /// Scans listed in `seriesuids.csv`: the divisor of false positives per scan.
    pub scans: usize,
    /// Candidates evaluated (after the per-scan cap).
    pub candidates: usize,
    /// Candidates on listed scans before the cap.
    pub candidates_submitted: usize,
    /// Candidates dropped by the per-scan cap.
    pub candidates_over_cap: usize,
    /// Candidates naming a series not in `seriesuids.csv` (ignored).
    pub candidates_unknown_series: usize,
    /// Candidates ignored because they hit only an excluded finding.
    pub ignored_on_excluded: usize,
    /// Candidates ignored as extra hits on an already-hit nodule (the official
    /// "double detections": for each nodule, its hits minus one).
    pub ignored_double_detections: usize,
    /// Nodules and excluded findings whose scan is not in `seriesuids.csv` (ignored).
    pub findings_unknown_series: usize,
    /// The FROC curve.
    pub curve: FrocCurve,
    /// The bootstrap band (`None` without bootstrap).
    pub band: Option<BootstrapBand>,
    /// The configuration used.
    pub config: EvalConfig,
}

/// Evaluates a submission against the reference standard with the LUNA16 protocol (see the
/// module documentation).
///
/// Errors: an empty or duplicated entry of `seriesuids`, a non-finite candidate probability
/// or coordinate, a non-finite finding coordinate or diameter ([`Error::Eval`]), an invalid
/// configuration ([`Error::InvalidArgument`]).
pub fn evaluate(inputs: &EvalInputs, config: &EvalConfig) -> Result<FrocResult> {
    config.validate()?;
    let scans = index_scans(&inputs.seriesuids)?;
    let n_scans = inputs.seriesuids.len();

    let (nodules, unknown_nodules) = group_findings(&inputs.annotations, &scans, "annotations")?;
    let (excluded, unknown_excluded) = group_findings(&inputs.excluded, &scans, "excluded")?;
    let (candidates, unknown_candidates) = group_candidates(&inputs.predictions, &scans)?;

    let params = matching::MatchParams {
        max_candidates_per_scan: config.max_candidates_per_scan,
        excluded_as_irrelevant: config.excluded_as_irrelevant,
    };
    let outcomes: Vec<matching::ScanOutcome> = (0..n_scans)
        .into_par_iter()
        .map(|s| {
            matching::match_scan(
                &inputs.predictions.candidates,
                &candidates[s],
                &inputs.annotations.findings,
                &nodules[s],
                &inputs.excluded.findings,
                &excluded[s],
                &params,
            )
        })
        .collect();

    let scored = froc::ScoredSet::new(&outcomes);
    let unit = vec![1u32; n_scans];
    let mut buffers = froc::CurveBuffers::default();
    let curve = scored.curve(&unit, n_scans, true, &mut buffers);
    let sensitivities =
        OPERATING_POINTS.map(|x| froc::interp(x, &curve.fps_per_scan, &curve.sensitivity));
    let cpm = froc::mean7(&sensitivities);

    let boot = bootstrap::run(&scored, n_scans, config);

    let mut totals = matching::ScanOutcome::default();
    for o in &outcomes {
        totals.add_counts(o);
    }
    Ok(FrocResult {
        fps_per_scan: OPERATING_POINTS,
        sensitivities,
        cpm,
        cpm_ci: boot.cpm_ci,
        sensitivity_ci: boot.sensitivity_ci,
        cpm_bootstrap_mean: boot.cpm_mean,
        tp: totals.tp_scores.len(),
        fp: totals.fp_scores.len(),
        fn_: totals.missed,
        nodules: totals.nodules,
        scans: n_scans,
        candidates: totals.kept,
        candidates_submitted: totals.submitted,
        candidates_over_cap: totals.submitted - totals.kept,
        candidates_unknown_series: unknown_candidates,
        ignored_on_excluded: totals.ignored_on_excluded,
        ignored_double_detections: totals.double_detections,
        findings_unknown_series: unknown_nodules + unknown_excluded,
        curve,
        band: boot.band,
        config: config.clone(),
    })
}

/// Maps each series UID to its index in `seriesuids`.
fn index_scans(seriesuids: &[String]) -> Result<HashMap<&str, u32>> {
    if seriesuids.is_empty() {
        return Err(Error::Eval("the list of series UIDs is empty".into()));
    }
    if seriesuids.len() > u32::MAX as usize {
        return Err(Error::Eval("too many series UIDs".into()));
    }
    let mut map = HashMap::with_capacity(seriesuids.len());
    for (i, uid) in seriesuids.iter().enumerate() {
        if uid.is_empty() {
            return Err(Error::Eval(format!("series UID number {} is empty", i + 1)));
        }
        if map.insert(uid.as_str(), i as u32).is_some() {
            return Err(Error::Eval(format!("series UID {uid} is listed twice")));
        }
    }
    Ok(map)
}

/// Per scan, the indices of its findings in file order; and how many findings name an
/// unlisted scan.
fn group_findings(
    annotations: &Annotations,
    scans: &HashMap<&str, u32>,
    what: &str,
) -> Result<(Vec<Vec<u32>>, usize)> {
    let mut grouped = vec![Vec::new(); scans.len()];
    let mut unknown = 0usize;
    let mut example = None;
    for (i, f) in annotations.findings.iter().enumerate() {
        let finite = f.coord_x.is_finite()
            && f.coord_y.is_finite()
            && f.coord_z.is_finite()
            && f.diameter_mm.is_none_or(|d| !d.is_nan());
        if !finite {
            return Err(Error::Eval(format!(
                "{what} finding number {} (series {}) has a non-finite coordinate or a NaN diameter",
                i + 1,
                f.seriesuid
            )));
        }
        match scans.get(f.seriesuid.as_str()) {
            Some(&s) => grouped[s as usize].push(i as u32),
            None => {
                unknown += 1;
                example.get_or_insert(f.seriesuid.as_str());
            }
        }
    }
    if let Some(example) = example {
        tracing::warn!(
            count = unknown,
            example,
            "{what}: findings on series not listed in the series UIDs are ignored, as the official script does"
        );
    }
    Ok((grouped, unknown))
}

/// Per scan, the indices of its candidates in submission order; and how many candidates
/// name an unlisted scan.
fn group_candidates(
    predictions: &Predictions,
    scans: &HashMap<&str, u32>,
) -> Result<(Vec<Vec<u32>>, usize)> {
    let cands = &predictions.candidates;
    if cands.len() > u32::MAX as usize {
        return Err(Error::Eval("too many candidates (over 2^32)".into()));
    }
    // Look the series up in parallel (hashing 64-character UIDs dominates), then bucket.
    let lookups: Vec<Option<u32>> = cands
        .par_iter()
        .map(|c| scans.get(c.seriesuid.as_str()).copied())
        .collect();
    if let Some((i, c)) = cands.iter().enumerate().find(|(_, c)| {
        !(c.probability.is_finite()
            && c.coord_x.is_finite()
            && c.coord_y.is_finite()
            && c.coord_z.is_finite())
    }) {
        return Err(Error::Eval(format!(
            "candidate number {} (series {}) has a non-finite probability or coordinate \
             (probability {}, x {}, y {}, z {})",
            i + 1,
            c.seriesuid,
            c.probability,
            c.coord_x,
            c.coord_y,
            c.coord_z
        )));
    }
    let mut grouped = vec![Vec::new(); scans.len()];
    let mut unknown = 0usize;
    let mut example = None;
    for (i, l) in lookups.iter().enumerate() {
        match l {
            Some(s) => grouped[*s as usize].push(i as u32),
            None => {
                unknown += 1;
                example.get_or_insert(cands[i].seriesuid.as_str());
            }
        }
    }
    if let Some(example) = example {
        tracing::warn!(
            count = unknown,
            example,
            "predictions: candidates on series not listed in the series UIDs are ignored, as the official script does"
        );
    }
    Ok((grouped, unknown))
}

#[cfg(test)]
mod tests;
