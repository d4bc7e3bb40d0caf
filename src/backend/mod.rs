//! Where counters live: the [`Backend`] trait and its two implementations.
//!
//! - [`RedisBackend`]: shared by every instance of the application, one
//!   atomic Lua script call per decision.
//! - [`MemoryBackend`]: in-process, the same algorithms and outcomes; the
//!   embedded default when no Redis is configured.
//!
//! Besides deciding ([`Backend::check`]), both backends give back what an
//! admitted request took ([`Backend::refund`], with the decision's
//! [`Ticket`]), count costs known only afterwards, into debt if need be
//! ([`Backend::charge`]), and answer the administration calls behind
//! [`Admin`](crate::Admin): [`Backend::peek`] (read a client's quotas,
//! consuming nothing) and [`Backend::reset`] (forget a client's counts).

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;

use crate::decision::{Decision, Ticket};
use crate::error::BackendError;
use crate::key::Key;
use crate::policy::Policy;

mod memory;
mod redis;

pub use self::memory::{MemoryBackend, MemoryBackendBuilder};
#[cfg(feature = "serde")]
pub(crate) use self::redis::check_prefix;
// For `config::RedisConfig`, which shows its URLs.
#[cfg(feature = "serde")]
pub(crate) use self::redis::redact_url;
pub use self::redis::{RedisBackend, RedisBackendBuilder};
#[cfg(all(feature = "serde", feature = "tls"))]
pub(crate) use self::redis::{check_ca, check_client_cert, check_client_key};

/// The future returned by [`Backend::check`] and [`Backend::peek`].
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>;

/// The future returned by [`Backend::reset`].
pub type ResetFuture = Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send>>;

/// The future returned by [`Backend::refund`].
pub type RefundFuture = Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send>>;

/// The future returned by [`Backend::charge`].
pub type ChargeFuture = Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send>>;

