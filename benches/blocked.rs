//! The blocked-client cache under a flood of new denied clients.
//!
//! - `cache/*`: the cache itself (through the hidden `__bench` re-export):
//!   `insert` while it has room, `insert` of new clients while it is full of
//!   live entries (capacity 160 000, one policy, every entry blocked for an
//!   hour), and a `get` that hits;
//! - `layer/*`: the same through `RateLimitLayer` on the memory backend, a
//!   policy of 1 request per minute keyed by a header: each iteration is a new
//!   client's first request (admitted) and second (denied, so inserted), with
//!   the cache roomy vs. full of live entries.
//!
//! Run: `cargo bench --bench blocked`.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt, service_fn};
use tower_redis_ratelimit::__bench::BlockedClients;
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{
    Decision, Key, MemoryBackend, Policy, Quota, QuotaStatus, RateLimitLayer,
};

const CAPACITY: usize = 160_000;

/// A denial that stays live for the whole run.
fn denial() -> Decision {
    Decision::denied(
        vec![QuotaStatus {
            limit: 1,
            window: Duration::from_secs(60),
            remaining: 0,
            reset_after: Duration::from_secs(60),
        }],
        0,
        Duration::from_secs(3600),
    )
}

fn keys(n: usize, prefix: &str) -> Vec<Key> {
    (0..n).map(|i| Key::new(format!("{prefix}{i}"))).collect()
}

fn cache(c: &mut Criterion) {
    let denial = denial();
    let mut group = c.benchmark_group("cache");

    // Room to spare: 100 000 clients cycling in a 160 000 cache (each shard
    // stays well under its share), so no insert ever needs to make room.
    let roomy = BlockedClients::new(CAPACITY);
    let pool = keys(100_000, "roomy-");
    for key in &pool {
        roomy.insert(key, 1, &denial);
    }
    let mut i = 0;
    group.bench_function("insert_not_full", |b| {
        b.iter(|| {
            i = (i + 1) % pool.len();
            roomy.insert(&pool[i], 1, &denial);
        })
    });

    // Full of live entries: every insert is a client the cache does not hold
    // (four times the capacity cycling, so a returning client was evicted
    // long ago), and room must be made.
    let full = BlockedClients::new(CAPACITY);
    // A quarter over capacity: every shard gets more than its share.
    for key in &keys(CAPACITY * 5 / 4, "old-") {
        full.insert(key, 1, &denial);
    }
    let pool = keys(CAPACITY * 4, "new-");
    let mut i = 0;
    group.bench_function("insert_full", |b| {
        b.iter(|| {
            i = (i + 1) % pool.len();
            full.insert(&pool[i], 1, &denial);
        })
    });

    // A blocked client asking again.
    let hits = keys(1024, "roomy-");
    assert!(roomy.get(&hits[0], 1).is_some());
    let mut i = 0;
    group.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(roomy.get(&hits[i], 1))
        })
    });
    group.finish();
}

fn layer(capacity: usize) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(MemoryBackend::new())
        .default_policy(
            Policy::new("bench")
                .quota(Quota::per_minute(1))
                .key(Header::new("x-client")),
        )
        .blocked_cache(capacity)
        .build()
        .unwrap()
}

fn through_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let request = |client: &str| {
        Request::builder()
            .header("x-client", client)
            .body(String::new())
            .unwrap()
    };
    let mut group = c.benchmark_group("layer");
    // Roomy: larger than every client the run can make. Both layers see the
    // same 200 000 clients first, so the memory backend is in the same state.
    for (name, capacity) in [
        ("new_client_denied_roomy", 100_000_000),
        ("new_client_denied_full", CAPACITY),
    ] {
        let svc = layer(capacity).layer(inner);
        let mut n = 0u64;
        let mut client = move || {
            n += 1;
            format!("c{n}")
        };
        rt.block_on(async {
            for _ in 0..CAPACITY * 5 / 4 {
                let c = client();
                svc.clone().oneshot(request(&c)).await.unwrap();
                svc.clone().oneshot(request(&c)).await.unwrap();
            }
        });
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let c = client();
                let (first, second) = (request(&c), request(&c));
                let svc = svc.clone();
                async move {
                    let ok = svc.clone().oneshot(first).await.unwrap();
                    let denied = svc.oneshot(second).await.unwrap();
                    assert_eq!(ok.status(), StatusCode::OK);
                    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, cache, through_layer);
criterion_main!(benches);
