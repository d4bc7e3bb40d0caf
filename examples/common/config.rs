//! The limits of an example: its own, or those of the TOML file at `CONFIG`
//! (feature `serde`, e.g. `CONFIG=examples/limits.toml`); counted in the
//! Redis at `REDIS_URL` or the Redis Cluster at `REDIS_CLUSTER` (feature
//! `cluster`; comma-separated node URLs) when set, else where the file's
//! `[redis]` table says, else in memory.
//!
//! Examples and `tests/config.rs` include this file as a module with
//! `#[path]`.

use std::error::Error;
use std::sync::Arc;

use tower_redis_ratelimit::backend::redact_url;
use tower_redis_ratelimit::{Backend, MemoryBackend, RateLimitLayer, RateLimitLayerBuilder};

/// [`limits_from`] the process environment.
pub fn limits(defaults: RateLimitLayerBuilder) -> Result<(RateLimitLayer, String), Box<dyn Error>> {
    limits_from(defaults, |name| std::env::var(name).ok())
}

/// The layer, from the file at `CONFIG` if set, else from `defaults`, on the
/// backend the variables choose; and a line saying which (passwords hidden),
/// for the example to print. `env` reads a variable (empty counts as unset).
pub fn limits_from(
    defaults: RateLimitLayerBuilder,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(RateLimitLayer, String), Box<dyn Error>> {
    let env = |name: &str| env(name).filter(|value| !value.is_empty());
    let backend = backend_from(&env)?;
    match env("CONFIG") {
        Some(path) => from_file(&path, backend),
        None => {
            let (backend, shown) = backend.unwrap_or_else(memory);
            let layer = defaults.backend(backend).build()?;
            Ok((
                layer,
                format!("limits: built in (set CONFIG to read a file); backend: {shown}"),
            ))
        }
    }
}

/// A backend and how to show it.
type Chosen = (Arc<dyn Backend>, String);

fn memory() -> Chosen {
    (
        Arc::new(MemoryBackend::new()),
        "in-memory (set REDIS_URL or REDIS_CLUSTER to share limits through Redis)".to_owned(),
    )
}

/// The backend `REDIS_URL` or `REDIS_CLUSTER` asks for, if any.
fn backend_from(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Chosen>, Box<dyn Error>> {
    match (env("REDIS_URL"), env("REDIS_CLUSTER")) {
        (Some(_), Some(_)) => Err("set REDIS_URL (one server) or REDIS_CLUSTER, not both".into()),
        (Some(url), None) => {
            let backend = tower_redis_ratelimit::RedisBackend::new(&url)
                .map_err(|e| format!("REDIS_URL: {e}"))?;
            let shown = format!("redis at {} (REDIS_URL)", redact_url(&url));
            Ok(Some((Arc::new(backend), shown)))
        }
        (None, Some(nodes)) => cluster(&nodes).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(feature = "cluster")]
fn cluster(nodes: &str) -> Result<Chosen, Box<dyn Error>> {
    let nodes: Vec<&str> = nodes.split(',').map(str::trim).collect();
    let backend = tower_redis_ratelimit::RedisBackend::cluster(nodes.iter().copied())
        .map_err(|e| format!("REDIS_CLUSTER: {e}"))?;
    let shown: Vec<_> = nodes.iter().map(|url| redact_url(url)).collect();
    let shown = format!("redis cluster at {} (REDIS_CLUSTER)", shown.join(", "));
    Ok((Arc::new(backend), shown))
}

#[cfg(not(feature = "cluster"))]
fn cluster(_nodes: &str) -> Result<Chosen, Box<dyn Error>> {
    Err("REDIS_CLUSTER needs the `cluster` feature (cargo run --features cluster ...)".into())
}

/// The limits of the TOML file at `path`, on `backend` if given, else on the
/// file's `[redis]` table or in memory.
#[cfg(feature = "serde")]
fn from_file(
    path: &str,
    backend: Option<Chosen>,
) -> Result<(RateLimitLayer, String), Box<dyn Error>> {
    use tower_redis_ratelimit::Config;

    let context = |e: &dyn std::fmt::Display| format!("CONFIG={path}: {e}");
    let text = std::fs::read_to_string(path).map_err(|e| context(&e))?;
    // A table first: TOML syntax errors come with their line; then the
    // configuration's own errors come with the field's path.
    let table: toml::Table = text.parse().map_err(|e| context(&e))?;
    let config = Config::from_deserializer(table).map_err(|e| context(&e))?;
    let (layer, shown) = match (backend, config.redis()) {
        (Some((backend, shown)), _) => (config.build_with_backend(backend), shown),
        (None, Some(redis)) => (config.build(), format!("{redis} (CONFIG)")),
        (None, None) => {
            let (backend, shown) = memory();
            (config.build_with_backend(backend), shown)
        }
    };
    let layer = layer.map_err(|e| context(&e))?;
    let policies: Vec<&str> = config.policy_names().collect();
    Ok((
        layer,
        format!(
            "limits: {path} (policies: {}); backend: {shown}",
            policies.join(", ")
        ),
    ))
}

#[cfg(not(feature = "serde"))]
fn from_file(
    path: &str,
    _backend: Option<Chosen>,
) -> Result<(RateLimitLayer, String), Box<dyn Error>> {
    Err(format!(
        "CONFIG={path}: reading a configuration file needs the `serde` feature \
         (cargo run --features serde --example ...)"
    )
    .into())
}
