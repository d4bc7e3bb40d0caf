//! The layer configured from a file (feature `serde`): every configuration
//! file of the repository loads and builds; the documented shape yields the
//! policies and routes it says, proven by requests through the built layer;
//! every invalid input is refused with a message naming the field, the value
//! and what was expected.

// `limits` (the examples' entry point) reads the process environment: the
// tests call `limits_from` with their own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use http::{Method, Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::config::RedisConfig;
use tower_redis_ratelimit::{
    Config, ConfigError, FileError, MemoryBackend, Policy, PolicyError, RateLimitLayer, RouteError,
};

use crate::example_config;
use crate::support;

/// The shape the configuration format is documented with.
const SHAPE: &str = r#"
deadline = "50ms"                 # optional
headers = "ietf"                  # ietf | legacy | both | none
default_policy = "api"            # optional
exempt = ["/health", "/metrics"]

[redis]                           # optional; absent = in-memory
url = "redis://127.0.0.1:6379"    # or: cluster = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]

[policies.api]
quotas = ["100/min"]
algorithm = "sliding_window"      # sliding_window | sliding_log (and any algorithm added later)
key = "ip"                        # "ip" | "global" | { header = "x-api-key" }
failure_mode = "open"             # open | closed | local
shadow = false

[policies.auth]
quotas = ["5/min"]
algorithm = "sliding_log"

[[routes]]
path = "/auth/login"
method = "POST"                   # optional
policy = "auth"
"#;

/// Reads TOML as an application would: a table first (syntax errors come with
/// their line), then the configuration (errors come with their field).
fn load(text: &str) -> Result<Config, ConfigError> {
    let table: toml::Table = text.parse().expect("valid TOML syntax");
    Config::from_deserializer(table)
}

/// The message of the error loading, or else building, `text`.
fn error(text: &str) -> String {
    match load(text) {
        Err(e) => e.to_string(),
        Ok(config) => config
            .build_with_backend(MemoryBackend::new())
            .expect_err("an invalid configuration")
            .to_string(),
    }
}

async fn send(layer: &RateLimitLayer, method: Method, uri: &str, peer: &str) -> Response<String> {
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(String::new())
        .unwrap();
    let peer: SocketAddr = format!("{peer}:40000").parse().unwrap();
    request.extensions_mut().insert(peer);
    service.oneshot(request).await.unwrap()
}

fn header<'a>(response: &'a Response<String>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("an ASCII header"))
}

#[tokio::test]
async fn every_config_file_in_the_repository_loads_and_builds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config = load(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config
            .build()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        files += 1;
    }
    assert!(files >= 1, "no examples/*.toml found in {}", dir.display());
}

#[tokio::test]
async fn the_documented_shape_limits_as_it_says() {
    let config = load(SHAPE).unwrap();
    assert_eq!(config.policy_names().collect::<Vec<_>>(), ["api", "auth"]);
    let redis = config.redis().expect("a [redis] table");
    assert!(!redis.is_cluster());
    assert_eq!(redis.to_string(), "redis at redis://127.0.0.1:6379");
    // Its own backend builds (connecting lazily); the test counts in memory.
    config.build().unwrap();
    let layer = config.build_with_backend(MemoryBackend::new()).unwrap();

    for attempt in 1..=5 {
        let response = send(&layer, Method::POST, "/auth/login", "192.0.2.1").await;
        assert_eq!(response.status(), StatusCode::OK, "login {attempt}");
        assert_eq!(
            header(&response, "ratelimit-policy"),
            Some("\"auth\";q=5;w=60")
        );
    }
    let denied = send(&layer, Method::POST, "/auth/login", "192.0.2.1").await;
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&denied, "retry-after").is_some());
    // Another client has its own count; path spellings are the same route.
    let other = send(&layer, Method::POST, "//auth/login/", "192.0.2.2").await;
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(
        header(&other, "ratelimit-policy"),
        Some("\"auth\";q=5;w=60")
    );

    // The route is for POST: a GET of the same path gets the default policy.
    let get = send(&layer, Method::GET, "/auth/login", "192.0.2.1").await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(header(&get, "ratelimit-policy"), Some("\"api\";q=100;w=60"));
    let state = header(&get, "ratelimit").unwrap();
    assert!(state.starts_with("\"api\";r=99;"), "{state}");

    // Exempt paths carry no rate-limit headers, however often they are hit.
    for path in ["/health", "/metrics"] {
        for _ in 0..10 {
            let response = send(&layer, Method::GET, path, "192.0.2.1").await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(header(&response, "ratelimit-policy"), None, "{path}");
        }
    }
}

