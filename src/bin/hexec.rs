//! The hexec command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hexec::bench::overhead::{self, OverheadConfig, Shape};
use hexec::gpu::GpuRequest;
use hexec::graph::formats::{self, BuildOptions, Format};
use hexec::trace::write_chrome_trace;
use hexec::{PolicyKind, RunError, RunOptions, Runtime, RuntimeBuilder};

#[derive(Parser)]
#[command(
    name = "hexec",
    version,
    about = "Run task graphs on every CPU core and GPU of this machine"
)]
struct Cli {
    /// More log output (-v: info, -vv: debug, -vvv: trace, including a span per task).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Also use software GPU adapters (CPU-type, such as Mesa's lavapipe), which are not used
    /// by default: they run on the CPU cores, slower than the CPU workers, but run every GPU
    /// path on a machine without a GPU. Same as HEXEC_SOFTWARE_GPUS=1.
    #[arg(long, global = true)]
    software_gpus: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the machine: NUMA nodes, cores, workers and their victim order, CPU features,
    /// GPUs and the adapters not used.
    Info {
        /// Print the machine as one JSON object (workers, NUMA nodes, GPUs, adapters).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        devices: DeviceArgs,
    },
    /// Run a graph file (native JSON, WfCommons JSON, STG, Dask JSON, gzipped or not) and
    /// evaluate its checks.
    Run {
        #[command(flatten)]
        io: GraphArgs,
        /// Performance-model file: read before the run when it exists, written after it
        /// with what the run measured.
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        machine: MachineArgs,
    },
    /// Run the demo job: solve A·x = b for a random SPD matrix by tiled Cholesky on every
    /// core and GPU, with its residuals (--blockwise: the old blockwise array graph).
    Demo {
        /// The matrix's side (the default takes about 5 to 20 s on two cores).
        #[arg(long, default_value_t = 14336)]
        n: usize,
        /// The tile side.
        #[arg(long, default_value_t = 512)]
        tile: usize,
        /// Element type: f32 or f64 (f64 tiles run on CPUs).
        #[arg(long = "type", default_value = "f32")]
        elem: String,
        /// Run the old blockwise demo instead (axpy, scale and sum on tiles, then a tree of
        /// adds), as one graph.
        #[arg(long)]
        blockwise: bool,
        /// With --blockwise: number of tiles.
        #[arg(long, default_value_t = 64)]
        tiles: usize,
        /// With --blockwise: elements (f32) per tile.
        #[arg(long, default_value_t = 1 << 16)]
        tile_len: usize,
        /// Write a Chrome/Perfetto trace of the run to this file (open it in ui.perfetto.dev).
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Print the summary (and the check) as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        machine: MachineArgs,
    },
    /// Simulate a graph on a modelled machine with the same policies as `run`.
    Sim {
        #[command(flatten)]
        io: GraphArgs,
        /// `starpu:DIR:NAME[,links=free]`, `kernel-summary:PATH:cpus=N,gpus=M,tile=B[,links=free]`, a `.toml`
        /// file, or `cpus:N[,gpus:M,gpu-speedup:S,bw:GBPS,lat:US,gflops:G]`.
        #[arg(long)]
        machine: String,
        /// eager, ws, locality, heft, heteroprio or random.
        #[arg(long, default_value = "locality")]
        policy: PolicyKind,
        /// Memory limits, e.g. `host=2GiB,gpu=256MiB` (GPUs evict, the host spills to a disk
        /// modelled at 2 GB/s; a `disk=` limit is not modelled).
        #[arg(long)]
        mem: Option<hexec::MemoryLimits>,
        /// Under a limit, do not hold data-producing roots back (to measure what it saves).
        #[arg(long)]
        no_backpressure: bool,
    },
    /// Generate graphs.
    Gen {
        #[command(subcommand)]
        which: GenCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum GenCommand {
    /// A tiled Cholesky factorisation (potrf, trsm, syrk, gemm_nt) in the native format, ready
    /// to run: tiles of a positive definite matrix, and a check of the factor's residual.
    Cholesky {
        /// Tiles per side of the matrix.
        #[arg(long)]
        tiles: usize,
        /// The side of a tile (elements).
        #[arg(long, default_value_t = 960)]
        tile_size: usize,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Memory limits: a blockwise workload at 4x and 16x the GPU limit against no limit
    /// (with --host: on CPU workers against the host limit, spilling to files).
    Memory {
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        /// Limit host memory instead of the GPU's (no GPU needed).
        #[arg(long)]
        host: bool,
        /// With --host: the produced tiles are temporaries, freed once reduced.
        #[arg(long)]
        temps: bool,
        /// With --host: the scheduling policy.
        #[arg(long, default_value = "ws")]
        policy: PolicyKind,
        /// A real tiled Cholesky instead (host limits with --host, else the GPU's).
        #[arg(long)]
        cholesky: bool,
        /// With --cholesky: tiles per side of the matrix.
        #[arg(long, default_value_t = 12)]
        grid: usize,
        /// With --cholesky: the side of a tile.
        #[arg(long, default_value_t = 64)]
        tile_side: usize,
        /// Timed runs per row (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Number of tiles.
        #[arg(long, default_value_t = 64)]
        tiles: usize,
        /// Elements (f32) per tile.
        #[arg(long, default_value_t = 65536)]
        tile_len: usize,
    },
    /// Soak: a large graph clean, then with injected failures and a GPU lost part way;
    /// results must match, resident memory is sampled.
    Soak {
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        /// Tasks in the soak graph.
        #[arg(long, default_value_t = 1_000_000)]
        tasks: usize,
        /// Independent chains the tasks are spread over.
        #[arg(long, default_value_t = 1000)]
        tiles: usize,
        /// Probability that an attempt fails.
        #[arg(long, default_value_t = 0.01)]
        fail_rate: f64,
        /// When the first GPU is lost (if there is one).
        #[arg(long, default_value = "200ms", value_parser = parse_duration_arg)]
        loss_after: std::time::Duration,
    },
    /// Schedule quality in the simulator: each policy's makespan over the best policy's and the
    /// best over the lower bound (the LP bound on CPU+GPU machines).
    Schedule {
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        /// Smaller graphs, fewer of them.
        #[arg(long)]
        quick: bool,
        /// The shared workloads directory (heterogeneous/, stg/, wfcommons/ under it).
        #[arg(long, default_value = "../shared/workloads")]
        workloads: PathBuf,
    },
    /// Per-GPU figures: GEMM GFLOP/s, elementwise and reduction GB/s, transfer bandwidth and latency.
    Gpu {
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
        /// Smaller problem sizes.
        #[arg(long)]
        quick: bool,
        /// Timed repetitions per figure (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// GPUs to measure: all, or a count.
        #[arg(long, default_value = "all")]
        gpus: GpuRequest,
        /// Store the measured host↔GPU links in this performance-model file (created or
        /// updated), for `hexec run --model`.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// The CPU tile kernels' GFLOP/s on one core beside faer's own routines (and numpy's
    /// BLAS for GEMM when numpy is installed), measured in the same run.
    Kernels {
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        /// Tile sides, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = hexec::bench::kernels::TILES)]
        tiles: Vec<usize>,
        /// Timed repetitions per figure (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Tiled Cholesky and GEMM on the runtime (f32, f64) beside faer's dense routines on the
    /// same cores, SciPy/OpenBLAS (with --python) and StarPU's cholesky_implicit, in the same
    /// run.
    Linalg {
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        devices: DeviceArgs,
        /// Scheduling policy: locality, ws, eager, heft, heteroprio or random.
        #[arg(long, default_value = "locality")]
        policy: PolicyKind,
        /// Matrix sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [2048, 4096])]
        sizes: Vec<usize>,
        /// Tile size (default: 256 for f32, 192 for f64, about 288 KiB per tile).
        #[arg(long)]
        tile: Option<usize>,
        /// Operations: cholesky, gemm.
        #[arg(long, value_delimiter = ',', default_values_t = ["cholesky".to_string(), "gemm".to_string()])]
        ops: Vec<String>,
        /// Element types: f32, f64.
        #[arg(long = "types", value_delimiter = ',', default_values_t = ["f32".to_string(), "f64".to_string()])]
        types: Vec<String>,
        /// Timed repetitions per figure (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// A Python with numpy and SciPy for the OpenBLAS column (scripts/bench-linalg.sh
        /// makes one).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Elementwise chains of 1 to --ops operations on a tiled matrix, fused into one task per
    /// tile and unfused (one task and one array per operation): time, tasks, memory, bytes
    /// moved.
    Fusion {
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        devices: DeviceArgs,
        /// The matrix's side (f32).
        #[arg(long, default_value_t = 4096)]
        n: usize,
        /// The tile side.
        #[arg(long, default_value_t = 1024)]
        tile: usize,
        /// The longest chain.
        #[arg(long, default_value_t = 8)]
        ops: usize,
        /// Timed repetitions per figure (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Cost per empty task in standard shapes, hexec against rayon.
    Overhead {
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
        /// Use only the first N cores.
        #[arg(long)]
        cpus: Option<usize>,
        /// Timed repetitions per shape (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Where the Dask graphs are (tree-15.json.gz, merge-10000.json.gz).
        #[arg(long, default_value = "../shared/workloads/dask")]
        dask_dir: PathBuf,
        /// Smaller shapes (10,000 tasks), for a quick look.
        #[arg(long)]
        quick: bool,
        /// Leave out the million-task rows (run and simulated under every policy).
        #[arg(long)]
        no_large: bool,
    },
    /// The live runtime: empty tasks submitted one by one (from one and two threads) beside
    /// StarPU's tasks_overhead, one task's latency on an idle runtime, and resident memory
    /// along a long stream.
    Stream {
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
        /// Use only the first N cores.
        #[arg(long)]
        cpus: Option<usize>,
        /// Tasks per stream.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Tasks of the stream whose resident memory is sampled (0: none).
        #[arg(long, default_value_t = 10_000_000)]
        long: usize,
    },
}

/// The graph file `run` and `sim` read, and what they write.
#[derive(Args, Clone)]
struct GraphArgs {
    /// The graph file; its format is detected from its content (gzip is decompressed).
    graph: PathBuf,
    /// Force the file format instead of detecting it: native, wfcommons, stg, dask, cholesky
    /// (a tiled-Cholesky DAG file, size-only tiles: `sim` only).
    #[arg(long)]
    format: Option<Format>,
    /// Multiply recorded task durations (spin/sleep) by this factor.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Write a Chrome/Perfetto trace of the (real or simulated) schedule; open it in
    /// ui.perfetto.dev.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

impl GraphArgs {
    fn load(&self) -> Result<formats::GraphSpec, formats::LoadError> {
        formats::load(&self.graph, self.format)
    }

    fn build_options(&self) -> BuildOptions {
        BuildOptions {
            time_scale: self.time_scale,
            empty_tasks: false,
        }
    }
}

/// Which workers a command uses.
#[derive(Args, Clone)]
struct DeviceArgs {
    /// Use only the first N cores.
    #[arg(long)]
    cpus: Option<usize>,
    /// Do not pin worker threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// GPUs to use: all, none, or a count (a count above the number of adapters opens
    /// several devices per adapter). Software adapters count only with --software-gpus.
    #[arg(long, default_value = "all")]
    gpus: GpuRequest,
}

impl DeviceArgs {
    fn builder(&self) -> RuntimeBuilder {
        let mut b = Runtime::builder().gpus(self.gpus);
        if let Some(n) = self.cpus {
            b = b.cpus(n);
        }
        if self.no_pin {
            b = b.no_pinning();
        }
        b
    }
}

/// How a command that runs a graph runs it.
#[derive(Args, Clone)]
struct MachineArgs {
    #[command(flatten)]
    devices: DeviceArgs,
    /// Scheduling policy: locality, ws, eager, heft, heteroprio or random.
    #[arg(long, default_value = "locality")]
    policy: PolicyKind,
    /// Memory limits, e.g. `gpu=256MiB,host=2GiB,disk=20GiB`: past a GPU's limit, data copies
    /// are evicted (written back when they are the only valid copy); past the host's, spilled
    /// to files; past the disk's, a spill is an error.
    #[arg(long)]
    mem: Option<hexec::MemoryLimits>,
    /// Under a limit, do not hold data-producing roots back nor make GPUs prefer consumers
    /// (to measure what backpressure saves).
    #[arg(long)]
    no_backpressure: bool,
    /// How many times a failed task is tried again (on another worker when one may run it).
    #[arg(long, default_value_t = hexec::runtime::DEFAULT_RETRIES)]
    retries: u32,
    /// Try panicking kernels again too (by default a panic fails its task at once: it is most
    /// often a bug that recurs; transient errors, lost devices, memory shortages and injected
    /// faults are retried, and other kernel errors never are).
    #[arg(long)]
    retry_panics: bool,
    /// Inject faults, e.g. `panic:kernel=gemm:p=0.05,device-loss:gpu1:after=2s,seed=7`
    /// (kinds: panic, gpu-error, device-loss, worker-loss, slow).
    #[arg(long)]
    inject: Option<hexec::runtime::faults::FaultPlan>,
    /// After a task fails for good, go on with everything that does not depend on it and
    /// report every failure at the end (default: stop at the first).
    #[arg(long)]
    keep_going: bool,
    /// Stop with an error saying what every unfinished task waits for when no task finishes
    /// for this long (e.g. 30s); if a kernel never returns, exit (code 3) shortly after.
    #[arg(long, value_parser = parse_duration_arg)]
    stall_timeout: Option<std::time::Duration>,
    /// The run should finish within this (e.g. 2s): hexec predicts its finish from the
    /// models, warns when the prediction misses, reports both (over the graph's own), and
    /// re-runs stragglers speculatively.
    #[arg(long, value_parser = parse_duration_arg)]
    deadline: Option<std::time::Duration>,
    /// Re-run stragglers speculatively on idle CPU workers even without a deadline (first
    /// result wins).
    #[arg(long)]
    speculate: bool,
    /// Retire a worker while the run goes on, e.g. `gpu0@50ms` (repeatable): nothing new goes
    /// there, its queued tasks move, a GPU's only copies are brought home and its memory
    /// released; a line says how long that took and how many bytes moved.
    #[arg(long, value_parser = parse_retire_arg)]
    retire: Vec<(String, std::time::Duration)>,
}

fn parse_retire_arg(s: &str) -> Result<(String, std::time::Duration), String> {
    let (worker, at) = s
        .split_once('@')
        .ok_or_else(|| format!("--retire takes WORKER@TIME (e.g. gpu0@50ms), not '{s}'"))?;
    if worker.is_empty() {
        return Err(format!("--retire '{s}' names no worker (e.g. gpu0@50ms)"));
    }
    Ok((worker.to_string(), parse_duration_arg(at)?))
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    hexec::runtime::faults::parse_duration(s).ok_or_else(|| format!("'{s}' is not a duration (e.g. 30s, 500ms)"))
}

/// Called when a run stalls: gives the run a moment to stop by itself (its workers leave
/// as soon as their kernels return); if a kernel never returns, reports and exits.
fn exit_if_still_stalled(report: &str) {
    let report = report.to_string();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(5));
        eprintln!(
            "hexec: the run stalled and a kernel does not return: {}",
            terminal_safe(&report)
        );
        // `exit` skips the drops that remove them.
        signals::remove_own_dirs();
        std::process::exit(3);
    });
}

impl MachineArgs {
    fn builder(&self) -> RuntimeBuilder {
        let mut b = self.devices.builder().policy(self.policy);
        if let Some(limits) = self.mem {
            b = b.memory_limits(limits);
        }
        if self.no_backpressure {
            b = b.no_backpressure();
        }
        if let Some(plan) = &self.inject {
            b = b.inject(plan.clone());
        }
        b.retries(self.retries).retry_panics(self.retry_panics)
    }
}

/// A failure of the command, with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 2,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    restore_default_sigpipe();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Both run before any thread exists (setting the environment is not thread-safe).
    if cli.software_gpus {
        // The variable, not only the builders made here: benchmarks build their own runtimes.
        std::env::set_var(hexec::gpu::SOFTWARE_GPUS_ENV, "1");
    }
    let _xdg = quiet_mesa();
    if let Some(dir) = &_xdg {
        // An exit on a signal skips its drop.
        signals::remove_on_exit(dir.path());
    }
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("hexec: {}", terminal_safe(&f.message));
            ExitCode::from(f.code)
        }
    }
}

/// `s` with its control characters escaped (`\u{1b}`), line breaks kept: what the CLI
/// prints may carry names from input files (tasks, data, kernels, codelets), whose escape
/// sequences must not reach the terminal raw. Names are escaped where messages are made
/// (`Graph::task_name`, `LoadError`); this catches the rest.
fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\n') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`hexec info --json | head -1`)
/// panics; a command-line tool should end quietly as other Unix tools do.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE and no Rust code relies on SIGPIPE being ignored here (writes
    // to a closed pipe end the process instead of returning EPIPE, which is what we want).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" on every device
/// enumeration when the variable does not name a directory (as under sudo, cron or a bare
/// container). Point it at a private directory of our own for this process (mode 0700,
/// unpredictable name, removed on exit). Nothing of hexec's is written there.
fn quiet_mesa() -> Option<tempfile::TempDir> {
    let valid = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir());
    if valid {
        return None;
    }
    let mut b = tempfile::Builder::new();
    b.prefix("hexec-xdg-");
    #[cfg(unix)]
    {
        // tempfile's default mode is 0777 less the umask: ask for the private one.
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o700));
    }
    let dir = b.tempdir().ok()?;
    std::env::set_var("XDG_RUNTIME_DIR", dir.path());
    Some(dir)
}

