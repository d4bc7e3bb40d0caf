//! `examples/inspect.rs` as an operator runs it: a client exhausts its quota
//! through a layer on a real Redis (or Redis Cluster), the example, a
//! separate process, prints the client's quota line, and `--reset` gives the
//! full quota back; bad usage exits with status 2.
//!
//! The example is built as `tests/it/examples.rs` builds the examples (every
//! example, all features, into this target directory), so whichever test
//! binary runs first builds them for both.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use http::{Method, Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::{Key, Policy, RateLimitLayer, RedisBackend};

use crate::support;

/// The inspect example's binary, built once with the other examples.
fn inspect_binary() -> PathBuf {
    support::examples_dir().join(format!("inspect{}", std::env::consts::EXE_SUFFIX))
}

/// Runs the example with `args`, the environment variable `backend` (if
/// any) set to `value`, and the other one unset.
fn inspect(backend: Option<(&str, &str)>, args: &[&str]) -> Output {
    let mut cmd = Command::new(inspect_binary());
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER");
    if let Some((var, value)) = backend {
        cmd.env(var, value);
    }
    cmd.output().expect("run the inspect example")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The one line the example printed, checked against `auth 60s limit=5
/// remaining=<remaining> reset=<r>`; returns `r`.
#[track_caller]
fn auth_line(out: &Output, remaining: u64) -> u64 {
    assert!(out.status.success(), "{}", stderr(out));
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    let [line] = lines[..] else {
        panic!("expected one line, got {text:?}");
    };
    let prefix = format!("auth 60s limit=5 remaining={remaining} reset=");
    let Some(reset) = line.strip_prefix(&prefix) else {
        panic!("{line:?} does not start with {prefix:?}");
    };
    reset.parse().unwrap()
}

/// `POST /auth/login` from 127.0.0.1 through the axum example's layer.
async fn login(layer: &RateLimitLayer) -> StatusCode {
    let svc = layer.layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/auth/login")
        .body(String::new())
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    req.extensions_mut().insert(peer);
    svc.oneshot(req).await.unwrap().status()
}

/// The axum example's layer on `backend` (default key prefix, as the
/// example uses).
fn layer(backend: RedisBackend) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(Policy::default_api())
        .route_method(Method::POST, "/auth/login", Policy::auth())
        .build()
        .unwrap()
}

/// Exhausts 127.0.0.1's `auth` quota through a layer, then inspects and
/// resets it with the example, on the backend `var=value` names.
async fn exhaust_inspect_reset(layer: RateLimitLayer, var: &str, value: &str) {
    let backend = Some((var, value));
    for _ in 0..5 {
        assert_eq!(login(&layer).await, StatusCode::OK);
    }
    assert_eq!(login(&layer).await, StatusCode::TOO_MANY_REQUESTS);

    let out = inspect(backend, &["--policy", "auth", "--key", "127.0.0.1"]);
    let reset = auth_line(&out, 0);
    assert!((58..=60).contains(&reset), "reset={reset}");
    assert!(stderr(&out).contains("backend: redis"), "{}", stderr(&out));
    // Inspecting consumed nothing.
    let again = inspect(backend, &["--policy", "auth", "--key", "127.0.0.1"]);
    auth_line(&again, 0);
    let peeked = layer.admin().peek("auth", &Key::new("127.0.0.1")).await;
    assert_eq!(peeked.unwrap().quotas()[0].remaining, 0);

    // Another policy, another client: untouched.
    let out = inspect(backend, &["--policy", "api", "--key", "127.0.0.1"]);
    assert_eq!(stdout(&out), "api 60s limit=100 remaining=100 reset=0\n");
    let out = inspect(backend, &["--policy", "auth", "--key", "127.0.0.2"]);
    assert_eq!(auth_line(&out, 5), 0);

    let out = inspect(
        backend,
        &["--policy", "auth", "--key", "127.0.0.1", "--reset"],
    );
    assert_eq!(auth_line(&out, 5), 0);
    let peeked = layer.admin().peek("auth", &Key::new("127.0.0.1")).await;
    assert_eq!(peeked.unwrap().quotas()[0].remaining, 5);
    // (This layer's own blocked-client cache still remembers the denial:
    // the example, another process, cannot reach it. `admin.reset` here would.)
    layer
        .admin()
        .reset("auth", &Key::new("127.0.0.1"))
        .await
        .unwrap();
    assert_eq!(login(&layer).await, StatusCode::OK);
}

#[tokio::test]
async fn inspect_shows_and_resets_a_client_on_redis() {
    let server = support::RedisServer::start();
    let url = server.url();
    let layer = layer(RedisBackend::new(&url).unwrap());
    exhaust_inspect_reset(layer, "REDIS_URL", &url).await;
}

#[cfg(feature = "cluster")]
#[tokio::test]
async fn inspect_shows_and_resets_a_client_on_a_cluster() {
    // The test process' cluster: this test is the one there that uses the
    // default key prefix (`rl`, the example's).
    let urls = support::cluster::shared_cluster().urls();
    let layer = layer(RedisBackend::cluster(urls.clone()).unwrap());
    exhaust_inspect_reset(layer, "REDIS_CLUSTER", &urls.join(",")).await;
}

#[test]
fn inspect_in_memory_says_it_is_a_demo() {
    let out = inspect(None, &["--policy", "auth", "--key", "::1"]);
    assert_eq!(stdout(&out), "auth 60s limit=5 remaining=5 reset=0\n");
    let note = stderr(&out);
    assert!(
        note.contains("in-memory") && note.contains("only sees its own process"),
        "{note}"
    );
}

/// With `CONFIG`, the policies are the file's: `partner` exists only there.
#[test]
fn inspect_reads_the_policies_of_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/limits.toml");
    let out = inspect(
        Some(("CONFIG", path)),
        &["--policy", "partner", "--key", "k1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "partner 1s limit=10 remaining=10 reset=0\npartner 3600s limit=1000 remaining=1000 reset=0\n"
    );
    assert!(stderr(&out).contains("limits: "), "{}", stderr(&out));
}

#[test]
fn inspect_refuses_bad_usage_with_status_2() {
    for (args, says) in [
        (&[][..], "--policy is missing"),
        (&["--policy", "auth"], "--key is missing"),
        (&["--policy", "auth", "--key"], "--key needs a value"),
        (
            &["--policy", "auth", "--key", "k", "--bogus"],
            "unexpected argument \"--bogus\"",
        ),
        (
            &["--policy", "nope", "--key", "k"],
            "no policy named \"nope\"; the policies are: api, auth",
        ),
    ] {
        let out = inspect(None, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let text = stderr(&out);
        assert!(text.contains(says), "{args:?}: {text}");
        assert!(text.contains("usage: inspect --policy"), "{args:?}: {text}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    let out = inspect(None, &["--help"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("usage: inspect"));
    // Both backends named: ambiguous, refused.
    let out = Command::new(inspect_binary())
        .args(["--policy", "auth", "--key", "k"])
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("REDIS_CLUSTER", "redis://127.0.0.1:2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not several"), "{}", stderr(&out));
}

/// A backend that is down: status 1 and the error, never a hang.
#[test]
fn inspect_reports_a_dead_backend_with_status_1() {
    let url = format!("redis://127.0.0.1:{}/", support::dead_port());
    let out = inspect(
        Some(("REDIS_URL", &url)),
        &["--policy", "auth", "--key", "k"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("backend: redis at"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("inspect: backend: connection:"),
        "{}",
        stderr(&out)
    );
}
