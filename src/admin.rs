//! [`Admin`]: a layer's policies, reachable without a request — check,
//! refund, charge, peek at and reset a client's quotas from jobs, websocket
//! handlers, queue consumers or an operator's tool.

use std::fmt;
use std::sync::Arc;

use crate::decision::{Decision, Ticket};
use crate::error::BackendError;
use crate::key::Key;
use crate::limiter::{CompiledPolicy, Limiter};
use crate::policy::Policy;

/// The administration handle of a [`RateLimitLayer`](crate::RateLimitLayer),
/// from [`RateLimitLayer::admin`](crate::RateLimitLayer::admin).
///
/// It reaches the layer's backend and policies (looked up by name) without
/// an HTTP request: limit work that is not a request (a websocket message, a
/// queued job), look at a client's quotas, or give a client its full quota
/// back. Cloning is cheap (one `Arc`); every clone and the layer share the
/// same state.
///
/// The key is the client's [`Key`] as the policy's key extractor makes it:
/// for the default [`PeerIp`](crate::key::PeerIp),
/// [`Key::from_ip(ip, 64)`](Key::from_ip) (an IPv4 address as written, an
/// IPv6 one grouped by /64).
///
/// Calls go straight to the backend: no circuit breaker, no deadline (wrap
/// them in `tokio::time::timeout` if you need one) and no failure mode — a
/// backend failure is returned as [`AdminError::Backend`].
///
/// ```
/// use tower_redis_ratelimit::{Key, MemoryBackend, Policy, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = RateLimitLayer::builder()
///     .backend(MemoryBackend::new()) // or a RedisBackend, shared by every instance
///     .default_policy(Policy::default_api()) // "api": 100 per minute
///     .route("/auth/login", Policy::auth()) // "auth": 5 per minute
///     .build()?;
/// let admin = layer.admin();
/// let client = Key::new("203.0.113.9");
///
/// // A websocket message costs one unit of the client's "api" quota.
/// let decision = admin.check("api", &client, 1).await?;
/// assert!(decision.is_allowed());
///
/// // The work failed: give its unit back (the decision's ticket says
/// // which request it was).
/// let ticket = decision.ticket().expect("an admission has a ticket");
/// admin.refund("api", &client, 1, &ticket).await?;
/// assert_eq!(admin.peek("api", &client).await?.quotas()[0].remaining, 100);
/// admin.check("api", &client, 1).await?;
///
/// // A job's cost is known when it ends: charged whatever the quota (into
/// // debt if need be); a charge of 150 against 100 per minute refuses the
/// // client until the debt has drained.
/// let job = Key::new("198.51.100.4");
/// admin.charge("api", &job, 150).await?;
/// let refused = admin.peek("api", &job).await?;
/// assert!(!refused.is_allowed());
/// assert!(refused.retry_after().is_some());
/// // Past the limit, even a check of cost 0 is refused.
/// assert!(!admin.check("api", &job, 0).await?.is_allowed());
///
/// // Looking consumes nothing.
/// for _ in 0..3 {
///     assert_eq!(admin.peek("api", &client).await?.quotas()[0].remaining, 99);
/// }
///
/// // A reset gives the whole quota back.
/// admin.reset("api", &client).await?;
/// assert_eq!(admin.peek("api", &client).await?.quotas()[0].remaining, 100);
///
/// assert!(admin.peek("nope", &client).await.is_err()); // no such policy
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Admin {
    limiter: Arc<Limiter>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.policies().map(Policy::name).collect();
        f.debug_struct("Admin")
            .field("policies", &names)
            .finish_non_exhaustive()
    }
}

/// Why an [`Admin`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The layer has no policy of this name.
    #[error("the layer has no policy named {name:?} (its policies: {})", known.join(", "))]
    UnknownPolicy {
        /// The name that was asked for.
        name: String,
        /// The names of the layer's policies.
        known: Vec<String>,
    },
    /// A check costs more than the policy's
    /// [max cost](crate::Policy::max_cost): the layer would refuse such a
    /// request without asking the backend, and so does [`Admin::check`].
    #[error("cost {cost} is above the max cost of policy `{policy}` ({max_cost})")]
    CostTooHigh {
        /// The policy name.
        policy: String,
        /// The cost that was asked for.
        cost: u64,
        /// The largest cost the policy admits for one request.
        max_cost: u64,
    },
    /// The backend failed, or does not support the call
    /// ([`BackendError::Unsupported`]).
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
}

impl Admin {
    pub(crate) fn new(limiter: Arc<Limiter>) -> Self {
        Self { limiter }
    }

