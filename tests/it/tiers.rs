//! Tiers: quotas that depend on the client (its plan), chosen per request by
//! a header, a table of keys or a function, through the real layer and router
//! in process, on the in-memory backend and on a real Redis. Each tier runs as its
//! own policy (`api.pro`), with its own counters, headers and Redis keys; an
//! absent or unknown tier is the default tier, never an error nor unlimited.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use http::{HeaderName, Method, StatusCode};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{
    Backend, ConfigError, Key, Policy, PolicyError, Quota, RateLimitLayer,
};

use crate::support::web::{self, Sent};

use crate::support;

/// Per API key: 2/min by default, 4/min for `pro`, 6/min for `enterprise`,
/// the tier named by `x-plan`. (One quota each: the shared HTTP helper
/// checks single-quota headers.)
fn by_header() -> Policy {
    Policy::new("api")
        .key(Header::new("x-api-key"))
        .quota(Quota::per_minute(2))
        .tier("pro", [Quota::per_minute(4)])
        .tier("enterprise", [Quota::per_minute(6)])
        .tier_header(HeaderName::from_static("x-plan"))
}

fn router(backend: Arc<dyn Backend>, policy: Policy) -> (Router, RateLimitLayer) {
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .deadline(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone());
    (app, layer)
}

async fn get_with(app: &Router, headers: &[(&str, &str)]) -> Sent {
    web::call(app, Method::GET, "/", web::PEER, headers).await
}

fn header<'a>(sent: &'a Sent, name: &str) -> &'a str {
    sent.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name}: {:?}", sent.headers))
        .to_str()
        .unwrap()
}

/// `limit` requests admitted with `policy_header`, then one denied.
async fn admits(app: &Router, headers: &[(&str, &str)], limit: u64, policy_header: &str) {
    for i in 0..limit {
        let sent = get_with(app, headers).await;
        assert_eq!(sent.status, StatusCode::OK, "{headers:?} request {i}");
        assert_eq!(
            header(&sent, "ratelimit-policy"),
            policy_header,
            "{headers:?}"
        );
    }
    let denied = get_with(app, headers).await;
    assert_eq!(
        denied.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{headers:?} after {limit}"
    );
    assert_eq!(header(&denied, "ratelimit-policy"), policy_header);
    support::headers::retry_after(&denied.headers);
}

async fn tiers_by_header(backend: Arc<dyn Backend>) -> RateLimitLayer {
    let (app, layer) = router(backend, by_header());
    let free = "\"api\";q=2;w=60";
    admits(&app, &[("x-api-key", "k-free")], 2, free).await;
    admits(
        &app,
        &[("x-api-key", "k-pro"), ("x-plan", "pro")],
        4,
        "\"api.pro\";q=4;w=60",
    )
    .await;
    admits(
        &app,
        &[("x-api-key", "k-ent"), ("x-plan", "enterprise")],
        6,
        "\"api.enterprise\";q=6;w=60",
    )
    .await;
    // An unknown tier, or a tier name in another case, is the default tier.
    for plan in ["gold", "PRO", "", "api.pro"] {
        let key = format!("k-unknown-{plan}");
        admits(&app, &[("x-api-key", &key), ("x-plan", plan)], 2, free).await;
    }
    // Counters are per tier: the free client, denied, upgraded to pro, gets
    // the pro quota in full; its free-tier denial still stands.
    admits(
        &app,
        &[("x-api-key", "k-free"), ("x-plan", "pro")],
        4,
        "\"api.pro\";q=4;w=60",
    )
    .await;
    let again = get_with(&app, &[("x-api-key", "k-free")]).await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    layer
}

#[tokio::test]
async fn memory_tiers_by_header() {
    let layer = tiers_by_header(Arc::new(support::still_memory())).await;
    let admin = layer.admin();
    let names: Vec<&str> = admin.policies().map(Policy::name).collect();
    assert_eq!(names, ["api", "api.pro", "api.enterprise"]);
}

#[tokio::test]
async fn redis_tiers_by_header_one_script_call_and_keys_per_tier() {
    let url = support::redis_url();
    let backend = support::redis_backend(&url, "tiers");
    let layer = tiers_by_header(Arc::new(backend.clone())).await;
    // Each tier's counters are under its own name in Redis.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let admin = layer.admin();
    for (policy, key) in [
        ("api", "k-free"),
        ("api.pro", "k-pro"),
        ("api.pro", "k-free"),
        ("api.enterprise", "k-ent"),
    ] {
        let keys = backend.redis_keys(admin.policy(policy).unwrap(), &Key::new(key));
        assert!(
            keys.iter()
                .all(|k| k.contains(&format!("{{{policy}:{key}}}")))
        );
        let exists: u64 = redis::cmd("EXISTS").arg(&keys).query(&mut conn).unwrap();
        assert_eq!(exists, keys.len() as u64, "{policy} {key}: {keys:?}");
    }
    let none = backend.redis_keys(admin.policy("api.enterprise").unwrap(), &Key::new("k-pro"));
    let exists: u64 = redis::cmd("EXISTS").arg(&none).query(&mut conn).unwrap();
    assert_eq!(exists, 0, "k-pro never used the enterprise tier");
    // Admin reaches a tier by its name: a reset gives the pro quota back.
    let pro = Key::new("k-pro");
    assert!(!admin.peek("api.pro", &pro).await.unwrap().is_allowed());
    admin.reset("api.pro", &pro).await.unwrap();
    assert_eq!(
        admin.peek("api.pro", &pro).await.unwrap().quotas()[0].remaining,
        4
    );
}