fn dispatch(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Info { json, devices } => info(json, &devices),
        Command::Run { io, model, machine } => {
            // First, before any thread starts.
            let stop = signals::install();
            remove_stale_spill_dirs();
            let mut builder = machine.builder();
            if let Some(path) = model.as_ref().filter(|p| p.exists()) {
                builder = builder
                    .perf_model(hexec::sched::perfmodel::PerfModel::load(path)?)
                    .calibrate(true);
            } else if model.is_some() {
                builder = builder.calibrate(true);
            }
            let rt = builder.build()?;
            stop.spill_dir(rt.spill_directory());
            let (g, checks) = io.load()?.build_checked(&rt, &io.build_options())?;
            let result = run_and_report(&rt, &g, (io.trace, io.json), &machine, Verify::File(&checks), &stop);
            if stop.stopped_by().is_some() {
                // A stopped run's measurements are partial: keep the model as it was.
                return result;
            }
            if let Some(path) = &model {
                rt.perf_model().save(path)?;
            }
            result
        }
        Command::Demo {
            n,
            tile,
            elem,
            blockwise,
            tiles,
            tile_len,
            trace,
            json,
            machine,
        } => {
            let stop = signals::install();
            remove_stale_spill_dirs();
            if !blockwise && trace.is_some() {
                return Err(Failure {
                    code: 2,
                    message: "--trace records one graph run: use it with --blockwise".into(),
                });
            }
            let bad = |message: String| Failure { code: 2, message };
            if blockwise && (tiles == 0 || tile_len == 0) {
                return Err(bad(format!(
                    "--tiles {tiles} --tile-len {tile_len}: both must be at least 1"
                )));
            }
            if !blockwise && (n == 0 || tile == 0) {
                return Err(bad(format!("--n {n} --tile {tile}: both must be at least 1")));
            }
            if !blockwise && !["f32", "f64"].contains(&elem.as_str()) {
                return Err(bad(format!("--type {elem}: the demo solves in f32 or f64")));
            }
            let rt = machine.builder().build()?;
            stop.spill_dir(rt.spill_directory());
            if !json {
                print_machine(&rt);
            }
            if blockwise {
                let demo = hexec::demo::blockwise(&rt, tiles, tile_len);
                return run_and_report(&rt, &demo.graph, (trace, json), &machine, Verify::Demo(&demo), &stop);
            }
            let graph_only = [
                ("--keep-going", machine.keep_going),
                ("--stall-timeout", machine.stall_timeout.is_some()),
                ("--deadline", machine.deadline.is_some()),
                ("--speculate", machine.speculate),
                ("--retire", !machine.retire.is_empty()),
                ("--tiles", tiles != 64),
                ("--tile-len", tile_len != 1 << 16),
            ];
            if let Some((flag, _)) = graph_only.iter().find(|(_, given)| *given) {
                return Err(Failure {
                    code: 2,
                    message: format!("{flag} applies to the blockwise demo's graph run: add --blockwise"),
                });
            }
            solve_demo(&rt, (n, tile, &elem), json, machine.policy, &stop)
        }
        Command::Sim {
            io,
            machine,
            policy,
            mem,
            no_backpressure,
        } => {
            let mut sm = hexec::sim::SimMachine::parse(&machine)?;
            let spec = io.load()?;
            // Only the models of the graph's kernels are read; what they leave out is logged
            // as warnings (on standard error).
            sm.load_models_for(&spec)?;
            let g = spec.build_virtual(&|k| sm.kernel(k), &io.build_options())?;
            let t = std::time::Instant::now();
            let r = hexec::sim::simulate(
                &g,
                &sm,
                policy,
                &hexec::sim::SimOptions {
                    record_trace: io.trace.is_some(),
                    gpu_memory: mem.and_then(|m| m.gpu),
                    host_memory: mem.and_then(|m| m.host),
                    no_backpressure,
                    lp_bound: true,
                },
            )?;
            let took = t.elapsed();
            if let Some(path) = &io.trace {
                write_trace(path, &g, &r.run)?;
            }
            if io.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} tasks on {} ({} cpu, {} gpu workers), policy {}: makespan {:.6} s, lower bound {:.6} s (critical path {:.6}, area {:.6}{}), ratio {:.3}; {} bytes transferred, {} steals; simulated in {:.3} s",
                    r.run.tasks,
                    terminal_safe(&r.machine),
                    sm.machine.count(hexec::DeviceKind::Cpu),
                    sm.machine.count(hexec::DeviceKind::Gpu),
                    r.run.policy,
                    r.run.makespan_s,
                    r.lower_bound_s,
                    r.critical_path_s,
                    r.area_bound_s,
                    r.mixed_bound_s.map(|m| format!(", LP {m:.6}")).unwrap_or_default(),
                    r.makespan_over_bound,
                    r.run.bytes_transferred,
                    r.run.steals,
                    took.as_secs_f64()
                );
            }
            if let Some(path) = &io.trace {
                trace_written(path, io.json);
            }
            Ok(())
        }
        Command::Gen {
            which:
                GenCommand::Cholesky {
                    tiles,
                    tile_size,
                    output,
                },
        } => {
            if tiles == 0 || tile_size == 0 {
                return Err(Failure {
                    code: 2,
                    message: "--tiles and --tile-size must be positive".into(),
                });
            }
            formats::cholesky::check_grid(tiles).map_err(|why| format!("--tiles: {why}"))?;
            let spec = formats::cholesky::generate(tiles, tile_size);
            let text = serde_json::to_string_pretty(&spec)?;
            match output {
                Some(p) => std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?,
                None => println!("{text}"),
            }
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Soak {
                    json,
                    tasks,
                    tiles,
                    fail_rate,
                    loss_after,
                },
        } => {
            let mut rows = vec![hexec::bench::soak::measure(
                tasks.max(1),
                tiles,
                fail_rate,
                loss_after,
                false,
            )?];
            let with_gpus = hexec::bench::soak::measure(tasks.max(1), tiles, fail_rate, loss_after, true)?;
            if with_gpus.with_gpus {
                rows.push(with_gpus);
            }
            print_json_or(json, &rows, || {
                print!("{}", hexec::bench::soak::markdown(&rows));
            })?;
            if rows.iter().any(|r| !r.results_identical) {
                return Err(Failure {
                    code: 1,
                    message: "the faulty run's results differ from the clean run's".into(),
                });
            }
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Linalg {
                    json,
                    devices,
                    policy,
                    sizes,
                    tile,
                    ops,
                    types,
                    reps,
                    python,
                },
        } => {
            let rt = devices.builder().policy(policy).build()?;
            let cfg = hexec::bench::linalg::LinalgConfig {
                sizes,
                tile,
                reps,
                ops,
                types,
                python,
            };
            let report = hexec::bench::linalg::measure(&cfg, &rt)?;
            print_json_or(json, &report, || {
                println!("{}", hexec::bench::linalg::markdown(&report));
            })?;
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Fusion {
                    json,
                    devices,
                    n,
                    tile,
                    ops,
                    reps,
                },
        } => {
            if n == 0 || tile == 0 || ops == 0 {
                return Err(Failure {
                    code: 2,
                    message: format!("--n {n} --tile {tile} --ops {ops}: each must be at least 1"),
                });
            }
            let rt = devices.builder().build()?;
            let rows = hexec::bench::linalg::fusion(&rt, n, tile, ops, reps)?;
            print_json_or(json, &rows, || {
                println!(
                    "elementwise chains on a {n}×{n} f32 matrix in tiles of {tile}, median of {} runs\n",
                    reps.max(1)
                );
                print!("{}", hexec::bench::linalg::fusion_markdown(&rows));
            })?;
            Ok(())
        }
        Command::Bench {
            which: BenchCommand::Kernels { json, tiles, reps },
        } => {
            let report = hexec::bench::kernels::measure(&tiles, reps)?;
            print_json_or(json, &report, || {
                println!("CPU tile kernels, f32, one thread, median of {} runs\n", reps.max(1));
                print!("{}", hexec::bench::kernels::markdown(&report));
            })?;
            Ok(())
        }
        Command::Bench {
            which: BenchCommand::Schedule { json, quick, workloads },
        } => {
            let sources = hexec::bench::schedule::Sources { workloads };
            let table = hexec::bench::schedule::measure(&sources, quick)?;
            if table.rows.is_empty() {
                // Nothing measured: an empty table would read as a result.
                for s in &table.skipped {
                    eprintln!("{s}");
                }
                let looked: Vec<String> = sources.looked_in().iter().map(|p| p.display().to_string()).collect();
                // A relative default resolves against the current directory: say which.
                let from = match std::env::current_dir() {
                    Ok(cwd) if sources.workloads.is_relative() => format!(" (from {})", cwd.display()),
                    _ => String::new(),
                };
                return Err(Failure {
                    code: 2,
                    message: format!(
                        "no workload found under {}{from}: looked for {}; run it where that path reaches the shared workloads, or give --workloads DIR",
                        sources.workloads.display(),
                        looked.join(", ")
                    ),
                });
            }
            print_json_or(json, &table.rows, || {
                println!("in the simulator: each policy's makespan over the best policy's on the same graph (1.000: the best), and the best over the lower bound (1.000: optimal)\n");
                print!("{}", hexec::bench::schedule::markdown(&table.rows));
            })?;
            print_skipped(&table.skipped, json);
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Memory {
                    json,
                    host,
                    cholesky: true,
                    grid,
                    tile_side,
                    reps,
                    ..
                },
        } => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let rows = hexec::bench::memory::measure_cholesky(grid.max(1), tile_side.max(1), cpus, reps, !host)?;
            print_json_or(json, &rows, || {
                print!("{}", hexec::bench::memory::cholesky_markdown(&rows));
            })?;
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Memory {
                    json,
                    host: true,
                    temps,
                    policy,
                    tiles,
                    tile_len,
                    reps,
                    ..
                },
        } => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let rows = hexec::bench::memory::measure_host(tiles.max(2), tile_len.max(1), cpus, reps, temps, policy)?;
            print_json_or(json, &rows, || {
                print!("{}", hexec::bench::memory::host_markdown(&rows));
            })?;
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Memory {
                    json,
                    tiles,
                    tile_len,
                    reps,
                    ..
                },
        } => {
            let rows = hexec::bench::memory::measure(tiles.max(2), tile_len.max(1), reps)?;
            print_json_or(json, &rows, || {
                print!("{}", hexec::bench::memory::markdown(&rows));
            })?;
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Gpu {
                    json,
                    quick,
                    reps,
                    gpus,
                    model,
                },
        } => {
            let rt = Runtime::builder().cpus(1).gpus(gpus).build()?;
            if rt.gpus().is_empty() {
                return Err(Failure {
                    code: 2,
                    message: hexec::bench::NO_GPU.into(),
                });
            }
            let mut figures = Vec::new();
            for dev in rt.gpus() {
                figures.extend(hexec::bench::gpu::measure(dev, quick, reps.max(1))?);
            }
            print_json_or(json, &figures, || {
                print!("{}", hexec::bench::gpu::markdown(&figures));
            })?;
            if let Some(path) = model {
                let mut m = if path.exists() {
                    hexec::sched::perfmodel::PerfModel::load(&path)?
                } else {
                    hexec::sched::perfmodel::PerfModel::new()
                };
                for (from, to, bw, lat) in hexec::bench::gpu::links(&figures) {
                    m.set_link(
                        from,
                        to,
                        hexec::sched::perfmodel::LinkModel {
                            bandwidth: bw,
                            latency: lat,
                        },
                    );
                }
                m.save(&path)?;
                if !json {
                    println!("links written to {}", path.display());
                }
            }
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Stream {
                    json,
                    cpus,
                    tasks,
                    reps,
                    long,
                },
        } => bench_stream(
            json,
            &hexec::bench::stream::StreamConfig {
                cpus,
                tasks: tasks.max(1),
                reps: reps.max(1),
                policies: vec![PolicyKind::Eager, PolicyKind::Ws, PolicyKind::Locality],
                long_stream: long,
            },
        ),
        Command::Bench {
            which:
                BenchCommand::Overhead {
                    json,
                    cpus,
                    reps,
                    dask_dir,
                    quick,
                    no_large,
                },
        } => {
            let large = !quick && !no_large;
            let mut shapes = if quick {
                vec![Shape::Independent(10_000), Shape::Chain(10_000), Shape::BinaryTree(13)]
            } else {
                Shape::standard(Some(&dask_dir))
            };
            if large {
                shapes.extend(Shape::large());
            }
            let cfg = OverheadConfig {
                cpus,
                reps: reps.max(1),
                // Every policy where the million-task rows are measured: they are there to
                // show each policy's cost per decision staying flat.
                policies: if large {
                    PolicyKind::ALL.to_vec()
                } else {
                    vec![PolicyKind::Eager, PolicyKind::Ws, PolicyKind::Locality]
                },
            };
            let overhead::Table { rows, skipped } = overhead::measure(&shapes, &cfg)?;
            let sim_rows = if large {
                overhead::measure_sim(&Shape::large(), &PolicyKind::ALL)?
            } else {
                Vec::new()
            };
            // The only shapes read from files are the Dask graphs of --dask-dir.
            let skipped: Vec<String> = skipped
                .iter()
                .map(|s| format!("{s} (point --dask-dir at the Dask graphs)"))
                .collect();
            if json {
                if large {
                    let both = serde_json::json!({ "rows": rows, "sim": sim_rows });
                    println!("{}", serde_json::to_string_pretty(&both)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
            } else {
                let mut b = Runtime::builder().gpus(GpuRequest::None);
                if let Some(n) = cpus {
                    b = b.cpus(n);
                }
                let cores = b.build()?.machine().num_workers();
                println!(
                    "hexec per-task overhead on {cores} core(s), median of {} runs\n",
                    cfg.reps
                );
                print!("{}", overhead::markdown(&rows));
            }
            print_skipped(&skipped, json);
            if !json && !sim_rows.is_empty() {
                println!("\nsimulated (wall time of the simulation per task, one run each)\n");
                print!("{}", overhead::sim_markdown(&sim_rows));
            }
            Ok(())
        }
    }
}

