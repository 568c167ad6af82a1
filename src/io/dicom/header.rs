//! Pass 1 of series loading: the attributes of one DICOM file that series assembly needs,
//! read without its pixel data. Patient attributes are never read.

use crate::error::Error;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemDicomObject;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use std::path::Path;
use std::sync::Arc;

/// How stored pixel values become HU: `hu = stored * slope + intercept`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    pub slope: f64,
    pub intercept: f64,
}

impl Default for Rescale {
    fn default() -> Self {
        Rescale {
            slope: 1.0,
            intercept: 0.0,
        }
    }
}

/// Layout of stored pixel samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub rows: u32,
    pub columns: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub samples_per_pixel: u16,
}

/// Stored values treated as padding (mapped to -1024 HU): from PixelPaddingValue up to
/// PixelPaddingRangeLimit inclusive (or just the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    pub lo: i64,
    pub hi: i64,
}

/// One image plane (a single-frame file, or one frame of a multi-frame file).
#[derive(Debug, Clone)]
pub struct SliceHeader {
    pub path: Arc<Path>,
    /// Frame index inside the file (0 for single-frame files).
    pub frame: u32,
    pub number_of_frames: u32,
    pub series_uid: String,
    /// SOPInstanceUID (the file's; frames of a multi-frame file share it).
    pub sop_instance_uid: String,
    pub modality: String,
    pub transfer_syntax: String,
    pub position: Option<[f64; 3]>,
    pub orientation: Option<[f64; 6]>,
    /// PixelSpacing: (row spacing = between rows, column spacing = between columns), mm.
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    pub spacing_between_slices: Option<f64>,
    pub format: PixelFormat,
    pub photometric: String,
    pub rescale: Rescale,
    pub padding: Option<Padding>,
    pub instance_number: Option<i64>,
    /// GantryDetectorTilt (0018,1120), degrees.
    pub gantry_detector_tilt_deg: Option<f64>,
}

/// ACR-NEMA's Image Position and Image Orientation, retired by DICOM for ImagePositionPatient
/// (0020,0032) and ImageOrientationPatient (0020,0037).
const ACR_NEMA_IMAGE_POSITION: dicom_core::Tag = dicom_core::Tag(0x0020, 0x0030);
const ACR_NEMA_IMAGE_ORIENTATION: dicom_core::Tag = dicom_core::Tag(0x0020, 0x0035);

fn find<'a>(
    objs: &[&'a InMemDicomObject],
    tag: dicom_core::Tag,
) -> Option<&'a dicom_object::mem::InMemElement> {
    objs.iter().find_map(|o| o.element_opt(tag).ok().flatten())
}

fn first_item(obj: &InMemDicomObject, seq: dicom_core::Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(seq).ok().flatten()?.items()?.first()
}

/// The text of an element. Elements with VR UN (explicit VR files that did not know the
/// attribute) hold their raw bytes, which for the string VRs used here are the text.
fn text_of(e: &dicom_object::mem::InMemElement) -> Option<String> {
    let s = if e.vr() == VR::UN {
        let bytes = e.value().to_bytes().ok()?;
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        e.to_str().ok()?.into_owned()
    };
    Some(
        s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string(),
    )
}

fn str_of(objs: &[&InMemDicomObject], tag: dicom_core::Tag) -> Option<String> {
    find(objs, tag).and_then(text_of)
}

