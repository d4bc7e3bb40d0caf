//! Looks at (and optionally resets) one client's quotas: the administration
//! handle (`layer.admin()`) from the command line.
//!
//! ```text
//! cargo run --example inspect -- --policy auth --key 127.0.0.1
//! auth 60s limit=5 remaining=0 reset=57
//! cargo run --example inspect -- --policy auth --key 127.0.0.1 --reset
//! auth 60s limit=5 remaining=5 reset=0
//! ```
//!
//! One line per quota of the policy: its window (in seconds, or in
//! milliseconds when it is not a whole number of seconds), its limit, the
//! units left and the seconds until it is fully restored (rounded up, as in
//! the `RateLimit` header). Looking consumes nothing; `--reset` forgets the
//! client's counts first.
//!
//! - Backend: `REDIS_URL` (one node), `REDIS_CLUSTER` (comma-separated seed
//!   node URLs) or `REDIS_SENTINEL` (see `examples/common/env.rs`), else the
//!   `[redis]` table of the `CONFIG` file, else in-memory — which only sees
//!   this process, so it is a demo.
//! - Policies: those of the `CONFIG` file (a TOML file, feature `serde`, as
//!   the axum example reads it), else the axum example's built-in ones, `api`
//!   (`Policy::default_api()`) and `auth` (`Policy::auth()`).
//! - `--key`: the client key as the policy's key extractor makes it. An IP
//!   address is read as `PeerIp` reads one (`Key::from_ip(ip, 64)`: an IPv6
//!   address stands for its /64).
//!
//! Exit status: 0 done, 1 the backend failed, 2 bad usage.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use tower_redis_ratelimit::{Key, Policy, QuotaStatus, RateLimitLayer};

#[path = "common/config.rs"]
mod config;

const USAGE: &str = "usage: inspect --policy <name> --key <client key> [--reset]

  --policy <name>  the policy: a name from CONFIG, else api or auth (the axum example's)
  --key <key>      the client key, e.g. an IP address as the peer-IP key sees it
  --reset          forget the client's counts, then print them

Prints one line per quota: `<policy> <window> limit=<n> remaining=<n> reset=<seconds>`.
Backend: REDIS_URL (one node), REDIS_CLUSTER (comma-separated node URLs) or
REDIS_SENTINEL (comma-separated sentinels, REDIS_SENTINEL_MASTER), with
REDIS_CA_CERT for a private CA; else the CONFIG file's, else in-memory (this
process only: a demo). Policies: those of CONFIG (a TOML file, `--features
serde`), else the axum example's.";

/// How long the backend may take for each call (a dead cluster would
/// otherwise be waited for forever).
const TIMEOUT: Duration = Duration::from_secs(10);

/// The command line.
#[derive(Debug, PartialEq)]
struct Args {
    policy: String,
    key: String,
    reset: bool,
}

/// What to do instead of inspecting.
enum Stop {
    Help,
    Usage(String),
}

/// Reads `--policy <name>`, `--key <key>` (or `--name=value`) and `--reset`.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, Stop> {
    let mut args = args.into_iter();
    let (mut policy, mut key, mut reset) = (None, None, false);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Err(Stop::Help),
            "--reset" if inline.is_none() => {
                reset = true;
                continue;
            }
            "--policy" => &mut policy,
            "--key" => &mut key,
            _ => return Err(Stop::Usage(format!("unexpected argument {arg:?}"))),
        };
        let Some(value) = inline.or_else(|| args.next()) else {
            return Err(Stop::Usage(format!("{flag} needs a value")));
        };
        if value.is_empty() {
            return Err(Stop::Usage(format!("{flag} needs a non-empty value")));
        }
        if slot.replace(value).is_some() {
            return Err(Stop::Usage(format!("{flag} is given twice")));
        }
    }
    match (policy, key) {
        (Some(policy), Some(key)) => Ok(Args { policy, key, reset }),
        (None, _) => Err(Stop::Usage("--policy is missing".to_owned())),
        (_, None) => Err(Stop::Usage("--key is missing".to_owned())),
    }
}

/// The client key: an IP address as `PeerIp` makes it, anything else as it is.
fn client_key(text: &str) -> Key {
    match text.parse::<IpAddr>() {
        Ok(ip) => Key::from_ip(ip, 64),
        Err(_) => Key::new(text),
    }
}

