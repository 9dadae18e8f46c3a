//! The view a CPU kernel gets of its task: typed operand slices and scalar parameters.
//!
//! # Invariants (what makes the safe API sound)
//!
//! 1. **A [`RawOperand`] is a unique token for its memory.** It is only built through the
//!    `unsafe` [`RawOperand::new`], whose caller (the runtime, a test, a benchmark) promises
//!    that for the operand's lifetime `'a` the memory is valid for `len_bytes` bytes (reads,
//!    and writes when the access writes), aligned for its element type, not written by anyone
//!    else, and not read by anyone else when the access writes. It is neither `Copy` nor
//!    `Clone`, so safe code cannot duplicate a writing operand (virtual operands, which have no
//!    storage, are the only ones built safely).
//! 2. **One context at a time per set of operands.** [`CpuContext::new`] is safe but takes the
//!    operands by *exclusive* borrow (`&mut [RawOperand]`), held for the life of the context.
//!    Safe code therefore cannot build a second context over the same operands while one
//!    lives, and a kernel, which only sees `&CpuContext` and `&RawOperand`, cannot build one
//!    over its task's operands at all.
//! 3. **Slices borrow from the context.** [`CpuContext::read`] and [`CpuContext::write`] return
//!    slices that live no longer than the `&self` borrow they came from, so no slice outlives
//!    the borrow tracking of invariant 4, and none outlives the exclusive borrow of invariant 2.
//! 4. **Per-operand borrow tracking.** A context hands out at most one `&mut` slice per operand
//!    and no shared slice of an operand that is mutably borrowed (refused with
//!    [`KernelError::AlreadyBorrowed`]). Borrows are never given back during the context's
//!    life (no guard to drop), which keeps the check to two bit operations. Distinct operands
//!    (which the graph guarantees are distinct data when one of them is written) can be
//!    borrowed at the same time, as `axpy` needs (read operand 0, write operand 1).
//!    `CpuContext` is not `Sync` (the tracking uses `Cell`s), so the tracking is never raced.
//! 5. **Slices are only made of the operand's own element type.** [`Element`] is sealed (only
//!    hexec's seven element types implement it) and its tag must equal the operand's, so the
//!    alignment promised in invariant 1 is all a slice needs (a datum made from a `Vec<u8>`
//!    may be 1-aligned), and `T: Pod` accepts any bit pattern.
//!
//! Together: from safe code, two live slices of one operand are either both shared, or they
//! do not exist. The one `unsafe` step is [`RawOperand::new`], and its callers state why its
//! contract holds (`// SAFETY:` at each call).

use std::cell::Cell;
use std::marker::PhantomData;

use crate::kernel::KernelError;
use crate::types::{Access, ElemType, Element};

