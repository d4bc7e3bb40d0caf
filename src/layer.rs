//! [`RateLimitLayer`]: configuration and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Response};
use tower_layer::Layer;

use crate::adjust::Adjustments;
use crate::admin::Admin;
use crate::backend::{Backend, MemoryBackend};
use crate::breaker::{Breaker, CircuitBreaker};
use crate::error::{ConfigError, PolicyError};
use crate::failure::FailureLog;
use crate::headers::HeaderStyle;
use crate::limiter::{Limiter, compile};
use crate::policy::Policy;
use crate::response::{DefaultRejection, Rejection};
use crate::routes::{Action, RouteTable, Rule, tightest_rate};
use crate::service::RateLimitService;

/// Applies rate limiting to a service: `.layer(layer)` in axum, tonic or tower.
///
/// Built with [`RateLimitLayer::builder`]; cloning is cheap (one `Arc`).
///
/// ```
/// use std::time::Duration;
/// use tower_redis_ratelimit::{Policy, RateLimitLayer, RedisBackend};
///
/// # fn main() -> Result<(), tower_redis_ratelimit::ConfigError> {
/// let layer = RateLimitLayer::builder()
///     .backend(RedisBackend::new("redis://127.0.0.1:6379")?) // connects lazily
///     .default_policy(Policy::default_api())
///     .route_method(http::Method::POST, "/auth/login", Policy::auth())
///     .exempt("/health")
///     .deadline(Duration::from_millis(50))
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub struct RateLimitLayer<R = DefaultRejection> {
    limiter: Arc<Limiter>,
    on_rejection: R,
}

impl<R: Clone> Clone for RateLimitLayer<R> {
    fn clone(&self) -> Self {
        Self {
            limiter: Arc::clone(&self.limiter),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<R> fmt::Debug for RateLimitLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policies: Vec<&str> = self
            .limiter
            .policies
            .iter()
            .map(|p| p.policy.name())
            .collect();
        f.debug_struct("RateLimitLayer")
            .field("policies", &policies)
            .field("deadline", &self.limiter.deadline)
            .field("headers", &self.limiter.style)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Starts a configuration.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder::default()
    }

    /// A layer limiting every request with one policy on one backend.
    pub fn new(backend: impl Backend, policy: Policy) -> Result<Self, ConfigError> {
        Self::builder()
            .backend(backend)
            .default_policy(policy)
            .build()
    }
}

impl<R> RateLimitLayer<R> {
    /// The administration handle of this layer: check, peek at and reset a
    /// client's quotas by policy name, without a request (see [`Admin`]).
    pub fn admin(&self) -> Admin {
        Admin::new(Arc::clone(&self.limiter))
    }

    /// Replaces the rejection response (see [`OnRejection`](crate::OnRejection)):
    /// [`GrpcRejection`](crate::GrpcRejection) behind tonic,
    /// [`ProblemJson`](crate::ProblemJson), or your own type. For a closure,
    /// use [`reject_fn`](Self::reject_fn).
    #[must_use]
    pub fn on_rejection<R2>(self, on_rejection: R2) -> RateLimitLayer<R2> {
        RateLimitLayer {
            limiter: self.limiter,
            on_rejection,
        }
    }

    /// Replaces the rejection response with a closure, whose argument and
    /// body types are inferred (with `on_rejection` they must be written
    /// out). The layer still adds `Retry-After` and the rate-limit headers.
    ///
    /// ```
    /// use axum::body::Body;
    /// use tower_redis_ratelimit::http::{Response, StatusCode};
    /// use tower_redis_ratelimit::{Policy, RateLimitLayer};
    ///
    /// # fn main() -> Result<(), tower_redis_ratelimit::ConfigError> {
    /// let layer = RateLimitLayer::builder()
    ///     .default_policy(Policy::default_api())
    ///     .build()?
    ///     .reject_fn(|rejection| {
    ///         let mut response = Response::new(Body::from(format!(
    ///             "slow down ({})",
    ///             rejection.policy.name()
    ///         )));
    ///         *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    ///         response
    ///     });
    /// let app: axum::Router = axum::Router::new().layer(layer);
    /// # let _ = app;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn reject_fn<F, B>(self, f: F) -> RateLimitLayer<F>
    where
        F: Fn(&Rejection<'_>) -> Response<B> + Clone + Send + Sync + 'static,
    {
        self.on_rejection(f)
    }
}

impl<S, R: Clone> Layer<S> for RateLimitLayer<R> {
    type Service = RateLimitService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, Arc::clone(&self.limiter), self.on_rejection.clone())
    }
}

