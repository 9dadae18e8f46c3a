//! Run summaries and Chrome/Perfetto traces.
//!
//! A [`RunReport`] is what every run returns (and what `hexec run --json` prints). With
//! tracing requested, it also carries a [`TraceLog`] of every task's start and end on its
//! worker and of every copy between memory nodes (naming the datum), which
//! [`write_chrome_trace`] turns into a file that ui.perfetto.dev or chrome://tracing opens:
//! one track per worker, one per link, and an arrow from each task to each of its successors.
//!
//! A GPU task's slice is its kernel's own span from timestamp queries, dated on the run's
//! clock by `GpuTimeline`; on a device without timestamp queries it is the task's even
//! share of its batch, marked `estimated`.

use std::io::{self, Write};

use serde::Serialize;

use crate::graph::Graph;

/// What a run reports about one memory node (written by the runtime and the simulator alike;
/// the report owns its types so that `trace` needs neither driver).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeMemory {
    /// The node's name (`host`, `gpu0`).
    pub node: String,
    /// `null` when unlimited.
    pub capacity_bytes: Option<u64>,
    /// Peak accounted use, bytes.
    pub peak_bytes: u64,
    /// Copies evicted from it.
    pub evictions: u64,
    /// Bytes copied back because the evicted copy was the only valid one: to the host from a
    /// GPU, to spill files from the host.
    pub written_back_bytes: u64,
    /// Copies evicted and brought back before any task completed on the node (each one made
    /// the node run one task at a time until the next completion).
    pub ping_pongs: u64,
}

// The copy and link types of a report, nameable from here (their module is internal).
pub use crate::memory::{LinkReport, Node, TransferEvent};

/// What one worker did.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerReport {
    /// The worker's name.
    pub name: String,
    /// Its class's name.
    pub class: String,
    /// Tasks it ran (successfully or not).
    pub tasks: u64,
    /// Time not spent idle (searching for work counts as busy).
    pub busy_s: f64,
    /// Tasks it took from another worker's deque.
    pub steals: u64,
    /// GPU workers: kernel time measured by GPU timestamp queries, when the device has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_s: Option<f64>,
}

/// One failed task: its last attempt's worker and error, and every attempt.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskFailure {
    /// The task's name.
    pub task: String,
    /// Its index in its graph (insertion order, [`crate::graph::TaskId::index`]).
    pub index: usize,
    /// Its kernel's name.
    pub kernel: String,
    /// Where its last attempt ran.
    pub worker: String,
    /// The last attempt's error.
    pub message: String,
    /// Every attempt, in order (the last one is `worker` and `message`).
    pub attempts: Vec<AttemptReport>,
}

/// One failed attempt of a task.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AttemptReport {
    /// Where it ran.
    pub worker: String,
    /// Its error.
    pub message: String,
}

/// Valid copies on one memory node at the end of a run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeResidency {
    /// The node's name.
    pub node: String,
    /// Data of the run with a valid copy there.
    pub data: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Start and end of one task, in nanoseconds since the run began.
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    /// The task, by index in its graph.
    pub task: u32,
    /// Start, ns since the run began.
    pub start_ns: u64,
    /// End, ns since the run began.
    pub end_ns: u64,
    /// The kernel's own time on a GPU, from timestamp queries.
    pub gpu_ns: Option<u64>,
    /// GPU tasks: the batch that ran it.
    pub batch: Option<GpuBatch>,
}

/// The batch a GPU task ran in, on the run's clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuBatch {
    /// The batch's number on its worker, from 0.
    pub seq: u32,
    /// Just before the batch was submitted.
    pub submit_ns: u64,
    /// When its worker saw it done (a worker waits for a batch after submitting the next, so
    /// this can be well after its last kernel ended).
    pub done_ns: u64,
    /// The device has no timestamp queries: the task's slice is its even share of the batch,
    /// not a measurement.
    pub estimated: bool,
}

