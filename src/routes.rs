//! The per-route policy table and the path normalisation behind it.
//!
//! Patterns use axum's syntax: literal segments, `{param}` for one segment and
//! `{*rest}` for the rest of the path. Rules are tried in the order they were
//! added; the first match wins. A rule with a method matches only that method
//! (`GET` also matches `HEAD`, as in axum).
//!
//! Request paths are normalised before matching so that variants of one path
//! cannot dodge its policy: empty segments (`//`), trailing slashes and
//! `;parameters` are removed, and percent-encoded unreserved characters
//! (`%6C` → `l`) are decoded (a `%` that starts no escape is spelled `%25`).
//! With [`case_insensitive`](crate::RateLimitLayerBuilder::case_insensitive_paths)
//! paths are also compared in lower case.
//!
//! # Dot segments
//!
//! Whether `.` and `..` segments (also spelled `%2e`, `%2E%2E`, `..;x`) are
//! resolved depends on the stack: a proxy or a lenient app may resolve them
//! (`/x/../auth/login` is `/auth/login`), while axum and hyper route by the
//! literal path (`/files/../health` reaches `/files/{*path}`, not `/health`).
//! A path with dot segments is therefore matched twice, once with them
//! resolved ([`normalize_path`]) and once with them kept as literal segments,
//! and the two answers are combined so that neither reading escapes:
//!
//! - the request is exempt (or not limited) only if **both** readings say so;
//! - if only one reading is limited, its policy applies;
//! - if both are limited by different policies, the **stricter** one applies:
//!   the policy whose tightest quota has the lowest rate (the minimum over its
//!   quotas of limit ÷ window in seconds); on a tie, the resolved reading's.
//!
//! A path without dot segments has a single reading and is matched once.

use std::borrow::Cow;

use http::Method;

use crate::error::ConfigError;
use crate::policy::Policy;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

/// A parsed route pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    segments: Vec<Segment>,
}

impl Pattern {
    pub(crate) fn parse(pattern: &str, case_insensitive: bool) -> Result<Self, ConfigError> {
        let err = |reason| ConfigError::InvalidRoute {
            pattern: pattern.to_owned(),
            reason,
        };
        if !pattern.starts_with('/') {
            return Err(err("must start with `/`"));
        }
        let mut segments = Vec::new();
        let raw: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        for (i, seg) in raw.iter().enumerate() {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if let Some(name) = inner.strip_prefix('*') {
                    if name.is_empty() {
                        return Err(err("`{*}` needs a name"));
                    }
                    if i + 1 != raw.len() {
                        return Err(err("`{*rest}` must be the last segment"));
                    }
                    segments.push(Segment::Rest);
                } else if inner.is_empty() || inner.contains(['{', '}']) {
                    return Err(err("bad `{param}`"));
                } else {
                    segments.push(Segment::Param);
                }
            } else if seg.contains(['{', '}']) {
                return Err(err("braces are only allowed around a whole segment"));
            } else {
                let mut norm = normalize_path(&format!("/{seg}"), case_insensitive);
                if norm.len() != 1 {
                    return Err(err("`.` and `..` segments are not allowed in patterns"));
                }
                segments.push(Segment::Literal(norm.remove(0)));
            }
        }
        Ok(Self { segments })
    }

    fn matches<S: AsRef<str>>(&self, path: &[S]) -> bool {
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::Param => {
                    if i >= path.len() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if path.get(i).map(AsRef::as_ref) != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == path.len()
    }
}

/// What a rule does with the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Limit with the policy at this index of the layer's policy list.
    Limit(usize),
    /// Do not limit.
    Exempt,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub method: Option<Method>,
    pub pattern: Pattern,
    pub action: Action,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    pub rules: Vec<Rule>,
    pub default: Option<usize>,
    pub case_insensitive: bool,
    /// The [`tightest_rate`] of each policy, by policy index: lower is
    /// stricter. Decides between two policies when the readings of a path
    /// with dot segments disagree (see the module docs).
    pub rates: Vec<f64>,
}

impl RouteTable {
    /// The action for a request; `None` means "not limited" (no rule matched
    /// and there is no default policy).
    pub(crate) fn select(&self, method: &Method, path: &str) -> Option<Action> {
        if self.rules.is_empty() {
            return self.default.map(Action::Limit);
        }
        let literal = literal_segments(path, self.case_insensitive);
        if !literal.iter().any(|s| is_dot(s)) {
            // One reading: resolving dot segments would change nothing.
            return self.lookup(method, &literal);
        }
        let resolved = resolve(&literal);
        self.combine(
            self.lookup(method, &resolved),
            self.lookup(method, &literal),
        )
    }

