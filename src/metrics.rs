//! What the layer reports about its decisions: metrics (feature `metrics`)
//! and one tracing span per decision.
//!
//! # Metrics
//!
//! With the `metrics` feature the layer records through the
//! [`metrics`](https://docs.rs/metrics) facade, so any recorder works (a Prometheus exporter, StatsD, ...);
//! install it before building the layer to get the metrics' descriptions
//! too. Without the feature nothing is recorded and nothing is paid for.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `ratelimit_decisions_total` | counter | `policy`, `outcome` | every limited request, once |
//! | `ratelimit_blocked_cache_hits_total` | counter | `policy` | denials answered from the blocked-client cache |
//! | `ratelimit_backend_duration_seconds` | histogram | `backend` | backend calls that ended (decided, failed or timed out) |
//! | `ratelimit_breaker_open` | gauge | `backend` | how many of the backend's partitions have their circuit breaker open: 1 while the breaker is open, else 0, for a single-node backend |
//! | `ratelimit_adjustments_total` | counter | `policy`, `kind`, `outcome` | adjustments after the response: `kind` is `refund` (a request an inner layer refused, or [`Policy::refund_when`](crate::Policy::refund_when)) or `charge` (the cost a response reported, [`Policy::charge_from_header`](crate::Policy::charge_from_header)); `outcome` is `ok` (the backend gave back or counted), `failed` (it failed or took too long) or `dropped` (too many in flight, or no Tokio runtime) |
//!
//! `outcome` is one of:
//!
//! - `allowed`: the backend admitted the request;
//! - `denied`: refused — by the backend, by the blocked-client cache (those
//!   are also counted in `ratelimit_blocked_cache_hits_total`), or before
//!   any backend call because the request has no key under
//!   [`MissingKey::Deny`](crate::MissingKey::Deny) (403) or costs more than
//!   the policy's [max cost](crate::Policy::max_cost) (413): every request
//!   the layer refuses for what the request is, rather than for the
//!   backend's health, is a denial;
//! - `failed_open` / `failed_closed`: the backend could not decide (error,
//!   deadline, open breaker) and [`FailureMode::Open`](crate::FailureMode::Open)
//!   let the request through / [`FailureMode::Closed`](crate::FailureMode::Closed)
//!   refused it (503);
//! - `local_allowed` / `local_denied`: the backend could not decide and the
//!   in-process limiter of [`FailureMode::Local`](crate::FailureMode::Local) did;
//! - `shadow_denied`: a policy in [shadow mode](crate::Policy::shadow) would
//!   have refused the request (any of the refusals above) and let it through;
//! - `allow_listed`: the client is on the policy's
//!   [allow-list](crate::Policy::allow): let through, no backend call;
//! - `deny_listed`: the client is on the policy's
//!   [deny-list](crate::Policy::deny): refused (403), no backend call.
//!
//! A policy with [tiers](crate::Policy::tier) counts each tier's decisions
//! under the tier's own name (`api.pro`); allow- and deny-listed requests,
//! decided before the tier, under the policy's.
//!
//! Requests no policy limits (exempt routes, no default policy) are not
//! counted, nor are requests dropped while waiting for the backend (the
//! client went away: no decision was made). `backend` is [`Backend::metrics_label`](crate::Backend::metrics_label):
//! `redis`, `redis_cluster`, `memory` (or what a custom backend says). The
//! breaker gauge is set to 0 on the layer's first backend call and on every
//! transition; each layer has its own breaker, so with several layers on one
//! backend the gauge shows the latest transition of any of them. A Redis
//! Cluster backend has one breaker circuit per group of hash slots
//! ([`Backend::partitions`](crate::Backend::partitions)): there the gauge
//! counts the groups whose circuit is open (a dead master opens those of the
//! groups it owns), so alert on `> 0`.
//!
//! # Tracing
//!
//! Each decision of a limited request is a `DEBUG` span named `rate_limit`
//! with the fields `policy`, `backend`, `key_hash`, `outcome` (as above)
//! and `backend_us` (the backend call's duration in microseconds, when one
//! was made). The backend call runs inside it, and a `TRACE` event closes
//! each decision. `DEBUG`, not `INFO`: one span per request is too much for
//! a production log or trace exporter, but it is there when you debug.
//!
//! Client keys are IP addresses and API keys: the crate never logs them.
//! `key_hash` is the first 8 hex digits of a SipHash of the key keyed with
//! 128 random bits drawn once per process (std's `RandomState`), enough to
//! follow one client through one instance's log. Without the secret the hash
//! cannot be recomputed, so it cannot be reversed by trying every IPv4
//! address (an unkeyed hash of an IP could, in seconds); the flip side is
//! that hashes differ between instances and restarts.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
#[cfg(feature = "metrics")]
use std::time::Duration;

