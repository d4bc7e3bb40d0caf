//! [`ClientIp`]: the client IP behind trusted reverse proxies.

use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use http::{HeaderName, header};
use ipnet::{IpNet, Ipv4Net};

use super::{Key, KeyExtractor, PeerIp};
use crate::error::ConfigError;

/// Which forwarding header the trusted proxies write.
///
/// Only that header is read: a proxy passes other forwarding headers through
/// untouched, so they are entirely attacker-controlled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// The client IP address, trusting forwarding headers only from configured proxies.
///
/// - If the TCP peer is not a trusted proxy (or none is configured), the key is
///   the peer address, exactly like [`PeerIp`]: forwarding headers are ignored.
/// - If the peer is trusted, the forwarding header is read from right to left
///   (the order proxies append in), skipping trusted proxies; the first
///   address that is not a trusted proxy is the client. Entries to its left
///   were written by the client and are never used, so prepending a fake
///   address changes nothing.
/// - If every address in the header is a trusted proxy, the leftmost one is
///   the client. A malformed entry stops the walk: the last good address seen
///   (possibly the peer) is used.
///
/// The key is made from the client address by [`Key::from_ip`]: IPv6
/// clients are grouped by prefix, /64 by default, except addresses that embed
/// an IPv4 client address (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`,
/// IPv4-compatible, 6to4 `2002::/16`, Teredo `2001::/32`), which are keyed by
/// that IPv4 address, and NAT64 local-use `64:ff9b:1::/48`, keyed by the
/// whole address.
///
/// # Matching trusted proxies
///
/// An IPv4-mapped address (`::ffff:10.0.0.1`, how a dual-stack socket
/// reports an IPv4 peer) is the IPv4 address itself, both as the peer and in
/// a forwarding header: it matches IPv4 trusted networks. Trusted networks
/// written in IPv4-mapped form (`::ffff:10.0.0.0/104`) are read as the IPv4
/// network (`10.0.0.0/8`). The other IPv4 embeddings (NAT64, 6to4, Teredo,
/// IPv4-compatible) are addresses of a translator or tunnel, not of the
/// proxy, so they never match an IPv4 trusted network.
///
/// ```
/// use tower_redis_ratelimit::key::ClientIp;
///
/// // Behind a load balancer in 10.0.0.0/8 that appends to X-Forwarded-For.
/// let key = ClientIp::new().trust_proxies(["10.0.0.0/8", "127.0.0.1"]);
/// # let _ = key;
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    v6_prefix: Option<u8>,
    /// The first trusted network that could not be used, reported when the
    /// layer is built ([`KeyExtractor::validate`]).
    invalid: Option<ConfigError>,
}

impl ClientIp {
    /// No trusted proxy: the peer address.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts these networks (CIDR such as `10.0.0.0/8`, or single addresses).
    ///
    /// IPv4-mapped IPv6 networks are read as IPv4 networks:
    /// `::ffff:10.0.0.0/104` is `10.0.0.0/8`, and matches the peer `10.1.2.3`
    /// as well as `::ffff:10.1.2.3`.
    ///
    /// Text that is neither a network nor an address
    /// ([`ConfigError::InvalidNetwork`]), or an IPv4-mapped network with a
    /// prefix below /96 ([`ConfigError::MappedNetworkTooWide`]: it would span
    /// addresses that are not IPv4-mapped too), makes the layer's
    /// [`build`](crate::RateLimitLayerBuilder::build) fail with that error
    /// ([`KeyExtractor::validate`]); such an entry trusts nothing.
    #[must_use]
    pub fn trust_proxies<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for net in networks {
            let parsed = parse_network(net.as_ref());
            self.trust(parsed);
        }
        self
    }

    /// Trusts these already parsed networks, normalised as by
    /// [`trust_proxies`](Self::trust_proxies). An IPv4-mapped network with a
    /// prefix below /96 makes the layer's
    /// [`build`](crate::RateLimitLayerBuilder::build) fail with
    /// [`ConfigError::MappedNetworkTooWide`].
    #[must_use]
    pub fn trust_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        for net in networks {
            let normalized = normalize_network(net, &net.to_string());
            self.trust(normalized);
        }
        self
    }

    /// Keeps a trusted network, or the first error for the build to report.
    fn trust(&mut self, network: Result<IpNet, ConfigError>) {
        match network {
            Ok(network) => self.trusted.push(network),
            Err(error) => {
                self.invalid.get_or_insert(error);
            }
        }
    }

    /// Which header the trusted proxies write (default `X-Forwarded-For`).
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by the first `bits` bits (default 64).
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = Some(bits.min(128));
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request (before prefix grouping).
    pub fn client_addr(&self, request: &Parts) -> Option<IpAddr> {
        let peer = canonical(PeerIp::peer_addr(request)?.ip());
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return Some(peer);
        }
        let name: HeaderName = match self.header {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => header::FORWARDED,
        };
        // Every value of the header, in order, split into hops.
        let hops: Vec<&[u8]> = request
            .headers
            .get_all(&name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_node(hop),
                ForwardedHeader::Forwarded => forwarded_for(hop).and_then(parse_node),
            };
            let Some(ip) = parsed.map(canonical) else {
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        Some(client)
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, request: &Parts) -> Option<Key> {
        let ip = self.client_addr(request)?;
        Some(Key::from_ip(ip, self.v6_prefix.unwrap_or(64)))
    }

    fn client_ip(&self, request: &Parts) -> Option<IpAddr> {
        self.client_addr(request)
    }

    fn keys_by_address(&self) -> bool {
        true
    }

    fn missing_key_hint(&self, request: &Parts) -> Option<String> {
        super::peer::missing_peer_hint(request)
    }

    /// The first trusted network that could not be used.
    fn validate(&self) -> Result<(), ConfigError> {
        self.invalid.clone().map_or(Ok(()), Err)
    }
}

