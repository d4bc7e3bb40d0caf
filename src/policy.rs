//! Policies: what is limited, how much, by which algorithm and for whom.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::request::Parts;
use http::{HeaderMap, HeaderName, StatusCode};

use crate::access::{AccessList, AccessLists};
use crate::error::{ConfigError, PolicyError};
pub use crate::failure::FailureMode;
use crate::key::{Key, KeyExtractor, PeerIp};

pub use crate::quota::Quota;

pub use crate::algorithm::Algorithm;

/// What to do with a request from which the key extractor gets no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Count the request in one bucket shared by every keyless request of the
    /// policy. Keyless requests stay limited, together.
    #[default]
    SharedBucket,
    /// Reject the request (HTTP 403, gRPC `PERMISSION_DENIED`) without asking the backend.
    Deny,
}

type CostFn = dyn Fn(&Parts) -> u64 + Send + Sync;

type TierFn = dyn Fn(&Parts, &Key) -> Option<String> + Send + Sync;

/// Whether an admitted request is refunded, from its response's head.
type RefundFn = dyn Fn(StatusCode, &HeaderMap) -> bool + Send + Sync;

/// How a request's tier is chosen (see [`Policy::tier`]).
#[derive(Clone)]
enum TierSelector {
    /// The value of a request header, e.g. `x-plan: pro`.
    Header(HeaderName),
    /// A fixed table from client key to tier name.
    Keys(Arc<std::collections::HashMap<Key, String>>),
    /// A function of the request head and the client key.
    Fn(Arc<TierFn>),
}

/// One tier of a policy: a name and its own quotas.
#[derive(Clone, Debug)]
struct Tier {
    name: Arc<str>,
    quotas: Vec<Quota>,
}

#[derive(Clone)]
enum Cost {
    Fixed(u64),
    PerRequest(Arc<CostFn>),
}

#[derive(Clone)]
struct PolicyInner {
    name: Arc<str>,
    quotas: Vec<Quota>,
    algorithm: Algorithm,
    key: Arc<dyn KeyExtractor>,
    cost: Cost,
    /// The largest cost of one request, if set.
    max_cost: Option<u64>,
    /// Whether a cost function's 0 is a free check (else it counts as 1).
    allow_zero_cost: bool,
    failure_mode: FailureMode,
    missing_key: MissingKey,
    /// Decide and count, but never deny (see [`Policy::shadow`]).
    shadow: bool,
    /// Set once a keyless request has been logged (logged once per policy).
    warned_missing_key: Arc<AtomicBool>,
    /// Clients never limited / always refused.
    access: AccessLists,
    /// Named alternative quotas (see [`Policy::tier`]).
    tiers: Vec<Tier>,
    tier_selector: Option<TierSelector>,
    /// Refunds an admitted request after its response (see
    /// [`Policy::refund_when`]).
    refund: Option<Arc<RefundFn>>,
    /// Charges an admitted request the integer value of this response
    /// header (see [`Policy::charge_from_header`]).
    charge_header: Option<HeaderName>,
}

/// A named rate-limit policy: one or more quotas, an algorithm, a key extractor,
/// a cost per request and a failure mode.
///
/// Cloning is cheap and the clone *is* the same policy: routes that share a clone
/// share each client's counters. The policy is checked when the layer is built.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_ratelimit::{Algorithm, FailureMode, Policy, Quota};
/// use tower_redis_ratelimit::key::Header;
///
/// // 10 per second AND 1000 per hour per API key, checked atomically.
/// let policy = Policy::new("partner-api")
///     .quota(Quota::per_second(10))
///     .quota(Quota::per_hour(1000))
///     .algorithm(Algorithm::SlidingWindow)
///     .key(Header::new("x-api-key"))
///     .failure_mode(FailureMode::Closed);
/// assert_eq!(policy.quotas().len(), 2);
/// ```
#[derive(Clone)]
pub struct Policy {
    inner: Arc<PolicyInner>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cost: &dyn fmt::Debug = match &self.inner.cost {
            Cost::Fixed(c) => c,
            Cost::PerRequest(_) => &"per-request",
        };
        f.debug_struct("Policy")
            .field("name", &self.inner.name)
            .field("quotas", &self.inner.quotas)
            .field("algorithm", &self.inner.algorithm)
            .field("cost", cost)
            .field("max_cost", &self.effective_max_cost())
            .field("allow_zero_cost", &self.inner.allow_zero_cost)
            .field("failure_mode", &self.inner.failure_mode)
            .field("missing_key", &self.inner.missing_key)
            .field("shadow", &self.inner.shadow)
            .field("allow", &self.inner.access.allow)
            .field("deny", &self.inner.access.deny)
            .field("tiers", &self.inner.tiers)
            .field("refund_when", &self.inner.refund.is_some())
            .field("charge_from_header", &self.inner.charge_header)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// The default [max cost](Self::max_cost) of an
    /// [`Algorithm::SlidingLog`] policy (or its smallest limit, if lower):
    /// the most units one request may cost.
    ///
    /// The sliding log stores one sorted-set member per admitted unit, so
    /// the Redis time of one admission grows with its cost (a few
    /// microseconds per unit: tens of milliseconds for a cost of 10 000),
    /// and Redis answers nobody else meanwhile: one costly request could
    /// push every other decision past the layer's deadline. 1 000 units
    /// keep one decision to a few milliseconds.
    pub const DEFAULT_MAX_LOG_COST: u64 = crate::quota::DEFAULT_MAX_LOG_COST;