/// A GPU worker's task slices during a run: kernel spans on the GPU's clock, dated on the
/// run's clock when the worker ends, so that every batch of the run gets the same and best
/// clock offset the run found.
///
/// The mapping: the GPU's timestamps count nanoseconds from an epoch of their own, at the
/// same rate as the CPU's monotonic clock, so `run = gpu + offset` for one unknown offset.
/// A batch's first kernel cannot begin before the batch was submitted, so
/// `submit − first_begin` is a lower bound of the offset for every batch; the largest over
/// the run is the tightest and is used (a kernel then appears at most its submission latency
/// early, and never before a task it depends on, which ended before the submit). The other
/// bound, `done − last_end`, is loose (the worker waits for a batch only after submitting the
/// next), so it serves only as a clamp: each slice is kept inside its batch's
/// `[submit, done]` and after the previous slice, since the GPU runs one worker's kernels in
/// submission order and tracks need nesting (a pass's beginning timestamp may be written
/// before the previous pass has finished).
#[derive(Debug, Default)]
pub(crate) struct GpuTimeline {
    /// Batches seen so far.
    batches: u32,
    /// The previous batch's `done_ns`: where an estimated batch's window starts at the
    /// earliest, so that estimated slices of pipelined batches do not overlap.
    last_done: u64,
    /// (index in the worker's events, kernel start and end on the GPU's clock in ns).
    spans: Vec<(usize, u64, u64)>,
    /// The largest lower bound of `run − gpu` found so far, in ns.
    offset: Option<i128>,
}

impl GpuTimeline {
    /// A finished batch: submitted at `submit_ns`, seen done at `done_ns` (run clock), with
    /// its earliest kernel beginning at `first_gpu_ns` on the GPU clock when timestamps were
    /// taken. Returns the batch for its tasks' events and the window its estimated slices
    /// share.
    pub fn batch(&mut self, submit_ns: u64, done_ns: u64, first_gpu_ns: Option<u64>) -> (GpuBatch, (u64, u64)) {
        let done_ns = done_ns.max(submit_ns);
        if let Some(first) = first_gpu_ns {
            let lower = i128::from(submit_ns) - i128::from(first);
            self.offset = Some(self.offset.map_or(lower, |o| o.max(lower)));
        }
        let batch = GpuBatch {
            seq: self.batches,
            submit_ns,
            done_ns,
            estimated: first_gpu_ns.is_none(),
        };
        let window = (submit_ns.max(self.last_done).min(done_ns), done_ns);
        self.batches += 1;
        self.last_done = self.last_done.max(done_ns);
        (batch, window)
    }

    /// The event at `event` in the worker's list ran its kernel from `start` to `end` on the
    /// GPU's clock.
    pub fn push(&mut self, event: usize, start: u64, end: u64) {
        self.spans.push((event, start, end));
    }

    /// Dates every pushed span on the run's clock (see the type's doc).
    pub fn apply(self, events: &mut [TraceEvent]) {
        let Some(offset) = self.offset else { return };
        let mut prev_end = 0u64;
        for (i, start, end) in self.spans {
            let Some(e) = events.get_mut(i) else { continue };
            let Some(b) = e.batch else { continue };
            let run = |gpu: u64| (i128::from(gpu) + offset).clamp(0, i128::from(u64::MAX)) as u64;
            let s = run(start).max(prev_end).max(b.submit_ns).min(b.done_ns);
            let t = run(end).clamp(s, b.done_ns);
            e.start_ns = s;
            e.end_ns = t;
            prev_end = t;
        }
    }
}

/// Task `item` of `items`' even share of `window`.
pub(crate) fn even_share(window: (u64, u64), item: usize, items: usize) -> (u64, u64) {
    let (from, to) = window;
    let len = u128::from(to.saturating_sub(from));
    let n = items.max(1) as u128;
    let at = |k: usize| from + (len * k as u128 / n) as u64;
    (at(item), at(item + 1))
}

/// Per-worker task events.
#[derive(Clone, Debug, Default)]
pub struct TraceLog {
    /// Task events, per worker.
    pub per_worker: Vec<Vec<TraceEvent>>,
    /// Copies between memory nodes.
    pub transfers: Vec<crate::memory::TransferEvent>,
}