/// One operand of a task as the runtime hands it over: a raw byte range plus its type and
/// access mode. A *virtual* operand (a datum that only has a size, as in replayed workflow
/// graphs) has no storage.
///
/// Deliberately neither `Copy` nor `Clone`: an operand that writes is the one handle to its
/// memory (module invariant 1), and a kernel must not be able to duplicate it to build a
/// second [`CpuContext`].
#[derive(Debug)]
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
    /// For as long as the operand is used (through a [`CpuContext`] built over it, or through
    /// [`RawOperand::as_ptr`]), which is at most `'a`:
    /// - `ptr` must be valid for reads of `len_bytes` bytes, and for writes when
    ///   `access.writes()`, and aligned for `elem`'s Rust type;
    /// - no one else may write that memory, nor read it when `access.writes()` (in particular,
    ///   no other `RawOperand` over overlapping memory may be used meanwhile unless neither
    ///   of the two writes).
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
///
/// Built over an exclusive borrow of the task's operands (module invariant 2); kernels get it
/// as `&CpuContext` and borrow typed slices from it, several operands at once:
///
/// ```
/// # use hexec_kernels::{Access, CpuContext, ElemType, KernelError, RawOperand};
/// let (mut x, mut y) = (vec![1.0f32, 2.0], vec![10.0f32, 20.0]);
/// // SAFETY: `x` and `y` are distinct, live, exclusively borrowed Vec<f32>s that outlive
/// // the operands.
/// let mut ops = unsafe {
///     [
///         RawOperand::new(x.as_mut_ptr().cast(), 8, ElemType::F32, Access::Read),
///         RawOperand::new(y.as_mut_ptr().cast(), 8, ElemType::F32, Access::ReadWrite),
///     ]
/// };
/// let ctx = CpuContext::new(&mut ops, &[2.0], 1);
/// let (a, xs, ys) = (ctx.param(0)?, ctx.read::<f32>(0)?, ctx.write::<f32>(1)?);
/// ys.iter_mut().zip(xs).for_each(|(y, x)| *y += a as f32 * x);
/// // The same operand twice, mutably or mutably and shared, is refused:
/// assert!(matches!(ctx.write::<f32>(1), Err(KernelError::AlreadyBorrowed { index: 1 })));
/// assert!(matches!(ctx.read::<f32>(1), Err(KernelError::AlreadyBorrowed { index: 1 })));
/// drop(ctx);
/// assert_eq!(y, [12.0, 24.0]);
/// # Ok::<(), KernelError>(())
/// ```
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
    ///
    /// Safe because the operands are borrowed exclusively for the context's life: no other
    /// context over them can exist meanwhile, and whatever promised their memory to them
    /// (the `unsafe` [`RawOperand::new`]) promised it to them alone (module invariants).
    #[inline]
    pub fn new<'b: 'a>(operands: &'a mut [RawOperand<'b>], params: &'a [f64], cores: u32) -> Self {
        // Shared from here on: the context never changes the operands, and a shared slice of
        // `RawOperand<'b>` may be seen as one of `RawOperand<'a>` (covariance); the exclusive
        // borrow of the caller's slice still lasts for `'a`.
        let operands: &'a [RawOperand<'a>] = operands;
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
    ///
    /// The slice borrows from the context (module invariant 3).
    pub fn read<T: Element>(&self, i: usize) -> Result<&[T], KernelError> {
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
        // SAFETY: `RawOperand::new`'s contract makes `ptr` (not null: not virtual, checked)
        // valid for reads of `len_bytes` bytes and aligned for `op.elem`'s type, which is `T`
        // (checked above; `Element` is sealed, so `T` is that very type), with no writer
        // outside this context while the operand is used (invariant 1); the context holds the
        // operands exclusively (invariant 2) and the slice borrows `self` (invariant 3); the
        // state check above means no `&mut` slice of operand `i` exists (invariant 4). The
        // length rounds down, so the slice stays within `len_bytes` (at most `isize::MAX`, one
        // allocation); `T: Pod` accepts any bit pattern.
        Ok(unsafe { std::slice::from_raw_parts(op.ptr as *const T, op.len_bytes / std::mem::size_of::<T>()) })
    }

    /// Operand `i` as a mutable slice. The operand must be writable (`w` or `rw`) and not
    /// borrowed already, shared or mutably.
    ///
    /// The slice borrows from the context (module invariant 3). Takes `&self`, not `&mut
    /// self`, so that a kernel may hold slices of several operands at once; a second borrow
    /// of the same operand is refused at run time with [`KernelError::AlreadyBorrowed`].
    #[allow(clippy::mut_from_ref)] // exclusivity is tracked per operand at run time
    pub fn write<T: Element>(&self, i: usize) -> Result<&mut [T], KernelError> {
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
        // SAFETY: as in `read`, plus: the memory is valid for writes and, the access writing,
        // no one outside this context reads or writes it while the operand is used, not even
        // through another operand of this context (`RawOperand::new`'s contract: the graph
        // rejects a task that names one datum twice with a write); the state check above
        // means no other slice of operand `i`, shared or not, exists (invariant 4).
        Ok(unsafe { std::slice::from_raw_parts_mut(op.ptr as *mut T, op.len_bytes / std::mem::size_of::<T>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(v: &mut [f32], access: Access) -> RawOperand<'_> {
        // SAFETY: `v` is a live f32 slice, exclusively borrowed for the operand's lifetime.
        unsafe { RawOperand::new(v.as_mut_ptr().cast(), std::mem::size_of_val(v), ElemType::F32, access) }
    }

    #[test]
    fn a_second_borrow_of_one_operand_is_already_borrowed() {
        let mut y = vec![1.0f32; 4];
        let mut ops = [op(&mut y, Access::ReadWrite)];

        // write(0) twice.
        let ctx = CpuContext::new(&mut ops, &[], 1);
        let w = ctx.write::<f32>(0).unwrap();
        let again = ctx.write::<f32>(0);
        assert!(matches!(again, Err(KernelError::AlreadyBorrowed { index: 0 })));
        assert_eq!(
            again.unwrap_err().to_string(),
            "operand 0 is already borrowed in a conflicting way"
        );
        w[0] = 2.0;
        drop(ctx);

        // read(0), then write(0): a shared view blocks the mutable one.
        let ctx = CpuContext::new(&mut ops, &[], 1);
        let r = ctx.read::<f32>(0).unwrap();
        assert!(matches!(
            ctx.write::<f32>(0),
            Err(KernelError::AlreadyBorrowed { index: 0 })
        ));
        // More shared views are fine.
        assert_eq!(ctx.read::<f32>(0).unwrap(), r);
        assert_eq!(r[0], 2.0);
        drop(ctx);

        // write(0), then read(0).
        let ctx = CpuContext::new(&mut ops, &[], 1);
        let _w = ctx.write::<f32>(0).unwrap();
        assert!(matches!(
            ctx.read::<f32>(0),
            Err(KernelError::AlreadyBorrowed { index: 0 })
        ));
    }

    #[test]
    fn distinct_operands_borrow_together() {
        // What axpy does: read operand 0 while writing operand 1.
        let (mut x, mut y) = (vec![1.0f32, 2.0], vec![10.0f32, 20.0]);
        let mut ops = [op(&mut x, Access::Read), op(&mut y, Access::ReadWrite)];
        let ctx = CpuContext::new(&mut ops, &[], 1);
        let (xs, ys) = (ctx.read::<f32>(0).unwrap(), ctx.write::<f32>(1).unwrap());
        ys.iter_mut().zip(xs).for_each(|(y, x)| *y += x);
        drop(ctx);
        assert_eq!(y, [11.0, 22.0]);
    }
}
