//! The live runtime: persistent worker threads, tasks submitted one by one while others run,
//! handles, data operations ordered after submitted work, bounded submission, cancellation,
//! and the async face on tokio's two runtimes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hexec::kernels::{builtin, Access, ElemType, Kernel, KernelError, Signature};
use hexec::topology::Machine;
use hexec::{DataError, Runtime, SubmitError, TaskError};

fn runtime(cpus: usize) -> Runtime {
    Runtime::builder()
        .machine(Machine::synthetic_cpus(cpus))
        .build()
        .unwrap()
}

/// `x += 1` on one u64.
fn increment() -> Arc<Kernel> {
    Arc::new(Kernel::cpu(
        "increment",
        Signature::exact(&[(Access::ReadWrite, ElemType::U64)], 0),
        |ctx| {
            ctx.write::<u64>(0)?[0] += 1;
            Ok(())
        },
    ))
}

/// Fails when its parameter is 1; else writes 7.
fn maybe_fail() -> Arc<Kernel> {
    Arc::new(Kernel::cpu(
        "maybe_fail",
        Signature::exact(&[(Access::Write, ElemType::U64)], 1),
        |ctx| {
            if ctx.param(0)? == 1.0 {
                return Err(KernelError::msg("deliberate failure"));
            }
            ctx.write::<u64>(0)?[0] = 7;
            Ok(())
        },
    ))
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn worker_threads_start_once_and_concurrent_runs_share_them() {
    let rt = runtime(2);
    let x = rt.data(vec![0u64; 1]);
    let y = rt.data(vec![0u64; 1]);
    // Counted from inside a task, while both threads' runs are under way.
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let count = Arc::new(Kernel::cpu("count_threads", Signature::any(0, 0), move |_| {
        let workers = thread_names().iter().filter(|n| n.starts_with("hexec-cpu")).count();
        s2.fetch_max(workers, Ordering::SeqCst);
        Ok(())
    }));
    // A new thread names itself once it runs: wait for both names.
    let named = |names: &[String]| {
        ["hexec-cpu0", "hexec-cpu1"]
            .iter()
            .all(|w| names.iter().any(|n| n == w))
    };
    for _ in 0..1000 {
        if named(&thread_names()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = thread_names();
    std::thread::scope(|s| {
        for d in [x, y] {
            let (rt, count) = (&rt, &count);
            s.spawn(move || {
                for _ in 0..20 {
                    let mut g = rt.graph();
                    g.task(&increment()).read_write(d).add();
                    g.task(count).add();
                    rt.run(&g).unwrap();
                }
            });
        }
    });
    // (The scope's own threads may still be exiting: only hexec's are compared.)
    let hexec = |v: Vec<String>| v.into_iter().filter(|n| n.starts_with("hexec-")).collect::<Vec<_>>();
    assert_eq!(
        hexec(thread_names()),
        hexec(before),
        "no worker thread started or ended for the runs"
    );
    if !thread_names().is_empty() {
        assert_eq!(
            seen.load(Ordering::SeqCst),
            2,
            "one thread per worker, shared by every run"
        );
    }
    assert_eq!(rt.read(x).unwrap(), vec![20]);
    assert_eq!(rt.read(y).unwrap(), vec![20]);
}

#[test]
fn tasks_submitted_one_by_one_follow_their_data_across_batches() {
    let rt = runtime(2);
    let x = rt.data(vec![0u64; 1]);
    let slow = rt.data(vec![0.0f32; 1]);
    let mut handles = Vec::new();
    for i in 0..200 {
        if i % 50 == 0 {
            // A slow task between increments: later ones gather into a batch while it runs.
            rt.task(&builtin::sleep())
                .read_write(slow)
                .param(0.005)
                .submit()
                .unwrap();
        }
        handles.push(rt.task(&increment()).read_write(x).submit().unwrap());
    }
    // `read` waits for the pending writers of x, not for everything.
    assert_eq!(rt.read(x).unwrap(), vec![200]);
    assert!(handles.iter().all(|h| h.is_finished()));
    assert!(handles.iter().all(|h| h.wait().is_ok()));
    assert!(handles[5].name().starts_with("increment#"), "{}", handles[5].name());
    rt.wait_all().unwrap();
}

#[test]
fn try_read_does_not_wait_and_read_does() {
    let rt = runtime(1);
    let x = rt.data(vec![0.0f32; 4]);
    let h = rt.task(&builtin::sleep()).read_write(x).param(0.05).submit().unwrap();
    assert!(matches!(rt.try_read(x), Err(DataError::Busy(_))));
    assert_eq!(rt.read(x).unwrap(), vec![0.0; 4]);
    assert!(h.is_finished());
    assert_eq!(rt.try_read(x).unwrap(), vec![0.0; 4]);
}

#[test]
fn a_failure_skips_only_the_tasks_that_read_what_it_should_have_written() {
    let rt = runtime(2);
    let a = rt.data_named("a", vec![0u64; 1]);
    let b = rt.data_named("b", vec![0u64; 1]);
    let failed = rt
        .task(&maybe_fail())
        .name("writer")
        .write(a)
        .param(1.0)
        .submit()
        .unwrap();
    rt.wait_all().unwrap();
    // Later batches: the reader of `a` is skipped, naming the writer; `b` is untouched.
    let reader = rt.task(&increment()).name("reader").read_write(a).submit().unwrap();
    let other = rt.task(&increment()).read_write(b).submit().unwrap();
    match failed.wait() {
        Err(TaskError::Failed(f)) => assert!(f.message.contains("deliberate failure"), "{f:?}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    match reader.wait() {
        Err(TaskError::Skipped { task, cause }) => {
            assert_eq!(task, "reader");
            assert!(cause.contains("'a'") && cause.contains("writer"), "{cause}");
        }
        other => panic!("expected a skip, got {other:?}"),
    }
    other.wait().unwrap();
    assert_eq!(rt.read(a).unwrap(), vec![0], "the failed write left the old value");
    assert_eq!(rt.read(b).unwrap(), vec![1]);
    // New values from the program clear the poison too.
    let c = rt.data_named("c", vec![0u64; 1]);
    rt.task(&maybe_fail()).write(c).param(1.0).submit().unwrap();
    rt.wait_all().unwrap();
    assert!(rt.task(&increment()).read_write(c).submit().unwrap().wait().is_err());
    rt.write(c, &[41]).unwrap();
    rt.task(&increment()).read_write(c).submit().unwrap().wait().unwrap();
    assert_eq!(rt.read(c).unwrap(), vec![42]);
    // Overwriting `a` clears the poison.
    rt.task(&maybe_fail()).write(a).param(0.0).submit().unwrap();
    rt.task(&increment()).read_write(a).submit().unwrap().wait().unwrap();
    assert_eq!(rt.read(a).unwrap(), vec![8]);
}

#[test]
fn dependents_in_the_same_batch_are_skipped_with_their_cause() {
    let rt = runtime(1);
    let gate = rt.data(vec![0.0f32; 1]);
    let a = rt.data_named("a", vec![0u64; 1]);
    // Holds the worker so that the next three tasks form one batch.
    rt.task(&builtin::sleep())
        .read_write(gate)
        .param(0.02)
        .submit()
        .unwrap();
    let w = rt.task(&maybe_fail()).name("w").write(a).param(1.0).submit().unwrap();
    let r = rt.task(&increment()).name("r").read_write(a).submit().unwrap();
    assert!(matches!(w.wait(), Err(TaskError::Failed(_))));
    match r.wait() {
        Err(TaskError::Skipped { cause, .. }) => assert!(cause.contains("'w'"), "{cause}"),
        other => panic!("expected a skip, got {other:?}"),
    }
}

#[test]
fn a_bad_submission_is_refused_alone_naming_the_task() {
    let rt = runtime(1);
    let x = rt.data(vec![0u64; 1]);
    let f = rt.data(vec![0.0f32; 1]);
    let ok = rt.task(&increment()).read_write(x).submit().unwrap();
    // Operands that do not match the kernel.
    match rt.task(&increment()).name("wrong").read_write(f).submit() {
        Err(SubmitError::Signature { task, .. }) => assert_eq!(task, "wrong"),
        other => panic!("expected a signature error, got {other:?}"),
    }
    // A worker that does not exist.
    match rt
        .task(&increment())
        .name("nowhere")
        .read_write(x)
        .on_worker("gpu7")
        .submit()
    {
        Err(SubmitError::Unsatisfiable { task, reason }) => {
            assert_eq!(task, "nowhere");
            assert!(reason.contains("gpu7"), "{reason}");
        }
        other => panic!("expected an unsatisfiable restriction, got {other:?}"),
    }
    // Read-only data.
    let c = rt.data_read_only("constants", vec![1u64; 1]);
    assert!(matches!(
        rt.task(&increment()).read_write(c).submit(),
        Err(SubmitError::ReadOnlyWrite { .. })
    ));
    // A freed datum.
    let gone = rt.data_named("gone", vec![0u64; 1]);
    rt.free(gone).unwrap();
    match rt.task(&increment()).name("late").read_write(gone).submit() {
        Err(SubmitError::InvalidTask { task, message }) => {
            assert_eq!(task, "late");
            assert!(message.contains("gone"), "{message}");
        }
        other => panic!("expected an invalid task, got {other:?}"),
    }
    // The good task was not disturbed.
    ok.wait().unwrap();
    assert_eq!(rt.read(x).unwrap(), vec![1]);
}

#[test]
fn several_threads_submit_concurrently() {
    let rt = runtime(2);
    let shared = rt.data(vec![0u64; 1]);
    let own: Vec<_> = (0..4).map(|_| rt.data(vec![0u64; 1])).collect();
    std::thread::scope(|s| {
        for &mine in &own {
            let rt = &rt;
            s.spawn(move || {
                for _ in 0..250 {
                    rt.task(&increment()).read_write(mine).submit().unwrap();
                    rt.task(&increment()).read_write(shared).submit().unwrap();
                }
            });
        }
    });
    rt.wait_all().unwrap();
    assert_eq!(rt.read(shared).unwrap(), vec![1000]);
    for d in own {
        assert_eq!(rt.read(d).unwrap(), vec![250]);
    }
}

#[test]
fn a_producer_that_runs_ahead_waits_at_the_cap() {
    const CAP: usize = 8;
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(1))
        .max_submitted(CAP)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let slow = Arc::new(Kernel::cpu("slow", Signature::any(0, 0), move |_| {
        std::thread::sleep(Duration::from_micros(200));
        r.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }));
    let mut most = 0;
    for submitted in 1..=200 {
        rt.task(&slow).submit().unwrap();
        most = most.max(submitted - ran.load(Ordering::SeqCst));
    }
    assert!(most <= CAP, "{most} tasks unfinished at once with a cap of {CAP}");
    rt.wait_all().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 200);
}

#[test]
fn a_cancelled_task_and_its_dependents_do_not_run_and_data_keep_their_values() {
    let rt = runtime(1);
    let gate = rt.data(vec![0.0f32; 1]);
    let x = rt.data(vec![5u64; 1]);
    let running = rt
        .task(&builtin::sleep())
        .read_write(gate)
        .param(0.05)
        .submit()
        .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    // Queued behind the running batch.
    let doomed = rt.task(&increment()).name("doomed").read_write(x).submit().unwrap();
    let after = rt.task(&increment()).name("after").read_write(x).submit().unwrap();
    assert!(doomed.cancel());
    assert!(matches!(doomed.wait(), Err(TaskError::Cancelled { .. })));
    match after.wait() {
        Err(TaskError::Skipped { cause, .. }) => assert!(cause.contains("doomed"), "{cause}"),
        other => panic!("expected a skip, got {other:?}"),
    }
    assert!(!doomed.cancel(), "a finished task is not cancelled");
    assert_eq!(rt.read(x).unwrap(), vec![5]);
    running.wait().unwrap();
}

#[test]
fn a_running_kernel_sees_its_cancellation_and_its_operand_gets_its_value_back() {
    let rt = runtime(1);
    let x = rt.data(vec![5u64; 1]);
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = started.clone();
    let stubborn = Arc::new(Kernel::cpu(
        "stubborn",
        Signature::exact(&[(Access::ReadWrite, ElemType::U64)], 0),
        move |ctx| {
            ctx.write::<u64>(0)?[0] = 99; // half-done work
            s2.store(1, Ordering::SeqCst);
            let t = std::time::Instant::now();
            while !ctx.cancelled() && t.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        },
    ));
    let h = rt.task(&stubborn).read_write(x).submit().unwrap();
    let dependent = rt.task(&increment()).read_write(x).submit().unwrap();
    while started.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(h.cancel());
    assert!(matches!(h.wait(), Err(TaskError::Cancelled { .. })), "{:?}", h.wait());
    assert!(matches!(dependent.wait(), Err(TaskError::Skipped { .. })));
    assert_eq!(rt.read(x).unwrap(), vec![5], "the half-done write is undone");
}

#[test]
fn submitted_graphs_and_runs_keep_submission_order() {
    let rt = runtime(2);
    let x = rt.data(vec![0u64; 1]);
    rt.task(&builtin::sleep()).param(0.01).submit().unwrap();
    let mut g = rt.graph();
    for _ in 0..10 {
        g.task(&increment()).read_write(x).add();
    }
    let handle = rt.submit_graph(g);
    let t = rt.task(&increment()).read_write(x).submit().unwrap();
    let mut g2 = rt.graph();
    g2.task(&increment()).read_write(x).add();
    rt.run(&g2).unwrap();
    assert_eq!(handle.wait().unwrap().completed, 10);
    assert!(t.is_finished(), "a run starts after what was submitted before it");
    assert_eq!(rt.read(x).unwrap(), vec![12]);
}

#[test]
fn dropping_the_runtime_finishes_submitted_work() {
    let done = Arc::new(AtomicUsize::new(0));
    {
        let rt = runtime(2);
        for _ in 0..100 {
            let d = done.clone();
            let k = Arc::new(Kernel::cpu("note", Signature::any(0, 0), move |_| {
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }));
            rt.task(&k).submit().unwrap();
        }
    }
    assert_eq!(done.load(Ordering::SeqCst), 100);
}

async fn async_flow(rt: &Runtime) -> u64 {
    let x = rt.data(vec![0u64; 1]);
    let mut last = None;
    for _ in 0..100 {
        last = Some(rt.task(&increment()).read_write(x).submit_async().await.unwrap());
    }
    last.unwrap().await.unwrap();
    rt.wait_all_async().await;
    rt.read_async(x).await.unwrap()[0]
}

#[test]
fn async_submission_and_waits_on_a_current_thread_tokio_runtime() {
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(1))
        .max_submitted(4)
        .build()
        .unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // One executor thread: any blocking inside hexec's futures would hang this test.
    let got = tokio.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async_flow(&rt))
            .await
            .expect("no future may block the executor")
    });
    assert_eq!(got, 100);
}

