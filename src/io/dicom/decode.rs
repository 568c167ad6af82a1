//! Pass 2 of series loading: pixel data to HU, written straight into the output volume.

use super::header::{dicom_error, Padding, PixelFormat, Rescale, SliceHeader};
use crate::error::{Error, Result};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex as _;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// Converts one frame of stored samples (little-endian bytes) to HU.
///
/// Samples are masked to BitsStored and sign-extended when signed; padding values
/// (compared as stored values) become -1024 HU; everything else becomes
/// `round(stored * slope + intercept)` clamped to the i16 range.
pub fn frame_to_hu(
    raw: &[u8],
    format: &PixelFormat,
    rescale: Rescale,
    padding: Option<Padding>,
    out: &mut [i16],
) {
    let bits = format.bits_stored as u32;
    let shift = 64 - bits;
    let to_stored = |v: u64| -> i64 {
        if format.signed {
            ((v << shift) as i64) >> shift
        } else {
            ((v << shift) >> shift) as i64
        }
    };
    let integer =
        rescale.slope == 1.0 && rescale.intercept.fract() == 0.0 && rescale.intercept.abs() < 1e9;
    let icpt = rescale.intercept as i64;
    let (lo, hi) = padding.map(|p| (p.lo, p.hi)).unwrap_or((1, 0));
    let map = |s: i64| -> i16 {
        if s >= lo && s <= hi {
            return -1024;
        }
        if integer {
            (s + icpt).clamp(i16::MIN as i64, i16::MAX as i64) as i16
        } else {
            (s as f64 * rescale.slope + rescale.intercept)
                .round()
                .clamp(i16::MIN as f64, i16::MAX as f64) as i16
        }
    };
    match format.bits_allocated {
        8 => {
            for (o, &b) in out.iter_mut().zip(raw) {
                *o = map(to_stored(b as u64));
            }
        }
        16 => {
            let n = out.len().min(raw.len() / 2);
            for (o, c) in out[..n].iter_mut().zip(raw.chunks_exact(2)) {
                *o = i16::from_le_bytes([c[0], c[1]]);
            }
            stored16_to_hu_in_place(&mut out[..n], format, rescale, padding);
        }
        _ => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = map(to_stored(
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64
                ));
            }
        }
    }
}

fn frame_bytes(f: &PixelFormat) -> usize {
    f.rows as usize
        * f.columns as usize
        * (f.bits_allocated as usize / 8)
        * f.samples_per_pixel as usize
}

/// Fast path for uncompressed little-endian single-frame 16-bit files: the pixel data
/// element is the file's tail, so its bytes are read straight into the output plane and
/// converted in place. Returns `false` (leaving `out` to be overwritten) when the tail does
/// not carry exactly the expected PixelData header; the caller then parses the whole file.
fn read_native_tail_into(path: &Path, h: &SliceHeader, out: &mut [i16]) -> bool {
    if cfg!(target_endian = "big")
        || h.number_of_frames != 1
        || h.format.bits_allocated != 16
        || h.format.samples_per_pixel != 1
        || !(h.transfer_syntax == EXPLICIT_VR_LE || h.transfer_syntax == IMPLICIT_VR_LE)
    {
        return false;
    }
    let len = frame_bytes(&h.format);
    if out.len() * 2 != len {
        return false;
    }
    let explicit = h.transfer_syntax == EXPLICIT_VR_LE;
    let head_len = if explicit { 12 } else { 8 };
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let Some(start) = (meta.len() as usize).checked_sub(len + head_len) else {
        return false;
    };
    let mut head = [0u8; 12];
    if file.seek(SeekFrom::Start(start as u64)).is_err()
        || file.read_exact(&mut head[..head_len]).is_err()
    {
        return false;
    }
    if head[0..4] != [0xE0, 0x7F, 0x10, 0x00] {
        return false;
    }
    let declared = if explicit {
        if !(&head[4..6] == b"OW" || &head[4..6] == b"OB") || head[6..8] != [0, 0] {
            return false;
        }
        u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize
    } else {
        u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize
    };
    if declared != len {
        return false;
    }
    // SAFETY: i16 has no invalid bit patterns and u8 has alignment 1; the byte view covers
    // exactly the memory of `out`, which stays borrowed mutably for its whole lifetime.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, out.len() * 2) };
    if file.read_exact(bytes).is_err() {
        return false;
    }
    stored16_to_hu_in_place(out, &h.format, h.rescale, h.padding);
    true
}

