//! Who is the client? Key extractors and the sanitised [`Key`] they produce.
//!
//! A key extractor looks at the request head and returns the client's identity.
//! Built-ins: [`PeerIp`] (the connection's address), [`Header`] (e.g. an API
//! key) and [`Global`] (one bucket for everybody). Any
//! `Fn(&http::request::Parts) -> Option<Key>` closure is an extractor too.
//!
//! Identities come from clients and are hostile until proven otherwise, so a
//! [`Key`] is sanitised when it is made: short identities made only of
//! `A-Z a-z 0-9 . _ : / @ -` stay readable (handy with `redis-cli --scan`);
//! anything else (braces, control bytes, non-UTF-8, more than 64 bytes) is
//! replaced by `#` and a SHA-256 digest. No key can break a Redis key, and two
//! different identities never share a bucket.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::HeaderName;
use http::request::Parts;
use sha2::{Digest, Sha256};

/// The longest identity kept readable; longer ones are hashed.
pub const MAX_READABLE_LEN: usize = 64;

/// A sanitised client identity, safe to embed in a Redis key.
///
/// ```
/// use tower_redis_ratelimit::key::Key;
///
/// assert_eq!(Key::new("10.0.0.1").as_str(), "10.0.0.1");
/// let hostile = Key::new("a}{b\r\nFLUSHALL");
/// assert!(hostile.as_str().starts_with('#'));
/// assert!(!hostile.as_str().contains(['{', '}', '\n']));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Box<str>);

impl Key {
    /// Makes a key from any bytes, sanitising them.
    pub fn new(identity: impl AsRef<[u8]>) -> Self {
        let raw = identity.as_ref();
        let readable = !raw.is_empty()
            && raw.len() <= MAX_READABLE_LEN
            && raw.iter().all(|&b| is_safe_byte(b));
        if readable {
            // Safe bytes are ASCII, so this cannot fail.
            Key(String::from_utf8_lossy(raw).into())
        } else {
            Key(hashed(raw).into())
        }
    }

    /// The key of an IP address. IPv6 addresses are reduced to their first
    /// `v6_prefix` bits (one subscriber usually holds a whole /64).
    pub fn from_ip(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => Key(v4.to_string().into()),
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Key(v4.to_string().into());
                }
                let prefix = v6_prefix.min(128);
                if prefix == 128 {
                    return Key(v6.to_string().into());
                }
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(prefix))
                };
                let net = Ipv6Addr::from(u128::from(v6) & mask);
                Key(format!("{net}/{prefix}").into())
            }
        }
    }

    /// The bucket shared by requests without a key. Its text cannot be produced
    /// by [`Key::new`] (which never emits `!`).
    pub(crate) fn missing() -> Self {
        Key("!none".into())
    }

    /// The sanitised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_safe_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'@' | b'-')
}

fn hashed(raw: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(raw);
    let mut out = String::with_capacity(1 + 2 * digest.len());
    out.push('#');
    for byte in digest {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0xf)] as char);
    }
    out
}

/// Derives the client identity from a request head.
///
/// Returning `None` means "no identity": the policy's
/// [`MissingKey`](crate::MissingKey) rule decides what happens.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of this request, if it has one.
    fn extract(&self, request: &Parts) -> Option<Key>;
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<Key> + Send + Sync + 'static,
{
    fn extract(&self, request: &Parts) -> Option<Key> {
        self(request)
    }
}

/// The peer IP address of the connection.
///
/// Reads, in this order:
///
/// - axum's `ConnectInfo<SocketAddr>` (feature `axum`, on by default; serve
///   with `into_make_service_with_connect_info::<SocketAddr>()`);
/// - tonic's `TcpConnectInfo` (feature `tonic`), which tonic's
///   `transport::Server` adds to every request it accepts over plain TCP. With
///   tonic's built-in TLS the extension is `TlsConnectInfo<TcpConnectInfo>`,
///   which is not read (naming it would pull in rustls): use a closure
///   extractor there;
/// - a plain `SocketAddr` request extension (insert it yourself with hyper).
///
/// IPv6 addresses are grouped by prefix, /64 by default.
///
/// Forwarding headers (`X-Forwarded-For`, `Forwarded`) are ignored: they are
/// written by the client and trivially spoofed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIp {
    v6_prefix: u8,
}

