//! The examples: all four build (`cargo build --examples --all-features`, a
//! no-op when `cargo test` has just built them), the load-test server
//! checks its environment at start-up, serves `/api/ping` and limits it, and
//! the axum example limits its routes and serves the limiter's metrics at
//! `/metrics`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::support::headers;
use crate::support::web::{Client, client, send_with};

use crate::scrape;
use crate::support;

#[test]
fn all_four_examples_build() {
    let dir = support::examples_dir();
    for name in ["axum", "tonic", "hyper", "loadtest_server"] {
        let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} was not built", bin.display());
    }
}

/// The load-test server as a child process, killed on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadtest_server(env: &[(&str, &str)]) -> Command {
    let bin =
        support::examples_dir().join(format!("loadtest_server{}", std::env::consts::EXE_SUFFIX));
    let mut cmd = Command::new(bin);
    for var in [
        "BIND",
        "REDIS_URL",
        "WORKERS",
        "KEY",
        "ALGORITHM",
        "LIMIT",
        "WINDOW_SECS",
        "DEADLINE_MS",
        "LIMITER",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("BIND", "127.0.0.1:0");
    cmd.envs(env.iter().copied());
    cmd.stdin(Stdio::null());
    cmd
}

/// Starts the load-test server and returns it with its base URL.
fn start(env: &[(&str, &str)]) -> (Server, String) {
    spawn(loadtest_server(env))
}

/// Starts an example server and returns it with its base URL (read from
/// its `listening on` line).
fn spawn(mut command: Command) -> (Server, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server prints its address");
    (server, url)
}

#[test]
fn loadtest_server_rejects_bad_values_naming_the_variable() {
    for (var, value) in [
        ("LIMIT", "0"),
        ("LIMIT", "ten"),
        ("LIMIT", "1000000001"),
        ("WINDOW_SECS", "0"),
        ("WINDOW_SECS", "-5"),
        ("WORKERS", "0"),
        ("KEY", "not a header"),
        ("ALGORITHM", "fixed"),
        ("LIMITER", "maybe"),
        ("REDIS_URL", "http://127.0.0.1:1"),
    ] {
        let mut child = loadtest_server(&[(var, value)])
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
                let _ = child.wait();
                panic!("{var}={value:?} was accepted: the server kept running");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{var}={value:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{var}=")),
            "{var}={value:?}: the message does not name {var}: {stderr}"
        );
    }
}

/// The password in `REDIS_URL` never reaches the output: the start-up line
/// and the invalid-URL message show the URL redacted.
#[test]
fn loadtest_server_never_prints_the_redis_password() {
    // A valid URL to a dead port: the backend connects lazily, so the server
    // starts and says which backend it uses.
    let port = support::dead_port();
    let url = format!("redis://app:s3cret-pw@127.0.0.1:{port}/0");
    let mut child = loadtest_server(&[("REDIS_URL", url.as_str())])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Server { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.starts_with("listening on "))
    {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no `listening on` line; got {lines:?}"));
        lines.push(line);
    }
    let expected = format!("backend: redis at redis://app:***@127.0.0.1:{port}/0");
    assert!(lines.contains(&expected), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("s3cret")), "{lines:?}");

    // An invalid URL: refused, naming the variable, without the password.
    let out = loadtest_server(&[("REDIS_URL", "redis://app:s3cret-pw@127.0.0.1:notaport/")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("REDIS_URL=\"redis://app:***@127.0.0.1:notaport/\""),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret") && !stdout.contains("s3cret"),
        "{stderr}{stdout}"
    );
}

/// GET `/api/ping`, optionally with an `x-api-key`; the structured fields of
/// the response are checked.
async fn ping(client: &Client, url: &str, api_key: Option<&str>) -> (StatusCode, http::HeaderMap) {
    let extra: Vec<(&str, &str)> = api_key.map(|key| ("x-api-key", key)).into_iter().collect();
    let sent = send_with(client, Method::GET, &format!("{url}/api/ping"), &extra).await;
    (sent.status, sent.headers)
}

