//! GPU paths on whatever adapter wgpu finds, software adapters included on request (every
//! runtime here asks for them with `software_gpus(true)`; lavapipe in CI): kernels against
//! their CPU versions at odd sizes, coherence across two devices and the host, placement of mixed
//! graphs, and clean failures for broken shaders and lost devices. Each test says so and
//! returns early when the machine has no GPU adapter at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hexec::gpu::GpuRequest;
use hexec::kernels::{builtin, Access, ElemType, GpuImpl, Kernel, Signature};
use hexec::{Data, DeviceKind, PolicyKind, RunError, RunOptions, Runtime};

fn gpu_runtime(gpus: usize) -> Option<Runtime> {
    match Runtime::builder()
        .cpus(1)
        .software_gpus(true)
        .gpus(GpuRequest::Count(gpus))
        .policy(PolicyKind::Ws)
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("SKIPPED: no usable GPU adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            None
        }
    }
}

/// A runtime with one CPU core and one GPU under an optional GPU memory limit.
fn gpu_rt_limited(limit: Option<u64>, policy: PolicyKind) -> Option<Runtime> {
    let mut b = Runtime::builder()
        .cpus(1)
        .software_gpus(true)
        .gpus(GpuRequest::Count(1))
        .policy(policy);
    if let Some(l) = limit {
        b = b.memory_limits(hexec::MemoryLimits {
            gpu: Some(l),
            ..hexec::MemoryLimits::default()
        });
    }
    b.build().ok()
}

/// The runtime `b` builds with one CPU core and one GPU, if this machine has a GPU.
fn with_one_gpu(b: hexec::RuntimeBuilder) -> Option<Runtime> {
    b.cpus(1)
        .software_gpus(true)
        .gpus(GpuRequest::Count(1))
        .build()
        .ok()
        .filter(|rt| !rt.gpus().is_empty())
}

/// The index of `rt`'s first GPU worker (in its machine's workers and a report's).
fn first_gpu_worker(rt: &Runtime) -> usize {
    rt.machine()
        .workers
        .iter()
        .position(|w| w.kind == DeviceKind::Gpu)
        .expect("a GPU worker")
}

/// A CPU kernel that loses `rt`'s first GPU (as a driver reset would) when it runs.
fn destroy_gpu0(rt: &Arc<Runtime>) -> Arc<Kernel> {
    let weak = Arc::downgrade(rt);
    Arc::new(Kernel::cpu("destroy_gpu0", Signature::any(0, 0), move |_| {
        if let Some(rt) = weak.upgrade() {
            rt.gpus()[0].destroy();
        }
        Ok(())
    }))
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| (builtin::mix64(seed ^ i.wrapping_mul(0x9E37)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

fn close(gpu: &[f32], cpu: &[f32], tol: f32, what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            (g - c).abs() <= tol * (1.0 + c.abs()),
            "{what}: element {i}: gpu {g} vs cpu {c}"
        );
    }
}

/// Runs the same one-task graph on the GPU and on the CPU and returns both outputs.
fn both(
    rt: &Runtime,
    kernel: &Arc<Kernel>,
    inputs: &[Vec<f32>],
    modes: &[Access],
    params: &[f64],
    out: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut results = Vec::new();
    for device in [DeviceKind::Gpu, DeviceKind::Cpu] {
        let handles: Vec<Data<f32>> = inputs.iter().map(|v| rt.data(v.clone())).collect();
        let mut g = rt.graph();
        let mut b = g.task(kernel).on(device).params(params);
        for (h, &m) in handles.iter().zip(modes) {
            b = b.access(*h, m);
        }
        b.add();
        let report = rt
            .run_with(&g, RunOptions::traced())
            .unwrap_or_else(|e| panic!("{}: {e}", kernel.name()));
        let ran_on = report
            .trace
            .as_ref()
            .unwrap()
            .per_worker
            .iter()
            .position(|e| !e.is_empty())
            .unwrap();
        assert_eq!(
            rt.machine().workers[ran_on].kind,
            device,
            "{} ran on the wrong device",
            kernel.name()
        );
        results.push(rt.read(handles[out]).unwrap());
    }
    let cpu = results.pop().unwrap();
    (results.pop().unwrap(), cpu)
}

#[test]
fn gpu_kernels_match_cpu_kernels_at_odd_sizes() {
    let Some(rt) = gpu_runtime(1) else { return };
    use Access::*;
    for n in [1usize, 3, 255, 257, 1000, 70_001] {
        let (x, y) = (values(n, 1), values(n, 2));
        let (g, c) = both(
            &rt,
            &builtin::axpy(),
            &[x.clone(), y.clone()],
            &[Read, ReadWrite],
            &[1.5],
            1,
        );
        close(&g, &c, 1e-6, &format!("axpy n={n}"));
        let (g, c) = both(
            &rt,
            &builtin::scale(),
            std::slice::from_ref(&x),
            &[ReadWrite],
            &[-0.25],
            0,
        );
        close(&g, &c, 0.0, &format!("scale n={n}"));
        let (g, c) = both(&rt, &builtin::fill(), std::slice::from_ref(&x), &[Write], &[7.5], 0);
        close(&g, &c, 0.0, &format!("fill n={n}"));
        let zero = vec![0.0; n];
        let (g, c) = both(
            &rt,
            &builtin::add(),
            &[x.clone(), y.clone(), zero.clone()],
            &[Read, Read, Write],
            &[],
            2,
        );
        close(&g, &c, 0.0, &format!("add n={n}"));
        let (g, c) = both(
            &rt,
            &builtin::multiply(),
            &[x.clone(), y.clone(), zero],
            &[Read, Read, Write],
            &[],
            2,
        );
        close(&g, &c, 0.0, &format!("multiply n={n}"));
        for k in [builtin::sum(), builtin::min(), builtin::max()] {
            let (g, c) = both(&rt, &k, &[x.clone(), vec![0.0; 1]], &[Read, Write], &[], 1);
            // Summation order differs (f64 on the CPU, a tree in f32 on the GPU).
            close(&g, &c, 1e-5 * (n as f32).sqrt(), &format!("{} n={n}", k.name()));
        }
    }
    for (m, n, k) in [
        (1usize, 1usize, 1usize),
        (17, 33, 65),
        (70, 3, 129),
        (64, 64, 64),
        (100, 90, 7),
    ] {
        let (a, b, c0) = (values(m * k, 3), values(k * n, 4), values(m * n, 5));
        let params = [m as f64, n as f64, k as f64, 1.25, -0.5];
        let (g, c) = both(&rt, &builtin::gemm(), &[a, b, c0], &[Read, Read, ReadWrite], &params, 2);
        close(&g, &c, 1e-5 * (k as f32).sqrt(), &format!("gemm {m}x{n}x{k}"));
    }
    let gpu = &rt.gpus()[0];
    assert!(gpu.cached_pipelines() >= 9, "pipelines are cached across runs");
    assert!(
        gpu.pooled_buffers() > 0,
        "uniform and staging buffers return to the pool"
    );
}

#[test]
fn data_moves_between_two_gpus_and_the_host_coherently() {
    let Some(rt) = gpu_runtime(2) else { return };
    assert_eq!(rt.gpus().len(), 2);
    let x = rt.data(vec![1.0f32; 1000]);
    let y = rt.data(vec![0.0f32; 1000]);
    let mut g = rt.graph();
    g.task(&builtin::fill()).on_worker("gpu0").write(x).param(3.0).add(); // x = 3 on gpu0 only
    g.task(&builtin::scale())
        .on_worker("gpu1")
        .read_write(x)
        .param(2.0)
        .add(); // gpu0 → host → gpu1: x = 6
    g.task(&builtin::axpy())
        .on_worker("cpu0")
        .read(x)
        .read_write(y)
        .param(1.0)
        .add(); // gpu1 → host: y = 6
    g.task(&builtin::scale())
        .on_worker("gpu0")
        .read_write(y)
        .param(0.5)
        .add(); // host → gpu0: y = 3
    let report = rt.run(&g).unwrap();
    assert_eq!(report.completed, 4);
    // x: gpu0→host and host→gpu1 (4000 bytes each), gpu1→host; y: host→gpu0.
    assert!(report.bytes_transferred >= 4 * 4000, "{:?}", report.transfers);
    assert!(report.transfers.iter().any(|l| l.from == "gpu0" && l.to == "host"));
    assert!(report.transfers.iter().any(|l| l.from == "host" && l.to == "gpu1"));
    // At the end x is valid on gpu1 and the host (shared), y only on gpu0.
    let at = |node: &str| report.residency.iter().find(|r| r.node == node).unwrap().data;
    assert_eq!(
        (at("host"), at("gpu0"), at("gpu1")),
        (1, 1, 1),
        "{:?}",
        report.residency
    );
    assert_eq!(rt.read(x).unwrap(), vec![6.0; 1000]);
    assert_eq!(
        rt.read(y).unwrap(),
        vec![3.0; 1000],
        "reading brings the GPU's copy home"
    );
    // A user write makes the GPU copies stale: the next GPU read uploads the new values.
    rt.write(y, &vec![10.0; 1000]).unwrap();
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .on_worker("gpu0")
        .read_write(y)
        .param(0.1)
        .add();
    rt.run(&g).unwrap();
    assert_eq!(rt.read(y).unwrap(), vec![1.0; 1000]);
}

#[test]
fn mixed_graphs_place_each_task_where_it_may_run() {
    let Some(rt) = gpu_runtime(1) else { return };
    let gpu_only = double_gpu();
    let cpu_only = Arc::new(Kernel::cpu(
        "inc_cpu",
        Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0),
        |ctx| {
            ctx.write::<f32>(0)?.iter_mut().for_each(|v| *v += 1.0);
            Ok(())
        },
    ));
    let mut g = rt.graph();
    let mut kinds = Vec::new();
    let tiles: Vec<Data<f32>> = (0..12).map(|i| rt.data(vec![i as f32; 333])).collect();
    for t in &tiles {
        g.task(&gpu_only).read_write(*t).add();
        kinds.push(Some(DeviceKind::Gpu));
        g.task(&cpu_only).read_write(*t).add();
        kinds.push(Some(DeviceKind::Cpu));
        g.task(&builtin::scale()).read_write(*t).param(3.0).add(); // either side
        kinds.push(None);
    }
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    for (w, events) in report.trace.as_ref().unwrap().per_worker.iter().enumerate() {
        let kind = rt.machine().workers[w].kind;
        for e in events {
            if let Some(k) = kinds[e.task as usize] {
                assert_eq!(
                    k,
                    kind,
                    "task {} ({}) ran on {}",
                    e.task,
                    g.task_kernel(e.task as usize),
                    report.workers[w].name
                );
            }
        }
    }
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(rt.read(*t).unwrap(), vec![(2.0 * i as f32 + 1.0) * 3.0; 333]);
    }
}