impl PeerIp {
    /// Peer IP, IPv6 grouped by /64.
    pub const fn new() -> Self {
        Self { v6_prefix: 64 }
    }

    /// Groups IPv6 peers by the first `bits` bits (clamped to 0..=128).
    #[must_use]
    pub const fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = if bits > 128 { 128 } else { bits };
        self
    }

    /// The peer socket address, from whichever extension carries it.
    pub fn peer_addr(request: &Parts) -> Option<SocketAddr> {
        #[cfg(feature = "axum")]
        if let Some(info) = request
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(info.0);
        }
        #[cfg(feature = "tonic")]
        if let Some(addr) = request
            .extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
        {
            return Some(addr);
        }
        request.extensions.get::<SocketAddr>().copied()
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, request: &Parts) -> Option<Key> {
        Self::peer_addr(request).map(|addr| Key::from_ip(addr.ip(), self.v6_prefix))
    }
}

/// The value of one request header, e.g. `x-api-key`.
///
/// A request without the header (or with an empty value) has no key. If several
/// values are present only the first counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header(HeaderName);

impl Header {
    /// Keys requests by this header.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name; use [`Header::from_name`] with a
    /// parsed [`HeaderName`] to handle that case yourself.
    pub fn new(name: &'static str) -> Self {
        Self(HeaderName::from_static(name))
    }

    /// Keys requests by this header.
    pub fn from_name(name: HeaderName) -> Self {
        Self(name)
    }
}

impl KeyExtractor for Header {
    fn extract(&self, request: &Parts) -> Option<Key> {
        let value = request.headers.get(&self.0)?;
        (!value.is_empty()).then(|| Key::new(value.as_bytes()))
    }
}

/// One bucket for every request: a global limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Global;

impl KeyExtractor for Global {
    fn extract(&self, _request: &Parts) -> Option<Key> {
        Some(Key("global".into()))
    }
}

/// One bucket per client *per route*: the key is the matched route template
/// plus the inner extractor's key.
///
/// With axum (feature `axum`) the route is the template of axum's
/// `axum::extract::MatchedPath`, e.g. `/users/{id}`: requests to
/// `/users/1` and `/users/2` from one client share one bucket, rather than one
/// bucket per id (which would let a client multiply its quota by varying the
/// id). Without a `MatchedPath` the route is the request path normalised with
/// [`normalize_path`](crate::normalize_path), so each distinct path gets its
/// own bucket.
///
/// axum inserts `MatchedPath` when a request matches a route, before the
/// route's middleware runs, so it is there for layers added with
/// `Router::route_layer` and with `Router::layer` (axum applies both to every
/// route). It is absent, and the normalised path is used, for requests that
/// end in the 404 fallback (which `Router::layer` limits and
/// `Router::route_layer` does not) and when the layer wraps the whole `Router`
/// as a tower service, where it runs before routing.
///
/// All methods of a route share its bucket; use separate policies (e.g.
/// [`route_method`](crate::RateLimitLayerBuilder::route_method)) to limit
/// methods apart. If the inner extractor has no key, neither has `PerRoute`.
/// The resulting key is a digest (route templates contain braces, which are
/// not kept readable).
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
    case_insensitive: bool,
}

impl<K> PerRoute<K> {
    /// Keys requests by their route and `inner`'s key.
    pub const fn new(inner: K) -> Self {
        Self {
            inner,
            case_insensitive: false,
        }
    }

    /// Lower-cases the fallback path (for apps that route case-insensitively).
    #[must_use]
    pub const fn case_insensitive_paths(mut self, yes: bool) -> Self {
        self.case_insensitive = yes;
        self
    }

    /// The route part of the key: axum's matched route template if present,
    /// else the normalised request path.
    pub fn route(&self, request: &Parts) -> String {
        #[cfg(feature = "axum")]
        if let Some(matched) = request.extensions.get::<axum::extract::MatchedPath>() {
            return matched.as_str().to_owned();
        }
        let segments = crate::routes::normalize_path(request.uri.path(), self.case_insensitive);
        let mut route = String::with_capacity(request.uri.path().len());
        for segment in &segments {
            route.push('/');
            route.push_str(segment);
        }
        if route.is_empty() {
            route.push('/');
        }
        route
    }
}

