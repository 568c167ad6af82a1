//! MetaImage: `.mhd` header + `.raw`/`.zraw` data file, or single-file `.mha` — the format of
//! LUNA16 and Tianchi.
//!
//! # Header
//!
//! A MetaImage header is text, one `Key = Value` per line, ending with `ElementDataFile`.
//! [`parse_header`] understands:
//!
//! | key | meaning |
//! |---|---|
//! | `ObjectType` | must be `Image` when present |
//! | `NDims` | 3, or 2 (read as a single slice); 1 and 4+ are refused |
//! | `DimSize` | size per ITK index axis `(x, y[, z])` |
//! | `ElementSpacing` (or, when absent, `ElementSize`) | spacing per axis, mm; default 1 |
//! | `Offset` / `Origin` / `Position` | world (LPS mm) position of voxel `(0, 0, 0)`; default 0 |
//! | `TransformMatrix` / `Rotation` / `Orientation` | direction cosines; default identity |
//! | `ElementType` | `MET_CHAR`, `MET_UCHAR`, `MET_SHORT`, `MET_USHORT`, `MET_INT`, `MET_UINT`, `MET_LONG`, `MET_ULONG`, `MET_LONG_LONG`, `MET_ULONG_LONG`, `MET_FLOAT`, `MET_DOUBLE` |
//! | `ElementNumberOfChannels` | must be 1 |
//! | `BinaryData` | must be true (ASCII pixel data is refused) |
//! | `BinaryDataByteOrderMSB` / `ElementByteOrderMSB` | big-endian elements when true |
//! | `CompressedData`, `CompressedDataSize` | zlib (or gzip) compressed data, and its size in bytes |
//! | `HeaderSize` | bytes to skip before the data; `-1`: the data is at the end of the file |
//! | `ElementDataFile` | `LOCAL` (data follows the header, `.mha`) or a file name relative to the header |
//!
//! Keys are matched case-insensitively; unknown keys (`Comment`, `CenterOfRotation`,
//! `AnatomicalOrientation`, ...) are ignored. `TransformMatrix` follows ITK: its values
//! `[n*i .. n*i + n]` are the world direction of index axis `i` (`x, y, z`), so
//! `Geometry::from_itk` gets the matrix whose column `i` holds those values.
//!
//! `ElementDataFile` is resolved relative to the header's folder and may not leave it:
//! absolute paths, `..` components and the `LIST` and `%d`-pattern forms are refused. The
//! data must be exactly as long as `DimSize` and `ElementType` say (after decompression, for
//! compressed data); shorter or longer data is an error.
//!
//! # Values
//!
//! Every element type is converted to `i16` HU: integers are clamped to
//! `[-32768, 32767]`; floats are rounded to the nearest integer (halves away from zero) and
//! clamped, and NaN becomes -1024 (air). When any voxel had to be clamped, the volume's
//! `info.warnings` says how many.
//!
//! # Writing
//!
//! [`write()`] writes `int16` (`MET_SHORT`, little endian) with the fields in the order ITK
//! writes them. `.mhd` writes the header and `<stem>.raw` (`<stem>.zraw` when compressed)
//! beside it; `.mha` writes one file with `ElementDataFile = LOCAL`. Files are written to a
//! temporary name in the same folder and renamed into place.

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::volume::{Geometry, Volume, VolumeInfo};
use flate2::read::{MultiGzDecoder, ZlibDecoder};
use ndarray::Array3;
use rayon::prelude::*;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

/// The longest header (text before the data of a `.mha`) that is read.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Pixel element types of MetaImage (and, shared, NIfTI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl ElementType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElementType::I8 | ElementType::U8 => 1,
            ElementType::I16 | ElementType::U16 => 2,
            ElementType::I32 | ElementType::U32 | ElementType::F32 => 4,
            ElementType::I64 | ElementType::U64 | ElementType::F64 => 8,
        }
    }

    /// The type named by a MetaImage `ElementType` value (`MET_SHORT`, ...). `MET_LONG` and
    /// `MET_ULONG` are 4 bytes, as in MetaIO.
    pub fn from_met(name: &str) -> Option<ElementType> {
        Some(match name.to_ascii_uppercase().as_str() {
            "MET_CHAR" | "MET_ASCII_CHAR" => ElementType::I8,
            "MET_UCHAR" => ElementType::U8,
            "MET_SHORT" => ElementType::I16,
            "MET_USHORT" => ElementType::U16,
            "MET_INT" | "MET_LONG" => ElementType::I32,
            "MET_UINT" | "MET_ULONG" => ElementType::U32,
            "MET_LONG_LONG" => ElementType::I64,
            "MET_ULONG_LONG" => ElementType::U64,
            "MET_FLOAT" => ElementType::F32,
            "MET_DOUBLE" => ElementType::F64,
            _ => return None,
        })
    }

    /// The MetaImage name of the type.
    pub fn met_name(self) -> &'static str {
        match self {
            ElementType::I8 => "MET_CHAR",
            ElementType::U8 => "MET_UCHAR",
            ElementType::I16 => "MET_SHORT",
            ElementType::U16 => "MET_USHORT",
            ElementType::I32 => "MET_INT",
            ElementType::U32 => "MET_UINT",
            ElementType::I64 => "MET_LONG_LONG",
            ElementType::U64 => "MET_ULONG_LONG",
            ElementType::F32 => "MET_FLOAT",
            ElementType::F64 => "MET_DOUBLE",
        }
    }
}

/// Where the data starts, from `HeaderSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderSize {
    /// Skip this many bytes (of the data file; for `LOCAL`, after the header).
    Bytes(u64),
    /// `HeaderSize = -1`: the data is the last bytes of the file.
    AtEnd,
}

/// The `ElementDataFile` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataFile {
    /// `LOCAL`: the data follows the header in the same file.
    Local,
    /// A file name relative to the header's folder (checked not to leave it).
    File(String),
}

/// A parsed, validated MetaImage header. Per-axis vectors are in ITK index order
/// `(x, y[, z])` and have `ndims` entries; `transform_matrix` has `ndims * ndims`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaHeader {
    pub ndims: usize,
    pub dim_size: Vec<u64>,
    pub element_spacing: Vec<f64>,
    pub offset: Vec<f64>,
    pub transform_matrix: Vec<f64>,
    pub element_type: ElementType,
    pub big_endian: bool,
    pub compressed: bool,
    /// `CompressedDataSize`; `None` when absent or 0 (then: the rest of the file).
    pub compressed_data_size: Option<u64>,
    pub header_size: HeaderSize,
    pub data_file: DataFile,
}

impl MetaHeader {
    /// Shape `(z, y, x)`; a 2-D image is one slice.
    pub fn shape_zyx(&self) -> [u64; 3] {
        let d = |i: usize| self.dim_size.get(i).copied().unwrap_or(1);
        [d(2), d(1), d(0)]
    }

    /// The geometry the header describes (2-D images: z spacing 1, z origin 0, z axis
    /// along world z). Not validated.
    pub fn geometry(&self) -> Geometry {
        let n = self.ndims;
        let get = |v: &[f64], i: usize, default: f64| v.get(i).copied().unwrap_or(default);
        let spacing = [0, 1, 2].map(|i| get(&self.element_spacing, i, 1.0));
        let origin = [0, 1, 2].map(|i| get(&self.offset, i, 0.0));
        let mut itk = [[0.0; 3]; 3];
        for (r, row) in itk.iter_mut().enumerate() {
            for (c, value) in row.iter_mut().enumerate() {
                *value = if r < n && c < n {
                    // Values [n*c .. n*c + n] are the direction of index axis c.
                    get(&self.transform_matrix, c * n + r, 0.0)
                } else if r == c {
                    1.0
                } else {
                    0.0
                };
            }
        }
        Geometry::from_itk(spacing, origin, itk)
    }
}

