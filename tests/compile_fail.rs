//! The compiler's messages for the mistakes users make most (tests/ui/*.rs,
//! expected output in the `.stderr` files next to them), and closures that
//! must compile without type annotations (tests/ui/pass).
//!
//! The messages depend on the compiler version: the `.stderr` files are
//! Rust 1.95's. After a toolchain change, regenerate them with
//! `TRYBUILD=overwrite cargo test --all-features --test compile_fail` and
//! review the diff. The messages also quote the crate's own impls (e.g. the
//! list of `Backend` implementors): adding one changes them the same way.

#[test]
fn diagnostics() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
