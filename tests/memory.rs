//! Host memory limits: host copies past the limit are spilled to checksummed files in a
//! per-runtime directory, read back on use, and removed with the runtime.

use std::sync::Arc;

use hexec::kernels::{builtin, Kernel, KernelError, Signature};
use hexec::{Data, Machine, MemoryLimits, PolicyKind, Runtime};

/// The directory one test's runtimes make their spill directories in; removed, with anything
/// left in it, when the test ends (also when it fails).
struct SpillParent(std::path::PathBuf);

fn spill_parent(tag: &str) -> SpillParent {
    let p = std::env::temp_dir().join(format!("hexec-memtest-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    SpillParent(p)
}

impl std::ops::Deref for SpillParent {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for SpillParent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rt(workers: usize, policy: PolicyKind, host: Option<u64>, parent: &std::path::Path) -> Runtime {
    Runtime::builder()
        .machine(Machine::synthetic_cpus(workers))
        .policy(policy)
        .memory_limits(MemoryLimits {
            host,
            ..MemoryLimits::default()
        })
        .spill_dir(parent)
        .build()
        .unwrap()
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32 * 31 + seed * 17) % 97) as f32 * 0.25)
        .collect()
}

/// Adds the tiles pairwise into the first (axpy: two tiles at once), in rounds of doubling
/// stride: a tree reduction.
fn reduce_pairwise<D: Copy + Into<hexec::DataRef>>(g: &mut hexec::Graph, tiles: &[D]) {
    let mut stride = 1;
    while stride < tiles.len() {
        for i in (0..tiles.len()).step_by(2 * stride) {
            if i + stride < tiles.len() {
                g.task(&builtin::axpy())
                    .read(tiles[i + stride])
                    .read_write(tiles[i])
                    .param(1.0)
                    .add();
            }
        }
        stride *= 2;
    }
}

/// Every tile scaled twice, then reduced pairwise into tile 0 (axpy: two tiles at once).
fn tiles_then_pairwise_sum(rt: &Runtime, tiles: usize, len: usize) -> (hexec::RunReport, Vec<Vec<f32>>) {
    let data: Vec<Data<f32>> = (0..tiles).map(|i| rt.data(values(len, i as u32))).collect();
    let mut g = rt.graph();
    for round in 0..2 {
        for d in &data {
            g.task(&builtin::scale()).read_write(*d).param(1.5 + round as f64).add();
        }
    }
    reduce_pairwise(&mut g, &data);
    let report = rt.run(&g).unwrap();
    let out = data.iter().map(|d| rt.read(*d).unwrap()).collect();
    (report, out)
}

#[test]
fn working_sets_4x_and_16x_the_host_limit_complete_with_identical_results() {
    let parent = spill_parent("ws");
    let (tiles, len) = (32, 2048);
    let tile = (len * 4) as u64;
    let (_, expected) = tiles_then_pairwise_sum(&rt(2, PolicyKind::Ws, None, &parent), tiles, len);
    for factor in [4, 16] {
        for policy in [PolicyKind::Ws, PolicyKind::Locality] {
            let limit = tiles as u64 * tile / factor;
            let limited = rt(2, policy, Some(limit), &parent);
            let (report, got) = tiles_then_pairwise_sum(&limited, tiles, len);
            assert_eq!(
                got, expected,
                "{factor}x with {policy:?}: results differ under a host limit"
            );
            let host = &report.memory[0];
            assert_eq!((host.node.as_str(), host.capacity_bytes), ("host", Some(limit)));
            assert!(
                host.peak_bytes <= limit,
                "{factor}x: peak {} over {limit}",
                host.peak_bytes
            );
            assert!(report.spilled_bytes > 0 && host.evictions > 0, "{factor}x: {host:?}");
            let dir = limited.spill_directory().unwrap().to_path_buf();
            assert!(dir.starts_with(&*parent));
            drop(limited);
            assert!(!dir.exists(), "spill directory {} left behind", dir.display());
        }
    }
}

