//! The running limiter: the whole decision pipeline, in one place.
//!
//! ```text
//! parts ─▶ route ─▶ key ─▶ lists ─▶ tier ─▶ cost ─▶ blocked cache ─▶ breaker + deadline ─▶ backend
//!            │        │      │                 │           │                  │
//!            ▼        ▼      ▼                 ▼           ▼                  ▼
//!          Pass    Deny  Allow/Deny          Deny        Deny          Outcome ─▶ finish
//!                                                               │
//!                     every Verdict leaves through `settle` ◀───┘
//! ```
//!
//! [`Limiter::begin`] runs everything that needs no I/O and either settles
//! the request at once or hands back the one guarded backend call;
//! [`Limiter::finish`] turns that call's [`Outcome`] into a [`Verdict`]
//! (remembering denials, applying the policy's failure mode, logging).
//! Every verdict, immediate or not, passes [`Limiter::settle`]: the one
//! place to observe or adjust outcomes. There shadow mode turns a policy's
//! denials into allows, the decision is counted (feature `metrics`), and its
//! tracing span gets its outcome (see [`crate::metrics`]). The response
//! future only moves between states; the service only calls `begin`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use http::request::Parts;
use tracing::{Span, field};

use crate::access::Access;
use crate::adjust::Adjustments;
use crate::backend::{Backend, MemoryBackend};
use crate::blocked::BlockedClients;
use crate::breaker::{Breaker, Call, Called, Checked, Guarded, Outcome};
use crate::decision::{Decision, PolicyId, RejectReason, Verdict};
use crate::error::{BackendError, ConfigError, PolicyError};
use crate::failure::FailureLog;
use crate::fleet::Share;
use crate::headers::{HeaderStyle, PolicyHeaders, set_retry_after};
use crate::key::Key;
use crate::metrics::{DecisionOutcome, KeyHash, PolicyMetrics, Source};
use crate::policy::Policy;
use crate::quota::Quota;
use crate::response::{OnRejection, Rejection};
use crate::routes::{Action, RouteTable};

/// A policy as the limiter runs it: the configuration plus what is derived
/// from it once, at build time.
pub(crate) struct CompiledPolicy {
    pub(crate) policy: Policy,
    /// The `RateLimit-Policy` value and friends, rendered once.
    pub(crate) headers: PolicyHeaders,
    /// The largest cost one request may have.
    pub(crate) max_cost: u64,
    /// Clients of this policy denied moments ago.
    pub(crate) blocked: BlockedClients,
    /// Its decision counters (nothing without the `metrics` feature).
    pub(crate) metrics: PolicyMetrics,
    /// The compiled policy of each of its tiers, in `Policy::tier_names`
    /// order (empty for a policy without tiers and for a tier).
    pub(crate) tiers: Vec<PolicyId>,
    /// Its share of the fleet's limit, for `FailureMode::Local`.
    pub(crate) share: Share,
    /// Whether its tier selector picks tiers at all (policies with tiers).
    pub(crate) tier_watch: TierWatch,
}

/// Watches a policy with tiers for a selector that never picks one: after
/// [`TierWatch::REQUESTS`] requests without a tier and none with one, one
/// `WARN` naming the likely cause ([`Policy::no_tier_hint`]; typically an
/// app's auth middleware placed inside the limiter, so that `tier_fn` never
/// sees what it sets). One relaxed atomic add per request until a tier is
/// seen or the warning is logged, then one load.
#[derive(Debug, Default)]
pub(crate) struct TierWatch {
    /// Requests without a tier so far; [`TierWatch::DONE`] once a tier was
    /// picked or the warning logged.
    untiered: std::sync::atomic::AtomicU32,
}

impl TierWatch {
    /// How many requests without a tier make the warning.
    pub(crate) const REQUESTS: u32 = 1_000;
    const DONE: u32 = u32::MAX;