fn bench_stream(json: bool, cfg: &hexec::bench::stream::StreamConfig) -> Result<(), Failure> {
    let table = hexec::bench::stream::measure(cfg)?;
    print_json_or(json, &table, || {
        println!("submission while running, median of {} runs\n", cfg.reps);
        print!("{}", hexec::bench::stream::markdown(&table));
    })?;
    Ok(())
}

fn info(json: bool, m: &DeviceArgs) -> Result<(), Failure> {
    let rt = m.builder().build()?;
    let adapters = hexec::gpu::adapters();
    if json {
        let mut v = serde_json::to_value(rt.machine())?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "hardware_gpus".into(),
                adapters.iter().filter(|a| !a.software).count().into(),
            );
            obj.insert("adapters".into(), serde_json::to_value(&adapters)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_machine(&rt);
        let mach = rt.machine();
        for w in &mach.workers {
            let victims: Vec<&str> = mach.victims[w.id.index()]
                .iter()
                .map(|v| mach.workers[v.index()].name.as_str())
                .collect();
            println!(
                "  {:<6} class {:<4} numa {}  pus {:?}  victims [{}]",
                w.name,
                mach.classes[w.class.0 as usize].name,
                w.numa,
                w.pus,
                victims.join(", ")
            );
        }
        if let Some(w) = mach.workers.first() {
            println!("  features: {}", w.features.join(" "));
        }
        let software_in_use = mach.gpus.iter().any(|g| g.device_type == "Cpu");
        if !cfg!(feature = "gpu") {
            println!("  gpus: none (this hexec was built without its `gpu` feature)");
        } else if mach.gpus.is_empty() && adapters.is_empty() {
            println!("  gpus: none found (on a machine without a GPU, install mesa-vulkan-drivers and pass --software-gpus to use lavapipe)");
        }
        if !software_in_use {
            for a in adapters.iter().filter(|a| a.software) {
                println!(
                    "  (not used) {} [{} {}]: a software adapter running on the CPU cores, used only with --software-gpus",
                    a.name, a.backend, a.device_type
                );
            }
        }
        for (w, g) in mach
            .workers
            .iter()
            .filter(|w| w.kind == hexec::DeviceKind::Gpu)
            .zip(&mach.gpus)
        {
            let mem = g.memory_bytes.map_or("unknown".to_string(), |b| {
                format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
            });
            println!(
                "  {:<6} {} [{} {}] driver {}  memory {mem}  max buffer {} MiB  features [{}]",
                w.name,
                g.name,
                g.backend,
                g.device_type,
                g.driver,
                g.max_buffer_size >> 20,
                g.features.join(", ")
            );
            // Where the array module's f64 tiles may run here.
            if g.features.iter().any(|f| f == "f64") {
                println!("         f64 arrays: elementwise expressions here (SHADER_F64); GEMM, Cholesky and solve tiles on CPUs");
            } else {
                println!("         f64 arrays: every f64 tile on CPUs (the adapter has no SHADER_F64)");
            }
        }
    }
    Ok(())
}

