//! Discovery through hwloc (the `hwlocality` bindings), and thread pinning.
//!
//! This is the one module that names hwlocality: swapping bindings changes only this file.

use std::sync::Arc;

use hwlocality::cpu::binding::CpuBindingFlags;
use hwlocality::cpu::cpuset::CpuSet;
use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::ObjectType;
use hwlocality::topology::builder::TypeFilter;
use hwlocality::Topology;

use super::{cores_to_keep, features, CoreDesc, Machine, TopologyError};

/// The loaded hwloc topology, kept to pin worker threads.
#[derive(Clone)]
pub struct HwTopology {
    topo: Arc<Topology>,
}

impl HwTopology {
    /// Pins the calling thread to the given processing units. Failure (for example inside a
    /// container that forbids binding) is reported, not fatal: the caller logs it.
    pub fn pin_current_thread(&self, pus: &[u32]) -> Result<(), String> {
        if pus.is_empty() {
            return Ok(());
        }
        let mut set = CpuSet::new();
        for &pu in pus {
            set.set(pu as usize);
        }
        self.topo
            .bind_cpu(&set, CpuBindingFlags::THREAD)
            .map_err(|e| e.to_string())
    }

    /// The OS index of the NUMA node closest to a PCI device, given as `DDDD:BB:DD.F` (hex,
    /// the form wgpu reports); `None` when hwloc does not list the device.
    pub fn pci_numa(&self, bus_id: &str) -> Option<u32> {
        let (domain, bus, dev, func) = parse_pci(bus_id)?;
        self.topo.objects_with_type(ObjectType::PCIDevice).find_map(|o| {
            let Some(ObjectAttributes::PCIDevice(p)) = o.attributes() else {
                return None;
            };
            if (u32::from(p.domain()), p.bus_id(), p.bus_device(), p.function()) != (domain, bus, dev, func) {
                return None;
            }
            let ancestor = o.first_non_io_ancestor()?;
            ancestor.nodeset()?.first_set().map(|i| usize::from(i) as u32)
        })
    }
}

/// Discovers cores and NUMA nodes; `cpus` keeps only the first N cores in hwloc's logical
/// order (which fills one NUMA node before the next, keeping a small run compact).
pub fn discover(cpus: Option<usize>) -> Result<(Machine, HwTopology), TopologyError> {
    // I/O objects are kept so that GPUs can be placed next to their NUMA node.
    let topo = Topology::builder()
        .with_io_type_filter(TypeFilter::KeepImportant)
        .map_err(|e| TopologyError::Load(e.to_string()))?
        .build()
        .map_err(|e| TopologyError::Load(e.to_string()))?;
    let numa_objs: Vec<_> = topo.objects_with_type(ObjectType::NUMANode).collect();
    let mut numa: Vec<(u32, u64)> = numa_objs
        .iter()
        .map(|n| (n.os_index().unwrap_or(0) as u32, n.total_memory()))
        .collect();
    if numa.is_empty() {
        numa.push((0, topo.root_object().total_memory()));
    }
    let cores: Vec<_> = topo.objects_with_type(ObjectType::Core).collect();
    // Some virtual machines report PUs without Core objects: fall back to PUs.
    let cores = if cores.is_empty() {
        topo.objects_with_type(ObjectType::PU).collect()
    } else {
        cores
    };
    if cores.is_empty() {
        return Err(TopologyError::NoCores);
    }
    let keep = cores_to_keep(cpus, cores.len())?;
    let cores = &cores[..keep];
    let depth_of = |o: &hwlocality::object::TopologyObject| o.ancestors().count();
    let descs = cores
        .iter()
        .enumerate()
        .map(|(i, core)| {
            let pus = core
                .cpuset()
                .map(|s| s.iter_set().map(|ix| usize::from(ix) as u32).collect())
                .unwrap_or_default();
            let numa_index = core
                .nodeset()
                .and_then(|ns| ns.first_set())
                .map(usize::from)
                .and_then(|os| numa.iter().position(|&(n, _)| n as usize == os))
                .unwrap_or(0);
            let closeness = cores
                .iter()
                .map(|other| core.first_common_ancestor(other).map_or(0, depth_of))
                .collect();
            CoreDesc {
                numa: numa_index,
                pus,
                closeness,
                index: i,
            }
        })
        .collect();
    let machine = Machine::from_cores("hwloc", descs, numa, features::detect());
    Ok((machine, HwTopology { topo: Arc::new(topo) }))
}

/// Parses `DDDD:BB:DD.F` (hex; the domain may be omitted).
fn parse_pci(s: &str) -> Option<(u32, u8, u8, u8)> {
    let (head, func) = s.rsplit_once('.')?;
    let parts: Vec<&str> = head.split(':').collect();
    let (domain, bus, dev) = match parts.as_slice() {
        [d, b, v] => (u32::from_str_radix(d, 16).ok()?, *b, *v),
        [b, v] => (0, *b, *v),
        _ => return None,
    };
    Some((
        domain,
        u8::from_str_radix(bus, 16).ok()?,
        u8::from_str_radix(dev, 16).ok()?,
        u8::from_str_radix(func, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_bus_ids_parse() {
        assert_eq!(parse_pci("0000:3b:00.0"), Some((0, 0x3b, 0, 0)));
        assert_eq!(parse_pci("0001:c1:1f.7"), Some((1, 0xc1, 0x1f, 7)));
        assert_eq!(parse_pci("3b:00.1"), Some((0, 0x3b, 0, 1)));
        assert_eq!(parse_pci(""), None);
        assert_eq!(parse_pci("zz:00.0"), None);
        let (_, hw) = discover(Some(1)).unwrap();
        assert_eq!(hw.pci_numa("ffff:ff:1f.7"), None);
        // This VM's virtio disk controller is a PCI device hwloc lists on NUMA node 0.
        assert!(hw.pci_numa("0000:00:02.0").is_none_or(|n| n == 0));
    }

    #[test]
    fn discovers_this_machine() {
        let (m, hw) = discover(None).expect("hwloc discovery");
        assert!(m.num_workers() >= 1);
        assert!(!m.numa_nodes.is_empty());
        assert!(m.numa_nodes.iter().map(|n| n.workers.len()).sum::<usize>() == m.num_workers());
        assert!(m.workers.iter().all(|w| !w.pus.is_empty()));
        // Pinning to our first core works on this machine (or reports why not).
        let r = std::thread::scope(|s| s.spawn(|| hw.pin_current_thread(&m.workers[0].pus)).join().unwrap());
        if let Err(e) = r {
            eprintln!("pinning is not permitted here: {e}");
        }
    }
}
