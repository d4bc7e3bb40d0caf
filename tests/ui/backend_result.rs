// `RedisBackend::new` returns a `Result`: the error must point at the `?`.
// The compiler must say (each `//~ ` line, see tests/compile_fail.rs):
//~ `Result<RedisBackend, ConfigError>` is not a rate-limit backend
//~ expected a `Backend`
//~ use `RedisBackend::new(url)?` (it returns a `Result`: mind the `?`), `RedisBackend::builder(url)...build()?`, or `MemoryBackend::new()`
use tower_redis_ratelimit::{Policy, RateLimitLayer, RedisBackend};

fn main() {
    let _ = RateLimitLayer::builder()
        .backend(RedisBackend::new("redis://127.0.0.1:6379"))
        .default_policy(Policy::default_api())
        .build();
}
