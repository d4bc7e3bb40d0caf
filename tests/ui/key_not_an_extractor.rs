// A header name is not a key extractor: the error must name the built-ins.
// The compiler must say (each `//~ ` line, see tests/compile_fail.rs):
//~ `&str` is not a key extractor
//~ expected a `KeyExtractor`
//~ use a built-in extractor (`key::PeerIp::new()`, `key::ClientIp::new()`, `key::Header::new("x-api-key")`, `key::Global`), or a closure returning `Option<Key>` through `Policy::key_fn(|parts| ..)`
use tower_redis_ratelimit::Policy;

fn main() {
    let _ = Policy::default_api().key("x-api-key");
}
