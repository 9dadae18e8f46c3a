//! Reusable buffers: scratch, uniform and staging buffers come from here and go back after
//! each task, so steady-state execution creates no buffers.

use crate::sync::MutexExt;
use std::collections::HashMap;
use std::sync::Mutex;

/// Buffers by (size class, usage).
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<HashMap<(u64, u32), Vec<wgpu::Buffer>>>,
}

/// Rounds a size up to its class: a power of two, at least 256 bytes.
fn class(size: u64) -> u64 {
    size.max(256).next_power_of_two()
}

impl BufferPool {
    /// A buffer of at least `size` bytes with `usage`.
    pub fn take(&self, device: &wgpu::Device, size: u64, usage: wgpu::BufferUsages, label: &str) -> wgpu::Buffer {
        let key = (class(size), usage.bits());
        if let Some(b) = self.free.locked().get_mut(&key).and_then(Vec::pop) {
            return b;
        }
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: key.0,
            usage,
            mapped_at_creation: false,
        })
    }

    /// Returns a buffer taken from this pool.
    pub fn give(&self, b: wgpu::Buffer) {
        let key = (b.size(), b.usage().bits());
        self.free.locked().entry(key).or_default().push(b);
    }

    /// Drops every buffer waiting for reuse (their memory goes back to the device); the
    /// bytes dropped.
    pub fn clear(&self) -> u64 {
        let drained: Vec<wgpu::Buffer> = self.free.locked().drain().flat_map(|(_, v)| v).collect();
        drained.iter().map(wgpu::Buffer::size).sum()
    }

    /// Buffers waiting for reuse.
    pub fn idle(&self) -> usize {
        self.free.locked().values().map(Vec::len).sum()
    }
}
