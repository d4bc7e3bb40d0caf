//! The values a configuration file writes as text: quotas (`"100/min"`),
//! durations (`"50ms"`), the names of enum variants, HTTP methods and header
//! names. Each parser returns the message that says what was expected; the
//! caller adds where the value was.

use std::fmt;
use std::marker::PhantomData;
use std::num::IntErrorKind;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::algorithm::Algorithm;
use crate::failure::FailureMode;
use crate::headers::HeaderStyle;
use crate::policy::MissingKey;
use crate::quota::Quota;

/// A value read from a string.
pub(super) trait Text: Sized {
    /// What the value looks like, completing "expected ..." in type errors
    /// (`invalid type: integer `5`, expected a quota such as "100/min"`).
    const EXPECTING: &'static str;

    /// Parses `text`, or says what is wrong with it.
    fn parse(text: &str) -> Result<Self, String>;
}

/// A [`Text`] value as a field of a configuration.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Parsed<T>(pub T);

impl<'de, T: Text> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<T>(PhantomData<T>);

        impl<T: Text> Visitor<'_> for TextVisitor<T> {
            type Value = Parsed<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                T::parse(text).map(Parsed).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

/// The units accepted in durations and windows, for error messages
/// (humantime accepts a few more: weeks, `us`, `ns`; months and years are
/// refused, see [`CALENDAR_UNITS`]).
const UNITS: &str = "ms, s, m, h or d (or sec, min, hour, day...)";

/// The units humantime reads as a month (30.44 days) or a year (365.25
/// days): refused, as a window of "5/month" that is neither a calendar month
/// nor 30 days would surprise whoever wrote it.
const CALENDAR_UNITS: &[&str] = &["M", "month", "months", "y", "year", "years"];

/// Why `text` (a duration or a window) names a month or a year, if it does.
fn calendar_unit(text: &str) -> Option<String> {
    let unit = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .find(|unit| CALENDAR_UNITS.contains(unit))?;
    let what = if unit.starts_with(['M', 'm']) {
        "months"
    } else {
        "years"
    };
    Some(format!(
        "{what} have no fixed length (\"{unit}\" is not a calendar {}): write it in \
         days, e.g. \"30d\" or \"365d\"",
        &what[..what.len() - 1]
    ))
}

/// The problem with a duration, for messages that quote the value themselves.
fn duration_problem(error: &humantime::DurationError) -> String {
    match error {
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            format!("a unit is missing, expected {UNITS}")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("unknown unit {unit:?}, expected {UNITS}")
        }
        humantime::DurationError::Empty | humantime::DurationError::NumberExpected(0) => {
            format!("expected a number and a unit: {UNITS}")
        }
        other => other.to_string(),
    }
}

impl Text for Duration {
    const EXPECTING: &'static str = "a duration such as \"50ms\" or \"2s\"";

    fn parse(text: &str) -> Result<Self, String> {
        if let Some(problem) = calendar_unit(text) {
            return Err(format!("{text:?} is not a duration: {problem}"));
        }
        humantime::parse_duration(text.trim()).map_err(|e| {
            format!(
                "{text:?} is not a duration: {}, e.g. \"50ms\" or \"2s\"",
                duration_problem(&e)
            )
        })
    }
}

impl Text for Quota {
    const EXPECTING: &'static str = "a quota such as \"100/min\" or \"3/15m\"";

    /// `<count>/<window>`: `100/min`, `10/s`, `5000/h`, `1000/day`; the window
    /// may start with a number of units: `3/15m`, `20/90s`, `1/1h30m`.
    fn parse(text: &str) -> Result<Self, String> {
        let fail = |problem: String| format!("{text:?} is not a quota: {problem}");
        let Some((count, window)) = text.split_once('/') else {
            return Err(fail(
                "expected <count>/<window>, e.g. \"100/min\" or \"3/15m\"".to_owned(),
            ));
        };
        let (count, window) = (count.trim(), window.trim());
        let limit = match count.parse::<u64>() {
            Ok(0) => return Err(fail("the count must be at least 1".to_owned())),
            Ok(limit) => limit,
            Err(_) if count.is_empty() => {
                return Err(fail(
                    "expected a count before \"/\", e.g. \"100/min\"".to_owned(),
                ));
            }
            Err(e) if *e.kind() == IntErrorKind::PosOverflow => {
                return Err(fail(format!("the count {count} is too large")));
            }
            Err(_) => {
                return Err(fail(format!(
                    "expected a whole number before \"/\", found {count:?}"
                )));
            }
        };
        if window.is_empty() {
            return Err(fail(
                "expected a window after \"/\", e.g. \"5/min\" or \"5/15m\"".to_owned(),
            ));
        }
        if let Some(problem) = calendar_unit(window) {
            return Err(fail(format!("the window {window:?} is refused: {problem}")));
        }
        // `min` is one minute: humantime wants a number first.
        let duration = if window.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(window)
        } else {
            humantime::parse_duration(&format!("1{window}"))
        };
        match duration {
            Ok(window) => Ok(Quota::new(limit, window)),
            Err(e) => Err(fail(format!(
                "the window {window:?} is not a duration: {}",
                duration_problem(&e)
            ))),
        }
    }
}