#[test]
fn a_spill_file_damaged_on_disk_is_detected() {
    let parent = spill_parent("damage");
    let rt = rt(1, PolicyKind::Ws, Some(4096), &parent);
    let a = rt.data_named("a", vec![1.0f32; 1024]);
    let b = rt.data_named("b", vec![2.0f32; 1024]); // makes room by spilling 'a'
    let dir = rt.spill_directory().unwrap().to_path_buf();
    // 'a' is the first datum spilled (by 'b' or by the background spiller, which may still be
    // writing it, and may go on to spill 'b' as well): wait for its whole file.
    let first = dir.join("0.bin");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&first).map_or(true, |m| m.len() < 4096) {
        assert!(std::time::Instant::now() < deadline, "'a' was never spilled");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let e = rt.read(a).unwrap_err().to_string();
    assert!(e.contains("'a'") && e.contains("checksum"), "{e}");
    // The other datum is unharmed, and the runtime still works.
    assert_eq!(rt.read(b).unwrap(), vec![2.0; 1024]);
    drop(rt);
    assert!(!dir.exists());
}

#[test]
fn the_spill_directory_goes_after_a_failed_run_and_the_data_survives_runs() {
    let parent = spill_parent("fail");
    let rt = rt(2, PolicyKind::Ws, Some(3 * 4096), &parent);
    let data: Vec<Data<f32>> = (0..8).map(|i| rt.data(values(1024, i))).collect();
    let fragile = Arc::new(Kernel::cpu("fragile", Signature::any(1, 1), |ctx| {
        if ctx.param(0)? > 0.0 {
            return Err(KernelError::msg("deliberate failure"));
        }
        Ok(())
    }));
    let mut g = rt.graph();
    for (i, d) in data.iter().enumerate() {
        g.task(&fragile)
            .read_write(*d)
            .param(if i == 5 { 1.0 } else { 0.0 })
            .add();
    }
    assert!(rt.run(&g).unwrap_err().to_string().contains("deliberate failure"));
    // Every datum, spilled or not, still reads back as written.
    for (i, d) in data.iter().enumerate() {
        assert_eq!(rt.read(*d).unwrap(), values(1024, i as u32), "datum {i}");
    }
    let dir = rt.spill_directory().unwrap().to_path_buf();
    assert!(dir.exists());
    drop(rt);
    assert!(!dir.exists());
}

#[test]
fn a_cpu_task_whose_operands_exceed_the_host_limit_is_refused_at_submit() {
    let parent = spill_parent("refuse");
    let rt = rt(1, PolicyKind::Ws, Some(8192), &parent);
    let a = rt.data(vec![0.0f32; 1536]);
    let b = rt.data(vec![0.0f32; 1536]);
    let mut g = rt.graph();
    g.task(&builtin::axpy())
        .name("too-big")
        .read(a)
        .read_write(b)
        .param(1.0)
        .add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(
        e.contains("'too-big'") && e.contains("12288") && e.contains("8192"),
        "{e}"
    );
    drop(rt);
}

#[test]
fn a_datum_larger_than_the_host_limit_is_refused_at_submit_and_stays_readable() {
    let parent = spill_parent("huge");
    let rt = rt(1, PolicyKind::Ws, Some(4096), &parent);
    let huge = rt.data_named("huge", vec![3.0f32; 2048]); // 8 KiB, over the 4 KiB limit
    let mut g = rt.graph();
    g.task(&builtin::scale()).name("grow").read_write(huge).param(2.0).add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(
        e.contains("'grow'") && e.contains("'huge'") && e.contains("4096"),
        "{e}"
    );
    // It was admitted over the limit, is never spilled (it could not come back), and is not
    // lost when other data need room.
    let small: Vec<_> = (0..4).map(|i| rt.data(vec![i as f32; 256])).collect();
    assert_eq!(rt.read(huge).unwrap(), vec![3.0; 2048]);
    for (i, s) in small.iter().enumerate() {
        assert_eq!(rt.read(*s).unwrap(), vec![i as f32; 256]);
    }
    drop(rt);
}

#[test]
fn past_the_high_watermark_the_background_spiller_makes_room() {
    let parent = spill_parent("background");
    let tile = 4096u64;
    let rt = rt(1, PolicyKind::Ws, Some(10 * tile), &parent);
    let data: Vec<_> = (0..10).map(|i| rt.data(vec![i as f32; 1024])).collect();
    // At 100% of the limit; the spiller brings the host down to 80% without anyone asking.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // An empty run reports the host's use at its start.
        let used = rt.run(&rt.graph()).unwrap().memory[0].peak_bytes;
        if used <= 8 * tile {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "host use stayed at {used} bytes");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for (i, d) in data.iter().enumerate() {
        assert_eq!(rt.read(*d).unwrap(), vec![i as f32; 1024]);
    }
    drop(rt);
}