/// The first `max_chars` characters of `s`, for error messages.
fn excerpt(s: &str, max_chars: usize) -> String {
    let mut out: String = s.chars().take(max_chars).collect();
    if s.chars().nth(max_chars).is_some() {
        out.push_str("...");
    }
    out
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" => Ok(true),
        "false" | "f" | "0" | "no" => Ok(false),
        _ => Err(format!(
            "{key} must be True or False, got {:?}",
            excerpt(value, 40)
        )),
    }
}

fn parse_floats(key: &str, value: &str, n: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for token in value.split_whitespace().take(n + 1) {
        let v: f64 = token
            .parse()
            .map_err(|_| format!("{key}: {:?} is not a number", excerpt(token, 40)))?;
        if !v.is_finite() {
            return Err(format!("{key}: {token} is not a finite number"));
        }
        out.push(v);
    }
    if out.len() != n {
        return Err(format!(
            "{key} must have {n} values, got {}{}",
            out.len().min(n),
            if out.len() > n { " or more" } else { "" }
        ));
    }
    Ok(out)
}

fn parse_int<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{key} must be an integer, got {:?}", excerpt(value, 40)))
}

/// Checks an `ElementDataFile` value and classifies it.
fn parse_data_file(value: &str) -> Result<DataFile, String> {
    if value.is_empty() {
        return Err("ElementDataFile is empty".into());
    }
    if value.eq_ignore_ascii_case("LOCAL") {
        return Ok(DataFile::Local);
    }
    let first_word = value.split_whitespace().next().unwrap_or("");
    if first_word.eq_ignore_ascii_case("LIST") {
        return Err(
            "ElementDataFile = LIST (one file per slice) is not supported; \
                    convert the image to a single .mhd/.raw or .mha"
                .into(),
        );
    }
    if value.contains('%') {
        return Err(format!(
            "ElementDataFile = {:?} is a file-name pattern (one file per slice), which is not \
             supported; convert the image to a single .mhd/.raw or .mha",
            excerpt(value, 80)
        ));
    }
    let is_absolute = value.starts_with('/')
        || value.starts_with('\\')
        || matches!(value.as_bytes(), [drive, b':', ..] if drive.is_ascii_alphabetic());
    if is_absolute {
        return Err(format!(
            "ElementDataFile = {:?} is an absolute path; it must name a file in the header's folder",
            excerpt(value, 80)
        ));
    }
    if value.split(['/', '\\']).any(|c| c == "..") {
        return Err(format!(
            "ElementDataFile = {:?} leaves the header's folder (`..`); it must name a file in \
             the header's folder",
            excerpt(value, 80)
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err("ElementDataFile contains control characters".into());
    }
    Ok(DataFile::File(value.to_string()))
}

/// The canonical name of a header key that lungcad uses, or `None` for keys it ignores.
fn canonical_key(key: &str) -> Option<&'static str> {
    const KEYS: &[(&str, &str)] = &[
        ("objecttype", "ObjectType"),
        ("ndims", "NDims"),
        ("dimsize", "DimSize"),
        ("elementspacing", "ElementSpacing"),
        ("elementsize", "ElementSize"),
        ("offset", "Offset"),
        ("origin", "Offset"),
        ("position", "Offset"),
        ("transformmatrix", "TransformMatrix"),
        ("rotation", "TransformMatrix"),
        ("orientation", "TransformMatrix"),
        ("elementtype", "ElementType"),
        ("elementnumberofchannels", "ElementNumberOfChannels"),
        ("binarydata", "BinaryData"),
        ("binarydatabyteordermsb", "BinaryDataByteOrderMSB"),
        ("elementbyteordermsb", "ElementByteOrderMSB"),
        ("compresseddata", "CompressedData"),
        ("compresseddatasize", "CompressedDataSize"),
        ("headersize", "HeaderSize"),
        ("elementdatafile", "ElementDataFile"),
    ];
    let lower = key.to_ascii_lowercase();
    KEYS.iter().find(|(k, _)| *k == lower).map(|(_, c)| *c)
}

/// Parses a MetaImage header (the text of a `.mhd`, or of a `.mha` up to and including its
/// `ElementDataFile` line; anything after that line is ignored).
///
/// Pure and total: any text gives a header or an error message, never a panic, and nothing
/// is allocated in proportion to the sizes the header claims. Sizes are not checked against
/// [`Limits`] here; [`read`] does that.
pub fn parse_header(text: &str) -> Result<MetaHeader, String> {
    // Known keys in order of appearance: (canonical key, value, line number).
    let mut fields: Vec<(&'static str, &str, usize)> = Vec::new();
    let mut data_file = None;
    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "line {line_no}: expected `Key = Value`, got {:?}",
                excerpt(line, 60)
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(canonical) = canonical_key(key) else {
            continue;
        };
        if canonical == "ElementDataFile" {
            data_file = Some(parse_data_file(value)?);
            break;
        }
        if let Some((_, previous, previous_line)) = fields.iter().find(|(k, _, _)| *k == canonical)
        {
            if *previous != value {
                return Err(format!(
                    "line {line_no}: {key} conflicts with the {canonical} given on line {previous_line}"
                ));
            }
            continue;
        }
        fields.push((canonical, value, line_no));
    }
    let data_file = data_file.ok_or("no ElementDataFile line (it must end the header)")?;
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _, _)| *key == k)
            .map(|(_, v, _)| *v)
    };

    if let Some(object_type) = get("ObjectType") {
        if !object_type.eq_ignore_ascii_case("Image") {
            return Err(format!(
                "ObjectType is {:?}, not Image",
                excerpt(object_type, 40)
            ));
        }
    }
    let ndims: usize = parse_int("NDims", get("NDims").ok_or("no NDims")?)?;
    match ndims {
        2 | 3 => {}
        0 | 1 => {
            return Err(format!(
                "NDims = {ndims}: only 2-D and 3-D images are supported"
            ))
        }
        _ => {
            return Err(format!(
                "NDims = {ndims}: {ndims}-D images (e.g. time series) are not supported; \
                 extract a 3-D volume first"
            ))
        }
    }
    let dim_size = {
        let value = get("DimSize").ok_or("no DimSize")?;
        let mut dims = Vec::with_capacity(ndims);
        for token in value.split_whitespace().take(ndims + 1) {
            dims.push(parse_int::<u64>("DimSize", token)?);
        }
        if dims.len() != ndims {
            return Err(format!(
                "DimSize must have {ndims} values (NDims), got {:?}",
                excerpt(value, 60)
            ));
        }
        if dims.contains(&0) {
            return Err(format!("DimSize has a zero size: {value}"));
        }
        dims
    };
    let element_spacing = match (get("ElementSpacing"), get("ElementSize")) {
        (Some(v), _) => parse_floats("ElementSpacing", v, ndims)?,
        (None, Some(v)) => parse_floats("ElementSize", v, ndims)?,
        (None, None) => vec![1.0; ndims],
    };
    if element_spacing.iter().any(|s| *s <= 0.0) {
        return Err(format!(
            "ElementSpacing must be positive, got {element_spacing:?}"
        ));
    }
    let offset = match get("Offset") {
        Some(v) => parse_floats("Offset", v, ndims)?,
        None => vec![0.0; ndims],
    };
    let transform_matrix = match get("TransformMatrix") {
        Some(v) => parse_floats("TransformMatrix", v, ndims * ndims)?,
        None => (0..ndims * ndims)
            .map(|i| if i % (ndims + 1) == 0 { 1.0 } else { 0.0 })
            .collect(),
    };
    let element_type = {
        let v = get("ElementType").ok_or("no ElementType")?;
        ElementType::from_met(v).ok_or_else(|| {
            format!(
                "ElementType {:?} is not supported (scalar MET_CHAR, MET_UCHAR, MET_SHORT, MET_USHORT, \
                 MET_INT, MET_UINT, MET_LONG, MET_ULONG, MET_LONG_LONG, MET_ULONG_LONG, MET_FLOAT or MET_DOUBLE)",
                excerpt(v, 40)
            )
        })?
    };
    if let Some(v) = get("ElementNumberOfChannels") {
        let channels: u64 = parse_int("ElementNumberOfChannels", v)?;
        if channels != 1 {
            return Err(format!(
                "ElementNumberOfChannels = {channels}: only single-channel (scalar) images are supported"
            ));
        }
    }
    if let Some(v) = get("BinaryData") {
        if !parse_bool("BinaryData", v)? {
            return Err("BinaryData = False (ASCII pixel data) is not supported".into());
        }
    }
    let msb = get("BinaryDataByteOrderMSB")
        .map(|v| parse_bool("BinaryDataByteOrderMSB", v))
        .transpose()?;
    let element_msb = get("ElementByteOrderMSB")
        .map(|v| parse_bool("ElementByteOrderMSB", v))
        .transpose()?;
    let big_endian = match (msb, element_msb) {
        (Some(a), Some(b)) if a != b => {
            return Err("BinaryDataByteOrderMSB and ElementByteOrderMSB disagree".into())
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => false,
    };
    let compressed = get("CompressedData")
        .map(|v| parse_bool("CompressedData", v))
        .transpose()?
        .unwrap_or(false);
    let compressed_data_size = match get("CompressedDataSize") {
        Some(v) => match parse_int::<u64>("CompressedDataSize", v)? {
            0 => None,
            n => Some(n),
        },
        None => None,
    };
    let header_size = match get("HeaderSize") {
        Some(v) => match parse_int::<i64>("HeaderSize", v)? {
            -1 => HeaderSize::AtEnd,
            n if n >= 0 => HeaderSize::Bytes(n.unsigned_abs()),
            n => return Err(format!("HeaderSize = {n}: must be -1 or at least 0")),
        },
        None => HeaderSize::Bytes(0),
    };
    if compressed && header_size == HeaderSize::AtEnd && compressed_data_size.is_none() {
        return Err("HeaderSize = -1 with compressed data needs CompressedDataSize".into());
    }
    Ok(MetaHeader {
        ndims,
        dim_size,
        element_spacing,
        offset,
        transform_matrix,
        element_type,
        big_endian,
        compressed,
        compressed_data_size,
        header_size,
        data_file,
    })
}

