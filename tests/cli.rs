//! The command line as a user meets it: `check`, `--help`, and start-up
//! errors that name the setting.

mod common;

use std::process::{Command, Output};

use common::*;
use scout_exporter::fake::FakeScout;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scout-exporter"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_a_summary_and_exits_zero() {
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload(
        "acme",
        payload(
            &["production", "staging"],
            &[("p1", "No fixable critical or high vulnerabilities")],
            3,
        ),
    );
    let url = fake.url();
    let out = tokio::task::spawn_blocking(move || {
        run(&["--org", "acme", "--scout-url", &url, "check"], &[("DOCKER_SCOUT_API_KEY", TOKEN)])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "organization acme",
        "ok: 16 series",
        "scout_stream_vulnerabilities",
        "10 series",
        "scout_policy_compliance_ratio",
        "streams (2): production, staging",
        "policies (1): No fixable critical or high vulnerabilities",
        " ms",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(!stdout.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_with_the_reason_and_a_hint() {
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload("acme", payload(&["prod"], &[], 1));
    let url = fake.url();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &["--org", "acme,missing", "--scout-url", &url, "check"],
            &[("DOCKER_SCOUT_API_KEY", "wrong-token")],
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAILED: unauthorized: HTTP 401"), "{stdout}");
    assert!(stdout.contains("owner of the organization"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 of 2 organizations failed"));
}

#[test]
fn help_lists_every_setting_with_its_variable() {
    let out = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for entry in [
        "--org",
        "DOCKER_SCOUT_ORG",
        "DOCKER_SCOUT_API_KEY",
        "--token-file",
        "DOCKER_SCOUT_TOKEN_FILE",
        "--scout-url",
        "DOCKER_SCOUT_API_URL",
        "--refresh-interval",
        "SCOUT_REFRESH_INTERVAL",
        "--scout-timeout",
        "SCOUT_TIMEOUT",
        "--listen",
        "OTEL_EXPORTER_PROMETHEUS_HOST",
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        "--config",
        "SCOUT_EXPORTER_CONFIG",
        "--demo",
        "--log-format",
        "RUST_LOG",
        "check",
    ] {
        assert!(help.contains(entry), "--help lacks {entry}:\n{help}");
    }
}

#[test]
fn a_bad_setting_stops_the_start_with_one_line_naming_it() {
    for (args, env, names) in [
        (
            &["--demo"][..],
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")][..],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (&["--demo"], &[("OTEL_METRIC_EXPORT_INTERVAL", "soon")], "OTEL_METRIC_EXPORT_INTERVAL"),
        (&["--org", "acme"], &[], "DOCKER_SCOUT_API_KEY"),
        (&["--org", "acme", "--token-file", "/nonexistent/token"], &[], "/nonexistent/token"),
        (&["--demo", "--refresh-interval", "fast"], &[], "--refresh-interval"),
    ] {
        let out = run(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} started");
        assert!(err.contains(names), "{args:?} {env:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line expected:\n{err}");
    }
}