/// In-place version of [`frame_to_hu`] for 16-bit samples already in `out` (host order =
/// little endian). Written as branch-free loops (mask or sign-extend, padding select,
/// saturating add) that the compiler vectorises.
fn stored16_to_hu_in_place(
    out: &mut [i16],
    format: &PixelFormat,
    rescale: Rescale,
    padding: Option<Padding>,
) {
    let sh = 32 - format.bits_stored.clamp(1, 16) as u32;
    let (lo, hi) = padding
        .map(|p| {
            (
                p.lo.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
                p.hi.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            )
        })
        .unwrap_or((1, 0));
    let integer = rescale.slope == 1.0
        && rescale.intercept.fract() == 0.0
        && rescale.intercept.abs() < 65536.0;
    let icpt = rescale.intercept as i32;
    let signed = format.signed;
    let stored = move |v: i16| -> i32 {
        let u = (v as u16 as i32) << sh;
        if signed {
            u >> sh
        } else {
            ((u as u32) >> sh) as i32
        }
    };
    if integer {
        for v in out.iter_mut() {
            let s = stored(*v);
            let hu = (s + icpt).clamp(i16::MIN as i32, i16::MAX as i32) as i16;
            *v = if s >= lo && s <= hi { -1024 } else { hu };
        }
    } else {
        for v in out.iter_mut() {
            let s = stored(*v);
            let hu = (s as f64 * rescale.slope + rescale.intercept)
                .round()
                .clamp(i16::MIN as f64, i16::MAX as f64) as i16;
            *v = if s >= lo && s <= hi { -1024 } else { hu };
        }
    }
}

fn ts_name(uid: &str) -> String {
    TransferSyntaxRegistry
        .get(uid)
        .map(|ts| ts.name().to_string())
        .unwrap_or_else(|| "unknown transfer syntax".to_string())
}

/// Decodes the frames of one file that the volume uses into their output slices.
/// `frames` pairs each frame index with its slice header and output plane.
/// Returns warnings about tolerated irregularities in the pixel data.
pub fn decode_file(path: &Path, frames: Vec<(&SliceHeader, &mut [i16])>) -> Result<Vec<String>> {
    let Some((first, _)) = frames.first() else {
        return Ok(Vec::new());
    };
    let first: &SliceHeader = first;
    if first.format.samples_per_pixel != 1 {
        return Err(dicom_error(
            path,
            format!(
                "SamplesPerPixel is {}: colour images are not CT",
                first.format.samples_per_pixel
            ),
        ));
    }
    let mut frames = frames;
    if frames.len() == 1 {
        let (h, out) = &mut frames[0];
        if read_native_tail_into(path, h, out) {
            return Ok(Vec::new());
        }
    }

    let ts_uid = first.transfer_syntax.as_str();
    let ts = TransferSyntaxRegistry.get(ts_uid);
    let supported = ts.map(|t| t.can_decode_all()).unwrap_or(false);
    if !supported {
        return Err(Error::UnsupportedTransferSyntax {
            path: path.to_path_buf(),
            uid: ts_uid.to_string(),
            name: ts_name(ts_uid),
        });
    }
    let checked = super::guard::check_file(path, true).map_err(|m| dicom_error(path, m))?;
    let obj = OpenFileOptions::new()
        .from_reader(&checked.bytes[..])
        .map_err(|e| dicom_error(path, e.to_string()))?;
    let pixel = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or_else(|| dicom_error(path, "no PixelData"))?;
    let need = frame_bytes(&first.format) * first.number_of_frames as usize;
    let (data, bits_allocated): (Cow<[u8]>, u16) = match pixel.value() {
        dicom_core::DicomValue::Primitive(p) => (p.to_bytes(), first.format.bits_allocated),
        dicom_core::DicomValue::PixelSequence(seq) if is_jpeg12(ts_uid, seq.fragments()) => {
            // lungcad's own decoder is written not to panic; like the others it fails its
            // file if it ever does.
            let fragments = seq.fragments();
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decode_jpeg12(path, fragments, frames)
            }))
            .unwrap_or_else(|_| {
                Err(dicom_error(
                    path,
                    "cannot decode pixel data (JPEG Extended, 12-bit): the decoder failed on malformed data",
                ))
            });
        }
        dicom_core::DicomValue::PixelSequence(_) => {
            // The decoders are dicom-rs's and their dependencies'; one that panics on
            // malformed data (dicom-rs 0.10.1's RLE decoder indexes past a short segment,
            // found by fuzzing) fails this file with an error instead of unwinding into the
            // caller.
            let name = ts_name(ts_uid);
            let decoded = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                obj.decode_pixel_data()
            })) {
                Ok(Ok(decoded)) => decoded,
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    return Err(if msg.to_ascii_lowercase().contains("unsupported") {
                        Error::UnsupportedTransferSyntax {
                            path: path.to_path_buf(),
                            uid: ts_uid.to_string(),
                            name,
                        }
                    } else {
                        dicom_error(path, format!("cannot decode pixel data ({name}): {msg}"))
                    });
                }
                Err(_) => {
                    let msg = "the decoder failed on malformed data";
                    return Err(dicom_error(
                        path,
                        format!("cannot decode pixel data ({name}): {msg}"),
                    ));
                }
            };
            let ba = decoded.bits_allocated();
            (Cow::Owned(decoded.into_data()), ba)
        }
        dicom_core::DicomValue::Sequence(_) => {
            return Err(dicom_error(path, "PixelData is a sequence"))
        }
    };
    let mut format = first.format;
    if bits_allocated != format.bits_allocated {
        if !matches!(bits_allocated, 8 | 16 | 32) {
            return Err(dicom_error(
                path,
                format!("decoded to {bits_allocated} bits per sample"),
            ));
        }
        format.bits_allocated = bits_allocated;
        format.bits_stored = format.bits_stored.min(bits_allocated);
    }
    let per_frame = frame_bytes(&format);
    let need_decoded = per_frame * first.number_of_frames as usize;
    if data.len() < need_decoded {
        return Err(dicom_error(
            path,
            format!(
                "pixel data is shorter than declared: {} bytes, {} expected for {} frame(s) of {}x{} at {} bits",
                data.len(),
                need_decoded.max(need),
                first.number_of_frames,
                format.rows,
                format.columns,
                format.bits_allocated
            ),
        ));
    }
    for (h, out) in frames {
        let start = per_frame * h.frame as usize;
        let raw = data
            .get(start..start + per_frame)
            .ok_or_else(|| dicom_error(path, format!("frame {} out of range", h.frame)))?;
        frame_to_hu(raw, &format, h.rescale, h.padding, out);
    }
    Ok(Vec::new())
}

