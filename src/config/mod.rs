//! The layer configured from a file (feature `serde`).
//!
//! A [`Config`] is deserialised with serde from any format (TOML, YAML,
//! JSON...) and turned into a [`RateLimitLayer`] by the
//! [builder](crate::RateLimitLayerBuilder), so every check of the builder
//! applies. Errors name the field at fault, its value and what was expected:
//!
//! ```text
//! policies.auth.quotas[0]: "5/minn" is not a quota: the window "minn" is not a duration: unknown unit "minn", expected ms, s, m, h or d (or sec, min, hour, day...)
//! routes[0].policy: unknown policy "autth" (defined: api, auth)
//! routes[1].path: invalid route pattern "auth/logout": must start with `/`
//! ```
//!
//! Each is a [`ConfigError::File`]: its [`FileError`] has the field's
//! [`path`](FileError::path) and, when the builder, a policy or the backend
//! refused the value, that [`ConfigError`] as its
//! [`error`](FileError::error) (and `source()`), to match on:
//!
//! ```
//! use tower_redis_ratelimit::{Config, ConfigError, RouteError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let text = r#"
//!     [policies.api]
//!     quotas = ["100/min"]
//!
//!     [[routes]]
//!     path = "/users/:id"
//!     policy = "api"
//! "#;
//! let config = Config::from_deserializer(text.parse::<toml::Table>()?)?;
//! let Err(ConfigError::File(error)) = config.build() else { panic!("not a file error") };
//! assert_eq!(error.path(), "routes[0].path");
//! assert!(matches!(
//!     error.error(),
//!     Some(ConfigError::Route(RouteError::OldSyntax { suggestion, .. })) if suggestion == "/users/{id}"
//! ));
//! # Ok(())
//! # }
//! ```
//!
//! # The format
//!
//! ```toml
//! deadline = "50ms"                 # optional, default 50ms
//! headers = "ietf"                  # ietf (default) | legacy | both | none
//! default_policy = "api"            # optional: without it, unmatched requests are not limited
//! exempt = ["/health", "/metrics"]  # never limited
//! case_insensitive_paths = false    # optional
//! blocked_cache = 10000             # optional: denied clients remembered locally (0: off)
//! blocked_cache_max_age = "1s"      # optional: the longest a client is denied locally
//!                                   # without asking Redis again ("0s": cache off)
//! refund_refused_by_inner_layers = true  # optional: give back an admission another
//!                                   # rate-limit layer inside this one refused
//!
//! [redis]                           # optional; absent = in-memory
//! url = "redis://127.0.0.1:6379"    # or: cluster = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
//!                                   # or: sentinel = ["redis://10.0.0.1:26379"], master = "mymaster"
//! # ca_cert = "ca.crt"              # rediss:// (feature tls): a private CA; client_cert + client_key: mTLS
//! prefix = "rl"                     # optional key prefix
//!
//! [policies.api]                    # the policy name is the table's key
//! quotas = ["100/min"]              # one or more, checked all-or-nothing
//! algorithm = "sliding_window"      # sliding_window (default) | sliding_log | gcra
//! key = "ip"                        # "ip" (default) | "global" | { header = "x-api-key" }
//!                                   # | { client_ip = ["10.0.0.0/8"] } (behind trusted proxies)
//! failure_mode = "open"             # open (default) | closed | local
//! missing_key = "shared_bucket"     # shared_bucket (default) | deny
//! cost = 1                          # optional fixed cost per request
//! max_cost = 100                    # optional
//! shadow = false                    # optional: decide and report, never deny
//! # count_only_status = [401, 403]  # optional: refund every other response's cost
//! # charge_from_header = "x-tokens-used"  # optional: admit at cost 0 while within the
//!                                   # limit, then charge the response header's value
//! allow = { networks = ["10.0.0.0/8"], keys = ["batch-job"] }  # optional: never limited (see AccessList)
//! deny = { networks = ["203.0.113.0/24"] }                      # optional: always 403
//! tier_header = "x-plan"            # optional: the tier of a request (set by a trusted gateway)
//! # tier_keys = { "key-123" = "pro" } # or: the tier of each client key
//!
//! [policies.api.tiers]              # optional: other quotas per tier; absent/unknown = the policy's
//! pro = ["1000/min"]                # runs as policy "api.pro"
//! enterprise = ["10000/min", "1000000/day"]
//!
//! [policies.auth]
//! quotas = ["5/min"]
//! algorithm = "sliding_log"
//!
//! [[routes]]                        # first the method's own rule, then any method's
//! path = "/auth/login"              # axum syntax: /users/{id}, /files/{*rest}
//! method = "POST"                   # optional: any method
//! policy = "auth"
//! ```
//!
//! Quotas are `<count>/<window>`: `"100/min"`, `"10/s"`, `"5000/h"`,
//! `"1000/day"`, and the window may start with a number of units: `"3/15m"`,
//! `"20/90s"`, `"2/1h30m"`. Units, for windows and durations alike: `ms`;
//! `s`, `sec`, `second`; `m`, `min`, `minute`; `h`, `hour`; `d`, `day` (and
//! their plurals). Windows are at most 365 days. Months and years (`month`,
//! `M`, `year`, `y` and their plurals) are refused with an error, in
//! windows and durations alike: they have no fixed length, and a window of
//! `"5/month"` would be neither a calendar month nor 30 days (it would be
//! 30.44 days, sliding, not reset on the 1st). Write the days you mean:
//! `"5/30d"`, `"1000/365d"`. Unknown keys are errors.
//!
//! # Example
//!
//! ```
//! use tower_redis_ratelimit::Config;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let text = r#"
//!     default_policy = "api"
//!     exempt = ["/health"]
//!
//!     [policies.api]
//!     quotas = ["100/min", "10/s"]
//!
//!     [policies.auth]
//!     quotas = ["5/min"]
//!     algorithm = "sliding_log"
//!
//!     [[routes]]
//!     path = "/auth/login"
//!     method = "POST"
//!     policy = "auth"
//! "#;
//! // Any serde deserializer; here TOML, read first as a table.
//! let config = Config::from_deserializer(text.parse::<toml::Table>()?)?;
//! let layer = config.build()?; // [redis] absent: in-memory counters
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! With a TOML file, parse it into a `toml::Table` first, as above: syntax
//! errors then come with their line, and the errors of `Config` with the
//! path of the field.
//!
//! Secrets stay out of what a `Config` shows: `Debug` counts the API keys of
//! access lists and `tier_keys` instead of listing them and masks URL
//! passwords, and no error quotes a key or a password, even one written
//! where it does not belong (`sentinel = "redis://user:pass@host"`, a string
//! where a list goes): the fields that hold them name the kind of value they
//! refuse, not the value, and every message drops the source lines a format
//! quotes and masks the password of anything shaped like a URL.
//!
//! [`Config`] also implements [`Deserialize`], so it can be one section of
//! an application's own configuration; [`Config::build`] checks it again
//! then (naming fields from the section's root).