#[test]
fn a_broken_shader_is_refused_at_submit_with_the_compilers_message() {
    let Some(rt) = gpu_runtime(1) else { return };
    let broken_gpu = || GpuImpl::single("fn main( { this is not WGSL", 1, Arc::new(|_| [1, 1, 1]));
    let gpu_only = Arc::new(
        Kernel::declare("broken", Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0)).with_gpu(broken_gpu()),
    );
    // With a CPU implementation too: it used to fail on the GPU and quietly run on the CPU.
    let both = Arc::new(
        Kernel::cpu(
            "broken_both",
            Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0),
            |_| Ok(()),
        )
        .with_gpu(broken_gpu()),
    );
    let wrong_entry = Arc::new(
        Kernel::declare("no_entry", Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0)).with_gpu(
            GpuImpl::single("@compute @workgroup_size(1) fn other() {}", 1, Arc::new(|_| [1, 1, 1])),
        ),
    );
    let x = rt.data(vec![1.0f32; 4]);
    for (kernel, expect) in [
        (&gpu_only, "expected"),
        (&both, "expected"),
        (&wrong_entry, "no entry point"),
    ] {
        let mut g = rt.graph();
        g.task(&builtin::scale()).name("fine").read_write(x).param(2.0).add();
        g.task(kernel).name("uses-broken").read_write(x).add();
        let t = Instant::now();
        let err = rt.run(&g).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(60));
        assert!(
            matches!(err, RunError::Submit(_)),
            "refused before anything runs: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("'uses-broken'") && msg.contains(kernel.name()) && msg.contains("gpu0"),
            "{msg}"
        );
        assert!(msg.contains(expect), "the compiler's message: {msg}");
        assert_eq!(rt.read(x).unwrap(), vec![1.0; 4], "nothing ran");
    }
    // The device still works for good kernels.
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .on(DeviceKind::Gpu)
        .read_write(x)
        .param(2.0)
        .add();
    rt.run(&g).unwrap();
    assert_eq!(rt.read(x).unwrap(), vec![2.0; 4]);
}

#[test]
fn a_lost_device_ends_the_run_with_a_clear_error() {
    let Some(rt) = gpu_runtime(1) else { return };
    let rt = Arc::new(rt);
    let destroy = destroy_gpu0(&rt);
    let x = rt.data(vec![1.0f32; 1024]);
    let mut g = rt.graph();
    let first = g
        .task(&builtin::scale())
        .on(DeviceKind::Gpu)
        .read_write(x)
        .param(2.0)
        .add();
    let boom = g.task(&destroy).on(DeviceKind::Cpu).after(first).add();
    for _ in 0..5 {
        g.task(&builtin::scale())
            .on(DeviceKind::Gpu)
            .read_write(x)
            .param(2.0)
            .after(boom)
            .add();
    }
    let t = Instant::now();
    let keep_going = RunOptions::keep_going();
    let err = rt.run_with(&g, keep_going).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(60), "no hang");
    match &err {
        RunError::TaskFailed { report } => {
            assert_eq!(report.completed, 2);
            assert_eq!(report.failed, 1);
            assert_eq!(report.skipped, 4);
            let m = &report.failures[0].message;
            assert!(
                m.contains("lost") || m.contains("Lost") || m.contains("destroyed"),
                "{m}"
            );
            assert_eq!(report.failures[0].worker, "gpu0");
        }
        other => panic!("expected a task failure, got {other}"),
    }
    assert!(rt.gpus()[0].lost().is_some());
}

#[test]
fn gpu_tasks_are_batched_timed_and_traced() {
    let Some(rt) = gpu_runtime(1) else { return };
    let tiles: Vec<Data<f32>> = (0..32).map(|i| rt.data(vec![i as f32; 4096])).collect();
    let before = rt.gpus()[0].kernel_submits();
    let mut g = rt.graph();
    for t in &tiles {
        g.task(&builtin::scale())
            .on(DeviceKind::Gpu)
            .read_write(*t)
            .param(2.0)
            .add();
    }
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    let submits = rt.gpus()[0].kernel_submits() - before;
    assert!(submits < 32, "32 independent GPU tasks took {submits} submissions");
    assert_eq!(report.bytes_transferred, 32 * 4096 * 4, "each tile goes up once");
    // Tasks restricted to the one GPU land in its mailbox; their inputs move at placement.
    assert_eq!(report.prefetched_tasks, 32);
    let log = report.trace.as_ref().unwrap();
    assert_eq!(log.transfers.len(), 32);
    let gpu_worker = first_gpu_worker(&rt);
    if rt.gpus()[0].desc.features.iter().any(|f| f == "timestamp") {
        assert!(report.workers[gpu_worker].kernel_s.is_some_and(|s| s > 0.0));
        assert!(log.per_worker[gpu_worker].iter().all(|e| e.gpu_ns.is_some()));
    }
    let mut buf = Vec::new();
    hexec::trace::write_chrome_trace(&mut buf, &g, &report).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    assert_eq!(events.iter().filter(|e| e["cat"] == "transfer").count(), 32);
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(rt.read(*t).unwrap()[4095], 2.0 * i as f32);
    }
}

/// Under a planning policy, until a task of a kernel has been timed on the GPU, the GPU takes
/// tasks of that kernel a CPU may also run one batch at a time (a GPU slower than the cores
/// must not take sixteen at once): on a fresh runtime, the GPU's first batch of them holds
/// one task. Tasks only a GPU may run are batched from the start.
#[test]
fn a_gpu_of_unknown_speed_takes_tasks_a_cpu_could_run_one_at_a_time() {
    let Some(rt) = with_one_gpu(Runtime::builder().policy(PolicyKind::Locality)) else {
        return;
    };
    let gpu_worker = first_gpu_worker(&rt);
    let tiles: Vec<Data<f32>> = (0..48).map(|i| rt.data(vec![i as f32; 1 << 18])).collect();
    let mut g = rt.graph();
    for t in &tiles {
        g.task(&builtin::scale()).read_write(*t).param(2.0).add();
    }
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    let log = report.trace.as_ref().unwrap();
    let mut batches: Vec<u32> = log.per_worker[gpu_worker]
        .iter()
        .filter_map(|e| e.batch.as_ref().map(|b| b.seq))
        .collect();
    batches.sort_unstable();
    if let Some(&first) = batches.first() {
        let size = batches.iter().filter(|&&s| s == first).count();
        assert_eq!(
            size, 1,
            "the GPU's first batch of a kernel it was never timed on: {batches:?}"
        );
    }
    for (i, t) in tiles.iter().enumerate() {
        assert_eq!(rt.read(*t).unwrap()[0], 2.0 * i as f32);
    }
    // On the GPU only (a kernel the model has not seen on it yet): batched.
    let mut g = rt.graph();
    for t in &tiles[..32] {
        g.task(&builtin::fill()).on(DeviceKind::Gpu).write(*t).param(7.5).add();
    }
    let before = rt.gpus()[0].kernel_submits();
    rt.run(&g).unwrap();
    let submits = rt.gpus()[0].kernel_submits() - before;
    assert!(submits < 32, "32 GPU-only tasks took {submits} submissions");
}