    /// A request of `policy` got tier `tier`.
    fn saw(&self, policy: &Policy, tier: Option<usize>) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.untiered.load(Relaxed) == Self::DONE {
            return;
        }
        if tier.is_some() {
            self.untiered.store(Self::DONE, Relaxed);
            return;
        }
        if self.untiered.fetch_add(1, Relaxed) + 1 != Self::REQUESTS {
            return;
        }
        self.untiered.store(Self::DONE, Relaxed);
        if let Some(hint) = policy.no_tier_hint() {
            tracing::warn!(
                policy = policy.name(),
                requests = Self::REQUESTS,
                "rate limit policy with tiers picked no tier for its first requests: {hint}"
            );
        }
    }
}

impl CompiledPolicy {
    fn new(policy: Policy, blocked_capacity: usize, blocked_max_age: Duration) -> Self {
        Self {
            headers: PolicyHeaders::new(&policy),
            max_cost: policy.effective_max_cost().unwrap_or(Quota::MAX_LIMIT),
            blocked: BlockedClients::new(blocked_capacity, blocked_max_age),
            metrics: PolicyMetrics::new(policy.name()),
            tiers: Vec::new(),
            share: Share::default(),
            tier_watch: TierWatch::default(),
            policy,
        }
    }
}

/// Compiles a layer's distinct, validated policies, keeping their indices
/// (the route table's): each policy's tiers are appended after them as
/// policies of their own (`<policy>.<tier>`), so each tier has its own
/// headers, blocked-client cache, metrics and Redis keys, and the backend
/// sees only plain policies. The blocked-client capacity is shared out
/// between all of them.
///
/// # Errors
///
/// [`PolicyError::DuplicateName`] if a tier's name is another policy's.
pub(crate) fn compile(
    policies: Vec<Policy>,
    blocked_capacity: usize,
    blocked_max_age: Duration,
) -> Result<Vec<CompiledPolicy>, ConfigError> {
    let tiers: Vec<Vec<Policy>> = policies.iter().map(Policy::tier_policies).collect();
    let count = policies.len() + tiers.iter().map(Vec::len).sum::<usize>();
    let capacity = blocked_capacity.div_ceil(count.max(1));
    let mut compiled: Vec<CompiledPolicy> = policies
        .into_iter()
        .map(|p| CompiledPolicy::new(p, capacity, blocked_max_age))
        .collect();
    for (base, tiers) in tiers.into_iter().enumerate() {
        for tier in tiers {
            if compiled.iter().any(|c| c.policy.name() == tier.name()) {
                return Err(tier_named_as_policy(
                    tier.name(),
                    compiled[base].policy.name(),
                ));
            }
            let id = PolicyId(compiled.len());
            compiled.push(CompiledPolicy::new(tier, capacity, blocked_max_age));
            compiled[base].tiers.push(id);
        }
    }
    Ok(compiled)
}

/// The error for the tier `tier` (`<policy>.<tier>`) of policy `base`, when
/// another policy has that name.
pub(crate) fn tier_named_as_policy(tier: &str, base: &str) -> ConfigError {
    PolicyError::DuplicateName {
        name: tier.to_owned(),
        first: format!("a policy named `{tier}`"),
        second: format!("a tier of policy `{base}`"),
    }
    .into()
}

/// Everything a layer needs at request time, shared by all its clones.
pub(crate) struct Limiter {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) routes: RouteTable,
    pub(crate) policies: Vec<CompiledPolicy>,
    pub(crate) deadline: Duration,
    pub(crate) style: HeaderStyle,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) failures: FailureLog,
    /// Decides for policies with `FailureMode::Local` while the backend is down.
    pub(crate) local: MemoryBackend,
    /// Refunds after the response (stacked layers).
    pub(crate) adjust: Adjustments,
}

/// How a request starts.
pub(crate) enum Start {
    /// Not limited: call the inner service, untouched.
    Pass,
    /// Settled without a backend call.
    Settled(Verdict),
    /// Waiting for the backend: poll the call, then [`Limiter::finish`].
    Checking(Pending, Guarded),
}

