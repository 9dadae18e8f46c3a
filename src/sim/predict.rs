//! The simulator as the runtime's makespan predictor ([`crate::sched::predict`]): the run
//! simulated on a model of the runtime's machine (its workers, links and memory limits) under
//! its policy, never below the lower bound; graphs over [`SIMULATED_PREDICTION_TASKS`] tasks
//! get the bound alone.

use crate::sched::compile::Successors;
use crate::sched::predict::{PredictInput, SIMULATED_PREDICTION_TASKS};
use crate::topology::DeviceKind;

/// A [`crate::sched::predict::Predictor`].
pub fn predict(input: &PredictInput<'_>) -> f64 {
    let bound = super::bound::lower_bound(
        &Successors::of(input.graph),
        input.costs,
        input.machine.count(DeviceKind::Cpu),
        input.machine.count(DeviceKind::Gpu),
    );
    if input.graph.len() > SIMULATED_PREDICTION_TASKS {
        return bound.bound_s;
    }
    let nodes = 1 + input.gpus;
    let sm = super::SimMachine {
        name: "this machine".into(),
        machine: input.machine.clone(),
        bandwidth: vec![vec![input.bandwidth; nodes]; nodes],
        latency: vec![vec![input.latency; nodes]; nodes],
        model: input.model.clone(),
        gpu_speedup: None,
        cpu_gflops: 10.0,
        starpu: None,
        exact_sizes: None,
    };
    let opts = super::SimOptions {
        record_trace: false,
        gpu_memory: input.gpu_memory,
        host_memory: input.host_memory,
        no_backpressure: !input.backpressure,
        lp_bound: false,
    };
    match super::engine::simulate_sized(input.graph, &sm, input.policy, &opts, Some(input.data_bytes)) {
        Ok(r) => r.run.makespan_s.max(bound.bound_s),
        Err(e) => {
            tracing::debug!(error = %e, "could not simulate the run; predicting its lower bound");
            bound.bound_s
        }
    }
}
