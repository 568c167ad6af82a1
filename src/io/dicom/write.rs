//! Writes a volume as a DICOM CT series: used for synthetic test data and phantoms.
//! Only attributes needed to describe the image are written; no patient identifiers.

use crate::error::{Error, Result};
use crate::volume::{cross, dot, Volume};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// How HU are stored in the written files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredFormat {
    /// 16-bit signed, RescaleIntercept 0.
    Signed16,
    /// 12-bit unsigned in 16 bits, RescaleIntercept -1024 (HU outside [-1024, 3071] are clamped).
    Unsigned12,
}

/// Options for [`write_series`].
#[derive(Debug, Clone)]
pub struct SeriesWriteOptions {
    /// SeriesInstanceUID; by default derived deterministically from the volume.
    pub series_uid: Option<String>,
    /// Transfer syntax: explicit (`true`, default) or implicit VR little endian.
    pub explicit_vr: bool,
    pub stored: StoredFormat,
    /// Permutes file names with this seed (names no longer follow slice order).
    pub shuffle_names_seed: Option<u64>,
    /// InstanceNumber decreasing with z instead of increasing.
    pub reverse_instance_numbers: bool,
    /// Modality attribute (default `CT`).
    pub modality: String,
    /// Moves slice `z`'s ImagePositionPatient by `slice_offsets_mm[z]` (a world vector,
    /// mm; slices past its end are not moved), its pixels unchanged: test data for a
    /// gantry-tilted series (offsets in the slice plane) or an uneven slice spacing
    /// (offsets along the normal). Default empty.
    pub slice_offsets_mm: Vec<[f64; 3]>,
}

impl Default for SeriesWriteOptions {
    fn default() -> Self {
        SeriesWriteOptions {
            series_uid: None,
            explicit_vr: true,
            stored: StoredFormat::Signed16,
            shuffle_names_seed: None,
            reverse_instance_numbers: false,
            modality: "CT".to_string(),
            slice_offsets_mm: Vec::new(),
        }
    }
}

fn ds(values: &[f64]) -> PrimitiveValue {
    let strs: Vec<String> = values.iter().map(|v| format_ds(*v)).collect();
    PrimitiveValue::Strs(strs.into())
}

/// A decimal string of at most 16 characters that parses back to (nearly) the same value.
fn format_ds(v: f64) -> String {
    for prec in (0..=12).rev() {
        let s = format!("{v:.prec$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:.3e}")
}

fn put(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: PrimitiveValue) {
    obj.put(DataElement::new(tag, vr, value));
}

/// A deterministic `2.25.` UID from a hashable seed.
pub fn derived_uid(seed: impl Hash) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    let b = h.finish();
    format!("2.25.{}", ((a as u128) << 64 | b as u128) >> 2)
}

