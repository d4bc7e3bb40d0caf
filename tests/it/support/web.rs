//! Shared HTTP plumbing of the tests: a request helper that calls an app in
//! process ([`call`]), and for the tests that need a socket a server on a
//! loopback port ([`serve`]) and a hyper client ([`Client`]); both helpers
//! check the structured fields of every response.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use super::headers;

/// Binds 127.0.0.1:0; returns the listener and its base URL.
pub async fn bind_loopback() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

/// Serves `app` on 127.0.0.1:0 with peer addresses; returns its base URL.
pub async fn serve(app: Router) -> String {
    let (listener, base) = bind_loopback().await;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    base
}

/// A response, read in full.
pub struct Sent {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// The peer address of in-process requests that do not choose one: a
/// loopback client, as a test client on a real socket would be.
pub const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000);

/// A peer at `127.0.0.<last>` (any port: the key extractors read the IP).
pub fn peer(last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 40_000)
}

/// A request as a client on a socket sends it (`path` in origin form, with a
/// `Host`), plus `extra` headers; with `peer`, the extension axum's
/// `into_make_service_with_connect_info::<SocketAddr>()` inserts.
pub fn request(
    method: Method,
    path: &str,
    peer: Option<SocketAddr>,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1")
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("request for {path:?}: {e}"));
    for (name, value) in extra {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    if let Some(peer) = peer {
        request.extensions_mut().insert(ConnectInfo(peer));
    }
    request
}

/// Sends `request` through (a clone of) `service` in process and reads the
/// response in full, checking nothing (for responses that carry several
/// quotas, which [`headers::ietf`] does not expect).
pub async fn oneshot<S, B>(service: &S, request: Request<Body>) -> Sent
where
    S: Service<Request<Body>, Response = http::Response<B>, Error = Infallible> + Clone,
    B: HttpBody,
    B::Error: std::fmt::Debug,
{
    let Ok(response) = service.clone().oneshot(request).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("read the body").to_bytes();
    Sent {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends `request` through `service` in process and checks the structured
/// fields of the response (see [`headers::ietf`]).
pub async fn call_service<S, B>(service: &S, request: Request<Body>) -> Sent
where
    S: Service<Request<Body>, Response = http::Response<B>, Error = Infallible> + Clone,
    B: HttpBody,
    B::Error: std::fmt::Debug,
{
    let sent = oneshot(service, request).await;
    headers::ietf(&sent.headers);
    sent
}

/// Calls `app` in process as a client at `peer` would over HTTP (see
/// [`request`]) and checks the structured fields of the response.
pub async fn call(
    app: &Router,
    method: Method,
    path: &str,
    peer: SocketAddr,
    extra: &[(&str, &str)],
) -> Sent {
    call_service(app, request(method, path, Some(peer), extra)).await
}

/// An HTTP/1 client for the tests that need a socket (hyper's, which reads no
/// proxy variables: loopback requests never go through the environment's
/// proxy). Connections are kept alive and reused; a clone shares them.
#[derive(Clone)]
pub struct Client(hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>);

/// Every request of a [`Client`], connection to last byte, ends within this.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client with no proxy (the environment's proxy must not intercept loopback).
pub fn client() -> Client {
    client_bound(None)
}

/// A client whose connections come from `local` (e.g. 127.0.0.2), if given.
pub fn client_bound(local: Option<IpAddr>) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_local_address(local);
    Client(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector))
}

impl Client {
    /// Sends a request with `extra` headers and reads the response in full;
    /// `Err` says why there is none (connection, timeout, body).
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        extra: &[(&str, &str)],
    ) -> Result<Sent, String> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Empty::new()).map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self.0.request(request).await.map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Sent {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no response within {CLIENT_TIMEOUT:?}"))?
    }

    /// GET `url`, read in full (no checks).
    pub async fn get(&self, url: &str) -> Result<Sent, String> {
        self.request(Method::GET, url, &[]).await
    }
}

/// Sends a request (with optional extra headers) and checks the structured
/// fields of whatever came back (see [`headers::ietf`]).
pub async fn send_with(client: &Client, method: Method, url: &str, extra: &[(&str, &str)]) -> Sent {
    let sent = client
        .request(method.clone(), url, extra)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    headers::ietf(&sent.headers);
    sent
}

/// Sends a request and checks the structured fields of whatever came back.
pub async fn send(client: &Client, method: Method, url: &str) -> Sent {
    send_with(client, method, url, &[]).await
}
