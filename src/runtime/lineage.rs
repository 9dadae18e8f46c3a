//! Lineage of data written on GPUs, to recompute what a device loss takes.
//!
//! Every GPU write of a datum is logged as a *step*: the task, the versions of what it read,
//! the version it gave the datum. A datum whose only valid copy was on a lost GPU is rebuilt
//! on a CPU by replaying steps in order, from either
//! - its last *whole* write (a write-only access): that step needs no earlier value; or
//! - the host buffer, when it still holds an earlier version (no host limit: a stale host
//!   copy stays in memory, untouched until the next download overwrites it), followed by
//!   every in-place update since — so data updated in place (tiles of a factorization) are
//!   recomputed too.
//!
//! A step can be replayed only when it wrote nothing else (re-running it would overwrite other
//! data that may have moved on), has a CPU implementation, and every datum it read is still
//! at the version it had then (recomputed first if lost too, recursively).
//!
//! Invariants: `versions[d]` counts the completed writes of datum `d` in this run (kept only
//! on machines with GPUs). `host_version[d]` is the version the host buffer held when it was
//! last made valid by a CPU write (or the run's start), `host_downloads[d]` the datum's
//! download count then; a download since (the count moved) brought the host the version
//! current at that time, which the steps' recorded download counts date. Steps are logged in
//! version order (writers of a datum are ordered by the graph).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::data::DataCell;
use crate::graph::Graph;
use crate::sync::MutexExt;

/// No known version (the host buffer's value is not one of this run's).
const UNKNOWN: u32 = u32::MAX;

/// One GPU write of a datum.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub task: u32,
    /// What it read, with the versions they had (the datum itself excluded).
    pub inputs: Vec<(u32, u32)>,
    /// The version it gave the datum.
    pub version: u32,
    /// The datum's download count when the step completed.
    downloads: u32,
    /// It wrote the datum whole (write-only): no earlier value needed.
    whole: bool,
}

/// How to rebuild a lost datum: steps to replay in order, the first either whole or applied
/// to the host buffer's value (`from_host`).
#[derive(Debug)]
pub(crate) struct Recipe {
    pub steps: Vec<Step>,
    pub from_host: bool,
}

/// The run's lineage (empty and inert without GPUs).
pub(crate) struct Lineage {
    versions: Vec<AtomicU32>,
    host_version: Vec<AtomicU32>,
    host_downloads: Vec<AtomicU32>,
    /// Per datum: its host buffer stays in memory, untouched until overwritten (no host
    /// limit, not a temporary), so an earlier value can be replayed from it.
    host_kept: Vec<bool>,
    steps: Mutex<HashMap<u32, Vec<Step>>>,
    /// Tasks re-run to recompute lost data.
    pub recomputed: AtomicU64,
}

