//! tonic without a peer address, end to end: the example's Greeter behind
//! `Server::builder().layer(..)`, served over connections that carry no
//! `TcpConnectInfo` (a custom incoming stream, as with a Unix socket or a
//! hand-rolled TLS acceptor), called by the generated client from two
//! loopback addresses. Every client shares the keyless bucket (no escape),
//! the ERROR line names tonic's fix (not axum's), and a
//! `Header::new("x-api-key").or(PeerIp::new())` chain keys clients apart.
//!
//! Needs feature `tonic` (as the crate's users need it for `PeerIp` to read
//! tonic's `TcpConnectInfo`); without it, the hint says to enable it (unit
//! test `key::peer::tests::hints_name_the_framework_fix`).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use greeter::pb::HelloRequest;
use greeter::pb::greeter_client::GreeterClient;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Server};
use tower_redis_ratelimit::key::{Header, KeyExtractor as _, PeerIp};
use tower_redis_ratelimit::{GrpcRejection, Policy, Quota, RateLimitLayer, RedisBackend};

use crate::support::RedisServer;
use crate::support::logs::capture_logs;

use crate::greeter;
use crate::support;

/// A TCP connection that tells tonic nothing about its peer.
struct Anonymous(TcpStream);

impl Connected for Anonymous {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Anonymous {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Anonymous {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted connections, as [`Anonymous`] ones.
struct Incoming(TcpListener);

impl Stream for Incoming {
    type Item = io::Result<Anonymous>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_accept(cx)
            .map(|accepted| Some(accepted.map(|(stream, _)| Anonymous(stream))))
    }
}

/// Serves the Greeter with `policy` on SayHello over anonymous connections.
async fn start(redis: &RedisServer, policy: Policy) -> String {
    let limits = RateLimitLayer::builder()
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .route(greeter::SAY_HELLO, policy)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap()
        .on_rejection(GrpcRejection);
    let (listener, url) = support::web::bind_loopback().await;
    tokio::spawn(async move {
        Server::builder()
            .layer(limits)
            .add_service(greeter::pb::greeter_server::GreeterServer::new(
                greeter::MyGreeter,
            ))
            .serve_with_incoming(Incoming(listener))
            .await
            .unwrap();
    });
    url
}

async fn connect_from(url: &str, last: u8) -> GreeterClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    GreeterClient::new(channel)
}

async fn say_hello(client: &mut GreeterClient<Channel>, api_key: Option<&str>) -> Option<Code> {
    let mut request = tonic::Request::new(HelloRequest {
        name: "you".to_owned(),
    });
    if let Some(key) = api_key {
        request
            .metadata_mut()
            .insert("x-api-key", key.parse().unwrap());
    }
    client
        .say_hello(request)
        .await
        .err()
        .map(|status| status.code())
}

fn per_ip() -> Policy {
    Policy::new("say_hello").quota(Quota::per_minute(2))
}

#[tokio::test]
async fn tonic_without_connect_info_shares_one_bucket_and_names_the_tonic_fix() {
    let capture = capture_logs();
    let redis = RedisServer::start();
    let url = start(&redis, per_ip()).await;
    let mut codes = Vec::new();
    for last in [2, 3] {
        let mut client = connect_from(&url, last).await;
        for _ in 0..2 {
            codes.push(say_hello(&mut client, None).await);
        }
    }
    // One shared bucket of 2: the second client is refused.
    assert_eq!(
        codes,
        [
            None,
            None,
            Some(Code::ResourceExhausted),
            Some(Code::ResourceExhausted)
        ]
    );
    let logs = capture.text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("request without a client key"))
        .collect();
    assert_eq!(lines.len(), 1, "once per policy: {logs}");
    let line = lines[0];
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("tonic: its server inserts `TcpConnectInfo`"),
        "{line}"
    );
    assert!(line.contains("Policy::key_fn"), "{line}");
    assert!(
        line.contains("Header::new(\"x-api-key\").or(PeerIp::new())"),
        "{line}"
    );
    assert!(
        !line.contains("into_make_service"),
        "not axum's fix: {line}"
    );
}

#[tokio::test]
async fn a_fallback_chain_keys_grpc_clients_by_api_key() {
    let redis = RedisServer::start();
    let policy = per_ip().key(Header::new("x-api-key").or(PeerIp::new()));
    let url = start(&redis, policy).await;
    let mut client = connect_from(&url, 2).await;
    for key in ["k-1", "k-2"] {
        assert_eq!(say_hello(&mut client, Some(key)).await, None, "{key}");
        assert_eq!(say_hello(&mut client, Some(key)).await, None, "{key}");
        assert_eq!(
            say_hello(&mut client, Some(key)).await,
            Some(Code::ResourceExhausted),
            "{key}"
        );
    }
}