/// Parses one of a fixed set of names.
fn one_of<T: Copy>(
    text: &str,
    what: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, String> {
    if let Some(found) = all.iter().copied().find(|&v| name(v) == text) {
        return Ok(found);
    }
    let names: Vec<String> = all.iter().map(|&v| format!("{:?}", name(v))).collect();
    let expected = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!("{text:?} is not {what}: expected {expected}"))
}

/// The name of an algorithm in configuration files. Every algorithm is
/// listed in [`Algorithm::ALL`] and must be named here.
pub(super) fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::SlidingLog => "sliding_log",
        Algorithm::SlidingWindow => "sliding_window",
        Algorithm::Gcra => "gcra",
    }
}

impl Text for Algorithm {
    const EXPECTING: &'static str = "an algorithm name such as \"sliding_window\"";

    fn parse(text: &str) -> Result<Self, String> {
        one_of(text, "an algorithm", Algorithm::ALL, algorithm_name)
    }
}

fn failure_mode_name(mode: FailureMode) -> &'static str {
    match mode {
        FailureMode::Open => "open",
        FailureMode::Closed => "closed",
        FailureMode::Local => "local",
    }
}

impl Text for FailureMode {
    const EXPECTING: &'static str = "a failure mode: \"open\", \"closed\" or \"local\"";

    fn parse(text: &str) -> Result<Self, String> {
        let all = [FailureMode::Open, FailureMode::Closed, FailureMode::Local];
        one_of(text, "a failure mode", &all, failure_mode_name)
    }
}

fn header_style_name(style: HeaderStyle) -> &'static str {
    match style {
        HeaderStyle::Ietf => "ietf",
        HeaderStyle::Legacy => "legacy",
        HeaderStyle::Both => "both",
        HeaderStyle::None => "none",
    }
}

impl Text for HeaderStyle {
    const EXPECTING: &'static str = "a header style: \"ietf\", \"legacy\", \"both\" or \"none\"";

    fn parse(text: &str) -> Result<Self, String> {
        let all = [
            HeaderStyle::Ietf,
            HeaderStyle::Legacy,
            HeaderStyle::Both,
            HeaderStyle::None,
        ];
        one_of(text, "a header style", &all, header_style_name)
    }
}

fn missing_key_name(missing: MissingKey) -> &'static str {
    match missing {
        MissingKey::SharedBucket => "shared_bucket",
        MissingKey::Deny => "deny",
    }
}

impl Text for MissingKey {
    const EXPECTING: &'static str = "\"shared_bucket\" or \"deny\"";

    fn parse(text: &str) -> Result<Self, String> {
        let all = [MissingKey::SharedBucket, MissingKey::Deny];
        one_of(text, "a missing-key rule", &all, missing_key_name)
    }
}

impl Text for Method {
    const EXPECTING: &'static str = "an HTTP method such as \"POST\"";

    /// Any case: `post` is `POST` (a lower-case method would never match).
    fn parse(text: &str) -> Result<Self, String> {
        Method::from_bytes(text.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("{text:?} is not an HTTP method"))
    }
}

impl Text for HeaderName {
    const EXPECTING: &'static str = "a header name such as \"x-api-key\"";

    /// Any case, as header names are.
    fn parse(text: &str) -> Result<Self, String> {
        HeaderName::from_bytes(text.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{text:?} is not an HTTP header name"))
    }
}

/// One trusted proxy of a [`ClientIp`](crate::key::ClientIp) key: a network or an address.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TrustedProxy(pub String);

impl Text for TrustedProxy {
    const EXPECTING: &'static str = "a network such as \"10.0.0.0/8\" or an address";

