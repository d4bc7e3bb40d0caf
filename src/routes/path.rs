//! The readings of a request path that the route table matches (see the
//! [module docs](super)): the normalised segments of a path, with dot
//! segments kept ([`literal_segments`]) or resolved ([`resolve`]), and the
//! test for a path that is already its own normalised reading
//! ([`is_normal`]).

use std::borrow::Cow;

/// Splits a request path into normalised segments: empty segments, a
/// trailing slash and `;parameters` removed, percent-encoded unreserved
/// characters decoded, optionally lower-cased, and `.` and `..` resolved.
///
/// This is the *resolved* reading of a path (see the module docs); the route
/// table also matches the raw and the unresolved readings and applies the
/// strictest answer.
#[cfg(test)]
fn normalize_path(path: &str, case_insensitive: bool) -> Vec<String> {
    resolve(&literal_segments(path, case_insensitive))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

pub(super) fn is_dot(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// Whether a (possibly lower-cased) raw path is its own normalised reading.
pub(super) fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.first() == Some(&b'/')
        && (bytes.len() == 1 || bytes.last() != Some(&b'/'))
        && !bytes.iter().any(|b| matches!(b, b';' | b'%'))
        && !path.contains("//")
        && !path.split('/').any(is_dot)
}

/// `/a/b` from `["a", "b"]`; `/` from no segment.
pub(super) fn join<S: AsRef<str>>(segments: &[S]) -> String {
    if segments.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(segments.iter().map(|s| s.as_ref().len() + 1).sum());
    for seg in segments {
        out.push('/');
        out.push_str(seg.as_ref());
    }
    out
}

/// The normalised reading of a path: normalised segments, with `.` and `..`
/// kept as segments. Borrows from `path` where nothing needs rewriting.
pub(super) fn literal_segments(path: &str, case_insensitive: bool) -> Vec<Cow<'_, str>> {
    path.split('/')
        .map(|raw| canonical_segment(raw.split(';').next().unwrap_or(""), case_insensitive))
        .filter(|seg| !seg.is_empty())
        .collect()
}

