//! Error types.

use std::fmt;
use std::time::Duration;

/// Invalid configuration, reported when a layer, policy or backend is built.
///
/// Configuration mistakes never surface at request time: a [`crate::RateLimitLayer`]
/// that was built successfully only ever produces responses.
///
/// The mistakes of one kind are grouped, so that a caller can match the
/// kind: a [policy](PolicyError) (its quotas, costs, tiers, name), a
/// [route pattern](RouteError), or a [configuration file](FileError) (feature
/// `serde`: the field at fault, and the error behind it). The rest are
/// settings of the layer or of a backend.
///
/// ```
/// use tower_redis_ratelimit::{ConfigError, Policy, Quota, RateLimitLayer};
///
/// let err = RateLimitLayer::builder()
///     .default_policy(Policy::new("api").quota(Quota::per_second(0)))
///     .build()
///     .unwrap_err();
/// match &err {
///     ConfigError::Policy(policy) => assert_eq!(policy.policy(), "api"),
///     other => panic!("not a policy error: {other}"),
/// }
/// assert_eq!(err.to_string(), "policy `api`: quota 0 has a limit of 0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A policy cannot be used: see [`PolicyError`].
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A route pattern cannot be used: see [`RouteError`].
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A field of a configuration read with serde ([`Config`][config],
    /// feature `serde`) cannot be used: see [`FileError`].
    ///
    #[cfg_attr(feature = "serde", doc = "[config]: crate::Config")]
    #[cfg_attr(
        not(feature = "serde"),
        doc = "[config]: https://docs.rs/tower-redis-ratelimit/latest/tower_redis_ratelimit/config/struct.Config.html"
    )]
    #[error(transparent)]
    File(#[from] FileError),
    /// The builder has no default policy and no route policy, so the layer
    /// would limit nothing.
    #[error(
        "the rate-limit layer has no policy, so it would limit nothing: add \
         `.default_policy(Policy::default_api())` (every request) or \
         `.route(\"/path\", policy)` (some routes)"
    )]
    NoPolicy,
    /// The backend deadline is zero.
    #[error("the backend deadline must be greater than zero")]
    ZeroDeadline,
    /// The Redis key prefix is empty, too long or contains unsafe characters.
    #[error(
        "invalid key prefix {prefix:?}: use 1 to 64 characters from A-Z, a-z, 0-9, `.`, `_`, `-`, `:`"
    )]
    InvalidPrefix {
        /// The prefix that was given.
        prefix: String,
    },
    /// `RedisBackendBuilder::batch` was given more checks per batch than
    /// the supported maximum.
    #[error("a batch of {batch} checks is more than the {max} allowed")]
    BatchTooLarge {
        /// The batch size that was given.
        batch: usize,
        /// The largest supported batch.
        max: usize,
    },
    /// `RedisBackendBuilder::master_url` was set on a builder that is not a
    /// Sentinel deployment's, where it would be ignored.
    #[error(
        "`master_url` only applies to a Sentinel deployment (`RedisBackend::sentinel_builder`); \
         a single node or a cluster takes user, password and TLS from its own URLs"
    )]
    MasterUrlWithoutSentinel,
    /// The Redis connection URL could not be parsed.
    #[error("invalid Redis URL: {0}")]
    RedisUrl(String),
    /// The TLS settings of a Redis backend cannot be used: a CA or client
    /// certificate that is not PEM, a client key that does not parse, TLS
    /// settings for a `redis://` (not `rediss://`) URL.
    #[error("invalid Redis TLS settings: {0}")]
    Tls(String),
    /// A network (of trusted proxies or of an access list) could not be parsed.
    #[error("invalid network {network:?}: expected CIDR like 10.0.0.0/8 or an address")]
    InvalidNetwork {
        /// The text that was given.
        network: String,
    },
    /// A trusted-proxy network is written in IPv4-mapped IPv6 form
    /// (`::ffff:a.b.c.d/n`) with a prefix below /96: it would span addresses
    /// that are not IPv4-mapped too. Write the IPv4 network instead.
    #[error(
        "trusted network {network:?} is IPv4-mapped IPv6 with a prefix below /96, so it also \
         spans addresses that are not IPv4-mapped; write the IPv4 network instead (`::ffff:a.b.c.d/n` \
         with n >= 96 is `a.b.c.d/(n-96)`, e.g. `::ffff:10.0.0.0/104` is `10.0.0.0/8`)"
    )]
    MappedNetworkTooWide {
        /// The network as it was given.
        network: String,
    },
    /// A capacity of zero was given to the memory backend.
    #[error("the memory backend capacity must be greater than zero")]
    ZeroCapacity,
    /// A byte budget of zero was given to the memory backend.
    #[error("the memory backend byte budget must be greater than zero")]
    ZeroByteBudget,
}

