//! What the attack tests share: a layer served in process (the request path
//! of axum, tonic and hyper alike, without sockets, so a short load phase
//! drives thousands of decisions), how a response's outcome is read, and
//! the server-side figures (`SLOWLOG`, `INFO`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_redis_ratelimit::{Algorithm, Policy, Quota, RateLimitLayer};

/// The layer around a handler answering 200.
pub fn app(
    layer: &RateLimitLayer,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    layer.layer(tower::service_fn(|_request: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }))
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// 200 with rate-limit headers: the backend (or the local limiter) admitted it.
    Admitted,
    /// 200 without rate-limit headers: the limiter failed open.
    FailedOpen,
    /// 429.
    Denied,
    /// 503: the limiter failed closed.
    Unavailable,
}

/// Reads a response's outcome.
pub fn seen(response: &Response<String>) -> Seen {
    match response.status() {
        StatusCode::OK if response.headers().contains_key("ratelimit") => Seen::Admitted,
        StatusCode::OK => Seen::FailedOpen,
        StatusCode::TOO_MANY_REQUESTS => Seen::Denied,
        StatusCode::SERVICE_UNAVAILABLE => Seen::Unavailable,
        other => panic!("unexpected status {other}"),
    }
}

/// Sends one request through `app`.
pub async fn send<S>(app: &S, request: Request<String>) -> Seen
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone,
{
    let response = app.clone().oneshot(request).await.unwrap();
    seen(&response)
}

/// Counts of outcomes, shared by the tasks of a load phase.
#[derive(Debug, Default)]
pub struct Tally {
    pub admitted: AtomicU64,
    pub failed_open: AtomicU64,
    pub denied: AtomicU64,
    pub unavailable: AtomicU64,
}

impl Tally {
    pub fn add(&self, seen: Seen) {
        let counter = match seen {
            Seen::Admitted => &self.admitted,
            Seen::FailedOpen => &self.failed_open,
            Seen::Denied => &self.denied,
            Seen::Unavailable => &self.unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, seen: Seen) -> u64 {
        match seen {
            Seen::Admitted => &self.admitted,
            Seen::FailedOpen => &self.failed_open,
            Seen::Denied => &self.denied,
            Seen::Unavailable => &self.unavailable,
        }
        .load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        [
            Seen::Admitted,
            Seen::FailedOpen,
            Seen::Denied,
            Seen::Unavailable,
        ]
        .into_iter()
        .map(|s| self.get(s))
        .sum()
    }
}

/// Makes the server log every command slower than `micros` and forgets
/// what it logged.
pub fn slowlog_from(conn: &mut redis::Connection, micros: u64) {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(micros)
        .query(conn)
        .unwrap();
    let () = redis::cmd("SLOWLOG").arg("RESET").query(conn).unwrap();
}

/// The slowest script call (`EVALSHA`) the slow log holds, in microseconds,
/// and how many it holds.
pub fn slowest_script(conn: &mut redis::Connection) -> (u64, usize) {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1000)
        .query(conn)
        .unwrap();
    let mut slowest = 0;
    let mut count = 0;
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let micros: u64 = redis::from_redis_value(fields[2].clone()).unwrap_or(0);
        let args: Vec<String> = redis::from_redis_value(fields[3].clone()).unwrap_or_default();
        if args
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case("evalsha"))
        {
            slowest = slowest.max(micros);
            count += 1;
        }
    }
    (slowest, count)
}

/// A field of `INFO <section>`.
pub fn info_field(conn: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
        .trim()
        .parse()
        .unwrap()
}

/// The README's export policy, as a client would attack it: 5 000 rows per
/// hour on the sliding log, the cost taken from the `x-rows` header as the
/// client wrote it (default 1), at most 500 per request.
pub fn export_policy(name: &str) -> Policy {
    Policy::new(name)
        .algorithm(Algorithm::SlidingLog)
        .quota(Quota::per_hour(5_000))
        .cost_fn(|parts| {
            parts
                .headers
                .get("x-rows")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        })
        .max_cost(500)
}
