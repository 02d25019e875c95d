//! Upstream faults: every way Scout can fail, injected by the fake Scout or
//! by a socket that misbehaves, against the real exporter binary.
//!
//! For each fault the test checks what a user would: the failure is counted
//! once under its reason, `scout_exporter_up` drops to 0, the last good
//! series stay served unchanged, the log names the organization and the
//! reason, and the exporter recovers by itself when Scout does.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use scout_exporter::fake::{FakeScout, OPENMETRICS_TEXT, PROMETHEUS_TEXT, Reply};

/// Every `reason` label value, from the library's own list.
const REASONS: [&str; 9] = scout_exporter::scout::Reason::ALL_LABELS;

struct Rig {
    fake: FakeScout,
    exporter: Exporter,
    good: BTreeMap<SeriesKey, f64>,
}

/// A fake Scout with a good payload for `acme`, and an exporter on it that
/// refreshes every second (so a failure is visible for about a second).
async fn rig(extra: &[&str]) -> Rig {
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload("acme", payload(&["prod", "dev"], &[("p1", "Policy one")], 4));
    let url = fake.url();
    let mut args = vec![
        "--org",
        "acme",
        "--scout-url",
        url.as_str(),
        "--refresh-interval",
        "1s",
        "--scout-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    let exporter = Exporter::start(
        &args,
        &[("DOCKER_SCOUT_API_KEY", TOKEN), ("OTEL_METRICS_EXPORTER", "prometheus")],
    );
    let good = eventually(Duration::from_secs(10), "first good refresh", || async {
        let s = scrape(&exporter).await;
        let scout = scout_series(&s);
        (!scout.is_empty()).then_some(scout)
    })
    .await;
    Rig { fake, exporter, good }
}

