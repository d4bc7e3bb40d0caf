//! Secrets in output: a configuration's API keys (access lists,
//! `tier_keys`) and Redis passwords must show neither in `Debug` of a parsed
//! [`Config`] nor in any configuration error — whatever reads the file (a
//! `toml::Table`, toml straight from the text, JSON, or `Config` as a section
//! of an application's own configuration), and wherever the value was put.
//!
//! Before the fix, `Debug` listed every key, and `redis.sentinel =
//! "redis://u:pw@h:1"` (a string where a list goes) came back as `invalid
//! type: string "redis://u:pw@h:1", expected a sequence`.

use serde::Deserialize;
use tower_redis_ratelimit::{Config, ConfigError};

/// Every secret of the texts below contains this, and nothing else does.
const SECRET: &str = "S3CRET";

/// A configuration using every kind of secret, valid.
const VALID: &str = r#"
default_policy = "api"

[redis]
sentinel = ["redis://app:S3CRET-sentinel@10.0.0.1:26379", "redis://:S3CRET-2@10.0.0.2:26379"]
master = "cache"
master_url = "redis://app:S3CRET-primary@unused:6379/0"

[policies.api]
quotas = ["100/min"]
key = { header = "x-api-key" }
allow = { networks = ["10.0.0.0/8"], keys = ["S3CRET-batch-job", "S3CRET-monitor"] }
deny = { keys = ["S3CRET-leaked-key"] }
tiers = { pro = ["1000/min"] }
tier_keys = { "S3CRET-customer-1" = "pro", "S3CRET-customer-2" = "pro" }
"#;

/// The policy the invalid texts below add their mistake to.
const POLICY: &str = "[policies.api]\nquotas = [\"100/min\"]\ntiers = { pro = [\"1000/min\"] }\n";

/// Invalid configurations, each with a secret where it does not belong, and
/// the path its error must still name.
fn invalid() -> Vec<(String, &'static str)> {
    let policy = |line: &str| format!("{POLICY}tier_header = \"x-plan\"\n{line}\n");
    let tiered = |line: &str| format!("{POLICY}{line}\n");
    vec![
        // A string where a list of URLs goes.
        (
            "[redis]\nsentinel = \"redis://u:S3CRET@h:1\"".to_owned(),
            "redis.sentinel",
        ),
        (
            "[redis]\ncluster = \"redis://u:S3CRET@h:1\"".to_owned(),
            "redis.cluster",
        ),
        // A URL where the table goes.
        ("redis = \"rediss://u:S3CRET@h:1\"".to_owned(), "redis"),
        // A list where one URL goes: no value is quoted, but the path stays.
        (
            "[redis]\nsentinel = [\"redis://h:1\"]\nmaster_url = [\"redis://u:S3CRET@h\"]"
                .to_owned(),
            "redis.master_url",
        ),
        // A key where the list of keys goes, or where the table goes.
        (
            policy("allow = { keys = \"S3CRET-key\" }"),
            "policies.api.allow.keys",
        ),
        (policy("deny = \"S3CRET-key\""), "policies.api.deny"),
        // A numeric key, unquoted in the file.
        (
            policy("allow = { keys = [753123] }"),
            "policies.api.allow.keys[0]",
        ),
        // A mistake on the same line as a key (toml quotes the line).
        (
            policy("allow = { keys = [\"S3CRET-key\"], key = 1 }"),
            "policies.api.allow.key",
        ),
        // tier_keys: not a table, or a tier that is not a name.
        (
            tiered("tier_keys = \"S3CRET-key\""),
            "policies.api.tier_keys",
        ),
        (
            tiered("tier_keys = { \"S3CRET-key\" = 5 }"),
            "policies.api.tier_keys",
        ),
        (
            tiered("tier_keys = { \"S3CRET-key\" = [\"pro\"] }"),
            "policies.api.tier_keys",
        ),
        // A URL in a field that is not a URL.
        (
            format!("default_policy = \"redis://u:S3CRET@h:1\"\n{}", policy("")),
            "default_policy",
        ),
    ]
}