fn f64s(objs: &[&InMemDicomObject], tag: dicom_core::Tag) -> Option<Vec<f64>> {
    let e = find(objs, tag)?;
    let v: Vec<f64> = if e.vr() == VR::UN {
        text_of(e)?
            .split('\\')
            .map(|t| t.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .ok()?
    } else {
        e.to_multi_float64().ok()?
    };
    Some(v).filter(|v| !v.is_empty() && v.iter().all(|x| x.is_finite()))
}

fn f64_of(objs: &[&InMemDicomObject], tag: dicom_core::Tag) -> Option<f64> {
    f64s(objs, tag).map(|v| v[0])
}

/// An integer attribute: `Ok(None)` when absent or empty, an error when present but not
/// an integer (a corrupt header must not be read with a default in its place).
fn int_of(
    objs: &[&InMemDicomObject],
    tag: dicom_core::Tag,
) -> std::result::Result<Option<i64>, String> {
    let Some(e) = find(objs, tag) else {
        return Ok(None);
    };
    if dicom_core::header::HasLength::is_empty(e) {
        return Ok(None);
    }
    let parsed = if e.vr() == VR::UN {
        // binary US/SS/UL as stored little-endian, or IS text
        let bytes = e.value().to_bytes().map_err(|x| x.to_string())?;
        match bytes.len() {
            2 if !bytes.iter().all(|b| b.is_ascii_digit() || *b == b' ') => {
                Some(u16::from_le_bytes([bytes[0], bytes[1]]) as i64)
            }
            4 if !bytes.iter().all(|b| b.is_ascii_digit() || *b == b' ') => {
                Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as i64)
            }
            _ => text_of(e).and_then(|t| t.parse::<i64>().ok()),
        }
    } else {
        e.to_int::<i64>().ok()
    };
    match parsed {
        Some(v) => Ok(Some(v)),
        None => Err(format!(
            "attribute ({:04X},{:04X}) is not a valid integer: {:?}",
            tag.group(),
            tag.element(),
            text_of(e).unwrap_or_default()
        )),
    }
}

/// Opens a file's header (everything before PixelData), streaming it from the file; a data
/// set without the Part 10 header (`headless`: its transfer syntax) is read behind a
/// synthesized file meta group.
pub(crate) fn open_header(
    path: &Path,
    headless: Option<&str>,
) -> std::result::Result<DefaultDicomObject, String> {
    let options = OpenFileOptions::new().read_until(tags::PIXEL_DATA);
    match headless {
        None => options.open_file(path),
        Some(ts) => {
            use std::io::Read;
            let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
            let meta = std::io::Cursor::new(super::guard::file_meta_group(ts));
            options.from_reader(meta.chain(std::io::BufReader::new(file)))
        }
    }
    .map_err(|e| e.to_string())
}

/// Reads the slice headers of one file; `Ok(vec![])` for a DICOM file that holds no image
/// (structured reports, RT structures, ...).
pub fn read_slice_headers(path: &Path) -> std::result::Result<Vec<SliceHeader>, String> {
    let checked = super::guard::check_file(path, false)?;
    let bytes = &checked.bytes;
    if super::guard::part10_start(bytes).is_none() {
        return Err(
            "not a DICOM file: no \"DICM\" prefix, and it does not start as a bare DICOM data set does"
                .into(),
        );
    }
    // The guard's bytes usually hold the whole header: parse them rather than reading the
    // file again, and fall back to the file when they are a prefix that does not.
    let obj = match OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(&bytes[..])
    {
        Ok(obj) => obj,
        Err(e) if checked.whole => return Err(e.to_string()),
        Err(_) => open_header(path, checked.headless)?,
    };
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    headers_of_object(&obj, Arc::from(path), ts, checked.headless.is_some())
}