/// `auth 60s limit=5 remaining=0 reset=57`.
fn line(policy: &str, quota: &QuotaStatus) -> String {
    let ms = quota.window.as_millis();
    let window = if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    };
    let reset = quota.reset_after.as_micros().div_ceil(1_000_000);
    format!(
        "{policy} {window} limit={} remaining={} reset={reset}",
        quota.limit, quota.remaining
    )
}

/// The layer of `CONFIG`, else the axum example's, on the backend the
/// environment (or the file) names; a note on stderr says which.
fn layer() -> Result<RateLimitLayer, String> {
    let defaults = RateLimitLayer::builder()
        .default_policy(Policy::default_api())
        .route_method(Method::POST, "/auth/login", Policy::auth())
        .exempt("/health");
    let (layer, description) = config::limits(defaults).map_err(|e| e.to_string())?;
    eprintln!("{description}");
    if description.contains("backend: in-memory") {
        eprintln!(
            "An in-memory inspect only sees its own process, which has just started: this is \
             a demo. Set REDIS_URL, REDIS_CLUSTER or REDIS_SENTINEL to inspect the counts your servers share."
        );
    }
    Ok(layer)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(Stop::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(Stop::Usage(problem)) => {
            eprintln!("inspect: {problem}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let layer = match layer() {
        Ok(layer) => layer,
        Err(problem) => {
            eprintln!("inspect: {problem}");
            return ExitCode::from(2);
        }
    };
    let admin = layer.admin();
    if admin.policy(&args.policy).is_none() {
        let known: Vec<&str> = admin.policies().map(Policy::name).collect();
        eprintln!(
            "inspect: no policy named {:?}; the policies are: {}\n\n{USAGE}",
            args.policy,
            known.join(", ")
        );
        return ExitCode::from(2);
    }
    let key = client_key(&args.key);

    let result = tokio::time::timeout(TIMEOUT, async {
        if args.reset {
            admin.reset(&args.policy, &key).await?;
            eprintln!("reset: {} {}", args.policy, key);
        }
        admin.peek(&args.policy, &key).await
    })
    .await;
    match result {
        Ok(Ok(decision)) => {
            for quota in decision.quotas() {
                println!("{}", line(&args.policy, quota));
            }
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("inspect: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("inspect: the backend did not answer within {TIMEOUT:?}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, Stop> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    fn usage(line: &str) -> String {
        match args(line) {
            Err(Stop::Usage(problem)) => problem,
            Ok(a) => panic!("{line:?} was accepted: {a:?}"),
            Err(Stop::Help) => panic!("{line:?} asked for help"),
        }
    }

    #[test]
    fn parses_flags_in_any_order_and_form() {
        let want = Args {
            policy: "auth".into(),
            key: "127.0.0.1".into(),
            reset: false,
        };
        assert_eq!(args("--policy auth --key 127.0.0.1").ok(), Some(want));
        let got = args("--reset --key=::1 --policy=api").ok().unwrap();
        assert_eq!(
            (got.policy.as_str(), got.key.as_str(), got.reset),
            ("api", "::1", true)
        );
        assert!(matches!(args("--help"), Err(Stop::Help)));
        assert_eq!(usage(""), "--policy is missing");
        assert_eq!(usage("--policy auth"), "--key is missing");
        assert_eq!(usage("--policy auth --key"), "--key needs a value");
        assert_eq!(
            usage("--policy a --policy b --key k"),
            "--policy is given twice"
        );
        assert_eq!(
            usage("--policy auth --key k extra"),
            "unexpected argument \"extra\""
        );
        assert_eq!(usage("--reset=yes"), "unexpected argument \"--reset=yes\"");
    }

    #[test]
    fn lines_and_keys() {
        let status = |window_ms, reset_us| QuotaStatus {
            limit: 5,
            window: Duration::from_millis(window_ms),
            remaining: 0,
            reset_after: Duration::from_micros(reset_us),
        };
        assert_eq!(
            line("auth", &status(60_000, 56_000_001)),
            "auth 60s limit=5 remaining=0 reset=57"
        );
        assert_eq!(
            line("p", &status(250, 0)),
            "p 250ms limit=5 remaining=0 reset=0"
        );
        assert_eq!(
            line("p", &status(1_500, 1)),
            "p 1500ms limit=5 remaining=0 reset=1"
        );
        assert_eq!(client_key("2001:db8::7").as_str(), "2001:db8::/64");
        assert_eq!(client_key("127.0.0.1").as_str(), "127.0.0.1");
        assert_eq!(client_key("user-42").as_str(), "user-42");
    }
}
