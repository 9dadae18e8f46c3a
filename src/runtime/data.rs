//! The runtime's data store: host buffers behind typed handles.
//!
//! Invariants:
//! - a [`DataCell`]'s buffer is allocated once, 8-byte aligned, and never moves or changes
//!   size; it is freed when the last `Arc` to the cell goes;
//! - during a run, every cell the graph uses is marked `in_use`; user-side reads and writes
//!   ([`DataStore::read`], [`DataStore::write`]) refuse a cell in use, so the only accesses
//!   to its bytes are the run's kernels, ordered by the graph's dependencies (readers share,
//!   a writer is alone).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use hexec_kernels::{ElemType, Element};

use crate::graph::compile::SubmitError;
use crate::graph::Data;

/// Errors of user-side data access.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("datum {0:?} belongs to another runtime")]
    ForeignHandle(String),
    #[error("datum '{name}' holds {actual}, not {requested}")]
    TypeMismatch {
        name: String,
        actual: ElemType,
        requested: ElemType,
    },
    #[error("datum '{0}' is in use by a running graph")]
    Busy(String),
    #[error("datum '{name}' has {len} elements; {given} were given")]
    LengthMismatch { name: String, len: usize, given: usize },
    #[error("datum '{0}' is read-only")]
    ReadOnly(String),
    #[error("datum '{name}' would need {bytes} bytes, more than this platform can address")]
    TooLarge { name: String, bytes: u128 },
}

/// One stored datum.
pub(crate) struct DataCell {
    pub name: String,
    pub elem: ElemType,
    pub len: usize,
    pub read_only: bool,
    ptr: NonNull<u64>,
    words: usize,
    in_use: AtomicBool,
}

// SAFETY: the cell owns its buffer (like a `Box<[u64]>`); all access to the bytes goes
// through `DataStore::read`/`write` (which refuse cells in use) or through a run that holds
// `in_use` and orders conflicting kernel accesses by graph dependencies (module invariant).
unsafe impl Send for DataCell {}
// SAFETY: as above; shared references only expose metadata and the raw pointer.
unsafe impl Sync for DataCell {}

impl DataCell {
    fn new(name: String, elem: ElemType, bytes: &[u8], read_only: bool) -> Self {
        let mut buf = vec![0u64; bytes.len().div_ceil(8)].into_boxed_slice();
        bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..bytes.len()].copy_from_slice(bytes);
        Self::from_words(name, elem, bytes.len() / elem.size(), buf, read_only)
    }

    fn zeroed(name: String, elem: ElemType, len: usize) -> Self {
        let buf = vec![0u64; (len * elem.size()).div_ceil(8)].into_boxed_slice();
        Self::from_words(name, elem, len, buf, false)
    }

    fn from_words(name: String, elem: ElemType, len: usize, buf: Box<[u64]>, read_only: bool) -> Self {
        let words = buf.len();
        let ptr = NonNull::new(Box::into_raw(buf) as *mut u64).expect("Box pointers are never null");
        DataCell {
            name,
            elem,
            len,
            read_only,
            ptr,
            words,
            in_use: AtomicBool::new(false),
        }
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len * self.elem.size()
    }

    /// Raw pointer to the bytes, for binding kernel operands.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }

    /// Marks the cell used by a run; false if it already was.
    pub fn acquire(&self) -> bool {
        !self.in_use.swap(true, Ordering::Acquire)
    }

    /// Ends a run's use.
    pub fn release(&self) {
        self.in_use.store(false, Ordering::Release);
    }
}

impl Drop for DataCell {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`words` come from `Box::into_raw` of a `Box<[u64]>` of that length in
        // `new`, and are freed exactly once, here.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.words,
            )))
        }
    }
}

/// The data of one runtime.
pub(crate) struct DataStore {
    rt: u64,
    cells: RwLock<Vec<Arc<DataCell>>>,
}

impl DataStore {
    pub fn new(rt: u64) -> Self {
        DataStore {
            rt,
            cells: RwLock::new(Vec::new()),
        }
    }