/// The byte length of the header at the start of `bytes`: up to and including the first line
/// whose key is `ElementDataFile` (or all of `bytes` when that line has no newline).
pub fn header_len(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while start < bytes.len() {
        let rest = bytes.get(start..)?;
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (rest.get(..i)?, start + i + 1),
            None => (rest, bytes.len()),
        };
        let trimmed: &[u8] = {
            let skip = line.iter().take_while(|b| b.is_ascii_whitespace()).count();
            line.get(skip..).unwrap_or(&[])
        };
        const KEY: &[u8] = b"elementdatafile";
        if trimmed.len() >= KEY.len()
            && trimmed
                .get(..KEY.len())
                .is_some_and(|k| k.eq_ignore_ascii_case(KEY))
        {
            let after = trimmed.get(KEY.len()..).unwrap_or(&[]);
            let after_ws = after
                .iter()
                .skip_while(|b| b.is_ascii_whitespace() && **b != b'\n');
            if after_ws.clone().next() == Some(&b'=') {
                return Some(next);
            }
        }
        start = next;
    }
    None
}

// ---------------------------------------------------------------------------------------
// Element decoding, shared with the NIfTI reader.
// ---------------------------------------------------------------------------------------

/// The most that deflate (zlib, gzip) can compress: 1032 output bytes per input byte.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;
/// Bytes decoded per step when streaming data in.
const CHUNK_BYTES: usize = 8 << 20;
/// Elements decoded per rayon task.
const PAR_ELEMENTS: usize = 1 << 16;

/// HU of a floating-point value: rounded (halves away from zero), clamped to `i16`, NaN ->
/// -1024. The flag tells whether the value was clamped or NaN.
#[inline]
pub(crate) fn float_to_hu(v: f64) -> (i16, bool) {
    if v.is_nan() {
        return (-1024, true);
    }
    let r = v.round();
    if r < i16::MIN as f64 {
        (i16::MIN, true)
    } else if r > i16::MAX as f64 {
        (i16::MAX, true)
    } else {
        (r as i16, false)
    }
}

/// HU of an integer value, clamped to `i16`.
#[inline]
fn int_to_hu(v: i128) -> (i16, bool) {
    match i16::try_from(v) {
        Ok(h) => (h, false),
        Err(_) => (if v < 0 { i16::MIN } else { i16::MAX }, true),
    }
}

/// HU of a type that always fits in `i16`.
#[inline]
fn exact_hu<T: Into<i16>>(v: T) -> (i16, bool) {
    (v.into(), false)
}

/// HU of a wider integer type, clamped.
#[inline]
fn wide_hu<T: Into<i128>>(v: T) -> (i16, bool) {
    int_to_hu(v.into())
}

#[inline]
fn f32_hu(v: f32) -> (i16, bool) {
    float_to_hu(f64::from(v))
}

/// How raw elements become HU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decoder {
    pub ty: ElementType,
    pub big_endian: bool,
    /// `value * slope + intercept`, applied in `f64` before rounding (NIfTI `scl_*`).
    pub scale: Option<(f64, f64)>,
}

macro_rules! decode_elements {
    ($t:ty, $bytes:expr, $out:expr, $be:expr, $scale:expr, $int:expr) => {{
        const N: usize = std::mem::size_of::<$t>();
        let mut clamped = 0u64;
        for (o, c) in $out.iter_mut().zip($bytes.chunks_exact(N)) {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            let v = if $be {
                <$t>::from_be_bytes(b)
            } else {
                <$t>::from_le_bytes(b)
            };
            let (h, was_clamped) = match $scale {
                Some((slope, inter)) => float_to_hu(v as f64 * slope + inter),
                None => $int(v),
            };
            *o = h;
            clamped += u64::from(was_clamped);
        }
        clamped
    }};
}

impl Decoder {
    /// Decodes `out.len()` elements from `bytes` (which holds at least that many) into HU,
    /// serially. Returns how many were clamped (or NaN).
    fn decode_serial(&self, bytes: &[u8], out: &mut [i16]) -> u64 {
        let (be, scale) = (self.big_endian, self.scale);
        match self.ty {
            ElementType::I8 => decode_elements!(i8, bytes, out, be, scale, exact_hu::<i8>),
            ElementType::U8 => decode_elements!(u8, bytes, out, be, scale, exact_hu::<u8>),
            ElementType::I16 => decode_elements!(i16, bytes, out, be, scale, exact_hu::<i16>),
            ElementType::U16 => decode_elements!(u16, bytes, out, be, scale, wide_hu::<u16>),
            ElementType::I32 => decode_elements!(i32, bytes, out, be, scale, wide_hu::<i32>),
            ElementType::U32 => decode_elements!(u32, bytes, out, be, scale, wide_hu::<u32>),
            ElementType::I64 => decode_elements!(i64, bytes, out, be, scale, wide_hu::<i64>),
            ElementType::U64 => decode_elements!(u64, bytes, out, be, scale, wide_hu::<u64>),
            ElementType::F32 => decode_elements!(f32, bytes, out, be, scale, f32_hu),
            ElementType::F64 => decode_elements!(f64, bytes, out, be, scale, float_to_hu),
        }
    }

    /// Decodes `out.len()` elements from `bytes` into HU, in parallel.
    pub(crate) fn decode(&self, bytes: &[u8], out: &mut [i16]) -> u64 {
        let size = self.ty.size();
        out.par_chunks_mut(PAR_ELEMENTS)
            .zip(bytes.par_chunks(PAR_ELEMENTS * size))
            .map(|(o, b)| self.decode_serial(b, o))
            .sum()
    }

