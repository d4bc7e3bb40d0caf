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
//! Batching (`super::batch`) keeps this: a lane's lone call is
//! detached, and its batch calls run in the lane's own spawned task,
//! each holding one of the same permits and abandoned after the same
//! time ([`Cluster::bounded`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::RedisError;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use tokio::sync::{Semaphore, watch};

use super::redact::redact_url;
use crate::backend::CheckFuture;
use crate::decision::Decision;
use crate::error::BackendError;

/// How many decisions may run detached at once, per backend; beyond,
/// calls run in the caller's task (and are cancelled with it).
const MAX_DETACHED: usize = 1024;

/// The longest a detached decision may run: redis-rs' retries and
/// response timeout end it much sooner in practice.
const MAX_DETACHED_TIME: Duration = Duration::from_secs(10);

/// The retry settings of the cluster client: up to 3 retries, waiting
/// 10 ms to 80 ms (redis-rs' defaults are 16 retries, waiting 1.28 s or
/// more: far beyond any deadline, and long detached calls).
fn retries(builder: ClusterClientBuilder) -> ClusterClientBuilder {
    builder
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(100)
        .retry_wait_formula(10, 2)
}

/// A Redis Cluster: its client, and its connection once made.
pub(super) struct Cluster {
    /// The nodes as given, passwords redacted: only shown by `Debug`.
    pub nodes: Vec<String>,
    client: ClusterClient,
    ready: watch::Sender<Option<ClusterConnection>>,
    connecting: Arc<AtomicBool>,
    /// Permits for detached decisions.
    detached: Arc<Semaphore>,
}

impl Cluster {
    /// A Redis Cluster known by one or more of its nodes (`urls`, never
    /// empty); connects nothing.
    pub fn new(
        urls: &[String],
        connect_timeout: Duration,
        response_timeout: Duration,
        #[cfg(feature = "tls")] certs: Option<redis::TlsCertificates>,
    ) -> Result<Self, RedisError> {
        let builder = retries(
            ClusterClient::builder(urls.to_vec())
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout),
        );
        #[cfg(feature = "tls")]
        let builder = match certs {
            Some(certs) => builder.certs(certs),
            None => builder,
        };
        let client = builder.build()?;
        let nodes = urls.iter().map(|u| redact_url(u).into_owned());
        Ok(Self {
            nodes: nodes.collect(),
            client,
            ready: watch::Sender::new(None),
            connecting: Arc::new(AtomicBool::new(false)),
            detached: Arc::new(Semaphore::new(MAX_DETACHED)),
        })
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
