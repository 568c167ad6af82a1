//! `lungcad synth`.

use super::io_error;
use clap::Args;
use lungcad::synth::{generate, SynthConfig};
use lungcad::Error;
use std::path::PathBuf;

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder: <uid>.mhd/.raw files (or <uid>/ DICOM folders), annotations.csv
    /// (LUNA16 columns) and phantoms.json (each nodule's kind, each grid's spacing).
    #[arg(long)]
    out: PathBuf,
    /// Number of phantoms.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Seed of the first phantom; phantom i has seed + i, so sets made with different
    /// seeds and counts share phantoms only where their seed ranges overlap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// mhd (LUNA16-style MetaImage), dicom (one folder of CT slices per series) or both
    /// (in mhd/ and dicom/, each with its annotations.csv).
    #[arg(long, default_value = "mhd")]
    format: String,
    /// Parameter ranges as JSON (a SynthConfig; missing fields take their defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Small, coarse phantoms (2.5 mm voxels, nodules of 6 mm and more), for quick looks and tests.
    #[arg(long)]
    coarse: bool,
    /// Print the config in use as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

pub fn synth_command(args: SynthArgs) -> Result<(), Error> {
    let config = match &args.config {
        Some(p) => serde_json::from_str::<SynthConfig>(
            &std::fs::read_to_string(p).map_err(|e| io_error(p, e))?,
        )
        .map_err(|e| Error::InvalidArgument(format!("{}: phantom config: {e}", p.display())))?,
        None if args.coarse => SynthConfig::coarse(),
        None => SynthConfig::default(),
    };
    config.validate()?;
    if args.print_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&config).unwrap_or_default()
        );
        return Ok(());
    }
    let (mhd, dicom) = match args.format.as_str() {
        "mhd" => (Some(args.out.clone()), None),
        "dicom" => (None, Some(args.out.clone())),
        "both" => (Some(args.out.join("mhd")), Some(args.out.join("dicom"))),
        other => {
            return Err(Error::InvalidArgument(format!(
                "--format {other}: use mhd, dicom or both"
            )))
        }
    };
    std::fs::create_dir_all(&args.out).map_err(|e| io_error(&args.out, e))?;
    let mut csv = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    let mut listing = Vec::new();
    for i in 0..args.count {
        let seed = args.seed.wrapping_add(i as u64);
        let t = std::time::Instant::now();
        let p = generate(seed, &config)?;
        let uid = &p.series_uid;
        if let Some(dir) = &mhd {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
            lungcad::save(&p.volume, dir.join(format!("{uid}.mhd")))?;
        }
        if let Some(dir) = &dicom {
            let opts = lungcad::io::dicom::SeriesWriteOptions {
                series_uid: Some(uid.clone()),
                ..Default::default()
            };
            lungcad::io::dicom::write_series(&p.volume, &dir.join(uid), &opts)?;
        }
        for n in &p.nodules {
            let [x, y, z] = n.centre_world;
            csv += &format!("{uid},{x:.3},{y:.3},{z:.3},{:.3}\n", n.diameter_mm);
        }
        let shape = p.volume.shape();
        eprintln!(
            "phantom {} of {} (seed {seed}): {} x {} x {} at {:.3?} mm, {} nodule(s), {:.1} s",
            i + 1,
            args.count,
            shape[0],
            shape[1],
            shape[2],
            p.volume.spacing_mm(),
            p.nodules.len(),
            t.elapsed().as_secs_f64()
        );
        listing.push(serde_json::json!({
            "seriesuid": uid,
            "seed": seed,
            "shape_zyx": shape,
            "spacing_mm_zyx": p.volume.spacing_mm(),
            "origin_mm_xyz": p.volume.origin_mm(),
            "nodules": p.nodules,
        }));
    }
    let write =
        |path: PathBuf, text: &str| std::fs::write(&path, text).map_err(|e| io_error(&path, e));
    write(args.out.join("annotations.csv"), &csv)?;
    for dir in [&mhd, &dicom].into_iter().flatten() {
        if dir != &args.out {
            write(dir.join("annotations.csv"), &csv)?;
        }
    }
    let json = serde_json::json!({ "config": config, "phantoms": listing });
    write(args.out.join("phantoms.json"), &format!("{json:#}\n"))?;
    eprintln!("wrote {} phantom(s) to {}", args.count, args.out.display());
    Ok(())
}
