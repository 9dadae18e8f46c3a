//! The data lifecycle: data made from a vector without a copy, read in place, taken back,
//! and freed (every copy, with its room in the budgets); a freed handle is a clear error.
//! Memory is measured through the store's accounting and, on Linux, the process's resident
//! set, so the tests of this file run one at a time.

use std::sync::{Arc, Barrier, Mutex};

use hexec::kernels::{Kernel, Signature};
use hexec::{DataError, Machine, PolicyKind, Runtime};

/// Held by every test: resident-memory figures are per process.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn rt() -> Runtime {
    Runtime::builder()
        .machine(Machine::synthetic_cpus(1))
        .policy(PolicyKind::Ws)
        .build()
        .unwrap()
}

fn host_used(rt: &Runtime) -> u64 {
    rt.memory_usage()[0].used_bytes
}

/// The process's resident set size in bytes (`/proc/self/statm`), on Linux.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The process's peak resident set size since the last [`reset_peak_rss`] (`VmHWM`), on Linux.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Starts a new peak at the current resident set size; false where the kernel refuses.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

const MIB: u64 = 1 << 20;

#[test]
fn data_created_and_freed_in_a_loop_stay_bounded() {
    let _s = serial();
    let rt = rt();
    let keep = rt.data_named("kept", vec![0u8; 1000]);
    let base = host_used(&rt);
    let mut rss_after_first = None;
    for step in 0..200u32 {
        // 4 MiB each, touched (non-zero), so that a leak shows in the resident set too.
        let d = rt.data_named(format!("step{step}"), vec![step as f32 + 1.0; 1 << 20]);
        assert_eq!(host_used(&rt), base + 4 * MIB);
        let first = rt.read_with(d, |s| s[0]).unwrap();
        assert_eq!(first, step as f32 + 1.0);
        rt.free(d).unwrap();
        assert_eq!(host_used(&rt), base, "step {step}: bytes still accounted after free");
        if step == 0 {
            rss_after_first = rss();
        }
    }
    if let (Some(first), Some(last)) = (rss_after_first, rss()) {
        // Without freeing, 199 more steps would hold 796 MiB more.
        assert!(
            last < first + 64 * MIB,
            "resident memory grew from {first} to {last} bytes over 200 freed data"
        );
    }
    assert_eq!(rt.read(keep).unwrap(), vec![0u8; 1000]);
}

#[test]
fn a_freed_handle_is_an_error_naming_the_datum() {
    let _s = serial();
    let rt = rt();
    let x = rt.data_named("x", vec![1.0f64; 16]);
    let y = rt.data_named("y", vec![0.0f64; 16]);
    rt.free(x).unwrap();
    let freed = DataError::Freed("x".into());
    assert_eq!(rt.read(x).unwrap_err(), freed);
    assert_eq!(rt.write(x, &[0.0; 16]).unwrap_err(), freed);
    assert_eq!(rt.read_with(x, |s| s.len()).unwrap_err(), freed);
    assert_eq!(rt.take(x).unwrap_err(), freed);
    assert_eq!(rt.replicate(x, 2).unwrap_err(), freed);
    // Freeing twice is an error, not a panic.
    assert_eq!(rt.free(x).unwrap_err().to_string(), "datum 'x' was freed");
    // In a graph: refused at submit, naming the task and the datum.
    let mut g = rt.graph();
    g.task(&hexec::kernels::builtin::add())
        .name("uses-x")
        .read(x)
        .read(y)
        .write(y)
        .add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(e.contains("'uses-x'") && e.contains("datum 'x' was freed"), "{e}");
    // Other data are unaffected; ids are not reused, so a new datum is not 'x'.
    let z = rt.data_named("z", vec![2.0f64; 16]);
    assert_eq!(rt.read(z).unwrap(), vec![2.0; 16]);
    assert_eq!(rt.read(x).unwrap_err(), freed);
    assert_eq!(rt.read(y).unwrap(), vec![0.0; 16]);
}

