//! A pre-parse guard: checks that no element of a DICOM file declares more bytes than the
//! file holds, before dicom-object parses it. dicom-object allocates (and zero-fills) the
//! declared length of a value before reading it, so a few hundred malformed bytes could
//! otherwise cost gigabytes of memory and seconds of time.
//!
//! The walk is conservative: where it cannot follow the encoding it stops and lets the
//! parser decide; it refuses only a length that exceeds the bytes left in the file.

const UNDEFINED: u32 = 0xFFFF_FFFF;

fn long_length_vr(vr: &[u8]) -> bool {
    matches!(
        vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

fn short_length_vr(vr: &[u8]) -> bool {
    matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// The most bytes a deflated data set may inflate to (a CT frame is 0.5 MB).
const MAX_INFLATED: u64 = 512 << 20;

/// Inflates a deflated data set (raw deflate), keeping every byte that inflates before an
/// error in the stream: the parser reads those before it fails (a fuzzed file hid a 1.4 GB
/// length just before such an error, where a buffered read returns nothing of its call).
fn inflate_data_set(deflated: &[u8]) -> Result<Vec<u8>, String> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut z = Decompress::new(false);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let (consumed, produced) = (z.total_in() as usize, z.total_out());
        let status = z.decompress(
            deflated.get(consumed..).unwrap_or_default(),
            &mut buf,
            FlushDecompress::None,
        );
        // what it inflated before an error counts too
        let n = (z.total_out() - produced) as usize;
        out.extend_from_slice(&buf[..n.min(buf.len())]);
        if out.len() as u64 > MAX_INFLATED {
            return Err(format!(
                "the deflated data set inflates to more than {} MB",
                MAX_INFLATED >> 20
            ));
        }
        match status {
            Ok(Status::StreamEnd) | Err(_) => break,
            Ok(_) if z.total_in() as usize == consumed && n == 0 => break,
            Ok(_) => {}
        }
    }
    Ok(out)
}

/// The VR dicom-encoding's implicit VR decoder gives an element: OW for pixel and overlay
/// data, else the standard dictionary's (relaxed, so `US or SS` is US), else UN.
fn implicit_vr(group: u16, element: u16) -> [u8; 2] {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    use dicom_core::{Tag, VR};
    let vr = if (group, element) == (0x7FE0, 0x0010) || (group >> 8 == 0x60 && element == 0x3000) {
        VR::OW
    } else {
        dicom_dictionary_std::StandardDataDictionary
            .by_tag(Tag(group, element))
            .map(|entry| entry.vr().relaxed())
            .unwrap_or(VR::UN)
    };
    vr.to_bytes()
}

/// The size of one value of a binary VR, as dicom-parser reads it.
fn binary_value_size(vr: &[u8]) -> Option<usize> {
    match vr {
        b"US" | b"SS" | b"OW" => Some(2),
        b"UL" | b"SL" | b"FL" | b"OF" | b"OL" | b"AT" => Some(4),
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => Some(8),
        _ => None,
    }
}

/// A sequence or item the parser has open.
#[derive(Clone, Copy)]
struct Open {
    /// An item (else a sequence).
    item: bool,
    /// Where it ends, if its length is defined.
    end: Option<usize>,
    /// Part of encapsulated pixel data: its items are fragments of raw bytes.
    pixel: bool,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Size of the whole file (the bytes may be a prefix of it).
    file_len: usize,
}

impl Cursor<'_> {
    fn u16(&self, at: usize, big: bool) -> Option<u16> {
        let b = self.bytes.get(at..at + 2)?;
        Some(if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }
    fn u32(&self, at: usize, big: bool) -> Option<u32> {
        let b = self.bytes.get(at..at + 4)?;
        Some(if big {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }
    fn remaining(&self) -> usize {
        self.file_len.saturating_sub(self.pos)
    }
    /// Where a walk that ran out of bytes ends: wanting more of the file, or at its end.
    fn end_of_prefix(&self) -> Walk {
        if self.bytes.len() < self.file_len {
            Walk::NeedMore
        } else {
            Walk::Fits
        }
    }
    /// The end of a sequence or item of length `len` starting here (`None` if undefined),
    /// checked against the file.
    fn end_of(&self, group: u16, element: u16, len: u32) -> Result<Option<usize>, String> {
        if len == UNDEFINED {
            return Ok(None);
        }
        self.check(group, element, len)?;
        Ok(Some(self.pos + len as usize))
    }
    fn check(&self, group: u16, element: u16, len: u32) -> Result<(), String> {
        if len as usize > self.remaining() {
            return Err(format!(
                "element ({group:04X},{element:04X}) declares {len} bytes but only {} remain in the file",
                self.remaining()
            ));
        }
        Ok(())
    }
}

/// The outcome of a walk over a prefix of the file.
#[derive(Debug, PartialEq, Eq)]
pub enum Walk {
    /// Every declared length that was seen fits in the file.
    Fits,
    /// The prefix ended before the walk did: walk again with more of the file.
    NeedMore,
}

/// Walks the elements of a DICOM file (`bytes` is the file or a prefix of it, `file_len`
/// its full size). With `through_pixel_data` the whole file is walked, the fragments of
/// encapsulated pixel data included; otherwise the walk ends where reading up to PixelData
/// does, at the first top-level element from PixelData on.
pub fn check_declared_lengths(
    bytes: &[u8],
    file_len: usize,
    through_pixel_data: bool,
) -> Result<Walk, String> {
    let Some(start) = part10_start(bytes) else {
        return Ok(Walk::Fits); // not Part 10: the parser refuses it without allocating
    };
    let mut c = Cursor {
        bytes,
        pos: start,
        file_len,
    };
    // File meta group: explicit VR little endian. dicom-object reads the group length
    // first, then elements (of any group) until that many bytes are consumed.
    let mut ts = String::new();
    let (Some(g0), Some(e0), Some(vr0)) = (
        c.u16(c.pos, false),
        c.u16(c.pos + 2, false),
        bytes.get(c.pos + 4..c.pos + 6),
    ) else {
        return Ok(c.end_of_prefix());
    };
    if (g0, e0) != (0x0002, 0x0000) {
        return Ok(Walk::Fits); // the parser refuses it at once
    }
    // dicom-object checks the tag and a length of 4, not the VR
    let (len0, header0) = if short_length_vr(vr0) {
        (c.u16(c.pos + 6, false).map(u32::from), 8)
    } else {
        (c.u32(c.pos + 8, false), 12)
    };
    match len0 {
        Some(4) => {}
        Some(_) => return Ok(Walk::Fits),
        None => return Ok(Walk::NeedMore),
    }
    let Some(group_length) = c.u32(c.pos + header0, false) else {
        return Ok(Walk::NeedMore);
    };
    let group_length = group_length as usize;
    c.pos += header0 + 4;
    let meta_start = c.pos;
    while c.pos - meta_start < group_length {
        let (Some(group), Some(element)) = (c.u16(c.pos, false), c.u16(c.pos + 2, false)) else {
            return Ok(c.end_of_prefix());
        };
        let Some(vr) = bytes.get(c.pos + 4..c.pos + 6) else {
            return Ok(Walk::NeedMore);
        };
        if !long_length_vr(vr) && !short_length_vr(vr) {
            return Err(format!(
                "file meta element ({group:04X},{element:04X}) has an invalid VR {:?}",
                String::from_utf8_lossy(vr)
            ));
        }
        let (len, header) = if long_length_vr(vr) {
            match c.u32(c.pos + 8, false) {
                Some(l) => (l, 12),
                None => return Ok(Walk::NeedMore),
            }
        } else {
            match c.u16(c.pos + 6, false) {
                Some(l) => (l as u32, 8),
                None => return Ok(Walk::NeedMore),
            }
        };
        c.pos += header;
        if len == UNDEFINED {
            return Ok(Walk::Fits); // the parser refuses undefined lengths in the meta group
        }
        c.check(group, element, len)?;
        if (group, element) == (0x0002, 0x0010) {
            match bytes.get(c.pos..c.pos + len as usize) {
                Some(v) => {
                    ts = String::from_utf8_lossy(v)
                        .trim_end_matches(['\0', ' '])
                        .to_string()
                }
                None => return Ok(Walk::NeedMore),
            }
        }
        c.pos += len as usize;
    }
    let (implicit, big) = match ts.as_str() {
        "1.2.840.10008.1.2" => (true, false),
        "1.2.840.10008.1.2.2" => (false, true),
        "1.2.840.10008.1.2.1.99" => {
            // Deflated: the data set is raw deflate of explicit VR little endian, which the
            // parser inflates as it reads (a fuzzed 4.6 kB file declared 2.4 GB inside).
            // Walk the inflated bytes, as a file of that transfer syntax.
            if bytes.len() < file_len {
                return Ok(Walk::NeedMore);
            }
            let inflated = inflate_data_set(bytes.get(c.pos..).unwrap_or_default())?;
            let c = Cursor {
                bytes: &inflated,
                pos: 0,
                file_len: inflated.len(),
            };
            return walk_data_set(c, &ts, false, false, through_pixel_data);
        }
        _ => (false, false),
    };
    walk_data_set(c, &ts, implicit, big, through_pixel_data)
}

/// Walks a data set from `c.pos` on, in transfer syntax `ts` (implicit VR or not, big
/// endian or not).
fn walk_data_set(
    mut c: Cursor,
    ts: &str,
    implicit: bool,
    big: bool,
    through_pixel_data: bool,
) -> Result<Walk, String> {
    let bytes = c.bytes;
    // The walk keeps the state of dicom-parser 0.10's data set reader (`DataSetReader`):
    // its open sequences and items, whether it expects an item header next
    // (`in_sequence`) and whether it is to check for the end of a defined-length one
    // (`delimiter_check_pending`). Where it would fail, so does the file, and the walk ends.
    let mut open: Vec<Open> = Vec::new();
    let mut in_sequence = false;
    let mut check_end = false;
    let mut first = true;
    loop {
        if check_end {
            match open.last() {
                Some(&Open {
                    item,
                    end: Some(end),
                    ..
                }) if end == c.pos => {
                    open.pop();
                    in_sequence = item;
                    continue;
                }
                Some(&Open { end: Some(end), .. }) if end < c.pos => return Ok(Walk::Fits),
                _ => check_end = false,
            }
        }
        if c.pos + 8 > bytes.len() {
            return Ok(c.end_of_prefix());
        }
        let (Some(group), Some(element)) = (c.u16(c.pos, big), c.u16(c.pos + 2, big)) else {
            return Ok(Walk::NeedMore);
        };
        if in_sequence {
            // an item header: an item, an item delimiter or a sequence delimiter
            let len = c.u32(c.pos + 4, big).unwrap_or(0);
            c.pos += 8;
            match (group, element) {
                (0xFFFE, 0xE000) => {
                    let Some(&Open { pixel, .. }) = open.last() else {
                        return Ok(Walk::Fits);
                    };
                    let end = c.end_of(group, element, len)?;
                    open.push(Open {
                        item: true,
                        end,
                        pixel,
                    });
                    in_sequence = false;
                    check_end = len == 0;
                }
                (0xFFFE, 0xE00D) => {
                    open.pop();
                    in_sequence = true;
                    check_end = true;
                }
                (0xFFFE, 0xE0DD) => {
                    open.pop();
                    in_sequence = false;
                    check_end = true;
                }
                _ => return Ok(Walk::Fits),
            }
            continue;
        }
        if let Some(&Open {
            item: true,
            pixel: true,
            end,
        }) = open.last()
        {
            // a fragment of encapsulated pixel data (or its offset table): raw bytes to the
            // end of its item, whose length was checked at its header
            let Some(end) = end else {
                return Ok(Walk::Fits); // the parser refuses an undefined fragment length
            };
            c.pos = end;
            check_end = true;
            continue;
        }
        if (group, element) == (0xFFFE, 0xE00D) {
            // an item delimiter where an element is expected: it closes whatever is open
            c.pos += 8;
            if open.pop().is_some() {
                in_sequence = true;
                check_end = true;
            }
            continue;
        }
        if !through_pixel_data && open.is_empty() && (group, element) >= (0x7FE0, 0x0010) {
            // dicom-object reading up to PixelData stops at the first top-level element from
            // there on, before its value
            return Ok(Walk::Fits);
        }
        let (vr, len, header): ([u8; 2], u32, usize) = if group == 0xFFFE {
            if !matches!(element, 0xE000 | 0xE0DD) {
                // No other (FFFE,xxxx) tag exists. A fuzzed file hid a 2.5 GB length
                // after an (FFFE,E10D); such a tag is refused.
                return Err(format!(
                    "element (FFFE,{element:04X}) is not an item or a delimiter"
                ));
            }
            // an item or sequence delimiter tag where an element is expected: the parser
            // reads it as an element of VR UN with a 4-byte length
            (*b"UN", c.u32(c.pos + 4, big).unwrap_or(0), 8)
        } else if implicit {
            (
                implicit_vr(group, element),
                c.u32(c.pos + 4, big).unwrap_or(0),
                8,
            )
        } else {
            let raw = [bytes[c.pos + 4], bytes[c.pos + 5]];
            if first && !raw.iter().all(u8::is_ascii_uppercase) {
                // dicom-object would read it as explicit VR anyway and misparse it
                return Err(format!(
                    "the data set is not encoded as its transfer syntax {ts} says: element \
                     ({group:04X},{element:04X}) has no explicit VR"
                ));
            }
            // dicom-encoding reads a VR it does not know (letters or not) as UN: two reserved
            // bytes, then a 4-byte length. Walking on as it does keeps the guard on the
            // parser's track (a fuzzed file once hid a 1.1 GB length behind such VRs).
            let vr = if long_length_vr(&raw) || short_length_vr(&raw) {
                raw
            } else {
                *b"UN"
            };
            if long_length_vr(&vr) {
                match c.u32(c.pos + 8, big) {
                    Some(l) => (vr, l, 12),
                    None => return Ok(Walk::NeedMore),
                }
            } else {
                (vr, c.u16(c.pos + 6, big).unwrap_or(0) as u32, 8)
            }
        };
        c.pos += header;
        first = false;
        if len == UNDEFINED {
            if (group, element) == (0x7FE0, 0x0010) {
                // Encapsulated pixel data, at any depth (an icon image may have it too): the
                // parser reads the first item header at once.
                if c.pos + 8 > bytes.len() {
                    return Ok(c.end_of_prefix());
                }
                let (Some(g), Some(e), Some(l)) = (
                    c.u16(c.pos, big),
                    c.u16(c.pos + 2, big),
                    c.u32(c.pos + 4, big),
                ) else {
                    return Ok(Walk::NeedMore);
                };
                c.pos += 8;
                match (g, e) {
                    (0xFFFE, 0xE000) => {
                        let end = c.end_of(g, e, l)?;
                        open.push(Open {
                            item: false,
                            end: None,
                            pixel: true,
                        });
                        open.push(Open {
                            item: true,
                            end,
                            pixel: true,
                        });
                        check_end = l == 0;
                    }
                    (0xFFFE, 0xE0DD) => {} // empty; the data set goes on
                    _ => return Ok(Walk::Fits),
                }
                continue;
            }
            if !implicit && group != 0xFFFE && vr == *b"UN" {
                // Its items are implicit VR little endian; dicom-object 0.10 would read them in
                // the outer explicit encoding, misparse them and allocate for garbage lengths.
                return Err(format!(
                    "element ({group:04X},{element:04X}) is UN of undefined length (an implicit VR \
                     sequence inside an explicit VR file), which lungcad's DICOM parser cannot read"
                ));
            }
            // SQ, or another element of undefined length: read as a sequence
            open.push(Open {
                item: false,
                end: None,
                pixel: false,
            });
            in_sequence = true;
            continue;
        }
        c.check(group, element, len)?;
        if vr == *b"SQ" {
            // a defined-length sequence: its items follow
            open.push(Open {
                item: false,
                end: Some(c.pos + len as usize),
                pixel: false,
            });
            in_sequence = true;
            check_end = len == 0;
            continue;
        }
        if let Some(size) = binary_value_size(&vr) {
            if !(len as usize).is_multiple_of(size) {
                // dicom-parser 0.10 reads len / size values but counts len bytes read, so
                // the rest of the file would be parsed from the wrong offset (a fuzzed
                // file then hid a 1.9 GB length)
                return Err(format!(
                    "element ({group:04X},{element:04X}) of VR {} has a length of {len} bytes, not a multiple of its {size}-byte values",
                    String::from_utf8_lossy(&vr)
                ));
            }
        }
        c.pos += len as usize;
        check_end = true;
    }
}

/// Where the file meta group of a Part 10 file starts: after "DICM", behind the 128-byte
/// preamble or (without one) at the start; `None` for a file without "DICM".
pub(crate) fn part10_start(bytes: &[u8]) -> Option<usize> {
    if bytes.get(128..132) == Some(b"DICM") {
        Some(132)
    } else if bytes.get(0..4) == Some(b"DICM") {
        Some(4)
    } else {
        None
    }
}

/// The transfer syntax of a file that holds a data set without the Part 10 header (no
/// preamble, no "DICM", no file meta group), as ACR-NEMA files and some archives' exports
/// do: explicit VR little endian when its first element carries a VR, else implicit VR
/// little endian, the default transfer syntax (PS3.5 10.1), as GDCM and pydicom's
/// `force=True` read them. Only a file that starts with a short element of group 0008 (at
/// most 1024 bytes) followed by a later element of group 0008, as such images usually
/// start, is taken for one, so that text, raw voxels and other formats are not.
pub(crate) fn headless_syntax(bytes: &[u8]) -> Option<&'static str> {
    if part10_start(bytes).is_some() {
        return None;
    }
    let c = Cursor {
        bytes,
        pos: 0,
        file_len: bytes.len(),
    };
    let u16_at = |at: usize| c.u16(at, false);
    let u32_at = |at: usize| c.u32(at, false);
    if u16_at(0)? != 0x0008 {
        return None;
    }
    let first_element = u16_at(2)?;
    let vr = bytes.get(4..6)?;
    let (ts, value_at, len) = if short_length_vr(vr) {
        ("1.2.840.10008.1.2.1", 8, u32::from(u16_at(6)?))
    } else if long_length_vr(vr) {
        ("1.2.840.10008.1.2.1", 12, u32_at(8)?)
    } else {
        ("1.2.840.10008.1.2", 8, u32_at(4)?)
    };
    // the first attributes of group 0008 (its length, SpecificCharacterSet, ImageType...)
    // are short
    if len > 1024 {
        return None;
    }
    let next = value_at + len as usize;
    (u16_at(next)? == 0x0008 && u16_at(next + 2)? > first_element).then_some(ts)
}

/// "DICM" and a file meta group (explicit VR little endian) that names transfer syntax
/// `ts`, with empty Media Storage SOP Class and Instance UIDs.
pub(crate) fn file_meta_group(ts: &str) -> Vec<u8> {
    let mut ts_bytes = ts.as_bytes().to_vec();
    if ts_bytes.len() % 2 == 1 {
        ts_bytes.push(0);
    }
    let mut group = Vec::with_capacity(64);
    // (0002,0001) OB: the meta information version, 00 01
    group.extend_from_slice(&[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1]);
    // (0002,0002) and (0002,0003) UI, empty
    group.extend_from_slice(&[0x02, 0x00, 0x02, 0x00, b'U', b'I', 0, 0]);
    group.extend_from_slice(&[0x02, 0x00, 0x03, 0x00, b'U', b'I', 0, 0]);
    // (0002,0010) UI: the transfer syntax
    group.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
    group.extend_from_slice(&(ts_bytes.len() as u16).to_le_bytes());
    group.extend_from_slice(&ts_bytes);
    let mut out = b"DICM".to_vec();
    out.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
    out.extend_from_slice(&(group.len() as u32).to_le_bytes());
    out.extend_from_slice(&group);
    out
}

/// What [`check_file`] read of a file that passed.
pub struct Checked {
    /// The bytes read: a prefix of the file, or all of it.
    pub bytes: Vec<u8>,
    /// Whether `bytes` hold the whole file.
    pub whole: bool,
    /// The transfer syntax of a file without the Part 10 header ([`headless_syntax`]),
    /// whose `bytes` start with a file meta group that names it.
    pub headless: Option<&'static str>,
}

/// Reads as much of `path` as the guard needs and checks it. Returns the bytes read (a
/// prefix of the file, or all of it with `through_pixel_data`), so the parser can read
/// them from memory instead of reading the file again.
///
/// A data set stored without the Part 10 header ([`headless_syntax`]) comes back behind a
/// file meta group naming its transfer syntax, so that it is checked and parsed like any
/// other file.
pub fn check_file(path: &std::path::Path, through_pixel_data: bool) -> Result<Checked, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut file_len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    let mut prefix = Vec::with_capacity(file_len.min(64 << 10));
    (&mut f)
        .take(64 << 10)
        .read_to_end(&mut prefix)
        .map_err(|e| e.to_string())?;
    let headless = headless_syntax(&prefix);
    if let Some(ts) = headless {
        let meta = file_meta_group(ts);
        file_len += meta.len();
        prefix.splice(0..0, meta);
    }
    if !through_pixel_data && check_declared_lengths(&prefix, file_len, false)? == Walk::Fits {
        return Ok(Checked {
            whole: prefix.len() >= file_len,
            bytes: prefix,
            headless,
        });
    }
    f.read_to_end(&mut prefix).map_err(|e| e.to_string())?;
    check_declared_lengths(&prefix, prefix.len(), through_pixel_data)?;
    Ok(Checked {
        bytes: prefix,
        whole: true,
        headless,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part10(ts: &str, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 128];
        v.extend_from_slice(b"DICM");
        let mut ts_bytes = ts.as_bytes().to_vec();
        if ts_bytes.len() % 2 == 1 {
            ts_bytes.push(0);
        }
        v.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        v.extend_from_slice(&(8 + ts_bytes.len() as u32).to_le_bytes());
        v.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        v.extend_from_slice(&(ts_bytes.len() as u16).to_le_bytes());
        v.extend_from_slice(&ts_bytes);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn accepts_consistent_and_refuses_oversized_lengths() {
        // (0028,0010) US 2 bytes, then (0010,0010) PN declaring 0x4000 bytes
        let mut ok = vec![0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 0, 2];
        let f = part10("1.2.840.10008.1.2.1", &ok);
        assert_eq!(check_declared_lengths(&f, f.len(), true), Ok(Walk::Fits));
        ok.extend_from_slice(&[
            0x08, 0x00, 0x16, 0x00, b'U', b'N', 0, 0, 0xF0, 0xFF, 0xFF, 0x7F,
        ]);
        let f = part10("1.2.840.10008.1.2.1", &ok);
        let e = check_declared_lengths(&f, f.len(), true).unwrap_err();
        assert!(e.contains("(0008,0016)"), "{e}");
        // implicit VR
        let body = [0x08, 0x00, 0x16, 0x00, 0x00, 0x00, 0x00, 0x10];
        let f = part10("1.2.840.10008.1.2", &body);
        assert!(check_declared_lengths(&f, f.len(), true).is_err());
        // a prefix asks for more
        let f = part10(
            "1.2.840.10008.1.2.1",
            &[0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 0, 2],
        );
        assert_eq!(
            check_declared_lengths(&f[..f.len() - 4], f.len(), true),
            Ok(Walk::NeedMore)
        );
        // not part 10: left to the parser
        assert_eq!(check_declared_lengths(b"hello", 5, true), Ok(Walk::Fits));
        // found by fuzzing: a group length read from an AE element, then an element of a
        // 1.2 GB declared length that dicom-object's meta reader would allocate
        let f = b"DICM\x02\x00\x00\x00AE\x04\x00\x00\x00\xfaMx\x00\x00\x00AE\x04\x00\x00\x92CM\x02\x00\x00\x00AE\x04\x00DICM\x02\x00\x02\x00E\x00\x00A\x00%DICMD";
        assert!(check_declared_lengths(f, f.len(), false).is_err());
        // found by fuzzing (a mutated SR): elements whose VR bytes are not a VR, which the
        // parser reads as UN (a 4-byte length), the last declaring 1.1 GB
        let mut body = vec![0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 0, 2];
        for _ in 0..3 {
            body.extend_from_slice(&[0x40, 0x00, 0x40, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        let fits = part10("1.2.840.10008.1.2.1", &body);
        assert_eq!(
            check_declared_lengths(&fits, fits.len(), true),
            Ok(Walk::Fits)
        );
        body.extend_from_slice(&[
            0x00, 0x00, 0x00, 0x00, 0, b'D', 0, 0, 0x00, 0x44, 0x49, 0x43,
        ]);
        let f = part10("1.2.840.10008.1.2.1", &body);
        let e = check_declared_lengths(&f, f.len(), false).unwrap_err();
        assert!(e.contains("(0000,0000) declares 1128875008 bytes"), "{e}");
        // ... and an unknown VR of undefined length is read as UN too
        let mut undefined = body[..body.len() - 12].to_vec();
        undefined.extend_from_slice(&[
            0x09, 0x00, 0x10, 0x00, b'Z', b'Z', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        let f = part10("1.2.840.10008.1.2.1", &undefined);
        let e = check_declared_lengths(&f, f.len(), false).unwrap_err();
        assert!(e.contains("UN of undefined length"), "{e}");
        // found by fuzzing (a mutated enhanced CT): an item delimiter whose element number
        // was changed, (FFFE,E10D), after which the parser's nesting went astray and it read
        // on past PixelData into a 2.5 GB length; such a tag is refused
        let mut body = vec![
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        body.extend_from_slice(&[0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 0, 2]);
        let mut delimited = body.clone();
        delimited.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        delimited.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let fits = part10("1.2.840.10008.1.2.1", &delimited);
        assert_eq!(
            check_declared_lengths(&fits, fits.len(), true),
            Ok(Walk::Fits)
        );
        body.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE1, 0, 0, 0, 0]);
        let f = part10("1.2.840.10008.1.2.1", &body);
        let e = check_declared_lengths(&f, f.len(), false).unwrap_err();
        assert!(e.contains("(FFFE,E10D)"), "{e}");
        // found by fuzzing (a mutated CT): a TM element's VR turned into SL, 14 bytes long;
        // the parser reads 3 values (12 bytes) and parses the rest 2 bytes off
        let tm = [0x18, 0x00, 0x01, 0x12, b'T', b'M', 14, 0];
        let mut body = tm.to_vec();
        body.extend_from_slice(b"073635.000000 ");
        let f = part10("1.2.840.10008.1.2.1", &body);
        assert_eq!(check_declared_lengths(&f, f.len(), false), Ok(Walk::Fits));
        body[4..6].copy_from_slice(b"SL");
        let f = part10("1.2.840.10008.1.2.1", &body);
        let e = check_declared_lengths(&f, f.len(), false).unwrap_err();
        assert!(e.contains("(0018,1201) of VR SL has a length of 14"), "{e}");
        // found by fuzzing (a mutated deflated file): a 2.4 GB length inside the deflated
        // data set
        let deflate = |body: &[u8]| {
            use std::io::Write;
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).unwrap();
            part10("1.2.840.10008.1.2.1.99", &e.finish().unwrap())
        };
        let mut body = vec![0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 0, 2];
        let f = deflate(&body);
        assert_eq!(check_declared_lengths(&f, f.len(), true), Ok(Walk::Fits));
        body.extend_from_slice(&[
            0x08, 0x00, 0x16, 0x00, b'O', b'B', 0, 0, 0x8D, 0x6D, 0x8E, 0x8D,
        ]);
        let f = deflate(&body);
        let e = check_declared_lengths(&f, f.len(), false).unwrap_err();
        assert!(e.contains("(0008,0016) declares 2374921613 bytes"), "{e}");
        // found by fuzzing (another mutated deflated file): a 1.4 GB length just before
        // the stream turns corrupt, which a read of many bytes at once never returns
        let mut body = vec![0x28, 0x00, 0x02, 0x00, b'U', b'S', 2, 0, 1, 0];
        body.extend_from_slice(&[
            0x28, 0x00, 0x04, 0x4E, b'V', b'E', 0, 0, 0x49, 0x47, 0x41, 0x54,
        ]);
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let mut stream = Vec::with_capacity(1024);
        z.compress_vec(&body, &mut stream, flate2::FlushCompress::Sync)
            .unwrap();
        stream.extend_from_slice(&[0xFF; 16]); // a block of the reserved type: an error
        let f = part10("1.2.840.10008.1.2.1.99", &stream);
        let e = check_declared_lengths(&f, f.len(), false).unwrap_err();
        assert!(e.contains("(0028,4E04) declares 1413564233 bytes"), "{e}");
    }

    /// An implicit VR element: tag and a 4-byte length, then the value.
    fn implicit(group: u16, element: u16, len: u32, value: &[u8]) -> Vec<u8> {
        let mut v = group.to_le_bytes().to_vec();
        v.extend_from_slice(&element.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn implicit_vr_elements_get_their_dictionary_vr() {
        const IMPLICIT: &str = "1.2.840.10008.1.2";
        // (0008,1140) is an SQ: the parser reads the items inside a defined-length sequence,
        // so the walk does too. An item hiding a 2 GB (0008,1150) made the loader allocate
        // 2.1 GB for a 218-byte file before the walk looked inside.
        let item = |len: u32| {
            let inner = implicit(0x0008, 0x1150, len, b"1.2\0");
            implicit(0xFFFE, 0xE000, inner.len() as u32, &inner)
        };
        let sq = |len: u32| {
            let item = item(len);
            let mut v = implicit(0x0008, 0x0060, 2, b"CT");
            v.extend(implicit(0x0008, 0x1140, item.len() as u32, &item));
            v.extend(implicit(0x0020, 0x0013, 2, b"1 "));
            part10(IMPLICIT, &v)
        };
        let f = sq(4);
        assert_eq!(check_declared_lengths(&f, f.len(), true), Ok(Walk::Fits));
        let f = sq(0x7FFF_FFF0);
        let e = check_declared_lengths(&f, f.len(), false).unwrap_err();
        assert!(e.contains("(0008,1150) declares 2147483632 bytes"), "{e}");
        // (0028,0010) Rows is US: 3 bytes would put the parser one byte off the walk
        let mut body = implicit(0x0028, 0x0010, 2, &[0, 2]);
        let f = part10(IMPLICIT, &body);
        assert_eq!(check_declared_lengths(&f, f.len(), true), Ok(Walk::Fits));
        body = implicit(0x0028, 0x0010, 3, &[0, 2, 0]);
        let f = part10(IMPLICIT, &body);
        let e = check_declared_lengths(&f, f.len(), true).unwrap_err();
        assert!(e.contains("(0028,0010) of VR US has a length of 3"), "{e}");
        // a private element is UN, any length; undefined-length elements are sequences
        let mut body = implicit(0x0029, 0x1010, 3, &[1, 2, 3]);
        body.extend(implicit(0x0029, 0x1020, UNDEFINED, &[]));
        body.extend(implicit(0xFFFE, 0xE000, UNDEFINED, &[]));
        body.extend(implicit(0x0028, 0x0010, 2, &[0, 2]));
        body.extend(implicit(0xFFFE, 0xE00D, 0, &[]));
        body.extend(implicit(0xFFFE, 0xE0DD, 0, &[]));
        let f = part10(IMPLICIT, &body);
        assert_eq!(check_declared_lengths(&f, f.len(), true), Ok(Walk::Fits));
    }

    /// An explicit VR LE element header (long form for the VRs that have it).
    fn explicit(group: u16, element: u16, vr: &[u8; 2], len: u32) -> Vec<u8> {
        let mut v = group.to_le_bytes().to_vec();
        v.extend_from_slice(&element.to_le_bytes());
        v.extend_from_slice(vr);
        if long_length_vr(vr) {
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&len.to_le_bytes());
        } else {
            v.extend_from_slice(&(len as u16).to_le_bytes());
        }
        v
    }

    #[test]
    fn nesting_is_followed_as_the_parser_follows_it() {
        const EXPLICIT: &str = "1.2.840.10008.1.2.1";
        let pixel_data = |len: u32| explicit(0x7FE0, 0x0010, b"OW", len);
        let huge = 0x7FFF_FFF0;
        // Sequences and items of undefined length, closed by their delimiters: the
        // PixelData after them is the top-level one, where reading up to it stops.
        let mut body = explicit(0x0008, 0x1115, b"SQ", UNDEFINED);
        body.extend(implicit(0xFFFE, 0xE000, UNDEFINED, &[]));
        body.extend(explicit(0x0028, 0x0010, b"US", 2));
        body.extend_from_slice(&[0, 2]);
        body.extend(implicit(0xFFFE, 0xE00D, 0, &[]));
        body.extend(implicit(0xFFFE, 0xE0DD, 0, &[]));
        body.extend(pixel_data(huge));
        let f = part10(EXPLICIT, &body);
        assert_eq!(check_declared_lengths(&f, f.len(), false), Ok(Walk::Fits));
        assert!(check_declared_lengths(&f, f.len(), true).is_err());
        // ... and of defined lengths, ended where their lengths say
        let us = [explicit(0x0028, 0x0010, b"US", 2), vec![0, 2]].concat();
        let item = [implicit(0xFFFE, 0xE000, us.len() as u32, &[]), us].concat();
        let mut body = explicit(0x0008, 0x1115, b"SQ", item.len() as u32);
        body.extend(item);
        body.extend(pixel_data(huge));
        let f = part10(EXPLICIT, &body);
        assert_eq!(check_declared_lengths(&f, f.len(), false), Ok(Walk::Fits));
        assert!(check_declared_lengths(&f, f.len(), true).is_err());
        // A sequence delimiter inside an item is read as an empty element there, closing
        // nothing, so the PixelData after it is inside the item and read in full. The walk
        // took it for the top-level one and stopped: 2.1 GB and 4.8 s for a 238-byte file.
        let mut body = explicit(0x0008, 0x1115, b"SQ", UNDEFINED);
        body.extend(implicit(0xFFFE, 0xE000, UNDEFINED, &[]));
        body.extend(implicit(0xFFFE, 0xE0DD, 0, &[]));
        body.extend(pixel_data(huge));
        body.extend_from_slice(&[0; 16]);
        let f = part10(EXPLICIT, &body);
        let e = check_declared_lengths(&f, f.len(), false).unwrap_err();
        assert!(e.contains("(7FE0,0010) declares 2147483632 bytes"), "{e}");
        // An item delimiter outside any sequence is skipped; the PixelData after it is at
        // the top level.
        let mut body = implicit(0xFFFE, 0xE00D, 0, &[]);
        body.extend(pixel_data(huge));
        let f = part10(EXPLICIT, &body);
        assert_eq!(check_declared_lengths(&f, f.len(), false), Ok(Walk::Fits));
        assert!(check_declared_lengths(&f, f.len(), true).is_err());
        // A defined-length item that ends before its last element does: the parser fails
        // there, and so does the walk, before the huge PixelData.
        let us = [explicit(0x0028, 0x0010, b"US", 2), vec![0, 2]].concat();
        let item = [implicit(0xFFFE, 0xE000, 4, &[]), us].concat();
        let mut body = explicit(0x0008, 0x1115, b"SQ", item.len() as u32);
        body.extend(item);
        body.extend(pixel_data(huge));
        let f = part10(EXPLICIT, &body);
        assert_eq!(check_declared_lengths(&f, f.len(), true), Ok(Walk::Fits));
    }

    #[test]
    fn encapsulated_fragments_are_checked() {
        let mut body = vec![
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0x00, 0x00]); // 65535-byte fragment
        let f = part10("1.2.840.10008.1.2.4.50", &body);
        assert_eq!(check_declared_lengths(&f, f.len(), false), Ok(Walk::Fits));
        assert!(check_declared_lengths(&f, f.len(), true).is_err());

        // Fragments inside an icon image: raw bytes, not elements, and the data set goes on
        // after their delimiter, up to the top-level pixel data and past it.
        let icon = |trailing_len: u32| {
            let mut v = explicit(0x0088, 0x0200, b"SQ", UNDEFINED);
            v.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
            v.extend(explicit(0x7FE0, 0x0010, b"OB", UNDEFINED));
            v.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
            // a fragment whose bytes read as an element would declare 2 GB
            v.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 12, 0, 0, 0]);
            v.extend(explicit(0x0009, 0x0010, b"OB", 0x7FFF_FFF0));
            v.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            v.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            v.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            v.extend(explicit(0x7FE0, 0x0010, b"OB", UNDEFINED));
            v.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
            v.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 2, 0, 0, 0, 0xFF, 0xD9]);
            v.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            v.extend(explicit(0xFFFC, 0xFFFC, b"OB", trailing_len));
            part10("1.2.840.10008.1.2.4.50", &v)
        };
        let f = icon(0);
        assert_eq!(check_declared_lengths(&f, f.len(), false), Ok(Walk::Fits));
        assert_eq!(check_declared_lengths(&f, f.len(), true), Ok(Walk::Fits));
        // trailing padding after the pixel data declaring 2 GB: the whole-file read sees it
        let f = icon(0x7FFF_FFF0);
        assert_eq!(check_declared_lengths(&f, f.len(), false), Ok(Walk::Fits));
        let e = check_declared_lengths(&f, f.len(), true).unwrap_err();
        assert!(e.contains("(FFFC,FFFC) declares"), "{e}");
    }

    #[test]
    fn headless_data_sets_get_a_file_meta_group() {
        // implicit VR: (0008,0000) UL 4, then (0008,0060) CS "CT"
        let implicit = [
            8, 0, 0, 0, 4, 0, 0, 0, 10, 0, 0, 0, 8, 0, 0x60, 0, 2, 0, 0, 0, b'C', b'T',
        ];
        // explicit VR: (0008,0008) CS "AXIAL ", then (0008,0060) CS "CT"
        let explicit = [
            8, 0, 8, 0, b'C', b'S', 6, 0, b'A', b'X', b'I', b'A', b'L', b' ', //
            8, 0, 0x60, 0, b'C', b'S', 2, 0, b'C', b'T',
        ];
        assert_eq!(headless_syntax(&implicit), Some("1.2.840.10008.1.2"));
        assert_eq!(headless_syntax(&explicit), Some("1.2.840.10008.1.2.1"));
        for not_headless in [
            &b"# a README"[..],
            &b"\x08\x00"[..],
            &[0x28, 0, 0x10, 0, b'U', b'S', 2, 0, 0, 2][..], // not group 0008
            &explicit[..14],                                 // one element only
            &implicit[..12],
            // raw voxels 8, 0, 8, 8: a first "length" of 0x0008_0008 bytes
            &[8, 0, 0, 0, 8, 0, 8, 0, 8, 0, 9, 0, 8, 0, 0x10, 0][..],
            // the second element not of group 0008, or not after the first
            &[
                8, 0, 0x60, 0, b'C', b'S', 2, 0, b'C', b'T', 0x10, 0, 0x10, 0,
            ][..],
            &[8, 0, 0x60, 0, b'C', b'S', 2, 0, b'C', b'T', 8, 0, 0x20, 0][..],
            &part10("1.2.840.10008.1.2", &implicit)[..],
            &b"DICM\x08\x00\x60\x00CS\x02\x00CT"[..],
        ] {
            assert_eq!(headless_syntax(not_headless), None, "{not_headless:?}");
        }
        // with the group in front, dicom-object reads both and the guard walks them
        for (body, ts) in [
            (&implicit[..], "1.2.840.10008.1.2"),
            (&explicit[..], "1.2.840.10008.1.2.1"),
        ] {
            let mut f = file_meta_group(ts);
            f.extend_from_slice(body);
            assert_eq!(check_declared_lengths(&f, f.len(), true), Ok(Walk::Fits));
            let obj = dicom_object::OpenFileOptions::new()
                .from_reader(&f[..])
                .unwrap();
            assert_eq!(obj.meta().transfer_syntax(), ts);
            let modality = obj.element(dicom_dictionary_std::tags::MODALITY).unwrap();
            assert_eq!(modality.to_str().unwrap(), "CT");
        }
        // and a length past the end is still refused
        let mut f = file_meta_group("1.2.840.10008.1.2");
        f.extend_from_slice(&implicit[..12]);
        f.extend_from_slice(&[8, 0, 0x60, 0, 0, 0, 0, 0x10, b'C', b'T']);
        assert!(check_declared_lengths(&f, f.len(), true).is_err());
    }
}
