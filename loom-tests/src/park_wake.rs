//! The park/wake protocol under loom (see the crate's documentation).

use crate::sleep::Sleep;
use crate::topology::WorkerId;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;

/// Every interleaving with at most this many preemptions (loom's usual bound: most
/// concurrency bugs need two or three; unbounded, two workers and a waker take hours).
const PREEMPTIONS: usize = 3;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(PREEMPTIONS);
    b.check(f);
}

/// A worker's idle loop as `runtime/worker/idle.rs` runs it: search, announce, search again,
/// park; until it took a task (true) or the run is over (false).
fn wait_for_work(sleep: &Sleep, me: WorkerId, tasks: &AtomicUsize, done: &AtomicBool) -> bool {
    let take = || tasks.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
    loop {
        if done.load(SeqCst) {
            return false;
        }
        if take() {
            return true;
        }
        sleep.announce(me);
        if take() {
            sleep.cancel(me);
            return true;
        }
        if done.load(SeqCst) {
            sleep.cancel(me);
            return false;
        }
        sleep.park(me);
    }
}

#[test]
fn a_published_task_always_reaches_a_parking_worker() {
    model(|| {
        let sleep = Arc::new(Sleep::new(1));
        let tasks = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let worker = {
            let (sleep, tasks, done) = (sleep.clone(), tasks.clone(), done.clone());
            loom::thread::spawn(move || {
                sleep.register(WorkerId(0));
                wait_for_work(&sleep, WorkerId(0), &tasks, &done)
            })
        };
        // The pusher: publish, then wake a candidate.
        tasks.fetch_add(1, SeqCst);
        sleep.wake_one(&[WorkerId(0)]);
        assert!(worker.join().unwrap(), "the worker took the task");
    });
}

#[test]
fn the_end_of_a_run_wakes_every_parked_worker() {
    model(|| {
        let sleep = Arc::new(Sleep::new(2));
        let tasks = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let (sleep, tasks, done) = (sleep.clone(), tasks.clone(), done.clone());
                loom::thread::spawn(move || {
                    sleep.register(WorkerId(i));
                    wait_for_work(&sleep, WorkerId(i), &tasks, &done)
                })
            })
            .collect();
        // The run ends (`RunEnd::end`): the flag, then every worker woken.
        done.store(true, SeqCst);
        sleep.wake_all();
        for w in workers {
            assert!(!w.join().unwrap());
        }
    });
}

#[test]
fn a_wake_for_one_candidate_never_strands_the_other() {
    model(|| {
        let sleep = Arc::new(Sleep::new(2));
        let tasks = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let taken = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let (sleep, tasks, done, taken) = (sleep.clone(), tasks.clone(), done.clone(), taken.clone());
                loom::thread::spawn(move || {
                    sleep.register(WorkerId(i));
                    if wait_for_work(&sleep, WorkerId(i), &tasks, &done) {
                        // Its task is the run's last: it ends the run.
                        if taken.fetch_add(1, SeqCst) == 0 {
                            done.store(true, SeqCst);
                            sleep.wake_all();
                        }
                    }
                })
            })
            .collect();
        tasks.fetch_add(1, SeqCst);
        sleep.wake_one(&[WorkerId(0), WorkerId(1)]);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(taken.load(SeqCst), 1);
    });
}
