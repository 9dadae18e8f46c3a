//! Handles to data and tasks, as users hold them.

use std::marker::PhantomData;

/// A typed handle to a datum stored in a [`Runtime`](crate::Runtime). Cheap to copy; it is
/// only meaningful for the runtime that made it (using it elsewhere is a submit error).
pub struct Data<T> {
    pub(crate) rt: u64,
    pub(crate) id: u32,
    _t: PhantomData<fn() -> T>,
}

impl<T> Data<T> {
    pub(crate) fn new(rt: u64, id: u32) -> Self {
        Data {
            rt,
            id,
            _t: PhantomData,
        }
    }
}

impl<T> Clone for Data<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Data<T> {}

impl<T> std::fmt::Debug for Data<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Data(rt{}:{})", self.rt, self.id)
    }
}

/// A datum that has a size but no storage: the files of a replayed workflow, the outputs of a
/// replayed Dask graph. Tasks can declare accesses to it (which orders them and, later,
/// prices transfers), but a kernel cannot read its contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VirtualData {
    pub(crate) graph: u64,
    pub(crate) id: u32,
}

/// A typed temporary of one graph ([`Graph::temp`](super::Graph::temp)): zeroed at first
/// use in a run, freed after its last use, never kept.
pub struct TempData<T> {
    pub(crate) inner: VirtualData,
    _t: PhantomData<fn() -> T>,
}

impl<T> TempData<T> {
    pub(crate) fn new(inner: VirtualData) -> Self {
        TempData { inner, _t: PhantomData }
    }
}

impl<T> Clone for TempData<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for TempData<T> {}

impl<T> std::fmt::Debug for TempData<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TempData(graph{}:{})", self.inner.graph, self.inner.id)
    }
}

impl<T> From<TempData<T>> for DataRef {
    fn from(d: TempData<T>) -> Self {
        DataRef::Virtual(d.inner)
    }
}

/// Anything a task can access: a stored datum of any element type, or one local to a graph
/// (size-only, or a temporary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataRef {
    /// A datum in a runtime's store.
    Stored {
        /// The runtime's id.
        rt: u64,
        /// The datum's id in that store.
        id: u32,
    },
    /// A datum local to a graph.
    Virtual(VirtualData),
}

impl<T> From<Data<T>> for DataRef {
    fn from(d: Data<T>) -> Self {
        DataRef::Stored { rt: d.rt, id: d.id }
    }
}

impl<T> From<&Data<T>> for DataRef {
    fn from(d: &Data<T>) -> Self {
        DataRef::Stored { rt: d.rt, id: d.id }
    }
}

impl From<VirtualData> for DataRef {
    fn from(d: VirtualData) -> Self {
        DataRef::Virtual(d)
    }
}

/// A task in a [`Graph`](super::Graph), returned when it is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub(crate) graph: u64,
    pub(crate) index: u32,
}

impl TaskId {
    /// Position of the task in its graph (insertion order).
    pub fn index(self) -> usize {
        self.index as usize
    }
}