/// The slice headers of a parsed object (shared with the fuzz entry point).
///
/// `acr_nema`: the file has no Part 10 header, so ACR-NEMA's retired Image Position and
/// Image Orientation stand in for ImagePositionPatient and ImageOrientationPatient where
/// those are absent (GDCM does this for such files when they name no image SOP class; it
/// never does for Part 10 files).
pub(crate) fn headers_of_object(
    obj: &InMemDicomObject,
    path: Arc<Path>,
    transfer_syntax: String,
    acr_nema: bool,
) -> std::result::Result<Vec<SliceHeader>, String> {
    let top = [obj];
    let (rows, columns) = match (int_of(&top, tags::ROWS)?, int_of(&top, tags::COLUMNS)?) {
        (Some(r), Some(c)) => (r, c),
        _ => return Ok(vec![]), // not an image
    };
    if rows <= 0 || columns <= 0 || rows > 65535 || columns > 65535 {
        return Err(format!("invalid image size {rows}x{columns}"));
    }
    let bits_allocated = int_of(&top, tags::BITS_ALLOCATED)?.unwrap_or(16);
    let bits_stored = int_of(&top, tags::BITS_STORED)?.unwrap_or(bits_allocated);
    if !matches!(bits_allocated, 8 | 16 | 32) {
        return Err(format!(
            "BitsAllocated {bits_allocated} is not supported for CT (8, 16 or 32)"
        ));
    }
    if bits_stored < 1 || bits_stored > bits_allocated {
        return Err(format!(
            "BitsStored {bits_stored} does not fit BitsAllocated {bits_allocated}"
        ));
    }
    let signed = int_of(&top, tags::PIXEL_REPRESENTATION)?.unwrap_or(0) == 1;
    let samples_per_pixel = int_of(&top, tags::SAMPLES_PER_PIXEL)?
        .unwrap_or(1)
        .clamp(0, 16) as u16;
    let format = PixelFormat {
        rows: rows as u32,
        columns: columns as u32,
        bits_allocated: bits_allocated as u16,
        bits_stored: bits_stored as u16,
        signed,
        samples_per_pixel,
    };
    let number_of_frames = int_of(&top, tags::NUMBER_OF_FRAMES)?.unwrap_or(1);
    if number_of_frames < 1 || number_of_frames > u32::MAX as i64 {
        return Err(format!("invalid NumberOfFrames {number_of_frames}"));
    }
    let number_of_frames = number_of_frames as u32;

    let padding = padding_of(&top, &format)?;
    let series_uid = str_of(&top, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    let sop_instance_uid = str_of(&top, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let modality = str_of(&top, tags::MODALITY).unwrap_or_default();
    let photometric = str_of(&top, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let instance_number = int_of(&top, tags::INSTANCE_NUMBER).ok().flatten();

    // Enhanced multi-frame: per-frame functional groups, then shared, then top level.
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame: Vec<&InMemDicomObject> = obj
        .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .map(|items| items.iter().collect())
        .unwrap_or_default();

    let mut out = Vec::with_capacity(number_of_frames as usize);
    for frame in 0..number_of_frames {
        let pf = per_frame.get(frame as usize).copied();
        // The objects in which each functional-group macro is looked up, most specific first.
        let in_group = |seq: dicom_core::Tag| -> Vec<&InMemDicomObject> {
            let mut v = Vec::with_capacity(3);
            if let Some(item) = pf.and_then(|p| first_item(p, seq)) {
                v.push(item);
            }
            if let Some(item) = shared.and_then(|s| first_item(s, seq)) {
                v.push(item);
            }
            v.push(obj);
            v
        };
        let pos_objs = in_group(tags::PLANE_POSITION_SEQUENCE);
        let ori_objs = in_group(tags::PLANE_ORIENTATION_SEQUENCE);
        let meas_objs = in_group(tags::PIXEL_MEASURES_SEQUENCE);
        let resc_objs = in_group(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE);

        let position = if number_of_frames > 1
            && pf
                .and_then(|p| first_item(p, tags::PLANE_POSITION_SEQUENCE))
                .is_none()
        {
            None // a multi-frame file without per-frame positions
        } else {
            f64s(&pos_objs, tags::IMAGE_POSITION_PATIENT)
                .or_else(|| {
                    acr_nema
                        .then(|| f64s(&top, ACR_NEMA_IMAGE_POSITION))
                        .flatten()
                })
                .filter(|v| v.len() >= 3)
                .map(|v| [v[0], v[1], v[2]])
        };
        let orientation = f64s(&ori_objs, tags::IMAGE_ORIENTATION_PATIENT)
            .or_else(|| {
                acr_nema
                    .then(|| f64s(&top, ACR_NEMA_IMAGE_ORIENTATION))
                    .flatten()
            })
            .filter(|v| v.len() >= 6)
            .map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]);
        let pixel_spacing = f64s(&meas_objs, tags::PIXEL_SPACING)
            .filter(|v| v.len() >= 2 && v[0] > 0.0 && v[1] > 0.0)
            .map(|v| [v[0], v[1]]);
        let slice_thickness = f64_of(&meas_objs, tags::SLICE_THICKNESS);
        let spacing_between_slices = f64_of(&meas_objs, tags::SPACING_BETWEEN_SLICES);
        let gantry_detector_tilt_deg = f64_of(
            &in_group(tags::CT_ACQUISITION_DETAILS_SEQUENCE),
            tags::GANTRY_DETECTOR_TILT,
        );
        let rescale = Rescale {
            slope: f64_of(&resc_objs, tags::RESCALE_SLOPE).unwrap_or(1.0),
            intercept: f64_of(&resc_objs, tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        };
        out.push(SliceHeader {
            path: path.clone(),
            frame,
            number_of_frames,
            series_uid: series_uid.clone(),
            sop_instance_uid: sop_instance_uid.clone(),
            modality: modality.clone(),
            transfer_syntax: transfer_syntax.clone(),
            position,
            orientation,
            pixel_spacing,
            slice_thickness,
            spacing_between_slices,
            format,
            photometric: photometric.clone(),
            rescale,
            padding,
            instance_number,
            gantry_detector_tilt_deg,
        });
    }
    Ok(out)
}

/// PixelPaddingValue (and PixelPaddingRangeLimit) as stored values of this pixel format.
fn padding_of(
    top: &[&InMemDicomObject],
    format: &PixelFormat,
) -> std::result::Result<Option<Padding>, String> {
    let as_stored = |v: i64| -> i64 {
        // US/SS ambiguity: a value read as unsigned is reinterpreted for signed pixel data.
        if format.signed {
            match format.bits_allocated {
                8 if v > i8::MAX as i64 => v - 256,
                16 if v > i16::MAX as i64 => v - 65536,
                _ => v,
            }
        } else {
            v
        }
    };
    let Some(lo) = int_of(top, tags::PIXEL_PADDING_VALUE)?.map(as_stored) else {
        return Ok(None);
    };
    let hi = int_of(top, tags::PIXEL_PADDING_RANGE_LIMIT)?
        .map(as_stored)
        .unwrap_or(lo);
    Ok(Some(Padding {
        lo: lo.min(hi),
        hi: lo.max(hi),
    }))
}

/// Error for a file that does not parse as DICOM.
pub(crate) fn dicom_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Dicom {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_headless_header_is_streamed_behind_a_file_meta_group() {
        // an implicit VR data set: ImageType, Modality, Rows 2, Columns 3, PixelData
        let mut f = Vec::new();
        let mut element = |group: u16, elem: u16, value: &[u8]| {
            f.extend_from_slice(&group.to_le_bytes());
            f.extend_from_slice(&elem.to_le_bytes());
            f.extend_from_slice(&(value.len() as u32).to_le_bytes());
            f.extend_from_slice(value);
        };
        element(0x0008, 0x0008, b"AXIAL ");
        element(0x0008, 0x0060, b"CT");
        element(0x0028, 0x0010, &2u16.to_le_bytes());
        element(0x0028, 0x0011, &3u16.to_le_bytes());
        element(0x7FE0, 0x0010, &[0u8; 12]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acr-nema");
        std::fs::write(&path, &f).unwrap();
        let ts = super::super::guard::headless_syntax(&f).unwrap();
        assert_eq!(ts, "1.2.840.10008.1.2");
        let obj = open_header(&path, Some(ts)).unwrap();
        assert_eq!(obj.meta().transfer_syntax().trim_end_matches('\0'), ts);
        assert!(obj.element_opt(tags::PIXEL_DATA).unwrap().is_none());
        let headers = headers_of_object(&obj, Arc::from(path.as_path()), ts.into(), true).unwrap();
        assert_eq!((headers[0].format.rows, headers[0].format.columns), (2, 3));
        assert_eq!(headers[0].modality, "CT");
        // read as a Part 10 file it is not DICOM
        assert!(open_header(&path, None).is_err());
    }
}
