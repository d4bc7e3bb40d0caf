//! Heap allocations per decision, counted by a counting global allocator.
//! Run by hand, not in CI (it spawns a `redis-server`):
//!
//! ```text
//! cargo run --release --example allocs
//! ```
//!
//! Prints, per decision (the mean over many, after a warm-up):
//!
//! - `layer/without_layer` and `layer/memory_backend`: a request through a
//!   service without the layer and through `RateLimit` on the memory
//!   backend (the difference is the layer's own);
//! - `memory/check`: one `Backend::check` of the memory backend;
//! - `redis/one_decision`: one Redis decision at a time (each a lone
//!   `EVALSHA`), the application's side of it: this crate's and redis-rs'
//!   allocations, the connection's task included;
//! - `redis/64_concurrent`: 64 decisions spawned together (batched), per
//!   decision, the spawned tasks included.
//!
//! With `ALLOCS_TRACE=1`, one more run of each (after the counted ones)
//! prints where each of its allocations is made: the frames of this crate
//! (or, if none, the first few) of its backtrace.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use tower::{Layer, ServiceExt, service_fn};
use tower_redis_ratelimit::{
    Algorithm, Backend, Key, MemoryBackend, Policy, Quota, RateLimitLayer, RedisBackend,
};

// The tests' throwaway `redis-server` (free loopback port, killed on
// drop, a clear message when it is not installed).
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::RedisServer;

/// Counts allocations (and reallocations), then lets the system allocator
/// do them.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations are traced now; set while one is
    /// being traced (a backtrace allocates too).
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

/// Whether `ALLOCS_TRACE` is set.
fn trace_wanted() -> bool {
    std::env::var_os("ALLOCS_TRACE").is_some()
}

/// Prints where the allocation being made is made, if this thread traces.
fn trace() {
    let Ok(true) = TRACING.try_with(|t| t.replace(false)) else {
        return;
    };
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = trace
        .lines()
        .filter(|l| !l.trim_start().starts_with("at "))
        .map(|l| {
            let l = l.trim();
            &l[..l.len().min(100)]
        })
        .collect();
    let ours: Vec<&str> = frames
        .iter()
        .copied()
        .filter(|f| f.contains("tower_redis_ratelimit") || f.contains("redis::"))
        .take(4)
        .collect();
    let shown = if ours.is_empty() {
        frames.iter().copied().skip(3).take(6).collect()
    } else {
        ours
    };
    eprintln!("  alloc: {}", shown.join("  <  "));
    TRACING.with(|t| t.set(true));
}

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        trace();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        trace();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        trace();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Never denies: the same policy as `benches/decision.rs`.
fn policy(alg: Algorithm) -> Policy {
    let limit = match alg {
        Algorithm::SlidingLog => Quota::MAX_LOG_LIMIT,
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

/// Runs `one` `n` times after `n` warm-up runs; the mean allocations per run.
fn per_run(n: u64, mut one: impl FnMut(u64)) -> f64 {
    for i in 0..n {
        one(i);
    }
    let before = allocations();
    for i in 0..n {
        one(i);
    }
    let mean = (allocations() - before) as f64 / n as f64;
    if trace_wanted() {
        eprintln!("one more run, traced (this thread only):");
        TRACING.with(|t| t.set(true));
        one(n);
        TRACING.with(|t| t.set(false));
    }
    mean
}

/// One line of the report.
fn show(name: &str, per_decision: f64, note: &str) {
    println!("{name:<36} {per_decision:6.2} {note}");
}

fn main() {
    const N: u64 = 10_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let without = per_run(N, |i| {
        rt.block_on(inner.oneshot(request(i % 1024))).unwrap();
    });
    show("layer/without_layer", without, "");
    for alg in [Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let layer = RateLimitLayer::new(MemoryBackend::new(), policy(alg)).unwrap();
        let svc = layer.layer(inner);
        let with = per_run(N, |i| {
            rt.block_on(svc.clone().oneshot(request(i % 1024))).unwrap();
        });
        let own = format!("(the layer's own: {:.2})", with - without);
        show(&format!("layer/memory_backend/{alg:?}"), with, &own);
    }
    let keys: Vec<Key> = (0..1024).map(|i| Key::new(format!("c{i}"))).collect();
    for alg in [Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let backend = MemoryBackend::new();
        let p = policy(alg);
        let n = per_run(N, |i| {
            let mut check = backend.check(&p, &keys[(i % 1024) as usize], 1);
            match check.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(decision) => drop(decision.unwrap()),
                Poll::Pending => unreachable!("the memory backend decides at once"),
            }
        });
        show(&format!("memory/check/{alg:?}"), n, "");
    }

    let server = RedisServer::start();
    let backend = RedisBackend::new(&server.url()).unwrap();
    for alg in [Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let p = policy(alg);
        let n = per_run(2_000, |i| {
            let check = backend.check(&p, &keys[(i % 1024) as usize], 1);
            rt.block_on(check).unwrap();
        });
        show(&format!("redis/one_decision/{alg:?}"), n, "");
        let n = per_run(100, |_| {
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for key in &keys[..64] {
                    set.spawn(backend.check(&p, key, 1));
                }
                while let Some(r) = set.join_next().await {
                    r.unwrap().unwrap();
                }
            });
        }) / 64.0;
        show(&format!("redis/64_concurrent/{alg:?}"), n, "");
    }
    drop(server);
}