/// The resolved reading of a normalised one: `.` dropped, `..` removes the
/// segment before it (if any).
pub(super) fn resolve<'a>(literal: &'a [Cow<'_, str>]) -> Vec<&'a str> {
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
    fn normal_form() {
        for p in ["/", "/a", "/a/b", "/a.b/c-d", "/..a/b.."] {
            assert!(is_normal(p), "{p}");
        }
        for p in [
            "", "a", "//", "/a/", "//a", "/a//b", "/a;x", "/%61", "/.", "/a/..", "/a/./b",
        ] {
            assert!(!is_normal(p), "{p}");
        }
    }

    /// The spellings of `POST /auth/login` that the path-bypass test
    /// (`tests/it/security_path_spellings.rs`) sends through the layer, as the
    /// request path the layer sees (the query is not part of it): every one
    /// reads as `/auth/login`.
    #[test]
    fn login_spellings_normalise_to_the_login_route() {
        const VARIANTS: [&str; 16] = [
            "/auth/login",
            "//auth/login",
            "/auth/login/",
            "/auth/./login",
            "/auth//login",
            "/auth/%6Cogin",
            "/auth/%6cogin",
            "/%61uth/%6C%6F%67%69%6E",
            "/auth/login;x=1",
            "/auth;v=2/login",
            "/AUTH/login",
            "/Auth/LOGIN",
            "/x/../auth/login",
            "/auth/login/.",
            "/auth/login?next=/home",
            "///auth///login///",
        ];
        let want = ["auth".to_owned(), "login".to_owned()];
        for variant in VARIANTS {
            let path = variant.split('?').next().unwrap();
            assert_eq!(normalize_path(path, true), want, "{path}");
        }
    }
}

/// Property tests of the readings (formerly `tests/it/proptests.rs`, which keeps
/// those of `Key`).
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::normalize_path;

    /// Paths made mostly of the characters normalisation cares about, so that
    /// escapes, dot segments, parameters and slashes meet often.
    fn tricky_path() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%".to_owned()),
            Just(";".to_owned()),
            Just("=".to_owned()),
            Just("~".to_owned()),
            "[0-9a-fA-F]".prop_map(String::from),
            "%[0-9a-fA-F]{2}".prop_map(String::from),
            "%2[eEfF5]".prop_map(String::from),
            // Escapes of hex digits: a stray `%` before them must not turn into
            // a new escape when the result is decoded again.
            "%(3[0-9]|[46][1-6])".prop_map(String::from),
            "[a-zA-Z]{1,3}".prop_map(String::from),
            "[^/]".prop_map(String::from),
        ];
        proptest::collection::vec(atom, 0..24).prop_map(|atoms| atoms.concat())
    }

    /// Any path: arbitrary Unicode, or arbitrary bytes made into a string.
    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            tricky_path(),
        ]
    }

    fn check_segments(path: &str, segments: &[String]) -> Result<(), TestCaseError> {
        for segment in segments {
            prop_assert!(!segment.contains('/'), "{path:?} -> {segments:?}");
            prop_assert!(
                !matches!(segment.as_str(), "" | "." | ".."),
                "{path:?} -> {segments:?}"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never panics; segments never contain `/` and are never empty, `.` or
        /// `..`, with or without case folding.
        #[test]
        fn normalized_segments_are_clean(path in any_path(), fold in any::<bool>()) {
            let segments = normalize_path(&path, fold);
            check_segments(&path, &segments)?;
            if fold {
                for segment in &segments {
                    prop_assert_eq!(segment.to_ascii_lowercase(), segment.clone());
                }
            }
        }

        /// Normalising the normalised path again changes nothing.
        #[test]
        fn normalization_is_idempotent(path in any_path(), fold in any::<bool>()) {
            let once = normalize_path(&path, fold);
            let joined = format!("/{}", once.join("/"));
            let twice = normalize_path(&joined, fold);
            prop_assert_eq!(&twice, &once, "{:?} -> {:?}", path, joined);
        }

        /// Prefixes that a client could add to dodge a route (`//`, `/./`,
        /// `/x/..`, trailing `/`) never change the segments.
        #[test]
        fn path_spellings_do_not_matter(
            path in tricky_path(),
            junk in "[a-z]{1,4}",
            fold in any::<bool>(),
        ) {
            let want = normalize_path(&path, fold);
            let p = path.trim_start_matches('/');
            for variant in [
                format!("//{p}"),
                format!("/./{p}"),
                format!("/{junk}/../{p}"),
                format!("/{p}/"),
            ] {
                prop_assert_eq!(normalize_path(&variant, fold), want.clone(), "{}", variant);
            }
        }

        /// Plain segments map to themselves.
        #[test]
        fn plain_paths_are_kept(segments in proptest::collection::vec("[A-Za-z0-9_~-]{1,8}", 0..6)) {
            let path = format!("/{}", segments.join("/"));
            prop_assert_eq!(normalize_path(&path, false), segments);
        }
    }

    /// Cases the generators found or aim at, pinned: a stray `%` before escaped
    /// hex digits must not form a new escape when decoded again, and a literal
    /// `%` is the same segment however it is spelled.
    #[test]
    fn stray_percent_signs_are_canonical() {
        for (path, want) in [
            ("/%%36%31", vec!["%2561"]),
            ("/%%36A", vec!["%256A"]),
            ("/%%32%65%2e", vec!["%252e."]),
            ("/100%", vec!["100%25"]),
            ("/100%25", vec!["100%25"]),
            ("/%2e%2E/x", vec!["x"]),
        ] {
            let once = normalize_path(path, false);
            assert_eq!(once, want, "{path}");
            let again = normalize_path(&format!("/{}", once.join("/")), false);
            assert_eq!(again, once, "{path}");
        }
    }
}