/// `hexec demo`: `A·x = b` by tiled Cholesky on every device, with a progress bar on a
/// terminal and the figures of the run.
fn solve_demo(
    rt: &Runtime,
    (n, tile, elem): (usize, usize, &str),
    json: bool,
    policy: PolicyKind,
    stop: &signals::Stop,
) -> Result<(), Failure> {
    use hexec::demo::solve::{self, SolveConfig};
    let bad = |message: String| Failure { code: 2, message };
    // Checked by the caller before the runtime was built.
    let tolerance = if elem == "f64" { 1e-12 } else { 1e-5 };
    // A tile larger than the matrix is the matrix.
    let tile = tile.min(n);
    // A, its factor's lower half and the vectors: refuse what the host cannot hold.
    let bytes = (n as u128) * (n as u128) * if elem == "f32" { 4 } else { 8 } * 3 / 2;
    let host = rt.machine().host_memory_bytes() as u128;
    if host > 0 && bytes > host {
        return Err(bad(format!(
            "--n {n}: the matrix and its factor need {} MiB, more than this machine's {} MiB",
            bytes >> 20,
            host >> 20
        )));
    }
    let nt = n.div_ceil(tile);
    if !json {
        println!(
            "solving A·x = b: A a random symmetric positive definite {n}×{n} {elem} matrix, tiled Cholesky in {nt}×{nt} tiles of {tile}, policy {}",
            policy.name()
        );
    }
    let cfg = SolveConfig { n, tile, tolerance };
    let terminal = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let token = stop.token();
    let mut bar = |done: usize, total: usize| {
        if token.is_cancelled() {
            return false;
        }
        if terminal && total > 0 {
            let filled = done * 30 / total;
            eprint!(
                "\r[{}{}] factor: {done}/{total} tiles",
                "#".repeat(filled),
                ".".repeat(30 - filled)
            );
            if done == total {
                eprintln!();
            }
        }
        true
    };
    let report = if elem == "f32" {
        solve::run::<f32>(rt, &cfg, &mut bar)
    } else {
        solve::run::<f64>(rt, &cfg, &mut bar)
    }
    .map_err(|e| Failure {
        code: 1,
        message: e.to_string(),
    })?;
    let Some(report) = report else {
        let (code, signal) = stop.stopped_by().unwrap_or((130, "a signal"));
        return Err(Failure {
            code,
            message: format!("stopped by {signal}: the factorisation's remaining tasks were cancelled"),
        });
    };
    print_json_or(json, &report, || {
        let w = &report.work;
        println!(
            "factor: {:.3} s, {:.1} GFLOP/s; solve: {:.3} s; {} tasks in {} runs",
            report.factor_s, report.factor_gflops, report.solve_s, w.completed, w.runs
        );
        for t in &w.workers {
            println!("  {:<8} {:>6} tasks  busy {:.3} s", t.name, t.tasks, t.busy_s);
        }
        println!("bytes moved between memory nodes: {}", w.bytes_transferred);
        println!(
            "relative residuals: factor ‖L·Lᵀ·v − A·v‖/‖A·v‖ = {:.2e}, solution ‖A·x − b‖/‖b‖ = {:.2e} (limit {:.0e})",
            report.factor_residual, report.solution_residual, report.tolerance
        );
    })?;
    if !report.ok {
        return Err(Failure {
            code: 1,
            message: format!("result WRONG: a residual is above {:.0e}", report.tolerance),
        });
    }
    if !json {
        println!("result OK");
    }
    Ok(())
}

