//! The fleet heartbeat: how many application instances share the counts
//! ([`Backend::instances`](crate::Backend::instances)), for
//! [`FailureMode::Local`](crate::FailureMode::Local)'s share of a limit.
//!
//! Each [`RedisBackend`](super::RedisBackend) (with its clones) is one
//! instance, known by a random id. Once a policy with `FailureMode::Local`
//! is checked, a background task announces it at once and then every
//! [`EVERY`]: one call of `fleet.lua` on the key `<prefix>:{instances}` (a
//! sorted set of instance ids scored by Redis' own clock, its members older
//! than [`STALE`] dropped, its TTL [`STALE`]), which returns the number of
//! live instances. The set holds only live instances, one short member
//! each; the key has one hash tag, so it is a single-slot key on a Redis
//! Cluster; and the announcement is refused past `maxmemory` like any
//! limiter write (the count seen before is then kept).
//!
//! The task is started lazily, inside the runtime, by the first check that
//! needs it (never at build time: startup never waits for Redis). It holds
//! the backend's transport weakly between announcements, gives each at most
//! [`CALL_TIMEOUT`], and is aborted when the backend is dropped (a task
//! that ended with its runtime is started again by the next check). While
//! Redis is unreachable the announcements fail and the last count stays:
//! the count an outage is shared out by.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use redis::{Script, ScriptInvocation};
use tokio::task::AbortHandle;

use super::keyspace::fleet_key;
use super::transport::{Request, Transport};
use crate::error::BackendError;

/// How often an instance announces itself.
pub(super) const EVERY: Duration = Duration::from_secs(1);
/// How long an instance counts after its latest announcement: a few missed
/// announcements (a slow call, a busy runtime) do not drop a live instance.
pub(super) const STALE: Duration = Duration::from_secs(5);
/// The longest one announcement may take (connecting included).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fleet.lua")));

/// One backend's place in its fleet.
pub(super) struct Fleet {
    /// This instance's id: 16 random hex digits.
    id: String,
    /// The latest count of live instances; 0 until one is known (shared
    /// with the heartbeat task).
    count: Arc<AtomicU32>,
    /// Whether the heartbeat task runs (cleared when it ends, e.g. with its
    /// runtime, so that the next check starts another).
    started: Arc<AtomicBool>,
    /// The heartbeat task, aborted on drop.
    task: Mutex<Option<AbortHandle>>,
}

impl Fleet {
    pub(super) fn new() -> Self {
        let seed = (std::process::id(), SystemTime::now());
        Self {
            id: format!("{:016x}", RandomState::new().hash_one(seed)),
            count: Arc::new(AtomicU32::new(0)),
            started: Arc::new(AtomicBool::new(false)),
            task: Mutex::new(None),
        }
    }

    /// The latest count of live instances, if one is known.
    pub(super) fn instances(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.count.load(Ordering::Relaxed))
    }

    /// Starts the heartbeat, announcing the instance under `prefix`
    /// through `transport`, unless it runs already; does nothing outside a
    /// tokio runtime (the next check tries again). Cheap once started: one
    /// atomic read.
    pub(super) fn start(&self, transport: &Arc<Transport>, prefix: &str) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(fleet_key(prefix))
            .arg(&self.id)
            .arg(u64::try_from(STALE.as_millis()).unwrap_or(u64::MAX));
        let running = Running(Arc::clone(&self.started));
        let beat = heartbeat(
            Arc::downgrade(transport),
            invocation,
            Arc::clone(&self.count),
            running,
        );
        let task = runtime.spawn(beat);
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
    }
}

/// Takes an announcement's reply `{live instances, announced}` into
/// `count`: the count if the announcement was stored; a refused one
/// (`maxmemory`) says nothing reliable about this instance, and changes
/// nothing.
fn record(count: &AtomicU32, reply: &[i64]) -> Result<Option<NonZeroU32>, BackendError> {
    let bad = || BackendError::Protocol(format!("fleet heartbeat: {reply:?}"));
    let &[live, announced] = reply else {
        return Err(bad());
    };
    match announced {
        0 => Ok(None),
        1 => {
            if live < 1 {
                return Err(bad());
            }
            let live = NonZeroU32::new(u32::try_from(live).unwrap_or(u32::MAX)).ok_or_else(bad)?;
            count.store(live.get(), Ordering::Relaxed);
            Ok(Some(live))
        }
        _ => Err(bad()),
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.take() {
            task.abort();
        }
    }
}