#[test]
fn async_submission_from_many_tasks_on_a_multi_thread_tokio_runtime() {
    let rt = Arc::new(
        Runtime::builder()
            .machine(Machine::synthetic_cpus(2))
            .max_submitted(16)
            .build()
            .unwrap(),
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let shared = rt.data(vec![0u64; 1]);
    tokio.block_on(async {
        let mut joins = Vec::new();
        for _ in 0..8 {
            let rt = rt.clone();
            joins.push(tokio::spawn(async move {
                for _ in 0..50 {
                    rt.task(&increment()).read_write(shared).submit_async().await.unwrap();
                }
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        rt.wait_all_async().await;
        assert_eq!(rt.read_async(shared).await.unwrap(), vec![400]);
    });
}

/// Records the worker thread a task ran on.
fn where_it_ran(log: Arc<std::sync::Mutex<Vec<String>>>) -> Arc<Kernel> {
    Arc::new(Kernel::cpu(
        "where",
        Signature::exact(&[(Access::ReadWrite, ElemType::U64)], 0),
        move |ctx| {
            std::thread::sleep(Duration::from_micros(300));
            ctx.write::<u64>(0)?[0] += 1;
            let me = std::thread::current().name().unwrap_or("?").to_string();
            log.lock().unwrap().push(me);
            Ok(())
        },
    ))
}

#[test]
fn a_cpu_worker_retired_mid_stream_gets_nothing_new_and_loses_nothing() {
    let rt = runtime(2);
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let k = where_it_ran(log.clone());
    let data: Vec<_> = (0..16).map(|_| rt.data(vec![0u64; 1])).collect();
    for round in 0..40 {
        for &d in &data {
            rt.task(&k).read_write(d).submit().unwrap();
        }
        if round == 10 {
            let report = rt.retire("cpu1").unwrap();
            assert_eq!(report.worker, "cpu1");
            assert_eq!(rt.retired_workers(), vec!["cpu1".to_string()]);
            log.lock().unwrap().clear();
        }
    }
    rt.wait_all().unwrap();
    for &d in &data {
        assert_eq!(rt.read(d).unwrap(), vec![40], "every increment ran once");
    }
    let after = log.lock().unwrap().clone();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|w| w == "hexec-cpu0"),
        "after retiring, only cpu0 runs tasks"
    );
    // Back again: both workers take tasks.
    rt.restore("cpu1").unwrap();
    assert!(rt.retired_workers().is_empty());
    log.lock().unwrap().clear();
    for _ in 0..20 {
        for &d in &data {
            rt.task(&k).read_write(d).submit().unwrap();
        }
    }
    rt.wait_all().unwrap();
    assert!(
        log.lock().unwrap().iter().any(|w| w == "hexec-cpu1"),
        "a restored worker takes tasks"
    );
}

#[test]
fn retiring_the_only_worker_of_a_submitted_task_is_refused_unless_forced() {
    let rt = runtime(2);
    let gate = rt.data(vec![0.0f32; 1]);
    let x = rt.data(vec![0u64; 1]);
    // Keeps the tasks behind it queued.
    rt.task(&builtin::sleep())
        .read_write(gate)
        .param(0.1)
        .on_worker("cpu0")
        .submit()
        .unwrap();
    let pinned = rt
        .task(&builtin::sleep())
        .name("pinned")
        .read_write(gate)
        .param(0.0)
        .on_worker("cpu1")
        .submit()
        .unwrap();
    let free = rt.task(&increment()).read_write(x).submit().unwrap();
    match rt.retire("cpu1") {
        Err(hexec::runtime::RetireError::SoleWorker { worker, tasks }) => {
            assert_eq!(worker, "cpu1");
            assert_eq!(tasks, vec!["pinned".to_string()]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(rt.retired_workers().is_empty(), "a refused retire changes nothing");
    let forced = rt
        .retire_with(
            "cpu1",
            &hexec::runtime::RetireOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(forced.stranded_tasks, vec!["pinned".to_string()]);
    match pinned.wait() {
        Err(TaskError::Failed(f)) => assert!(f.message.contains("retired"), "{}", f.message),
        other => panic!("expected a failure, got {other:?}"),
    }
    free.wait().unwrap();
    // New submissions that only a retired worker could run are refused at once.
    match rt
        .task(&increment())
        .name("late")
        .read_write(x)
        .on_worker("cpu1")
        .submit()
    {
        Err(SubmitError::Unsatisfiable { task, reason }) => {
            assert_eq!(task, "late");
            assert!(reason.contains("retired"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        rt.retire("cpu9"),
        Err(hexec::runtime::RetireError::UnknownWorker { .. })
    ));
}

#[test]
fn a_read_from_another_thread_waits_for_a_blocking_run_that_writes_the_datum() {
    let rt = runtime(1);
    let x = rt.data(vec![0u64; 1]);
    let slow_increment = Arc::new(Kernel::cpu(
        "slow_increment",
        Signature::exact(&[(Access::ReadWrite, ElemType::U64)], 0),
        |ctx| {
            std::thread::sleep(Duration::from_millis(50));
            ctx.write::<u64>(0)?[0] += 1;
            Ok(())
        },
    ));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = rt.graph();
            g.task(&slow_increment).read_write(x).add();
            rt.run(&g).unwrap();
        });
        std::thread::sleep(Duration::from_millis(15));
        // The run holds x: the read waits for it instead of failing as busy.
        assert_eq!(rt.read(x).unwrap(), vec![1]);
    });
}

#[test]
fn waiting_for_everything_inside_a_task_is_an_error_not_a_hang() {
    let rt = Arc::new(runtime(1));
    let weak = Arc::downgrade(&rt);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s2 = seen.clone();
    let waiter = Arc::new(Kernel::cpu("waiter", Signature::any(0, 0), move |_| {
        if let Some(rt) = weak.upgrade() {
            *s2.lock().unwrap() = Some(rt.wait_all());
        }
        Ok(())
    }));
    rt.task(&waiter).submit().unwrap().wait().unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(Err(TaskError::WaitInsideTask)));
}

#[test]
fn waits_inside_tasks_and_nested_runs_never_hang() {
    let rt = Arc::new(runtime(2));
    let weak = Arc::downgrade(&rt);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    // A task that submits a graph and waits for it, and runs a graph that runs a graph.
    let deep = Arc::new(Kernel::cpu("deep", Signature::any(0, 0), move |_| {
        let Some(rt) = weak.upgrade() else { return Ok(()) };
        let waited = rt.submit_graph(rt.graph()).wait();
        s2.lock().unwrap().push(format!("{:?}", waited.err()));
        let inner = {
            let weak = Arc::downgrade(&rt);
            Arc::new(Kernel::cpu("inner", Signature::any(0, 0), move |_| {
                if let Some(rt) = weak.upgrade() {
                    // Two levels down: a run and a wait for everything, on the nested run's own threads.
                    rt.run(&rt.graph()).map_err(|e| KernelError::msg(e.to_string()))?;
                    assert_eq!(rt.wait_all(), Err(TaskError::WaitInsideTask));
                }
                Ok(())
            }))
        };
        let mut g = rt.graph();
        g.task(&inner).add();
        rt.run(&g).map_err(|e| KernelError::msg(e.to_string()))?;
        Ok(())
    }));
    let mut g = rt.graph();
    g.task(&deep).add();
    assert_eq!(rt.run(&g).unwrap().completed, 1);
    assert_eq!(seen.lock().unwrap().as_slice(), ["Some(WaitInsideTask)"]);
}

#[test]
fn the_last_handle_dropped_inside_its_own_task_does_not_hang() {
    let done = Arc::new(AtomicUsize::new(0));
    let rt = Arc::new(runtime(1));
    let holder: Arc<std::sync::Mutex<Option<Arc<Runtime>>>> = Arc::new(std::sync::Mutex::new(None));
    let (h2, d2) = (holder.clone(), done.clone());
    let last = Arc::new(Kernel::cpu("last", Signature::any(0, 0), move |_| {
        // The kernel takes the last handle (once the test has handed it over) and drops it.
        let t = std::time::Instant::now();
        let mut taken = None;
        while taken.is_none() && t.elapsed() < Duration::from_secs(10) {
            taken = h2.lock().unwrap().take();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(taken.is_some(), "the handle was handed over");
        drop(taken);
        d2.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }));
    let h = rt.task(&last).submit().unwrap();
    *holder.lock().unwrap() = Some(rt);
    h.wait().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[test]
fn cancelling_a_task_that_completed_while_its_batch_runs_says_too_late() {
    let rt = runtime(2);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let quick = Arc::new(Kernel::cpu("quick", Signature::any(0, 0), move |_| {
        d2.store(true, Ordering::SeqCst);
        Ok(())
    }));
    let gate = rt.data(vec![0.0f32; 1]);
    // Both in one batch, behind a first one: `quick` ends long before `slow`.
    rt.task(&builtin::sleep())
        .read_write(gate)
        .param(0.02)
        .submit()
        .unwrap();
    let a = rt.task(&quick).submit().unwrap();
    let slow = rt.task(&builtin::sleep()).param(0.2).submit().unwrap();
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Its kernel has returned; the worker marks it completed right after.
    std::thread::sleep(Duration::from_millis(20));
    assert!(!a.cancel(), "it had completed");
    a.wait().unwrap();
    slow.wait().unwrap();
}

#[test]
fn free_when_done_frees_after_the_submitted_work_and_refuses_later_uses() {
    let rt = runtime(2);
    let host = |rt: &Runtime| rt.memory_usage()[0].used_bytes;
    let before = host(&rt);
    let x = rt.data_named("x", vec![0u64; 1 << 16]);
    let y = rt.data_named("y", vec![0u64; 1]);
    // A slow task on x, then x dropped by the program while it runs.
    let slow = rt
        .task(&builtin::sleep())
        .read(x)
        .write(y)
        .param(0.05)
        .submit()
        .unwrap();
    let bumps: Vec<_> = (0..3)
        .map(|_| rt.task(&increment()).read_write(x).submit().unwrap())
        .collect();
    rt.free_when_done(x).unwrap();
    // From now on x is freed for the program, though its tasks still run.
    let e = rt.task(&increment()).read_write(x).submit().unwrap_err();
    assert!(e.to_string().contains("datum 'x' was freed"), "{e}");
    assert_eq!(rt.read(x).unwrap_err(), DataError::Freed("x".into()));
    assert_eq!(rt.try_read(x).unwrap_err(), DataError::Freed("x".into()));
    let tokio = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let read_async = tokio.block_on(rt.read_async(x));
    assert_eq!(read_async.unwrap_err(), DataError::Freed("x".into()));
    assert_eq!(rt.free_when_done(x).unwrap_err(), DataError::Freed("x".into()));
    // The work submitted before still ran on it.
    slow.wait().unwrap();
    for b in bumps {
        b.wait().unwrap();
    }
    rt.wait_all().unwrap();
    rt.free(y).unwrap();
    assert_eq!(host(&rt), before, "x was freed once its work had ended");
    // Nothing submitted uses it: freed at once.
    let z = rt.data_named("z", vec![1u64; 8]);
    rt.free_when_done(z).unwrap();
    assert_eq!(rt.read(z).unwrap_err(), DataError::Freed("z".into()));
}
