//! The values of a configuration that may be secrets — API keys (of access
//! lists and `tier_keys`) and Redis URLs (which may hold a password) — and
//! the scrubbing of every configuration error message.
//!
//! Two layers keep secrets out of errors and `Debug`:
//!
//! - The fields that hold secrets are read by visitors that never quote
//!   what they refuse: `keys = "k-123"` is "invalid type: string, expected
//!   a list of API keys", where serde's own visitors would quote the string.
//!   A `tier_keys` entry whose tier is not a string is refused at the table,
//!   so the error's path does not name the key either. This holds whatever
//!   reads the configuration, [`Config`](super::Config) as a section of an
//!   application's own included. `Debug` shows how many keys there are, not
//!   the keys.
//! - [`scrub`] cleans every message [`Config`](super::Config) builds: source
//!   lines a format quotes (toml's `3 | keys = "k-123"` excerpt, which would
//!   show any value on the line at fault) are dropped, and the password of
//!   anything that looks like a URL with user information is masked as
//!   [`redact_url`] masks it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Unexpected};

use crate::backend::redact_url;

/// What a value that may be secret accepts. Every visit method it does not
/// accept is refused by [`Blind`] naming only the kind of value found.
trait Accept<'de>: Sized {
    /// What was expected, for "invalid type: <kind>, expected <this>".
    const EXPECTING: &'static str;

    /// A value of the kind named (`"string"`, `"integer"`...) that the type
    /// does not take: refused, without the value.
    fn other<E: de::Error>(kind: &'static str) -> Result<Self, E> {
        Err(E::invalid_type(Unexpected::Other(kind), &Self::EXPECTING))
    }

    fn from_str<E: de::Error>(_text: &str) -> Result<Self, E> {
        Self::other("string")
    }

    fn from_seq<A: SeqAccess<'de>>(_seq: A) -> Result<Self, A::Error> {
        Self::other("sequence")
    }

    fn from_map<A: MapAccess<'de>>(_map: A) -> Result<Self, A::Error> {
        Self::other("map")
    }
}

/// The visitor of an [`Accept`] type: a refusal names the kind of value,
/// never the value (serde's default visit methods quote it).
struct Blind<T>(PhantomData<T>);

impl<T> Blind<T> {
    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error>
    where
        T: Accept<'de>,
    {
        deserializer.deserialize_any(Blind(PhantomData))
    }
}

impl<'de, T: Accept<'de>> de::Visitor<'de> for Blind<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
        T::other("boolean")
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<T, E> {
        T::other("integer")
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<T, E> {
        T::other("integer")
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<T, E> {
        T::other("integer")
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<T, E> {
        T::other("integer")
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        T::other("floating point number")
    }

    fn visit_char<E: de::Error>(self, _: char) -> Result<T, E> {
        T::other("character")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        T::from_str(text)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<T, E> {
        T::other("byte array")
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        T::other("none")
    }

    fn visit_some<D: Deserializer<'de>>(self, _: D) -> Result<T, D::Error> {
        T::other("option")
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        T::other("unit value")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, _: D) -> Result<T, D::Error> {
        T::other("newtype struct")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::from_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_map(map)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        T::other("enum")
    }
}

/// `Deserialize` through [`Blind`].
macro_rules! blind {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Blind::deserialize(deserializer)
            }
        }
    )*};
}

blind!(ApiKey, ApiKeys, RedisUrl, RedisUrls, TierKeys, TierName);

/// One API key.
struct ApiKey(String);

impl Accept<'_> for ApiKey {
    const EXPECTING: &'static str = "an API key (a string)";

    fn from_str<E: de::Error>(text: &str) -> Result<Self, E> {
        Ok(Self(text.to_owned()))
    }
}

/// The `keys` of an access list. `Debug` shows how many, as
/// [`AccessList`](crate::AccessList)'s does.
#[derive(Clone, Default)]
pub(super) struct ApiKeys(pub Vec<String>);

impl<'de> Accept<'de> for ApiKeys {
    const EXPECTING: &'static str = "a list of API keys";

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut keys = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(ApiKey(key)) = seq.next_element()? {
            keys.push(key);
        }
        Ok(Self(keys))
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.len())
    }
}

/// A Redis URL, which may hold a password.
pub(super) struct RedisUrl(pub String);

impl Accept<'_> for RedisUrl {
    const EXPECTING: &'static str = "a Redis URL (a string)";

    fn from_str<E: de::Error>(text: &str) -> Result<Self, E> {
        Ok(Self(text.to_owned()))
    }
}

/// The URLs of a cluster's nodes or of the sentinels.
pub(super) struct RedisUrls(pub Vec<String>);

impl<'de> Accept<'de> for RedisUrls {
    const EXPECTING: &'static str = "a list of Redis URLs";

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut urls = Vec::new();
        while let Some(RedisUrl(url)) = seq.next_element()? {
            urls.push(url);
        }
        Ok(Self(urls))
    }
}

/// A `tier_keys` table: API key to tier name. `Debug` shows how many keys
/// and the tiers they name, not the keys.
#[derive(Clone)]
pub(super) struct TierKeys(pub BTreeMap<String, String>);

