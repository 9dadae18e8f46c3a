//! The interface between the runtime and a makespan predictor (a deadline's prediction at
//! submit). It lives here, in the layer both drivers sit on, so that the runtime asks the
//! simulator for a prediction without importing it: `crate::drivers` hands the runtime
//! `crate::sim::predict` when it builds one (ARCHITECTURE.md, Layers).

use super::perfmodel::PerfModel;
use super::PolicyKind;
use crate::graph::Graph;
use crate::topology::Machine;

/// Graphs up to this many tasks have their finish predicted by simulating the run (a
/// deadline's prediction); larger ones by its lower bound, which costs far less at submit.
pub const SIMULATED_PREDICTION_TASKS: usize = 100_000;

/// What a runtime knows when it predicts a graph's finish.
pub struct PredictInput<'a> {
    pub graph: &'a Graph,
    pub machine: &'a Machine,
    /// Per task, expected seconds on a CPU and on a GPU (`None`: cannot run there); checked
    /// durations.
    pub costs: &'a [[Option<f64>; 2]],
    pub model: PerfModel,
    /// Host↔GPU link: bytes/s and seconds.
    pub bandwidth: f64,
    pub latency: f64,
    /// Limits per node, `None` when unlimited.
    pub gpu_memory: Option<u64>,
    pub host_memory: Option<u64>,
    pub backpressure: bool,
    pub policy: PolicyKind,
    /// GPUs the runtime opened (memory nodes besides the host).
    pub gpus: usize,
    /// Bytes of each datum of the graph.
    pub data_bytes: &'a [u64],
}

/// A predictor: the finish of a graph in seconds, never below its lower bound. A plain
/// function (no state), so a runtime holds one by value.
pub type Predictor = fn(&PredictInput<'_>) -> f64;
