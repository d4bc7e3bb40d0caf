//! [`AccessList`]: clients a policy never limits (allow-list) or always
//! refuses (deny-list), by IP network or by key, decided without a backend
//! call.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use http::request::Parts;
use ipnet::IpNet;

use crate::error::ConfigError;
use crate::key::{Key, KeyExtractor, PeerIp, canonical, normalize_network, parse_network};

/// A set of clients, by IP network and by exact key: a policy's
/// [allow-list](crate::Policy::allow) or [deny-list](crate::Policy::deny).
///
/// - **Networks** are matched against the client IP, whatever extractor
///   made the request's key: the client behind the trusted proxies when the
///   policy's key extractor has a [`ClientIp`](crate::key::ClientIp)
///   (anywhere in an [`.or()`](crate::key::Or) chain), else the
///   connection's peer address ([`KeyExtractor::client_ip`]). So under
///   `Header::new("x-api-key").or(PeerIp::new())` a request carrying an API
///   key from an allow-listed office network is allow-listed. Never a raw
///   forwarding header, so a client cannot list itself by writing
///   `X-Forwarded-For: 10.0.0.1`; and a request whose
///   [`ClientIp`](crate::key::ClientIp) finds no address matches no network
///   (it is not matched by its proxy's address). An IPv4-mapped address
///   (`::ffff:10.0.0.1`) is its IPv4 address.
/// - **Keys** are matched exactly against the key as the user writes it:
///   the key of whichever extractor of an `.or()` chain made it, without the
///   `1:`/`2:` tags that keep the chain's buckets apart (and without the
///   route of a [`PerRoute`](crate::key::PerRoute) key), sanitised as
///   [`Key::new`] sanitises it.
/// - **An entry of [`keys`](Self::keys) spelled as an IP address or network**
///   (`10.0.0.5`, `2001:db8:1:2::/64`, as [`networks`](Self::networks)
///   reads them) is an address: it is added to the networks and matches the
///   client IP only, never a key. An address with a port or in brackets
///   (`10.0.0.5:443`, `[2001:db8::1]`) is a build error
///   ([`ConfigError::InvalidNetwork`]). A client sending `x-api-key: 10.0.0.5`
///   is not allow-listed by an entry meant for the host `10.0.0.5` (an
///   API key spelled like an address cannot be listed by key).
/// - Any other key matches the same text from every extractor of the
///   chain (address extractors never make such a key): with
///   `Header::new("x-api-key").or(Header::new("x-client-id"))`, a listed
///   `batch-job` matches either header. List only keys that are secrets
///   for every such extractor, or give the policy a single key header.
///
/// A network that does not parse is reported by the layer's
/// [`build`](crate::RateLimitLayerBuilder::build), with every other
/// configuration mistake, not where it is added.
///
/// ```
/// use tower_redis_ratelimit::key::{Header, KeyExtractor, PeerIp};
/// use tower_redis_ratelimit::{AccessList, Policy, Quota};
///
/// let policy = Policy::new("api")
///     .quota(Quota::per_minute(100))
///     // Per API key, else per IP address...
///     .key(Header::new("x-api-key").or(PeerIp::new()))
///     // ...but the office (with or without an API key) and the batch
///     // job's key, as written, are never limited...
///     .allow(AccessList::new().networks(["10.20.0.0/16"]).keys(["batch-job"]))
///     // ...and this network is always refused (403), without asking Redis.
///     .deny(AccessList::new().networks(["203.0.113.0/24", "2001:db8:bad::/48"]));
/// # let _ = policy;
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    networks: Vec<IpNet>,
    keys: HashSet<Key>,
    /// The first network that could not be used, reported at build time.
    invalid: Option<ConfigError>,
}

/// Shows the networks and the number of keys (keys are API keys: secrets).
impl fmt::Debug for AccessList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessList")
            .field("networks", &self.networks)
            .field("keys", &self.keys.len())
            .field("invalid", &self.invalid)
            .finish()
    }
}