/// `tiles` temporaries produced (filled with 1, 2, ...) and reduced pairwise into a stored
/// result: what survives is the result, equal to the sum 1 + 2 + ... + tiles.
fn temporaries_reduced(rt: &Runtime, tiles: usize, len: usize) -> (hexec::RunReport, Vec<f32>) {
    let out = rt.data(vec![0.0f32; len]);
    let mut g = rt.graph();
    let temps: Vec<hexec::TempData<f32>> = (0..tiles).map(|i| g.temp(format!("t{i}"), len)).collect();
    for (i, t) in temps.iter().enumerate() {
        g.task(&builtin::fill()).write(*t).param(1.0 + i as f64).add();
    }
    reduce_pairwise(&mut g, &temps);
    g.task(&builtin::axpy()).read(temps[0]).read_write(out).param(1.0).add();
    let report = rt.run(&g).unwrap();
    (report, rt.read(out).unwrap())
}

#[test]
fn temporaries_are_freed_after_their_last_use_with_and_without_limits() {
    let parent = spill_parent("temps");
    let (tiles, len) = (32, 2048);
    let tile = (len * 4) as u64;
    let expected = vec![(tiles * (tiles + 1) / 2) as f32; len];
    for policy in [PolicyKind::Ws, PolicyKind::Locality, PolicyKind::Eager] {
        for (host, backpressure) in [(None, true), (Some(8 * tile), true), (Some(8 * tile), false)] {
            let mut b = Runtime::builder()
                .machine(Machine::synthetic_cpus(2))
                .policy(policy)
                .memory_limits(MemoryLimits {
                    host,
                    ..MemoryLimits::default()
                })
                .spill_dir(&*parent);
            if !backpressure {
                b = b.no_backpressure();
            }
            let rt = b.build().unwrap();
            let (report, out) = temporaries_reduced(&rt, tiles, len);
            let what = format!("{policy:?}, host {host:?}, backpressure {backpressure}");
            assert_eq!(out, expected, "{what}");
            let host_mem = &report.memory[0];
            if let Some(limit) = host {
                assert!(host_mem.peak_bytes <= limit, "{what}: peak {}", host_mem.peak_bytes);
            }
            // Only the stored result is left: temporaries are not residents after the run.
            assert_eq!(report.residency[0].data, 1, "{what}");
            assert_eq!(report.residency[0].bytes, tile, "{what}");
            let dir = rt.spill_directory().map(std::path::Path::to_path_buf);
            drop(rt);
            if let Some(dir) = dir {
                assert!(!dir.exists(), "{what}: spill dir left behind");
            }
        }
    }
}

#[test]
fn a_temporary_reads_as_zeros_before_it_is_written_and_each_run_starts_afresh() {
    let rt = Runtime::builder().machine(Machine::synthetic_cpus(1)).build().unwrap();
    let out = rt.data(vec![5.0f32; 4]);
    let mut g = rt.graph();
    let t = g.temp::<f32>("scratch", 4);
    g.task(&builtin::axpy()).read(t).read_write(out).param(1.0).add();
    g.task(&builtin::fill()).write(t).param(3.0).add();
    g.task(&builtin::axpy()).read(t).read_write(out).param(1.0).add();
    rt.run(&g).unwrap();
    assert_eq!(rt.read(out).unwrap(), vec![8.0; 4], "zeros, then 3");
    rt.run(&g).unwrap();
    assert_eq!(
        rt.read(out).unwrap(),
        vec![11.0; 4],
        "the second run starts from zeros again"
    );
}

#[test]
fn a_temporary_of_another_graph_is_refused_with_its_name() {
    let rt = Runtime::builder().machine(Machine::synthetic_cpus(1)).build().unwrap();
    let mut other = rt.graph();
    let t = other.temp::<f32>("elsewhere", 4);
    let mut g = rt.graph();
    g.task(&builtin::fill()).name("writer").write(t).param(1.0).add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(e.contains("writer") && e.contains("another graph"), "{e}");
}

