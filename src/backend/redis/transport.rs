//! The transport seam: one interface over the three ways to reach Redis,
//! which the backend and its batcher use without knowing which one it is.
//!
//! - one node, through a `ConnectionManager` (here);
//! - the primary named by Redis Sentinel (`super::sentinel`), through a
//!   `ConnectionManager` to wherever the sentinels point;
//! - a Redis Cluster (`super::cluster`), through a `ClusterConnection` made
//!   in the background.
//!
//! [`Transport`] sends a [`Request`] (a decision script, a read-only
//! script, a command), records the last error, names the [`Lane`] of a
//! decision's hash tag (the connection's one lane, or the tag's hash slot
//! on a cluster), and runs calls as the deployment needs: on a cluster,
//! detached from their callers and bounded (`super::cluster`).
//!
//! Connections are made lazily, on the first call, inside the runtime:
//! building a backend never blocks or fails because Redis is down.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, Script, ScriptInvocation,
    ServerErrorKind,
};

#[cfg(feature = "cluster")]
use super::cluster::Cluster;
use super::keyspace::HashTag;
use super::last_error::LastError;
use super::script::{ReadOnlyCall, read_only_refused};
#[cfg(feature = "sentinel")]
use super::sentinel::{self, Sentinel};
use crate::backend::CheckFuture;
use crate::decision::Decision;
use crate::error::BackendError;

/// A lane: the calls that must go out one batch at a time, in order. A
/// single node or a Sentinel primary has [`LANES`] lanes (a client key's
/// decisions always take the same); a Redis Cluster has one per hash slot
/// (a script call's keys must share one).
pub(super) type Lane = u16;

/// How many calls may be in flight at once on the one lane of a single
/// node or a Sentinel primary (see `super::batch`). With one, Redis and the
/// application take turns: the application waits while Redis runs a batch,
/// and Redis idles while the application makes the next. The batcher keeps
/// more in flight in order (also across a script reload; its unit test and
/// `tests/it/batching.rs` ran green at two), but at two the
/// connection-churn attack (`under_load::attacks::churn`) fails: with two
/// busy loops beside it, 5 runs of 48 failed open on 25–75 % of the
/// decisions during the kills. In the failed runs traced, calls in flight
/// on the connection a kill hit got neither a reply nor an error until
/// redis-rs' response timeout (1 s); the lane waited behind them, the
/// queued checks missed their deadlines, the breaker opened and its probes
/// missed theirs too. With two builds loading the machine as well, one call
/// in flight failed the same way (5 of 24 runs, as did two lanes): the
/// stall is the connection's, not the depth's, and rarer on a quiet
/// machine. One until a call stuck on a dead connection can no longer hold
/// its lane; [`LANES`] give the overlap meanwhile.
pub(super) const PIPELINE: usize = 1;

/// How many lanes a single node or a Sentinel primary has: a decision's
/// lane is its hash tag's [`spread`](HashTag::spread) over them, so every
/// check of one client key (every key of a decision shares the tag) stays
/// in one lane, in order, while the lanes' calls share the connection and
/// Redis runs one lane's batch as the application makes another's (as a
/// cluster's lanes per hash slot do). One hot key is one lane, as before.
/// A call stuck on a killed connection (see [`PIPELINE`]) holds back only
/// its own lane's checks. Two, measured (BENCHMARKS.md): 9–30 % more
/// requests/s than one on 10 000 and 100 000 distinct clients at the same
/// Redis CPU per decision; four split the traffic into batches too small to
/// pay for their call.
pub(super) const LANES: u16 = 2;

/// The longest a call from a lane's own task (a batch call) may run before
/// its checks fail, off a cluster (the connection's own timeouts end it
/// much sooner in practice); the batcher then sends what queued meanwhile.
/// On a cluster, the bound of detached calls applies
/// ([`Cluster::bounded`](super::cluster::Cluster::bounded)).
const MAX_BATCH_TIME: Duration = Duration::from_secs(10);

/// A failed redis-rs call as a [`BackendError`]: the only conversion from
/// redis-rs' error, kept private so that `BackendError` names no type of
/// redis-rs. Whether the failure was the client key's own is decided
/// afterwards, from the source (`super::script::key_fault`).
pub(super) fn failure(error: RedisError) -> BackendError {
    BackendError::Connection(Box::new(error))
}

