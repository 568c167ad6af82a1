//! Sequential DCT JPEG (ISO 10918-1 processes 1, 2 and 4, Huffman coded) for images of one
//! component at 8 or 12 bits: what DICOM's JPEG Extended transfer syntax
//! (1.2.840.10008.1.2.4.51) holds for 12-bit CT. dicom-rs hands JPEG to the `jpeg-decoder`
//! crate, which refuses 12-bit DCT data, so lungcad decodes it here.
//!
//! The inverse DCT is the IJG library's integer one (`jpeg_idct_islow` of libjpeg-turbo's
//! `jidctint.c`, with its rounding and range limiting), so the samples are those of the
//! libjpeg family that DCMTK, GDCM and libjpeg-turbo build on. Other decoders of the same
//! stream may differ by one in a few samples: JPEG does not fix the inverse DCT's rounding.
//!
//! The input is untrusted: every length, table and code is checked and a bad stream is an
//! `Err` naming what is wrong, never a panic. The frame's size is returned before anything
//! is allocated, so the caller can check it against the size it expects.

/// What the decoder reads of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// The SOF marker's second byte: 0xC0 baseline, 0xC1 extended sequential, ...
    pub marker: u8,
    /// Sample precision P in bits.
    pub precision: u8,
    pub rows: u16,
    pub columns: u16,
    pub components: u8,
}

/// Finds the first frame header of a JPEG stream (after SOI) without decoding anything.
pub fn frame_info(data: &[u8]) -> Result<FrameInfo, String> {
    let mut r = Segments::new(data)?;
    loop {
        let (marker, body) = r.next_segment()?;
        if is_sof(marker) {
            return parse_sof(marker, body);
        }
        if marker == SOS {
            return Err("a scan before the frame header".into());
        }
        if marker == EOI {
            return Err("no frame header before EOI".into());
        }
    }
}

/// Decodes one sequential-DCT, one-component JPEG image at the start of `data` (leading
/// zero bytes before SOI are skipped). `expect` gives the (rows, columns) the caller
/// expects; a frame of another size is an error before any allocation. Returns the samples
/// in row order, the number of bytes read up to and including EOI (so the next image of a
/// concatenated stream starts after it), and warnings about tolerated irregularities.
pub fn decode(data: &[u8], expect: (u16, u16)) -> Result<Decoded, String> {
    let mut r = Segments::new(data)?;
    let mut qt: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac: [Option<Huffman>; 4] = [None, None, None, None];
    let mut restart_interval = 0u16;
    let mut frame: Option<(FrameInfo, u8)> = None; // and the component's table selector
    let mut warnings = Vec::new();
    let mut samples: Option<Vec<u16>> = None;
    loop {
        let (marker, body) = r.next_segment()?;
        match marker {
            EOI => break,
            DQT => parse_dqt(body, &mut qt)?,
            DHT => parse_dht(body, &mut dc, &mut ac)?,
            DRI => {
                if body.len() != 2 {
                    return Err(format!("DRI segment of {} bytes, 2 expected", body.len()));
                }
                restart_interval = u16::from_be_bytes([body[0], body[1]]);
            }
            m if is_sof(m) => {
                if frame.is_some() {
                    return Err("a second frame header".into());
                }
                let info = parse_sof(m, body)?;
                if !matches!(m, 0xC0 | 0xC1) {
                    return Err(format!(
                        "{} (SOF marker 0x{m:02X}) is not supported: only sequential DCT JPEG with Huffman coding is",
                        sof_name(m)
                    ));
                }
                if info.precision != 8 && info.precision != 12 {
                    return Err(format!(
                        "sample precision of {} bits: sequential DCT JPEG has 8 or 12",
                        info.precision
                    ));
                }
                if info.components != 1 {
                    return Err(format!(
                        "{} components: only one-component (grey) images are decoded",
                        info.components
                    ));
                }
                if info.rows == 0 {
                    return Err("no row count in the frame header (DNL) is not supported".into());
                }
                if (info.rows, info.columns) != expect {
                    return Err(format!(
                        "the JPEG frame is {}x{}, the DICOM header says {}x{}",
                        info.rows, info.columns, expect.0, expect.1
                    ));
                }
                // Component: id, sampling factors, quantisation table (checked in parse_sof).
                frame = Some((info, body[8]));
            }
            SOS => {
                let Some((info, tq)) = frame else {
                    return Err("a scan before the frame header".into());
                };
                if samples.is_some() {
                    return Err("a second scan of the one component".into());
                }
                let (td, ta) = parse_sos(body, &mut warnings)?;
                let q = qt[tq as usize]
                    .ok_or_else(|| format!("quantisation table {tq} is not defined"))?;
                let dct = dc[td as usize]
                    .as_ref()
                    .ok_or_else(|| format!("DC Huffman table {td} is not defined"))?;
                let act = ac[ta as usize]
                    .as_ref()
                    .ok_or_else(|| format!("AC Huffman table {ta} is not defined"))?;
                let out =
                    decode_scan(&mut r, &info, &q, dct, act, restart_interval, &mut warnings)?;
                samples = Some(out);
            }
            _ => {} // APPn, COM and others: skipped
        }
    }
    let Some((info, _)) = frame else {
        return Err("no frame header before EOI".into());
    };
    let samples = samples.ok_or("no scan before EOI")?;
    Ok(Decoded {
        samples,
        precision: info.precision,
        bytes_read: r.pos,
        warnings,
    })
}