#[test]
fn a_full_spill_disk_is_a_clear_error_and_loses_nothing() {
    let parent = spill_parent("disk");
    let len = 1024;
    let tile = (len * 4) as u64;
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(1))
        .memory_limits(MemoryLimits {
            host: Some(2 * tile),
            disk: Some(tile),
            ..MemoryLimits::default()
        })
        .spill_dir(&*parent)
        .build()
        .unwrap();
    let data: Vec<Data<f32>> = (0..4).map(|i| rt.data(values(len, i))).collect();
    let mut g = rt.graph();
    for d in &data {
        g.task(&builtin::scale()).read_write(*d).param(2.0).add();
    }
    let e = rt.run(&g).unwrap_err();
    let report = e.report().expect("a task failure carries the report");
    let msg = e.to_string();
    assert!(msg.contains("spill disk limit of 4096 bytes"), "{msg}");
    let disk = report.memory.iter().find(|m| m.node == "disk").unwrap();
    assert_eq!(disk.capacity_bytes, Some(tile));
    assert!(disk.peak_bytes <= tile, "{disk:?}");
    for (i, d) in data.iter().enumerate() {
        let got = rt.read(*d).unwrap();
        let before = values(len, i as u32);
        let after: Vec<f32> = before.iter().map(|v| v * 2.0).collect();
        assert!(
            got == before || got == after,
            "tile {i} is neither its old nor its new value"
        );
    }
}

/// On a machine with two NUMA nodes, the host limit is shared between them: a buffer a
/// worker brings into memory is charged to its node, and no node passes its share.
#[test]
fn each_numa_node_keeps_to_its_share_of_the_host_limit() {
    let parent = spill_parent("numa");
    let (tiles, len) = (16, 2048);
    let tile = (len * 4) as u64;
    // Every tile scaled on the worker of each node in turn (so both nodes bring data in,
    // whatever the timing), then reduced pairwise into tile 0.
    let run = |rt: &Runtime| {
        let data: Vec<Data<f32>> = (0..tiles).map(|i| rt.data(values(len, i as u32))).collect();
        let mut g = rt.graph();
        for worker in ["cpu0", "cpu1"] {
            for d in &data {
                g.task(&builtin::scale())
                    .on_worker(worker)
                    .read_write(*d)
                    .param(1.5)
                    .add();
            }
        }
        for d in &data[1..] {
            g.task(&builtin::axpy()).read(*d).read_write(data[0]).param(1.0).add();
        }
        let report = rt.run(&g).unwrap();
        (report, rt.read(data[0]).unwrap())
    };
    let (_, expected) = run(&rt(2, PolicyKind::Ws, None, &parent));
    let limit = 4 * tile;
    for policy in [PolicyKind::Ws, PolicyKind::Locality] {
        let rt = Runtime::builder()
            .machine(Machine::synthetic_numa(2, 1))
            .policy(policy)
            .memory_limits(MemoryLimits {
                host: Some(limit),
                ..MemoryLimits::default()
            })
            .spill_dir(&*parent)
            .build()
            .unwrap();
        let (report, got) = run(&rt);
        assert_eq!(got, expected, "{policy}");
        let node = |name: &str| report.memory.iter().find(|m| m.node == name).unwrap().clone();
        assert!(node("host").peak_bytes <= limit, "{policy}: {:?}", report.memory);
        for name in ["host/numa0", "host/numa1"] {
            let m = node(name);
            assert_eq!(m.capacity_bytes, Some(limit / 2), "{policy}: {m:?}");
            assert!(m.peak_bytes <= limit / 2, "{policy}: {m:?}");
            assert!(
                m.peak_bytes > 0,
                "{policy}: the worker on {name} brought data in: {m:?}"
            );
        }
        assert!(report.spilled_bytes > 0);
    }
    // A datum larger than one node's share cannot live anywhere: refused at submit.
    let rt = Runtime::builder()
        .machine(Machine::synthetic_numa(2, 1))
        .memory_limits(MemoryLimits {
            host: Some(limit),
            ..MemoryLimits::default()
        })
        .spill_dir(&*parent)
        .build()
        .unwrap();
    let big = rt.data(vec![0.0f32; 3 * len]);
    let mut g = rt.graph();
    g.task(&builtin::scale()).name("big").read_write(big).param(1.0).add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(e.contains("'big'") && e.contains("NUMA node's share"), "{e}");
}

