//! Compile-fail tests of the kernel-writing API's soundness (see `src/context.rs`, module
//! invariants): what safe code must not be able to write. Each `tests/ui/*.rs` must fail to
//! compile with the error in its `.stderr` file. To regenerate those after a compiler
//! upgrade changes the wording: `TRYBUILD=overwrite cargo test -p hexec-kernels --test
//! compile_fail`, then read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
