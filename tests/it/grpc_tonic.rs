//! gRPC end to end: the tonic example's Greeter server (shared code in
//! `examples/common/greeter.rs`) on a loopback port, behind
//! `Server::builder().layer(RateLimitLayer ...)`, called by the generated tonic
//! client. `SayHello` is limited per peer IP (read from tonic's
//! `TcpConnectInfo`, feature `tonic`) or per `x-api-key` metadata; denials
//! must reach the client as real gRPC statuses, not HTTP errors.

use std::time::Duration;

use greeter::pb::HelloRequest;
use greeter::pb::greeter_client::GreeterClient;
use http::HeaderMap;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{
    Algorithm, Backend, FailureMode, MemoryBackend, MissingKey, Policy, Quota, RedisBackend,
};

use crate::support::headers;

use crate::greeter;
use crate::support;

/// Generous: a missed deadline would fail open and hide the decision.
const DEADLINE: Duration = Duration::from_secs(2);

/// A running server; dropping it shuts the server down.
struct Running {
    url: String,
    _stop: oneshot::Sender<()>,
}

/// Serves the Greeter behind the example's layer (with `policy` on SayHello).
async fn start(backend: impl Backend, policy: Policy) -> Running {
    let limits = greeter::limits(backend, policy, DEADLINE).unwrap();
    let (listener, url) = support::web::bind_loopback().await;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        greeter::serve(listener, limits, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running { url, _stop: stop }
}

async fn connect(running: &Running) -> GreeterClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(running.url.clone())
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    GreeterClient::new(channel)
}

/// Calls SayHello, optionally with an `x-api-key`. On success returns the
/// greeting and the response metadata as HTTP headers.
async fn say_hello(
    client: &mut GreeterClient<Channel>,
    name: &str,
    api_key: Option<&str>,
) -> Result<(String, HeaderMap), Status> {
    let mut request = tonic::Request::new(HelloRequest {
        name: name.to_owned(),
    });
    if let Some(key) = api_key {
        request
            .metadata_mut()
            .insert("x-api-key", key.parse().unwrap());
    }
    let response = client.say_hello(request).await?;
    let headers = response.metadata().clone().into_headers();
    Ok((response.into_inner().message, headers))
}

/// Checks an admitted call's rate-limit metadata: the say_hello policy with
/// `remaining` calls left.
fn assert_admitted(headers: &HeaderMap, policy: &str, remaining: i64) {
    let (p, s) = headers::ietf(headers).expect("admitted calls carry RateLimit headers");
    assert_eq!(
        (p.name.as_str(), p.param("q"), p.param("w")),
        (policy, 5, 60)
    );
    assert_eq!(s.param("r"), remaining, "{headers:?}");
    assert!((1..=60).contains(&s.param("t")), "{headers:?}");
}

/// Checks a denial: RESOURCE_EXHAUSTED with a push-back, Retry-After and the
/// exhausted policy's headers in the status metadata.
fn assert_exhausted(status: &Status, policy: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("policy {policy}")),
        "{status:?}"
    );
    let headers = status.metadata().clone().into_headers();
    let pushback: u64 = headers
        .get("grpc-retry-pushback-ms")
        .unwrap_or_else(|| panic!("no grpc-retry-pushback-ms: {headers:?}"))
        .to_str()
        .unwrap()
        .parse()
        .expect("pushback is an integer of milliseconds");
    assert!((1..=60_000).contains(&pushback), "pushback {pushback}");
    let retry = headers::retry_after(&headers);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(retry, pushback.div_ceil(1000), "both say the same wait");
    let (p, s) = headers::ietf(&headers).expect("denials carry RateLimit headers");
    assert_eq!((p.name.as_str(), s.name.as_str()), (policy, policy));
    assert_eq!(s.param("r"), 0);
}

/// The example's policy, refusing keyless calls so that a peer address that
/// was not found shows up as PERMISSION_DENIED instead of a shared bucket.
fn peer_policy() -> Policy {
    greeter::say_hello_policy().on_missing_key(MissingKey::Deny)
}