/// A policy that cannot be used ([`ConfigError::Policy`]). Every variant
/// names the policy ([`policy`](Self::policy)); a tier's mistakes name the
/// policy the tier runs as, `<policy>.<tier>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A policy name is empty, too long or uses characters outside `[A-Za-z0-9._-]`.
    #[error(
        "invalid policy name {name:?}: use 1 to 64 characters from A-Z, a-z, 0-9, `.`, `_`, `-`"
    )]
    InvalidName {
        /// The name that was given.
        name: String,
    },
    /// Two different policies share one name (their counters would collide).
    ///
    /// Reusing one policy value (a clone) for several routes is fine: those routes
    /// then share the client's counters.
    #[error(
        "two different policies are named `{name}` ({first} and {second}), so their counters \
         would collide: to share one limit, build the policy once and pass clones of that one \
         value (`let policy = Policy::new(\"{name}\")...;`, then `.route(.., policy.clone())`); \
         otherwise give each policy its own name"
    )]
    DuplicateName {
        /// The duplicated name.
        name: String,
        /// Where the first policy of that name is used: `the default policy`
        /// or `route "/path"` (with its method, if any).
        first: String,
        /// Where the other one is used.
        second: String,
    },
    /// A policy has no quota.
    #[error("policy `{policy}` has no quota")]
    NoQuota {
        /// The policy name.
        policy: String,
    },
    /// A quota allows zero requests.
    #[error("policy `{policy}`: quota {index} has a limit of 0")]
    ZeroLimit {
        /// The policy name.
        policy: String,
        /// The quota index within the policy.
        index: usize,
    },
    /// A quota window is shorter than one millisecond.
    #[error("policy `{policy}`: quota {index} has a window of {window:?}, below the 1 ms minimum")]
    WindowTooShort {
        /// The policy name.
        policy: String,
        /// The quota index within the policy.
        index: usize,
        /// The window that was given.
        window: Duration,
    },
    /// A quota window is longer than the supported maximum (one year).
    #[error(
        "policy `{policy}`: quota {index} has a window of {window:?}, above the one-year maximum"
    )]
    WindowTooLong {
        /// The policy name.
        policy: String,
        /// The quota index within the policy.
        index: usize,
        /// The window that was given.
        window: Duration,
    },
    /// A quota window is not a whole number of milliseconds.
    #[error(
        "policy `{policy}`: quota {index} has a window of {window:?}, not a whole number of milliseconds"
    )]
    WindowNotWholeMillis {
        /// The policy name.
        policy: String,
        /// The quota index within the policy.
        index: usize,
        /// The window that was given.
        window: Duration,
    },
    /// A quota limit is above the supported maximum.
    #[error("policy `{policy}`: quota {index} has a limit of {limit}, above the maximum of {max}")]
    LimitTooLarge {
        /// The policy name.
        policy: String,
        /// The quota index within the policy.
        index: usize,
        /// The limit that was given.
        limit: u64,
        /// The largest supported limit.
        max: u64,
    },
    /// Two quotas of one policy have the same window (the larger limit would
    /// never matter, and they would share one Redis key).
    #[error("policy `{policy}`: quotas {first} and {second} have the same window")]
    DuplicateQuota {
        /// The policy name.
        policy: String,
        /// Index of the first occurrence.
        first: usize,
        /// Index of the duplicate.
        second: usize,
    },
    /// A fixed cost of zero, or a fixed cost above the smallest limit of the policy
    /// (such a request could never be admitted).
    #[error("policy `{policy}`: cost {cost} is outside 1..={max}")]
    InvalidCost {
        /// The policy name.
        policy: String,
        /// The cost that was given.
        cost: u64,
        /// The smallest quota limit of the policy.
        max: u64,
    },
    /// A policy's [max cost](crate::Policy::max_cost) is zero or above its
    /// smallest quota limit.
    #[error(
        "policy `{policy}`: max cost {max_cost} is outside 1..={limit} (1 to its smallest quota limit)"
    )]
    InvalidMaxCost {
        /// The policy name.
        policy: String,
        /// The max cost that was given.
        max_cost: u64,
        /// The smallest quota limit of the policy.
        limit: u64,
    },
    /// A fixed cost above the policy's max cost (set with
    /// [`Policy::max_cost`](crate::Policy::max_cost), or the sliding log's
    /// default [`Policy::DEFAULT_MAX_LOG_COST`](crate::Policy::DEFAULT_MAX_LOG_COST)).
    #[error(
        "policy `{policy}`: cost {cost} is above its max cost of {max_cost} per request; \
         raise it with `Policy::max_cost` (up to the policy's smallest limit)"
    )]
    CostAboveMaxCost {
        /// The policy name.
        policy: String,
        /// The fixed cost that was given.
        cost: u64,
        /// The policy's max cost.
        max_cost: u64,
    },
    /// A policy has tiers but no tier selector (see
    /// [`Policy::tier`](crate::Policy::tier)): no request could reach them.
    #[error(
        "policy `{policy}` has tiers but no tier selector (Policy::tier_header, tier_keys or tier_fn)"
    )]
    TiersWithoutSelector {
        /// The policy name.
        policy: String,
    },
    /// A policy has a tier selector but no tier.
    #[error("policy `{policy}` has a tier selector but no tier (Policy::tier)")]
    SelectorWithoutTiers {
        /// The policy name.
        policy: String,
    },
    /// A tier name is empty, too long or has characters other than
    /// `A-Z a-z 0-9 _ -`.
    #[error(
        "policy `{policy}`: invalid tier name {tier:?}: use 1 to 32 characters from A-Z, a-z, 0-9, `_`, `-`"
    )]
    InvalidTierName {
        /// The policy name.
        policy: String,
        /// The tier name.
        tier: String,
    },
    /// Two tiers of one policy have the same name.
    #[error("policy `{policy}` has two tiers named `{tier}`")]
    DuplicateTier {
        /// The policy name.
        policy: String,
        /// The tier name.
        tier: String,
    },
    /// A tier table names a tier the policy does not have.
    #[error("policy `{policy}`: unknown tier {tier:?} (its tiers: {})", known.join(", "))]
    UnknownTier {
        /// The policy name.
        policy: String,
        /// The tier name.
        tier: String,
        /// The policy's tiers.
        known: Vec<String>,
    },
}

