//! The Redis backend: one EVALSHA per decision, or per batch of decisions
//! under load (a peek: one read-only
//! script call; a reset: one DEL).
//!
//! - `batch`: checks waiting for one lane (the connection, or a cluster's
//!   hash slot) sent as one script call;
//! - `script`: the script protocol (arguments, reply), without I/O;
//! - `keyspace`: the key layout, hash tags, hash slots and partitions;
//! - `transport`: the one interface over single-node, cluster and Sentinel
//!   connections (send a request; the lane of a hash tag; detached and
//!   bounded calls on a cluster), which the batcher and the backend use;
//! - `cluster`: the Redis Cluster connection, made in the background;
//! - `sentinel`: finding the primary through Redis Sentinel;
//! - `last_error`: the last error of the calls, for the logs;
//! - `tls`: private CAs and client certificates for `rediss://`;
//! - `redact`: Redis URLs without their passwords;
//! - `fleet`: the heartbeat counting the instances that share the counts;
//! - here: [`RedisBackend`] and its builder, gluing them together.
//!
//! The submodules depend on each other one way, and never on this module
//! (`crate::module_graph` checks it).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::oneshot;

use self::batch::{Batcher, Lead, Submitted};
use self::keyspace::HashTag;
pub(crate) use self::redact::redact_url;
use self::redact::secrets;
use self::script::{Call, Nonces};
#[cfg(all(feature = "serde", feature = "tls"))]
pub(crate) use self::tls::{check_ca, check_client_cert, check_client_key};
use self::transport::{Request, Transport};
use super::{Backend, ChargeFuture, CheckFuture, RefundFuture, ResetFuture};
use crate::decision::{Decision, Ticket};
use crate::error::{BackendError, ConfigError};
use crate::failure::FailureMode;
use crate::key::Key;
use crate::policy::Policy;

