//! LIDC-IDRI's reader annotations (the XML beside each series, `LidcReadMessage`) made into
//! LUNA16-style findings, as LUNA16 made its reference standard from them: every reader's
//! nodule of 3 mm or more (drawn as contours) measured, the readers' nodules within the sum
//! of their radii of each other merged, and those marked by at least three of the four
//! readers kept as nodules (centre and diameter averaged over the readers); everything
//! else (nodules of fewer readers, nodules under 3 mm, drawn as one point, and
//! non-nodules) is an excluded finding.
//!
//! One reader's nodule is measured on its contours as LIDC defines them: each contour is
//! the nodule's outer boundary, so the nodule is the pixels strictly inside it (the
//! boundary pixels left out), less those inside its exclusion contours (`inclusion`
//! FALSE). Its centre is the mean world position of those pixels, and its diameter that
//! of the sphere of their volume (pixels x pixel area x slice spacing). Pixels are placed
//! in the world by the slice each mark names (by its `imageSOP_UID`, else its
//! `imageZposition`): its ImagePositionPatient, ImageOrientationPatient and PixelSpacing.

use super::Finding;
use crate::error::{Error, Result};
use crate::io::dicom::SliceHeader;
use crate::volume::norm;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// How reader annotations become findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LidcConfig {
    /// The fewest readers who marked a nodule for it to be a nodule (LUNA16: 3 of 4).
    pub min_readers: usize,
    /// The smallest averaged diameter of a nodule (mm; LUNA16: 3).
    pub min_diameter_mm: f64,
}

impl LidcConfig {
    /// Refuses a minimum diameter that is not a finite number of 0 mm or more.
    pub fn validate(&self) -> Result<()> {
        if self.min_diameter_mm.is_finite() && self.min_diameter_mm >= 0.0 {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "min_diameter_mm {}: a diameter of 0 mm or more",
                self.min_diameter_mm
            )))
        }
    }
}

impl Default for LidcConfig {
    fn default() -> Self {
        LidcConfig {
            min_readers: 3,
            min_diameter_mm: 3.0,
        }
    }
}

/// One LIDC XML read: the series it annotates and each reader's session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LidcRead {
    pub series_uid: String,
    pub sessions: Vec<ReadingSession>,
}

/// One reader's annotations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadingSession {
    pub nodules: Vec<ReaderNodule>,
    pub non_nodules: Vec<PointMark>,
}

/// A reader's nodule: its contours, one or more per slice; a nodule under 3 mm is one
/// contour of one point (its centre).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReaderNodule {
    pub id: String,
    /// The reader's ratings of a nodule of 3 mm or more.
    pub characteristics: Option<Characteristics>,
    pub rois: Vec<Roi>,
}

/// A reader's ratings of a nodule (LIDC's `characteristics`, each on its own scale: 1 to
/// 5, `internal_structure` 1 to 4, `calcification` 1 to 6; `malignancy` 1, highly
/// unlikely, to 5, highly suspicious). A rating the file leaves empty, or gives off its
/// scale (with a warning), is none.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Characteristics {
    pub subtlety: Option<u8>,
    pub internal_structure: Option<u8>,
    pub calcification: Option<u8>,
    pub sphericity: Option<u8>,
    pub margin: Option<u8>,
    pub lobulation: Option<u8>,
    pub spiculation: Option<u8>,
    pub texture: Option<u8>,
    pub malignancy: Option<u8>,
}

impl Characteristics {
    /// The rating named by its LIDC element, and the top of its scale.
    fn rating(&mut self, element: &str) -> Option<(&mut Option<u8>, u8)> {
        Some(match element {
            "subtlety" => (&mut self.subtlety, 5),
            "internalStructure" => (&mut self.internal_structure, 4),
            "calcification" => (&mut self.calcification, 6),
            "sphericity" => (&mut self.sphericity, 5),
            "margin" => (&mut self.margin, 5),
            "lobulation" => (&mut self.lobulation, 5),
            "spiculation" => (&mut self.spiculation, 5),
            "texture" => (&mut self.texture, 5),
            "malignancy" => (&mut self.malignancy, 5),
            _ => return None,
        })
    }
}

/// One contour on one slice: pixel `[column, row]` points of the nodule's boundary, or of a
/// hole in it (`inclusion` false).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roi {
    pub z_position_mm: f64,
    /// The SOPInstanceUID of its slice (`imageSOP_UID`).
    pub sop_uid: String,
    pub inclusion: bool,
    pub points: Vec<[i64; 2]>,
}

/// A point annotation: a non-nodule (its `locus`), or a nodule under 3 mm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointMark {
    pub id: String,
    pub z_position_mm: f64,
    /// The SOPInstanceUID of its slice (`imageSOP_UID`).
    pub sop_uid: String,
    pub point: [i64; 2],
}

/// One reader's nodule of 3 mm or more, measured on its contours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReaderMeasurement {
    /// The reader's index (their session's, in the file).
    pub reader: usize,
    pub centre_world: [f64; 3],
    pub diameter_mm: f64,
    /// The nodule's pixels (inside its contours, not on them), all slices.
    pub pixels: usize,
    /// The reader's ratings of it.
    pub characteristics: Option<Characteristics>,
}