fn print_machine(rt: &Runtime) {
    let m = rt.machine();
    for (w, g) in m
        .workers
        .iter()
        .filter(|w| w.kind == hexec::DeviceKind::Gpu)
        .zip(&m.gpus)
        .filter(|(_, g)| g.device_type == "Cpu")
    {
        println!(
            "note: {} is {}, a software GPU running on the CPU cores, used because software GPUs were asked for (--software-gpus): it runs the GPU paths, not at a GPU's speed",
            w.name, g.name
        );
    }
    println!(
        "machine: {} cpu and {} gpu worker(s) on {} NUMA node(s), policy {}",
        m.count(hexec::DeviceKind::Cpu),
        m.count(hexec::DeviceKind::Gpu),
        m.numa_nodes.len(),
        rt.policy()
    );
    for (i, n) in m.numa_nodes.iter().enumerate() {
        println!(
            "  numa{i} (os {}): {:.1} GiB, {} worker(s)",
            n.os_index,
            n.memory_bytes as f64 / (1u64 << 30) as f64,
            n.workers.len()
        );
    }
}

/// Writes the Chrome trace of `report` (a traced run of `g`) to `path`.
fn write_trace(path: &std::path::Path, g: &hexec::Graph, report: &hexec::RunReport) -> Result<(), Failure> {
    let f = std::fs::File::create(path).map_err(|e| format!("cannot write trace {}: {e}", path.display()))?;
    write_chrome_trace(f, g, report).map_err(|e| format!("cannot write trace {}: {e}", path.display()))?;
    Ok(())
}