/// What to send.
pub(super) enum Request<'a> {
    /// A script invocation: `EVALSHA`; after a `NOSCRIPT` reply, redis-rs
    /// loads the script and calls again.
    Script(&'a ScriptInvocation<'static>),
    /// A decision script's `EVALSHA`, written by the caller, and its
    /// script: after a `NOSCRIPT` reply the script is loaded and the same
    /// command sent again, as redis-rs does for a [`Request::Script`]
    /// (without copying every key and argument into an invocation first).
    Eval(&'a Cmd, &'static Script),
    /// A read-only script, as `EVALSHA_RO` while the flag says the server
    /// takes it (cleared for good by the first refusal), else as `EVALSHA`.
    /// After a `NOSCRIPT` reply the script is loaded and called again.
    ReadOnly(&'a ReadOnlyCall, &'a AtomicBool),
    /// A plain command.
    Command(&'a Cmd),
}

impl Request<'_> {
    async fn send<C, T>(&self, conn: &mut C) -> RedisResult<T>
    where
        C: ConnectionLike + Send,
        T: FromRedisValue,
    {
        match self {
            Request::Script(invocation) => invocation.invoke_async(conn).await,
            Request::Eval(command, script) => match command.query_async(conn).await {
                Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script.load_async(conn).await?;
                    command.query_async(conn).await
                }
                reply => reply,
            },
            Request::ReadOnly(call, read_only) => read_only_call(call, read_only, conn).await,
            Request::Command(cmd) => cmd.query_async(conn).await,
        }
    }
}

/// Whether a call failed because its connection is gone: refused (the
/// failed reconnect attempt a `ConnectionManager` kept from an outage; nothing
/// was sent) or dropped (broken pipe, reset, end of stream: the server closed
/// it, `CLIENT KILL`, a restart, a proxy's idle timeout). Either way the
/// manager has started a new connection, and the call deserves one try on
/// it.
fn lost_connection(error: &RedisError) -> bool {
    error.is_connection_refusal() || error.is_connection_dropped()
}

/// Sends `request` through a `ConnectionManager`, once more if the first
/// try lost its connection ([`lost_connection`]): the manager reconnects
/// when it sees such an error, and the second try waits for that new
/// connection. Both tries are bounded together by the layer's deadline,
/// which drops this future. `failed` sees every error.
///
/// Without the retry, connection churn switched limiting off: each
/// `CLIENT KILL` failed every call in flight on the killed connection, the
/// circuit breaker opened, and each probe after its cool-down went out on a
/// connection killed meanwhile (no call had used it since), so every probe
/// failed and the breaker stayed open as long as the kills went on.
///
/// The trade-off: a call whose connection dropped after Redis ran its
/// script (the reply was lost) runs the script again, so its units may be
/// counted twice — one decision stricter, never more lenient (for every
/// algorithm: a sliding-log member carries the running sum, so a retried
/// admission is a second member). A timeout is not retried: a stalled
/// server would only be asked twice.
async fn send_retrying<T: FromRedisValue>(
    request: &Request<'_>,
    conn: &mut ConnectionManager,
    mut failed: impl FnMut(&RedisError),
) -> RedisResult<T> {
    match request.send(conn).await {
        Err(error) if lost_connection(&error) => {
            failed(&error);
            let retried = request.send(conn).await;
            if let Err(error) = &retried {
                failed(error);
            }
            retried
        }
        Err(error) => {
            failed(&error);
            Err(error)
        }
        ok => ok,
    }
}

/// Runs a read-only script: at most one `EVALSHA_RO` refusal (then `EVALSHA`
/// for good) and one script load, so at most three calls.
async fn read_only_call<C, T>(
    call: &ReadOnlyCall,
    read_only: &AtomicBool,
    conn: &mut C,
) -> RedisResult<T>
where
    C: ConnectionLike + Send,
    T: FromRedisValue,
{
    let mut loaded = false;
    loop {
        let ro = read_only.load(Ordering::Relaxed);
        match call.command(ro).query_async(conn).await {
            Err(error) if ro && read_only_refused(&error) => {
                tracing::debug!(%error, "the server refuses EVALSHA_RO; using EVALSHA");
                read_only.store(false, Ordering::Relaxed);
            }
            Err(error)
                if !loaded && error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                call.script().load_async(conn).await?;
                loaded = true;
            }
            other => return other,
        }
    }
}

