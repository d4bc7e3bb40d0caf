//! The Redis backend: one EVALSHA per decision (a peek: one read-only
//! script call; a reset: one DEL).
//!
//! - `script`: the script protocol (keys, arguments, reply), without I/O;
//! - `connection`: single-node and cluster connections;
//! - `redact`: Redis URLs without their passwords;
//! - here: [`RedisBackend`] and its builder, gluing them together.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use self::connection::{Connection, Request};
pub use self::redact::redact_url;
use self::redact::secrets;
use self::script::Nonces;
use super::{Backend, CheckFuture, ResetFuture};
use crate::error::ConfigError;
use crate::key::Key;
use crate::policy::Policy;

mod connection;
mod redact;
mod script;

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
/// <prefix>:{<policy>:<client key>}:<l|c|g><window in ms>
/// rl:{auth:203.0.113.9}:l60000    sliding log, sorted set
/// rl:{api:203.0.113.9}:c60000     sliding window counter, string "<s> <c> <p>"
/// rl:{pay:203.0.113.9}:g60000     GCRA, string: the theoretical arrival time
/// ```
///
/// Every key written carries a TTL no longer than its data matters.
/// [`RedisBackend::redis_keys`] names a client's keys.
///
/// Administration ([`Admin`](crate::Admin)): a [peek](Backend::peek) is one
/// call of a second, read-only script per algorithm, sent as `EVALSHA_RO` on
/// Redis 7.0 and later (the server then refuses any write) and as `EVALSHA`
/// on older servers or when an ACL allows only `EVALSHA`; it changes no key,
/// member or TTL. A [reset](Backend::reset) is one `DEL` of the client's keys.
///
/// The connection is made lazily, on the first check: building the backend
/// never blocks or fails because Redis is down. The connection is multiplexed
/// (concurrent checks are pipelined on it) and re-established automatically.
///
/// With the `cluster` feature, [`RedisBackend::cluster`] talks to a Redis
/// Cluster: the one-hash-tag key layout sends every decision to the node that
/// owns its slot, and the script is loaded on every primary when missing.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    prefix: String,
    nonces: Nonces,
    /// Whether peeks are sent as `EVALSHA_RO` (cleared once the server
    /// refuses it: Redis before 7.0).
    read_only: AtomicBool,
}

/// Shows the address (no credentials) or, for a cluster, the node URLs with
/// their passwords redacted.
impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisBackend");
        self.inner.connection.describe(&mut d);
        d.field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisBackend`].
#[derive(Clone)]
#[must_use]
pub struct RedisBackendBuilder {
    urls: Vec<String>,
    cluster: bool,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// Shows the URLs with their passwords redacted ([`redact_url`]).
impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<_> = self.urls.iter().map(|url| redact_url(url)).collect();
        f.debug_struct("RedisBackendBuilder")
            .field("urls", &urls)
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// The message of [`ConfigError::RedisUrl`]: redis-rs' error, then the
/// URLs, with passwords redacted from both.
fn url_error(urls: &[String], error: &redis::RedisError) -> ConfigError {
    let mut message = error.to_string();
    // redis-rs does not echo URLs in its errors today; make sure that no
    // version can leak a password through this message.
    for url in urls {
        if !url.is_empty() && message.contains(url.as_str()) {
            message = message.replace(url.as_str(), &redact_url(url));
        }
        for secret in secrets(url) {
            // A secret of a few bytes would mask unrelated words.
            if secret.len() >= 4 {
                message = message.replace(secret, "***");
            }
        }
    }
    let shown: Vec<_> = urls.iter().map(|url| redact_url(url)).collect();
    match shown.as_slice() {
        [one] => ConfigError::RedisUrl(format!("{one:?}: {message}")),
        many => ConfigError::RedisUrl(format!("{many:?}: {message}")),
    }
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
            && crate::key::is_plain(self.prefix.as_bytes(), b"._-:");
        if !prefix_ok {
            return Err(ConfigError::InvalidPrefix {
                prefix: self.prefix,
            });
        }
        let url_error = |e: redis::RedisError| url_error(&self.urls, &e);
        let connection = if self.cluster {
            #[cfg(feature = "cluster")]
            {
                if self.urls.is_empty() {
                    return Err(ConfigError::RedisUrl("no cluster node given".to_owned()));
                }
                Connection::cluster(&self.urls, self.connect_timeout, self.response_timeout)
                    .map_err(url_error)?
            }
            #[cfg(not(feature = "cluster"))]
            unreachable!("cluster builders exist only with the `cluster` feature")
        } else {
            let url = self.urls.first().map_or("", String::as_str);
            Connection::single(url, self.connect_timeout, self.response_timeout)
                .map_err(url_error)?
        };
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                connection,
                prefix: self.prefix,
                nonces: Nonces::new(),
                read_only: AtomicBool::new(true),
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
            urls: vec![url.into()],
            cluster: false,
            prefix: "rl".to_owned(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        }
    }

    /// A backend for a Redis Cluster, given one or more of its nodes
    /// (`redis://127.0.0.1:7000`); the rest of the topology is discovered.
    /// Connects nothing.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster<I, S>(nodes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::cluster_builder(nodes).build()
    }

    /// A builder for a Redis Cluster backend.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster_builder<I, S>(nodes: I) -> RedisBackendBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisBackendBuilder {
            urls: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
            ..Self::builder("")
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis keys of `policy`'s quotas for `key`, one per quota, in the
    /// order of [`Policy::quotas`]:
    ///
    /// ```text
    /// <prefix>:{<policy>:<key>}:<l|c|g><window in ms>
    /// ```
    ///
    /// `l` tags a sliding log (a sorted set of admitted units), `c` a sliding
    /// window counter (a string `"<s> <c> <p>"`: the current fixed window's
    /// start in µs, its count, the previous window's count; earlier versions
    /// kept a hash under a `w` key, never read now), `g` GCRA (a string: the
    /// theoretical arrival time in µs). The algorithm letter
    /// and the window are part of the key, so two policies that share a name
    /// (in different layers or deployments) but count differently never read
    /// each other's data. All keys of one decision share a hash tag, so they
    /// live on one cluster node.
    ///
    /// Useful to look at a client's counts with `redis-cli`; a key only exists
    /// while it counts something.
    ///
    /// ```
    /// use tower_redis_ratelimit::{Key, Policy, Quota, RedisBackend};
    ///
    /// let backend = RedisBackend::new("redis://127.0.0.1:6379")?; // connects nothing
    /// let policy = Policy::auth().quota(Quota::per_hour(20));
    /// assert_eq!(
    ///     backend.redis_keys(&policy, &Key::new("203.0.113.9")),
    ///     ["rl:{auth:203.0.113.9}:l60000", "rl:{auth:203.0.113.9}:l3600000"]
    /// );
    /// # Ok::<(), tower_redis_ratelimit::ConfigError>(())
    /// ```
    pub fn redis_keys(&self, policy: &Policy, key: &Key) -> Vec<String> {
        script::keys(&self.inner.prefix, policy, key)
    }
}