/// A request waiting for the backend.
pub(crate) struct Pending {
    policy: PolicyId,
    key: Key,
    cost: u64,
    /// The decision's span.
    span: Span,
}

/// Leaves the client key out: it is an IP address or an API key.
impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("policy", &self.policy)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// How a verdict was reached: what [`Limiter::settle`] needs besides it.
struct Reached<'a> {
    policy: PolicyId,
    source: Source,
    span: &'a Span,
    /// The backend call's duration, if one was made and timed.
    took: Option<Duration>,
}

impl<'a> Reached<'a> {
    fn at_once(policy: PolicyId, source: Source, span: &'a Span) -> Self {
        Self {
            policy,
            source,
            span,
            took: None,
        }
    }
}

impl Limiter {
    pub(crate) fn policy(&self, id: PolicyId) -> &CompiledPolicy {
        &self.policies[id.0]
    }

    /// Everything before the backend: route, key, cost, blocked cache; then
    /// the backend call under the breaker and the deadline.
    pub(crate) fn begin(&self, parts: &Parts) -> Start {
        let id = match self.routes.select(&parts.method, parts.uri.path()) {
            Some(Action::Limit(ix)) => PolicyId(ix),
            Some(Action::Exempt) | None => return Start::Pass,
        };
        let compiled = self.policy(id);
        let policy = &compiled.policy;
        // DEBUG: a span per request is too much at INFO (see crate::metrics).
        // The key's hash is recorded only if the span is enabled.
        let span = tracing::debug_span!(
            "rate_limit",
            policy = policy.name(),
            backend = self.backend.metrics_label(),
            key_hash = field::Empty,
            tier = field::Empty,
            outcome = field::Empty,
            backend_us = field::Empty,
        );
        let Some(key) = policy.key_for(parts) else {
            let verdict = Verdict::Deny(id, RejectReason::MissingKey, None);
            let reached = Reached::at_once(id, Source::Refused, &span);
            return Start::Settled(self.settle(verdict, reached));
        };
        if !span.is_disabled() {
            span.record("key_hash", field::display(KeyHash::of(&key)));
        }
        // Allow- and deny-lists: decided here, without a backend call, for
        // the policy as a whole (before its tier).
        match policy.access().classify(policy.extractor(), parts) {
            Access::Unlisted => {}
            Access::Denied => {
                let verdict = Verdict::Deny(id, RejectReason::DenyListed, None);
                let reached = Reached::at_once(id, Source::Listed, &span);
                return Start::Settled(self.settle(verdict, reached));
            }
            Access::Allowed => {
                let reached = Reached::at_once(id, Source::Listed, &span);
                return Start::Settled(self.settle(Verdict::AllowUnlimited, reached));
            }
        }
        // The client's tier, if the policy has tiers: from here on the
        // request belongs to the tier's compiled policy.
        let tier = policy.tier_for(parts, &key);
        if !compiled.tiers.is_empty() {
            compiled.tier_watch.saw(policy, tier);
        }
        let (id, compiled) = match tier {
            Some(tier) => {
                let tier_id = compiled.tiers[tier];
                if !span.is_disabled() {
                    span.record("tier", policy.tier_names().nth(tier).unwrap_or_default());
                }
                (tier_id, self.policy(tier_id))
            }
            None => (id, compiled),
        };
        let policy = &compiled.policy;
        // A cost above the max cost can never be admitted; refusing it here
        // keeps one request from making the backend work in proportion to its
        // cost (the sliding log stores one entry per unit). The max cost is at
        // most `Quota::MAX_LIMIT`, which keeps the arithmetic far from overflow
        // whatever a cost function returns.
        let cost = policy.cost_for(parts);
        if cost > compiled.max_cost {
            let reason = RejectReason::CostTooHigh {
                cost,
                max_cost: compiled.max_cost,
            };
            let verdict = Verdict::Deny(id, reason, None);
            let reached = Reached::at_once(id, Source::Refused, &span);
            return Start::Settled(self.settle(verdict, reached));
        }
        // A client denied moments ago is denied again without a backend call.
        // (Shadow policies never fill the cache: see `finish`.)
        if !policy.is_shadow()
            && let Some(decision) = compiled.blocked.get(&key, cost)
        {
            let verdict = Verdict::Deny(id, RejectReason::Limited, Some(decision));
            let reached = Reached::at_once(id, Source::BlockedCache, &span);
            return Start::Settled(self.settle(verdict, reached));
        }
        let partition = self.backend.partition(policy, &key);
        let label = self.backend.metrics_label();
        let call = self
            .breaker
            .start(self.deadline, label, &span, partition, || {
                match self.backend.check_now(policy, &key, cost) {
                    Some(Ok(decision)) => Checked::Now(decision),
                    Some(Err(error)) => Checked::Later(Box::pin(std::future::ready(Err(error)))),
                    None => Checked::Later(self.backend.check(policy, &key, cost)),
                }
            });
        let pending = Pending {
            policy: id,
            key,
            cost,
            span,
        };
        match call {
            // Decided at once (`Backend::check_now`): no state to keep.
            Call::Ready(called) => Start::Settled(self.finish(pending, called)),
            Call::Waiting(call) => Start::Checking(pending, call),
        }
    }

