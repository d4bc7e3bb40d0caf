//! TLS (`rediss://`, feature `tls`) against a real `redis-server` with a TLS
//! port, a test-time CA (rcgen) and the limiter's minimal ACL user: exact
//! decisions through the layer, and every broken setting (wrong password,
//! plain `redis://` to the TLS port, a CA not trusted, no client
//! certificate where one is required) fails open with its cause in the log.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_redis_ratelimit::key::Global;
use tower_redis_ratelimit::{
    Algorithm, ConfigError, Key, Policy, Quota, RateLimitLayer, RedisBackend, RedisBackendBuilder,
};

use crate::support::logs::{Logs, capture_logs};
use crate::support::tls::{PASSWORD, TlsRedis, USER};

use crate::support;

/// The layer's deadline.
const DEADLINE: Duration = Duration::from_millis(500);
/// Scheduling slack on top of the deadline (2-core machine).
const MARGIN: Duration = Duration::from_millis(300);
/// The limit of the test policy.
const LIMIT: usize = 5;

fn inner()
-> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(|_request: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    })
}

/// 5 per minute on one global key (fails open), deadline 500 ms, no
/// blocked-client cache (every request reaches the backend).
fn layer(backend: RedisBackend, algorithm: Algorithm) -> RateLimitLayer {
    let policy = Policy::new("tls")
        .quota(Quota::per_minute(LIMIT as u64))
        .algorithm(algorithm)
        .key(Global);
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .deadline(DEADLINE)
        .blocked_cache(0)
        .build()
        .unwrap()
}

/// Sends `n` requests one by one; their statuses, each checked to take no
/// longer than the deadline plus a margin.
async fn statuses(layer: &RateLimitLayer, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        let service = layer.layer(inner());
        let start = Instant::now();
        let response = service
            .oneshot(Request::get("/").body(String::new()).unwrap())
            .await
            .unwrap();
        let took = start.elapsed();
        assert!(took <= DEADLINE + MARGIN, "a request took {took:?}");
        out.push(response.status());
    }
    out
}

fn exactly_limit(statuses: &[StatusCode]) -> bool {
    statuses.len() == LIMIT + 1
        && statuses[..LIMIT].iter().all(|s| *s == StatusCode::OK)
        && statuses[LIMIT] == StatusCode::TOO_MANY_REQUESTS
}

/// The captured log's WARN lines about failed decisions.
fn failure_warnings(logs: &Logs) -> Vec<String> {
    logs.text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("rate limiter backend failed"))
        .map(str::to_owned)
        .collect()
}

/// A backend for `url` trusting the test CA.
fn trusting(server: &TlsRedis, url: &str) -> RedisBackendBuilder {
    RedisBackend::builder(url).tls_ca_pem(server.pki.ca_pem.as_bytes())
}

/// Every request of a broken setting fails open within the deadline, and
/// the log warns once (throttled), naming the cause: `needle`.
async fn fails_open_naming(logs: &Logs, backend: RedisBackend, needles: &[&str]) {
    let layer = layer(backend, Algorithm::SlidingWindow);
    let all = statuses(&layer, 2 * LIMIT).await;
    assert!(all.iter().all(|s| *s == StatusCode::OK), "{all:?}");
    let warnings = failure_warnings(logs);
    assert!(
        !warnings.is_empty() && warnings.len() <= 2,
        "one throttled warning expected: {warnings:#?}"
    );
    let lower = warnings[0].to_lowercase();
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "the warning does not name the cause ({needles:?}): {}",
        warnings[0]
    );
}

