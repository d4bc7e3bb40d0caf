//! [`AccessList`]: clients a policy never limits (allow-list) or always
//! refuses (deny-list), by IP network or by key, decided without a backend
//! call.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use http::request::Parts;
use ipnet::IpNet;

use crate::error::ConfigError;
use crate::key::{Key, KeyExtractor, canonical, normalize_network, parse_network};

/// A set of clients, by IP network and by exact key: a policy's
/// [allow-list](crate::Policy::allow) or [deny-list](crate::Policy::deny).
///
/// - **Networks** are matched against the client IP as the policy's key
///   extractor establishes it ([`KeyExtractor::client_ip`]): the peer
///   address for [`PeerIp`](crate::key::PeerIp), the client behind the
///   trusted proxies for [`ClientIp`](crate::key::ClientIp). Never a raw
///   forwarding header, so a client cannot list itself by writing
///   `X-Forwarded-For: 10.0.0.1`. An IPv4-mapped address (`::ffff:10.0.0.1`)
///   is its IPv4 address. A policy keyed by something else (an API-key
///   header) has no client IP: its networks match nothing, only its keys.
/// - **Keys** are matched exactly against the client's [`Key`] (sanitised as
///   the key extractor makes it: an API key as sent, an IPv4 address as
///   written, an IPv6 client as its /64 such as `2001:db8:1:2::/64`).
///
/// A network that does not parse is reported by the layer's
/// [`build`](crate::RateLimitLayerBuilder::build), with every other
/// configuration mistake, not where it is added.
///
/// ```
/// use tower_redis_ratelimit::{AccessList, Policy};
///
/// let policy = Policy::default_api()
///     // Our monitoring and the batch job's key are never limited...
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
    /// key extractors sanitise them.
    #[must_use]
    pub fn keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        self.keys.extend(keys.into_iter().map(Key::new));
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
    pub fn contains(&self, key: &Key, ip: Option<IpAddr>) -> bool {
        if self.keys.contains(key) {
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

    /// Where `key` stands. The deny-list wins: a client on both is refused.
    /// The client IP is derived (once) only if some list has networks.
    pub(crate) fn classify(
        &self,
        extractor: &dyn KeyExtractor,
        parts: &Parts,
        key: &Key,
    ) -> Access {
        if self.is_empty() {
            return Access::Unlisted;
        }
        let ip = if self.allow.networks.is_empty() && self.deny.networks.is_empty() {
            None
        } else {
            extractor.client_ip(parts)
        };
        if self.deny.contains(key, ip) {
            Access::Denied
        } else if self.allow.contains(key, ip) {
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
        let check = |p: &str| {
            let parts = req(p, &[]);
            l.classify(&peer, &parts, &peer.extract(&parts).unwrap())
        };
        assert_eq!(check("10.1.2.3:1"), Access::Allowed);
        assert_eq!(check("[::ffff:10.1.2.3]:1"), Access::Allowed, "mapped");
        assert_eq!(check("[2001:db8::7]:1"), Access::Allowed);
        assert_eq!(check("10.6.6.6:1"), Access::Denied, "deny wins");
        assert_eq!(check("11.0.0.1:1"), Access::Unlisted);
        // By key, with a key extractor that knows no IP.
        let header = Header::new("x-api-key");
        let parts = req("10.1.2.3:1", &[("x-api-key", "batch")]);
        let key = header.extract(&parts).unwrap();
        assert_eq!(l.classify(&header, &parts, &key), Access::Allowed);
        let parts = req("10.1.2.3:1", &[("x-api-key", "other")]);
        let key = header.extract(&parts).unwrap();
        assert_eq!(
            l.classify(&header, &parts, &key),
            Access::Unlisted,
            "an API-key policy has no client IP: networks never match"
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
        let key = peer.extract(&parts).unwrap();
        assert_eq!(l.classify(&peer, &parts, &key), Access::Unlisted);
        let direct = ClientIp::new().trust_proxies(["127.0.0.1"]);
        let key = direct.extract(&parts).unwrap();
        assert_eq!(l.classify(&direct, &parts, &key), Access::Unlisted);
        // Behind the trusted proxy, the proxy's entry is the client.
        let proxied = req("127.0.0.1:1", &spoof);
        let key = direct.extract(&proxied).unwrap();
        assert_eq!(l.classify(&direct, &proxied, &key), Access::Allowed);
        // A client prepending a listed address through the proxy is not listed.
        let prepended = req(
            "127.0.0.1:1",
            &[("x-forwarded-for", "192.0.2.1, 198.51.100.7")],
        );
        let key = direct.extract(&prepended).unwrap();
        assert_eq!(l.classify(&direct, &prepended, &key), Access::Unlisted);
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
