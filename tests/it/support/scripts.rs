//! The crate's Lua scripts as Redis runs them (each source file with the
//! shared parts the crate prepends or appends), for tests that load them
//! themselves or look for them in Redis' script cache.

use tower_redis_ratelimit::Algorithm;

/// Each algorithm's check and peek scripts, as shipped, and the letter that
/// tags its keys.
pub fn shipped(algorithm: Algorithm) -> (&'static str, &'static str, char) {
    match algorithm {
        Algorithm::SlidingLog => (
            concat!(
                include_str!("../../../src/algorithm/sliding_log_read.lua"),
                include_str!("../../../src/algorithm/sliding_log.lua")
            ),
            concat!(
                include_str!("../../../src/algorithm/sliding_log_read.lua"),
                include_str!("../../../src/algorithm/sliding_log_peek.lua")
            ),
            'w',
        ),
        Algorithm::SlidingWindow => (
            concat!(
                include_str!("../../../src/algorithm/sliding_window.lua"),
                include_str!("../../../src/algorithm/state_main.lua")
            ),
            include_str!("../../../src/algorithm/sliding_window_peek.lua"),
            'c',
        ),
        Algorithm::Gcra => (
            concat!(
                include_str!("../../../src/algorithm/gcra.lua"),
                include_str!("../../../src/algorithm/state_main.lua")
            ),
            include_str!("../../../src/algorithm/gcra_peek.lua"),
            'g',
        ),
        other => panic!("no scripts listed for {other:?}"),
    }
}

/// Each algorithm's refund script, as shipped.
pub fn shipped_refund(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::SlidingLog => concat!(
            include_str!("../../../src/algorithm/sliding_log_read.lua"),
            include_str!("../../../src/algorithm/sliding_log_refund.lua")
        ),
        Algorithm::SlidingWindow => concat!(
            include_str!("../../../src/algorithm/sliding_window.lua"),
            include_str!("../../../src/algorithm/sliding_window_refund.lua")
        ),
        Algorithm::Gcra => include_str!("../../../src/algorithm/gcra_refund.lua"),
        other => panic!("no refund script listed for {other:?}"),
    }
}

/// Each algorithm's charge script, as shipped.
pub fn shipped_charge(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::SlidingLog => concat!(
            include_str!("../../../src/algorithm/sliding_log_read.lua"),
            include_str!("../../../src/algorithm/sliding_log_charge.lua")
        ),
        Algorithm::SlidingWindow => concat!(
            include_str!("../../../src/algorithm/sliding_window.lua"),
            include_str!("../../../src/algorithm/sliding_window_charge.lua")
        ),
        Algorithm::Gcra => concat!(
            include_str!("../../../src/algorithm/gcra.lua"),
            include_str!("../../../src/algorithm/gcra_charge.lua")
        ),
        other => panic!("no charge script listed for {other:?}"),
    }
}