impl AccessList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds IP networks (CIDR such as `10.0.0.0/8`, or single addresses).
    ///
    /// Text that is neither a network nor an address
    /// ([`ConfigError::InvalidNetwork`]), or an IPv4-mapped network wider
    /// than /96 ([`ConfigError::MappedNetworkTooWide`], as for
    /// [`ClientIp::trust_proxies`](crate::key::ClientIp::trust_proxies)),
    /// makes the layer's [`build`](crate::RateLimitLayerBuilder::build) fail
    /// with that error; such an entry matches nothing.
    #[must_use]
    pub fn networks<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for net in networks {
            let parsed = parse_network(net.as_ref());
            self.add(parsed);
        }
        self
    }

    /// Adds already parsed IP networks. An IPv4-mapped network wider than
    /// /96 makes the layer's [`build`](crate::RateLimitLayerBuilder::build)
    /// fail with [`ConfigError::MappedNetworkTooWide`], as for
    /// [`networks`](Self::networks).
    #[must_use]
    pub fn ip_networks(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        for net in networks {
            let normalized = normalize_network(net, &net.to_string());
            self.add(normalized);
        }
        self
    }

    /// Keeps a network, or the first error for the build to report.
    fn add(&mut self, network: Result<IpNet, ConfigError>) {
        match network {
            Ok(network) => self.networks.push(network),
            Err(error) => {
                self.invalid.get_or_insert(error);
            }
        }
    }

    /// The first network that could not be used, if any: the error the
    /// layer's build reports.
    pub(crate) fn error(&self) -> Option<&ConfigError> {
        self.invalid.as_ref()
    }

    /// Adds client keys, each sanitised by [`Key::new`] as the built-in
    /// key extractors sanitise them. A key spelled as an IP address or
    /// network is added to the [`networks`](Self::networks) instead: it
    /// matches the client IP, never a key a client sends (see the type's
    /// docs); an address with a port or in brackets makes the layer's
    /// [`build`](crate::RateLimitLayerBuilder::build) fail with
    /// [`ConfigError::InvalidNetwork`].
    #[must_use]
    pub fn keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        for key in keys {
            let key = key.as_ref();
            match std::str::from_utf8(key).ok().and_then(as_network) {
                Some(network) => self.add(network),
                None => {
                    self.keys.insert(Key::new(key));
                }
            }
        }
        self
    }

    /// Adds every entry of `other`.
    pub(crate) fn extend(&mut self, other: AccessList) {
        self.networks.extend(other.networks);
        self.keys.extend(other.keys);
        if let Some(error) = other.invalid {
            self.invalid.get_or_insert(error);
        }
    }

    /// Whether the list is empty (an entry that could not be used does not
    /// count).
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.keys.is_empty()
    }

    /// Whether the list names this key, or a network holding this address.
    /// `key` is the key as written (see [`KeyExtractor::access_key`]), `ip`
    /// the client IP.
    pub fn contains(&self, key: &Key, ip: Option<IpAddr>) -> bool {
        self.matches(Some(key), ip)
    }

    /// [`contains`](Self::contains) for a request that may have no key.
    fn matches(&self, key: Option<&Key>, ip: Option<IpAddr>) -> bool {
        if key.is_some_and(|key| self.keys.contains(key)) {
            return true;
        }
        match ip {
            Some(ip) if !self.networks.is_empty() => {
                let ip = canonical(ip);
                self.networks.iter().any(|net| net.contains(&ip))
            }
            _ => false,
        }
    }
}

/// A key entry spelled as an IP address or network, as that network (or
/// the error the build reports for it); `None` for any other text. An
/// address with a port (`10.0.0.5:443`, `[2001:db8::1]:443`) or in brackets
/// (`[2001:db8::1]`) is an error: no extractor makes such a key, so as a key
/// it would match only a client sending that text.
fn as_network(text: &str) -> Option<Result<IpNet, ConfigError>> {
    let trimmed = text.trim();
    if trimmed.parse::<IpNet>().is_ok() || trimmed.parse::<IpAddr>().is_ok() {
        return Some(parse_network(trimmed));
    }
    let bracketed = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|inner| inner.parse::<IpAddr>().is_ok());
    (bracketed || trimmed.parse::<std::net::SocketAddr>().is_ok()).then(|| {
        Err(ConfigError::InvalidNetwork {
            network: trimmed.to_owned(),
        })
    })
}

/// Whether a key entry is spelled as an IP address or network (with or
/// without a port or brackets): such an entry names a network, never a key
/// a client may send.
pub(crate) fn address_shaped(text: &str) -> bool {
    as_network(text).is_some()
}

