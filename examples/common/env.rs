//! Start-up shared by the examples: logging, and the one place where the
//! environment chooses the backend.
//!
//! | variable | meaning |
//! | --- | --- |
//! | `REDIS_URL` | one Redis server: `redis://[user:password@]host:port[/db]`, or `rediss://...` for TLS |
//! | `REDIS_CLUSTER` | a Redis Cluster: comma-separated seed node URLs |
//! | `REDIS_SENTINEL` | Redis Sentinel: comma-separated sentinel URLs |
//! | `REDIS_SENTINEL_MASTER` | the primary's name at the sentinels (default `mymaster`) |
//! | `REDIS_SENTINEL_MASTER_URL` | user, password, TLS of the primary, as a URL whose host is ignored (default `redis://sentinel-primary/`) |
//! | `REDIS_CA_CERT` | a PEM file of the CA to trust for `rediss://`, besides the system's roots |
//! | `REDIS_CLIENT_CERT`, `REDIS_CLIENT_KEY` | PEM files of a client certificate and key (mutual TLS) |
//!
//! At most one of `REDIS_URL`, `REDIS_CLUSTER`, `REDIS_SENTINEL`; none: the
//! in-memory backend. Empty counts as unset. Examples and tests include this
//! file as a module with `#[path]` (`config.rs` includes it too).

#![allow(dead_code)]

use std::error::Error;
use std::sync::Arc;

use tower_redis_ratelimit::{Backend, MemoryBackend, RedisBackend, RedisBackendBuilder};

/// A backend and how to show it (passwords hidden).
pub type Chosen = (Arc<dyn Backend>, String);

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// The backend the process environment asks for (else in-memory); says
/// which on stdout, passwords hidden.
pub fn backend_from_env() -> Result<Arc<dyn Backend>, Box<dyn Error>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (backend, shown) = redis_from(&env)?.unwrap_or_else(memory);
    println!("backend: {shown}");
    Ok(backend)
}

/// The in-memory backend.
pub fn memory() -> Chosen {
    (
        Arc::new(MemoryBackend::new()),
        "in-memory (set REDIS_URL, REDIS_CLUSTER or REDIS_SENTINEL to share limits through Redis)"
            .to_owned(),
    )
}

/// The Redis backend that `env` asks for, if any. `env` reads a variable
/// (`None`: unset or empty).
pub fn redis_from(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Chosen>, Box<dyn Error>> {
    let url = env("REDIS_URL");
    let cluster = env("REDIS_CLUSTER");
    let sentinel = env("REDIS_SENTINEL");
    let given = [&url, &cluster, &sentinel]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given > 1 {
        return Err(
            "set one of REDIS_URL (one server), REDIS_CLUSTER or REDIS_SENTINEL, not several"
                .into(),
        );
    }
    let split = |list: &str| -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let shown = |urls: &[String]| -> String {
        let urls: Vec<_> = urls.iter().map(|u| without_password(u)).collect();
        urls.join(", ")
    };
    // Without the cluster and sentinel features, only REDIS_URL is read.
    let _ = (&split, &shown);
    let (builder, what, var) = match (url, cluster, sentinel) {
        (Some(url), _, _) => {
            let what = format!("redis at {}", without_password(&url));
            (RedisBackend::builder(url), what, "REDIS_URL")
        }
        #[cfg(feature = "cluster")]
        (_, Some(nodes), _) => {
            let nodes = split(&nodes);
            let what = format!("redis cluster at {}", shown(&nodes));
            (RedisBackend::cluster_builder(nodes), what, "REDIS_CLUSTER")
        }
        #[cfg(not(feature = "cluster"))]
        (_, Some(_), _) => {
            return Err(
                "REDIS_CLUSTER needs the crate's `cluster` feature: add `--features cluster`"
                    .into(),
            );
        }
        #[cfg(feature = "sentinel")]
        (_, _, Some(sentinels)) => {
            let sentinels = split(&sentinels);
            let master = env("REDIS_SENTINEL_MASTER").unwrap_or_else(|| "mymaster".to_owned());
            let mut builder = RedisBackend::sentinel_builder(sentinels.iter().cloned(), &master);
            let mut what = format!(
                "redis sentinel at {}, primary `{master}`",
                shown(&sentinels)
            );
            if let Some(master_url) = env("REDIS_SENTINEL_MASTER_URL") {
                what.push_str(&format!(" ({})", without_password(&master_url)));
                builder = builder.master_url(master_url);
            }
            (builder, what, "REDIS_SENTINEL")
        }
        #[cfg(not(feature = "sentinel"))]
        (_, _, Some(_)) => {
            return Err(
                "REDIS_SENTINEL needs the crate's `sentinel` feature: add `--features sentinel`"
                    .into(),
            );
        }
        (None, None, None) => return Ok(None),
    };
    let (builder, tls) = with_tls(builder, env)?;
    let backend = builder.build().map_err(|e| format!("{var}: {e}"))?;
    Ok(Some((Arc::new(backend), format!("{what}{tls} ({var})"))))
}

/// The TLS files the environment names, read into the builder; and how to
/// show them.
fn with_tls(
    mut builder: RedisBackendBuilder,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(RedisBackendBuilder, String), Box<dyn Error>> {
    let read = |var: &str, path: &str| {
        std::fs::read(path).map_err(|e| -> Box<dyn Error> { format!("{var}={path}: {e}").into() })
    };
    let mut shown = String::new();
    #[cfg(not(feature = "tls"))]
    if ["REDIS_CA_CERT", "REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"]
        .iter()
        .any(|var| env(var).is_some())
    {
        let _ = (read, &mut builder, &mut shown);
        return Err("TLS files need the crate's `tls` feature: add `--features tls`".into());
    }
    #[cfg(feature = "tls")]
    if let Some(path) = env("REDIS_CA_CERT") {
        builder = builder.tls_ca_pem(read("REDIS_CA_CERT", &path)?);
        shown.push_str(&format!(", trusting the CA in {path}"));
    }
    #[cfg(feature = "tls")]
    match (env("REDIS_CLIENT_CERT"), env("REDIS_CLIENT_KEY")) {
        (Some(cert), Some(key)) => {
            builder = builder.tls_client_pem(
                read("REDIS_CLIENT_CERT", &cert)?,
                read("REDIS_CLIENT_KEY", &key)?,
            );
            shown.push_str(&format!(", client certificate {cert}"));
        }
        (None, None) => {}
        _ => return Err("set both REDIS_CLIENT_CERT and REDIS_CLIENT_KEY, or neither".into()),
    }
    Ok((builder, shown))
}

/// `url` with the password of its user information masked
/// (`redis://app:***@host:6379`), for the line that names the backend.
/// Example-grade: a password belongs in the URL's user information, and a
/// `/` in it must be percent-encoded.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    match authority[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}
