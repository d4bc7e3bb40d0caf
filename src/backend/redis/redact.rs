//! Connection URLs without their passwords, for logs and error messages.

use std::borrow::Cow;

/// What replaces a password.
const MASK: &str = "***";

/// Query parameters that carry a password (`redis+unix:///s.sock?pass=...`).
const PASSWORD_PARAMS: [&str; 2] = ["pass", "password"];

/// A connection URL that is safe to show: every password replaced by `***`,
/// everything else (scheme, user name, host, port, database, other
/// parameters) kept.
///
/// - `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`
/// - `rediss://:secret@host` → `rediss://:***@host`
/// - `redis+unix:///run/redis.sock?db=1&pass=secret` →
///   `redis+unix:///run/redis.sock?db=1&pass=***`
/// - a URL without a password is returned as it is (borrowed).
///
/// Any text is accepted and it never panics. Malformed URLs are redacted
/// generously rather than leak: the user information ends at the *last*
/// `@`, so a password containing `@`, `/`, `?` or `#` unencoded is hidden
/// whole; text without a `scheme://` is read as if it followed one; a `pass` or
/// `password` parameter (any case, percent-encoded or not) is hidden up to
/// the next `&name=` parameter.
///
/// The crate uses it wherever it shows a Redis URL (`Debug` of
/// [`RedisBackend`](crate::RedisBackend) and its builder,
/// [`ConfigError::RedisUrl`](crate::ConfigError::RedisUrl), the
/// configuration's `RedisConfig`).
pub(crate) fn redact_url(url: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(url);
    if let Some(secret) = userinfo_password(url) {
        out = Cow::Owned(format!("{}{MASK}{}", &url[..secret.0], &url[secret.1..]));
    }
    let params = password_params(&out);
    if !params.is_empty() {
        let text = out.as_ref();
        let mut redacted = String::with_capacity(text.len());
        let mut copied = 0;
        for (start, end) in params {
            redacted.push_str(&text[copied..start]);
            redacted.push_str(MASK);
            copied = end;
        }
        redacted.push_str(&text[copied..]);
        out = Cow::Owned(redacted);
    }
    out
}

/// The passwords in `url`, as `redact_url` finds them.
pub(super) fn secrets(url: &str) -> Vec<&str> {
    let mut found: Vec<&str> = userinfo_password(url)
        .map(|(start, end)| &url[start..end])
        .into_iter()
        .collect();
    found.extend(
        password_params(url)
            .into_iter()
            .map(|(start, end)| &url[start..end]),
    );
    found
}

/// The byte range of the password in the user information, if there is a
/// user information with a `:`: after the scheme's `://` (or from the start
/// without a scheme), up to the last `@`.
fn userinfo_password(url: &str) -> Option<(usize, usize)> {
    let start = match url.find("://") {
        Some(i) if is_scheme(&url[..i]) => i + 3,
        _ => 0,
    };
    let at = start + url[start..].rfind('@')?;
    let colon = start + url[start..at].find(':')?;
    Some((colon + 1, at))
}

/// RFC 3986 scheme syntax: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// The byte ranges of the values of password parameters: a `pass=` or
/// `password=` after a `?` or `&`, up to the next `&` that starts another
/// `name=` parameter, or the end.
fn password_params(url: &str) -> Vec<(usize, usize)> {
    let bytes = url.as_bytes();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !matches!(bytes[i], b'?' | b'&') {
            i += 1;
            continue;
        }
        let name_start = i + 1;
        let Some(eq) = next_param_name_end(url, name_start) else {
            i += 1;
            continue;
        };
        let name = percent_decode(&url[name_start..eq]);
        if !PASSWORD_PARAMS
            .iter()
            .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
        {
            i = eq;
            continue;
        }
        let value_start = eq + 1;
        let mut end = bytes.len();
        let mut j = value_start;
        while j < bytes.len() {
            if bytes[j] == b'&' && next_param_name_end(url, j + 1).is_some() {
                end = j;
                break;
            }
            j += 1;
        }
        ranges.push((value_start, end));
        i = end;
    }
    ranges
}

