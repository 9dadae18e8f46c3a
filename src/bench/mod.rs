//! Benchmarks shared by `hexec bench` and the criterion benches in `benches/`.

pub mod gpu;
pub mod kernels;
pub mod memory;
pub mod overhead;
pub mod schedule;
pub mod soak;