/// A nodule as the readers' merged annotations give it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LidcNodule {
    /// The mean of its readers' centres.
    pub centre_world: [f64; 3],
    /// The mean of its readers' diameters.
    pub diameter_mm: f64,
    /// How many readers marked it.
    pub readers: usize,
    pub annotations: Vec<ReaderMeasurement>,
}

/// What one XML read gives: nodules, and the excluded findings (LUNA16's
/// `annotations_excluded.csv`): each reader's nodules not in a kept nodule (with their
/// diameters), their nodules under 3 mm and their non-nodules (without).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LidcFindings {
    pub series_uid: String,
    pub nodules: Vec<LidcNodule>,
    /// The merged readers' nodules not kept (too few readers, or too small), with their
    /// readers' ratings; their readers' marks are among `excluded`.
    pub other_nodules: Vec<LidcNodule>,
    pub excluded: Vec<Finding>,
}

impl LidcFindings {
    /// The nodules as LUNA16 annotation rows.
    pub fn nodule_findings(&self) -> Vec<Finding> {
        self.nodules
            .iter()
            .map(|n| finding(&self.series_uid, n.centre_world, Some(n.diameter_mm)))
            .collect()
    }
}

fn finding(uid: &str, c: [f64; 3], diameter_mm: Option<f64>) -> Finding {
    Finding {
        seriesuid: uid.to_string(),
        coord_x: c[0],
        coord_y: c[1],
        coord_z: c[2],
        diameter_mm,
    }
}

/// Pixel coordinates past this are refused: LIDC's images are 512 pixels wide.
const MAX_COORD: i64 = 1 << 16;

/// Whether an XML text is an LIDC CT read (`LidcReadMessage`), not another message (the
/// chest radiograph reads, `IdriReadMessage`, share LIDC-IDRI's folders).
pub fn is_lidc_read(text: &str) -> bool {
    text.contains("<LidcReadMessage")
}

