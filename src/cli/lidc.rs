//! `lungcad lidc`: LUNA16-style annotation CSVs from LIDC-IDRI's reader XML files.

use clap::Args;
use lungcad::eval::lidc::{find_lidc_xml, read_lidc_file, LidcConfig};
use lungcad::eval::{write_annotations_csv, Finding};
use lungcad::Error;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct LidcArgs {
    /// LIDC-IDRI folders (searched recursively for the readers' XML files, each read with
    /// the DICOM series in its folder; symbolic links to folders are not followed) or XML
    /// files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The nodules: a LUNA16 annotations CSV (seriesuid,coordX,coordY,coordZ,diameter_mm;
    /// world mm, LPS).
    #[arg(long)]
    out: PathBuf,
    /// The excluded findings, as LUNA16's annotations_excluded.csv: the readers' nodules
    /// of nodules not kept (too few readers, or too small), nodules under 3 mm and
    /// non-nodules (diameter -1 for the last two).
    #[arg(long)]
    excluded_out: Option<PathBuf>,
    /// Also write every read's findings as JSON: its nodules, and the merged nodules not
    /// kept (`other_nodules`), with each reader's centre, diameter and ratings
    /// (`characteristics`: malignancy, subtlety, ...), and its excluded findings.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The fewest readers who marked a nodule for it to be one (LUNA16: 3 of 4).
    #[arg(long, default_value_t = LidcConfig::default().min_readers)]
    min_readers: usize,
    /// The smallest averaged diameter of a nodule, mm (LUNA16: 3).
    #[arg(long, default_value_t = LidcConfig::default().min_diameter_mm)]
    min_diameter_mm: f64,
}

pub fn lidc_command(args: LidcArgs) -> Result<ExitCode, Error> {
    let config = LidcConfig {
        min_readers: args.min_readers,
        min_diameter_mm: args.min_diameter_mm,
    };
    config.validate()?;
    let mut xml = Vec::new();
    for p in &args.paths {
        for found in find_lidc_xml(p)? {
            // A folder given twice, or a file and its folder: each read once.
            let key = std::fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
            if !xml.iter().any(|(k, _)| *k == key) {
                xml.push((key, found));
            }
        }
    }
    let xml: Vec<PathBuf> = xml.into_iter().map(|(_, p)| p).collect();
    if xml.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no LIDC XML read (LidcReadMessage) under {}",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (mut nodules, mut excluded): (Vec<Finding>, Vec<Finding>) = (Vec::new(), Vec::new());
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut failed = 0usize;
    let mut reads = Vec::new();
    for path in &xml {
        let found = read_lidc_file(path, &config).and_then(|f| match seen.get(&f.series_uid) {
            Some(first) => Err(Error::InvalidArgument(format!(
                "{}: series {} was read already, from {}",
                path.display(),
                f.series_uid,
                first.display()
            ))),
            None => Ok(f),
        });
        match found {
            Ok(f) => {
                tracing::info!(
                    "series {}: {} nodule(s), {} excluded finding(s)",
                    f.series_uid,
                    f.nodules.len(),
                    f.excluded.len()
                );
                seen.insert(f.series_uid.clone(), path.clone());
                nodules.extend(f.nodule_findings());
                excluded.extend(f.excluded.iter().cloned());
                if args.json.is_some() {
                    reads.push(f);
                }
            }
            Err(e) => {
                eprintln!("skipping {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    write_annotations_csv(&nodules, &args.out)?;
    if let Some(p) = &args.excluded_out {
        write_annotations_csv(&excluded, p)?;
    }
    if let Some(p) = &args.json {
        let json = serde_json::json!({ "config": config, "reads": reads });
        std::fs::write(p, format!("{json:#}\n")).map_err(|e| Error::io(p, e))?;
    }
    eprintln!(
        "{} read(s) of {} series: {} nodule(s) of {} or more readers, {} excluded finding(s); \
         wrote {}{}",
        xml.len(),
        seen.len(),
        nodules.len(),
        config.min_readers,
        excluded.len(),
        args.out.display(),
        args.excluded_out
            .as_ref()
            .map_or(String::new(), |p| format!(" and {}", p.display()))
    );
    if failed > 0 {
        eprintln!("{failed} read(s) skipped");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