    /// Reads exactly `out.len()` elements from `reader` and decodes them, streaming in
    /// chunks so that no second full-size buffer is needed. Returns the clamped count; a
    /// short stream is an `UnexpectedEof` error.
    pub(crate) fn read_into(&self, reader: &mut dyn Read, out: &mut [i16]) -> std::io::Result<u64> {
        let size = self.ty.size();
        let per_chunk = (CHUNK_BYTES / size).max(1);
        let mut buf = vec![0u8; per_chunk.min(out.len()) * size];
        let mut clamped = 0;
        for o in out.chunks_mut(per_chunk) {
            let Some(b) = buf.get_mut(..o.len() * size) else {
                return Err(std::io::Error::other("internal: chunk buffer too small"));
            };
            reader.read_exact(b)?;
            clamped += self.decode(b, o);
        }
        Ok(clamped)
    }
}

/// A reader that counts the bytes it has passed on.
pub(crate) struct CountingReader<R> {
    pub inner: R,
    pub count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// The warning recorded when voxels were clamped.
pub(crate) fn clamp_warning(clamped: u64) -> Option<String> {
    (clamped > 0).then(|| {
        format!("{clamped} voxel values were outside the int16 range (or NaN) and were clamped (NaN -> -1024)")
    })
}

/// A zlib or gzip decoder for a compressed stream, chosen by its first bytes.
pub(crate) fn decompressor<'a, R: BufRead + 'a>(
    mut reader: R,
) -> std::io::Result<Box<dyn Read + 'a>> {
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(ZlibDecoder::new(reader)))
    }
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// Resolves `ElementDataFile` against the header's folder, component by component (so a
/// name can use `/` or `\` and cannot leave the folder: [`parse_data_file`] refused `..` and
/// absolute forms already).
fn resolve_data_file(header_path: &Path, name: &str) -> std::result::Result<PathBuf, String> {
    let mut out = header_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for part in name.split(['/', '\\']) {
        if part.is_empty() || part == "." {
            continue;
        }
        let mut comps = Path::new(part).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(c)), None) => out.push(c),
            _ => {
                return Err(format!(
                    "ElementDataFile = {:?} is not a plain relative path",
                    excerpt(name, 80)
                ))
            }
        }
    }
    Ok(out)
}

/// Reads a MetaImage (`.mhd` with its data file, or `.mha`) as an HU volume. See the module
/// documentation for the fields understood and how values are converted.
pub fn read(path: &Path, limits: &Limits) -> Result<Volume> {
    let fail = |message: String| Error::MetaImage {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    limits.check_file_bytes(file_len)?;

    let mut head = Vec::new();
    (&mut file)
        .take(MAX_HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    let header_end = header_len(&head).ok_or_else(|| {
        fail(if head.len() >= MAX_HEADER_BYTES {
            format!("no ElementDataFile line in the first {MAX_HEADER_BYTES} bytes")
        } else {
            "no ElementDataFile line: not a MetaImage header".to_string()
        })
    })?;
    let header = {
        let text = String::from_utf8_lossy(head.get(..header_end).unwrap_or(&[]));
        parse_header(&text).map_err(&fail)?
    };
    drop(head);

    let shape = header.shape_zyx();
    limits.check_shape(shape)?;
    let overflow =
        || fail("DimSize and ElementType give a data size that overflows 64 bits".into());
    let voxels = shape
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n))
        .ok_or_else(overflow)?;
    let expected = voxels
        .checked_mul(header.element_type.size() as u64)
        .ok_or_else(overflow)?;
    let geometry = header.geometry();
    geometry.validate().map_err(|e| fail(e.to_string()))?;

    // Where the data lives.
    let (data_path, mut data_file, data_len, base) = match &header.data_file {
        DataFile::Local => (path.to_path_buf(), file, file_len, header_end as u64),
        DataFile::File(name) => {
            let data_path = resolve_data_file(path, name).map_err(&fail)?;
            let f = File::open(&data_path).map_err(|e| Error::io(&data_path, e))?;
            let len = f.metadata().map_err(|e| Error::io(&data_path, e))?.len();
            limits.check_file_bytes(len)?;
            (data_path, f, len, 0)
        }
    };
    let data_fail = |message: String| Error::MetaImage {
        path: data_path.clone(),
        message,
    };
    let stored = if header.compressed {
        header.compressed_data_size
    } else {
        Some(expected)
    };
    let start = match (header.header_size, stored) {
        (HeaderSize::Bytes(n), _) => base.checked_add(n),
        (HeaderSize::AtEnd, Some(n)) => data_len.checked_sub(n).filter(|s| *s >= base),
        (HeaderSize::AtEnd, None) => None, // refused by parse_header
    }
    .filter(|s| *s <= data_len)
    .ok_or_else(|| {
        data_fail(format!(
            "the file ({data_len} bytes) is shorter than its header says{}",
            if header.header_size == HeaderSize::AtEnd {
                " (HeaderSize = -1: no room for the data)"
            } else {
                ""
            }
        ))
    })?;
    let available = data_len - start;

    // Everything that can be checked without decompressing is checked before allocating.
    if header.compressed {
        if let Some(size) = header.compressed_data_size {
            if size != available {
                return Err(data_fail(format!(
                    "CompressedDataSize is {size} bytes but the file holds {available} bytes of data"
                )));
            }
        }
        if expected
            > available
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(1024)
        {
            return Err(data_fail(format!(
                "{available} bytes of compressed data cannot hold the {expected} bytes DimSize and \
                 ElementType need: the data is shorter than the header says"
            )));
        }
    } else if available != expected {
        return Err(data_fail(format!(
            "data is {available} bytes, {} than the {expected} bytes DimSize and ElementType need",
            if available < expected {
                "shorter"
            } else {
                "longer"
            }
        )));
    }

    let mut hu = vec![
        0i16;
        usize::try_from(voxels)
            .map_err(|_| fail("image too large for this platform".into()))?
    ];
    let decoder = Decoder {
        ty: header.element_type,
        big_endian: header.big_endian,
        scale: None,
    };
    data_file
        .seek(SeekFrom::Start(start))
        .map_err(|e| Error::io(&data_path, e))?;
    let clamped = if header.compressed {
        let limited = BufReader::new((&mut data_file).take(available));
        let inner = decompressor(limited).map_err(|e| Error::io(&data_path, e))?;
        let mut counting = CountingReader { inner, count: 0 };
        let clamped = decoder.read_into(&mut counting, &mut hu).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                data_fail(format!(
                    "decompressed data is {} bytes, shorter than the {expected} bytes DimSize and ElementType need",
                    counting.count
                ))
            } else {
                data_fail(format!("corrupt compressed data: {e}"))
            }
        })?;
        let mut extra = [0u8; 1];
        match counting.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => {
                return Err(data_fail(format!(
                    "decompressed data is longer than the {expected} bytes DimSize and ElementType need"
                )))
            }
            Err(e) => return Err(data_fail(format!("corrupt compressed data: {e}"))),
        }
        clamped
    } else {
        let mut reader = (&mut data_file).take(expected);
        decoder
            .read_into(&mut reader, &mut hu)
            .map_err(|e| Error::io(&data_path, e))?
    };

    let [nz, ny, nx] = shape.map(|n| n as usize); // each fits: their product does
    let hu =
        Array3::from_shape_vec((nz, ny, nx), hu).map_err(|e| fail(format!("internal: {e}")))?;
    Ok(Volume {
        hu,
        geometry,
        info: VolumeInfo {
            format: "metaimage".into(),
            slice_count: nz,
            warnings: clamp_warning(clamped).into_iter().collect(),
            ..VolumeInfo::default()
        },
    })
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// How [`write()`] writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// zlib-compress the data (`CompressedData = True`; `.zraw` for `.mhd`).
    pub compress: bool,
}