#[test]
fn freeing_a_datum_in_use_by_a_run_waits_for_the_run() {
    let _s = serial();
    let rt = rt();
    let x = rt.data_named("x", vec![1u32; 64]);
    let (started, go) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let (s2, g2) = (started.clone(), go.clone());
    let hold = Arc::new(Kernel::cpu("hold", Signature::any(0, 0), move |_| {
        s2.wait();
        g2.wait();
        Ok(())
    }));
    let mut g = rt.graph();
    g.task(&hold).read(x).add();
    std::thread::scope(|s| {
        let run = s.spawn(|| rt.run(&g));
        started.wait();
        // Not refused, not done under the run: it waits for the run to end.
        assert!(matches!(rt.try_read(x), Err(DataError::Busy(_))));
        let freeing = s.spawn(|| rt.free(x));
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(!freeing.is_finished(), "free waits for the run that uses the datum");
        go.wait();
        run.join().unwrap().unwrap();
        freeing.join().unwrap().unwrap();
    });
    assert!(matches!(rt.read(x), Err(DataError::Freed(_))));
    assert_eq!(host_used(&rt), 0);
}

#[test]
fn data_take_the_vector_without_copying() {
    let _s = serial();
    let rt = rt();
    let v: Vec<f32> = (0..16 << 20).map(|i| i as f32).collect(); // 64 MiB
    let p = v.as_ptr();
    let d = rt.data(v);
    let (seen, sum) = rt
        .read_with(d, |s: &[f32]| (s.as_ptr(), s[..1000].iter().sum::<f32>()))
        .unwrap();
    assert_eq!(seen, p, "read_with does not see the vector's own buffer");
    assert_eq!(sum, (0..1000).sum::<i32>() as f32);
    assert_eq!(rt.read(d).unwrap()[12345], 12345.0);
    let back = rt.take(d).unwrap();
    assert_eq!(back.as_ptr(), p, "take copied the buffer");
    assert_eq!((back.len(), back[(16 << 20) - 1]), (16 << 20, ((16 << 20) - 1) as f32));
    assert_eq!(host_used(&rt), 0);
    assert_eq!(rt.read(d).unwrap_err(), DataError::Freed("data#0".into()));
    // Every element type, odd lengths, spare capacity and empty vectors go in and out.
    let mut bytes = Vec::with_capacity(100);
    bytes.extend_from_slice(&[7u8; 13]);
    let b = rt.data(bytes);
    assert_eq!(rt.read_with(b, |s| s.to_vec()).unwrap(), vec![7u8; 13]);
    assert_eq!(rt.take(b).unwrap(), vec![7u8; 13]);
    let e = rt.data(Vec::<i64>::new());
    assert_eq!(rt.read_with(e, |s| s.len()).unwrap(), 0);
    assert_eq!(rt.take(e).unwrap(), Vec::<i64>::new());
    // A datum overwritten by the program keeps its buffer.
    let w = rt.data(vec![3u64; 5]);
    rt.write(w, &[4; 5]).unwrap();
    assert_eq!(rt.take(w).unwrap(), vec![4; 5]);
    assert_eq!(host_used(&rt), 0);
}

#[cfg(target_os = "linux")]
#[test]
fn a_large_vector_costs_its_size_once() {
    let _s = serial();
    let rt = rt();
    let n = 64 << 20; // 256 MiB of f32
    let before = rss().unwrap();
    let v = vec![1.5f32; n]; // written, so resident
    let with_vec = rss().unwrap();
    assert!(
        with_vec >= before + 200 * MIB,
        "the vector is not resident: {before} → {with_vec}"
    );
    let peak_known = reset_peak_rss();
    let d = rt.data(v);
    let total = rt.read_with(d, |s| s.iter().map(|&x| x as f64).sum::<f64>()).unwrap();
    assert_eq!(total, 1.5 * n as f64);
    let back = rt.take(d).unwrap();
    // A copy would add another 256 MiB at its peak (and give it back when the original goes,
    // which is why the peak is what counts).
    let (after, peak) = (rss().unwrap(), peak_rss().unwrap());
    assert!(
        after < with_vec + 32 * MIB,
        "storing, reading and taking a 256 MiB vector left {} MiB more resident",
        (after - with_vec) / MIB
    );
    if peak_known {
        assert!(
            peak < with_vec + 32 * MIB,
            "storing, reading and taking a 256 MiB vector peaked {} MiB above it",
            (peak - with_vec) / MIB
        );
    } else {
        eprintln!("peak resident memory not checked: /proc/self/clear_refs refused");
    }
    drop(back);
}