/// Parses an LIDC XML read. `path` names the file in errors.
pub fn parse_lidc_xml(text: &str, path: &Path) -> Result<LidcRead> {
    use quick_xml::events::Event;
    let err = |message: String| Error::Lidc {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut read = LidcRead::default();
    let (mut session, mut nodule, mut roi, mut mark) = (None, None, None, None);
    let mut point: [Option<i64>; 2] = [None, None];
    let mut root_seen = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| err(format!("at byte {}: {e}", reader.buffer_position())))?;
        match event {
            Event::Start(e) => {
                let name: String = e.local_name().as_ref().to_string();
                if stack.is_empty() {
                    if name != "LidcReadMessage" {
                        return Err(err(format!(
                            "the root element is {name}, not LidcReadMessage (a CT read)"
                        )));
                    }
                    root_seen = true;
                }
                match name.as_str() {
                    "readingSession" => session = Some(ReadingSession::default()),
                    "unblindedReadNodule" => nodule = Some(ReaderNodule::default()),
                    "characteristics" => {
                        if let Some(n) = &mut nodule {
                            n.characteristics = Some(Characteristics::default())
                        }
                    }
                    "roi" => {
                        roi = Some(Roi {
                            inclusion: true,
                            z_position_mm: f64::NAN,
                            ..Roi::default()
                        })
                    }
                    "nonNodule" => {
                        mark = Some(PointMark {
                            z_position_mm: f64::NAN,
                            ..PointMark::default()
                        })
                    }
                    "edgeMap" | "locus" => point = [None, None],
                    _ => {}
                }
                stack.push(name);
            }
            Event::Text(t) => {
                let Some(top) = stack.last() else { continue };
                let text = t.xml10_content();
                let value = text.trim();
                let number = |what: &str| -> Result<f64> {
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| err(format!("{what} {value:?} is not a number")))
                };
                let parent = stack.len().checked_sub(2).map(|i| stack[i].as_str());
                match (top.as_str(), parent) {
                    ("SeriesInstanceUid", Some("ResponseHeader")) => {
                        read.series_uid = value.to_string()
                    }
                    ("noduleID", _) => {
                        if let Some(n) = &mut nodule {
                            n.id = value.to_string()
                        }
                    }
                    ("nonNoduleID", _) => {
                        if let Some(m) = &mut mark {
                            m.id = value.to_string()
                        }
                    }
                    ("imageZposition", Some("roi")) => {
                        if let Some(r) = &mut roi {
                            r.z_position_mm = number("imageZposition")?
                        }
                    }
                    ("imageZposition", Some("nonNodule")) => {
                        if let Some(m) = &mut mark {
                            m.z_position_mm = number("imageZposition")?
                        }
                    }
                    (rating, Some("characteristics")) if !value.is_empty() => {
                        let slot = nodule
                            .as_mut()
                            .and_then(|n| n.characteristics.as_mut())
                            .and_then(|c| c.rating(rating));
                        if let Some((slot, max)) = slot {
                            // A rating off its scale is left out, not the read: ratings
                            // are labels beside the marks.
                            *slot = value.parse::<u8>().ok().filter(|v| (1..=max).contains(v));
                            if slot.is_none() {
                                tracing::warn!(
                                    "{}: {rating} {value:?} is not a rating from 1 to {max}: \
                                     left out",
                                    path.display()
                                );
                            }
                        }
                    }
                    ("imageSOP_UID", Some("roi")) => {
                        if let Some(r) = &mut roi {
                            r.sop_uid = value.to_string()
                        }
                    }
                    ("imageSOP_UID", Some("nonNodule")) => {
                        if let Some(m) = &mut mark {
                            m.sop_uid = value.to_string()
                        }
                    }
                    ("inclusion", Some("roi")) => {
                        if let Some(r) = &mut roi {
                            r.inclusion = match value.to_ascii_uppercase().as_str() {
                                "TRUE" => true,
                                "FALSE" => false,
                                _ => return Err(err(format!("inclusion {value:?}"))),
                            }
                        }
                    }
                    (axis @ ("xCoord" | "yCoord"), Some("edgeMap" | "locus")) => {
                        let v = number(axis)?;
                        if v.fract() != 0.0 || !(0.0..MAX_COORD as f64).contains(&v) {
                            return Err(err(format!(
                                "{axis} {value} is not a pixel index from 0 to {MAX_COORD}"
                            )));
                        }
                        point[usize::from(axis == "yCoord")] = Some(v as i64);
                    }
                    _ => {}
                }
            }
            Event::End(_) => {
                let Some(name) = stack.pop() else { continue };
                let whole = |p: [Option<i64>; 2]| match p {
                    [Some(x), Some(y)] => Ok([x, y]),
                    _ => Err(err(format!("{name} without both xCoord and yCoord"))),
                };
                match name.as_str() {
                    "edgeMap" => {
                        if let Some(r) = &mut roi {
                            r.points.push(whole(point)?);
                        }
                    }
                    "locus" => {
                        if let Some(m) = &mut mark {
                            m.point = whole(point)?;
                        }
                    }
                    "roi" => {
                        if let (Some(r), Some(n)) = (roi.take(), &mut nodule) {
                            if r.z_position_mm.is_nan() {
                                return Err(err("a roi without imageZposition".into()));
                            }
                            if !r.points.is_empty() {
                                n.rois.push(r);
                            }
                        }
                    }
                    "unblindedReadNodule" => {
                        if let (Some(n), Some(s)) = (nodule.take(), &mut session) {
                            if !n.rois.is_empty() {
                                s.nodules.push(n);
                            }
                        }
                    }
                    "nonNodule" => {
                        if let (Some(m), Some(s)) = (mark.take(), &mut session) {
                            if m.z_position_mm.is_nan() {
                                return Err(err("a nonNodule without imageZposition".into()));
                            }
                            s.non_nodules.push(m);
                        }
                    }
                    "readingSession" => {
                        if let Some(s) = session.take() {
                            read.sessions.push(s);
                        }
                    }
                    _ => {}
                }
            }
            Event::GeneralRef(r) => {
                // LIDC writes its numbers and UIDs plainly; one spelled with an entity
                // reference would be read without it.
                let parent = stack.len().checked_sub(2).map(|i| stack[i].as_str());
                if let Some(top) = stack.last().filter(|t| {
                    [
                        "SeriesInstanceUid",
                        "imageZposition",
                        "imageSOP_UID",
                        "inclusion",
                        "xCoord",
                        "yCoord",
                    ]
                    .contains(&t.as_str())
                        || parent == Some("characteristics")
                }) {
                    return Err(err(format!(
                        "an entity reference (&{};) in {top}",
                        r.as_ref() as &str
                    )));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen {
        return Err(err("no LidcReadMessage element".into()));
    }
    if read.series_uid.is_empty() {
        return Err(err("no SeriesInstanceUid in its ResponseHeader".into()));
    }
    Ok(read)
}

/// Where one slice lies: its ImagePositionPatient, ImageOrientationPatient (unit row and
/// column directions) and PixelSpacing (positive), and its rows and columns.
#[derive(Debug, Clone, Copy)]
struct Placed {
    position: [f64; 3],
    orientation: [f64; 6],
    pixel_spacing: [f64; 2],
    rows: i64,
    columns: i64,
}

impl Placed {
    /// The world position of pixel `[column, row]`.
    fn world(&self, [x, y]: [f64; 2]) -> [f64; 3] {
        let (p, o, ps) = (self.position, self.orientation, self.pixel_spacing);
        std::array::from_fn(|w| p[w] + x * ps[1] * o[w] + y * ps[0] * o[3 + w])
    }
}

/// Where the slices of the annotated series lie, found by their positions along the world
/// z axis (LIDC's `imageZposition`), and the series' slice spacing.
struct SliceIndex {
    slices: Vec<(f64, Placed)>,
    /// Each slice's index in `slices` by its SOPInstanceUID.
    by_sop: std::collections::HashMap<String, usize>,
    spacing_mm: f64,
}

impl SliceIndex {
    fn new(read: &LidcRead, slices: &[SliceHeader], path: &Path) -> Result<SliceIndex> {
        let err = |message: String| Error::Lidc {
            path: path.to_path_buf(),
            message,
        };
        let mut placed: Vec<(f64, Placed, &str)> = Vec::new();
        let mut thickness = None;
        for s in slices.iter().filter(|s| s.series_uid == read.series_uid) {
            let (Some(position), Some(orientation), Some(pixel_spacing)) =
                (s.position, s.orientation, s.pixel_spacing)
            else {
                return Err(err(format!(
                    "series {}: a slice without ImagePositionPatient, \
                     ImageOrientationPatient or PixelSpacing",
                    read.series_uid
                )));
            };
            let o = orientation;
            let unit = |v: [f64; 3]| (norm(v) - 1.0).abs() < 1e-3;
            if !(unit([o[0], o[1], o[2]])
                && unit([o[3], o[4], o[5]])
                && pixel_spacing.iter().all(|v| v.is_finite() && *v > 0.0)
                && position.iter().all(|v| v.is_finite()))
            {
                return Err(err(format!(
                    "series {}: a slice whose position {position:?}, orientation \
                     {orientation:?} or pixel spacing {pixel_spacing:?} places no pixel",
                    read.series_uid
                )));
            }
            thickness = thickness.or(s.spacing_between_slices.or(s.slice_thickness));
            placed.push((
                position[2],
                Placed {
                    position,
                    orientation,
                    pixel_spacing,
                    rows: i64::from(s.format.rows),
                    columns: i64::from(s.format.columns),
                },
                s.sop_instance_uid.as_str(),
            ));
        }
        if placed.is_empty() {
            return Err(err(format!(
                "series {} is not among the DICOM files beside it",
                read.series_uid
            )));
        }
        placed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut gaps: Vec<f64> = placed
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .filter(|g| *g > SAME_Z_MM)
            .collect();
        gaps.sort_by(f64::total_cmp);
        // One slice: its SpacingBetweenSlices or SliceThickness.
        let spacing_mm = gaps
            .get(gaps.len() / 2)
            .copied()
            .or(thickness)
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(1.0);
        // A SOPInstanceUID names a slice only when one slice has it (the frames of a
        // multi-frame file, or copies of a file, share theirs; their marks are found by
        // z). It names the first slice at that slice's z, as a search by z finds it, so
        // that contours and holes on one slice meet whichever way they name it.
        let mut uses: std::collections::HashMap<&str, usize> = Default::default();
        for (_, _, sop) in &placed {
            *uses.entry(sop).or_default() += 1;
        }
        let by_sop = placed
            .iter()
            .filter(|(_, _, sop)| !sop.is_empty() && uses.get(sop) == Some(&1))
            .map(|(z, _, sop)| {
                let first = placed.partition_point(|(other, _, _)| *other < z - SAME_Z_MM);
                (sop.to_string(), first)
            })
            .collect();
        Ok(SliceIndex {
            slices: placed.into_iter().map(|(z, p, _)| (z, p)).collect(),
            by_sop,
            spacing_mm,
        })
    }

    /// The index of the slice a mark names: by its `imageSOP_UID` when one slice of the
    /// series has that UID (it names the slice whatever the positions say), else by
    /// `imageZposition` along the world z axis (the first slice there).
    fn find(&self, sop_uid: &str, z_mm: f64, path: &Path) -> Result<usize> {
        if let Some(&i) = self.by_sop.get(sop_uid) {
            return Ok(i);
        }
        let i = self.slices.partition_point(|(z, _)| *z < z_mm - SAME_Z_MM);
        match self.slices.get(i) {
            Some((z, _)) if (z - z_mm).abs() <= SAME_Z_MM => Ok(i),
            _ => Err(Error::Lidc {
                path: path.to_path_buf(),
                message: format!(
                    "no slice of the series is SOP instance {sop_uid:?} or at \
                     imageZposition {z_mm} mm"
                ),
            }),
        }
    }

    /// Slice `i`.
    fn slice(&self, i: usize) -> &Placed {
        &self.slices[i].1
    }

    /// The slice a mark names ([`SliceIndex::find`]), its `points` (`[column, row]`)
    /// checked to lie on it.
    fn place(&self, sop_uid: &str, z_mm: f64, points: &[[i64; 2]], path: &Path) -> Result<&Placed> {
        let slice = self.slice(self.find(sop_uid, z_mm, path)?);
        if let Some(p) = points
            .iter()
            .find(|p| !(0..slice.columns).contains(&p[0]) || !(0..slice.rows).contains(&p[1]))
        {
            return Err(Error::Lidc {
                path: path.to_path_buf(),
                message: format!(
                    "pixel (x {}, y {}) marked on SOP instance {sop_uid:?} at imageZposition \
                     {z_mm} mm lies outside the slice's {} columns and {} rows",
                    p[0], p[1], slice.columns, slice.rows
                ),
            });
        }
        Ok(slice)
    }
}

/// Slices whose positions along z are closer than this are one slice (mm); LIDC writes
/// `imageZposition` to a micrometre.
const SAME_Z_MM: f64 = 0.01;

/// The largest LIDC XML read (bytes): LIDC-IDRI's are under 2 MB.
pub const MAX_XML_BYTES: u64 = 64 << 20;
/// The most marks (nodules and non-nodules, all readers together) in one read: LIDC-IDRI's
/// have under a hundred. Merging compares every two contoured nodules.
pub const MAX_MARKS: usize = 10_000;
/// The most work filling one read's contours may take ([`fill_work`], all contours
/// together): LIDC-IDRI-0001's 41 contours take 43,211. It bounds the pixels held too.
pub const MAX_FILL_WORK: u64 = 1 << 24;

/// What filling a contour costs: the pixels of its bounding box, and a step for each row
/// each of its edges crosses. Points are pixel indices under [`MAX_COORD`], so none of it
/// overflows.
fn fill_work(points: &[[i64; 2]]) -> u64 {
    let Some(first) = points.first() else {
        return 0;
    };
    let (mut lo, mut hi) = (*first, *first);
    let mut rows = 0u64;
    for (k, p) in points.iter().enumerate() {
        for a in 0..2 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
        let q = points[(k + 1) % points.len()];
        rows += (p[1] - q[1]).unsigned_abs();
    }
    let area = ((hi[0] - lo[0] + 1) * (hi[1] - lo[1] + 1)) as u64;
    area + rows + points.len() as u64
}

/// A pixel `[column, row]` (both under [`MAX_COORD`]) as one number, row-major.
fn pixel_key([x, y]: [i64; 2]) -> u32 {
    ((y as u32) << 16) | x as u32
}

/// The pixels strictly inside a closed contour (even-odd rule on pixel centres: from a
/// crossing of a row by an edge, included, to the next, not; the contour's own points
/// left out), as [`pixel_key`]s. The work is [`fill_work`].
fn interior(points: &[[i64; 2]]) -> BTreeSet<u32> {
    let mut inside = BTreeSet::new();
    if points.len() < 3 {
        return inside;
    }
    let boundary: BTreeSet<u32> = points.iter().map(|&p| pixel_key(p)).collect();
    let y_lo = points.iter().map(|p| p[1]).min().unwrap_or(0);
    let y_hi = points.iter().map(|p| p[1]).max().unwrap_or(0);
    // The crossings of each row, edge by edge: an edge crosses row y when its ends lie on
    // either side of it, one at or below y and one above.
    let mut rows: Vec<Vec<f64>> = vec![Vec::new(); (y_hi - y_lo + 1) as usize];
    for (k, a) in points.iter().enumerate() {
        let b = points[(k + 1) % points.len()];
        let (x1, y1, x2, y2) = (a[0] as f64, a[1] as f64, b[0] as f64, b[1] as f64);
        for y in a[1].min(b[1])..a[1].max(b[1]) {
            let yf = y as f64;
            rows[(y - y_lo) as usize].push(x1 + (yf - y1) * (x2 - x1) / (y2 - y1));
        }
    }
    for (i, crossings) in rows.iter_mut().enumerate() {
        let y = y_lo + i as i64;
        crossings.sort_by(f64::total_cmp);
        for pair in crossings.chunks_exact(2) {
            for x in pair[0].ceil() as i64..pair[1].ceil() as i64 {
                let key = pixel_key([x, y]);
                if !boundary.contains(&key) {
                    inside.insert(key);
                }
            }
        }
    }
    inside
}

/// Makes the findings of one LIDC read, placing its pixels by the series' `slices` (their
/// headers: those of other series are ignored). `path` names the XML in errors. The read's
/// marks are held to [`MAX_MARKS`], its contours' [`fill_work`] to `max_fill_work`
/// (untrusted input), and every mark must lie on a slice of the series.
pub fn lidc_findings(
    read: &LidcRead,
    slices: &[SliceHeader],
    config: &LidcConfig,
    max_fill_work: u64,
    path: &Path,
) -> Result<LidcFindings> {
    config.validate()?;
    let index = SliceIndex::new(read, slices, path)?;
    let marks: usize = read
        .sessions
        .iter()
        .map(|s| s.nodules.len() + s.non_nodules.len())
        .sum();
    if marks > MAX_MARKS {
        return Err(Error::Limit {
            what: "marks in an LIDC read",
            value: marks as u64,
            limit: MAX_MARKS as u64,
        });
    }
    // Every contour on a slice, within it, and the work of filling them bounded, before
    // any is filled.
    let mut work = 0u64;
    for r in read
        .sessions
        .iter()
        .flat_map(|s| &s.nodules)
        .flat_map(|n| &n.rois)
    {
        index.place(&r.sop_uid, r.z_position_mm, &r.points, path)?;
        work = work.saturating_add(fill_work(&r.points));
    }
    for m in read.sessions.iter().flat_map(|s| &s.non_nodules) {
        index.place(&m.sop_uid, m.z_position_mm, &[m.point], path)?;
    }
    if work > max_fill_work {
        return Err(Error::Limit {
            what: "the work of filling an LIDC read's contours",
            value: work,
            limit: max_fill_work,
        });
    }
    let uid = read.series_uid.as_str();
    let mut measured: Vec<ReaderMeasurement> = Vec::new();
    let mut excluded: Vec<Finding> = Vec::new();
    for (reader, session) in read.sessions.iter().enumerate() {
        for nodule in &session.nodules {
            if nodule.rois.iter().all(|r| r.points.len() <= 1) {
                // A nodule under 3 mm: its point (the mean, if it has several).
                let points: Vec<[f64; 3]> = nodule
                    .rois
                    .iter()
                    .flat_map(|r| {
                        r.points.iter().map(|p| {
                            index
                                .place(&r.sop_uid, r.z_position_mm, &[*p], path)
                                .map(|s| s.world([p[0] as f64, p[1] as f64]))
                        })
                    })
                    .collect::<Result<_>>()?;
                if points.is_empty() {
                    continue;
                }
                let k = points.len() as f64;
                let c = std::array::from_fn(|w| points.iter().map(|p| p[w]).sum::<f64>() / k);
                excluded.push(finding(uid, c, None));
                continue;
            }
            let m = measure(reader, nodule, &index, path)?;
            // Only exclusion contours: nothing marked.
            if m.pixels > 0 {
                measured.push(m);
            }
        }
        for m in &session.non_nodules {
            let p = m.point;
            let c = index
                .place(&m.sop_uid, m.z_position_mm, &[p], path)?
                .world([p[0] as f64, p[1] as f64]);
            excluded.push(finding(uid, c, None));
        }
    }
    // Merge readers' nodules closer than the sum of their radii (transitively).
    let n = measured.len();
    let mut group: Vec<usize> = (0..n).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            group[i] = group[group[i]];
            i = group[i];
        }
        i
    }
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&measured[i], &measured[j]);
            let d = (0..3)
                .map(|w| (a.centre_world[w] - b.centre_world[w]).powi(2))
                .sum::<f64>()
                .sqrt();
            if d < (a.diameter_mm + b.diameter_mm) / 2.0 {
                let (ri, rj) = (root(&mut group, i), root(&mut group, j));
                group[ri.max(rj)] = ri.min(rj);
            }
        }
    }
    let mut clusters: BTreeMap<usize, Vec<ReaderMeasurement>> = BTreeMap::new();
    for (i, m) in measured.into_iter().enumerate() {
        let r = root(&mut group, i);
        clusters.entry(r).or_default().push(m);
    }
    let (mut nodules, mut other_nodules) = (Vec::new(), Vec::new());
    for annotations in clusters.into_values() {
        let k = annotations.len() as f64;
        let centre_world =
            std::array::from_fn(|w| annotations.iter().map(|m| m.centre_world[w]).sum::<f64>() / k);
        let diameter_mm = annotations.iter().map(|m| m.diameter_mm).sum::<f64>() / k;
        let readers = annotations
            .iter()
            .map(|m| m.reader)
            .collect::<BTreeSet<_>>()
            .len();
        let nodule = LidcNodule {
            centre_world,
            diameter_mm,
            readers,
            annotations,
        };
        if readers >= config.min_readers && diameter_mm >= config.min_diameter_mm {
            nodules.push(nodule);
        } else {
            excluded.extend(
                nodule
                    .annotations
                    .iter()
                    .map(|m| finding(uid, m.centre_world, Some(m.diameter_mm))),
            );
            other_nodules.push(nodule);
        }
    }
    Ok(LidcFindings {
        series_uid: read.series_uid.clone(),
        nodules,
        other_nodules,
        excluded,
    })
}