mod batch;
#[cfg(feature = "cluster")]
mod cluster;
mod fleet;
mod keyspace;
mod last_error;
mod redact;
mod script;
#[cfg(feature = "sentinel")]
mod sentinel;
#[cfg(feature = "tls")]
mod tls;
mod transport;

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
/// <prefix>:{<policy>:<client key>}:<w|c|g><window in ms>
/// rl:{auth:203.0.113.9}:w60000    sliding log, sorted set
/// rl:{api:203.0.113.9}:c60000     sliding window counter, string "<s> <c> <p>"
/// rl:{pay:203.0.113.9}:g60000     GCRA, string: the theoretical arrival time
/// ```
///
/// Every key written carries a TTL no longer than its data matters.
/// [`RedisBackend::redis_keys`] names a client's keys.
///
/// Once a policy with [`FailureMode::Local`] has been checked, the backend
/// (with its clones: one application instance) also announces itself about
/// once a second in `<prefix>:{instances}` (a sorted set of instance ids,
/// members dropped 5 s after their last announcement, the key too), which
/// gives [`Backend::instances`]: the count `Local` shares a limit by while
/// Redis is down. Build one backend per process and share it (it is
/// cheap to clone); instances of different applications on one Redis need
/// different prefixes, or they count each other.
///
/// Administration ([`Admin`](crate::Admin)): a [peek](Backend::peek) is one
/// call of a second, read-only script per algorithm, sent as `EVALSHA_RO` on
/// Redis 7.0 and later (the server then refuses any write) and as `EVALSHA`
/// on older servers or when an ACL allows only `EVALSHA`; it changes no key,
/// member or TTL. A [reset](Backend::reset) is one `DEL` of the client's keys.
///
/// Refunds ([`Backend::refund`]): one call of a third script per algorithm,
/// never batched, on Redis' clock; it reads every key before it writes, so a
/// key of another type fails the refund whole (a key fault, as for a check).
///
/// Charges ([`Backend::charge`]): one call of a fourth script per
/// algorithm, likewise never batched, on Redis' clock, every key read
/// before any is written, each key's TTL set to cover the debt.
///
/// Batching: a lone check is sent at once; while calls are in flight,
/// further checks queue, and go out together as one call of a batch script
/// (at most [`RedisBackendBuilder::batch`] checks, default 64), in
/// order. The batch script runs each check's own algorithm in
/// arrival order, so a batch decides exactly as the same checks sent one by
/// one would; under load it spares Redis most of the per-call cost. A
/// failed batch call fails each check in it. On a cluster, checks are
/// batched per hash slot (a script's keys must share one): each slot has
/// its own call in flight and its own queue, and every call runs to
/// completion even when its callers stop waiting, as a lone call does
/// there.
///
/// The connection is made lazily, on the first check: building the backend
/// never blocks or fails because Redis is down. The connection is multiplexed
/// (concurrent checks are pipelined on it) and re-established automatically.
///
/// With the `cluster` feature, [`RedisBackend::cluster`][cluster] talks to a Redis
/// Cluster: the one-hash-tag key layout sends every decision to the node that
/// owns its slot, and the script is loaded on every primary when missing.
///
/// With the `sentinel` feature, [`RedisBackend::sentinel`][sentinel] talks to the
/// primary of a primary/replica deployment watched by Redis Sentinel, and
/// follows it through failovers.
///
/// TLS (feature `tls`): `rediss://` URLs, verified against the system's
/// root certificates, plus a private CA if given
/// ([`RedisBackendBuilder::tls_ca_pem`][tls_ca_pem]); a client certificate for mutual
/// TLS with [`RedisBackendBuilder::tls_client_pem`][tls_client_pem]. ACL users: put the
/// user name and password in the URL (`rediss://limiter:secret@host:6380`).
///
/// When a decision times out, the log line names the backend's last error
/// ([`Backend::last_error`]): a refused connection, `WRONGPASS`, a
/// certificate that is not trusted...
///
// The feature-gated methods are linked to docs.rs in builds without them.
#[cfg_attr(feature = "cluster", doc = "[cluster]: RedisBackend::cluster")]
#[cfg_attr(
    not(feature = "cluster"),
    doc = "[cluster]: https://docs.rs/tower-redis-ratelimit/latest/tower_redis_ratelimit/backend/struct.RedisBackend.html#method.cluster"
)]
#[cfg_attr(feature = "sentinel", doc = "[sentinel]: RedisBackend::sentinel")]
#[cfg_attr(
    not(feature = "sentinel"),
    doc = "[sentinel]: https://docs.rs/tower-redis-ratelimit/latest/tower_redis_ratelimit/backend/struct.RedisBackend.html#method.sentinel"
)]
#[cfg_attr(feature = "tls", doc = "[tls_ca_pem]: RedisBackendBuilder::tls_ca_pem")]
#[cfg_attr(
    not(feature = "tls"),
    doc = "[tls_ca_pem]: https://docs.rs/tower-redis-ratelimit/latest/tower_redis_ratelimit/backend/struct.RedisBackendBuilder.html#method.tls_ca_pem"
)]
#[cfg_attr(
    feature = "tls",
    doc = "[tls_client_pem]: RedisBackendBuilder::tls_client_pem"
)]
#[cfg_attr(
    not(feature = "tls"),
    doc = "[tls_client_pem]: https://docs.rs/tower-redis-ratelimit/latest/tower_redis_ratelimit/backend/struct.RedisBackendBuilder.html#method.tls_client_pem"
)]
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the calls go, and their last error.
    transport: Arc<Transport>,
    prefix: String,
    nonces: Nonces,
    /// Whether peeks are sent as `EVALSHA_RO` (cleared once the server
    /// refuses it: Redis before 7.0).
    read_only: AtomicBool,
    /// Batches checks, if batching is on: in one lane, or one per hash slot
    /// on a cluster.
    batcher: Option<Arc<Batcher>>,
    /// This instance in its fleet (see [`Backend::instances`]).
    fleet: fleet::Fleet,
}

