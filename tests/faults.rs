//! Failures and recovery: retries on another worker, inputs restored between attempts, runs
//! that stop at a final failure or keep going, and injected faults (`FaultPlan`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hexec::kernels::{builtin, Access, ElemType, Kernel, Signature};
use hexec::runtime::faults::FaultPlan;
use hexec::{Data, Machine, PolicyKind, RunError, RunOptions, Runtime};

fn rt(workers: usize, retries: u32, inject: &str) -> Runtime {
    Runtime::builder()
        .machine(Machine::synthetic_cpus(workers))
        .policy(PolicyKind::Ws)
        .retries(retries)
        .inject(inject.parse::<FaultPlan>().unwrap())
        .build()
        .unwrap()
}

/// Doubles its read-write operand in place, then fails every third call: a failed attempt
/// has already overwritten its input, which the runtime must restore before retrying.
fn flaky_double(calls: Arc<AtomicUsize>) -> Arc<Kernel> {
    Arc::new(
        Kernel::cpu(
            "flaky_double",
            Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0),
            move |ctx| {
                ctx.write::<f32>(0)?.iter_mut().for_each(|v| *v *= 2.0);
                if calls.fetch_add(1, Ordering::Relaxed) % 3 == 0 {
                    panic!("flaky: failed after writing");
                }
                Ok(())
            },
        )
        // Its panics are a fault of the moment, not of the code: say so, as a user would.
        .retry_panics(true),
    )
}

#[test]
fn a_failed_attempt_leaves_its_inputs_as_they_were() {
    // Every third call fails, whichever task makes it: with two workers alternating, one
    // task's attempts can land on several in a row, so allow more than the default retries.
    let rt = rt(2, 10, "");
    let calls = Arc::new(AtomicUsize::new(0));
    let k = flaky_double(calls.clone());
    let tiles: Vec<Data<f32>> = (0..8).map(|i| rt.data(vec![1.0 + i as f32; 64])).collect();
    let mut g = rt.graph();
    for _ in 0..3 {
        for t in &tiles {
            g.task(&k).read_write(*t).add();
        }
    }
    let r = rt.run(&g).unwrap();
    assert!(r.retried > 0, "some attempts failed");
    assert_eq!(calls.load(Ordering::Relaxed), 24 + r.retried as usize);
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(rt.read(*t).unwrap(), vec![(1.0 + i as f32) * 8.0; 64], "tile {i}");
    }
}

#[test]
fn a_task_failing_every_attempt_names_each_attempt_and_stops_the_run() {
    // A retried task is taken before the other queued work (under `ws`, before the worker's
    // own deque), so the run stops early.
    for policy in [PolicyKind::Eager, PolicyKind::Ws] {
        fails_every_attempt_and_stops(policy);
    }
}

fn fails_every_attempt_and_stops(policy: PolicyKind) {
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(2))
        .policy(policy)
        .inject("panic:kernel=scale".parse::<FaultPlan>().unwrap())
        .build()
        .unwrap();
    let x = rt.data(vec![1.0f32; 4]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .name("doomed")
        .priority(10)
        .read_write(x)
        .param(2.0)
        .add();
    for i in 0..40 {
        g.task(&builtin::sleep()).name(format!("slow{i}")).param(0.01).add();
    }
    let err = rt.run(&g).unwrap_err();
    let msg = err.to_string();
    let report = err.report().unwrap();
    assert_eq!(report.failed, 1);
    let f = &report.failures[0];
    assert_eq!((f.task.as_str(), f.kernel.as_str()), ("doomed", "scale"));
    assert_eq!(f.attempts.len(), 4, "{msg}");
    // A retry goes to the other worker.
    let workers: Vec<&str> = f.attempts.iter().map(|a| a.worker.as_str()).collect();
    assert!(workers.windows(2).all(|w| w[0] != w[1]), "{workers:?}");
    assert!(
        msg.contains("failed after 4 attempts") && msg.contains("injected fault"),
        "{msg}"
    );
    assert!(report.cancelled > 0, "{policy:?}: the run stopped: {msg}");
    assert_eq!(report.completed + report.failed + report.skipped + report.cancelled, 41);
    assert!(msg.contains("were not run"), "{msg}");
    // The datum is as it was, and the runtime still works.
    assert_eq!(rt.read(x).unwrap(), vec![1.0; 4]);
    assert_eq!(rt.run(&rt.graph()).unwrap().tasks, 0);
}