/// The summary of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// The policy it ran under.
    pub policy: String,
    /// Tasks in the graph.
    pub tasks: usize,
    /// Tasks that ran to success.
    pub completed: usize,
    /// Tasks whose kernel failed.
    pub failed: usize,
    /// Tasks not run because a task they depend on failed.
    pub skipped: usize,
    /// Tasks not run because the run stopped: at a final failure (without `keep_going`), a
    /// stall, or a cancel (`RunOptions::cancel`, SIGINT/SIGTERM in the CLI).
    pub cancelled: usize,
    /// Failed attempts that were tried again (on another worker when one may run the task).
    pub retried: u64,
    /// Tasks run again to recompute data a device loss took (lineage).
    pub recomputed: u64,
    /// Copies of stragglers started (speculative re-execution).
    pub speculated: u64,
    /// Copies that finished first, whose results were used.
    pub speculation_won: u64,
    /// The graph's deadline, when it has one (seconds from the run's start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<f64>,
    /// The finish predicted at submit from the performance models (the run simulated on a
    /// model of this machine; over 100,000 tasks, its lower bound), when every kernel has a
    /// model (`spin` and `sleep` need none: their parameter is their time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_s: Option<f64>,
    /// Whether the run finished within its deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_met: Option<bool>,
    /// Wall time from start to last completion, seconds.
    pub makespan_s: f64,
    /// Tasks stolen, all workers.
    pub steals: u64,
    /// Links of fused chains: tasks run by the worker that finished their only predecessor,
    /// with no scheduling in between ([`crate::RuntimeBuilder::fusion`]).
    pub fused_links: u64,
    /// Tasks whose inputs started moving to their GPU when they were placed (prefetch).
    pub prefetched_tasks: u64,
    /// Bytes copied between memory nodes (host, GPUs).
    pub bytes_transferred: u64,
    /// Per directed link that carried data.
    pub transfers: Vec<crate::memory::LinkReport>,
    /// Where the run's stored data have valid copies at its end, per memory node.
    pub residency: Vec<NodeResidency>,
    /// Per memory node: capacity, peak accounted use, evictions.
    pub memory: Vec<NodeMemory>,
    /// Copies evicted from any node.
    pub evictions: u64,
    /// Bytes written to spill files (past the host memory limit).
    pub spilled_bytes: u64,
    /// Per worker.
    pub workers: Vec<WorkerReport>,
    /// Tasks that failed.
    pub failures: Vec<TaskFailure>,
    /// What went otherwise than asked, without failing the run: a task that failed on a GPU
    /// and ran on a CPU instead (with the GPU's error), a GPU lost during the run.
    pub warnings: Vec<String>,
    /// Task and copy events, when tracing was asked for.
    #[serde(skip)]
    pub trace: Option<TraceLog>,
}

impl RunReport {
    /// Tasks that ran per worker, indexed like [`RunReport::workers`].
    pub fn tasks_per_worker(&self) -> Vec<u64> {
        self.workers.iter().map(|w| w.tasks).collect()
    }
}

/// Writes a Chrome trace-event JSON document for a traced run of `graph`.
pub fn write_chrome_trace(out: impl Write, graph: &Graph, report: &RunReport) -> io::Result<()> {
    let log = report
        .trace
        .as_ref()
        .ok_or_else(|| io::Error::other("this run was not traced"))?;
    let workers: Vec<&str> = report.workers.iter().map(|w| w.name.as_str()).collect();
    write_trace(out, graph, &workers, log)
}

fn json(s: &str) -> io::Result<String> {
    serde_json::to_string(s).map_err(io::Error::other)
}

/// Microseconds with nanosecond digits, as trace-event timestamps are read.
fn us(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e3)
}

