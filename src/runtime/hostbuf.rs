//! Host buffers: the bytes of a datum in host memory, owned with the layout they were
//! allocated with, so that a user's `Vec<T>` can become a datum (and come back) without a
//! copy.
//!
//! Invariants:
//! - a [`HostBuf`] owns `layout.size()` bytes at `ptr` allocated by the global allocator with
//!   `layout` (or none when the size is zero: `ptr` is then dangling but aligned), and frees
//!   them with the same layout;
//! - its alignment is at least the alignment of the datum's element type: a buffer taken
//!   from a `Vec<T>` is aligned for `T` (the datum holds `T`s), one the store allocates gets
//!   the element type's own alignment ([`elem_align`]). Kernels view the bytes as `&[T]`,
//!   which needs nothing more; copies (GPU uploads and downloads, spill files, saved values)
//!   treat them as bytes and need no alignment at all;
//! - `len` (the datum's bytes) is at most `layout.size()`; a `Vec`'s spare capacity is kept
//!   (and freed with it) but never read.

use std::alloc::Layout;
use std::ptr::NonNull;

use hexec_kernels::{ElemType, Element};

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use std::sync::Mutex;

use crate::sync::MutexExt;

/// The alignment the store gives a buffer of `elem`s: the type's own, so that a buffer
/// handed back by `take` can become a `Vec` of that type without a copy.
pub(crate) fn elem_align(elem: ElemType) -> usize {
    match elem {
        ElemType::U8 => std::mem::align_of::<u8>(),
        ElemType::U32 => std::mem::align_of::<u32>(),
        ElemType::I32 => std::mem::align_of::<i32>(),
        ElemType::F32 => std::mem::align_of::<f32>(),
        ElemType::U64 => std::mem::align_of::<u64>(),
        ElemType::I64 => std::mem::align_of::<i64>(),
        ElemType::F64 => std::mem::align_of::<f64>(),
        // A future type: 8 is enough for every primitive element.
        #[allow(unreachable_patterns)]
        _ => 8,
    }
}

/// One host buffer (see the module invariants).
pub(crate) struct HostBuf {
    ptr: NonNull<u8>,
    /// The datum's bytes (at most `layout.size()`).
    len: usize,
    layout: Layout,
}

// SAFETY: a `HostBuf` owns its allocation exclusively, like a `Vec<u8>`; it holds no
// reference to anything else.
unsafe impl Send for HostBuf {}
// SAFETY: shared references only hand out the raw pointer and sizes; reading or writing the
// bytes is up to callers that uphold the data store's invariants.
unsafe impl Sync for HostBuf {}

impl HostBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two). Zeroed pages come from the
    /// allocator as is (`calloc`), so a large buffer costs resident memory only once used.
    pub fn zeroed(len: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(len, align).expect("a datum's size fits in isize");
        if len == 0 {
            return HostBuf {
                ptr: dangling(align),
                len,
                layout,
            };
        }
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        HostBuf { ptr, len, layout }
    }

    /// A copy of `bytes` aligned to `align`.
    pub fn copy_of(bytes: &[u8], align: usize) -> Self {
        let mut b = Self::zeroed(bytes.len(), align);
        b.bytes_mut().copy_from_slice(bytes);
        b
    }

    /// Takes `v`'s allocation as it is: no copy.
    pub fn from_vec<T: Element>(v: Vec<T>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        let (len, cap) = (std::mem::size_of_val(&v[..]), v.capacity());
        // `Layout::array::<T>(cap)` is the layout `Vec` allocated with (its documented
        // guarantee); it cannot overflow, the allocation exists.
        let layout = Layout::array::<T>(cap).expect("an existing Vec's layout");
        let ptr = NonNull::new(v.as_mut_ptr().cast::<u8>()).expect("a Vec's pointer is never null");
        if layout.size() == 0 {
            // No allocation (empty capacity): nothing to free; the pointer is dangling and
            // aligned for `T`.
            return HostBuf {
                ptr: dangling(layout.align()),
                len: 0,
                layout,
            };
        }
        HostBuf { ptr, len, layout }
    }

    /// The buffer as a `Vec<T>` of `len / size_of::<T>()` elements: its own allocation when
    /// the layout is one `Vec<T>` can own (same alignment, a whole number of `T`s), else a
    /// copy.
    pub fn into_vec<T: Element>(self) -> Vec<T> {
        let size = std::mem::size_of::<T>();
        let n = self.len / size;
        if self.layout.size() == 0 || self.layout.align() != std::mem::align_of::<T>() || self.layout.size() % size != 0
        {
            return bytemuck::pod_collect_to_vec(self.bytes());
        }
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the allocation came from the global allocator with `this.layout`, whose
        // alignment is `T`'s and whose size is `cap` whole `T`s, as `Vec::from_raw_parts`
        // requires; its first `n` elements are initialized (every byte of a buffer is, it was
        // zeroed or filled) and any bit pattern is a valid `T` (`Pod`); `ManuallyDrop` hands
        // the ownership over (it is not freed twice).
        unsafe { Vec::from_raw_parts(this.ptr.as_ptr().cast::<T>(), n, this.layout.size() / size) }
    }

    /// The first byte; aligned as the module invariants say.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The datum's bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialized bytes that this buffer owns; `&self`
        // keeps it alive, and writers through `as_ptr` are excluded by the store's invariants.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        if self.layout.size() != 0 {
            // SAFETY: the allocation came from the global allocator with this layout (module
            // invariants), and this is its only owner.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }
}

