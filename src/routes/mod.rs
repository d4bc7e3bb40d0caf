//! The per-route policy table, and the readings of a request path it matches.
//!
//! Patterns use axum 0.8's syntax: literal segments, `{param}` for one
//! segment and `{*rest}` for the rest of the path (at least one character, as
//! in axum: `/files/{*rest}` does not match `/files`). Matching is done by
//! [matchit], the router inside axum, so the most specific pattern wins
//! whatever the order the rules were added in: a literal segment beats a
//! `{param}`, which beats a `{*rest}`. A rule with a method applies to that
//! method only (`GET` also to `HEAD`, as in axum) and, on the same pattern,
//! wins over a rule for any method.
//!
//! # Never more lenient than the router
//!
//! The handler that runs is chosen by the application's router from the raw,
//! still percent-encoded path; a proxy in front of it, or a lenient app, may
//! read the same path differently (`//auth/login`, `/auth/login/`,
//! `/auth/./login`, `/auth/%6Cogin`, `/auth/login;x` all mean `/auth/login`
//! to someone). So every request path is read several ways:
//!
//! 1. **raw**: exactly as the router reads it (lower-cased too when
//!    [`case_insensitive_paths`](crate::RateLimitLayerBuilder::case_insensitive_paths)
//!    is on, for apps that lower-case paths before routing);
//! 2. **normalised**: empty segments, a trailing slash and `;parameters`
//!    removed, percent-encoded unreserved characters decoded (`%6C` → `l`;
//!    a `%` that starts no escape is spelled `%25`), dot segments (also
//!    spelled `%2e`, `%2E%2E`, `..;x`) kept as literal segments;
//! 3. **resolved**: the normalised reading with `.` and `..` resolved, as a
//!    proxy or a file server would (only when the path has dot segments).
//!
//! Each reading is matched against the rules (a reading no rule matches gets
//! the default policy), and the answers are combined so that no reading
//! escapes:
//!
//! - the request is exempt (or unlimited) only if **every** reading is;
//! - otherwise the **strictest** limited policy of any reading applies: the
//!   one whose tightest quota has the lowest rate (the minimum over its quotas
//!   of limit ÷ window in seconds); on a tie, the earliest reading's in the
//!   order above, so the router's own reading wins ties.
//!
//! A path that is already in normal form (no `//`, trailing `/`, `;`, `%`,
//! dot segment, or upper case under case-insensitive matching) has one
//! reading and is matched once, without allocating.
//!
//! [matchit]: https://docs.rs/matchit

mod path;

use std::borrow::Cow;

use http::Method;

use crate::error::{ConfigError, RouteError};
use crate::policy::Policy;

use self::path::{is_dot, is_normal, join, literal_segments, resolve};

/// What a rule does with the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Limit with the policy at this index of the layer's policy list.
    Limit(usize),
    /// Do not limit.
    Exempt,
}

/// A rule as configured: an optional method, a pattern, an action.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub method: Option<Method>,
    pub pattern: String,
    pub action: Action,
}

/// A pattern in the two spellings the table matches: as written (for the raw
/// reading) and with its literal segments normalised (for the others).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    raw: String,
    normalized: String,
    /// Written in normal form: the two spellings match the same paths.
    canonical: bool,
}

impl Pattern {
    fn parse(pattern: &str, case_insensitive: bool) -> Result<Self, ConfigError> {
        let err = |reason| {
            ConfigError::from(RouteError::Invalid {
                pattern: pattern.to_owned(),
                reason,
            })
        };
        if !pattern.starts_with('/') {
            return Err(err("must start with `/`"));
        }
        if let Some(suggestion) = old_syntax_fix(pattern) {
            return Err(RouteError::OldSyntax {
                pattern: pattern.to_owned(),
                suggestion,
            }
            .into());
        }
        let raw = if case_insensitive {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_owned()
        };
        let raw_segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
        // In normal form: no empty segment, no trailing slash, and literal
        // segments that normalisation leaves as they are.
        let mut canonical = join(&raw_segments) == raw;
        let mut normalized = String::with_capacity(pattern.len());
        let mut params = 0;
        for (i, seg) in raw_segments.iter().enumerate() {
            normalized.push('/');
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params += 1;
                if let Some(name) = inner.strip_prefix('*') {
                    if name.is_empty() {
                        return Err(err("`{*}` needs a name"));
                    }
                    if i + 1 != raw_segments.len() {
                        return Err(err("`{*rest}` must be the last segment"));
                    }
                    normalized.push_str(&format!("{{*p{params}}}"));
                } else if inner.is_empty() || inner.contains(['{', '}', '*']) {
                    return Err(err("bad `{param}`"));
                } else {
                    normalized.push_str(&format!("{{p{params}}}"));
                }
            } else if seg.contains(['{', '}']) {
                return Err(err("braces are only allowed around a whole segment"));
            } else {
                let literal = literal_segments(seg, case_insensitive);
                match literal.as_slice() {
                    [one] if !is_dot(one) => {
                        canonical &= one.as_ref() == *seg;
                        normalized.push_str(one);
                    }
                    _ => return Err(err("`.` and `..` segments are not allowed in patterns")),
                }
            }
        }
        if normalized.is_empty() {
            normalized.push('/');
        }
        Ok(Self {
            raw,
            normalized,
            canonical,
        })
    }
}

