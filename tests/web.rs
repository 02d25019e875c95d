//! The web configuration file end to end: the real binary serving TLS,
//! checking client certificates and basic-auth passwords, refusing bad
//! files at start, and keeping a scrape going while hundreds of idle
//! connections are held open. Certificates are made fresh for each test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Exporter, eventually, series_of_text};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::AsyncWriteExt;

/// A server CA with a certificate for 127.0.0.1 and localhost, a separate
/// client CA with one client certificate, and a stray client certificate
/// from the server CA, all as PEM files in one folder.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: String,
    client_identity: Vec<u8>,
    stray_identity: Vec<u8>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate and its key, as one PEM (key first, as reqwest's
/// `Identity::from_pem` reads it) and as the two parts.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = ca("test server CA");
        let client_ca = ca("test client CA");
        let (server_cert, server_key) =
            leaf(&server_ca, &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) =
            leaf(&client_ca, &["prometheus"], ExtendedKeyUsagePurpose::ClientAuth);
        let (stray_cert, stray_key) =
            leaf(&server_ca, &["intruder"], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("server.crt", &server_cert);
        write("server.key", &server_key);
        write("client-ca.crt", &client_ca.pem());
        Pki {
            server_ca: server_ca.pem(),
            client_identity: format!("{client_key}{client_cert}").into_bytes(),
            stray_identity: format!("{stray_key}{stray_cert}").into_bytes(),
            dir,
        }
    }

    /// Writes `web.yml` beside the certificates and returns its path.
    fn config(&self, yaml: &str) -> PathBuf {
        let path = self.dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        path
    }
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

fn start(config: &Path) -> Exporter {
    let config = config.to_str().unwrap();
    Exporter::start(
        &["--demo", "--web.config.file", config],
        &[("OTEL_METRICS_EXPORTER", "prometheus")],
    )
}

/// Waits for the log to hold `text`: the start-up line can reach the
/// test a moment before it reaches the log copy.
async fn logged(exporter: &Exporter, text: &str) {
    let what = format!("{text:?} in the log");
    eventually(Duration::from_secs(5), &what, || async {
        exporter.log().contains(text).then_some(())
    })
    .await;
}

/// A client that trusts only the test server CA, with an optional client
/// certificate.
fn https_client(pki: &Pki, identity: Option<&[u8]>) -> reqwest::Client {
    scout_exporter::scout::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(pki.server_ca.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(15));
    if let Some(identity) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(identity).unwrap());
    }
    builder.build().unwrap()
}

fn http_client() -> reqwest::Client {
    scout_exporter::scout::install_crypto_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap()
}

/// Scrapes until the demo organization's data is in, returning the body.
async fn demo_metrics(request: impl Fn() -> reqwest::RequestBuilder) -> String {
    eventually(Duration::from_secs(15), "demo data in /metrics", || async {
        let response = request().send().await.expect("the scrape connects");
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        body.contains("scout_stream_vulnerabilities{").then_some(body)
    })
    .await
}

#[tokio::test]
async fn tls_serves_metrics_to_a_client_that_trusts_the_ca() {
    let pki = Pki::new();
    let exporter = start(&pki.config(TLS));
    logged(&exporter, "tls=on").await;
    logged(&exporter, "basic_auth=off").await;
    logged(&exporter, "prometheus=https://127.0.0.1:").await;

    let client = https_client(&pki, None);
    let url = format!("https://127.0.0.1:{}/metrics", exporter.port);
    let body = demo_metrics(|| client.get(&url)).await;
    assert!(!series_of_text(&body).is_empty());
    let by_name = format!("https://localhost:{}/healthz", exporter.port);
    assert_eq!(client.get(&by_name).send().await.unwrap().status(), 200);

    // Plain HTTP to the TLS port gets no metrics.
    let plain = http_client().get(exporter.url("/metrics")).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // Nor does a client that does not trust the CA.
    let untrusting = reqwest::Client::builder().tls_backend_rustls().build().unwrap();
    assert!(untrusting.get(&url).send().await.is_err());
}

#[tokio::test]
async fn mtls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let config = format!(
        "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n  \
         min_version: TLS12\n"
    );
    let exporter = start(&pki.config(&config));
    let url = format!("https://127.0.0.1:{}/metrics", exporter.port);

    let without = https_client(&pki, None).get(&url).send().await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let stray = https_client(&pki, Some(&pki.stray_identity)).get(&url).send().await;
    assert!(stray.is_err(), "a certificate from another CA: {stray:?}");

    let client = https_client(&pki, Some(&pki.client_identity));
    let body = demo_metrics(|| client.get(&url)).await;
    assert!(!series_of_text(&body).is_empty());
}

#[tokio::test]
async fn basic_auth_lets_in_the_right_password_only() {
    let pki = Pki::new();
    let hash = bcrypt::hash("correct horse", 4).unwrap();
    let config = format!(
        "basic_auth_users:\n  prometheus: '{hash}'\nhttp_server_config:\n  headers:\n    \
         X-Content-Type-Options: nosniff\n"
    );
    let exporter = start(&pki.config(&config));
    logged(&exporter, "tls=off").await;
    logged(&exporter, "basic_auth=on").await;
    let client = http_client();
    let metrics = exporter.url("/metrics");

    let body =
        demo_metrics(|| client.get(&metrics).basic_auth("prometheus", Some("correct horse"))).await;
    assert!(!series_of_text(&body).is_empty());
    // Remembered now, and still right.
    let again = client.get(&metrics).basic_auth("prometheus", Some("correct horse"));
    assert_eq!(again.send().await.unwrap().status(), 200);

    let refusals = [
        client.get(&metrics).basic_auth("prometheus", Some("wrong horse")),
        client.get(&metrics).basic_auth("nobody", Some("correct horse")),
        client.get(&metrics),
        client.get(&metrics).bearer_auth("correct horse"),
        client.get(exporter.url("/other")),
    ];
    for request in refusals {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert_eq!(challenge, "Basic realm=\"scout-exporter\"");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(response.text().await.unwrap(), "unauthorized\n", "a short line, no metrics");
    }

    // The probes answer without a password and name no organization.
    let health = client.get(exporter.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["x-content-type-options"], "nosniff");
    let ready = client.get(exporter.url("/readyz")).send().await.unwrap();
    assert!(matches!(ready.status().as_u16(), 200 | 503));
    let text = ready.text().await.unwrap();
    assert!(!text.contains("demo"), "{text}");
}