mod secret;
mod text;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use self::secret::{ApiKeys, RedisUrl, RedisUrls, Table, TierKeys, scrub};
use self::text::{Network, Parsed, TrustedProxy};
use crate::access::AccessList;
use crate::algorithm::Algorithm;
use crate::backend::{Backend, MemoryBackend, RedisBackend, check_prefix, redact_url};
use crate::error::{ConfigError, FileError};
use crate::failure::FailureMode;
use crate::headers::HeaderStyle;
use crate::key::{ClientIp, Global, Header, PeerIp};
use crate::layer::{RateLimitLayer, check_deadline};
use crate::limiter::tier_named_as_policy;
use crate::policy::{MissingKey, Policy};
use crate::quota::Quota;
use crate::routes::RuleCheck;

/// A whole [`RateLimitLayer`] configuration: settings, a backend, named
/// policies and the routes they apply to (see the [module](self) for the
/// format).
///
/// Read it with [`Config::from_deserializer`] (errors name the field at
/// fault), or as part of a larger configuration through its [`Deserialize`]
/// impl; build the layer with [`Config::build`], or with another backend with
/// [`Config::build_with_backend`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    deadline: Option<Parsed<Duration>>,
    headers: Option<Parsed<HeaderStyle>>,
    default_policy: Option<String>,
    #[serde(default)]
    exempt: Vec<String>,
    case_insensitive_paths: Option<bool>,
    refund_refused_by_inner_layers: Option<bool>,
    blocked_cache: Option<usize>,
    blocked_cache_max_age: Option<Parsed<Duration>>,
    redis: Option<RedisConfig>,
    #[serde(default)]
    policies: BTreeMap<String, PolicyConfig>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
}