/// A number as MetaImage text: the shortest decimal that reads back as the same `f64`.
fn fmt_number(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if (1e-5..1e16).contains(&v.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

fn fmt_numbers(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| fmt_number(*v))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The 3-letter anatomical orientation code ITK writes for a direction matrix (ITK layout:
/// column `c` = world direction of index axis `c`). Each index axis gets the world axis it
/// is most aligned with (the strongest pairs first, so the three letters always differ),
/// named by where it comes *from*: `R`/`L` for world x, `A`/`P` for y, `I`/`S` for z, so
/// the identity is `RAI`.
pub fn anatomical_orientation(itk_direction: &[[f64; 3]; 3]) -> String {
    let mut letters = ['?'; 3];
    let mut rows_used = [false; 3];
    let mut cols_used = [false; 3];
    for _ in 0..3 {
        let mut best: Option<(usize, usize, f64)> = None;
        for (r, row) in itk_direction.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                if rows_used[r] || cols_used[c] {
                    continue;
                }
                if best.is_none_or(|(_, _, b)| v.abs() > b) {
                    best = Some((r, c, v.abs()));
                }
            }
        }
        let Some((r, c, _)) = best else { break };
        rows_used[r] = true;
        cols_used[c] = true;
        let positive = itk_direction[r][c] >= 0.0;
        letters[c] = match (r, positive) {
            (0, true) => 'R',
            (0, false) => 'L',
            (1, true) => 'A',
            (1, false) => 'P',
            (2, true) => 'I',
            _ => 'S',
        };
    }
    letters.iter().collect()
}

/// The header text [`write()`] and [`write_mask()`] write.
fn header_text(
    g: &Geometry,
    [nz, ny, nx]: [usize; 3],
    element: ElementType,
    compressed_size: Option<u64>,
    data_file: &str,
) -> String {
    let itk = g.itk_direction();
    // TransformMatrix values [3c .. 3c+3] = column c of the ITK direction.
    let mut tm = Vec::with_capacity(9);
    for c in 0..3 {
        for row in &itk {
            tm.push(row[c]);
        }
    }
    let mut h = String::new();
    h.push_str("ObjectType = Image\n");
    h.push_str("NDims = 3\n");
    h.push_str("BinaryData = True\n");
    h.push_str("BinaryDataByteOrderMSB = False\n");
    match compressed_size {
        Some(n) => h.push_str(&format!(
            "CompressedData = True\nCompressedDataSize = {n}\n"
        )),
        None => h.push_str("CompressedData = False\n"),
    }
    h.push_str(&format!("TransformMatrix = {}\n", fmt_numbers(&tm)));
    h.push_str(&format!("Offset = {}\n", fmt_numbers(&g.origin_mm)));
    h.push_str("CenterOfRotation = 0 0 0\n");
    h.push_str(&format!(
        "AnatomicalOrientation = {}\n",
        anatomical_orientation(&itk)
    ));
    h.push_str(&format!(
        "ElementSpacing = {}\n",
        fmt_numbers(&g.spacing_xyz())
    ));
    h.push_str(&format!("DimSize = {nx} {ny} {nz}\n"));
    h.push_str(&format!("ElementType = {}\n", element.met_name()));
    h.push_str(&format!("ElementDataFile = {data_file}\n"));
    h
}

/// Writes the voxels as little-endian `i16` in `(z, y, x)` order, x fastest.
pub(crate) fn write_i16_le(hu: &Array3<i16>, w: &mut dyn Write) -> std::io::Result<()> {
    const STEP: usize = 1 << 16;
    let mut buf = Vec::with_capacity(STEP * 2);
    for v in hu.iter() {
        buf.extend_from_slice(&v.to_le_bytes());
        if buf.len() >= STEP * 2 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)
}

/// A file written under a temporary name beside its destination and renamed into place by
/// [`AtomicFile::commit`]; dropped uncommitted, the temporary file is removed.
pub(crate) struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<std::io::BufWriter<File>>,
}