impl PolicyError {
    /// The name of the policy at fault (for a tier, `<policy>.<tier>`; for
    /// [`InvalidName`](Self::InvalidName), the name refused).
    pub fn policy(&self) -> &str {
        match self {
            Self::InvalidName { name } | Self::DuplicateName { name, .. } => name,
            Self::NoQuota { policy }
            | Self::ZeroLimit { policy, .. }
            | Self::WindowTooShort { policy, .. }
            | Self::WindowTooLong { policy, .. }
            | Self::WindowNotWholeMillis { policy, .. }
            | Self::LimitTooLarge { policy, .. }
            | Self::DuplicateQuota { policy, .. }
            | Self::InvalidCost { policy, .. }
            | Self::InvalidMaxCost { policy, .. }
            | Self::CostAboveMaxCost { policy, .. }
            | Self::TiersWithoutSelector { policy }
            | Self::SelectorWithoutTiers { policy }
            | Self::InvalidTierName { policy, .. }
            | Self::DuplicateTier { policy, .. }
            | Self::UnknownTier { policy, .. } => policy,
        }
    }
}

/// A route or exempt pattern that cannot be used ([`ConfigError::Route`]).
/// Every variant names the pattern ([`pattern`](Self::pattern)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A route pattern could not be parsed.
    #[error("invalid route pattern {pattern:?}: {reason}")]
    Invalid {
        /// The pattern that was given.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A route pattern uses axum 0.7's `:param` or `*rest` syntax. axum 0.8
    /// panics on it; here it would be literal text that no request matches.
    #[error(
        "route {pattern:?} uses the axum 0.7 syntax `:param` / `*rest`, which axum 0.8 rejects \
         and which would never match a request here; write {suggestion:?}"
    )]
    OldSyntax {
        /// The pattern that was given.
        pattern: String,
        /// The same pattern in axum 0.8 syntax (`/users/{id}`, `/files/{*rest}`).
        suggestion: String,
    },
    /// Two rules have the same pattern and method: the second could never
    /// decide anything.
    #[error(
        "route {pattern:?} is configured twice for the same method (first as {first:?}); \
         keep one rule per pattern and method"
    )]
    Duplicate {
        /// The later pattern.
        pattern: String,
        /// The earlier pattern it repeats.
        first: String,
    },
    /// A route pattern conflicts with another one (e.g. `/users/{id}` and
    /// `/users/{name}`: the router cannot tell them apart).
    #[error("route {pattern:?} conflicts with another route: {reason}")]
    Conflict {
        /// The pattern that could not be added.
        pattern: String,
        /// The router's explanation.
        reason: String,
    },
}

