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
pub fn normalize_path(path: &str, case_insensitive: bool) -> Vec<String> {
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
}
