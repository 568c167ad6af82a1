//! Commands of the `lungcad` binary that need more than a few lines (the binary's own
//! modules; the library knows nothing of them).

pub mod demo;
pub mod detect;
pub mod lidc;
pub mod synth;
pub mod train;

use lungcad::Error;
use std::path::Path;

/// An I/O error naming its file.
fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