    /// The verdict for a backend call's outcome.
    pub(crate) fn finish(&self, pending: Pending, called: Called) -> Verdict {
        let Pending {
            policy: id,
            key,
            cost,
            span,
        } = pending;
        let Called { outcome, took } = called;
        let _in_span = span.enter();
        let compiled = self.policy(id);
        let (verdict, source) = match outcome {
            Outcome::Decided(decision) if decision.is_allowed() => {
                // The client goes with the decision, for a refund or a
                // charge after the response (moved: no copy).
                let decision = if compiled.policy.charges() {
                    decision.keep_client(key)
                } else {
                    decision.with_client(key)
                };
                (Verdict::Allow(id, decision), Source::Backend)
            }
            Outcome::Decided(decision) => {
                // Only the backend's denials are remembered: a local
                // fallback's must end when the backend returns. A shadow
                // policy's are not either: its clients keep asking the
                // backend, so every would-be denial is decided and counted.
                if !compiled.policy.is_shadow() {
                    compiled.blocked.insert(&key, cost, &decision);
                }
                let verdict = Verdict::Deny(id, RejectReason::Limited, Some(decision));
                (verdict, Source::Backend)
            }
            Outcome::Skipped => (self.on_failure(compiled, id, &key, cost), Source::Failure),
            Outcome::TimedOut(_) | Outcome::Failed(_) => {
                self.log_failure(compiled, &outcome, &key);
                (self.on_failure(compiled, id, &key, cost), Source::Failure)
            }
        };
        let reached = Reached {
            policy: id,
            source,
            span: &span,
            took,
        };
        self.settle(verdict, reached)
    }

    /// The policy's failure mode, when the backend could not decide.
    /// `Local` decides with this instance's share of the policy (see
    /// [`crate::fleet`]).
    fn on_failure(&self, compiled: &CompiledPolicy, id: PolicyId, key: &Key, cost: u64) -> Verdict {
        let policy = &compiled.policy;
        policy.failure_mode_kind().verdict(id, || {
            let instances = self.backend.instances();
            compiled.share.with(policy, instances, |share| {
                self.local.decide_now(share, key, cost)
            })
        })
    }