/// Shows the address (no credentials) or, for a cluster, the node URLs with
/// their passwords redacted.
impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisBackend");
        self.inner.transport.describe(&mut d);
        d.field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisBackend`].
#[derive(Clone)]
#[must_use]
pub struct RedisBackendBuilder {
    urls: Vec<String>,
    kind: Kind,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    batch: usize,
    /// `master_url` was called on a builder that is not Sentinel's.
    #[cfg(feature = "sentinel")]
    stray_master_url: bool,
    #[cfg(feature = "tls")]
    tls: tls::Tls,
}

/// What the URLs of a builder are.
#[derive(Clone, Debug)]
enum Kind {
    /// One node.
    Single,
    /// Nodes of a Redis Cluster.
    #[cfg(feature = "cluster")]
    Cluster,
    /// Sentinels, the name of the primary they watch and the URL settings
    /// (TLS, user, password, database) used to reach it.
    #[cfg(feature = "sentinel")]
    Sentinel { master: String, master_url: String },
}

/// Shows the URLs with their passwords redacted.
impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<_> = self.urls.iter().map(|url| redact_url(url)).collect();
        let mut d = f.debug_struct("RedisBackendBuilder");
        d.field("urls", &urls);
        match &self.kind {
            Kind::Single => {}
            #[cfg(feature = "cluster")]
            Kind::Cluster => {
                d.field("cluster", &true);
            }
            #[cfg(feature = "sentinel")]
            Kind::Sentinel { master, master_url } => {
                d.field("master", master)
                    .field("master_url", &redact_url(master_url));
            }
        }
        d.field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("batch", &self.batch);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish()
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

/// Checks a key prefix: 1 to 64 characters from `[A-Za-z0-9._:-]`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&prefix.len()) && crate::key::is_plain(prefix.as_bytes(), b"._-:");
    if !ok {
        return Err(ConfigError::InvalidPrefix {
            prefix: prefix.to_owned(),
        });
    }
    Ok(())
}

/// Whether `url` asks for TLS.
fn is_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
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

    /// The largest number of checks sent in one batch call (default 64, at
    /// most 1024; 0 or 1: no batching). See [`RedisBackend`]: a lone check
    /// is always sent at once, alone; only checks that would wait for a call
    /// in flight are batched. On a cluster, only checks whose keys share a
    /// hash slot are batched together (each slot has its own call in
    /// flight). A value above 1024 is a [`ConfigError::BatchTooLarge`] at
    /// [`build`](Self::build).
    pub fn batch(mut self, max: usize) -> Self {
        self.batch = max;
        self
    }

    /// Whether checks are batched (default `true`, on every kind of
    /// deployment, clusters included): `false` sends each check as its own
    /// call, as [`batch(1)`](Self::batch) does.
    pub fn batching(mut self, enabled: bool) -> Self {
        self.batch = if enabled { batch::DEFAULT_MAX } else { 1 };
        self
    }

    /// Trusts the CA certificate(s) in `pem` (PEM text, e.g. the contents of
    /// `ca.crt`) for `rediss://` connections, in addition to the system's
    /// root certificates: for servers whose certificate a private CA signed.
    /// Checked by [`build`](Self::build) ([`ConfigError::Tls`]).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca = Some(pem.into());
        self
    }

    /// Presents the client certificate chain `cert_pem` with its private key
    /// `key_pem` (both PEM text) on `rediss://` connections: mutual TLS, for
    /// servers with `tls-auth-clients yes`. Checked by
    /// [`build`](Self::build) ([`ConfigError::Tls`]).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The URL settings used to reach the primary of a Sentinel deployment
    /// (default `redis://sentinel-primary/`): its scheme (`rediss://` for
    /// TLS), user name, password, database and protocol. Its host and port
    /// are ignored: the sentinels name the primary's address. On a builder
    /// of another kind (`RedisBackend::builder`, `cluster_builder`) it
    /// makes [`build`](Self::build) fail with
    /// [`ConfigError::MasterUrlWithoutSentinel`] rather than be ignored.
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn master_url(mut self, url: impl Into<String>) -> Self {
        match &mut self.kind {
            Kind::Sentinel { master_url, .. } => *master_url = url.into(),
            _ => self.stray_master_url = true,
        }
        self
    }

    /// The TLS certificates for redis-rs, if any were set; an error if
    /// there are some but no URL is `rediss://`.
    #[cfg(feature = "tls")]
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>, ConfigError> {
        let certs = self.tls.certificates()?;
        let mut urls = self.urls.iter();
        #[cfg(feature = "sentinel")]
        let master = match &self.kind {
            Kind::Sentinel { master_url, .. } => Some(master_url),
            _ => None,
        };
        #[cfg(not(feature = "sentinel"))]
        let master = None::<&String>;
        if certs.is_some() && !urls.any(|u| is_tls(u)) && !master.is_some_and(|u| is_tls(u)) {
            return Err(ConfigError::Tls(
                "TLS certificates were given, but no URL is `rediss://`".to_owned(),
            ));
        }
        Ok(certs)
    }

    /// URL settings that could never take effect for this kind of
    /// deployment, rather than be ignored or fail every call: a database
    /// other than 0 in a cluster node's URL (Redis Cluster has only
    /// database 0), a Unix socket as a Sentinel deployment's `master_url`
    /// (the sentinels name the primary's TCP address). URLs that do not
    /// parse are left to the connection's own checks.
    fn check_url_settings(&self) -> Result<(), ConfigError> {
        match &self.kind {
            Kind::Single => Ok(()),
            #[cfg(feature = "cluster")]
            Kind::Cluster => {
                for url in &self.urls {
                    let Ok(info) = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    else {
                        continue;
                    };
                    if info.redis_settings().db() != 0 {
                        return Err(ConfigError::RedisUrl(format!(
                            "{:?}: Redis Cluster has only database 0; remove the database \
                             from the node URL",
                            redact_url(url)
                        )));
                    }
                }
                Ok(())
            }
            #[cfg(feature = "sentinel")]
            Kind::Sentinel { master_url, .. } => {
                let info = redis::IntoConnectionInfo::into_connection_info(master_url.as_str());
                if let Ok(info) = info
                    && matches!(info.addr(), redis::ConnectionAddr::Unix(_))
                {
                    return Err(ConfigError::RedisUrl(format!(
                        "{:?}: `master_url` must be `redis://` or `rediss://`: the sentinels \
                         name the primary's TCP address, so a Unix socket would be ignored",
                        redact_url(master_url)
                    )));
                }
                Ok(())
            }
        }
    }

    /// Checks the configuration; connects nothing.
    ///
    /// Besides the prefix, the URLs and the TLS files, settings that would
    /// be ignored for the URLs given are errors: TLS certificates without a
    /// `rediss://` URL ([`ConfigError::Tls`]), `master_url`
    /// outside Sentinel ([`ConfigError::MasterUrlWithoutSentinel`]), a
    /// database other than 0 in a cluster node's URL, and a Unix socket as
    /// Sentinel's `master_url` ([`ConfigError::RedisUrl`]).
    pub fn build(self) -> Result<RedisBackend, ConfigError> {
        #[cfg(feature = "sentinel")]
        if self.stray_master_url {
            return Err(ConfigError::MasterUrlWithoutSentinel);
        }
        check_prefix(&self.prefix)?;
        #[cfg(not(feature = "tls"))]
        if let Some(url) = self.urls.iter().find(|u| is_tls(u)) {
            return Err(ConfigError::RedisUrl(format!(
                "{:?}: TLS (`rediss://`) needs the crate feature `tls`",
                redact_url(url)
            )));
        }
        if self.batch > batch::MAX_MAX {
            return Err(ConfigError::BatchTooLarge {
                batch: self.batch,
                max: batch::MAX_MAX,
            });
        }
        self.check_url_settings()?;
        #[cfg(feature = "tls")]
        let certs = self.certificates()?;
        let transport = match &self.kind {
            Kind::Single => {
                let url = self.urls.first().map_or("", String::as_str);
                #[cfg(feature = "tls")]
                let client = tls::client(url, certs.as_ref());
                #[cfg(not(feature = "tls"))]
                let client = redis::Client::open(url);
                let client = client.map_err(|e| url_error(&self.urls, &e))?;
                Transport::single(client, self.connect_timeout, self.response_timeout)
            }
            #[cfg(feature = "cluster")]
            Kind::Cluster => {
                if self.urls.is_empty() {
                    return Err(ConfigError::RedisUrl("no cluster node given".to_owned()));
                }
                Transport::cluster(
                    &self.urls,
                    self.connect_timeout,
                    self.response_timeout,
                    #[cfg(feature = "tls")]
                    certs,
                )
                .map_err(|e| url_error(&self.urls, &e))?
            }
            #[cfg(feature = "sentinel")]
            Kind::Sentinel { master, master_url } => {
                if self.urls.is_empty() {
                    return Err(ConfigError::RedisUrl("no sentinel given".to_owned()));
                }
                if master.is_empty() {
                    return Err(ConfigError::RedisUrl(
                        "the name of the sentinels' master is empty".to_owned(),
                    ));
                }
                let settings = sentinel::Settings {
                    sentinels: &self.urls,
                    master,
                    master_url,
                    connect_timeout: self.connect_timeout,
                    config: transport::manager_config(self.connect_timeout, self.response_timeout),
                    #[cfg(feature = "tls")]
                    certs,
                };
                let mut urls = self.urls.clone();
                urls.push(master_url.clone());
                Transport::sentinel(settings).map_err(|e| url_error(&urls, &e))?
            }
        };
        let transport = Arc::new(transport);
        let batcher =
            (self.batch > 1).then(|| Arc::new(Batcher::new(self.batch, Arc::clone(&transport))));
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                batcher,
                transport,
                prefix: self.prefix,
                nonces: Nonces::new(),
                read_only: AtomicBool::new(true),
                fleet: fleet::Fleet::new(),
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
            kind: Kind::Single,
            prefix: "rl".to_owned(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            batch: batch::DEFAULT_MAX,
            #[cfg(feature = "sentinel")]
            stray_master_url: false,
            #[cfg(feature = "tls")]
            tls: tls::Tls::default(),
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
            kind: Kind::Cluster,
            ..Self::builder("")
        }
    }

    /// A backend for the primary of a primary/replica deployment watched by
    /// Redis Sentinel: `sentinels` are the sentinels' URLs
    /// (`redis://127.0.0.1:26379`), `master` the name they know the primary
    /// by (`sentinel monitor <master> ...`). Connects nothing.
    ///
    /// The sentinels are asked for the primary's address on the first call,
    /// again after a connection error or a `READONLY` / `MASTERDOWN` reply,
    /// and at most every second while calls are made: after a failover the
    /// limiter counts on the new primary within about a second of the
    /// sentinels naming it. Until then, decisions fail as when Redis is down
    /// (the policy's [`FailureMode`](crate::FailureMode) applies), never
    /// waiting longer than the layer's deadline. The primary's user,
    /// password and TLS: [`RedisBackendBuilder::master_url`].
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel<I, S>(sentinels: I, master: &str) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::sentinel_builder(sentinels, master).build()
    }

    /// A builder for a Redis Sentinel backend (see [`RedisBackend::sentinel`]).
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel_builder<I, S>(sentinels: I, master: &str) -> RedisBackendBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = sentinels.into_iter().map(Into::into).collect();
        let scheme = if urls.first().is_some_and(|u| is_tls(u)) {
            "rediss"
        } else {
            "redis"
        };
        RedisBackendBuilder {
            urls,
            kind: Kind::Sentinel {
                master: master.to_owned(),
                master_url: format!("{scheme}://sentinel-primary/"),
            },
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
    /// <prefix>:{<policy>:<key>}:<w|c|g><window in ms>
    /// ```
    ///
    /// `w` tags a sliding log (a sorted set of admitted requests), `c` a sliding
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
    ///     ["rl:{auth:203.0.113.9}:w60000", "rl:{auth:203.0.113.9}:w3600000"]
    /// );
    /// # Ok::<(), tower_redis_ratelimit::ConfigError>(())
    /// ```
    pub fn redis_keys(&self, policy: &Policy, key: &Key) -> Vec<String> {
        keyspace::keys(&self.inner.prefix, policy, key)
    }
}