/// One reader's nodule measured on its contours (see the module's documentation). A
/// nodule too small to have pixels strictly inside its contours is measured on the
/// contours' own pixels.
fn measure(
    reader: usize,
    nodule: &ReaderNodule,
    index: &SliceIndex,
    path: &Path,
) -> Result<ReaderMeasurement> {
    // Per slice (by its index), the pixels inside, and those of its contours.
    let mut inside: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    let mut holes: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    let mut edges: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    for r in &nodule.rois {
        let slice = index.find(&r.sop_uid, r.z_position_mm, path)?;
        let target = if r.inclusion { &mut inside } else { &mut holes };
        target.entry(slice).or_default().extend(interior(&r.points));
        if r.inclusion {
            edges
                .entry(slice)
                .or_default()
                .extend(r.points.iter().map(|&p| pixel_key(p)));
        }
    }
    for (z, h) in &holes {
        if let Some(s) = inside.get_mut(z) {
            s.retain(|p| !h.contains(p));
        }
    }
    let mut region = inside;
    if region.values().all(BTreeSet::is_empty) {
        region = edges;
    }
    let (mut sum, mut pixels, mut volume) = ([0.0; 3], 0usize, 0.0);
    for (&i, set) in &region {
        if set.is_empty() {
            continue;
        }
        // The mean pixel of the slice, placed once: the placement is linear.
        let k = set.len() as f64;
        let mean = [
            set.iter().map(|&p| f64::from(p & 0xffff)).sum::<f64>() / k,
            set.iter().map(|&p| f64::from(p >> 16)).sum::<f64>() / k,
        ];
        let slice = index.slice(i);
        let c = slice.world(mean);
        for w in 0..3 {
            sum[w] += c[w] * k;
        }
        pixels += set.len();
        volume += k * slice.pixel_spacing[0] * slice.pixel_spacing[1] * index.spacing_mm;
    }
    Ok(ReaderMeasurement {
        reader,
        centre_world: sum.map(|v| v / pixels.max(1) as f64),
        diameter_mm: (6.0 * volume / std::f64::consts::PI).cbrt(),
        pixels,
        characteristics: nodule.characteristics.clone(),
    })
}

