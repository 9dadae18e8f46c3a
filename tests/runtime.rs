//! Behaviour of the runtime through its public API: failures, bad input, stealing,
//! priorities, traces, repeated use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexec::kernels::{builtin, Kernel, KernelError, Signature};
use hexec::{DataError, Machine, PolicyKind, RunError, RunOptions, Runtime, SubmitError};

fn rt(workers: usize, policy: PolicyKind) -> Runtime {
    Runtime::builder()
        .machine(Machine::synthetic_cpus(workers))
        .policy(policy)
        .build()
        .unwrap()
}

fn failing_kernel() -> Arc<Kernel> {
    Arc::new(Kernel::cpu("fragile", Signature::any(1, 1), |ctx| {
        match ctx.param(0)? as i64 {
            1 => panic!("deliberate panic in a kernel"),
            2 => Err(KernelError::msg("deliberate error")),
            _ => Ok(()),
        }
    }))
}

#[test]
fn a_panicking_kernel_fails_its_task_and_skips_only_its_dependents() {
    for (policy, retry_panics) in PolicyKind::ALL.into_iter().flat_map(|p| [(p, false), (p, true)]) {
        let rt = Runtime::builder()
            .machine(Machine::synthetic_cpus(2))
            .policy(policy)
            .retry_panics(retry_panics)
            .build()
            .unwrap();
        let x = rt.data(vec![0u64; 1]);
        let mut g = rt.graph();
        g.task(&failing_kernel()).name("boom").param(1.0).write(x).add();
        g.task(&builtin::noop()).name("reader").read(x).add(); // depends on boom: skipped
        g.task(&builtin::noop()).name("reader2").read(x).add(); // likewise
        for i in 0..20 {
            g.task(&builtin::noop()).name(format!("free{i}")).add();
        }
        let keep_going = RunOptions::keep_going();
        let err = rt.run_with(&g, keep_going).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("'boom'") && msg.contains("fragile") && msg.contains("deliberate panic"),
            "{msg}"
        );
        let report = err.report().unwrap();
        if retry_panics {
            // Tried four times (three retries), alternating between the two workers.
            assert!(msg.contains("after 4 attempts"), "{msg}");
            assert_eq!(report.retried, 3);
        } else {
            // A panic is a bug that recurs: one attempt, and the message says how to retry.
            assert!(msg.contains("panics are not retried"), "{msg}");
            assert_eq!(report.retried, 0);
            assert_eq!(report.failures[0].attempts.len(), 1);
        }
        assert!(msg.contains("2 dependent task(s) were skipped"), "{msg}");
        assert_eq!((report.completed, report.failed, report.skipped), (20, 1, 2));
        assert!(report.failures[0].worker.starts_with("cpu"));
        // The runtime is still usable, and the data is not left busy.
        assert_eq!(rt.read(x).unwrap(), vec![0]);
        assert_eq!(rt.run(&rt.graph()).unwrap().tasks, 0);
    }
}

/// Errors a kernel marks transient are tried again; a kernel may ask for its panics to be.
#[test]
fn transient_errors_and_opted_in_panics_are_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let flaky = Arc::new(Kernel::cpu("flaky", Signature::any(1, 1), move |ctx| {
        let n = c.fetch_add(1, Ordering::Relaxed);
        match (ctx.param(0)? as i64, n) {
            (0, 0) => Err(KernelError::transient("busy, try later")),
            (1, 0) => panic!("a passing panic"),
            _ => Ok(()),
        }
    }));
    let rt = rt(1, PolicyKind::Ws);
    for mode in [0.0, 1.0] {
        calls.store(0, Ordering::Relaxed);
        let kernel = if mode == 1.0 {
            Arc::new((*flaky).clone().retry_panics(true))
        } else {
            flaky.clone()
        };
        let mut g = rt.graph();
        g.task(&kernel).param(mode).add();
        let r = rt.run(&g).unwrap();
        assert_eq!((r.completed, r.retried), (1, 1), "mode {mode}");
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}

