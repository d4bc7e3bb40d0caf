//! Rate-limit response headers.
//!
//! - IETF (`draft-ietf-httpapi-ratelimit-headers`), structured fields:
//!   `RateLimit-Policy: "api";q=100;w=60` and `RateLimit: "api";r=42;t=17`.
//!   A policy with several quotas lists one item per quota, named
//!   `<policy>-<window>` (e.g. `"api-1s"`, `"api-1h"`).
//! - Legacy: `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
//!   (seconds until reset), for the quota closest to exhaustion.
//! - `Retry-After` (delay-seconds, rounded up, at least 1) on every denial.
//!
//! All durations are rounded *up* to whole seconds: a client told
//! `Retry-After: 0` would retry at once.
//!
//! # Stacked layers
//!
//! When layers are nested (a `route_layer` group under a global `.layer()`,
//! or several layers on one service), every layer that limited the request
//! adds its headers to the one response, and none hides another's:
//!
//! - `RateLimit-Policy` and `RateLimit` are lists of named items, so the
//!   outer layer *appends* its items to the inner layer's. If both use a
//!   policy of the same name, the inner layer's item is kept (it decided
//!   last, so its remaining count is the lower one when they share counters).
//! - The legacy headers hold one quota, so the three of them are taken
//!   together from the layer whose quota has the **fewest units remaining**
//!   (the inner layer's on a tie): a denial (`0`) is never hidden by an
//!   admission.
//! - `Retry-After` keeps the **longest** wait of all the layers that denied
//!   (an HTTP-date value set by the application is left alone).

use std::fmt::Write as _;
use std::time::Duration;

use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::decision::Decision;
use crate::policy::{Policy, Quota};

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Which rate-limit headers responses carry. `Retry-After` is always sent on
/// denials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// IETF `RateLimit-Policy` and `RateLimit` (default).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// Both of the above.
    Both,
    /// No rate-limit headers.
    None,
}

impl HeaderStyle {
    fn ietf(self) -> bool {
        matches!(self, HeaderStyle::Ietf | HeaderStyle::Both)
    }

    fn legacy(self) -> bool {
        matches!(self, HeaderStyle::Legacy | HeaderStyle::Both)
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Header data that depends only on the policy, computed once at build time.
#[derive(Debug, Clone)]
pub(crate) struct PolicyHeaders {
    items: Vec<String>,
    /// The items' total length, to size the `RateLimit` value.
    items_len: usize,
    policy_value: HeaderValue,
}

impl PolicyHeaders {
    pub(crate) fn new(policy: &Policy) -> Self {
        let quotas = policy.quotas();
        let items: Vec<String> = if quotas.len() == 1 {
            vec![policy.name().to_owned()]
        } else {
            quotas
                .iter()
                .map(|q| format!("{}-{}", policy.name(), window_label(q)))
                .collect()
        };
        let mut value = String::new();
        for (item, q) in items.iter().zip(quotas) {
            if !value.is_empty() {
                value.push_str(", ");
            }
            let _ = write!(
                value,
                "\"{item}\";q={};w={}",
                q.limit(),
                ceil_secs(q.window()).max(1)
            );
        }
        // Names are validated to `[A-Za-z0-9._-]`, so the value is visible ASCII.
        let policy_value = HeaderValue::try_from(value).expect("policy header is ASCII");
        Self {
            items_len: items.iter().map(String::len).sum(),
            items,
            policy_value,
        }
    }

    /// Adds the rate-limit headers for `decision`, merging them with those
    /// already on the response (an inner layer's; see the module docs).
    pub(crate) fn apply(&self, headers: &mut HeaderMap, style: HeaderStyle, decision: &Decision) {
        if style.ietf() {
            // Written by hand, not with `write!`: this runs for every
            // limited response.
            let mut value = String::with_capacity(self.items_len + 32 * self.items.len());
            for (item, q) in self.items.iter().zip(decision.quotas()) {
                if !value.is_empty() {
                    value.push_str(", ");
                }
                value.push('"');
                value.push_str(item);
                value.push_str("\";r=");
                push_u64(&mut value, q.remaining);
                value.push_str(";t=");
                push_u64(&mut value, ceil_secs(q.reset_after));
            }
            merge_list(
                headers,
                &RATELIMIT_POLICY,
                self.policy_value.clone(),
                &self.items,
            );
            // Names are validated to `[A-Za-z0-9._-]`: the value is visible
            // ASCII, taken over without a copy.
            if let Ok(value) = HeaderValue::try_from(value) {
                merge_list(headers, &RATELIMIT, value, &self.items);
            }
        }
        if style.legacy()
            && let Some(q) = decision.tightest()
        {
            // The three legacy headers describe one quota: the one with the
            // fewest units left, whichever layer reported it.
            let theirs = headers
                .get(&X_RATELIMIT_REMAINING)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            if theirs.is_none_or(|remaining| q.remaining < remaining) {
                headers.insert(X_RATELIMIT_LIMIT.clone(), q.limit.into());
                headers.insert(X_RATELIMIT_REMAINING.clone(), q.remaining.into());
                headers.insert(X_RATELIMIT_RESET.clone(), ceil_secs(q.reset_after).into());
            }
        }
    }
}

/// Appends the decimal digits of `n` to `out`, as `write!(out, "{n}")`
/// would, without the formatting machinery.
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Adds the list members `ours` (named `names`) to the list header `name`,
/// after the members already there; a member whose name is already present
/// is left out (the response's own, i.e. the inner layer's, is kept).
fn merge_list(headers: &mut HeaderMap, name: &HeaderName, ours: HeaderValue, names: &[String]) {
    let existing = match headers.entry(name) {
        // The usual case: one layer, so nothing to merge with.
        Entry::Vacant(slot) => {
            slot.insert(ours);
            return;
        }
        Entry::Occupied(entry) => entry,
    };
    let Ok(texts) = existing
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<Vec<&str>, _>>()
    else {
        // Not visible ASCII, so not ours to parse: leave it alone and add
        // ours as another field line (recipients join lines with commas).
        headers.append(name.clone(), ours);
        return;
    };
    let Ok(ours) = ours.to_str() else {
        return;
    };
    let mut merged = String::new();
    for text in texts.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        if !merged.is_empty() {
            merged.push_str(", ");
        }
        merged.push_str(text);
    }
    let present = member_names(&merged);
    for (member, item) in split_members(ours).into_iter().zip(names) {
        if present.iter().any(|p| p == item) {
            continue;
        }
        if !merged.is_empty() {
            merged.push_str(", ");
        }
        merged.push_str(member);
    }
    if let Ok(v) = HeaderValue::try_from(merged) {
        headers.insert(name.clone(), v);
    }
}

/// The top-level members of a structured-field list: split at commas outside
/// quoted strings.
fn split_members(list: &str) -> Vec<&str> {
    let mut members = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in list.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                members.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    members.push(list[start..].trim());
    members.retain(|m| !m.is_empty());
    members
}

/// The names (string items, unquoted) of a list's members.
fn member_names(list: &str) -> Vec<String> {
    split_members(list)
        .into_iter()
        .filter_map(|m| {
            let rest = m.strip_prefix('"')?;
            let mut name = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => return Some(name),
                    '\\' => name.push(chars.next()?),
                    c => name.push(c),
                }
            }
            None
        })
        .collect()
}

