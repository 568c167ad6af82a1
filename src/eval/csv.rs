//! Reading the LUNA16 CSV files: annotations, excluded findings, submissions (a header,
//! columns found by name as the official script finds them) and `seriesuids.csv` (one UID
//! per line, no header).
//!
//! Fields are separated by commas and trimmed; one pair of surrounding double quotes is
//! removed (quoted fields containing commas are not supported). Blank lines are skipped, a
//! UTF-8 byte-order mark and CRLF line ends are accepted. Errors name the file and its
//! 1-based line.

use super::{Candidate, Finding};
use crate::error::{Error, Result};
use crate::limits::Limits;
use std::path::Path;

/// Reads a whole text file, refusing files over [`Limits::max_file_bytes`] and invalid UTF-8.
fn read_text(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Limits::default().check_file_bytes(meta.len())?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.starts_with('\u{feff}') {
                text.drain(..'\u{feff}'.len_utf8());
            }
            Ok(text)
        }
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..valid]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            Err(csv_error(path, line, "not valid UTF-8 text"))
        }
    }
}

fn csv_error(path: &Path, line: usize, message: impl Into<String>) -> Error {
    Error::Csv {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Non-blank lines with their 1-based line numbers, line ends removed.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// Splits a line into trimmed, unquoted fields.
fn split_fields<'a>(line: &'a str, out: &mut Vec<&'a str>) {
    out.clear();
    out.extend(line.split(',').map(|f| {
        let f = f.trim();
        f.strip_prefix('"')
            .and_then(|g| g.strip_suffix('"'))
            .map(str::trim)
            .unwrap_or(f)
    }));
}

/// A parsed header: the number of fields and the index of each wanted column.
struct Header<const N: usize> {
    width: usize,
    columns: [usize; N],
}

fn parse_header<'a, const N: usize>(
    path: &Path,
    rows: &mut impl Iterator<Item = (usize, &'a str)>,
    wanted: [&str; N],
) -> Result<Header<N>> {
    let Some((line, text)) = rows.next() else {
        return Err(csv_error(
            path,
            1,
            format!("empty file; expected a header with {}", wanted.join(",")),
        ));
    };
    let mut fields = Vec::new();
    split_fields(text, &mut fields);
    let mut columns = [0usize; N];
    for (slot, name) in columns.iter_mut().zip(wanted) {
        *slot = fields
            .iter()
            .position(|f| f.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                csv_error(
                    path,
                    line,
                    format!(
                        "header has no column {name:?} (expected {}; found {text:?})",
                        wanted.join(",")
                    ),
                )
            })?;
    }
    Ok(Header {
        width: fields.len(),
        columns,
    })
}

/// Parses a finite number.
fn number(path: &Path, line: usize, column: &str, field: &str) -> Result<f64> {
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(csv_error(
            path,
            line,
            format!("{column} is {v}; it must be a finite number"),
        )),
        Err(_) => Err(csv_error(
            path,
            line,
            format!("{column}: {field:?} is not a number"),
        )),
    }
}

/// Checks the field count of a row against the header and returns the wanted fields.
fn row_fields<'a, const N: usize>(
    path: &Path,
    line: usize,
    header: &Header<N>,
    fields: &[&'a str],
) -> Result<[&'a str; N]> {
    if fields.len() != header.width {
        return Err(csv_error(
            path,
            line,
            format!(
                "{} fields, but the header has {}",
                fields.len(),
                header.width
            ),
        ));
    }
    Ok(header.columns.map(|c| fields[c]))
}

fn series_uid(path: &Path, line: usize, field: &str) -> Result<String> {
    if field.is_empty() {
        return Err(csv_error(path, line, "empty seriesuid"));
    }
    Ok(field.to_string())
}

/// Reads `annotations.csv` or `annotations_excluded.csv`.
pub(crate) fn read_annotations(path: &Path) -> Result<Vec<Finding>> {
    let text = read_text(path)?;
    let mut rows = lines(&text);
    let header = parse_header(
        path,
        &mut rows,
        ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
    )?;
    let mut fields = Vec::with_capacity(header.width);
    let mut out = Vec::new();
    for (line, text) in rows {
        split_fields(text, &mut fields);
        let [uid, x, y, z, d] = row_fields(path, line, &header, &fields)?;
        let diameter_mm = if d.is_empty() {
            None
        } else {
            let v = number(path, line, "diameter_mm", d)?;
            // The official script: `if diameter < 0.0: diameter = 10.0`.
            (v >= 0.0).then_some(v)
        };
        out.push(Finding {
            seriesuid: series_uid(path, line, uid)?,
            coord_x: number(path, line, "coordX", x)?,
            coord_y: number(path, line, "coordY", y)?,
            coord_z: number(path, line, "coordZ", z)?,
            diameter_mm,
        });
    }
    Ok(out)
}