/// Says where a trace went: on standard output after a text summary, on standard error when
/// standard output is JSON (so that it stays one JSON object).
fn trace_written(path: &std::path::Path, json: bool) {
    let line = format!("trace written to {} (open it in ui.perfetto.dev)", path.display());
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Prints `value` as pretty JSON when `json`, else runs `text` (the human-readable form).
fn print_json_or<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce()) -> serde_json::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text();
    }
    Ok(())
}

/// Prints a table's skipped rows after it: on standard error when standard output is JSON
/// (so that it stays one JSON document).
fn print_skipped(skipped: &[impl std::fmt::Display], json: bool) {
    for s in skipped {
        if json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

/// What failure handling did in a run, when it did anything: retries, recomputations,
/// speculative copies, tasks not run.
fn recovery_line(r: &hexec::RunReport) -> Option<String> {
    let mut parts = Vec::new();
    if r.retried > 0 {
        parts.push(format!("{} attempt(s) retried", r.retried));
    }
    if r.recomputed > 0 {
        parts.push(format!("{} task(s) re-run to recompute lost data", r.recomputed));
    }
    if r.speculated > 0 {
        parts.push(format!(
            "{} straggler(s) copied, {} copy(ies) won",
            r.speculated, r.speculation_won
        ));
    }
    if r.cancelled > 0 {
        parts.push(format!("{} task(s) not run (stopped)", r.cancelled));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Removes the spill directories that hexec processes killed outright (SIGKILL, a crash)
/// left in the system's temporary directory.
fn remove_stale_spill_dirs() {
    for dir in hexec::runtime::remove_stale_spill_dirs(&std::env::temp_dir()) {
        tracing::info!(path = %dir.display(), "removed the spill directory of a process that no longer exists");
    }
}

/// What is checked after a run: the demo's closed-form result, or a graph file's checks.
#[derive(Clone, Copy)]
enum Verify<'a> {
    Demo(&'a hexec::demo::Demo),
    File(&'a formats::Checks),
}

/// Runs `g` while other threads retire workers at the given times; the lines saying what
/// each retirement did.
fn run_retiring(
    rt: &Runtime,
    g: &hexec::Graph,
    opts: RunOptions,
    retire: &[(String, std::time::Duration)],
) -> (Result<hexec::RunReport, RunError>, Vec<String>) {
    if retire.is_empty() {
        return (rt.run_with(g, opts), Vec::new());
    }
    // Set when the run has ended; each retirer waits on it until its time comes.
    let ended = (std::sync::Mutex::new(false), std::sync::Condvar::new());
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        let retirers: Vec<_> = retire
            .iter()
            .map(|(worker, at)| {
                let ended = &ended;
                s.spawn(move || {
                    let wait = at.saturating_sub(start.elapsed());
                    let guard = ended.0.lock().unwrap_or_else(|e| e.into_inner());
                    let (guard, _) = ended
                        .1
                        .wait_timeout_while(guard, wait, |ended| !*ended)
                        .unwrap_or_else(|e| e.into_inner());
                    let run_ended = *guard;
                    drop(guard);
                    let worker = terminal_safe(worker);
                    if run_ended {
                        return format!("  retire {worker}: not done, the run ended before {at:?}");
                    }
                    let called = start.elapsed();
                    match rt.retire(&worker) {
                        Ok(r) => format!(
                            "  retired {worker} at {:.1} ms: left its work after {:.2} ms, {} datum(s) ({} bytes) brought home, {} bytes of device memory released {:.2} ms after the call",
                            called.as_secs_f64() * 1e3,
                            r.waited_s * 1e3,
                            r.data_copied,
                            r.bytes_copied,
                            r.bytes_released,
                            r.released_after_s * 1e3
                        ),
                        Err(e) => format!("  retire {worker}: {e}"),
                    }
                })
            })
            .collect();
        let result = rt.run_with(g, opts);
        *ended.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        ended.1.notify_all();
        let lines = retirers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| "  retire: the retiring thread panicked".into())
            })
            .collect();
        (result, lines)
    })
}

