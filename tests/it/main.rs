//! The integration tests, in one binary: one module per area (each was its
//! own test binary once), sharing `support` (throwaway Redis servers and
//! clusters, load, logs, web clients), `recorded` and `scrape` (metrics), and
//! the example apps of `examples/common` that several modules serve.
//!
//! Tests of every module run in parallel in one process. Tests that read the
//! process-wide log capture hold its guard (`support::logs::capture_logs`);
//! tests that measure time or load a machine take `support::heavy()` (or
//! `support::loading()` if they only count) and live
//! under `under_load`, which sorts last so that they run after the light
//! tests (libtest starts tests in name order).

#[cfg(feature = "test-util")]
mod charges;
mod support;

#[cfg(feature = "metrics")]
mod recorded;
mod scrape;

#[path = "../../examples/common/hyper_app.rs"]
#[allow(dead_code)]
mod hyper_app;

#[cfg(feature = "tonic")]
#[path = "../../examples/common/greeter.rs"]
#[allow(dead_code)]
mod greeter;

#[cfg(feature = "serde")]
#[path = "../../examples/common/config.rs"]
#[allow(dead_code)]
mod example_config;

mod access_lists;
mod admin;
mod axum_routes;
mod batching;
mod blocked_cache;
#[cfg(feature = "cluster")]
mod cluster;
mod concurrency;
#[cfg(feature = "serde")]
mod config;
// The memory backend on `clock::FakeClock` (feature `test-util`) is the
// model these two suites compare Redis with.
#[cfg(feature = "test-util")]
mod conformance;
mod e2e_axum;
mod examples;
mod failure;
#[cfg(feature = "tonic")]
mod grpc_tonic;
mod hyper_server;
mod inspect_example;
mod log_privacy;
mod max_cost;
#[cfg(feature = "metrics")]
mod metrics;
mod missing_identity;
#[cfg(feature = "tonic")]
mod missing_identity_tonic;
mod nested_layers;
#[cfg(feature = "test-util")]
mod proptests;
mod redis_keys;
mod refund_after_response;
mod refunds;
mod reset_instances;
mod route_config_errors;
mod route_differential;
mod security_dot_segments;
mod security_keys;
mod security_path_spellings;
mod security_spoofing;
mod shadow;
mod tiers;
#[cfg(feature = "tls")]
mod tls;
mod under_load;