impl std::fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuf")
            .field("len", &self.len)
            .field("layout", &self.layout)
            .finish()
    }
}

/// A non-null pointer aligned to `align`, for buffers without an allocation.
fn dangling(align: usize) -> NonNull<u8> {
    // `align` is a non-zero power of two, so this address is non-null and aligned; it is
    // never read through (zero-length slices only).
    NonNull::new(std::ptr::without_provenance_mut(align)).expect("a power of two is non-zero")
}

/// A datum's host buffer as its cell holds it, with everything that says who may touch its
/// bytes: the owner (swapped under a lock), the address of its bytes mirrored for lock-free
/// readers (kernels' operands), the claim a run or a user access holds on the datum, and the
/// count of host pins. The one place in the store where bytes of a datum's buffer become
/// slices (a kernel's operands are bound from the mirrored address in `worker/operands.rs`).
///
/// Invariants:
/// - the mirror is the address of the owned buffer's bytes, or null while there is none; both
///   change together, under the owner's lock;
/// - the bytes are touched (a) by the holder of a [`UserClaim`], under the owner's lock
///   (safe: while a user holds the claim no run holds it, so no kernel has their address);
///   (b) by whoever saves them before taking the buffer out of memory with no pin held
///   ([`HostSlot::take_unpinned`], safe for a slot that counts pins: every lock-free user
///   pins first); (c) by the run holding the claim: its kernels through the mirrored address
///   while pinned, and the store's copies for them under the owner's lock
///   ([`HostSlot::with_ordered_bytes`] and friends, `unsafe`: that no kernel writes bytes
///   another access reads is the run's dependency order, which this type cannot see);
/// - a slot that counts pins ([`HostSlot::new`]'s `counts_pins`: a spillable datum) is pinned
///   under the owner's lock, so a pin and `take_unpinned` never overlap.
pub(crate) struct HostSlot {
    ptr: AtomicPtr<u8>,
    buf: Mutex<Option<HostBuf>>,
    /// Held by a run using the datum, by a user access, or for good once freed.
    claimed: AtomicBool,
    /// Host pins held now (counted only when `counts_pins`).
    pins: AtomicU32,
    counts_pins: bool,
}

impl HostSlot {
    /// A slot holding `buf` (`None`: no buffer in memory). `counts_pins`: the buffer may
    /// leave memory, so pins are counted and keep it in.
    pub fn new(buf: Option<HostBuf>, counts_pins: bool) -> Self {
        HostSlot {
            ptr: AtomicPtr::new(buf.as_ref().map_or(std::ptr::null_mut(), HostBuf::as_ptr)),
            buf: Mutex::new(buf),
            claimed: AtomicBool::new(false),
            pins: AtomicU32::new(0),
            counts_pins,
        }
    }