use crate::decision::Verdict;
use crate::key::Key;

/// Counter of decisions, labelled `policy` and `outcome`.
pub const DECISIONS_TOTAL: &str = "ratelimit_decisions_total";
/// Counter of denials answered from the blocked-client cache, labelled `policy`.
pub const BLOCKED_CACHE_HITS_TOTAL: &str = "ratelimit_blocked_cache_hits_total";
/// Counter of decisions that failed for their client's key alone (a value of
/// the wrong type, an admission refused past Redis' `maxmemory`), labelled
/// `policy`: the failure mode applied to them, the circuit breaker did not
/// count them.
pub const KEY_FAULTS_TOTAL: &str = "ratelimit_key_faults_total";
/// Histogram of backend call durations in seconds, labelled `backend`.
pub const BACKEND_DURATION_SECONDS: &str = "ratelimit_backend_duration_seconds";
/// Gauge, labelled `backend`: how many of the backend's partitions have their
/// circuit breaker open (a single-node backend: 1 while open, else 0).
pub const BREAKER_OPEN: &str = "ratelimit_breaker_open";
/// Counter of adjustments after the response, labelled `policy`, `kind`
/// (`refund`, `charge`) and `outcome` (`ok`, `failed`, `dropped`).
pub const ADJUSTMENTS_TOTAL: &str = "ratelimit_adjustments_total";

/// How a verdict was reached: with the verdict, enough to name its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The backend decided.
    Backend,
    /// The blocked-client cache repeated a backend denial.
    BlockedCache,
    /// Refused before any backend call (no key, cost too high).
    Refused,
    /// Decided by the policy's allow- or deny-list.
    Listed,
    /// The backend could not decide: the failure mode did.
    Failure,
}

/// The `outcome` label of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecisionOutcome {
    Allowed,
    Denied,
    FailedOpen,
    FailedClosed,
    LocalAllowed,
    LocalDenied,
    ShadowDenied,
    AllowListed,
    DenyListed,
}

impl DecisionOutcome {
    /// Every outcome, in the order of their discriminants.
    #[cfg(any(feature = "metrics", test))]
    const ALL: [Self; 9] = [
        Self::Allowed,
        Self::Denied,
        Self::FailedOpen,
        Self::FailedClosed,
        Self::LocalAllowed,
        Self::LocalDenied,
        Self::ShadowDenied,
        Self::AllowListed,
        Self::DenyListed,
    ];

    /// The outcome of an enforced `verdict` reached from `source`.
    pub(crate) fn of(verdict: &Verdict, source: Source) -> Self {
        match (source, verdict) {
            (Source::Failure, Verdict::AllowUnlimited) => Self::FailedOpen,
            (Source::Failure, Verdict::Allow(..)) => Self::LocalAllowed,
            (Source::Failure, Verdict::Deny(_, _, Some(_))) => Self::LocalDenied,
            (Source::Failure, Verdict::Deny(_, _, None)) => Self::FailedClosed,
            (Source::Listed, Verdict::Deny(..)) => Self::DenyListed,
            (Source::Listed, Verdict::Allow(..) | Verdict::AllowUnlimited) => Self::AllowListed,
            (_, Verdict::Allow(..) | Verdict::AllowUnlimited) => Self::Allowed,
            (_, Verdict::Deny(..)) => Self::Denied,
        }
    }

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::FailedOpen => "failed_open",
            Self::FailedClosed => "failed_closed",
            Self::LocalAllowed => "local_allowed",
            Self::LocalDenied => "local_denied",
            Self::ShadowDenied => "shadow_denied",
            Self::AllowListed => "allow_listed",
            Self::DenyListed => "deny_listed",
        }
    }
}

/// A client key as the logs show it: a short keyed hash (see the module
/// docs). Computed only when a span or event that shows it is enabled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyHash(u32);

impl KeyHash {
    pub(crate) fn of(key: &Key) -> Self {
        static SECRET: OnceLock<RandomState> = OnceLock::new();
        let hash = SECRET.get_or_init(RandomState::new).hash_one(key.as_str());
        // The high half: 8 hex digits.
        Self((hash >> 32) as u32)
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(feature = "metrics")]
mod recording {
    use ::metrics::{Key, Label, Level, Metadata, Recorder, with_recorder};

