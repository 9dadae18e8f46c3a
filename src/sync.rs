//! Locks that do not poison. A panic while a lock is held is a kernel's panic caught by the
//! worker (never while one of hexec's locks is held) or a bug in hexec that ends the run as an
//! internal error; either way the state behind the lock is still what its code left, so every
//! lock here is taken past a poisoning instead of turning one panic into many. One wrapper
//! for the whole crate, instead of `.lock().unwrap_or_else(|e| e.into_inner())` at each site.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex`] without poisoning.
pub(crate) trait MutexExt<T> {
    /// Locks, past a poisoning.
    fn locked(&self) -> MutexGuard<'_, T>;
    /// The value, past a poisoning.
    fn into_unpoisoned(self) -> T;
    /// The value through an exclusive borrow, past a poisoning.
    fn get_mut_unpoisoned(&mut self) -> &mut T;
}

impl<T> MutexExt<T> for Mutex<T> {
    #[inline]
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn into_unpoisoned(self) -> T {
        self.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    fn get_mut_unpoisoned(&mut self) -> &mut T {
        self.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock`] without poisoning.
pub(crate) trait RwLockExt<T> {
    /// Locks for reading, past a poisoning.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// Locks for writing, past a poisoning.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockExt<T> for RwLock<T> {
    #[inline]
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`Condvar`] waits without poisoning.
pub(crate) trait CondvarExt {
    /// Waits, past a poisoning.
    fn wait_unpoisoned<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T>;
}

impl CondvarExt for Condvar {
    #[inline]
    fn wait_unpoisoned<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }
}