/// A traced batch of GPU tasks of different sizes: each task's slice is its own kernel's span
/// (from timestamp queries) dated on the run's clock, inside its batch, not overlapping the
/// others; without timestamp queries, even shares of the batch marked estimated. Each copy
/// to the GPU names its datum.
#[test]
fn traced_gpu_tasks_get_their_own_slices() {
    let Some(rt) = gpu_runtime(1) else { return };
    let sizes = [1usize << 10, 1 << 14, 1 << 18, 1 << 21];
    let tiles: Vec<Data<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| rt.data_named(format!("tile_{i}"), vec![1.0f32; n]))
        .collect();
    let mut g = rt.graph();
    for (i, t) in tiles.iter().enumerate() {
        g.task(&builtin::scale())
            .name(format!("scale_{i}"))
            .on(DeviceKind::Gpu)
            .read_write(*t)
            .param(2.0)
            .add();
    }
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    let mut buf = Vec::new();
    hexec::trace::write_chrome_trace(&mut buf, &g, &report).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let num = |e: &serde_json::Value, k: &str| {
        e[k].as_f64()
            .or_else(|| e["args"][k].as_f64())
            .unwrap_or_else(|| panic!("no {k} in {e}"))
    };
    let tasks: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "scale")
        .collect();
    assert_eq!(tasks.len(), sizes.len(), "{v}");
    // (size index, start, end), in µs, by start.
    let mut slices: Vec<(usize, f64, f64)> = tasks
        .iter()
        .map(|e| {
            let i: usize = e["name"].as_str().unwrap()["scale_".len()..].parse().unwrap();
            let (ts, dur) = (num(e, "ts"), num(e, "dur"));
            (i, ts, ts + dur)
        })
        .collect();
    slices.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Timestamps are printed to the nanosecond.
    let eps = 1e-3;
    for w in slices.windows(2) {
        assert!(w[0].1 < w[1].1, "two GPU tasks start together: {slices:?}");
        assert!(w[0].2 <= w[1].1 + eps, "GPU tasks overlap: {slices:?}");
    }
    let batches: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["cat"] == "scale")
        .map(|e| &e["args"]["batch"])
        .collect();
    assert!(
        batches.iter().all(|b| *b == batches[0]),
        "roots placed together run as one batch: {batches:?}"
    );
    let (b0, b1) = (num(tasks[0], "batch_start_us"), num(tasks[0], "batch_end_us"));
    for &(i, start, end) in &slices {
        assert!(
            b0 - eps <= start && start <= end && end <= b1 + eps,
            "scale_{i}: [{start}, {end}] outside its batch [{b0}, {b1}]"
        );
    }
    let timed = rt.gpus()[0].desc.features.iter().any(|f| f == "timestamp");
    let estimated = events
        .iter()
        .filter(|e| e["cat"] == "scale")
        .all(|e| e["args"]["estimated"] == true);
    assert_eq!(
        estimated, !timed,
        "slices are estimated exactly when the device has no timestamps"
    );
    if timed {
        let dur = |i: usize| slices.iter().find(|s| s.0 == i).map(|s| s.2 - s.1).unwrap();
        let batch = b1 - b0;
        assert!(
            dur(sizes.len() - 1) > dur(0),
            "a kernel over 2048x the elements took no longer: {slices:?}"
        );
        assert!(
            (0..sizes.len()).all(|i| dur(i) < batch),
            "a task took its whole batch: {slices:?}"
        );
    } else {
        eprintln!("no timestamp queries on this adapter: checked the estimated slices only");
    }
    for i in 0..sizes.len() {
        let name = format!("host -> gpu0: tile_{i}");
        assert!(
            events.iter().any(|e| e["cat"] == "transfer"
                && e["name"] == name.as_str()
                && e["args"]["datum"] == format!("tile_{i}").as_str()),
            "no transfer event named '{name}'"
        );
    }
}

#[test]
fn gpu_restrictions_mean_something() {
    let Some(rt) = gpu_runtime(1) else { return };
    let x = rt.data(vec![1.0f32; 16]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .name("huge")
        .read_write(x)
        .param(2.0)
        .gpu_memory(u64::MAX)
        .add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(e.contains("'huge'") && e.contains("memory"), "{e}");
    let has_f16 = rt.gpus()[0].desc.features.iter().any(|f| f == "f16");
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .name("half")
        .read_write(x)
        .param(2.0)
        .require_feature("f16")
        .add();
    match rt.run_with(&g, RunOptions::traced()) {
        Ok(report) => {
            assert!(has_f16);
            let ran = report
                .trace
                .unwrap()
                .per_worker
                .iter()
                .position(|e| !e.is_empty())
                .unwrap();
            assert_eq!(rt.machine().workers[ran].kind, DeviceKind::Gpu, "only the GPU has f16");
        }
        Err(e) => assert!(!has_f16 && e.to_string().contains("f16"), "{e}"),
    }
    // A GPU-only kernel cannot take a size-only datum.
    let gpu_only =
        Arc::new(Kernel::declare("g", Signature::any(0, 0)).with_gpu(GpuImpl::single("", 0, Arc::new(|_| [1, 1, 1]))));
    let mut g = rt.graph();
    let v = g.virtual_data("file", 100);
    g.task(&gpu_only).name("virt").read(v).add();
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(e.contains("'virt'") && e.contains("runs only on GPUs"), "{e}");
}

/// The portable reductions (no subgroups) stay correct on devices that have subgroups too.
#[test]
fn portable_reductions_match() {
    let Some(rt) = gpu_runtime(1) else { return };
    for op in ["sum", "min", "max"] {
        let mut portable = hexec::kernels::gpu::reduction(op);
        portable.with_subgroups = None;
        let k =
            Arc::new(Kernel::declare(format!("{op}_portable"), builtin::sum().signature().clone()).with_gpu(portable));
        for n in [1usize, 257, 70_001] {
            let x = values(n, 9);
            let expected = match op {
                "sum" => x.iter().map(|&v| f64::from(v)).sum::<f64>() as f32,
                "min" => x.iter().copied().fold(f32::MAX, f32::min),
                _ => x.iter().copied().fold(f32::MIN, f32::max),
            };
            let (xh, out) = (rt.data(x), rt.data(vec![0.0f32; 1]));
            let mut g = rt.graph();
            g.task(&k).read(xh).write(out).add();
            rt.run(&g).unwrap();
            close(
                &rt.read(out).unwrap(),
                &[expected],
                1e-5 * (n as f32).sqrt(),
                &format!("portable {op} n={n}"),
            );
        }
    }
}

/// A working set four times the GPU's memory limit completes, never exceeds the limit in the
/// accounting, evicts (writing back what only the GPU held), and gives the same results as
/// without a limit.
#[test]
fn gpu_memory_limits_evict_and_keep_results() {
    let build = |limit: Option<u64>| gpu_rt_limited(limit, PolicyKind::Eager);
    let run = |rt: &Runtime| {
        let tiles: Vec<Data<f32>> = (0..16).map(|i| rt.data(values(4096, i))).collect();
        let mut g = rt.graph();
        for round in 0..3 {
            for t in &tiles {
                g.task(&builtin::scale())
                    .on(DeviceKind::Gpu)
                    .read_write(*t)
                    .param(1.0 + round as f64)
                    .add();
            }
        }
        let report = rt.run(&g).unwrap();
        let out: Vec<Vec<f32>> = tiles.iter().map(|t| rt.read(*t).unwrap()).collect();
        (report, out)
    };
    let Some(free) = build(None) else { return };
    let (_, expected) = run(&free);
    let limit = 4 * 4096 * 4; // four tiles of the sixteen
    let limited = build(Some(limit)).unwrap();
    let (report, got) = run(&limited);
    assert_eq!(got, expected, "results differ under a memory limit");
    let gpu = report.memory.iter().find(|m| m.node == "gpu0").unwrap();
    assert_eq!(gpu.capacity_bytes, Some(limit));
    assert!(
        gpu.peak_bytes <= limit,
        "peak {} over the limit {limit}",
        gpu.peak_bytes
    );
    assert!(gpu.evictions >= 12, "{gpu:?}");
    assert!(
        gpu.written_back_bytes > 0,
        "dirty copies are written back before eviction: {gpu:?}"
    );

    // A GPU-only task whose operands cannot fit is refused at submit, naming it.
    let big = limited.data(vec![0.0f32; 3 * 4096]);
    let big2 = limited.data(vec![0.0f32; 3 * 4096]);
    let gpu_only = Arc::new(
        Kernel::declare("gpu_axpy", builtin::axpy().signature().clone())
            .with_gpu((**builtin::axpy().gpu_impl().unwrap()).clone()),
    );
    let mut g = limited.graph();
    g.task(&gpu_only)
        .name("too-big")
        .read(big)
        .read_write(big2)
        .param(1.0)
        .add();
    let e = limited.run(&g).unwrap_err().to_string();
    assert!(e.contains("'too-big'") && e.contains(&limit.to_string()), "{e}");
}

/// Two large inputs that cannot fit together with others on a small GPU: every task reads two
/// tiles and updates one of them, cycling over more tiles than fit. It completes (no
/// eviction ping-pong livelock) with the same results as without a limit.
#[test]
fn tasks_cycling_over_more_data_than_fits_complete() {
    let make = |limit: Option<u64>| gpu_rt_limited(limit, PolicyKind::Locality);
    let run = |rt: &Runtime| {
        let tiles: Vec<Data<f32>> = (0..5).map(|i| rt.data(values(8192, 40 + i))).collect();
        let mut g = rt.graph();
        for step in 0..20usize {
            let (a, b) = (tiles[step % 5], tiles[(step + 2) % 5]);
            g.task(&builtin::axpy())
                .on(DeviceKind::Gpu)
                .read(a)
                .read_write(b)
                .param(0.5)
                .add();
        }
        let report = rt.run(&g).unwrap();
        (report, tiles.iter().map(|t| rt.read(*t).unwrap()).collect::<Vec<_>>())
    };
    let Some(free) = make(None) else { return };
    let (_, expected) = run(&free);
    let tile = 8192 * 4;
    let limited = make(Some(tile * 5 / 2)).unwrap();
    let t = std::time::Instant::now();
    let (report, got) = run(&limited);
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_eq!(got, expected);
    assert!(report.evictions > 0);
    let gpu = report.memory.iter().find(|m| m.node == "gpu0").unwrap();
    assert!(gpu.peak_bytes <= tile * 5 / 2);
}

/// Random updates of tiles for the property tests: in place (`Scale`, `Axpy`) or whole (`Add`).
mod random_ops {
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    pub enum Op {
        Scale(usize),
        Axpy(usize, usize),
        Add(usize, usize, usize),
    }

    pub fn op(tiles: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..tiles).prop_map(Op::Scale),
            (0..tiles, 0..tiles)
                .prop_filter("distinct", |(a, b)| a != b)
                .prop_map(|(a, b)| Op::Axpy(a, b)),
            (0..tiles, 0..tiles, 0..tiles)
                .prop_filter("distinct", |(a, b, c)| a != b && b != c && a != c)
                .prop_map(|(a, b, c)| Op::Add(a, b, c)),
        ]
    }
}