    use super::*;

    static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

    /// Gives the current recorder the metrics' descriptions.
    fn describe() {
        ::metrics::describe_counter!(
            DECISIONS_TOTAL,
            "Rate-limit decisions by policy and outcome"
        );
        ::metrics::describe_counter!(
            KEY_FAULTS_TOTAL,
            "Rate-limit decisions that failed for their client's key alone (wrong type, maxmemory)"
        );
        ::metrics::describe_counter!(
            BLOCKED_CACHE_HITS_TOTAL,
            "Rate-limit denials answered from the blocked-client cache, without a backend call"
        );
        ::metrics::describe_histogram!(
            BACKEND_DURATION_SECONDS,
            ::metrics::Unit::Seconds,
            "Duration of rate-limit backend calls"
        );
        ::metrics::describe_counter!(
            ADJUSTMENTS_TOTAL,
            "Rate-limit adjustments after the response (refunds, charges) by policy, kind and outcome"
        );
        ::metrics::describe_gauge!(
            BREAKER_OPEN,
            "Partitions of the rate-limit backend whose circuit breaker is open (single node: 1 while open, else 0)"
        );
    }

    /// One policy's metric keys, made once when the layer is built: recording
    /// a decision allocates nothing and asks whichever recorder is current.
    pub(crate) struct PolicyMetrics {
        decisions: [Key; DecisionOutcome::ALL.len()],
        blocked_hits: Key,
        key_faults: Key,
    }

    impl PolicyMetrics {
        pub(crate) fn new(policy: &str) -> Self {
            describe();
            let label = || Label::new("policy", policy.to_owned());
            Self {
                decisions: DecisionOutcome::ALL.map(|outcome| {
                    Key::from_parts(
                        DECISIONS_TOTAL,
                        vec![
                            label(),
                            Label::from_static_parts("outcome", outcome.as_str()),
                        ],
                    )
                }),
                blocked_hits: Key::from_parts(BLOCKED_CACHE_HITS_TOTAL, vec![label()]),
                key_faults: Key::from_parts(KEY_FAULTS_TOTAL, vec![label()]),
            }
        }

        /// A decision failed for its key alone.
        pub(crate) fn key_fault(&self) {
            with_recorder(|recorder: &dyn Recorder| {
                recorder
                    .register_counter(&self.key_faults, &METADATA)
                    .increment(1);
            });
        }

        pub(crate) fn count(&self, outcome: DecisionOutcome, source: Source) {
            with_recorder(|recorder: &dyn Recorder| {
                recorder
                    .register_counter(&self.decisions[outcome as usize], &METADATA)
                    .increment(1);
                if source == Source::BlockedCache {
                    recorder
                        .register_counter(&self.blocked_hits, &METADATA)
                        .increment(1);
                }
            });
        }
    }

    struct BackendKeys {
        duration: Key,
        breaker_open: Key,
    }

    /// One breaker's backend metrics. The keys are made on the first backend
    /// call, which names the backend (the breaker is built before it is).
    pub(crate) struct BackendMetrics {
        keys: OnceLock<BackendKeys>,
    }

    impl BackendMetrics {
        pub(crate) const fn new() -> Self {
            Self {
                keys: OnceLock::new(),
            }
        }

        /// Called before every backend call; the first one makes the keys
        /// and sets the breaker gauge to 0.
        pub(crate) fn start(&self, backend: &'static str) {
            self.keys.get_or_init(|| {
                let label = || vec![Label::from_static_parts("backend", backend)];
                let keys = BackendKeys {
                    duration: Key::from_parts(BACKEND_DURATION_SECONDS, label()),
                    breaker_open: Key::from_parts(BREAKER_OPEN, label()),
                };
                set_gauge(&keys.breaker_open, 0);
                keys
            });
        }

        /// A backend call ended after `took`.
        pub(crate) fn call_took(&self, took: Duration) {
            if let Some(keys) = self.keys.get() {
                with_recorder(|recorder: &dyn Recorder| {
                    recorder
                        .register_histogram(&keys.duration, &METADATA)
                        .record(took.as_secs_f64());
                });
            }
        }

        /// A breaker circuit opened or closed: `open` circuits are open now.
        pub(crate) fn breaker(&self, open: usize) {
            if let Some(keys) = self.keys.get() {
                set_gauge(&keys.breaker_open, open);
            }
        }

        /// Whether backend calls are timed for the histogram.
        pub(crate) const TIMED: bool = true;
    }