impl<'de> Accept<'de> for TierKeys {
    const EXPECTING: &'static str = "a table of API keys to tier names";

    /// A tier that is not a string is refused here, at the table, rather
    /// than by the value's visitor: an error path through the entry would
    /// end with the key (`tier_keys.<key>`).
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut table = BTreeMap::new();
        while let Some(ApiKey(key)) = map.next_key()? {
            match map.next_value()? {
                TierName(Ok(tier)) => {
                    table.insert(key, tier);
                }
                TierName(Err(kind)) => {
                    return Err(de::Error::custom(format!(
                        "invalid type: {kind}, expected a tier name (a string) for each key \
                         (the key is not shown)"
                    )));
                }
            }
        }
        Ok(Self(table))
    }
}

impl fmt::Debug for TierKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tiers: Vec<&str> = self.0.values().map(String::as_str).collect();
        tiers.sort_unstable();
        tiers.dedup();
        f.debug_struct("TierKeys")
            .field("keys", &self.0.len())
            .field("tiers", &tiers)
            .finish()
    }
}

/// The value of a `tier_keys` entry: a tier name, or the kind of value
/// found instead (never an error: see [`TierKeys`]).
struct TierName(Result<String, &'static str>);

impl<'de> Accept<'de> for TierName {
    const EXPECTING: &'static str = "a tier name";

    fn other<E: de::Error>(kind: &'static str) -> Result<Self, E> {
        Ok(Self(Err(kind)))
    }

    fn from_str<E: de::Error>(text: &str) -> Result<Self, E> {
        Ok(Self(Ok(text.to_owned())))
    }

    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Self::other("sequence")
    }

    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Self::other("map")
    }
}

/// A table (`allow`, `deny`, `[redis]`) read by `T`'s own `Deserialize`;
/// anything else is refused without being quoted (`redis = "redis://..."`
/// may be a URL with its password). `Debug` is `T`'s.
#[derive(Clone)]
pub(super) struct Table<T>(pub T);

impl<T: fmt::Debug> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Blind::deserialize(deserializer)
    }
}

impl<'de, T: Deserialize<'de>> Accept<'de> for Table<T> {
    const EXPECTING: &'static str = "a table";

    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Table)
    }
}

/// A configuration error message that is safe to show: without the lines
/// that quote the source text (toml's `  |` excerpt; the lines left are
/// joined with `: `), and with the password of anything that looks like a
/// URL with user information masked ([`redact_url`]).
pub(super) fn scrub(message: &str) -> Cow<'_, str> {
    let quotes_source = |line: &str| {
        line.trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start()
            .starts_with('|')
    };
    let message: Cow<'_, str> = if message.lines().count() > 1 {
        let kept: Vec<&str> = message
            .lines()
            .filter(|line| !quotes_source(line) && !line.trim().is_empty())
            .map(str::trim_end)
            .collect();
        Cow::Owned(kept.join(": "))
    } else {
        Cow::Borrowed(message)
    };
    match redact_urls(&message) {
        Cow::Borrowed(_) => message,
        Cow::Owned(redacted) => Cow::Owned(redacted),
    }
}

/// `text` with the password of every word that could be a URL with user
/// information (`redis://user:pass@host`, `user:pass@host`) or a password
/// parameter (`?pass=...`) masked.
fn redact_urls(text: &str) -> Cow<'_, str> {
    let suspect = |word: &str| word.contains('@') || word.to_ascii_lowercase().contains("pass");
    if !text.split_whitespace().any(suspect) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let space = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..space]);
        rest = &rest[space..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        // Quotes and brackets before the URL are not part of it.
        let lead = word.len()
            - word
                .trim_start_matches(['"', '\'', '`', '(', '[', '<'])
                .len();
        out.push_str(&word[..lead]);
        out.push_str(&redact_url(&word[lead..]));
        rest = &rest[end..];
    }
    if out == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_source_lines_and_url_passwords() {
        let toml = "TOML parse error at line 3, column 18\n  |\n3 | allow = { keys = \"k-1\" }\n  \
                    |                  ^^^^^\ninvalid type: string, expected a list of API keys\n";
        assert_eq!(
            scrub(toml),
            "TOML parse error at line 3, column 18: invalid type: string, expected a list of API keys"
        );
        assert_eq!(
            scrub("invalid type: string \"redis://u:hunter2@h:1\", expected a sequence"),
            "invalid type: string \"redis://u:***@h:1\", expected a sequence"
        );
        assert_eq!(
            scrub("unknown policy \"a:hunter2@b\" (defined: api)"),
            "unknown policy \"a:***@b\" (defined: api)"
        );
        assert_eq!(
            scrub("(redis+unix:///s?db=1&pass=hunter2)  x"),
            "(redis+unix:///s?db=1&pass=***  x"
        );
        for clean in [
            "routes[0].path: invalid route pattern \"auth\": must start with `/`",
            "unknown field `password`, expected one of `url`, `cluster`",
        ] {
            assert!(matches!(scrub(clean), Cow::Borrowed(s) if s == clean));
        }
    }
}
