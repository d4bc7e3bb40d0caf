//! The limits of an example: its own, or those of the TOML file at `CONFIG`
//! (feature `serde`, e.g. `CONFIG=examples/limits.toml`); counted in the
//! Redis that the environment names (`REDIS_URL`, `REDIS_CLUSTER`,
//! `REDIS_SENTINEL`...: see `env.rs`, the one place that reads them) when
//! set, else where the file's `[redis]` table says, else in memory.
//!
//! Examples and `tests/it/config.rs` include this file as a module with
//! `#[path]`.

use std::error::Error;

use tower_redis_ratelimit::{RateLimitLayer, RateLimitLayerBuilder};

#[path = "env.rs"]
mod env;

use self::env::{Chosen, memory};

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
    let backend = env::redis_from(&env)?;
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
