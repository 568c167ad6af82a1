//! What the DICOM series under a path hold, from their headers alone (no pixel data is
//! decoded): the series, their stacks, and the one loading picks when none is named.
//! `lungcad series` prints it.

use super::assemble::{self, display_uid};
use super::{scan, SliceHeader};
use crate::error::Result;
use crate::io::LoadConfig;
use crate::volume::{cross, dot, norm};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;

/// The DICOM series found under a path ([`list_series`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesList {
    /// Files looked at.
    pub files_seen: usize,
    /// Files that are not DICOM images (not DICOM, unreadable, or without pixel data).
    pub skipped: usize,
    /// The series, in the order of their SeriesInstanceUIDs.
    pub series: Vec<SeriesListing>,
}

/// One series of a [`SeriesList`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesListing {
    /// SeriesInstanceUID; none for files without one (ACR-NEMA), which form one series.
    pub series_uid: Option<String>,
    pub modality: String,
    /// Image planes (frames), in all stacks.
    pub planes: usize,
    /// Files holding them.
    pub files: usize,
    /// The transfer syntax UIDs of its files.
    pub transfer_syntaxes: Vec<String>,
    /// Its stacks, numbered as `LoadConfig::stack` (`--stack N`) takes them: the largest
    /// first. Empty when its planes form over
    /// [`MAX_STACKS`](assemble::MAX_STACKS), a series refused as mixed.
    pub stacks: Vec<StackListing>,
    /// Whether loading picks this series when none is named: the CT series (any series
    /// with `LoadConfig::allow_modality`) with the most planes in one stack.
    pub default: bool,
    /// The stack loading takes when none is named: 1, the largest; none when the two
    /// largest are of one size (refused unless `LoadConfig::stack` names one) or there
    /// are over [`MAX_STACKS`](assemble::MAX_STACKS).
    pub default_stack: Option<usize>,
}

/// One stack of a [`SeriesListing`]: planes of one size, pixel spacing and orientation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackListing {
    /// Its number, from 1.
    pub stack: usize,
    pub planes: usize,
    pub rows: u32,
    pub columns: u32,
    /// PixelSpacing of its first plane: between rows, between columns (mm).
    pub pixel_spacing_mm: Option<[f64; 2]>,
    /// ImageOrientationPatient of its first plane: the row and column direction cosines.
    pub orientation: Option<[f64; 6]>,
    /// The distance from its first plane to its last along the slice normal (mm); none
    /// without an orientation or with a plane without a position.
    pub extent_mm: Option<f64>,
}

impl StackListing {
    /// `None` for no planes.
    fn new(stack: usize, planes: &[&SliceHeader]) -> Option<StackListing> {
        let first = *planes.first()?;
        let extent_mm = first.orientation.and_then(|o| {
            let normal = cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
            let length = norm(normal);
            // Orientations that are not two orthogonal directions have no normal (such a
            // stack is refused when loaded).
            let normal = Some(normal.map(|v| v / length)).filter(|_| length > 0.5)?;
            let along: Option<Vec<f64>> = planes
                .iter()
                .map(|s| s.position.map(|p| dot(p, normal)))
                .collect();
            let along = along?;
            let (lo, hi) = along
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            Some(hi - lo).filter(|e| e.is_finite())
        });
        Some(StackListing {
            stack,
            planes: planes.len(),
            rows: first.format.rows,
            columns: first.format.columns,
            pixel_spacing_mm: first.pixel_spacing,
            orientation: first.orientation,
            extent_mm,
        })
    }
}

