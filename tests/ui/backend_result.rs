// `RedisBackend::new` returns a `Result`: the error must point at the `?`.
use tower_redis_ratelimit::{Policy, RateLimitLayer, RedisBackend};

fn main() {
    let _ = RateLimitLayer::builder()
        .backend(RedisBackend::new("redis://127.0.0.1:6379"))
        .default_policy(Policy::default_api())
        .build();
}