/// Reads a submission.
pub(crate) fn read_predictions(path: &Path) -> Result<Vec<Candidate>> {
    let text = read_text(path)?;
    let mut rows = lines(&text);
    let header = parse_header(
        path,
        &mut rows,
        ["seriesuid", "coordX", "coordY", "coordZ", "probability"],
    )?;
    let mut fields = Vec::with_capacity(header.width);
    // One row is at least ~20 bytes: reserve without over-allocating much.
    let mut out = Vec::with_capacity(text.len() / 64);
    for (line, text) in rows {
        split_fields(text, &mut fields);
        let [uid, x, y, z, p] = row_fields(path, line, &header, &fields)?;
        let probability = match p.parse::<f64>() {
            Ok(v) if v.is_nan() => return Err(csv_error(path, line, "probability is NaN")),
            Ok(v) if v.is_infinite() => {
                return Err(csv_error(
                    path,
                    line,
                    format!("probability is {v}; it must be finite"),
                ))
            }
            Ok(v) => v,
            Err(_) => {
                return Err(csv_error(
                    path,
                    line,
                    format!("probability: {p:?} is not a number"),
                ))
            }
        };
        out.push(Candidate {
            seriesuid: series_uid(path, line, uid)?,
            coord_x: number(path, line, "coordX", x)?,
            coord_y: number(path, line, "coordY", y)?,
            coord_z: number(path, line, "coordZ", z)?,
            probability,
        });
    }
    Ok(out)
}

/// Reads `seriesuids.csv`: the first field of each non-blank line is a series UID (the
/// official file has no header; a first line reading `seriesuid` is skipped with a
/// warning). A UID listed twice is an error, as it would count its scan twice.
pub fn read_seriesuids(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let mut fields = Vec::new();
    for (line, text) in lines(&text) {
        split_fields(text, &mut fields);
        let uid = fields.first().copied().unwrap_or("");
        if out.is_empty() && seen.is_empty() && uid.eq_ignore_ascii_case("seriesuid") {
            tracing::warn!(path = %path.display(), "skipping a header line 'seriesuid' (the official seriesuids.csv has none)");
            continue;
        }
        let uid = series_uid(path, line, uid)?;
        if let Some(first) = seen.insert(uid.clone(), line) {
            return Err(csv_error(
                path,
                line,
                format!("series {uid} is listed twice (first on line {first})"),
            ));
        }
        out.push(uid);
    }
    if out.is_empty() {
        return Err(csv_error(path, 1, "no series UID in the file"));
    }
    Ok(out)
}

/// Writes a CSV file: `header`, then what `rows` writes.
fn write_csv(
    path: &Path,
    header: &str,
    rows: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::io(path, e);
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(w, "{header}").map_err(io)?;
    rows(&mut w).map_err(io)?;
    w.flush().map_err(io)
}

/// Writes candidates as a LUNA16 submission CSV (`seriesuid,coordX,coordY,coordZ,probability`),
/// numbers in their shortest exact decimal form so that reading the file back gives the
/// same values.
pub fn write_predictions_csv(candidates: &[Candidate], path: impl AsRef<Path>) -> Result<()> {
    write_csv(path.as_ref(), PREDICTIONS_CSV_HEADER, |w| {
        write_prediction_rows(w, candidates)
    })
}

/// The header line of a LUNA16 annotations CSV (`annotations.csv`,
/// `annotations_excluded.csv`).
pub const ANNOTATIONS_CSV_HEADER: &str = "seriesuid,coordX,coordY,coordZ,diameter_mm";

/// Writes findings as a LUNA16 annotations CSV ([`ANNOTATIONS_CSV_HEADER`]), numbers in
/// their shortest exact decimal form, a finding without a diameter as `-1` (as LUNA16's
/// `annotations_excluded.csv` does).
pub fn write_annotations_csv(findings: &[Finding], path: impl AsRef<Path>) -> Result<()> {
    use std::io::Write;
    write_csv(path.as_ref(), ANNOTATIONS_CSV_HEADER, |w| {
        for f in findings {
            writeln!(
                w,
                "{},{},{},{},{}",
                f.seriesuid,
                f.coord_x,
                f.coord_y,
                f.coord_z,
                f.diameter_mm.unwrap_or(-1.0)
            )?;
        }
        Ok(())
    })
}