/// One `[policies.<name>]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyConfig {
    quotas: Vec<Parsed<Quota>>,
    algorithm: Option<Parsed<Algorithm>>,
    key: Option<KeyConfig>,
    failure_mode: Option<Parsed<FailureMode>>,
    missing_key: Option<Parsed<MissingKey>>,
    cost: Option<u64>,
    max_cost: Option<u64>,
    #[serde(default)]
    shadow: bool,
    count_only_status: Option<Vec<u16>>,
    charge_from_header: Option<Parsed<HeaderName>>,
    allow: Option<Table<AccessConfig>>,
    deny: Option<Table<AccessConfig>>,
    #[serde(default)]
    tiers: BTreeMap<String, Vec<Parsed<Quota>>>,
    tier_header: Option<Parsed<HeaderName>>,
    tier_keys: Option<TierKeys>,
}

/// A policy's `allow` or `deny` list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessConfig {
    #[serde(default)]
    networks: Vec<Parsed<Network>>,
    #[serde(default)]
    keys: ApiKeys,
}

impl AccessConfig {
    /// The list, its keys checked: a key spelled as an address is a network
    /// (see [`AccessList`]), and a network that cannot be used is an error
    /// at `<path>.keys[i]`.
    fn list(&self, path: &str) -> Result<AccessList, ConfigError> {
        for (i, key) in self.keys.0.iter().enumerate() {
            if let Some(error) = AccessList::new().keys([key]).error() {
                return Err(at(format!("{path}.keys[{i}]"), error.clone()));
            }
        }
        let networks = self.networks.iter().map(|Parsed(n)| n.0.as_str());
        Ok(AccessList::new().networks(networks).keys(&self.keys.0))
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    path: String,
    method: Option<Parsed<Method>>,
    policy: String,
}

/// A policy's `key`: `"ip"`, `"global"`, `{ header = "<name>" }` or
/// `{ client_ip = [<trusted proxies>] }`.
#[derive(Debug, Clone)]
enum KeyConfig {
    PeerIp,
    Global,
    Header(HeaderName),
    ClientIp(Vec<String>),
}

const KEY_EXPECTED: &str = "\"ip\", \"global\", { header = \"<name>\" } or \
                            { client_ip = [<trusted proxy networks>] }";

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The table form.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct KeyTable {
            header: Option<Parsed<HeaderName>>,
            client_ip: Option<Vec<Parsed<TrustedProxy>>>,
        }

        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(KEY_EXPECTED)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<KeyConfig, E> {
                match text {
                    "ip" => Ok(KeyConfig::PeerIp),
                    "global" => Ok(KeyConfig::Global),
                    _ => Err(E::custom(format!(
                        "{text:?} is not a key: expected {KEY_EXPECTED}"
                    ))),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<KeyConfig, A::Error> {
                let table = KeyTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (table.header, table.client_ip) {
                    (Some(Parsed(name)), None) => Ok(KeyConfig::Header(name)),
                    (None, Some(proxies)) => Ok(KeyConfig::ClientIp(
                        proxies.into_iter().map(|Parsed(p)| p.0).collect(),
                    )),
                    _ => Err(de::Error::custom(
                        "expected one of { header = \"<name>\" } or \
                         { client_ip = [<trusted proxy networks>] }",
                    )),
                }
            }
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}

/// The `[redis]` table of a [`Config`]: one server (`url`), a Redis Cluster
/// (`cluster`, feature `cluster`) or the sentinels of a primary/replica
/// deployment (`sentinel`, with `master` and `master_url`, feature
/// `sentinel`); an optional key `prefix`; and for `rediss://` (feature `tls`)
/// PEM files: `ca_cert` (a CA trusted besides the system's roots),
/// `client_cert` and `client_key` (mutual TLS).
///
/// `Debug` and `Display` hide passwords.
#[derive(Clone, Deserialize)]
#[serde(try_from = "Table<RedisTable>")]
pub struct RedisConfig {
    urls: Vec<String>,
    kind: RedisKind,
    prefix: Option<String>,
    ca_cert: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RedisKind {
    Single,
    Cluster,
    Sentinel {
        master: String,
        master_url: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisTable {
    url: Option<RedisUrl>,
    cluster: Option<RedisUrls>,
    sentinel: Option<RedisUrls>,
    master: Option<String>,
    master_url: Option<RedisUrl>,
    prefix: Option<String>,
    ca_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

impl TryFrom<Table<RedisTable>> for RedisConfig {
    type Error = &'static str;

    fn try_from(Table(table): Table<RedisTable>) -> Result<Self, Self::Error> {
        let sentinel_only = table.master.is_some() || table.master_url.is_some();
        let (url, cluster, sentinel) = (
            table.url.map(|RedisUrl(u)| u),
            table.cluster.map(|RedisUrls(u)| u),
            table.sentinel.map(|RedisUrls(u)| u),
        );
        let (urls, kind) = match (url, cluster, sentinel) {
            (Some(url), None, None) => (vec![url], RedisKind::Single),
            (None, Some(nodes), None) if nodes.is_empty() => {
                return Err("`cluster` needs at least one node URL");
            }
            (None, Some(nodes), None) => (nodes, RedisKind::Cluster),
            (None, None, Some(sentinels)) if sentinels.is_empty() => {
                return Err("`sentinel` needs at least one sentinel URL");
            }
            (None, None, Some(sentinels)) => (
                sentinels,
                RedisKind::Sentinel {
                    master: table.master.unwrap_or_else(|| "mymaster".to_owned()),
                    master_url: table.master_url.map(|RedisUrl(u)| u),
                },
            ),
            (None, None, None) => {
                return Err("expected `url = \"redis://...\"`, \
                            `cluster = [\"redis://...\", ...]` or \
                            `sentinel = [\"redis://...:26379\", ...]`");
            }
            _ => {
                return Err("set one of `url` (one server), `cluster` (its nodes) or \
                            `sentinel` (the sentinels), not several");
            }
        };
        if sentinel_only && !matches!(kind, RedisKind::Sentinel { .. }) {
            return Err("`master` and `master_url` go with `sentinel = [...]`");
        }
        let client = match (table.client_cert, table.client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("`client_cert` and `client_key` go together (mutual TLS)"),
        };
        Ok(Self {
            urls,
            kind,
            prefix: table.prefix,
            ca_cert: table.ca_cert,
            client,
        })
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<_> = self.urls.iter().map(|u| redact_url(u)).collect();
        let mut d = f.debug_struct("RedisConfig");
        d.field("urls", &urls);
        match &self.kind {
            RedisKind::Single => d.field("kind", &"single"),
            RedisKind::Cluster => d.field("kind", &"cluster"),
            RedisKind::Sentinel { master, master_url } => d
                .field("master", master)
                .field("master_url", &master_url.as_deref().map(redact_url)),
        };
        d.field("prefix", &self.prefix)
            .field("ca_cert", &self.ca_cert)
            .field("client", &self.client)
            .finish()
    }
}

/// `redis at redis://host:6379`, `redis cluster at redis://a:7000, ...` or
/// `redis sentinel at redis://s1:26379, ..., primary `mymaster``, passwords
/// hidden.
impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<_> = self.urls.iter().map(|u| redact_url(u)).collect();
        match &self.kind {
            RedisKind::Single => write!(f, "redis at {}", urls.join(", ")),
            RedisKind::Cluster => write!(f, "redis cluster at {}", urls.join(", ")),
            RedisKind::Sentinel { master, .. } => write!(
                f,
                "redis sentinel at {}, primary `{master}`",
                urls.join(", ")
            ),
        }
    }
}

/// The error of a deployment or setting this build lacks the feature for.
#[allow(dead_code)] // unused when every feature is on
fn needs_feature(path: &str, what: &str, feature: &str) -> ConfigError {
    invalid(
        path,
        format!(
            "{what} needs the crate's `{feature}` feature \
             (tower-redis-ratelimit = {{ features = [\"{feature}\"] }})"
        ),
    )
}

impl RedisConfig {
    /// Whether this is a Redis Cluster (`cluster = [...]`).
    pub fn is_cluster(&self) -> bool {
        self.kind == RedisKind::Cluster
    }

    /// Whether this is a Sentinel deployment (`sentinel = [...]`).
    pub fn is_sentinel(&self) -> bool {
        matches!(self.kind, RedisKind::Sentinel { .. })
    }

    /// The backend (connects nothing; reads the PEM files named).
    ///
    /// # Errors
    ///
    /// A [`ConfigError::File`] at the field at fault: a bad URL or prefix, a
    /// PEM file that cannot be read or used, or a deployment or TLS setting
    /// without the crate's feature for it (`cluster`, `sentinel`, `tls`),
    /// at `redis.url`, `redis.cluster`, `redis.sentinel`, `redis.prefix`,
    /// `redis.ca_cert`, `redis.client_cert` or `redis.client_key`.
    pub fn backend(&self) -> Result<RedisBackend, ConfigError> {
        let field = match self.kind {
            RedisKind::Single => "redis.url",
            RedisKind::Cluster => "redis.cluster",
            RedisKind::Sentinel { .. } => "redis.sentinel",
        };
        let builder = match &self.kind {
            RedisKind::Single => RedisBackend::builder(self.urls[0].clone()),
            RedisKind::Cluster => {
                #[cfg(feature = "cluster")]
                {
                    RedisBackend::cluster_builder(self.urls.iter().cloned())
                }
                #[cfg(not(feature = "cluster"))]
                return Err(needs_feature(field, "Redis Cluster", "cluster"));
            }
            RedisKind::Sentinel { master, master_url } => {
                #[cfg(feature = "sentinel")]
                {
                    let builder = RedisBackend::sentinel_builder(self.urls.iter().cloned(), master);
                    match master_url {
                        Some(url) => builder.master_url(url.clone()),
                        None => builder,
                    }
                }
                #[cfg(not(feature = "sentinel"))]
                {
                    let _ = (master, master_url);
                    return Err(needs_feature(field, "Redis Sentinel", "sentinel"));
                }
            }
        };
        let builder = match &self.prefix {
            Some(prefix) => {
                check_prefix(prefix).map_err(|e| at("redis.prefix", e))?;
                builder.prefix(prefix.clone())
            }
            None => builder,
        };
        let builder = self.tls(builder)?;
        // What is left to check is the URLs (TLS settings for `redis://`
        // ones included).
        builder.build().map_err(|error| at(field, error))
    }

    /// Adds the PEM files of `ca_cert`, `client_cert` and `client_key`.
    #[cfg(feature = "tls")]
    fn tls(
        &self,
        mut builder: crate::RedisBackendBuilder,
    ) -> Result<crate::RedisBackendBuilder, ConfigError> {
        use crate::backend::{check_ca, check_client_cert, check_client_key};

        type Check = fn(&[u8]) -> Result<(), ConfigError>;
        // The PEM text of the file named at `field`, checked.
        let read = |field: &str, path: &PathBuf, check: Check| {
            let field = format!("redis.{field}");
            let pem = std::fs::read(path)
                .map_err(|e| invalid(&field, format!("cannot read {}: {e}", path.display())))?;
            check(&pem).map_err(|e| at(field, e))?;
            Ok::<_, ConfigError>(pem)
        };
        if let Some(path) = &self.ca_cert {
            builder = builder.tls_ca_pem(read("ca_cert", path, check_ca)?);
        }
        if let Some((cert, key)) = &self.client {
            let cert = read("client_cert", cert, check_client_cert)?;
            let key = read("client_key", key, check_client_key)?;
            builder = builder.tls_client_pem(cert, key);
        }
        Ok(builder)
    }

    /// Without the `tls` feature, PEM files are an error.
    #[cfg(not(feature = "tls"))]
    fn tls(
        &self,
        builder: crate::RedisBackendBuilder,
    ) -> Result<crate::RedisBackendBuilder, ConfigError> {
        match (&self.ca_cert, &self.client) {
            (None, None) => Ok(builder),
            (Some(_), _) => Err(needs_feature("redis.ca_cert", "TLS", "tls")),
            (None, Some(_)) => Err(needs_feature("redis.client_cert", "TLS", "tls")),
        }
    }
}

/// `error`, from the field at `path`: a [`FileError`] with `error` as its
/// source, unless the text of `error` would show a URL's password (a
/// misplaced URL in a route or a prefix...): then a message, [scrubbed](scrub).
fn at(path: impl Into<String>, error: ConfigError) -> ConfigError {
    let path = scrub(&path.into()).into_owned();
    let display = error.to_string();
    let shows_secret = matches!(scrub(&display), Cow::Owned(_))
        || matches!(scrub(&format!("{error:?}")), Cow::Owned(_));
    if shows_secret {
        return invalid(path, display);
    }
    FileError::error_at(path, error).into()
}

/// A value at `path` that cannot be read, and why, both [scrubbed](scrub):
/// every error of a configuration is made here or by [`at`].
fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    let (path, message) = (path.into(), message.into());
    FileError::message(scrub(&path).into_owned(), scrub(&message).into_owned()).into()
}

impl PolicyConfig {
    /// The policy, checked as the builder checks it: each field as it is
    /// set, its errors located at that field, under `path`.
    fn policy(&self, name: &str, path: &str) -> Result<Policy, ConfigError> {
        let mut policy = Policy::new(name);
        policy.check_name().map_err(|e| at(path, e))?;
        // Before the quotas: it bounds their limits.
        if let Some(Parsed(algorithm)) = self.algorithm {
            policy = policy.algorithm(algorithm);
        }
        for (i, Parsed(quota)) in self.quotas.iter().enumerate() {
            policy = policy.quota(*quota);
            policy
                .check_quota(i)
                .map_err(|e| at(format!("{path}.quotas[{i}]"), e))?;
        }
        policy
            .check_has_quota()
            .map_err(|e| at(format!("{path}.quotas"), e))?;
        policy = match &self.key {
            None | Some(KeyConfig::PeerIp) => policy.key(PeerIp::new()),
            Some(KeyConfig::Global) => policy.key(Global),
            Some(KeyConfig::Header(name)) => policy.key(Header::from_name(name.clone())),
            Some(KeyConfig::ClientIp(proxies)) => {
                policy.key(ClientIp::new().trust_proxies(proxies))
            }
        };
        if let Some(Parsed(mode)) = self.failure_mode {
            policy = policy.failure_mode(mode);
        }
        if let Some(Parsed(missing)) = self.missing_key {
            policy = policy.on_missing_key(missing);
        }
        // Both before either check: a cost is checked against the max cost.
        if let Some(max_cost) = self.max_cost {
            policy = policy.max_cost(max_cost);
        }
        if let Some(cost) = self.cost {
            policy = policy.cost(cost);
        }
        if self.max_cost.is_some() {
            policy
                .check_max_cost()
                .map_err(|e| at(format!("{path}.max_cost"), e))?;
        }
        if self.cost.is_some() {
            policy
                .check_cost()
                .map_err(|e| at(format!("{path}.cost"), e))?;
        }
        policy = policy.shadow(self.shadow);
        if let Some(header) = &self.charge_from_header {
            policy = policy.charge_from_header(header.0.clone());
        }
        if let Some(statuses) = &self.count_only_status {
            for (i, &status) in statuses.iter().enumerate() {
                if !(100..=599).contains(&status) {
                    return Err(invalid(
                        format!("{path}.count_only_status[{i}]"),
                        format!("{status} is not an HTTP status: expected 100 to 599"),
                    ));
                }
            }
            policy = policy.count_only_status(statuses.iter().copied());
        }
        if let Some(Table(allow)) = &self.allow {
            policy = policy.allow(allow.list(&format!("{path}.allow"))?);
        }
        if let Some(Table(deny)) = &self.deny {
            policy = policy.deny(deny.list(&format!("{path}.deny"))?);
        }
        for (i, (tier, quotas)) in self.tiers.iter().enumerate() {
            let path = format!("{path}.tiers.{tier}");
            policy = policy.tier(tier.clone(), quotas.iter().map(|Parsed(q)| *q));
            policy.check_tier(i).map_err(|e| at(&path, e))?;
            // The policy the tier runs as (`<name>.<tier>`, its quotas).
            let runs_as = policy
                .tier_policies()
                .into_iter()
                .nth(i)
                .expect("the tier just added");
            for j in 0..quotas.len() {
                runs_as
                    .check_quota(j)
                    .map_err(|e| at(format!("{path}[{j}]"), e))?;
            }
            runs_as.validate().map_err(|e| at(&path, e))?;
        }
        let selector = match (&self.tier_header, &self.tier_keys) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("{path}.tier_keys"),
                    "set tier_header or tier_keys, not both",
                ));
            }
            (Some(Parsed(header)), None) => {
                policy = policy.tier_header(header.clone());
                "tier_header"
            }
            (None, Some(TierKeys(table))) => {
                policy = policy.tier_keys(table.clone());
                "tier_keys"
            }
            // Tiers without a selector: the tiers are what cannot be used.
            (None, None) => "tiers",
        };
        policy
            .check_selector()
            .map_err(|e| at(format!("{path}.{selector}"), e))?;
        if self.tier_keys.is_some() {
            policy
                .check_tier_keys()
                .map_err(|e| at(format!("{path}.tier_keys"), e))?;
        }
        // Every field was checked as it was set; anything else is the
        // policy's as a whole.
        policy.validate().map_err(|e| at(path, e))?;
        Ok(policy)
    }
}