/// A check sent alone: its algorithm's own script; `lead` is released
/// when the call ends or is dropped.
async fn lone(
    transport: Arc<Transport>,
    call: Call,
    lead: Option<Lead>,
) -> Result<Decision, BackendError> {
    let _lead = lead;
    let command = call.evalsha();
    let reply: Vec<i64> = transport
        .send(Request::Eval(&command, call.script()))
        .await
        .map_err(script::key_fault)?;
    call.decode(&reply)
}

/// Sends a refund's or a charge's script call (it replies 1); a script
/// error is the client key's fault, as a check's.
async fn adjust(transport: &Transport, request: Request<'_>) -> Result<(), BackendError> {
    let _: i64 = transport.send(request).await.map_err(script::key_fault)?;
    Ok(())
}

/// A check queued on a busy lane: its share of a batch call's reply.
fn queued(reply: oneshot::Receiver<batch::Reply>) -> CheckFuture {
    Box::pin(batch::wait(reply))
}

impl Backend for RedisBackend {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        if policy.failure_mode_kind() == FailureMode::Local {
            // Counting the fleet starts with the first check that may
            // need the count.
            let inner = &self.inner;
            inner.fleet.start(&inner.transport, &inner.prefix);
        }
        let call = script::call(&self.inner.prefix, &self.inner.nonces, policy, key, cost);
        let transport = &self.inner.transport;
        // On a cluster the call runs to completion even if the layer's
        // deadline gives up on it: the client repairs its topology from the
        // errors its calls meet (see `cluster`). Checks are batched per
        // lane: per hash slot on a cluster (a script call's keys must share
        // one), once the connection is made (before, they run in their
        // callers' tasks, see `Cluster::detached`).
        let batcher = self.inner.batcher.as_ref();
        if let Some(batcher) = batcher.filter(|_| transport.batches()) {
            let lane = transport.lane(HashTag::of(policy, key));
            // The check's place in its lane's order is taken here, when it
            // is made, not when it is first polled.
            return match batcher.submit(lane, call) {
                Submitted::Queued(reply) => queued(reply),
                Submitted::Lead(call) => {
                    let lead = Lead::new(Arc::clone(batcher), lane);
                    transport.decide(lone(Arc::clone(transport), call, Some(lead)))
                }
            };
        }
        transport.decide(lone(Arc::clone(transport), call, None))
    }

    // Failure isolation: one partition per group of hash slots on a cluster.

    fn partitions(&self) -> usize {
        self.inner.transport.partitions()
    }

    fn partition(&self, policy: &Policy, key: &Key) -> usize {
        self.inner.transport.partition(HashTag::of(policy, key))
    }

    // Administration: peek and reset.

    fn peek(&self, policy: &Policy, key: &Key) -> CheckFuture {
        let call = script::peek_call(&self.inner.prefix, policy, key);
        let policy = policy.clone();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let request = Request::ReadOnly(&call, &inner.read_only);
            let reply: Vec<i64> = inner.transport.send(request).await?;
            script::decode(&reply, policy.quotas())
        })
    }

    fn reset(&self, policy: &Policy, key: &Key) -> ResetFuture {
        let command = script::reset_command(&self.inner.prefix, policy, key);
        let transport = Arc::clone(&self.inner.transport);
        Box::pin(async move {
            if let Some(command) = command {
                let _deleted: u64 = transport.send(Request::Command(&command)).await?;
            }
            Ok(())
        })
    }

    // Refunds: one call of the algorithm's refund script, never batched.

    fn refund(&self, policy: &Policy, key: &Key, cost: u64, ticket: &Ticket) -> RefundFuture {
        let call = script::refund_call(&self.inner.prefix, policy, key, cost, ticket);
        let transport = Arc::clone(&self.inner.transport);
        Box::pin(async move {
            match call {
                Some(invocation) => adjust(&transport, Request::Script(&invocation)).await,
                None => Ok(()),
            }
        })
    }

    // Charges: one call of the algorithm's charge script, never batched.

    fn charge(&self, policy: &Policy, key: &Key, cost: u64) -> ChargeFuture {
        let call = script::charge_call(&self.inner.prefix, &self.inner.nonces, policy, key, cost);
        let transport = Arc::clone(&self.inner.transport);
        Box::pin(async move {
            let Some(call) = call else {
                return Ok(());
            };
            let script = script::charge_script(call.algorithm);
            adjust(&transport, Request::Eval(&call.evalsha_of(script), script)).await
        })
    }

    fn metrics_label(&self) -> &'static str {
        self.inner.transport.metrics_label()
    }

    fn last_error(&self) -> Option<String> {
        self.inner.transport.last_error()
    }

    fn instances(&self) -> Option<NonZeroU32> {
        self.inner.fleet.instances()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sentinel")]
    #[test]
    fn master_url_outside_sentinel_is_a_config_error() {
        let err = RedisBackend::builder("redis://127.0.0.1:1")
            .master_url("redis://u:pw@x/")
            .build()
            .unwrap_err();
        assert_eq!(err, ConfigError::MasterUrlWithoutSentinel);
        assert!(!err.to_string().contains("pw"), "{err}");
        RedisBackend::sentinel_builder(["redis://127.0.0.1:1"], "m")
            .master_url("redis://u:pw@x/")
            .build()
            .unwrap();
    }

    #[cfg(feature = "sentinel")]
    #[test]
    fn unix_master_url_is_a_config_error() {
        let err = RedisBackend::sentinel_builder(["redis://127.0.0.1:1"], "m")
            .master_url("redis+unix:///run/redis.sock?pass=secret")
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::RedisUrl(m) if m.contains("Unix socket")),
            "{err}"
        );
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn cluster_database_is_a_config_error() {
        let err = RedisBackend::cluster_builder(["redis://:secret@127.0.0.1:7000/2"])
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::RedisUrl(m) if m.contains("database 0")),
            "{err}"
        );
        assert!(!err.to_string().contains("secret"), "{err}");
        RedisBackend::cluster_builder(["redis://127.0.0.1:7000/0", "redis://127.0.0.1:7001"])
            .build()
            .unwrap();
    }

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