#[tokio::test]
async fn limits_are_exact_over_tls_with_the_minimal_acl_user() {
    let server = TlsRedis::start(false);
    let backend = trusting(&server, &server.url(USER, PASSWORD))
        .build()
        .unwrap();
    for algorithm in [
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
        Algorithm::Gcra,
    ] {
        let backend = backend.clone();
        let policy_layer = layer(backend.clone(), algorithm);
        let got = statuses(&policy_layer, LIMIT + 1).await;
        assert!(exactly_limit(&got), "{algorithm:?}: {got:?}");
        // Administration: a peek (EVALSHA_RO) sees the quota spent, a reset
        // (DEL) gives it back.
        let admin = policy_layer.admin();
        let key = Key::new("global");
        let _ = admin.peek("tls", &key).await;
        admin.reset("tls", &key).await.unwrap();
        let got = statuses(&policy_layer, LIMIT + 1).await;
        assert!(exactly_limit(&got), "{algorithm:?} after reset: {got:?}");
        admin.reset("tls", &key).await.unwrap();
    }
    // Nothing the limiter sent was refused by its minimal ACL.
    assert_eq!(server.acl_denials(), Vec::<String>::new());
    // Its keys are under `rl:`.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut server.admin())
        .unwrap();
    assert!(keys.iter().all(|k| k.starts_with("rl:")), "{keys:?}");
}

#[tokio::test]
async fn a_wrong_password_fails_open_and_the_log_names_wrongpass_once() {
    let server = TlsRedis::start(false);
    let logs = capture_logs();
    let backend = trusting(&server, &server.url(USER, "not-the-password"))
        .build()
        .expect("a wrong password never stops the application");
    fails_open_naming(&logs, backend, &["WRONGPASS", "authentication failed"]).await;
    assert!(
        !logs.text().contains("not-the-password"),
        "the log shows the password"
    );
}