/// Held by the heartbeat task: clears the `started` flag when the task
/// ends, however it ends (its runtime shut down, the backend dropped).
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Announces the instance (`invocation`) now and every [`EVERY`], until
/// the backend is dropped (its [`Fleet`] aborts the task) or its transport
/// is gone. Holds the transport only during an announcement.
async fn heartbeat(
    transport: Weak<Transport>,
    invocation: ScriptInvocation<'static>,
    count: Arc<AtomicU32>,
    _running: Running,
) {
    loop {
        let Some(link) = transport.upgrade() else {
            return;
        };
        let call = link.send_quietly::<Vec<i64>>(Request::Script(&invocation));
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(reply)) => record(&count, &reply),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(BackendError::Protocol(format!(
                "no reply within {CALL_TIMEOUT:?}"
            ))),
        };
        // Failures are the decisions' to report (and the breaker's); the
        // last count stays.
        match outcome {
            Ok(Some(count)) => tracing::trace!(count, "fleet heartbeat"),
            Ok(None) => tracing::debug!("fleet heartbeat refused (maxmemory); count kept"),
            Err(error) => tracing::debug!(%error, "fleet heartbeat failed; count kept"),
        }
        drop(link);
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_is_an_instance_of_its_own() {
        let (a, b) = (Fleet::new(), Fleet::new());
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 16);
        assert_eq!(a.instances(), None, "unknown until announced");
    }

    #[test]
    fn a_stored_announcement_sets_the_count_a_refused_one_keeps_it() {
        let fleet = Fleet::new();
        let count = |n: u32| NonZeroU32::new(n);
        let record = |reply: &[i64]| record(&fleet.count, reply);
        assert_eq!(record(&[3, 1]).unwrap(), count(3));
        assert_eq!(fleet.instances(), count(3));
        // Refused past maxmemory: the reply's count leaves this instance
        // out, and others may have been refused too.
        assert_eq!(record(&[1, 0]).unwrap(), None);
        assert_eq!(fleet.instances(), count(3));
        assert_eq!(record(&[2, 1]).unwrap(), count(2), "one left");
        assert_eq!(fleet.instances(), count(2));
        // Nonsense changes nothing.
        for bad in [&[][..], &[2], &[0, 1], &[-1, 1], &[4, 2], &[4, 1, 0]] {
            assert!(record(bad).is_err(), "{bad:?}");
            assert_eq!(fleet.instances(), count(2), "{bad:?}");
        }
        assert_eq!(record(&[i64::MAX, 1]).unwrap(), count(u32::MAX));
    }

    /// Started inside a runtime only, once; started again in the next
    /// runtime if the first one is gone (its task with it).
    #[test]
    fn the_heartbeat_runs_once_per_backend_and_outlives_no_runtime() {
        // Nothing listens on port 1: the announcements fail at once.
        let backend = super::super::RedisBackend::new("redis://127.0.0.1:1").unwrap();
        let inner = &backend.inner;
        let running = || inner.fleet.started.load(Ordering::Acquire);
        let start = || inner.fleet.start(&inner.transport, &inner.prefix);
        start();
        assert!(!running(), "no runtime, no task");
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = runtime();
        first.block_on(async {
            start();
            start();
            tokio::task::yield_now().await;
        });
        assert!(running());
        assert_eq!(first.metrics().num_alive_tasks(), 1, "one heartbeat");
        drop(first);
        assert!(!running(), "gone with its runtime");
        let second = runtime();
        second.block_on(async { start() });
        assert!(running());
        drop(backend);
        second.block_on(tokio::task::yield_now());
        assert_eq!(
            second.metrics().num_alive_tasks(),
            0,
            "gone with the backend"
        );
    }
}