/// Tiers from the application: a table of keys, and a function of the
/// request (here a value an auth middleware would have put in extensions)
/// and the key.
async fn tiers_by_table_and_function(backend: impl Fn() -> Arc<dyn Backend>) {
    let table = Policy::new("keys")
        .key(Header::new("x-api-key"))
        .quota(Quota::per_minute(1))
        .tier("pro", [Quota::per_minute(3)])
        .tier_keys([("k-paying", "pro")]);
    let (app, _) = router(backend(), table);
    admits(
        &app,
        &[("x-api-key", "k-paying")],
        3,
        "\"keys.pro\";q=3;w=60",
    )
    .await;
    // A client cannot pick its tier: only the table decides.
    admits(
        &app,
        &[("x-api-key", "k-other"), ("x-plan", "pro")],
        1,
        "\"keys\";q=1;w=60",
    )
    .await;

    let customers: HashMap<Key, &'static str> = [(Key::new("k-big"), "big")].into();
    let function = Policy::new("fn")
        .key(Header::new("x-api-key"))
        .quota(Quota::per_minute(1))
        .tier("big", [Quota::per_minute(5)])
        .tier_fn(move |_parts, key| customers.get(key).map(|t| (*t).to_owned()));
    let (app, _) = router(backend(), function);
    admits(&app, &[("x-api-key", "k-big")], 5, "\"fn.big\";q=5;w=60").await;
    admits(&app, &[("x-api-key", "k-small")], 1, "\"fn\";q=1;w=60").await;
}

#[tokio::test]
async fn memory_tiers_by_table_and_function() {
    tiers_by_table_and_function(|| Arc::new(support::still_memory())).await;
}

#[tokio::test]
async fn redis_tiers_by_table_and_function() {
    let url = support::redis_url();
    tiers_by_table_and_function(|| {
        Arc::new(support::redis_backend(&url, "tiers-fn")) as Arc<dyn Backend>
    })
    .await;
}

#[test]
fn tier_mistakes_are_config_errors_at_build() {
    let build = |policy: Policy| {
        RateLimitLayer::builder()
            .default_policy(policy)
            .build()
            .map(|_| ())
    };
    let base = || Policy::new("api").quota(Quota::per_minute(10));
    let plan = || HeaderName::from_static("x-plan");
    assert_eq!(
        build(base().tier("pro", [Quota::per_minute(20)])),
        Err(ConfigError::Policy(PolicyError::TiersWithoutSelector {
            policy: "api".into()
        }))
    );
    assert_eq!(
        build(base().tier_header(plan())),
        Err(ConfigError::Policy(PolicyError::SelectorWithoutTiers {
            policy: "api".into()
        }))
    );
    for bad in ["", "p.ro", "pro plan", &"x".repeat(33)] {
        assert_eq!(
            build(
                base()
                    .tier(bad, [Quota::per_minute(20)])
                    .tier_header(plan())
            ),
            Err(ConfigError::Policy(PolicyError::InvalidTierName {
                policy: "api".into(),
                tier: bad.into()
            })),
            "{bad:?}"
        );
    }
    assert_eq!(
        build(
            base()
                .tier("pro", [Quota::per_minute(20)])
                .tier("pro", [Quota::per_minute(30)])
                .tier_header(plan())
        ),
        Err(ConfigError::Policy(PolicyError::DuplicateTier {
            policy: "api".into(),
            tier: "pro".into()
        }))
    );
    let unknown = build(
        base()
            .tier("pro", [Quota::per_minute(20)])
            .tier_keys([("a", "pro"), ("b", "gold")]),
    )
    .unwrap_err();
    assert_eq!(
        unknown,
        ConfigError::Policy(PolicyError::UnknownTier {
            policy: "api".into(),
            tier: "gold".into(),
            known: vec!["pro".into()]
        })
    );
    assert!(
        unknown
            .to_string()
            .contains("unknown tier \"gold\" (its tiers: pro)")
    );
    // An empty tier, and a tier's quotas checked as a policy's.
    assert_eq!(
        build(base().tier("pro", []).tier_header(plan())),
        Err(ConfigError::Policy(PolicyError::NoQuota {
            policy: "api.pro".into()
        }))
    );
    assert!(matches!(
        build(base().tier("pro", [Quota::per_minute(0)]).tier_header(plan())),
        Err(ConfigError::Policy(PolicyError::ZeroLimit { policy, .. })) if policy == "api.pro"
    ));
    // A fixed cost must fit every tier.
    assert!(matches!(
        build(base().cost(5).tier("tiny", [Quota::per_minute(2)]).tier_header(plan())),
        Err(ConfigError::Policy(PolicyError::InvalidCost { policy, .. })) if policy == "api.tiny"
    ));
    // A tier's name may not be another policy's.
    let err = RateLimitLayer::builder()
        .default_policy(
            base()
                .tier("pro", [Quota::per_minute(20)])
                .tier_header(plan()),
        )
        .route("/x", Policy::new("api.pro").quota(Quota::per_minute(1)))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::Policy(PolicyError::DuplicateName {
            name: "api.pro".into(),
            first: "a policy named `api.pro`".into(),
            second: "a tier of policy `api`".into(),
        })
    );
    // The name `<policy>.<tier>` must be a valid policy name (64 characters).
    assert!(matches!(
        build(
            Policy::new("p".repeat(60))
                .quota(Quota::per_minute(1))
                .tier("tier1", [Quota::per_minute(2)])
                .tier_header(plan())
        ),
        Err(ConfigError::Policy(PolicyError::InvalidName { .. }))
    ));
}