/// Sets `Retry-After` (at least one second), keeping the longer wait when
/// the response already has one (an inner layer's, or the rejection's own):
/// a client must wait until every limit that refused it allows it again. A
/// `Retry-After` that is not delay-seconds (an HTTP date) is left as it is.
pub(crate) fn set_retry_after(headers: &mut HeaderMap, after: Duration) {
    let ours = ceil_secs(after).max(1);
    match headers.get(http::header::RETRY_AFTER) {
        None => {
            headers.insert(http::header::RETRY_AFTER, ours.into());
        }
        Some(v) => {
            let theirs = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
            if theirs.is_some_and(|theirs| theirs < ours) {
                headers.insert(http::header::RETRY_AFTER, ours.into());
            }
        }
    }
}

fn window_label(q: &Quota) -> String {
    let us = q.window_us();
    match us {
        _ if us.is_multiple_of(86_400_000_000) => format!("{}d", us / 86_400_000_000),
        _ if us.is_multiple_of(3_600_000_000) => format!("{}h", us / 3_600_000_000),
        _ if us.is_multiple_of(60_000_000) => format!("{}m", us / 60_000_000),
        _ if us.is_multiple_of(1_000_000) => format!("{}s", us / 1_000_000),
        _ if us.is_multiple_of(1_000) => format!("{}ms", us / 1_000),
        _ => format!("{us}us"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::QuotaStatus;

    #[test]
    fn digits_as_display_writes_them() {
        let samples = [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX];
        let more = (0..1_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 64));
        for n in samples.into_iter().chain(more) {
            let mut out = String::from("x");
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    #[test]
    fn rounding_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_micros(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn ietf_and_legacy_values() {
        let policy = Policy::new("api")
            .quota(Quota::per_second(10))
            .quota(Quota::per_hour(1000));
        let h = PolicyHeaders::new(&policy);
        let d = Decision::allowed(vec![
            QuotaStatus {
                limit: 10,
                window: Duration::from_secs(1),
                remaining: 9,
                reset_after: Duration::from_millis(1500),
            },
            QuotaStatus {
                limit: 1000,
                window: Duration::from_secs(3600),
                remaining: 999,
                reset_after: Duration::from_secs(3600),
            },
        ]);
        let mut map = HeaderMap::new();
        h.apply(&mut map, HeaderStyle::Both, &d);
        assert_eq!(
            map[&RATELIMIT_POLICY],
            "\"api-1s\";q=10;w=1, \"api-1h\";q=1000;w=3600"
        );
        assert_eq!(
            map[&RATELIMIT],
            "\"api-1s\";r=9;t=2, \"api-1h\";r=999;t=3600"
        );
        assert_eq!(map[&X_RATELIMIT_LIMIT], "10");
        assert_eq!(map[&X_RATELIMIT_REMAINING], "9");
        assert_eq!(map[&X_RATELIMIT_RESET], "2");
        let mut none = HeaderMap::new();
        h.apply(&mut none, HeaderStyle::None, &d);
        assert!(none.is_empty());
    }

    fn status(limit: u64, remaining: u64, reset_ms: u64) -> QuotaStatus {
        QuotaStatus {
            limit,
            window: Duration::from_secs(60),
            remaining,
            reset_after: Duration::from_millis(reset_ms),
        }
    }

    #[test]
    fn stacked_layers_merge_their_headers() {
        let inner = PolicyHeaders::new(&Policy::new("login").quota(Quota::per_minute(5)));
        let outer = PolicyHeaders::new(&Policy::new("api").quota(Quota::per_minute(100)));
        let mut map = HeaderMap::new();
        // The inner layer denied; then the outer layer, which admitted, adds its own.
        inner.apply(
            &mut map,
            HeaderStyle::Both,
            &Decision::denied(vec![status(5, 0, 2000)], 0, Duration::from_secs(2)),
        );
        set_retry_after(&mut map, Duration::from_secs(2));
        outer.apply(
            &mut map,
            HeaderStyle::Both,
            &Decision::allowed(vec![status(100, 96, 60_000)]),
        );
        assert_eq!(
            map[&RATELIMIT_POLICY],
            "\"login\";q=5;w=60, \"api\";q=100;w=60"
        );
        assert_eq!(map[&RATELIMIT], "\"login\";r=0;t=2, \"api\";r=96;t=60");
        assert_eq!(map[&X_RATELIMIT_LIMIT], "5");
        assert_eq!(map[&X_RATELIMIT_REMAINING], "0");
        assert_eq!(map[&X_RATELIMIT_RESET], "2");
        assert_eq!(map[http::header::RETRY_AFTER], "2");
        // The same name twice: the inner item stays, once.
        inner.apply(
            &mut map,
            HeaderStyle::Ietf,
            &Decision::allowed(vec![status(5, 4, 1000)]),
        );
        assert_eq!(map[&RATELIMIT], "\"login\";r=0;t=2, \"api\";r=96;t=60");
        // The legacy triple moves to a layer with fewer units left.
        let mut map = HeaderMap::new();
        outer.apply(
            &mut map,
            HeaderStyle::Legacy,
            &Decision::allowed(vec![status(100, 50, 9000)]),
        );
        inner.apply(
            &mut map,
            HeaderStyle::Legacy,
            &Decision::allowed(vec![status(5, 3, 1000)]),
        );
        assert_eq!(
            (
                &map[&X_RATELIMIT_LIMIT],
                &map[&X_RATELIMIT_REMAINING],
                &map[&X_RATELIMIT_RESET]
            ),
            (
                &HeaderValue::from(5),
                &HeaderValue::from(3),
                &HeaderValue::from(1)
            )
        );
    }

    #[test]
    fn retry_after_keeps_the_longest_wait() {
        let mut map = HeaderMap::new();
        set_retry_after(&mut map, Duration::from_millis(1));
        assert_eq!(map[http::header::RETRY_AFTER], "1");
        set_retry_after(&mut map, Duration::from_millis(7500));
        assert_eq!(map[http::header::RETRY_AFTER], "8");
        set_retry_after(&mut map, Duration::from_secs(3));
        assert_eq!(map[http::header::RETRY_AFTER], "8");
        let date = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        map.insert(http::header::RETRY_AFTER, date.clone());
        set_retry_after(&mut map, Duration::from_secs(3));
        assert_eq!(map[http::header::RETRY_AFTER], date);
    }

    #[test]
    fn list_members_respect_quotes() {
        assert_eq!(
            split_members("\"a,b\";r=1, \"c\\\"d\";r=2,,x"),
            vec!["\"a,b\";r=1", "\"c\\\"d\";r=2", "x"]
        );
        assert_eq!(
            member_names("\"a,b\";r=1, \"c\\\"d\";r=2, token"),
            vec!["a,b".to_owned(), "c\"d".to_owned()]
        );
        // A foreign value that is not visible ASCII is kept, ours appended.
        let mut map = HeaderMap::new();
        map.insert(
            RATELIMIT,
            HeaderValue::from_bytes(b"\"x\xff\";r=1").unwrap(),
        );
        merge_list(
            &mut map,
            &RATELIMIT,
            HeaderValue::from_static("\"api\";r=2;t=3"),
            &["api".to_owned()],
        );
        assert_eq!(map.get_all(&RATELIMIT).iter().count(), 2);
    }
}