/// Making room for one operand of a task does not spill another operand of the same task
/// (it would come straight back: a ping-pong). Three tiles in memory, room for three and a
/// half; the task reads a spilled tile and two resident ones.
#[test]
fn making_room_for_a_task_spares_its_other_operands() {
    let parent = spill_parent("spare");
    let len = 1024;
    let tile = (len * 4) as u64;
    let rt = rt(1, PolicyKind::Ws, Some(3 * tile + tile / 2), &parent);
    let a = rt.data(vec![1.0f32; len]);
    let b = rt.data(vec![2.0f32; len]);
    let c = rt.data(vec![0.0f32; len]);
    let _x = rt.data(vec![9.0f32; len]); // spills 'a', the least recently used
    let mut g = rt.graph();
    g.task(&builtin::add()).read(a).read(b).write(c).add();
    let r = rt.run(&g).unwrap();
    assert_eq!(rt.read(c).unwrap(), vec![3.0; len]);
    let host = &r.memory[0];
    // Bringing 'a' back spills one tile: 'x', the only one the task does not use.
    assert_eq!(host.evictions, 1, "{host:?}");
    assert_eq!(host.ping_pongs, 0, "{host:?}");
}

/// A host ping-pong is detected: while a long task pins two tiles, another task's operands
/// can only be brought in by spilling each other, so one comes back before any task
/// completed. hexec counts it, runs one CPU task at a time until a task completes, and the
/// result is right.
#[test]
fn a_host_ping_pong_is_detected_and_the_run_completes() {
    let parent = spill_parent("pingpong");
    let len = 1024;
    let tile = (len * 4) as u64;
    let rt = rt(2, PolicyKind::Eager, Some(4 * tile + tile / 2), &parent);
    let (x, y) = (rt.data(vec![5.0f32; len]), rt.data(vec![6.0f32; len]));
    let a = rt.data(vec![1.0f32; len]);
    let b = rt.data(vec![2.0f32; len]);
    let c = rt.data(vec![0.0f32; len]); // creating 'c' spills 'x'; x and y come back below
    let mut g = rt.graph();
    // Holds x and y for 300 ms.
    g.task(&builtin::sleep()).name("hold").read(x).read(y).param(0.3).add();
    let start = g.task(&builtin::sleep()).name("wait").param(0.05).add();
    g.task(&builtin::add())
        .name("add")
        .read(a)
        .read(b)
        .write(c)
        .after(start)
        .add();
    let r = rt.run(&g).unwrap();
    assert_eq!(rt.read(c).unwrap(), vec![3.0; len]);
    assert!(r.memory[0].ping_pongs >= 1, "{:?}", r.memory[0]);
    assert!(r.memory[0].peak_bytes <= 4 * tile + tile / 2);
}

/// A real tiled Cholesky (potrf, trsm, syrk, gemm_nt on CPU workers) factorises correctly,
/// and gives the same factor, bit for bit, with its working set 4x and 16x the host limit.
#[test]
fn tiled_cholesky_under_host_limits_gives_the_same_factor() {
    use hexec::linalg::TiledCholesky;
    let parent = spill_parent("chol");
    // 78 tiles: a gemm's three tiles still fit in a sixteenth.
    let (n, b) = (12, 16);
    let free = rt(2, PolicyKind::Locality, None, &parent);
    let chol = TiledCholesky::new(&free, n, b);
    free.run(&chol.graph).unwrap();
    let residual = chol.residual(&free).unwrap();
    assert!(residual < 1e-5, "residual {residual}");
    let expected = chol.factor(&free).unwrap();
    let working_set = chol.bytes();
    for over in [4, 16] {
        for policy in [PolicyKind::Locality, PolicyKind::Ws] {
            let limit = working_set / over;
            let rt = rt(2, policy, Some(limit), &parent);
            let chol = TiledCholesky::new(&rt, n, b);
            let r = rt.run(&chol.graph).unwrap();
            assert!(r.memory[0].peak_bytes <= limit, "{policy} {over}x: {:?}", r.memory[0]);
            assert!(r.spilled_bytes > 0, "{policy} {over}x");
            assert_eq!(chol.factor(&rt).unwrap(), expected, "{policy} {over}x");
        }
    }
}

