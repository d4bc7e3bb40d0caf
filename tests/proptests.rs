//! Property tests for `Key::new` and `Key::from_ip` (Redis key parts). The
//! path readings' property tests live with the code, in `src/routes/path.rs`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use tower_redis_ratelimit::key::{Key, MAX_READABLE_LEN};

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
