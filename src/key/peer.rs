//! [`PeerIp`], the connection's address, and how an IP address becomes a
//! [`Key`]: IPv6 grouped by prefix, IPv4 clients embedded in IPv6 keyed by
//! their IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::request::Parts;

use super::{Key, KeyExtractor};

impl Key {
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
            IpAddr::V4(v4) => ipv4_key(v4),
            IpAddr::V6(v6) => {
                if let Some(v4) = embedded_ipv4(v6) {
                    return ipv4_key(v4);
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
}

/// The key of an IPv4 address: its dotted text, as `Display` writes it,
/// written by hand (this runs for every request keyed by peer IP).
fn ipv4_key(v4: Ipv4Addr) -> Key {
    // Written on the stack, then copied once into the key's own allocation
    // (a `String` of capacity 15 would be reallocated to fit).
    let mut text = [0u8; 15];
    let mut len = 0;
    let mut push = |byte: u8| {
        text[len] = byte;
        len += 1;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            push(b'.');
        }
        if octet >= 100 {
            push(b'0' + octet / 100);
        }
        if octet >= 10 {
            push(b'0' + octet / 10 % 10);
        }
        push(b'0' + octet % 10);
    }
    let text = std::str::from_utf8(&text[..len]).expect("digits and dots");
    Key(text.into())
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
///
/// # Without a peer address
///
/// If the server passes no peer address on, `PeerIp` has no key for any
/// request, and under the default [`MissingKey::SharedBucket`](crate::MissingKey)
/// every client shares one bucket: a per-IP limit silently becomes a global
/// one (never no limit). The first such request of each policy is logged at
/// `ERROR` with the fix for the server it came through:
///
/// - axum: `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())`;
/// - tonic: this crate's `tonic` feature (tonic's server inserts
///   `TcpConnectInfo` for plain TCP; with its TLS, a closure key);
/// - hyper: insert the peer `SocketAddr` into the request extensions.
///
/// Or fall back to another identity: `Header::new("x-api-key").or(PeerIp::new())`
/// (see [`KeyExtractor::or`]).
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

    fn client_ip(&self, request: &Parts) -> Option<IpAddr> {
        Self::peer_addr(request).map(|addr| addr.ip())
    }

    fn keys_by_address(&self) -> bool {
        true
    }

    fn missing_key_hint(&self, request: &Parts) -> Option<String> {
        missing_peer_hint(request)
    }
}

/// What a request without a peer address says about the server it came
/// through, for [`peer_hint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerFacts {
    /// `content-type: application/grpc*`: most likely tonic.
    pub grpc: bool,
    /// axum's `MatchedPath` is there: certainly axum.
    pub axum_routed: bool,
    /// tonic's `TcpConnectInfo` is there, without a remote address.
    pub tonic_without_remote: bool,
    /// This crate's features.
    pub axum_feature: bool,
    /// This crate's features.
    pub tonic_feature: bool,
}

/// The hint of [`PeerIp`] and [`ClientIp`](super::ClientIp) for a request
/// with no peer address, or `None` if it has one.
pub(crate) fn missing_peer_hint(request: &Parts) -> Option<String> {
    if PeerIp::peer_addr(request).is_some() {
        return None;
    }
    #[cfg(feature = "axum")]
    let axum_routed = request
        .extensions
        .get::<axum::extract::MatchedPath>()
        .is_some();
    #[cfg(not(feature = "axum"))]
    let axum_routed = false;
    #[cfg(feature = "tonic")]
    let tonic_without_remote = request
        .extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .is_some();
    #[cfg(not(feature = "tonic"))]
    let tonic_without_remote = false;
    Some(peer_hint(PeerFacts {
        grpc: crate::grpc::is_grpc(request),
        axum_routed,
        tonic_without_remote,
        axum_feature: cfg!(feature = "axum"),
        tonic_feature: cfg!(feature = "tonic"),
    }))
}

const AXUM_FIX: &str = "axum: serve with \
    `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())` \
    (`axum::serve(listener, app)` passes no peer address)";
const AXUM_FEATURE_FIX: &str = "axum: enable this crate's `axum` feature (on by default) so \
    that `PeerIp` reads axum's `ConnectInfo<SocketAddr>`, and serve with \
    `app.into_make_service_with_connect_info::<SocketAddr>()`";
const TONIC_FEATURE_FIX: &str = "tonic: enable this crate's `tonic` feature \
    (`tower-redis-ratelimit = { version = \"..\", features = [\"tonic\"] }`) so that `PeerIp` \
    reads the `TcpConnectInfo` tonic's server inserts";
