//! Batching, measured: `CONCURRENCY` tasks check as fast as they can for
//! `SECS` seconds against a fresh `redis-server` on loopback, with batching
//! off (`batch(1)`) then on (`batch(64)`): the counter and GCRA on one hot
//! key and on 10 000 keys (limit never reached), the sliding log on 10 000
//! keys at limit 100 per minute; prints decisions per second, script calls
//! per decision and Redis CPU per decision.
//!
//! ```text
//! cargo bench --bench batching            # SECS=3 CONCURRENCY=64
//! ```
//!
//! Needs `redis-server` on the PATH.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tower_redis_ratelimit::{Algorithm, Backend, Key, Policy, Quota, RedisBackend};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn info(conn: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(conn).unwrap()
}

fn field(info: &str, prefix: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| {
            v.split([',', '\r'])
                .next()
                .unwrap()
                .trim_start_matches("calls=")
                .parse()
                .unwrap()
        })
        .unwrap_or(0.0)
}

fn cpu(conn: &mut redis::Connection) -> f64 {
    let i = info(conn, "cpu");
    field(&i, "used_cpu_sys:") + field(&i, "used_cpu_user:")
}

fn main() {
    let secs = env("SECS", 3);
    let concurrency = env("CONCURRENCY", 64);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (apt-get install redis-server)"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            client.get_connection().ok()
        })
        .expect("redis-server starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<14} {:>6} {:>6} {:>12} {:>14} {:>16}",
        "algorithm", "keys", "batch", "decisions/s", "calls/decision", "redis µs/decision"
    );
    for (algorithm, keys) in [
        (Algorithm::SlidingWindow, 1),
        (Algorithm::SlidingWindow, 10_000),
        (Algorithm::Gcra, 1),
        (Algorithm::Gcra, 10_000),
        (Algorithm::SlidingLog, 10_000),
    ] {
        for batch in [1, 64] {
            let backend = RedisBackend::builder(url.as_str())
                .batch(batch)
                .build()
                .unwrap();
            // The log at limit 100 (its sets stay small); the others at a
            // limit never reached.
            let limit = if algorithm == Algorithm::SlidingLog {
                100
            } else {
                1_000_000_000
            };
            let policy = Policy::new(format!("{algorithm:?}-{keys}-{batch}"))
                .algorithm(algorithm)
                .quota(Quota::per_minute(limit));
            let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query(&mut conn)
                .unwrap();
            let cpu0 = cpu(&mut conn);
            let done = Arc::new(AtomicU64::new(0));
            let end = Instant::now() + Duration::from_secs(secs);
            runtime.block_on(async {
                let tasks: Vec<_> = (0..concurrency)
                    .map(|i| {
                        let (backend, policy, done) =
                            (backend.clone(), policy.clone(), Arc::clone(&done));
                        tokio::spawn(async move {
                            // Task i checks keys i, i + concurrency, ...
                            let mut next = i;
                            while Instant::now() < end {
                                let key = Key::new(format!("k{}", next % keys));
                                next += concurrency;
                                backend.check(&policy, &key, 1).await.unwrap();
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let n = done.load(Ordering::Relaxed) as f64;
            let cpu = cpu(&mut conn) - cpu0;
            let calls = field(&info(&mut conn, "commandstats"), "cmdstat_evalsha:");
            println!(
                "{:<14} {:>6} {:>6} {:>12.0} {:>14.3} {:>16.1}",
                format!("{algorithm:?}"),
                keys,
                batch,
                n / secs as f64,
                calls / n,
                cpu * 1e6 / n
            );
        }
    }
}
