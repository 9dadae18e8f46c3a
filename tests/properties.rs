//! Property tests over random DAGs with random restrictions and priorities, under every
//! policy: every task runs exactly once, after all of its dependencies, only on a worker it
//! is allowed on, and the data end up exactly as a sequential run leaves them.

use std::collections::HashMap;

use hexec::kernels::{builtin, Access, CpuContext, ElemType, RawOperand};
use hexec::{Data, Machine, PolicyKind, RunOptions, Runtime};
use proptest::prelude::*;

const WORKERS: usize = 3;

#[derive(Clone, Debug)]
enum Restrict {
    None,
    Worker(usize),
    Feature,
}

#[derive(Clone, Debug)]
struct TaskDesc {
    accesses: Vec<(usize, Access)>,
    after: Vec<usize>,
    priority: i32,
    restrict: Restrict,
}

#[derive(Clone, Debug)]
struct Case {
    data_lens: Vec<usize>,
    tasks: Vec<TaskDesc>,
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::Read), Just(Access::Write), Just(Access::ReadWrite)]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..6, 1usize..50).prop_flat_map(|(ndata, ntasks)| {
        let data_lens = prop::collection::vec(1usize..4, ndata);
        let tasks = (0..ntasks)
            .map(move |i| {
                (
                    prop::collection::btree_map(0..ndata, access(), 0..3),
                    prop::collection::btree_set(0..i.max(1), 0..3),
                    -2i32..3,
                    prop_oneof![4 => Just(Restrict::None), 1 => (0..WORKERS).prop_map(Restrict::Worker), 1 => Just(Restrict::Feature)],
                )
                    .prop_map(move |(acc, after, priority, restrict)| TaskDesc {
                        accesses: acc.into_iter().collect(),
                        after: after.into_iter().filter(|&a| a < i).collect(),
                        priority,
                        restrict,
                    })
            })
            .collect::<Vec<_>>();
        (data_lens, tasks).prop_map(|(data_lens, tasks)| Case { data_lens, tasks })
    })
}

/// Worker 1 is the only one with feature "fast".
fn machine() -> Machine {
    let mut m = Machine::synthetic_cpus(WORKERS);
    m.workers[1].features = vec!["fast".to_string()];
    m
}

fn initial(len: usize, d: usize) -> Vec<u64> {
    (0..len as u64).map(|j| j * 1000 + d as u64).collect()
}

/// The reference: run `mix` in insertion order (a topological order) on local vectors.
fn sequential(case: &Case) -> Vec<Vec<u64>> {
    apply(case, &(0..case.tasks.len()).collect::<Vec<_>>())
}

/// Runs the tasks' `mix` kernels one after another in `order`, each with its own seed.
fn apply(case: &Case, order: &[usize]) -> Vec<Vec<u64>> {
    let mut data: Vec<Vec<u64>> = case.data_lens.iter().enumerate().map(|(d, &l)| initial(l, d)).collect();
    let mix = builtin::mix();
    for &i in order {
        let t = &case.tasks[i];
        let mut bufs: Vec<Vec<u64>> = t.accesses.iter().map(|&(d, _)| data[d].clone()).collect();
        let mut ops: Vec<RawOperand<'_>> = bufs
            .iter_mut()
            .zip(&t.accesses)
            // SAFETY: each operand is a distinct, exclusively owned Vec<u64> that outlives `ops`.
            .map(|(b, &(_, a))| unsafe { RawOperand::new(b.as_mut_ptr().cast(), b.len() * 8, ElemType::U64, a) })
            .collect();
        let params = [i as f64];
        let ctx = CpuContext::new(&mut ops, &params, 1);
        (mix.cpu_impl().unwrap())(&ctx).unwrap();
        drop(ops);
        for (b, &(d, a)) in bufs.into_iter().zip(&t.accesses) {
            if a.writes() {
                data[d] = b;
            }
        }
    }
    data
}

fn check(case: &Case, policy: PolicyKind) -> Result<(), TestCaseError> {
    let rt = Runtime::builder().machine(machine()).policy(policy).build().unwrap();
    let handles: Vec<Data<u64>> = case
        .data_lens
        .iter()
        .enumerate()
        .map(|(d, &l)| rt.data(initial(l, d)))
        .collect();
    let mut g = rt.graph();
    let mut ids = Vec::new();
    for (i, t) in case.tasks.iter().enumerate() {
        let mut b = g
            .task(&builtin::mix())
            .name(format!("t{i}"))
            .param(i as f64)
            .priority(t.priority);
        for &(d, a) in &t.accesses {
            b = b.access(handles[d], a);
        }
        for &a in &t.after {
            b = b.after(ids[a]);
        }
        b = match t.restrict {
            Restrict::None => b,
            Restrict::Worker(w) => b.on_worker(format!("cpu{w}")),
            Restrict::Feature => b.require_feature("fast"),
        };
        ids.push(b.add());
    }
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    prop_assert_eq!(report.completed, case.tasks.len());

    // Exactly once, on an allowed worker.
    let log = report.trace.as_ref().unwrap();
    let mut seen: HashMap<u32, (usize, u64, u64)> = HashMap::new();
    for (w, events) in log.per_worker.iter().enumerate() {
        for e in events {
            prop_assert!(
                seen.insert(e.task, (w, e.start_ns, e.end_ns)).is_none(),
                "task {} ran twice",
                e.task
            );
            let allowed = match case.tasks[e.task as usize].restrict {
                Restrict::None => true,
                Restrict::Worker(r) => r == w,
                Restrict::Feature => w == 1,
            };
            prop_assert!(allowed, "task {} ran on cpu{} against its restriction", e.task, w);
        }
    }
    prop_assert_eq!(seen.len(), case.tasks.len());
    // After every dependency (explicit and inferred).
    for (i, id) in ids.iter().enumerate() {
        let start = seen[&(i as u32)].1;
        for dep in g.dependencies(*id) {
            let end = seen[&(dep.index() as u32)].2;
            prop_assert!(
                end <= start,
                "task {} started before its dependency {} ended",
                i,
                dep.index()
            );
        }
    }
    // Same data as the sequential run.
    let expected = sequential(case);
    for (d, h) in handles.iter().enumerate() {
        prop_assert_eq!(&rt.read(*h).unwrap(), &expected[d], "datum {} differs", d);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_dags_run_correctly_under_ws(c in case()) {
        check(&c, PolicyKind::Ws)?;
    }

    #[test]
    fn random_dags_run_correctly_under_eager(c in case()) {
        check(&c, PolicyKind::Eager)?;
    }
}

proptest! {
    // The planning policies run here without a performance model (as in a first run); the
    // simulator's tests exercise their planning.
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn random_dags_run_correctly_under_locality(c in case()) {
        check(&c, PolicyKind::Locality)?;
    }

    #[test]
    fn random_dags_run_correctly_under_heft(c in case()) {
        check(&c, PolicyKind::Heft)?;
    }

    #[test]
    fn random_dags_run_correctly_under_random(c in case()) {
        check(&c, PolicyKind::Random)?;
    }
}

/// The reference must be sensitive to order, or the comparison above would prove nothing.
#[test]
fn the_sequential_reference_detects_reordering() {
    let t = |accesses: Vec<(usize, Access)>| TaskDesc {
        accesses,
        after: vec![],
        priority: 0,
        restrict: Restrict::None,
    };
    let case = Case {
        data_lens: vec![2],
        tasks: vec![t(vec![(0, Access::ReadWrite)]), t(vec![(0, Access::ReadWrite)])],
    };
    assert_ne!(apply(&case, &[0, 1]), apply(&case, &[1, 0]));
}
