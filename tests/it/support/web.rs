//! Shared HTTP plumbing of the end-to-end tests: a server on a loopback port,
//! a client that bypasses the environment's proxy, and a request helper that
//! checks the structured fields of every response.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use http::{HeaderMap, Method, StatusCode};
use tokio::net::TcpListener;

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

/// A client with no proxy (the environment's proxy must not intercept loopback).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A response, read in full.
pub struct Sent {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends a request (with optional extra headers) and checks the structured
/// fields of whatever came back (see [`headers::ietf`]).
pub async fn send_with(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    extra: &[(&str, &str)],
) -> Sent {
    let mut request = client.request(method, url);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    headers::ietf(&headers);
    Sent {
        status,
        headers,
        body,
    }
}

/// Sends a request and checks the structured fields of whatever came back.
pub async fn send(client: &reqwest::Client, method: Method, url: &str) -> Sent {
    send_with(client, method, url, &[]).await
}
