//! A datum's copies on GPUs: one buffer slot per GPU, and per GPU the counters that eviction
//! and batch staging read without taking a lock.
//!
//! Invariants (kept by `runtime::data`, which owns one per datum):
//! - a slot holds a buffer exactly while that GPU's budget is charged the datum's bytes; the
//!   slots change only with the datum's coherence lock held, except in the cell's drop;
//! - a copy with pins held (a batch in flight there uses it) is never evicted: eviction reads
//!   [`GpuReplicas::evictable`] under the coherence lock, and staging pins before submitting.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::gpu::GpuBuffer;
use crate::sync::MutexExt;

/// Per-GPU use of one datum's copy there.
struct GpuUse {
    /// Batches in flight on this GPU that use the copy.
    pins: AtomicU32,
    /// This GPU's completion count when the copy was last evicted (`u64::MAX`: not evicted
    /// since last brought there), to detect ping-pong.
    evicted_at: AtomicU64,
    /// The staging epoch of the last batch here that reads the datum.
    wanted: AtomicU64,
}

/// One datum's GPU copies (see the module invariants).
pub(crate) struct GpuReplicas {
    buffers: Mutex<Vec<Option<GpuBuffer>>>,
    per_gpu: Box<[GpuUse]>,
    /// Logical time of the last use on any GPU, for least-recently-used eviction.
    last_use: AtomicU64,
}

impl GpuReplicas {
    /// No copy on any of `gpus` GPUs.
    pub fn new(gpus: usize) -> Self {
        GpuReplicas {
            buffers: Mutex::new((0..gpus).map(|_| None).collect()),
            per_gpu: (0..gpus)
                .map(|_| GpuUse {
                    pins: AtomicU32::new(0),
                    evicted_at: AtomicU64::new(u64::MAX),
                    wanted: AtomicU64::new(0),
                })
                .collect(),
            last_use: AtomicU64::new(0),
        }
    }

    /// The buffer slots, one per GPU, locked.
    pub fn slots(&self) -> MutexGuard<'_, Vec<Option<GpuBuffer>>> {
        self.buffers.locked()
    }

    /// The buffer slots through an exclusive borrow (the cell's drop).
    pub fn slots_mut(&mut self) -> &mut Vec<Option<GpuBuffer>> {
        self.buffers.get_mut_unpoisoned()
    }

    /// Whether GPU `g` holds a buffer for the datum (valid or not).
    pub fn has(&self, g: usize) -> bool {
        self.slots()[g].is_some()
    }

    /// Keeps the copy on GPU `g` from being evicted while a batch in flight there uses it.
    pub fn pin(&self, g: usize) {
        self.per_gpu[g].pins.fetch_add(1, Ordering::AcqRel);
    }

    /// Ends a [`GpuReplicas::pin`].
    pub fn unpin(&self, g: usize) {
        self.per_gpu[g].pins.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether eviction may take the copy on GPU `g` now.
    pub fn evictable(&self, g: usize) -> bool {
        self.per_gpu[g].pins.load(Ordering::Acquire) == 0
    }

    /// Marks the datum as read by the batch of staging `epoch` on GPU `g`.
    pub fn want(&self, g: usize, epoch: u64) {
        self.per_gpu[g].wanted.store(epoch, Ordering::Relaxed);
    }

    /// Whether the batch of staging `epoch` on GPU `g` reads the datum.
    pub fn wanted_in(&self, g: usize, epoch: u64) -> bool {
        self.per_gpu[g].wanted.load(Ordering::Relaxed) == epoch
    }

    /// Records a use on a GPU at logical time `now`.
    pub fn touch(&self, now: u64) {
        self.last_use.store(now, Ordering::Relaxed);
    }

    /// Logical time of the last use on a GPU.
    pub fn last_use(&self) -> u64 {
        self.last_use.load(Ordering::Relaxed)
    }

    /// The copy on GPU `g` was evicted when that GPU had completed `completions` tasks.
    pub fn evicted(&self, g: usize, completions: u64) {
        self.per_gpu[g].evicted_at.store(completions, Ordering::Relaxed);
    }

    /// A copy is back on GPU `g`, which has completed `completions` tasks: whether it was
    /// evicted from there with no task completed since (ping-pong). Clears the mark.
    pub fn back_without_progress(&self, g: usize, completions: u64) -> bool {
        self.per_gpu[g].evicted_at.swap(u64::MAX, Ordering::Relaxed) == completions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_keep_a_copy_and_an_eviction_mark_is_read_once() {
        let r = GpuReplicas::new(2);
        assert!(!r.has(0) && r.evictable(1));
        r.pin(1);
        assert!(!r.evictable(1) && r.evictable(0));
        r.unpin(1);
        assert!(r.evictable(1));
        r.evicted(0, 7);
        assert!(r.back_without_progress(0, 7));
        assert!(!r.back_without_progress(0, 7), "the mark is cleared when read");
        r.evicted(0, 7);
        assert!(!r.back_without_progress(0, 8), "a task completed since");
        r.want(1, 3);
        assert!(r.wanted_in(1, 3) && !r.wanted_in(1, 4) && !r.wanted_in(0, 3));
        r.touch(42);
        assert_eq!(r.last_use(), 42);
    }
}