    /// The first matching rule's action for these segments, else the default.
    fn lookup<S: AsRef<str>>(&self, method: &Method, segments: &[S]) -> Option<Action> {
        for rule in &self.rules {
            let method_ok = match &rule.method {
                None => true,
                Some(m) => m == method || (m == Method::GET && method == Method::HEAD),
            };
            if method_ok && rule.pattern.matches(segments) {
                return Some(rule.action);
            }
        }
        self.default.map(Action::Limit)
    }

    /// Combines the actions of the resolved and the literal reading of one
    /// path: not limited only if both say so; otherwise the limited one, or
    /// the stricter of two policies (ties: the resolved reading's).
    fn combine(&self, resolved: Option<Action>, literal: Option<Action>) -> Option<Action> {
        match (resolved, literal) {
            (Some(Action::Limit(r)), Some(Action::Limit(l))) => {
                let rate = |ix: usize| self.rates.get(ix).copied().unwrap_or(f64::INFINITY);
                Some(Action::Limit(if rate(l) < rate(r) { l } else { r }))
            }
            (Some(Action::Limit(r)), _) => Some(Action::Limit(r)),
            (_, Some(Action::Limit(l))) => Some(Action::Limit(l)),
            (Some(Action::Exempt), _) | (_, Some(Action::Exempt)) => Some(Action::Exempt),
            (None, None) => None,
        }
    }
}

/// How strict a policy is, for choosing between two: the lowest rate of its
/// quotas, in units per second (lower is stricter).
pub(crate) fn tightest_rate(policy: &Policy) -> f64 {
    policy
        .quotas()
        .iter()
        .map(|q| q.limit() as f64 / q.window().as_secs_f64())
        .fold(f64::INFINITY, f64::min)
}

