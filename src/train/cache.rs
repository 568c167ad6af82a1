//! The on-disk cache of preprocessed scans: each scan of a dataset is loaded, resampled and
//! lung-masked once, and epochs read the patches they need straight from the cache file,
//! so a dataset of any size trains in bounded memory (a scan is never held whole while
//! sampling).
//!
//! ```text
//! <cache>/v1-<key>/config.json          the PreprocessConfig the folder was made with
//! <cache>/v1-<key>/<series uid>.lcc     one preprocessed scan
//! ```
//!
//! The folder is named by the format version and a hash of the preprocessing config, so a
//! changed config never reads stale data. A `.lcc` file is `LUNGCADC`, the header's length
//! (u64 little endian), the header (JSON: series UID, grid shape and geometry, lung mask
//! facts, crop, config, and the size and modification time of the source it was made from;
//! for a DICOM folder, its path and the DICOM loader's revision), then the resampled HU
//! volume (`i16` LE, `(z, y, x)`) and the lung mask (`u8`). A scan whose source or loader
//! revision changed is prepared again. Files are written under a temporary name and renamed
//! when complete, so an interrupted preparation leaves no half file behind.
//!
//! Reading a patch reads, per slice of the region it touches, the rows it spans (whole
//! rows: one read per slice and array); the windowing is the same as in memory, so a patch
//! from the cache equals the patch cut from the [`Preprocessed`] scan bit for bit.

use super::augment::{cut_patch_with, window_row, PatchTransform, PlaneSource};
use super::dataset::ScanSource;
use crate::error::{Error, Result};
use crate::io::metaimage::AtomicFile;
use crate::io::LoadConfig;
use crate::preprocess::{LungMask, PreprocessConfig, PreprocessTimings, Preprocessed, VoxelBox};
use crate::volume::{Geometry, Volume, VolumeInfo};
use ndarray::{Array3, Axis};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Version of the `.lcc` layout; part of the cache folder's name.
pub const CACHE_FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"LUNGCADC";
/// Headers are small (a config and a few boxes); a larger one is a corrupt file.
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// What a cache file was made from: the source's path, size and modification time (files;
/// a DICOM folder is named by path and the DICOM loader's revision, so a folder cached by
/// a build that loaded it as another volume is prepared again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SourceStamp {
    path: String,
    bytes: Option<u64>,
    modified_ns: Option<u128>,
    /// [`LOADER_REVISION`](crate::io::dicom::LOADER_REVISION) for a DICOM folder (absent
    /// in files of builds before it, which then count as another revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dicom_loader: Option<u32>,
}

