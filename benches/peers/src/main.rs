//! Peer rate limiters behind the same axum server as `examples/loadtest_server`,
//! for `scripts/loadrun.sh`. Serves `GET /api/ping` (`pong`).
//!
//! ```text
//! loadrun-peers MODE        MODE: bare | governor | trl-memory | trl-redis
//! ```
//!
//! | mode | limiter |
//! |---|---|
//! | `bare` | none (the peers' baseline; should match `LIMITER=off`) |
//! | `governor` | tower_governor 0.8 (in-process GCRA, keyed) |
//! | `trl-memory` | tower-rate-limiter, `MemoryStore` (fixed window) |
//! | `trl-redis` | tower-rate-limiter, `RedisStore` with its Lua script (fixed window) |
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BIND` | `127.0.0.1:3000` | listen address |
//! | `REDIS_URL` | unset | needed by `trl-redis` |
//! | `WORKERS` | `1` | tokio worker threads |
//! | `KEY` | `ip` | `ip` (peer IP) or a header name such as `x-api-key` |
//! | `LIMIT` | `100` | requests per window |
//! | `WINDOW_SECS` | `60` | window length in seconds |
//!
//! tower_governor has no window: `LIMIT` per `WINDOW_SECS` becomes a burst of
//! `LIMIT` (at most `u32::MAX`) refilled one cell every `WINDOW_SECS / LIMIT`.
//! Bad values stop the server with exit status 2.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Request};
use axum::routing::get;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bare,
    Governor,
    TrlMemory,
    TrlRedis,
}

#[derive(Debug)]
struct Config {
    mode: Mode,
    bind: String,
    redis_url: Option<String>,
    workers: usize,
    /// `None`: the peer IP.
    header: Option<HeaderName>,
    limit: u64,
    window_secs: u64,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn int(name: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
    let Some(text) = var(name) else {
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
    let mode = match std::env::args().nth(1).as_deref() {
        Some("bare") => Mode::Bare,
        Some("governor") => Mode::Governor,
        Some("trl-memory") => Mode::TrlMemory,
        Some("trl-redis") => Mode::TrlRedis,
        other => {
            return Err(format!(
                "mode {other:?} is invalid: expected bare, governor, trl-memory or trl-redis"
            ));
        }
    };
    let header = match var("KEY") {
        None => None,
        Some(k) if k.eq_ignore_ascii_case("ip") => None,
        Some(k) => Some(HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            format!("KEY={k:?} is invalid: expected `ip` or a header name such as `x-api-key`")
        })?),
    };
    let redis_url = var("REDIS_URL");
    if mode == Mode::TrlRedis && redis_url.is_none() {
        return Err("trl-redis needs REDIS_URL".to_owned());
    }
    Ok(Config {
        mode,
        bind: var("BIND").unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
        redis_url,
        workers: int("WORKERS", 1, 1, 1024)? as usize,
        header,
        limit: int("LIMIT", 100, 1, 1_000_000_000)?,
        window_secs: int("WINDOW_SECS", 60, 1, 31_536_000)?,
    })
}

fn fail(message: &str) -> ! {
    eprintln!("loadrun-peers: {message}");
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
        eprintln!("loadrun-peers: {e}");
        std::process::exit(1);
    }
}

/// The header's value as the key; a missing or non-UTF-8 header is `None`.
fn header_key<T>(name: &HeaderName, request: &Request<T>) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

mod governor_keys {
    use axum::http::{HeaderName, Request};
    use tower_governor::GovernorError;
    use tower_governor::key_extractor::KeyExtractor;

    /// tower_governor keyed by a request header.
    #[derive(Clone, Debug)]
    pub struct HeaderKey(pub HeaderName);

    impl KeyExtractor for HeaderKey {
        type Key = String;

        fn extract<T>(&self, request: &Request<T>) -> Result<String, GovernorError> {
            super::header_key(&self.0, request).ok_or(GovernorError::UnableToExtractKey)
        }
    }
}

mod trl_keys {
    use axum::http::{HeaderName, Request};
    use tower_rate_limiter::{KeyExtractor, RateLimitError};

    /// tower-rate-limiter keyed by a request header.
    #[derive(Clone, Debug)]
    pub struct HeaderKey(pub HeaderName);

    impl KeyExtractor for HeaderKey {
        type Key = String;

        fn extract<T>(&self, request: &Request<T>) -> Result<String, RateLimitError> {
            super::header_key(&self.0, request).ok_or_else(|| {
                RateLimitError::Key("missing_key".to_owned(), format!("no {} header", self.0))
            })
        }
    }
}

/// The layer of tower-rate-limiter over `app`, with `store`.
fn with_trl<S>(app: Router, config: &Config, store: S) -> Result<Router, Box<dyn std::error::Error>>
where
    S: tower_rate_limiter::Store + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    use tower_rate_limiter::{IpKeyExtractor, RateLimitLayer};
    let window = Duration::from_secs(config.window_secs);
    Ok(match &config.header {
        None => app.layer(
            RateLimitLayer::builder(IpKeyExtractor::new())
                .policy_name("loadrun")
                .limit(config.limit)
                .window(window)
                .with_store(store)
                .build()?,
        ),
        Some(name) => app.layer(
            RateLimitLayer::builder(trl_keys::HeaderKey(name.clone()))
                .policy_name("loadrun")
                .limit(config.limit)
                .window(window)
                .with_store(store)
                .build()?,
        ),
    })
}

fn with_governor(app: Router, config: &Config) -> Result<Router, Box<dyn std::error::Error>> {
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;
    let period_ns = (config.window_secs.saturating_mul(1_000_000_000) / config.limit).max(1);
    let burst = u32::try_from(config.limit).unwrap_or(u32::MAX);
    let mut builder = GovernorConfigBuilder::default();
    builder
        .period(Duration::from_nanos(period_ns))
        .burst_size(burst);
    let invalid = || {
        format!(
            "tower_governor rejects LIMIT={} WINDOW_SECS={}",
            config.limit, config.window_secs
        )
    };
    Ok(match &config.header {
        None => app.layer(GovernorLayer::new(builder.finish().ok_or_else(invalid)?)),
        Some(name) => app.layer(GovernorLayer::new(
            builder
                .key_extractor(governor_keys::HeaderKey(name.clone()))
                .finish()
                .ok_or_else(invalid)?,
        )),
    })
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let app = Router::new().route("/api/ping", get(|| async { "pong\n" }));
    let app = match config.mode {
        Mode::Bare => app,
        Mode::Governor => with_governor(app, &config)?,
        Mode::TrlMemory => with_trl(app, &config, tower_rate_limiter::MemoryStore::new())?,
        Mode::TrlRedis => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            let client = redis::Client::open(url)?;
            let connection = client.get_multiplexed_async_connection().await?;
            with_trl(
                app,
                &config,
                tower_rate_limiter::RedisStore::new(connection),
            )?
        }
    };
    println!(
        "mode: {:?}, key={} limit={} window_secs={} workers={}",
        config.mode,
        config.header.as_ref().map_or("ip", |h| h.as_str()),
        config.limit,
        config.window_secs,
        config.workers
    );
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