/// Stores counters and makes decisions.
///
/// `check` must be atomic per (policy, key): either every quota of the policy
/// admits `cost` units and all are consumed, or the request is denied and
/// nothing is consumed. The returned future must not borrow `self` or the
/// arguments (copy what it needs), so that the layer can bound it with a deadline.
///
/// `peek` and `reset` serve administration ([`Admin`](crate::Admin)), never
/// the request path. They have default implementations that fail with
/// [`BackendError::Unsupported`], so a custom backend only needs `check`;
/// implement them to make [`Admin::peek`](crate::Admin::peek) and
/// [`Admin::reset`](crate::Admin::reset) work with it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a rate-limit backend",
    label = "expected a `Backend`",
    note = "use `RedisBackend::new(url)?` (it returns a `Result`: mind the `?`), \
            `RedisBackend::builder(url)...build()?`, or `MemoryBackend::new()`"
)]
pub trait Backend: Send + Sync + 'static {
    /// Checks and consumes `cost` units of every quota of `policy` for `key`.
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture;

    /// Decides at once, when this backend can without waiting (an
    /// in-process backend): `Some` of the result [`check`](Backend::check)
    /// would give, and the layer skips the boxed future, the deadline timer
    /// and the task wake-up. Default `None`: the layer calls `check`.
    ///
    /// [`MemoryBackend`] implements it, and so does every `Arc` of a backend
    /// that does; implement it in a custom in-process backend to get the
    /// same fast path.
    fn check_now(
        &self,
        policy: &Policy,
        key: &Key,
        cost: u64,
    ) -> Option<Result<Decision, BackendError>> {
        let _ = (policy, key, cost);
        None
    }

    /// What kind of backend this is, as the `backend` label of the layer's
    /// metrics and the `backend` field of its decision spans: `"memory"`,
    /// `"redis"` or `"redis_cluster"` for the crate's backends, `"custom"`
    /// unless a custom backend says otherwise.
    fn metrics_label(&self) -> &'static str {
        "custom"
    }

    // Failure isolation: partitions.

    /// How many parts, failing independently, this backend's keys fall into
    /// (at least 1; default 1: the backend works or fails as a whole).
    ///
    /// The layer's circuit breaker keeps one circuit per partition, so while
    /// one part fails (a Redis Cluster master is down) the keys of the other
    /// parts are still limited. [`RedisBackend`] on a Redis Cluster has 64
    /// partitions, groups of 256 consecutive hash slots (a group straddling
    /// two masters' slot ranges fails with either); on a single node, one.
    fn partitions(&self) -> usize {
        1
    }

    /// The partition (below [`partitions`](Backend::partitions); larger
    /// values wrap around) that decides `policy`'s counts for `key`: the
    /// breaker circuit a decision counts against. Called for every backend
    /// decision, so keep it cheap (a hash). Default 0.
    fn partition(&self, policy: &Policy, key: &Key) -> usize {
        let _ = (policy, key);
        0
    }

    /// The backend's last error, if its latest calls failed: named in the
    /// log line of a decision that timed out, whose own error is only
    /// "deadline exceeded" (the connection attempt behind it may have
    /// failed with `WRONGPASS` or an untrusted certificate). `None` by
    /// default.
    fn last_error(&self) -> Option<String> {
        None
    }

    // The fleet: instances sharing the counts.

    /// How many application instances share this backend's counts, as last
    /// seen (counting this one); `None` (the default) when unknown or when
    /// the counts are not shared: no division.
    ///
    /// [`FailureMode::Local`](crate::FailureMode::Local) divides each quota
    /// by this number while the backend is down, so that the fleet, each
    /// instance deciding alone, admits about the policy's limit rather than
    /// N times it. Called for every such local decision: keep it cheap (an
    /// atomic read), and keep answering the last count seen while the
    /// backend is unreachable.
    ///
    /// [`RedisBackend`] counts the instances once a policy with
    /// `FailureMode::Local` has been checked: each backend (and its clones)
    /// is one instance, announced about once a second under the key
    /// `<prefix>:{instances}` and forgotten 5 s after its last
    /// announcement. [`MemoryBackend`] answers `None`: its counts are its
    /// own.
    fn instances(&self) -> Option<NonZeroU32> {
        None
    }

    // Administration: peek and reset.

    /// Reads every quota of `policy` for `key` without consuming, dropping
    /// or writing anything.
    ///
    /// The decision's statuses are what a check of cost 0 would report
    /// (remaining, reset); it is denied if a request of cost 1 would be
    /// denied now, with that request's denying quota and retry-after. The
    /// default implementation fails with [`BackendError::Unsupported`].
    fn peek(&self, policy: &Policy, key: &Key) -> CheckFuture {
        let _ = (policy, key);
        unsupported("peek")
    }

    /// Forgets every count of `policy` for `key`: the client's full quota is
    /// back at once. The default implementation fails with
    /// [`BackendError::Unsupported`].
    fn reset(&self, policy: &Policy, key: &Key) -> ResetFuture {
        let _ = (policy, key);
        unsupported("reset")
    }

    // Refunds: what an admitted request took, given back.

    /// Gives back `cost` units (at most [`Ticket::cost`], what the request
    /// was admitted for) of the request whose admission `ticket` comes from
    /// ([`Decision::ticket`]), in every quota of `policy` for `key`: the
    /// policy and key of that check. Atomic per (policy, key), as a check
    /// is; on [`RedisBackend`], one script call on Redis' clock, not
    /// batched.
    ///
    /// What each algorithm gives back (never more than the request took,
    /// never below zero):
    ///
    /// - [`SlidingLog`](crate::Algorithm::SlidingLog): the request's own
    ///   entry leaves the log (holds `cost` fewer units, for a partial
    ///   refund) if it is still in the window; a refund after the entry
    ///   has left the window changes nothing. Exactly as if the request
    ///   had never been admitted (had cost less).
    /// - [`SlidingWindow`](crate::Algorithm::SlidingWindow): `cost` units
    ///   leave the count of the fixed window the request was counted in if
    ///   that is the current window (the count the estimate adds whole) or
    ///   the previous one (the count it weighs); an older window counts no
    ///   more, and nothing changes. Exact: the counts become those of a
    ///   history without the request. (On Redis the window is found from
    ///   the check's reported reset and the time since its reply: exact
    ///   unless the replies took half a window.)
    /// - [`Gcra`](crate::Algorithm::Gcra): the theoretical arrival time
    ///   moves back by `cost` emission intervals, never before now: the
    ///   bucket's level drops by `cost × T`, never below empty (so never
    ///   below the level just before the request). See `Tat::refund` in
    ///   `src/algorithm/gcra.rs` for how it compares with never having
    ///   admitted the request.
    ///
    /// Keys keep a TTL no longer than their state matters, and a key that
    /// counts nothing any more may be deleted. A ticket from another kind
    /// of backend (e.g. [`FailureMode::Local`](crate::FailureMode::Local)'s
    /// in-process limiter) gives back nothing here: this backend took
    /// nothing. A key holding a value of another type fails alone, with
    /// [`BackendError::Key`], as a check does.
    ///
    /// The default implementation fails with [`BackendError::Unsupported`].
    fn refund(&self, policy: &Policy, key: &Key, cost: u64, ticket: &Ticket) -> RefundFuture {
        let _ = (policy, key, cost, ticket);
        unsupported("refund")
    }

    // Charges: costs known after the response, counted whatever the quota.

    /// Counts `cost` more units in every quota of `policy` for `key`,
    /// unconditionally: no admission check, so a charge may take the
    /// client past its limit, *into debt*. Later checks are then denied
    /// until the debt has drained, each with the exact retry-after a check
    /// reports (when the request would fit, if nothing else were counted).
    /// For costs known only after the work is done (tokens a response
    /// reports, a job's duration). Atomic per (policy, key), as a check
    /// is; on [`RedisBackend`], one script call on Redis' clock, not
    /// batched. A cost of 0 changes nothing.
    ///
    /// What each algorithm counts:
    ///
    /// - [`Gcra`](crate::Algorithm::Gcra): the theoretical arrival time
    ///   becomes `max(TAT, now) + cost × T` (`T = window / limit`): the
    ///   debt drains at the quota's rate, and a request of cost `c` fits
    ///   again once `TAT - now + c × T <= limit × T`.
    /// - [`SlidingWindow`](crate::Algorithm::SlidingWindow): the current
    ///   fixed window's count grows by `cost`. The estimate then drains as
    ///   the window slides on: through the next fixed window, the charged
    ///   window's count weighs less and less, and nothing of it is left by
    ///   that window's end (at most two windows after the charge).
    /// - [`SlidingLog`](crate::Algorithm::SlidingLog): one entry of weight
    ///   `cost` at now (never before the newest entry). It leaves the
    ///   window whole, one window later: a log's debt drains **all at
    ///   once** after the window, not gradually (and holds one entry per
    ///   charge, however costly, as an admission does).
    ///
    /// The debt is bounded: one charge counts at most 100 × the limit in
    /// a quota (a larger cost counts that much), and GCRA's and the
    /// counter's state stop at 100 windows' worth of debt, so every stored
    /// number stays exact.
    ///
    /// Keys keep a TTL long enough to cover the debt (until nothing counts
    /// any more), as after a check. A key holding a value of another type
    /// fails alone, with [`BackendError::Key`], as a check does; nothing is
    /// written then.
    ///
    /// The default implementation fails with [`BackendError::Unsupported`].
    fn charge(&self, policy: &Policy, key: &Key, cost: u64) -> ChargeFuture {
        let _ = (policy, key, cost);
        unsupported("charge")
    }
}