enum Target {
    Limit(Policy),
    Exempt,
}

/// Configures a [`RateLimitLayer`]. Nothing is checked until
/// [`build`](Self::build), which reports every mistake as a [`ConfigError`].
#[must_use]
pub struct RateLimitLayerBuilder {
    backend: Option<Arc<dyn Backend>>,
    default: Option<Policy>,
    rules: Vec<(Option<Method>, String, Target)>,
    deadline: Duration,
    style: HeaderStyle,
    case_insensitive: bool,
    breaker: CircuitBreaker,
    blocked_capacity: usize,
    blocked_max_age: Duration,
    refund_refused: bool,
}

impl Default for RateLimitLayerBuilder {
    fn default() -> Self {
        Self {
            backend: None,
            default: None,
            rules: Vec::new(),
            deadline: Self::DEFAULT_DEADLINE,
            style: HeaderStyle::default(),
            case_insensitive: false,
            breaker: CircuitBreaker::new(),
            blocked_capacity: Self::DEFAULT_BLOCKED_CAPACITY,
            blocked_max_age: Self::DEFAULT_BLOCKED_MAX_AGE,
            refund_refused: true,
        }
    }
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("default", &self.default)
            .field("rules", &self.rules.len())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// The default [deadline](Self::deadline) for one backend decision: 50 ms.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(50);

    /// The default [capacity of the blocked-client cache](Self::blocked_cache):
    /// 10 000 clients.
    pub const DEFAULT_BLOCKED_CAPACITY: usize = 10_000;

    /// The default [longest time](Self::blocked_cache_max_age) an instance
    /// denies a client from its blocked-client cache without asking the
    /// backend again: 1 s.
    pub const DEFAULT_BLOCKED_MAX_AGE: Duration = Duration::from_secs(1);

    /// Where counters live (default: a fresh [`MemoryBackend`]).
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// The policy for requests that match no route rule. Without one, such
    /// requests are not limited.
    pub fn default_policy(mut self, policy: Policy) -> Self {
        self.default = Some(policy);
        self
    }

    /// Limits requests of any method whose path matches `pattern` with `policy`.
    ///
    /// Patterns use axum's syntax (`/users/{id}`, `/files/{*rest}`) and are
    /// matched as axum matches them: the most specific pattern wins, whatever
    /// the order of the rules. Every spelling of a path that some router or
    /// proxy could read differently is matched too, and the strictest answer
    /// applies (see the crate's "Security" section in the README).
    pub fn route(mut self, pattern: impl Into<String>, policy: Policy) -> Self {
        self.rules
            .push((None, pattern.into(), Target::Limit(policy)));
        self
    }

    /// Limits requests with this method (`GET` also covers `HEAD`) whose path
    /// matches `pattern` with `policy`.
    pub fn route_method(
        mut self,
        method: Method,
        pattern: impl Into<String>,
        policy: Policy,
    ) -> Self {
        self.rules
            .push((Some(method), pattern.into(), Target::Limit(policy)));
        self
    }

    /// Never limits requests whose path matches `pattern` (e.g. `/health`).
    ///
    /// Only requests that are exempt under every reading of their path are
    /// exempt: `/health/`, `//health` or `/%68ealth`, which axum routes
    /// elsewhere (a 404 fallback, a `/{slug}` route), are limited by the
    /// default policy.
    pub fn exempt(mut self, pattern: impl Into<String>) -> Self {
        self.rules.push((None, pattern.into(), Target::Exempt));
        self
    }

    /// The longest a request waits for the backend (default
    /// [`DEFAULT_DEADLINE`](Self::DEFAULT_DEADLINE), 50 ms); past it the
    /// policy's [`FailureMode`](crate::FailureMode) applies.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The circuit breaker around the backend (see [`CircuitBreaker`]).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// How many denied clients to remember locally (default 10 000; 0 turns
    /// the cache off). A client the backend has denied is denied again by
    /// this instance, without a backend call, until its retry time or the
    /// [max age](Self::blocked_cache_max_age), whichever comes first: floods
    /// from blocked clients barely reach Redis. Safe because a denial can
    /// only last longer than the backend said, never shorter, unless the
    /// client is reset.
    pub fn blocked_cache(mut self, capacity: usize) -> Self {
        self.blocked_capacity = capacity;
        self
    }