    pub fn insert<T: Element>(&self, name: Option<String>, values: &[T], read_only: bool) -> Data<T> {
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        let id = cells.len() as u32;
        let name = name.unwrap_or_else(|| format!("data#{id}"));
        cells.push(Arc::new(DataCell::new(
            name,
            T::ELEM,
            bytemuck::cast_slice(values),
            read_only,
        )));
        Data::new(self.rt, id)
    }

    pub fn insert_zeroed(&self, name: Option<String>, elem: ElemType, len: usize) -> Result<u32, DataError> {
        let bytes = (len as u128) * elem.size() as u128;
        let label = name.clone().unwrap_or_else(|| "unnamed".into());
        if bytes > isize::MAX as u128 {
            return Err(DataError::TooLarge { name: label, bytes });
        }
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        let id = cells.len() as u32;
        let name = name.unwrap_or_else(|| format!("data#{id}"));
        cells.push(Arc::new(DataCell::zeroed(name, elem, len)));
        Ok(id)
    }

    pub fn cell(&self, rt: u64, id: u32) -> Option<Arc<DataCell>> {
        if rt != self.rt {
            return None;
        }
        self.cells
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id as usize)
            .cloned()
    }

    fn typed_cell<T: Element>(&self, h: Data<T>) -> Result<Arc<DataCell>, DataError> {
        let cell = self
            .cell(h.rt, h.id)
            .ok_or_else(|| DataError::ForeignHandle(format!("{h:?}")))?;
        if cell.elem != T::ELEM {
            return Err(DataError::TypeMismatch {
                name: cell.name.clone(),
                actual: cell.elem,
                requested: T::ELEM,
            });
        }
        Ok(cell)
    }

    pub fn read<T: Element>(&self, h: Data<T>) -> Result<Vec<T>, DataError> {
        let cell = self.typed_cell(h)?;
        // Hold `in_use` for the copy, so that no run starts on this datum meanwhile.
        if !cell.acquire() {
            return Err(DataError::Busy(cell.name.clone()));
        }
        // SAFETY: `in_use` is ours, so no kernel touches the bytes; ptr/len describe the live
        // buffer of `len` elements of type T (type checked above), 8-byte aligned.
        let out = unsafe { std::slice::from_raw_parts(cell.as_mut_ptr() as *const T, cell.len) }.to_vec();
        cell.release();
        Ok(out)
    }

    pub fn write<T: Element>(&self, h: Data<T>, values: &[T]) -> Result<(), DataError> {
        let cell = self.typed_cell(h)?;
        if cell.read_only {
            return Err(DataError::ReadOnly(cell.name.clone()));
        }
        if values.len() != cell.len {
            return Err(DataError::LengthMismatch {
                name: cell.name.clone(),
                len: cell.len,
                given: values.len(),
            });
        }
        if !cell.acquire() {
            return Err(DataError::Busy(cell.name.clone()));
        }
        // SAFETY: as in `read`: we hold `in_use`, the types and lengths match.
        unsafe { std::slice::from_raw_parts_mut(cell.as_mut_ptr() as *mut T, cell.len) }.copy_from_slice(values);
        cell.release();
        Ok(())
    }
}

/// The cells a run uses, held `in_use` until dropped.
pub(crate) struct AcquiredData {
    cells: Vec<Arc<DataCell>>,
}

impl AcquiredData {
    /// Acquires every cell, or none if one is busy. `cells` holds no cell twice (a graph's
    /// data table is deduplicated).
    pub fn acquire(cells: Vec<Arc<DataCell>>) -> Result<Self, SubmitError> {
        let mut held = AcquiredData {
            cells: Vec::with_capacity(cells.len()),
        };
        for c in cells {
            if !c.acquire() {
                return Err(SubmitError::DataBusy {
                    datum: format!("'{}'", c.name),
                });
            }
            held.cells.push(c);
        }
        Ok(held)
    }
}

impl Drop for AcquiredData {
    fn drop(&mut self) {
        for c in &self.cells {
            c.release();
        }
    }
}
