//! Where counters live: the [`Backend`] trait and its two implementations.
//!
//! - [`RedisBackend`]: shared by every instance of the application, one
//!   atomic Lua script call per decision.
//! - [`MemoryBackend`]: in-process, the same algorithms and outcomes; the
//!   embedded default when no Redis is configured.
//!
//! [`redact_url`] shows a Redis URL without its password.

use std::future::Future;
use std::pin::Pin;

use crate::decision::Decision;
use crate::error::BackendError;
use crate::key::Key;
use crate::policy::Policy;

mod memory;
mod redis;

pub use self::memory::MemoryBackend;
pub use self::redis::{RedisBackend, RedisBackendBuilder, redact_url};

/// The future returned by [`Backend::check`].
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>;

/// Stores counters and makes decisions.
///
/// `check` must be atomic per (policy, key): either every quota of the policy
/// admits `cost` units and all are consumed, or the request is denied and
/// nothing is consumed. The returned future must not borrow `self` or the
/// arguments (copy what it needs), so that the layer can bound it with a deadline.
pub trait Backend: Send + Sync + 'static {
    /// Checks and consumes `cost` units of every quota of `policy` for `key`.
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture;

    /// What kind of backend this is, as the `backend` label of the layer's
    /// metrics and the `backend` field of its decision spans: `"memory"`,
    /// `"redis"` or `"redis_cluster"` for the crate's backends, `"custom"`
    /// unless a custom backend says otherwise.
    fn metrics_label(&self) -> &'static str {
        "custom"
    }
}

impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        (**self).check(policy, key, cost)
    }

    fn metrics_label(&self) -> &'static str {
        (**self).metrics_label()
    }
}
