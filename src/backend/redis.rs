//! The Redis backend: one EVALSHA per decision.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, ScriptInvocation};

use super::redact::{redact_url, secrets};
use super::{Backend, CheckFuture};
use crate::decision::{Decision, QuotaStatus};
use crate::error::{BackendError, ConfigError};
use crate::key::Key;
use crate::policy::{Algorithm, Policy};

/// Every algorithm's script, in the order of [`Algorithm::ALL`].
static SCRIPTS: LazyLock<Vec<Script>> = LazyLock::new(|| {
    Algorithm::ALL
        .iter()
        .map(|algorithm| Script::new(algorithm.spec().lua))
        .collect()
});

/// The script of `algorithm`.
fn script(algorithm: Algorithm) -> &'static Script {
    let index = Algorithm::ALL.iter().position(|&a| a == algorithm);
    &SCRIPTS[index.expect("every algorithm is in Algorithm::ALL")]
}

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
/// <prefix>:{<policy>:<client key>}:<l|w><window in ms>
/// rl:{auth:203.0.113.9}:l60000    sliding log, sorted set
/// rl:{api:203.0.113.9}:w60000     sliding window counter, hash {s, c, p}
/// ```
///
/// Every key written carries a TTL no longer than its data matters.
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
    target: Target,
    prefix: String,
    instance: u64,
    seq: AtomicU64,
}

/// Where the commands go.
enum Target {
    Single {
        client: Client,
        config: ConnectionManagerConfig,
        conn: OnceLock<ConnectionManager>,
    },
    #[cfg(feature = "cluster")]
    Cluster(cluster::Cluster),
}

/// Shows the address (no credentials) or, for a cluster, the node URLs with
/// their passwords redacted.
impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisBackend");
        match &self.inner.target {
            Target::Single { client, .. } => {
                d.field("addr", &client.get_connection_info().addr());
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(c) => {
                d.field("cluster", &c.nodes);
            }
        }
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
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if !prefix_ok {
            return Err(ConfigError::InvalidPrefix {
                prefix: self.prefix,
            });
        }
        let url_error = |e: redis::RedisError| url_error(&self.urls, &e);
        let target = if self.cluster {
            #[cfg(feature = "cluster")]
            {
                if self.urls.is_empty() {
                    return Err(ConfigError::RedisUrl("no cluster node given".to_owned()));
                }
                let client = redis::cluster::ClusterClient::builder(self.urls.clone())
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .build()
                    .map_err(url_error)?;
                let nodes = self.urls.iter().map(|u| redact_url(u).into_owned());
                Target::Cluster(cluster::Cluster::new(client, nodes.collect()))
            }
            #[cfg(not(feature = "cluster"))]
            unreachable!("cluster builders exist only with the `cluster` feature")
        } else {
            let url = self.urls.first().map_or("", String::as_str);
            Target::Single {
                client: Client::open(url).map_err(url_error)?,
                config: ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1)),
                conn: OnceLock::new(),
            }
        };
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                target,
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

    /// The Redis key of quota `index` of `policy` for `key`:
    /// `<prefix>:{<policy>:<key>}:<l|w><window in ms>`.
    ///
    /// The algorithm letter and the window are part of the key, so two
    /// policies that share a name (in different layers or deployments) but
    /// count differently never read each other's data.
    ///
    /// # Panics
    ///
    /// If `index` is not a quota index of `policy`.
    pub fn redis_key(&self, policy: &Policy, key: &Key, index: usize) -> String {
        let tag = policy.algorithm_kind().spec().tag;
        format!(
            "{}:{{{}:{}}}:{tag}{}",
            self.inner.prefix,
            policy.name(),
            key.as_str(),
            policy.quotas()[index].window().as_millis()
        )
    }
}

