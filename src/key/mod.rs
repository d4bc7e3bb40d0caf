//! Who is the client? Key extractors and the sanitised [`Key`] they produce.
//!
//! A key extractor looks at the request head and returns the client's identity.
//! Built-ins: [`PeerIp`] (the connection's address), [`ClientIp`] (the client
//! behind trusted reverse proxies), [`Header`] (e.g. an API key), [`Global`]
//! (one bucket for everybody) and [`PerRoute`] (one bucket per client and
//! route). Any `Fn(&http::request::Parts) -> Option<Key>` closure is an
//! extractor too.
//!
//! Identities come from clients and are hostile until proven otherwise, so a
//! [`Key`] is sanitised when it is made: short identities made only of
//! `A-Z a-z 0-9 . _ : / @ -` stay readable (handy with `redis-cli --scan`);
//! anything else (braces, control bytes, non-UTF-8, more than 64 bytes) is
//! replaced by `#` and a SHA-256 digest. No key can break a Redis key, and two
//! different identities never share a bucket.

mod client_ip;
mod header;
mod peer;
mod per_route;

use std::fmt;
use std::fmt::Write as _;

use http::request::Parts;
use sha2::{Digest, Sha256};

pub use self::client_ip::{ClientIp, ForwardedHeader};
pub(crate) use self::client_ip::{canonical, normalize_network, parse_network};
pub use self::header::Header;
pub use self::peer::PeerIp;
pub use self::per_route::{PerRoute, UNMATCHED_ROUTE};

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
            && parts.iter().all(|part| is_plain(part, KEY_PUNCTUATION));
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

/// The punctuation a readable client key may hold besides letters and digits
/// (enough for IPv4/IPv6 addresses, prefixes and e-mail-like ids; never `{`,
/// `}`, `*` or whitespace, which mean something to Redis or `redis-cli`).
const KEY_PUNCTUATION: &[u8] = b"._:/@-";

/// Whether `text` is ASCII letters, digits and `punctuation` only: the one
/// check behind readable keys, policy names and the Redis key prefix.
pub(crate) fn is_plain(text: &[u8], punctuation: &[u8]) -> bool {
    text.iter()
        .all(|b| b.is_ascii_alphanumeric() || punctuation.contains(b))
}

/// `#` and the SHA-256 hex digest of the concatenation of `parts`.
fn hashed(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(1 + 2 * digest.len());
    out.push('#');
    for byte in digest {
        write!(out, "{byte:02x}").expect("writing to a String cannot fail");
    }
    out
}

/// Derives the client identity from a request head.
///
/// Returning `None` means "no identity": the policy's
/// [`MissingKey`](crate::MissingKey) rule decides what happens.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a key extractor",
    label = "expected a `KeyExtractor`",
    note = "use a built-in extractor (`key::PeerIp::new()`, `key::ClientIp::new()`, \
            `key::Header::new(\"x-api-key\")`, `key::Global`), or a closure returning \
            `Option<Key>` through `Policy::key_fn(|parts| ..)`"
)]
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of this request, if it has one.
    fn extract(&self, request: &Parts) -> Option<Key>;

    /// The client's IP address as this extractor establishes it, if it keys
    /// clients by address: what the IP networks of a policy's
    /// [access lists](crate::AccessList) are matched against.
    ///
    /// [`PeerIp`] returns the connection's address and [`ClientIp`] the
    /// client behind its trusted proxies (never an address a client could
    /// write in a header itself); [`PerRoute`] its inner extractor's; [`Or`]
    /// that of the first extractor of its chain that
    /// [keys by address](Self::keys_by_address), whichever made the key.
    /// The default is `None`: for an extractor that does not key by address
    /// (an API-key [`Header`], [`Global`], closures), access lists match
    /// networks against the connection's peer address instead.
    fn client_ip(&self, request: &Parts) -> Option<std::net::IpAddr> {
        let _ = request;
        None
    }

    /// Whether this extractor establishes the client IP itself
    /// ([`client_ip`](Self::client_ip)): `true` for [`PeerIp`] and
    /// [`ClientIp`], and for [`Or`] and [`PerRoute`] holding one. Then a
    /// request it finds no address for (a malformed forwarding header from a
    /// trusted proxy, say) matches no network of an access list; it is
    /// never matched by the address of the proxy it came through. When
    /// `false` (the default), networks match the connection's peer address
    /// ([`PeerIp::peer_addr`]) if `client_ip` gives none. A custom extractor
    /// that implements `client_ip` should return `true` here.
    fn keys_by_address(&self) -> bool {
        false
    }

    /// The key as a user writes it in an access list's
    /// [`keys`](crate::AccessList::keys): the key of the extractor that made
    /// it, without the tags [`Or`] adds to keep buckets apart nor the route
    /// [`PerRoute`] adds. The default is [`extract`](Self::extract).
    fn access_key(&self, request: &Parts) -> Option<Key> {
        self.extract(request)
    }

    /// Why `request` has no key and how to fix it, when the likely cause is
    /// the server's setup rather than the client: [`PeerIp`] and
    /// [`ClientIp`] without a peer address name the fix for axum, tonic or
    /// hyper. The layer logs it at `ERROR`, once per policy, the first time
    /// a request has no key. The default says nothing (`None`): a request
    /// without an `x-api-key` header, say, is the client's doing.
    fn missing_key_hint(&self, request: &Parts) -> Option<String> {
        let _ = request;
        None
    }

    /// A mistake in this extractor's own configuration, reported by the
    /// layer's [`build`](crate::RateLimitLayerBuilder::build) with every
    /// other configuration mistake (an extractor is made in a chain of
    /// builder calls, which reports nothing midway). [`ClientIp`] reports a
    /// trusted network that could not be used; [`Or`] and [`PerRoute`], their
    /// inner extractors' mistakes. The default: none.
    fn validate(&self) -> Result<(), crate::ConfigError> {
        Ok(())
    }

    /// Tries `self`, then `fallback` for requests `self` has no key for:
    /// `Header::new("x-api-key").or(PeerIp::new())` keys clients by their
    /// API key, and those without one by IP address (see [`Or`]).
    fn or<K: KeyExtractor>(self, fallback: K) -> Or<Self, K>
    where
        Self: Sized,
    {
        Or {
            first: self,
            fallback,
        }
    }
}