    /// The buffer's first byte, null while there is none (one atomic load).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.load(Ordering::Acquire)
    }

    /// Whether a buffer is in memory.
    #[inline]
    pub fn in_memory(&self) -> bool {
        !self.as_ptr().is_null()
    }

    /// Makes `new` the buffer, returning the old one.
    pub fn replace(&self, new: Option<HostBuf>) -> Option<HostBuf> {
        let mut buf = self.buf.locked();
        self.ptr.store(
            new.as_ref().map_or(std::ptr::null_mut(), HostBuf::as_ptr),
            Ordering::Release,
        );
        std::mem::replace(&mut *buf, new)
    }

    /// The buffer, taken out through an exclusive borrow (the cell's drop).
    pub fn take(&mut self) -> Option<HostBuf> {
        *self.ptr.get_mut() = std::ptr::null_mut();
        self.buf.get_mut_unpoisoned().take()
    }

    /// Claims the datum for a run (or for good, when it is freed); false if it is claimed.
    pub fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::Acquire)
    }

    /// Ends a run's claim.
    pub fn release(&self) {
        self.claimed.store(false, Ordering::Release);
    }

    /// Whether a run or a user holds the datum (or it was freed).
    pub fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// Claims the datum for a user access; `None` if it is claimed.
    pub fn claim_for_user(&self) -> Option<UserClaim<'_>> {
        self.claim().then_some(UserClaim { slot: self })
    }

    /// Pins the buffer in memory (counted in a slot that counts pins) and returns its
    /// address, null while there is none: kept valid until [`HostSlot::unpin`].
    pub fn pin(&self) -> *mut u8 {
        if !self.counts_pins {
            return self.as_ptr();
        }
        let _buf = self.buf.locked();
        self.pins.fetch_add(1, Ordering::AcqRel);
        self.as_ptr()
    }

    /// Ends a [`HostSlot::pin`].
    pub fn unpin(&self) {
        if self.counts_pins {
            self.pins.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether pins are counted (the buffer may leave memory).
    #[inline]
    pub fn counts_pins(&self) -> bool {
        self.counts_pins
    }

    /// Host pins held now (always 0 in a slot that does not count them).
    pub fn pins(&self) -> u32 {
        self.pins.load(Ordering::Acquire)
    }

    /// Takes the buffer out of memory when no pin is held (nor the owner's lock: no one is
    /// using it), after `save` has seen its first `len` bytes; `Ok(None)` and nothing done
    /// otherwise. Only for a slot that counts pins.
    pub fn take_unpinned<E>(
        &self,
        len: usize,
        save: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<Option<HostBuf>, E> {
        debug_assert!(self.counts_pins, "taking an uncounted buffer out of memory");
        let mut buf = match self.buf.try_lock() {
            Ok(b) => b,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
        };
        if !self.counts_pins || self.pins() != 0 {
            return Ok(None);
        }
        let Some(b) = buf.as_ref() else { return Ok(None) };
        // No pin is held and pins are taken under this lock: no kernel has the address now.
        save(&b.bytes()[..len])?;
        self.ptr.store(std::ptr::null_mut(), Ordering::Release);
        Ok(buf.take())
    }

    /// Calls `f` on the first `len` bytes, `None` (and `f` not called) while there is no
    /// buffer; holds the owner's lock meanwhile.
    ///
    /// # Safety
    /// The caller's run holds the claim, and its dependency order keeps every kernel from
    /// writing these bytes while `f` runs.
    pub unsafe fn with_ordered_bytes<R>(&self, len: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let buf = self.buf.locked();
        buf.as_ref().map(|b| f(&b.bytes()[..len]))
    }

    /// Calls `f` to overwrite the first `len` bytes, `None` (and `f` not called) while there
    /// is no buffer; holds the owner's lock meanwhile.
    ///
    /// # Safety
    /// As [`HostSlot::with_ordered_bytes`], and no kernel reads these bytes either.
    pub unsafe fn with_ordered_bytes_mut<R>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let mut buf = self.buf.locked();
        buf.as_mut().map(|b| f(&mut b.bytes_mut()[..len]))
    }

    /// Replaces the buffer by a copy of its first `len` bytes (aligned to `align`), returning
    /// the old one; `None` (and nothing changes) while there is no buffer.
    ///
    /// # Safety
    /// As [`HostSlot::with_ordered_bytes`].
    pub unsafe fn replace_with_copy(&self, len: usize, align: usize) -> Option<HostBuf> {
        let mut buf = self.buf.locked();
        let copy = HostBuf::copy_of(&buf.as_ref()?.bytes()[..len], align);
        self.ptr.store(copy.as_ptr(), Ordering::Release);
        buf.replace(copy)
    }

    /// A copy of the first `len` bytes (aligned to `align`), `None` while there is no buffer.
    ///
    /// # Safety
    /// As [`HostSlot::with_ordered_bytes`].
    pub unsafe fn copy(&self, len: usize, align: usize) -> Option<HostBuf> {
        let buf = self.buf.locked();
        buf.as_ref().map(|b| HostBuf::copy_of(&b.bytes()[..len], align))
    }
}

/// A user access's claim on a datum (a read, a write, `read_with`): no run uses the datum
/// while it is held, so no kernel holds the address of its bytes, and the bytes may be used
/// under the owner's lock. Released when dropped.
pub(crate) struct UserClaim<'a> {
    slot: &'a HostSlot,
}