#[test]
fn keep_going_runs_everything_that_does_not_depend_on_a_failure() {
    let rt = rt(2, 1, "panic:kernel=scale");
    let (x, y) = (rt.data(vec![1.0f32; 4]), rt.data(vec![1.0f32; 4]));
    let mut g = rt.graph();
    g.task(&builtin::scale()).name("doomed").read_write(x).param(2.0).add();
    g.task(&builtin::axpy())
        .name("after-doomed")
        .read(x)
        .read_write(y)
        .param(1.0)
        .add();
    for i in 0..10 {
        g.task(&builtin::sleep()).name(format!("free{i}")).param(0.001).add();
    }
    match rt.run_with(&g, RunOptions::keep_going()) {
        Err(RunError::TaskFailed { report }) => {
            assert_eq!(
                (report.completed, report.failed, report.skipped, report.cancelled),
                (10, 1, 1, 0)
            );
            assert_eq!(report.failures[0].attempts.len(), 2, "one retry");
            assert_eq!(report.retried, 1);
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
}

#[test]
fn injected_panics_are_retried_and_the_results_match_a_clean_run() {
    let build = |rt: &Runtime| {
        let tiles: Vec<Data<f32>> = (0..16).map(|i| rt.data(vec![i as f32; 256])).collect();
        let mut g = rt.graph();
        for round in 0..4 {
            for t in &tiles {
                g.task(&builtin::scale())
                    .read_write(*t)
                    .param(1.0 + round as f64 * 0.5)
                    .add();
            }
            for w in tiles.windows(2) {
                g.task(&builtin::axpy()).read(w[1]).read_write(w[0]).param(0.25).add();
            }
        }
        (g, tiles)
    };
    let clean = rt(2, 0, "");
    let (g, tiles) = build(&clean);
    clean.run(&g).unwrap();
    let expected: Vec<Vec<f32>> = tiles.iter().map(|t| clean.read(*t).unwrap()).collect();
    // A fifth of the attempts fail; ten retries make a final failure vanishingly rare
    // (and the draws are deterministic, so this plan never has one).
    let faulty = rt(2, 10, "panic:p=0.2,seed=11");
    let (g, tiles) = build(&faulty);
    let r = faulty.run(&g).unwrap();
    assert!(
        r.retried > 10,
        "about a fifth of {} tasks failed once: {}",
        g.len(),
        r.retried
    );
    let got: Vec<Vec<f32>> = tiles.iter().map(|t| faulty.read(*t).unwrap()).collect();
    assert_eq!(got, expected);
}

#[test]
fn zero_retries_make_the_first_failure_final() {
    let rt = rt(2, 0, "panic");
    let mut g = rt.graph();
    g.task(&builtin::noop()).name("only").add();
    let err = rt.run(&g).unwrap_err();
    let f = &err.report().unwrap().failures[0];
    assert_eq!(f.attempts.len(), 1);
    assert_eq!(err.report().unwrap().retried, 0);
}

#[test]
fn a_stalled_run_says_what_every_task_waits_for() {
    let rt = rt(1, 0, "");
    let x = rt.data(vec![1.0f32; 4]);
    let mut g = rt.graph();
    // One worker, busy for a second: nothing finishes for longer than the 200 ms timeout.
    g.task(&builtin::sleep()).name("stuck").write(x).param(1.0).add();
    g.task(&builtin::scale())
        .name("after-stuck")
        .read_write(x)
        .param(2.0)
        .add();
    g.task(&builtin::noop()).name("free").add();
    let opts = RunOptions {
        stall_timeout: Some(std::time::Duration::from_millis(200)),
        ..RunOptions::default()
    };
    let t = std::time::Instant::now();
    let err = rt.run_with(&g, opts).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RunError::Stalled { .. }), "{msg}");
    assert!(msg.contains("'stuck' (kernel 'sleep') is running on cpu0"), "{msg}");
    assert!(msg.contains("'after-stuck' waits for 'stuck'"), "{msg}");
    assert!(
        msg.contains("'free' is ready and waits for a worker among cpu0"),
        "{msg}"
    );
    let report = err.report().unwrap();
    assert_eq!(report.completed, 1, "the stuck task finished; nothing else started");
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    // A run that keeps finishing tasks is not a stall.
    let mut g = rt.graph();
    for i in 0..20 {
        g.task(&builtin::sleep()).name(format!("steady{i}")).param(0.02).add();
    }
    let opts = RunOptions {
        stall_timeout: Some(std::time::Duration::from_millis(100)),
        ..RunOptions::default()
    };
    assert_eq!(rt.run_with(&g, opts).unwrap().completed, 20);
}

