//! The built-in sample organization behind `--demo`.
//!
//! The demo starts a [`FakeScout`] on a loopback port with a random token
//! and configures one organization, `demo`, against it, so its data goes
//! through the same client, parser and snapshot as a real organization's.
//! Values drift slowly with the wall clock (a period of about ten
//! minutes), so graphs move, and stay plausible: critical counts are small,
//! low-severity counts large, compliant images never exceed evaluated ones.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::{OrgConfig, TokenSpec};
use crate::fake::{FakeScout, PROMETHEUS_TEXT};
use crate::secret::Token;

/// The demo organization's name.
pub const ORG: &str = "demo";

/// Streams: Scout's own latest-indexed stream and two environments.
pub const STREAMS: [&str; 3] = ["latest-indexed", "production", "staging"];

/// The five severities Scout reports.
pub const SEVERITIES: [&str; 5] = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNSPECIFIED"];

/// Policies as Scout names them: (id, display name).
pub const POLICIES: [(&str, &str); 6] = [
    ("no-fixable-critical-high", "No fixable critical or high vulnerabilities"),
    ("no-high-profile-vulns", "No high-profile vulnerabilities"),
    ("approved-base-images", "Approved Base Images"),
    ("up-to-date-base-images", "Up-to-Date Base Images"),
    ("supply-chain-attestations", "Supply chain attestations"),
    ("default-non-root-user", "Default non-root user"),
];

/// A running demo: keep it alive as long as the organization is served.
pub struct Demo {
    /// The fake Scout serving the demo organization.
    pub scout: FakeScout,
    /// The organization to configure.
    pub org: OrgConfig,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo").field("scout", &self.scout).finish_non_exhaustive()
    }
}

/// Starts the demo's Scout stand-in.
pub async fn start() -> std::io::Result<Demo> {
    let token = format!("demo-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let scout = FakeScout::start(&token).await?;
    scout.set_payload_fn(
        ORG,
        Arc::new(|| {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            (PROMETHEUS_TEXT.to_string(), Bytes::from(payload(t)))
        }),
    );
    let org = OrgConfig {
        name: ORG.to_string(),
        token: TokenSpec::Env(Token::new(token).expect("the demo token is not empty")),
    };
    Ok(Demo { scout, org })
}

/// The demo payload at Unix time `t`, in Prometheus text as Scout writes it.
pub fn payload(t: f64) -> String {
    let mut out = String::with_capacity(4096);
    let drift = |seed: usize, base: f64, spread: f64| -> f64 {
        let phase = seed as f64 * 1.7;
        (base + spread * (t / 600.0 + phase).sin()).round().max(0.0)
    };

    out.push_str("# HELP scout_stream_vulnerabilities Vulnerabilities in a stream\n");
    out.push_str("# TYPE scout_stream_vulnerabilities gauge\n");
    let base = [3.0, 28.0, 95.0, 160.0, 12.0];
    for (s, stream) in STREAMS.iter().enumerate() {
        for (v, severity) in SEVERITIES.iter().enumerate() {
            let scale = [1.4, 1.0, 0.7][s];
            let value = drift(s * 5 + v, base[v] * scale, base[v] * 0.2 + 1.0);
            let _ = writeln!(
                out,
                "scout_stream_vulnerabilities{{streamName=\"{stream}\",severity=\"{severity}\"}} {value}"
            );
        }
    }

    let evaluated = [42.0, 17.0, 23.0];
    let mut compliant_lines = String::new();
    let mut evaluated_lines = String::new();
    for (p, (id, name)) in POLICIES.iter().enumerate() {
        for (s, stream) in STREAMS.iter().enumerate() {
            let total = drift(30 + p * 3 + s, evaluated[s], 2.0).max(1.0);
            let share = 0.55 + 0.4 * ((p * 7 + s * 3) % 10) as f64 / 10.0;
            let ok = drift(60 + p * 3 + s, total * share, 2.0).min(total);
            let labels = format!("id=\"{id}\",displayName=\"{name}\",streamName=\"{stream}\"");
            let _ = writeln!(compliant_lines, "scout_policy_compliant_images{{{labels}}} {ok}");
            let _ = writeln!(evaluated_lines, "scout_policy_evaluated_images{{{labels}}} {total}");
        }
    }
    out.push_str(
        "# HELP scout_policy_compliant_images Compliant images for a policy in a stream\n",
    );
    out.push_str("# TYPE scout_policy_compliant_images gauge\n");
    out.push_str(&compliant_lines);
    out.push_str("# HELP scout_policy_evaluated_images Total images evaluated against a policy in a stream\n");
    out.push_str("# TYPE scout_policy_evaluated_images gauge\n");
    out.push_str(&evaluated_lines);
    out
}

/// A Scout-shaped payload of about `series` series, for benchmarks and
/// load tests: three quarters stream vulnerabilities (five severities per
/// stream), the rest split between the two policy families (the demo's six
/// policies per stream). `round` shifts the values.
pub fn scaled_payload(series: usize, round: u64) -> String {
    let vuln_streams = (series * 3 / 4).div_ceil(SEVERITIES.len()).max(1);
    let per_stream = 2 * POLICIES.len();
    let policy_streams =
        (series - (vuln_streams * SEVERITIES.len()).min(series)).div_ceil(per_stream);
    let mut out = String::with_capacity(series * 150);
    let value = |i: usize| (i as u64 * 2654435761 + round * 97) % 400;
    out.push_str("# HELP scout_stream_vulnerabilities Vulnerabilities in a stream\n");
    out.push_str("# TYPE scout_stream_vulnerabilities gauge\n");
    let mut n = 0;
    for s in 0..vuln_streams {
        for sev in SEVERITIES {
            out.push_str(&format!(
                "scout_stream_vulnerabilities{{streamName=\"team-{s:05}/service\",severity=\"{sev}\"}} {}\n",
                value(n)
            ));
            n += 1;
        }
    }
    for (family, help) in [
        ("scout_policy_compliant_images", "Compliant images for a policy in a stream"),
        ("scout_policy_evaluated_images", "Total images evaluated against a policy in a stream"),
    ] {
        out.push_str(&format!("# HELP {family} {help}\n# TYPE {family} gauge\n"));
        for s in 0..policy_streams {
            for (id, name) in POLICIES {
                let v = if family.ends_with("evaluated_images") { 400 } else { value(n) };
                out.push_str(&format!(
                    "{family}{{id=\"{id}\",displayName=\"{name}\",streamName=\"env-{s:05}\"}} {v}\n"
                ));
                n += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Format, Limits, parse};

    #[test]
    fn payload_is_valid_and_complete() {
        let e = parse(payload(1_700_000_000.0).as_bytes(), Format::Prometheus, &Limits::default())
            .unwrap();
        assert_eq!(e.families.len(), 3);
        assert_eq!(e.families[0].samples.len(), STREAMS.len() * SEVERITIES.len());
        assert_eq!(e.families[1].samples.len(), STREAMS.len() * POLICIES.len());
        for (c, v) in e.families[1].samples.iter().zip(&e.families[2].samples) {
            assert!(c.value <= v.value && v.value >= 1.0);
        }
    }

    #[test]
    fn values_drift_over_minutes() {
        let a = payload(1_700_000_000.0);
        let b = payload(1_700_000_000.0 + 300.0);
        assert_ne!(a, b);
    }
}