impl SourceStamp {
    fn of(source: &ScanSource) -> SourceStamp {
        let meta = (!source.dicom)
            .then(|| std::fs::metadata(&source.path).ok())
            .flatten();
        SourceStamp {
            path: source.path.to_string_lossy().into_owned(),
            bytes: meta.as_ref().map(|m| m.len()),
            modified_ns: meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos()),
            dicom_loader: source.dicom.then_some(crate::io::dicom::LOADER_REVISION),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: u32,
    series_uid: String,
    shape: [usize; 3],
    geometry: Geometry,
    crop: VoxelBox,
    lung_box: VoxelBox,
    lung_volume_ml: f64,
    mask_volume_ml: f64,
    components: usize,
    config: PreprocessConfig,
    source: SourceStamp,
}

/// A versioned cache folder for one preprocessing config.
#[derive(Debug, Clone)]
pub struct ScanCache {
    dir: PathBuf,
    config: PreprocessConfig,
}

/// FNV-1a, 64 bits: a stable hash for folder names (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A file name for a series UID: UIDs (digits and dots) and names such as `LKDS-00001` are
/// kept; any other character becomes `_`, and then a hash of the UID is appended so two
/// UIDs never share a file.
fn file_name(uid: &str) -> String {
    let safe: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == uid && !uid.starts_with('.') && !uid.is_empty() {
        format!("{uid}.lcc")
    } else {
        format!("{safe}-{:016x}.lcc", fnv1a(uid.as_bytes()))
    }
}

fn cache_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Cache {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads `buf.len()` bytes at `offset` of `file` without moving a shared cursor, so
/// threads can read one open file at once.
#[cfg(unix)]
fn read_exact_at(file: &File, _path: &Path, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(
    file: &File,
    _path: &Path,
    mut offset: u64,
    mut buf: &mut [u8],
) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Elsewhere, a file of its own for each read.
#[cfg(not(any(unix, windows)))]
fn read_exact_at(_file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

impl ScanCache {
    /// The cache folder for `config` under `root` (created if missing).
    pub fn open(root: &Path, config: &PreprocessConfig) -> Result<ScanCache> {
        config.validate()?;
        let json = config.to_json();
        let dir = root.join(format!("v{CACHE_FORMAT}-{:016x}", fnv1a(json.as_bytes())));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let readme = dir.join("config.json");
        if !readme.exists() {
            AtomicFile::write_bytes(&readme, json.as_bytes())?;
        }
        Ok(ScanCache {
            dir,
            config: config.clone(),
        })
    }

    /// The versioned folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached scan of `source`: read from the cache when it is there and was made from
    /// the same source, else loaded, preprocessed and written first. Returns it and whether
    /// it was prepared now.
    pub fn prepare(&self, source: &ScanSource, load: &LoadConfig) -> Result<(CachedScan, bool)> {
        let path = self.dir.join(file_name(&source.series_uid));
        let stamp = SourceStamp::of(source);
        if path.exists() {
            // A file that fails to open (truncated, older layout) is made again.
            if let Ok(c) = CachedScan::open(&path) {
                if c.header.source == stamp
                    && c.header.config == self.config
                    && c.header.series_uid == source.series_uid
                {
                    return Ok((c, false));
                }
            }
        }
        let volume = crate::io::load(&source.path, &source.load_config(load))?;
        let pre = crate::preprocess::preprocess_owned(volume, &self.config, &load.limits)?;
        write_scan(&path, &pre, &source.series_uid, stamp)?;
        Ok((CachedScan::open(&path)?, true))
    }
}

/// Writes `pre` as a cache file at `path` (atomically).
fn write_scan(path: &Path, pre: &Preprocessed, uid: &str, source: SourceStamp) -> Result<()> {
    let header = Header {
        format: CACHE_FORMAT,
        series_uid: uid.to_string(),
        shape: pre.shape(),
        geometry: *pre.geometry(),
        crop: pre.crop,
        lung_box: pre.lung.lung_box,
        lung_volume_ml: pre.lung.lung_volume_ml,
        mask_volume_ml: pre.lung.mask_volume_ml,
        components: pre.lung.components,
        config: pre.config.clone(),
        source,
    };
    let json = serde_json::to_vec(&header)
        .map_err(|e| cache_error(path, format!("header to JSON: {e}")))?;
    let mut f = AtomicFile::create(path)?;
    f.write_with(|w| {
        w.write_all(MAGIC)?;
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        let mut buf = Vec::with_capacity(1 << 16);
        for plane in pre.volume.hu.axis_iter(Axis(0)) {
            buf.clear();
            for v in plane.iter() {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.write_all(&buf)?;
        }
        for plane in pre.lung.mask.axis_iter(Axis(0)) {
            buf.clear();
            buf.extend(plane.iter().copied());
            w.write_all(&buf)?;
        }
        Ok(())
    })?;
    f.commit()
}

/// A preprocessed scan in the cache: its header in memory, its voxels on disk.
#[derive(Debug, Clone)]
pub struct CachedScan {
    path: PathBuf,
    header: Header,
    /// Byte offset of the HU volume.
    data_offset: u64,
}

impl CachedScan {
    /// Opens a cache file, checking its magic, format, header and length.
    pub fn open(path: &Path) -> Result<CachedScan> {
        let bad = |m: String| cache_error(path, m);
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut head = [0u8; 16];
        f.read_exact(&mut head)
            .map_err(|_| bad("shorter than its 16-byte preamble".into()))?;
        if &head[..8] != MAGIC {
            return Err(bad("not a lungcad cache file (no LUNGCADC magic)".into()));
        }
        let header_len = u64::from_le_bytes(head[8..].try_into().unwrap_or([0; 8]));
        if header_len > MAX_HEADER_BYTES || 16 + header_len > file_len {
            return Err(bad(format!("header length {header_len} is not plausible")));
        }
        let mut json = vec![0u8; header_len as usize];
        f.read_exact(&mut json)
            .map_err(|e| bad(format!("reading the header: {e}")))?;
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
        if header.format != CACHE_FORMAT {
            return Err(bad(format!(
                "cache format {}, this build reads {CACHE_FORMAT}",
                header.format
            )));
        }
        let voxels = header
            .shape
            .iter()
            .try_fold(1u64, |n, &s| n.checked_mul(s as u64));
        let expected = voxels.and_then(|v| v.checked_mul(3)?.checked_add(16 + header_len));
        if expected != Some(file_len) {
            return Err(bad(format!(
                "{file_len} bytes, but a {:?} grid needs {expected:?}",
                header.shape
            )));
        }
        let shape_ok = header.shape.iter().all(|&n| n > 0)
            && (0..3).all(|a| header.crop.end[a] <= header.shape[a]);
        if !shape_ok {
            return Err(bad(format!(
                "grid {:?} or crop {:?} is not plausible",
                header.shape, header.crop
            )));
        }
        Ok(CachedScan {
            path: path.to_path_buf(),
            data_offset: 16 + header_len,
            header,
        })
    }

    pub fn series_uid(&self) -> &str {
        &self.header.series_uid
    }

    /// The preprocessed grid's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.header.geometry
    }

    pub fn shape(&self) -> [usize; 3] {
        self.header.shape
    }

    /// The region the detector tiles (lungs' box plus margin).
    pub fn crop(&self) -> VoxelBox {
        self.header.crop
    }

    pub fn config(&self) -> &PreprocessConfig {
        &self.header.config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn voxels(&self) -> u64 {
        self.header.shape.iter().map(|&n| n as u64).product()
    }

    fn index(&self, zyx: [usize; 3]) -> u64 {
        let [_, ny, nx] = self.header.shape.map(|n| n as u64);
        (zyx[0] as u64 * ny + zyx[1] as u64) * nx + zyx[2] as u64
    }

    /// Reads `buf.len()` bytes at `offset` of `f`, this scan's file (shared by threads).
    fn read_at(&self, f: &File, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_exact_at(f, &self.path, offset, buf).map_err(|e| Error::io(&self.path, e))
    }

    /// Whether voxel `zyx` of the grid is in the lung mask (`false` beyond the grid).
    pub fn in_lung(&self, zyx: [usize; 3]) -> Result<bool> {
        if (0..3).any(|a| zyx[a] >= self.header.shape[a]) {
            return Ok(false);
        }
        let f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut b = [0u8];
        let at = self.data_offset + 2 * self.voxels() + self.index(zyx);
        self.read_at(&f, at, &mut b)?;
        Ok(b[0] != 0)
    }

    /// The patch of this scan through `t`, as
    /// [`cut_patch`](crate::train::augment::cut_patch) cuts it from the scan in memory (the
    /// same values, bit for bit), reading only the rows it touches: per grid plane, one
    /// read of the rows' HU and one of their mask (whole rows), at positions in one open
    /// file shared by the threads.
    pub fn cut_patch(&self, t: &PatchTransform) -> Result<Array3<f32>> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        cut_patch_with(t, &CachedPlanes { scan: self, file })
    }

    /// The whole scan back in memory (for validation, which runs the detector over every
    /// tile).
    pub fn load(&self) -> Result<Preprocessed> {
        let h = &self.header;
        let n = self.voxels() as usize;
        let mut bytes = Vec::new();
        let mut f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(self.data_offset))
            .and_then(|_| f.read_to_end(&mut bytes))
            .map_err(|e| Error::io(&self.path, e))?;
        if bytes.len() != 3 * n {
            return Err(cache_error(&self.path, "changed while being read"));
        }
        let (hu_bytes, mask) = bytes.split_at(2 * n);
        let hu: Vec<i16> = hu_bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let shape = h.shape;
        let as_grid = |e: ndarray::ShapeError| cache_error(&self.path, format!("grid: {e}"));
        let hu = Array3::from_shape_vec(shape, hu).map_err(as_grid)?;
        let mask = Array3::from_shape_vec(shape, mask.to_vec()).map_err(as_grid)?;
        let mut volume = Volume::new(hu, h.geometry)?;
        volume.info = VolumeInfo {
            series_uid: Some(h.series_uid.clone()),
            format: "lungcad cache".into(),
            slice_count: shape[0],
            ..VolumeInfo::default()
        };
        Ok(Preprocessed {
            volume,
            lung: LungMask {
                mask,
                lung_box: h.lung_box,
                lung_volume_ml: h.lung_volume_ml,
                mask_volume_ml: h.mask_volume_ml,
                components: h.components,
            },
            crop: h.crop,
            config: h.config.clone(),
            timings: PreprocessTimings::default(),
        })
    }
}

/// A cached scan's planes, read from `file` for [`cut_patch_with`].
struct CachedPlanes<'a> {
    scan: &'a CachedScan,
    file: File,
}

impl PlaneSource for CachedPlanes<'_> {
    /// The HU and mask bytes of the rows read.
    type Scratch = (Vec<u8>, Vec<u8>);

    fn plane(
        &self,
        (hu, mask): &mut (Vec<u8>, Vec<u8>),
        z: i64,
        start: [i64; 2],
        len: [usize; 2],
        out: &mut [f32],
    ) -> Result<()> {
        let scan = self.scan;
        let config = &scan.header.config;
        let w = &config.window;
        let pad = w.normalize(config.patch.pad_hu);
        let [nz, ny, nx] = scan.header.shape;
        if out.len() != len[0] * len[1] {
            return Err(Error::InvalidArgument(format!(
                "a plane of {len:?} voxels was asked for into {}",
                out.len()
            )));
        }
        // The rows of the region inside the grid.
        let lo = start[0].clamp(0, ny as i64) as usize;
        let hi = (start[0] + len[0] as i64).clamp(0, ny as i64) as usize;
        if z < 0 || z >= nz as i64 || lo >= hi || len[1] == 0 {
            out.fill(pad);
            return Ok(());
        }
        let rows = hi - lo;
        hu.resize(rows * nx * 2, 0);
        mask.resize(rows * nx, 0);
        let first = scan.index([z as usize, lo, 0]);
        scan.read_at(&self.file, scan.data_offset + 2 * first, hu)?;
        scan.read_at(
            &self.file,
            scan.data_offset + 2 * scan.voxels() + first,
            mask,
        )?;
        for (r, row) in out.chunks_exact_mut(len[1]).enumerate() {
            let y = start[0] + r as i64;
            if y < lo as i64 || y >= hi as i64 {
                row.fill(pad);
                continue;
            }
            let at = (y as usize - lo) * nx;
            let (hu, mask) = (&hu[2 * at..2 * (at + nx)], &mask[at..at + nx]);
            window_row(row, start[1], nx, pad, |out, x0| {
                let hu = hu[2 * x0..]
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]));
                w.values_into(out, hu, mask[x0..].iter().map(|&m| m != 0))
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_keep_uids_and_never_collide() {
        assert_eq!(file_name("1.2.840.113"), "1.2.840.113.lcc");
        assert_eq!(file_name("LKDS-00001"), "LKDS-00001.lcc");
        let a = file_name("a/b");
        let b = file_name("a_b");
        assert!(a.starts_with("a_b-") && a.ends_with(".lcc"), "{a}");
        assert_ne!(a, b);
        assert!(!file_name("../x").contains('/'));
        assert_ne!(file_name(".."), "...lcc");
    }
}
