//! Shared checks of the rate-limit response headers: every `RateLimit` and
//! `RateLimit-Policy` value must parse as an RFC 8941 structured-field list
//! (with `sfv`) of strings carrying exactly the expected integer parameters.
//!
//! Use as `support::headers` (declared in `support/mod.rs`).
#![allow(dead_code)]

use http::{HeaderMap, HeaderValue, header};
use sfv::{BareItem, ListEntry, Parser};

/// One structured-field list member: a string item with integer parameters.
#[derive(Debug)]
pub struct SfItem {
    pub name: String,
    pub params: Vec<(String, i64)>,
}

impl SfItem {
    pub fn param(&self, key: &str) -> i64 {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no parameter {key} in {self:?}"))
    }
}

/// Parses `value` as an sf-list whose members are strings carrying exactly the
/// non-negative integer parameters `keys`.
pub fn parse_sf(value: &HeaderValue, keys: [&str; 2]) -> Vec<SfItem> {
    let list = Parser::parse_list(value.as_bytes())
        .unwrap_or_else(|e| panic!("{value:?} is not an RFC 8941 list: {e}"));
    assert!(!list.is_empty(), "empty list in {value:?}");
    list.into_iter()
        .map(|entry| {
            let ListEntry::Item(item) = entry else {
                panic!("inner list in {value:?}");
            };
            let BareItem::String(name) = item.bare_item else {
                panic!("the item of {value:?} is not a string");
            };
            let params: Vec<(String, i64)> = item
                .params
                .into_iter()
                .map(|(k, v)| {
                    let n = v
                        .as_int()
                        .unwrap_or_else(|| panic!("parameter {k} of {value:?} is not an integer"));
                    assert!(n >= 0, "negative {k} in {value:?}");
                    (k, n)
                })
                .collect();
            let mut got: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
            got.sort_unstable();
            let mut want = keys.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "parameters of {value:?}");
            SfItem { name, params }
        })
        .collect()
}

/// The IETF headers of a single-quota response, if it has them, after checking
/// that every value parses, that both headers come together, name the same
/// policy, and that remaining <= limit.
pub fn ietf(headers: &HeaderMap) -> Option<(SfItem, SfItem)> {
    let mut policy: Vec<SfItem> = headers
        .get_all("ratelimit-policy")
        .iter()
        .flat_map(|v| parse_sf(v, ["q", "w"]))
        .collect();
    let mut state: Vec<SfItem> = headers
        .get_all("ratelimit")
        .iter()
        .flat_map(|v| parse_sf(v, ["r", "t"]))
        .collect();
    assert_eq!(
        policy.len(),
        state.len(),
        "RateLimit and RateLimit-Policy disagree: {headers:?}"
    );
    let (p, s) = (policy.pop()?, state.pop()?);
    assert!(policy.is_empty(), "single-quota policies send one item");
    assert_eq!(p.name, s.name, "{headers:?}");
    assert!(
        s.param("r") <= p.param("q"),
        "remaining above limit: {headers:?}"
    );
    Some((p, s))
}

/// `Retry-After` as delay-seconds.
pub fn retry_after(headers: &HeaderMap) -> u64 {
    headers
        .get(header::RETRY_AFTER)
        .unwrap_or_else(|| panic!("no Retry-After: {headers:?}"))
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is delay-seconds")
}

/// `r` of the `RateLimit` header, read without checking the header's syntax;
/// `None` if it is absent or has no integer `r`.
pub fn remaining(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get("ratelimit")?.to_str().ok()?;
    let rest = &value[value.find(";r=")? + 3..];
    rest.split(';').next()?.parse().ok()
}

/// Asserts that a response carries none of the rate-limit headers.
pub fn assert_no_rate_limit_headers(headers: &HeaderMap) {
    for name in [
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
    ] {
        assert!(
            !headers.contains_key(name),
            "unexpected {name}: {headers:?}"
        );
    }
}
