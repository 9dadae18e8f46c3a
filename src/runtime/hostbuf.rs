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

/// A datum's host buffer as its cell holds it: the owner, swapped under a lock, and the
/// address of its bytes mirrored for lock-free readers (kernels' operands, the host fast
/// paths). The one place where that address becomes slices of bytes.
///
/// Invariant: the mirror is the address of the owned buffer's bytes, or null while there is
/// none; both change together, under the owner's lock ([`HostSlot::replace`]).
pub(crate) struct HostSlot {
    ptr: std::sync::atomic::AtomicPtr<u8>,
    buf: std::sync::Mutex<Option<HostBuf>>,
}

impl HostSlot {
    /// A slot holding `buf` (`None`: no buffer in memory).
    pub fn new(buf: Option<HostBuf>) -> Self {
        HostSlot {
            ptr: std::sync::atomic::AtomicPtr::new(buf.as_ref().map_or(std::ptr::null_mut(), HostBuf::as_ptr)),
            buf: std::sync::Mutex::new(buf),
        }
    }

    /// The buffer's first byte, null while there is none (one atomic load).
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.load(std::sync::atomic::Ordering::Acquire)
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
            std::sync::atomic::Ordering::Release,
        );
        std::mem::replace(&mut *buf, new)
    }

    /// Replaces the buffer by a copy of its first `len` bytes (aligned to `align`), returning
    /// the old one; `None` (and nothing changes) while there is no buffer. The caller knows
    /// no one writes the bytes meanwhile.
    pub fn replace_with_copy(&self, len: usize, align: usize) -> Option<HostBuf> {
        let mut buf = self.buf.locked();
        let copy = HostBuf::copy_of(&buf.as_ref()?.bytes()[..len], align);
        self.ptr.store(copy.as_ptr(), std::sync::atomic::Ordering::Release);
        buf.replace(copy)
    }

    /// A copy of the first `len` bytes (aligned to `align`), `None` while there is no buffer.
    /// The caller knows no one writes the bytes meanwhile.
    pub fn copy(&self, len: usize, align: usize) -> Option<HostBuf> {
        let buf = self.buf.locked();
        buf.as_ref().map(|b| HostBuf::copy_of(&b.bytes()[..len], align))
    }

    /// The buffer, taken out through an exclusive borrow (the cell's drop).
    pub fn take(&mut self) -> Option<HostBuf> {
        *self.ptr.get_mut() = std::ptr::null_mut();
        self.buf.get_mut_unpoisoned().take()
    }

    /// The first `len` bytes of the buffer, `None` while there is none.
    ///
    /// # Safety
    /// The buffer holds at least `len` bytes, it stays in memory (not replaced) while the
    /// slice lives, and no one writes those bytes meanwhile (the cell's module says when:
    /// its coherence lock held by a user of the datum alone, or a host pin under `in_use`).
    #[inline]
    pub unsafe fn bytes(&self, len: usize) -> Option<&[u8]> {
        let ptr = self.as_ptr();
        // SAFETY: non-null, the mirror addresses the owned buffer's live bytes (the type's
        // invariant), at least `len` of them, unchanged and unwritten while the slice lives
        // (the caller's promise).
        (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
    }

    /// The first `len` bytes of the buffer to overwrite, `None` while there is none.
    ///
    /// # Safety
    /// As [`HostSlot::bytes`], and no one reads or writes those bytes but the caller while
    /// the slice lives.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, len: usize) -> Option<&mut [u8]> {
        let ptr = self.as_ptr();
        // SAFETY: as in `bytes`; the caller promises exclusive use of these bytes.
        (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(ptr, len) })
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
