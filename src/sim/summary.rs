//! Machines from a per-kernel summary table: the `kernel_summary.tsv` of McSweeney's
//! `cholesky_skylake_v100` measurements (means of 1000 timed runs of each Cholesky tile
//! kernel per tile size, on one Skylake core and on a V100, with the mean host↔device
//! transfer). A machine is `cpus` such cores and `gpus` such GPUs at one tile size; every
//! tile kernel costs its mean, and a tile's copy between memories costs the mean measured
//! transfer of that tile size (the mean over the four kernels), or nothing with free links.
//!
//! Spec: `kernel-summary:PATH:cpus=32,gpus=1,tile=1024[,links=free]`, where `PATH` is the
//! `.tsv` file or its directory. Every number is checked where it enters: an error names
//! the file and line, or the spec field.
//!
//! Invariant: the costs are registered at the operand bytes the simulator prices a task by
//! (the sum of its accessed data's bytes) for the f32 tiles of
//! [`crate::graph::formats::cholesky::generate`]: `potrf` one tile, `trsm` and `syrk` two,
//! `gemm_nt` three. The bytes only key the model; the times are the file's.

use std::path::{Path, PathBuf};

use super::SimMachine;
use crate::sched::perfmodel::PerfModel;

/// Largest summary file read.
const MAX_SUMMARY_BYTES: u64 = 16 << 20;

/// Runs behind each mean in McSweeney's files (1000 timed runs, the warm-up dropped).
const RUNS: u64 = 1000;

/// Whether copies between memories cost time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// One tile's copy costs the measured mean transfer; one copy at a time per direction.
    Measured,
    /// Infinite bandwidth, no latency: the policy's quality alone.
    Free,
}

/// What a `kernel-summary:` spec asks for.
#[derive(Clone, Debug)]
pub struct SummarySpec {
    pub path: PathBuf,
    pub cpus: usize,
    pub gpus: usize,
    pub tile: u64,
    pub links: Links,
}

impl SummarySpec {
    /// Parses the part after `kernel-summary:`: `PATH:cpus=32,gpus=1,tile=1024[,links=free]`.
    pub fn parse(rest: &str) -> Result<SummarySpec, String> {
        let (path, keys) = rest
            .rsplit_once(':')
            .ok_or("a summary machine is kernel-summary:PATH:cpus=N,gpus=N,tile=B[,links=free]")?;
        let mut spec = SummarySpec {
            path: PathBuf::from(path),
            cpus: 0,
            gpus: 0,
            tile: 0,
            links: Links::Measured,
        };
        for part in keys.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            let whole = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("'{v}' is not a whole number (in '{part}')"))
            };
            match k {
                "cpus" => spec.cpus = whole(v)? as usize,
                "gpus" => spec.gpus = whole(v)? as usize,
                "tile" => spec.tile = whole(v)?,
                "links" => {
                    spec.links = match v {
                        "free" => Links::Free,
                        "measured" => Links::Measured,
                        _ => return Err(format!("links '{v}' is neither 'free' nor 'measured'")),
                    }
                }
                other => return Err(format!("unknown key '{other}' (known: cpus, gpus, tile, links)")),
            }
        }
        let max = crate::limits::MAX_WORKERS;
        if spec.cpus.saturating_add(spec.gpus) > max || spec.cpus + spec.gpus == 0 {
            return Err(format!(
                "{} cpus and {} gpus: a machine has 1 to {max} workers",
                spec.cpus, spec.gpus
            ));
        }
        if spec.tile == 0 {
            return Err("no tile size, or 0 (tile=B, one of the file's sizes)".into());
        }
        Ok(spec)
    }
}

/// One kernel's row at one tile size, seconds.
#[derive(Clone, Copy, Debug)]
struct Row {
    cpu: (f64, f64),
    gpu: (f64, f64),
    transfer: f64,
}

/// The kernel in hexec's Cholesky graphs that a file's kernel name (`dgemm`...) measures,
/// and how many tiles it accesses.
fn graph_kernel(name: &str) -> Option<(&'static str, u64)> {
    match name {
        "dpotrf" | "spotrf" | "potrf" => Some(("potrf", 1)),
        "dtrsm" | "strsm" | "trsm" => Some(("trsm", 2)),
        "dsyrk" | "ssyrk" | "syrk" => Some(("syrk", 2)),
        "dgemm" | "sgemm" | "gemm" => Some(("gemm_nt", 3)),
        _ => None,
    }
}