/// The client IP networks are matched against: the extractor's own when it
/// keys by address (none if it found none), else the connection's peer.
fn client_ip(extractor: &dyn KeyExtractor, parts: &Parts) -> Option<IpAddr> {
    let ip = extractor.client_ip(parts);
    if ip.is_some() || extractor.keys_by_address() {
        ip
    } else {
        PeerIp::peer_addr(parts).map(|addr| addr.ip())
    }
}

/// Where a client stands with a policy's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// On the allow-list (and not on the deny-list): not limited.
    Allowed,
    /// On the deny-list: refused, whatever the allow-list says.
    Denied,
    /// On neither: limited as usual.
    Unlisted,
}

/// A policy's two lists.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessLists {
    pub(crate) allow: AccessList,
    pub(crate) deny: AccessList,
}

impl AccessLists {
    /// Whether both lists are empty (then nothing is looked up).
    pub(crate) fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Where the client of `parts` stands. The deny-list wins: a client on
    /// both is refused. The key as written and the client IP are derived
    /// (once) only if some list has keys, networks.
    pub(crate) fn classify(&self, extractor: &dyn KeyExtractor, parts: &Parts) -> Access {
        if self.is_empty() {
            return Access::Unlisted;
        }
        let key = if self.allow.keys.is_empty() && self.deny.keys.is_empty() {
            None
        } else {
            extractor.access_key(parts)
        };
        let ip = if self.allow.networks.is_empty() && self.deny.networks.is_empty() {
            None
        } else {
            client_ip(extractor, parts)
        };
        let key = key.as_ref();
        if self.deny.matches(key, ip) {
            Access::Denied
        } else if self.allow.matches(key, ip) {
            Access::Allowed
        } else {
            Access::Unlisted
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::key::{ClientIp, Header, PeerIp};

    fn req(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        parts.extensions.insert(peer.parse::<SocketAddr>().unwrap());
        parts
    }

    fn lists(allow: AccessList, deny: AccessList) -> AccessLists {
        AccessLists { allow, deny }
    }

    #[test]
    fn networks_keys_and_deny_wins() {
        let l = lists(
            AccessList::new()
                .networks(["10.0.0.0/8", "2001:db8::/32"])
                .keys(["batch"]),
            AccessList::new().networks(["10.6.6.6"]),
        );
        let peer = PeerIp::new();
        let check = |p: &str| l.classify(&peer, &req(p, &[]));
        assert_eq!(check("10.1.2.3:1"), Access::Allowed);
        assert_eq!(check("[::ffff:10.1.2.3]:1"), Access::Allowed, "mapped");
        assert_eq!(check("[2001:db8::7]:1"), Access::Allowed);
        assert_eq!(check("10.6.6.6:1"), Access::Denied, "deny wins");
        assert_eq!(check("11.0.0.1:1"), Access::Unlisted);
        // By key, with a key extractor that knows no IP.
        let header = Header::new("x-api-key");
        let parts = req("11.1.2.3:1", &[("x-api-key", "batch")]);
        assert_eq!(l.classify(&header, &parts), Access::Allowed);
        let parts = req("11.1.2.3:1", &[("x-api-key", "other")]);
        assert_eq!(l.classify(&header, &parts), Access::Unlisted);
        // Its networks match the peer's address.
        let parts = req("10.1.2.3:1", &[("x-api-key", "other")]);
        assert_eq!(l.classify(&header, &parts), Access::Allowed);
        let parts = req("10.6.6.6:1", &[("x-api-key", "batch")]);
        assert_eq!(l.classify(&header, &parts), Access::Denied);
    }

    #[test]
    fn keys_as_written_under_or() {
        let l = lists(
            AccessList::new().keys(["batch-job", "u@example.com"]),
            AccessList::new().keys(["banned-key"]),
        );
        let chain = Header::new("x-api-key").or(PeerIp::new());
        let check = |headers: &[(&str, &str)]| l.classify(&chain, &req("11.0.0.1:1", headers));
        assert_eq!(check(&[("x-api-key", "batch-job")]), Access::Allowed);
        assert_eq!(check(&[("x-api-key", "u@example.com")]), Access::Allowed);
        assert_eq!(check(&[("x-api-key", "banned-key")]), Access::Denied);
        assert_eq!(
            check(&[("x-api-key", "1:batch-job")]),
            Access::Unlisted,
            "tags are not keys"
        );
        assert_eq!(check(&[]), Access::Unlisted);
        // The second extractor of a chain, and chains that nest.
        let nested = Header::new("x-a").or(Header::new("x-b")).or(PeerIp::new());
        let parts = req("11.0.0.1:1", &[("x-b", "batch-job")]);
        assert_eq!(l.classify(&nested, &parts), Access::Allowed);
        // A key long enough that its tagged form is hashed still matches.
        let long = "k".repeat(63);
        let l = lists(AccessList::new().keys([&long]), AccessList::new());
        let parts = req("11.0.0.1:1", &[("x-api-key", &long)]);
        assert!(chain.extract(&parts).unwrap().as_str().starts_with('#'));
        assert_eq!(l.classify(&chain, &parts), Access::Allowed);
        // PerRoute lists the inner key, not the route.
        let per_route = crate::key::PerRoute::new(Header::new("x-api-key"));
        assert_eq!(l.classify(&per_route, &parts), Access::Allowed);
    }

    #[test]
    fn address_shaped_keys_match_the_client_ip_never_a_header() {
        // The user lists the host 198.51.100.77 and the IPv6 client
        // 2001:db8:1:2::/64 as keys (as the PeerIp fallback writes them).
        let l = lists(
            AccessList::new().keys(["198.51.100.77", "2001:db8:1:2::/64"]),
            AccessList::new().keys(["203.0.113.9"]),
        );
        assert_eq!(l.allow.keys.len(), 0, "addresses are networks");
        let chain = Header::new("x-api-key").or(PeerIp::new());
        let check = |peer: &str, headers: &[(&str, &str)]| l.classify(&chain, &req(peer, headers));
        // Hostile: an API key spelled as the listed address.
        assert_eq!(
            check("11.0.0.1:1", &[("x-api-key", "198.51.100.77")]),
            Access::Unlisted
        );
        assert_eq!(
            check("11.0.0.1:1", &[("x-api-key", "2001:db8:1:2::/64")]),
            Access::Unlisted
        );
        // ...nor escape the deny-list by sending its own address as a key.
        assert_eq!(
            check("203.0.113.9:1", &[("x-api-key", "mine")]),
            Access::Denied
        );
        // The listed hosts themselves, with or without an API key.
        assert_eq!(check("198.51.100.77:1", &[]), Access::Allowed);
        assert_eq!(
            check("198.51.100.77:1", &[("x-api-key", "k")]),
            Access::Allowed
        );
        assert_eq!(check("[2001:db8:1:2::9]:1", &[]), Access::Allowed);
        assert_eq!(check("[2001:db8:1:3::9]:1", &[]), Access::Unlisted);
        // A forwarding header naming the address does not list a client.
        let spoof = [("x-forwarded-for", "198.51.100.77")];
        assert_eq!(check("11.0.0.1:1", &spoof), Access::Unlisted);
        // An address with a port, or bracketed, is no key: a build error.
        for entry in ["198.51.100.77:443", "[2001:db8::1]:443", "[2001:db8::1]"] {
            assert_eq!(
                AccessList::new().keys([entry]).error(),
                Some(&ConfigError::InvalidNetwork {
                    network: entry.to_owned()
                }),
                "{entry}"
            );
        }
        // Keys that merely contain colons or digits are keys.
        let list = AccessList::new().keys(["k:443", "1:batch-job", "v1.2.3"]);
        assert_eq!((list.error(), list.keys.len()), (None, 3));
        // An invalid address-shaped entry is a build error, as a network.
        assert!(matches!(
            AccessList::new().keys(["::ffff:0:0/95"]).error(),
            Some(ConfigError::MappedNetworkTooWide { .. })
        ));
    }

    #[test]
    fn networks_match_the_client_ip_whatever_made_the_key() {
        let l = lists(
            AccessList::new().networks(["192.0.2.0/24"]),
            AccessList::new().networks(["203.0.113.0/24"]),
        );
        let key = [("x-api-key", "k-1")];
        // Keyed by API key, falling back to the peer: the peer's address.
        let chain = Header::new("x-api-key").or(PeerIp::new());
        assert_eq!(
            l.classify(&chain, &req("192.0.2.5:1", &key)),
            Access::Allowed
        );
        assert_eq!(
            l.classify(&chain, &req("203.0.113.5:1", &key)),
            Access::Denied
        );
        assert_eq!(
            l.classify(&chain, &req("198.51.100.7:1", &key)),
            Access::Unlisted
        );
        // Spoofed X-Forwarded-For from an untrusted peer counts for nothing.
        let spoofed = [("x-api-key", "k-1"), ("x-forwarded-for", "192.0.2.5")];
        let peer = "198.51.100.7:1";
        assert_eq!(l.classify(&chain, &req(peer, &spoofed)), Access::Unlisted);
        let proxied = Header::new("x-api-key").or(ClientIp::new().trust_proxies(["127.0.0.1"]));
        assert_eq!(l.classify(&proxied, &req(peer, &spoofed)), Access::Unlisted);
        // Behind the trusted proxy, the client it names (the proxy is not).
        assert_eq!(
            l.classify(&proxied, &req("127.0.0.1:1", &spoofed)),
            Access::Allowed
        );
        let denied = [("x-api-key", "k-1"), ("x-forwarded-for", "203.0.113.5")];
        assert_eq!(
            l.classify(&proxied, &req("127.0.0.1:1", &denied)),
            Access::Denied
        );
        // The ClientIp may come first too.
        let first = ClientIp::new()
            .trust_proxies(["127.0.0.1"])
            .or(Header::new("x-api-key"));
        assert_eq!(
            l.classify(&first, &req("127.0.0.1:1", &spoofed)),
            Access::Allowed
        );
    }

    #[test]
    fn forwarding_headers_count_only_behind_trusted_proxies() {
        let l = lists(
            AccessList::new().networks(["192.0.2.0/24"]),
            AccessList::new(),
        );
        let spoof = [("x-forwarded-for", "192.0.2.1")];
        // No trusted proxy: the header is the client's own word.
        let peer = PeerIp::new();
        let parts = req("198.51.100.7:1", &spoof);
        assert_eq!(l.classify(&peer, &parts), Access::Unlisted);
        let direct = ClientIp::new().trust_proxies(["127.0.0.1"]);
        assert_eq!(l.classify(&direct, &parts), Access::Unlisted);
        // Behind the trusted proxy, the proxy's entry is the client.
        let proxied = req("127.0.0.1:1", &spoof);
        assert_eq!(l.classify(&direct, &proxied), Access::Allowed);
        // A client prepending a listed address through the proxy is not listed.
        let prepended = req(
            "127.0.0.1:1",
            &[("x-forwarded-for", "192.0.2.1, 198.51.100.7")],
        );
        assert_eq!(l.classify(&direct, &prepended), Access::Unlisted);
    }

    #[test]
    fn invalid_networks_are_kept_for_the_build() {
        let list = AccessList::new().networks(["10.0.0.0/8", "10.0.0.0/33", "nonsense"]);
        // The first error is the one reported; the valid network is kept.
        assert_eq!(
            list.error(),
            Some(&ConfigError::InvalidNetwork {
                network: "10.0.0.0/33".into()
            })
        );
        assert!(list.contains(&Key::new("x"), Some("10.1.2.3".parse().unwrap())));
        assert!(matches!(
            AccessList::new().networks(["::ffff:0:0/95"]).error(),
            Some(ConfigError::MappedNetworkTooWide { .. })
        ));
        let mapped = "::ffff:0:0/95".parse::<IpNet>().unwrap();
        assert!(matches!(
            AccessList::new().ip_networks([mapped]).error(),
            Some(ConfigError::MappedNetworkTooWide { .. })
        ));
        // Merged lists (`Policy::allow` twice) keep the error.
        let mut merged = AccessList::new().keys(["k"]);
        merged.extend(list);
        assert!(merged.error().is_some());
        assert_eq!(AccessList::new().networks(["10.0.0.0/8"]).error(), None);
        let debug = format!("{:?}", AccessList::new().keys(["secret-api-key"]));
        assert!(!debug.contains("secret"), "{debug}");
    }
}
