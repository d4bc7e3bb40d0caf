//! Start-up shared by the examples: logging and the backend chosen by
//! `REDIS_URL` (unset or empty: the in-memory backend).

use std::sync::Arc;

use tower_redis_ratelimit::backend::redact_url;
use tower_redis_ratelimit::{Backend, ConfigError, MemoryBackend, RedisBackend};

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Redis at `REDIS_URL` when set, else in-memory; says which on stdout
/// (without the URL's password).
pub fn backend_from_env() -> Result<Arc<dyn Backend>, ConfigError> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("backend: redis at {}", redact_url(&url));
            Ok(Arc::new(RedisBackend::new(&url)?))
        }
        _ => {
            println!("backend: in-memory (set REDIS_URL to share limits through Redis)");
            Ok(Arc::new(MemoryBackend::new()))
        }
    }
}
