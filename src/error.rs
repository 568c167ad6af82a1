//! The one error type of the crate. Variants are grouped by pipeline stage and name
//! the file or series they concern. No variant ever carries patient identifiers:
//! series are named by SeriesInstanceUID, files by path.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in lungcad.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed at the operating-system level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file could not be parsed as DICOM, or lacks an attribute an image needs.
    #[error("{}: DICOM: {message}", path.display())]
    Dicom { path: PathBuf, message: String },

    /// The pixel data of a DICOM file is encoded with a transfer syntax that this build
    /// cannot decode (no decoder for it is built in).
    #[error("{}: unsupported transfer syntax {uid} ({name}): lungcad has no decoder for it", path.display())]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: String,
    },

    /// No DICOM image was found at the given path.
    #[error("{}: no DICOM image series found ({files_seen} files looked at, {not_dicom} not DICOM images)", path.display())]
    NoSeries {
        path: PathBuf,
        files_seen: usize,
        not_dicom: usize,
    },

    /// `--series UID` names a series that is not there.
    #[error("series {requested} not found; available: {available}")]
    SeriesNotFound {
        requested: String,
        available: String,
    },

    /// A DICOM series cannot be assembled into a volume.
    #[error("series {series_uid}: {problem}")]
    Series {
        series_uid: String,
        problem: SeriesProblem,
    },

    /// A MetaImage (`.mhd`/`.mha`) header or data file is invalid.
    #[error("{}: MetaImage: {message}", path.display())]
    MetaImage { path: PathBuf, message: String },

    /// A NIfTI file is invalid or unsupported.
    #[error("{}: NIfTI: {message}", path.display())]
    Nifti { path: PathBuf, message: String },

    /// The path is not a DICOM folder/file, MetaImage or NIfTI.
    #[error("{}: unrecognised CT format: {message}", path.display())]
    UnknownFormat { path: PathBuf, message: String },

    /// Untrusted input asks for more than the configured [`crate::Limits`] allow.
    #[error(
        "{what} is {value}, over the limit of {limit} (raise it in Limits if the input is trusted)"
    )]
    Limit {
        what: &'static str,
        value: u64,
        limit: u64,
    },

    /// Geometry (spacing, origin, direction) is invalid.
    #[error("geometry: {0}")]
    Geometry(String),

    /// A CSV file (annotations, predictions, ...) has a malformed row.
    #[error("{}:{line}: {message}", path.display())]
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// An LIDC-IDRI reader annotation file (XML) that cannot be read, or whose marks do
    /// not fall on its series' slices.
    #[error("{}: LIDC XML: {message}", path.display())]
    Lidc { path: PathBuf, message: String },

    /// Evaluation inputs are inconsistent (e.g. a NaN probability).
    #[error("evaluation: {0}")]
    Eval(String),

    /// Preprocessing could not go on (no lungs found, a patch larger than allowed...).
    /// `source_name` is the series UID, or a description of the volume when it has none.
    #[error("preprocessing {source_name}: {message}")]
    Preprocess {
        source_name: String,
        message: String,
    },

    /// A model file that cannot be used: not a lungcad model, another format version,
    /// configs that do not parse, weights missing or of the wrong shape.
    #[error("{}: model: {message}", path.display())]
    Model { path: PathBuf, message: String },

    /// A training checkpoint that cannot be used: incomplete, or its pointer names no
    /// checkpoint.
    #[error("{}: checkpoint: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// A file of the training cache (preprocessed scans) that cannot be read: truncated,
    /// another format version, a header that does not parse.
    #[error("{}: training cache: {message}", path.display())]
    Cache { path: PathBuf, message: String },

    /// The compute device could not be used (no wgpu adapter, no CUDA in this build, a
    /// failed read-back).
    #[error("device: {0}")]
    Device(String),

    /// A caller passed an invalid argument or configuration.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Why a DICOM series cannot be made into a volume.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SeriesProblem {
    #[error("modality is {modality:?}, not CT (allow it with --allow-modality)")]
    Modality { modality: String },
    #[error("missing slices: a gap of {gap_mm:.3} mm after position {at_mm:.3} mm is over 1.5x the median spacing of {median_mm:.3} mm")]
    MissingSlices {
        gap_mm: f64,
        median_mm: f64,
        at_mm: f64,
    },
    #[error("mixed orientations: ImageOrientationPatient differs between slices ({first:?} vs {other:?})")]
    MixedOrientation { first: [f64; 6], other: [f64; 6] },
    #[error("mixed {what} between slices ({first} vs {other})")]
    MixedDimensions {
        what: &'static str,
        first: String,
        other: String,
    },
    /// Slice positions that do not run along the slice normal, by more than `max_deg`:
    /// 0.05 degrees when tilts are refused (`LoadConfig::gantry_tilt`), else the largest
    /// tilt corrected. `angle_deg` is the angle between the normal and the line from the
    /// first slice's position to the last's.
    #[error(
        "gantry tilt of {angle_deg:.2} degrees, over the {max_deg} degrees allowed: slice positions do not lie along the slice normal"
    )]
    GantryTilt { angle_deg: f64, max_deg: f64 },
    /// Slices shifted in their plane: positions up to `offset_mm` off the straight stack
    /// (the line from the first slice's position to the last's when the stack is tilted,
    /// else the normal through the first), more than `max_mm`. When tilts are refused
    /// (`LoadConfig::gantry_tilt`) that is the offset a 0.05-degree tilt makes over the
    /// stack, and at least half a pixel; else the stack's length (a 45-degree shift).
    #[error(
        "slice positions up to {offset_mm:.3} mm off a straight stack, over the {max_mm:.3} mm allowed: slices are shifted in their plane"
    )]
    ShiftedSlices { offset_mm: f64, max_mm: f64 },
    #[error("slices share no distinct positions (all at one position)")]
    SinglePosition,
    /// The series' planes form `stacks` stacks (they differ in orientation, rows and
    /// columns, or pixel spacing: a localizer, two reconstructions), and no one of them is
    /// the largest: the largest `tied` hold `planes` planes each. `LoadConfig::stack`
    /// (`--stack N`) picks one; `described` names them in their order.
    #[error(
        "the series' planes form {stacks} stacks (they differ in orientation, size or pixel spacing), the largest {tied} with {planes} planes each: choose one with --stack N (Python: stack=N); {described}"
    )]
    SeveralStacks {
        stacks: usize,
        tied: usize,
        planes: usize,
        described: String,
    },
    /// `LoadConfig::stack` asks for a stack of a series whose planes form over `max`
    /// stacks, which are not told apart (such a series is refused as mixed).
    #[error("the series' planes form over {max} stacks: a stack is chosen among at most {max}")]
    TooManyStacks { max: usize },
    /// `LoadConfig::stack` asks for a stack the series does not have.
    #[error("stack {requested} asked for, but the series' planes form {stacks} stack(s)")]
    NoSuchStack { requested: usize, stacks: usize },
    /// The problem of one stack of a series whose planes form several: the one loaded, by
    /// default the largest.
    #[error("stack {stack} of the {stacks} the series' planes form (--stack N picks another): {problem}")]
    InStack {
        stack: usize,
        stacks: usize,
        problem: Box<SeriesProblem>,
    },
    #[error("{0}")]
    Attribute(String),
}

impl Error {
    /// An [`Error::Io`] naming `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A short, stable name of the error's category, for the CLI and bindings.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Dicom { .. }
            | Error::UnsupportedTransferSyntax { .. }
            | Error::NoSeries { .. }
            | Error::SeriesNotFound { .. }
            | Error::Series { .. } => "dicom",
            Error::MetaImage { .. } | Error::Nifti { .. } | Error::UnknownFormat { .. } => "format",
            Error::Limit { .. } => "limit",
            Error::Geometry(_) => "geometry",
            Error::Csv { .. } | Error::Lidc { .. } | Error::Eval(_) => "evaluation",
            Error::Preprocess { .. } => "preprocess",
            Error::Model { .. } => "model",
            Error::Checkpoint { .. } => "checkpoint",
            Error::Cache { .. } => "cache",
            Error::Device(_) => "device",
            Error::InvalidArgument(_) => "argument",
        }
    }
}
