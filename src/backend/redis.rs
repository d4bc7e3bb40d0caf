//! The Redis backend: one EVALSHA per decision.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{Backend, CheckFuture};
use crate::decision::{Decision, QuotaStatus};
use crate::error::{BackendError, ConfigError};
use crate::key::Key;
use crate::policy::{Algorithm, Policy};

static SLIDING_LOG: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("sliding_log.lua")));
static SLIDING_WINDOW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("sliding_window.lua")));

/// Counters in Redis, shared by every application instance.
///
/// Each decision is one `EVALSHA` of a Lua script that reads Redis' own clock
/// (`TIME`), checks every quota of the policy, and consumes all of them or
/// none. If the script cache was flushed (restart, failover, `SCRIPT FLUSH`)
/// the script is reloaded and the call retried transparently.
///
/// Key layout, one key per quota, all keys of one decision in one hash slot:
///
/// ```text
/// <prefix>:{<policy>:<client key>}:<l|w><quota index>
/// rl:{auth:203.0.113.9}:l0        sliding log, sorted set
/// rl:{api:203.0.113.9}:w0         sliding window counter, hash {s, c, p}
/// ```
///
/// Every key written carries a TTL no longer than its data matters.
///
/// The connection is made lazily, on the first check: building the backend
/// never blocks or fails because Redis is down. The connection is multiplexed
/// (concurrent checks are pipelined on it) and re-established automatically.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: ConnectionManagerConfig,
    conn: OnceLock<ConnectionManager>,
    prefix: String,
    instance: u64,
    seq: AtomicU64,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.inner.client.get_connection_info().addr())
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisBackend`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBackendBuilder {
    url: String,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl RedisBackendBuilder {
    /// The prefix of every key (default `rl`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one connection attempt may take (default 1 s). Requests never
    /// wait longer than the layer's deadline either way.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the connection waits for a reply before it is considered
    /// broken (default 1 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Checks the configuration; connects nothing.
    pub fn build(self) -> Result<RedisBackend, ConfigError> {
        let prefix_ok = (1..=64).contains(&self.prefix.len())
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if !prefix_ok {
            return Err(ConfigError::InvalidPrefix {
                prefix: self.prefix,
            });
        }
        let client =
            Client::open(self.url.as_str()).map_err(|e| ConfigError::RedisUrl(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                client,
                config,
                conn: OnceLock::new(),
                prefix: self.prefix,
                instance: RandomState::new().hash_one(std::process::id()),
                seq: AtomicU64::new(0),
            }),
        })
    }
}

impl RedisBackend {
    /// A backend for `url` (e.g. `redis://127.0.0.1:6379/0`) with default
    /// settings. Fails only if the URL is invalid; connects nothing.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        Self::builder(url).build()
    }

    /// A builder for `url`.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            prefix: "rl".to_owned(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key of quota `index` of `policy` for `key`.
    pub fn redis_key(&self, policy: &Policy, key: &Key, index: usize) -> String {
        let tag = match policy.algorithm_kind() {
            Algorithm::SlidingLog => 'l',
            Algorithm::SlidingWindow => 'w',
        };
        format!(
            "{}:{{{}:{}}}:{tag}{index}",
            self.inner.prefix,
            policy.name(),
            key.as_str()
        )
    }
}

impl Inner {
    /// The shared connection, created on first use. Must run inside the Tokio
    /// runtime (the connection manager spawns a task), hence only in futures.
    fn connection(&self) -> Result<ConnectionManager, BackendError> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        let conn =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
        Ok(self.conn.get_or_init(|| conn).clone())
    }
}

impl Backend for RedisBackend {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        let script: &'static Script = match policy.algorithm_kind() {
            Algorithm::SlidingLog => &SLIDING_LOG,
            Algorithm::SlidingWindow => &SLIDING_WINDOW,
        };
        let mut invocation = script.prepare_invoke();
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        invocation
            .arg(cost)
            .arg(format!("{:x}.{seq:x}", self.inner.instance));
        let quotas: Vec<_> = policy.quotas().to_vec();
        for (i, q) in quotas.iter().enumerate() {
            invocation
                .key(self.redis_key(policy, key, i))
                .arg(q.limit())
                .arg(q.window_us());
        }
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let mut conn = inner.connection()?;
            let reply: Vec<i64> = match invocation.invoke_async(&mut conn).await {
                // A refused connection is the failed reconnect attempt the
                // manager kept from the outage (nothing was sent); it has just
                // started a fresh one, so try once more (still bounded by the
                // layer's deadline) instead of failing the breaker's probe.
                Err(error) if error.is_connection_refusal() => {
                    invocation.invoke_async(&mut conn).await?
                }
                other => other?,
            };
            decode(&reply, &quotas)
        })
    }
}

fn decode(reply: &[i64], quotas: &[crate::Quota]) -> Result<Decision, BackendError> {
    let bad = || BackendError::Protocol(format!("{reply:?}"));
    if reply.len() != 3 + 2 * quotas.len() {
        return Err(bad());
    }
    let non_neg = |v: i64| u64::try_from(v).map_err(|_| bad());
    let statuses = quotas
        .iter()
        .zip(reply[3..].chunks_exact(2))
        .map(|(q, pair)| {
            Ok(QuotaStatus {
                limit: q.limit(),
                window: q.window(),
                remaining: non_neg(pair[0])?,
                reset_after: Duration::from_micros(non_neg(pair[1])?),
            })
        })
        .collect::<Result<Vec<_>, BackendError>>()?;
    match (reply[0], reply[1]) {
        (1, 0) => Ok(Decision::allowed(statuses)),
        (0, i) if i >= 1 && (i as usize) <= quotas.len() => Ok(Decision::denied(
            statuses,
            i as usize - 1,
            Duration::from_micros(non_neg(reply[2])?),
        )),
        _ => Err(bad()),
    }
}
