//! Discovery without hwloc (the `hwloc` feature off): what the standard library and
//! `/proc/meminfo` tell, so that hexec builds and runs where libhwloc is missing.
//!
//! The machine has one NUMA node holding every core and the OS's total memory; cores are
//! the threads `std::thread::available_parallelism` allows (which honours CPU affinity and
//! cgroup quotas); worker threads are not pinned, and GPUs get no NUMA node.

use super::{cores_to_keep, features, os_total_memory, CoreDesc, Machine, TopologyError};

/// Stands for hwloc's topology when there is none: pins nothing, places no PCI device.
#[derive(Clone, Debug)]
pub struct HwTopology;

impl HwTopology {
    /// Leaves the calling thread where the OS puts it: without hwloc, hexec does not pin.
    pub fn pin_current_thread(&self, _pus: &[u32]) -> Result<(), String> {
        Ok(())
    }

    /// Always `None`: without hwloc, the NUMA node of a PCI device is unknown.
    pub fn pci_numa(&self, _bus_id: &str) -> Option<u32> {
        None
    }
}

/// Discovers this machine's cores (one NUMA node); `cpus` keeps only the first N.
pub fn discover(cpus: Option<usize>) -> Result<(Machine, HwTopology), TopologyError> {
    let available = std::thread::available_parallelism()
        .map_err(|e| TopologyError::Os(e.to_string()))?
        .get();
    let keep = cores_to_keep(cpus, available)?;
    let descs = (0..keep)
        .map(|i| CoreDesc {
            numa: 0,
            // Empty: the worker is not pinned (see `WorkerInfo::pus`).
            pus: Vec::new(),
            // All cores equally close: victims are then ordered by index distance.
            closeness: vec![0; keep],
            index: i,
        })
        .collect();
    // 0 (unknown) when /proc/meminfo is absent: the host limit then comes from the user.
    let memory = os_total_memory().unwrap_or(0);
    Ok((
        Machine::from_cores("os", descs, vec![(0, memory)], features::detect()),
        HwTopology,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_this_machine() {
        let (m, hw) = discover(None).expect("OS discovery");
        assert!(m.num_workers() >= 1);
        assert_eq!(m.numa_nodes.len(), 1);
        assert_eq!(m.numa_nodes[0].workers.len(), m.num_workers());
        assert!(m.workers.iter().all(|w| w.pus.is_empty()), "nothing is pinned");
        assert_eq!(hw.pin_current_thread(&m.workers[0].pus), Ok(()));
        assert_eq!(hw.pci_numa("0000:00:02.0"), None);
    }
}