/// Reads the rows of `tile` from the summary text (`path` names it in errors).
fn read_rows(text: &str, path: &Path, tile: u64) -> Result<Vec<(&'static str, u64, Row)>, String> {
    let at = |line: usize, why: String| format!("{}:{line}: {why}", path.display());
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().ok_or_else(|| at(1, "empty file".into()))?;
    let cols: Vec<&str> = header.split('\t').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| c.trim() == name)
            .ok_or_else(|| at(1, format!("no column '{name}'")))
    };
    let [nb, kernel, cpu, cpu_sd, gpu, gpu_sd, transfer] = [
        "nb",
        "kernel",
        "cpu_skylake_mean_us",
        "cpu_sd",
        "gpu_v100_kernel_mean_us",
        "gpu_sd",
        "transfer_mean_us",
    ]
    .map(col);
    let (nb, kernel, cpu, cpu_sd, gpu, gpu_sd, transfer) = (nb?, kernel?, cpu?, cpu_sd?, gpu?, gpu_sd?, transfer?);
    let mut rows = Vec::new();
    let mut sizes = std::collections::BTreeSet::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        let field = |c: usize| {
            f.get(c)
                .copied()
                .ok_or_else(|| at(i + 1, format!("{} fields", f.len())))
        };
        let micros = |c: usize| -> Result<f64, String> {
            let v = field(c)?;
            let x: f64 = v.parse().map_err(|_| at(i + 1, format!("'{v}' is not a number")))?;
            crate::limits::seconds(x * 1e-6).map_err(|why| at(i + 1, format!("{v} µs: {why}")))
        };
        let size: u64 = field(nb)?
            .parse()
            .map_err(|_| at(i + 1, format!("tile size '{}' is not a whole number", f[nb])))?;
        sizes.insert(size);
        if size != tile {
            continue;
        }
        let name = field(kernel)?;
        let Some((k, tiles)) = graph_kernel(name) else {
            return Err(at(
                i + 1,
                format!("unknown kernel '{name}' (known: dpotrf, dtrsm, dsyrk, dgemm)"),
            ));
        };
        rows.push((
            k,
            tiles,
            Row {
                cpu: (micros(cpu)?, micros(cpu_sd)?),
                gpu: (micros(gpu)?, micros(gpu_sd)?),
                transfer: micros(transfer)?,
            },
        ));
    }
    if rows.is_empty() {
        return Err(format!(
            "{}: no row for tile size {tile} (sizes in the file: {sizes:?})",
            path.display()
        ));
    }
    for needed in ["potrf", "trsm", "syrk", "gemm_nt"] {
        if !rows.iter().any(|r| r.0 == needed) {
            return Err(format!("{}: no {needed} row for tile size {tile}", path.display()));
        }
    }
    Ok(rows)
}