/// Writes `volume` as one DICOM file per z-slice into `dir` (created if needed). Returns
/// the written paths in z order.
///
/// The slice normal of DICOM is `row x column`; a volume whose `direction[0]` is the
/// opposite of that is written with positions decreasing along the normal, which is
/// valid DICOM (a reader sorts it back into increasing order).
pub fn write_series(
    volume: &Volume,
    dir: &Path,
    opts: &SeriesWriteOptions,
) -> Result<Vec<PathBuf>> {
    let g = &volume.geometry;
    g.validate()?;
    let n_axis = cross(g.direction[2], g.direction[1]);
    if dot(n_axis, g.direction[0]).abs() < 0.999 {
        return Err(Error::Geometry(
            "DICOM needs the slice axis perpendicular to rows and columns".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let [nz, ny, nx] = volume.shape();
    if ny > u16::MAX as usize || nx > u16::MAX as usize {
        return Err(Error::InvalidArgument(
            "slices over 65535 pixels a side".into(),
        ));
    }
    let series_uid = opts.series_uid.clone().unwrap_or_else(|| {
        derived_uid((
            volume.shape(),
            g.origin_mm.map(f64::to_bits),
            g.spacing_mm.map(f64::to_bits),
            volume
                .hu
                .iter()
                .step_by(997)
                .take(4096)
                .copied()
                .collect::<Vec<i16>>(),
        ))
    });
    let study_uid = derived_uid(("study", &series_uid));
    let frame_of_ref = derived_uid(("for", &series_uid));
    let ts = if opts.explicit_vr {
        "1.2.840.10008.1.2.1"
    } else {
        "1.2.840.10008.1.2"
    };
    let mut names: Vec<usize> = (0..nz).collect();
    if let Some(seed) = opts.shuffle_names_seed {
        // Fisher-Yates with SplitMix64: deterministic by seed.
        let mut rng = crate::rng::SplitMix64::new(seed);
        for i in (1..nz).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            names.swap(i, j);
        }
    }
    let ori = [
        g.direction[2][0],
        g.direction[2][1],
        g.direction[2][2],
        g.direction[1][0],
        g.direction[1][1],
        g.direction[1][2],
    ];
    let mut paths = Vec::with_capacity(nz);
    for z in 0..nz {
        let mut obj = InMemDicomObject::new_empty();
        let sop_uid = format!("{series_uid}.{}", z + 1);
        put(
            &mut obj,
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.2"),
        );
        put(
            &mut obj,
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_uid.as_str()),
        );
        put(
            &mut obj,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(study_uid.as_str()),
        );
        put(
            &mut obj,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(series_uid.as_str()),
        );
        put(
            &mut obj,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            PrimitiveValue::from(frame_of_ref.as_str()),
        );
        put(
            &mut obj,
            tags::MODALITY,
            VR::CS,
            PrimitiveValue::from(opts.modality.as_str()),
        );
        let inst = if opts.reverse_instance_numbers {
            nz - z
        } else {
            z + 1
        };
        put(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            PrimitiveValue::from(inst.to_string().as_str()),
        );
        put(
            &mut obj,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            ds(&{
                let p = g.voxel_to_world([z as f64, 0.0, 0.0]);
                let d = opts.slice_offsets_mm.get(z).copied().unwrap_or_default();
                std::array::from_fn::<f64, 3, _>(|w| p[w] + d[w])
            }),
        );
        put(&mut obj, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&ori));
        put(
            &mut obj,
            tags::PIXEL_SPACING,
            VR::DS,
            ds(&[g.spacing_mm[1], g.spacing_mm[2]]),
        );
        put(
            &mut obj,
            tags::SLICE_THICKNESS,
            VR::DS,
            ds(&[g.spacing_mm[0]]),
        );
        put(
            &mut obj,
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(1u16),
        );
        put(
            &mut obj,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        );
        put(
            &mut obj,
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(ny as u16),
        );
        put(
            &mut obj,
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(nx as u16),
        );
        put(
            &mut obj,
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(16u16),
        );
        let plane = volume.hu.index_axis(ndarray::Axis(0), z);
        let (bits, signed, intercept, samples): (u16, u16, f64, Vec<u16>) = match opts.stored {
            StoredFormat::Signed16 => (16, 1, 0.0, plane.iter().map(|v| *v as u16).collect()),
            StoredFormat::Unsigned12 => (
                12,
                0,
                -1024.0,
                plane
                    .iter()
                    .map(|v| (*v as i32 + 1024).clamp(0, 4095) as u16)
                    .collect(),
            ),
        };
        put(
            &mut obj,
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(bits),
        );
        put(
            &mut obj,
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(bits - 1),
        );
        put(
            &mut obj,
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(signed),
        );
        put(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, ds(&[intercept]));
        put(&mut obj, tags::RESCALE_SLOPE, VR::DS, ds(&[1.0]));
        put(
            &mut obj,
            tags::RESCALE_TYPE,
            VR::LO,
            PrimitiveValue::from("HU"),
        );
        put(
            &mut obj,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(samples.into()),
        );
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(ts)
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
                    .media_storage_sop_instance_uid(sop_uid.as_str()),
            )
            .map_err(|e| Error::InvalidArgument(format!("DICOM meta: {e}")))?;
        let path = dir.join(format!("IM{:05}.dcm", names[z]));
        file.write_to_file(&path).map_err(|e| Error::Dicom {
            path: path.clone(),
            message: format!("write failed: {e}"),
        })?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds_fits_16_chars() {
        for v in [
            0.0,
            -0.0,
            1.0 / 3.0,
            -166.0,
            123456.789012345,
            1e-9,
            -171.69921875,
        ] {
            let s = format_ds(v);
            assert!(s.len() <= 16, "{s}");
            assert!(
                (s.parse::<f64>().unwrap() - v).abs() < 1e-6 * v.abs().max(1.0),
                "{v} -> {s}"
            );
        }
        assert_eq!(format_ds(-171.69921875), "-171.69921875");
    }
}
