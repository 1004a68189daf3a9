//! The web console over HTTP (docs/console.md): `tarn serve` with the governance tests'
//! policy, a SCRAM user with the analyst's rights (`svc`) and one without (`nobody`), the
//! test OIDC issuer for the code flow with PKCE. Logging in (right and wrong password,
//! single sign-on), an expired login, a table the user may not read, a query whose row filter
//! applies, CSV and Parquet downloads read back, a chart saved to the dashboard.

use std::time::{Duration, Instant};

use tarn_test_utils::oidc::{Issuer, RSA1, Signer, issuer};
use tarn_test_utils::{free_port, wait_for_port};

/// A served lake with the console on.
pub(crate) struct ConsoleServer {
    child: std::process::Child,
    pub(crate) base: String,
    pub(crate) dir: tempfile::TempDir,
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tarn serve` over the governance tests' tables and policy, the console's logins lasting
/// `ttl`.
pub(crate) fn serve(issuer: &Issuer, ttl: &str) -> ConsoleServer {
    serve_with(issuer, ttl, "")
}

/// [`serve`] with more configuration (`extra`, TOML appended to tarn.toml).
pub(crate) fn serve_with(issuer: &Issuer, ttl: &str, extra: &str) -> ConsoleServer {
    serve_in(
        tempfile::Builder::new()
            .prefix("tarn-console-")
            .tempdir()
            .unwrap(),
        issuer,
        ttl,
        extra,
        crate::governance::POLICY,
    )
}

/// [`serve_with`] in `dir` (which may hold jobs already), with `policy`.
fn serve_in(dir: tempfile::TempDir, issuer: &Issuer, ttl: &str, extra: &str, policy: &str) -> ConsoleServer {
    let (port, http) = (free_port(), free_port());
    std::fs::write(dir.path().join("policy.rego"), policy).unwrap();
    std::fs::write(
        dir.path().join("tarn.toml"),
        format!(
            "[server]\npg_listen = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [[auth.users]]\nname = \"svc\"\npassword = \"svc-pw\"\n\
             [[auth.users]]\nname = \"nobody\"\npassword = \"nobody-pw\"\n\
             [auth.oidc]\nissuer = \"{}\"\naudience = \"tarn\"\nca_file = \"{}\"\n\
             [policy]\nfile = \"{}\"\n\
             [console]\nsession_ttl = \"{ttl}\"\n{extra}",
            issuer.url,
            issuer.ca_file.display(),
            dir.path().join("policy.rego").display()
        ),
    )
    .unwrap();
    let setup = "CREATE SCHEMA sales; CREATE SCHEMA hr;
        CREATE TABLE sales.orders (id BIGINT, region VARCHAR, amount BIGINT);
        INSERT INTO sales.orders VALUES (1, 'eu', 10), (2, 'hidden-us', 777777), (3, 'eu', 30), (5, 'eu', 50);
        CREATE TABLE sales.totals AS SELECT region, sum(amount) AS total FROM sales.orders GROUP BY region;
        CREATE TABLE hr.salaries (name VARCHAR, salary BIGINT);
        INSERT INTO hr.salaries VALUES ('ana', 100)";
    let (ok, _, err) = crate::tarn(dir.path(), &["sql", setup]);
    assert!(ok, "{err}");
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let child = std::process::Command::new(crate::tarn_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("serve")
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap();
    if let Err(e) = wait_for_port(http, Duration::from_secs(60)) {
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        panic!("tarn serve did not start: {e}\n{log}");
    }
    ConsoleServer {
        child,
        base: format!("http://127.0.0.1:{http}"),
        dir,
    }
}

/// An HTTP client that follows no redirects (the test looks at each).
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The `tarn_console=...` pair of a login's `Set-Cookie`, after checking its attributes.
fn login_cookie(response: &reqwest::Response) -> String {
    let set = response
        .headers()
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie in {response:?}"))
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/console", "Max-Age="] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    assert!(!set.contains("Secure"), "Secure on plain HTTP: {set}");
    set.split(';').next().unwrap().to_string()
}

/// Logs in as `user` with `password`: the cookie to send.
pub(crate) async fn login(http: &reqwest::Client, base: &str, user: &str, password: &str) -> String {
    let response = http
        .post(format!("{base}/console/login"))
        .form(&[("user", user), ("password", password), ("next", "/console/sql")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "{:?}", response.text().await);
    assert_eq!(location(&response), "/console/sql");
    login_cookie(&response)
}

async fn get(http: &reqwest::Client, url: &str, cookie: &str) -> (u16, String, String) {
    let response = http.get(url).header("cookie", cookie).send().await.unwrap();
    let status = response.status().as_u16();
    let location = location(&response);
    (status, location, response.text().await.unwrap())
}

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = http
        .post(url)
        .header("cookie", cookie)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {e}: {text}")),
    )
}

async fn download(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    sql: &str,
    format: &str,
) -> (u16, String, Vec<u8>) {
    let response = http
        .post(format!("{base}/console/download"))
        .header("cookie", cookie)
        .form(&[("sql", sql), ("format", format)])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let disposition = response
        .headers()
        .get("content-disposition")
        .map(|d| d.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, disposition, response.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn console_logs_in_queries_as_the_user_downloads_and_saves_charts() {
    crate::init_logs();
    let issuer = issuer(vec![Signer::rsa("k1", RSA1)]).await;
    let served = serve(&issuer, "3s");
    let (http, base) = (client(), served.base.clone());

    // Not logged in: to the login page, coming back after; scripts get 401.
    let (status, to, _) = get(&http, &format!("{base}/console/catalog"), "").await;
    assert_eq!(
        (status, to.as_str()),
        (303, "/console/login?next=%2Fconsole%2Fcatalog")
    );
    let (status, body) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        "",
        serde_json::json!({"sql": "SELECT 1"}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, _, page) = get(&http, &format!("{base}/console/login"), "").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("login-password") && page.contains("single sign-on"),
        "{page}"
    );

    // A wrong password is refused with pgwire's words.
    let response = http
        .post(format!("{base}/console/login"))
        .form(&[("user", "svc"), ("password", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("set-cookie").is_none());
    let page = response.text().await.unwrap();
    assert!(
        page.contains("password authentication failed for user &#34;svc&#34;")
            || page.contains("password authentication failed for user &quot;svc&quot;"),
        "{page}"
    );

    // The catalog: what the analyst may see, not the hr schema.
    let cookie = login(&http, &base, "svc", "svc-pw").await;
    let (status, _, page) = get(&http, &format!("{base}/console/catalog"), &cookie).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("/console/catalog/sales/orders"), "{page}");
    assert!(!page.contains("salaries"), "a hidden table is listed: {page}");
    let (status, _, page) = get(&http, &format!("{base}/console/catalog/sales/orders"), &cookie).await;
    assert_eq!(status, 200, "{page}");
    for part in [
        "id=\"freshness\"",
        " ago",
        "region",
        "long",
        "id=\"snapshots\"",
        "added-records=4",
        ".parquet",
    ] {
        assert!(page.contains(part), "{part} missing: {page}");
    }
    // Lineage: the table a CREATE TABLE AS read.
    let (status, _, page) = get(&http, &format!("{base}/console/catalog/sales/totals"), &cookie).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Computed from <a href=\"/console/catalog/sales/orders\">sales.orders</a>"),
        "{page}"
    );
    // A table the user may not read: 403 with the policy's refusal.
    let (status, _, page) = get(&http, &format!("{base}/console/catalog/hr/salaries"), &cookie).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("access denied"), "{page}");
    // So is a job the policy does not let the user see (ViewJob), or run (RunJob).
    let (status, _, page) = get(&http, &format!("{base}/console/jobs/nightly"), &cookie).await;
    assert_eq!(status, 403, "{page}");
    assert!(
        page.contains("access denied") && page.contains("ViewJob"),
        "{page}"
    );
    let response = http
        .post(format!("{base}/console/jobs/nightly/trigger"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // A query runs as the user: the row filter applies; the hidden table is refused.
    let cookie = login(&http, &base, "svc", "svc-pw").await;
    let (status, result) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        &cookie,
        serde_json::json!({"sql": "SELECT id, region, amount FROM sales.orders ORDER BY id"}),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["columns"], serde_json::json!(["id", "region", "amount"]));
    assert_eq!(
        result["rows"],
        serde_json::json!([["1", "eu", "10"], ["3", "eu", "30"], ["5", "eu", "50"]])
    );
    let (status, refused) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        &cookie,
        serde_json::json!({"sql": "SELECT * FROM hr.salaries"}),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("access denied"),
        "{refused}"
    );
    let (status, bad) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        &cookie,
        serde_json::json!({"sql": "SELEC 1"}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");

    // Downloads hold the same rows.
    let sql = "SELECT id, region, amount FROM sales.orders ORDER BY id";
    let (status, disposition, csv) = download(&http, &base, &cookie, sql, "csv").await;
    assert_eq!(status, 200);
    assert!(disposition.contains("result.csv"), "{disposition}");
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "id,region,amount\n1,eu,10\n3,eu,30\n5,eu,50\n"
    );
    let (status, disposition, parquet) = download(&http, &base, &cookie, sql, "parquet").await;
    assert_eq!(status, 200);
    assert!(disposition.contains("result.parquet"), "{disposition}");
    let file = served.dir.path().join("result.parquet");
    std::fs::write(&file, parquet).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, vec![1, 3, 5]);
    let (status, _, _) = download(&http, &base, &cookie, "SELECT * FROM hr.salaries", "csv").await;
    assert_eq!(status, 403);

    // A chart, saved to the dashboard and drawn there.
    let cookie = login(&http, &base, "svc", "svc-pw").await;
    for kind in ["bar", "line", "area", "scatter", "pie"] {
        let (status, figure) = post_json(
            &http,
            &format!("{base}/console/api/chart"),
            &cookie,
            serde_json::json!({"sql": sql, "kind": kind, "x": "region", "y": "amount"}),
        )
        .await;
        assert_eq!(status, 200, "{kind}: {figure}");
        let trace = &figure["data"][0];
        let expected = match kind {
            "bar" => "bar",
            "pie" => "pie",
            _ => "scatter",
        };
        assert_eq!(trace["type"], expected, "{kind}: {figure}");
        if kind == "pie" {
            assert_eq!(trace["values"], serde_json::json!([10.0, 30.0, 50.0]), "{figure}");
        } else {
            assert_eq!(trace["y"], serde_json::json!([10.0, 30.0, 50.0]), "{figure}");
        }
        if kind == "area" {
            assert_eq!(trace["fill"], "tozeroy", "{figure}");
        }
    }
    let (status, bad) = post_json(
        &http,
        &format!("{base}/console/api/chart"),
        &cookie,
        serde_json::json!({"sql": sql, "kind": "bar", "x": "id", "y": "nope"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().unwrap().contains("no column \"nope\""),
        "{bad}"
    );
    let (status, saved) = post_json(
        &http,
        &format!("{base}/console/api/charts"),
        &cookie,
        serde_json::json!({"name": "EU amounts", "sql": sql, "kind": "bar", "x": "region", "y": "amount", "dashboard": true}),
    )
    .await;
    assert_eq!(status, 201, "{saved}");
    let id = saved["id"].as_str().unwrap().to_string();
    let (status, _, page) = get(&http, &format!("{base}/console/dashboard"), &cookie).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("EU amounts") && page.contains(&format!("chart-{id}")),
        "{page}"
    );
    let (status, _, figure) = get(&http, &format!("{base}/console/api/charts/{id}/figure"), &cookie).await;
    assert_eq!(status, 200, "{figure}");
    assert!(figure.contains("\"bar\""), "{figure}");
    // Another user does not see it.
    let other = login(&http, &base, "nobody", "nobody-pw").await;
    let (status, _, _) = get(&http, &format!("{base}/console/api/charts/{id}/figure"), &other).await;
    assert_eq!(status, 404);
    let (_, _, page) = get(&http, &format!("{base}/console/dashboard"), &other).await;
    assert!(!page.contains("EU amounts"), "{page}");
    // A user without rights sees the policy's refusal.
    let (status, refused) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        &other,
        serde_json::json!({"sql": "SELECT id FROM sales.orders"}),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("access denied"),
        "{refused}"
    );

    // The pipeline and jobs pages answer, and the assets are served from the binary.
    for page in ["/console/pipeline", "/console/jobs", "/console/sql"] {
        let (status, _, body) = get(&http, &format!("{base}{page}"), &other).await;
        assert_eq!(status, 200, "{page}: {body}");
    }
    let (status, _, plotly) = get(&http, &format!("{base}/console/assets/plotly.js"), "").await;
    assert_eq!(status, 200);
    assert!(
        plotly.len() > 1_000_000 && plotly.contains("newPlot") && !plotly.contains("<script"),
        "plotly.js: {} bytes",
        plotly.len()
    );

    // An expired login goes back to the login page, which says why.
    let cookie = login(&http, &base, "svc", "svc-pw").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let to = loop {
        let (status, to, _) = get(&http, &format!("{base}/console/catalog"), &cookie).await;
        if status == 303 {
            break to;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "the login did not expire within 30 s (ttl 3 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        to.starts_with("/console/login?") && to.contains("expired"),
        "{to}"
    );
    let (_, _, page) = get(&http, &format!("{base}{to}"), "").await;
    assert!(page.contains("Your session has expired"), "{page}");
    let (status, body) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        &cookie,
        serde_json::json!({"sql": "SELECT 1"}),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body.to_string().contains("log in again") || body.to_string().contains("not logged in"),
        "{body}"
    );
    drop(served);
}

#[tokio::test(flavor = "multi_thread")]
async fn console_logs_in_with_the_oidc_code_flow_and_pkce() {
    crate::init_logs();
    let issuer = issuer(vec![Signer::rsa("k1", RSA1)]).await;
    *issuer.login_as.lock().unwrap() = "olga".into();
    let served = serve_with(&issuer, "1h", "[query]\nstatement_timeout = \"2s\"\n");
    let (http, base) = (client(), served.base.clone());
    // The console's statements pass the workload's statement_timeout.
    let cookie = login(&http, &base, "svc", "svc-pw").await;
    let started = Instant::now();
    // 3^24 rows (the row filter leaves 3 of orders' 4): far more than 2 s of work.
    let joined: Vec<String> = (0..24).map(|i| format!("sales.orders o{i}")).collect();
    let (status, stopped) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        &cookie,
        serde_json::json!({"sql": format!("SELECT count(*) FROM {}", joined.join(" CROSS JOIN "))}),
    )
    .await;
    assert_eq!(status, 408, "{stopped}");
    assert!(
        stopped["error"].as_str().unwrap().contains("statement timeout"),
        "{stopped}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Off to the issuer with a state and an S256 challenge.
    let response = http
        .get(format!("{base}/console/oidc/start?next=%2Fconsole%2Fsql"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "{:?}", response.text().await);
    let to = location(&response);
    let authorize = url::Url::parse(&to).unwrap();
    assert!(
        to.starts_with(&format!("{}/protocol/openid-connect/auth?", issuer.url)),
        "{to}"
    );
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], "tarn");
    assert_eq!(q["redirect_uri"], format!("{base}/console/oidc/callback"));
    // The issuer (the browser's session there is olga's) sends the browser back with a code.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&issuer.ca_file).unwrap()).unwrap();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let response = browser.get(&to).send().await.unwrap();
    assert!(response.status().is_redirection(), "{:?}", response.text().await);
    let back = location(&response);
    assert!(
        back.starts_with(&format!("{base}/console/oidc/callback?code=")),
        "{back}"
    );
    // A forged state is refused; the real one logs in once.
    let forged = back.replace("state=", "state=x");
    let response = http.get(&forged).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let response = http.get(&back).send().await.unwrap();
    assert_eq!(response.status(), 303, "{:?}", response.text().await);
    assert_eq!(location(&response), "/console/sql");
    let cookie = login_cookie(&response);
    let (status, _, page) = get(&http, &format!("{base}/console/catalog"), &cookie).await;
    assert_eq!(status, 200);
    // The principal is the token's: user olga with the realm's and client's roles.
    assert!(page.contains("olga (analyst, offline_access, reader)"), "{page}");
    assert!(
        page.contains("/console/catalog/sales/orders") && !page.contains("salaries"),
        "{page}"
    );
    // The code was used: a replay is refused.
    let response = http.get(&back).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(issuer.codes_issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(served);
}

/// Where the browser test's screenshots go (kept after the run; docs/console/ holds a copy).
fn screenshot_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

#[tokio::test(flavor = "multi_thread")]
async fn console_in_headless_chromium_browses_queries_charts_and_saves_a_dashboard() {
    crate::init_logs();
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: run scripts/setup.sh (it installs Debian's chromium and chromium-driver)"
        );
    }
    let issuer = issuer(vec![Signer::rsa("k1", RSA1)]).await;
    // A CDC pipeline from a PostgreSQL with changes arriving, for the pipeline page.
    let pg = tarn_test_utils::PostgresServer::start_temporary().unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, amount INT NOT NULL); \
         INSERT INTO orders (amount) SELECT g FROM generate_series(1, 100) g",
    )
    .unwrap();
    let served = serve_with(
        &issuer,
        "1h",
        &format!(
            // Into `sales`, which the analyst `svc` may see (its pipeline pages show it).
            "[cdc]\nsource = \"{}\"\nnamespace = \"sales\"\ntable_name = \"live_{{table}}\"\n\
             [cdc.flush]\ninterval = \"200ms\"\n",
            pg.url("app")
        ),
    );
    // Streaming (its table made) before the browser lists the catalog.
    let http = client();
    let cookie = login(&http, &served.base, "svc", "svc-pw").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, _, status) = get(&http, &format!("{}/console/api/pipeline", served.base), &cookie).await;
        if status.contains(r#""state":"streaming""#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the CDC pipeline is not streaming after 90 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = std::thread::spawn({
        let (url, writing) = (pg.url("app"), writing.clone());
        move || {
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = std::process::Command::new("psql")
                    .args([
                        url.as_str(),
                        "-X",
                        "-q",
                        "-c",
                        "INSERT INTO orders (amount) SELECT g FROM generate_series(1, 20) g",
                    ])
                    .output();
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    });
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    println!("console screenshots: {}", shots.display());
    let base = served.base.clone();
    let shots_arg = shots.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        tarn_test_utils::run_python(
            "console_browser.py",
            &[
                "--base",
                &base,
                "--user",
                "svc",
                "--password",
                "svc-pw",
                "--table",
                "sales.orders",
                "--sql",
                "SELECT CAST(id AS VARCHAR) AS order_id, amount FROM sales.orders ORDER BY id",
                "--shots",
                &shots_arg,
                "--pipeline",
                "streaming",
            ],
        )
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(served.dir.path().join("serve.log")).unwrap_or_default();
        panic!("{e:#}\nscreenshots in {}\n{log}", screenshot_dir().display())
    });
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        seen["login_url"], "/console/login?next=%2Fconsole%2Fcatalog",
        "{seen}"
    );
    assert_eq!(seen["user"], "svc", "{seen}");
    assert_eq!(
        seen["tables_listed"],
        serde_json::json!(["sales.live_orders", "sales.orders", "sales.totals"]),
        "{seen}"
    );
    assert_eq!(seen["table_title"], "sales.orders", "{seen}");
    assert!(seen["freshness"].as_str().unwrap().ends_with(" ago"), "{seen}");
    assert_eq!(
        seen["schema_columns"],
        serde_json::json!(["id", "region", "amount"]),
        "{seen}"
    );
    assert_eq!(
        seen["result_columns"],
        serde_json::json!(["order_id", "amount"]),
        "{seen}"
    );
    // The row filter of the policy applies in the browser's query too.
    assert_eq!(
        seen["result_rows"],
        serde_json::json!([["1", "10"], ["3", "30"], ["5", "50"]]),
        "{seen}"
    );
    assert_eq!(seen["chart_bars"], 3, "{seen}");
    assert!(
        seen["saved"].as_str().unwrap().contains("Amount by order"),
        "{seen}"
    );
    assert_eq!(
        seen["dashboard_charts"],
        serde_json::json!(["Amount by order"]),
        "{seen}"
    );
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert!(
        seen["pipeline_state"][0].as_str().unwrap().contains("streaming"),
        "{seen}"
    );
    assert_eq!(
        seen["pipeline_tables"],
        serde_json::json!(["sales.live_orders"]),
        "{seen}"
    );
    assert_eq!(seen["pipelines"], serde_json::json!(["main (live)"]), "{seen}");
    assert_eq!(
        seen["history_tables"],
        serde_json::json!(["sales.live_orders"]),
        "{seen}"
    );
    assert!(
        seen["refusal"].as_str().unwrap().contains("access denied"),
        "{seen}"
    );
    for page in [
        "login",
        "catalog",
        "table",
        "sql",
        "chart",
        "dashboard",
        "pipeline",
        "pipelines",
        "pipeline_history",
        "jobs",
        "refused",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{}",
            png.display()
        );
    }
    drop(served);
}

#[tokio::test(flavor = "multi_thread")]
async fn console_off_serves_nothing_under_console() {
    crate::init_logs();
    let issuer = issuer(vec![Signer::rsa("k1", RSA1)]).await;
    // Appended to the [console] section.
    let served = serve_with(&issuer, "1h", "enabled = false\n");
    let http = client();
    // Not found; with [auth.oidc] on, the endpoint asks unknown paths for a bearer token first.
    for path in ["/console/catalog", "/console/login", "/console/assets/plotly.js"] {
        let (status, _, body) = get(&http, &format!("{}{path}", served.base), "").await;
        assert!(matches!(status, 401 | 404), "{path}: {status}");
        assert!(
            !body.contains("tarn console") && !body.contains("Plotly"),
            "{path}: {body}"
        );
    }
    let (status, _, _) = get(&http, &format!("{}/healthz", served.base), "").await;
    assert_eq!(status, 200);
}

/// The figure a pipeline's history page embeds (`#history-figure`).
fn history_figure(page: &str) -> serde_json::Value {
    let start = page
        .find(r#"<script type="application/json" id="history-figure">"#)
        .unwrap_or_else(|| panic!("no history figure in {page}"));
    let rest = &page[start..];
    let json = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// The rows a history figure's trace `name` counts (each bar's hover text, `N rows`).
fn rows_drawn(figure: &serde_json::Value, name: &str) -> u64 {
    let trace = figure["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no trace {name} in {figure}"));
    trace["hovertext"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t.as_str()
                .unwrap()
                .trim_end_matches(" rows")
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

/// The pipelines pages over a Kafka ingest (`tarn ingest kafka` into `sales.web_clicks`, a real
/// broker) and an Airbyte sync (`tarn ingest airbyte`, the test connector into `sales.items`),
/// both run as their own processes beside `tarn serve`: listed from the lake, each partition's
/// lag against the broker, the sync's stream and STATE, the history drawn from the commits;
/// a user who may see none of their tables sees no pipeline; bad addresses are named.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread")]
async fn pipelines_pages_show_kafka_and_airbyte_pipelines_from_the_lake() {
    use tarn_test_utils::kafka::Broker;
    crate::init_logs();
    let broker = tokio::task::block_in_place(|| {
        let broker = Broker::start().expect("a tansu broker (bash scripts/setup.sh installs it)");
        broker.create_topic("web.clicks", 2).unwrap();
        broker
    });
    let produce = |from: i32, to: i32| crate::jobs::produce_clicks(&broker, from, to);
    produce(0, 10);
    let issuer = issuer(vec![Signer::rsa("k1", RSA1)]).await;
    // The Kafka pipeline's tables land in `sales`, which the analyst `svc` may see.
    let served = serve_with(
        &issuer,
        "1h",
        &format!(
            "[maintenance]\nauto = false\n\
             [cdc]\nsource_kind = \"kafka\"\npipeline = \"clicks\"\nnamespace = \"sales\"\n\
             principal_roles = [\"admin\"]\n\
             [cdc.flush]\ninterval = \"100ms\"\n\
             [cdc.kafka]\nbrokers = \"{}\"\ntopics = [\"web.clicks\"]\ngroup = \"clicks\"\n\
             format = \"json\"\nsession_timeout = \"6s\"\n",
            broker.bootstrap()
        ),
    );
    let d = served.dir.path();
    let ingest = crate::jobs::KafkaIngest::start(d);
    let connector_config = d.join("connector.json");
    std::fs::write(&connector_config, r#"{"count": 12, "state_every": 5}"#).unwrap();
    let (ok, out, err) = crate::tarn(
        d,
        &[
            "ingest",
            "airbyte",
            "--connector",
            &crate::airbyte::test_source(),
            "--config",
            &connector_config.display().to_string(),
            "--namespace",
            "sales",
            "--commit-interval",
            "0s",
        ],
    );
    assert!(ok, "tarn ingest airbyte: {out}{err}");

    let (http, base) = (client(), served.base.clone());
    let cookie = login(&http, &base, "svc", "svc-pw").await;
    // Until the Kafka pipeline's page shows both partitions caught up with the broker.
    let page = |path: &str| {
        let (http, url, cookie) = (http.clone(), format!("{base}{path}"), cookie.clone());
        async move { get(&http, &url, &cookie).await }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let kafka_page = loop {
        let (status, _, body) = page("/console/pipelines/kafka/clicks").await;
        if status == 200
            && body.contains("<td>web.clicks</td><td>0</td><td>5</td><td>5</td><td>0</td>")
            && body.contains("<td>web.clicks</td><td>1</td><td>5</td><td>5</td><td>0</td>")
        {
            break body;
        }
        ingest.assert_running(&format!("{status}"));
        assert!(
            Instant::now() < deadline,
            "the Kafka pipeline's page did not show the lake caught up in 90 s: {status} {body}\n{}",
            ingest.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(kafka_page.contains("sales.web_clicks"), "{kafka_page}");
    assert!(!kafka_page.contains("partitions-note"), "{kafka_page}");
    // The commits drawn: every record once, no lag trace missing.
    let figure = history_figure(&kafka_page);
    assert_eq!(rows_drawn(&figure, "rows added/s"), 10, "{figure}");
    assert!(
        figure["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "lag at commit (s)")
    );

    // Stopped, and 6 more records produced: each partition 3 behind.
    ingest.stop();
    produce(10, 16);
    let (_, _, body) = page("/console/pipelines/kafka/clicks").await;
    for partition in [0, 1] {
        let row = format!("<td>web.clicks</td><td>{partition}</td><td>5</td><td>8</td><td>3</td>");
        assert!(body.contains(&row), "{row} in {body}");
    }

    // The listing: both pipelines, by kind, with the rows of the last hour.
    let (status, _, listing) = page("/console/pipelines").await;
    assert_eq!(status, 200, "{listing}");
    assert!(
        listing.contains(r#"<a href="/console/pipelines/kafka/clicks">clicks</a>"#),
        "{listing}"
    );
    assert!(
        listing.contains(r#"<a href="/console/pipelines/airbyte/sales">sales</a>"#),
        "{listing}"
    );
    assert!(listing.contains("<td>Kafka ingest</td><td>1</td>"), "{listing}");

    // The Airbyte sync: its stream, the STATE of its last commit, a commit per STATE.
    let (status, _, airbyte) = page("/console/pipelines/airbyte/sales").await;
    assert_eq!(status, 200, "{airbyte}");
    assert!(airbyte.contains("sales.items"), "{airbyte}");
    assert!(airbyte.contains("<code>stream items</code>"), "{airbyte}");
    assert!(
        airbyte.contains("&#34;cursor&#34;:12") || airbyte.contains("&quot;cursor&quot;:12"),
        "{airbyte}"
    );
    let figure = history_figure(&airbyte);
    assert_eq!(rows_drawn(&figure, "rows added/s"), 12, "{figure}");
    assert_eq!(
        figure["data"].as_array().unwrap().len(),
        2,
        "no lag for Airbyte: {figure}"
    );
    // Another window draws the same commits.
    let (status, _, short) = page("/console/pipelines/airbyte/sales?hours=1").await;
    assert_eq!(status, 200);
    assert_eq!(rows_drawn(&history_figure(&short), "rows added/s"), 12);

    // Bad addresses are named.
    let (status, _, body) = page("/console/pipelines/mysql/x").await;
    assert_eq!(status, 404);
    assert!(body.contains("pipeline kind &#34;mysql&#34;: expected one of postgres, cockroachdb, cdc, kafka, kafka-archive, airbyte") || body.contains("pipeline kind &quot;mysql&quot;"), "{body}");
    let (status, _, body) = page("/console/pipelines/kafka/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("no Kafka ingest pipeline"), "{body}");
    let (status, _, body) = page("/console/pipelines/kafka/clicks?hours=-1").await;
    assert_eq!(status, 400);
    assert!(body.contains("hours=-1: expected more than 0"), "{body}");

    // A user who may see none of the tables sees no pipeline, and not its page.
    let nobody = login(&http, &base, "nobody", "nobody-pw").await;
    let (status, _, body) = get(&http, &format!("{base}/console/pipelines"), &nobody).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("no-pipelines") && !body.contains("clicks"),
        "{body}"
    );
    let (status, _, _) = get(&http, &format!("{base}/console/pipelines/kafka/clicks"), &nobody).await;
    assert_eq!(status, 404);
    drop(served);
}

/// `POST /console/api/query` with `Authorization: Bearer` and JSON `{"sql"}`: (status,
/// `WWW-Authenticate`, body).
async fn query_with_bearer(
    http: &reqwest::Client,
    base: &str,
    authorization: &str,
    cookie: &str,
    sql: &str,
) -> (u16, String, serde_json::Value) {
    let response = http
        .post(format!("{base}/console/api/query"))
        .header("authorization", authorization)
        .header("cookie", cookie)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "sql": sql }).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {e}: {text}"));
    (status, challenge, body)
}

/// Scripts call the query API with an OIDC bearer token instead of the login cookie: a valid
/// token runs the statement as its principal (the analyst's row filter and refusals, the
/// admin's full view), a bad, foreign, expired or missing one is 401 — also beside a valid
/// login cookie, which a bearer header overrides.
#[tokio::test(flavor = "multi_thread")]
async fn console_query_api_takes_bearer_tokens_as_their_principal() {
    crate::init_logs();
    let rsa = Signer::rsa("k1", RSA1);
    let issuer = issuer(vec![rsa.clone()]).await;
    let served = serve(&issuer, "1h");
    let (http, base) = (client(), served.base.clone());
    let orders = "SELECT region, amount FROM sales.orders ORDER BY id";

    // `ana` has the realm role `analyst`: the row filter applies, hr is refused.
    let ana = format!("Bearer {}", rsa.sign(&issuer.claims("ana")));
    let (status, _, body) = query_with_bearer(&http, &base, &ana, "", orders).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rows"],
        serde_json::json!([["eu", "10"], ["eu", "30"], ["eu", "50"]]),
        "{body}"
    );
    let (status, _, body) = query_with_bearer(&http, &base, &ana, "", "SELECT * FROM hr.salaries").await;
    assert_eq!(status, 403, "{body}");
    // An admin's token sees every row.
    let mut claims = issuer.claims("root");
    claims["realm_access"]["roles"] = serde_json::json!(["admin"]);
    let root = format!("Bearer {}", rsa.sign(&claims));
    let (status, _, body) = query_with_bearer(&http, &base, &root, "", orders).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["row_count"], 4, "{body}");

    // Refused: a token of a key the issuer does not publish, an expired one, garbage,
    // pyiceberg's `Bearer None`, another scheme.
    let foreign = format!(
        "Bearer {}",
        Signer::rsa("k1", tarn_test_utils::oidc::RSA2).sign(&issuer.claims("ana"))
    );
    let mut expired = issuer.claims("ana");
    expired["exp"] = serde_json::json!(tarn_test_utils::oidc::now() - 3600);
    expired["nbf"] = serde_json::json!(tarn_test_utils::oidc::now() - 7200);
    expired["iat"] = serde_json::json!(tarn_test_utils::oidc::now() - 7200);
    let expired = format!("Bearer {}", rsa.sign(&expired));
    let cookie = login(&http, &base, "svc", "svc-pw").await;
    for bad in [
        foreign.as_str(),
        expired.as_str(),
        "Bearer not-a-token",
        "Bearer None",
        "Basic c3ZjOnN2Yy1wdw==",
    ] {
        for with_cookie in ["", cookie.as_str()] {
            let (status, challenge, body) = query_with_bearer(&http, &base, bad, with_cookie, orders).await;
            assert_eq!((status, challenge.as_str()), (401, "Bearer"), "{bad}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
            assert!(body.get("rows").is_none(), "{bad}: {body}");
        }
    }
    // The cookie alone still works.
    let (status, body) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        &cookie,
        serde_json::json!({ "sql": orders }),
    )
    .await;
    assert_eq!(
        (status, body["row_count"].clone()),
        (200, serde_json::json!(3)),
        "{body}"
    );
}

/// A job run from the console, as an operator the policy lets see and run jobs: triggered, its
/// run page shows the failed try and its log; retried, the new run succeeds and its task's SQL
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_triggers_a_job_shows_its_failed_run_and_retries_it_to_success() {
    let issuer = issuer(vec![Signer::rsa("rsa-1", RSA1)]).await;
    let dir = tempfile::Builder::new()
        .prefix("tarn-console-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    let marker = dir.path().join("first-try-done");
    std::fs::write(
        dir.path().join("jobs/report.toml"),
        format!(
            r#"
            principal = "root"
            groups = ["admin"]
            [[tasks]]
            id = "fetch"
            kind = "shell"
            command = "if [ -f {m} ]; then echo the source answered; else touch {m}; echo the source is down; exit 1; fi"
            [[tasks]]
            id = "build"
            kind = "sql"
            sql = "CREATE TABLE sales.report AS SELECT count(*) AS n FROM sales.orders"
            depends_on = ["fetch"]
            "#,
            m = marker.display()
        ),
    )
    .unwrap();
    // The policy lets svc see and run jobs.
    let policy = format!(
        "{}\nallow if {{\n\tinput.context.identity.user == \"svc\"\n\tinput.action.operation in {{\"ViewJob\", \"RunJob\"}}\n}}\n",
        crate::governance::POLICY
    );
    let server = serve_in(dir, &issuer, "1h", "", &policy);
    let (http, base) = (client(), server.base.clone());
    let cookie = login(&http, &base, "svc", "svc-pw").await;
    let job = format!("{base}/console/jobs/report");
    let post = async |url: String| {
        let response = http.post(url).header("cookie", &cookie).send().await.unwrap();
        (response.status().as_u16(), location(&response))
    };
    // The runs of the job page, newest first: (run id, state).
    let runs = async || {
        let (status, _, page) = get(&http, &job, &cookie).await;
        assert_eq!(status, 200, "{page}");
        page.split("<tr class=\"state-")
            .skip(1)
            .map(|row| {
                let state = row.split('"').next().unwrap().to_string();
                let id = row
                    .split("/runs/")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap()
                    .to_string();
                (id, state)
            })
            .collect::<Vec<_>>()
    };
    let finished = async |count: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let runs = runs().await;
            if runs.len() == count && runs.iter().all(|(_, s)| s == "success" || s == "failed") {
                return runs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "runs did not finish: {runs:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    assert_eq!(
        post(format!("{job}/trigger")).await,
        (303, "/console/jobs/report".into())
    );
    let first = finished(1).await;
    assert_eq!(first[0].1, "failed", "{first:?}");
    let (status, _, page) = get(&http, &format!("{job}/runs/{}", first[0].0), &cookie).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("the source is down") && page.contains("upstream_failed"),
        "{page}"
    );

    let retried = post(format!("{job}/runs/{}/retry", first[0].0)).await;
    assert_eq!(retried, (303, "/console/jobs/report".into()));
    let both = finished(2).await;
    let second = both.iter().find(|(id, _)| *id != first[0].0).unwrap();
    assert_eq!(second.1, "success", "{both:?}");
    let (status, _, page) = get(&http, &format!("{job}/runs/{}", second.0), &cookie).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("the source answered"), "{page}");
    let (status, result) = post_json(
        &http,
        &format!("{base}/console/api/query"),
        &cookie,
        serde_json::json!({"sql": "SELECT n FROM sales.report"}),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        result["rows"],
        serde_json::json!([["4"]]),
        "the job counted every order, as its admin principal"
    );
}