impl SimMachine {
    /// A machine from a kernel summary table (see the module's documentation).
    pub fn from_kernel_summary(spec: &SummarySpec) -> Result<SimMachine, String> {
        let path = if spec.path.is_dir() {
            spec.path.join("kernel_summary.tsv")
        } else {
            spec.path.clone()
        };
        let text = crate::limits::read_regular_file(&path, MAX_SUMMARY_BYTES)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let rows = read_rows(&text, &path, spec.tile)?;
        let tile_bytes = spec.tile * spec.tile * 4;
        let mut model = PerfModel::new();
        for &(kernel, tiles, r) in &rows {
            let size = tiles * tile_bytes;
            model.add_summary(kernel, "cpu", size, r.cpu.0, r.cpu.1, RUNS);
            if spec.gpus > 0 {
                model.add_summary(kernel, "gpu", size, r.gpu.0, r.gpu.1, RUNS);
            }
        }
        let copy_s = rows.iter().map(|r| r.2.transfer).sum::<f64>() / rows.len() as f64;
        let bw = match spec.links {
            Links::Free => f64::INFINITY,
            Links::Measured => tile_bytes as f64 / copy_s.max(1e-12),
        };
        let nodes = spec.gpus + 1;
        let bandwidth = (0..nodes)
            .map(|i| (0..nodes).map(|j| if i == j { f64::INFINITY } else { bw }).collect())
            .collect();
        let links = match spec.links {
            Links::Free => "free links".to_string(),
            Links::Measured => format!("copy {:.2} ms", copy_s * 1e3),
        };
        Ok(SimMachine {
            name: format!("{} Skylake + {} V100, b={} ({links})", spec.cpus, spec.gpus, spec.tile),
            machine: super::modelled_machine(spec.cpus, spec.gpus, "V100 (modelled)"),
            bandwidth,
            latency: vec![vec![0.0; nodes]; nodes],
            model,
            gpu_speedup: None,
            cpu_gflops: 10.0,
            starpu: None,
            exact_sizes: Some(
                rows.iter()
                    .map(|&(k, tiles, _)| (k.to_string(), tiles * tile_bytes))
                    .collect(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::DeviceKind;

    const TSV: &str = "nb\tkernel\tcpu_skylake_mean_us\tcpu_sd\tgpu_v100_kernel_mean_us\tgpu_sd\tgpu_incl_transfer_mean_us\ttransfer_mean_us\tspeedup_cpu_over_gpu\n\
        128\tdgemm\t89.85\t9.09\t11.32\t1.49\t151.21\t139.89\t7.94\n\
        128\tdpotrf\t141.07\t3.09\t84.81\t0.75\t353.56\t268.75\t1.66\n\
        128\tdsyrk\t72.17\t2.31\t31.86\t0.51\t162.64\t130.78\t2.27\n\
        128\tdtrsm\t75.20\t7.86\t44.12\t0.55\t154.92\t110.80\t1.70\n";

    fn machine(keys: &str) -> Result<SimMachine, String> {
        let dir = std::env::temp_dir().join(format!("hexec-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kernel_summary.tsv"), TSV).unwrap();
        SimMachine::parse(&format!("kernel-summary:{}:{keys}", dir.display()))
    }

    #[test]
    fn a_summary_machine_costs_each_kernel_its_mean_and_a_copy_the_mean_transfer() {
        let m = machine("cpus=32,gpus=1,tile=128").unwrap();
        assert_eq!(m.machine.count(DeviceKind::Cpu), 32);
        assert_eq!(m.machine.count(DeviceKind::Gpu), 1);
        let tile = 128 * 128 * 4;
        let gemm_gpu = m.cost("gemm_nt", DeviceKind::Gpu, 3 * tile, None).unwrap();
        assert!((gemm_gpu - 11.32e-6).abs() < 1e-12, "{gemm_gpu}");
        let potrf_cpu = m.cost("potrf", DeviceKind::Cpu, tile, None).unwrap();
        assert!((potrf_cpu - 141.07e-6).abs() < 1e-12, "{potrf_cpu}");
        let copy = tile as f64 / m.bandwidth[0][1];
        let mean = (139.89 + 268.75 + 130.78 + 110.80) / 4.0 * 1e-6;
        assert!((copy - mean).abs() < 1e-12, "{copy} vs {mean}");
        let free = machine("cpus=4,gpus=4,tile=128,links=free").unwrap();
        assert_eq!(free.bandwidth[0][1], f64::INFINITY);
    }

    /// A graph of other tiles than the machine's is refused, naming the task and both sizes
    /// (its cost would be extrapolated from one point).
    #[test]
    fn a_graph_of_other_tiles_is_refused_naming_the_sizes() {
        use crate::graph::formats::{cholesky, BuildOptions};
        use crate::sim::{simulate, SimError, SimOptions};
        let sm = machine("cpus=2,gpus=1,tile=128").unwrap();
        let build = |b: usize| {
            cholesky::generate(2, b)
                .build_virtual(&|k| sm.kernel(k), &BuildOptions::default())
                .unwrap()
        };
        let e = simulate(&build(64), &sm, crate::PolicyKind::Locality, &SimOptions::default()).unwrap_err();
        assert!(matches!(e, SimError::Unpriced { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("potrf(0)") && text.contains("16384") && text.contains("65536"),
            "{text}"
        );
        assert!(simulate(&build(128), &sm, crate::PolicyKind::Locality, &SimOptions::default()).is_ok());
    }

    /// With free links a plan's times are exact, so `locality` runs it as planned: on a 10×10
    /// Cholesky of 128² tiles on 32 cores and 1 or 4 GPUs it is no longer than `heft`. (Placing
    /// by earliest finish alone, it was 3% longer with 4 GPUs; following the plan with slack,
    /// 4.6% longer with 1.)
    #[test]
    fn locality_runs_an_exact_plan_as_planned() {
        use crate::graph::formats::{cholesky, BuildOptions};
        use crate::sim::{simulate, SimOptions};
        for gpus in [1, 4] {
            let sm = machine(&format!("cpus=32,gpus={gpus},tile=128,links=free")).unwrap();
            let g = cholesky::generate(10, 128)
                .build_virtual(&|k| sm.kernel(k), &BuildOptions::default())
                .unwrap();
            let run = |p| simulate(&g, &sm, p, &SimOptions::default()).unwrap().run.makespan_s;
            let (locality, heft) = (run(crate::PolicyKind::Locality), run(crate::PolicyKind::Heft));
            assert!(
                locality <= heft * (1.0 + 1e-9),
                "{gpus} GPU(s): locality {locality} s, heft {heft} s"
            );
        }
    }

    #[test]
    fn bad_summary_specs_say_what_is_wrong() {
        let e = machine("cpus=32,gpus=1,tile=100").unwrap_err();
        assert!(e.contains("no row for tile size 100") && e.contains("128"), "{e}");
        let e = machine("cpus=32,gpus=1").unwrap_err();
        assert!(e.contains("tile"), "{e}");
        let e = machine("cpus=32,gpus=1,tile=128,links=slow").unwrap_err();
        assert!(e.contains("links 'slow'"), "{e}");
        let e = machine("cpus=0,gpus=0,tile=128").unwrap_err();
        assert!(e.contains("1 to"), "{e}");
        let e = SimMachine::parse("kernel-summary:/nonexistent:cpus=1,tile=128").unwrap_err();
        assert!(e.contains("/nonexistent"), "{e}");
    }
}
