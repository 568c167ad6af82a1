//! Commands of the `lungcad` binary that need more than a few lines (the binary's own
//! modules; the library knows nothing of them).

pub mod synth;
pub mod train;