mod memory_properties {
    use super::random_ops::{op, Op};
    use super::*;
    use proptest::prelude::*;

    fn run(limit: Option<u64>, tiles: usize, ops: &[Op]) -> Option<Vec<Vec<f32>>> {
        let rt = gpu_rt_limited(limit, PolicyKind::Ws)?;
        let data: Vec<Data<f32>> = (0..tiles).map(|i| rt.data(values(1024, 7 + i as u64))).collect();
        let mut g = rt.graph();
        for o in ops {
            let t = match *o {
                Op::Scale(a) => g.task(&builtin::scale()).read_write(data[a]).param(1.5),
                Op::Axpy(a, b) => g.task(&builtin::axpy()).read(data[a]).read_write(data[b]).param(0.25),
                Op::Add(a, b, c) => g.task(&builtin::add()).read(data[a]).read(data[b]).write(data[c]),
            };
            t.on(DeviceKind::Gpu).add();
        }
        let report = rt.run(&g).unwrap();
        if let Some(l) = limit {
            let gpu = report.memory.iter().find(|m| m.node == "gpu0").unwrap();
            assert!(gpu.peak_bytes <= l, "peak {} over {l}", gpu.peak_bytes);
        }
        Some(data.iter().map(|d| rt.read(*d).unwrap()).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Under any GPU limit that fits one task's operands, results equal the unlimited run.
        #[test]
        fn results_do_not_depend_on_the_gpu_memory_limit(
            (tiles, ops) in (3usize..7).prop_flat_map(|t| (Just(t), prop::collection::vec(op(t), 1..30))),
            room in 3u64..6,
        ) {
            let Some(free) = run(None, tiles, &ops) else { return Ok(()) };
            let limited = run(Some(room * 1024 * 4), tiles, &ops).unwrap();
            prop_assert_eq!(limited, free);
        }
    }
}

/// Host and GPU both limited to a quarter of the data: tiles move GPU → host → spill file and
/// back, and the results equal an unlimited run's.
#[test]
fn host_and_gpu_limits_together_spill_and_keep_results() {
    let build = |limits: Option<(u64, u64)>| {
        let mut b = Runtime::builder()
            .cpus(1)
            .software_gpus(true)
            .gpus(GpuRequest::Count(1))
            .policy(PolicyKind::Locality);
        if let Some((host, gpu)) = limits {
            b = b.memory_limits(hexec::MemoryLimits {
                host: Some(host),
                gpu: Some(gpu),
                ..hexec::MemoryLimits::default()
            });
        }
        b.build().ok()
    };
    let run = |rt: &Runtime| {
        let tiles: Vec<Data<f32>> = (0..16).map(|i| rt.data(values(4096, 70 + i))).collect();
        let mut g = rt.graph();
        for t in &tiles {
            g.task(&builtin::scale())
                .on(DeviceKind::Gpu)
                .read_write(*t)
                .param(2.0)
                .add();
        }
        for pair in tiles.chunks(2) {
            g.task(&builtin::axpy())
                .on(DeviceKind::Cpu)
                .read(pair[1])
                .read_write(pair[0])
                .param(0.5)
                .add();
        }
        for t in tiles.iter().step_by(2) {
            g.task(&builtin::scale())
                .on(DeviceKind::Gpu)
                .read_write(*t)
                .param(-1.0)
                .add();
        }
        let report = rt.run(&g).unwrap();
        (report, tiles.iter().map(|t| rt.read(*t).unwrap()).collect::<Vec<_>>())
    };
    let Some(free) = build(None) else { return };
    let (_, expected) = run(&free);
    let quarter = 4 * 4096 * 4;
    let limited = build(Some((quarter, quarter))).unwrap();
    let (report, got) = run(&limited);
    assert_eq!(got, expected, "results differ under host and GPU limits");
    for m in report.memory.iter().filter(|m| m.node != "disk") {
        assert!(m.peak_bytes <= quarter, "{m:?} over the limit {quarter}");
    }
    assert!(report.spilled_bytes > 0, "{:?}", report.memory);
}

/// No ping-pong: with room for 4 of 32 tiles, each tile updated twice on the GPU, no copy is
/// moved to the GPU and evicted before a task used it (prefetches take free room only), so
/// each task uploads at most its one tile and evictions stay at most one per upload.
#[test]
fn no_copy_is_evicted_before_it_is_used() {
    let tile = 4096 * 4;
    for policy in PolicyKind::ALL {
        let Some(rt) = gpu_rt_limited(Some(4 * tile), policy) else {
            return;
        };
        let tiles: Vec<Data<f32>> = (0..32).map(|i| rt.data(values(4096, 90 + i))).collect();
        let mut g = rt.graph();
        for _round in 0..2 {
            for t in &tiles {
                g.task(&builtin::scale())
                    .on(DeviceKind::Gpu)
                    .read_write(*t)
                    .param(2.0)
                    .add();
            }
        }
        let r = rt.run(&g).unwrap();
        let uploaded: u64 = r
            .transfers
            .iter()
            .filter(|l| l.from == "host" && l.to == "gpu0")
            .map(|l| l.transfers)
            .sum();
        assert!(uploaded <= 64, "{policy}: {uploaded} uploads for 64 tasks");
        assert!(
            r.evictions <= uploaded,
            "{policy}: {} evictions for {uploaded} uploads",
            r.evictions
        );
        for (i, t) in tiles.iter().enumerate() {
            let expected: Vec<f32> = values(4096, 90 + i as u64).iter().map(|v| v * 4.0).collect();
            assert_eq!(rt.read(*t).unwrap(), expected, "{policy}: tile {i}");
        }
    }
}

/// Eviction ping-pong is detected: a batch of three tasks reading three tiles on a GPU with
/// room for two. Staging the first evicts a tile the second reads, which comes straight back
/// before any task completed; hexec counts it and runs that GPU one task at a time until one
/// completes. The run finishes with the right sums.
#[test]
fn eviction_ping_pong_is_detected_and_the_run_completes() {
    let len = 4096;
    let tile = (len * 4) as u64;
    let Some(rt) = gpu_rt_limited(Some(2 * tile + 16), PolicyKind::Eager) else {
        return;
    };
    let (a, x, w) = (
        rt.data(vec![1.0f32; len]),
        rt.data(vec![2.0f32; len]),
        rt.data(vec![3.0f32; len]),
    );
    // First run: x and w stay on the GPU.
    let mut warm = rt.graph();
    for d in [x, w] {
        let out = rt.data(vec![0.0f32; 1]);
        warm.task(&builtin::sum()).on(DeviceKind::Gpu).read(d).write(out).add();
    }
    let first = rt.run(&warm).unwrap();
    assert_eq!(first.memory[1].ping_pongs, 0, "{:?}", first.memory);
    let outs: Vec<Data<f32>> = (0..3).map(|_| rt.data(vec![0.0f32; 1])).collect();
    let mut g = rt.graph();
    for (d, out) in [a, x, w].into_iter().zip(&outs) {
        g.task(&builtin::sum()).on(DeviceKind::Gpu).read(d).write(*out).add();
    }
    let r = rt.run(&g).unwrap();
    assert!(r.memory[1].ping_pongs >= 1, "{:?}", r.memory);
    assert!(r.memory[1].peak_bytes <= 2 * tile + 16);
    let sums: Vec<f32> = outs.iter().map(|o| rt.read(*o).unwrap()[0]).collect();
    assert_eq!(sums, vec![len as f32, 2.0 * len as f32, 3.0 * len as f32]);
}

/// The Cholesky tile kernels on the GPU match their CPU versions at odd tile sides, and
/// `trsm` at a side past lavapipe's loop limit (65,535 iterations per invocation), which a
/// row per invocation exceeded from b = 362: the factor came out wrong.
#[test]
fn cholesky_tile_kernels_match_on_gpu_and_cpu() {
    use hexec::kernels::linalg;
    let Some(rt) = gpu_runtime(1) else { return };
    use Access::*;
    for b in [1usize, 5, 16, 33, 70, 130, 400] {
        // A well-conditioned lower-triangular L for trsm: a diagonal that outweighs a row's
        // random off-diagonal sum (about √b in size), so that errors do not grow along the
        // substitution and the two summation orders agree.
        let mut l = values(b * b, 3);
        for i in 0..b {
            for j in 0..b {
                if j > i {
                    l[i * b + j] = 0.0;
                }
            }
            l[i * b + i] = 2.0 + l[i * b + i].abs() + (b as f32).sqrt();
        }
        let (x, c) = (values(b * b, 4), values(b * b, 5));
        let tol = 1e-5 * (b as f32).sqrt().max(1.0);
        let cases = [
            (linalg::trsm(), vec![l.clone(), x.clone()], vec![Read, ReadWrite], 1),
            (linalg::syrk(), vec![x.clone(), c.clone()], vec![Read, ReadWrite], 1),
            (
                linalg::gemm_nt(),
                vec![x.clone(), l.clone(), c.clone()],
                vec![Read, Read, ReadWrite],
                2,
            ),
        ];
        for (kernel, inputs, access, out) in cases {
            // 130: a whole 64 x 64 block of the update inside its edges.
            if b > 200 && kernel.name() != "trsm" {
                continue;
            }
            let (g, cpu) = both(&rt, &kernel, &inputs, &access, &[], out);
            close(&g, &cpu, tol, &format!("{} b={b}", kernel.name()));
        }
    }
}

/// A tiled Cholesky on CPU and GPU workers (potrf on CPUs, the rest wherever the policy puts
/// it) factorises correctly, also with the GPU limited to a quarter of the tiles.
#[test]
fn tiled_cholesky_on_cpu_and_gpu_under_a_gpu_limit() {
    use hexec::linalg::TiledCholesky;
    let (n, b) = (6, 32);
    let tile = (b * b * 4) as u64;
    let tiles = (n * (n + 1) / 2) as u64;
    for limit in [None, Some(tiles * tile / 4)] {
        let Some(rt) = gpu_rt_limited(limit, PolicyKind::Locality) else {
            return;
        };
        let chol = TiledCholesky::new(&rt, n, b);
        let r = rt.run(&chol.graph).unwrap();
        let residual = chol.residual(&rt).unwrap();
        assert!(residual < 1e-5, "limit {limit:?}: residual {residual}");
        let gpu = r.memory.iter().find(|m| m.node == "gpu0").unwrap();
        if let Some(l) = limit {
            assert!(gpu.peak_bytes <= l, "{gpu:?}");
        }
        let on_gpu = r
            .workers
            .iter()
            .find(|w| w.class != r.workers[0].class)
            .map_or(0, |w| w.tasks);
        eprintln!(
            "limit {limit:?}: {on_gpu} of {} tasks on the GPU, residual {residual:e}",
            r.tasks
        );
    }
}

/// Every Cholesky update on a GPU with room for a sixteenth of the tiles (under five; a gemm
/// needs three), three runs in a row. This used to livelock on the second run: a task deferred
/// for want of room kept the pins it had taken, so the next staging found the same tiles
/// pinned, deferred again, and so on for ever.
#[test]
fn cholesky_updates_on_a_gpu_with_room_for_a_sixteenth_complete_run_after_run() {
    use hexec::linalg::TiledCholesky;
    let (n, b) = (12, 64);
    let tiles = (n * (n + 1) / 2) as u64;
    let limit = tiles * (b * b * 4) as u64 / 16;
    let Some(rt) = gpu_rt_limited(Some(limit), PolicyKind::Locality) else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // On its own thread, so that a livelocked run fails the test instead of hanging it.
    let runs = std::thread::spawn(move || {
        let chol = TiledCholesky::with_updates_on(&rt, n, b, DeviceKind::Gpu);
        for run in 0..3 {
            chol.reset(&rt).unwrap();
            let r = rt.run(&chol.graph).unwrap();
            let gpu = r.memory.iter().find(|m| m.node == "gpu0").unwrap().clone();
            let residual = chol.residual(&rt).unwrap();
            tx.send((run, gpu, residual)).unwrap();
        }
    });
    for _ in 0..3 {
        let (run, gpu, residual) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("a run did not finish in 120 s: livelock");
        assert!(residual < 1e-5, "run {run}: residual {residual}");
        assert!(gpu.peak_bytes <= limit, "run {run}: {gpu:?}");
        assert!(gpu.evictions > 0, "run {run}: {gpu:?}");
    }
    // The thread drops the runtime (its GPU device, Mesa's threads) after its last send: the
    // test must wait for that, or the process may exit while the device is being torn down
    // (a SIGSEGV in Mesa after the test had passed, about one run in 27 under load).
    let t = std::time::Instant::now();
    while !runs.is_finished() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(runs.is_finished(), "dropping the runtime took over 60 s");
    runs.join().unwrap();
}

/// Injected GPU errors on GPU-only tasks are retried on the GPU until they pass, and the
/// result is the clean one; a GPU lost before the run sends its tasks to the CPUs.
#[test]
fn injected_gpu_errors_and_a_lost_device_are_recovered() {
    let build = |plan: &str| {
        with_one_gpu(
            Runtime::builder()
                .policy(PolicyKind::Eager)
                .retries(10)
                .inject(plan.parse::<hexec::runtime::faults::FaultPlan>().unwrap()),
        )
    };
    let run = |rt: &Runtime, only_gpu: bool| {
        let tiles: Vec<Data<f32>> = (0..6).map(|i| rt.data(values(1000, 60 + i))).collect();
        let mut g = rt.graph();
        if !only_gpu {
            // Keeps the CPU worker busy at first, so that the GPU takes the scale tasks.
            g.task(&builtin::sleep()).priority(10).param(0.05).add();
        }
        for round in 0..3 {
            for t in &tiles {
                let b = g.task(&builtin::scale());
                let b = if only_gpu { b.on(DeviceKind::Gpu) } else { b };
                b.read_write(*t).param(1.0 + round as f64).add();
            }
        }
        let r = rt.run(&g).unwrap();
        (r, tiles.iter().map(|t| rt.read(*t).unwrap()).collect::<Vec<_>>())
    };
    let Some(clean) = build("") else { return };
    let (_, expected) = run(&clean, true);
    let flaky = build("gpu-error:p=0.3,seed=5").unwrap();
    let (r, got) = run(&flaky, true);
    assert!(r.retried > 0);
    assert_eq!(got, expected, "GPU errors retried");
    let lost = build("device-loss:gpu0").unwrap();
    let (r, got) = run(&lost, false);
    assert!(lost.gpus()[0].lost().is_some());
    assert_eq!(r.completed, 19);
    // The lost GPU's worker passed every task it was given on to the CPU (not as failed
    // attempts: nothing ran on the lost device).
    assert_eq!(r.retried, 0);
    assert_eq!(r.workers[0].tasks, 19, "{r:?}");
    for (g, e) in got.iter().zip(&expected) {
        close(g, e, 1e-6, "after the device loss");
    }
}

/// `x *= 2` in place, with a GPU implementation only.
fn double_gpu() -> Arc<Kernel> {
    Arc::new(
        Kernel::declare("double_gpu", Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0)).with_gpu(
            hexec::kernels::gpu::elementwise(
                "@group(0) @binding(1) var<storage, read_write> x: array<f32>;
                 @compute @workgroup_size(256)
                 fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
                     let i = element_index(gid, nwg);
                     if (i < P.len.x) { x[i] = 2.0 * x[i]; }
                 }",
                1,
                0,
            ),
        ),
    )
}