/// The key of the first extractor that has one: made by
/// [`KeyExtractor::or`].
///
/// The two extractors' keys never share a bucket: each is tagged with the
/// position of the extractor that made it (`1:` or `2:`, e.g. `1:k-42`,
/// `2:203.0.113.9`), so a client cannot send an API key spelled like another
/// client's IP address and spend that client's quota. Chains nest:
/// `a.or(b).or(c)`.
///
/// The tags are for buckets only: a policy's [access lists](crate::AccessList)
/// match keys as written (`"batch-job"`, not `"1:batch-job"`) whichever
/// extractor made the key, and networks match the client IP whatever made
/// the key (see [`AccessList`](crate::AccessList) for the exact rule).
///
/// ```
/// use tower_redis_ratelimit::key::{Header, KeyExtractor, PeerIp};
/// use tower_redis_ratelimit::{Policy, Quota};
///
/// let policy = Policy::new("api")
///     .quota(Quota::per_minute(100))
///     .key(Header::new("x-api-key").or(PeerIp::new()));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Or<A, B> {
    first: A,
    fallback: B,
}

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Or<A, B> {
    fn extract(&self, request: &Parts) -> Option<Key> {
        if let Some(key) = self.first.extract(request) {
            return Some(Key::concat(&[b"1:", key.as_str().as_bytes()]));
        }
        let key = self.fallback.extract(request)?;
        Some(Key::concat(&[b"2:", key.as_str().as_bytes()]))
    }

    fn missing_key_hint(&self, request: &Parts) -> Option<String> {
        self.fallback
            .missing_key_hint(request)
            .or_else(|| self.first.missing_key_hint(request))
    }

    fn validate(&self) -> Result<(), crate::ConfigError> {
        self.first.validate()?;
        self.fallback.validate()
    }

    /// The client IP of the first extractor of the chain that keys by
    /// address, whichever extractor made the key: a client keyed by its API
    /// key still has its address (behind the trusted proxies of a
    /// [`ClientIp`] in the chain), for an access list's networks.
    fn client_ip(&self, request: &Parts) -> Option<std::net::IpAddr> {
        if self.first.keys_by_address() {
            self.first.client_ip(request)
        } else if self.fallback.keys_by_address() {
            self.fallback.client_ip(request)
        } else {
            self.first
                .client_ip(request)
                .or_else(|| self.fallback.client_ip(request))
        }
    }

    fn keys_by_address(&self) -> bool {
        self.first.keys_by_address() || self.fallback.keys_by_address()
    }

    /// The key of the extractor that made it, untagged.
    fn access_key(&self, request: &Parts) -> Option<Key> {
        self.first
            .access_key(request)
            .or_else(|| self.fallback.access_key(request))
    }
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<Key> + Send + Sync + 'static,
{
    fn extract(&self, request: &Parts) -> Option<Key> {
        self(request)
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

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
    fn hashed_keys_are_lower_case_sha256_hex() {
        // SHA-256 of the empty string.
        assert_eq!(
            Key::new("").as_str(),
            "#e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Key::concat(&[b"", b""]), Key::new(""));
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
    fn fallback_chains() {
        let chain = Header::new("x-api-key").or(PeerIp::new());
        let mut p = parts();
        assert_eq!(chain.extract(&p), None);
        assert!(chain.missing_key_hint(&p).is_some(), "PeerIp explains");
        assert_eq!(Header::new("x-api-key").missing_key_hint(&p), None);
        p.extensions
            .insert("192.0.2.7:1234".parse::<SocketAddr>().unwrap());
        assert_eq!(chain.extract(&p), Some(Key::new("2:192.0.2.7")));
        // An API key spelled like that IP is another bucket.
        p.headers.insert("x-api-key", "192.0.2.7".parse().unwrap());
        assert_eq!(chain.extract(&p), Some(Key::new("1:192.0.2.7")));
        let hostile = Key::new("a{b}");
        p.headers.insert("x-api-key", "a{b}".parse().unwrap());
        let tagged = chain.extract(&p).unwrap();
        assert!(tagged.as_str().starts_with('#'));
        assert_ne!(tagged, hostile);
        let three = Header::new("x-a").or(Header::new("x-b")).or(Global);
        assert_eq!(three.extract(&parts()), Some(Key::new("2:global")));
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
}