    /// The longest this instance denies a client from its blocked-client
    /// cache without asking the backend again (default 1 s;
    /// `Duration::ZERO` turns the cache off).
    ///
    /// It bounds how long a reset made elsewhere goes unseen here: after
    /// [`Admin::reset`](crate::Admin::reset) on another instance, or a
    /// `DEL` of the client's keys in Redis, every instance admits the client
    /// again within this time, even under a per-day quota. The price is one
    /// backend call per blocked client per max age per instance while the
    /// client keeps trying.
    pub fn blocked_cache_max_age(mut self, max_age: Duration) -> Self {
        self.blocked_max_age = max_age;
        self
    }

    /// Which rate-limit headers to send (default IETF).
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.style = style;
        self
    }

    /// Whether a request this layer admitted, but another rate-limit layer
    /// inside it refused (a stricter `route_layer` under a global
    /// `.layer()`), is given back to this layer's policy (default `true`):
    /// one refusal spends one quota, the refusing layer's.
    ///
    /// The refund ([`Backend::refund`](crate::Backend::refund), exact per
    /// algorithm as documented there) runs after the response is handed
    /// back, never delaying it: at once on an in-process backend, in the
    /// background on Redis (at most 1 024 at once per layer, each given up
    /// after the [deadline](Self::deadline) or one second, whichever is
    /// longer; a failure is logged at `debug`). The response's rate-limit
    /// headers show this layer's quota as decided, before the refund. A
    /// request admitted by the [`FailureMode::Local`](crate::FailureMode)
    /// fallback is not refunded. `false` keeps every admission.
    pub fn refund_refused_by_inner_layers(mut self, yes: bool) -> Self {
        self.refund_refused = yes;
        self
    }

    /// Compares paths case-insensitively (for apps that route that way).
    pub fn case_insensitive_paths(mut self, yes: bool) -> Self {
        self.case_insensitive = yes;
        self
    }

    /// Checks everything and builds the layer.
    ///
    /// Besides each policy's own checks, a configuration that could never
    /// do what it says is an error: a layer with no policy at all
    /// ([`ConfigError::NoPolicy`]), an axum 0.7 pattern such as `/users/:id`
    /// ([`RouteError::OldSyntax`], with the axum 0.8 spelling), two rules on
    /// one pattern and method ([`RouteError::Duplicate`]), and two different
    /// policies of one name ([`PolicyError::DuplicateName`], naming where
    /// each is used).
    ///
    /// [`RouteError::OldSyntax`]: crate::RouteError::OldSyntax
    /// [`RouteError::Duplicate`]: crate::RouteError::Duplicate
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        check_deadline(self.deadline)?;
        // Each policy once, with where it was first used (for errors).
        let mut policies: Vec<(Policy, String)> = Vec::new();
        let mut intern = |policy: Policy, used: String| -> Result<usize, ConfigError> {
            if let Some(i) = policies.iter().position(|(p, _)| p.name() == policy.name()) {
                if policies[i].0.same_as(&policy) {
                    return Ok(i);
                }
                return Err(PolicyError::DuplicateName {
                    name: policy.name().to_owned(),
                    first: policies[i].1.clone(),
                    second: used,
                }
                .into());
            }
            policy.validate()?;
            policies.push((policy, used));
            Ok(policies.len() - 1)
        };
        let default = self
            .default
            .map(|p| intern(p, "the default policy".to_owned()))
            .transpose()?;
        let mut rules = Vec::with_capacity(self.rules.len());
        for (method, pattern, target) in self.rules {
            let action = match target {
                Target::Limit(policy) => {
                    let used = match &method {
                        Some(m) => format!("route {m} {pattern:?}"),
                        None => format!("route {pattern:?}"),
                    };
                    Action::Limit(intern(policy, used)?)
                }
                Target::Exempt => Action::Exempt,
            };
            rules.push(Rule {
                method,
                pattern,
                action,
            });
        }
        let policies: Vec<Policy> = policies.into_iter().map(|(p, _)| p).collect();
        let routes = RouteTable::new(
            rules,
            default,
            self.case_insensitive,
            policies.iter().map(tightest_rate).collect(),
        )?;
        // Checked last, so that a mistyped pattern is reported as such.
        if policies.is_empty() {
            return Err(ConfigError::NoPolicy);
        }
        let backend = self
            .backend
            .unwrap_or_else(|| Arc::new(MemoryBackend::new()));
        let partitions = backend.partitions();
        Ok(RateLimitLayer {
            limiter: Arc::new(Limiter {
                backend,
                routes,
                policies: compile(policies, self.blocked_capacity, self.blocked_max_age)?,
                deadline: self.deadline,
                style: self.style,
                breaker: Arc::new(Breaker::new(self.breaker, partitions)),
                failures: FailureLog::default(),
                local: MemoryBackend::new(),
                adjust: Adjustments::new(self.refund_refused),
            }),
            on_rejection: DefaultRejection,
        })
    }
}