/// The pattern in axum 0.8 syntax if `pattern` uses axum 0.7's `:param` or
/// `*rest` segments (which axum 0.8 refuses, and which would otherwise be
/// literal text here that no request path ever matches).
fn old_syntax_fix(pattern: &str) -> Option<String> {
    let mut found = false;
    let fixed: Vec<String> = pattern
        .split('/')
        .map(|seg| {
            if let Some(name) = seg.strip_prefix(':') {
                found = true;
                let name = if name.is_empty() { "param" } else { name };
                format!("{{{name}}}")
            } else if let Some(name) = seg.strip_prefix('*') {
                found = true;
                let name = if name.is_empty() { "rest" } else { name };
                format!("{{*{name}}}")
            } else {
                seg.to_owned()
            }
        })
        .collect();
    found.then(|| fixed.join("/"))
}

/// Checks route rules one at a time, as a configuration file adds them:
/// each rule with the rules added before it, as the layer builder checks
/// them all (its pattern, then a repeated pattern and method, then a pattern
/// the router cannot tell from another).
#[cfg(feature = "serde")]
#[derive(Debug, Default)]
pub(crate) struct RuleCheck {
    rules: Vec<Rule>,
    case_insensitive: bool,
}

#[cfg(feature = "serde")]
impl RuleCheck {
    /// No rule yet; patterns compared case-insensitively if `case_insensitive`.
    pub(crate) fn new(case_insensitive: bool) -> Self {
        Self {
            rules: Vec::new(),
            case_insensitive,
        }
    }

    /// Checks one more rule against those added before it, and keeps it if
    /// it can be used. What a rule does makes no difference to the checks.
    pub(crate) fn add(&mut self, method: Option<Method>, pattern: &str) -> Result<(), ConfigError> {
        self.rules.push(Rule {
            method,
            pattern: pattern.to_owned(),
            action: Action::Exempt,
        });
        let table = RouteTable::new(self.rules.clone(), None, self.case_insensitive, Vec::new());
        if table.is_err() {
            self.rules.pop();
        }
        table.map(drop)
    }
}

/// The rules that apply to one method, in both spellings.
#[derive(Debug, Clone, Default)]
struct Routes {
    raw: matchit::Router<Action>,
    normalized: matchit::Router<Action>,
}

/// The route table: per-method routers plus the default policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    /// Routers for the methods that some rule names (`HEAD` too when a rule
    /// names `GET`).
    by_method: Vec<(Method, Routes)>,
    /// The router for every other method: rules without a method.
    any_method: Routes,
    /// No rule at all: every request gets the default.
    empty: bool,
    /// Every pattern is spelled in normal form, so a path in normal form has
    /// one reading.
    canonical_patterns: bool,
    default: Option<usize>,
    case_insensitive: bool,
    /// The [`tightest_rate`] of each policy, by policy index: lower is
    /// stricter.
    rates: Vec<f64>,
}

