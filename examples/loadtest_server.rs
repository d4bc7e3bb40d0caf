//! An axum server for load runs and benchmarks of the limiter, configured only
//! by environment variables. Serves `GET /api/ping` (`pong`).
//!
//! ```text
//! cargo run --release --example loadtest_server
//! REDIS_URL=redis://127.0.0.1:6379 WORKERS=2 KEY=x-api-key LIMIT=1000 \
//!     cargo run --release --example loadtest_server
//! LIMITER=off cargo run --release --example loadtest_server   # baseline, no layer
//! REDIS_CLUSTER=redis://127.0.0.1:7000,redis://127.0.0.1:7001 \
//!     cargo run --release --features cluster --example loadtest_server
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BIND` | `127.0.0.1:3000` | listen address (port 0: any free port; the address is printed) |
//! | `REDIS_URL` | unset | Redis backend; unset or empty: in-memory backend |
//! | `REDIS_CLUSTER` | unset | Redis Cluster backend: nodes' URLs, comma-separated (feature `cluster`; not with `REDIS_URL`) |
//! | `WORKERS` | `1` | tokio worker threads |
//! | `KEY` | `ip` | `ip` (peer IP) or a header name such as `x-api-key` |
//! | `ALGORITHM` | `counter` | `counter` (sliding window counter), `log` (sliding log) or `gcra` |
//! | `LIMIT` | `100` | requests per window, 1 to 1 000 000 000 |
//! | `WINDOW_SECS` | `60` | window length in seconds, 1 to 31 536 000 |
//! | `DEADLINE_MS` | `50` | longest wait for the backend before failing open |
//! | `HEADERS` | `ietf` | rate-limit headers on responses: `ietf`, `legacy`, `both` or `none` |
//! | `BATCH` | `64` | Redis batch size, 1 to 1 024 (`1`: every decision its own call) |
//! | `LIMITER` | `on` | `off`: the same server without the layer |
//!
//! Empty variables count as unset. A bad value stops the server at start-up
//! with a message naming the variable: exit status 2 for a malformed value,
//! 1 when `BIND` cannot be listened on.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::HeaderName;
use tower_redis_ratelimit::key::{Header, PeerIp};
use tower_redis_ratelimit::{
    Algorithm, HeaderStyle, MemoryBackend, Policy, Quota, RateLimitLayer, RedisBackend,
};

// Only for `without_password`: the URLs this server prints are masked as
// the other examples mask theirs.
#[path = "common/env.rs"]
mod env;

#[derive(Debug)]
enum KeyKind {
    Ip,
    Header(HeaderName),
}

#[derive(Debug)]
struct Config {
    bind: String,
    /// `(what to print, backend)`; `None`: in-memory.
    redis: Option<(String, RedisBackend)>,
    workers: usize,
    key: KeyKind,
    algorithm: Algorithm,
    limit: u64,
    window_secs: u64,
    deadline_ms: u64,
    headers: HeaderStyle,
    limiter: bool,
}

/// The variable's value; empty counts as unset.
fn var(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// An integer variable within `min..=max`.
fn int(name: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
    let Some(text) = var(name)? else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name}={text:?} is invalid: expected an integer from {min} to {max}"
        )),
    }
}

fn config() -> Result<Config, String> {
    let key = match var("KEY")? {
        None => KeyKind::Ip,
        Some(k) if k.eq_ignore_ascii_case("ip") => KeyKind::Ip,
        Some(k) => KeyKind::Header(HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            format!("KEY={k:?} is invalid: expected `ip` or a header name such as `x-api-key`")
        })?),
    };
    let algorithm = match var("ALGORITHM")?.as_deref() {
        None | Some("counter") => Algorithm::SlidingWindow,
        Some("log") => Algorithm::SlidingLog,
        Some("gcra") => Algorithm::Gcra,
        Some(other) => {
            return Err(format!(
                "ALGORITHM={other:?} is invalid: expected `log`, `counter` or `gcra`"
            ));
        }
    };
    let headers = match var("HEADERS")?.as_deref() {
        None | Some("ietf") => HeaderStyle::Ietf,
        Some("legacy") => HeaderStyle::Legacy,
        Some("both") => HeaderStyle::Both,
        Some("none") => HeaderStyle::None,
        Some(other) => {
            return Err(format!(
                "HEADERS={other:?} is invalid: expected `ietf`, `legacy`, `both` or `none`"
            ));
        }
    };
    let limiter = match var("LIMITER")?.as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => {
            return Err(format!(
                "LIMITER={other:?} is invalid: expected `on` or `off`"
            ));
        }
    };
    Ok(Config {
        bind: var("BIND")?.unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
        redis: redis()?,
        workers: int("WORKERS", 1, 1, 1024)? as usize,
        key,
        algorithm,
        limit: int("LIMIT", 100, 1, Quota::MAX_LIMIT)?,
        window_secs: int("WINDOW_SECS", 60, 1, Quota::MAX_WINDOW.as_secs())?,
        deadline_ms: int("DEADLINE_MS", 50, 1, 60_000)?,
        headers,
        limiter,
    })
}

/// The Redis backend of `REDIS_URL` or `REDIS_CLUSTER`, if either is set.
fn redis() -> Result<Option<(String, RedisBackend)>, String> {
    let batch = int("BATCH", 64, 1, 1024)? as usize;
    match (var("REDIS_URL")?, var("REDIS_CLUSTER")?) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err("set REDIS_URL or REDIS_CLUSTER, not both".to_owned()),
        (Some(url), None) => {
            let shown = env::without_password(&url);
            let backend = RedisBackend::builder(&url)
                .batch(batch)
                .build()
                .map_err(|e| format!("REDIS_URL={shown:?} is invalid: {e}"))?;
            Ok(Some((format!("redis at {shown}"), backend)))
        }
        (None, Some(nodes)) => cluster(&nodes, batch).map(Some),
    }
}

/// A Redis Cluster backend for `nodes` (comma-separated URLs).
#[cfg(feature = "cluster")]
fn cluster(nodes: &str, batch: usize) -> Result<(String, RedisBackend), String> {
    let urls: Vec<&str> = nodes
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let shown = urls
        .iter()
        .map(|u| env::without_password(u))
        .collect::<Vec<_>>()
        .join(",");
    if urls.is_empty() {
        return Err(format!(
            "REDIS_CLUSTER={nodes:?} is invalid: expected comma-separated node URLs"
        ));
    }
    let backend = RedisBackend::cluster_builder(urls)
        .batch(batch)
        .build()
        .map_err(|e| format!("REDIS_CLUSTER={shown:?} is invalid: {e}"))?;
    Ok((format!("redis cluster at {shown}"), backend))
}

#[cfg(not(feature = "cluster"))]
fn cluster(_nodes: &str, _batch: usize) -> Result<(String, RedisBackend), String> {
    Err("REDIS_CLUSTER needs the `cluster` feature: \
         cargo run --release --features cluster --example loadtest_server"
        .to_owned())
}

fn fail(message: &str) -> ! {
    eprintln!("loadtest_server: {message}");
    std::process::exit(2);
}

fn main() {
    let config = config().unwrap_or_else(|m| fail(&m));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start the tokio runtime: {e}")));
    if let Err(e) = runtime.block_on(run(config)) {
        eprintln!("loadtest_server: {e}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let mut app = Router::new().route("/api/ping", get(|| async { "pong\n" }));
    if config.limiter {
        let policy = Policy::new("loadtest")
            .quota(Quota::new(
                config.limit,
                Duration::from_secs(config.window_secs),
            ))
            .algorithm(config.algorithm);
        let policy = match &config.key {
            KeyKind::Ip => policy.key(PeerIp::new()),
            KeyKind::Header(name) => policy.key(Header::from_name(name.clone())),
        };
        let builder = RateLimitLayer::builder()
            .default_policy(policy)
            .headers(config.headers)
            .deadline(Duration::from_millis(config.deadline_ms));
        let builder = match config.redis {
            Some((shown, backend)) => {
                println!("backend: {shown}");
                builder.backend(backend)
            }
            None => {
                println!("backend: in-memory");
                builder.backend(MemoryBackend::new())
            }
        };
        app = app.layer(builder.build()?);
        println!(
            "limiter: on, key={} algorithm={} limit={} window_secs={} deadline_ms={}",
            match &config.key {
                KeyKind::Ip => "ip",
                KeyKind::Header(name) => name.as_str(),
            },
            match config.algorithm {
                Algorithm::SlidingLog => "log",
                Algorithm::Gcra => "gcra",
                _ => "counter",
            },
            config.limit,
            config.window_secs,
            config.deadline_ms
        );
    } else {
        println!("limiter: off");
    }
    println!("workers: {}", config.workers);

    let listener = tokio::net::TcpListener::bind(&config.bind)
        .await
        .map_err(|e| format!("BIND={:?}: cannot listen: {e}", config.bind))?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