fn write_trace(out: impl Write, graph: &Graph, workers: &[&str], log: &TraceLog) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    writeln!(out, "{{\"displayTimeUnit\":\"ns\",\"traceEvents\":[")?;
    let mut first = true;
    let mut sep = |out: &mut io::BufWriter<_>| -> io::Result<()> {
        if !std::mem::take(&mut first) {
            out.write_all(b",\n")?;
        }
        Ok(())
    };
    for (tid, w) in workers.iter().enumerate() {
        sep(&mut out)?;
        write!(
            out,
            "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"name\":{}}}}}",
            json(w)?
        )?;
    }
    // Per task, the slice that arrows attach to: its last attempt (the one that finished it).
    let mut slice_of: Vec<Option<(usize, u64, u64)>> = vec![None; graph.len()];
    for (tid, events) in log.per_worker.iter().enumerate() {
        for e in events {
            sep(&mut out)?;
            let name = json(&graph.task_name(e.task as usize))?;
            let cat = json(graph.task_kernel(e.task as usize))?;
            let mut args = format!("\"task\":{}", e.task);
            if let Some(ns) = e.gpu_ns {
                args += &format!(",\"gpu_kernel_us\":{}", us(ns));
            }
            if let Some(b) = e.batch {
                args += &format!(
                    ",\"batch\":{},\"batch_start_us\":{},\"batch_end_us\":{}",
                    b.seq,
                    us(b.submit_ns),
                    us(b.done_ns)
                );
                if b.estimated {
                    args += ",\"estimated\":true";
                }
            }
            write!(
                out,
                "{{\"name\":{name},\"cat\":{cat},\"ph\":\"X\",\"pid\":1,\"tid\":{tid},\"ts\":{},\"dur\":{},\"args\":{{{args}}}}}",
                us(e.start_ns),
                us(e.end_ns.saturating_sub(e.start_ns)),
            )?;
            if let Some(slot) = slice_of.get_mut(e.task as usize) {
                if slot.is_none_or(|(_, _, end)| end <= e.end_ns) {
                    *slot = Some((tid, e.start_ns, e.end_ns));
                }
            }
        }
    }
    // Dependency arrows: a flow from each task's slice to each successor's, bound to the
    // slices that enclose their timestamps (the middle of each slice, inside it even when
    // its neighbours touch its ends).
    for (id, &(from, to)) in graph.edges.iter().enumerate() {
        let (Some(Some(a)), Some(Some(b))) = (slice_of.get(from as usize), slice_of.get(to as usize)) else {
            continue;
        };
        for (ph, (tid, start, end)) in [("s", a), ("f", b)] {
            sep(&mut out)?;
            let bind = if ph == "f" { ",\"bp\":\"e\"" } else { "" };
            write!(
                out,
                "{{\"name\":\"dependency\",\"cat\":\"dependency\",\"ph\":\"{ph}\",\"id\":{id},\"pid\":1,\"tid\":{tid},\"ts\":{}{bind}}}",
                us(start + (end - start) / 2)
            )?;
        }
    }
    // Transfers on a second process, one track per link.
    let mut links: Vec<(crate::memory::Node, crate::memory::Node)> =
        log.transfers.iter().map(|t| (t.from, t.to)).collect();
    links.sort();
    links.dedup();
    for (i, (from, to)) in links.iter().enumerate() {
        sep(&mut out)?;
        write!(
            out,
            "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":2,\"tid\":{i},\"args\":{{\"name\":\"{from} -> {to}\"}}}}"
        )?;
    }
    if !links.is_empty() {
        sep(&mut out)?;
        write!(
            out,
            "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":2,\"args\":{{\"name\":\"transfers\"}}}}"
        )?;
    }
    for t in &log.transfers {
        let tid = links.iter().position(|l| *l == (t.from, t.to)).unwrap_or(0);
        sep(&mut out)?;
        write!(
            out,
            "{{\"name\":{},\"cat\":\"transfer\",\"ph\":\"X\",\"pid\":2,\"tid\":{tid},\"ts\":{},\"dur\":{},\"args\":{{\"datum\":{},\"bytes\":{}}}}}",
            json(&format!("{} -> {}: {}", t.from, t.to, t.datum))?,
            us(t.start_ns),
            us(t.end_ns.saturating_sub(t.start_ns)),
            json(&t.datum)?,
            t.bytes
        )?;
    }
    writeln!(out, "\n]}}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Node, TransferEvent};

    fn gpu_event(task: u32, batch: GpuBatch) -> TraceEvent {
        TraceEvent {
            task,
            start_ns: batch.submit_ns,
            end_ns: batch.done_ns,
            gpu_ns: None,
            batch: Some(batch),
        }
    }

    /// GPU spans move to the run's clock by the largest lower bound of the offset that any
    /// batch gives, and stay inside their batch, after each other.
    #[test]
    fn gpu_spans_are_dated_by_the_tightest_offset() {
        // The GPU clock reads the run's clock plus 1,000,000 ns.
        let gpu = |run: u64| run + 1_000_000;
        let mut tl = GpuTimeline::default();
        let mut events = Vec::new();
        // Batch 0: submitted at 100, its first kernel began 30 ns later (loose bound: -1,000,030).
        let (b0, _) = tl.batch(100, 1_000, Some(gpu(130)));
        for (k, (s, e)) in [(130, 300), (300, 320)].into_iter().enumerate() {
            tl.push(events.len(), gpu(s), gpu(e));
            events.push(gpu_event(k as u32, b0));
        }
        // Batch 1: submitted at 400 to an idle GPU, began at once (tight bound: -1,000,000).
        let (b1, _) = tl.batch(400, 900, Some(gpu(400)));
        for (k, (s, e)) in [(400, 700), (650, 800)].into_iter().enumerate() {
            tl.push(events.len(), gpu(s), gpu(e));
            events.push(gpu_event(2 + k as u32, b1));
        }
        tl.apply(&mut events);
        let spans: Vec<(u64, u64)> = events.iter().map(|e| (e.start_ns, e.end_ns)).collect();
        // The last one's beginning was written before its predecessor ended: it starts after.
        assert_eq!(spans, [(130, 300), (300, 320), (400, 700), (700, 800)]);
        assert_eq!((b0.seq, b1.seq), (0, 1));
        assert!(!b0.estimated);
    }

    /// A span the offset would put outside its batch (clocks disagreeing) is clamped into it.
    #[test]
    fn gpu_spans_stay_inside_their_batch() {
        let mut tl = GpuTimeline::default();
        let (b, _) = tl.batch(1_000, 2_000, Some(50));
        tl.push(0, 50, 5_000);
        let mut events = vec![gpu_event(0, b)];
        tl.apply(&mut events);
        assert_eq!((events[0].start_ns, events[0].end_ns), (1_000, 2_000));
    }

    /// Without timestamps, a batch's tasks share its window evenly; a pipelined batch's window
    /// starts where the previous batch was seen done.
    #[test]
    fn estimated_slices_share_their_batch() {
        let mut tl = GpuTimeline::default();
        let (b0, w0) = tl.batch(0, 900, None);
        assert!(b0.estimated);
        assert_eq!(w0, (0, 900));
        let shares: Vec<(u64, u64)> = (0..3).map(|i| even_share(w0, i, 3)).collect();
        assert_eq!(shares, [(0, 300), (300, 600), (600, 900)]);
        let (_, w1) = tl.batch(500, 1_200, None);
        assert_eq!(w1, (900, 1_200));
    }

    /// Each copy's event names its link and its datum.
    #[test]
    fn transfer_events_name_their_datum() {
        let mut g = Graph::new();
        g.task(&hexec_kernels::builtin::noop()).name("t").add();
        let log = TraceLog {
            per_worker: vec![vec![TraceEvent {
                task: 0,
                start_ns: 0,
                end_ns: 10,
                gpu_ns: None,
                batch: None,
            }]],
            transfers: vec![TransferEvent {
                from: Node::Host,
                to: Node::Gpu(0),
                datum: "tile_3_2".into(),
                bytes: 4096,
                start_ns: 0,
                end_ns: 5,
            }],
        };
        let mut buf = Vec::new();
        write_trace(&mut buf, &g, &["cpu0"], &log).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let copy = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["cat"] == "transfer")
            .unwrap();
        assert_eq!(copy["name"], "host -> gpu0: tile_3_2");
        assert_eq!(copy["args"]["datum"], "tile_3_2");
        assert_eq!(copy["args"]["bytes"], 4096);
    }
}