/// A plan the app's auth middleware would insert in the request's
/// extensions.
#[derive(Clone)]
struct Plan(&'static str);

/// The app's auth middleware: inserts the client's plan.
async fn auth(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    request.extensions_mut().insert(Plan("pro"));
    next.run(request).await
}

/// A `tier_fn` that never sees a tier (the auth middleware placed inside
/// the limiter) is reported once, after 1 000 requests, with the likely
/// cause; with the middleware outside, tiers are picked and nothing is
/// reported.
#[tokio::test]
async fn a_tier_selector_that_never_picks_a_tier_is_reported_once() {
    let logs = crate::support::logs::capture_logs();
    let limits = |name: &str| {
        RateLimitLayer::builder()
            .default_policy(
                Policy::new(name)
                    .key(Header::new("x-api-key"))
                    .quota(Quota::per_minute(1_000_000))
                    .tier("pro", [Quota::per_minute(2_000_000)])
                    .tier_fn(|parts, _key| parts.extensions.get::<Plan>().map(|p| p.0.to_owned())),
            )
            .build()
            .unwrap()
    };
    let route = || Router::new().route("/", get(|| async { "ok" }));
    // `.layer(auth).layer(limits)`: the limiter runs first, before auth.
    let inside = route()
        .layer(axum::middleware::from_fn(auth))
        .layer(limits("inside"));
    // `.layer(limits).layer(auth)`: auth runs first.
    let outside = route()
        .layer(limits("outside"))
        .layer(axum::middleware::from_fn(auth));
    for (app, policy) in [(&inside, "inside"), (&outside, "outside.pro")] {
        for i in 0..1_100 {
            let key = format!("k{}", i % 7);
            let sent = get_with(app, &[("x-api-key", &key)]).await;
            assert_eq!(sent.status, StatusCode::OK);
            let limit = if policy == "inside" {
                1_000_000
            } else {
                2_000_000
            };
            assert_eq!(
                header(&sent, "ratelimit-policy"),
                format!("\"{policy}\";q={limit};w=60")
            );
        }
    }
    let warned = "picked no tier for its first requests";
    assert_eq!(logs.lines(warned), 1, "{}", logs.text());
    assert_eq!(
        logs.lines("policy=\"inside\" requests=1000"),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(
        logs.lines(".layer(limits).layer(auth)"),
        1,
        "{}",
        logs.text()
    );
}

/// `tier_keys` under `.or()` match the key as written, whichever extractor
/// made it (as allow-lists do); an address-shaped entry is never claimed
/// by a client sending that text in the header.
#[tokio::test]
async fn tier_keys_under_or_match_the_key_as_written() {
    use tower_redis_ratelimit::MemoryBackend;
    use tower_redis_ratelimit::key::{KeyExtractor, PeerIp};
    let policy = Policy::new("chain")
        .key(Header::new("x-api-key").or(PeerIp::new()))
        .quota(Quota::per_minute(10))
        .tier("pro", [Quota::per_minute(20)])
        .tier_keys([("k-paying", "pro"), ("10.0.0.5", "pro")]);
    let (app, _) = router(Arc::new(MemoryBackend::new()), policy);
    let sent = get_with(&app, &[("x-api-key", "k-paying")]).await;
    assert_eq!(header(&sent, "ratelimit-policy"), "\"chain.pro\";q=20;w=60");
    for spoof in ["10.0.0.5", " 10.0.0.5", "k-other"] {
        let sent = get_with(&app, &[("x-api-key", spoof)]).await;
        assert_eq!(
            header(&sent, "ratelimit-policy"),
            "\"chain\";q=10;w=60",
            "{spoof:?}"
        );
    }
}