/// Replication: with a host replica of every GPU result, losing the GPU loses nothing and no
/// task runs again; without it, the datum updated in place on the GPU is rebuilt from lineage
/// (its update replayed on a CPU over the host's earlier value) or, when its update has no
/// CPU implementation, it is lost: a task reading it fails with an error naming the datum
/// and the device, and so does reading it afterwards, until it is written again.
#[test]
fn a_host_replica_survives_a_device_loss() {
    for (replicate, cpu_update) in [(true, true), (false, true), (false, false)] {
        let Some(rt) = with_one_gpu(
            Runtime::builder()
                .policy(PolicyKind::Eager)
                .replicate_gpu_results(replicate),
        ) else {
            return;
        };
        let rt = Arc::new(rt);
        let destroy = destroy_gpu0(&rt);
        let input = values(1000, 1);
        let x = rt.data_named("x", input.clone());
        let y = rt.data_named("y", vec![0.0f32; 1000]);
        let mut g = rt.graph();
        let update = match cpu_update {
            true => g.task(&builtin::scale()).param(2.0),
            false => g.task(&double_gpu()),
        };
        let on_gpu = update.on(DeviceKind::Gpu).read_write(x).add();
        let boom = g.task(&destroy).on(DeviceKind::Cpu).after(on_gpu).add();
        g.task(&builtin::axpy())
            .on(DeviceKind::Cpu)
            .read(x)
            .read_write(y)
            .param(1.0)
            .after(boom)
            .add();
        let doubled: Vec<f32> = input.iter().map(|v| v * 2.0).collect();
        match rt.run(&g) {
            Ok(r) if cpu_update => {
                assert_eq!(r.recomputed, u64::from(!replicate), "replicate {replicate}: {r:?}");
                if replicate {
                    assert_eq!(r.retried, 0, "nothing had to run again");
                }
                assert_eq!(rt.read(y).unwrap(), doubled);
                assert_eq!(rt.read(x).unwrap(), doubled);
            }
            Err(e) if !cpu_update => {
                let msg = e.to_string();
                assert!(msg.contains("datum 'x' was lost with gpu0"), "{msg}");
                let read = rt.read(x).unwrap_err().to_string();
                assert!(read.contains("'x' was lost with gpu0"), "{read}");
                // Writing it again makes it whole.
                rt.write(x, &input).unwrap();
                assert_eq!(rt.read(x).unwrap(), input);
            }
            other => panic!("replicate {replicate}, CPU update {cpu_update}: unexpected {other:?}"),
        }
        assert!(rt.gpus()[0].lost().is_some());
    }
}

/// Lineage: data produced whole on a GPU that is then lost are recomputed on the CPU from
/// their producers (inputs first), without a replica; the run completes with the right
/// values and counts the tasks it re-ran.
#[test]
fn data_lost_with_a_device_are_recomputed_from_lineage() {
    let Some(rt) = with_one_gpu(Runtime::builder().policy(PolicyKind::Eager)) else {
        return;
    };
    let rt = Arc::new(rt);
    let destroy = destroy_gpu0(&rt);
    let n = 1000;
    let x = rt.data_named("x", vec![0.0f32; n]);
    let y = rt.data_named("y", vec![0.0f32; n]);
    let out = rt.data_named("out", vec![1.0f32; n]);
    let mut g = rt.graph();
    // x = 3 and y = x + x, both written whole on the GPU: only copies there.
    g.task(&builtin::fill()).on(DeviceKind::Gpu).write(x).param(3.0).add();
    let made = g
        .task(&builtin::add())
        .on(DeviceKind::Gpu)
        .read(x)
        .read(x)
        .write(y)
        .add();
    let boom = g.task(&destroy).on(DeviceKind::Cpu).after(made).add();
    g.task(&builtin::axpy())
        .on(DeviceKind::Cpu)
        .read(y)
        .read_write(out)
        .param(1.0)
        .after(boom)
        .add();
    let r = rt.run(&g).unwrap();
    assert!(rt.gpus()[0].lost().is_some());
    assert_eq!(r.recomputed, 2, "fill, then add: {r:?}");
    assert_eq!(rt.read(out).unwrap(), vec![7.0; n]);
    assert_eq!(rt.read(y).unwrap(), vec![6.0; n]);
}