#[test]
fn a_lost_cpu_worker_leaves_its_work_to_the_others() {
    let rt = rt(2, 3, "worker-loss:cpu1");
    let tiles: Vec<Data<f32>> = (0..8).map(|i| rt.data(vec![i as f32; 32])).collect();
    let mut g = rt.graph();
    for round in 0..10 {
        for t in &tiles {
            g.task(&builtin::scale())
                .read_write(*t)
                .param(if round % 2 == 0 { 2.0 } else { 0.5 })
                .add();
        }
    }
    let r = rt.run(&g).unwrap();
    assert_eq!(r.completed, 80);
    let on = |name: &str| r.workers.iter().find(|w| w.name == name).unwrap().tasks;
    assert_eq!((on("cpu0"), on("cpu1")), (80, 0), "{r:?}");
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(rt.read(*t).unwrap(), vec![i as f32; 32]);
    }
    // A task only the lost worker may run fails, naming it.
    let mut g = rt.graph();
    g.task(&builtin::noop()).name("pinned").on_worker("cpu1").add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(e.contains("'pinned'") && e.contains("worker cpu1 was lost"), "{e}");
}

#[test]
fn a_deadline_is_predicted_from_the_models_and_reported() {
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(2))
        .policy(PolicyKind::Locality)
        .build()
        .unwrap();
    // A user's kernel: nothing says how long it takes until it has been measured.
    let wait = Arc::new(Kernel::cpu("wait", Signature::any(0, 1), |ctx| {
        std::thread::sleep(std::time::Duration::from_secs_f64(ctx.param(0)?));
        Ok(())
    }));
    let mut g = rt.graph();
    for i in 0..20 {
        g.task(&wait).name(format!("s{i}")).param(0.01).add();
    }
    // The first run has no model for `wait` yet: no prediction, but the deadline is kept.
    g.set_deadline(std::time::Duration::from_secs(10));
    let first = rt.run(&g).unwrap();
    assert_eq!(first.deadline_s, Some(10.0));
    assert_eq!(first.predicted_s, None);
    assert_eq!(first.deadline_met, Some(true));
    // Now it has one: 20 × 10 ms on two workers is at least 100 ms, over a 30 ms deadline.
    g.set_deadline(std::time::Duration::from_millis(30));
    let second = rt.run(&g).unwrap();
    let predicted = second.predicted_s.unwrap();
    assert!((0.09..0.2).contains(&predicted), "{predicted}");
    assert_eq!(second.deadline_met, Some(false), "{second:?}");
    assert!(second.makespan_s >= 0.1);
    // The synthetic `sleep` says how long it takes: predicted without a model.
    let rt = Runtime::builder().machine(Machine::synthetic_cpus(2)).build().unwrap();
    let mut g = rt.graph();
    for _ in 0..4 {
        g.task(&builtin::sleep()).param(0.01).add();
    }
    g.set_deadline(std::time::Duration::from_secs(10));
    let predicted = rt.run(&g).unwrap().predicted_s.unwrap();
    assert!((0.019..0.03).contains(&predicted), "{predicted}");
}

