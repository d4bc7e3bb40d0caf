//! Property tests for the two functions that take raw client input apart:
//! `normalize_path` (route matching) and `Key::new` (Redis key parts).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use tower_redis_ratelimit::key::{Key, MAX_READABLE_LEN};
use tower_redis_ratelimit::normalize_path;

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

fn is_readable(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_READABLE_LEN
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b))
}

fn check_key(key: &Key) -> Result<(), TestCaseError> {
    let text = key.as_str();
    prop_assert!(
        !text.is_empty() && text.len() <= MAX_READABLE_LEN + 1,
        "{key:?}"
    );
    prop_assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@#-".contains(&b)),
        "{key:?}"
    );
    prop_assert!(!text.contains(['{', '}']), "{key:?}");
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

    /// `Key::new` never panics and always yields a safe Redis key part:
    /// 1..=65 bytes of `[A-Za-z0-9._:/@#-]`, never a brace. Readable input
    /// maps to itself; anything else to `#` + 64 hex digits.
    #[test]
    fn keys_are_always_safe(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let key = Key::new(&bytes);
        check_key(&key)?;
        if is_readable(&bytes) {
            prop_assert_eq!(key.as_str().as_bytes(), &bytes[..]);
        } else {
            let text = key.as_str();
            prop_assert_eq!(text.len(), 65);
            prop_assert!(text.starts_with('#'));
            prop_assert!(text[1..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        prop_assert_eq!(Key::new(&bytes), key, "deterministic");
    }

    /// Readable identities (biased generator, so they are actually readable)
    /// map to themselves.
    #[test]
    fn readable_keys_map_to_themselves(text in "[A-Za-z0-9._:/@-]{1,64}") {
        let key = Key::new(&text);
        prop_assert_eq!(key.as_str(), text.as_str());
    }

    /// Different identities never share a key.
    #[test]
    fn distinct_identities_get_distinct_keys(
        a in proptest::collection::vec(any::<u8>(), 0..80),
        b in proptest::collection::vec(any::<u8>(), 0..80),
        readable in "[a-z0-9.]{1,70}",
    ) {
        let inputs = [a.clone(), b.clone(), readable.clone().into_bytes()];
        let distinct: HashSet<&Vec<u8>> = inputs.iter().collect();
        let keys: HashSet<Key> = inputs.iter().map(Key::new).collect();
        prop_assert_eq!(keys.len(), distinct.len());
    }

    /// Keys of IP addresses are safe too, for every prefix length.
    #[test]
    fn ip_keys_are_safe(v4 in any::<u32>(), v6 in any::<u128>(), prefix in any::<u8>()) {
        check_key(&Key::from_ip(IpAddr::V4(Ipv4Addr::from(v4)), prefix))?;
        let key = Key::from_ip(IpAddr::V6(Ipv6Addr::from(v6)), prefix);
        check_key(&key)?;
        prop_assert!(!key.as_str().starts_with('#'), "IP keys stay readable: {key:?}");
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
