//! The per-route policy table and the path normalisation behind it.
//!
//! Patterns use axum's syntax: literal segments, `{param}` for one segment and
//! `{*rest}` for the rest of the path. Rules are tried in the order they were
//! added; the first match wins. A rule with a method matches only that method
//! (`GET` also matches `HEAD`, as in axum).
//!
//! Request paths are normalised before matching so that variants of one path
//! cannot dodge its policy: empty segments (`//`), `.` and `..` segments,
//! trailing slashes and `;parameters` are removed, and percent-encoded
//! unreserved characters (`%6C` → `l`) are decoded (a `%` that starts no
//! escape is spelled `%25`). With
//! [`case_insensitive`](crate::RateLimitLayerBuilder::case_insensitive_paths)
//! paths are also compared in lower case.

use http::Method;

use crate::error::ConfigError;

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

    fn matches(&self, path: &[String]) -> bool {
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
                    if path.get(i) != Some(lit) {
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
}

impl RouteTable {
    /// The action for a request; `None` means "not limited" (no rule matched
    /// and there is no default policy).
    pub(crate) fn select(&self, method: &Method, path: &str) -> Option<Action> {
        if !self.rules.is_empty() {
            let segments = normalize_path(path, self.case_insensitive);
            for rule in &self.rules {
                let method_ok = match &rule.method {
                    None => true,
                    Some(m) => m == method || (m == Method::GET && method == Method::HEAD),
                };
                if method_ok && rule.pattern.matches(&segments) {
                    return Some(rule.action);
                }
            }
        }
        self.default.map(Action::Limit)
    }
}

/// Splits a request path into normalised segments (see the module docs).
pub fn normalize_path(path: &str, case_insensitive: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let raw = raw.split(';').next().unwrap_or("");
        let mut seg = decode_unreserved(raw);
        if case_insensitive {
            seg.make_ascii_lowercase();
        }
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    out
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
        };
        assert_eq!(table.select(&Method::HEAD, "/health"), Some(Action::Exempt));
        assert_eq!(
            table.select(&Method::POST, "/health"),
            Some(Action::Limit(1))
        );
    }
}