/// Under a host limit the saved copies of a task's read-write operands take room like any
/// other; when there is none, the attempt runs unsaved and its failure is final (a retry
/// would start from half-written inputs), saying why.
#[test]
fn without_room_to_save_its_operands_a_failure_is_final() {
    let parent = std::env::temp_dir().join(format!("hexec-faults-{}", std::process::id()));
    // The spill directory's parent must exist (it is never created).
    std::fs::create_dir_all(&parent).unwrap();
    let len = 1024;
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(1))
        .memory_limits(hexec::MemoryLimits {
            host: Some((len * 4 + 64) as u64),
            ..hexec::MemoryLimits::default()
        })
        .spill_dir(&parent)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let x = rt.data(vec![1.0f32; len]);
    let mut g = rt.graph();
    g.task(&flaky_double(calls.clone())).name("tight").read_write(x).add();
    let e = rt.run(&g).unwrap_err();
    let f = &e.report().unwrap().failures[0];
    assert_eq!(f.attempts.len(), 1, "{e}");
    assert!(f.message.contains("not retried: no host room"), "{e}");
    drop(rt);
    let _ = std::fs::remove_dir_all(&parent);
}

/// `y += x`, in place, taking 2 ms: long enough that both workers get some. With
/// `straggle_on_cpu1`, on worker cpu1 it then stalls (up to a minute) until told its result is
/// no longer wanted, and writes junk (NaN) 5 ms later on its way out, as a half-finished kernel
/// would: a copy that wins must not see the straggler's first write, nor keep its last.
fn slow_update(straggle_on_cpu1: bool) -> Arc<Kernel> {
    Arc::new(Kernel::cpu(
        "slow_update",
        Signature::exact(&[(Access::Read, ElemType::F32), (Access::ReadWrite, ElemType::F32)], 0),
        move |ctx| {
            let x = ctx.read::<f32>(0)?;
            let y = ctx.write::<f32>(1)?;
            y.iter_mut().zip(x).for_each(|(y, x)| *y += x);
            let straggler = straggle_on_cpu1 && std::thread::current().name() == Some("hexec-cpu1");
            let limit = std::time::Duration::from_millis(if straggler { 60_000 } else { 2 });
            let start = std::time::Instant::now();
            while start.elapsed() < limit && !ctx.cancelled() {
                std::hint::spin_loop();
            }
            if straggler {
                // It finishes the block it was on before it returns.
                std::thread::sleep(std::time::Duration::from_millis(5));
                y.fill(f32::NAN);
            }
            Ok(())
        },
    ))
}

/// Tiles updated in place three times each (`y += x`), on two CPUs of which `cpu1` is a
/// straggler: every attempt there stalls in the kernel (`inject` empty) or takes longer
/// (`inject`: a `slow` fault). The results must be exact whoever wins each race: a copy and
/// its original never both apply an update.
fn straggling_updates(opts: RunOptions, inject: &str) -> (Runtime, Vec<Data<f32>>, hexec::RunReport) {
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(2))
        .policy(PolicyKind::Ws)
        .inject(inject.parse::<FaultPlan>().unwrap())
        .build()
        .unwrap();
    let x = rt.data_read_only("x", vec![1.0f32; 256]);
    let tiles: Vec<Data<f32>> = (0..8).map(|i| rt.data(vec![i as f32; 256])).collect();
    let update = slow_update(inject.is_empty());
    let mut g = rt.graph();
    for _ in 0..3 {
        for t in &tiles {
            g.task(&update).read(x).read_write(*t).add();
        }
    }
    let report = rt.run_with(&g, opts).unwrap();
    (rt, tiles, report)
}

#[test]
fn with_a_deadline_a_straggler_is_copied_and_the_first_result_wins() {
    let opts = RunOptions {
        deadline: Some(std::time::Duration::from_secs(60)),
        ..RunOptions::default()
    };
    // Without the copies this run would take at least a minute per task cpu1 starts.
    let (rt, tiles, r) = straggling_updates(opts, "");
    assert!(r.speculation_won >= 1, "{r:?}");
    assert!(r.speculated >= r.speculation_won);
    assert_eq!(r.completed, 24);
    assert!(r.makespan_s < 30.0, "the stragglers were waited for: {r:?}");
    assert_eq!(r.deadline_met, Some(true));
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(rt.read(*t).unwrap(), vec![i as f32 + 3.0; 256], "tile {i}");
    }
}

