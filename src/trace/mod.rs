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
}

/// One failed task.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskFailure {
    pub task: String,
    pub kernel: String,
    pub worker: String,
    pub message: String,
}

/// Start and end of one task, in nanoseconds since the run began.
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    pub task: u32,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Per-worker task events.
#[derive(Clone, Debug, Default)]
pub struct TraceLog {
    pub per_worker: Vec<Vec<TraceEvent>>,
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
    pub makespan_s: f64,
    pub steals: u64,
    /// Bytes copied between memory nodes (host, GPUs).
    pub bytes_transferred: u64,
    /// Per directed link that carried data.
    pub transfers: Vec<crate::memory::LinkReport>,
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
            write!(
                out,
                "{{\"name\":{name},\"cat\":{cat},\"ph\":\"X\",\"pid\":1,\"tid\":{tid},\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"task\":{}}}}}",
                e.start_ns as f64 / 1e3,
                (e.end_ns - e.start_ns) as f64 / 1e3,
                e.task
            )?;
        }
    }
    writeln!(out, "\n]}}")?;
    out.flush()
}