/// Checks the backend deadline of a layer.
pub(crate) fn check_deadline(deadline: Duration) -> Result<(), ConfigError> {
    if deadline.is_zero() {
        return Err(ConfigError::ZeroDeadline);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;
    use crate::key::Key;
    use crate::limiter::Start;

    /// How a request to `/` from 192.0.2.1 starts on a layer with `backend`.
    fn start(backend: impl Backend) -> Start {
        let layer = RateLimitLayer::builder()
            .backend(backend)
            .default_policy(Policy::default_api())
            .build()
            .unwrap();
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts
            .extensions
            .insert(std::net::SocketAddr::from(([192, 0, 2, 1], 4000)));
        layer.limiter.begin(&parts)
    }

    /// Any backend that decides at once (`Backend::check_now`) is asked
    /// directly: the memory backend, an `Arc` of it, a custom in-process
    /// one. Others go through a backend call.
    #[test]
    fn in_process_backends_decide_at_once() {
        struct Custom(MemoryBackend);
        impl Backend for Custom {
            fn check(&self, policy: &Policy, key: &Key, cost: u64) -> crate::backend::CheckFuture {
                self.0.check(policy, key, cost)
            }
            fn check_now(
                &self,
                policy: &Policy,
                key: &Key,
                cost: u64,
            ) -> Option<Result<crate::Decision, crate::BackendError>> {
                self.0.check_now(policy, key, cost)
            }
        }
        struct Later(MemoryBackend);
        impl Backend for Later {
            fn check(&self, policy: &Policy, key: &Key, cost: u64) -> crate::backend::CheckFuture {
                self.0.check(policy, key, cost)
            }
        }
        assert!(matches!(start(MemoryBackend::new()), Start::Settled(_)));
        assert!(matches!(
            start(Arc::new(MemoryBackend::new())),
            Start::Settled(_)
        ));
        assert!(matches!(
            start(Custom(MemoryBackend::new())),
            Start::Settled(_)
        ));
        assert!(matches!(
            start(Later(MemoryBackend::new())),
            Start::Checking(..)
        ));
    }

    #[test]
    fn build_errors() {
        let err = RateLimitLayer::builder()
            .default_policy(Policy::auth())
            .route("/x", Policy::auth())
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            ConfigError::Policy(PolicyError::DuplicateName {
                name: "auth".to_owned(),
                first: "the default policy".to_owned(),
                second: "route \"/x\"".to_owned(),
            })
        );
        let err = RateLimitLayer::builder()
            .route("/a", Policy::auth())
            .route_method(Method::POST, "/b", Policy::auth())
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("(route \"/a\" and route POST \"/b\")"),
            "{text}"
        );
        assert!(text.contains("policy.clone()"), "{text}");
        for empty in [
            RateLimitLayer::builder(),
            RateLimitLayer::builder().exempt("/health"),
        ] {
            assert_eq!(empty.build().unwrap_err(), ConfigError::NoPolicy);
        }
        let err = RateLimitLayer::builder()
            .route("/users/:id", Policy::auth())
            .build()
            .unwrap_err();
        assert!(err.to_string().ends_with("write \"/users/{id}\""), "{err}");
        let auth = Policy::auth();
        RateLimitLayer::builder()
            .route("/a", auth.clone())
            .route("/b", auth)
            .build()
            .unwrap();
        let err = RateLimitLayer::builder()
            .default_policy(Policy::auth())
            .deadline(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err, ConfigError::ZeroDeadline);
        let err = RateLimitLayer::builder()
            .route("no-slash", Policy::auth())
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Route(crate::RouteError::Invalid { .. })
        ));
        let err = RateLimitLayer::builder()
            .default_policy(Policy::new("x").quota(Quota::per_second(0)))
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Policy(PolicyError::ZeroLimit { .. })
        ));
    }
}