    /// A policy with no quota yet (add at least one with [`Policy::quota`]),
    /// the sliding window counter, the peer IP as key, cost 1 and
    /// [`FailureMode::Open`].
    ///
    /// The name appears in `RateLimit-Policy` headers and in Redis keys: use
    /// 1–64 characters from `A-Z a-z 0-9 . _ -`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(PolicyInner {
                name: name.into().into(),
                quotas: Vec::new(),
                algorithm: Algorithm::default(),
                key: Arc::new(PeerIp::new()),
                cost: Cost::Fixed(1),
                max_cost: None,
                allow_zero_cost: false,
                failure_mode: FailureMode::default(),
                missing_key: MissingKey::default(),
                shadow: false,
                warned_missing_key: Arc::default(),
                access: AccessLists::default(),
                tiers: Vec::new(),
                tier_selector: None,
                refund: None,
                charge_header: None,
            }),
        }
    }

    /// The preset for ordinary API traffic: `"api"`, 100 requests per minute per
    /// client IP, approximate sliding window, failing open.
    pub fn default_api() -> Self {
        Self::new("api").quota(Quota::per_minute(100))
    }

    /// The preset for authentication endpoints: `"auth"`, 5 requests per minute
    /// per client IP, exact sliding log (brute force needs exactness), failing open.
    ///
    /// Consider `.failure_mode(FailureMode::Closed)` if an unlimited login endpoint
    /// during a Redis outage is worse for you than a refused one.
    pub fn auth() -> Self {
        Self::new("auth")
            .quota(Quota::per_minute(5))
            .algorithm(Algorithm::SlidingLog)
    }

    fn edit(&mut self) -> &mut PolicyInner {
        Arc::make_mut(&mut self.inner)
    }

    /// Adds a quota. All quotas of a policy are checked and consumed together,
    /// all-or-nothing, in one backend call.
    #[must_use]
    pub fn quota(mut self, quota: Quota) -> Self {
        self.edit().quotas.push(quota);
        self
    }

    /// Sets the counting algorithm.
    #[must_use]
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.edit().algorithm = algorithm;
        self
    }

    /// Sets how the client is identified (default: [`PeerIp`]).
    #[must_use]
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.edit().key = Arc::new(key);
        self
    }

    /// Sets a closure as the key extractor, like [`Policy::key`], with its
    /// argument type inferred: `.key_fn(|parts| ...)` compiles where
    /// `.key(|parts| ...)` needs `|parts: &http::request::Parts|`.
    #[must_use]
    pub fn key_fn<F>(self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<Key> + Send + Sync + 'static,
    {
        self.key(f)
    }

    /// Sets a fixed cost per request (default 1). Must be between 1 and the
    /// smallest limit of the policy, and not above its
    /// [max cost](Policy::max_cost).
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.edit().cost = Cost::Fixed(cost);
        self
    }

    /// Computes the cost of each request from its head (e.g. from a header or
    /// the method). A cost above a quota's limit is always denied. A cost
    /// above the policy's [max cost](Policy::max_cost) is rejected without
    /// asking the backend.
    ///
    /// A cost of 0 counts as 1, unless the policy
    /// [allows zero-cost checks](Policy::allow_zero_cost): a cost computed
    /// from what the client sends (`x-rows: 0`) must not make its requests
    /// free once its quota is spent.
    #[must_use]
    pub fn cost_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> u64 + Send + Sync + 'static,
    {
        self.edit().cost = Cost::PerRequest(Arc::new(f));
        self
    }

    /// Sets the largest cost one request may have, bounding the backend work
    /// one decision can cause.
    ///
    /// A request whose [per-request cost](Policy::cost_fn) is above it is
    /// rejected without asking the backend, with
    /// [`RejectReason::CostTooHigh`](crate::RejectReason::CostTooHigh)
    /// (HTTP 413, gRPC `INVALID_ARGUMENT`, no `Retry-After`): it can never be
    /// admitted. A [fixed cost](Policy::cost) above it is a configuration
    /// error.
    ///
    /// Defaults:
    ///
    /// - [`Algorithm::SlidingLog`]: [`DEFAULT_MAX_LOG_COST`](Self::DEFAULT_MAX_LOG_COST) (1 000), or the
    ///   smallest limit if lower. The log stores one entry per admitted unit,
    ///   so one admission costs Redis time proportional to its cost (tens of
    ///   milliseconds for 10 000), during which every other decision waits.
    ///   Raise it (up to the smallest limit) only if such pauses are
    ///   acceptable.
    /// - [`Algorithm::SlidingWindow`] and [`Algorithm::Gcra`]: the smallest
    ///   limit. Both do the same work whatever the cost, so the only bound
    ///   is that a costlier request could never be admitted: it is answered
    ///   at once, and never with a `Retry-After` that retrying would not
    ///   honour.
    ///
    /// Checked when the layer is built: it must be between 1 and the
    /// smallest limit of the policy.
    ///
    /// ```
    /// use tower_redis_ratelimit::{Algorithm, Policy, Quota};
    ///
    /// // Exports cost one unit per exported row (at least 1: a request is
    /// // never free, whatever the client sends); at most 500 rows at once.
    /// let policy = Policy::new("export")
    ///     .quota(Quota::per_hour(5_000))
    ///     .algorithm(Algorithm::SlidingLog)
    ///     .cost_fn(|parts| {
    ///         let rows: u64 = parts.headers.get("x-rows")
    ///             .and_then(|v| v.to_str().ok()?.parse().ok())
    ///             .unwrap_or(1);
    ///         rows.max(1)
    ///     })
    ///     .max_cost(500);
    /// assert_eq!(policy.effective_max_cost(), Some(500));
    /// # tower_redis_ratelimit::RateLimitLayer::builder().default_policy(policy).build().unwrap();
    /// ```
    #[must_use]
    pub fn max_cost(mut self, max: u64) -> Self {
        self.edit().max_cost = Some(max);
        self
    }

    /// Lets a [cost function](Policy::cost_fn) return 0 for a free check
    /// (default off: a cost function's 0 counts as 1).
    ///
    /// A request of cost 0 consumes nothing and is admitted even when the
    /// client's quota is spent: it only reports the client's state in the
    /// rate-limit headers. Allow it only when the cost function alone (not
    /// the client) decides which requests are free, e.g. from the method
    /// or the route; a cost read from a client's header or body would let
    /// that client switch its limit off.
    ///
    /// ```
    /// use tower_redis_ratelimit::{Policy, Quota};
    ///
    /// // `HEAD` asks how much is left without spending any of it.
    /// let quota = Policy::new("quota")
    ///     .quota(Quota::per_hour(1_000))
    ///     .cost_fn(|parts| if parts.method == http::Method::HEAD { 0 } else { 1 })
    ///     .allow_zero_cost();
    /// # tower_redis_ratelimit::RateLimitLayer::builder().default_policy(quota).build().unwrap();
    /// ```
    #[must_use]
    pub fn allow_zero_cost(mut self) -> Self {
        self.edit().allow_zero_cost = true;
        self
    }

    /// Sets what happens when the backend cannot decide.
    #[must_use]
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.edit().failure_mode = mode;
        self
    }

    /// Sets what happens to requests without a key.
    #[must_use]
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.edit().missing_key = missing;
        self
    }

    /// Shadow mode (default off): decide and count every request as usual,
    /// but deny none — to try a policy on live traffic before enforcing it.
    ///
    /// Every request the policy would have refused is let through to the
    /// inner service instead, and counted as `shadow_denied` in the
    /// `ratelimit_decisions_total` metric (feature `metrics`) and in the
    /// decision's tracing span, where an enforcing policy counts `denied`,
    /// `local_denied` or `failed_closed`:
    ///
    /// - a quota denial (by the backend, or by the in-process limiter of
    ///   [`FailureMode::Local`]) gets the rate-limit headers of the denial
    ///   (`RateLimit: "name";r=0;t=...`), so clients and dashboards see what
    ///   enforcement would say, but no `Retry-After`: the response is the
    ///   inner service's (a 200, typically), and `Retry-After` on a success
    ///   would tell well-behaved clients to back off for nothing;
    /// - a refusal without a decision — no client key under
    ///   [`MissingKey::Deny`], a cost above the [max cost](Policy::max_cost),
    ///   or [`FailureMode::Closed`] while the backend is down — is let
    ///   through without rate-limit headers.
    ///
    /// Shadow denials are not remembered in the layer's blocked-client cache:
    /// each request of a client over the limit still asks the backend, so the
    /// `shadow_denied` count is what enforcement would deny (an enforcing
    /// policy would answer some of those denials from the cache instead).
    /// The backend counts only admitted requests, as always, so a shadowed
    /// client is limited exactly as it would be the moment shadow mode is
    /// turned off.
    ///
    /// ```
    /// use tower_redis_ratelimit::{Policy, Quota};
    ///
    /// // Measure who would hit 10 per second before enforcing it.
    /// let trial = Policy::new("burst").quota(Quota::per_second(10)).shadow(true);
    /// # let _ = trial;
    /// ```
    #[must_use]
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.edit().shadow = shadow;
        self
    }

    /// Gives an admitted request's cost back after its response when
    /// `refund(status, headers)` says so: the cost is taken before the
    /// handler runs, as always (so concurrent requests are bounded by the
    /// limit on every instance), and refunded once the response head is
    /// known. Replaces an earlier [`refund_when`](Self::refund_when) or
    /// [`count_only_status`](Self::count_only_status).
    ///
    /// The refund ([`Backend::refund`](crate::Backend::refund): exact per
    /// algorithm as documented there) runs after the response is handed
    /// back, never delaying it, as the refund of a request an inner layer
    /// refused does (see
    /// [`RateLimitLayerBuilder::refund_refused_by_inner_layers`](crate::RateLimitLayerBuilder::refund_refused_by_inner_layers)).
    /// The response's rate-limit headers show the quota as decided, before
    /// the refund. Requests admitted by the
    /// [`FailureMode::Local`] fallback are not refunded; an error of the
    /// inner service (not a response) is not either.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_redis_ratelimit::{Policy, Quota};
    ///
    /// // Redirects cost nothing.
    /// let pages = Policy::new("pages")
    ///     .quota(Quota::per_minute(60))
    ///     .refund_when(|status, _headers| status.is_redirection());
    /// # let _ = pages;
    /// ```
    #[must_use]
    pub fn refund_when<F>(mut self, refund: F) -> Self
    where
        F: Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        self.edit().refund = Some(Arc::new(refund));
        self
    }

    /// Counts only the requests answered with one of `statuses`: every
    /// other admitted request is refunded after its response (see
    /// [`refund_when`](Self::refund_when), which this sets). For
    /// brute-force protection, count failures, not logins: `[401, 403]`
    /// (a successful login costs nothing; N failed attempts per window are
    /// allowed, and concurrent attempts are still bounded by the limit,
    /// since each is counted until its response).
    ///
    /// ```
    /// use tower_redis_ratelimit::{Algorithm, Policy, Quota};
    ///
    /// // 3 failed attempts per minute per client IP.
    /// let session = Policy::new("session")
    ///     .quota(Quota::per_minute(3))
    ///     .algorithm(Algorithm::SlidingLog)
    ///     .count_only_status([401, 403]);
    /// # let _ = session;
    /// ```
    #[must_use]
    pub fn count_only_status(self, statuses: impl IntoIterator<Item = u16>) -> Self {
        let counted: Vec<u16> = statuses.into_iter().collect();
        self.refund_when(move |status, _| !counted.contains(&status.as_u16()))
    }

    /// Charges each admitted request, after its response, the cost the
    /// response reports in header `name` (e.g. `x-tokens-used`, set by the
    /// handler): for costs known only once the work is done, such as the
    /// tokens a language model used. The value is a decimal integer (ASCII
    /// whitespace around it allowed); a missing, empty, negative or
    /// otherwise invalid value, or 0, charges nothing.
    ///
    /// Admission happens before the handler at cost 0: a request is
    /// refused only while the client is past its limit (in debt), not for
    /// what it may cost. The charge
    /// ([`Backend::charge`](crate::Backend::charge)) counts the reported
    /// cost unconditionally, so it may take the client into debt: its later
    /// requests are refused until the debt has drained, each with an exact
    /// `Retry-After` (how each algorithm's debt drains:
    /// [`Backend::charge`](crate::Backend::charge); the sliding log's drains
    /// all at once, a window after the charge). So concurrent requests are
    /// bounded by the budget plus the costs in flight. The cost and
    /// [max cost](Self::max_cost) set on the policy are not used for such
    /// requests; a charge counts at most 100 times a quota's limit.
    ///
    /// The charge runs after the response is handed back, never delaying
    /// it, bounded in number as refunds are, and is counted as `kind =
    /// "charge"` in `ratelimit_adjustments_total` (feature `metrics`). The
    /// response's rate-limit headers show the quota as decided, before the
    /// charge. Not charged: requests admitted by the
    /// [`FailureMode::Local`] fallback (or passed while the backend was
    /// down), a response an inner rate-limit layer made to refuse the
    /// request, a response the policy refunds
    /// ([`refund_when`](Self::refund_when)), and an error of the inner
    /// service (not a response).
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_redis_ratelimit::{Algorithm, Policy, Quota};
    ///
    /// // 1 000 tokens per minute per client, as the responses report them.
    /// let tokens = Policy::new("tokens")
    ///     .quota(Quota::per_minute(1_000))
    ///     .algorithm(Algorithm::Gcra)
    ///     .charge_from_header(HeaderName::from_static("x-tokens-used"));
    /// # let _ = tokens;
    /// ```
    #[must_use]
    pub fn charge_from_header(mut self, name: HeaderName) -> Self {
        self.edit().charge_header = Some(name);
        self
    }

    /// Whether the policy charges from the response (see
    /// [`Policy::charge_from_header`]): its requests are admitted at cost 0.
    pub(crate) fn charges(&self) -> bool {
        self.inner.charge_header.is_some()
    }

    /// The cost a response with `headers` reports (see
    /// [`Policy::charge_from_header`]): `None` if the policy does not
    /// charge, or the header is missing, invalid or 0.
    pub(crate) fn charge_for(&self, headers: &HeaderMap) -> Option<u64> {
        let name = self.inner.charge_header.as_ref()?;
        let value = headers.get(name)?.to_str().ok()?;
        let cost: u64 = value.trim_ascii().parse().ok()?;
        (cost > 0).then_some(cost)
    }

    /// Whether an admitted request answered with `status` and `headers` is
    /// refunded (see [`Policy::refund_when`]).
    pub(crate) fn refunds(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        self.inner
            .refund
            .as_ref()
            .is_some_and(|refund| refund(status, headers))
    }

    /// Clients this policy never limits: requests whose client IP (behind
    /// the trusted proxies of a [`ClientIp`](crate::key::ClientIp) key, else
    /// the peer's; whatever extractor made the key) is in one of the list's
    /// networks, or whose key as written is one of its keys, pass without a backend call and without
    /// rate-limit headers. Counted as `allow_listed` in the metrics and the
    /// decision's span. Adds to the lists given before.
    ///
    /// A client on both lists is refused. See [`AccessList`].
    #[must_use]
    pub fn allow(mut self, list: AccessList) -> Self {
        let access = &mut self.edit().access;
        access.allow.extend(list);
        self
    }

    /// Clients this policy always refuses, without a backend call:
    /// [`RejectReason::DenyListed`](crate::RejectReason::DenyListed) (HTTP
    /// 403, gRPC `PERMISSION_DENIED`, no `Retry-After`: waiting does not
    /// help). Counted as `deny_listed`. Adds to the lists given before. The
    /// deny-list wins over the allow-list. See [`AccessList`].
    #[must_use]
    pub fn deny(mut self, list: AccessList) -> Self {
        let access = &mut self.edit().access;
        access.deny.extend(list);
        self
    }

    /// Adds a tier: other quotas for the clients the
    /// [tier selector](Policy::tier_header) puts in tier `name` (plans such
    /// as `pro` or `enterprise`).
    ///
    /// A tier is the policy with these quotas instead of its own: same key,
    /// algorithm, cost, failure mode, access lists and shadow mode, still one
    /// atomic backend call per request. It runs as its own policy named
    /// `<policy>.<tier>` (e.g. `api.pro`): that name is in its
    /// `RateLimit-Policy` header, its metrics label, its Redis keys and its
    /// [`Admin`](crate::Admin) calls, and it has its own blocked-client cache.
    /// Counters are therefore per tier: a client moving to another plan
    /// starts that plan's windows afresh.
    ///
    /// The policy's own quotas are the default tier: a request whose
    /// selector gives no tier, or a name that is not a tier, gets them (never
    /// an error, never unlimited).
    ///
    /// Checked when the layer is built: tier names are 1–32 characters from
    /// `A-Z a-z 0-9 _ -`, each once, each with valid quotas, and a policy with
    /// tiers needs a selector (and a selector needs tiers).
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_redis_ratelimit::{Policy, Quota};
    /// use tower_redis_ratelimit::key::Header;
    ///
    /// // Per API key: 100/min on the free plan, more for paying customers.
    /// // `x-plan` is set by the authenticating gateway in front of the app
    /// // (which strips any client-sent value): clients cannot pick their tier.
    /// let api = Policy::new("api")
    ///     .key(Header::new("x-api-key"))
    ///     .quota(Quota::per_minute(100))
    ///     .tier("pro", [Quota::per_minute(1_000)])
    ///     .tier("enterprise", [Quota::per_minute(10_000), Quota::per_day(1_000_000)])
    ///     .tier_header(HeaderName::from_static("x-plan"));
    /// # tower_redis_ratelimit::RateLimitLayer::builder().default_policy(api).build().unwrap();
    /// ```
    #[must_use]
    pub fn tier(
        mut self,
        name: impl Into<String>,
        quotas: impl IntoIterator<Item = Quota>,
    ) -> Self {
        let tier = Tier {
            name: name.into().into(),
            quotas: quotas.into_iter().collect(),
        };
        self.edit().tiers.push(tier);
        self
    }

    /// Selects the tier by the value of request header `name` (e.g.
    /// `x-plan: pro`). Only for a header the client cannot set itself: one
    /// your authenticating proxy or gateway writes, after removing any the
    /// client sent. Replaces any other tier selector.
    #[must_use]
    pub fn tier_header(mut self, name: HeaderName) -> Self {
        self.edit().tier_selector = Some(TierSelector::Header(name));
        self
    }

    /// Selects the tier from a fixed table of client keys (as the key
    /// extractor makes them, e.g. API keys) to tier names; clients not in it
    /// get the default tier. Replaces any other tier selector. Every tier
    /// named must exist (checked at build).
    #[must_use]
    pub fn tier_keys<I, K, T>(mut self, table: I) -> Self
    where
        I: IntoIterator<Item = (K, T)>,
        K: AsRef<[u8]>,
        T: Into<String>,
    {
        let table = table
            .into_iter()
            .map(|(key, tier)| (Key::new(key), tier.into()))
            .collect();
        self.edit().tier_selector = Some(TierSelector::Keys(Arc::new(table)));
        self
    }

    /// Selects the tier with a function of the request head and the client
    /// key, e.g. a lookup in the application's own table of customers.
    /// `None`, or a name that is not a tier, means the default tier.
    /// Replaces any other tier selector.
    ///
    /// It runs on every request of the policy, before the backend call:
    /// keep it fast and non-blocking (an in-memory map, a value an earlier
    /// middleware put in the request's extensions).
    ///
    /// A value your own middleware inserts is only there if that
    /// middleware runs before the limiter: in axum the last `.layer(..)`
    /// call is the outermost, so write `.layer(limits).layer(auth)` (or put
    /// both in one `ServiceBuilder`, auth first). If a policy with tiers
    /// picks none for its first 1 000 requests, the layer logs one `WARN`
    /// saying so and naming the likely cause.
    ///
    /// ```
    /// use tower_redis_ratelimit::{Policy, Quota};
    /// use tower_redis_ratelimit::key::Header;
    ///
    /// #[derive(Clone)]
    /// struct Plan(&'static str); // inserted by the app's auth middleware
    ///
    /// let api = Policy::new("api")
    ///     .key(Header::new("x-api-key"))
    ///     .quota(Quota::per_minute(100))
    ///     .tier("pro", [Quota::per_minute(1_000)])
    ///     .tier_fn(|parts, _key| parts.extensions.get::<Plan>().map(|p| p.0.to_owned()));
    /// # let _ = api;
    /// ```
    #[must_use]
    pub fn tier_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts, &Key) -> Option<String> + Send + Sync + 'static,
    {
        self.edit().tier_selector = Some(TierSelector::Fn(Arc::new(f)));
        self
    }

    /// The names of the policy's tiers (without the default tier, which is
    /// the policy itself).
    pub fn tier_names(&self) -> impl Iterator<Item = &str> {
        self.inner.tiers.iter().map(|t| &*t.name)
    }

    /// Why a policy with tiers may have picked none for its first requests,
    /// for the one warning the layer logs (see `TierWatch` in
    /// `limiter.rs`); `None` without tiers.
    pub(crate) fn no_tier_hint(&self) -> Option<String> {
        let inner = &*self.inner;
        if inner.tiers.is_empty() {
            return None;
        }
        Some(match inner.tier_selector.as_ref()? {
            TierSelector::Header(header) => format!(
                "no request carried the tier header `{header}`: is the gateway that sets it in \
                 front of this service, and is the header name right?"
            ),
            TierSelector::Keys(_) => "no client key was in `tier_keys`: are the keys written as \
                 the policy's key extractor makes them?"
                .to_owned(),
            TierSelector::Fn(_) => "`tier_fn` chose none: if it reads something your own \
                 middleware puts in the request (an authenticated plan in its extensions), that \
                 middleware must run before the rate limiter, i.e. be the outer layer (axum: \
                 `.layer(limits).layer(auth)`, the last `.layer` call runs first)"
                .to_owned(),
        })
    }

    /// The index of this request's tier in [`Policy::tier_names`] order, or
    /// `None` for the default tier.
    pub(crate) fn tier_for(&self, parts: &Parts, key: &Key) -> Option<usize> {
        let inner = &*self.inner;
        if inner.tiers.is_empty() {
            return None;
        }
        let find = |name: &[u8]| inner.tiers.iter().position(|t| t.name.as_bytes() == name);
        match inner.tier_selector.as_ref()? {
            TierSelector::Header(header) => {
                find(parts.headers.get(header)?.as_bytes().trim_ascii())
            }
            TierSelector::Keys(table) => {
                // The key as made (one extractor, or an IP under `.or()`'s
                // tag), else as the user wrote it: the untagged key of the
                // `.or()` extractor that made it, as allow-lists match. Not
                // an address-shaped one: under `.or()` a client could send
                // it in a header and claim an IP's tier.
                let tier = table.get(key).or_else(|| {
                    let written = self.extractor().access_key(parts)?;
                    if crate::access::address_shaped(written.as_str()) {
                        return None;
                    }
                    table.get(&written)
                })?;
                find(tier.as_bytes())
            }
            TierSelector::Fn(f) => find(f(parts, key)?.as_bytes()),
        }
    }

    /// The policy each tier runs as: this one, named `<name>.<tier>`, with
    /// the tier's quotas and no tiers of its own.
    pub(crate) fn tier_policies(&self) -> Vec<Policy> {
        self.inner
            .tiers
            .iter()
            .map(|tier| {
                let mut inner = (*self.inner).clone();
                inner.name = format!("{}.{}", self.inner.name, tier.name).into();
                inner.quotas = tier.quotas.clone();
                inner.tiers = Vec::new();
                inner.tier_selector = None;
                Policy {
                    inner: Arc::new(inner),
                }
            })
            .collect()
    }

    /// The policy's access lists.
    pub(crate) fn access(&self) -> &AccessLists {
        &self.inner.access
    }

    /// The key extractor.
    pub(crate) fn extractor(&self) -> &dyn KeyExtractor {
        &*self.inner.key
    }

    /// The policy name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The quotas.
    pub fn quotas(&self) -> &[Quota] {
        &self.inner.quotas
    }

    /// The algorithm.
    pub fn algorithm_kind(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// The failure mode.
    pub fn failure_mode_kind(&self) -> FailureMode {
        self.inner.failure_mode
    }

    /// The missing-key behaviour.
    pub fn missing_key(&self) -> MissingKey {
        self.inner.missing_key
    }

    /// The largest cost one request may have: the [max cost](Policy::max_cost)
    /// if set, else the smallest limit of the policy's quotas (a costlier
    /// request could never be admitted), and for [`Algorithm::SlidingLog`] at
    /// most [`DEFAULT_MAX_LOG_COST`](Self::DEFAULT_MAX_LOG_COST). `None` only for a policy without quotas
    /// (which the layer refuses to build).
    pub fn effective_max_cost(&self) -> Option<u64> {
        match self.inner.max_cost {
            Some(max) => Some(max),
            None => self
                .inner
                .algorithm
                .spec()
                .default_max_cost(self.smallest_limit()),
        }
    }

    fn smallest_limit(&self) -> Option<u64> {
        self.inner.quotas.iter().map(|q| q.limit()).min()
    }

    /// Whether the policy is in [shadow mode](Policy::shadow).
    pub(crate) fn is_shadow(&self) -> bool {
        self.inner.shadow
    }

    /// Whether two values are the same policy (clones of one another).
    pub(crate) fn same_as(&self, other: &Policy) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The client key for a request, after the missing-key rule.
    /// `None` means the request must be rejected.
    pub(crate) fn key_for(&self, parts: &Parts) -> Option<Key> {
        match self.inner.key.extract(parts) {
            Some(key) => Some(key),
            None => {
                if !self.inner.warned_missing_key.swap(true, Ordering::Relaxed) {
                    let (policy, action) = (&self.inner.name, self.inner.missing_key);
                    // A hint means a setup mistake (e.g. no peer address): ERROR.
                    match self.inner.key.missing_key_hint(parts) {
                        Some(hint) => tracing::error!(
                            %policy,
                            ?action,
                            "request without a client key: {hint}; logged once per policy"
                        ),
                        None => tracing::warn!(
                            %policy,
                            ?action,
                            "request without a client key; logged once per policy"
                        ),
                    }
                }
                self.keyless()
            }
        }
    }

    fn keyless(&self) -> Option<Key> {
        match self.inner.missing_key {
            MissingKey::SharedBucket => Some(Key::missing()),
            MissingKey::Deny => None,
        }
    }

    /// The cost of a request: a cost function's 0 is 1 unless the policy
    /// [allows zero-cost checks](Policy::allow_zero_cost); 0 for a policy
    /// that [charges from the response](Policy::charge_from_header).
    pub(crate) fn cost_for(&self, parts: &Parts) -> u64 {
        // Charged after the response: admitted at cost 0.
        if self.charges() {
            return 0;
        }
        match &self.inner.cost {
            Cost::Fixed(c) => *c,
            Cost::PerRequest(f) => match f(parts) {
                0 if !self.inner.allow_zero_cost => 1,
                cost => cost,
            },
        }
    }

    /// Checks the policy; called by the layer builder. Each step is a
    /// `check_*` method of its own, which a configuration file calls as it
    /// converts the field the step checks.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.check_name()?;
        self.check_has_quota()?;
        for index in 0..self.inner.quotas.len() {
            self.check_quota(index)?;
        }
        self.check_max_cost()?;
        self.check_cost()?;
        self.check_selector()?;
        for index in 0..self.inner.tiers.len() {
            self.check_tier(index)?;
        }
        self.check_tier_keys()?;
        self.inner.key.validate()?;
        for list in [&self.inner.access.allow, &self.inner.access.deny] {
            if let Some(error) = list.error() {
                return Err(error.clone());
            }
        }
        for tier in self.tier_policies() {
            tier.validate()?;
        }
        Ok(())
    }

    /// The name of the policy, for errors.
    fn error_name(&self) -> String {
        self.inner.name.to_string()
    }

    /// Checks the policy's name.
    pub(crate) fn check_name(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.inner.name) {
            return Err(PolicyError::InvalidName {
                name: self.error_name(),
            }
            .into());
        }
        Ok(())
    }

    /// Checks that the policy has a quota.
    pub(crate) fn check_has_quota(&self) -> Result<(), ConfigError> {
        if self.inner.quotas.is_empty() {
            return Err(PolicyError::NoQuota {
                policy: self.error_name(),
            }
            .into());
        }
        Ok(())
    }

    /// Checks quota `index` (under the policy's algorithm), and that no
    /// earlier quota has its window.
    pub(crate) fn check_quota(&self, index: usize) -> Result<(), ConfigError> {
        let inner = &*self.inner;
        let policy = self.error_name();
        let q = inner.quotas[index];
        if q.limit() == 0 {
            return Err(PolicyError::ZeroLimit { policy, index }.into());
        }
        let max = inner.algorithm.spec().max_limit;
        if q.limit() > max {
            return Err(PolicyError::LimitTooLarge {
                policy,
                index,
                limit: q.limit(),
                max,
            }
            .into());
        }
        let window = q.window();
        if window < Quota::MIN_WINDOW {
            return Err(PolicyError::WindowTooShort {
                policy,
                index,
                window,
            }
            .into());
        }
        if window > Quota::MAX_WINDOW {
            return Err(PolicyError::WindowTooLong {
                policy,
                index,
                window,
            }
            .into());
        }
        if !window.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(PolicyError::WindowNotWholeMillis {
                policy,
                index,
                window,
            }
            .into());
        }
        if let Some(first) = inner.quotas[..index]
            .iter()
            .position(|o| o.window_us() == q.window_us())
        {
            return Err(PolicyError::DuplicateQuota {
                policy,
                first,
                second: index,
            }
            .into());
        }
        Ok(())
    }

    /// Checks the max cost against the smallest quota limit.
    pub(crate) fn check_max_cost(&self) -> Result<(), ConfigError> {
        let smallest = self.smallest_limit().unwrap_or(0);
        if let Some(max_cost) = self.inner.max_cost
            && !(1..=smallest).contains(&max_cost)
        {
            return Err(PolicyError::InvalidMaxCost {
                policy: self.error_name(),
                max_cost,
                limit: smallest,
            }
            .into());
        }
        Ok(())
    }

    /// Checks a fixed cost against the smallest quota limit and the max cost.
    pub(crate) fn check_cost(&self) -> Result<(), ConfigError> {
        let Cost::Fixed(cost) = self.inner.cost else {
            return Ok(());
        };
        let smallest = self.smallest_limit().unwrap_or(0);
        if cost == 0 || cost > smallest {
            return Err(PolicyError::InvalidCost {
                policy: self.error_name(),
                cost,
                max: smallest,
            }
            .into());
        }
        if let Some(max_cost) = self.effective_max_cost()
            && cost > max_cost
        {
            return Err(PolicyError::CostAboveMaxCost {
                policy: self.error_name(),
                cost,
                max_cost,
            }
            .into());
        }
        Ok(())
    }

    /// Checks that tiers and a tier selector come together.
    pub(crate) fn check_selector(&self) -> Result<(), ConfigError> {
        let policy = self.error_name();
        match (&self.inner.tier_selector, self.inner.tiers.is_empty()) {
            (None, false) => Err(PolicyError::TiersWithoutSelector { policy }.into()),
            (Some(_), true) => Err(PolicyError::SelectorWithoutTiers { policy }.into()),
            _ => Ok(()),
        }
    }

    /// Checks the name of tier `index`, and that no earlier tier has it (not
    /// the tier's quotas: see [`tier_policies`](Self::tier_policies)).
    pub(crate) fn check_tier(&self, index: usize) -> Result<(), ConfigError> {
        let tiers = &self.inner.tiers;
        let tier = &tiers[index];
        let valid = (1..=32).contains(&tier.name.len())
            && crate::key::is_plain(tier.name.as_bytes(), b"_-");
        if !valid {
            return Err(PolicyError::InvalidTierName {
                policy: self.error_name(),
                tier: tier.name.to_string(),
            }
            .into());
        }
        if tiers[..index].iter().any(|t| t.name == tier.name) {
            return Err(PolicyError::DuplicateTier {
                policy: self.error_name(),
                tier: tier.name.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Checks that a tier table names only tiers the policy has.
    pub(crate) fn check_tier_keys(&self) -> Result<(), ConfigError> {
        let inner = &*self.inner;
        if let Some(TierSelector::Keys(table)) = &inner.tier_selector {
            let mut named: Vec<&String> = table.values().collect();
            named.sort();
            if let Some(unknown) = named
                .into_iter()
                .find(|name| !inner.tiers.iter().any(|t| *t.name == ***name))
            {
                return Err(PolicyError::UnknownTier {
                    policy: self.error_name(),
                    tier: unknown.clone(),
                    known: inner.tiers.iter().map(|t| t.name.to_string()).collect(),
                }
                .into());
            }
        }
        Ok(())
    }
}

/// Policy names: 1-64 characters from `[A-Za-z0-9._-]` (safe in Redis keys and
/// in structured-field strings).
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && crate::key::is_plain(name.as_bytes(), b"._-")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn presets_are_valid() {
        let api = Policy::default_api();
        api.validate().unwrap();
        assert_eq!(api.name(), "api");
        assert_eq!(api.quotas(), &[Quota::per_minute(100)]);
        assert_eq!(api.algorithm_kind(), Algorithm::SlidingWindow);
        let auth = Policy::auth();
        auth.validate().unwrap();
        assert_eq!(auth.quotas(), &[Quota::per_minute(5)]);
        assert_eq!(auth.algorithm_kind(), Algorithm::SlidingLog);
    }

    #[test]
    fn invalid_policies_are_config_errors() {
        let cases: Vec<(Policy, &str)> = vec![
            (Policy::new("x"), "no quota"),
            (Policy::new("x").quota(Quota::per_second(0)), "limit of 0"),
            (
                Policy::new("x").quota(Quota::new(1, Duration::from_micros(999))),
                "below the 1 ms",
            ),
            (
                Policy::new("x").quota(Quota::new(1, Duration::from_secs(400 * 86_400))),
                "one-year",
            ),
            (
                Policy::new("x").quota(Quota::per_second(Quota::MAX_LIMIT + 1)),
                "maximum",
            ),
            (
                Policy::new("x")
                    .quota(Quota::per_second(1))
                    .quota(Quota::per_second(2)),
                "same window",
            ),
            (
                Policy::new("x").quota(Quota::per_second(3)).cost(0),
                "cost 0",
            ),
            (
                Policy::new("x").quota(Quota::per_second(3)).cost(4),
                "cost 4",
            ),
            (
                Policy::new("").quota(Quota::per_second(3)),
                "invalid policy name",
            ),
            (
                Policy::new("a{b}").quota(Quota::per_second(3)),
                "invalid policy name",
            ),
            (
                Policy::new("x".repeat(65)).quota(Quota::per_second(3)),
                "invalid policy name",
            ),
        ];
        for (policy, needle) in cases {
            let err = policy.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn max_cost_defaults() {
        let log = |limit| {
            Policy::new("log")
                .quota(Quota::per_hour(limit))
                .algorithm(Algorithm::SlidingLog)
        };
        assert_eq!(
            log(10_000).effective_max_cost(),
            Some(Policy::DEFAULT_MAX_LOG_COST)
        );
        assert_eq!(log(1_000).effective_max_cost(), Some(1_000));
        assert_eq!(Policy::auth().effective_max_cost(), Some(5));
        assert_eq!(
            log(10_000)
                .quota(Quota::per_second(20))
                .effective_max_cost(),
            Some(20),
            "the smallest limit of all quotas"
        );
        assert_eq!(
            log(10_000).max_cost(10_000).effective_max_cost(),
            Some(10_000)
        );
        assert_eq!(
            Policy::default_api().effective_max_cost(),
            Some(100),
            "a counter's bound is its smallest limit"
        );
        assert_eq!(
            Policy::default_api().max_cost(7).effective_max_cost(),
            Some(7)
        );
        for valid in [
            log(10_000),
            log(10_000).max_cost(10_000).cost(10_000),
            log(10_000).max_cost(1),
            log(10_000).cost(Policy::DEFAULT_MAX_LOG_COST),
            log(3).cost(3),
            Policy::default_api().cost(100),
            Policy::default_api().max_cost(100).cost(100),
            Policy::new("w")
                .quota(Quota::per_hour(Quota::MAX_LIMIT))
                .cost(Quota::MAX_LIMIT),
        ] {
            valid
                .validate()
                .unwrap_or_else(|e| panic!("{valid:?}: {e}"));
        }
    }

    #[test]
    fn invalid_max_costs_are_config_errors() {
        let log = || {
            Policy::new("log")
                .quota(Quota::per_hour(5_000))
                .quota(Quota::per_second(50))
                .algorithm(Algorithm::SlidingLog)
        };
        assert_eq!(
            log().max_cost(0).validate(),
            Err(ConfigError::Policy(PolicyError::InvalidMaxCost {
                policy: "log".into(),
                max_cost: 0,
                limit: 50
            }))
        );
        let above = log().max_cost(51).validate().unwrap_err();
        assert_eq!(
            above,
            ConfigError::Policy(PolicyError::InvalidMaxCost {
                policy: "log".into(),
                max_cost: 51,
                limit: 50
            })
        );
        assert!(
            above.to_string().contains("max cost 51 is outside 1..=50"),
            "{above}"
        );
        // A fixed cost above an explicit max cost, or the log's default.
        let fixed = Policy::default_api().max_cost(10).cost(11).validate();
        assert_eq!(
            fixed,
            Err(ConfigError::Policy(PolicyError::CostAboveMaxCost {
                policy: "api".into(),
                cost: 11,
                max_cost: 10
            }))
        );
        let default = Policy::new("log")
            .quota(Quota::per_hour(5_000))
            .algorithm(Algorithm::SlidingLog)
            .cost(1_001)
            .validate()
            .unwrap_err();
        assert_eq!(
            default,
            ConfigError::Policy(PolicyError::CostAboveMaxCost {
                policy: "log".into(),
                cost: 1_001,
                max_cost: 1_000
            })
        );
        let message = default.to_string();
        assert!(
            message.contains("cost 1001 is above its max cost of 1000")
                && message.contains("Policy::max_cost"),
            "{message}"
        );
        // A per-request cost is only known per request: no build error.
        Policy::default_api()
            .max_cost(10)
            .cost_fn(|_| 1_000_000)
            .validate()
            .unwrap();
    }

    #[test]
    fn clones_are_the_same_policy_and_edits_are_not() {
        let a = Policy::auth();
        let b = a.clone();
        assert!(a.same_as(&b));
        let c = b.clone().cost(2);
        assert!(!a.same_as(&c));
        assert_eq!(a.cost_for(&http::Request::new(()).into_parts().0), 1);
    }

    #[test]
    fn a_cost_function_s_zero_counts_as_one_unless_allowed() {
        let parts = |rows: &str| {
            let request = http::Request::builder().header("x-rows", rows);
            request.body(()).unwrap().into_parts().0
        };
        let rows =
            |parts: &Parts| -> u64 { parts.headers["x-rows"].to_str().unwrap().parse().unwrap() };
        let strict = Policy::default_api().cost_fn(rows);
        let free = strict.clone().allow_zero_cost();
        for (sent, cost, allowed) in [("0", 1, 0), ("1", 1, 1), ("7", 7, 7)] {
            assert_eq!(strict.cost_for(&parts(sent)), cost, "x-rows: {sent}");
            assert_eq!(free.cost_for(&parts(sent)), allowed, "x-rows: {sent}");
        }
        // Tiers are the policy with other quotas: the same rule.
        let tiered = strict
            .tier("pro", [Quota::per_minute(1_000)])
            .tier_header(HeaderName::from_static("x-plan"));
        assert_eq!(tiered.tier_policies()[0].cost_for(&parts("0")), 1);
        assert!(format!("{free:?}").contains("allow_zero_cost: true"));
    }
}
