//! Criterion benches of per-task overhead: empty tasks on all cores, per shape and policy,
//! with rayon's version of each shape alongside. `cargo bench --bench overhead`.
//! (`hexec bench overhead` prints the same comparison as a table.)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hexec::bench::overhead::Shape;
use hexec::{PolicyKind, Runtime};

fn overhead(c: &mut Criterion) {
    let dask = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workloads/dask");
    let shapes: Vec<Shape> = Shape::standard(Some(&dask))
        .into_iter()
        .filter(|s| match s.missing_input() {
            Some(why) => {
                eprintln!("skipped: {}: {why}", s.label());
                false
            }
            None => true,
        })
        .collect();
    let runtimes: Vec<Runtime> = [PolicyKind::Eager, PolicyKind::Ws, PolicyKind::Locality]
        .iter()
        .map(|&p| {
            Runtime::builder()
                .policy(p)
                .gpus(hexec::gpu::GpuRequest::None)
                .build()
                .expect("runtime")
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(runtimes[0].machine().num_workers())
        .build()
        .expect("rayon pool");
    let mut group = c.benchmark_group("overhead");
    group.sample_size(10);
    for shape in &shapes {
        let g = shape.build(&runtimes[0]).expect("shape");
        group.throughput(Throughput::Elements(g.len() as u64));
        for rt in &runtimes {
            group.bench_with_input(
                BenchmarkId::new(format!("hexec-{}", rt.policy()), shape.label()),
                &g,
                |b, g| b.iter(|| rt.run(g).expect("run")),
            );
        }
        group.bench_with_input(BenchmarkId::new("rayon", shape.label()), shape, |b, shape| {
            b.iter(|| hexec::bench::overhead::run_on_rayon(&pool, shape, &g))
        });
    }
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