/// JPEG Extended (processes 2 and 4), which holds 12-bit lossy CT.
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// Whether the frames are 12-bit sequential DCT JPEG, which dicom-rs' decoder refuses and
/// lungcad decodes itself ([`super::jpeg`]); 8-bit and other JPEG go to dicom-rs.
fn is_jpeg12(ts_uid: &str, fragments: &[Vec<u8>]) -> bool {
    ts_uid == JPEG_EXTENDED
        && fragments
            .first()
            .and_then(|f| super::jpeg::frame_info(f).ok())
            .is_some_and(|i| i.precision == 12 && matches!(i.marker, 0xC0 | 0xC1))
}

/// Decodes 12-bit JPEG frames with [`super::jpeg`]. A file with as many fragments as frames
/// has one frame in each; otherwise the fragments are joined and the frames read one after
/// another, each ending at its EOI.
fn decode_jpeg12(
    path: &Path,
    fragments: &[Vec<u8>],
    frames: Vec<(&SliceHeader, &mut [i16])>,
) -> Result<Vec<String>> {
    let Some((first, _)) = frames.first() else {
        return Ok(Vec::new());
    };
    let n_frames = first.number_of_frames as usize;
    let expect = match (
        u16::try_from(first.format.rows),
        u16::try_from(first.format.columns),
    ) {
        (Ok(r), Ok(c)) => (r, c),
        _ => {
            return Err(dicom_error(
                path,
                "an image over 65535 pixels wide or high in JPEG",
            ))
        }
    };
    let fail = |frame: usize, m: String| {
        dicom_error(
            path,
            format!("cannot decode pixel data (JPEG Extended, 12-bit), frame {frame}: {m}"),
        )
    };
    let mut format = first.format;
    if format.bits_stored < 12 {
        // Masking 12-bit samples to fewer bits would give wrong HU without a sign.
        return Err(dicom_error(
            path,
            format!(
                "BitsStored is {} but the JPEG frames hold 12-bit samples",
                format.bits_stored
            ),
        ));
    }
    format.bits_allocated = 16;
    format.bits_stored = format.bits_stored.min(16);
    let mut warnings = Vec::new();
    let mut put = |f: usize, d: super::jpeg::Decoded, h: &SliceHeader, out: &mut [i16]| {
        if d.precision != 12 {
            return Err(fail(
                f,
                format!("coded at {} bits, the first frame at 12", d.precision),
            ));
        }
        for (o, &s) in out.iter_mut().zip(&d.samples) {
            *o = s as i16;
        }
        stored16_to_hu_in_place(out, &format, h.rescale, h.padding);
        warnings.extend(d.warnings); // each kept once by the caller, decode_into
        Ok(())
    };
    if fragments.len() == n_frames {
        for (h, out) in frames {
            let f = h.frame as usize;
            let data = fragments
                .get(f)
                .ok_or_else(|| dicom_error(path, format!("frame {f} out of range")))?;
            let d = super::jpeg::decode(data, expect).map_err(|m| fail(f, m))?;
            put(f, d, h, out)?;
        }
        return Ok(warnings);
    }
    let joined: Vec<u8> = fragments.concat();
    let mut wanted: Vec<(&SliceHeader, &mut [i16])> = frames;
    wanted.sort_by_key(|(h, _)| h.frame);
    let mut pos = 0;
    let mut next = 0usize;
    for (h, out) in wanted {
        let f = h.frame as usize;
        if f >= n_frames {
            return Err(dicom_error(path, format!("frame {f} out of range")));
        }
        while next <= f {
            let d = super::jpeg::decode(&joined[pos..], expect).map_err(|m| fail(next, m))?;
            pos += d.bytes_read;
            if next == f {
                put(f, d, h, &mut *out)?;
            }
            next += 1;
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(bits_allocated: u16, bits_stored: u16, signed: bool) -> PixelFormat {
        PixelFormat {
            rows: 1,
            columns: 4,
            bits_allocated,
            bits_stored,
            signed,
            samples_per_pixel: 1,
        }
    }

    #[test]
    fn twelve_bit_signed_and_unsigned() {
        // 12-bit signed: 0x0FFF is -1; high garbage bits are masked away.
        let raw: Vec<u8> = [0x0FFFu16, 0xF7FF, 0x0800, 0x0005]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = [0i16; 4];
        frame_to_hu(&raw, &fmt(16, 12, true), Rescale::default(), None, &mut out);
        assert_eq!(out, [-1, 2047, -2048, 5]);
        frame_to_hu(
            &raw,
            &fmt(16, 12, false),
            Rescale {
                slope: 1.0,
                intercept: -1024.0,
            },
            None,
            &mut out,
        );
        assert_eq!(out, [4095 - 1024, 2047 - 1024, 2048 - 1024, 5 - 1024]);
    }

    #[test]
    fn rescale_padding_and_clamp() {
        let raw: Vec<u8> = [-2000i16, 0, 100, 32767]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = [0i16; 4];
        frame_to_hu(
            &raw,
            &fmt(16, 16, true),
            Rescale {
                slope: 0.5,
                intercept: -1000.0,
            },
            Some(Padding {
                lo: -2000,
                hi: -2000,
            }),
            &mut out,
        );
        assert_eq!(
            out,
            [
                -1024,
                -1000,
                -950,
                (32767.0f64 * 0.5 - 1000.0).round() as i16
            ]
        );
        frame_to_hu(
            &raw,
            &fmt(16, 16, true),
            Rescale {
                slope: 1.0,
                intercept: 1000.0,
            },
            None,
            &mut out,
        );
        assert_eq!(out, [-1000, 1000, 1100, i16::MAX]);
    }

    #[test]
    fn in_place_16_bit_matches_bytewise() {
        let values: Vec<i16> = vec![-2000, -1024, 0, 5, 4095, 32767, -32768, 100];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (f, r, p) in [
            (
                fmt(16, 16, true),
                Rescale {
                    slope: 1.0,
                    intercept: -1024.0,
                },
                None,
            ),
            (
                fmt(16, 16, false),
                Rescale {
                    slope: 1.0,
                    intercept: -1024.0,
                },
                None,
            ),
            (fmt(16, 12, true), Rescale::default(), None),
            (
                fmt(16, 16, true),
                Rescale {
                    slope: 1.0,
                    intercept: 0.0,
                },
                Some(Padding {
                    lo: -2000,
                    hi: -2000,
                }),
            ),
            (
                fmt(16, 16, true),
                Rescale {
                    slope: 2.5,
                    intercept: 3.0,
                },
                None,
            ),
        ] {
            let mut a = vec![0i16; values.len()];
            frame_to_hu(
                &raw,
                &PixelFormat {
                    columns: values.len() as u32,
                    ..f
                },
                r,
                p,
                &mut a,
            );
            let mut b = values.clone();
            stored16_to_hu_in_place(&mut b, &f, r, p);
            assert_eq!(a, b, "{f:?} {r:?} {p:?}");
        }
    }

    #[test]
    fn eight_and_thirty_two_bit() {
        let mut out = [0i16; 4];
        frame_to_hu(
            &[0, 1, 255, 128],
            &fmt(8, 8, false),
            Rescale::default(),
            None,
            &mut out,
        );
        assert_eq!(out, [0, 1, 255, 128]);
        frame_to_hu(
            &[0, 1, 255, 128],
            &fmt(8, 8, true),
            Rescale::default(),
            None,
            &mut out,
        );
        assert_eq!(out, [0, 1, -1, -128]);
        let raw: Vec<u8> = [-5i32, 70000, 3, -70000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        frame_to_hu(&raw, &fmt(32, 32, true), Rescale::default(), None, &mut out);
        assert_eq!(out, [-5, i16::MAX, 3, i16::MIN]);
    }
}
