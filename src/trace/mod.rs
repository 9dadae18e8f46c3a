//! Run summaries and Chrome/Perfetto traces.
//!
//! A [`RunReport`] is what every run returns (and what `hexec run --json` prints). With
//! tracing requested, it also carries a [`TraceLog`] of every task's start and end on its
//! worker, which [`write_chrome_trace`] turns into a file that ui.perfetto.dev or
//! chrome://tracing opens.

use std::io::{self, Write};

use serde::Serialize;

use crate::graph::Graph;

/// What one worker did.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerReport {
    pub name: String,
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
    pub task: String,
    pub kernel: String,
    pub worker: String,
    pub message: String,
    /// Every attempt, in order (the last one is `worker` and `message`).
    pub attempts: Vec<AttemptReport>,
}

/// One failed attempt of a task.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AttemptReport {
    pub worker: String,
    pub message: String,
}

/// Valid copies on one memory node at the end of a run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeResidency {
    pub node: String,
    /// Data of the run with a valid copy there.
    pub data: u64,
    pub bytes: u64,
}

/// Start and end of one task, in nanoseconds since the run began.
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    pub task: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The kernel's own time on a GPU, from timestamp queries.
    pub gpu_ns: Option<u64>,
}

/// Per-worker task events.
#[derive(Clone, Debug, Default)]
pub struct TraceLog {
    pub per_worker: Vec<Vec<TraceEvent>>,
    /// Copies between memory nodes.
    pub transfers: Vec<crate::memory::TransferEvent>,
}

/// The summary of a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub policy: String,
    /// Tasks in the graph.
    pub tasks: usize,
    /// Tasks that ran to success.
    pub completed: usize,
    /// Tasks whose kernel failed.
    pub failed: usize,
    /// Tasks not run because a task they depend on failed.
    pub skipped: usize,
    /// Tasks not run because the run stopped at a failure (without `keep_going`).
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
    pub makespan_s: f64,
    pub steals: u64,
    /// Tasks whose inputs started moving to their GPU when they were placed (prefetch).
    pub prefetched_tasks: u64,
    /// Bytes copied between memory nodes (host, GPUs).
    pub bytes_transferred: u64,
    /// Per directed link that carried data.
    pub transfers: Vec<crate::memory::LinkReport>,
    /// Where the run's stored data have valid copies at its end, per memory node.
    pub residency: Vec<NodeResidency>,
    /// Per memory node: capacity, peak accounted use, evictions.
    pub memory: Vec<crate::runtime::NodeMemory>,
    /// Copies evicted from any node.
    pub evictions: u64,
    /// Bytes written to spill files (past the host memory limit).
    pub spilled_bytes: u64,
    pub workers: Vec<WorkerReport>,
    pub failures: Vec<TaskFailure>,
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
    let mut out = io::BufWriter::new(out);
    let log = report
        .trace
        .as_ref()
        .ok_or_else(|| io::Error::other("this run was not traced"))?;
    writeln!(out, "{{\"displayTimeUnit\":\"ns\",\"traceEvents\":[")?;
    let mut first = true;
    let mut sep = |out: &mut io::BufWriter<_>| -> io::Result<()> {
        if !std::mem::take(&mut first) {
            out.write_all(b",\n")?;
        }
        Ok(())
    };
    for (tid, w) in report.workers.iter().enumerate() {
        sep(&mut out)?;
        let name = serde_json::to_string(&w.name).map_err(io::Error::other)?;
        write!(
            out,
            "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"name\":{name}}}}}"
        )?;
    }
    for (tid, events) in log.per_worker.iter().enumerate() {
        for e in events {
            sep(&mut out)?;
            let name = serde_json::to_string(&graph.task_name(e.task as usize)).map_err(io::Error::other)?;
            let cat = serde_json::to_string(graph.task_kernel(e.task as usize)).map_err(io::Error::other)?;
            let gpu = e
                .gpu_ns
                .map(|ns| format!(",\"gpu_kernel_us\":{:.3}", ns as f64 / 1e3))
                .unwrap_or_default();
            write!(
                out,
                "{{\"name\":{name},\"cat\":{cat},\"ph\":\"X\",\"pid\":1,\"tid\":{tid},\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"task\":{}{gpu}}}}}",
                e.start_ns as f64 / 1e3,
                (e.end_ns - e.start_ns) as f64 / 1e3,
                e.task
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
            "{{\"name\":\"{} bytes\",\"cat\":\"transfer\",\"ph\":\"X\",\"pid\":2,\"tid\":{tid},\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"bytes\":{}}}}}",
            t.bytes,
            t.start_ns as f64 / 1e3,
            (t.end_ns.saturating_sub(t.start_ns)) as f64 / 1e3,
            t.bytes
        )?;
    }
    writeln!(out, "\n]}}")?;
    out.flush()
}