impl UserClaim<'_> {
    /// Calls `f` on the first `len` bytes (`None` while there is no buffer in memory),
    /// holding the buffer in place meanwhile.
    pub fn with_bytes<R>(&self, len: usize, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let buf = self.slot.buf.locked();
        f(buf.as_ref().map(|b| &b.bytes()[..len]))
    }

    /// Overwrites the buffer's first bytes with `src`; false (nothing written) while there
    /// is no buffer in memory.
    pub fn overwrite(&self, src: &[u8]) -> bool {
        let mut buf = self.slot.buf.locked();
        match buf.as_mut() {
            Some(b) => {
                b.bytes_mut()[..src.len()].copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    /// Keeps the claim for good (the datum is being freed).
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for UserClaim<'_> {
    fn drop(&mut self) {
        self.slot.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vec_goes_in_and_out_without_a_copy() {
        let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let p = v.as_ptr();
        let b = HostBuf::from_vec(v);
        assert_eq!(b.as_ptr() as *const f32, p);
        assert_eq!(b.len(), 4000);
        let back: Vec<f32> = b.into_vec();
        assert_eq!(back.as_ptr(), p);
        assert_eq!(back[999], 999.0);
    }

    #[test]
    fn store_buffers_are_aligned_for_their_type_and_convert_back() {
        for (elem, align) in [(ElemType::U8, 1), (ElemType::F32, 4), (ElemType::F64, 8)] {
            assert_eq!(elem_align(elem), align);
        }
        let b = HostBuf::zeroed(24, elem_align(ElemType::F64));
        assert_eq!(b.as_ptr() as usize % 8, 0);
        let p = b.as_ptr();
        let v: Vec<f64> = b.into_vec();
        assert_eq!((v.len(), v.as_ptr() as *mut u8), (3, p));
        // A layout `Vec<u32>` cannot own (over-aligned) is copied.
        let b = HostBuf::copy_of(&[1, 0, 0, 0, 2, 0, 0, 0], 8);
        assert_eq!(b.into_vec::<u32>(), vec![1, 2]);
    }

    #[test]
    fn a_user_claim_excludes_runs_and_is_released_when_dropped() {
        let slot = HostSlot::new(Some(HostBuf::copy_of(&[1, 2, 3, 4], 4)), false);
        let claim = slot.claim_for_user().expect("free");
        assert!(!slot.claim(), "a run cannot claim a datum a user holds");
        assert!(slot.claim_for_user().is_none());
        assert_eq!(claim.with_bytes(4, |b| b.map(<[u8]>::to_vec)), Some(vec![1, 2, 3, 4]));
        assert!(claim.overwrite(&[9, 9]));
        assert_eq!(claim.with_bytes(4, |b| b.map(<[u8]>::to_vec)), Some(vec![9, 9, 3, 4]));
        drop(claim);
        assert!(slot.claim(), "released on drop");
        slot.release();
        slot.claim_for_user().expect("free again").keep();
        assert!(slot.is_claimed(), "kept for good");
    }

    #[test]
    fn a_pinned_buffer_stays_in_memory_and_an_unpinned_one_is_saved_then_taken() {
        let slot = HostSlot::new(Some(HostBuf::copy_of(&[5, 6, 7, 8], 4)), true);
        let ptr = slot.pin();
        assert_eq!((ptr, slot.pins()), (slot.as_ptr(), 1));
        let taken = slot.take_unpinned(4, |_| -> Result<(), ()> { panic!("pinned: not saved") });
        assert!(matches!(taken, Ok(None)));
        slot.unpin();
        let mut saved = Vec::new();
        let taken = slot.take_unpinned(4, |b| {
            saved.extend_from_slice(b);
            Ok::<(), ()>(())
        });
        assert_eq!(taken.expect("saved").map(|b| b.len()), Some(4));
        assert_eq!(saved, [5, 6, 7, 8]);
        assert!(!slot.in_memory() && slot.as_ptr().is_null());
        // A failed save leaves the buffer where it was.
        slot.replace(Some(HostBuf::zeroed(4, 4)));
        assert_eq!(slot.take_unpinned(4, |_| Err("disk full")).err(), Some("disk full"));
        assert!(slot.in_memory());
    }

    #[test]
    fn empty_buffers_have_no_allocation() {
        let b = HostBuf::from_vec(Vec::<f64>::new());
        assert_eq!(b.len(), 0);
        assert_eq!(b.into_vec::<f64>(), Vec::<f64>::new());
        let b = HostBuf::zeroed(0, 4);
        assert_eq!(b.bytes(), &[] as &[u8]);
        // A Vec with capacity but no elements keeps (and frees) its allocation.
        let b = HostBuf::from_vec(Vec::<u8>::with_capacity(16));
        assert_eq!(b.len(), 0);
        drop(b);
    }
}
