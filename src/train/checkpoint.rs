//! Checkpoints that survive a kill: each is a folder written under a temporary name and
//! renamed into place when complete, and a `latest` pointer is replaced the same way, so a
//! process killed at any moment leaves the previous checkpoint whole and pointed to.
//!
//! ```text
//! <dir>/epoch-0003/model.safetensors   the network (a lungcad model file)
//! <dir>/epoch-0003/optimizer.bpk       Adam's moments (burn's burnpack)
//! <dir>/epoch-0003/state.json          the caller's state (epoch, RNG, metrics, ...)
//! <dir>/latest                         "epoch-0003"
//! ```

use crate::error::{Error, Result};
use crate::io::metaimage::AtomicFile;
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const STATE_FILE: &str = "state.json";
pub const LATEST: &str = "latest";

fn checkpoint_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Syncs a folder's entries (renames) where the platform allows it (Linux and macOS do;
/// Windows cannot open folders as files, and needs no such step).
fn sync_dir(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
    }
}

/// Saves a checkpoint named `name` in `dir`: `fill(tmp)` writes the checkpoint's files into
/// the temporary folder `tmp`; then each file and the folder are synced, the folder is
/// renamed to `dir/name` and `latest` is pointed at it (through [`AtomicFile`]). An existing
/// checkpoint of that name is replaced; replacing the one `latest` points to leaves a moment with no checkpoint, so
/// give each checkpoint a new name (`epoch-0003`).
pub fn save_atomically(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fill(&tmp)?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
        let p = entry.map_err(|e| Error::io(&tmp, e))?.path();
        sync_path(&p)?;
    }
    sync_dir(&tmp);
    let fin = dir.join(name);
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    AtomicFile::write_bytes(&dir.join(LATEST), name.as_bytes())?;
    sync_dir(dir);
    Ok(fin)
}

/// The folder of the latest complete checkpoint in `dir`, or `None` when there is none.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    let pointer = dir.join(LATEST);
    let name = match std::fs::read_to_string(&pointer) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&pointer, e)),
    };
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(checkpoint_error(
            &pointer,
            format!("names {name:?}, not a checkpoint folder"),
        ));
    }
    let folder = dir.join(name);
    for f in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
        if !folder.join(f).is_file() {
            return Err(checkpoint_error(&folder, format!("has no {f}")));
        }
    }
    Ok(Some(folder))
}
