//! `lungcad demo`: a phantom with known nodules, detection with the shipped model, and the
//! result against the truth.

use super::detect::{detect_with_progress, Outputs, RunArgs};
use super::io_error;
use clap::Args;
use lungcad::detect::{self, DecodeConfig, Detection};
use lungcad::synth::{generate, SynthConfig, SynthNodule};
use lungcad::{Error, Limits};
use std::path::PathBuf;

/// The phantom ranges the shipped model was trained and measured on (its model card).
const SHIPPED_SYNTH_CONFIG: &str = include_str!("../../models/phantom-v2/synth_config.json");
/// False positives listed by name; the rest are counted.
const SHOWN_FALSE_POSITIVES: usize = 5;
/// Most rows of the overlay PNG.
const OVERLAY_ROWS: usize = 8;
/// The first held-out phantom of the shipped model's model card: never seen in training.
const DEFAULT_SEED: u64 = 5000;

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder: detections.csv, detections.json, truth.csv (the phantom's nodules,
    /// LUNA16 columns) and overlay.png.
    #[arg(long, default_value = "lungcad-demo")]
    out: PathBuf,
    /// Seed of the phantom. The default is the first of the shipped model's held-out
    /// phantoms (seeds 5000 to 5019; its training used 1000 to 1127).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Model file; default: the shipped model phantom-v2.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// A detection at or above this probability counts as found (or as a false positive).
    /// The default is the shipped model's operating point, chosen on its development
    /// phantoms (seeds 3000 to 3019): sensitivity 0.94 at 0.65 false positives per scan.
    #[arg(long, default_value_t = 0.99)]
    threshold: f32,
    /// Also write the phantom itself as MetaImage (phantom.mhd + .raw, 50 to 300 MB).
    #[arg(long)]
    save_ct: bool,
}

/// Distance between two world points, mm.
fn distance_mm(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt()
}

/// Whether a detection hits a nodule as LUNA16 counts hits: its centre lies within the
/// nodule's radius.
fn hits(d: &Detection, nodule: &SynthNodule) -> bool {
    distance_mm(d.centre_world, nodule.centre_world) <= nodule.diameter_mm / 2.0
}

