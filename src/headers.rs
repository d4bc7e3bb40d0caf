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

use std::fmt::Write as _;
use std::time::Duration;

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
            items,
            policy_value,
        }
    }

    /// Adds the rate-limit headers for `decision`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, style: HeaderStyle, decision: &Decision) {
        if style.ietf() {
            headers.insert(RATELIMIT_POLICY.clone(), self.policy_value.clone());
            let mut value = String::new();
            for (item, q) in self.items.iter().zip(decision.quotas()) {
                if !value.is_empty() {
                    value.push_str(", ");
                }
                let _ = write!(
                    value,
                    "\"{item}\";r={};t={}",
                    q.remaining,
                    ceil_secs(q.reset_after)
                );
            }
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(RATELIMIT.clone(), v);
            }
        }
        if style.legacy()
            && let Some(q) = decision.tightest()
        {
            headers.insert(X_RATELIMIT_LIMIT.clone(), q.limit.into());
            headers.insert(X_RATELIMIT_REMAINING.clone(), q.remaining.into());
            headers.insert(X_RATELIMIT_RESET.clone(), ceil_secs(q.reset_after).into());
        }
    }
}

/// Sets `Retry-After` (at least one second) unless already present.
pub(crate) fn set_retry_after(headers: &mut HeaderMap, after: Duration) {
    if !headers.contains_key(http::header::RETRY_AFTER) {
        headers.insert(http::header::RETRY_AFTER, ceil_secs(after).max(1).into());
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
}
