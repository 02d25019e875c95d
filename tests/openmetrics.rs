//! The OpenMetrics project's parser test vectors, run in OpenMetrics mode.
//!
//! Each case is a folder with a `metrics` file and a `test.json` whose
//! `shouldParse` says whether a conforming parser accepts it. The suite is
//! read from `OPENMETRICS_TESTDATA`, or from the project's shared copy beside
//! the repository. Outside CI a missing suite skips the test with a note;
//! under CI (`CI=true`) it fails, so the check can never pass by absence.

use std::path::{Path, PathBuf};

use scout_exporter::parse::{Format, Limits, parse};

fn suite_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("OPENMETRICS_TESTDATA").map(PathBuf::from),
        Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/openmetrics/parsers"),
        ),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir())
}

/// Reads `shouldParse` from a case's test.json.
fn should_parse(json: &str) -> bool {
    let value: serde_json::Value = serde_json::from_str(json).expect("test.json is JSON");
    value["shouldParse"].as_bool().expect("test.json has a boolean shouldParse")
}

#[test]
fn openmetrics_conformance_vectors_are_classified_as_the_suite_says() {
    let Some(dir) = suite_dir() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("OpenMetrics test vectors not found: set OPENMETRICS_TESTDATA");
        }
        eprintln!("skipped: OpenMetrics test vectors not found (set OPENMETRICS_TESTDATA)");
        return;
    };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("suite folder is readable")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("test.json").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 200, "only {} cases in {}", cases.len(), dir.display());

    let mut wrong = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let expected = should_parse(&std::fs::read_to_string(case.join("test.json")).unwrap());
        let body = std::fs::read(case.join("metrics")).unwrap_or_default();
        let result =
            std::panic::catch_unwind(|| parse(&body, Format::OpenMetrics, &Limits::default()));
        match result {
            Err(_) => wrong.push(format!("{name}: panicked")),
            Ok(Ok(_)) if !expected => wrong.push(format!("{name}: accepted, must be rejected")),
            Ok(Err(e)) if expected => wrong.push(format!("{name}: rejected ({e}), must parse")),
            Ok(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases misclassified:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    eprintln!("{} OpenMetrics cases classified correctly", cases.len());
}
