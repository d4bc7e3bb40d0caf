//! The blocked-client cache, through the public API: `RateLimitLayer` on the
//! memory backend, a policy of 1 request per minute keyed by a header.
//!
//! - `layer/new_client_denied_*`: each iteration is a new client's first
//!   request (admitted) and second (denied, so inserted in the cache), with
//!   the cache roomy vs. full of live entries (capacity 160 000, pre-filled
//!   to 125 %: every insert must make room);
//! - `layer/blocked_client_*`: each iteration is one more request of a
//!   client that is already blocked, answered by the cache (`cached`, in a
//!   roomy cache; `cached_full`, in the full one) or, with the cache turned
//!   off, by the memory backend (`uncached`). The difference between the two
//!   is what a cache hit saves per request.
//!
//! Run: `cargo bench --bench blocked`.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use tokio::runtime::Runtime;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt, service_fn};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{MemoryBackend, Policy, Quota, RateLimitLayer};

const CAPACITY: usize = 160_000;

/// The limited service: the layer on a handler that answers `ok`.
type Service = BoxCloneSyncService<Request<String>, Response<String>, Infallible>;

fn service(blocked_capacity: usize) -> Service {
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let layer = RateLimitLayer::builder()
        .backend(MemoryBackend::new())
        .default_policy(
            Policy::new("bench")
                .quota(Quota::per_minute(1))
                .key(Header::new("x-client")),
        )
        .blocked_cache(blocked_capacity)
        // Entries then live until their retry time (up to a minute), so the
        // pre-filled ones are still live while the benches run.
        .blocked_cache_max_age(Duration::from_secs(3600))
        .build()
        .unwrap();
    BoxCloneSyncService::new(layer.layer(inner))
}

fn request(client: &str) -> Request<String> {
    Request::builder()
        .header("x-client", client)
        .body(String::new())
        .unwrap()
}

/// One request's status.
fn send(svc: &Service, client: &str) -> impl Future<Output = StatusCode> + use<> {
    let (svc, request) = (svc.clone(), request(client));
    async move { svc.oneshot(request).await.unwrap().status() }
}

/// Blocks `count` new clients (each admitted once, then denied), so the
/// cache holds that many entries (or is full of them).
fn block_clients(rt: &Runtime, svc: &Service, prefix: &str, count: usize) {
    rt.block_on(async {
        for i in 0..count {
            let client = format!("{prefix}{i}");
            assert_eq!(send(svc, &client).await, StatusCode::OK);
            assert_eq!(send(svc, &client).await, StatusCode::TOO_MANY_REQUESTS);
        }
    });
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn new_clients(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("layer");
    // Roomy: larger than every client the run can make. Both services see
    // the same clients first, so the memory backend is in the same state.
    for (name, capacity) in [
        ("new_client_denied_roomy", 100_000_000),
        ("new_client_denied_full", CAPACITY),
    ] {
        let svc = service(capacity);
        block_clients(&rt, &svc, "old-", CAPACITY * 5 / 4);
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                let client = format!("c{n}");
                let (first, second) = (send(&svc, &client), send(&svc, &client));
                async move {
                    assert_eq!(first.await, StatusCode::OK);
                    assert_eq!(second.await, StatusCode::TOO_MANY_REQUESTS);
                }
            })
        });
    }
    group.finish();
}

fn blocked_clients(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("layer");
    // 1 024 blocked clients asking again in turn, so that no single entry
    // stays hot in the processor's caches.
    for (name, capacity, others) in [
        ("blocked_client_cached", CAPACITY, 0),
        ("blocked_client_cached_full", CAPACITY, CAPACITY * 5 / 4),
        ("blocked_client_uncached", 0, 0),
    ] {
        let svc = service(capacity);
        block_clients(&rt, &svc, "old-", others);
        block_clients(&rt, &svc, "blocked-", 1024);
        let clients: Vec<String> = (0..1024).map(|i| format!("blocked-{i}")).collect();
        let mut i = 0;
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % clients.len();
                let denied = send(&svc, &clients[i]);
                async move { assert_eq!(denied.await, StatusCode::TOO_MANY_REQUESTS) }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, new_clients, blocked_clients);
criterion_main!(benches);