pub fn demo_command(args: DemoArgs) -> Result<(), Error> {
    if !(0.0..=1.0).contains(&args.threshold) {
        return Err(Error::InvalidArgument(format!(
            "--threshold {} must be a probability (0 to 1)",
            args.threshold
        )));
    }
    let flips = args.run.flips(false)?;
    let config: SynthConfig = serde_json::from_str(SHIPPED_SYNTH_CONFIG)
        .map_err(|e| Error::InvalidArgument(format!("the shipped phantom config: {e}")))?;
    let (detector, dev_name) = args.run.load(args.model.as_deref())?;
    let batch_size = args.run.batch_size(&detector, &dev_name);
    std::fs::create_dir_all(&args.out).map_err(|e| io_error(&args.out, e))?;

    let t = std::time::Instant::now();
    let phantom = generate(args.seed, &config)?;
    let uid = phantom.series_uid.clone();
    let shape = phantom.volume.shape();
    let sp = phantom.volume.spacing_mm();
    println!(
        "phantom (seed {}): {} x {} x {} voxels (z, y, x) at {:.2} x {:.2} x {:.2} mm, {} nodule(s), made in {:.1} s",
        args.seed,
        shape[0],
        shape[1],
        shape[2],
        sp[0],
        sp[1],
        sp[2],
        phantom.nodules.len(),
        t.elapsed().as_secs_f64()
    );
    if args.save_ct {
        let p = args.out.join("phantom.mhd");
        lungcad::save(&phantom.volume, &p)?;
        eprintln!("wrote {}", p.display());
    }
    // The overlay is drawn on the phantom at its own resolution; detection takes a copy.
    let decode = DecodeConfig {
        flips,
        ..DecodeConfig::default()
    };
    let run = detect_with_progress(
        &detector,
        &dev_name,
        "",
        phantom.volume.clone(),
        batch_size,
        &decode,
        &Limits::default(),
    )?;
    let dets = &run.detections;

    println!();
    println!("truth                                                              lungcad");
    println!(
        "  #  kind           diameter_mm  coordX_mm  coordY_mm  coordZ_mm     rank  probability  off_mm"
    );
    // Each nodule's first hit: the most probable, as detections are sorted.
    let first_hits: Vec<Option<usize>> = phantom
        .nodules
        .iter()
        .map(|n| dets.iter().position(|d| hits(d, n)))
        .collect();
    let mut found = 0;
    for ((i, n), hit) in phantom.nodules.iter().enumerate().zip(&first_hits) {
        let [x, y, z] = n.centre_world;
        let kind = serde_json::to_value(n.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let result = match *hit {
            Some(r) => {
                if dets[r].probability >= args.threshold {
                    found += 1;
                }
                let dist = distance_mm(dets[r].centre_world, n.centre_world);
                format!("{:>4}  {:>11.3}  {:>6.1}", r + 1, dets[r].probability, dist)
            }
            None => format!("{:>4}  {:>11}  {:>6}", "-", "missed", "-"),
        };
        println!(
            "{:>3}  {kind:<13}  {:>11.1}  {x:>9.1}  {y:>9.1}  {z:>9.1}     {result}",
            i + 1,
            n.diameter_mm
        );
    }
    // As in LUNA16, a detection that hits any nodule is not a false positive (a second
    // hit on a nodule is a double detection, ignored).
    let false_positives: Vec<&Detection> = dets
        .iter()
        .filter(|d| d.probability >= args.threshold && !phantom.nodules.iter().any(|n| hits(d, n)))
        .collect();
    println!();
    println!(
        "found {found} of {} nodule(s) at probability >= {}, with {} false positive(s) at that threshold ({} detection(s) at >= {} in all)",
        phantom.nodules.len(),
        args.threshold,
        false_positives.len(),
        dets.len(),
        decode.min_probability
    );
    for d in false_positives.iter().take(SHOWN_FALSE_POSITIVES) {
        // A near miss (within a diameter of a nodule's centre) says which nodule it missed.
        let near = phantom
            .nodules
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n, distance_mm(d.centre_world, n.centre_world)))
            .filter(|(_, n, dist)| *dist <= n.diameter_mm)
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .map(|(i, n, dist)| {
                format!(
                    "; {dist:.1} mm from nodule {}'s centre, outside its {:.1} mm radius",
                    i + 1,
                    n.diameter_mm / 2.0
                )
            })
            .unwrap_or_default();
        println!(
            "  false positive: ({:.1}, {:.1}, {:.1}) mm, diameter {:.1} mm, probability {:.3}{near}",
            d.centre_world[0], d.centre_world[1], d.centre_world[2], d.diameter_mm, d.probability
        );
    }

    let mut truth = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    for n in &phantom.nodules {
        let [x, y, z] = n.centre_world;
        truth += &format!("{uid},{x:.3},{y:.3},{z:.3},{:.3}\n", n.diameter_mm);
    }
    let truth_path = args.out.join("truth.csv");
    std::fs::write(&truth_path, truth).map_err(|e| io_error(&truth_path, e))?;
    eprintln!("wrote {}", truth_path.display());
    let mut outputs = Outputs::create(
        &[
            args.out.join("detections.csv"),
            args.out.join("detections.json"),
        ],
        &[],
    )?;
    outputs.add(dets, &uid)?;
    outputs.keep()?;
    // The overlay: each nodule's first hit, then the most probable false positives, at
    // most 8 rows (the top detection when there is nothing else).
    let mut hit_ranks: Vec<usize> = first_hits.iter().flatten().copied().collect();
    hit_ranks.sort_unstable();
    hit_ranks.dedup();
    let mut shown: Vec<Detection> = hit_ranks
        .iter()
        .map(|&r| dets[r])
        .filter(|d| d.probability >= args.threshold)
        .collect();
    shown.extend(false_positives.iter().map(|d| **d));
    shown.truncate(OVERLAY_ROWS);
    if shown.is_empty() {
        shown.extend(dets.first().copied());
    }
    let png = args.out.join("overlay.png");
    detect::write_overlay_png(&phantom.volume, &shown, OVERLAY_ROWS, &png)?;
    eprintln!("wrote {}", png.display());
    Ok(())
}