#[test]
fn a_kernel_error_is_reported_with_the_task_name() {
    let rt = rt(1, PolicyKind::Ws);
    let mut g = rt.graph();
    g.task(&failing_kernel()).name("careful").param(2.0).add();
    g.task(&failing_kernel()).name("fine").param(0.0).add();
    match rt.run(&g) {
        Err(RunError::TaskFailed { report }) => {
            assert_eq!(report.failures.len(), 1);
            assert_eq!(report.failures[0].task, "careful");
            assert_eq!(report.failures[0].message, "deliberate error");
            // An error that will recur is not tried again.
            assert_eq!(report.retried, 0);
            assert_eq!(report.failures[0].attempts.len(), 1);
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
}

#[test]
fn bad_submissions_are_errors_naming_the_task() {
    let rt = rt(2, PolicyKind::Ws);
    let other = Runtime::builder().machine(Machine::synthetic_cpus(1)).build().unwrap();
    let foreign = other.data(vec![1.0f32; 4]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .name("uses-foreign")
        .read_write(foreign)
        .param(1.0)
        .add();
    match rt.run(&g) {
        Err(RunError::Submit(SubmitError::UnknownData { task, detail, .. })) => {
            assert_eq!(task, "uses-foreign");
            assert!(detail.contains("another runtime"));
        }
        other => panic!("{other:?}"),
    }

    let ro = rt.data_read_only("constants", vec![1.0f32; 4]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .name("writes-constants")
        .read_write(ro)
        .param(2.0)
        .add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(
        e.contains("'writes-constants'") && e.contains("'constants'") && e.contains("read-only"),
        "{e}"
    );

    let y = rt.data(vec![0.0f64; 4]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .name("wrong-type")
        .read_write(y)
        .param(2.0)
        .add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(
        e.contains("'wrong-type'") && e.contains("must hold f32, not f64"),
        "{e}"
    );

    let mut g = rt.graph();
    g.task(&builtin::noop())
        .name("needs-gpu")
        .on(hexec::DeviceKind::Gpu)
        .add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(e.contains("'needs-gpu'") && e.contains("gpu"), "{e}");
    assert!(matches!(rt.read(ro), Ok(v) if v == vec![1.0; 4]));
}

#[test]
fn data_in_use_cannot_be_read_from_outside_the_run() {
    let rt = Arc::new(rt(2, PolicyKind::Ws));
    let x = rt.data(vec![7u32; 3]);
    type Peeked = Option<Result<Vec<u32>, DataError>>;
    let seen: Arc<Mutex<Peeked>> = Arc::default();
    let (rt2, seen2) = (Arc::downgrade(&rt), seen.clone());
    let peek = Arc::new(Kernel::cpu("peek", Signature::any(0, 0), move |_| {
        let rt = rt2.upgrade().expect("runtime alive during its run");
        *seen2.lock().unwrap() = Some(rt.read(x));
        Ok(())
    }));
    let mut g = rt.graph();
    g.task(&peek).read(x).add();
    rt.run(&g).unwrap();
    assert!(matches!(seen.lock().unwrap().take(), Some(Err(DataError::Busy(_)))));
    assert_eq!(rt.read(x).unwrap(), vec![7; 3]);
    assert!(rt.read(rt.data(vec![1.0f32])).is_ok());
    assert!(matches!(rt.write(x, &[1, 2]), Err(DataError::LengthMismatch { .. })));
}

/// Each task waits (bounded) until two tasks run at once; all are released by one worker
/// onto its own deque, so the second worker can only get one by stealing.
#[test]
fn ws_steals_and_eager_shares() {
    for policy in [
        PolicyKind::Eager,
        PolicyKind::Ws,
        PolicyKind::Locality,
        PolicyKind::Heft,
    ] {
        let rt = rt(2, policy);
        let running = Arc::new(AtomicUsize::new(0));
        let r = running.clone();
        let rendezvous = Arc::new(Kernel::cpu("rendezvous", Signature::any(0, 0), move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            let t = Instant::now();
            while r.load(Ordering::SeqCst) < 2 && t.elapsed() < Duration::from_secs(5) {
                std::hint::spin_loop();
            }
            Ok(())
        }));
        let mut g = rt.graph();
        let root = g.task(&builtin::noop()).name("root").add();
        for i in 0..8 {
            g.task(&rendezvous).name(format!("leaf{i}")).after(root).add();
        }
        let report = rt.run(&g).unwrap();
        assert_eq!(report.completed, 9);
        assert!(
            report.workers.iter().all(|w| w.tasks > 0),
            "{policy}: both workers ran tasks: {:?}",
            report.tasks_per_worker()
        );
        match policy {
            PolicyKind::Ws => assert!(report.steals >= 1, "ws must have stolen"),
            // eager, and locality and heft without a performance model (they share like eager).
            _ => assert_eq!(report.steals, 0),
        }
    }
}

#[test]
fn eager_runs_ready_tasks_by_priority() {
    let rt = rt(1, PolicyKind::Eager);
    let mut g = rt.graph();
    let prios = [3, -1, 7, 0, 7, 2, -5, 1];
    for (i, p) in prios.iter().enumerate() {
        g.task(&builtin::noop()).name(format!("p{i}")).priority(*p).add();
    }
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    let mut events = report.trace.unwrap().per_worker.concat();
    events.sort_by_key(|e| e.start_ns);
    let order: Vec<i32> = events.iter().map(|e| prios[e.task as usize]).collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted);
}

#[test]
fn runtimes_come_and_go_and_runs_repeat() {
    for _ in 0..20 {
        let rt = rt(2, PolicyKind::Ws);
        let y = rt.data(vec![1.0f32; 8]);
        let mut g = rt.graph();
        for _ in 0..10 {
            g.task(&builtin::scale()).read_write(y).param(2.0).add();
        }
        for k in 1..=3 {
            rt.run(&g).unwrap();
            assert_eq!(rt.read(y).unwrap(), vec![1024f32.powi(k); 8]);
        }
    }
}

#[test]
fn the_trace_is_valid_chrome_json() {
    let rt = rt(2, PolicyKind::Ws);
    let mut g = rt.graph();
    let a = g.task(&builtin::noop()).name("first \"quoted\"").add();
    g.task(&builtin::noop()).after(a).add();
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    let mut buf = Vec::new();
    hexec::trace::write_chrome_trace(&mut buf, &g, &report).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let tasks: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().any(|e| e["name"] == "first \"quoted\""));
    assert_eq!(events.iter().filter(|e| e["ph"] == "M").count(), 2);
    let untraced = rt.run(&g).unwrap();
    assert!(hexec::trace::write_chrome_trace(Vec::new(), &g, &untraced).is_err());
}

/// A traced chain a → b → c carries dependency arrows: a flow starts inside each task's slice
/// and finishes (bound to the enclosing slice) inside its successor's.
#[test]
fn the_trace_links_dependencies_with_flow_events() {
    let rt = rt(2, PolicyKind::Ws);
    let x = rt.data(vec![1.0f32; 1 << 14]);
    let mut g = rt.graph();
    g.task(&builtin::scale()).name("a").read_write(x).param(2.0).add();
    g.task(&builtin::scale()).name("b").read_write(x).param(2.0).add();
    g.task(&builtin::scale()).name("c").read_write(x).param(2.0).add();
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    let mut buf = Vec::new();
    hexec::trace::write_chrome_trace(&mut buf, &g, &report).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    // The task whose slice holds a flow event: same track, timestamp inside the slice.
    let slice_at = |flow: &serde_json::Value| -> String {
        let ts = flow["ts"].as_f64().unwrap();
        let hits: Vec<&str> = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"] == flow["pid"] && e["tid"] == flow["tid"])
            .filter(|e| {
                let (start, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
                start <= ts && ts <= start + dur
            })
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(hits.len(), 1, "flow {flow} is not inside exactly one slice: {hits:?}");
        hits[0].to_string()
    };
    let mut arrows: Vec<(String, String)> = Vec::new();
    for start in events.iter().filter(|e| e["ph"] == "s") {
        let ends: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["ph"] == "f" && e["id"] == start["id"] && e["cat"] == start["cat"])
            .collect();
        assert_eq!(ends.len(), 1, "flow {start} has {} ends", ends.len());
        assert_eq!(ends[0]["bp"], "e", "the arrow binds to the successor's slice");
        arrows.push((slice_at(start), slice_at(ends[0])));
    }
    arrows.sort();
    assert_eq!(
        arrows,
        [("a".to_string(), "b".to_string()), ("b".to_string(), "c".to_string())],
        "{v}"
    );
}

#[test]
fn real_topology_runs_pinned() {
    let rt = Runtime::builder().build().unwrap();
    let n = rt.machine().num_workers();
    let mut g = rt.graph();
    for _ in 0..1000 {
        g.task(&builtin::noop()).add();
    }
    let report = rt.run(&g).unwrap();
    assert_eq!(report.completed, 1000);
    assert_eq!(report.workers.len(), n);
    assert!(matches!(
        Runtime::builder().cpus(n + 1).build(),
        Err(hexec::BuildError::Topology(_))
    ));
}

/// A task that requests every core runs alone: no other task starts while it runs.
#[test]
fn a_multi_core_task_runs_alone() {
    for policy in PolicyKind::ALL {
        let rt = rt(3, policy);
        let running = Arc::new(AtomicUsize::new(0));
        let overlap = Arc::new(AtomicUsize::new(0));
        let (r1, o1) = (running.clone(), overlap.clone());
        let wide = Arc::new(Kernel::cpu("wide", Signature::any(0, 0), move |ctx| {
            assert_eq!(ctx.cores(), 3);
            r1.fetch_add(1, Ordering::SeqCst);
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(30) {
                if r1.load(Ordering::SeqCst) != 1 {
                    o1.fetch_add(1, Ordering::SeqCst);
                }
            }
            r1.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }));
        let r2 = running.clone();
        let narrow = Arc::new(Kernel::cpu("narrow", Signature::any(0, 0), move |_| {
            r2.fetch_add(1, Ordering::SeqCst);
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(200) {
                std::hint::spin_loop();
            }
            r2.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }));
        let mut g = rt.graph();
        for i in 0..60 {
            g.task(&narrow).name(format!("n{i}")).add();
            if i % 20 == 10 {
                g.task(&wide).name(format!("w{i}")).cores(3).add();
            }
        }
        let report = rt.run(&g).unwrap();
        assert_eq!(report.completed, 63);
        assert_eq!(
            overlap.load(Ordering::SeqCst),
            0,
            "{policy}: another task ran beside a 3-core task"
        );
    }
}

/// A run cancelled from another thread starts no task after that, lets the running ones end,
/// and returns `RunError::Cancelled` with the partial report; a token cancelled before the
/// run starts runs nothing; the runtime works afterwards.
#[test]
fn a_run_cancelled_from_another_thread_returns_its_partial_report() {
    let rt = rt(2, PolicyKind::Ws);
    let mut g = rt.graph();
    for i in 0..40 {
        g.task(&builtin::sleep()).name(format!("nap{i}")).param(0.05).add();
    }
    let token = hexec::CancelToken::new();
    let opts = RunOptions {
        cancel: Some(token.clone()),
        ..RunOptions::default()
    };
    let started = Instant::now();
    let canceller = {
        let token = token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            token.cancel();
        })
    };
    let e = rt.run_with(&g, opts.clone()).unwrap_err();
    canceller.join().unwrap();
    // 40 naps on 2 workers take a second; stopped at 150 ms, it ends at the next nap's end.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let RunError::Cancelled { report } = &e else {
        panic!("expected Cancelled, got {e}");
    };
    assert!(report.cancelled > 0, "{}", report.completed);
    assert_eq!(report.completed + report.cancelled, 40);
    assert_eq!(report.failed, 0);
    assert!(
        e.to_string().contains("cancelled") && e.to_string().contains("not run"),
        "{e}"
    );
    // Still cancelled: the next run with it runs nothing.
    let r = rt.run_with(&g, opts).unwrap_err();
    assert_eq!(r.report().unwrap().completed, 0, "{r}");
    // A token that is never cancelled changes nothing, and runs end promptly: the monitor is
    // woken at the run's end (a lost wake-up would cost its 200 ms timeout per run).
    let mut quick = rt.graph();
    quick.task(&builtin::noop()).add();
    let fresh = RunOptions {
        cancel: Some(hexec::CancelToken::new()),
        ..RunOptions::default()
    };
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(rt.run_with(&quick, fresh.clone()).unwrap().completed, 1);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn a_temporary_larger_than_the_machine_is_refused_at_submit() {
    let rt = rt(2, PolicyKind::Eager);
    let out = rt.data(vec![0f32; 1]);
    // 4 TiB, and a length whose byte size does not even fit in a usize.
    for len in [1usize << 40, usize::MAX / 2] {
        let mut g = rt.graph();
        let t = g.temp::<f32>("huge", len);
        g.task(&builtin::fill()).name("fill").param(1.0).write(t).add();
        g.task(&builtin::sum()).name("sum").read(t).write(out).add();
        match rt.run(&g) {
            Err(RunError::Submit(SubmitError::DatumTooLarge { datum, bytes, limit })) => {
                assert_eq!(datum, "huge");
                assert_eq!(bytes, len as u128 * 4);
                assert!(limit.contains("memory"), "{limit}");
            }
            other => panic!("expected a refusal naming the temporary, got {other:?}"),
        }
    }
    // The runtime is still usable, and a temporary that fits runs.
    let mut g = rt.graph();
    let t = g.temp::<f32>("small", 4);
    g.task(&builtin::fill()).param(1.0).write(t).add();
    g.task(&builtin::sum()).read(t).write(out).add();
    rt.run(&g).unwrap();
    assert_eq!(rt.read(out).unwrap(), vec![4.0]);
}
