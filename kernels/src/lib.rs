//! hexec's kernel library.
//!
//! A [`Kernel`] is a named unit of work with a [`Signature`] (its operands, each with an
//! element type and an [`Access`] mode, and its scalar parameters) and one or more
//! implementations. This crate holds the CPU implementations, which run over typed slices
//! handed out by a [`CpuContext`], and their GPU implementations (WGSL, see [`gpu`]). The
//! dense CPU routines ([`dense`]: GEMM and the Cholesky tile operations) are faer's, which
//! picks its SIMD instruction set at run time.
//!
//! The crate knows nothing about scheduling: the executor (`hexec`) builds a
//! [`CpuContext`] for each task from its data store and calls the kernel.
//!
//! ```
//! use hexec_kernels::{builtin, KernelRegistry};
//! let registry = KernelRegistry::with_builtins();
//! assert!(registry.get("axpy").is_some());
//! assert_eq!(builtin::noop().name(), "noop");
//! ```

#![warn(missing_docs)]

mod context;
pub mod gpu;
mod kernel;
mod registry;
mod types;

pub mod builtin;
pub mod dense;
pub mod expr;
pub mod linalg;
pub mod tiles;

pub use context::{CpuContext, RawOperand};
pub use gpu::{Binding, GpuDims, GpuImpl, GpuPass};
pub use kernel::{panic_message, CpuFn, Kernel, KernelError, OperandSpec, Signature};
pub use registry::{KernelRegistry, RegistryError};
pub use tiles::Scalar;
pub use types::{Access, ElemType, Element};
