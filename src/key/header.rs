//! [`Header`]: the client is the value of one request header.

use http::HeaderName;
use http::request::Parts;

use super::{Key, KeyExtractor};

/// The value of one request header, e.g. `x-api-key`.
///
/// A request without the header (or with an empty value) has no key. If several
/// values are present only the first counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header(HeaderName);

impl Header {
    /// Keys requests by this header. The name is case-insensitive, as header
    /// names are: `Header::new("X-Api-Key")` and `Header::new("x-api-key")`
    /// are the same extractor.
    ///
    /// ```
    /// use tower_redis_ratelimit::key::Header;
    ///
    /// assert_eq!(Header::new("X-Api-Key"), Header::new("x-api-key"));
    /// ```
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name in any case (e.g. it is empty or
    /// contains a space, a colon or a non-ASCII character). To handle that
    /// yourself, parse it (`HeaderName::try_from(name)`, which accepts any
    /// case too) and use [`Header::from_name`].
    pub fn new(name: &str) -> Self {
        match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            Ok(parsed) => Self(parsed),
            Err(_) => panic!("key::Header::new: {name:?} is not a valid HTTP header name"),
        }
    }

    /// Keys requests by this header.
    pub fn from_name(name: HeaderName) -> Self {
        Self(name)
    }
}

impl KeyExtractor for Header {
    fn extract(&self, request: &Parts) -> Option<Key> {
        let value = request.headers.get(&self.0)?;
        (!value.is_empty()).then(|| Key::new(value.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn header_names_in_any_case() {
        let lower = Header::new("x-api-key");
        for name in ["X-Api-Key", "X-API-KEY", "x-Api-kEy"] {
            assert_eq!(Header::new(name), lower, "{name}");
        }
        assert_eq!(
            Header::new("AUTHORIZATION"),
            Header::from_name(http::header::AUTHORIZATION)
        );
        assert_eq!(
            Header::from_name(HeaderName::from_static("x-api-key")),
            lower
        );
        let mut p = parts();
        p.headers.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(Header::new("X-Api-Key").extract(&p), Some(Key::new("k1")));
    }

    #[test]
    fn header_new_panics_on_invalid_names() {
        for bad in ["", "x api key", "x-api-key:", "x-ápi", "a\nb"] {
            let panic = std::panic::catch_unwind(|| Header::new(bad)).expect_err(bad);
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            assert!(
                message.contains("not a valid HTTP header name"),
                "{message}"
            );
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }
}
