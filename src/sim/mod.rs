//! The simulated driver: the same policies as the real runtime, run by a discrete-event
//! simulation of a modelled machine (workers by class, memory nodes, links with bandwidth and
//! latency, kernel costs), so that schedules can be measured on machines we do not have.
//!
//! Machines come from StarPU's performance-model directories (`starpu:DIR:NAME`, e.g. the
//! 24-core, 4-GPU sirocco), from short specs (`cpus:64`, `cpus:16,gpus:4,gpu-speedup:20`),
//! from a per-kernel summary table (`kernel-summary:PATH:cpus=32,gpus=1,tile=1024`, see
//! `summary`), or from a TOML file with the same keys. A StarPU machine reads the models of the kernels a
//! graph uses only, when asked ([`SimMachine::load_models`], before building the graph).
//!
//! Every number a machine comes with is checked where it enters, with the spec field or file
//! line it came from in the error: worker counts whole and at most
//! `crate::limits::MAX_WORKERS` in all, `gpu-speedup`, `bw` and `gflops` positive and
//! finite, `lat` finite, non-negative and at most `crate::limits::MAX_DURATION_S` (StarPU
//! directories: see `starpu`). Task costs that still come out absurd (a tiny `gflops`) are
//! refused by the simulation ([`SimError::Cost`]).
//!
//! Model of execution: a task starts on a worker when the policy hands it over; its inputs
//! not valid in that worker's memory are copied first (latency + bytes / bandwidth from the
//! cheapest valid copy; one copy at a time per link direction, no other contention), then it
//! runs for its modelled cost. Every datum's copies follow the same MSI coherence as in the
//! runtime. Memory is unlimited unless [`SimOptions`] sets limits: GPUs then evict
//! least-recently-used copies (written back when the only valid one), the host spills to a
//! disk modelled at `crate::memory::SPILL_BANDWIDTH`, and data-producing roots are held
//! back as in the runtime (`RootGate`). The host is one memory node (no NUMA shares).

pub(crate) mod bound;
pub(crate) mod engine;
pub(crate) mod predict;
pub(crate) mod starpu;
pub(crate) mod summary;

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::kernels::{GpuImpl, Kernel, Signature};
use crate::sched::perfmodel::PerfModel;
use crate::topology::{DeviceKind, GpuDesc, Machine};

pub use bound::{mixed_bound, LowerBound};
pub use engine::{simulate, SimError, SimOptions, SimReport};
/// What `SimMachine::load_models` left out of a StarPU model, and why.
pub use starpu::Skipped;

/// How a spec's fields are named in errors: `gpu-speedup` in a `key:value` spec,
/// `gpu_speedup` in a TOML file.
#[derive(Clone, Copy)]
struct Keys {
    speedup: &'static str,
    bw: &'static str,
    lat: &'static str,
    gflops: &'static str,
}

impl Keys {
    const SPEC: Keys = Keys {
        speedup: "gpu-speedup",
        bw: "bw",
        lat: "lat",
        gflops: "gflops",
    };
    #[cfg(feature = "toml")]
    const TOML: Keys = Keys {
        speedup: "gpu_speedup",
        bw: "bandwidth_gbs",
        lat: "latency_us",
        gflops: "cpu_gflops",
    };
}

/// A modelled machine.
#[derive(Debug)]
pub struct SimMachine {
    /// The machine's name.
    pub name: String,
    /// Its workers, classes and nodes.
    pub machine: Machine,
    /// Bytes per second, `[from][to]` over host (0) and GPUs (1..).
    pub bandwidth: Vec<Vec<f64>>,
    /// Seconds, same indexing.
    pub latency: Vec<Vec<f64>>,
    /// Kernel costs by class (`cpu`, `gpu`).
    pub model: PerfModel,
    /// For replayed tasks (recorded durations) and flop-counted kernels: how much faster a GPU
    /// runs them. `None`: such tasks run on CPUs only.
    pub gpu_speedup: Option<f64>,
    /// CPU core speed for flop-counted kernels (Cholesky tiles) without a model.
    pub cpu_gflops: f64,
    /// A StarPU machine's codelet models, read into `model` by [`SimMachine::load_models`].
    pub starpu: Option<starpu::Codelets>,
    /// A model measured at one size per kernel (a kernel summary at one tile size): each
    /// kernel's operand bytes, which a task of it must match (another size would be priced
    /// by extrapolating from one point).
    pub exact_sizes: Option<Vec<(String, u64)>>,
}