fn scout_series(s: &BTreeMap<SeriesKey, f64>) -> BTreeMap<SeriesKey, f64> {
    s.iter()
        .filter(|((n, _), _)| n.starts_with("scout_") && !n.starts_with("scout_exporter_"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn errors(s: &BTreeMap<SeriesKey, f64>, org: &str, reason: &str) -> f64 {
    let labels = [("org".to_string(), org.to_string()), ("reason".to_string(), reason.to_string())];
    s.get(&("scout_exporter_refresh_errors_total".to_string(), labels.into()))
        .copied()
        .unwrap_or(0.0)
}

fn up(s: &BTreeMap<SeriesKey, f64>, org: &str) -> Option<f64> {
    s.get(&("scout_exporter_up".to_string(), [("org".to_string(), org.to_string())].into()))
        .copied()
}

impl Rig {
    /// Injects `replies`, waits for the failure under `reason` and for the
    /// recovery, and checks everything a user would look at on the way.
    async fn fault(&self, replies: Vec<Reply>, reason: &str) {
        let before = scrape(&self.exporter).await;
        let attempts = replies.len() as f64;
        self.fake.push("acme", replies);

        let deadline = Instant::now() + Duration::from_secs(15);
        let during = loop {
            let s = scrape(&self.exporter).await;
            if errors(&s, "acme", reason) >= errors(&before, "acme", reason) + attempts {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{reason} not counted; log:\n{}",
                self.exporter.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(up(&during, "acme"), Some(0.0), "{reason}: up must be 0 while failing");
        assert_eq!(scout_series(&during), self.good, "{reason}: the last good series must stay");

        let after =
            eventually(Duration::from_secs(15), &format!("recovery after {reason}"), || async {
                let s = scrape(&self.exporter).await;
                (up(&s, "acme") == Some(1.0)).then_some(s)
            })
            .await;
        for r in REASONS {
            let expected = errors(&before, "acme", r) + if r == reason { attempts } else { 0.0 };
            assert_eq!(errors(&after, "acme", r), expected, "after {reason}: count of {r}");
        }
        assert_eq!(scout_series(&after), self.good);
        let log = self.exporter.log();
        assert!(
            log.lines().any(|l| l.contains("refresh failed")
                && l.contains("org=acme")
                && l.contains(&format!("reason={reason}"))),
            "no log line for {reason}:\n{log}"
        );
    }
}

#[tokio::test]
async fn http_status_faults_are_counted_by_reason() {
    let rig = rig(&[]).await;
    rig.fault(vec![Reply::Status(401, vec![])], "unauthorized").await;
    rig.fault(vec![Reply::Status(403, vec![])], "forbidden").await;
    rig.fault(vec![Reply::Status(404, vec![])], "not_found").await;
    rig.fault(vec![Reply::Status(500, vec![])], "server_error").await;
    rig.fault(vec![Reply::Status(503, vec![]), Reply::Status(502, vec![])], "server_error").await;
    let log = rig.exporter.log();
    assert!(log.contains("owner of the organization"), "401/403 must say what to check:\n{log}");
    assert!(log.contains("enrolled in Docker Scout"), "404 must say what to check:\n{log}");
}

#[tokio::test]
async fn broken_payloads_are_invalid_and_never_reach_the_snapshot() {
    let rig = rig(&[]).await;
    let good = payload(&["prod", "dev"], &[("p1", "Policy one")], 4);
    rig.fault(vec![Reply::Short], "invalid_payload").await;
    let truncated_om = good.clone(); // no `# EOF`: a truncated OpenMetrics body
    rig.fault(vec![Reply::Body(OPENMETRICS_TEXT.into(), truncated_om.into())], "invalid_payload")
        .await;
    rig.fault(
        vec![Reply::Body("text/html".into(), "<html>maintenance</html>".into())],
        "invalid_payload",
    )
    .await;
    rig.fault(
        vec![Reply::Body(PROMETHEUS_TEXT.into(), "<html>maintenance</html>\n".into())],
        "invalid_payload",
    )
    .await;
    rig.fault(vec![Reply::Body(PROMETHEUS_TEXT.into(), "".into())], "invalid_payload").await;
    let half = good[..good.len() / 2].to_string();
    let cut_mid_label = half.rsplit_once('"').map(|(head, _)| format!("{head}\"")).unwrap();
    rig.fault(vec![Reply::Body(PROMETHEUS_TEXT.into(), cut_mid_label.into())], "invalid_payload")
        .await;
    let log = rig.exporter.log();
    assert!(log.contains("line "), "parse errors must name the line:\n{log}");
}

#[tokio::test]
async fn timeouts_stalls_and_oversized_bodies() {
    let rig = rig(&["--max-body-size", "64KiB"]).await;
    rig.fault(vec![Reply::Delay(Duration::from_secs(3))], "timeout").await;
    rig.fault(vec![Reply::Stall(200)], "timeout").await;
    let big = "scout_big{streamName=\"s\",severity=\"LOW\"} 1\n".repeat(4000);
    rig.fault(vec![Reply::Body(PROMETHEUS_TEXT.into(), big.into())], "too_large").await;
    // A chunked body that never ends: reading must stop at the cap.
    rig.fault(vec![Reply::Endless], "too_large").await;
    assert!(
        rig.exporter.rss_kib() < 100 * 1024,
        "memory must stay bounded: {} KiB",
        rig.exporter.rss_kib()
    );
}

#[tokio::test]
async fn rate_limits_are_honoured_in_seconds_and_as_dates() {
    let rig = rig(&[]).await;
    for as_date in [false, true] {
        // HTTP dates have one-second resolution, and the 429 is served up to
        // one refresh interval after it is queued: 6 s ahead leaves at least
        // 3.9 s to wait, against about 1 s of plain backoff.
        let (header, min_gap) = if as_date {
            (
                httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(6)),
                Duration::from_millis(3500),
            )
        } else {
            ("2".to_string(), Duration::from_millis(1950))
        };
        let index = rig.fake.seen().len();
        rig.fault(
            vec![Reply::Status(429, vec![("retry-after".into(), header.clone())])],
            "rate_limited",
        )
        .await;
        let seen = rig.fake.seen();
        let limited = seen[index..].first().expect("the 429 request").at;
        let next = seen[index + 1..].first().expect("a request after the 429").at;
        assert!(
            next.duration_since(limited) >= min_gap,
            "Retry-After {header}: next request after {:?}",
            next.duration_since(limited)
        );
    }
}

#[tokio::test]
async fn connect_refused_is_counted_as_connect() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    let exporter = Exporter::start(
        &["--org", "acme", "--scout-url", &url, "--refresh-interval", "200ms"],
        &[("DOCKER_SCOUT_API_KEY", TOKEN), ("OTEL_METRICS_EXPORTER", "prometheus")],
    );
    let s = eventually(Duration::from_secs(10), "connect errors", || async {
        let s = scrape(&exporter).await;
        (errors(&s, "acme", "connect") >= 2.0).then_some(s)
    })
    .await;
    assert_eq!(up(&s, "acme"), Some(0.0));
    let (status, body) = get(&exporter.url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("acme: connect"), "{body}");
}

#[tokio::test]
async fn a_server_that_never_answers_or_never_accepts_times_out() {
    // Accepts the connection and reads, but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    // Never accepts: a backlog of one, filled, so new connections hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(full_addr),
        )
        .await
        {
            fillers.push(s);
        }
    }

    for (addr, allowed) in
        [(silent_addr, &["timeout"][..]), (full_addr, &["timeout", "connect"][..])]
    {
        let url = format!("http://{addr}");
        let exporter = Exporter::start(
            &[
                "--org",
                "acme",
                "--scout-url",
                &url,
                "--refresh-interval",
                "200ms",
                "--scout-timeout",
                "1s",
            ],
            &[("DOCKER_SCOUT_API_KEY", TOKEN), ("OTEL_METRICS_EXPORTER", "prometheus")],
        );
        let s = eventually(Duration::from_secs(15), "a timeout", || async {
            let s = scrape(&exporter).await;
            let total: f64 = allowed.iter().map(|r| errors(&s, "acme", r)).sum();
            (total >= 1.0).then_some(s)
        })
        .await;
        assert_eq!(up(&s, "acme"), Some(0.0));
        let others: f64 =
            REASONS.iter().filter(|r| !allowed.contains(r)).map(|r| errors(&s, "acme", r)).sum();
        assert_eq!(others, 0.0, "{addr}: unexpected reasons");
    }
    drop(fillers);
}

#[tokio::test]
async fn a_slow_organization_never_delays_another() {
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload("fast", payload(&["prod"], &[], 1));
    fake.set_payload("slow", payload(&["prod"], &[], 2));
    fake.push("slow", (0..20).map(|_| Reply::Delay(Duration::from_millis(1500))));
    let url = fake.url();
    let exporter = Exporter::start(
        &[
            "--org",
            "fast,slow",
            "--scout-url",
            &url,
            "--refresh-interval",
            "100ms",
            "--scout-timeout",
            "5s",
        ],
        &[("DOCKER_SCOUT_API_KEY", TOKEN), ("OTEL_METRICS_EXPORTER", "prometheus")],
    );
    eventually(Duration::from_secs(10), "fast data", || async {
        let s = scrape(&exporter).await;
        (up(&s, "fast") == Some(1.0)).then_some(())
    })
    .await;
    let started = Instant::now();
    let (fast0, slow0) = (fake.requests_for("fast"), fake.requests_for("slow"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fast = fake.requests_for("fast") - fast0;
    let slow = fake.requests_for("slow") - slow0;
    assert!(fast >= 10, "fast org refreshed only {fast} times in {:?}", started.elapsed());
    assert!(slow <= 3, "slow org: {slow} requests in 3 s with 1.5 s answers");
    assert_eq!(fake.max_in_flight("slow"), 1, "more than one request in flight for one org");
    assert_eq!(fake.max_in_flight("fast"), 1);
}

#[tokio::test]
async fn stale_data_is_withdrawn_and_comes_back() {
    let rig = rig(&["--max-staleness", "2s"]).await;
    rig.fake.push("acme", (0..40).map(|_| Reply::Status(500, vec![])));
    let s = eventually(Duration::from_secs(15), "Scout series withdrawn", || async {
        let s = scrape(&rig.exporter).await;
        scout_series(&s).is_empty().then_some(s)
    })
    .await;
    assert_eq!(up(&s, "acme"), Some(0.0), "exporter series stay so alerts fire");
    let age_key =
        ("scout_exporter_snapshot_age_seconds".to_string(), [("org".into(), "acme".into())].into());
    assert!(s[&age_key] > 2.0);
    assert!(rig.exporter.log().contains("older than --max-staleness"));

    // Scout recovers: the series come back with the next good refresh.
    rig.fake.clear_script("acme");
    let s = eventually(Duration::from_secs(15), "series back", || async {
        let s = scrape(&rig.exporter).await;
        (!scout_series(&s).is_empty()).then_some(s)
    })
    .await;
    assert_eq!(scout_series(&s), rig.good);
}

#[tokio::test]
async fn redirects_never_carry_the_token_to_another_origin() {
    let other = FakeScout::start("irrelevant").await.unwrap();
    let rig = rig(&[]).await;
    let elsewhere = format!("{}/v1/exporter/org/acme/metrics", other.url());
    rig.fault(vec![Reply::Redirect(elsewhere)], "server_error").await;
    assert!(
        other.seen().iter().all(|r| r.header("authorization").is_none()),
        "the token reached another origin"
    );
    assert!(rig.exporter.log().contains("not followed"));

    // A redirect within the same origin is followed.
    let same = format!("{}/v1/exporter/org/acme/metrics?moved=1", rig.fake.url());
    let before = rig.fake.requests_for("acme");
    rig.fake.push("acme", [Reply::Redirect(same)]);
    eventually(Duration::from_secs(10), "the redirect followed", || async {
        (rig.fake.requests_for("acme") >= before + 2).then_some(())
    })
    .await;
    let s = scrape(&rig.exporter).await;
    assert_eq!(up(&s, "acme"), Some(1.0));
    assert_eq!(errors(&s, "acme", "server_error"), 1.0);
}

#[tokio::test]
async fn a_rotated_token_file_is_picked_up_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "first-token\n").unwrap();
    let fake = FakeScout::start("first-token").await.unwrap();
    fake.set_payload("acme", payload(&["prod"], &[], 1));
    let url = fake.url();
    let exporter = Exporter::start(
        &[
            "--org",
            "acme",
            "--scout-url",
            &url,
            "--refresh-interval",
            "300ms",
            "--token-file",
            file.to_str().unwrap(),
        ],
        &[("OTEL_METRICS_EXPORTER", "prometheus")],
    );
    eventually(Duration::from_secs(10), "up with the first token", || async {
        (up(&scrape(&exporter).await, "acme") == Some(1.0)).then_some(())
    })
    .await;

    // Scout now wants a new token: 401 until the file changes.
    fake.set_token("second-token-rotated");
    eventually(Duration::from_secs(10), "401 counted", || async {
        let s = scrape(&exporter).await;
        (errors(&s, "acme", "unauthorized") >= 1.0 && up(&s, "acme") == Some(0.0)).then_some(())
    })
    .await;
    std::fs::write(&file, "second-token-rotated\n").unwrap();
    eventually(Duration::from_secs(10), "up with the rotated token", || async {
        (up(&scrape(&exporter).await, "acme") == Some(1.0)).then_some(())
    })
    .await;
    let last = fake.seen().last().cloned().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer second-token-rotated"));

    // An emptied file is a clear, counted error; the data stays.
    std::fs::write(&file, "\n").unwrap();
    eventually(Duration::from_secs(10), "empty token file reported", || async {
        exporter.log().contains("is empty").then_some(())
    })
    .await;
    let log = exporter.log();
    assert!(
        !log.contains("first-token") && !log.contains("second-token-rotated"),
        "token in log:\n{log}"
    );
}

#[tokio::test]
async fn the_token_never_appears_in_logs_metrics_or_errors() {
    let fake = FakeScout::start(TOKEN).await.unwrap();
    fake.set_payload("acme", payload(&["prod"], &[], 1));
    let other = FakeScout::start("x").await.unwrap();
    fake.push(
        "acme",
        [
            Reply::Status(401, vec![]),
            Reply::Status(500, vec![]),
            Reply::Redirect(format!("{}/v1/exporter/org/acme/metrics", other.url())),
            Reply::Short,
            Reply::Status(403, vec![]),
        ],
    );
    let (sink, addr) = OtlpSink::start().await;
    let url = fake.url();
    let endpoint = format!("http://{addr}");
    let exporter = Exporter::start(
        &["--org", "acme,ghost", "--scout-url", &url, "--refresh-interval", "100ms"],
        &[
            ("DOCKER_SCOUT_API_KEY", TOKEN),
            ("RUST_LOG", "trace"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    eventually(Duration::from_secs(15), "all faults served", || async {
        (fake.pending("acme") == 0 && sink.count() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, metrics) = get(&exporter.url("/metrics")).await;
    let (_, ready) = get(&exporter.url("/readyz")).await;
    let otlp = format!("{:?}", sink.requests.lock().unwrap());
    let (status, _) = exporter.terminate_keeping_log();
    assert!(status.0.success());
    let log = status.1;
    assert!(log.lines().count() > 20, "trace logging should be verbose:\n{log}");
    for (what, text) in
        [("the log", &log), ("/metrics", &metrics), ("/readyz", &ready), ("OTLP", &otlp)]
    {
        assert!(!text.contains(TOKEN), "token in {what}");
    }
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scout-exporter"))
        .args(["--org", "acme", "--scout-url", "http://scout.example.com"])
        .env_clear()
        .env("DOCKER_SCOUT_API_KEY", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-insecure-http"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains(TOKEN));
}