    /// Logs a failed decision: at `warn` at most once a second per layer
    /// (with the number of failures since), else at `debug`.
    ///
    /// A failure of the client's key alone ([`BackendError::Key`]) is
    /// counted (`ratelimit_key_faults_total`) and logged the same way with
    /// the key's hash, never the key.
    fn log_failure(&self, compiled: &CompiledPolicy, outcome: &Outcome, key: &Key) {
        let policy = compiled.policy.name();
        let mode = compiled.policy.failure_mode_kind();
        // A fault of the client's key alone is counted, and its line names
        // the key's hash (never the key).
        let key = matches!(outcome, Outcome::Failed(BackendError::Key(_))).then(|| {
            compiled.metrics.key_fault();
            KeyHash::of(key)
        });
        // A timeout names the backend's last error, if any, as its likely
        // cause (a connection attempt refused, `WRONGPASS`, an untrusted
        // certificate...).
        let timed_out;
        let error: &dyn std::fmt::Display = match outcome {
            Outcome::Failed(error) => error,
            Outcome::TimedOut(deadline) => {
                timed_out = DeadlineExceeded(*deadline, self.backend.last_error());
                &timed_out
            }
            Outcome::Decided(_) | Outcome::Skipped => return,
        };
        match self.failures.warning() {
            Some(suppressed) => tracing::warn!(
                policy,
                key = ?key,
                %error,
                ?mode,
                suppressed,
                "rate limiter backend failed; applying the failure mode"
            ),
            None => tracing::debug!(
                policy,
                key = ?key,
                %error,
                ?mode,
                "rate limiter backend failed; applying the failure mode"
            ),
        }
    }

    /// Every verdict of a limited request leaves the pipeline through here:
    /// the one place to observe or adjust outcomes. A shadow policy's denial
    /// becomes an allow (with the denial's rate-limit headers, if the backend
    /// or the local limiter decided); then the outcome is counted and
    /// recorded in the decision's span.
    fn settle(&self, verdict: Verdict, reached: Reached<'_>) -> Verdict {
        let compiled = self.policy(reached.policy);
        let (verdict, outcome) = match verdict {
            Verdict::Deny(id, _, decision) if compiled.policy.is_shadow() => {
                let allowed = match decision {
                    Some(decision) => Verdict::Allow(id, decision),
                    None => Verdict::AllowUnlimited,
                };
                (allowed, DecisionOutcome::ShadowDenied)
            }
            verdict => {
                let outcome = DecisionOutcome::of(&verdict, reached.source);
                (verdict, outcome)
            }
        };
        compiled.metrics.count(outcome, reached.source);
        let span = reached.span;
        if !span.is_disabled() {
            span.record("outcome", outcome.as_str());
            if let Some(took) = reached.took {
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                span.record("backend_us", us);
            }
            tracing::trace!(parent: span, "rate limit decision");
        }
        verdict
    }

    /// The response for a denied request: the rejection's status and body,
    /// `Retry-After` when waiting helps, and the rate-limit headers when the
    /// backend decided.
    pub(crate) fn reject<B, R: OnRejection<B>>(
        &self,
        on_rejection: &R,
        parts: &Parts,
        id: PolicyId,
        reason: RejectReason,
        decision: Option<&Decision>,
    ) -> Response<B> {
        let compiled = self.policy(id);
        let rejection = Rejection {
            request: parts,
            policy: &compiled.policy,
            reason,
            decision,
        };
        let mut response = on_rejection.response(&rejection);
        Adjustments::mark_refused(&mut response);
        if let Some(after) = rejection.retry_after() {
            set_retry_after(response.headers_mut(), after);
        }
        if let Some(decision) = decision {
            self.decorate(&mut response, id, decision);
        }
        response
    }

    /// Adds the rate-limit headers of `decision` to a response.
    pub(crate) fn decorate<B>(
        &self,
        response: &mut Response<B>,
        id: PolicyId,
        decision: &Decision,
    ) {
        self.policy(id)
            .headers
            .apply(response.headers_mut(), self.style, decision);
    }
}

/// How a missed deadline reads in the log, with the backend's last error.
struct DeadlineExceeded(Duration, Option<String>);

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend deadline of {:?} exceeded", self.0)?;
        match &self.1 {
            Some(cause) => write!(f, " (last backend error: {cause})"),
            None => Ok(()),
        }
    }
}