/// One decoded image: see [`decode`].
#[derive(Debug)]
pub struct Decoded {
    pub samples: Vec<u16>,
    pub precision: u8,
    pub bytes_read: usize,
    pub warnings: Vec<String>,
}

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DQT: u8 = 0xDB;
const DHT: u8 = 0xC4;
const DRI: u8 = 0xDD;

fn is_sof(m: u8) -> bool {
    (0xC0..=0xCF).contains(&m) && !matches!(m, 0xC4 | 0xC8 | 0xCC)
}

fn sof_name(m: u8) -> &'static str {
    match m {
        0xC2 | 0xC6 | 0xCA | 0xCE => "progressive JPEG",
        0xC3 | 0xC7 | 0xCB | 0xCF => "lossless JPEG",
        0xC9 => "arithmetic-coded JPEG",
        _ => "hierarchical JPEG",
    }
}

/// Marker segments of a stream, read in order.
struct Segments<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Segments<'a> {
    fn new(data: &'a [u8]) -> Result<Self, String> {
        let start = data.iter().position(|&b| b != 0).unwrap_or(data.len());
        if data.get(start..start + 2) != Some(&[0xFF, SOI]) {
            return Err("not a JPEG stream (no SOI marker)".into());
        }
        Ok(Segments {
            data,
            pos: start + 2,
        })
    }

    /// The next marker and its segment's body (empty for EOI). Fill bytes (0xFF) before a
    /// marker are skipped.
    fn next_segment(&mut self) -> Result<(u8, &'a [u8]), String> {
        let d = self.data;
        if d.get(self.pos) != Some(&0xFF) {
            return Err(match d.get(self.pos) {
                None => "the stream ends before EOI".into(),
                Some(b) => format!(
                    "byte 0x{b:02X} at offset {} where a marker is expected",
                    self.pos
                ),
            });
        }
        while d.get(self.pos) == Some(&0xFF) {
            self.pos += 1;
        }
        let marker = *d.get(self.pos).ok_or("the stream ends before EOI")?;
        self.pos += 1;
        if marker == EOI {
            return Ok((EOI, &[]));
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            // RSTn and TEM stand alone, without a length; libjpeg skips them here too.
            return Ok((marker, &[]));
        }
        if marker == SOI || marker == 0x00 {
            return Err(format!("marker 0x{marker:02X} out of place"));
        }
        let len = d
            .get(self.pos..self.pos + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or("the stream ends inside a segment length")?;
        if len < 2 {
            return Err(format!("segment 0x{marker:02X} declares {len} bytes"));
        }
        let body = d
            .get(self.pos + 2..self.pos + len)
            .ok_or_else(|| format!("segment 0x{marker:02X} runs past the end of the stream"))?;
        self.pos += len;
        Ok((marker, body))
    }
}

