#![allow(dead_code)]
//! Shared helpers for integration tests.

use std::path::PathBuf;

/// The shared real-data folder: `$LUNGCAD_DATA`, default `../shared/data` beside the crate.
/// `None` (after printing why) when it is absent, so tests can skip.
pub fn data_dir(what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LUNGCAD_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let p = dir.join(what);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} not found (set LUNGCAD_DATA to the shared data folder)",
            p.display()
        );
        None
    }
}

/// LIDC-IDRI-0001's series folder.
pub fn lidc_0001() -> Option<PathBuf> {
    let root = data_dir("lidc/LIDC-IDRI-0001")?;
    // <study>/<series>/ : the one folder holding .dcm files
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let mut has_dcm = false;
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().map(|x| x == "dcm").unwrap_or(false) {
                has_dcm = true;
            }
        }
        if has_dcm {
            return Some(d);
        }
    }
    Some(root)
}

/// The LUNA16 nodule of LIDC-IDRI-0001 (world x, y, z mm; diameter mm).
pub const LIDC_0001_UID: &str = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192";
pub const LIDC_0001_NODULE: ([f64; 3], f64) = ([56.208, 86.343, -115.868], 23.35);

/// The Python interpreter (`$LUNGCAD_PYTHON`, default `python3`) when it can import every
/// module of `modules` (e.g. "SimpleITK, numpy"); `None`, after printing why, otherwise.
pub fn python_with(modules: &str) -> Option<String> {
    let python = std::env::var("LUNGCAD_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(python)
    } else {
        eprintln!(
            "SKIP: `{python} -c 'import {modules}'` failed \
             (pip install -r tests/requirements.txt, or set LUNGCAD_PYTHON)"
        );
        None
    }
}