#[tokio::test]
async fn the_example_file_limits_as_it_says() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/limits.toml"))
            .unwrap();
    let config = load(&text).unwrap();
    assert!(config.redis().is_none(), "the examples run without Redis");
    assert_eq!(
        config.policy_names().collect::<Vec<_>>(),
        ["api", "auth", "partner", "session", "tokens"]
    );
    let layer = config.build().unwrap();
    let api = send(&layer, Method::GET, "/api/hello", "192.0.2.1").await;
    assert_eq!(header(&api, "ratelimit-policy"), Some("\"api\";q=100;w=60"));
    for _ in 0..5 {
        let login = send(&layer, Method::POST, "/auth/login", "192.0.2.1").await;
        assert_eq!(login.status(), StatusCode::OK);
    }
    let login = send(&layer, Method::POST, "/auth/login", "192.0.2.1").await;
    assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS);
    // The partner policy keys by x-api-key and denies requests without one.
    let keyless = send(&layer, Method::GET, "/partner/orders", "192.0.2.1").await;
    assert_eq!(keyless.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn every_setting_reaches_the_layer() {
    let config = load(
        r#"
        headers = "legacy"
        default_policy = "p"

        [policies.p]
        quotas = ["2/min", "10/h"]
        key = { header = "X-Api-Key" }
        cost = 2
        max_cost = 2
        failure_mode = "closed"

        [policies.proxied]
        quotas = ["1/min"]
        key = { client_ip = ["10.0.0.0/8"] }

        [[routes]]
        path = "/behind-proxy"
        policy = "proxied"
        "#,
    )
    .unwrap();
    let layer = config.build().unwrap();
    let send_key = |key: &'static str| {
        let layer = layer.clone();
        async move {
            let service = layer.layer(tower::service_fn(|_: Request<String>| async {
                Ok::<_, Infallible>(Response::new("ok".to_owned()))
            }));
            let request = Request::builder()
                .uri("/x")
                .header("x-api-key", key)
                .body(String::new())
                .unwrap();
            service.oneshot(request).await.unwrap()
        }
    };
    // Cost 2 of a 2/min quota: one request per key, legacy headers.
    let first = send_key("a").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-ratelimit-limit"), Some("2"));
    assert_eq!(header(&first, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&first, "ratelimit-policy"), None);
    assert_eq!(send_key("a").await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send_key("b").await.status(), StatusCode::OK);

    // Behind a trusted proxy, each forwarded client has its own count.
    let forwarded = |client: &'static str| {
        let layer = layer.clone();
        async move {
            let service = layer.layer(tower::service_fn(|_: Request<String>| async {
                Ok::<_, Infallible>(Response::new("ok".to_owned()))
            }));
            let mut request = Request::builder()
                .uri("/behind-proxy")
                .header("x-forwarded-for", client)
                .body(String::new())
                .unwrap();
            let proxy: SocketAddr = "10.1.2.3:40000".parse().unwrap();
            request.extensions_mut().insert(proxy);
            service.oneshot(request).await.unwrap().status()
        }
    };
    assert_eq!(forwarded("198.51.100.1").await, StatusCode::OK);
    assert_eq!(
        forwarded("198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(forwarded("198.51.100.2").await, StatusCode::OK);
}

/// `shadow = true` reaches the policy: over the limit, requests pass with
/// the would-be headers (r=0) instead of a 429.
#[tokio::test]
async fn shadow_policies_from_a_file_decide_but_deny_nothing() {
    let text = "default_policy = \"trial\"\n[policies.trial]\nquotas = [\"2/min\"]\nshadow = true";
    let layer = load(text).unwrap().build().unwrap();
    for r in ["1", "0", "0"] {
        let response = send(&layer, Method::GET, "/x", "192.0.2.9").await;
        assert_eq!(response.status(), StatusCode::OK);
        let state = header(&response, "ratelimit").unwrap();
        assert!(state.starts_with(&format!("\"trial\";r={r};t=")), "{state}");
    }
    let enforced = "default_policy = \"trial\"\n[policies.trial]\nquotas = [\"2/min\"]";
    let layer = load(enforced).unwrap().build().unwrap();
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let response = send(&layer, Method::GET, "/x", "192.0.2.9").await;
        assert_eq!(response.status(), expected);
    }
}

/// Tiers, access lists and the blocked-cache max age, from a file.
const PER_CLIENT: &str = r#"
default_policy = "api"
blocked_cache_max_age = "300ms"

[policies.api]
quotas = ["2/min"]
key = { client_ip = ["127.0.0.1"] }
allow = { networks = ["10.20.0.0/16"], keys = ["192.0.2.200"] }
deny = { networks = ["203.0.113.0/24"] }
tier_header = "X-Plan"

[policies.api.tiers]
pro = ["4/min"]

[policies.partner]
quotas = ["1/min"]
key = { header = "x-api-key" }
tier_keys = { "gold-key" = "gold" }
deny = { keys = ["revoked-key"] }

[policies.partner.tiers]
gold = ["3/min"]

[[routes]]
path = "/partner"
policy = "partner"
"#;

async fn send_from(
    layer: &RateLimitLayer,
    uri: &str,
    headers: &[(&str, &str)],
) -> Response<String> {
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(String::new()).unwrap();
    // The trusted proxy: X-Forwarded-For names the client.
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    request.extensions_mut().insert(peer);
    service.oneshot(request).await.unwrap()
}

/// `limit` admitted under `policy`, then 429.
async fn limits(
    layer: &RateLimitLayer,
    uri: &str,
    headers: &[(&str, &str)],
    limit: usize,
    policy: &str,
) {
    for i in 0..limit {
        let response = send_from(layer, uri, headers).await;
        assert_eq!(response.status(), StatusCode::OK, "{headers:?} request {i}");
        assert_eq!(
            header(&response, "ratelimit-policy"),
            Some(policy),
            "{headers:?}"
        );
    }
    let response = send_from(layer, uri, headers).await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{headers:?}"
    );
}