fn parse_sof(marker: u8, b: &[u8]) -> Result<FrameInfo, String> {
    if b.len() < 6 {
        return Err("frame header too short".into());
    }
    let components = b[5];
    if b.len() != 6 + 3 * components as usize || components == 0 {
        return Err(format!(
            "frame header of {} bytes for {components} components",
            b.len()
        ));
    }
    for c in b[6..].chunks_exact(3) {
        let (h, v) = (c[1] >> 4, c[1] & 15);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return Err(format!(
                "component {} has sampling factors {h}x{v} and quantisation table {}",
                c[0], c[2]
            ));
        }
    }
    let columns = u16::from_be_bytes([b[3], b[4]]);
    if columns == 0 {
        return Err("frame header with 0 columns".into());
    }
    Ok(FrameInfo {
        marker,
        precision: b[0],
        rows: u16::from_be_bytes([b[1], b[2]]),
        columns,
        components,
    })
}

fn parse_dqt(mut b: &[u8], qt: &mut [Option<[u16; 64]>; 4]) -> Result<(), String> {
    while let Some(&pt) = b.first() {
        let (pq, tq) = (pt >> 4, (pt & 15) as usize);
        if pq > 1 || tq > 3 {
            return Err(format!("quantisation table {tq} of precision {pq}"));
        }
        let n = 1 + 64 * (1 + pq as usize);
        let t = b.get(1..n).ok_or("quantisation table segment too short")?;
        let mut table = [0u16; 64];
        for (k, q) in table.iter_mut().enumerate() {
            *q = if pq == 0 {
                t[k] as u16
            } else {
                u16::from_be_bytes([t[2 * k], t[2 * k + 1]])
            };
        }
        // Stored in zig-zag order; kept in natural order.
        let mut natural = [0u16; 64];
        for (k, &q) in table.iter().enumerate() {
            natural[ZIGZAG[k]] = q;
        }
        qt[tq] = Some(natural);
        b = &b[n..];
    }
    Ok(())
}

/// A Huffman table: a lookup of the first `LOOKUP_BITS` bits for short codes, and the
/// canonical code ranges by length (T.81 F.2.2.3) for the rest.
struct Huffman {
    /// For each `LOOKUP_BITS`-bit prefix: code length (0: longer code) and symbol.
    lookup: Vec<(u8, u8)>,
    /// Largest code of each length 1..=16 plus one (0: no code of this length).
    maxcode: [u32; 17],
    /// Index into `values` of the first code of each length, minus that code.
    offset: [i32; 17],
    values: Vec<u8>,
}

const LOOKUP_BITS: u32 = 9;

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Result<Huffman, String> {
        let mut maxcode = [0u32; 17];
        let mut offset = [0i32; 17];
        let mut lookup = vec![(0u8, 0u8); 1 << LOOKUP_BITS];
        let mut code = 0u32;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as usize;
            offset[len as usize] = k as i32 - code as i32;
            for _ in 0..n {
                if code >= 1 << len {
                    return Err("Huffman table with more codes than its lengths allow".into());
                }
                if len <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - len;
                    let first = (code << shift) as usize;
                    for e in &mut lookup[first..first + (1 << shift)] {
                        *e = (len as u8, values[k]);
                    }
                }
                code += 1;
                k += 1;
            }
            maxcode[len as usize] = if n > 0 { code } else { 0 };
            code <<= 1;
        }
        Ok(Huffman {
            lookup,
            maxcode,
            offset,
            values: values.to_vec(),
        })
    }
}

fn parse_dht(
    mut b: &[u8],
    dc: &mut [Option<Huffman>; 4],
    ac: &mut [Option<Huffman>; 4],
) -> Result<(), String> {
    while let Some(&tcth) = b.first() {
        let (tc, th) = (tcth >> 4, (tcth & 15) as usize);
        if tc > 1 || th > 3 {
            return Err(format!("Huffman table class {tc}, number {th}"));
        }
        let counts: [u8; 16] = b
            .get(1..17)
            .and_then(|c| c.try_into().ok())
            .ok_or("Huffman table segment too short")?;
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 {
            return Err(format!("Huffman table with {total} codes"));
        }
        let values = b
            .get(17..17 + total)
            .ok_or("Huffman table segment too short")?;
        let table = Huffman::new(&counts, values)?;
        if tc == 0 {
            dc[th] = Some(table);
        } else {
            ac[th] = Some(table);
        }
        b = &b[17 + total..];
    }
    Ok(())
}

