//! Element types and access modes: the vocabulary shared by kernels, graphs and the runtime.

use std::fmt;

/// The element type of a datum. Data are stored as bytes aligned to 8, and viewed as slices
/// of one of these types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ElemType {
    /// `u8`.
    U8,
    /// `u32`.
    U32,
    /// `i32`.
    I32,
    /// `u64`.
    U64,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
}

impl ElemType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            ElemType::U8 => 1,
            ElemType::U32 | ElemType::I32 | ElemType::F32 => 4,
            ElemType::U64 | ElemType::I64 | ElemType::F64 => 8,
        }
    }

    /// The lower-case name used in graph files (`"f32"`, `"u64"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            ElemType::U8 => "u8",
            ElemType::U32 => "u32",
            ElemType::I32 => "i32",
            ElemType::U64 => "u64",
            ElemType::I64 => "i64",
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
        }
    }

    /// Parses the name written by [`ElemType::name`].
    pub fn parse(name: &str) -> Option<ElemType> {
        Some(match name {
            "u8" => ElemType::U8,
            "u32" => ElemType::U32,
            "i32" => ElemType::I32,
            "u64" => ElemType::U64,
            "i64" => ElemType::I64,
            "f32" => ElemType::F32,
            "f64" => ElemType::F64,
            _ => return None,
        })
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A plain-old-data element type that hexec can store and hand to kernels.
///
/// Sealed: implemented for exactly the Rust types that [`ElemType`] names, so that a kernel's
/// `ctx.read::<T>(i)` with `T::ELEM` equal to the operand's tag views the memory as the very
/// type it was allocated and aligned for (an outside implementation could claim `ELEM = U8`
/// for a larger, more aligned type and get a misaligned slice).
pub trait Element: bytemuck::Pod + Send + Sync + 'static + sealed::Sealed {
    /// The runtime tag of this type.
    const ELEM: ElemType;
}

mod sealed {
    /// Not nameable outside the crate: only the impls below exist.
    pub trait Sealed {}
}

macro_rules! element {
    ($($t:ty => $e:ident),*) => { $(
        impl sealed::Sealed for $t {}
        impl Element for $t { const ELEM: ElemType = ElemType::$e; }
    )* };
}
element!(u8 => U8, u32 => U32, i32 => I32, u64 => U64, i64 => I64, f32 => F32, f64 => F64);

/// How a task uses a datum. Dependencies are inferred from the order of accesses: a reader
/// waits for the last writer, a writer waits for the last writer and every reader since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read only.
    Read,
    /// Written whole, not read.
    Write,
    /// Read and written.
    ReadWrite,
}

impl Access {
    /// Whether the task observes the datum's previous contents.
    pub const fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    /// Whether the task changes the datum.
    pub const fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }

    /// The short form used in graph files: `r`, `w`, `rw`.
    pub const fn short(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::Write => "w",
            Access::ReadWrite => "rw",
        }
    }

    /// Parses `r`, `w`, `rw` (and the long forms `read`, `write`, `read_write`).
    pub fn parse(s: &str) -> Option<Access> {
        Some(match s {
            "r" | "read" => Access::Read,
            "w" | "write" => Access::Write,
            "rw" | "read_write" | "readwrite" => Access::ReadWrite,
            _ => return None,
        })
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}