/// Reads one LIDC XML file (at most [`MAX_XML_BYTES`]) and makes its findings, its series
/// found among the DICOM files in the XML's folder (where LIDC-IDRI keeps it), from their
/// headers.
pub fn read_lidc_file(xml: &Path, config: &LidcConfig) -> Result<LidcFindings> {
    let meta = std::fs::metadata(xml).map_err(|e| Error::io(xml, e))?;
    if meta.len() > MAX_XML_BYTES {
        return Err(Error::Limit {
            what: "an LIDC XML file's bytes",
            value: meta.len(),
            limit: MAX_XML_BYTES,
        });
    }
    let bytes = std::fs::read(xml).map_err(|e| Error::io(xml, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::Lidc {
        path: xml.to_path_buf(),
        message: format!("not UTF-8: {e}"),
    })?;
    let read = parse_lidc_xml(&text, xml)?;
    let folder = match xml.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let scan = crate::io::dicom::scan(folder, &crate::LoadConfig::default())?;
    let slices = scan
        .series
        .get(&read.series_uid)
        .map_or(&[][..], Vec::as_slice);
    lidc_findings(&read, slices, config, MAX_FILL_WORK, xml)
}

/// The LIDC reads at `root`: the file itself, or, for a folder (searched recursively,
/// symbolic links to folders not followed), its `.xml` files of at most [`MAX_XML_BYTES`]
/// that are `LidcReadMessage`s, in path order. Other XML files (and larger ones) are left
/// out. A `root` that is not there is an error.
pub fn find_lidc_xml(root: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            let p = e.path();
            let kind = e.file_type().map_err(|e| Error::io(&p, e))?;
            if kind.is_dir() {
                todo.push(p);
                continue;
            }
            if !p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&p) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if meta.len() > MAX_XML_BYTES {
                tracing::warn!(
                    "{}: {} bytes, over {MAX_XML_BYTES}: left out",
                    p.display(),
                    meta.len()
                );
                continue;
            }
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            if is_lidc_read(&String::from_utf8_lossy(&bytes)) {
                found.push(p);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Fuzzing entry point: `data` read as an LIDC XML and, when it parses, its findings made
/// against a synthetic axial series (slices at z = 0 to 7 mm of 512 x 512 pixels of 0.7
/// mm) within a fill work of 4 M. Never panics on any input.
pub fn lidc_fuzz(data: &[u8]) {
    use crate::io::dicom::header::{PixelFormat, Rescale};
    let path = Path::new("fuzz.xml");
    let Ok(read) = parse_lidc_xml(&String::from_utf8_lossy(data), path) else {
        return;
    };
    let slices: Vec<SliceHeader> = (0..8)
        .map(|z| SliceHeader {
            path: std::sync::Arc::from(Path::new("fuzz")),
            frame: z,
            number_of_frames: 8,
            series_uid: read.series_uid.clone(),
            // Slices 6 and 7 share one (as frames of one file do).
            sop_instance_uid: format!("1.2.{}", z.min(6)),
            modality: "CT".into(),
            transfer_syntax: String::new(),
            position: Some([-100.0, -100.0, z as f64]),
            orientation: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            pixel_spacing: Some([0.7, 0.7]),
            slice_thickness: Some(1.0),
            spacing_between_slices: None,
            format: PixelFormat {
                rows: 512,
                columns: 512,
                bits_allocated: 16,
                bits_stored: 16,
                signed: true,
                samples_per_pixel: 1,
            },
            photometric: String::new(),
            rescale: Rescale::default(),
            padding: None,
            instance_number: None,
            gantry_detector_tilt_deg: None,
        })
        .collect();
    if let Ok(found) = lidc_findings(&read, &slices, &LidcConfig::default(), 1 << 22, path) {
        let _ = found.nodule_findings();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `interior` against the even-odd rule pixel by pixel, on a concave contour with
    /// slanted and vertical edges.
    #[test]
    fn interior_is_the_even_odd_rule_without_the_contour() {
        let contour: Vec<[i64; 2]> =
            vec![[2, 2], [12, 3], [13, 14], [8, 8], [7, 15], [2, 12], [5, 7]];
        let want: BTreeSet<u32> = (0..20)
            .flat_map(|y| (0..20).map(move |x| [x, y]))
            .filter(|&[x, y]| {
                let (xf, yf) = (x as f64, y as f64);
                let mut odd = false;
                for (k, a) in contour.iter().enumerate() {
                    let b = contour[(k + 1) % contour.len()];
                    let (x1, y1, x2, y2) = (a[0] as f64, a[1] as f64, b[0] as f64, b[1] as f64);
                    if (y1 > yf) != (y2 > yf) && xf < x1 + (yf - y1) * (x2 - x1) / (y2 - y1) {
                        odd = !odd;
                    }
                }
                odd && !contour.contains(&[x, y])
            })
            .map(pixel_key)
            .collect();
        assert!(want.len() > 50);
        assert_eq!(interior(&contour), want);
        assert!(interior(&contour[..2]).is_empty());
        // The work bound counts the rows edges cross, not only the bounding box: a thin
        // zigzag has a small box and much to fill.
        let square = [[0, 0], [9, 0], [9, 9], [0, 9]];
        assert_eq!(fill_work(&square), 100 + 18 + 4);
        let zigzag: Vec<[i64; 2]> = (0..100).map(|k| [k % 2, 60_000 * (k % 2)]).collect();
        assert_eq!(fill_work(&zigzag), 2 * 60_001 + 100 * 60_000 + 100);
    }

    /// The fuzz entry on a read that parses and measures, and on cut and corrupted copies.
    #[test]
    fn fuzz_entry_survives_cut_reads() {
        let read = "<LidcReadMessage><ResponseHeader><SeriesInstanceUid>1.2</SeriesInstanceUid>\
            </ResponseHeader><readingSession><unblindedReadNodule><roi><imageZposition>3\
            </imageZposition><edgeMap><xCoord>1</xCoord><yCoord>1</yCoord></edgeMap>\
            <edgeMap><xCoord>9</xCoord><yCoord>1</yCoord></edgeMap><edgeMap><xCoord>9\
            </xCoord><yCoord>9</yCoord></edgeMap></roi></unblindedReadNodule><nonNodule>\
            <imageZposition>2</imageZposition><locus><xCoord>5</xCoord><yCoord>5</yCoord>\
            </locus></nonNodule></readingSession></LidcReadMessage>";
        let parsed = parse_lidc_xml(read, Path::new("r")).unwrap();
        assert_eq!(parsed.sessions[0].nodules[0].rois[0].points.len(), 3);
        for end in 0..=read.len() {
            lidc_fuzz(&read.as_bytes()[..end]);
        }
        let mut bytes = read.as_bytes().to_vec();
        for i in (0..bytes.len()).step_by(7) {
            bytes[i] ^= 0x55;
            lidc_fuzz(&bytes);
        }
    }

    #[test]
    fn malformed_reads_are_errors() {
        let p = Path::new("r.xml");
        let wrap = |body: &str| {
            format!(
                "<LidcReadMessage><ResponseHeader><SeriesInstanceUid>1.2</SeriesInstanceUid>\
                 </ResponseHeader><readingSession>{body}</readingSession></LidcReadMessage>"
            )
        };
        let roi = |z: &str, x: &str| {
            wrap(&format!(
                "<unblindedReadNodule><roi><imageZposition>{z}</imageZposition>\
                 <edgeMap><xCoord>{x}</xCoord><yCoord>1</yCoord></edgeMap></roi>\
                 </unblindedReadNodule>"
            ))
        };
        let rated = wrap(
            "<unblindedReadNodule><characteristics><subtlety>4</subtlety><margin></margin>\
             <malignancy> 2 </malignancy></characteristics><roi><imageZposition>1\
             </imageZposition><edgeMap><xCoord>1</xCoord><yCoord>1</yCoord></edgeMap></roi>\
             </unblindedReadNodule>",
        );
        let c = parse_lidc_xml(&rated, p).unwrap().sessions[0].nodules[0]
            .characteristics
            .clone()
            .unwrap();
        assert_eq!(
            (c.subtlety, c.margin, c.malignancy),
            (Some(4), None, Some(2))
        );
        // Off its scale (internal structure: 1 to 4): left out, the read kept.
        let off = rated.replace(
            "<margin></margin>",
            "<internalStructure>5</internalStructure>",
        );
        let c = parse_lidc_xml(&off, p).unwrap().sessions[0].nodules[0]
            .characteristics
            .clone()
            .unwrap();
        assert_eq!((c.internal_structure, c.malignancy), (None, Some(2)));
        let ok = parse_lidc_xml(&roi("-1.5", "3"), p).unwrap();
        assert_eq!(ok.series_uid, "1.2");
        assert_eq!(ok.sessions[0].nodules[0].rois[0].points, [[3, 1]]);
        for (text, says) in [
            (roi("x", "3"), "imageZposition \"x\" is not a number"),
            (roi("1", "-3"), "xCoord -3 is not a pixel index"),
            (roi("1", "2.5"), "xCoord 2.5 is not a pixel index"),
            (roi("1", "1e9"), "xCoord 1e9 is not a pixel index"),
            (
                wrap("<unblindedReadNodule><roi><edgeMap><xCoord>1</xCoord></edgeMap></roi></unblindedReadNodule>"),
                "edgeMap without both xCoord and yCoord",
            ),
            ("<IdriReadMessage/>".into(), "no LidcReadMessage element"),
            ("<IdriReadMessage></IdriReadMessage>".into(), "the root element is IdriReadMessage"),
            ("<LidcReadMessage></LidcReadMessage>".into(), "no SeriesInstanceUid"),
            ("<LidcReadMessage><a></b></LidcReadMessage>".into(), "at byte"),
            (
                wrap("<unblindedReadNodule><characteristics><malignancy>&#53;</malignancy>\
                      </characteristics></unblindedReadNodule>"),
                "an entity reference (&#53;) in malignancy",
            ),
            (roi("1", "&#51;"), "an entity reference (&#51;) in xCoord"),
        ] {
            let e = parse_lidc_xml(&text, p).unwrap_err().to_string();
            assert!(e.starts_with("r.xml: LIDC XML: ") && e.contains(says), "{e}");
        }
    }
}