impl AtomicFile {
    pub(crate) fn create(dest: &Path) -> Result<AtomicFile> {
        let name = dest.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a file path", dest.display()))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Writes `bytes` to `dest` atomically (temporary file, sync, rename).
    pub(crate) fn write_bytes(dest: &Path, bytes: &[u8]) -> Result<()> {
        let mut f = AtomicFile::create(dest)?;
        f.write_with(|w| w.write_all(bytes))?;
        f.commit()
    }

    /// Runs `f` on the temporary file; I/O errors name the temporary file.
    pub(crate) fn write_with(
        &mut self,
        f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        match self.file.as_mut() {
            Some(w) => f(w).map_err(|e| Error::io(&self.tmp, e)),
            None => Err(Error::io(
                &self.tmp,
                std::io::Error::other("file already closed"),
            )),
        }
    }

    /// Flushes and syncs the temporary file, then renames it to the destination.
    pub(crate) fn commit(mut self) -> Result<()> {
        if let Some(w) = self.file.take() {
            let file = w
                .into_inner()
                .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::io(&self.dest, e)
        })
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(w) = self.file.take() {
            drop(w);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes a volume as MetaImage `int16` (`MET_SHORT`, little endian): `.mhd` writes the header
/// and `<stem>.raw` (`.zraw` when compressed) beside it, `.mha` one file with
/// `ElementDataFile = LOCAL`. Fields follow ITK's order and conventions.
pub fn write(volume: &Volume, path: &Path, opts: &WriteOptions) -> Result<()> {
    write_voxels(
        &volume.geometry,
        volume.shape(),
        ElementType::I16,
        &|w| write_i16_le(&volume.hu, w),
        path,
        opts,
    )
}

/// Writes a mask (or any label map) as MetaImage `uint8` (`MET_UCHAR`) on `geometry`, the
/// same way as [`write()`].
pub fn write_mask(
    mask: &Array3<u8>,
    geometry: &Geometry,
    path: &Path,
    opts: &WriteOptions,
) -> Result<()> {
    let s = mask.shape();
    let write_u8 = |w: &mut dyn Write| -> std::io::Result<()> {
        match mask.as_slice() {
            Some(bytes) => w.write_all(bytes),
            None => {
                let bytes: Vec<u8> = mask.iter().copied().collect();
                w.write_all(&bytes)
            }
        }
    };
    write_voxels(
        geometry,
        [s[0], s[1], s[2]],
        ElementType::U8,
        &write_u8,
        path,
        opts,
    )
}

type WriteData<'a> = &'a dyn Fn(&mut dyn Write) -> std::io::Result<()>;

fn write_voxels(
    geometry: &Geometry,
    shape: [usize; 3],
    element: ElementType,
    write_raw: WriteData,
    path: &Path,
    opts: &WriteOptions,
) -> Result<()> {
    geometry.validate()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let single_file = if lower.ends_with(".mha") {
        true
    } else if lower.ends_with(".mhd") {
        false
    } else {
        return Err(Error::InvalidArgument(format!(
            "{}: a MetaImage file name must end in .mhd or .mha",
            path.display()
        )));
    };

    // The compressed stream must be known before the header (CompressedDataSize).
    let compressed = if opts.compress {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        write_raw(&mut enc).map_err(|e| Error::io(path, e))?;
        Some(enc.finish().map_err(|e| Error::io(path, e))?)
    } else {
        None
    };
    let compressed_size = compressed.as_ref().map(|c| c.len() as u64);
    let write_data = |w: &mut dyn Write| -> std::io::Result<()> {
        match &compressed {
            Some(c) => w.write_all(c),
            None => write_raw(w),
        }
    };
    let header =
        |data_file: &str| header_text(geometry, shape, element, compressed_size, data_file);

    if single_file {
        let mut out = AtomicFile::create(path)?;
        let header = header("LOCAL");
        out.write_with(|w| {
            w.write_all(header.as_bytes())?;
            write_data(w)
        })?;
        out.commit()
    } else {
        let stem = name.get(..name.len() - 4).unwrap_or_default();
        let data_name = format!("{stem}.{}", if opts.compress { "zraw" } else { "raw" });
        if parse_data_file(&data_name) != Ok(DataFile::File(data_name.clone()))
            || data_name.trim() != data_name
        {
            return Err(Error::InvalidArgument(format!(
                "{}: this name would give a data file name ({data_name:?}) that MetaImage readers cannot read back",
                path.display()
            )));
        }
        let data_path = path.with_file_name(&data_name);
        let mut data = AtomicFile::create(&data_path)?;
        data.write_with(write_data)?;
        let mut header_file = AtomicFile::create(path)?;
        let header = header(&data_name);
        header_file.write_with(|w| w.write_all(header.as_bytes()))?;
        data.commit()?;
        header_file.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::cross;

    const BASIC: &str =
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
        CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -195 -195 -378\n\
        CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\nElementSpacing = 0.7617 0.7617 2.5\n\
        DimSize = 512 512 121\nElementType = MET_SHORT\nElementDataFile = 1.3.6.1.raw\n";

    fn with(key_line: &str, replacement: &str) -> String {
        BASIC
            .lines()
            .map(|l| {
                if l.starts_with(key_line) {
                    replacement.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// An oblique direction (ours, `(z, y, x)` axes), proper (det +1) or improper (det -1).
    fn oblique(flip: f64) -> [[f64; 3]; 3] {
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        let row = [c, s, 0.0];
        let col = [-s * 0.8, c * 0.8, 0.6];
        let n = cross(row, col);
        [[n[0] * flip, n[1] * flip, n[2] * flip], col, row]
    }

    fn test_volume(direction: [[f64; 3]; 3]) -> Volume {
        let mut hu = Array3::<i16>::zeros((4, 5, 6));
        for ((z, y, x), v) in hu.indexed_iter_mut() {
            *v = (z as i16 * 1000 - y as i16 * 37 + x as i16 * 11)
                * if (x + y) % 2 == 0 { 1 } else { -1 };
        }
        hu[[0, 0, 0]] = i16::MIN;
        hu[[3, 4, 5]] = i16::MAX;
        let geometry = Geometry {
            spacing_mm: [2.5, 0.703125, 0.65],
            origin_mm: [-195.3, 12.000001, -378.25],
            direction,
        };
        Volume::new(hu, geometry).unwrap()
    }

    #[test]
    fn parses_a_luna16_header() {
        let h = parse_header(BASIC).unwrap();
        assert_eq!(h.ndims, 3);
        assert_eq!(h.dim_size, vec![512, 512, 121]);
        assert_eq!(h.shape_zyx(), [121, 512, 512]);
        assert_eq!(h.element_type, ElementType::I16);
        assert_eq!(h.data_file, DataFile::File("1.3.6.1.raw".into()));
        assert!(!h.big_endian && !h.compressed);
        let g = h.geometry();
        assert_eq!(g.spacing_mm, [2.5, 0.7617, 0.7617]);
        assert_eq!(g.origin_mm, [-195.0, -195.0, -378.0]);
        assert_eq!(g.direction, crate::volume::IDENTITY_DIRECTION);
    }

    #[test]
    fn synonyms_defaults_and_case() {
        let text = "ndims = 2\ndimsize = 4 3\nelementsize = 0.5 0.25\nPosition = 1 2\n\
                    Rotation = 0 1 -1 0\nelementtype = met_uchar\nElementByteOrderMSB = True\n\
                    HeaderSize = -1\nElementDataFile = sub/x.raw\n";
        let h = parse_header(text).unwrap();
        assert_eq!(h.shape_zyx(), [1, 3, 4]);
        assert_eq!(h.element_spacing, vec![0.5, 0.25]);
        assert!(h.big_endian);
        assert_eq!(h.header_size, HeaderSize::AtEnd);
        let g = h.geometry();
        // index x -> world (0, 1, 0); index y -> world (-1, 0, 0); z stays world z.
        assert_eq!(g.direction[2], [0.0, 1.0, 0.0]);
        assert_eq!(g.direction[1], [-1.0, 0.0, 0.0]);
        assert_eq!(g.direction[0], [0.0, 0.0, 1.0]);
        assert_eq!(g.origin_mm, [1.0, 2.0, 0.0]);
        assert_eq!(g.spacing_mm, [1.0, 0.25, 0.5]);
        // Orientation is a synonym too; ElementSpacing wins over ElementSize.
        let h = parse_header(&with("TransformMatrix", "Orientation = 1 0 0 0 1 0 0 0 1")).unwrap();
        assert_eq!(h.transform_matrix[0], 1.0);
    }

    #[test]
    fn transform_matrix_follows_itk() {
        // Values [3i..3i+3] are the world direction of index axis i.
        let h = parse_header(&with(
            "TransformMatrix",
            "TransformMatrix = 0 1 0 0 0 -1 -1 0 0",
        ))
        .unwrap();
        let g = h.geometry();
        assert_eq!(g.direction[2], [0.0, 1.0, 0.0]); // x
        assert_eq!(g.direction[1], [0.0, 0.0, -1.0]); // y
        assert_eq!(g.direction[0], [-1.0, 0.0, 0.0]); // z
        assert_eq!(anatomical_orientation(&g.itk_direction()), "ASL");
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "ElementDataFile"),
            (
                BASIC.replace("ElementDataFile = 1.3.6.1.raw\n", ""),
                "ElementDataFile",
            ),
            (with("NDims", "NDims = 4"), "4-D"),
            (with("NDims", "NDims = 1"), "2-D and 3-D"),
            (with("NDims", "NDims = three"), "integer"),
            (with("DimSize", "DimSize = 512 512"), "3 values"),
            (with("DimSize", "DimSize = 512 512 0"), "zero"),
            (with("DimSize", "DimSize = 512 512 -3"), "integer"),
            (with("DimSize", "DimSize = 512 512 3 4"), "3 values"),
            (with("ElementSpacing", "ElementSpacing = 1 nan 1"), "finite"),
            (with("ElementSpacing", "ElementSpacing = 1 0 1"), "positive"),
            (with("Offset", "Offset = 1 2"), "3 values"),
            (
                with("TransformMatrix", "TransformMatrix = 1 0 0 0 1 0 0 0"),
                "9 values",
            ),
            (
                with("ElementType", "ElementType = MET_SHORT_ARRAY"),
                "not supported",
            ),
            (with("ElementType", "Comment = none"), "no ElementType"),
            (with("BinaryData ", "BinaryData = False"), "ASCII"),
            (
                with("BinaryDataByteOrderMSB", "BinaryDataByteOrderMSB = maybe"),
                "True or False",
            ),
            (with("ObjectType", "ObjectType = Mesh"), "not Image"),
            (
                with("CenterOfRotation", "this line has no equals sign"),
                "line 8",
            ),
            (with("CenterOfRotation", "Origin = 1 2 3"), "conflicts"),
            (
                with("CenterOfRotation", "ElementNumberOfChannels = 3"),
                "single-channel",
            ),
            (with("CenterOfRotation", "HeaderSize = -2"), "HeaderSize"),
            (
                with("ElementDataFile", "ElementDataFile = /etc/passwd"),
                "absolute",
            ),
            (
                with("ElementDataFile", "ElementDataFile = C:\\data\\x.raw"),
                "absolute",
            ),
            (
                with("ElementDataFile", "ElementDataFile = ../x.raw"),
                "leaves",
            ),
            (
                with("ElementDataFile", "ElementDataFile = a/../../x.raw"),
                "leaves",
            ),
            (
                with("ElementDataFile", "ElementDataFile = a\\..\\x.raw"),
                "leaves",
            ),
            (with("ElementDataFile", "ElementDataFile = LIST"), "LIST"),
            (with("ElementDataFile", "ElementDataFile = LIST 2D"), "LIST"),
            (
                with("ElementDataFile", "ElementDataFile = slice%03d.raw 1 100 1"),
                "pattern",
            ),
            (with("ElementDataFile", "ElementDataFile = "), "empty"),
        ];
        for (text, needle) in cases {
            let err = parse_header(&text).expect_err(&text);
            assert!(
                err.contains(needle),
                "{err:?} should mention {needle:?} for:\n{text}"
            );
        }
        // A duplicate with the same value is fine.
        assert!(parse_header(&with("CenterOfRotation", "Position = -195 -195 -378")).is_ok());
    }

    #[test]
    fn parse_header_survives_garbage() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        let alphabet: Vec<char> = "=\n \tNDimsDimSizeElementDataFileLOCAL0123456789.-e%/\\é\u{0}"
            .chars()
            .collect();
        for len in 0..400 {
            let s: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse_header(&s);
            let _ = header_len(s.as_bytes());
        }
        // Huge claimed sizes parse (limits are checked by `read`) without allocating.
        let h = parse_header(&with(
            "DimSize",
            "DimSize = 18446744073709551615 18446744073709551615 2",
        ))
        .unwrap();
        assert!(Limits::default().check_shape(h.shape_zyx()).is_err());
    }

    #[test]
    fn header_len_finds_the_data() {
        let text = b"NDims = 3\r\n  elementdatafile  = LOCAL\r\n\x00\x01";
        assert_eq!(header_len(text), Some(text.len() - 2));
        assert_eq!(header_len(b"ElementDataFile=x.raw"), Some(21));
        assert_eq!(header_len(b"ElementDataFileX = y\n"), None);
        assert_eq!(header_len(b"NDims = 3\n"), None);
    }

    #[test]
    fn conversion_rounds_clamps_and_maps_nan() {
        assert_eq!(float_to_hu(-1000.5), (-1001, false));
        assert_eq!(float_to_hu(2.5), (3, false));
        assert_eq!(float_to_hu(1e9), (i16::MAX, true));
        assert_eq!(float_to_hu(f64::NEG_INFINITY), (i16::MIN, true));
        assert_eq!(float_to_hu(f64::NAN), (-1024, true));
        let d = Decoder {
            ty: ElementType::U16,
            big_endian: true,
            scale: None,
        };
        let mut out = [0i16; 3];
        assert_eq!(d.decode(&[0x00, 0x10, 0xff, 0xff, 0x7f, 0xff], &mut out), 1);
        assert_eq!(out, [16, i16::MAX, i16::MAX]);
        let d = Decoder {
            ty: ElementType::F32,
            big_endian: false,
            scale: Some((2.0, -1024.0)),
        };
        let bytes: Vec<u8> = [1.25f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = [0i16; 2];
        assert_eq!(d.decode(&bytes, &mut out), 1);
        assert_eq!(out, [-1022, -1024]); // -1021.5 rounds away from zero
    }

    fn assert_same(a: &Volume, b: &Volume) {
        assert_eq!(a.hu, b.hu);
        assert_eq!(a.geometry, b.geometry, "geometry must round-trip exactly");
    }

    #[test]
    fn round_trip_is_exact_for_all_flavours() {
        let dir = tempfile::tempdir().unwrap();
        for (i, direction) in [
            crate::volume::IDENTITY_DIRECTION,
            oblique(1.0),
            oblique(-1.0),
        ]
        .into_iter()
        .enumerate()
        {
            let v = test_volume(direction);
            for (name, compress) in [
                ("a.mhd", false),
                ("b.mhd", true),
                ("c.mha", false),
                ("d.mha", true),
            ] {
                let path = dir.path().join(format!("{i}{name}"));
                write(&v, &path, &WriteOptions { compress }).unwrap();
                let back = read(&path, &Limits::default()).unwrap();
                assert_same(&v, &back);
                assert_eq!(back.info.format, "metaimage");
                assert_eq!(back.info.slice_count, 4);
                assert!(back.info.warnings.is_empty());
            }
            let raw = dir.path().join(format!("{i}a.raw"));
            assert_eq!(std::fs::metadata(raw).unwrap().len(), 4 * 5 * 6 * 2);
            assert!(dir.path().join(format!("{i}b.zraw")).exists());
        }
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn written_header_matches_itk_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.mhd");
        write(
            &test_volume(crate::volume::IDENTITY_DIRECTION),
            &path,
            &WriteOptions::default(),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .map(|l| l.split(" = ").next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "ObjectType",
                "NDims",
                "BinaryData",
                "BinaryDataByteOrderMSB",
                "CompressedData",
                "TransformMatrix",
                "Offset",
                "CenterOfRotation",
                "AnatomicalOrientation",
                "ElementSpacing",
                "DimSize",
                "ElementType",
                "ElementDataFile"
            ]
        );
        assert!(text.contains("TransformMatrix = 1 0 0 0 1 0 0 0 1\n"));
        assert!(text.contains("AnatomicalOrientation = RAI\n"));
        assert!(text.contains("ElementSpacing = 0.65 0.703125 2.5\n"));
        assert!(text.contains("DimSize = 6 5 4\n"));
        assert!(text.ends_with("ElementDataFile = scan.raw\n"));
        let path = dir.path().join("scan2.mha");
        write(
            &test_volume(oblique(-1.0)),
            &path,
            &WriteOptions { compress: true },
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let n = header_len(&bytes).unwrap();
        let text = String::from_utf8_lossy(&bytes[..n]);
        assert!(text.contains("CompressedData = True\nCompressedDataSize = "));
        assert!(text.ends_with("ElementDataFile = LOCAL\n"));
    }

    #[test]
    fn reads_big_endian_float_and_header_size() {
        let dir = tempfile::tempdir().unwrap();
        let values = [-1000.4f64, 0.5, 40000.0, f64::NAN, -0.49, 12.0];
        let mut raw = vec![0xAAu8; 10]; // 10 bytes of junk skipped by HeaderSize
        raw.extend(values.iter().flat_map(|v| v.to_be_bytes()));
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/img.bin"), &raw).unwrap();
        let header =
            "NDims = 3\nDimSize = 3 2 1\nElementType = MET_DOUBLE\nBinaryDataByteOrderMSB = True\n\
                      HeaderSize = 10\nElementDataFile = data/img.bin\n";
        std::fs::write(dir.path().join("img.mhd"), header).unwrap();
        let v = read(&dir.path().join("img.mhd"), &Limits::default()).unwrap();
        assert_eq!(
            v.hu.as_slice().unwrap(),
            &[-1000, 1, i16::MAX, -1024, 0, 12]
        );
        assert_eq!(v.info.warnings.len(), 1, "{:?}", v.info.warnings);
        // HeaderSize = -1: the data is the last bytes of the file.
        std::fs::write(
            dir.path().join("end.mhd"),
            header.replace("HeaderSize = 10", "HeaderSize = -1"),
        )
        .unwrap();
        let v2 = read(&dir.path().join("end.mhd"), &Limits::default()).unwrap();
        assert_eq!(v2.hu, v.hu);
        // 2-D image: one slice.
        std::fs::write(dir.path().join("flat.raw"), [1u8, 2, 3, 4, 5, 6]).unwrap();
        std::fs::write(
            dir.path().join("flat.mhd"),
            "NDims = 2\nDimSize = 3 2\nElementSpacing = 0.5 0.6\nElementType = MET_UCHAR\nElementDataFile = flat.raw\n",
        )
        .unwrap();
        let v = read(&dir.path().join("flat.mhd"), &Limits::default()).unwrap();
        assert_eq!(v.shape(), [1, 2, 3]);
        assert_eq!(v.geometry.spacing_mm, [1.0, 0.6, 0.5]);
        assert_eq!(v.hu[[0, 1, 2]], 6);
    }

    #[test]
    fn all_element_types_are_read() {
        let dir = tempfile::tempdir().unwrap();
        fn le<const N: usize>(values: &[[u8; N]]) -> Vec<u8> {
            values.concat()
        }
        let cases: Vec<(&str, Vec<u8>, [i16; 2])> = vec![
            (
                "MET_CHAR",
                le(&[(-5i8).to_le_bytes(), 100i8.to_le_bytes()]),
                [-5, 100],
            ),
            ("MET_UCHAR", vec![255, 0], [255, 0]),
            (
                "MET_SHORT",
                le(&[(-1000i16).to_le_bytes(), 3000i16.to_le_bytes()]),
                [-1000, 3000],
            ),
            (
                "MET_USHORT",
                le(&[65535u16.to_le_bytes(), 1000u16.to_le_bytes()]),
                [i16::MAX, 1000],
            ),
            (
                "MET_INT",
                le(&[(-40000i32).to_le_bytes(), 5i32.to_le_bytes()]),
                [i16::MIN, 5],
            ),
            (
                "MET_LONG",
                le(&[(-40000i32).to_le_bytes(), 5i32.to_le_bytes()]),
                [i16::MIN, 5],
            ),
            (
                "MET_UINT",
                le(&[4_000_000_000u32.to_le_bytes(), 7u32.to_le_bytes()]),
                [i16::MAX, 7],
            ),
            (
                "MET_ULONG",
                le(&[4_000_000_000u32.to_le_bytes(), 7u32.to_le_bytes()]),
                [i16::MAX, 7],
            ),
            (
                "MET_LONG_LONG",
                le(&[i64::MIN.to_le_bytes(), (-3i64).to_le_bytes()]),
                [i16::MIN, -3],
            ),
            (
                "MET_ULONG_LONG",
                le(&[u64::MAX.to_le_bytes(), 9u64.to_le_bytes()]),
                [i16::MAX, 9],
            ),
            (
                "MET_FLOAT",
                le(&[(-0.5f32).to_le_bytes(), 1.5f32.to_le_bytes()]),
                [-1, 2],
            ),
            (
                "MET_DOUBLE",
                le(&[2.4999f64.to_le_bytes(), (-2.5f64).to_le_bytes()]),
                [2, -3],
            ),
        ];
        for (name, data, expected) in cases {
            let mut file = format!(
                "NDims = 3\nDimSize = 2 1 1\nElementType = {name}\nElementDataFile = LOCAL\n"
            )
            .into_bytes();
            file.extend_from_slice(&data);
            let path = dir.path().join(format!("{name}.mha"));
            std::fs::write(&path, file).unwrap();
            let v = read(&path, &Limits::default()).unwrap();
            assert_eq!(v.hu.as_slice().unwrap(), &expected, "{name}");
            let clamped = expected.iter().any(|h| *h == i16::MIN || *h == i16::MAX);
            assert_eq!(v.info.warnings.len(), usize::from(clamped), "{name}");
        }
    }

    #[test]
    fn data_size_mismatches_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let header =
            "NDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = d.raw\n";
        std::fs::write(dir.path().join("d.mhd"), header).unwrap();
        let path = dir.path().join("d.mhd");
        for (len, word) in [(15usize, "shorter"), (17, "longer"), (0, "shorter")] {
            std::fs::write(dir.path().join("d.raw"), vec![0u8; len]).unwrap();
            match read(&path, &Limits::default()) {
                Err(Error::MetaImage { message, path: p }) => {
                    assert!(message.contains(word), "{message}");
                    assert!(p.ends_with("d.raw"));
                }
                other => panic!("{len} bytes: {other:?}"),
            }
        }
        std::fs::write(dir.path().join("d.raw"), vec![0u8; 16]).unwrap();
        assert!(read(&path, &Limits::default()).is_ok());
        // Missing data file: an I/O error naming it.
        std::fs::remove_file(dir.path().join("d.raw")).unwrap();
        assert!(
            matches!(read(&path, &Limits::default()), Err(Error::Io { path, .. }) if path.ends_with("d.raw"))
        );

        // Compressed: too little, too much, corrupt, wrong CompressedDataSize.
        let v = test_volume(oblique(1.0));
        let mha = dir.path().join("c.mha");
        write(&v, &mha, &WriteOptions { compress: true }).unwrap();
        let bytes = std::fs::read(&mha).unwrap();
        let n = header_len(&bytes).unwrap();
        let header = String::from_utf8_lossy(&bytes[..n]).into_owned();
        let data = &bytes[n..];
        let compress = |len: usize| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&vec![0u8; len]).unwrap();
            e.finish().unwrap()
        };
        let size_line = format!("CompressedDataSize = {}", data.len());
        for (payload, needle) in [
            (compress(4 * 5 * 6 * 2 - 2), "shorter"),
            (compress(4 * 5 * 6 * 2 + 2), "longer"),
            (vec![0x78, 0x9c, 1, 2, 3, 4, 5, 6, 7, 8], "corrupt"),
        ] {
            let h = header.replace(
                &size_line,
                &format!("CompressedDataSize = {}", payload.len()),
            );
            let mut file = h.into_bytes();
            file.extend_from_slice(&payload);
            std::fs::write(&mha, &file).unwrap();
            let err = read(&mha, &Limits::default()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let mut file = bytes.clone();
        file.push(0);
        std::fs::write(&mha, &file).unwrap();
        assert!(read(&mha, &Limits::default())
            .unwrap_err()
            .to_string()
            .contains("CompressedDataSize"));
        // Uncompressed .mha with trailing bytes.
        write(&v, &mha, &WriteOptions::default()).unwrap();
        let mut file = std::fs::read(&mha).unwrap();
        file.extend_from_slice(&[0, 0]);
        std::fs::write(&mha, &file).unwrap();
        assert!(read(&mha, &Limits::default())
            .unwrap_err()
            .to_string()
            .contains("longer"));
    }

    #[test]
    fn data_file_may_not_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("secret.raw"), vec![0u8; 16]).unwrap();
        let secret = dir.path().join("secret.raw");
        for target in [
            "../secret.raw".to_string(),
            secret.display().to_string(),
            "./../secret.raw".into(),
        ] {
            let header = format!(
                "NDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = {target}\n"
            );
            std::fs::write(sub.join("x.mhd"), header).unwrap();
            let err = read(&sub.join("x.mhd"), &Limits::default()).unwrap_err();
            assert!(matches!(err, Error::MetaImage { .. }), "{target}: {err:?}");
        }
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.mha");
        std::fs::write(
            &path,
            "NDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_SHORT\nElementDataFile = LOCAL\n",
        )
        .unwrap();
        // Would be 2e15 bytes: refused by the voxel limit before anything is allocated.
        match read(&path, &Limits::default()) {
            Err(Error::Limit { what, value, .. }) => {
                assert_eq!(what, "voxel count");
                assert_eq!(value, 1_000_000_000_000_000);
            }
            other => panic!("{other:?}"),
        }
        // Without limits, the data-size check refuses it (still without allocating).
        let err = read(&path, &Limits::none()).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
        // Overflowing byte count.
        std::fs::write(
            &path,
            "NDims = 3\nDimSize = 4294967296 4294967296 2\nElementType = MET_DOUBLE\nElementDataFile = LOCAL\n",
        )
        .unwrap();
        let err = read(&path, &Limits::none()).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        // File size limit.
        let small = Limits {
            max_file_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            read(&path, &small),
            Err(Error::Limit {
                what: "file size in bytes",
                ..
            })
        ));
    }

    #[test]
    fn anatomical_orientation_codes() {
        let id = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        assert_eq!(anatomical_orientation(&id), "RAI");
        let flipped = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]];
        assert_eq!(anatomical_orientation(&flipped), "RPI");
        let g = Geometry {
            spacing_mm: [1.0; 3],
            origin_mm: [0.0; 3],
            direction: oblique(-1.0),
        };
        let code = anatomical_orientation(&g.itk_direction());
        assert_eq!(code.len(), 3);
        assert!(!code.contains('?'));
    }

    #[test]
    fn refuses_bad_output_names() {
        let dir = tempfile::tempdir().unwrap();
        let v = test_volume(crate::volume::IDENTITY_DIRECTION);
        assert!(matches!(
            write(&v, &dir.path().join("x.nrrd"), &WriteOptions::default()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(write(&v, &dir.path().join("scan%d.mhd"), &WriteOptions::default()).is_err());
    }
}