/// Speculation on a machine with a GPU: CPU worker cpu1 straggles on every task it takes; the
/// copies run on cpu0 and install their results as the host copy, which must leave no stale
/// GPU copy behind (the next update may run on the GPU). Results equal the fault-free values.
#[test]
fn straggler_copies_keep_gpu_copies_coherent() {
    let Some(rt) = Runtime::builder()
        .cpus(2)
        .software_gpus(true)
        .gpus(GpuRequest::Count(1))
        .policy(PolicyKind::Eager)
        .inject(
            "slow:cpu1:delay=60s"
                .parse::<hexec::runtime::faults::FaultPlan>()
                .unwrap(),
        )
        .build()
        .ok()
        .filter(|rt| !rt.gpus().is_empty() && rt.machine().count(DeviceKind::Cpu) == 2)
    else {
        eprintln!("SKIPPED: needs a GPU adapter and two CPU workers");
        return;
    };
    let start: Vec<Vec<f32>> = (0..8).map(|i| values(512, 90 + i)).collect();
    let tiles: Vec<Data<f32>> = start.iter().map(|v| rt.data(v.clone())).collect();
    let mut g = rt.graph();
    for round in 0..4 {
        for t in &tiles {
            g.task(&builtin::scale()).read_write(*t).param(1.0 + round as f64).add();
        }
    }
    let opts = RunOptions {
        speculate: true,
        ..RunOptions::default()
    };
    let r = rt.run_with(&g, opts).unwrap();
    assert_eq!(r.completed, 32);
    if r.workers[1].tasks > 0 {
        assert!(
            r.speculation_won >= 1,
            "cpu1 started a task, which only a copy can finish: {r:?}"
        );
    }
    assert!(r.makespan_s < 30.0, "the stragglers were waited for: {r:?}");
    for (t, v) in tiles.iter().zip(&start) {
        let expected: Vec<f32> = v.iter().map(|x| x * 24.0).collect();
        close(&rt.read(*t).unwrap(), &expected, 1e-5, "after speculation");
    }
}

/// Lineage of data updated in place: `a` is made whole then scaled on the GPU; `t` gets
/// `t += a` there, is read on the CPU (downloaded: the host now holds that version), then is
/// scaled again on the GPU. After the GPU is lost, `a` is rebuilt from its whole write and
/// `t` from the host's copy plus the one update since, on the CPU, without replicas.
#[test]
fn data_updated_in_place_on_a_lost_device_are_rebuilt_from_the_host_and_their_updates() {
    let Some(rt) = with_one_gpu(Runtime::builder().policy(PolicyKind::Eager)) else {
        return;
    };
    let rt = Arc::new(rt);
    let destroy = destroy_gpu0(&rt);
    let n = 1000;
    let start = values(n, 7);
    let a = rt.data_named("a", vec![0.0f32; n]);
    let t = rt.data_named("t", start.clone());
    let (s1, s2) = (rt.data_named("s1", vec![0.0f32]), rt.data_named("s2", vec![0.0f32]));
    let out = rt.data_named("out", vec![0.0f32; n]);
    let mut g = rt.graph();
    let gpu = DeviceKind::Gpu;
    g.task(&builtin::fill()).on(gpu).write(a).param(1.0).add();
    g.task(&builtin::scale()).on(gpu).read_write(a).param(2.0).add();
    g.task(&builtin::axpy()).on(gpu).read(a).read_write(t).param(1.0).add();
    g.task(&builtin::sum()).on(DeviceKind::Cpu).read(t).write(s1).add();
    let last = g.task(&builtin::scale()).on(gpu).read_write(t).param(3.0).add();
    let boom = g.task(&destroy).on(DeviceKind::Cpu).after(last).add();
    g.task(&builtin::sum())
        .on(DeviceKind::Cpu)
        .read(t)
        .write(s2)
        .after(boom)
        .add();
    g.task(&builtin::axpy())
        .on(DeviceKind::Cpu)
        .read(a)
        .read_write(out)
        .param(1.0)
        .after(boom)
        .add();
    let r = rt.run(&g).unwrap();
    assert!(rt.gpus()[0].lost().is_some());
    assert_eq!(r.recomputed, 3, "a: fill and scale; t: the last scale only: {r:?}");
    assert_eq!(rt.read(a).unwrap(), vec![2.0; n]);
    assert_eq!(rt.read(out).unwrap(), vec![2.0; n]);
    let expected: Vec<f32> = start.iter().map(|v| 3.0 * (v + 2.0)).collect();
    close(&rt.read(t).unwrap(), &expected, 1e-6, "t rebuilt");
    let sum2 = rt.read(s2).unwrap()[0];
    let want: f32 = expected.iter().sum();
    assert!((sum2 - want).abs() <= 1e-3 * want.abs().max(1.0), "{sum2} vs {want}");
}

/// A tiled Cholesky whose GPU is lost part-way (at three different times): every tile the
/// GPU held alone — updated in place there — is rebuilt from lineage on the CPU and the
/// factor is right, without replicas.
#[test]
fn a_cholesky_survives_losing_its_gpu_mid_run() {
    use hexec::linalg::TiledCholesky;
    for after_ms in [5, 30, 60] {
        let plan: hexec::runtime::faults::FaultPlan = format!("device-loss:gpu0:after={after_ms}ms").parse().unwrap();
        let Some(rt) = with_one_gpu(Runtime::builder().policy(PolicyKind::Eager).inject(plan)) else {
            return;
        };
        let chol = TiledCholesky::new(&rt, 6, 32);
        let r = rt
            .run(&chol.graph)
            .unwrap_or_else(|e| panic!("loss after {after_ms} ms: {e}"));
        let residual = chol.residual(&rt).unwrap();
        assert!(residual < 1e-5, "loss after {after_ms} ms: residual {residual}, {r:?}");
        eprintln!(
            "loss after {after_ms} ms: lost {:?}, {} recomputed, {} retried",
            rt.gpus()[0].lost().is_some(),
            r.recomputed,
            r.retried
        );
    }
}

mod lineage_properties {
    use super::random_ops::{op, Op};
    use super::*;
    use proptest::prelude::*;