#[tokio::test]
async fn loadtest_server_limits_per_ip_and_per_header() {
    let client = client();

    let (_server, url) = start(&[("LIMIT", "2"), ("ALGORITHM", "log"), ("WORKERS", "2")]);
    for r in [1, 0] {
        let (status, h) = ping(&client, &url, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h["ratelimit-policy"], "\"loadtest\";q=2;w=60");
        assert_eq!(headers::ietf(&h).unwrap().1.param("r"), r);
    }
    let (status, h) = ping(&client, &url, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=60).contains(&headers::retry_after(&h)));

    let (_server, url) = start(&[
        ("KEY", "x-api-key"),
        ("LIMIT", "2"),
        ("WINDOW_SECS", "30"),
        ("ALGORITHM", "counter"),
    ]);
    for _ in 0..2 {
        assert_eq!(ping(&client, &url, Some("a")).await.0, StatusCode::OK);
    }
    let (status, h) = ping(&client, &url, Some("a")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h["ratelimit-policy"], "\"loadtest\";q=2;w=30");
    assert_eq!(ping(&client, &url, Some("b")).await.0, StatusCode::OK);

    // GCRA, 2 per minute: one unit back every 30 s. `r` counts the units
    // left, `t` when all are back; a denial waits for the next unit.
    let (_server, url) = start(&[("LIMIT", "2"), ("ALGORITHM", "gcra")]);
    for (r, t) in [(1, 30), (0, 60)] {
        let (status, h) = ping(&client, &url, None).await;
        assert_eq!(status, StatusCode::OK);
        let (_, fields) = headers::ietf(&h).unwrap();
        assert_eq!((fields.param("r"), fields.param("t")), (r, t));
    }
    let (status, h) = ping(&client, &url, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers::retry_after(&h), 30);
}

#[tokio::test]
async fn loadtest_server_without_the_limiter() {
    let client = client();
    let (_server, url) = start(&[("LIMITER", "off"), ("LIMIT", "1")]);
    for _ in 0..5 {
        let (status, h) = ping(&client, &url, None).await;
        assert_eq!(status, StatusCode::OK);
        headers::assert_no_rate_limit_headers(&h);
    }
}

/// The axum example on a free port, with the memory backend, and its limits
/// from the `config` file if given.
fn axum_example(config: Option<&str>) -> (Server, String) {
    let bin = support::examples_dir().join(format!("axum{}", std::env::consts::EXE_SUFFIX));
    let mut cmd = Command::new(bin);
    cmd.env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER")
        .env_remove("CONFIG")
        .env("BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if let Some(config) = config {
        cmd.env("CONFIG", config);
    }
    spawn(cmd)
}

/// The axum example limits its routes and serves the limiter's metrics, by
/// their documented names, at `/metrics` (built with `--all-features`, so
/// with `metrics`); `/metrics` and `/health` are neither limited nor counted.
#[tokio::test]
async fn axum_example_serves_its_metrics() {
    serves_its_metrics(None).await;
}

/// The same with `CONFIG=examples/limits.toml`: the file's api and auth
/// policies are the built-in ones, `/health` and `/metrics` are exempt.
#[tokio::test]
async fn axum_example_with_the_example_config_serves_its_metrics() {
    serves_its_metrics(Some(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/limits.toml"
    )))
    .await;
}

/// `POST /auth/session` counts failed attempts only (issue 20): 50
/// successful logins, then exactly 3 failures answered 401, then 429 for
/// every attempt, right password or not, until the window allows.
#[tokio::test]
async fn axum_example_counts_only_failed_sessions() {
    for config in [
        None,
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/limits.toml")),
    ] {
        let client = client();
        let (_server, url) = axum_example(config);
        let session = format!("{url}/auth/session");
        let right = [("x-password", "letmein")];
        let wrong = [("x-password", "guess")];
        for i in 0..50 {
            let sent = send_with(&client, Method::POST, &session, &right).await;
            assert_eq!(sent.status, StatusCode::OK, "{config:?}: login {i}");
        }
        let mut failures = Vec::new();
        for _ in 0..5 {
            let sent = send_with(&client, Method::POST, &session, &wrong).await;
            failures.push(sent.status.as_u16());
        }
        assert_eq!(failures, [401, 401, 401, 429, 429], "{config:?}");
        let sent = send_with(&client, Method::POST, &session, &right).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{config:?}");
        assert!(sent.headers.contains_key("retry-after"), "{config:?}");
    }
}