    fn parse(text: &str) -> Result<Self, String> {
        crate::key::parse_network(text)
            .map(|_| TrustedProxy(text.to_owned()))
            .map_err(|e| e.to_string())
    }
}

/// One IP network of an access list: a network or an address, checked as
/// [`AccessList::networks`](crate::AccessList::networks) checks it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Network(pub String);

impl Text for Network {
    const EXPECTING: &'static str = "a network such as \"10.0.0.0/8\" or an address";

    fn parse(text: &str) -> Result<Self, String> {
        crate::key::parse_network(text)
            .map(|_| Network(text.to_owned()))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;

    #[test]
    fn quotas() {
        let secs = |s| Duration::from_secs(s);
        for (text, limit, window) in [
            ("100/min", 100, secs(MIN)),
            ("10/s", 10, secs(1)),
            ("5000/h", 5000, secs(3600)),
            ("1000/day", 1000, secs(86_400)),
            ("3/15m", 3, secs(15 * MIN)),
            ("20/90s", 20, secs(90)),
            ("7/250ms", 7, Duration::from_millis(250)),
            ("1/sec", 1, secs(1)),
            ("1/second", 1, secs(1)),
            ("1/minute", 1, secs(MIN)),
            ("1/hour", 1, secs(3600)),
            ("1/d", 1, secs(86_400)),
            ("2/1h30m", 2, secs(90 * MIN)),
            (" 100 / min ", 100, secs(MIN)),
        ] {
            assert_eq!(Quota::parse(text), Ok(Quota::new(limit, window)), "{text}");
        }
    }

    #[test]
    fn bad_quotas_say_what_was_expected() {
        for (text, message) in [
            (
                "5/minn",
                "\"5/minn\" is not a quota: the window \"minn\" is not a duration: unknown unit \
                 \"minn\", expected ms, s, m, h or d (or sec, min, hour, day...)",
            ),
            (
                "5",
                "\"5\" is not a quota: expected <count>/<window>, e.g. \"100/min\" or \"3/15m\"",
            ),
            (
                "0/min",
                "\"0/min\" is not a quota: the count must be at least 1",
            ),
            (
                "/min",
                "\"/min\" is not a quota: expected a count before \"/\", e.g. \"100/min\"",
            ),
            (
                "5/",
                "\"5/\" is not a quota: expected a window after \"/\", e.g. \"5/min\" or \"5/15m\"",
            ),
            (
                "x/min",
                "\"x/min\" is not a quota: expected a whole number before \"/\", found \"x\"",
            ),
            (
                "-1/min",
                "\"-1/min\" is not a quota: expected a whole number before \"/\", found \"-1\"",
            ),
            (
                "99999999999999999999/s",
                "\"99999999999999999999/s\" is not a quota: the count 99999999999999999999 is too large",
            ),
        ] {
            assert_eq!(Quota::parse(text).unwrap_err(), message);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(Duration::parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(Duration::parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            Duration::parse("50").unwrap_err(),
            "\"50\" is not a duration: a unit is missing, expected ms, s, m, h or d \
             (or sec, min, hour, day...), e.g. \"50ms\" or \"2s\""
        );
        assert_eq!(
            Duration::parse("fast").unwrap_err(),
            "\"fast\" is not a duration: expected a number and a unit: ms, s, m, h or d \
             (or sec, min, hour, day...), e.g. \"50ms\" or \"2s\""
        );
    }

    #[test]
    fn names() {
        assert_eq!(Algorithm::parse("sliding_log"), Ok(Algorithm::SlidingLog));
        assert_eq!(
            Algorithm::parse("token_bucket").unwrap_err(),
            "\"token_bucket\" is not an algorithm: expected \"sliding_log\", \"sliding_window\" or \"gcra\""
        );
        for &algorithm in Algorithm::ALL {
            assert_eq!(Algorithm::parse(algorithm_name(algorithm)), Ok(algorithm));
        }
        assert_eq!(
            HeaderStyle::parse("x").unwrap_err(),
            "\"x\" is not a header style: expected \"ietf\", \"legacy\", \"both\" or \"none\""
        );
        assert_eq!(Method::parse("post"), Ok(Method::POST));
        assert_eq!(
            HeaderName::parse("X-Api-Key"),
            Ok(HeaderName::from_static("x-api-key"))
        );
    }
}
