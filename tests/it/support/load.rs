//! Load generator and latency statistics for the fault-injection tests:
//! [`Load`] runs [`CONCURRENCY`] client tasks sending GET requests back to
//! back and records one [`Sample`] per request; [`window`], [`stats`] and
//! [`baseline`] reduce the samples to percentiles.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::task::JoinHandle;
use tower_redis_ratelimit::headers::RATELIMIT;

use super::web::Client;

/// Concurrent client tasks of the load generator.
pub const CONCURRENCY: usize = 8;
/// No load run lasts longer than this, whatever happens.
pub const LOAD_HARD_STOP: Duration = Duration::from_secs(30);

/// One request of a load run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub start: Instant,
    pub latency: Duration,
    /// `None`: the request failed (connection error, timeout).
    pub status: Option<StatusCode>,
    /// Whether the response carried rate-limit headers (Redis decided).
    pub limited: bool,
}

/// `CONCURRENCY` tasks sending GET `url` back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts the tasks; they stop at [`finish`](Self::finish), or after
    /// [`LOAD_HARD_STOP`] at the latest.
    pub fn start(client: &Client, url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let hard_stop = Instant::now() + LOAD_HARD_STOP;
        let tasks = (0..CONCURRENCY)
            .map(|_| {
                let (client, url, stop) = (client.clone(), url.clone(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                        let start = Instant::now();
                        let (status, limited) = match client.get(&url).await {
                            Ok(sent) => (Some(sent.status), sent.headers.contains_key(RATELIMIT)),
                            Err(_) => (None, false),
                        };
                        samples.push(Sample {
                            start,
                            latency: start.elapsed(),
                            status,
                            limited,
                        });
                    }
                    samples
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the tasks; every sample, in order of start.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_by_key(|s| s.start);
        all
    }
}

/// The samples of requests started in `[from, to)`.
pub fn window(samples: &[Sample], from: Instant, to: Instant) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.start >= from && s.start < to)
        .copied()
        .collect()
}

/// Latency percentiles and outcome counts of some samples.
#[derive(Debug)]
pub struct Stats {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Not a 200 response (including connection errors).
    pub failed: usize,
    /// 200 without rate-limit headers (failed open).
    pub open: usize,
}

/// The `q` quantile (nearest rank) of sorted latencies.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The statistics of `samples` (at least one).
pub fn stats(samples: &[Sample]) -> Stats {
    assert!(!samples.is_empty(), "no samples in the window");
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    Stats {
        n: samples.len(),
        p50: percentile(&latencies, 0.50),
        p90: percentile(&latencies, 0.90),
        p99: percentile(&latencies, 0.99),
        max: *latencies.last().unwrap(),
        failed: samples
            .iter()
            .filter(|s| s.status != Some(StatusCode::OK))
            .count(),
        open: samples
            .iter()
            .filter(|s| s.status == Some(StatusCode::OK) && !s.limited)
            .count(),
    }
}

/// Prints `s` on stderr under `label`.
pub fn show(label: &str, s: &Stats) {
    eprintln!(
        "{label:>22}: n={:5} p50={:7.2?} p90={:7.2?} p99={:7.2?} max={:7.2?} failed={} open={}",
        s.n, s.p50, s.p90, s.p99, s.max, s.failed, s.open
    );
}

/// Asserts that every sample got a 200.
pub fn assert_no_failures(samples: &[Sample]) {
    let failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status != Some(StatusCode::OK))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} load requests failed, e.g. {:?}",
        failed.len(),
        samples.len(),
        failed.first()
    );
}

/// The healthy baseline: requests started in `[from + 200 ms, to)` (the first
/// 200 ms open connections). Redis decided (nearly) all of them.
pub fn baseline(samples: &[Sample], from: Instant, to: Instant) -> Stats {
    let s = stats(&window(samples, from + Duration::from_millis(200), to));
    show("baseline (healthy)", &s);
    assert!(s.n >= 100, "too little load to measure: {s:?}");
    assert!(
        s.open * 20 <= s.n,
        "Redis did not decide the baseline requests: {s:?}"
    );
    s
}