impl RouteTable {
    /// Builds the table; `rates` holds the [`tightest_rate`] of each policy.
    pub(crate) fn new(
        rules: Vec<Rule>,
        default: Option<usize>,
        case_insensitive: bool,
        rates: Vec<f64>,
    ) -> Result<Self, ConfigError> {
        let patterns = rules
            .iter()
            .map(|r| Pattern::parse(&r.pattern, case_insensitive))
            .collect::<Result<Vec<_>, _>>()?;
        // The same pattern twice for the same method: the second rule could
        // never decide anything.
        for (j, (rule, pattern)) in rules.iter().zip(&patterns).enumerate() {
            let earlier = rules[..j]
                .iter()
                .zip(&patterns)
                .find(|(r, p)| r.method == rule.method && p.raw == pattern.raw);
            if let Some((first, _)) = earlier {
                return Err(RouteError::Duplicate {
                    pattern: rule.pattern.clone(),
                    first: first.pattern.clone(),
                }
                .into());
            }
        }
        let mut methods: Vec<Method> = Vec::new();
        for m in rules.iter().filter_map(|r| r.method.clone()) {
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
            methods.push(Method::HEAD);
        }
        let routes_for = |method: Option<&Method>| Self::routes(&rules, &patterns, method, &rates);
        let by_method = methods
            .iter()
            .map(|m| Ok((m.clone(), routes_for(Some(m))?)))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Self {
            by_method,
            any_method: routes_for(None)?,
            empty: rules.is_empty(),
            canonical_patterns: patterns.iter().all(|p| p.canonical),
            default,
            case_insensitive,
            rates,
        })
    }

    /// The routers for `method` (`None`: a method no rule names). On one
    /// pattern the most specific rule applies: the method's own, then `GET`'s
    /// (for `HEAD`), then one for any method; where several spellings of a
    /// pattern normalise alike, the strictest of them.
    fn routes(
        rules: &[Rule],
        patterns: &[Pattern],
        method: Option<&Method>,
        rates: &[f64],
    ) -> Result<Routes, ConfigError> {
        let rank = |rule: &Rule| match (&rule.method, method) {
            (None, _) => Some(0),
            (Some(m), Some(want)) if m == want => Some(2),
            (Some(m), Some(want)) if *m == Method::GET && *want == Method::HEAD => Some(1),
            _ => None,
        };
        let mut raw: Vec<(&str, u8, Action, &str)> = Vec::new();
        let mut normalized: Vec<(&str, u8, Action, &str)> = Vec::new();
        for (rule, pattern) in rules.iter().zip(patterns) {
            let Some(rank) = rank(rule) else { continue };
            for (list, key) in [
                (&mut raw, &pattern.raw),
                (&mut normalized, &pattern.normalized),
            ] {
                match list.iter_mut().find(|(k, ..)| k == key) {
                    None => list.push((key, rank, rule.action, &rule.pattern)),
                    Some(slot) => {
                        let replace = rank > slot.1
                            || (rank == slot.1 && stricter(rates, slot.2, rule.action) != slot.2);
                        if replace {
                            *slot = (key, rank, rule.action, &rule.pattern);
                        }
                    }
                }
            }
        }
        let build = |list: Vec<(&str, u8, Action, &str)>| {
            let mut router = matchit::Router::new();
            for (key, _, action, written) in list {
                router.insert(key, action).map_err(|e| {
                    ConfigError::from(RouteError::Conflict {
                        pattern: written.to_owned(),
                        reason: e.to_string(),
                    })
                })?;
            }
            Ok::<_, ConfigError>(router)
        };
        Ok(Routes {
            raw: build(raw)?,
            normalized: build(normalized)?,
        })
    }

    fn routes_for(&self, method: &Method) -> &Routes {
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .map_or(&self.any_method, |(_, r)| r)
    }

    /// The action for a request; `None` means "not limited" (no rule matched
    /// any reading and there is no default policy).
    pub(crate) fn select(&self, method: &Method, path: &str) -> Option<Action> {
        if self.empty {
            return self.default.map(Action::Limit);
        }
        let routes = self.routes_for(method);
        let raw: Cow<'_, str> =
            if self.case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(path.to_ascii_lowercase())
            } else {
                Cow::Borrowed(path)
            };
        let mut verdict = self.lookup(&routes.raw, &raw);
        if self.canonical_patterns && is_normal(&raw) {
            // The other readings are this one.
            return verdict;
        }
        let literal = literal_segments(path, self.case_insensitive);
        let joined = join(&literal);
        verdict = self.combine(verdict, self.lookup(&routes.normalized, &joined));
        if literal.iter().any(|s| is_dot(s)) {
            let resolved = join(&resolve(&literal));
            verdict = self.combine(verdict, self.lookup(&routes.normalized, &resolved));
        }
        verdict
    }

    /// One reading's action: the matching rule's, else the default.
    fn lookup(&self, router: &matchit::Router<Action>, path: &str) -> Option<Action> {
        match router.at(path) {
            Ok(matched) => Some(*matched.value),
            Err(_) => self.default.map(Action::Limit),
        }
    }

    /// Combines the answers of two readings, `first` being the earlier:
    /// unlimited only if both are; otherwise the limited one, or the stricter
    /// of two policies (ties: `first`).
    fn combine(&self, first: Option<Action>, second: Option<Action>) -> Option<Action> {
        match (first, second) {
            (Some(a), Some(b)) => Some(stricter(&self.rates, a, b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
}

/// The stricter of two actions: a limit over an exemption, and of two
/// policies the one with the lower [`tightest_rate`] (ties: `a`).
fn stricter(rates: &[f64], a: Action, b: Action) -> Action {
    let rate = |ix: usize| rates.get(ix).copied().unwrap_or(f64::INFINITY);
    match (a, b) {
        (Action::Limit(x), Action::Limit(y)) if rate(y) < rate(x) => b,
        (Action::Exempt, Action::Limit(_)) => b,
        _ => a,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Policies: 0 = lenient default, 1 = strict, 2 = as strict as 1.
    const RATES: [f64; 3] = [100.0, 0.1, 0.1];

    fn rule(method: Option<Method>, pattern: &str, action: Action) -> Rule {
        Rule {
            method,
            pattern: pattern.to_owned(),
            action,
        }
    }

    fn table(rules: Vec<Rule>, default: Option<usize>) -> RouteTable {
        RouteTable::new(rules, default, false, RATES.to_vec()).unwrap()
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("/users/{id}", false).unwrap();
        assert_eq!(p.raw, "/users/{id}");
        assert_eq!(p.normalized, "/users/{p1}");
        assert!(p.canonical);
        let p = Pattern::parse("//Static/%6Cib/{*rest}", true).unwrap();
        assert_eq!(p.raw, "//static/%6cib/{*rest}");
        assert_eq!(p.normalized, "/static/lib/{*p1}");
        assert!(!p.canonical);
        assert_eq!(Pattern::parse("/", false).unwrap().normalized, "/");
        assert!(!Pattern::parse("/a/", false).unwrap().canonical);
        for bad in ["x", "/{*}", "/{*a}/b", "/{}", "/a{b}", "/a/../b", "/{a*}"] {
            assert!(Pattern::parse(bad, false).is_err(), "{bad}");
        }
        for (old, fixed) in [
            ("/users/:id", "/users/{id}"),
            ("/Users/:id/files/*path", "/Users/{id}/files/{*path}"),
            ("/:", "/{param}"),
            ("/files/*", "/files/{*rest}"),
        ] {
            assert_eq!(
                Pattern::parse(old, true),
                Err(ConfigError::Route(RouteError::OldSyntax {
                    pattern: old.to_owned(),
                    suggestion: fixed.to_owned()
                }))
            );
            Pattern::parse(fixed, false).unwrap();
        }
        // Not at the start of a segment, `:` and `*` are literal, as in axum.
        assert_eq!(Pattern::parse("/a:b/c*", false).unwrap().raw, "/a:b/c*");
        let t = table(
            vec![
                rule(None, "/users/{id}", Action::Limit(1)),
                rule(None, "/static/{*rest}", Action::Limit(2)),
            ],
            None,
        );
        let get = |p| t.select(&Method::GET, p);
        assert_eq!(get("/users/1"), Some(Action::Limit(1)));
        assert_eq!(get("/users"), None);
        assert_eq!(get("/users/1/x"), None);
        assert_eq!(get("/static/a/b"), Some(Action::Limit(2)));
        // As in axum, a catch-all needs at least one character.
        assert_eq!(get("/static"), None);
        let root = table(vec![rule(None, "/", Action::Limit(1))], None);
        assert_eq!(root.select(&Method::GET, "/"), Some(Action::Limit(1)));
    }

    #[test]
    fn most_specific_wins_and_get_covers_head() {
        let t = table(
            vec![
                rule(None, "/{*rest}", Action::Limit(1)),
                rule(Some(Method::GET), "/health", Action::Exempt),
                rule(None, "/users/{id}", Action::Limit(1)),
                rule(None, "/users/me", Action::Limit(0)),
            ],
            Some(0),
        );
        assert_eq!(t.select(&Method::GET, "/health"), Some(Action::Exempt));
        assert_eq!(t.select(&Method::HEAD, "/health"), Some(Action::Exempt));
        // No rule for POST on /health: the next most specific rule that
        // applies to POST.
        assert_eq!(t.select(&Method::POST, "/health"), Some(Action::Limit(1)));
        // Literal segments beat parameters, whatever the order of the rules.
        assert_eq!(t.select(&Method::GET, "/users/me"), Some(Action::Limit(0)));
        assert_eq!(t.select(&Method::GET, "/users/7"), Some(Action::Limit(1)));
        // On one pattern, the method's own rule beats a rule for any method.
        let t = table(
            vec![
                rule(None, "/login", Action::Limit(0)),
                rule(Some(Method::POST), "/login", Action::Limit(1)),
            ],
            None,
        );
        assert_eq!(t.select(&Method::POST, "/login"), Some(Action::Limit(1)));
        assert_eq!(t.select(&Method::GET, "/login"), Some(Action::Limit(0)));
        assert_eq!(t.select(&Method::PUT, "/login"), Some(Action::Limit(0)));
    }

    #[test]
    fn dead_and_conflicting_rules_are_config_errors() {
        let err = RouteTable::new(
            vec![
                rule(None, "/a", Action::Limit(0)),
                rule(None, "/a", Action::Limit(1)),
            ],
            None,
            false,
            RATES.to_vec(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Route(RouteError::Duplicate { .. })),
            "{err}"
        );
        let err = RouteTable::new(
            vec![
                rule(None, "/users/{id}", Action::Limit(0)),
                rule(None, "/users/{name}", Action::Limit(1)),
            ],
            None,
            false,
            RATES.to_vec(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Route(RouteError::Conflict { .. })),
            "{err}"
        );
        // Other methods, other spellings: fine.
        table(
            vec![
                rule(Some(Method::GET), "/a", Action::Limit(0)),
                rule(Some(Method::POST), "/a", Action::Limit(1)),
                rule(None, "/a/", Action::Exempt),
            ],
            None,
        );
    }

    #[test]
    fn spellings_that_normalise_alike_take_the_stricter_rule() {
        let t = table(
            vec![
                rule(None, "/a/", Action::Exempt),
                rule(None, "/a", Action::Limit(1)),
            ],
            Some(0),
        );
        // The raw reading of `/a/` is exempt, its normalised reading `/a` is
        // limited: limited.
        assert_eq!(t.select(&Method::GET, "/a/"), Some(Action::Limit(1)));
        assert_eq!(t.select(&Method::GET, "/a"), Some(Action::Limit(1)));
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

    /// The spellings of the security report: axum sends each of them to a
    /// handler other than the exempt one, or into a `{param}`.
    #[test]
    fn router_readings_are_never_more_lenient() {
        let t = table(
            vec![
                rule(None, "/health", Action::Exempt),
                rule(None, "/reports/{id}", Action::Limit(1)),
                rule(Some(Method::POST), "/t/{tenant}/login", Action::Limit(2)),
            ],
            Some(0),
        );
        for p in ["/health/", "//health", "/health;x", "/%68ealth", "/HEALTH"] {
            assert_eq!(t.select(&Method::GET, p), Some(Action::Limit(0)), "{p}");
        }
        assert_eq!(t.select(&Method::GET, "/health"), Some(Action::Exempt));
        // matchit puts `;x` into `{id}`; normalised, the path is `/reports`.
        assert_eq!(
            t.select(&Method::GET, "/reports/;x"),
            Some(Action::Limit(1))
        );
        for p in ["/t//login", "/t/;acme/login", "/t/acme/login"] {
            assert_eq!(t.select(&Method::POST, p), Some(Action::Limit(2)), "{p}");
        }
    }

    #[test]
    fn exempt_only_if_every_reading_is_exempt() {
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
        // No default: not limited only if no reading is.
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
        // A lenient rule on one reading does not win over a strict one on
        // another, whichever reading is which.
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
        // Ties go to the router's own (raw) reading: axum runs `/b/{*rest}`.
        let t = table(
            vec![
                rule(None, "/a", Action::Limit(2)),
                rule(None, "/b/{*rest}", Action::Limit(1)),
            ],
            None,
        );
        assert_eq!(t.select(&Method::GET, "/b/../a"), Some(Action::Limit(1)));
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
        assert_eq!(
            t.combine(Some(Action::Exempt), Some(Action::Limit(0))),
            Some(Action::Limit(0))
        );
        assert_eq!(t.combine(Some(Action::Exempt), None), Some(Action::Exempt));
        assert_eq!(t.combine(None, None), None);
    }

    #[test]
    fn methods_apply_to_every_reading() {
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

    #[test]
    fn case_insensitive_reads_the_raw_path_in_lower_case() {
        let t = RouteTable::new(
            vec![
                rule(None, "/Health", Action::Exempt),
                rule(None, "/auth/{*rest}", Action::Limit(1)),
            ],
            Some(0),
            true,
            RATES.to_vec(),
        )
        .unwrap();
        assert_eq!(t.select(&Method::GET, "/HEALTH"), Some(Action::Exempt));
        assert_eq!(t.select(&Method::GET, "/health"), Some(Action::Exempt));
        assert_eq!(t.select(&Method::GET, "/AUTH/x"), Some(Action::Limit(1)));
    }
}
