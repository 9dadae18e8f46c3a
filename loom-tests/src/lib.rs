//! hexec's park/wake protocol (`src/runtime/sleep.rs`, compiled here as it is) under the loom
//! model checker: every interleaving of workers announcing, searching again, parking, and of
//! pushers publishing and waking, with parks that never time out. A lost wake-up would leave
//! a worker parked forever, which loom reports as a deadlock.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p hexec-loom-tests --release` (what
//! `scripts/test.sh` does, in a target directory of its own); without `--cfg loom` this crate
//! is empty.

#![cfg(loom)]

/// What `sleep.rs` names of hexec's topology.
pub mod topology {
    /// A worker's index.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct WorkerId(pub u32);

    impl WorkerId {
        /// As an index.
        pub fn index(self) -> usize {
            self.0 as usize
        }
    }
}

#[path = "../../src/runtime/sleep.rs"]
#[allow(dead_code)]
mod sleep;

#[cfg(test)]
mod park_wake;
