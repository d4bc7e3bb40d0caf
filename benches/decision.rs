//! Decision cost, side by side in one run:
//!
//! - `layer/*`: a request through `RateLimit` on the memory backend vs. the
//!   same service without the layer (the layer's own overhead);
//! - `routes/*`: the same through a layer with a route table, for a path in
//!   normal form (one reading) and a hostile one (raw, normalised and
//!   resolved readings), plus an exempt path (no decision at all);
//! - `memory/*`: one in-process decision per algorithm (`Backend::check`,
//!   whose future is ready at once, polled once);
//! - `redis/*`: one decision against a real `redis-server` spawned on a free
//!   loopback port (one round trip), and 64 concurrent decisions pipelined on
//!   the multiplexed connection.
//!
//! Run: `cargo bench --bench decision`. Redis benches need `redis-server`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Layer, ServiceExt, service_fn};
use tower_redis_ratelimit::{
    Algorithm, Backend, Key, MemoryBackend, Policy, Quota, RateLimitLayer, RedisBackend,
};

#[path = "../tests/it/support/mod.rs"]
mod support;

fn policy(alg: Algorithm) -> Policy {
    // Large enough never to deny during a bench run: keys rotate over 1024
    // clients, so each sees a few thousand requests per second at most.
    let limit = match alg {
        Algorithm::SlidingLog => tower_redis_ratelimit::Quota::MAX_LOG_LIMIT,
        _ => 1_000_000_000,
    };
    Policy::new("bench")
        .quota(Quota::per_second(limit))
        .algorithm(alg)
}

fn request(i: u64) -> Request<String> {
    let mut req = Request::new(String::new());
    let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    req.extensions_mut().insert(SocketAddr::from((ip, 4000)));
    req
}

/// A current-thread runtime and the service the layer wraps.
fn runtime_and_inner() -> (
    tokio::runtime::Runtime,
    impl tower::Service<
        Request<String>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Copy,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    (rt, inner)
}

fn layer_overhead(c: &mut Criterion) {
    let (rt, inner) = runtime_and_inner();
    let mut group = c.benchmark_group("layer");
    group.bench_function("without_layer", |b| {
        b.to_async(&rt).iter(|| inner.oneshot(request(1)))
    });
    for alg in [Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let layer = RateLimitLayer::new(MemoryBackend::new(), policy(alg)).unwrap();
        let svc = layer.layer(inner);
        let mut i = 0u64;
        group.bench_function(
            BenchmarkId::new("memory_backend", format!("{alg:?}")),
            |b| {
                b.to_async(&rt).iter(|| {
                    i = (i + 1) % 1024;
                    svc.clone().oneshot(request(i))
                })
            },
        );
    }
    group.finish();
}

fn route_selection(c: &mut Criterion) {
    let (rt, inner) = runtime_and_inner();
    let strict = Policy::new("strict")
        .quota(Quota::per_second(1_000_000_000))
        .quota(Quota::per_hour(1_000_000_000));
    let layer = RateLimitLayer::builder()
        .backend(MemoryBackend::new())
        .default_policy(policy(Algorithm::SlidingWindow))
        .exempt("/health")
        .route_method(http::Method::POST, "/auth/login", strict.clone())
        .route("/reports/{id}", strict.clone())
        .route("/files/{*rest}", strict.clone())
        .route("/admin/{*rest}", strict)
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    let mut group = c.benchmark_group("routes");
    for (name, path) in [
        ("exempt", "/health"),
        ("normal_form", "/reports/7"),
        ("hostile", "//Reports/./%37;x/../7/"),
    ] {
        let mut i = 0u64;
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % 1024;
                let mut req = request(i);
                *req.uri_mut() = http::Uri::from_static(path);
                svc.clone().oneshot(req)
            })
        });
    }
    group.finish();
}

fn memory_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    for alg in [Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let backend = MemoryBackend::new();
        let p = policy(alg);
        let keys: Vec<Key> = (0..1024).map(|i| Key::new(format!("client-{i}"))).collect();
        let mut i = 0;
        group.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                // The memory backend's future is ready at once: one poll.
                match backend
                    .check(&p, &keys[i], 1)
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                {
                    Poll::Ready(decision) => decision,
                    Poll::Pending => unreachable!("the memory backend decides at once"),
                }
            })
        });
    }
    group.finish();
}

fn redis_decision(c: &mut Criterion) {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = RedisBackend::new(&server.url()).unwrap();
    let mut group = c.benchmark_group("redis");
    group.measurement_time(Duration::from_secs(5));
    for alg in [Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let p = policy(alg);
        // Warm the connection and the script cache.
        rt.block_on(backend.check(&p, &Key::new("warm"), 1))
            .unwrap();
        let mut i = 0u64;
        group.bench_function(BenchmarkId::new("one_decision", format!("{alg:?}")), |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % 1024;
                backend.check(&p, &Key::new(format!("c{i}")), 1)
            })
        });
        group.throughput(criterion::Throughput::Elements(64));
        group.bench_function(
            BenchmarkId::new("64_concurrent_pipelined", format!("{alg:?}")),
            |b| {
                b.to_async(&rt).iter(|| {
                    // Spawned together: in flight at once on the one connection.
                    let mut set = tokio::task::JoinSet::new();
                    for k in 0..64 {
                        set.spawn(backend.check(&p, &Key::new(format!("c{k}")), 1));
                    }
                    async move {
                        while let Some(r) = set.join_next().await {
                            r.unwrap().unwrap();
                        }
                    }
                })
            },
        );
        group.throughput(criterion::Throughput::Elements(1));
    }
    group.finish();
    drop(server);
}

criterion_group!(
    benches,
    layer_overhead,
    route_selection,
    memory_decision,
    redis_decision
);
criterion_main!(benches);