/// Reads a scan header for one component; returns its (DC, AC) table selectors.
fn parse_sos(b: &[u8], warnings: &mut Vec<String>) -> Result<(u8, u8), String> {
    if b.first() != Some(&1) || b.len() != 6 {
        return Err(format!(
            "scan header of {} bytes for {} components; one component expected",
            b.len(),
            b.first().copied().unwrap_or(0)
        ));
    }
    let (td, ta) = (b[2] >> 4, b[2] & 15);
    if td > 3 || ta > 3 {
        return Err(format!("scan uses Huffman tables {td} and {ta}"));
    }
    let (ss, se, ah, al) = (b[3], b[4], b[5] >> 4, b[5] & 15);
    if (ss, se, ah, al) != (0, 63, 0, 0) {
        // As libjpeg does: these mean nothing to a sequential scan; it warns and decodes.
        warnings.push(format!(
            "JPEG scan header with Ss={ss}, Se={se}, Ah={ah}, Al={al} where a sequential scan has 0, 63, 0, 0 (read as sequential, as libjpeg does)"
        ));
    }
    Ok((td, ta))
}

/// Entropy-coded bits, with 0xFF00 stuffing removed. Past the segment's end (a marker) it
/// gives zero bits and counts them, so running out is detected where bits are consumed.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
    /// Zero bits supplied past the segment's end.
    padded: u32,
}

impl Bits<'_> {
    fn fill(&mut self) {
        while self.n <= 56 {
            let byte = match self.data.get(self.pos) {
                Some(&0xFF) if self.data.get(self.pos + 1) == Some(&0x00) => {
                    self.pos += 2;
                    0xFF
                }
                Some(&0xFF) | None => {
                    // A marker (or the end): zeros from here on.
                    self.padded += 8;
                    0
                }
                Some(&b) => {
                    self.pos += 1;
                    b
                }
            };
            self.acc |= (byte as u64) << (56 - self.n);
            self.n += 8;
        }
    }

    fn peek(&mut self, k: u32) -> u32 {
        if self.n < k {
            self.fill();
        }
        (self.acc >> (64 - k)) as u32
    }

    fn consume(&mut self, k: u32) -> Result<(), String> {
        // Bits still real: those held minus the padding in them.
        if k + self.padded > self.n {
            return Err("the entropy-coded data ends early".into());
        }
        self.acc <<= k;
        self.n -= k;
        Ok(())
    }

    fn bits(&mut self, k: u32) -> Result<u32, String> {
        if k == 0 {
            return Ok(0);
        }
        let v = self.peek(k);
        self.consume(k)?;
        Ok(v)
    }

    fn decode(&mut self, h: &Huffman) -> Result<u8, String> {
        let p = self.peek(16);
        let (len, sym) = h.lookup[(p >> (16 - LOOKUP_BITS)) as usize];
        if len > 0 {
            self.consume(len as u32)?;
            return Ok(sym);
        }
        for len in LOOKUP_BITS + 1..=16 {
            let code = p >> (16 - len);
            if code < h.maxcode[len as usize] {
                self.consume(len)?;
                let i = h.offset[len as usize] + code as i32;
                return h
                    .values
                    .get(i as usize)
                    .copied()
                    .ok_or_else(|| "bad Huffman code".to_string());
            }
        }
        Err("bad Huffman code".into())
    }

    /// The end of the entropy-coded segment: the position of the next marker, and the
    /// whole bytes of data read but not used up to it (none in a stream whose encoder
    /// padded only to the byte's end).
    fn to_marker(&self) -> (usize, usize) {
        let mut unused = (self.n.saturating_sub(self.padded) / 8) as usize;
        let mut p = self.pos;
        while p < self.data.len() {
            if self.data[p] == 0xFF && self.data.get(p + 1) != Some(&0x00) {
                return (p, unused);
            }
            p += if self.data[p] == 0xFF { 2 } else { 1 };
            unused += 1;
        }
        (self.data.len(), unused)
    }
}