const TONIC_TRANSPORT_FIX: &str = "tonic: its server inserts `TcpConnectInfo` only for plain \
    TCP connections; behind tonic's TLS (`TlsConnectInfo`) or a custom incoming stream, key \
    with `Policy::key_fn(|parts| ..)` reading your connection type";
const HYPER_FIX: &str = "hyper or another tower server: insert the connection's peer \
    `SocketAddr` into each request's extensions before the layer \
    (`request.extensions_mut().insert(peer)`)";
const FALLBACK: &str = "or key by something else, with a fallback chain such as \
    `Header::new(\"x-api-key\").or(PeerIp::new())`";

/// The fix for a request without a peer address, from what the request says
/// about the server: the framework's own fix first.
pub(crate) fn peer_hint(facts: PeerFacts) -> String {
    let mut fixes: Vec<&str> = Vec::new();
    if facts.tonic_without_remote {
        fixes.push(
            "tonic's `TcpConnectInfo` has no remote address (a Unix socket or a custom \
            incoming stream?): key with `Policy::key_fn(|parts| ..)`",
        );
    } else if facts.grpc {
        fixes.push(if facts.tonic_feature {
            TONIC_TRANSPORT_FIX
        } else {
            TONIC_FEATURE_FIX
        });
        fixes.push(HYPER_FIX);
    } else if facts.axum_routed {
        fixes.push(AXUM_FIX);
    } else {
        fixes.push(if facts.axum_feature {
            AXUM_FIX
        } else {
            AXUM_FEATURE_FIX
        });
        fixes.push(HYPER_FIX);
    }
    format!(
        "the request has no peer address, so `PeerIp` found no client IP and every such \
         request shares one bucket (a per-IP limit became a global one). Fix: {}; {FALLBACK}",
        fixes.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_the_display_text() {
        let samples = [0u32, 1, 9, 10, 99, 100, 255, 0x0a00_0001, 0xc000_0221];
        let more = (0..2_000u32).map(|i| i.wrapping_mul(2_654_435_761));
        for bits in samples.into_iter().chain(more) {
            let ip = Ipv4Addr::from(bits);
            assert_eq!(ipv4_key(ip).as_str(), ip.to_string());
        }
        for octet in 0..=255u8 {
            let ip = Ipv4Addr::new(octet, octet, 0, octet);
            assert_eq!(ipv4_key(ip).as_str(), ip.to_string());
        }
    }

    fn parts() -> Parts {
        http::Request::new(()).into_parts().0
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

    #[test]
    fn hints_name_the_framework_fix() {
        let facts = PeerFacts {
            grpc: false,
            axum_routed: false,
            tonic_without_remote: false,
            axum_feature: true,
            tonic_feature: false,
        };
        let hint = |f: PeerFacts| peer_hint(f);
        let axum = hint(PeerFacts {
            axum_routed: true,
            ..facts
        });
        assert!(axum.contains("into_make_service_with_connect_info::<SocketAddr>()"));
        assert!(!axum.contains("tonic") && !axum.contains("hyper"), "{axum}");
        assert!(axum.contains("Header::new(\"x-api-key\").or(PeerIp::new())"));
        let unknown = hint(facts);
        assert!(unknown.contains("axum: serve with") && unknown.contains("hyper"));
        assert!(!unknown.contains("tonic"), "{unknown}");
        let no_axum = hint(PeerFacts {
            axum_feature: false,
            ..facts
        });
        assert!(no_axum.contains("enable this crate's `axum` feature"));
        let grpc = hint(PeerFacts {
            grpc: true,
            ..facts
        });
        assert!(
            grpc.contains("enable this crate's `tonic` feature"),
            "{grpc}"
        );
        assert!(!grpc.contains("axum"), "{grpc}");
        let grpc_tls = hint(PeerFacts {
            grpc: true,
            tonic_feature: true,
            ..facts
        });
        assert!(grpc_tls.contains("TlsConnectInfo"), "{grpc_tls}");
        assert!(!grpc_tls.contains("enable this crate"), "{grpc_tls}");
        let unix = hint(PeerFacts {
            tonic_without_remote: true,
            ..facts
        });
        assert!(unix.contains("no remote address"), "{unix}");
        // A request with a peer address needs no hint.
        let mut p = parts();
        p.extensions
            .insert("192.0.2.1:1".parse::<SocketAddr>().unwrap());
        assert_eq!(PeerIp::new().missing_key_hint(&p), None);
        assert!(PeerIp::new().missing_key_hint(&parts()).is_some());
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