/// Largest TOML machine file read (a handful of keys).
pub const MAX_SPEC_FILE_BYTES: u64 = 1 << 20;

/// A machine spec as a TOML file or a `key:value,...` string gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// CPU cores.
    pub cpus: usize,
    /// GPUs.
    #[serde(default)]
    pub gpus: usize,
    /// How much faster a GPU runs replayed and flop-counted tasks.
    pub gpu_speedup: Option<f64>,
    /// Host↔GPU and GPU↔GPU bandwidth, GB/s (default 12).
    pub bandwidth_gbs: Option<f64>,
    /// Link latency, µs (default 10).
    pub latency_us: Option<f64>,
    /// Per-core speed for flop-counted kernels, GFLOP/s (default 10).
    pub cpu_gflops: Option<f64>,
}

impl SimMachine {
    /// Parses `starpu:DIR:NAME[,links=free]`, `kernel-summary:PATH:cpus=N,gpus=M,tile=B[,links=free]`,
    /// a path to a `.toml` file, or `cpus:N[,gpus:M][,gpu-speedup:S][,bw:GBPS][,lat:US][,gflops:G]`.
    /// (`links=free`: copies cost nothing, to see a policy's quality apart from its links.)
    pub fn parse(spec: &str) -> Result<SimMachine, String> {
        if let Some(rest) = spec.strip_prefix("kernel-summary:") {
            let parsed = summary::SummarySpec::parse(rest).map_err(|e| format!("machine '{spec}': {e}"))?;
            return SimMachine::from_kernel_summary(&parsed);
        }
        if let Some(rest) = spec.strip_prefix("starpu:") {
            let (dir, name) = rest
                .rsplit_once(':')
                .ok_or("a StarPU machine is starpu:DIR:NAME[,links=free]")?;
            let (name, free) = match name.split_once(',') {
                None => (name, false),
                Some((name, "links=free")) => (name, true),
                Some((name, "links=measured")) => (name, false),
                Some((_, other)) => {
                    return Err(format!(
                        "unknown option '{other}' of StarPU machine '{spec}' (known: links=free, links=measured)"
                    ))
                }
            };
            let mut sm = SimMachine::from_starpu(Path::new(dir), name)?;
            if free {
                sm.free_links();
            }
            return Ok(sm);
        }
        if spec.ends_with(".toml") {
            let text = crate::limits::read_regular_file(Path::new(spec), MAX_SPEC_FILE_BYTES)
                .map_err(|e| format!("{spec}: {e}"))?;
            #[cfg(feature = "toml")]
            {
                let s: MachineSpec = toml::from_str(&text).map_err(|e| format!("{spec}: {e}"))?;
                return SimMachine::from_spec_keys(spec, &s, Keys::TOML);
            }
            #[cfg(not(feature = "toml"))]
            {
                let _ = text;
                return Err(format!("{spec}: TOML machine files need hexec's `toml` feature"));
            }
        }
        let mut s = MachineSpec::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once(':').ok_or_else(|| {
                format!(
                    "machine '{spec}': '{part}' is not key:value (a machine is starpu:DIR:NAME[,links=free], \
                         kernel-summary:PATH:cpus=N,gpus=N,tile=B[,links=free], a .toml file, or \
                         cpus:N[,gpus:M,gpu-speedup:S,bw:GBPS,lat:US,gflops:G])"
                )
            })?;
            let num = |v: &str| {
                v.trim_end_matches("GB/s")
                    .trim_end_matches("us")
                    .parse::<f64>()
                    .map_err(|_| format!("'{v}' is not a number (in '{part}')"))
            };
            // A count is whole, non-negative and bounded before it sizes anything (`as
            // usize` would turn -1 into 0, 2.5 into 2 and 1e12 into a 64 TB allocation).
            let count = |v: &str| -> Result<usize, String> {
                let n = num(v)?;
                if !(n.is_finite() && n >= 0.0 && n.fract() == 0.0) {
                    return Err(format!("'{v}' is not a whole number of workers (in '{part}')"));
                }
                if n > crate::limits::MAX_WORKERS as f64 {
                    return Err(format!(
                        "{v} workers is over the limit of {} (in '{part}')",
                        crate::limits::MAX_WORKERS
                    ));
                }
                Ok(n as usize)
            };
            match k {
                "cpus" => s.cpus = count(v)?,
                "gpus" => s.gpus = count(v)?,
                "gpu-speedup" => s.gpu_speedup = Some(num(v)?),
                "bw" => s.bandwidth_gbs = Some(num(v)?),
                "lat" => s.latency_us = Some(num(v)?),
                "gflops" => s.cpu_gflops = Some(num(v)?),
                other => {
                    return Err(format!(
                        "unknown machine key '{other}' (known: cpus, gpus, gpu-speedup, bw, lat, gflops)"
                    ))
                }
            }
        }
        SimMachine::from_spec_keys(spec, &s, Keys::SPEC)
    }

    /// A machine from a spec. Every value is checked (see the module's documentation); an
    /// error names the field as a `key:value` spec does.
    pub fn from_spec(name: &str, s: &MachineSpec) -> Result<SimMachine, String> {
        SimMachine::from_spec_keys(name, s, Keys::SPEC)
    }

    /// [`SimMachine::from_spec`], naming fields as `keys` does.
    fn from_spec_keys(name: &str, s: &MachineSpec, keys: Keys) -> Result<SimMachine, String> {
        let max = crate::limits::MAX_WORKERS;
        if s.cpus.checked_add(s.gpus).is_none_or(|n| n > max) {
            return Err(format!(
                "machine '{name}': {} cpus and {} gpus are over the limit of {max} workers",
                s.cpus, s.gpus
            ));
        }
        let field = |key: &str, v: f64, check: fn(f64) -> Result<f64, String>, unit: &str| {
            check(v).map_err(|why| format!("machine '{name}': {key} {}{unit}: {why}", crate::limits::number(v)))
        };
        let speedup = s
            .gpu_speedup
            .map(|v| field(keys.speedup, v, crate::limits::positive, ""))
            .transpose()?;
        let bw = field(
            keys.bw,
            s.bandwidth_gbs.unwrap_or(12.0),
            crate::limits::positive,
            " GB/s",
        )?;
        // Under a byte per second, a copy of the largest datum takes longer than anything
        // hexec accepts; refused as absurd rather than simulated.
        if bw < 1e-9 {
            return Err(format!(
                "machine '{name}': {} {bw} GB/s is under the least usable bandwidth (1e-9 GB/s, a byte per second)",
                keys.bw
            ));
        }
        let lat_us = s.latency_us.unwrap_or(10.0);
        let lat = crate::limits::seconds(lat_us * 1e-6).map_err(|why| {
            format!(
                "machine '{name}': {} {} µs: {why}",
                keys.lat,
                crate::limits::number(lat_us)
            )
        })?;
        let gflops = field(
            keys.gflops,
            s.cpu_gflops.unwrap_or(10.0),
            crate::limits::positive,
            " GFLOP/s",
        )?;
        if s.cpus == 0 && s.gpus == 0 {
            return Err(format!("machine '{name}' has no worker (give cpus:N)"));
        }
        if s.gpus > 0 && speedup.is_none() {
            return Err(format!(
                "machine '{name}' has GPUs but no gpu-speedup (how much faster they run tasks)"
            ));
        }
        let bw = bw * 1e9;
        let nodes = s.gpus + 1;
        let bandwidth = (0..nodes)
            .map(|i| (0..nodes).map(|j| if i == j { f64::INFINITY } else { bw }).collect())
            .collect();
        let latency = (0..nodes)
            .map(|i| (0..nodes).map(|j| if i == j { 0.0 } else { lat }).collect())
            .collect();
        Ok(SimMachine {
            name: name.into(),
            machine: modelled_machine(s.cpus, s.gpus, "modelled GPU"),
            bandwidth,
            latency,
            model: PerfModel::new(),
            gpu_speedup: speedup,
            cpu_gflops: gflops,
            starpu: None,
            exact_sizes: None,
        })
    }

    /// Whether every copy between two memories costs nothing (see [`SimMachine::free_links`]).
    pub fn links_free(&self) -> bool {
        self.bandwidth.iter().flatten().all(|b| b.is_infinite()) && self.latency.iter().flatten().all(|&l| l == 0.0)
    }

    /// Makes every copy free: infinite bandwidth, no latency.
    pub fn free_links(&mut self) {
        self.bandwidth.iter_mut().flatten().for_each(|b| *b = f64::INFINITY);
        self.latency.iter_mut().flatten().for_each(|l| *l = 0.0);
        self.name.push_str(" (free links)");
    }

    /// A machine from StarPU's performance models. StarPU dedicates one CPU core to driving
    /// each GPU, so the modelled machine has `cpus - gpus` CPU workers, as StarPU's would.
    /// Kernel models are not read yet: [`SimMachine::load_models`] reads those a graph needs.
    pub fn from_starpu(dir: &Path, name: &str) -> Result<SimMachine, String> {
        let m = starpu::open(dir, name).map_err(|e| e.to_string())?;
        Ok(SimMachine {
            name: format!("starpu:{name}"),
            machine: modelled_machine(m.cpus.saturating_sub(m.gpus).max(1), m.gpus, &format!("{name} GPU")),
            bandwidth: m.bandwidth,
            latency: m.latency,
            model: PerfModel::new(),
            gpu_speedup: None,
            cpu_gflops: 10.0,
            starpu: Some(m.codelets),
            exact_sizes: None,
        })
    }

    /// Reads the measured models of `kernels` (a StarPU machine's codelet files, under the
    /// kernel's name or StarPU's `chol_model_` name) into [`SimMachine::model`]; other
    /// machines have nothing to read. Call it before building a graph with
    /// [`SimMachine::kernel`]. Returns what was left out (each also logged as a warning): rows
    /// and combinations of the models that cannot be used, kernels without a model. A needed
    /// model that cannot be read or holds an unusable time is an error naming file and line.
    pub fn load_models<'a>(
        &mut self,
        kernels: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<starpu::Skipped>, String> {
        let Some(codelets) = self.starpu.as_mut() else {
            return Ok(Vec::new());
        };
        let kernels: std::collections::BTreeSet<&str> = kernels.into_iter().collect();
        let mut skipped = Vec::new();
        for kernel in kernels {
            let names = model_names(kernel);
            let mut found = false;
            for name in &names {
                if !codelets.has(name) {
                    continue;
                }
                found = true;
                skipped.extend(codelets.load(name, &mut self.model).map_err(|e| e.to_string())?);
            }
            if !found {
                skipped.push(starpu::Skipped {
                    path: codelets.dir.clone(),
                    line: None,
                    what: format!(
                        "no model of kernel '{kernel}' for machine '{}' ({}.{m} or {}.{m}): its tasks run on CPUs only, at their recorded or flop-counted cost",
                        codelets.machine,
                        names[0],
                        names[1],
                        m = codelets.machine
                    ),
                });
            }
            codelets.mark_considered(kernel);
        }
        for s in &skipped {
            tracing::warn!("{s}");
        }
        Ok(skipped)
    }

    /// [`SimMachine::load_models`] for the kernels of `graph`.
    pub fn load_models_for(
        &mut self,
        graph: &crate::graph::formats::GraphSpec,
    ) -> Result<Vec<starpu::Skipped>, String> {
        self.load_models(graph.tasks.iter().map(|t| t.kernel.as_str()))
    }

    /// Number of memory nodes (host + GPUs).
    pub fn nodes(&self) -> usize {
        self.bandwidth.len()
    }

    /// The modelled cost of one task: a measured model first (under the kernel's name or
    /// StarPU's `chol_model_` name), then the task's recorded duration, then a flop count.
    pub fn cost(&self, kernel: &str, kind: DeviceKind, size: u64, recorded: Option<f64>) -> Option<f64> {
        self.debug_assert_loaded(kernel);
        let class = kind.to_string();
        for name in model_names(kernel) {
            if self.model.knows(&name, &class) {
                return self.model.expected(&name, &class, size);
            }
        }
        let speed = match kind {
            DeviceKind::Cpu => 1.0,
            DeviceKind::Gpu => self.gpu_speedup?,
        };
        if let Some(r) = recorded {
            return Some(r / speed);
        }
        cholesky_flops(kernel, size).map(|f| f / (self.cpu_gflops * 1e9 * speed))
    }

    /// Why tasks of `kernel` cannot be priced here because a caller skipped a step: a StarPU
    /// machine whose models of that kernel were never read ([`SimMachine::load_models`])
    /// would price it by flops on CPUs only, silently.
    pub fn models_unread(&self, kernel: &str) -> Option<String> {
        let c = self.starpu.as_ref()?;
        (!c.was_considered(kernel)).then(|| {
            format!(
                "the models of '{kernel}' on {} were never read: call SimMachine::load_models \
                 (or load_models_for) with the graph's kernels before building the graph",
                self.name
            )
        })
    }

    /// Why a task of `kernel` on `size` operand bytes cannot be priced here: the machine's
    /// model knows that kernel at another size only ([`SimMachine::exact_sizes`]).
    pub fn size_mismatch(&self, kernel: &str, size: u64) -> Option<String> {
        let sizes = self.exact_sizes.as_ref()?;
        let &(_, expected) = sizes.iter().find(|(k, _)| k == kernel)?;
        (size != expected).then(|| {
            format!(
                "its operands hold {size} bytes, but machine '{}' models {kernel} on {expected} bytes only (generate the graph with the machine's tile size)",
                self.name
            )
        })
    }

    /// Whether tasks of `kernel` can run on `kind` here (some cost source applies).
    pub fn can_run(&self, kernel: &str, kind: DeviceKind) -> bool {
        if self.machine.count(kind) == 0 {
            return false;
        }
        self.debug_assert_loaded(kernel);
        let class = kind.to_string();
        let modelled = model_names(kernel).iter().any(|n| self.model.knows(n, &class));
        let replayed = crate::sched::is_replayed(kernel) || cholesky_flops(kernel, 1).is_some();
        modelled || (replayed && (kind == DeviceKind::Cpu || self.gpu_speedup.is_some()))
    }

    /// A StarPU machine asked about a kernel whose models were never read would silently
    /// price it by flops on CPUs only: a caller forgot [`SimMachine::load_models`].
    fn debug_assert_loaded(&self, kernel: &str) {
        if let Some(c) = &self.starpu {
            debug_assert!(
                c.was_considered(kernel),
                "SimMachine::load_models was not called for kernel '{kernel}' on {}",
                self.name
            );
        }
    }

    /// A stand-in kernel with implementations where [`SimMachine::can_run`] says so (the
    /// simulator never calls them).
    pub fn kernel(&self, name: &str) -> Arc<Kernel> {
        let mut k = Kernel::declare(name, Signature::any(0, usize::MAX));
        if self.can_run(name, DeviceKind::Cpu) {
            k = k.with_cpu(|_| Ok(()));
        }
        if self.can_run(name, DeviceKind::Gpu) {
            k = k.with_gpu(GpuImpl::single("", 0, Arc::new(|_| [1, 1, 1])));
        }
        Arc::new(k)
    }
}

