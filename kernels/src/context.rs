//! The view a CPU kernel gets of its task: typed operand slices and scalar parameters.
//!
//! Invariants:
//! - A [`RawOperand`] is only built through its `unsafe` constructor, whose caller (the
//!   runtime) promises that the memory is valid, aligned for its element type and not
//!   written by anyone else for the life of the context, and not read by anyone else when the
//!   access writes. Slices are only ever made of the operand's own element type, so that
//!   alignment is all they need (a datum made from a `Vec<u8>` may be 1-aligned).
//! - A [`CpuContext`] hands out at most one `&mut` slice per operand and no shared slice of
//!   an operand that is mutably borrowed; it tracks this per operand, so distinct
//!   operands (which the graph guarantees are distinct data when one of them is written) can
//!   be borrowed at the same time, as `axpy` needs.

use std::cell::Cell;
use std::marker::PhantomData;

use crate::kernel::KernelError;
use crate::types::{Access, ElemType, Element};

/// One operand of a task as the runtime hands it over: a raw byte range plus its type and
/// access mode. A *virtual* operand (a datum that only has a size, as in replayed workflow
/// graphs) has no storage.
#[derive(Clone, Copy, Debug)]
pub struct RawOperand<'a> {
    ptr: *mut u8,
    len_bytes: usize,
    elem: ElemType,
    access: Access,
    _life: PhantomData<&'a mut [u8]>,
}

impl<'a> RawOperand<'a> {
    /// An operand backed by memory.
    ///
    /// # Safety
    /// `ptr` must be valid for reads (and for writes when `access.writes()`) of `len_bytes`
    /// bytes for `'a`, aligned for `elem`'s Rust type, and for `'a` no one else may write it,
    /// nor read it when `access.writes()`.
    pub unsafe fn new(ptr: *mut u8, len_bytes: usize, elem: ElemType, access: Access) -> Self {
        RawOperand {
            ptr,
            len_bytes,
            elem,
            access,
            _life: PhantomData,
        }
    }

    /// An operand with a size but no storage: kernels that touch its contents get an error.
    pub fn virtual_(len_bytes: usize, access: Access) -> Self {
        RawOperand {
            ptr: std::ptr::null_mut(),
            len_bytes,
            elem: ElemType::U8,
            access,
            _life: PhantomData,
        }
    }

    /// Size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    /// Element type.
    pub fn elem(&self) -> ElemType {
        self.elem
    }

    /// Access mode.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Whether this operand has storage.
    pub fn is_virtual(&self) -> bool {
        self.ptr.is_null()
    }

    /// The operand's bytes, for an executor that saves and restores them around a kernel
    /// (to retry a failed attempt from the same inputs); null when virtual. Reading or
    /// writing through it is subject to the same contract as [`RawOperand::new`].
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

/// Which operands are borrowed, and how.
enum Borrows {
    /// Up to 64 operands, the common case: two bit sets, no allocation.
    Small { shared: Cell<u64>, exclusive: Cell<u64> },
    /// More operands (a merge of thousands of inputs): one state per operand.
    Large(Box<[Cell<u8>]>),
}

const FREE: u8 = 0;
const SHARED: u8 = 1;
const EXCLUSIVE: u8 = 2;

impl Borrows {
    fn state(&self, i: usize) -> u8 {
        match self {
            Borrows::Small { shared, exclusive } => {
                if exclusive.get() >> i & 1 == 1 {
                    EXCLUSIVE
                } else if shared.get() >> i & 1 == 1 {
                    SHARED
                } else {
                    FREE
                }
            }
            Borrows::Large(v) => v[i].get(),
        }
    }

    fn mark(&self, i: usize, state: u8) {
        match self {
            Borrows::Small { shared, exclusive } => {
                let cell = if state == EXCLUSIVE { exclusive } else { shared };
                cell.set(cell.get() | 1 << i);
            }
            Borrows::Large(v) => v[i].set(state),
        }
    }
}

/// What a CPU kernel sees of the task it runs.
pub struct CpuContext<'a> {
    operands: &'a [RawOperand<'a>],
    params: &'a [f64],
    cores: u32,
    borrows: Borrows,
    cancelled: Option<&'a (dyn Fn() -> bool + Sync)>,
    /// The kernel asked [`CpuContext::cancelled`] and was told yes.
    saw_cancellation: Cell<bool>,
}

