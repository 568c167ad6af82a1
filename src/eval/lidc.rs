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
//! in the world by the slice each contour names by its `imageZposition`: its
//! ImagePositionPatient, ImageOrientationPatient and PixelSpacing.

use super::Finding;
use crate::error::{Error, Result};
use crate::io::dicom::SliceHeader;
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
    pub rois: Vec<Roi>,
}

/// One contour on one slice: pixel `[column, row]` points of the nodule's boundary, or of a
/// hole in it (`inclusion` false).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roi {
    pub z_position_mm: f64,
    pub inclusion: bool,
    pub points: Vec<[i64; 2]>,
}

/// A point annotation: a non-nodule (its `locus`), or a nodule under 3 mm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointMark {
    pub id: String,
    pub z_position_mm: f64,
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
#[derive(Debug, Clone, PartialEq)]
pub struct LidcFindings {
    pub series_uid: String,
    pub nodules: Vec<LidcNodule>,
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

/// Where one slice lies: its ImagePositionPatient, ImageOrientationPatient and
/// PixelSpacing.
#[derive(Debug, Clone, Copy)]
struct Placed {
    position: [f64; 3],
    orientation: [f64; 6],
    pixel_spacing: [f64; 2],
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
    spacing_mm: f64,
}

impl SliceIndex {
    fn new(read: &LidcRead, slices: &[SliceHeader], path: &Path) -> Result<SliceIndex> {
        let err = |message: String| Error::Lidc {
            path: path.to_path_buf(),
            message,
        };
        let mut placed: Vec<(f64, Placed)> = Vec::new();
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
            thickness = thickness.or(s.spacing_between_slices.or(s.slice_thickness));
            placed.push((
                position[2],
                Placed {
                    position,
                    orientation,
                    pixel_spacing,
                },
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
        Ok(SliceIndex {
            slices: placed,
            spacing_mm,
        })
    }

    /// The slice at `z_mm` along the world z axis.
    fn at(&self, z_mm: f64, path: &Path) -> Result<&Placed> {
        let i = self.slices.partition_point(|(z, _)| *z < z_mm - SAME_Z_MM);
        match self.slices.get(i) {
            Some((z, s)) if (z - z_mm).abs() <= SAME_Z_MM => Ok(s),
            _ => Err(Error::Lidc {
                path: path.to_path_buf(),
                message: format!("no slice of the series at imageZposition {z_mm} mm"),
            }),
        }
    }

    /// The world position of pixel `[column, row]` of the slice at `z_mm`.
    fn world(&self, z_mm: f64, pixel: [f64; 2], path: &Path) -> Result<[f64; 3]> {
        Ok(self.at(z_mm, path)?.world(pixel))
    }
}

/// Slices whose positions along z are closer than this are one slice (mm); LIDC writes
/// `imageZposition` to a micrometre.
const SAME_Z_MM: f64 = 0.01;

/// The pixels strictly inside a closed contour (even-odd rule on pixel centres; the
/// contour's own points left out), row by row.
fn interior(points: &[[i64; 2]]) -> BTreeSet<[i64; 2]> {
    let mut inside = BTreeSet::new();
    if points.len() < 3 {
        return inside;
    }
    let boundary: BTreeSet<[i64; 2]> = points.iter().copied().collect();
    let (y_lo, y_hi) = points.iter().fold((i64::MAX, i64::MIN), |(lo, hi), p| {
        (lo.min(p[1]), hi.max(p[1]))
    });
    let mut crossings: Vec<f64> = Vec::new();
    for y in y_lo..=y_hi {
        crossings.clear();
        let yf = y as f64;
        for (k, a) in points.iter().enumerate() {
            let b = points[(k + 1) % points.len()];
            let (x1, y1, x2, y2) = (a[0] as f64, a[1] as f64, b[0] as f64, b[1] as f64);
            if (y1 > yf) != (y2 > yf) {
                crossings.push(x1 + (yf - y1) * (x2 - x1) / (y2 - y1));
            }
        }
        crossings.sort_by(f64::total_cmp);
        // A pixel is inside when an odd number of crossings lie strictly to its right:
        // from the first of a pair (included) to the second (not).
        for pair in crossings.chunks_exact(2) {
            for x in pair[0].ceil() as i64..pair[1].ceil() as i64 {
                if !boundary.contains(&[x, y]) {
                    inside.insert([x, y]);
                }
            }
        }
    }
    inside
}

/// Makes the findings of one LIDC read, placing its pixels by the series' `slices` (their
/// headers: those of other series are ignored). `path` names the XML in errors.
/// `max_pixels` bounds the contours' bounding boxes together (untrusted input).
pub fn lidc_findings(
    read: &LidcRead,
    slices: &[SliceHeader],
    config: &LidcConfig,
    max_pixels: u64,
    path: &Path,
) -> Result<LidcFindings> {
    let index = SliceIndex::new(read, slices, path)?;
    let area: u64 = read
        .sessions
        .iter()
        .flat_map(|s| &s.nodules)
        .flat_map(|n| &n.rois)
        .map(|r| {
            let span = |a: usize| {
                let (lo, hi) = r.points.iter().fold((i64::MAX, i64::MIN), |(lo, hi), p| {
                    (lo.min(p[a]), hi.max(p[a]))
                });
                (hi - lo + 1) as u64
            };
            span(0).saturating_mul(span(1))
        })
        .fold(0u64, u64::saturating_add);
    if area > max_pixels {
        return Err(Error::Limit {
            what: "LIDC contours' bounding boxes, in pixels",
            value: area,
            limit: max_pixels,
        });
    }
    let uid = read.series_uid.as_str();
    let mut measured: Vec<ReaderMeasurement> = Vec::new();
    let mut excluded: Vec<Finding> = Vec::new();
    for (reader, session) in read.sessions.iter().enumerate() {
        for nodule in &session.nodules {
            let points: usize = nodule.rois.iter().map(|r| r.points.len()).sum();
            if points == 1 {
                // A nodule under 3 mm: its one point.
                let r = &nodule.rois[0];
                let p = r.points[0];
                let c = index.world(r.z_position_mm, [p[0] as f64, p[1] as f64], path)?;
                excluded.push(finding(uid, c, None));
                continue;
            }
            measured.push(measure(reader, nodule, &index, path)?);
        }
        for m in &session.non_nodules {
            let p = m.point;
            let c = index.world(m.z_position_mm, [p[0] as f64, p[1] as f64], path)?;
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
    let mut nodules = Vec::new();
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
        if readers >= config.min_readers && diameter_mm >= config.min_diameter_mm {
            nodules.push(LidcNodule {
                centre_world,
                diameter_mm,
                readers,
                annotations,
            });
        } else {
            excluded.extend(
                annotations
                    .iter()
                    .map(|m| finding(uid, m.centre_world, Some(m.diameter_mm))),
            );
        }
    }
    Ok(LidcFindings {
        series_uid: read.series_uid.clone(),
        nodules,
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
    // Per slice (by its z, in micrometres), the pixels inside, and those of its contours.
    let mut inside: BTreeMap<i64, BTreeSet<[i64; 2]>> = BTreeMap::new();
    let mut holes: BTreeMap<i64, BTreeSet<[i64; 2]>> = BTreeMap::new();
    let mut edges: BTreeMap<i64, BTreeSet<[i64; 2]>> = BTreeMap::new();
    let key = |z: f64| (z * 1000.0).round() as i64;
    for r in &nodule.rois {
        let target = if r.inclusion { &mut inside } else { &mut holes };
        target
            .entry(key(r.z_position_mm))
            .or_default()
            .extend(interior(&r.points));
        if r.inclusion {
            edges
                .entry(key(r.z_position_mm))
                .or_default()
                .extend(r.points.iter().copied());
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
    for (z, set) in &region {
        if set.is_empty() {
            continue;
        }
        let z_mm = *z as f64 / 1000.0;
        // The mean pixel of the slice, placed once: the placement is linear.
        let k = set.len() as f64;
        let mean = [
            set.iter().map(|p| p[0] as f64).sum::<f64>() / k,
            set.iter().map(|p| p[1] as f64).sum::<f64>() / k,
        ];
        let slice = index.at(z_mm, path)?;
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
    })
}

/// Reads one LIDC XML file and makes its findings, its series found among the DICOM files
/// in the XML's folder (where LIDC-IDRI keeps it), from their headers. The file is held
/// to [`Limits::max_file_bytes`](crate::Limits), its contours' pixels to
/// [`Limits::max_voxels`](crate::Limits).
pub fn read_lidc_file(xml: &Path, config: &LidcConfig) -> Result<LidcFindings> {
    let limits = crate::Limits::default();
    let meta = std::fs::metadata(xml).map_err(|e| Error::io(xml, e))?;
    limits.check_file_bytes(meta.len())?;
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
    lidc_findings(&read, slices, config, limits.max_voxels, xml)
}

/// The LIDC reads found under `root` (a folder searched recursively, or one XML file):
/// `.xml` files of at most `max_bytes` that are `LidcReadMessage`s, in path order. Other
/// XML files (and larger ones) are left out.
pub fn find_lidc_xml(root: &Path, max_bytes: u64) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| Error::io(&p, e))? {
                todo.push(e.map_err(|e| Error::io(&p, e))?.path());
            }
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")) {
            let len = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
            if len > max_bytes {
                tracing::warn!("{}: {len} bytes, over {max_bytes}: left out", p.display());
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
/// against a synthetic axial series (slices at z = 0 to 7 mm, 0.7 mm pixels) within a
/// bound of 4 M contour pixels. Never panics on any input.
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
        let want: BTreeSet<[i64; 2]> = (0..20)
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
            .collect();
        assert!(want.len() > 50);
        assert_eq!(interior(&contour), want);
        assert!(interior(&contour[..2]).is_empty());
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
        ] {
            let e = parse_lidc_xml(&text, p).unwrap_err().to_string();
            assert!(e.starts_with("r.xml: LIDC XML: ") && e.contains(says), "{e}");
        }
    }
}
