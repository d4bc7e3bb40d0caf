//! [`PerRoute`]: one bucket per client and route.

use http::request::Parts;

use super::{Key, KeyExtractor};

/// The route [`PerRoute`] gives every request without axum's `MatchedPath`.
/// Route templates start with `/`, so no template can be mistaken for it.
pub const UNMATCHED_ROUTE: &str = "!unmatched";

/// One bucket per client *per route*: the key is the matched route template
/// plus the inner extractor's key.
///
/// With axum (feature `axum`) the route is the template of axum's
/// `axum::extract::MatchedPath`, e.g. `/users/{id}`: requests to
/// `/users/1` and `/users/2` from one client share one bucket, rather than one
/// bucket per id (which would let a client multiply its quota by varying the
/// id, and fill Redis with one key per id).
///
/// axum inserts `MatchedPath` when a request matches a route, before the
/// route's middleware runs, so it is there for layers added with
/// `Router::route_layer` and with `Router::layer` (axum applies both to every
/// route).
///
/// # Without `MatchedPath`
///
/// Every request without a `MatchedPath` gets the route
/// [`UNMATCHED_ROUTE`] (`!unmatched`), whatever its path: all such
/// requests of one client share **one** bucket, separate from the client's
/// buckets of matched routes. The request path is never used, so varying it
/// cannot multiply a client's quota or the number of Redis keys. This is the
/// case for:
///
/// - requests that end in axum's 404 fallback (which `Router::layer` limits
///   and `Router::route_layer` does not): a client probing `/a`, `/b`, ...
///   draws from one quota;
/// - a layer that wraps the whole `Router` as a tower service (it runs before
///   routing), and any service outside axum, or without the `axum` feature:
///   there *every* request is unmatched, so `PerRoute` limits exactly like
///   its inner extractor alone. Key by route there with the layer's own
///   route table ([`route`](crate::RateLimitLayerBuilder::route)) instead.
///
/// All methods of a route share its bucket; use separate policies (e.g.
/// [`route_method`](crate::RateLimitLayerBuilder::route_method)) to limit
/// methods apart. If the inner extractor has no key, neither has `PerRoute`.
/// The resulting key is readable (`<route>@<inner key>`) when that text is
/// short and made of [`Key`]'s readable characters, e.g. `/api/hello@10.0.0.1`;
/// otherwise (templates with `{param}`, unmatched requests, long keys) it is a
/// digest, as with [`Key::new`].
///
/// ```
/// use tower_redis_ratelimit::Policy;
/// use tower_redis_ratelimit::key::{PeerIp, PerRoute};
///
/// // 30 per minute per client and route.
/// let policy = Policy::new("per-route")
///     .quota(tower_redis_ratelimit::Quota::per_minute(30))
///     .key(PerRoute::new(PeerIp::new()));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerRoute<K> {
    inner: K,
}

impl<K> PerRoute<K> {
    /// Keys requests by their route and `inner`'s key.
    pub const fn new(inner: K) -> Self {
        Self { inner }
    }

    /// The route part of the key: axum's matched route template if present,
    /// else [`UNMATCHED_ROUTE`].
    pub fn route<'a>(&self, request: &'a Parts) -> &'a str {
        #[cfg(feature = "axum")]
        if let Some(matched) = request.extensions.get::<axum::extract::MatchedPath>() {
            return matched.as_str();
        }
        #[cfg(not(feature = "axum"))]
        let _ = request;
        UNMATCHED_ROUTE
    }
}

impl<K: KeyExtractor> KeyExtractor for PerRoute<K> {
    fn extract(&self, request: &Parts) -> Option<Key> {
        let inner = self.inner.extract(request)?;
        let route = self.route(request);
        // The pair is encoded without ambiguity: split at the first `@` when
        // the route has none, else at the NUL. Key text never contains NUL and
        // neither does a matched template (request paths cannot, so a template
        // with one never matches).
        let separator: &[u8] = if route.contains('@') { b"\0" } else { b"@" };
        Some(Key::concat(&[
            route.as_bytes(),
            separator,
            inner.as_str().as_bytes(),
        ]))
    }

    fn client_ip(&self, request: &Parts) -> Option<std::net::IpAddr> {
        self.inner.client_ip(request)
    }

    fn keys_by_address(&self) -> bool {
        self.inner.keys_by_address()
    }

