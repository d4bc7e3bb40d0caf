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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
        Self::concat(&[identity.as_ref()])
    }

    /// `Key::new` of the concatenation of `parts`, without building it: one
    /// allocation for a readable key, a streamed digest otherwise.
    fn concat(parts: &[&[u8]]) -> Self {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let readable = len != 0
            && len <= MAX_READABLE_LEN
            && parts
                .iter()
                .all(|part| part.iter().all(|&b| is_safe_byte(b)));
        if readable {
            let mut text = String::with_capacity(len);
            for part in parts {
                // Safe bytes are ASCII, so this borrows and never replaces.
                text.push_str(&String::from_utf8_lossy(part));
            }
            Key(text.into())
        } else {
            Key(hashed(parts).into())
        }
    }

    /// The key of an IP address.
    ///
    /// - An IPv4 address is its dotted text, e.g. `203.0.113.9`.
    /// - An IPv6 address that embeds an IPv4 client address by a standard
    ///   transition mechanism is keyed by that IPv4 address, with the same
    ///   text as the IPv4 client itself, so one client shares one bucket
    ///   whichever way it arrives:
    ///
    ///   | form | prefix | IPv4 address |
    ///   |---|---|---|
    ///   | IPv4-mapped | `::ffff:0:0/96` | last 32 bits |
    ///   | NAT64 well-known prefix (RFC 6052) | `64:ff9b::/96` | last 32 bits |
    ///   | IPv4-compatible (deprecated), except `::` and `::1` | `::/96` | last 32 bits |
    ///   | 6to4 (RFC 3056) | `2002::/16` | bits 16–47 |
    ///   | Teredo (RFC 4380) | `2001::/32` | last 32 bits, inverted |
    ///
    ///   Behind a NAT64/SIIT translator every IPv4 client would otherwise
    ///   fall into the translator's one /64, and behind a Teredo server into
    ///   the server's; a 6to4 site's /48 is one IPv4 subscriber.
    /// - An address in the NAT64 local-use prefix `64:ff9b:1::/48`
    ///   (RFC 8215) is keyed by the whole address: where the IPv4 address sits
    ///   depends on the prefix length the operator chose (RFC 6052 §2.2),
    ///   which the address does not tell, but the translator synthesises one
    ///   address per IPv4 client either way.
    /// - Any other IPv6 address is reduced to its first `v6_prefix` bits
    ///   (one subscriber usually holds a whole /64), e.g. `2001:db8:1:2::/64`;
    ///   with `v6_prefix` 128, the address itself.
    ///
    /// Translators configured with a network-specific prefix (not one of the
    /// above) are not recognised: their clients are grouped by `v6_prefix`
    /// like any IPv6 address.
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use tower_redis_ratelimit::key::Key;
    ///
    /// let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    /// assert_eq!(Key::from_ip(ip("192.0.2.33"), 64).as_str(), "192.0.2.33");
    /// assert_eq!(Key::from_ip(ip("64:ff9b::192.0.2.33"), 64).as_str(), "192.0.2.33");
    /// assert_eq!(Key::from_ip(ip("2001:db8:1:2::7"), 64).as_str(), "2001:db8:1:2::/64");
    /// ```
    pub fn from_ip(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => Key(v4.to_string().into()),
            IpAddr::V6(v6) => {
                if let Some(v4) = embedded_ipv4(v6) {
                    return Key(v4.to_string().into());
                }
                let prefix = if is_local_nat64(v6) {
                    128
                } else {
                    v6_prefix.min(128)
                };
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

/// The NAT64 well-known prefix `64:ff9b::/96` (RFC 6052), as the top 96 bits.
const NAT64_WKP: u128 = 0x0064_ff9b << 64;

/// The IPv4 client address an IPv6 address embeds, for the forms listed in
/// [`Key::from_ip`]: IPv4-mapped, NAT64 well-known prefix, IPv4-compatible,
/// 6to4 and Teredo.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    let low32 = bits as u32;
    let segments = v6.segments();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match bits >> 32 {
        // IPv4-compatible `::a.b.c.d`; `::` and `::1` are not IPv4 clients.
        0 if bits > 1 => return Some(Ipv4Addr::from(low32)),
        NAT64_WKP => return Some(Ipv4Addr::from(low32)),
        _ => {}
    }
    match segments {
        // 6to4: `2002:AABB:CCDD::/48`, the site's IPv4 address in bits 16-47.
        [0x2002, ..] => Some(Ipv4Addr::from((bits >> 80) as u32)),
        // Teredo: `2001:0:<server>:<flags>:<port>:<client>`, the client's
        // public IPv4 address in the last 32 bits, every bit inverted.
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!low32)),
        _ => None,
    }
}