impl Inner {
    /// Runs the script on whichever connection this backend has. Connections
    /// are made here, inside the runtime, never at build time.
    async fn invoke(
        &self,
        invocation: &ScriptInvocation<'static>,
    ) -> Result<Vec<i64>, BackendError> {
        match &self.target {
            Target::Single {
                client,
                config,
                conn,
            } => {
                let mut conn = match conn.get() {
                    Some(conn) => conn.clone(),
                    None => {
                        let fresh = ConnectionManager::new_lazy_with_config(
                            client.clone(),
                            config.clone(),
                        )?;
                        conn.get_or_init(|| fresh).clone()
                    }
                };
                match invocation.invoke_async(&mut conn).await {
                    // A refused connection is the failed reconnect attempt the
                    // manager kept from the outage (nothing was sent); it has just
                    // started a fresh one, so try once more (still bounded by the
                    // layer's deadline) instead of failing the breaker's probe.
                    Err(error) if error.is_connection_refusal() => {
                        Ok(invocation.invoke_async(&mut conn).await?)
                    }
                    other => Ok(other?),
                }
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(cluster) => {
                let mut conn = cluster.connection().await;
                Ok(invocation.invoke_async(&mut conn).await?)
            }
        }
    }
}

impl Backend for RedisBackend {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        let algorithm = policy.algorithm_kind();
        let mut invocation = script(algorithm).prepare_invoke();
        invocation.arg(cost);
        if algorithm.spec().nonce {
            let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
            invocation.arg(format!("{:x}.{seq:x}", self.inner.instance));
        } else {
            invocation.arg("");
        }
        let quotas: Vec<_> = policy.quotas().to_vec();
        for (i, q) in quotas.iter().enumerate() {
            invocation
                .key(self.redis_key(policy, key, i))
                .arg(q.limit())
                .arg(q.window_us());
        }
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let reply = inner.invoke(&invocation).await?;
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

#[cfg(feature = "cluster")]
mod cluster {
    //! The Redis Cluster connection, made once in the background.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use redis::cluster::ClusterClient;
    use redis::cluster_async::ClusterConnection;
    use tokio::sync::watch;

    pub(super) struct Cluster {
        /// The nodes as given, passwords redacted: only shown by `Debug`.
        pub nodes: Vec<String>,
        client: ClusterClient,
        ready: watch::Sender<Option<ClusterConnection>>,
        connecting: Arc<AtomicBool>,
    }

    impl Cluster {
        pub fn new(client: ClusterClient, nodes: Vec<String>) -> Self {
            Self {
                nodes,
                client,
                ready: watch::Sender::new(None),
                connecting: Arc::new(AtomicBool::new(false)),
            }
        }

        /// The connection, once made. The first caller starts a background
        /// task that connects (retrying with back-off); callers wait for it,
        /// bounded by the layer's deadline. The task is not cancelled when a
        /// waiting request gives up, so a slow first connect still completes.
        /// Once made, the cluster connection follows topology changes and
        /// reconnects by itself.
        pub async fn connection(&self) -> ClusterConnection {
            let mut rx = self.ready.subscribe();
            if let Some(conn) = rx.borrow().as_ref() {
                return conn.clone();
            }
            if !self.connecting.swap(true, Ordering::AcqRel) {
                let client = self.client.clone();
                let ready = self.ready.clone();
                // Stop retrying once the backend is gone.
                let alive = Arc::downgrade(&self.connecting);
                tokio::spawn(async move {
                    let mut delay = Duration::from_millis(50);
                    loop {
                        match client.get_async_connection().await {
                            Ok(conn) => {
                                ready.send_replace(Some(conn));
                                return;
                            }
                            Err(error) => {
                                tracing::debug!(%error, "redis cluster connect failed; retrying");
                                if alive.upgrade().is_none() {
                                    return;
                                }
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(Duration::from_secs(1));
                            }
                        }
                    }
                });
            }
            let conn = rx
                .wait_for(Option::is_some)
                .await
                .expect("the sender lives in the backend");
            conn.as_ref().expect("waited for Some").clone()
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