/// `instance()` builds the file's layer as one more instance of an
/// application: every instance shares the counters.
async fn per_client_limits_from_a_file(instance: impl Fn() -> RateLimitLayer) {
    let layer = instance();
    // Tiers by header (any case in the file) and by key table.
    limits(
        &layer,
        "/",
        &[("x-forwarded-for", "198.51.100.1")],
        2,
        "\"api\";q=2;w=60",
    )
    .await;
    let pro = [("x-forwarded-for", "198.51.100.2"), ("x-plan", "pro")];
    limits(&layer, "/", &pro, 4, "\"api.pro\";q=4;w=60").await;
    let unknown = [("x-forwarded-for", "198.51.100.3"), ("x-plan", "platinum")];
    limits(&layer, "/", &unknown, 2, "\"api\";q=2;w=60").await;
    limits(
        &layer,
        "/partner",
        &[("x-api-key", "gold-key")],
        3,
        "\"partner.gold\";q=3;w=60",
    )
    .await;
    limits(
        &layer,
        "/partner",
        &[("x-api-key", "plain-key")],
        1,
        "\"partner\";q=1;w=60",
    )
    .await;
    // Allow- and deny-lists by network (of the client behind the trusted
    // proxy) and by key.
    for _ in 0..4 {
        for allowed in ["10.20.3.4", "192.0.2.200"] {
            let response = send_from(&layer, "/", &[("x-forwarded-for", allowed)]).await;
            assert_eq!(response.status(), StatusCode::OK, "{allowed}");
            assert_eq!(header(&response, "ratelimit-policy"), None, "{allowed}");
        }
        let denied = send_from(&layer, "/", &[("x-forwarded-for", "203.0.113.50")]).await;
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(header(&denied, "retry-after"), None);
        let revoked = send_from(&layer, "/partner", &[("x-api-key", "revoked-key")]).await;
        assert_eq!(revoked.status(), StatusCode::FORBIDDEN);
    }
    // The blocked-cache max age (300 ms) reaches the layer: another
    // instance, holding the client's denial, admits it again within it after
    // a reset made on this one.
    let other = instance();
    let client = [("x-forwarded-for", "198.51.100.1")];
    assert_eq!(
        send_from(&other, "/", &client).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    layer
        .admin()
        .reset("api", &tower_redis_ratelimit::Key::new("198.51.100.1"))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while send_from(&other, "/", &client).await.status() != StatusCode::OK {
        assert!(
            start.elapsed() < std::time::Duration::from_millis(700),
            "still denied after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn per_client_limits_from_a_file_in_memory() {
    let config = load(PER_CLIENT).unwrap();
    let shared = MemoryBackend::new();
    per_client_limits_from_a_file(|| config.build_with_backend(shared.clone()).unwrap()).await;
}

#[tokio::test]
async fn per_client_limits_from_a_file_on_redis() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("config-per-client");
    let config = load(&format!(
        "{PER_CLIENT}\n[redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n"
    ))
    .unwrap();
    per_client_limits_from_a_file(|| config.build().unwrap()).await;
}

#[test]
fn invalid_configurations_name_the_field_the_value_and_what_was_expected() {
    let policy = |quota: &str| format!("[policies.auth]\nquotas = [{quota:?}]\n");
    let cases: Vec<(&str, String, &str)> = vec![
        // Quotas.
        (
            "unknown unit",
            policy("5/minn"),
            "policies.auth.quotas[0]: \"5/minn\" is not a quota: the window \"minn\" is not a \
             duration: unknown unit \"minn\", expected ms, s, m, h or d (or sec, min, hour, day...)",
        ),
        (
            "zero count",
            policy("0/min"),
            "policies.auth.quotas[0]: \"0/min\" is not a quota: the count must be at least 1",
        ),
        (
            "no count",
            policy("/min"),
            "policies.auth.quotas[0]: \"/min\" is not a quota: expected a count before \"/\", \
             e.g. \"100/min\"",
        ),
        (
            "no window",
            policy("5"),
            "policies.auth.quotas[0]: \"5\" is not a quota: expected <count>/<window>, e.g. \
             \"100/min\" or \"3/15m\"",
        ),
        (
            "empty window",
            policy("5/"),
            "policies.auth.quotas[0]: \"5/\" is not a quota: expected a window after \"/\", \
             e.g. \"5/min\" or \"5/15m\"",
        ),
        (
            "count not a number",
            policy("x/min"),
            "policies.auth.quotas[0]: \"x/min\" is not a quota: expected a whole number before \
             \"/\", found \"x\"",
        ),
        (
            "second quota",
            "[policies.auth]\nquotas = [\"5/min\", \"10/hour\", \"1/fortnight\"]".to_owned(),
            "policies.auth.quotas[2]: \"1/fortnight\" is not a quota: the window \"fortnight\" \
             is not a duration: unknown unit \"fortnight\", expected ms, s, m, h or d (or sec, \
             min, hour, day...)",
        ),
        (
            "a month has no fixed length",
            policy("5/month"),
            "policies.auth.quotas[0]: \"5/month\" is not a quota: the window \"month\" is \
             refused: months have no fixed length (\"month\" is not a calendar month): write \
             it in days, e.g. \"30d\" or \"365d\"",
        ),
        (
            "months, after a number",
            "[policies.auth]\nquotas = [\"5/min\", \"100/2months\"]".to_owned(),
            "policies.auth.quotas[1]: \"100/2months\" is not a quota: the window \"2months\" \
             is refused: months have no fixed length (\"months\" is not a calendar month): \
             write it in days, e.g. \"30d\" or \"365d\"",
        ),
        (
            "nor a year",
            policy("1000/1y"),
            "policies.auth.quotas[0]: \"1000/1y\" is not a quota: the window \"1y\" is \
             refused: years have no fixed length (\"y\" is not a calendar year): write it in \
             days, e.g. \"30d\" or \"365d\"",
        ),
        (
            "quota not a string",
            "[policies.auth]\nquotas = [5]".to_owned(),
            "policies.auth.quotas[0]: invalid type: integer `5`, expected a quota such as \
             \"100/min\" or \"3/15m\"",
        ),
        (
            "quotas missing",
            "[policies.auth]\nalgorithm = \"sliding_log\"".to_owned(),
            "policies.auth: missing field `quotas`",
        ),
        // Durations.
        (
            "duration without unit",
            "deadline = \"50\"".to_owned(),
            "deadline: \"50\" is not a duration: a unit is missing, expected ms, s, m, h or d \
             (or sec, min, hour, day...), e.g. \"50ms\" or \"2s\"",
        ),
        (
            "duration with an unknown unit",
            "deadline = \"50mss\"".to_owned(),
            "deadline: \"50mss\" is not a duration: unknown unit \"mss\", expected ms, s, m, h \
             or d (or sec, min, hour, day...), e.g. \"50ms\" or \"2s\"",
        ),
        (
            "a duration in months",
            "blocked_cache_max_age = \"1M\"".to_owned(),
            "blocked_cache_max_age: \"1M\" is not a duration: months have no fixed length \
             (\"M\" is not a calendar month): write it in days, e.g. \"30d\" or \
             \"365d\"",
        ),
        (
            "duration not a string",
            "deadline = 50".to_owned(),
            "deadline: invalid type: integer `50`, expected a duration such as \"50ms\" or \
             \"2s\"",
        ),
        // Names.
        (
            "unknown algorithm",
            "[policies.api]\nquotas = [\"1/s\"]\nalgorithm = \"token_bucket\"".to_owned(),
            "policies.api.algorithm: \"token_bucket\" is not an algorithm: expected \
             \"sliding_log\", \"sliding_window\" or \"gcra\"",
        ),
        (
            "unknown failure mode",
            "[policies.api]\nquotas = [\"1/s\"]\nfailure_mode = \"ajar\"".to_owned(),
            "policies.api.failure_mode: \"ajar\" is not a failure mode: expected \"open\", \
             \"closed\" or \"local\"",
        ),
        (
            "unknown header style",
            "headers = \"draft\"".to_owned(),
            "headers: \"draft\" is not a header style: expected \"ietf\", \"legacy\", \"both\" \
             or \"none\"",
        ),
        (
            "unknown key",
            "[policies.api]\nquotas = [\"1/s\"]\nkey = \"cookie\"".to_owned(),
            "policies.api.key: \"cookie\" is not a key: expected \"ip\", \"global\", \
             { header = \"<name>\" } or { client_ip = [<trusted proxy networks>] }",
        ),
        (
            "unknown key table",
            "[policies.api]\nquotas = [\"1/s\"]\nkey = { cookie = \"session\" }".to_owned(),
            "policies.api.key.cookie: unknown field `cookie`, expected `header` or `client_ip`",
        ),
        (
            "bad header name",
            "[policies.api]\nquotas = [\"1/s\"]\nkey = { header = \"x api key\" }".to_owned(),
            "policies.api.key.header: \"x api key\" is not an HTTP header name",
        ),
        (
            "bad trusted proxy",
            "[policies.api]\nquotas = [\"1/s\"]\nkey = { client_ip = [\"10.0.0.0/8\", \"lan\"] }"
                .to_owned(),
            "policies.api.key.client_ip[1]: invalid network \"lan\": expected CIDR like \
             10.0.0.0/8 or an address",
        ),
        (
            "bad method",
            "[policies.api]\nquotas = [\"1/s\"]\n[[routes]]\npath = \"/x\"\nmethod = \"PO ST\"\n\
             policy = \"api\""
                .to_owned(),
            "routes[0].method: \"PO ST\" is not an HTTP method",
        ),
        // Unknown fields.
        (
            "unknown top-level field",
            "deadlines = \"50ms\"".to_owned(),
            "deadlines: unknown field `deadlines`, expected one of `deadline`, `headers`, \
             `default_policy`, `exempt`, `case_insensitive_paths`, \
             `refund_refused_by_inner_layers`, `blocked_cache`, `blocked_cache_max_age`, \
             `redis`, `policies`, `routes`",
        ),
        (
            "unknown policy field",
            "[policies.api]\nquotas = [\"1/s\"]\nquota = \"1/s\"".to_owned(),
            "policies.api.quota: unknown field `quota`, expected one of `quotas`, `algorithm`, \
             `key`, `failure_mode`, `missing_key`, `cost`, `max_cost`, `shadow`, \
             `count_only_status`, `charge_from_header`, `allow`, `deny`, `tiers`, \
             `tier_header`, `tier_keys`",
        ),
        (
            "charge header that is not a header name",
            "[policies.api]\nquotas = [\"1/s\"]\ncharge_from_header = \"x tokens\"".to_owned(),
            "policies.api.charge_from_header: \"x tokens\" is not an HTTP header name",
        ),
        (
            "unknown route field",
            "[policies.api]\nquotas = [\"1/s\"]\n[[routes]]\npath = \"/x\"\npolicy = \"api\"\n\
             methods = [\"GET\"]"
                .to_owned(),
            "routes[0].methods: unknown field `methods`, expected one of `path`, `method`, `policy`",
        ),
        (
            "unknown redis field",
            "[redis]\nurl = \"redis://127.0.0.1\"\npassword = \"hunter2\"".to_owned(),
            "redis.password: unknown field `password`, expected one of `url`, `cluster`, \
             `sentinel`, `master`, `master_url`, `prefix`, `ca_cert`, `client_cert`, `client_key`",
        ),
        // References.
        (
            "route naming an unknown policy",
            "[policies.api]\nquotas = [\"1/s\"]\n[policies.auth]\nquotas = [\"5/min\"]\n\
             [[routes]]\npath = \"/auth/login\"\npolicy = \"autth\""
                .to_owned(),
            "routes[0].policy: unknown policy \"autth\" (defined: api, auth)",
        ),
        (
            "default naming an unknown policy",
            "default_policy = \"api\"".to_owned(),
            "default_policy: unknown policy \"api\" (no policy is defined)",
        ),
        // Redis.
        (
            "url and cluster",
            "[redis]\nurl = \"redis://a\"\ncluster = [\"redis://b:7000\"]".to_owned(),
            "redis: set one of `url` (one server), `cluster` (its nodes) or `sentinel` (the \
             sentinels), not several",
        ),
        (
            "neither url nor cluster",
            "[redis]\nprefix = \"rl\"".to_owned(),
            "redis: expected `url = \"redis://...\"`, `cluster = [\"redis://...\", ...]` or \
             `sentinel = [\"redis://...:26379\", ...]`",
        ),
        (
            "empty cluster",
            "[redis]\ncluster = []".to_owned(),
            "redis: `cluster` needs at least one node URL",
        ),
        (
            "empty sentinel list",
            "[redis]\nsentinel = []".to_owned(),
            "redis: `sentinel` needs at least one sentinel URL",
        ),
        (
            "master without sentinel",
            "[redis]\nurl = \"redis://a\"\nmaster = \"mymaster\"".to_owned(),
            "redis: `master` and `master_url` go with `sentinel = [...]`",
        ),
        (
            "client certificate without its key",
            "[redis]\nurl = \"rediss://a\"\nclient_cert = \"client.crt\"".to_owned(),
            "redis: `client_cert` and `client_key` go together (mutual TLS)",
        ),
        // The builder's errors, located.
        (
            "route pattern",
            "[policies.api]\nquotas = [\"1/s\"]\n[[routes]]\npath = \"/ok\"\npolicy = \"api\"\n\
             [[routes]]\npath = \"auth/login\"\npolicy = \"api\""
                .to_owned(),
            "routes[1].path: invalid route pattern \"auth/login\": must start with `/`",
        ),
        (
            "exempt pattern",
            "exempt = [\"/health\", \"/static/{*}\"]".to_owned(),
            "exempt[1]: invalid route pattern \"/static/{*}\": `{*}` needs a name",
        ),
        (
            "duplicate route",
            "[policies.api]\nquotas = [\"1/s\"]\n[[routes]]\npath = \"/a\"\nmethod = \"GET\"\n\
             policy = \"api\"\n[[routes]]\npath = \"/a\"\npolicy = \"api\"\n[[routes]]\n\
             path = \"/a\"\nmethod = \"get\"\npolicy = \"api\""
                .to_owned(),
            "routes[2].path: route \"/a\" is configured twice for the same method (first as \
             \"/a\"); keep one rule per pattern and method",
        ),
        (
            "zero deadline",
            "deadline = \"0ms\"".to_owned(),
            "deadline: the backend deadline must be greater than zero",
        ),
        (
            "limit above the sliding log's maximum",
            "[policies.log]\nquotas = [\"1/s\", \"20000/h\"]\nalgorithm = \"sliding_log\""
                .to_owned(),
            "policies.log.quotas[1]: policy `log`: quota 1 has a limit of 20000, above the \
             maximum of 10000",
        ),
        (
            "window below a millisecond",
            policy("5/500us"),
            "policies.auth.quotas[0]: policy `auth`: quota 0 has a window of 500µs, below the \
             1 ms minimum",
        ),
        (
            "two quotas with one window",
            "[policies.api]\nquotas = [\"10/min\", \"20/60s\"]".to_owned(),
            "policies.api.quotas[1]: policy `api`: quotas 0 and 1 have the same window",
        ),
        (
            "empty quota list",
            "[policies.api]\nquotas = []".to_owned(),
            "policies.api.quotas: policy `api` has no quota",
        ),
        (
            "cost above the limit",
            "[policies.api]\nquotas = [\"3/s\"]\ncost = 4".to_owned(),
            "policies.api.cost: policy `api`: cost 4 is outside 1..=3",
        ),
        // Access lists and tiers.
        (
            "bad network in an allow-list",
            "[policies.api]\nquotas = [\"3/s\"]\nallow = { networks = [\"10.0.0.0/8\", \"10.0.0/8\"] }"
                .to_owned(),
            "policies.api.allow.networks[1]: invalid network \"10.0.0/8\": expected CIDR like \
             10.0.0.0/8 or an address",
        ),
        (
            "unknown access-list field",
            "[policies.api]\nquotas = [\"3/s\"]\ndeny = { ips = [\"10.0.0.1\"] }".to_owned(),
            "policies.api.deny.ips: unknown field `ips`, expected `networks` or `keys`",
        ),
        (
            "tiers without a selector",
            "[policies.api]\nquotas = [\"3/s\"]\n[policies.api.tiers]\npro = [\"30/s\"]"
                .to_owned(),
            "policies.api.tiers: policy `api` has tiers but no tier selector \
             (Policy::tier_header, tier_keys or tier_fn)",
        ),
        (
            "a selector without tiers",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_header = \"x-plan\"".to_owned(),
            "policies.api.tier_header: policy `api` has a tier selector but no tier \
             (Policy::tier)",
        ),
        (
            "both selectors",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_header = \"x-plan\"\n\
             tier_keys = { k = \"pro\" }\n[policies.api.tiers]\npro = [\"30/s\"]"
                .to_owned(),
            "policies.api.tier_keys: set tier_header or tier_keys, not both",
        ),
        (
            "a key table naming an unknown tier",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_keys = { k1 = \"pro\", k2 = \"gold\" }\n\
             [policies.api.tiers]\npro = [\"30/s\"]\nteam = [\"10/s\"]"
                .to_owned(),
            "policies.api.tier_keys: policy `api`: unknown tier \"gold\" (its tiers: pro, team)",
        ),
        (
            "an empty tier",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_header = \"x-plan\"\n\
             [policies.api.tiers]\npro = []"
                .to_owned(),
            "policies.api.tiers.pro: policy `api.pro` has no quota",
        ),
        (
            "a bad quota in a tier",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_header = \"x-plan\"\n\
             [policies.api.tiers]\npro = [\"30/s\", \"60/1000ms\"]"
                .to_owned(),
            "policies.api.tiers.pro[1]: policy `api.pro`: quotas 0 and 1 have the same window",
        ),
        (
            "a bad tier name",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_header = \"x-plan\"\n\
             [policies.api.tiers]\n\"pro.plus\" = [\"30/s\"]"
                .to_owned(),
            "policies.api.tiers.pro.plus: policy `api`: invalid tier name \"pro.plus\": use 1 to \
             32 characters from A-Z, a-z, 0-9, `_`, `-`",
        ),
        (
            "a bad tier header",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_header = \"x plan\"".to_owned(),
            "policies.api.tier_header: \"x plan\" is not an HTTP header name",
        ),
        (
            "a bad blocked-cache max age",
            "blocked_cache_max_age = \"1 sek\"".to_owned(),
            "blocked_cache_max_age: \"1 sek\" is not a duration: unknown unit \"sek\", \
             expected ms, s, m, h or d (or sec, min, hour, day...), e.g. \"50ms\" or \"2s\"",
        ),
        (
            "invalid policy name",
            "[policies.\"my api\"]\nquotas = [\"3/s\"]".to_owned(),
            "policies.my api: invalid policy name \"my api\": use 1 to 64 characters from A-Z, \
             a-z, 0-9, `.`, `_`, `-`",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, expected) in &cases {
        let got = error(text);
        if got != *expected {
            failures.push(format!(
                "{name}:\n  expected: {expected}\n  got:      {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The error loading, or else building, `text`: a file error.
fn file_error(text: &str) -> FileError {
    let error = match load(text) {
        Err(e) => e,
        Ok(config) => config
            .build_with_backend(MemoryBackend::new())
            .expect_err("an invalid configuration"),
    };
    match error {
        ConfigError::File(error) => error,
        other => panic!("not located in the file: {other:?}"),
    }
}

/// What the builder, a policy or the backend refused keeps its own error,
/// at the field the configuration was converting, as the file error's
/// `error()` and `source()`: route patterns included (an axum 0.7 route
/// used to come back without the field).
#[test]
fn builder_errors_keep_their_field_and_their_error() {
    let api = "[policies.api]\nquotas = [\"1/s\"]\n";
    let route = |path: &str| format!("[[routes]]\npath = {path:?}\npolicy = \"api\"\n");
    let old_syntax = |pattern: &str, suggestion: &str| {
        ConfigError::Route(RouteError::OldSyntax {
            pattern: pattern.to_owned(),
            suggestion: suggestion.to_owned(),
        })
    };
    let cases: Vec<(&str, String, &str, ConfigError)> = vec![
        (
            "axum 0.7 route",
            format!("{api}{}", route("/users/:id")),
            "routes[0].path",
            old_syntax("/users/:id", "/users/{id}"),
        ),
        (
            "axum 0.7 route with a method, after a good one",
            format!(
                "{api}{}{}method = \"POST\"\n",
                route("/ok"),
                route("/files/*path")
            ),
            "routes[1].path",
            old_syntax("/files/*path", "/files/{*path}"),
        ),
        (
            "axum 0.7 exempt pattern",
            format!("exempt = [\"/health\", \"/static/*\"]\ndefault_policy = \"api\"\n{api}"),
            "exempt[1]",
            old_syntax("/static/*", "/static/{*rest}"),
        ),
        (
            "one route twice, told apart only by case",
            format!(
                "case_insensitive_paths = true\n{api}{}{}",
                route("/Login"),
                route("/login")
            ),
            "routes[1].path",
            ConfigError::Route(RouteError::Duplicate {
                pattern: "/login".to_owned(),
                first: "/Login".to_owned(),
            }),
        ),
        (
            "zero deadline",
            format!("deadline = \"0s\"\ndefault_policy = \"api\"\n{api}"),
            "deadline",
            ConfigError::ZeroDeadline,
        ),
        (
            "max cost above the smallest limit",
            "[policies.api]\nquotas = [\"10/s\", \"5/min\"]\nmax_cost = 6".to_owned(),
            "policies.api.max_cost",
            ConfigError::Policy(PolicyError::InvalidMaxCost {
                policy: "api".to_owned(),
                max_cost: 6,
                limit: 5,
            }),
        ),
        (
            "a tier's quota",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_header = \"x-plan\"\n\
             [policies.api.tiers]\npro = [\"30/s\", \"5/500us\"]"
                .to_owned(),
            "policies.api.tiers.pro[1]",
            ConfigError::Policy(PolicyError::WindowTooShort {
                policy: "api.pro".to_owned(),
                index: 1,
                window: std::time::Duration::from_micros(500),
            }),
        ),
        (
            "a tier named as another policy",
            "[policies.api]\nquotas = [\"3/s\"]\ntier_header = \"x-plan\"\n\
             [policies.api.tiers]\npro = [\"30/s\"]\n[policies.\"api.pro\"]\nquotas = [\"1/s\"]"
                .to_owned(),
            "policies.api.tiers.pro",
            ConfigError::Policy(PolicyError::DuplicateName {
                name: "api.pro".to_owned(),
                first: "a policy named `api.pro`".to_owned(),
                second: "a tier of policy `api`".to_owned(),
            }),
        ),
        (
            "an allow-listed key spelled as an unusable network",
            "[policies.api]\nquotas = [\"3/s\"]\n\
             [policies.api.allow]\nkeys = [\"batch-job\", \"::ffff:0:0/95\"]"
                .to_owned(),
            "policies.api.allow.keys[1]",
            ConfigError::MappedNetworkTooWide {
                network: "::ffff:0:0/95".to_owned(),
            },
        ),
        (
            "no policy for any request",
            format!("exempt = [\"/health\"]\n{api}"),
            ".",
            ConfigError::NoPolicy,
        ),
    ];
    for (name, text, path, expected) in cases {
        let error = file_error(&text);
        assert_eq!(error.path(), path, "{name}: {error}");
        assert_eq!(error.error(), Some(&expected), "{name}");
        let source = std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<ConfigError>())
            .unwrap_or_else(|| panic!("{name}: no ConfigError source"));
        assert_eq!(source, &expected, "{name}");
        assert_eq!(error.to_string(), format!("{path}: {expected}"), "{name}");
        // The same through `ConfigError`, which is what `build` returns.
        let outer = ConfigError::File(error);
        assert_eq!(outer.to_string(), format!("{path}: {expected}"), "{name}");
        assert!(std::error::Error::source(&outer).is_some(), "{name}");
    }
    // The router's own words for a conflict are its own.
    let conflict = file_error(&format!(
        "{api}{}{}",
        route("/users/{id}"),
        route("/users/{name}")
    ));
    assert_eq!(conflict.path(), "routes[1].path", "{conflict}");
    assert!(
        matches!(
            conflict.error(),
            Some(ConfigError::Route(RouteError::Conflict { pattern, .. })) if pattern == "/users/{name}"
        ),
        "{conflict:?}"
    );
}

/// A value that cannot be read at all has a path and a message, no source.
#[test]
fn unreadable_values_have_a_path_and_no_source() {
    let error = file_error("deadline = \"fast\"");
    assert_eq!(error.path(), "deadline");
    assert_eq!(error.error(), None);
    assert!(std::error::Error::source(&error).is_none());
    assert!(
        error
            .to_string()
            .starts_with("deadline: \"fast\" is not a duration"),
        "{error}"
    );
}

#[test]
fn a_bad_redis_url_is_located_without_its_password() {
    let config = load("[redis]\nurl = \"http://user:hunter2@cache:6379\"").unwrap();
    let message = config.build().unwrap_err().to_string();
    assert!(
        message.starts_with("redis.url: invalid Redis URL"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    let config = load("[redis]\nurl = \"redis://127.0.0.1\"\nprefix = \"a b\"").unwrap();
    assert_eq!(
        config.build().unwrap_err().to_string(),
        "redis.prefix: invalid key prefix \"a b\": use 1 to 64 characters from A-Z, a-z, 0-9, \
         `.`, `_`, `-`, `:`"
    );
}

#[test]
fn redis_settings_never_show_passwords() {
    let config = load("[redis]\nurl = \"redis://app:hunter2@cache:6379/0\"").unwrap();
    let redis: &RedisConfig = config.redis().unwrap();
    assert_eq!(redis.to_string(), "redis at redis://app:***@cache:6379/0");
    for shown in [format!("{redis:?}"), format!("{config:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    let config =
        load("[redis]\ncluster = [\"redis://:s3cret@a:7000\", \"redis://b:7000\"]").unwrap();
    let redis = config.redis().unwrap();
    assert!(redis.is_cluster());
    assert_eq!(
        redis.to_string(),
        "redis cluster at redis://:***@a:7000, redis://b:7000"
    );
}

#[cfg(not(feature = "cluster"))]
#[test]
fn a_cluster_needs_the_cluster_feature() {
    let config = load("[redis]\ncluster = [\"redis://a:7000\"]").unwrap();
    assert_eq!(
        config.build().unwrap_err().to_string(),
        "redis.cluster: Redis Cluster needs the crate's `cluster` feature \
         (tower-redis-ratelimit = { features = [\"cluster\"] })"
    );
    // Another backend may replace it.
    config.build_with_backend(MemoryBackend::new()).unwrap();
}

#[cfg(feature = "cluster")]
#[tokio::test]
async fn a_cluster_builds_with_the_cluster_feature() {
    let config = load(&SHAPE.replace(
        "url = \"redis://127.0.0.1:6379\"",
        "cluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]",
    ))
    .unwrap();
    assert!(config.redis().unwrap().is_cluster());
    config.build().unwrap();
}

#[test]
fn the_configuration_can_be_one_section_of_an_applications_own() {
    #[derive(serde::Deserialize)]
    struct App {
        #[allow(dead_code)]
        name: String,
        ratelimit: Config,
    }
    let app: App = toml::from_str(
        "name = \"shop\"\n[ratelimit]\ndefault_policy = \"api\"\n\
         [ratelimit.policies.api]\nquotas = [\"1/s\"]",
    )
    .unwrap();
    app.ratelimit.build().unwrap();
    // Checks that the format cannot express happen when it is built.
    let app: App = toml::from_str(
        "name = \"shop\"\n[ratelimit]\ndefault_policy = \"nope\"\n\
         [ratelimit.policies.api]\nquotas = [\"1/s\"]",
    )
    .unwrap();
    assert_eq!(
        app.ratelimit.build().unwrap_err().to_string(),
        "default_policy: unknown policy \"nope\" (defined: api)"
    );
}

#[test]
fn other_formats_work_too() {
    let json = serde_json::json!({
        "default_policy": "api",
        "policies": { "api": { "quotas": ["100/min"], "key": { "header": "x-api-key" } } },
        "routes": [{ "path": "/x", "policy": "api", "method": "GET" }],
    });
    Config::from_deserializer(json).unwrap().build().unwrap();
    let json = serde_json::json!({ "policies": { "api": { "quotas": ["100/mn"] } } });
    assert_eq!(
        Config::from_deserializer(json).unwrap_err().to_string(),
        "policies.api.quotas[0]: \"100/mn\" is not a quota: the window \"mn\" is not a \
         duration: unknown unit \"mn\", expected ms, s, m, h or d (or sec, min, hour, day...)"
    );
}

/// The examples' loader (`examples/common/config.rs`) with these variables.
fn example_limits(vars: &[(&str, &str)]) -> Result<(RateLimitLayer, String), String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let defaults = RateLimitLayer::builder()
        .default_policy(Policy::new("builtin").quota(tower_redis_ratelimit::Quota::per_second(1)));
    example_config::limits_from(defaults, |name| vars.get(name).cloned()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_examples_read_config_and_let_the_environment_choose_the_backend() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/limits.toml");
    // No CONFIG: the example's own limits.
    let (layer, shown) = example_limits(&[("CONFIG", "")]).unwrap();
    assert_eq!(
        shown,
        "limits: built in (set CONFIG to read a file); backend: in-memory (set REDIS_URL, \
         REDIS_CLUSTER or REDIS_SENTINEL to share limits through Redis)"
    );
    let response = send(&layer, Method::GET, "/", "192.0.2.1").await;
    assert_eq!(
        header(&response, "ratelimit-policy"),
        Some("\"builtin\";q=1;w=1")
    );

    // CONFIG: the file's limits, in memory (it has no [redis] table).
    let (layer, shown) = example_limits(&[("CONFIG", file)]).unwrap();
    assert_eq!(
        shown,
        format!(
            "limits: {file} (policies: api, auth, partner, session, tokens); backend: in-memory (set REDIS_URL, \
             REDIS_CLUSTER or REDIS_SENTINEL to share limits through Redis)"
        )
    );
    let response = send(&layer, Method::POST, "/auth/login", "192.0.2.1").await;
    assert_eq!(
        header(&response, "ratelimit-policy"),
        Some("\"auth\";q=5;w=60")
    );

    // REDIS_URL replaces the backend, without showing its password.
    let (_, shown) = example_limits(&[
        ("CONFIG", file),
        ("REDIS_URL", "redis://app:hunter2@127.0.0.1:6379"),
    ])
    .unwrap();
    assert!(
        shown.ends_with("backend: redis at redis://app:***@127.0.0.1:6379 (REDIS_URL)"),
        "{shown}"
    );

    // A file with a [redis] table: that backend, unless REDIS_URL says otherwise.
    let dir = std::env::temp_dir().join(format!("trr-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with_redis = dir.join("with_redis.toml");
    std::fs::write(&with_redis, SHAPE.replace("127.0.0.1", ":s3cret@127.0.0.1")).unwrap();
    let with_redis = with_redis.to_str().unwrap();
    let (_, shown) = example_limits(&[("CONFIG", with_redis)]).unwrap();
    assert!(
        shown.ends_with("backend: redis at redis://:***@127.0.0.1:6379 (CONFIG)"),
        "{shown}"
    );
    let (_, shown) =
        example_limits(&[("CONFIG", with_redis), ("REDIS_URL", "redis://other:6379")]).unwrap();
    assert!(
        shown.ends_with("backend: redis at redis://other:6379 (REDIS_URL)"),
        "{shown}"
    );

    // Errors say which variable and which field.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[policies.auth]\nquotas = [\"5/minn\"]\n").unwrap();
    let bad = bad.to_str().unwrap();
    assert_eq!(
        example_limits(&[("CONFIG", bad)]).unwrap_err(),
        format!(
            "CONFIG={bad}: policies.auth.quotas[0]: \"5/minn\" is not a quota: the window \
             \"minn\" is not a duration: unknown unit \"minn\", expected ms, s, m, h or d (or \
             sec, min, hour, day...)"
        )
    );
    let missing = dir.join("missing.toml");
    let missing = missing.to_str().unwrap();
    let message = example_limits(&[("CONFIG", missing)]).unwrap_err();
    assert!(
        message.starts_with(&format!("CONFIG={missing}: ")),
        "{message}"
    );
    assert_eq!(
        example_limits(&[
            ("REDIS_URL", "redis://a"),
            ("REDIS_CLUSTER", "redis://b:7000")
        ])
        .unwrap_err(),
        "set one of REDIS_URL (one server), REDIS_CLUSTER or REDIS_SENTINEL, not several"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "sentinel")]
#[test]
fn a_sentinel_table_names_the_primary_and_hides_passwords() {
    let config = load(
        "[redis]\nsentinel = [\"redis://s1:26379\", \"redis://s2:26379\"]\nmaster = \"cache\"\n\
         master_url = \"rediss://limiter:hunter2@ignored/0\"",
    )
    .unwrap();
    let redis = config.redis().unwrap();
    assert!(redis.is_sentinel() && !redis.is_cluster());
    assert_eq!(
        redis.to_string(),
        "redis sentinel at redis://s1:26379, redis://s2:26379, primary `cache`"
    );
    assert!(!format!("{redis:?}").contains("hunter2"));
    // Connects nothing.
    redis.backend().unwrap();
}

#[cfg(feature = "tls")]
#[test]
fn an_unreadable_ca_certificate_is_located() {
    let config =
        load("[redis]\nurl = \"rediss://127.0.0.1:6380\"\nca_cert = \"/nonexistent/ca.crt\"")
            .unwrap();
    let message = config.build().unwrap_err().to_string();
    assert!(
        message.starts_with("redis.ca_cert: cannot read /nonexistent/ca.crt:"),
        "{message}"
    );
    let bad = std::env::temp_dir().join(format!("not-a-pem-{}.crt", std::process::id()));
    std::fs::write(&bad, "not a certificate").unwrap();
    let config = load(&format!(
        "[redis]\nurl = \"rediss://127.0.0.1:6380\"\nca_cert = {:?}",
        bad.display().to_string()
    ))
    .unwrap();
    let err = config.build().unwrap_err();
    let _ = std::fs::remove_file(&bad);
    assert!(
        err.to_string()
            .starts_with("redis.ca_cert: invalid Redis TLS settings"),
        "{err}"
    );
}

/// Each PEM file's error is at its own field, with the backend's error.
#[cfg(feature = "tls")]
#[test]
fn unusable_client_certificates_are_located() {
    use crate::support::tls::Pki;
    let dir = std::env::temp_dir().join(format!("trr-config-pem-{}", std::process::id()));
    let pki = Pki::new(&dir);
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let text = |cert: &Path, key: &Path| {
        format!(
            "[redis]\nurl = \"rediss://127.0.0.1:6380\"\nclient_cert = {:?}\nclient_key = {:?}",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let build = |text: String| match load(&text).unwrap().build().unwrap_err() {
        ConfigError::File(error) => error,
        other => panic!("not located: {other:?}"),
    };
    let cert = build(text(&junk, &pki.path("client.key")));
    assert_eq!(cert.path(), "redis.client_cert", "{cert}");
    assert!(
        matches!(cert.error(), Some(ConfigError::Tls(_))),
        "{cert:?}"
    );
    let key = build(text(&pki.path("client.crt"), &junk));
    assert_eq!(key.path(), "redis.client_key", "{key}");
    assert!(matches!(key.error(), Some(ConfigError::Tls(_))), "{key:?}");
    // Certificates for a `redis://` URL: the URL is what is wrong.
    let plain = build(
        text(&pki.path("client.crt"), &pki.path("client.key")).replace("rediss://", "redis://"),
    );
    assert_eq!(plain.path(), "redis.url", "{plain}");
    assert!(
        matches!(plain.error(), Some(ConfigError::Tls(_))),
        "{plain:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rediss://` with a private CA and the minimal ACL user, all from the
/// file: limits exact over TLS.
#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_with_a_private_ca_from_the_file() {
    use crate::support::tls::{PASSWORD, TlsRedis, USER};
    let server = TlsRedis::start(false);
    let config = load(&format!(
        "deadline = \"2s\"\ndefault_policy = \"api\"\n[policies.api]\nquotas = [\"3/min\"]\n\
         key = \"global\"\n[redis]\nurl = {:?}\nca_cert = {:?}\n",
        server.url(USER, PASSWORD),
        server.pki.path("ca.crt").display().to_string(),
    ))
    .unwrap();
    let layer = config.build().unwrap();
    let service = layer.layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = service
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

/// `count_only_status` and `refund_refused_by_inner_layers` from a file: a
/// session policy counting only failed attempts (3 per minute); a status
/// that is not one is an error at its place.
#[tokio::test]
async fn refunds_from_a_file() {
    let text = r#"
        default_policy = "session"
        refund_refused_by_inner_layers = false

        [policies.session]
        quotas = ["3/min"]
        algorithm = "sliding_log"
        count_only_status = [401, 403]
    "#;
    let layer = load(text)
        .unwrap()
        .build_with_backend(support::still_memory())
        .unwrap();
    let service = layer.layer(tower::service_fn(|request: Request<String>| async move {
        let ok = request
            .headers()
            .get("x-password")
            .is_some_and(|v| v == "letmein");
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut response = Response::new(String::new());
        *response.status_mut() = status;
        Ok::<_, Infallible>(response)
    }));
    let attempt = |password: &'static str| {
        let service = service.clone();
        async move {
            let mut request = Request::post("/auth/session")
                .header("x-password", password)
                .body(String::new())
                .unwrap();
            let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
            request.extensions_mut().insert(peer);
            service.oneshot(request).await.unwrap().status()
        }
    };
    for _ in 0..20 {
        assert_eq!(attempt("letmein").await, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(attempt("guess").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(attempt("guess").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(attempt("letmein").await, StatusCode::TOO_MANY_REQUESTS);

    let bad = "[policies.session]\nquotas = [\"3/min\"]\ncount_only_status = [401, 99]\n";
    assert_eq!(
        error(bad),
        "policies.session.count_only_status[1]: 99 is not an HTTP status: expected 100 to 599"
    );
}