/// Whether `v6` is in the NAT64 local-use prefix `64:ff9b:1::/48` (RFC 8215).
fn is_local_nat64(v6: Ipv6Addr) -> bool {
    matches!(v6.segments(), [0x0064, 0xff9b, 0x0001, ..])
}

fn is_safe_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'@' | b'-')
}

/// `#` and the SHA-256 hex digest of the concatenation of `parts`.
fn hashed(parts: &[&[u8]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
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
/// The key is made by [`Key::from_ip`]: IPv6 addresses are grouped by prefix,
/// /64 by default, except those that embed an IPv4 client address
/// (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, IPv4-compatible,
/// 6to4 `2002::/16`, Teredo `2001::/32`), which are keyed by that IPv4
/// address, and NAT64 local-use `64:ff9b:1::/48`, keyed by the whole address.
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
    /// Keys requests by this header. The name is case-insensitive, as header
    /// names are: `Header::new("X-Api-Key")` and `Header::new("x-api-key")`
    /// are the same extractor.
    ///
    /// ```
    /// use tower_redis_ratelimit::key::Header;
    ///
    /// assert_eq!(Header::new("X-Api-Key"), Header::new("x-api-key"));
    /// ```
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name in any case (e.g. it is empty or
    /// contains a space, a colon or a non-ASCII character). To handle that
    /// yourself, parse it (`HeaderName::try_from(name)`, which accepts any
    /// case too) and use [`Header::from_name`].
    pub fn new(name: &str) -> Self {
        match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            Ok(parsed) => Self(parsed),
            Err(_) => panic!("key::Header::new: {name:?} is not a valid HTTP header name"),
        }
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

    fn v6_key(ip: &str, prefix: u8) -> String {
        Key::from_ip(ip.parse().unwrap(), prefix).to_string()
    }

    #[test]
    fn ipv6_embedding_an_ipv4_client_is_keyed_by_it() {
        let v4 = v6_key("192.0.2.33", 64);
        assert_eq!(v4, "192.0.2.33");
        for (form, ip) in [
            ("IPv4-mapped", "::ffff:192.0.2.33"),
            ("NAT64 well-known prefix", "64:ff9b::192.0.2.33"),
            ("NAT64 well-known prefix, hex", "64:ff9b::c000:221"),
            ("IPv4-compatible", "::192.0.2.33"),
            ("6to4 site address", "2002:c000:221::"),
            ("6to4 host in a subnet", "2002:c000:221:5:a:b:c:d"),
        ] {
            for prefix in [0, 48, 64, 128] {
                assert_eq!(v6_key(ip, prefix), v4, "{form} {ip} /{prefix}");
            }
        }
        // Teredo (RFC 4380): server 65.54.227.120, flags 0x8000, obfuscated
        // port 0x63bf, obfuscated client 0x3ffffdd2 = !192.0.2.45.
        assert_eq!(
            v6_key("2001:0:4136:e378:8000:63bf:3fff:fdd2", 64),
            "192.0.2.45"
        );
        // Another port, flags or server: the same client.
        assert_eq!(
            v6_key("2001:0:5ef5:79fd:0:1234:3fff:fdd2", 64),
            "192.0.2.45"
        );
        assert_eq!(
            v6_key("2001:0:4136:e378:8000:63bf:3fff:fdd3", 64),
            "192.0.2.44"
        );
        // Every IPv4 client behind a NAT64 translator has its own bucket.
        assert_ne!(v6_key("64:ff9b::192.0.2.34", 64), v4);
    }

    #[test]
    fn ipv6_near_misses_are_grouped_by_prefix() {
        // `::` and `::1` are not IPv4-compatible clients.
        assert_eq!(v6_key("::", 64), "::/64");
        assert_eq!(v6_key("::1", 64), "::/64");
        assert_eq!(v6_key("::1", 128), "::1");
        // Outside the /96 of the NAT64 well-known prefix.
        assert_eq!(v6_key("64:ff9b::1:c000:221", 64), "64:ff9b::/64");
        assert_eq!(v6_key("64:ff9b:0:1::c000:221", 64), "64:ff9b:0:1::/64");
        // 2001:1::/32 is not Teredo, 2003::/16 not 6to4, ::fffe:0:0/96 not mapped.
        assert_eq!(
            v6_key("2001:1:4136:e378::fdd2", 64),
            "2001:1:4136:e378::/64"
        );
        assert_eq!(v6_key("2003:c000:221::1", 48), "2003:c000:221::/48");
        assert_eq!(v6_key("::fffe:c000:221", 64), "::/64");
        // Ordinary IPv6.
        assert_eq!(v6_key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(v6_key("2001:db8:1:2:aaaa::1", 56), "2001:db8:1::/56");
    }

    #[test]
    fn nat64_local_use_prefix_is_keyed_by_the_whole_address() {
        // RFC 8215: the operator picks the prefix length, so the IPv4
        // address may sit anywhere: one bucket per synthesised address.
        let a = "64:ff9b:1::c000:221";
        let b = "64:ff9b:1::c000:222";
        let split = "64:ff9b:1:c000:2:2100::"; // a /48 prefix, RFC 6052 layout
        for prefix in [0, 64, 128] {
            assert_eq!(v6_key(a, prefix), a);
            assert_eq!(v6_key(b, prefix), b);
            assert_eq!(v6_key(split, prefix), split);
        }
        // Just outside it: ordinary IPv6.
        assert_eq!(v6_key("64:ff9b:2::c000:221", 64), "64:ff9b:2::/64");
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
    fn header_names_in_any_case() {
        let lower = Header::new("x-api-key");
        for name in ["X-Api-Key", "X-API-KEY", "x-Api-kEy"] {
            assert_eq!(Header::new(name), lower, "{name}");
        }
        assert_eq!(
            Header::new("AUTHORIZATION"),
            Header::from_name(http::header::AUTHORIZATION)
        );
        assert_eq!(
            Header::from_name(HeaderName::from_static("x-api-key")),
            lower
        );
        let mut p = parts();
        p.headers.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(Header::new("X-Api-Key").extract(&p), Some(Key::new("k1")));
    }

    #[test]
    fn header_new_panics_on_invalid_names() {
        for bad in ["", "x api key", "x-api-key:", "x-ápi", "a\nb"] {
            let panic = std::panic::catch_unwind(|| Header::new(bad)).expect_err(bad);
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            assert!(
                message.contains("not a valid HTTP header name"),
                "{message}"
            );
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }

    #[test]
    fn concat_is_new_of_the_concatenation() {
        for parts in [
            &[&b"/api"[..], b"@", b"1.2.3.4"][..],
            &[b"/users/{id}", b"@", b"1.2.3.4"],
            &[b"/a@b", b"\0", b"k"],
            &[b"", b"", b""],
            &[&[b'a'; 40][..], &[b'b'; 24][..]],
            &[&[b'a'; 40][..], &[b'b'; 25][..]],
        ] {
            assert_eq!(Key::concat(parts), Key::new(parts.concat()), "{parts:?}");
        }
    }

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
