//! The connections: one Redis node through a `ConnectionManager`, a Redis
//! Cluster through a `ClusterConnection` made in the background, or the
//! primary named by Redis Sentinel (`super::sentinel`).
//!
//! Both are made lazily, on the first call, inside the runtime: building a
//! backend never blocks or fails because Redis is down.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, ScriptInvocation,
    ServerErrorKind,
};

use super::script::{ReadOnlyCall, read_only_refused};
use crate::error::BackendError;

/// What to send.
pub(super) enum Request<'a> {
    /// A decision script: `EVALSHA`; after a `NOSCRIPT` reply, redis-rs loads
    /// the script and calls again.
    Script(&'a ScriptInvocation<'static>),
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

/// The last error of a backend's calls (or of its background work: a
/// Sentinel lookup), until a call succeeds: what a timed-out decision's log
/// line names as its likely cause.
#[derive(Debug, Default)]
pub(super) struct LastError {
    /// Whether `text` holds an error (read without the lock on every call).
    set: AtomicBool,
    text: Mutex<Option<String>>,
}

impl LastError {
    /// Remembers `error`.
    pub fn record(&self, error: &dyn fmt::Display) {
        let text = error.to_string();
        *self.text.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
        self.set.store(true, Ordering::Release);
    }

    /// Forgets the error: a call succeeded.
    pub fn clear(&self) {
        if self.set.swap(false, Ordering::AcqRel) {
            *self.text.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The error, if no call succeeded since.
    pub fn get(&self) -> Option<String> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
pub(super) enum Connection {
    Single {
        client: Client,
        config: ConnectionManagerConfig,
        conn: OnceLock<ConnectionManager>,
    },
    #[cfg(feature = "cluster")]
    Cluster(cluster::Cluster),
    #[cfg(feature = "sentinel")]
    Sentinel(super::sentinel::Sentinel),
}

impl Connection {
    /// One node, through `client`; connects nothing.
    pub(super) fn single(
        client: Client,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Connection::Single {
            client,
            config: manager_config(connect_timeout, response_timeout),
            conn: OnceLock::new(),
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
    ) -> Result<Self, redis::RedisError> {
        let builder = cluster::retries(
            redis::cluster::ClusterClient::builder(urls.to_vec())
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout),
        );
        #[cfg(feature = "tls")]
        let builder = match certs {
            Some(certs) => builder.certs(certs),
            None => builder,
        };
        let client = builder.build()?;
        let nodes = urls.iter().map(|u| super::redact_url(u).into_owned());
        Ok(Connection::Cluster(cluster::Cluster::new(
            client,
            nodes.collect(),
        )))
    }

    /// Adds where the commands go to a `Debug` output: the address (no
    /// credentials) or, for a cluster, the node URLs with their passwords
    /// redacted.
    pub(super) fn describe(&self, d: &mut fmt::DebugStruct<'_, '_>) {
        match self {
            Connection::Single { client, .. } => {
                d.field("addr", &client.get_connection_info().addr());
            }
            #[cfg(feature = "cluster")]
            Connection::Cluster(c) => {
                d.field("cluster", &c.nodes);
            }
            #[cfg(feature = "sentinel")]
            Connection::Sentinel(s) => {
                d.field("sentinels", &s.shown).field("master", &s.master);
            }
        }
    }

    /// Sends a request. Connections are made here, inside the runtime, never
    /// at build time. A script missing from Redis' cache (restart, failover,
    /// `SCRIPT FLUSH`) is loaded and the call retried. On one node and on a
    /// Sentinel primary, a call that lost its connection is retried once on
    /// a new one ([`send_retrying`]); the cluster client retries such calls
    /// itself (`cluster::retries`).
    pub(super) async fn send<T: FromRedisValue>(
        &self,
        request: Request<'_>,
    ) -> Result<T, BackendError> {
        match self {
            Connection::Single {
                client,
                config,
                conn,
            } => {
                let mut conn = match conn.get() {
                    Some(conn) => conn.clone(),
                    None => {
                        let fresh =
                            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                                .map_err(super::failure)?;
                        conn.get_or_init(|| fresh).clone()
                    }
                };
                send_retrying(&request, &mut conn, |_| {})
                    .await
                    .map_err(super::failure)
            }
            #[cfg(feature = "cluster")]
            Connection::Cluster(cluster) => {
                let mut conn = cluster.connection().await;
                request.send(&mut conn).await.map_err(super::failure)
            }
            #[cfg(feature = "sentinel")]
            Connection::Sentinel(sentinel) => {
                let mut conn = sentinel.connection().await;
                send_retrying(&request, &mut conn, |e| sentinel.failed(e))
                    .await
                    .map_err(super::failure)
            }
        }
    }
}

#[cfg(feature = "cluster")]
pub(super) mod cluster {
    //! The Redis Cluster connection, made once in the background, and what
    //! keeps it able to repair itself while requests give up.
    //!
    //! redis-rs' cluster client repairs its view of the cluster (reconnects,
    //! slot map refresh) as a side effect of the errors its requests meet,
    //! and it drops a request whose caller went away without looking at its
    //! result. A decision cancelled by the layer's deadline therefore
    //! teaches the client nothing: under load, after a master died, every
    //! call to its slots was cancelled before the error that would have
    //! refreshed the slot map, and the client never learned of the promoted
    //! replica. So decisions run in spawned tasks, to completion, whatever
    //! the caller does ([`Cluster::detached`]), with a bound on how many may
    //! be outstanding; and the client retries quickly (tens of
    //! milliseconds, not redis-rs' default of over a second) a few times
    //! ([`retries`]), so a detached call ends soon after the cluster settles.
    //!
    //! Batching (`super::super::batch`) keeps this: a lane's lone call is
    //! detached, and its batch calls run in the lane's own spawned task,
    //! each holding one of the same permits and abandoned after the same
    //! time ([`Cluster::bounded`]).

    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use redis::cluster::{ClusterClient, ClusterClientBuilder};
    use redis::cluster_async::ClusterConnection;
    use tokio::sync::{Semaphore, watch};

    use crate::backend::CheckFuture;
    use crate::decision::Decision;
    use crate::error::BackendError;

    /// Redis Cluster's hash slots.
    const SLOTS: u16 = 16_384;

    /// The partitions of a cluster backend (see
    /// [`Backend::partitions`](crate::Backend::partitions)): groups of
    /// `16384 / PARTITIONS` consecutive hash slots, each with its own
    /// circuit-breaker circuit. Masters own ranges of consecutive slots, so
    /// a group is owned by one master, except a group straddling the
    /// boundary between two masters' ranges: while one of those masters is
    /// down, the other's keys in that group (at most 256 slots on each side
    /// of each boundary) fail like the dead master's once the circuit opens.
    /// 64 keeps that share small while each group still sees enough traffic
    /// to notice a failure quickly.
    pub(in crate::backend::redis) const PARTITIONS: usize = 64;

    /// How many decisions may run detached at once, per backend; beyond,
    /// calls run in the caller's task (and are cancelled with it).
    const MAX_DETACHED: usize = 1024;

    /// The longest a detached decision may run: redis-rs' retries and
    /// response timeout end it much sooner in practice.
    const MAX_DETACHED_TIME: Duration = Duration::from_secs(10);

    /// The retry settings of the cluster client: up to 3 retries, waiting
    /// 10 ms to 80 ms (redis-rs' defaults are 16 retries, waiting 1.28 s or
    /// more: far beyond any deadline, and long detached calls).
    pub(in crate::backend::redis) fn retries(
        builder: ClusterClientBuilder,
    ) -> ClusterClientBuilder {
        builder
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .retry_wait_formula(10, 2)
    }

    /// Redis Cluster's hash slot of `key` (CRC16/XMODEM of its hash tag, or
    /// of the whole key when it has none), as `CLUSTER KEYSLOT` computes it.
    #[cfg(test)]
    pub(in crate::backend::redis) fn slot(key: &[u8]) -> u16 {
        let hashed = match key.iter().position(|&b| b == b'{') {
            Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
                Some(0) | None => key,
                Some(len) => &key[open + 1..open + 1 + len],
            },
            None => key,
        };
        slot_of_tag(&[hashed])
    }

    /// The hash slot of a key whose hash tag is the concatenation of
    /// `parts` (no allocation: the CRC runs over the parts in turn).
    pub(in crate::backend::redis) fn slot_of_tag(parts: &[&[u8]]) -> u16 {
        let mut crc = crc16::State::<crc16::XMODEM>::new();
        for part in parts {
            crc.update(part);
        }
        crc.get() % SLOTS
    }

    /// The partition of the hash slot of a key whose hash tag is the
    /// concatenation of `parts`.
    pub(in crate::backend::redis) fn partition(parts: &[&[u8]]) -> usize {
        usize::from(slot_of_tag(parts)) / (usize::from(SLOTS) / PARTITIONS)
    }

    pub(in crate::backend::redis) struct Cluster {
        /// The nodes as given, passwords redacted: only shown by `Debug`.
        pub nodes: Vec<String>,
        client: ClusterClient,
        ready: watch::Sender<Option<ClusterConnection>>,
        connecting: Arc<AtomicBool>,
        /// Permits for detached decisions.
        detached: Arc<Semaphore>,
    }

    impl Cluster {
        pub fn new(client: ClusterClient, nodes: Vec<String>) -> Self {
            Self {
                nodes,
                client,
                ready: watch::Sender::new(None),
                connecting: Arc::new(AtomicBool::new(false)),
                detached: Arc::new(Semaphore::new(MAX_DETACHED)),
            }
        }

        /// Runs `call` (a decision) in a task of its own, so that it runs to
        /// completion, and the cluster client sees its errors and repairs
        /// its topology, even when the caller stops waiting (deadline,
        /// client gone). The returned future only waits for the result.
        ///
        /// `call` runs in the caller's task instead (and is cancelled with
        /// it) before the first connection is made (a decision waiting for
        /// a cluster that is not there must not fire long after its request
        /// was answered; the connecting task is detached anyway), beyond
        /// [`MAX_DETACHED`] outstanding calls, and outside a Tokio runtime.
        /// A detached call is abandoned after [`MAX_DETACHED_TIME`].
        pub fn detached<F>(&self, call: F) -> CheckFuture
        where
            F: Future<Output = Result<Decision, BackendError>> + Send + 'static,
        {
            if self.ready.borrow().is_none() {
                return Box::pin(call);
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Box::pin(call);
            };
            let Ok(permit) = Arc::clone(&self.detached).try_acquire_owned() else {
                return Box::pin(call);
            };
            let task = runtime.spawn(async move {
                let result = tokio::time::timeout(MAX_DETACHED_TIME, call).await;
                drop(permit);
                result.unwrap_or_else(|_| {
                    Err(BackendError::Protocol(
                        "redis cluster call abandoned after 10 s".to_owned(),
                    ))
                })
            });
            Box::pin(async move {
                match task.await {
                    Ok(result) => result,
                    Err(error) => Err(BackendError::Other(Box::new(error))),
                }
            })
        }

        /// Whether the connection has been made (once made, it stays: it
        /// follows the cluster by itself). Until then checks are not
        /// batched, and run in their callers' tasks.
        pub fn is_connected(&self) -> bool {
            self.ready.borrow().is_some()
        }

        /// Runs `call` (a batch call, already in a task of its own that
        /// its callers cannot cancel) under the bounds of detached calls:
        /// it waits for one of the [`MAX_DETACHED`] permits (so batch and
        /// detached calls together never exceed it), and the wait plus the
        /// call are abandoned after [`MAX_DETACHED_TIME`].
        pub async fn bounded<F, T>(&self, call: F) -> Result<T, BackendError>
        where
            F: Future<Output = Result<T, BackendError>>,
        {
            let run = async {
                // The semaphore is never closed.
                let _permit = self.detached.acquire().await;
                call.await
            };
            tokio::time::timeout(MAX_DETACHED_TIME, run)
                .await
                .unwrap_or_else(|_| {
                    Err(BackendError::Protocol(
                        "redis cluster batch call abandoned after 10 s".to_owned(),
                    ))
                })
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

#[cfg(all(test, feature = "cluster"))]
mod tests {
    use super::cluster::{PARTITIONS, partition, slot};

    #[test]
    fn slots_follow_redis_hash_tags() {
        // Values of `CLUSTER KEYSLOT` (the cluster tests compare with a
        // live server too).
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"bar"), 5_061);
        assert_eq!(slot(b"{foo}:anything"), 12_182);
        assert_eq!(slot(b"x{foo}y{bar}"), 12_182, "the first tag counts");
        assert_eq!(slot(b"{}foo"), slot(b"{}foo"), "an empty tag hashes all");
        assert_ne!(slot(b"{}foo"), slot(b""));
        assert_eq!(slot(b"{foo"), slot(b"{foo"));
        assert_eq!(partition(&[b"foo"]), 12_182 / 256);
        assert_eq!(partition(&[b"f", b"o", b"o"]), 12_182 / 256);
        assert!((0..=255u8).all(|b| partition(&[&[b]]) < PARTITIONS));
    }
}