/// `POST /api/generate` charges the tokens its response reports (issue
/// 20): 5 000 against 1 000 per minute is admitted (the budget was not
/// spent), then the next request is refused with a Retry-After.
#[tokio::test]
async fn axum_example_charges_the_tokens_a_response_reports() {
    for config in [
        None,
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/limits.toml")),
    ] {
        let client = client();
        let (_server, url) = axum_example(config);
        let generate = format!("{url}/api/generate");
        let sent = send_with(&client, Method::POST, &generate, &[("x-tokens", "5000")]).await;
        assert_eq!(sent.status, StatusCode::OK, "{config:?}");
        assert_eq!(
            sent.headers
                .get("x-tokens-used")
                .map(|v| v.to_str().unwrap()),
            Some("5000"),
            "{config:?}"
        );
        // The charge runs after the response: give it a moment.
        let mut status = StatusCode::OK;
        let mut sent = None;
        for _ in 0..50 {
            let next = send_with(&client, Method::POST, &generate, &[]).await;
            status = next.status;
            if status == StatusCode::TOO_MANY_REQUESTS {
                sent = Some(next);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{config:?}");
        let refused = sent.unwrap();
        let retry: u64 = refused.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // GCRA: 5 000 tokens at 1 000 per minute drain in about 4 minutes.
        assert!(
            (200..=300).contains(&retry),
            "{config:?}: retry-after {retry}"
        );
    }
}

async fn serves_its_metrics(config: Option<&str>) {
    let client = client();
    let (_server, url) = axum_example(config);
    for _ in 0..3 {
        let sent = send_with(&client, Method::GET, &format!("{url}/api/hello"), &[]).await;
        assert_eq!(sent.status, StatusCode::OK);
    }
    // `Policy::auth()`: 5 per minute; the 6th is denied by the backend, the
    // 7th from the blocked-client cache.
    let mut logins = Vec::new();
    for _ in 0..7 {
        let sent = send_with(&client, Method::POST, &format!("{url}/auth/login"), &[]).await;
        logins.push(sent.status.as_u16());
    }
    assert_eq!(logins, [200, 200, 200, 200, 200, 429, 429]);
    for path in ["/health", "/metrics"] {
        let sent = send_with(&client, Method::GET, &format!("{url}{path}"), &[]).await;
        assert_eq!(sent.status, StatusCode::OK, "{path}");
        headers::assert_no_rate_limit_headers(&sent.headers);
    }

    let scraped = send_with(&client, Method::GET, &format!("{url}/metrics"), &[]).await;
    assert_eq!(scraped.status, StatusCode::OK);
    let samples = scrape::Samples::parse(&scraped.body);
    let text = &samples.text;
    let decisions = |policy: &str, outcome: &str| {
        samples.get(&format!(
            "ratelimit_decisions_total{{outcome=\"{outcome}\",policy=\"{policy}\"}}"
        ))
    };
    assert_eq!(decisions("api", "allowed"), Some(3.0), "{text}");
    assert_eq!(decisions("auth", "allowed"), Some(5.0), "{text}");
    assert_eq!(decisions("auth", "denied"), Some(2.0), "{text}");
    let counted: f64 = samples
        .values
        .iter()
        .filter(|(series, _)| series.starts_with("ratelimit_decisions_total{"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(counted, 10.0, "only the limited requests: {text}");
    assert_eq!(
        samples.get("ratelimit_blocked_cache_hits_total{policy=\"auth\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        samples.get("ratelimit_backend_duration_seconds_count{backend=\"memory\"}"),
        Some(9.0),
        "3 + 6 backend calls: {text}"
    );
    assert_eq!(
        samples.get("ratelimit_breaker_open{backend=\"memory\"}"),
        Some(0.0),
        "{text}"
    );
    for line in [
        "# TYPE ratelimit_decisions_total counter",
        "# TYPE ratelimit_blocked_cache_hits_total counter",
        "# TYPE ratelimit_backend_duration_seconds histogram",
        "# TYPE ratelimit_breaker_open gauge",
        "# HELP ratelimit_decisions_total Rate-limit decisions by policy and outcome",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}