fn run_and_report(
    rt: &Runtime,
    g: &hexec::Graph,
    (trace, json): (Option<PathBuf>, bool),
    machine: &MachineArgs,
    verify: Verify<'_>,
    stop: &signals::Stop,
) -> Result<(), Failure> {
    let (demo, checks) = match verify {
        Verify::Demo(d) => (Some(d), None),
        Verify::File(c) => (None, Some(c)),
    };
    let opts = RunOptions {
        record_trace: trace.is_some(),
        keep_going: machine.keep_going,
        stall_timeout: machine.stall_timeout,
        on_stall: Some(exit_if_still_stalled),
        deadline: machine.deadline,
        speculate: machine.speculate,
        cancel: Some(stop.token()),
    };
    // A worker that does not exist is bad input, refused before the run (exit 2).
    if let Some((w, _)) = machine
        .retire
        .iter()
        .find(|(w, _)| rt.machine().worker_by_name(w).is_none())
    {
        let known: Vec<&str> = rt.machine().workers.iter().map(|w| w.name.as_str()).collect();
        return Err(Failure {
            code: 2,
            message: format!(
                "--retire {}: no worker is named so (workers: {})",
                terminal_safe(w),
                known.join(", ")
            ),
        });
    }
    let (result, retirements) = run_retiring(rt, g, opts, &machine.retire);
    for line in retirements {
        // On standard error with --json, so that standard output stays one JSON object.
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    let (report, failure) = match result {
        Ok(r) => (r, None),
        Err(e @ RunError::Cancelled { .. }) => {
            let (code, signal) = stop.stopped_by().unwrap_or((130, "a signal"));
            let msg = format!("stopped by {signal}: {e}");
            let report = e.report().cloned().expect("a cancelled run carries its report");
            (report, Some((code, msg)))
        }
        Err(e @ (RunError::TaskFailed { .. } | RunError::Stalled { .. })) => {
            let msg = e.to_string();
            let report = e.report().cloned().expect("failures and stalls carry their report");
            (report, Some((1, msg)))
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(path) = &trace {
        write_trace(path, g, &report)?;
    }
    // A failed or stopped run's data are not a result: checking them would call a correct
    // program wrong.
    let check = demo
        .filter(|_| failure.is_none() && stop.stopped_by().is_none())
        .map(|d| d.check(rt).map(|(got, ok)| (got, d.expected, ok)))
        .transpose()?;
    // A file's checks judge a complete result: after a failed run there is none to judge.
    let outcomes = match checks {
        Some(c) if failure.is_none() => c.evaluate(rt)?,
        _ => Vec::new(),
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some((got, expected, ok)), Some(obj)) = (check, v.as_object_mut()) {
            obj.insert(
                "check".into(),
                serde_json::json!({"result": got, "expected": expected, "ok": ok}),
            );
        }
        if let (false, Some(obj)) = (outcomes.is_empty(), v.as_object_mut()) {
            obj.insert("checks".into(), serde_json::to_value(&outcomes)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} tasks: {} completed, {} failed, {} skipped in {:.3} s (policy {}, {} steals, {} bytes transferred)",
            report.tasks,
            report.completed,
            report.failed,
            report.skipped,
            report.makespan_s,
            report.policy,
            report.steals,
            report.bytes_transferred
        );
        if let Some(line) = recovery_line(&report) {
            println!("  {line}");
        }
        for w in &report.warnings {
            println!("  warning: {}", terminal_safe(w));
        }
        if let (Some(deadline), Some(met)) = (report.deadline_s, report.deadline_met) {
            let predicted = report.predicted_s.map_or_else(
                || "no prediction (no model yet)".to_string(),
                |p| format!("predicted {p:.3} s"),
            );
            println!(
                "  deadline {deadline:.3} s: {predicted}, {}",
                if met { "met" } else { "MISSED" }
            );
        }
        for l in &report.transfers {
            println!(
                "  {:>5} -> {:<5} {:>12} bytes in {:>5} transfer(s), {:.3} s",
                l.from, l.to, l.bytes, l.transfers, l.seconds
            );
        }
        for w in &report.workers {
            println!(
                "  {:<6} {:>8} tasks  busy {:.3} s  steals {}",
                w.name, w.tasks, w.busy_s, w.steals
            );
        }
        if let Some((got, expected, ok)) = check {
            println!(
                "result {got} (expected {expected}): {}",
                if ok { "OK" } else { "WRONG" }
            );
        } else if demo.is_some() {
            println!("result not checked: the run failed");
        }
        for o in &outcomes {
            println!("{}", terminal_safe(&o.to_string()));
        }
    }
    if let Some(path) = &trace {
        trace_written(path, json);
    }
    if let Some((code, message)) = failure {
        return Err(Failure { code, message });
    }
    if let Some((got, expected, false)) = check {
        return Err(Failure {
            code: 1,
            message: format!("demo result {got} differs from {expected}"),
        });
    }
    if let Some(o) = outcomes.iter().find(|o| !o.ok) {
        return Err(Failure {
            code: 1,
            message: format!(
                "check {} failed: {} is {:.3e}, above the tolerance {:.1e}",
                o.check, o.measure, o.value, o.tolerance
            ),
        });
    }
    Ok(())
}

/// SIGINT and SIGTERM during `run` and `demo`: the first stops the run (no new task, the
/// running ones finish, for at most [`signals::GRACE`]), then the partial summary is printed,
/// the spill directory removed with the runtime, and hexec exits 128 + the signal (130, 143).
/// A second signal, or running tasks that outlast the grace, end the process at once, still
/// removing the spill directory.
///
/// The signals are blocked in every thread (installed before any other thread exists, and
/// inherited by all later ones) and taken synchronously by one thread with `sigwait`, so no
/// code runs in signal-handler context. Child processes start with an empty mask (the
/// standard library resets it before `exec`).
mod signals {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use hexec::CancelToken;

    /// How long running tasks may take to end after the first signal.
    pub const GRACE: Duration = Duration::from_secs(5);

    /// Private directories of this process (other than the spill directory) to remove when
    /// a signal makes it exit at once.
    static OWN_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// Removes the directories of [`remove_on_exit`], for exits that skip their drops.
    pub fn remove_own_dirs() {
        for own in OWN_DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_dir_all(own);
        }
    }

    /// Removes `dir`, a private directory of this process, if a signal makes it exit at once
    /// (or a stalled run's kernel never returns).
    pub fn remove_on_exit(dir: &std::path::Path) {
        OWN_DIRS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.to_path_buf());
    }

    /// What the signal thread shares with the command.
    #[derive(Default)]
    struct Shared {
        /// The first signal received (0: none).
        signal: AtomicI32,
        /// The runtime's spill directory, to remove when exiting without the runtime's drop.
        spill: Mutex<Option<PathBuf>>,
    }

    /// Stops a run on SIGINT or SIGTERM.
    pub struct Stop {
        token: CancelToken,
        shared: Arc<Shared>,
    }

    impl Stop {
        /// The token the run is given.
        pub fn token(&self) -> CancelToken {
            self.token.clone()
        }

        /// The spill directory to remove if the process has to exit without dropping the
        /// runtime.
        pub fn spill_dir(&self, dir: Option<&std::path::Path>) {
            *self.shared.spill.lock().unwrap_or_else(|e| e.into_inner()) = dir.map(PathBuf::from);
        }

        /// The signal that stopped the run, if one did: its exit code and name.
        pub fn stopped_by(&self) -> Option<(u8, &'static str)> {
            match self.shared.signal.load(Ordering::SeqCst) {
                0 => None,
                s => Some(((128 + s) as u8, name(s))),
            }
        }
    }

    fn name(sig: i32) -> &'static str {
        #[cfg(unix)]
        {
            match sig {
                libc::SIGINT => return "SIGINT",
                libc::SIGTERM => return "SIGTERM",
                _ => {}
            }
        }
        let _ = sig;
        "a signal"
    }

    /// Removes the spill directory and exits with 128 + `sig`, now.
    fn exit_now(shared: &Shared, sig: i32, why: &str) -> ! {
        let dir = shared.spill.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut removed = String::new();
        if let Some(dir) = dir {
            // A worker may be writing a file into it as we remove it: try again then.
            for _ in 0..3 {
                if std::fs::remove_dir_all(&dir).is_ok() || !dir.exists() {
                    removed = format!("; spill directory {} removed", dir.display());
                    break;
                }
            }
            if removed.is_empty() {
                removed = format!("; could not remove spill directory {}", dir.display());
            }
        }
        remove_own_dirs();
        eprintln!(
            "hexec: stopped by {}: {why}, exiting without waiting{removed}",
            name(sig)
        );
        std::process::exit(128 + sig);
    }

    /// Blocks SIGINT and SIGTERM and starts the thread that takes them. Must be called before
    /// any other thread is started (they inherit the blocked mask); without it, a signal
    /// could reach a thread that does not block it and end the process the default way.
    #[cfg(unix)]
    pub fn install() -> Stop {
        let stop = Stop {
            token: CancelToken::new(),
            shared: Arc::default(),
        };
        // SAFETY: sigemptyset/sigaddset initialise and fill the local set we pass them;
        // pthread_sigmask only reads `set` and writes `old`, both live locals. Called before
        // any other thread exists, so every later thread inherits the mask.
        let (set, old) = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            (set, old)
        };
        let (token, shared) = (stop.token.clone(), stop.shared.clone());
        let spawned = std::thread::Builder::new()
            .name("hexec-signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is an initialised signal set owned by this thread and `sig` a live
                // local that sigwait writes the signal's number into.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if shared
                    .signal
                    .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    let first = shared.signal.load(Ordering::SeqCst);
                    exit_now(&shared, first, &format!("{} again", name(sig)));
                }
                eprintln!(
                "hexec: {}: starting no more tasks, waiting up to {} s for the running ones (again to stop at once)",
                name(sig),
                GRACE.as_secs()
            );
                token.cancel();
                let shared = shared.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(GRACE);
                    exit_now(
                        &shared,
                        sig,
                        &format!("running tasks did not end within {} s", GRACE.as_secs()),
                    );
                });
            });
        if let Err(e) = spawned {
            // Nobody would take the signals: give them back their default action.
            // SAFETY: restores the mask saved above from a live local.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
            eprintln!("hexec: warning: cannot watch for SIGINT/SIGTERM ({e}); they will end hexec without cleanup");
        }
        stop
    }

    /// Without Unix signals, a stop that never comes.
    #[cfg(not(unix))]
    pub fn install() -> Stop {
        Stop {
            token: CancelToken::new(),
            shared: Arc::default(),
        }
    }
}