impl RouteError {
    /// The pattern at fault, as it was given.
    pub fn pattern(&self) -> &str {
        match self {
            Self::Invalid { pattern, .. }
            | Self::OldSyntax { pattern, .. }
            | Self::Duplicate { pattern, .. }
            | Self::Conflict { pattern, .. } => pattern,
        }
    }
}

/// A field of a configuration read with serde ([`Config`][config], feature
/// `serde`) that cannot be used ([`ConfigError::File`]): where it is
/// ([`path`](Self::path): `policies.auth.quotas[0]`, `routes[1].path`,
/// `redis.ca_cert`, or `.` for the whole configuration) and what is wrong.
///
/// What is wrong is either a value that cannot be read (an unknown field, a
/// bad quota or duration, an undefined policy name): a message; or a value
/// that the layer builder, a policy or the backend refused: that
/// [`ConfigError`], as [`error`](Self::error) and as the
/// [`source`](std::error::Error::source) of this error.
///
/// `Display` is `<path>: <what is wrong>`, the source's message included.
/// Neither `Display` nor `Debug` shows a password or an API key: an error
/// whose text would show one is kept as a message, with the secret masked.
///
#[cfg_attr(feature = "serde", doc = "[config]: crate::Config")]
#[cfg_attr(
    not(feature = "serde"),
    doc = "[config]: https://docs.rs/tower-redis-ratelimit/latest/tower_redis_ratelimit/config/struct.Config.html"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    path: String,
    problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "serde"), allow(dead_code))] // made by `Config` only
enum Problem {
    Message(String),
    Error(Box<ConfigError>),
}

#[cfg_attr(not(feature = "serde"), allow(dead_code))] // made by `Config` only
impl FileError {
    /// A value at `path` that cannot be read, and why.
    pub(crate) fn message(path: String, message: String) -> Self {
        Self {
            path,
            problem: Problem::Message(message),
        }
    }

    /// The builder's `error` for the value at `path`.
    pub(crate) fn error_at(path: String, error: ConfigError) -> Self {
        Self {
            path,
            problem: Problem::Error(Box::new(error)),
        }
    }

    /// Where in the configuration: `policies.auth.quotas[0]`,
    /// `routes[1].path`, `redis.url`..., or `.` for the whole configuration.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The error of the layer builder, a policy or the backend for this
    /// field, if that is what went wrong (`None` for a value that cannot be
    /// read at all, or whose error would have shown a secret).
    pub fn error(&self) -> Option<&ConfigError> {
        match &self.problem {
            Problem::Error(error) => Some(error),
            Problem::Message(_) => None,
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Message(message) => write!(f, "{}: {message}", self.path),
            Problem::Error(error) => write!(f, "{}: {error}", self.path),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Error(error) => Some(&**error),
            Problem::Message(_) => None,
        }
    }
}

/// A backend could not reach a decision.
///
/// The layer never returns this to the caller: it applies the policy's
/// [`crate::FailureMode`] instead. It is public so that custom [`crate::Backend`]s
/// can report failures, and [`crate::Admin`] calls return it (as
/// [`AdminError::Backend`](crate::AdminError::Backend)).
///
/// No variant names a type of another crate: the cause of a
/// [`Connection`](Self::Connection) error (for [`RedisBackend`](crate::RedisBackend),
/// redis-rs' error) is reachable through [`std::error::Error::source`], and
/// can be downcast there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The call to the backend's server failed: a connection refused, lost
    /// or timed out, or an error of the server as a whole (Redis: `LOADING`,
    /// `READONLY`, `NOPERM`...). The circuit breaker counts it. The cause is
    /// this error's [`source`](std::error::Error::source).
    #[error("connection: {0}")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered with something the crate does not understand.
    #[error("unexpected backend reply: {0}")]
    Protocol(String),
    /// The backend works, but could not decide for this one client key: its
    /// stored value has the wrong type or cannot be read, or writing it
    /// would take Redis past `maxmemory`. The decision's policy applies its
    /// [`FailureMode`](crate::FailureMode), and the circuit breaker does not
    /// count it: a fault of one key stays with that key.
    #[error("this client's state cannot be used: {0}")]
    Key(String),
    /// Any other failure of a custom backend.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
    /// The backend does not implement this call
    /// ([`Backend::peek`](crate::Backend::peek),
    /// [`Backend::reset`](crate::Backend::reset) or
    /// [`Backend::refund`](crate::Backend::refund): their default
    /// implementations).
    #[error("this backend does not support `{operation}`")]
    Unsupported {
        /// The call: `"peek"`, `"reset"` or `"refund"`.
        operation: &'static str,
    },
}
