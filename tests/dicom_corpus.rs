//! Walks every file of the shared DICOM corpus: each one either loads, with HU values
//! that match pydicom's (tests/fixtures/dicom_corpus.json, made by
//! tests/scripts/make_dicom_corpus_fixture.py), or is refused with an error. A panic, a
//! mismatch, or a load that pydicom cannot confirm fails the test.

mod common;

use lungcad::{load, LoadConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn every_corpus_file_loads_correctly_or_is_refused() {
    let Some(corpus) = common::data_dir("dicom-corpus") else {
        return;
    };
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/dicom_corpus.json")).expect("fixture parses");
    let files_fx = &fixture["files"];
    let mut files = Vec::new();
    walk(&corpus, &mut files);
    files.sort();
    let config = LoadConfig {
        allow_modality: true,
        ..LoadConfig::default()
    };
    let (mut verified, mut refused, mut failures) = (0, 0, Vec::new());
    let mut table = String::new();
    for f in &files {
        let rel = f
            .strip_prefix(&corpus)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if !rel.ends_with(".dcm") && !rel.contains("covid19") {
            continue; // licences, READMEs and the NIfTI file are covered elsewhere
        }
        let fx = &files_fx[rel.as_str()];
        let t0 = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(|| load(f, &config));
        let ms = t0.elapsed().as_millis();
        match outcome {
            Err(_) => failures.push(format!("{rel}: PANIC")),
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                if fx["headless"] == true && fx["pydicom"] == "image" {
                    // data sets without the Part 10 header are read, not refused
                    failures.push(format!("{rel}: refused a headless image: {msg}"));
                }
                refused += 1;
                table += &format!("refused  {rel} ({ms} ms): {msg}\n");
            }
            Ok(Ok(v)) => {
                if fx["pydicom"] != "image" {
                    failures.push(format!("{rel}: loaded, but pydicom says {}", fx["pydicom"]));
                    continue;
                }
                let n: i64 = v.hu.len() as i64;
                let sum: i64 = v.hu.iter().map(|&h| h as i64).sum();
                let sum_sq: i64 = v.hu.iter().map(|&h| (h as i64) * (h as i64)).sum();
                let (lo, hi) = v.hu_range();
                let expect_n = fx["frames"].as_i64().unwrap()
                    * fx["rows"].as_i64().unwrap()
                    * fx["columns"].as_i64().unwrap();
                let ok = n == expect_n
                    && sum == fx["sum"].as_i64().unwrap()
                    && sum_sq == fx["sum_sq"].as_i64().unwrap()
                    && lo as i64 == fx["min"].as_i64().unwrap()
                    && hi as i64 == fx["max"].as_i64().unwrap();
                if ok {
                    verified += 1;
                    table += &format!(
                        "verified {rel} ({ms} ms): {:?} {:?}\n",
                        v.shape(),
                        v.info.transfer_syntaxes
                    );
                } else {
                    failures.push(format!(
                        "{rel}: differs from pydicom: n {n} vs {expect_n}, sum {sum} vs {}, min {lo} vs {}, max {hi} vs {}",
                        fx["sum"], fx["min"], fx["max"]
                    ));
                }
            }
        }
    }
    println!("{table}");
    println!(
        "corpus: {verified} verified against pydicom, {refused} refused with an error, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(verified >= 42, "only {verified} corpus files loaded");
}