/// A network written as text (CIDR such as `10.0.0.0/8`, or a single
/// address), normalised by [`normalize_network`].
pub(crate) fn parse_network(text: &str) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    let parsed = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ConfigError::InvalidNetwork {
            network: text.to_owned(),
        })?;
    normalize_network(parsed, text)
}

/// A trusted network as matched against canonical addresses: truncated to
/// its prefix, and IPv4-mapped IPv6 networks (`::ffff:a.b.c.d/n`, n >= 96)
/// as the IPv4 network `a.b.c.d/(n-96)`. `text` is how the user wrote it.
pub(crate) fn normalize_network(net: IpNet, text: &str) -> Result<IpNet, ConfigError> {
    let IpNet::V6(v6) = net else {
        return Ok(net.trunc());
    };
    let Some(v4) = v6.addr().to_ipv4_mapped() else {
        return Ok(net.trunc());
    };
    let Some(v4_prefix) = v6.prefix_len().checked_sub(96) else {
        return Err(ConfigError::MappedNetworkTooWide {
            network: text.to_owned(),
        });
    };
    let v4 = Ipv4Net::new(v4, v4_prefix).expect("an IPv6 prefix of at most 128 minus 96");
    Ok(IpNet::V4(v4.trunc()))
}

/// IPv4-mapped IPv6 addresses as IPv4. Only the mapped form: it is how a
/// dual-stack socket reports an IPv4 peer, the same host. Other IPv6 forms
/// embedding an IPv4 address (NAT64, 6to4, ...) are a translator or a tunnel,
/// not that host, and must not match a trusted IPv4 proxy.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` value of one `Forwarded` element (`for=1.2.3.4;proto=https`).
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        name.eq_ignore_ascii_case(b"for").then_some(value)
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`, optionally in double quotes.
fn parse_node(raw: &[u8]) -> Option<IpAddr> {
    let mut s = std::str::from_utf8(raw.trim_ascii()).ok()?;
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s = &s[1..s.len() - 1];
    }
    if s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // `[v6]` without a port.
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        parts.extensions.insert(peer.parse::<SocketAddr>().unwrap());
        parts
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let k = ClientIp::new();
        let r = req("203.0.113.7:1000", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(k.client_addr(&r), Some(ip("203.0.113.7")));
        let k = ClientIp::new().trust_proxies(["10.0.0.0/8"]);
        assert_eq!(k.client_addr(&r), Some(ip("203.0.113.7")));
    }

    #[test]
    fn rightmost_untrusted_wins() {
        let k = ClientIp::new().trust_proxies(["10.0.0.0/8"]);
        let r = req(
            "10.0.0.1:1000",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.1.1.1")],
        );
        assert_eq!(k.client_addr(&r), Some(ip("198.51.100.4")));
        // Split across two header lines, ports, brackets.
        let r = req(
            "10.0.0.1:1000",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "[2001:db8::9]:443, 10.2.2.2:80"),
            ],
        );
        assert_eq!(k.client_addr(&r), Some(ip("2001:db8::9")));
        // All trusted: leftmost.
        let r = req(
            "10.0.0.1:1000",
            &[("x-forwarded-for", "10.9.9.9, 10.1.1.1")],
        );
        assert_eq!(k.client_addr(&r), Some(ip("10.9.9.9")));
        // Garbage stops the walk at the last good hop.
        let r = req(
            "10.0.0.1:1000",
            &[("x-forwarded-for", "1.2.3.4, garbage, 10.1.1.1")],
        );
        assert_eq!(k.client_addr(&r), Some(ip("10.1.1.1")));
        // No header: the proxy itself.
        let r = req("10.0.0.1:1000", &[]);
        assert_eq!(k.client_addr(&r), Some(ip("10.0.0.1")));
    }

    #[test]
    fn forwarded_header() {
        let k = ClientIp::new()
            .trust_proxies(["127.0.0.1"])
            .header(ForwardedHeader::Forwarded);
        let r = req(
            "127.0.0.1:1",
            &[
                (
                    "forwarded",
                    "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https",
                ),
                ("x-forwarded-for", "7.7.7.7"),
            ],
        );
        assert_eq!(k.client_addr(&r), Some(ip("2001:db8::1")));
        assert_eq!(k.extract(&r).unwrap().as_str(), "2001:db8::/64");
    }

    #[test]
    fn ipv4_mapped_trusted_networks_are_ipv4_networks() {
        let by_text = ClientIp::new().trust_proxies(["::ffff:10.0.0.0/104", "::ffff:192.0.2.7"]);
        let parsed =
            ClientIp::new().trust_networks(["::ffff:10.9.9.9/104".parse::<IpNet>().unwrap()]);
        assert_eq!(by_text.trusted[0], "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert_eq!(by_text.trusted[1], "192.0.2.7/32".parse::<IpNet>().unwrap());
        assert_eq!(parsed.trusted, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        let xff = [("x-forwarded-for", "198.51.100.4")];
        for k in [&by_text, &parsed] {
            assert!(k.is_trusted(ip("10.1.2.3")));
            assert!(k.is_trusted(ip("::ffff:10.1.2.3")));
            assert!(!k.is_trusted(ip("11.1.2.3")));
            assert!(!k.is_trusted(ip("::ffff:11.1.2.3")));
            for peer in ["10.1.2.3:1000", "[::ffff:10.1.2.3]:1000"] {
                let r = req(peer, &xff);
                assert_eq!(k.client_addr(&r), Some(ip("198.51.100.4")), "{peer}");
            }
            let r = req("[::ffff:11.1.2.3]:1000", &xff);
            assert_eq!(k.client_addr(&r), Some(ip("11.1.2.3")));
        }
        // A mapped /96 is all of IPv4, a mapped /128 one address.
        let all = ClientIp::new().trust_proxies(["::ffff:0:0/96"]);
        assert_eq!(all.trusted, ["0.0.0.0/0".parse::<IpNet>().unwrap()]);
        let one = ClientIp::new().trust_proxies(["::ffff:10.1.2.3/128"]);
        assert!(one.is_trusted(ip("10.1.2.3")) && !one.is_trusted(ip("10.1.2.4")));
        // Host bits are dropped as for any network.
        let host_bits = ClientIp::new().trust_proxies(["::ffff:10.1.2.3/104"]);
        assert_eq!(host_bits.trusted, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        // Plain IPv6 networks are untouched.
        let v6 = ClientIp::new().trust_proxies(["2001:db8::1/64"]);
        assert_eq!(v6.trusted, ["2001:db8::/64".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn ipv4_mapped_network_below_96_is_config_error() {
        for wide in ["::ffff:10.0.0.0/95", "::ffff:0:0/80", "::ffff:10.0.0.0/0"] {
            let err = ClientIp::new()
                .trust_proxies([wide])
                .validate()
                .unwrap_err();
            assert_eq!(
                err,
                ConfigError::MappedNetworkTooWide {
                    network: wide.to_owned()
                }
            );
            let message = err.to_string();
            assert!(message.contains(wide), "{message}");
            assert!(message.contains("write the IPv4 network"), "{message}");
            let parsed = ClientIp::new()
                .trust_networks([wide.parse::<IpNet>().unwrap()])
                .validate();
            assert!(
                matches!(parsed, Err(ConfigError::MappedNetworkTooWide { .. })),
                "{wide}: {parsed:?}"
            );
        }
        // `::/80` is an ordinary IPv6 network, not written as mapped.
        assert!(ClientIp::new().trust_proxies(["::/80"]).validate().is_ok());
        // Text that is no network: the first error is kept, the rest trusted.
        let k = ClientIp::new().trust_proxies(["nonsense", "10.0.0.0/8", "::ffff:0:0/8"]);
        assert_eq!(
            k.validate(),
            Err(ConfigError::InvalidNetwork {
                network: "nonsense".to_owned()
            })
        );
        assert_eq!(k.trusted, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        // Wrapped extractors report it too.
        use crate::key::{Header, PerRoute};
        assert!(Header::new("x-k").or(k.clone()).validate().is_err());
        assert!(PerRoute::new(k).validate().is_err());
        assert!(Header::new("x-k").or(ClientIp::new()).validate().is_ok());
    }

    #[test]
    fn translated_addresses_are_not_the_trusted_proxy() {
        let k = ClientIp::new().trust_proxies(["10.0.0.0/8"]);
        for other in [
            "64:ff9b::10.0.0.1",
            "::10.0.0.1",
            "2002:a00:1::1",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        ] {
            assert!(!k.is_trusted(ip(other)), "{other}");
            // As the peer: not trusted, so the header is ignored, and the
            // key is the embedded IPv4 address.
            let r = req(
                &format!("[{other}]:1000"),
                &[("x-forwarded-for", "198.51.100.4")],
            );
            assert_eq!(k.client_addr(&r), Some(ip(other)));
            assert_eq!(k.extract(&r).unwrap().as_str(), "10.0.0.1", "{other}");
        }
    }

    #[test]
    fn bad_network_is_config_error() {
        assert!(matches!(
            ClientIp::new().trust_proxies(["10.0.0.0/33"]).validate(),
            Err(ConfigError::InvalidNetwork { .. })
        ));
    }
}
