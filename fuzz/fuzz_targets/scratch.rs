//! Where a fuzz target writes its inputs as files: one path per target and fuzzing process,
//! in /dev/shm when it exists (no disk writes), else the system's temporary folder.

use std::path::PathBuf;

/// `lungcad-fuzz-<name>-<pid>` in /dev/shm or the temporary folder.
pub fn path(name: &str) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("lungcad-fuzz-{name}-{}", std::process::id()))
}