/// What another user of a shared temporary directory could plant for the old predictable
/// names (`hexec-spill-PID-N`, files `0.bin`...): world-writable directories whose files are
/// links to a victim file. A spilling runtime must neither use such a directory nor write
/// through the links: its own directory has a random name, mode 0700, files mode 0600.
#[cfg(unix)]
#[test]
fn a_planted_spill_directory_with_linked_files_is_never_written_through() {
    use std::os::unix::fs::PermissionsExt;
    let parent = spill_parent("planted");
    let victim = parent.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let pid = std::process::id();
    let planted: Vec<std::path::PathBuf> = (0..64)
        .map(|n| {
            let d = parent.join(format!("hexec-spill-{pid}-{n}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
            for f in 0..8 {
                std::os::unix::fs::symlink(&victim, d.join(format!("{f}.bin"))).unwrap();
            }
            d
        })
        .collect();
    let rt = rt(1, PolicyKind::Ws, Some(4 * 4096), &parent);
    let data: Vec<Data<f32>> = (0..12).map(|i| rt.data(values(1024, i))).collect();
    let mut g = rt.graph();
    for d in &data {
        g.task(&builtin::scale()).read_write(*d).param(2.0).add();
    }
    let result = rt.run(&g);
    let dir = rt.spill_directory().unwrap().to_path_buf();
    assert!(!planted.contains(&dir), "used a planted directory {}", dir.display());
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious",
        "the victim file was written"
    );
    let report = result.unwrap();
    assert!(report.spilled_bytes > 0, "the run must spill: {:?}", report.memory);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!files.is_empty(), "spilled data are in files until read back");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    for (i, d) in data.iter().enumerate() {
        let want: Vec<f32> = values(1024, i as u32).iter().map(|v| v * 2.0).collect();
        assert_eq!(rt.read(*d).unwrap(), want, "datum {i}");
    }
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious",
        "the victim file was written"
    );
    drop(rt);
    assert!(!dir.exists());
}

/// A host limit is kept by spilling; without a place to spill (a spill parent that is a file,
/// or missing) the runtime is refused, naming the path, and nothing is created.
#[test]
fn a_host_limit_without_a_spill_directory_is_refused_at_build() {
    let parent = spill_parent("nodir");
    let file = parent.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let missing = parent.join("missing/deeper");
    for bad in [&file, &missing] {
        let e = Runtime::builder()
            .machine(Machine::synthetic_cpus(1))
            .memory_limits(MemoryLimits {
                host: Some(1 << 20),
                ..MemoryLimits::default()
            })
            .spill_dir(bad)
            .build()
            .err()
            .expect("a host limit with no spill directory must be refused");
        let e = e.to_string();
        assert!(e.contains(&bad.display().to_string()) && e.contains("spill"), "{e}");
    }
    assert!(!parent.join("missing").exists(), "a missing parent is not created");
    // Without a host limit no spill directory is needed, so the same parent is fine.
    Runtime::builder()
        .machine(Machine::synthetic_cpus(1))
        .spill_dir(&file)
        .build()
        .unwrap();
}

#[test]
fn freeing_a_spilled_datum_removes_its_spill_file() {
    let parent = spill_parent("free");
    let rt = rt(1, PolicyKind::Ws, Some(4096), &parent);
    let a = rt.data_named("a", vec![1.0f32; 1024]);
    let b = rt.data_named("b", vec![2.0f32; 1024]); // makes room by spilling 'a'
    let dir = rt.spill_directory().unwrap().to_path_buf();
    let first = dir.join("0.bin");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&first).map_or(true, |m| m.len() < 4096) {
        assert!(std::time::Instant::now() < deadline, "'a' was never spilled");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    rt.free(a).unwrap();
    assert!(!first.exists(), "the spill file of a freed datum stays behind");
    let host = rt.memory_usage()[0].used_bytes;
    assert!(host <= 4096, "{host} host bytes accounted with only 'b' left");
    let e = rt.read(a).unwrap_err().to_string();
    assert_eq!(e, "datum 'a' was freed");
    // 'b' (in memory or spilled) is unharmed, and can be freed too.
    assert_eq!(rt.read(b).unwrap(), vec![2.0; 1024]);
    rt.free(b).unwrap();
    assert_eq!(rt.memory_usage()[0].used_bytes, 0);
    assert_eq!(std::fs::read_dir(&dir).map_or(0, |d| d.count()), 0, "spill files left");
}