    /// The inner extractor's key, without the route.
    fn access_key(&self, request: &Parts) -> Option<Key> {
        self.inner.access_key(request)
    }

    fn missing_key_hint(&self, request: &Parts) -> Option<String> {
        self.inner.missing_key_hint(request)
    }

    fn validate(&self) -> Result<(), crate::ConfigError> {
        self.inner.validate()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    #[cfg(feature = "axum")]
    use crate::key::Global;
    use crate::key::PeerIp;

    #[test]
    fn per_route_without_matched_path_is_one_bucket_per_client() {
        let req = |path: &str, ip: &str| {
            let mut p = http::Request::get(path).body(()).unwrap().into_parts().0;
            p.extensions
                .insert(format!("{ip}:1234").parse::<SocketAddr>().unwrap());
            p
        };
        let k = PerRoute::new(PeerIp::new());
        assert_eq!(k.route(&req("/users/1", "9.8.7.6")), UNMATCHED_ROUTE);
        assert_eq!(k.route(&req("/", "9.8.7.6")), "!unmatched");
        // Any path, any spelling: one bucket per client.
        let first = k.extract(&req("/users/1", "9.8.7.6")).unwrap();
        for path in ["/users/2", "/Users/1/", "//x/../y", "/", "/%7B%7D"] {
            assert_eq!(
                k.extract(&req(path, "9.8.7.6")).as_ref(),
                Some(&first),
                "{path}"
            );
        }
        assert_eq!(
            first,
            Key::new(b"!unmatched@9.8.7.6"),
            "`!` is not readable: a digest"
        );
        assert!(first.as_str().starts_with('#'));
        // Another client, another bucket; the inner key alone is distinct.
        assert_ne!(k.extract(&req("/users/1", "9.8.7.5")).unwrap(), first);
        assert_ne!(
            PeerIp::new().extract(&req("/users/1", "9.8.7.6")).unwrap(),
            first
        );
        // No inner key means no key.
        let none = PerRoute::new(|_: &Parts| None::<Key>);
        assert_eq!(none.extract(&req("/a", "9.8.7.6")), None);
    }

    /// Runs `PerRoute::new(inner)` inside an axum handler, which sees the
    /// `MatchedPath` of its route, and returns the key text.
    #[cfg(feature = "axum")]
    async fn key_under_axum(route: &str, uri: &str, inner: impl KeyExtractor + Clone) -> String {
        use tower::ServiceExt as _;

        let extractor = PerRoute::new(inner);
        let app = axum::Router::new().route(
            route,
            axum::routing::get(move |request: axum::extract::Request| async move {
                let (parts, _) = request.into_parts();
                assert_eq!(extractor.route(&parts), route_of(&parts));
                extractor
                    .extract(&parts)
                    .map_or_else(|| "none".to_owned(), |k| k.to_string())
            }),
        );
        let response = app
            .oneshot(
                http::Request::get(uri)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK, "{uri}");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[cfg(feature = "axum")]
    fn route_of(parts: &Parts) -> &str {
        parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .expect("a handler sees its MatchedPath")
            .as_str()
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn per_route_with_matched_path() {
        // A readable template and key stay readable: no digest.
        assert_eq!(
            key_under_axum("/api/hello", "/api/hello", Global).await,
            "/api/hello@global"
        );
        // Templates with parameters are digests, one per template, not per id.
        let users = key_under_axum("/users/{id}", "/users/1", Global).await;
        assert_eq!(users, Key::new("/users/{id}@global").as_str());
        assert_eq!(
            key_under_axum("/users/{id}", "/users/2", Global).await,
            users
        );
        // A template with `@` is split at a NUL instead, so it cannot be
        // confused with a shorter template and an inner key containing `@`.
        let at = key_under_axum("/a@b", "/a@b", Global).await;
        assert_eq!(at, Key::new(b"/a@b\0global").as_str());
        let shorter = key_under_axum("/a", "/a", |_: &Parts| Some(Key::new("b@global"))).await;
        assert_eq!(shorter, "/a@b@global");
        assert_ne!(at, shorter);
        // Long results are digests; no inner key, no key.
        let long = "/x".repeat(40);
        assert!(key_under_axum(&long, &long, Global).await.starts_with('#'));
        assert_eq!(
            key_under_axum("/n", "/n", |_: &Parts| None::<Key>).await,
            "none"
        );
    }
}