#[tokio::test]
async fn basic_auth_and_client_certificates_work_together() {
    let pki = Pki::new();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let config = format!(
        "{TLS}  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: client-ca.crt\n\
         basic_auth_users:\n  prometheus: '{hash}'\n"
    );
    let exporter = start(&pki.config(&config));
    logged(&exporter, "tls=on").await;
    logged(&exporter, "basic_auth=on").await;
    let url = format!("https://127.0.0.1:{}/metrics", exporter.port);

    // A certificate is optional here, but one from elsewhere is refused.
    let stray = https_client(&pki, Some(&pki.stray_identity)).get(&url).send().await;
    assert!(stray.is_err(), "{stray:?}");
    let client = https_client(&pki, None);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    demo_metrics(|| client.get(&url).basic_auth("prometheus", Some("pw"))).await;
    let with_cert = https_client(&pki, Some(&pki.client_identity));
    demo_metrics(|| with_cert.get(&url).basic_auth("prometheus", Some("pw"))).await;
}

/// Runs the binary with `config`, expecting it to stop by itself, and
/// returns its exit status and standard error.
fn failed_start(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scout-exporter"))
        .args(["--demo", "--listen", "127.0.0.1:0", "--web.config.file"])
        .arg(config)
        .env_clear()
        .env("OTEL_METRICS_EXPORTER", "prometheus")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the exporter started with {}", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn a_bad_web_config_stops_start_up_with_a_line_naming_the_file_and_the_problem() {
    let pki = Pki::new();
    let cases = [
        (format!("{TLS}  cert_fil: x\n"), "unknown field `cert_fil`"),
        (
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n".to_string(),
            "tls_server_config.cert_file",
        ),
        (format!("{TLS}  min_version: TLS10\n"), "TLS10 is not supported"),
        ("basic_auth_users:\n  prometheus: plaintext\n".to_string(), "not a bcrypt hash"),
    ];
    for (yaml, problem) in cases {
        let path = pki.config(&yaml);
        let (status, stderr) = failed_start(&path);
        assert!(!status.success(), "{yaml}");
        assert!(!stderr.contains("scout-exporter started"), "{stderr}");
        let lines: Vec<&str> =
            stderr.lines().filter(|l| l.starts_with("scout-exporter: ")).collect();
        assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
        let line = lines[0];
        let named = format!("scout-exporter: web config file {}: ", path.display());
        assert!(line.starts_with(&named), "{line}");
        assert!(line.contains(problem), "{line} lacks {problem}");
    }
}

/// Opens `idle` TCP connections that send nothing and `partial` more that
/// send `start` and stop, all at once as an attacker would, and holds them
/// until the returned sender is dropped. Returns once 250 are connected, or
/// after ten seconds: past the cap of 128 and the listen queue of 128,
/// further connects wait on SYN retries unless the server makes room.
async fn flood(
    port: u16,
    idle: usize,
    partial: usize,
    start: &'static [u8],
) -> tokio::sync::watch::Sender<()> {
    let (hold, released) = tokio::sync::watch::channel(());
    let connected = Arc::new(AtomicUsize::new(0));
    for i in 0..idle + partial {
        let mut released = released.clone();
        let connected = connected.clone();
        tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            connected.fetch_add(1, Ordering::Relaxed);
            if i >= idle {
                let _ = stream.write_all(start).await;
            }
            let _ = released.changed().await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while connected.load(Ordering::Relaxed) < 250 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hold
}

#[tokio::test]
async fn idle_connections_beyond_the_cap_do_not_keep_a_scrape_out() {
    let pki = Pki::new();
    let exporter = start(&pki.config(""));
    let metrics = exporter.url("/metrics");
    demo_metrics(|| http_client().get(&metrics)).await;

    // More than twice the cap of 128, none of them sending a whole request.
    let held = flood(exporter.port, 300, 20, b"GET /metr").await;
    let started = Instant::now();
    let response = http_client().get(&metrics).send().await.expect("a scrape gets through");
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("scout_stream_vulnerabilities{"));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    // And again, on yet another connection, while they are still held.
    assert_eq!(http_client().get(exporter.url("/healthz")).send().await.unwrap().status(), 200);
    drop(held);
    assert_eq!(http_client().get(&metrics).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn idle_connections_that_never_finish_a_handshake_do_not_keep_a_scrape_out() {
    let pki = Pki::new();
    let exporter = start(&pki.config(TLS));
    let url = format!("https://127.0.0.1:{}/metrics", exporter.port);
    demo_metrics(|| https_client(&pki, None).get(&url)).await;

    // The first bytes of a TLS record header, then nothing.
    let held = flood(exporter.port, 300, 20, &[0x16, 0x03, 0x01]).await;
    let started = Instant::now();
    let response = https_client(&pki, None).get(&url).send().await.expect("a scrape gets through");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    drop(held);
}