impl Backend for RedisBackend {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        let invocation =
            script::invocation(&self.inner.prefix, &self.inner.nonces, policy, key, cost);
        let quotas = policy.quotas().to_vec();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let reply = inner.connection.invoke(&invocation).await?;
            script::decode(&reply, &quotas)
        })
    }

    // Administration: peek and reset.

    fn peek(&self, policy: &Policy, key: &Key) -> CheckFuture {
        let call = script::peek_call(&self.inner.prefix, policy, key);
        let quotas = policy.quotas().to_vec();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let request = Request::ReadOnly(&call, &inner.read_only);
            let reply: Vec<i64> = inner.connection.send(request).await?;
            script::decode(&reply, &quotas)
        })
    }

    fn reset(&self, policy: &Policy, key: &Key) -> ResetFuture {
        let command = script::reset_command(&self.inner.prefix, policy, key);
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            if let Some(command) = command {
                let _deleted: u64 = inner.connection.send(Request::Command(&command)).await?;
            }
            Ok(())
        })
    }

    fn metrics_label(&self) -> &'static str {
        match self.inner.connection {
            Connection::Single { .. } => "redis",
            #[cfg(feature = "cluster")]
            Connection::Cluster(_) => "redis_cluster",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let backend = RedisBackend::new("redis://u:secret@127.0.0.1:1").unwrap();
        let shown = format!("{backend:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
        let builder = RedisBackend::builder("rediss://u:secret@cache:6380/2").prefix("app");
        let shown = format!("{builder:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("rediss://u:***@cache:6380/2"), "{shown}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn cluster_debug_never_shows_the_password() {
        let nodes = [
            "redis://u:secret@127.0.0.1:1",
            "redis://u:secret@127.0.0.1:2",
        ];
        let backend = RedisBackend::cluster(nodes).unwrap();
        let shown = format!("{backend:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redis://u:***@127.0.0.1:1"), "{shown}");
        assert!(shown.contains("redis://u:***@127.0.0.1:2"), "{shown}");
        let shown = format!("{:?}", RedisBackend::cluster_builder(nodes));
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn url_errors_never_show_the_password() {
        for bad in [
            "redis://u:secret@127.0.0.1:notaport/",
            "redis://u:secret@127.0.0.1:6379/notadb",
            "redis://:secret@127.0.0.1:6379/?protocol=resp9",
            "http://u:secret@127.0.0.1:6379/",
            "u:secret@127.0.0.1:6379",
            "redis://u:sec@ret@/",
        ] {
            let Err(err) = RedisBackend::new(bad) else {
                panic!("{bad} was accepted");
            };
            let message = err.to_string();
            assert!(matches!(err, ConfigError::RedisUrl(_)), "{bad}: {err:?}");
            for leak in ["secret", "sec@ret"] {
                assert!(!message.contains(leak), "{bad}: {message}");
            }
            assert!(message.starts_with("invalid Redis URL: \""), "{message}");
        }
        // Echoed text is scrubbed too.
        let echo = redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "bad",
            "redis://u:secret@h/ and secret".to_owned(),
        ));
        let message = url_error(&["redis://u:secret@h/".to_owned()], &echo).to_string();
        assert!(!message.contains("secret"), "{message}");
        assert!(message.contains("redis://u:***@h/"), "{message}");
    }
}