impl<K: KeyExtractor> KeyExtractor for PerRoute<K> {
    fn extract(&self, request: &Parts) -> Option<Key> {
        let inner = self.inner.extract(request)?;
        let route = self.route(request);
        // A NUL byte appears in neither part (paths cannot contain one, key
        // text never does), so the pair is encoded without ambiguity.
        let mut raw = Vec::with_capacity(route.len() + 1 + inner.as_str().len());
        raw.extend_from_slice(route.as_bytes());
        raw.push(0);
        raw.extend_from_slice(inner.as_str().as_bytes());
        Some(Key::new(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn readable_and_hashed_keys() {
        assert_eq!(Key::new("1.2.3.4").as_str(), "1.2.3.4");
        assert_eq!(Key::new("user@example.com").as_str(), "user@example.com");
        for hostile in [
            &b"{tag}"[..],
            b"a\nb",
            b"\xff\xfe",
            b"",
            b"with space",
            &[b'a'; 65][..],
        ] {
            let k = Key::new(hostile);
            assert!(k.as_str().starts_with('#'), "{k:?}");
            assert_eq!(k.as_str().len(), 65);
        }
        assert_ne!(Key::new("a{"), Key::new("a}"));
        assert_ne!(Key::missing(), Key::new("!none"));
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Key::from_ip(a, 64), Key::from_ip(b, 64));
        assert_ne!(Key::from_ip(a, 64), Key::from_ip(c, 64));
        assert_eq!(Key::from_ip(a, 64).as_str(), "2001:db8:1:2::/64");
        assert_ne!(Key::from_ip(a, 128), Key::from_ip(b, 128));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(Key::from_ip(mapped, 64).as_str(), "10.1.2.3");
        assert_eq!(Key::from_ip(a, 0).as_str(), "::/0");
    }

    #[test]
    fn extractors() {
        let mut p = parts();
        assert_eq!(PeerIp::new().extract(&p), None);
        p.extensions
            .insert("9.8.7.6:1234".parse::<SocketAddr>().unwrap());
        assert_eq!(PeerIp::new().extract(&p), Some(Key::new("9.8.7.6")));

        let h = Header::new("x-api-key");
        assert_eq!(h.extract(&p), None);
        p.headers.insert("x-api-key", "".parse().unwrap());
        assert_eq!(h.extract(&p), None);
        p.headers.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(h.extract(&p), Some(Key::new("k1")));
        assert_eq!(Global.extract(&p), Some(Key::new("global")));
        let f = |_: &Parts| Some(Key::new("c"));
        assert_eq!(f.extract(&p), Some(Key::new("c")));
    }

    #[test]
    fn per_route_fallback_normalises_the_path() {
        let req = |path: &str| {
            let mut p = http::Request::get(path).body(()).unwrap().into_parts().0;
            p.extensions
                .insert("9.8.7.6:1234".parse::<SocketAddr>().unwrap());
            p
        };
        let k = PerRoute::new(PeerIp::new());
        assert_eq!(k.route(&req("//users/1/")), "/users/1");
        assert_eq!(k.route(&req("/")), "/");
        assert_eq!(k.extract(&req("/users/1")), k.extract(&req("/users//1/")));
        assert_ne!(k.extract(&req("/users/1")), k.extract(&req("/users/2")));
        assert_ne!(k.extract(&req("/Users/1")), k.extract(&req("/users/1")));
        let ci = k.case_insensitive_paths(true);
        assert_eq!(ci.extract(&req("/Users/1")), ci.extract(&req("/users/1")));
        // The inner key matters, and no inner key means no key.
        let other = PerRoute::new(|_: &Parts| Some(Key::new("1.1.1.1")));
        assert_ne!(k.extract(&req("/a")), other.extract(&req("/a")));
        let none = PerRoute::new(|_: &Parts| None::<Key>);
        assert_eq!(none.extract(&req("/a")), None);
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_connect_info() {
        let mut p = parts();
        p.extensions
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some("10.1.2.3:5000".parse().unwrap()),
            });
        assert_eq!(PeerIp::new().extract(&p), Some(Key::new("10.1.2.3")));
        let mut p = parts();
        p.extensions
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            });
        assert_eq!(PeerIp::new().extract(&p), None);
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_connect_info() {
        let mut p = parts();
        let addr: SocketAddr = "[2001:db8::5]:80".parse().unwrap();
        p.extensions.insert(axum::extract::ConnectInfo(addr));
        assert_eq!(PeerIp::new().extract(&p).unwrap().as_str(), "2001:db8::/64");
    }
}