    /// Runs `ops` (the first `on_gpu` of them on the GPU), losing the GPU after them when
    /// `lose`, then the rest anywhere and a CPU sum of every tile: the tiles, or the error.
    fn run(tiles: usize, ops: &[Op], on_gpu: usize, lose: bool) -> Option<Result<Vec<Vec<f32>>, String>> {
        let rt = Arc::new(with_one_gpu(Runtime::builder().policy(PolicyKind::Eager))?);
        let destroy = destroy_gpu0(&rt);
        let data: Vec<Data<f32>> = (0..tiles).map(|i| rt.data(values(256, 3 + i as u64))).collect();
        let sums: Vec<Data<f32>> = (0..tiles).map(|_| rt.data(vec![0.0f32])).collect();
        let mut g = rt.graph();
        let mut before = Vec::new();
        let mut boom = None;
        for (i, o) in ops.iter().enumerate() {
            if i == on_gpu && lose {
                let mut b = g.task(&destroy).on(DeviceKind::Cpu);
                for &t in &before {
                    b = b.after(t);
                }
                boom = Some(b.add());
            }
            let t = match *o {
                Op::Scale(a) => g.task(&builtin::scale()).read_write(data[a]).param(1.5),
                Op::Axpy(a, b) => g.task(&builtin::axpy()).read(data[a]).read_write(data[b]).param(0.25),
                Op::Add(a, b, c) => g.task(&builtin::add()).read(data[a]).read(data[b]).write(data[c]),
            };
            let t = match (i < on_gpu, boom) {
                (true, _) => t.on(DeviceKind::Gpu),
                (false, Some(b)) => t.after(b),
                (false, None) => t,
            };
            before.push(t.add());
        }
        for (d, s) in data.iter().zip(&sums) {
            let t = g.task(&builtin::sum()).on(DeviceKind::Cpu).read(*d).write(*s);
            match boom {
                Some(b) => t.after(b).add(),
                None => t.add(),
            };
        }
        Some(match rt.run(&g) {
            Ok(_) => Ok(data.iter().map(|d| rt.read(*d).unwrap()).collect()),
            Err(e) => Err(e.to_string()),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

        /// Losing the GPU after any prefix of a graph of in-place and whole updates: the run
        /// either recomputes what it lost and ends with the fault-free values, or fails
        /// saying which datum was lost with the GPU (its updates read data that moved on).
        #[test]
        fn a_device_loss_anywhere_recovers_or_names_what_was_lost(
            (tiles, ops, on_gpu) in (3usize..6)
                .prop_flat_map(|t| (Just(t), prop::collection::vec(op(t), 1..16)))
                .prop_flat_map(|(t, ops)| { let n = ops.len(); (Just(t), Just(ops), 1..=n) }),
        ) {
            let Some(clean) = run(tiles, &ops, on_gpu, false) else { return Ok(()) };
            let clean = clean.unwrap();
            let lossy = run(tiles, &ops, on_gpu, true).unwrap();
            // Counted for the README: `--no-capture` and grep the outcomes.
            eprintln!("lineage outcome: {}", if lossy.is_ok() { "recovered" } else { "lost" });
            match lossy {
                Ok(got) => {
                    for (g, c) in got.iter().zip(&clean) {
                        for (x, y) in g.iter().zip(c) {
                            prop_assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{} vs {}", x, y);
                        }
                    }
                }
                Err(e) => prop_assert!(e.contains("was lost with gpu0"), "{}", e),
            }
        }
    }
}

/// A software adapter (lavapipe) is no GPU unless asked for: a default runtime opens only
/// hardware adapters, and asking for a count with none says what was found and how to ask.
#[test]
fn software_adapters_are_opened_only_when_asked_for() {
    let adapters = hexec::gpu::adapters();
    let hardware = adapters.iter().filter(|a| !a.software).count();
    let software = adapters.len() - hardware;
    if software == 0 {
        eprintln!("SKIPPED: no software adapter here (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let rt = Runtime::builder().cpus(1).software_gpus(false).build().unwrap();
    assert_eq!(rt.gpus().len(), hardware);
    if hardware == 0 {
        // A task only a GPU may run says how to ask for the software one.
        let mut g = rt.graph();
        g.task(&builtin::noop()).name("needs-gpu").on(DeviceKind::Gpu).add();
        let e = rt.run(&g).unwrap_err().to_string();
        assert!(e.contains("'needs-gpu'") && e.contains("--software-gpus"), "{e}");
    }
    assert!(rt.gpus().iter().all(|g| g.desc.device_type != "Cpu"));
    let rt = Runtime::builder().cpus(1).software_gpus(true).build().unwrap();
    assert_eq!(rt.gpus().len(), adapters.len());
    if hardware == 0 {
        let e = Runtime::builder()
            .cpus(1)
            .software_gpus(false)
            .gpus(GpuRequest::Count(1))
            .build()
            .err()
            .expect("no hardware GPU to open")
            .to_string();
        assert!(
            e.contains("software adapters found") && e.contains("software_gpus"),
            "{e}"
        );
    }
}

/// A GPU implementation that refuses its operands at run time (its own check) fails on the
/// GPU only: a kernel with a CPU implementation runs there instead, and the report says so
/// in its warnings; a GPU-only kernel fails at once (another GPU would refuse the same way).
#[test]
fn a_gpu_failure_falls_back_to_a_cpu_with_a_warning_or_fails_at_once() {
    let Some(rt) = gpu_runtime(1) else { return };
    let refusing = || {
        let mut code = (**builtin::scale().gpu_impl().unwrap()).clone();
        code.check = Arc::new(|_| Err("refuses these operands".to_string()));
        code
    };
    let both = Arc::new(
        Kernel::cpu(
            "picky_scale",
            Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 1),
            |ctx| {
                std::thread::sleep(Duration::from_millis(20));
                let f = ctx.param(0)? as f32;
                ctx.write::<f32>(0)?.iter_mut().for_each(|v| *v *= f);
                Ok(())
            },
        )
        .with_gpu(refusing()),
    );
    let tiles: Vec<Data<f32>> = (0..6).map(|_| rt.data(vec![1.0f32; 8])).collect();
    let mut g = rt.graph();
    for t in &tiles {
        g.task(&both).read_write(*t).param(3.0).add();
    }
    let r = rt.run_with(&g, RunOptions::default()).unwrap();
    assert_eq!(r.completed, 6);
    for t in &tiles {
        assert_eq!(rt.read(*t).unwrap(), vec![3.0; 8]);
    }
    let gpu_attempts = r.retried as usize;
    assert!(gpu_attempts > 0, "the GPU worker took some of the tasks first");
    assert_eq!(r.warnings.len(), gpu_attempts, "{:?}", r.warnings);
    assert!(
        r.warnings
            .iter()
            .all(|w| w.contains("failed on gpu0 and runs on cpu0 instead") && w.contains("refuses these operands")),
        "{:?}",
        r.warnings
    );

    let gpu_only = Arc::new(
        Kernel::declare("picky_gpu", Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 1)).with_gpu(refusing()),
    );
    let mut g = rt.graph();
    g.task(&gpu_only).name("picky").read_write(tiles[0]).param(3.0).add();
    let err = rt.run(&g).unwrap_err();
    let report = err.report().unwrap();
    assert_eq!(report.retried, 0, "{err}");
    assert_eq!(report.failures[0].attempts.len(), 1, "{err}");
    assert!(err.to_string().contains("refuses these operands"), "{err}");
}

#[test]
fn freeing_a_datum_releases_its_gpu_copy() {
    let Some(rt) = with_one_gpu(Runtime::builder()) else {
        eprintln!("SKIPPED: no GPU adapter");
        return;
    };
    let gpu_used = |rt: &Runtime| rt.memory_usage()[1].used_bytes;
    let before = (rt.memory_usage()[0].used_bytes, gpu_used(&rt));
    let x = rt.data_named("x", vec![1.0f32; 1 << 20]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .on(DeviceKind::Gpu)
        .read_write(x)
        .param(2.0)
        .add();
    rt.run(&g).unwrap();
    assert_eq!(rt.memory_usage()[1].node, "gpu0");
    assert!(gpu_used(&rt) >= 4 << 20, "the GPU holds no copy of 'x'");
    rt.free(x).unwrap();
    assert_eq!((rt.memory_usage()[0].used_bytes, gpu_used(&rt)), before);
    // The handle names a freed datum now, in reads and in graphs.
    assert_eq!(rt.read(x).unwrap_err().to_string(), "datum 'x' was freed");
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(e.contains("datum 'x' was freed"), "{e}");
    // Data taken back from a GPU come home first, and free their GPU copy too.
    let y = rt.data_named("y", vec![1.0f32; 1000]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .on(DeviceKind::Gpu)
        .read_write(y)
        .param(3.0)
        .add();
    rt.run(&g).unwrap();
    assert_eq!(rt.take(y).unwrap(), vec![3.0; 1000]);
    assert_eq!((rt.memory_usage()[0].used_bytes, gpu_used(&rt)), before);
    // read_with brings the GPU's value home too.
    let z = rt.data_named("z", vec![1.0f32; 100]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .on(DeviceKind::Gpu)
        .read_write(z)
        .param(5.0)
        .add();
    rt.run(&g).unwrap();
    assert_eq!(rt.read_with(z, |s| s.iter().sum::<f32>()).unwrap(), 500.0);
}

/// A poll thread that dies (wgpu-core 30.0.2 can panic in `device.poll` under load) loses
/// its device at once, with the panic's message: work goes to the CPUs instead of every wait
/// running to its 600 s submission limit.
#[test]
fn a_dead_poll_thread_fails_its_device_at_once() {
    let Some(rt) = with_one_gpu(Runtime::builder().policy(PolicyKind::Eager)) else {
        eprintln!("SKIPPED: no GPU adapter");
        return;
    };
    // A GPU copy first, so that the poller has been used.
    let x = rt.data(vec![1.0f32; 64]);
    let mut g = rt.graph();
    g.task(&builtin::scale())
        .on(DeviceKind::Gpu)
        .read_write(x)
        .param(2.0)
        .add();
    rt.run(&g).unwrap();
    // Home before the loss: the only valid copy would go with the device.
    assert_eq!(rt.read(x).unwrap(), vec![2.0; 64]);
    rt.gpus()[0].inject_poll_panic();
    let t = Instant::now();
    while rt.gpus()[0].lost().is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let reason = rt.gpus()[0].lost().expect("the device is lost once its poller died");
    assert!(
        reason.contains("poll thread panicked") && reason.contains("injected"),
        "{reason}"
    );
    let mut g = rt.graph();
    for _ in 0..4 {
        g.task(&builtin::scale()).read_write(x).param(2.0).add();
    }
    let t = Instant::now();
    let r = rt.run(&g).unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(rt.read(x).unwrap(), vec![32.0; 64]);
    assert!(
        r.warnings.iter().any(|w| w.contains("poll thread panicked")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn a_gpu_retired_mid_run_brings_its_only_copies_home_and_releases_its_memory() {
    let Some(rt) = with_one_gpu(Runtime::builder().policy(PolicyKind::Eager)) else {
        eprintln!("SKIPPED: no GPU adapter");
        return;
    };
    const CHUNKS: usize = 16;
    const LEN: usize = 4096;
    let xs: Vec<Data<f32>> = (0..CHUNKS)
        .map(|c| rt.data((0..LEN).map(|i| (c * LEN + i) as f32).collect()))
        .collect();
    // Written on the GPU: the only valid copies are there.
    let mut g = rt.graph();
    for &x in &xs {
        g.task(&builtin::scale())
            .read_write(x)
            .param(2.0)
            .on(DeviceKind::Gpu)
            .add();
    }
    rt.run(&g).unwrap();
    let gpu_used = |rt: &Runtime| rt.memory_usage()[1].used_bytes;
    assert!(gpu_used(&rt) >= (CHUNKS * LEN * 4) as u64);
    // A run that goes on while the GPU is retired: its tasks wait on a CPU sleep first.
    let mut g = rt.graph();
    let gate = g.task(&builtin::sleep()).param(0.1).on(DeviceKind::Cpu).add();
    for &x in &xs {
        g.task(&builtin::scale()).read_write(x).param(3.0).after(gate).add();
    }
    let running = rt.submit_graph(g);
    std::thread::sleep(Duration::from_millis(20));
    let retired = rt.retire("gpu0").unwrap();
    assert_eq!(retired.data_copied, CHUNKS, "{retired:?}");
    assert_eq!(retired.bytes_copied, (CHUNKS * LEN * 4) as u64);
    assert!(retired.bytes_released >= retired.bytes_copied);
    assert_eq!(gpu_used(&rt), 0, "the device's memory is released");
    let report = running.wait().unwrap();
    assert_eq!(report.recomputed, 0, "nothing is recomputed");
    assert_eq!(report.failed, 0);
    for (c, &x) in xs.iter().enumerate() {
        let want: Vec<f32> = (0..LEN).map(|i| (c * LEN + i) as f32 * 6.0).collect();
        assert_eq!(rt.read(x).unwrap(), want, "chunk {c}");
    }
    assert_eq!(gpu_used(&rt), 0, "nothing went back to the retired GPU");
    // GPU-only work is refused while the only GPU is retired, and runs again once restored.
    let y = rt.data(vec![1.0f32; 64]);
    assert!(rt
        .task(&builtin::scale())
        .read_write(y)
        .param(2.0)
        .on(DeviceKind::Gpu)
        .submit()
        .is_err());
    rt.restore("gpu0").unwrap();
    rt.task(&builtin::scale())
        .read_write(y)
        .param(2.0)
        .on(DeviceKind::Gpu)
        .submit()
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(rt.read(y).unwrap(), vec![2.0; 64]);
}

#[test]
fn a_submitted_task_with_broken_gpu_code_is_refused_alone() {
    let Some(rt) = gpu_runtime(1) else { return };
    let broken = Arc::new(
        Kernel::cpu(
            "broken_both",
            Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0),
            |_| Ok(()),
        )
        .with_gpu(GpuImpl::single(
            "fn main( { this is not WGSL",
            1,
            Arc::new(|_| [1, 1, 1]),
        )),
    );
    let x = rt.data(vec![1.0f32; 4]);
    let y = rt.data(vec![1.0f32; 4]);
    let fine = rt.task(&builtin::scale()).read_write(x).param(2.0).submit().unwrap();
    match rt.task(&broken).name("uses-broken").read_write(y).submit() {
        Err(hexec::SubmitError::GpuCode {
            task, kernel, worker, ..
        }) => {
            assert_eq!(
                (task.as_str(), kernel.as_str(), worker.as_str()),
                ("uses-broken", "broken_both", "gpu0")
            );
        }
        other => panic!("expected a refusal at submit, got {other:?}"),
    }
    // Restricted to the CPUs, its GPU code is not needed.
    rt.task(&broken)
        .read_write(y)
        .on(DeviceKind::Cpu)
        .submit()
        .unwrap()
        .wait()
        .unwrap();
    fine.wait().unwrap();
    assert_eq!(rt.read(x).unwrap(), vec![2.0; 4]);
}

/// Generated elementwise kernels (the fused expressions of `hexec::array`) compute on the GPU
/// what their CPU versions compute, over an odd length, for every function they offer.
#[test]
fn generated_elementwise_kernels_match_on_gpu_and_cpu() {
    use hexec::kernels::expr::Expr;
    let Some(rt) = gpu_runtime(1) else { return };
    let n = 1000 + 7;
    let x: Vec<f32> = values(n, 11).iter().map(|v| v + 2.0).collect();
    let y = values(n, 12);
    let (x0, x1) = (Expr::input(0), Expr::input(1));
    let exprs = [
        (x0.clone() * 2.0 - x1.clone()).abs().sqrt() + x1.clone().tanh(),
        (x0.clone().ln() / 3.0).exp().max(x1.clone()).min(1.5),
        -(x0.clone() + x1.clone()) * x0.clone(),
    ];
    for e in exprs {
        let kernel = e.kernel::<f32>().unwrap();
        let (g, cpu) = both(
            &rt,
            &kernel,
            &[x.clone(), y.clone(), vec![0.0; n]],
            &[Access::Read, Access::Read, Access::Write],
            &[],
            2,
        );
        close(&g, &cpu, 1e-5, &format!("{e}"));
    }
}

/// An f64 expression runs on a GPU with SHADER_F64 (lavapipe has it) and gives the CPU's
/// values there.
#[test]
fn f64_expressions_run_on_a_gpu_with_shader_f64() {
    use hexec::kernels::expr::Expr;
    let Some(rt) = gpu_runtime(1) else { return };
    if !rt.machine().gpus[0].features.iter().any(|f| f == "f64") {
        eprintln!("SKIPPED: the GPU has no SHADER_F64");
        return;
    }
    let kernel = (Expr::input(0) * 2.0 + Expr::input(1).abs().sqrt())
        .kernel::<f64>()
        .unwrap();
    let n = 777;
    let x: Vec<f64> = (0..n).map(|i| i as f64 * 0.25 - 50.0).collect();
    let y: Vec<f64> = (0..n).map(|i| (i as f64).sin() * 1e3).collect();
    let mut results = Vec::new();
    for device in [DeviceKind::Gpu, DeviceKind::Cpu] {
        let (xd, yd, out) = (rt.data(x.clone()), rt.data(y.clone()), rt.data(vec![0.0f64; n]));
        rt.task(&kernel)
            .on(device)
            .read(xd)
            .read(yd)
            .write(out)
            .submit()
            .unwrap()
            .wait()
            .unwrap();
        results.push(rt.read(out).unwrap());
    }
    for (g, c) in results[0].iter().zip(&results[1]) {
        assert!((g - c).abs() <= 1e-12 * c.abs().max(1.0), "gpu {g} vs cpu {c}");
    }
}

/// On a machine of a CPU and a GPU with a model of both, `locality` plans with its look-ahead
/// (HEFT's plan of the graph) and `heft` with its plan, in the runtime as in the simulator:
/// each task runs on the same device class in both, and the run completes. `scale` is
/// modelled ten times faster on the CPU, `fill` ten times faster on the GPU.
#[test]
fn planned_policies_choose_the_same_device_class_in_the_runtime_and_the_simulator() {
    use hexec::graph::formats::{BuildOptions, DataSpec, GraphSpec, TaskSpec};
    use hexec::sched::perfmodel::PerfModel;
    use hexec::sim::{simulate, SimMachine, SimOptions};
    let len = 256u64;
    let mut model = PerfModel::new();
    for _ in 0..5 {
        model.record("scale", "cpu", len * 4, 1e-3);
        model.record("scale", "gpu", len * 4, 1e-2);
        model.record("fill", "cpu", len * 4, 1e-2);
        model.record("fill", "gpu", len * 4, 1e-3);
        model.record("axpy", "cpu", len * 8, 1e-2);
        model.record("axpy", "gpu", len * 8, 1e-3);
    }
    let mut spec = GraphSpec::new(Some("classes".into()));
    for i in 0..8 {
        spec.data.push(DataSpec {
            name: format!("t{i}"),
            elem: Some("f32".into()),
            len: Some(len),
            bytes: None,
            init: None,
            read_only: false,
            temp: false,
        });
        let mut t = TaskSpec::replay(format!("task{i}"), 0.0);
        (t.kernel, t.params, t.access) = if i % 2 == 0 {
            ("scale".into(), vec![2.0], vec![(format!("t{i}"), "rw".into())])
        } else {
            ("fill".into(), vec![7.0], vec![(format!("t{i}"), "w".into())])
        };
        spec.tasks.push(t);
    }
    // `t[i+1] += 0.5·t[i]` after both: on the GPU, its CPU-made input copied there as soon as
    // it exists under `heft` (an early prefetch; the task is not ready until the other one).
    for i in (0..8).step_by(2) {
        let mut t = TaskSpec::replay(format!("axpy{i}"), 0.0);
        (t.kernel, t.params) = ("axpy".into(), vec![0.5]);
        t.access = vec![(format!("t{i}"), "r".into()), (format!("t{}", i + 1), "rw".into())];
        spec.tasks.push(t);
    }
    let expected: Vec<DeviceKind> = (0..12)
        .map(|i| {
            if i < 8 && i % 2 == 0 {
                DeviceKind::Cpu
            } else {
                DeviceKind::Gpu
            }
        })
        .collect();
    for policy in [PolicyKind::Locality, PolicyKind::Heft] {
        let Some(rt) = with_one_gpu(Runtime::builder().policy(policy).perf_model(model.clone())) else {
            eprintln!("SKIPPED: no GPU adapter");
            return;
        };
        // The same graph through the API, so that its data can be read back.
        let tiles: Vec<Data<f32>> = (0..8).map(|i| rt.data(vec![(i + 1) as f32; len as usize])).collect();
        let mut g = rt.graph();
        for (i, t) in tiles.iter().enumerate() {
            if i % 2 == 0 {
                g.task(&builtin::scale()).read_write(*t).param(2.0).add();
            } else {
                g.task(&builtin::fill()).write(*t).param(7.0).add();
            }
        }
        for i in (0..8).step_by(2) {
            g.task(&builtin::axpy())
                .read(tiles[i])
                .read_write(tiles[i + 1])
                .param(0.5)
                .add();
        }
        let report = rt.run_with(&g, RunOptions::traced()).unwrap();
        assert_eq!(report.completed, g.len());
        let mut real = vec![DeviceKind::Cpu; g.len()];
        for (w, events) in report.trace.as_ref().unwrap().per_worker.iter().enumerate() {
            for e in events {
                real[e.task as usize] = rt.machine().workers[w].kind;
            }
        }
        let mut sm = SimMachine::parse("cpus:1,gpus:1,gpu-speedup:1").unwrap();
        sm.model = model.clone();
        let sg = spec.build_virtual(&|k| sm.kernel(k), &BuildOptions::default()).unwrap();
        let sim = simulate(&sg, &sm, policy, &SimOptions::default()).unwrap();
        let simulated: Vec<DeviceKind> = sim
            .placement
            .iter()
            .map(|w| sm.machine.workers[w.index()].kind)
            .collect();
        assert_eq!(
            real, simulated,
            "{policy}: the runtime and the simulator chose different classes"
        );
        assert_eq!(real, expected, "{policy}: each kernel on the class it is fast on");
        // t[i] starts at i + 1; scale doubles it, fill sets 7, axpy adds half the scaled
        // value: 8 + i (a copy of t[i] taken before scale would give 7.5 + i / 2).
        for i in (0..8).step_by(2) {
            let want = vec![(8 + i) as f32; len as usize];
            assert_eq!(rt.read(tiles[i + 1]).unwrap(), want, "{policy}: t{}", i + 1);
        }
    }
}