impl Config {
    /// Reads a configuration from any serde deserializer, then checks what
    /// the format cannot: every policy (as the layer builder would), and that
    /// routes and the default name defined policies.
    ///
    /// # Errors
    ///
    /// A [`ConfigError::File`] naming the field at fault
    /// (`policies.auth.quotas[0]`): a value that cannot be read (an unknown
    /// field, a bad quota or duration, an unknown name...), a reference to
    /// an undefined policy, or a policy the layer builder would refuse (that
    /// [`PolicyError`](crate::PolicyError) is the [`FileError`]'s source).
    pub fn from_deserializer<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| invalid(e.path().to_string(), format_message(&e.inner().to_string())))?;
        config.policies()?;
        Ok(config)
    }

    /// The `[redis]` table, if any (without it, [`build`](Self::build) uses a
    /// [`MemoryBackend`]).
    pub fn redis(&self) -> Option<&RedisConfig> {
        self.redis.as_ref()
    }

    /// The names of the policies (the keys of `[policies.<name>]`), sorted.
    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.keys().map(String::as_str)
    }

    /// Builds the layer on the configured backend: Redis if there is a
    /// `[redis]` table ([`RedisConfig::backend`]), else a fresh
    /// [`MemoryBackend`].
    ///
    /// # Errors
    ///
    /// Everything [`from_deserializer`](Self::from_deserializer) checks, a
    /// bad Redis setting ([`RedisConfig::backend`]), and every
    /// [`ConfigError`] of the layer builder (bad route patterns, a zero
    /// deadline...), each a [`ConfigError::File`] at the field at fault
    /// (`routes[1].path`, `deadline`; `.` for the configuration as a whole,
    /// such as one with no policy for any request).
    pub fn build(&self) -> Result<RateLimitLayer, ConfigError> {
        match &self.redis {
            Some(redis) => self.build_with_backend(redis.backend()?),
            None => self.build_with_backend(MemoryBackend::new()),
        }
    }

    /// Builds the layer on `backend`, whatever the `[redis]` table says (e.g.
    /// a backend chosen by an environment variable, or a test's).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), without the Redis URL.
    pub fn build_with_backend(&self, backend: impl Backend) -> Result<RateLimitLayer, ConfigError> {
        let policies = self.policies()?;
        let mut builder = RateLimitLayer::builder().backend(backend);
        if let Some(Parsed(deadline)) = self.deadline {
            check_deadline(deadline).map_err(|e| at("deadline", e))?;
            builder = builder.deadline(deadline);
        }
        if let Some(Parsed(style)) = self.headers {
            builder = builder.headers(style);
        }
        if let Some(yes) = self.case_insensitive_paths {
            builder = builder.case_insensitive_paths(yes);
        }
        if let Some(yes) = self.refund_refused_by_inner_layers {
            builder = builder.refund_refused_by_inner_layers(yes);
        }
        if let Some(capacity) = self.blocked_cache {
            builder = builder.blocked_cache(capacity);
        }
        if let Some(Parsed(max_age)) = self.blocked_cache_max_age {
            builder = builder.blocked_cache_max_age(max_age);
        }
        if let Some(name) = &self.default_policy {
            builder = builder.default_policy(policies[name.as_str()].clone());
        }
        // Each rule is checked as it is added, with those before it, in the
        // builder's order.
        let mut rules = RuleCheck::new(self.case_insensitive_paths.unwrap_or(false));
        for (i, pattern) in self.exempt.iter().enumerate() {
            rules
                .add(None, pattern)
                .map_err(|e| at(format!("exempt[{i}]"), e))?;
            builder = builder.exempt(pattern.clone());
        }
        for (i, route) in self.routes.iter().enumerate() {
            let policy = policies[route.policy.as_str()].clone();
            let method = route.method.as_ref().map(|Parsed(m)| m);
            rules
                .add(method.cloned(), &route.path)
                .map_err(|e| at(format!("routes[{i}].path"), e))?;
            builder = match method {
                Some(method) => builder.route_method(method.clone(), route.path.clone(), policy),
                None => builder.route(route.path.clone(), policy),
            };
        }
        // Every field was checked as it was set: what is left is the
        // configuration's as a whole (no policy applies to any request).
        builder.build().map_err(|error| at(".", error))
    }

    /// Every policy, checked, by name; and every reference to one checked.
    fn policies(&self) -> Result<BTreeMap<&str, Policy>, ConfigError> {
        let mut policies = BTreeMap::new();
        for (name, config) in &self.policies {
            let policy = config.policy(name, &format!("policies.{name}"))?;
            policies.insert(name.as_str(), policy);
        }
        // A tier runs as policy `<name>.<tier>`: no other policy may have
        // that name.
        for (name, policy) in &policies {
            for tier in policy.tier_names() {
                let runs_as = format!("{name}.{tier}");
                if policies.contains_key(runs_as.as_str()) {
                    return Err(at(
                        format!("policies.{name}.tiers.{tier}"),
                        tier_named_as_policy(&runs_as, name),
                    ));
                }
            }
        }
        let check = |path: String, name: &str| {
            if policies.contains_key(name) {
                return Ok(());
            }
            let defined = if policies.is_empty() {
                "no policy is defined".to_owned()
            } else {
                let names: Vec<&str> = policies.keys().copied().collect();
                format!("defined: {}", names.join(", "))
            };
            Err(invalid(
                path,
                format!("unknown policy {name:?} ({defined})"),
            ))
        };
        if let Some(name) = &self.default_policy {
            check("default_policy".to_owned(), name)?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            check(format!("routes[{i}].policy"), &route.policy)?;
        }
        Ok(policies)
    }
}

/// A format's error message without what the path already says: toml ends
/// its messages with a newline, and when it has no source text to quote,
/// with a line locating the error by its keys (`in `policies.auth.quotas``).
fn format_message(message: &str) -> String {
    let message = message.trim_end();
    let located = message.rsplit_once('\n').filter(|(_, last)| {
        last.starts_with("in `") && last.ends_with('`') && !last[4..last.len() - 1].contains('`')
    });
    match located {
        Some((rest, _)) => rest.trim_end().to_owned(),
        None => message.to_owned(),
    }
}