/// Where a parameter name starting at `start` ends (the index of its `=`),
/// if the text there looks like `name=`: a non-empty run of characters that
/// may appear in a parameter name.
fn next_param_name_end(url: &str, start: usize) -> Option<usize> {
    let rest = url.as_bytes().get(start..)?;
    let len = rest
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'%')))?;
    (len > 0 && rest[len] == b'=').then_some(start + len)
}

/// `%XX` escapes decoded (others kept as they are).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_the_rest_kept() {
        for (url, shown) in [
            (
                "redis://user:secret@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("rediss://:secret@host", "rediss://:***@host"),
            (
                "valkeys://:secret@[::1]:6380/",
                "valkeys://:***@[::1]:6380/",
            ),
            ("redis://user:@host", "redis://user:***@host"),
            // `@`, `/`, `?`, `#`, `:` inside the password, unencoded.
            ("redis://user:p@ss@host:1/2", "redis://user:***@host:1/2"),
            ("redis://user:pa/ss?x#y@host", "redis://user:***@host"),
            ("redis://user:a:b@host", "redis://user:***@host"),
            (
                "redis://u:p%40ss@host/0?protocol=resp3",
                "redis://u:***@host/0?protocol=resp3",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=secret&protocol=resp3",
                "redis+unix:///run/redis.sock?db=1&pass=***&protocol=resp3",
            ),
            (
                "unix:///s.sock?user=me&pass=se&cret",
                "unix:///s.sock?user=me&pass=***",
            ),
            (
                "unix:///s.sock?PASSWORD=x&pa%73s=y&db=2",
                "unix:///s.sock?PASSWORD=***&pa%73s=***&db=2",
            ),
            (
                "redis+unix:///s.sock?user=me@corp&pass=secret",
                "redis+unix:///s.sock?user=me@corp&pass=***",
            ),
            ("redis://ü:sëcret@hôst", "redis://ü:***@hôst"),
            // No scheme: read as if after `://`.
            ("user:secret@host:6379", "user:***@host:6379"),
            ("u:pa://ss@host", "u:***@host"),
            ("://u:secret@host", ":***@host"),
            (":@", ":***@"),
            ("redis://:@", "redis://:***@"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_without_a_password_are_borrowed_unchanged() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis://user@host",
            "rediss://host:6380/#insecure",
            "redis://host/?protocol=resp3&db=1",
            "redis+unix:///run/redis.sock?db=1",
            "redis://[2001:db8::1]:6379",
            "",
            "@",
            "://",
            "redis://@",
            "@@@",
            "?&=&pass",
            "not a url",
            "%",
            "?pass",
        ] {
            assert!(
                matches!(redact_url(url), Cow::Borrowed(u) if u == url),
                "{url:?}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet = [
            "a", ":", "@", "/", "?", "&", "=", "%", "#", "é", "pass", "://", "%4",
        ];
        // Every string of up to four pieces of the alphabet.
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = inputs
                .iter()
                .flat_map(|s| alphabet.iter().map(move |piece| format!("{s}{piece}")))
                .collect();
            inputs.extend(longer);
            inputs.dedup();
        }
        for input in &inputs {
            let _ = redact_url(input);
            let _ = secrets(input);
        }
    }

    proptest::proptest! {
        #[test]
        fn generated_passwords_never_show(
            user in "[a-zA-Z0-9_.-]{0,8}",
            tail in "[a-zA-Z0-9@/?#:&=%._~ -]{0,12}",
            host in "[a-z0-9.-]{1,12}",
            scheme in "(redis|rediss|valkey)?(://)?",
        ) {
            let password = format!("SECRET{tail}");
            let url = format!("{scheme}{user}:{password}@{host}:6379/0");
            let shown = redact_url(&url);
            proptest::prop_assert!(!shown.contains("SECRET"), "{} -> {}", url, shown);
            let unix = format!("redis+unix:///tmp/r.sock?db=1&pass={password}");
            let shown = redact_url(&unix);
            proptest::prop_assert!(!shown.contains("SECRET"), "{} -> {}", unix, shown);
            proptest::prop_assert!(secrets(&url).iter().any(|s| s.contains("SECRET")));
        }
    }
}