/// T.81 F.2.2.1: a value of `s` bits, as the signed difference it codes.
fn extend(v: u32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if v < 1 << (s - 1) {
        v as i32 - (1 << s) + 1
    } else {
        v as i32
    }
}

fn decode_scan(
    r: &mut Segments,
    info: &FrameInfo,
    q: &[u16; 64],
    dc: &Huffman,
    ac: &Huffman,
    restart_interval: u16,
    warnings: &mut Vec<String>,
) -> Result<Vec<u16>, String> {
    let (rows, cols) = (info.rows as usize, info.columns as usize);
    let (brows, bcols) = (rows.div_ceil(8), cols.div_ceil(8));
    let mut out = vec![0u16; rows * cols];
    let idct = Idct::new(info.precision);
    let mut bits = Bits {
        data: r.data,
        pos: r.pos,
        acc: 0,
        n: 0,
        padded: 0,
    };
    let mut pred = 0i32;
    let mut unused = 0usize;
    let mut block = [0i16; 64];
    let mut pixels = [0u16; 64];
    let total = brows * bcols;
    for b in 0..total {
        if restart_interval > 0 && b > 0 && b % restart_interval as usize == 0 {
            // Byte-aligned restart: drop the partial byte, then expect the next RSTn
            // marker (after any 0xFF fill bytes). One of another number means that data
            // was lost: the blocks after it would land in the wrong place.
            let (marker, skipped) = bits.to_marker();
            unused += skipped;
            let mut p = marker + 1;
            while bits.data.get(p) == Some(&0xFF) {
                p += 1;
            }
            let want = 0xD0 + ((b / restart_interval as usize - 1) % 8) as u8;
            match bits.data.get(p) {
                Some(&m) if m == want => {}
                Some(&m) if (0xD0..=0xD7).contains(&m) => {
                    return Err(format!(
                        "restart marker RST{} after block {b} where RST{} is due: data lost",
                        m - 0xD0,
                        want - 0xD0
                    ))
                }
                _ => return Err(format!("no restart marker after block {b}")),
            }
            bits = Bits {
                data: r.data,
                pos: p + 1,
                acc: 0,
                n: 0,
                padded: 0,
            };
            pred = 0;
        }
        block.fill(0);
        let t = bits.decode(dc)? as u32;
        if t > 15 {
            // libjpeg refuses such a DC table as corrupt.
            return Err(format!("DC difference of {t} bits"));
        }
        pred = pred.wrapping_add(extend(bits.bits(t)?, t));
        // libjpeg stores coefficients as 16-bit values.
        block[0] = pred as i16;
        let mut k = 1usize;
        while k < 64 {
            let rs = bits.decode(ac)?;
            let (run, s) = ((rs >> 4) as usize, (rs & 15) as u32);
            if s == 0 {
                if run != 15 {
                    break; // end of block
                }
                k += 16;
                continue;
            }
            k += run;
            if k > 63 {
                return Err("AC coefficients past the end of a block".into());
            }
            block[ZIGZAG[k]] = extend(bits.bits(s)?, s) as i16;
            k += 1;
        }
        idct.block(&block, q, &mut pixels);
        let (by, bx) = (b / bcols, b % bcols);
        for y in 0..8.min(rows - by * 8) {
            let row = (by * 8 + y) * cols + bx * 8;
            let w = 8.min(cols - bx * 8);
            out[row..row + w].copy_from_slice(&pixels[y * 8..y * 8 + w]);
        }
    }
    let (end, skipped) = bits.to_marker();
    unused += skipped;
    if unused > 0 {
        // libjpeg warns too ("extraneous bytes before marker") and goes on.
        warnings.push(format!(
            "{unused} bytes of JPEG entropy-coded data were not used (corrupt data?)"
        ));
    }
    r.pos = end;
    Ok(out)
}

/// Zig-zag index k to natural (row-major) index.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// libjpeg's `jpeg_idct_islow` for 8- or 12-bit samples.
struct Idct {
    pass1_bits: u32,
    max: i64,
    center: i64,
}