    fn set_gauge(key: &Key, open: usize) {
        // Exact: there are far fewer partitions than 2^53.
        #[allow(clippy::cast_precision_loss)]
        let open = open as f64;
        with_recorder(|recorder: &dyn Recorder| {
            recorder.register_gauge(key, &METADATA).set(open);
        });
    }
}

#[cfg(not(feature = "metrics"))]
mod recording {
    use std::time::Duration;

    use super::{DecisionOutcome, Source};

    /// Without the `metrics` feature: nothing, at no cost.
    pub(crate) struct PolicyMetrics;

    impl PolicyMetrics {
        #[inline(always)]
        pub(crate) fn new(_policy: &str) -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn count(&self, _outcome: DecisionOutcome, _source: Source) {}

        #[inline(always)]
        pub(crate) fn key_fault(&self) {}
    }

    /// Without the `metrics` feature: nothing, at no cost.
    pub(crate) struct BackendMetrics;

    impl BackendMetrics {
        #[inline(always)]
        pub(crate) const fn new() -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn start(&self, _backend: &'static str) {}

        #[inline(always)]
        pub(crate) fn call_took(&self, _took: Duration) {}

        #[inline(always)]
        pub(crate) fn breaker(&self, _open: usize) {}

        /// Whether backend calls are timed for the histogram.
        pub(crate) const TIMED: bool = false;
    }
}

pub(crate) use self::recording::{BackendMetrics, PolicyMetrics};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::decision::{Decision, PolicyId, QuotaStatus, RejectReason};

    #[test]
    fn every_verdict_and_source_has_its_outcome() {
        let id = PolicyId(0);
        let status = QuotaStatus {
            limit: 1,
            window: Duration::from_secs(1),
            remaining: 0,
            reset_after: Duration::from_secs(1),
        };
        let allow = || Verdict::Allow(id, Decision::allowed(vec![status]));
        let limited = || {
            Verdict::Deny(
                id,
                RejectReason::Limited,
                Some(Decision::denied(vec![status], 0, Duration::from_secs(1))),
            )
        };
        let of = DecisionOutcome::of;
        use DecisionOutcome::*;
        assert_eq!(of(&allow(), Source::Backend), Allowed);
        assert_eq!(of(&limited(), Source::Backend), Denied);
        assert_eq!(of(&limited(), Source::BlockedCache), Denied);
        let missing = Verdict::Deny(id, RejectReason::MissingKey, None);
        assert_eq!(of(&missing, Source::Refused), Denied);
        let costly = RejectReason::CostTooHigh {
            cost: 9,
            max_cost: 1,
        };
        assert_eq!(
            of(&Verdict::Deny(id, costly, None), Source::Refused),
            Denied
        );
        assert_eq!(of(&Verdict::AllowUnlimited, Source::Failure), FailedOpen);
        let closed = Verdict::Deny(id, RejectReason::Unavailable, None);
        assert_eq!(of(&closed, Source::Failure), FailedClosed);
        assert_eq!(of(&allow(), Source::Failure), LocalAllowed);
        assert_eq!(of(&limited(), Source::Failure), LocalDenied);
        let listed = Verdict::Deny(id, RejectReason::DenyListed, None);
        assert_eq!(of(&listed, Source::Listed), DenyListed);
        assert_eq!(of(&Verdict::AllowUnlimited, Source::Listed), AllowListed);
        let labels: Vec<&str> = DecisionOutcome::ALL.map(DecisionOutcome::as_str).to_vec();
        assert_eq!(
            labels,
            [
                "allowed",
                "denied",
                "failed_open",
                "failed_closed",
                "local_allowed",
                "local_denied",
                "shadow_denied",
                "allow_listed",
                "deny_listed"
            ]
        );
    }

    #[test]
    fn key_hashes_are_short_stable_and_keyed() {
        let ip = Key::new("203.0.113.77");
        let shown = KeyHash::of(&ip).to_string();
        assert_eq!(shown.len(), 8);
        assert!(shown.bytes().all(|b| b.is_ascii_hexdigit()), "{shown}");
        assert_eq!(KeyHash::of(&ip), KeyHash::of(&Key::new("203.0.113.77")));
        assert_ne!(KeyHash::of(&ip), KeyHash::of(&Key::new("203.0.113.78")));
        // Keyed: not the unkeyed SipHash (std's `DefaultHasher::new()`, zero keys).
        let unkeyed = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default()
            .hash_one(ip.as_str());
        assert_ne!(shown, format!("{:08x}", unkeyed >> 32));
    }
}