#[test]
fn without_a_deadline_or_the_option_stragglers_are_waited_for() {
    let (rt, tiles, r) = straggling_updates(RunOptions::default(), "slow:cpu1:delay=100ms");
    assert_eq!(r.speculated, 0);
    assert!(r.makespan_s >= 0.1, "cpu1 ran at least one task: {r:?}");
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(rt.read(*t).unwrap(), vec![i as f32 + 3.0; 256], "tile {i}");
    }
    // Asked for, speculation needs no deadline.
    let opts = RunOptions {
        speculate: true,
        ..RunOptions::default()
    };
    let (rt, tiles, r) = straggling_updates(opts, "slow:cpu1:delay=60s");
    assert!(r.speculation_won >= 1, "{r:?}");
    assert!(r.makespan_s < 30.0, "the stragglers were waited for: {r:?}");
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(rt.read(*t).unwrap(), vec![i as f32 + 3.0; 256], "tile {i}");
    }
}

/// Three 30 ms tasks on two workers take two rounds, 60 ms: the lower bound says 45 ms (the
/// work shared by both), the simulated run says 60.
#[test]
fn a_deadline_prediction_simulates_the_run_rather_than_bounding_it() {
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(2))
        .policy(PolicyKind::Locality)
        .build()
        .unwrap();
    let mut g = rt.graph();
    for i in 0..3 {
        g.task(&builtin::sleep()).name(format!("s{i}")).param(0.03).add();
    }
    rt.run(&g).unwrap(); // measures `sleep`
    g.set_deadline(std::time::Duration::from_secs(10));
    let r = rt.run(&g).unwrap();
    let predicted = r.predicted_s.unwrap();
    assert!((0.055..0.09).contains(&predicted), "{predicted}");
    assert!(r.makespan_s >= 0.06, "{r:?}");
}

/// The two ways a speculated task can end other than its first finisher winning: its
/// original fails while its copy runs (the copy then decides the task), or its copy fails
/// while the original runs on. One task, two workers, known expected time (a calibrated first
/// run); whichever worker takes it first, the one on cpu1 fails after 30 ms and the one on
/// cpu0 succeeds after 60 ms. Either way the run succeeds with the value written once.
#[test]
fn a_copy_or_its_original_failing_leaves_the_task_to_the_other() {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (a, c) = (armed.clone(), calls.clone());
    let k = Arc::new(Kernel::cpu(
        "bump_or_break",
        Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0),
        move |ctx| {
            ctx.write::<f32>(0)?.iter_mut().for_each(|v| *v += 1.0);
            let me = std::thread::current().name().unwrap_or_default().to_string();
            c.lock().unwrap().push(me.clone());
            let (spin, fail) = match (a.load(Ordering::Relaxed), me.as_str()) {
                (false, _) => (2, false),
                (true, "hexec-cpu1") => (30, true),
                (true, _) => (60, false),
            };
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(spin) {
                std::hint::spin_loop();
            }
            if fail {
                return Err(hexec::kernels::KernelError::transient("cpu1 broke"));
            }
            Ok(())
        },
    ));
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(2))
        .policy(PolicyKind::Ws)
        .calibrate(true)
        .build()
        .unwrap();
    let y = rt.data(vec![5.0f32; 16]);
    let mut g = rt.graph();
    g.task(&k).read_write(y).add();
    for _ in 0..3 {
        rt.run(&g).unwrap(); // the model learns 2 ms
    }
    rt.write(y, &[5.0f32; 16]).unwrap();
    armed.store(true, Ordering::Relaxed);
    calls.lock().unwrap().clear();
    let opts = RunOptions {
        speculate: true,
        ..RunOptions::default()
    };
    let r = rt.run_with(&g, opts).unwrap();
    assert_eq!(rt.read(y).unwrap(), vec![6.0f32; 16], "{r:?}");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "the original and one copy: {calls:?}");
    assert_eq!(r.speculated, 1);
    match calls[0].as_str() {
        // The original failed at 30 ms while its copy ran: the copy's result is the task's.
        "hexec-cpu1" => assert_eq!(r.speculation_won, 1, "{r:?}"),
        // The copy failed at 30 ms: the original's result is the task's.
        _ => assert_eq!(r.speculation_won, 0, "{r:?}"),
    }
    assert_eq!(r.failed, 0);
}
