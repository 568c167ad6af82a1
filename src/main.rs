//! The `lungcad` command-line tool.

use clap::{Args, Parser, Subcommand};
use lungcad::{Error, Limits, LoadConfig, Volume};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "lungcad", version, about = "Find lung nodules in chest CT", long_about = None)]
struct Cli {
    /// More log output (-v: info, -vv: debug). Logs never contain patient identifiers.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a CT: series UID, modality, shape, spacing, origin, direction, HU range.
    Info {
        #[command(flatten)]
        input: Input,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a CT as int16 HU with its geometry (.mhd, .mha, .nii or .nii.gz).
    Convert {
        #[command(flatten)]
        input: Input,
        /// Output file: .mhd (+ .raw), .mha, .nii or .nii.gz.
        output: PathBuf,
    },
    /// LUNA16 FROC/CPM evaluation of a detection CSV, as the official protocol defines it.
    Eval {
        /// Reference nodules: seriesuid,coordX,coordY,coordZ,diameter_mm (LUNA16 annotations.csv).
        #[arg(long)]
        annotations: PathBuf,
        /// Irrelevant findings, ignored when hit (LUNA16 annotations_excluded.csv).
        #[arg(long)]
        excluded: PathBuf,
        /// The scans evaluated, one SeriesInstanceUID per line (LUNA16 seriesuids.csv).
        #[arg(long)]
        seriesuids: PathBuf,
        /// Detections: seriesuid,coordX,coordY,coordZ,probability.
        #[arg(long)]
        predictions: PathBuf,
        /// Print one JSON object (sensitivities, cpm, cpm_ci, tp, fp, fn, ...).
        #[arg(long)]
        json: bool,
        /// Write the FROC curve with its bootstrap confidence band to this PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Bootstrap resamples over scans for the confidence intervals (0: none).
        #[arg(long, default_value_t = lungcad::eval::EvalConfig::default().bootstrap_resamples)]
        bootstrap: usize,
        /// Seed of the bootstrap.
        #[arg(long, default_value_t = lungcad::eval::EvalConfig::default().seed)]
        seed: u64,
    },
}

/// Where the CT comes from and how to read it.
#[derive(Args)]
struct Input {
    /// A DICOM folder (searched recursively) or file, a .mhd/.mha, or a .nii/.nii.gz.
    ct: PathBuf,
    /// DICOM: SeriesInstanceUID to load (default: the CT series with the most slices).
    #[arg(long = "series")]
    series: Option<String>,
    /// DICOM: accept a series whose Modality is not CT.
    #[arg(long)]
    allow_modality: bool,
    /// Refuse volumes with more voxels than this.
    #[arg(long, default_value_t = Limits::default().max_voxels)]
    max_voxels: u64,
}

impl Input {
    fn load(&self) -> Result<Volume, Error> {
        let config = LoadConfig {
            series_uid: self.series.clone(),
            allow_modality: self.allow_modality,
            limits: Limits {
                max_voxels: self.max_voxels,
                ..Limits::default()
            },
        };
        lungcad::load(&self.ct, &config)
    }
}

fn info_json(v: &Volume) -> serde_json::Value {
    let (lo, hi) = v.hu_range();
    serde_json::json!({
        "series_uid": v.info.series_uid,
        "modality": v.info.modality,
        "format": v.info.format,
        "shape_zyx": v.shape(),
        "spacing_mm_zyx": v.spacing_mm(),
        "origin_mm_xyz": v.origin_mm(),
        "direction_zyx_axes": v.direction(),
        "hu_min": lo,
        "hu_max": hi,
        "slice_count": v.info.slice_count,
        "transfer_syntaxes": v.info.transfer_syntaxes,
        "warnings": v.info.warnings,
    })
}

fn info_text(v: &Volume) -> String {
    let (lo, hi) = v.hu_range();
    let f3 = |a: [f64; 3]| format!("({:.6}, {:.6}, {:.6})", a[0], a[1], a[2]);
    let mut s = String::new();
    s += &format!(
        "series_uid:   {}\n",
        v.info.series_uid.as_deref().unwrap_or("-")
    );
    s += &format!(
        "modality:     {}\n",
        v.info.modality.as_deref().unwrap_or("-")
    );
    s += &format!("format:       {}\n", v.info.format);
    let [z, y, x] = v.shape();
    s += &format!("shape:        {z} x {y} x {x} (z, y, x)\n");
    s += &format!("spacing_mm:   {} (z, y, x)\n", f3(v.spacing_mm()));
    s += &format!("origin_mm:    {} (world x, y, z; LPS)\n", f3(v.origin_mm()));
    let d = v.direction();
    s += &format!(
        "direction:    z axis {}, y axis {}, x axis {} (world LPS unit vectors)\n",
        f3(d[0]),
        f3(d[1]),
        f3(d[2])
    );
    s += &format!("hu_range:     {lo} .. {hi}\n");
    s += &format!("slice_count:  {}\n", v.info.slice_count);
    if !v.info.transfer_syntaxes.is_empty() {
        s += &format!(
            "transfer_syntaxes: {}\n",
            v.info.transfer_syntaxes.join(", ")
        );
    }
    for w in &v.info.warnings {
        s += &format!("warning:      {w}\n");
    }
    s
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Info { input, json } => {
            let v = input.load()?;
            if json {
                println!("{:#}", info_json(&v));
            } else {
                print!("{}", info_text(&v));
            }
        }
        Command::Convert { input, output } => {
            let v = input.load()?;
            lungcad::save(&v, &output)?;
            eprintln!("wrote {}", output.display());
        }
        Command::Eval {
            annotations,
            excluded,
            seriesuids,
            predictions,
            json,
            plot,
            bootstrap,
            seed,
        } => {
            use lungcad::eval;
            let inputs =
                eval::EvalInputs::from_csv(&annotations, &excluded, &seriesuids, &predictions)?;
            let config = eval::EvalConfig {
                bootstrap_resamples: bootstrap,
                seed,
                ..eval::EvalConfig::default()
            };
            let r = eval::evaluate(&inputs, &config)?;
            if json {
                println!("{:#}", eval::report_json(&r));
            } else {
                print!("{}", eval::report_text(&r));
            }
            if let Some(png) = plot {
                eval::plot_froc_png(&r, &png, &eval::PlotOptions::default())?;
                eprintln!("wrote {}", png.display());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LUNGCAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    // A panic is a bug; never let one reach the user as a backtrace: report it in one line.
    std::panic::set_hook(Box::new(|_| {}));
    match std::panic::catch_unwind(move || run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("error: internal error (a bug, please report it): {msg}");
            ExitCode::from(101)
        }
    }
}