impl Lineage {
    /// The lineage of a run over `cells` (by graph-local datum), kept when `enabled`;
    /// `host_kept(d)` says whether datum `d`'s host buffer stays in memory.
    pub fn new(cells: &[Option<Arc<DataCell>>], enabled: bool, host_kept: impl Fn(usize) -> bool) -> Self {
        let n = if enabled { cells.len() } else { 0 };
        let host = |c: &Option<Arc<DataCell>>| match c {
            Some(c) if c.is_valid_on(crate::memory::Node::Host) => 0,
            _ => UNKNOWN,
        };
        Lineage {
            versions: (0..n).map(|_| AtomicU32::new(0)).collect(),
            host_version: cells[..n].iter().map(|c| AtomicU32::new(host(c))).collect(),
            host_downloads: cells[..n]
                .iter()
                .map(|c| AtomicU32::new(c.as_ref().map_or(0, |c| c.downloads())))
                .collect(),
            host_kept: (0..n).map(host_kept).collect(),
            steps: Mutex::new(HashMap::new()),
            recomputed: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> bool {
        !self.versions.is_empty()
    }

    /// The completed writes of `d` so far.
    pub fn version(&self, d: u32) -> u32 {
        self.versions.get(d as usize).map_or(0, |v| v.load(Ordering::Acquire))
    }

    /// A CPU task completed: its writes count, and the host holds what it wrote.
    pub fn cpu_task_done(&self, graph: &Graph, cells: &[Option<Arc<DataCell>>], task: u32) {
        if !self.enabled() {
            return;
        }
        for &(d, access) in &graph.accesses[graph.tasks[task as usize].accesses.range()] {
            if access.writes() {
                let v = self.versions[d as usize].fetch_add(1, Ordering::AcqRel) + 1;
                self.host_holds(d, v, cells);
            }
        }
    }

    /// The host buffer of `d` holds version `v`, valid now.
    fn host_holds(&self, d: u32, v: u32, cells: &[Option<Arc<DataCell>>]) {
        let downloads = cells[d as usize].as_ref().map_or(0, |c| c.downloads());
        self.host_downloads[d as usize].store(downloads, Ordering::Release);
        self.host_version[d as usize].store(v, Ordering::Release);
    }

    /// The version `d`'s host buffer holds, `downloads` being its download count now: its
    /// last CPU write's (or the run's start), or, when it was downloaded since, the version
    /// current at the last download, dated by the writes logged in `log`.
    fn host_version_now(&self, d: u32, downloads: u32, log: &[Step]) -> u32 {
        let host = self.host_version[d as usize].load(Ordering::Acquire);
        if downloads == self.host_downloads[d as usize].load(Ordering::Acquire) {
            return host;
        }
        let mut since = log.iter().filter(|s| host == UNKNOWN || s.version > host);
        let first = since.clone().next();
        match since.rfind(|s| s.downloads < downloads) {
            // The last download came after this write.
            Some(s) => s.version,
            // Before the first write logged since: the host holds the version before it.
            None => first.map_or(self.version(d), |s| s.version - 1),
        }
    }

    /// A GPU task completed: its writes count and are logged as steps.
    pub fn gpu_task_done(&self, graph: &Graph, cells: &[Option<Arc<DataCell>>], task: u32) {
        if !self.enabled() {
            return;
        }
        let accesses = &graph.accesses[graph.tasks[task as usize].accesses.range()];
        let mut steps = self.steps.locked();
        for &(d, access) in accesses {
            if !access.writes() {
                continue;
            }
            let inputs = accesses
                .iter()
                .filter(|(e, a)| a.reads() && *e != d)
                .map(|&(e, _)| (e, self.version(e)))
                .collect();
            let downloads = cells[d as usize].as_ref().map_or(0, |c| c.downloads());
            let log = steps.entry(d).or_default();
            if self.host_kept[d as usize] {
                // Writes the host already holds need no replay: keep the log short (a datum
                // downloaded after every write keeps one step).
                let host = self.host_version_now(d, downloads, log);
                if host != UNKNOWN {
                    self.host_version[d as usize].store(host, Ordering::Release);
                    self.host_downloads[d as usize].store(downloads, Ordering::Release);
                    log.retain(|s| s.version > host);
                }
            }
            let step = Step {
                task,
                inputs,
                version: self.versions[d as usize].fetch_add(1, Ordering::AcqRel) + 1,
                downloads,
                whole: !access.reads(),
            };
            if step.whole {
                // Nothing before a whole write is needed to rebuild it.
                log.clear();
            }
            log.push(step);
        }
    }

    /// The data written on a GPU in this run (they may need recomputing after a loss).
    pub fn written_on_gpus(&self) -> Vec<u32> {
        let steps = self.steps.locked();
        steps.iter().filter(|(_, s)| !s.is_empty()).map(|(&d, _)| d).collect()
    }

    /// Sets `d` back to `version` after a recomputation (which restores a version, it does
    /// not make one), held by the host.
    pub fn restore(&self, d: u32, version: u32, cells: &[Option<Arc<DataCell>>]) {
        if let Some(v) = self.versions.get(d as usize) {
            v.store(version, Ordering::Release);
            self.host_holds(d, version, cells);
        }
    }

    /// How to rebuild `d` at its current version. An error says why it cannot be.
    pub fn recipe(&self, d: u32, cell: &DataCell) -> Result<Recipe, String> {
        let current = self.version(d);
        let steps = self.steps.locked();
        let log = steps.get(&d).map_or(&[][..], |s| &s[..]);
        let host_usable = self.host_kept[d as usize];
        let host = self.host_version_now(d, cell.downloads(), log);
        let whole = log.iter().rposition(|s| s.whole);
        let from = match (host_usable && host != UNKNOWN && cell.host_in_memory(), whole) {
            // From the host when it is at least as recent as the last whole write.
            (true, w) if w.is_none_or(|w| log[w].version <= host) => {
                log.iter().position(|s| s.version > host).map(|i| (i, true))
            }
            (_, Some(w)) => Some((w, false)),
            _ => None,
        };
        let Some((first, from_host)) = from else {
            return Err(if host_usable {
                "it was updated in place on the GPU and no earlier value is left to replay the updates on".into()
            } else {
                "it was updated in place on the GPU, and under a host memory limit its earlier host value may be gone"
                    .into()
            });
        };
        let replay = &log[first..];
        let start = if from_host { host } else { replay[0].version - 1 };
        let contiguous = replay
            .iter()
            .enumerate()
            .all(|(i, s)| s.version == start + 1 + i as u32);
        if !contiguous || replay.last().map(|s| s.version) != Some(current) {
            return Err("some of its writes since are not in its lineage (written on a CPU meanwhile?)".into());
        }
        Ok(Recipe {
            steps: replay.to_vec(),
            from_host,
        })
    }
}
