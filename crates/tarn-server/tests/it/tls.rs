//! TLS on `tarn serve`'s own listeners, with the clients users bring: psql, psycopg and pgjdbc
//! with `verify-full` against a test CA, HTTPS with reqwest and curl, client-certificate login,
//! a wrong CA and a plain connection refused, certificates reloaded without a restart, and a
//! start-up error naming the file that cannot be used.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tarn_test_utils::tls::{ListenerTls, listener_tls};
use tarn_test_utils::{free_port, wait_for, wait_for_port, workspace_root};

const USER: &str = "analyst";
const PASSWORD: &str = "s3cret-pw";
/// The common name of the test's client certificate, mapped to user `loader`.
const CLIENT_CN: &str = "loader.example.test";

/// A `tarn serve` process with TLS on free loopback ports; killed on drop.
struct Served {
    child: Child,
    pg: u16,
    http: u16,
    dir: tempfile::TempDir,
}

impl Served {
    /// Serves with `tls`'s certificate; `extra` lines go into `[server.tls]`.
    fn start(tls: &ListenerTls, extra: &str) -> Self {
        Self::start_with(tls, "", extra, "")
    }

    /// [`Self::start`] with `server` lines in `[server]` and `more` sections at the end.
    fn start_with(tls: &ListenerTls, server: &str, extra: &str, more: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tarn-tls-serve-")
            .tempdir()
            .unwrap();
        let (pg, http) = (free_port(), free_port());
        std::fs::write(
            dir.path().join("tarn.toml"),
            format!(
                "[server]\npg_listen = \"127.0.0.1:{pg}\"\nhttp_listen = \"127.0.0.1:{http}\"\n{server}\n\
                 [server.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{extra}\n\
                 [auth]\ncertificate_users = {{ \"{CLIENT_CN}\" = \"loader\" }}\n\
                 [[auth.users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n{more}",
                tls.cert_file.display(),
                tls.key_file.display(),
                tls.ca_file.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .arg("serve")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let served = Self { child, pg, http, dir };
        for port in [pg, http] {
            if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
                panic!("tarn serve did not start: {e}\n{}", served.log());
            }
        }
        served
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// psql with a libpq connection string `conninfo` (host, port and database added):
    /// (success, stdout, stderr).
    fn psql(&self, conninfo: &str) -> (bool, String, String) {
        self.psql_at(self.pg, conninfo)
    }

    /// [`Self::psql`] to `port` (a proxy in front of the endpoint).
    fn psql_at(&self, port: u16, conninfo: &str) -> (bool, String, String) {
        let out = Command::new("psql")
            .arg(format!("host=127.0.0.1 port={port} dbname=tarn {conninfo}"))
            .args(["-X", "-At", "-c", "SELECT 40 + 2"])
            .env("PGCONNECT_TIMEOUT", "20")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn psql_psycopg_and_jdbc_verify_full_against_the_test_ca() {
    let tls = listener_tls(CLIENT_CN).unwrap();
    let s = Served::start(&tls, "");
    let ca = path(&tls.ca_file);

    // psql: verify-full checks the chain and that the certificate names 127.0.0.1.
    let (ok, out, err) = s.psql(&format!(
        "user={USER} password={PASSWORD} sslmode=verify-full sslrootcert={ca}"
    ));
    assert!(ok && out == "42", "{out}\n{err}\n{}", s.log());

    // A CA that did not sign the server's certificate: refused by the client.
    let (ok, _, err) = s.psql(&format!(
        "user={USER} password={PASSWORD} sslmode=verify-full sslrootcert={}",
        path(&tls.other_ca_file)
    ));
    assert!(!ok);
    assert!(err.contains("certificate verify failed"), "{err}");

    // TLS is required: a plain connection is refused by the server, saying why.
    let (ok, _, err) = s.psql(&format!("user={USER} password={PASSWORD} sslmode=disable"));
    assert!(!ok);
    assert!(
        err.contains("accepts only TLS connections") && err.contains("server.tls.require"),
        "{err}"
    );

    // psycopg.
    let psycopg = |args: &[&str]| -> serde_json::Value {
        let port = s.pg.to_string();
        let mut all = vec!["--port", port.as_str()];
        all.extend_from_slice(args);
        let out = tarn_test_utils::run_python("pg_login.py", &all).unwrap();
        serde_json::from_str(out.trim()).unwrap()
    };
    let seen = psycopg(&[
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--sslmode",
        "verify-full",
        "--sslrootcert",
        &ca,
    ]);
    assert_eq!(seen["rows"], serde_json::json!([[42]]), "{seen}");
    let seen = psycopg(&[
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--sslmode",
        "verify-full",
        "--sslrootcert",
        &path(&tls.other_ca_file),
    ]);
    assert_eq!(seen["ok"], false);
    assert!(
        seen["error"]
            .as_str()
            .unwrap()
            .contains("certificate verify failed"),
        "{seen}"
    );
    let seen = psycopg(&["--user", USER, "--password", PASSWORD, "--sslmode", "disable"]);
    assert_eq!(seen["ok"], false);
    assert!(
        seen["error"]
            .as_str()
            .unwrap()
            .contains("accepts only TLS connections"),
        "{seen}"
    );

    // pgjdbc: `ssl=true` verifies the chain and the host name (its default sslmode with ssl on
    // is verify-full).
    let jar = std::fs::read_dir("/usr/share/java")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("postgresql"))
        })
        .expect("pgjdbc jar: install libpostgresql-jdbc-java");
    let jdbc = |url: String| {
        let out = Command::new("java")
            .arg("-cp")
            .arg(&jar)
            .arg(workspace_root().join("tests/interop/JdbcLogin.java"))
            .args([url.as_str(), USER, PASSWORD])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let base = format!("jdbc:postgresql://127.0.0.1:{}/tarn", s.pg);
    let (ok, out) = jdbc(format!("{base}?ssl=true&sslrootcert={ca}"));
    assert!(ok && out.contains("rows=42"), "{out}");
    let (ok, out) = jdbc(format!(
        "{base}?ssl=true&sslrootcert={}",
        path(&tls.other_ca_file)
    ));
    assert!(!ok, "{out}");
    assert!(out.contains("error=08006") && out.contains("PKIX"), "{out}");
    let (ok, out) = jdbc(format!("{base}?sslmode=disable"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("error=28000") && out.contains("accepts only TLS connections"),
        "{out}"
    );
}

#[test]
fn client_certificate_logs_in_its_user() {
    let tls = listener_tls(CLIENT_CN).unwrap();
    let s = Served::start(&tls, "");
    let (ca, cert, key) = (
        path(&tls.ca_file),
        path(&tls.client_cert_file),
        path(&tls.client_key_file),
    );
    // No password: the certificate is the credential; its common name maps to `loader`.
    let (ok, out, err) = s.psql(&format!(
        "user=loader sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key}"
    ));
    assert!(ok && out == "42", "{out}\n{err}\n{}", s.log());
    assert!(
        s.log().contains("logged in") && s.log().contains("Certificate"),
        "{}",
        s.log()
    );
    // The certificate does not log in anyone else.
    let (ok, _, err) = s.psql(&format!(
        "user={USER} password={PASSWORD} sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key}"
    ));
    assert!(!ok);
    assert!(
        err.contains(&format!("certificate authentication failed for user \"{USER}\""))
            && err.contains(CLIENT_CN)
            && err.contains("\"loader\""),
        "{err}"
    );
    // psycopg, naming no user: the certificate's.
    let port = s.pg.to_string();
    let out = tarn_test_utils::run_python(
        "pg_login.py",
        &[
            "--port",
            &port,
            "--user",
            "loader",
            "--sslmode",
            "verify-full",
            "--sslrootcert",
            &ca,
            "--sslcert",
            &cert,
            "--sslkey",
            &key,
        ],
    )
    .unwrap();
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(seen["rows"], serde_json::json!([[42]]), "{seen}");

    // Without a certificate, the same user needs a password it does not have.
    let (ok, _, err) = s.psql(&format!(
        "user=loader password=x sslmode=verify-full sslrootcert={ca}"
    ));
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");
}

/// An HTTPS client trusting only `ca`.
fn https_client(ca: &Path) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_on_every_http_api() {
    let tls = listener_tls(CLIENT_CN).unwrap();
    let s = Served::start(&tls, "");
    let client = https_client(&tls.ca_file);
    for (path, expected) in [
        ("/healthz", "ok"),
        ("/metrics", "tarn_"),
        ("/iceberg/v1/config", "defaults"),
        ("/cdc/status", "no CDC pipeline"),
    ] {
        let url = format!("https://127.0.0.1:{}{path}", s.http);
        let response = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        let body = response.text().await.unwrap();
        assert!(body.contains(expected), "{url}: {body}");
    }
    // curl: verified against the test CA; refused with another CA; plain HTTP gets no answer.
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let https = format!("https://127.0.0.1:{}/healthz", s.http);
    let (code, out, err) = curl(&["--cacert", &path(&tls.ca_file), &https]);
    assert_eq!((code, out.trim()), (Some(0), "ok"), "{err}");
    let (code, _, err) = curl(&["--cacert", &path(&tls.other_ca_file), &https]);
    assert_eq!(code, Some(60), "curl: certificate problem expected: {err}");
    let (code, out, err) = curl(&[&format!("http://127.0.0.1:{}/healthz", s.http)]);
    assert_ne!(code, Some(0), "plain HTTP answered: {out}{err}");
}

/// The leaf certificate the HTTP endpoint presents now (the chain verified against `ca`).
async fn https_certificate(port: u16, ca: &Path) -> Vec<u8> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    presented(stream, ca, b"http/1.1").await
}

/// The leaf certificate the Postgres wire endpoint presents now, after an SSLRequest.
async fn pgwire_certificate(port: u16, ca: &Path) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // SSLRequest: length 8, code 80877103.
    stream.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S", "the server accepts TLS");
    presented(stream, ca, b"postgresql").await
}

async fn presented(stream: tokio::net::TcpStream, ca: &Path, alpn: &[u8]) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

/// Replaces `path`'s contents at once (a new file renamed over it), as certificate managers
/// do, so that no reload reads it half-written.
fn replace(path: &Path, text: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, path).unwrap();
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Waits until `check` holds, polling, or fails after `timeout` with `what`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn certificates_reload_without_restart() {
    // On SIGHUP (no periodic check), and when the files change (a short periodic check).
    for (extra, signal) in [
        ("reload_interval = \"0s\"", true),
        ("reload_interval = \"100ms\"", false),
    ] {
        let tls = listener_tls(CLIENT_CN).unwrap();
        let s = Served::start(&tls, extra);
        let first = der(&std::fs::read_to_string(&tls.cert_file).unwrap());
        assert_eq!(https_certificate(s.http, &tls.ca_file).await, first);
        assert_eq!(pgwire_certificate(s.pg, &tls.ca_file).await, first);

        let (cert, key) = tls.new_server_cert().unwrap();
        // The key first: a reload in between sees a key that does not fit and keeps the old set.
        replace(&tls.key_file, &key);
        replace(&tls.cert_file, &cert);
        if signal {
            let sent = Command::new("kill")
                .args(["-HUP", &s.child.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
        }
        let second = der(&cert);
        assert_ne!(first, second);
        let (http, pg, ca) = (s.http, s.pg, tls.ca_file.clone());
        eventually("the new certificate on HTTPS", Duration::from_secs(30), || {
            let ca = ca.clone();
            let second = second.clone();
            async move { https_certificate(http, &ca).await == second }
        })
        .await;
        // The same load serves the Postgres wire endpoint, and the process is the same one.
        assert_eq!(pgwire_certificate(pg, &tls.ca_file).await, second);
        let (ok, out, err) = s.psql(&format!(
            "user={USER} password={PASSWORD} sslmode=verify-full sslrootcert={}",
            path(&tls.ca_file)
        ));
        assert!(ok && out == "42", "{out}\n{err}");
        assert!(s.log().contains("TLS certificates reloaded"), "{}", s.log());

        // A broken file: the reload fails, is logged and counted, and the last good set stays.
        replace(&tls.cert_file, "not a certificate\n");
        if signal {
            Command::new("kill")
                .args(["-HUP", &s.child.id().to_string()])
                .status()
                .unwrap();
        }
        // Waits on this file's own error (a reload between the two writes above may have
        // failed too, on the key).
        eventually("the failed reload in the log", Duration::from_secs(30), || {
            let log = s.log();
            async move {
                log.contains("TLS certificates not reloaded")
                    && log.contains("server.tls.cert")
                    && log.contains("holds no PEM certificate")
            }
        })
        .await;
        let client = https_client(&tls.ca_file);
        let metrics = client
            .get(format!("https://127.0.0.1:{http}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("tarn_tls_reloads_total{outcome=\"failed\"}")),
            "{metrics}"
        );
        assert_eq!(https_certificate(http, &tls.ca_file).await, second);
        assert_eq!(pgwire_certificate(pg, &tls.ca_file).await, second);
    }
}

#[test]
fn plain_connections_from_loopback_when_tls_is_optional() {
    let tls = listener_tls(CLIENT_CN).unwrap();
    let s = Served::start(&tls, "require = false");
    // Loopback may send a password over plain TCP (it never leaves the machine).
    let (ok, out, err) = s.psql(&format!("user={USER} password={PASSWORD} sslmode=disable"));
    assert!(ok && out == "42", "{out}\n{err}\n{}", s.log());
    let (ok, out, err) = s.psql(&format!(
        "user={USER} password={PASSWORD} sslmode=verify-full sslrootcert={}",
        path(&tls.ca_file)
    ));
    assert!(ok && out == "42", "{out}\n{err}");
}

/// A TCP load balancer in front of `target` that sends a PROXY protocol v1 header naming
/// `client` as the source of every connection (HAProxy's `send-proxy`), then relays bytes both
/// ways; returns its port. Threads end with their connections.
fn proxy_claiming(client: &'static str, target: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { return };
            std::thread::spawn(move || {
                use std::io::Write;
                let peer = inbound.peer_addr().unwrap();
                let mut outbound = std::net::TcpStream::connect(("127.0.0.1", target)).unwrap();
                write!(
                    outbound,
                    "PROXY TCP4 {client} 127.0.0.1 {} {target}\r\n",
                    peer.port()
                )
                .unwrap();
                let (mut a, mut b) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
                let (mut inbound, mut outbound) = (inbound, outbound);
                let _ = std::io::copy(&mut outbound, &mut inbound);
                let _ = inbound.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    port
}

/// Behind a load balancer that names its clients with the PROXY protocol
/// (`server.proxy_protocol_from`), a password or an OIDC token over plain TCP from a
/// non-loopback client is refused, saying how to connect; over TLS both log in, and a loopback
/// client behind the same balancer may still use plain TCP. A connection from the balancer's
/// address without a header is refused (anyone there could otherwise claim any address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_or_token_over_plain_tcp_from_a_remote_client_is_refused() {
    use tarn_test_utils::oidc::{RSA1, Signer, issuer};
    let tls = listener_tls(CLIENT_CN).unwrap();
    let signer = Signer::rsa("rsa-1", RSA1);
    let issuer = issuer(vec![signer.clone()]).await;
    let s = Served::start_with(
        &tls,
        "proxy_protocol_from = [\"127.0.0.1/32\"]",
        "require = false",
        &format!(
            "[auth.oidc]\nissuer = \"{}\"\naudience = \"tarn\"\nca_file = \"{}\"\n",
            issuer.url,
            issuer.ca_file.display()
        ),
    );
    let token = signer.sign(&issuer.claims("ana"));
    let remote = proxy_claiming("203.0.113.7", s.pg);
    let verified = format!("sslmode=verify-full sslrootcert={}", path(&tls.ca_file));
    for (user, secret) in [(USER, PASSWORD), ("ana", token.as_str())] {
        let (ok, _, err) = s.psql_at(remote, &format!("user={user} password={secret} sslmode=disable"));
        assert!(
            !ok,
            "{user}'s secret over plain TCP from 203.0.113.7 was accepted\n{}",
            s.log()
        );
        assert!(
            err.contains("server.tls") && err.contains("auth.allow_plaintext_passwords"),
            "{err}"
        );
        let (ok, out, err) = s.psql_at(remote, &format!("user={user} password={secret} {verified}"));
        assert!(ok && out == "42", "{user}: {out}\n{err}\n{}", s.log());
    }
    assert!(s.log().contains("203.0.113.7"), "{}", s.log());

    let local = proxy_claiming("127.0.0.1", s.pg);
    let (ok, out, err) = s.psql_at(local, &format!("user={USER} password={PASSWORD} sslmode=disable"));
    assert!(ok && out == "42", "{out}\n{err}\n{}", s.log());

    let (ok, _, _) = s.psql(&format!("user={USER} password={PASSWORD} sslmode=disable"));
    assert!(!ok, "a connection without a PROXY header was served");
    assert!(
        s.log().contains("expected a PROXY protocol header"),
        "{}",
        s.log()
    );
}

#[test]
fn start_up_names_the_file_that_cannot_be_used() {
    let tls = listener_tls(CLIENT_CN).unwrap();
    let absent = tls.dir.path().join("absent.key");
    let garbage = tls.dir.path().join("garbage.crt");
    std::fs::write(&garbage, "hello\n").unwrap();
    let cases = [
        (
            format!("cert = \"{}\"\nkey = \"{}\"", path(&tls.cert_file), path(&absent)),
            vec![
                "server.tls.key".to_string(),
                path(&absent),
                "cannot read it".into(),
            ],
        ),
        (
            format!("cert = \"{}\"\nkey = \"{}\"", path(&garbage), path(&tls.key_file)),
            vec![
                "server.tls.cert".to_string(),
                path(&garbage),
                "no PEM certificate".into(),
            ],
        ),
        (
            // The client certificate's key where the server's should be.
            format!(
                "cert = \"{}\"\nkey = \"{}\"",
                path(&tls.cert_file),
                path(&tls.client_key_file)
            ),
            vec![
                "server.tls.key".to_string(),
                "does not fit the certificate".into(),
            ],
        ),
        (
            format!("cert = \"{}\"", path(&tls.cert_file)),
            vec!["server.tls.key".to_string(), "must name a PEM file".into()],
        ),
    ];
    for (settings, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tarn.toml"),
            format!(
                "[server]\npg_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\n[server.tls]\n{settings}\n",
                free_port(),
                free_port()
            ),
        )
        .unwrap();
        let mut child = Command::new(crate::tarn_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut status = None;
        wait_for("tarn serve to refuse to start", Duration::from_secs(60), || {
            status = child.try_wait().unwrap();
            status.is_some()
        })
        .unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("{e}: {settings}");
        });
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!status.unwrap().success(), "{err}");
        for needle in &expected {
            assert!(err.contains(needle.as_str()), "{needle:?} not in: {err}");
        }
    }
}