    /// The layer's policies, each once.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.limiter
            .policies
            .iter()
            .map(|compiled| &compiled.policy)
    }

    /// The layer's policy named `name`, if any.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.find(name).ok().map(|compiled| &compiled.policy)
    }

    fn find(&self, name: &str) -> Result<&CompiledPolicy, AdminError> {
        self.limiter
            .policies
            .iter()
            .find(|compiled| compiled.policy.name() == name)
            .ok_or_else(|| AdminError::UnknownPolicy {
                name: name.to_owned(),
                known: self.policies().map(|p| p.name().to_owned()).collect(),
            })
    }

    /// Checks and, if every quota admits it, consumes `cost` units of policy
    /// `policy` for `key`: the decision a request of that cost would get from
    /// the backend. A cost above the policy's max cost is refused
    /// ([`AdminError::CostTooHigh`]).
    ///
    /// The layer's local blocked-client cache is neither read nor written.
    pub async fn check(&self, policy: &str, key: &Key, cost: u64) -> Result<Decision, AdminError> {
        let compiled = self.find(policy)?;
        if cost > compiled.max_cost {
            return Err(AdminError::CostTooHigh {
                policy: policy.to_owned(),
                cost,
                max_cost: compiled.max_cost,
            });
        }
        Ok(self
            .limiter
            .backend
            .check(&compiled.policy, key, cost)
            .await?)
    }

    /// Gives back `cost` units (at most [`Ticket::cost`]) of the request
    /// whose admission `ticket` comes from ([`Decision::ticket`] of a
    /// [`check`](Self::check) of the same policy and key), in the backend:
    /// for work that ends outside a request (a websocket session, a job)
    /// and turns out not to count, or to cost less. What each algorithm
    /// gives back: [`Backend::refund`](crate::Backend::refund) (never more
    /// than the request took; a sliding log entry that has left the window,
    /// or a counter's window that no longer counts, gives back nothing).
    ///
    /// The client's entry in this instance's blocked-client cache is
    /// dropped too, so that its next request asks the backend, where the
    /// units are back. Refund each admission once.
    pub async fn refund(
        &self,
        policy: &str,
        key: &Key,
        cost: u64,
        ticket: &Ticket,
    ) -> Result<(), AdminError> {
        let compiled = self.find(policy)?;
        self.limiter
            .backend
            .refund(&compiled.policy, key, cost, ticket)
            .await?;
        // After the backend, as for a reset.
        compiled.blocked.remove(key);
        Ok(())
    }

    /// Counts `cost` more units of policy `policy` for `key`, in the
    /// backend, unconditionally: no admission check and no max cost, so
    /// the client may go past its limit, into debt, and its later requests
    /// are refused until the debt has drained, each with an exact
    /// `Retry-After`. For costs known only once work that ends outside a
    /// request is done (the tokens a job used, a websocket session's
    /// length): admit the work with a [`check`](Self::check) of cost 0
    /// (refused only while the client is past its limit, in debt) or a
    /// [`peek`](Self::peek), then charge what it cost. What each
    /// algorithm counts, and how its debt drains (gradually for GCRA and
    /// the counter, all at once after the window for the sliding log):
    /// [`Backend::charge`](crate::Backend::charge). A cost of 0 changes
    /// nothing.
    ///
    /// This instance's blocked-client cache is left as it is (a charge
    /// only adds to the counts; the client's next request asks the
    /// backend unless the cache already blocks it).
    pub async fn charge(&self, policy: &str, key: &Key, cost: u64) -> Result<(), AdminError> {
        let compiled = self.find(policy)?;
        self.limiter
            .backend
            .charge(&compiled.policy, key, cost)
            .await?;
        Ok(())
    }

    /// Reads every quota of policy `policy` for `key`, consuming nothing and
    /// writing nothing (see [`Backend::peek`](crate::Backend::peek)): each
    /// quota's remaining units and reset as a check of cost 0 would report
    /// them; denied if a request of cost 1 would be denied now, with its
    /// retry-after.
    pub async fn peek(&self, policy: &str, key: &Key) -> Result<Decision, AdminError> {
        let compiled = self.find(policy)?;
        Ok(self.limiter.backend.peek(&compiled.policy, key).await?)
    }

    /// Forgets every count of policy `policy` for `key`, in the backend (for
    /// every instance sharing it) and on this instance: the client's entry in
    /// the layer's blocked-client cache and in the
    /// [`FailureMode::Local`](crate::FailureMode::Local) fallback. The
    /// client's next request is admitted with its full quota.
    ///
    /// Other instances may still answer the client from their own
    /// blocked-client cache, but for no longer than their
    /// [max age](crate::RateLimitLayerBuilder::blocked_cache_max_age) (1 s by
    /// default): then they ask the backend, which has forgotten the counts.
    /// A policy's [tiers](crate::Policy::tier) are policies of their own
    /// (`api.pro`): reset each the client may be in.
    pub async fn reset(&self, policy: &str, key: &Key) -> Result<(), AdminError> {
        let compiled = self.find(policy)?;
        self.limiter.backend.reset(&compiled.policy, key).await?;
        // After the backend: cleared before it, a denial arriving in between
        // would block the client again.
        compiled.blocked.remove(key);
        self.limiter.local.reset_now(&compiled.policy, key);
        Ok(())
    }
}