/// 5 calls pass with decreasing `remaining`, the 6th is RESOURCE_EXHAUSTED,
/// and a new connection from the same IP is denied too (the key is the IP).
async fn five_then_exhausted(running: &Running) {
    let mut client = connect(running).await;
    for i in 0..5 {
        let (message, headers) = say_hello(&mut client, &format!("n{i}"), None)
            .await
            .unwrap_or_else(|s| panic!("call {} denied: {s:?}", i + 1));
        assert_eq!(message, format!("Hello n{i}!"));
        assert_admitted(&headers, "say_hello", 4 - i);
    }
    let status = say_hello(&mut client, "six", None).await.unwrap_err();
    assert_exhausted(&status, "say_hello");

    let mut second = connect(running).await;
    let status = say_hello(&mut second, "other connection", None)
        .await
        .unwrap_err();
    assert_exhausted(&status, "say_hello");
}

#[tokio::test]
async fn say_hello_five_per_minute_per_peer_ip_memory() {
    let running = start(MemoryBackend::new(), peer_policy()).await;
    five_then_exhausted(&running).await;
}

/// The same on Redis; the counters live under the peer IP taken from tonic's
/// `TcpConnectInfo`.
#[tokio::test]
async fn say_hello_five_per_minute_per_peer_ip_redis() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("grpc_peer");
    let backend = RedisBackend::builder(url.clone())
        .prefix(prefix.clone())
        .build()
        .unwrap();
    let running = start(backend, peer_policy()).await;
    five_then_exhausted(&running).await;

    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        keys,
        vec![format!("{prefix}:{{say_hello:127.0.0.1}}:w60000")],
        "one sliding log, keyed by the peer IP"
    );
}

/// Keyed by `x-api-key` metadata: one client exhausted does not affect
/// another, and a call without the key is PERMISSION_DENIED.
#[tokio::test]
async fn api_key_metadata_isolates_callers() {
    let policy = Policy::new("say_hello_key")
        .quota(Quota::per_minute(5))
        .algorithm(Algorithm::SlidingLog)
        .key(Header::new("x-api-key"))
        .on_missing_key(MissingKey::Deny);
    let running = start(MemoryBackend::new(), policy).await;
    let mut client = connect(&running).await;

    for i in 0..5 {
        let (_, headers) = say_hello(&mut client, "alice", Some("alice"))
            .await
            .unwrap();
        assert_admitted(&headers, "say_hello_key", 4 - i);
    }
    let status = say_hello(&mut client, "alice", Some("alice"))
        .await
        .unwrap_err();
    assert_exhausted(&status, "say_hello_key");

    // Same connection, same IP, other key: allowed, with a full bucket.
    let (message, headers) = say_hello(&mut client, "bob", Some("bob")).await.unwrap();
    assert_eq!(message, "Hello bob!");
    assert_admitted(&headers, "say_hello_key", 4);

    // Alice is still exhausted after Bob's success.
    let status = say_hello(&mut client, "alice", Some("alice"))
        .await
        .unwrap_err();
    assert_exhausted(&status, "say_hello_key");

    // No key: PERMISSION_DENIED (grpc-status 7), no push-back.
    let status = say_hello(&mut client, "anon", None).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.metadata().get("grpc-retry-pushback-ms").is_none(),
        "{status:?}"
    );
}

/// A fail-closed policy with an unreachable Redis answers UNAVAILABLE
/// (grpc-status 14), which gRPC clients may retry.
#[tokio::test]
async fn fail_closed_backend_down_is_unavailable() {
    let backend =
        RedisBackend::new(&format!("redis://127.0.0.1:{}/", support::dead_port())).unwrap();
    let policy = greeter::say_hello_policy().failure_mode(FailureMode::Closed);
    let running = start(backend, policy).await;
    let mut client = connect(&running).await;
    let status = say_hello(&mut client, "x", None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("unavailable"), "{status:?}");
    let headers = status.metadata().clone().into_headers();
    assert_eq!(headers::retry_after(&headers), 1);
    headers::assert_no_rate_limit_headers(&{
        let mut h = headers.clone();
        h.remove(http::header::RETRY_AFTER);
        h
    });
}