/// Splits a request path into normalised segments: empty segments, a
/// trailing slash and `;parameters` removed, percent-encoded unreserved
/// characters decoded, optionally lower-cased, and `.` and `..` resolved.
///
/// This is the *resolved* reading of a path. For a path with dot segments
/// the route table also matches the *literal* reading (dot segments kept, as
/// axum and hyper route) and applies the stricter answer of the two: exempt
/// only if both are, else the limited one, else the policy with the lowest
/// per-second rate in its tightest quota.
pub fn normalize_path(path: &str, case_insensitive: bool) -> Vec<String> {
    resolve(&literal_segments(path, case_insensitive))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn is_dot(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// The literal reading of a path: normalised segments, with `.` and `..`
/// kept as segments. Borrows from `path` where nothing needs rewriting.
fn literal_segments(path: &str, case_insensitive: bool) -> Vec<Cow<'_, str>> {
    path.split('/')
        .map(|raw| canonical_segment(raw.split(';').next().unwrap_or(""), case_insensitive))
        .filter(|seg| !seg.is_empty())
        .collect()
}

/// The resolved reading of a literal one: `.` dropped, `..` removes the
/// segment before it (if any).
fn resolve<'a>(literal: &'a [Cow<'_, str>]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::with_capacity(literal.len());
    for seg in literal {
        match seg.as_ref() {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

/// One segment (without `;parameters`), decoded and optionally lower-cased.
fn canonical_segment(raw: &str, case_insensitive: bool) -> Cow<'_, str> {
    let mut seg = if raw.contains('%') {
        Cow::Owned(decode_unreserved(raw))
    } else {
        Cow::Borrowed(raw)
    };
    if case_insensitive && seg.bytes().any(|b| b.is_ascii_uppercase()) {
        seg.to_mut().make_ascii_lowercase();
    }
    seg
}

/// Decodes `%XX` escapes of unreserved characters (ALPHA / DIGIT / `-._~`),
/// and upper-cases the hex digits of the escapes it keeps, so that equivalent
/// spellings of one segment compare equal.
fn decode_unreserved(seg: &str) -> String {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let c = (h << 4) | l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(bytes[i + 1].to_ascii_uppercase() as char);
                out.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        // A `%` that starts no escape is a literal `%`: spell it `%25`, so
        // that `%` and `%25` compare equal and decoding the result again
        // cannot form a new escape (`%%36%31` must not become `%61`, then `a`).
        if bytes[i] == b'%' {
            out.push_str("%25");
            i += 1;
            continue;
        }
        // Paths in `http::Uri` are ASCII; anything else is kept byte for byte.
        let ch_len = seg[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&seg[i..i + ch_len]);
        i += ch_len;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_normalise_to_one_path() {
        let want = vec!["auth".to_owned(), "login".to_owned()];
        for p in [
            "/auth/login",
            "//auth/login",
            "/auth/login/",
            "/auth/./login",
            "/auth/%6Cogin",
            "/auth/%6cogin",
            "/auth/login;x=1",
            "/x/../auth/login",
            "/auth//login//",
        ] {
            assert_eq!(normalize_path(p, false), want, "{p}");
        }
        assert_eq!(normalize_path("/AUTH/Login", true), want);
        assert_ne!(normalize_path("/AUTH/Login", false), want);
        assert_eq!(normalize_path("/a%2fb", false), vec!["a%2Fb".to_owned()]);
        assert_eq!(normalize_path("/%", false), vec!["%25".to_owned()]);
        assert_eq!(normalize_path("/%4", false), vec!["%254".to_owned()]);
        assert_eq!(normalize_path("/%%36%31", false), vec!["%2561".to_owned()]);
        assert_eq!(normalize_path("/../..", false), Vec::<String>::new());
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("/users/{id}", false).unwrap();
        assert!(p.matches(&normalize_path("/users/1", false)));
        assert!(!p.matches(&normalize_path("/users", false)));
        assert!(!p.matches(&normalize_path("/users/1/x", false)));
        let p = Pattern::parse("/static/{*rest}", false).unwrap();
        assert!(p.matches(&normalize_path("/static/a/b", false)));
        assert!(p.matches(&normalize_path("/static", false)));
        let root = Pattern::parse("/", false).unwrap();
        assert!(root.matches(&normalize_path("/", false)));
        for bad in ["x", "/{*}", "/{*a}/b", "/{}", "/a{b}", "/a/../b"] {
            assert!(Pattern::parse(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_match_wins_and_get_covers_head() {
        let table = RouteTable {
            rules: vec![
                Rule {
                    method: Some(Method::GET),
                    pattern: Pattern::parse("/health", false).unwrap(),
                    action: Action::Exempt,
                },
                Rule {
                    method: None,
                    pattern: Pattern::parse("/{*rest}", false).unwrap(),
                    action: Action::Limit(1),
                },
            ],
            default: Some(0),
            case_insensitive: false,
            rates: vec![1.0, 1.0],
        };
        assert_eq!(table.select(&Method::HEAD, "/health"), Some(Action::Exempt));
        assert_eq!(
            table.select(&Method::POST, "/health"),
            Some(Action::Limit(1))
        );
    }
    fn rule(method: Option<Method>, pattern: &str, action: Action) -> Rule {
        Rule {
            method,
            pattern: Pattern::parse(pattern, false).unwrap(),
            action,
        }
    }

    #[test]
    fn literal_and_resolved_readings() {
        let literal = |p| literal_segments(p, false);
        assert_eq!(literal("/files/../health"), ["files", "..", "health"]);
        assert_eq!(literal("/reports/%2e"), ["reports", "."]);
        assert_eq!(literal("/reports/%2E%2E"), ["reports", ".."]);
        assert_eq!(literal("/reports/..;x/"), ["reports", ".."]);
        assert_eq!(literal("//a//%62/"), ["a", "b"]);
        assert_eq!(literal_segments("/A/%2E/B", true), ["a", ".", "b"]);
        assert_eq!(resolve(&literal("/files/../health")), ["health"]);
        assert_eq!(resolve(&literal("/reports/%2E%2E")), Vec::<&str>::new());
        // Nothing to rewrite: the segments borrow from the path.
        assert!(
            literal("/auth/login")
                .iter()
                .all(|s| matches!(s, Cow::Borrowed(_)))
        );
    }

    #[test]
    fn tightest_rate_is_the_lowest_quota_rate() {
        use crate::Quota;
        use std::time::Duration;
        let p = Policy::new("p")
            .quota(Quota::per_second(10))
            .quota(Quota::per_minute(30));
        assert_eq!(tightest_rate(&p), 0.5);
        let p = Policy::new("q").quota(Quota::new(3, Duration::from_millis(1500)));
        assert_eq!(tightest_rate(&p), 2.0);
        assert!(tightest_rate(&Policy::auth()) < tightest_rate(&Policy::default_api()));
    }

    /// Policies: 0 = lenient default, 1 = strict, 2 = as strict as 1.
    fn table(rules: Vec<Rule>, default: Option<usize>) -> RouteTable {
        RouteTable {
            rules,
            default,
            case_insensitive: false,
            rates: vec![100.0, 0.1, 0.1],
        }
    }

    #[test]
    fn exempt_only_if_both_readings_are_exempt() {
        let t = table(vec![rule(None, "/health", Action::Exempt)], Some(0));
        let get = |p| t.select(&Method::GET, p);
        assert_eq!(get("/health"), Some(Action::Exempt));
        // Only the resolved reading is `/health`: axum serves `/files/{*path}`
        // for the first two, and a 404 for the others.
        assert_eq!(get("/files/../health"), Some(Action::Limit(0)));
        assert_eq!(get("/files/%2e%2E/health"), Some(Action::Limit(0)));
        assert_eq!(get("/health/."), Some(Action::Limit(0)));
        assert_eq!(get("/health/x/.."), Some(Action::Limit(0)));
        let t = table(
            vec![
                rule(None, "/health", Action::Exempt),
                rule(None, "/static/{*rest}", Action::Exempt),
            ],
            Some(0),
        );
        assert_eq!(
            t.select(&Method::GET, "/static/../health"),
            Some(Action::Exempt)
        );
        assert_eq!(
            t.select(&Method::GET, "/static/../api"),
            Some(Action::Limit(0))
        );
        // No default: not limited only if neither reading is.
        let t = table(vec![rule(None, "/admin", Action::Limit(1))], None);
        assert_eq!(t.select(&Method::GET, "/x/../y"), None);
        assert_eq!(
            t.select(&Method::GET, "/x/../admin"),
            Some(Action::Limit(1))
        );
        assert_eq!(t.select(&Method::GET, "/admin/."), Some(Action::Limit(1)));
        let t = table(
            vec![
                rule(None, "/health", Action::Exempt),
                rule(None, "/admin/{*rest}", Action::Limit(1)),
            ],
            None,
        );
        assert_eq!(
            t.select(&Method::GET, "/admin/../health"),
            Some(Action::Limit(1))
        );
        assert_eq!(t.select(&Method::GET, "/x/../health"), Some(Action::Exempt));
    }

    #[test]
    fn disagreeing_policies_resolve_to_the_stricter() {
        let t = table(vec![rule(None, "/reports/{id}", Action::Limit(1))], Some(0));
        for p in [
            "/reports/.",
            "/reports/%2e",
            "/reports/%2E%2E",
            "/reports/..;x",
            "/reports/7",
        ] {
            assert_eq!(t.select(&Method::GET, p), Some(Action::Limit(1)), "{p}");
        }
        // The resolved reading is the strict one.
        assert_eq!(
            t.select(&Method::GET, "/reports/7/x/.."),
            Some(Action::Limit(1))
        );
        assert_eq!(t.select(&Method::GET, "/reports"), Some(Action::Limit(0)));
        // A lenient rule on the literal reading does not win over a strict
        // resolved one, nor the other way round.
        let t = table(
            vec![
                rule(None, "/auth/login", Action::Limit(1)),
                rule(None, "/auth/{*rest}", Action::Limit(0)),
            ],
            None,
        );
        assert_eq!(
            t.select(&Method::POST, "/auth/./login"),
            Some(Action::Limit(1))
        );
        assert_eq!(
            t.select(&Method::POST, "/auth/x/../login"),
            Some(Action::Limit(1))
        );
        // Ties go to the resolved reading.
        let t = table(
            vec![
                rule(None, "/a", Action::Limit(2)),
                rule(None, "/b/{*rest}", Action::Limit(1)),
            ],
            None,
        );
        assert_eq!(t.select(&Method::GET, "/b/../a"), Some(Action::Limit(2)));
        assert_eq!(
            t.combine(Some(Action::Limit(1)), Some(Action::Limit(2))),
            Some(Action::Limit(1))
        );
        assert_eq!(
            t.combine(Some(Action::Limit(0)), Some(Action::Limit(1))),
            Some(Action::Limit(1))
        );
        assert_eq!(
            t.combine(Some(Action::Limit(1)), Some(Action::Limit(0))),
            Some(Action::Limit(1))
        );
        assert_eq!(t.combine(Some(Action::Exempt), None), Some(Action::Exempt));
        assert_eq!(t.combine(None, None), None);
    }

    #[test]
    fn methods_apply_to_both_readings() {
        let t = table(
            vec![rule(Some(Method::POST), "/auth/login", Action::Limit(1))],
            Some(0),
        );
        assert_eq!(
            t.select(&Method::POST, "/auth/login/."),
            Some(Action::Limit(1))
        );
        assert_eq!(
            t.select(&Method::GET, "/auth/login/."),
            Some(Action::Limit(0))
        );
    }
}