/// The names a kernel's measured model may have: its own, or StarPU's Cholesky example's
/// (`chol_model_potrf` for `potrf`). hexec's `gemm_nt` (`C − A·Bᵀ`) is the update StarPU's
/// example calls `gemm`, so that generated Cholesky graphs, which name the kernels that run,
/// are priced by StarPU's measurements.
fn model_names(kernel: &str) -> [String; 2] {
    let starpu = if kernel == "gemm_nt" { "gemm" } else { kernel };
    [kernel.to_string(), format!("chol_model_{starpu}")]
}

/// Flops of a Cholesky tile kernel, from its operands' total bytes (f32 tiles).
fn cholesky_flops(kernel: &str, size: u64) -> Option<f64> {
    let (tiles, flops_per_b3) = match kernel {
        "potrf" => (1.0, 1.0 / 3.0),
        "trsm" => (2.0, 1.0),
        "syrk" => (2.0, 1.0),
        "gemm" | "gemm_nt" => (3.0, 2.0),
        _ => return None,
    };
    let b = (size as f64 / (4.0 * tiles)).sqrt();
    Some(flops_per_b3 * b.powi(3))
}

fn modelled_machine(cpus: usize, gpus: usize, gpu_name: &str) -> Machine {
    let mut m = Machine::synthetic_cpus(cpus);
    m.source = "model".into();
    m.add_gpus((0..gpus).map(|i| GpuDesc::modelled(gpu_name, i)).collect());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A StarPU machine whose models of a graph's kernel were never read refuses to price
    /// it (it would price it by flops on CPUs only, silently), naming the step missed.
    #[test]
    fn a_starpu_machine_without_its_models_read_refuses_to_simulate() {
        let dir = tempfile::tempdir().unwrap();
        let bus = dir.path().join("sampling/bus");
        std::fs::create_dir_all(&bus).unwrap();
        let models = dir.path().join("sampling/codelets/45");
        std::fs::create_dir_all(&models).unwrap();
        // A valid codelet model: one CPU and one GPU combination, a 4 KiB and a 16 KiB row.
        let codelet = "45\n2\n1\n0\n0\n1\n1\n2\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n\
            0000abcd 12288 1 100 10 1 1 10\n0000abce 49152 1 800 10 1 1 10\n\
            1\n1\n0\n1\n1\n2\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n\
            0000abcd 12288 1 10 1 1 1 10\n0000abce 49152 1 80 1 1 1 10\n";
        std::fs::write(models.join("chol_model_potrf.m"), codelet).unwrap();
        std::fs::write(
            bus.join("m.config"),
            "# cfg\n4 # Number of CPUs\n1 # Number of CUDA devices\n",
        )
        .unwrap();
        std::fs::write(bus.join("m.bandwidth"), "0 1000\n1000 0\n").unwrap();
        std::fs::write(bus.join("m.latency"), "0 10\n10 0\n").unwrap();
        let sm = SimMachine::from_starpu(dir.path(), "m").unwrap();
        let spec = crate::graph::formats::cholesky::generate(2, 4);
        // Kernels declared by hand: `sm.kernel` would stop a debug build at once.
        let declare = |k: &str| Arc::new(Kernel::declare(k, Signature::any(0, usize::MAX)).with_cpu(|_| Ok(())));
        let g = spec
            .build_virtual(&declare, &crate::graph::formats::BuildOptions::default())
            .unwrap();
        let e = simulate(&g, &sm, crate::PolicyKind::Locality, &SimOptions::default()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("potrf") && text.contains("load_models"), "{text}");
    }

    /// `links=free` on a StarPU machine: an unknown option is named before any file is read,
    /// and free links cost nothing between any two memories.
    #[test]
    fn free_links_cost_nothing() {
        let e = SimMachine::parse("starpu:/nowhere:sirocco,links=fast").unwrap_err();
        assert!(e.contains("'links=fast'") && e.contains("links=free"), "{e}");
        let mut m = SimMachine::parse("cpus:2,gpus:2,gpu-speedup:5,bw:10,lat:5").unwrap();
        assert!(m.bandwidth[0][1].is_finite() && m.latency[1][0] > 0.0);
        assert!(!m.links_free());
        m.free_links();
        assert!(m.links_free());
        assert!(m.bandwidth.iter().flatten().all(|b| b.is_infinite()));
        assert!(m.latency.iter().flatten().all(|&l| l == 0.0));
        assert!(m.name.ends_with("(free links)"), "{}", m.name);
    }

    #[test]
    fn specs_parse_and_explain_mistakes() {
        let m = SimMachine::parse("cpus:16,gpus:4,gpu-speedup:20").unwrap();
        assert_eq!(
            (m.machine.count(DeviceKind::Cpu), m.machine.count(DeviceKind::Gpu)),
            (16, 4)
        );
        assert_eq!(m.cost("spin", DeviceKind::Gpu, 0, Some(2.0)), Some(0.1));
        assert_eq!(m.cost("spin", DeviceKind::Cpu, 0, Some(2.0)), Some(2.0));
        assert!(m.can_run("gemm", DeviceKind::Gpu));
        assert!(!m.can_run("mystery", DeviceKind::Cpu));
        let c = SimMachine::parse("cpus:4").unwrap();
        assert!(!c.can_run("spin", DeviceKind::Gpu));
        assert!(SimMachine::parse("cpus:4,gpus:1").unwrap_err().contains("gpu-speedup"));
        assert!(SimMachine::parse("cpus:4,tpus:1").unwrap_err().contains("'tpus'"));
        assert!(SimMachine::parse("cpus:x").unwrap_err().contains("'x'"));
        assert!(SimMachine::parse("starpu:/nonexistent:sirocco")
            .unwrap_err()
            .contains("sirocco.config"));
        // TOML machine files, when this build reads them.
        if cfg!(not(feature = "toml")) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(&p, "cpus = 8\ngpus = 2\ngpu_speedup = 5.0\n").unwrap();
        let t = SimMachine::parse(p.to_str().unwrap()).unwrap();
        assert_eq!(t.machine.num_workers(), 10);
        std::fs::write(&p, "cpus = 8\nwarp = 2\n").unwrap();
        assert!(SimMachine::parse(p.to_str().unwrap()).unwrap_err().contains("warp"));
    }

    #[test]
    fn cholesky_flops_follow_tile_sizes() {
        let b = 960.0f64;
        let gemm = cholesky_flops("gemm", (3.0 * b * b * 4.0) as u64).unwrap();
        assert!((gemm / (2.0 * b.powi(3)) - 1.0).abs() < 1e-9);
    }
}
