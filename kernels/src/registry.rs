//! A name → kernel map, so that graph files can refer to kernels by name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::builtin;
use crate::kernel::Kernel;

/// Errors from registering kernels.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A kernel of that name is already registered.
    #[error("a kernel named '{0}' is already registered")]
    Duplicate(String),
}

/// Kernels by name.
#[derive(Clone, Default)]
pub struct KernelRegistry {
    kernels: HashMap<String, Arc<Kernel>>,
}

impl KernelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding every built-in kernel ([`builtin::all`]), the Cholesky tile
    /// kernels ([`crate::linalg::all`]) and the array tile kernels
    /// ([`crate::tiles::TileKernels::all`]).
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        for k in builtin::all()
            .into_iter()
            .chain(crate::linalg::all())
            .chain(crate::tiles::TileKernels::all())
        {
            r.kernels.insert(k.name().to_string(), k);
        }
        r
    }

    /// Adds a kernel; its name must be new.
    pub fn register(&mut self, kernel: Arc<Kernel>) -> Result<(), RegistryError> {
        if self.kernels.contains_key(kernel.name()) {
            return Err(RegistryError::Duplicate(kernel.name().to_string()));
        }
        self.kernels.insert(kernel.name().to_string(), kernel);
        Ok(())
    }

    /// Looks a kernel up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Kernel>> {
        self.kernels.get(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.kernels.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}