impl<'a> CpuContext<'a> {
    /// Builds a context over the task's operands and parameters.
    #[inline]
    pub fn new(operands: &'a [RawOperand<'a>], params: &'a [f64], cores: u32) -> Self {
        let borrows = if operands.len() <= 64 {
            Borrows::Small {
                shared: Cell::new(0),
                exclusive: Cell::new(0),
            }
        } else {
            Borrows::Large((0..operands.len()).map(|_| Cell::new(FREE)).collect())
        };
        CpuContext {
            operands,
            params,
            cores,
            borrows,
            cancelled: None,
            saw_cancellation: Cell::new(false),
        }
    }

    /// Lets the kernel ask whether its result is still wanted ([`CpuContext::cancelled`]).
    #[inline]
    pub fn with_cancellation(mut self, cancelled: &'a (dyn Fn() -> bool + Sync)) -> Self {
        self.cancelled = Some(cancelled);
        self
    }

    /// Whether the result of this attempt is no longer wanted: another attempt of the same
    /// task finished first (speculative re-execution), or the run was stopped. A long kernel
    /// may poll this and return early; whatever it returns then is ignored. Kernels that never
    /// poll it are simply waited for.
    #[inline]
    pub fn cancelled(&self) -> bool {
        let yes = self.cancelled.is_some_and(|f| f());
        if yes {
            self.saw_cancellation.set(true);
        }
        yes
    }

    /// Whether the kernel was told it was cancelled: what it returned may be partial.
    #[inline]
    pub fn saw_cancellation(&self) -> bool {
        self.saw_cancellation.get()
    }

    /// Number of operands.
    pub fn num_operands(&self) -> usize {
        self.operands.len()
    }

    /// The raw description of operand `i`.
    pub fn operand(&self, i: usize) -> Result<&RawOperand<'a>, KernelError> {
        self.operands.get(i).ok_or(KernelError::MissingOperand {
            index: i,
            count: self.operands.len(),
        })
    }

    /// Scalar parameters, in the order the task gave them.
    pub fn params(&self) -> &[f64] {
        self.params
    }

    /// Parameter `i`, or an error naming the missing index.
    pub fn param(&self, i: usize) -> Result<f64, KernelError> {
        self.params.get(i).copied().ok_or(KernelError::MissingParam {
            index: i,
            count: self.params.len(),
        })
    }

    /// Cores granted to this task (its resource request).
    pub fn cores(&self) -> u32 {
        self.cores
    }

    fn checked<T: Element>(&self, i: usize) -> Result<&RawOperand<'a>, KernelError> {
        let op = self.operand(i)?;
        if op.is_virtual() {
            return Err(KernelError::VirtualOperand { index: i });
        }
        if op.elem != T::ELEM {
            return Err(KernelError::TypeMismatch {
                index: i,
                expected: T::ELEM,
                actual: op.elem,
            });
        }
        Ok(op)
    }

    /// Operand `i` as a shared slice. The operand must be readable (`r` or `rw`) and not
    /// mutably borrowed already.
    pub fn read<T: Element>(&self, i: usize) -> Result<&'a [T], KernelError> {
        let op = self.checked::<T>(i)?;
        if !op.access.reads() {
            return Err(KernelError::AccessMismatch {
                index: i,
                wanted: Access::Read,
                declared: op.access,
            });
        }
        if self.borrows.state(i) == EXCLUSIVE {
            return Err(KernelError::AlreadyBorrowed { index: i });
        }
        self.borrows.mark(i, SHARED);
        // SAFETY: the constructor's contract makes `ptr` valid and aligned for `op.elem`'s
        // type (which is `T`, checked above) for `len_bytes` for 'a with no concurrent writer; the bit checks above ensure no `&mut` to this
        // operand is live from this context. `T::ELEM == op.elem` and every element type's
        // size divides the length (the runtime allocates whole elements), and `T: Pod`
        // accepts any bit pattern.
        Ok(unsafe { std::slice::from_raw_parts(op.ptr as *const T, op.len_bytes / std::mem::size_of::<T>()) })
    }

    /// Operand `i` as a mutable slice. The operand must be writable (`w` or `rw`) and not
    /// borrowed already, shared or mutably.
    #[allow(clippy::mut_from_ref)] // exclusivity is tracked per operand at run time
    pub fn write<T: Element>(&self, i: usize) -> Result<&'a mut [T], KernelError> {
        let op = self.checked::<T>(i)?;
        if !op.access.writes() {
            return Err(KernelError::AccessMismatch {
                index: i,
                wanted: Access::Write,
                declared: op.access,
            });
        }
        if self.borrows.state(i) != FREE {
            return Err(KernelError::AlreadyBorrowed { index: i });
        }
        self.borrows.mark(i, EXCLUSIVE);
        // SAFETY: as in `read`, plus: the constructor's contract excludes every other reader
        // and writer for a writing access, and the bit checks make this the only borrow of
        // operand i from this context. Distinct operands never alias when one is written
        // (the graph rejects a task that names one datum twice with a write).
        Ok(unsafe { std::slice::from_raw_parts_mut(op.ptr as *mut T, op.len_bytes / std::mem::size_of::<T>()) })
    }
}