const CONST_BITS: u32 = 13;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// The 1-D 8-point inverse DCT of `in_` (stride 1), both halves before descaling:
/// returns (tmp10, tmp11, tmp12, tmp13, tmp0, tmp1, tmp2, tmp3) in libjpeg's names.
#[inline(always)]
fn idct_1d(v: [i64; 8]) -> [i64; 8] {
    // Even part.
    let (z2, z3) = (v[2], v[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (v[0] + v[4]) << CONST_BITS;
    let tmp1 = (v[0] - v[4]) << CONST_BITS;
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (mut t0, mut t1, mut t2, mut t3) = (v[7], v[5], v[3], v[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

impl Idct {
    fn new(precision: u8) -> Idct {
        let max = (1i64 << precision) - 1;
        Idct {
            pass1_bits: if precision == 8 { 2 } else { 1 },
            max,
            center: (max + 1) / 2,
        }
    }

    /// libjpeg's range limit: the descaled value masked to `4 * (max + 1)` entries of a
    /// table that clamps to `[0, max]` (and wraps values far out of range as libjpeg does).
    fn limit(&self, x: i64) -> u16 {
        let size = 4 * (self.max + 1);
        let j = (x & (size - 1)) + self.center;
        (if j <= self.max {
            j
        } else if j < 2 * (self.max + 1) + self.center {
            self.max
        } else if j < size {
            0
        } else {
            j - size
        }) as u16
    }

    /// Dequantises and inverse-transforms one block of coefficients (natural order).
    fn block(&self, coef: &[i16; 64], q: &[u16; 64], out: &mut [u16; 64]) {
        let p1 = self.pass1_bits;
        let mut ws = [0i32; 64];
        for c in 0..8 {
            let v: [i64; 8] = std::array::from_fn(|r| coef[r * 8 + c] as i64 * q[r * 8 + c] as i64);
            if v[1..].iter().all(|&x| x == 0) {
                for r in 0..8 {
                    ws[r * 8 + c] = (v[0] << p1) as i32;
                }
                continue;
            }
            let o = idct_1d(v);
            for r in 0..8 {
                ws[r * 8 + c] = descale(o[r], CONST_BITS - p1) as i32;
            }
        }
        for r in 0..8 {
            let v: [i64; 8] = std::array::from_fn(|c| ws[r * 8 + c] as i64);
            let o = idct_1d(v);
            for c in 0..8 {
                out[r * 8 + c] = self.limit(descale(o[c], CONST_BITS + p1 + 3));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse DCT by its definition (T.81 A.3.3), in floating point.
    fn idct_reference(coef: &[f64; 64]) -> [f64; 64] {
        let c = |u: usize| if u == 0 { 1.0 / 2f64.sqrt() } else { 1.0 };
        let mut out = [0.0; 64];
        for y in 0..8 {
            for x in 0..8 {
                let mut s = 0.0;
                for v in 0..8 {
                    for u in 0..8 {
                        s += c(u)
                            * c(v)
                            * coef[v * 8 + u]
                            * (((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI) / 16.0).cos()
                            * (((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI) / 16.0).cos();
                    }
                }
                out[y * 8 + x] = s / 4.0;
            }
        }
        out
    }

    #[test]
    fn integer_idct_is_within_one_of_the_definition() {
        let mut rng = crate::rng::SplitMix64::new(7);
        for precision in [8u8, 12] {
            let idct = Idct::new(precision);
            let amp = if precision == 8 { 60.0 } else { 900.0 };
            for trial in 0..300 {
                let mut coef = [0i16; 64];
                let q = [1u16; 64];
                // Sparse and dense blocks, DC anywhere in range.
                for (k, c) in coef.iter_mut().enumerate() {
                    if k == 0 || trial % 3 == 0 || rng.uniform() < 0.2 {
                        *c = ((rng.uniform() * 2.0 - 1.0) * amp / (1.0 + k as f64 / 8.0)) as i16;
                    }
                }
                let mut got = [0u16; 64];
                idct.block(&coef, &q, &mut got);
                let f = idct_reference(&std::array::from_fn(|k| coef[k] as f64));
                for k in 0..64 {
                    let want = (f[k] + idct.center as f64)
                        .round()
                        .clamp(0.0, idct.max as f64);
                    assert!(
                        (got[k] as f64 - want).abs() <= 1.0,
                        "precision {precision}, trial {trial}, sample {k}: {} vs {want}",
                        got[k]
                    );
                }
            }
        }
    }

    fn fixture(name: &str) -> (Vec<u8>, Vec<u16>) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jpeg/");
        let jpg = std::fs::read(format!("{dir}{name}.jpg")).unwrap();
        let want = std::fs::read(format!("{dir}{name}.u16"))
            .map(|b| {
                b.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect()
            })
            .unwrap_or_default();
        (jpg, want)
    }

    /// Streams encoded and decoded by libjpeg-turbo 3.1.3 (tests/scripts/make_jpeg_fixtures.py):
    /// every sample is libjpeg's.
    #[test]
    fn decodes_as_libjpeg_turbo_sample_for_sample() {
        for (name, shape, precision) in [
            ("ct12_q90", (37, 53), 12),
            ("ct12_q40_optimized", (96, 120), 12),
            ("grey8_restart3", (40, 44), 8),
        ] {
            let (jpg, want) = fixture(name);
            let info = frame_info(&jpg).unwrap();
            assert_eq!(
                (info.rows, info.columns, info.precision),
                (shape.0, shape.1, precision)
            );
            let d = decode(&jpg, shape).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(d.samples.len(), want.len(), "{name}");
            let differ = d.samples.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ, 0,
                "{name}: {differ} samples differ from libjpeg-turbo"
            );
            assert_eq!(d.bytes_read, jpg.len(), "{name}");
            assert!(d.warnings.is_empty(), "{name}: {:?}", d.warnings);
            // Concatenated with padding, the next image starts after `bytes_read`.
            let mut two = jpg.clone();
            two.extend_from_slice(&[0, 0]);
            two.extend_from_slice(&jpg);
            let second = decode(&two[d.bytes_read..], shape).unwrap();
            assert_eq!(second.samples, d.samples, "{name}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_decode_with_a_reason() {
        let (jpg, _) = fixture("ct12_q90");
        let e = decode(&jpg, (37, 54)).unwrap_err();
        assert!(e.contains("37x53") && e.contains("37x54"), "{e}");
        let (prog, _) = fixture("grey8_progressive");
        let e = decode(&prog, (16, 16)).unwrap_err();
        assert!(e.contains("progressive"), "{e}");
        assert!(decode(b"\x89PNG", (1, 1)).unwrap_err().contains("SOI"));
        // A restart interval the data does not follow.
        let (r, _) = fixture("grey8_restart3");
        let dri = r.windows(2).position(|w| w == [0xFF, DRI]).unwrap();
        let mut wrong = r.clone();
        wrong[dri + 5] = 2;
        assert!(decode(&wrong, (40, 44)).is_err());
        // A lost restart interval: RST1 removed, so RST2 comes where RST1 is due.
        let rst1 = r.windows(2).position(|w| w == [0xFF, 0xD1]).unwrap();
        let rst2 = r.windows(2).position(|w| w == [0xFF, 0xD2]).unwrap();
        let mut lost = r[..rst1].to_vec();
        lost.extend_from_slice(&r[rst2..]);
        let e = decode(&lost, (40, 44)).unwrap_err();
        assert!(e.contains("RST2") && e.contains("RST1 is due"), "{e}");
    }

    /// T.81 B.1.1.2: any marker may be preceded by 0xFF fill bytes; an encoder may also
    /// write a restart marker after the last interval. Both decode as the plain stream.
    #[test]
    fn fill_bytes_and_a_trailing_restart_marker_are_read() {
        let (r, want) = fixture("grey8_restart3");
        let rst1 = r.windows(2).position(|w| w == [0xFF, 0xD1]).unwrap();
        let mut filled = r[..rst1].to_vec();
        filled.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
        filled.extend_from_slice(&r[rst1..]);
        assert_eq!(decode(&filled, (40, 44)).unwrap().samples, want);
        let eoi = r.len() - 2;
        let mut trailing = r[..eoi].to_vec();
        trailing.extend_from_slice(&[0xFF, 0xD1, 0xFF, EOI]);
        let d = decode(&trailing, (40, 44)).unwrap();
        assert_eq!(d.samples, want);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    /// libjpeg reads a sequential scan whose header has other spectral values as
    /// sequential, with a warning (pydicom's JPEG-lossy.dcm has Se = 0); so does lungcad.
    #[test]
    fn odd_sequential_scan_header_is_read_with_a_warning() {
        let (mut jpg, want) = fixture("ct12_q90");
        let sos = jpg.windows(2).position(|w| w == [0xFF, SOS]).unwrap();
        assert_eq!(jpg[sos + 8], 63);
        jpg[sos + 8] = 0;
        let d = decode(&jpg, (37, 53)).unwrap();
        assert_eq!(d.samples, want);
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("Se=0"), "{:?}", d.warnings);
    }

    /// Every truncation and many corruptions of real streams: an error or an image of the
    /// expected size, never a panic.
    #[test]
    fn corrupt_streams_are_errors_not_panics() {
        let mut rng = crate::rng::SplitMix64::new(11);
        for (name, shape) in [("ct12_q90", (37, 53)), ("grey8_restart3", (40, 44))] {
            let (jpg, _) = fixture(name);
            for n in 0..jpg.len() {
                let r = decode(&jpg[..n], shape);
                assert!(r.is_err(), "{name} cut to {n} bytes decoded");
            }
            // A stream cut inside its entropy-coded data says so.
            let e = decode(&jpg[..jpg.len() - 40], shape).unwrap_err();
            assert!(e.contains("ends"), "{e}");
            for _ in 0..3000 {
                let mut bad = jpg.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(bad.len());
                    bad[i] = rng.next_u64() as u8;
                }
                if let Ok(d) = decode(&bad, shape) {
                    assert_eq!(d.samples.len(), shape.0 as usize * shape.1 as usize);
                }
            }
        }
    }

    #[test]
    fn range_limit_clamps_as_libjpeg() {
        let idct = Idct::new(12);
        assert_eq!(idct.limit(0), 2048);
        assert_eq!(idct.limit(-2048), 0);
        assert_eq!(idct.limit(-2049), 0);
        assert_eq!(idct.limit(2047), 4095);
        assert_eq!(idct.limit(2048), 4095);
        assert_eq!(idct.limit(-5000), 0);
        assert_eq!(idct.limit(6000), 4095);
    }

    #[test]
    fn huffman_codes_decode_by_length() {
        // Two codes of length 2 (00, 01), one of length 3 (100), and one of 12.
        let mut counts = [0u8; 16];
        counts[1] = 2;
        counts[2] = 1;
        counts[11] = 1;
        let h = Huffman::new(&counts, &[5, 6, 7, 9]).unwrap();
        // 01 100 00 then 101000000000 (the 12-bit code: 1010 0000 0000), then padding 1s.
        let data = [0b0110_0001, 0b0100_0000, 0b0001_1111, 0xFF, 0xD9];
        let mut b = Bits {
            data: &data,
            pos: 0,
            acc: 0,
            n: 0,
            padded: 0,
        };
        assert_eq!(b.decode(&h).unwrap(), 6);
        assert_eq!(b.decode(&h).unwrap(), 7);
        assert_eq!(b.decode(&h).unwrap(), 5);
        assert_eq!(b.decode(&h).unwrap(), 9);
        // Five 1-bits are left, then the marker: no code matches.
        assert!(b.decode(&h).is_err());
        // Too many codes for their lengths.
        let mut over = [0u8; 16];
        over[0] = 3;
        assert!(Huffman::new(&over, &[1, 2, 3]).is_err());
    }

    #[test]
    fn extend_gives_signed_differences() {
        assert_eq!(extend(0, 0), 0);
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(0, 3), -7);
        assert_eq!(extend(3, 3), -4);
        assert_eq!(extend(4, 3), 4);
        assert_eq!(extend(0xFFF, 12), 4095);
    }
}
