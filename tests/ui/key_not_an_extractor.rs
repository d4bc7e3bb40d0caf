// A header name is not a key extractor: the error must name the built-ins.
use tower_redis_ratelimit::Policy;

fn main() {
    let _ = Policy::default_api().key("x-api-key");
}