#[tokio::test]
async fn plain_redis_to_the_tls_port_fails_open_with_its_cause_logged() {
    let server = TlsRedis::start(false);
    let logs = capture_logs();
    let url = format!("redis://{USER}:{PASSWORD}@127.0.0.1:{}/", server.tls_port);
    let backend = RedisBackend::new(&url).unwrap();
    fails_open_naming(
        &logs,
        backend,
        &[
            "connection",
            "reset",
            "closed",
            "broken pipe",
            "eof",
            "io error",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_server_certificate_from_an_untrusted_ca_is_named_in_the_log() {
    let server = TlsRedis::start(false);
    let logs = capture_logs();
    // No CA given: only the system's roots, which never signed the test CA.
    let backend = RedisBackend::new(&server.url(USER, PASSWORD)).unwrap();
    fails_open_naming(&logs, backend, &["certificate", "UnknownIssuer"]).await;
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let server = TlsRedis::start(true);
    let url = server.url(USER, PASSWORD);
    let backend = trusting(&server, &url)
        .tls_client_pem(
            server.pki.client_cert_pem.as_bytes(),
            server.pki.client_key_pem.as_bytes(),
        )
        .build()
        .unwrap();
    let got = statuses(&layer(backend, Algorithm::SlidingWindow), LIMIT + 1).await;
    assert!(exactly_limit(&got), "{got:?}");
    assert_eq!(server.acl_denials(), Vec::<String>::new());

    // Without the client certificate the server refuses the handshake.
    let logs = capture_logs();
    let backend = trusting(&server, &url).build().unwrap();
    fails_open_naming(
        &logs,
        backend,
        &[
            "certificate",
            "connection",
            "reset",
            "closed",
            "eof",
            "alert",
        ],
    )
    .await;
}

/// The documented ACL rule names exactly the commands the scripts run (read
/// from their Lua sources) besides those the limiter sends itself, so a
/// changed script cannot silently fail open for a minimal-ACL user.
#[test]
fn the_minimal_acl_rule_names_every_command_of_every_script() {
    let sent_by_the_limiter = ["evalsha", "evalsha_ro", "script|load", "del"];
    let mut run_by_scripts = std::collections::BTreeSet::new();
    // The algorithms' scripts, the fleet's heartbeat and the batch script
    // (Lua inside batch.rs, calling through `real`).
    let root = env!("CARGO_MANIFEST_DIR");
    let mut sources = Vec::new();
    for dir in ["src/algorithm", "src/backend/redis"] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "lua") || path.ends_with("batch.rs") {
                sources.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    for source in &sources {
        for call in ["redis.call(", "redis.pcall(", "real.call(", "real.call, "] {
            for rest in source.split(call).skip(1) {
                let name: String = rest
                    .trim_start_matches(['\'', '"'])
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "command" {
                    run_by_scripts.insert(name.to_ascii_lowercase());
                }
            }
        }
    }
    assert!(run_by_scripts.contains("time"), "{run_by_scripts:?}");
    let granted: std::collections::BTreeSet<String> = support::tls::LIMITER_ACL
        .split_whitespace()
        .filter_map(|rule| rule.strip_prefix('+'))
        .map(str::to_owned)
        .collect();
    let needed: std::collections::BTreeSet<String> = run_by_scripts
        .into_iter()
        .chain(sent_by_the_limiter.map(str::to_owned))
        .collect();
    assert_eq!(granted, needed);
}

#[test]
fn unusable_tls_settings_are_config_errors() {
    let url = "rediss://limiter:pw@127.0.0.1:6380";
    for builder in [
        RedisBackend::builder(url).tls_ca_pem("not a certificate"),
        RedisBackend::builder(url).tls_client_pem("no cert", "no key"),
        // Certificates for a URL without TLS.
        RedisBackend::builder("redis://127.0.0.1:6379")
            .tls_ca_pem(support::tls::Pki::new(&temp("pem")).ca_pem),
    ] {
        let err = builder.build().unwrap_err();
        assert!(matches!(err, ConfigError::Tls(_)), "{err:?}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
    // A real CA and a `rediss://` URL build (connecting nothing).
    let pki = support::tls::Pki::new(&temp("ok"));
    RedisBackend::builder(url)
        .tls_ca_pem(pki.ca_pem.as_bytes())
        .tls_client_pem(
            pki.client_cert_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        )
        .build()
        .unwrap();
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("trr-tls-pem-{}-{name}", std::process::id()))
}

/// The README's command, `REDIS_URL=rediss://... cargo run --example axum`,
/// with `REDIS_CA_CERT`: the example starts, says which backend it uses
/// (password hidden), and `POST /auth/login` (5 per minute) is limited
/// exactly, through TLS, as the minimal ACL user.
#[tokio::test]
async fn the_axum_example_reads_rediss_and_redis_ca_cert() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let server = TlsRedis::start(false);
    let bin = support::examples_dir().join(format!("axum{}", std::env::consts::EXE_SUFFIX));
    let mut child = Command::new(bin)
        .env_remove("REDIS_CLUSTER")
        .env_remove("REDIS_SENTINEL")
        .env_remove("CONFIG")
        .env("REDIS_URL", server.url(USER, PASSWORD))
        .env("REDIS_CA_CERT", server.pki.path("ca.crt"))
        .env("BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(server.pki.path("axum.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let base = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no `listening on` line: {lines:#?}"));
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
        lines.push(line);
    };
    let shown = lines.join("\n");
    let expected = format!(
        "backend: redis at rediss://{USER}:***@127.0.0.1:{}/",
        server.tls_port
    );
    let client = support::web::client();
    let mut got = Vec::new();
    let _child = KillOnDrop(child);
    // The first TLS connection (handshake, script load) may take longer
    // than the example's 50 ms deadline: wait until the backend decides.
    let warm = Instant::now();
    loop {
        let sent =
            support::web::send(&client, http::Method::GET, &format!("{base}/api/hello")).await;
        if sent.headers.contains_key("ratelimit") {
            break;
        }
        assert!(
            warm.elapsed() < Duration::from_secs(10),
            "Redis never decided"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..=LIMIT {
        let sent =
            support::web::send(&client, http::Method::POST, &format!("{base}/auth/login")).await;
        got.push(sent.status);
    }
    assert!(shown.contains(&expected), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    let mut log = std::fs::read_to_string(server.pki.path("axum.log")).unwrap_or_default();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(exactly_limit(&got), "{got:?}; the example's log:\n{log}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