/// The future of an administration call a backend does not implement.
fn unsupported<T: Send + 'static>(
    operation: &'static str,
) -> Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send>> {
    Box::pin(std::future::ready(Err(BackendError::Unsupported {
        operation,
    })))
}

impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        (**self).check(policy, key, cost)
    }

    fn check_now(
        &self,
        policy: &Policy,
        key: &Key,
        cost: u64,
    ) -> Option<Result<Decision, BackendError>> {
        (**self).check_now(policy, key, cost)
    }

    fn peek(&self, policy: &Policy, key: &Key) -> CheckFuture {
        (**self).peek(policy, key)
    }

    fn reset(&self, policy: &Policy, key: &Key) -> ResetFuture {
        (**self).reset(policy, key)
    }

    fn refund(&self, policy: &Policy, key: &Key, cost: u64, ticket: &Ticket) -> RefundFuture {
        (**self).refund(policy, key, cost, ticket)
    }

    fn charge(&self, policy: &Policy, key: &Key, cost: u64) -> ChargeFuture {
        (**self).charge(policy, key, cost)
    }

    fn metrics_label(&self) -> &'static str {
        (**self).metrics_label()
    }

    fn partitions(&self) -> usize {
        (**self).partitions()
    }

    fn partition(&self, policy: &Policy, key: &Key) -> usize {
        (**self).partition(policy, key)
    }

    fn last_error(&self) -> Option<String> {
        (**self).last_error()
    }

    fn instances(&self) -> Option<NonZeroU32> {
        (**self).instances()
    }
}
