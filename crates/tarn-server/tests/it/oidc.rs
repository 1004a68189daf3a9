//! Logging in to `tarn serve`'s Postgres wire endpoint with an OIDC token as the password:
//! a test issuer (HTTPS on loopback, fixed RSA and EC keys, `tarn_test_utils::oidc`), and the
//! clients users bring — tokio-postgres, psql, psycopg. Good tokens log in; each bad one is
//! refused with SQLSTATE 28P01 and a message naming why; configured users keep SCRAM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tarn_test_utils::oidc::{EC1, Issuer, RSA1, RSA2, Signer, issuer, now};
use tarn_test_utils::{free_port, wait_for_port};

struct Served {
    child: Child,
    port: u16,
    http: u16,
    dir: tempfile::TempDir,
}

impl Served {
    /// `GET path` with an optional `Authorization` header: (status, body).
    fn get(&self, path: &str, authorization: Option<&str>) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http)).unwrap();
        let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(issuer: &Issuer) -> Served {
    let dir = tempfile::Builder::new().prefix("tarn-oidc-").tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("tarn.toml"),
        format!(
            "[server]\npg_listen = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [[auth.users]]\nname = \"svc\"\npassword = \"svc-pw\"\n\
             [auth.oidc]\nissuer = \"{}\"\naudience = \"tarn\"\nca_file = \"{}\"\nrefresh_min = \"1s\"\n",
            issuer.url,
            issuer.ca_file.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let child = Command::new(crate::tarn_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("serve")
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    if let Err(e) = wait_for_port(port, Duration::from_secs(60)) {
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        panic!("tarn serve did not start: {e}\n{log}");
    }
    wait_for_port(http, Duration::from_secs(30)).unwrap();
    Served {
        child,
        port,
        http,
        dir,
    }
}

/// tokio-postgres logs in as `user` with `password` and runs `SELECT 40 + 2`: the answer, or
/// (SQLSTATE, message).
async fn tokio_postgres(port: u16, user: &str, password: &str) -> Result<i32, (String, String)> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("tarn");
    match config.connect(tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
            Ok(row.get::<_, i64>(0) as i32)
        }
        Err(e) => {
            let db = e.as_db_error().expect("a server error");
            Err((db.code().code().to_string(), db.message().to_string()))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_log_in_over_the_wire_and_bad_ones_are_refused() {
    let rsa = Signer::rsa("rsa-1", RSA1);
    let ec = Signer::ec("ec-1", EC1);
    let issuer = issuer(vec![rsa.clone(), ec.clone()]).await;
    let served = serve(&issuer);
    let port = served.port;

    // Good tokens, RSA and EC, with every client.
    for signer in [&rsa, &ec] {
        let token = signer.sign(&issuer.claims("ana"));
        assert_eq!(
            tokio_postgres(port, "ana", &token).await,
            Ok(42),
            "{}",
            signer.kid
        );
    }
    let token = rsa.sign(&issuer.claims("ana"));
    let psql = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "ana",
            "-d",
            "tarn",
        ])
        .args(["-X", "-At", "-c", "SELECT 40 + 2"])
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    assert!(psql.status.success(), "{}", String::from_utf8_lossy(&psql.stderr));
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "42");
    let psycopg = |user: &str, password: &str| -> Value {
        let out = tokio::task::block_in_place(|| {
            tarn_test_utils::run_python(
                "pg_login.py",
                &[
                    "--port",
                    &port.to_string(),
                    "--user",
                    user,
                    "--password",
                    password,
                ],
            )
        })
        .unwrap();
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    assert_eq!(psycopg("ana", &token), json!({"ok": true, "rows": [[42]]}));

    // A configured user still logs in with its password (SCRAM).
    assert_eq!(tokio_postgres(port, "svc", "svc-pw").await, Ok(42));
    let (code, message) = tokio_postgres(port, "svc", "wrong").await.unwrap_err();
    assert_eq!(code, "28P01", "{message}");

    // Each bad token: 28P01 and why.
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = issuer.claims("ana");
        change(&mut c);
        rsa.sign(&c)
    };
    let none_token = {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&issuer.claims("ana")))
    };
    let cases = [
        ("expired", with(&|c| c["exp"] = json!(now() - 120)), "expired"),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 120)),
            "not valid yet",
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("superset")),
            "audience",
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example/realms/tarn")),
            "issuer",
        ),
        (
            "forged",
            Signer::rsa("rsa-1", RSA2).sign(&issuer.claims("ana")),
            "signature does not verify",
        ),
        (
            "unknown kid",
            Signer::rsa("rsa-9", RSA2).sign(&issuer.claims("ana")),
            "does not publish",
        ),
        ("alg none", none_token, "algorithm none is not accepted"),
        (
            "another user's token",
            rsa.sign(&issuer.claims("bob")),
            "the token is for user \"bob\"",
        ),
    ];
    for (what, token, reason) in cases {
        let (code, message) = tokio_postgres(port, "ana", &token).await.unwrap_err();
        assert_eq!(code, "28P01", "{what}: {message}");
        assert!(message.contains(reason), "{what}: {message}");
    }
    let refused = psycopg("ana", &with(&|c| c["exp"] = json!(now() - 120)));
    // libpq reports a failed login as a connection failure carrying the server's message.
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("FATAL:  token refused: the token has expired"),
        "{refused}"
    );
    // Not a token and not a configured user's password.
    let (code, message) = tokio_postgres(port, "ana", "hunter2").await.unwrap_err();
    assert_eq!(
        (code.as_str(), message.contains("password authentication failed")),
        ("28P01", true)
    );
    let log = std::fs::read_to_string(served.dir.path().join("serve.log")).unwrap();
    assert!(
        log.contains("logged in") && log.contains("login refused"),
        "{log}"
    );

    // HTTP: the APIs take a bearer token; health and metrics stay open.
    let bearer = format!("Bearer {}", rsa.sign(&issuer.claims("ana")));
    assert_eq!(served.get("/healthz", None).0, 200);
    assert_eq!(served.get("/metrics", None).0, 200);
    for path in ["/cdc/status", "/iceberg/v1/config"] {
        for refused in [
            None,
            Some("Bearer None"),
            Some("Basic YW5hOng="),
            Some("Bearer nope.nope.nope"),
        ] {
            let (status, body) = served.get(path, refused);
            assert_eq!(status, 401, "{path} with {refused:?}: {body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"]["type"], "NotAuthorizedException", "{body}");
        }
        let (status, body) = served.get(path, Some(&bearer));
        assert_ne!(status, 401, "{path}: {body}");
    }
    let expired = format!("Bearer {}", with(&|c| c["exp"] = json!(now() - 120)));
    let (status, body) = served.get("/iceberg/v1/config", Some(&expired));
    assert_eq!(status, 401);
    assert!(body.contains("the token has expired"), "{body}");

    // The issuer rotates its key: a token of the new key logs in over the wire once tarn has
    // fetched the new key set (at most once per refresh_min, 1 s here); the old key's tokens
    // are refused from then on.
    let rotated = Signer::rsa("rsa-2", RSA2);
    *issuer.published.lock().unwrap() = vec![rotated.clone()];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let fetches_before = issuer.fetches.load(std::sync::atomic::Ordering::SeqCst);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match tokio_postgres(port, "ana", &rotated.sign(&issuer.claims("ana"))).await {
            Ok(answer) => {
                assert_eq!(answer, 42);
                break;
            }
            Err((code, message)) => {
                assert_eq!(code, "28P01", "{message}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the rotated key was not accepted within 20 s ({attempts} attempts): {message}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let (code, message) = tokio_postgres(port, "ana", &rsa.sign(&issuer.claims("ana")))
        .await
        .unwrap_err();
    assert_eq!(code, "28P01", "{message}");
    assert!(message.contains("does not publish"), "{message}");
    // Rate-limited: the attempts before the new key was fetched did not each fetch.
    let fetches = issuer.fetches.load(std::sync::atomic::Ordering::SeqCst) - fetches_before;
    assert!(
        fetches <= 3,
        "{fetches} key set fetches for {attempts} login attempts"
    );
    let (status, body) = served.get(
        "/iceberg/v1/config",
        Some(&format!("Bearer {}", rotated.sign(&issuer.claims("ana")))),
    );
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_issuer_refuses_token_logins_and_says_so() {
    let mut issuer = issuer(vec![Signer::rsa("rsa-1", RSA1)]).await;
    let good_url = issuer.url.clone();
    // Point tarn at a port nothing listens on (same CA, same path).
    let port = free_port();
    issuer.url = format!("https://127.0.0.1:{port}/realms/tarn");
    let served = serve(&issuer);
    issuer.url = good_url;
    let token = Signer::rsa("rsa-1", RSA1).sign(&issuer.claims("ana"));
    let (code, message) = tokio_postgres(served.port, "ana", &token).await.unwrap_err();
    assert_eq!(code, "28P01", "{message}");
    assert!(message.contains("cannot reach the OIDC issuer"), "{message}");
}
