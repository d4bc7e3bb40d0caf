//! Cost 0 is not free by default: a cost function computed from what the
//! client sends (the documented export example reads `x-rows`) must not let
//! the client send `x-rows: 0` and pass once its quota is spent.
//!
//! Before the fix, a cost function's 0 consumed nothing and was always
//! admitted: after the quota was spent, 1000 of 1000 such requests got 200.
//! Now 0 counts as 1 unless the policy says `allow_zero_cost()`.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::{Method, StatusCode};
use tower_redis_ratelimit::{Backend, MemoryBackend, Policy, RateLimitLayer};

use crate::support::{self, web};

/// Requests with `x-rows: 0` sent once the quota is spent.
const ZERO_COST_REQUESTS: usize = 1000;
/// Concurrent senders of those requests.
const SENDERS: usize = 8;

/// The export policy as the `Policy::max_cost` docs first wrote it: one
/// unit per row the client asks for, the client's number taken as it is.
fn export_policy() -> Policy {
    crate::under_load::attacks::common::export_policy("export")
}

/// Serves an export endpoint limited by `policy` on `backend`; spends the
/// client's whole quota (10 exports of 500 rows), checks that one more row
/// is refused, then sends [`ZERO_COST_REQUESTS`] with `x-rows: 0`. Returns
/// how many of those got each status.
async fn spend_then_send_zero_rows(backend: impl Backend, policy: Policy) -> Vec<StatusCode> {
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        // What is tested is the cost, not the deadline: on a loaded machine
        // a decision missing the default 50 ms would fail open and pass.
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/export", get(|| async { "rows" }))
        .layer(layer);
    let url = format!("{}/export", web::serve(app).await);
    let client = web::client();
    for i in 0..10 {
        let sent = web::send_with(&client, Method::GET, &url, &[("x-rows", "500")]).await;
        assert_eq!(sent.status, StatusCode::OK, "export {i} of 500 rows");
    }
    let sent = web::send_with(&client, Method::GET, &url, &[("x-rows", "1")]).await;
    assert_eq!(
        sent.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the quota is spent"
    );
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..ZERO_COST_REQUESTS / SENDERS {
                    let extra = [("x-rows", "0")];
                    statuses.push(
                        web::send_with(&client, Method::GET, &url, &extra)
                            .await
                            .status,
                    );
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for sender in senders {
        statuses.extend(sender.await.unwrap());
    }
    assert_eq!(statuses.len(), ZERO_COST_REQUESTS);
    statuses
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// Every zero-row request after the quota is refused; with
/// `allow_zero_cost()`, every one passes (free checks, as configured).
async fn zero_rows_are_not_free<B: Backend>(backend: impl Fn() -> B) {
    let strict = spend_then_send_zero_rows(backend(), export_policy()).await;
    let passed = count(&strict, StatusCode::OK);
    eprintln!("x-rows: 0 after the quota: {passed} of {ZERO_COST_REQUESTS} passed");
    assert_eq!(
        count(&strict, StatusCode::TOO_MANY_REQUESTS),
        ZERO_COST_REQUESTS,
        "{passed} zero-row requests passed after the quota was spent"
    );
    let free = spend_then_send_zero_rows(backend(), export_policy().allow_zero_cost()).await;
    assert_eq!(
        count(&free, StatusCode::OK),
        ZERO_COST_REQUESTS,
        "with allow_zero_cost() a zero-row request is a free check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rows_are_refused_once_the_quota_is_spent_in_memory() {
    zero_rows_are_not_free(MemoryBackend::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rows_are_refused_once_the_quota_is_spent_on_redis() {
    let server = support::RedisServer::start();
    zero_rows_are_not_free(|| support::redis_backend(&server.url(), "zero-cost")).await;
}