/// Lists the DICOM series at `path` (a file, or a folder searched recursively) from the
/// files' headers, within `config.limits` (the file count, each file's size). A folder
/// without DICOM images gives an empty list.
pub fn list_series(path: &Path, config: &LoadConfig) -> Result<SeriesList> {
    let scan = scan(path, config)?;
    let default = super::default_series(&scan.summaries(), config.allow_modality)
        .map(|s| s.series_uid.clone());
    let series = scan
        .series
        .iter()
        .map(|(uid, planes)| {
            let stacks: Vec<StackListing> = assemble::stacks(planes)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .filter_map(|(k, st)| {
                    let planes: Vec<&SliceHeader> = st.iter().map(|&i| &planes[i]).collect();
                    StackListing::new(k + 1, &planes)
                })
                .collect();
            let default_stack = match &stacks[..] {
                [] => None,
                [a, b, ..] if a.planes == b.planes => None,
                _ => Some(1),
            };
            SeriesListing {
                series_uid: Some(uid.clone()).filter(|u| !u.is_empty()),
                modality: planes
                    .first()
                    .map(|h| h.modality.clone())
                    .unwrap_or_default(),
                planes: planes.len(),
                files: planes
                    .iter()
                    .map(|h| &h.path)
                    .collect::<BTreeSet<_>>()
                    .len(),
                transfer_syntaxes: planes
                    .iter()
                    .map(|h| h.transfer_syntax.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                stacks,
                default: default.as_ref() == Some(uid),
                default_stack,
            }
        })
        .collect();
    Ok(SeriesList {
        files_seen: scan.files_seen,
        skipped: scan.skipped.len(),
        series,
    })
}

impl std::fmt::Display for SeriesList {
    /// A few lines per series: its UID, modality, planes and files, whether it is the
    /// default, then one line per stack.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = assemble::short;
        for s in &self.series {
            writeln!(
                f,
                "{}  {}  {} plane(s) in {} file(s){}",
                display_uid(s.series_uid.as_deref().unwrap_or("")),
                if s.modality.is_empty() {
                    "(no Modality)"
                } else {
                    &s.modality
                },
                s.planes,
                s.files,
                match (s.default, s.default_stack, s.stacks.len()) {
                    (false, ..) => "",
                    (true, Some(_), _) => "  (loaded when no --series is given)",
                    (true, None, 0) => "  (picked when no --series is given, and refused)",
                    (true, None, _) => {
                        "  (picked when no --series is given; its two largest stacks are of one \
                         size: name one with --stack N)"
                    }
                }
            )?;
            if s.stacks.is_empty() {
                writeln!(
                    f,
                    "  over {} stacks (refused as mixed)",
                    assemble::MAX_STACKS
                )?;
            }
            for st in &s.stacks {
                writeln!(
                    f,
                    "  stack {}: {} plane(s) of {}x{}, pixel spacing {}, orientation ({}){}",
                    st.stack,
                    st.planes,
                    st.rows,
                    st.columns,
                    st.pixel_spacing_mm.map_or("none".to_string(), |p| format!(
                        "{} x {} mm",
                        short(p[0]),
                        short(p[1])
                    )),
                    st.orientation
                        .map_or("none".to_string(), |o| o.map(short).join(", ")),
                    match st.extent_mm {
                        _ if st.planes < 2 => String::new(),
                        Some(e) => format!(", {} mm long", short(e)),
                        None => ", length not measured (no orientation or positions)".to_string(),
                    }
                )?;
            }
            writeln!(f, "  transfer syntaxes: {}", s.transfer_syntaxes.join(", "))?;
        }
        writeln!(
            f,
            "{} series in {} file(s) looked at; {} not DICOM images",
            self.series.len(),
            self.files_seen,
            self.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::dicom::assemble::tests::slice;

    #[test]
    fn a_stack_is_measured_along_its_normal() {
        const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let s: Vec<_> = [3.0, -2.0, 0.5]
            .iter()
            .map(|&z| slice(&z.to_string(), [5.0, 7.0, z], AXIAL))
            .collect();
        let refs: Vec<&SliceHeader> = s.iter().collect();
        let st = StackListing::new(2, &refs).unwrap();
        assert_eq!((st.stack, st.planes, st.rows, st.columns), (2, 3, 4, 5));
        assert_eq!(st.extent_mm, Some(5.0));
        assert_eq!(st.pixel_spacing_mm, Some([0.7, 0.6]));
        let mut lost = s.clone();
        lost[1].position = None;
        let refs: Vec<&SliceHeader> = lost.iter().collect();
        assert_eq!(StackListing::new(1, &refs).unwrap().extent_mm, None);
        // Direction cosines of twice unit length: the length is still along the normal's
        // unit; orientations that do not make a normal are not measured.
        let mut long = s.clone();
        for h in &mut long {
            h.orientation = Some([2.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
        }
        let refs: Vec<&SliceHeader> = long.iter().collect();
        assert_eq!(StackListing::new(1, &refs).unwrap().extent_mm, Some(5.0));
        for h in &mut long {
            h.orientation = Some([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        }
        let refs: Vec<&SliceHeader> = long.iter().collect();
        assert_eq!(StackListing::new(1, &refs).unwrap().extent_mm, None);
        assert_eq!(StackListing::new(1, &[]), None);
    }
}