/// The `ConnectionManager` settings of a single node or a Sentinel primary.
///
/// One connection attempt per reconnection (no retries inside the
/// manager): a failing attempt (refused, `WRONGPASS`, a certificate the
/// client does not trust) reaches the waiting request with its cause
/// instead of hiding behind the manager's back-off until the layer's
/// deadline; the next request starts the next attempt.
pub(super) fn manager_config(
    connect_timeout: Duration,
    response_timeout: Duration,
) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(0)
        .set_max_delay(Duration::from_secs(1))
}

/// Where the commands go (one per backend, so its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Link {
    Single {
        client: Client,
        config: ConnectionManagerConfig,
        conn: OnceLock<ConnectionManager>,
    },
    #[cfg(feature = "cluster")]
    Cluster(Cluster),
    #[cfg(feature = "sentinel")]
    Sentinel(Sentinel),
}

/// The one way the backend reaches Redis, whatever the deployment: see the
/// module docs.
pub(super) struct Transport {
    link: Link,
    /// The last error, until a call succeeds (a Sentinel deployment's
    /// lookups record theirs here too).
    last_error: Arc<LastError>,
}

impl Transport {
    /// One node, through `client`; connects nothing.
    pub(super) fn single(
        client: Client,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            link: Link::Single {
                client,
                config: manager_config(connect_timeout, response_timeout),
                conn: OnceLock::new(),
            },
            last_error: Arc::default(),
        }
    }

    /// A Redis Cluster known by one or more of its nodes (`urls`, never
    /// empty); connects nothing.
    #[cfg(feature = "cluster")]
    pub(super) fn cluster(
        urls: &[String],
        connect_timeout: Duration,
        response_timeout: Duration,
        #[cfg(feature = "tls")] certs: Option<redis::TlsCertificates>,
    ) -> Result<Self, RedisError> {
        let cluster = Cluster::new(
            urls,
            connect_timeout,
            response_timeout,
            #[cfg(feature = "tls")]
            certs,
        )?;
        Ok(Self {
            link: Link::Cluster(cluster),
            last_error: Arc::default(),
        })
    }

    /// The primary of a Sentinel deployment; checks the URLs, connects
    /// nothing. Failed lookups of the primary are recorded as the last
    /// error.
    #[cfg(feature = "sentinel")]
    pub(super) fn sentinel(settings: sentinel::Settings<'_>) -> Result<Self, RedisError> {
        let last_error = Arc::<LastError>::default();
        let sentinel = Sentinel::new(settings, Arc::clone(&last_error))?;
        Ok(Self {
            link: Link::Sentinel(sentinel),
            last_error,
        })
    }

    /// Adds where the commands go to a `Debug` output: the address (no
    /// credentials) or, for a cluster, the node URLs with their passwords
    /// redacted.
    pub(super) fn describe(&self, d: &mut fmt::DebugStruct<'_, '_>) {
        match &self.link {
            Link::Single { client, .. } => {
                d.field("addr", &client.get_connection_info().addr());
            }
            #[cfg(feature = "cluster")]
            Link::Cluster(c) => {
                d.field("cluster", &c.nodes);
            }
            #[cfg(feature = "sentinel")]
            Link::Sentinel(s) => {
                d.field("sentinels", &s.shown).field("master", &s.master);
            }
        }
    }

    /// The backend's label in metrics.
    pub(super) fn metrics_label(&self) -> &'static str {
        match self.link {
            Link::Single { .. } => "redis",
            #[cfg(feature = "cluster")]
            Link::Cluster(_) => "redis_cluster",
            #[cfg(feature = "sentinel")]
            Link::Sentinel(_) => "redis_sentinel",
        }
    }

    /// The last error, if no call succeeded since.
    pub(super) fn last_error(&self) -> Option<String> {
        self.last_error.get()
    }

    /// Sends a request; remembers its error, or forgets the last one.
    pub(super) async fn send<T: FromRedisValue>(
        &self,
        request: Request<'_>,
    ) -> Result<T, BackendError> {
        let result = self.send_quietly(request).await;
        match &result {
            Ok(_) => self.last_error.clear(),
            Err(error) => self.last_error.record(error),
        }
        result
    }

    /// Sends a request, leaving the last error alone: for background work
    /// whose failures are the decisions' to report (the fleet heartbeat).
    ///
    /// Connections are made here, inside the runtime, never at build time.
    /// A script missing from Redis' cache (restart, failover,
    /// `SCRIPT FLUSH`) is loaded and the call retried. On one node and on a
    /// Sentinel primary, a call that lost its connection is retried once on
    /// a new one ([`send_retrying`]); the cluster client retries such calls
    /// itself (`super::cluster`'s retry settings).
    pub(super) async fn send_quietly<T: FromRedisValue>(
        &self,
        request: Request<'_>,
    ) -> Result<T, BackendError> {
        match &self.link {
            Link::Single {
                client,
                config,
                conn,
            } => {
                let mut conn = match conn.get() {
                    Some(conn) => conn.clone(),
                    None => {
                        let fresh =
                            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                                .map_err(failure)?;
                        conn.get_or_init(|| fresh).clone()
                    }
                };
                send_retrying(&request, &mut conn, |_| {})
                    .await
                    .map_err(failure)
            }
            #[cfg(feature = "cluster")]
            Link::Cluster(cluster) => {
                let mut conn = cluster.connection().await;
                request.send(&mut conn).await.map_err(failure)
            }
            #[cfg(feature = "sentinel")]
            Link::Sentinel(sentinel) => {
                let mut conn = sentinel.connection().await;
                send_retrying(&request, &mut conn, |e| sentinel.failed(e))
                    .await
                    .map_err(failure)
            }
        }
    }

    /// The lane of a decision whose keys share `tag`: on one node or a
    /// Sentinel primary one of [`LANES`], on a cluster the tag's hash slot.
    pub(super) fn lane(&self, tag: HashTag<'_>) -> Lane {
        match self.link {
            #[cfg(feature = "cluster")]
            Link::Cluster(_) => tag.slot(),
            #[allow(unreachable_patterns)]
            _ => tag.spread(LANES),
        }
    }

    /// How many partitions (circuit-breaker circuits) the backend has:
    /// one, or on a cluster one per group of hash slots
    /// ([`PARTITIONS`](super::keyspace::PARTITIONS)).
    pub(super) fn partitions(&self) -> usize {
        match self.link {
            #[cfg(feature = "cluster")]
            Link::Cluster(_) => super::keyspace::PARTITIONS,
            #[allow(unreachable_patterns)]
            _ => 1,
        }
    }

    /// The partition of a decision whose keys share `tag`.
    pub(super) fn partition(&self, tag: HashTag<'_>) -> usize {
        match self.link {
            #[cfg(feature = "cluster")]
            Link::Cluster(_) => tag.partition(),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = tag;
                0
            }
        }
    }

    /// How many calls may be in flight on one lane at once: on a single
    /// node or a Sentinel primary, [`PIPELINE`]; on a cluster 1 per hash
    /// slot (distinct clients spread over many slots, which run side by
    /// side, and a slot's calls stay in order across `MOVED`/`ASK`
    /// redirections and retries).
    pub(super) fn depth(&self) -> usize {
        match &self.link {
            #[cfg(feature = "cluster")]
            Link::Cluster(_) => 1,
            #[allow(unreachable_patterns)]
            _ => PIPELINE,
        }
    }

    /// Whether checks may be batched now: always, except on a cluster whose
    /// connection is not made yet (until then its checks run in their
    /// callers' tasks, see [`Cluster::detached`]).
    pub(super) fn batches(&self) -> bool {
        match &self.link {
            #[cfg(feature = "cluster")]
            Link::Cluster(cluster) => cluster.is_connected(),
            #[allow(unreachable_patterns)]
            _ => true,
        }
    }

    /// Runs a decision's call. On a cluster it runs to completion even if
    /// the layer's deadline gives up on it: the client repairs its topology
    /// from the errors its calls meet ([`Cluster::detached`]). Elsewhere it
    /// runs in the caller's task, and is cancelled with it.
    pub(super) fn decide<F>(&self, call: F) -> CheckFuture
    where
        F: Future<Output = Result<Decision, BackendError>> + Send + 'static,
    {
        match &self.link {
            #[cfg(feature = "cluster")]
            Link::Cluster(cluster) => cluster.detached(call),
            #[allow(unreachable_patterns)]
            _ => Box::pin(call),
        }
    }

    /// Runs `call` from a lane's own task (a batch call, which its callers
    /// cannot cancel): bounded and abandoned like a detached call on a
    /// cluster ([`Cluster::bounded`]), else abandoned after
    /// [`MAX_BATCH_TIME`].
    pub(super) async fn bounded<F, T>(&self, call: F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        #[cfg(feature = "cluster")]
        if let Link::Cluster(cluster) = &self.link {
            return cluster.bounded(call).await;
        }
        tokio::time::timeout(MAX_BATCH_TIME, call)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Protocol(
                    "redis batch call abandoned after 10 s".to_owned(),
                ))
            })
    }
}