/// Configurations that read but do not build, with a secret in the error.
fn unbuildable() -> Vec<(String, &'static str)> {
    let policy = "[policies.api]\nquotas = [\"100/min\"]\n";
    vec![
        (
            format!("[redis]\nurl = \"redis://u:S3CRET@h:notaport\"\n{policy}"),
            "redis.url",
        ),
        (
            format!("[redis]\nurl = \"redis://h:1\"\nprefix = \"redis://u:S3CRET@h:1\"\n{policy}"),
            "redis.prefix",
        ),
        (
            format!("{policy}[[routes]]\npath = \"redis://u:S3CRET@h:1\"\npolicy = \"api\"\n"),
            "routes[0].path",
        ),
        (
            format!("exempt = [\"/x\", \"redis://u:S3CRET@h:1\"]\n{policy}"),
            "exempt[1]",
        ),
        (
            format!("{policy}[[routes]]\npath = \"/:u:S3CRET@h\"\npolicy = \"api\"\n"),
            "routes[0].path",
        ),
    ]
}

/// Panics if `shown` (what `what` printed) holds a secret.
#[track_caller]
fn assert_hidden(what: &str, shown: &str) {
    assert!(
        !shown.contains(SECRET) && !shown.contains("753123"),
        "{what} shows a secret: {shown}"
    );
}

#[track_caller]
fn assert_error_hidden(what: &str, error: &ConfigError, path: &str) {
    let (display, debug) = (error.to_string(), format!("{error:?}"));
    assert_hidden(&format!("{what}: Display"), &display);
    assert_hidden(&format!("{what}: Debug"), &debug);
    assert!(
        display.starts_with(&format!("{path}: ")),
        "{what}: the error no longer names {path}: {display}"
    );
}

#[test]
fn debug_of_a_config_hides_api_keys_and_passwords() {
    let table: toml::Table = VALID.parse().unwrap();
    let config = Config::from_deserializer(table).unwrap();
    let shown = format!("{config:?} {config:#?}");
    assert_hidden("Debug of Config", &shown);
    // What is not secret still shows.
    for visible in ["10.0.0.0/8", "x-api-key", "pro", "cache", "10.0.0.1:26379"] {
        assert!(shown.contains(visible), "{visible} missing from {shown}");
    }
    // And the keys are really there: the built layer knows them.
    config.build().unwrap();
}

#[test]
fn configuration_errors_never_quote_a_secret() {
    for (text, path) in invalid() {
        // The documented way: a `toml::Table` first.
        let table: toml::Table = text.parse().unwrap();
        let error = Config::from_deserializer(table).expect_err(&text);
        assert_error_hidden(&format!("table {text:?}"), &error, path);
        // toml straight from the text: its errors quote the line at fault.
        let direct = toml::Deserializer::parse(&text).unwrap();
        let error = Config::from_deserializer(direct).expect_err(&text);
        assert_error_hidden(&format!("toml {text:?}"), &error, path);
        // JSON.
        let json = serde_json::to_value(text.parse::<toml::Table>().unwrap()).unwrap();
        let error = Config::from_deserializer(json).expect_err(&text);
        assert_error_hidden(&format!("json {text:?}"), &error, path);
    }
}

#[test]
fn build_errors_never_quote_a_secret() {
    for (text, path) in unbuildable() {
        let config = Config::from_deserializer(text.parse::<toml::Table>().unwrap()).unwrap();
        let error = config.build().expect_err(&text);
        assert_error_hidden(&format!("build {text:?}"), &error, path);
    }
}

/// `Config` as a section of an application's configuration: the errors are
/// the application's deserializer's, made from what `Config`'s fields say.
#[test]
fn a_config_section_never_quotes_a_secret() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct App {
        limits: Config,
    }
    for (text, _) in invalid() {
        // Only the mistakes `Config`'s own fields see (the others are
        // checks of `from_deserializer` and `build`).
        let section: toml::Table = text.parse().unwrap();
        let mut app = toml::Table::new();
        app.insert("limits".to_owned(), section.into());
        if let Err(error) = app.try_into::<App>() {
            assert_hidden(&format!("section {text:?}"), &error.to_string());
            assert_hidden(&format!("section {text:?}"), &format!("{error:?}"));
        }
    }
    let ok: toml::Table = VALID.parse().unwrap();
    let mut app = toml::Table::new();
    app.insert("limits".to_owned(), ok.into());
    let app: App = app.try_into().unwrap();
    assert_hidden("Debug of a section", &format!("{app:?}"));
}