/// The header line of a LUNA16 predictions (submission) CSV.
pub const PREDICTIONS_CSV_HEADER: &str = "seriesuid,coordX,coordY,coordZ,probability";

/// Writes `candidates` as rows of a predictions CSV (after [`PREDICTIONS_CSV_HEADER`]), one
/// line each: what [`write_predictions_csv`] writes, for writers that append scan by scan.
pub fn write_prediction_rows(
    w: &mut impl std::io::Write,
    candidates: &[Candidate],
) -> std::io::Result<()> {
    for c in candidates {
        writeln!(
            w,
            "{},{},{},{},{}",
            c.seriesuid, c.coord_x, c.coord_y, c.coord_z, c.probability
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, text: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(name);
        let mut f = std::fs::File::create(&p).expect("create temp file");
        f.write_all(text).expect("write temp file");
        p
    }

    fn line_of(e: Error) -> usize {
        match e {
            Error::Csv { line, .. } => line,
            other => panic!("expected a CSV error, got {other}"),
        }
    }

    #[test]
    fn annotations_any_column_order_bom_crlf_missing_diameter() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = write(
            &dir,
            "a.csv",
            b"\xEF\xBB\xBFcoordX,seriesuid,coordY,coordZ,diameter_mm,extra\r\n\
              1.5,s1,2,3,-1,x\r\n\r\n\
              4,s2,5,6,,y\r\n\
              7,s3,8,9,\"6.5\",z\r\n",
        );
        let a = read_annotations(&p).expect("parse");
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].seriesuid, "s1");
        assert_eq!((a[0].coord_x, a[0].coord_y, a[0].coord_z), (1.5, 2.0, 3.0));
        assert_eq!(a[0].diameter_mm, None);
        assert_eq!(a[1].diameter_mm, None);
        assert_eq!(a[2].diameter_mm, Some(6.5));
        assert_eq!(a[0].radius_squared_mm2(), 25.0);
    }

    #[test]
    fn malformed_rows_name_their_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let head = "seriesuid,coordX,coordY,coordZ,probability\n";
        let cases: [(&str, usize); 6] = [
            ("s,1,2,3,0.5\ns,1,2,oops,0.5\n", 3),
            ("s,1,2,3,0.5\n\ns,1,2,3\n", 4),
            ("s,1,2,3,nan\n", 2),
            ("s,1,2,3,NaN\n", 2),
            ("s,1,2,3,inf\n", 2),
            (",1,2,3,0.5\n", 2),
        ];
        for (body, line) in cases {
            let p = write(&dir, "p.csv", format!("{head}{body}").as_bytes());
            let e = read_predictions(&p).expect_err(body);
            assert_eq!(line_of(e), line, "{body:?}");
        }
        let p = write(&dir, "p.csv", b"seriesuid,coordX,coordY,coordZ\ns,1,2,3\n");
        assert_eq!(
            line_of(read_predictions(&p).expect_err("no probability column")),
            1
        );
        let p = write(&dir, "p.csv", b"");
        assert_eq!(line_of(read_predictions(&p).expect_err("empty")), 1);
        let p = write(
            &dir,
            "p.csv",
            b"seriesuid,coordX,coordY,coordZ,probability\ns,1,2,3,0.5\n\xff\n",
        );
        assert_eq!(line_of(read_predictions(&p).expect_err("utf8")), 3);
        let p = write(
            &dir,
            "a.csv",
            b"seriesuid,coordX,coordY,coordZ,diameter_mm\ns,1,2,3,nan\n",
        );
        assert_eq!(line_of(read_annotations(&p).expect_err("nan diameter")), 2);
        let missing = dir.path().join("missing.csv");
        assert!(matches!(read_predictions(&missing), Err(Error::Io { .. })));
    }

    #[test]
    fn seriesuids_without_header_duplicates_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = write(&dir, "s.csv", b"1.2.3\n\n1.2.4\r\n");
        assert_eq!(read_seriesuids(&p).expect("parse"), vec!["1.2.3", "1.2.4"]);
        let p = write(&dir, "s.csv", b"seriesuid\n1.2.3\n");
        assert_eq!(read_seriesuids(&p).expect("parse"), vec!["1.2.3"]);
        let p = write(&dir, "s.csv", b"1.2.3\n1.2.4\n1.2.3\n");
        assert_eq!(line_of(read_seriesuids(&p).expect_err("duplicate")), 3);
        let p = write(&dir, "s.csv", b"\n\n");
        assert!(read_seriesuids(&p).is_err());
    }
}
