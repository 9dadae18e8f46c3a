use hexec::sim::SimMachine;
use hexec::DeviceKind;
fn main() {
    let sm = SimMachine::parse("starpu:../shared/workloads/heterogeneous/starpu_perfmodels:sirocco").unwrap();
    let b = 960u64 * 960 * 4;
    for (k, tiles) in [("potrf", 1u64), ("trsm", 2), ("syrk", 2), ("gemm", 3)] {
        println!("{k}: cpu {:?} gpu {:?}", sm.cost(k, DeviceKind::Cpu, tiles * b, None), sm.cost(k, DeviceKind::Gpu, tiles * b, None));
    }
    println!("bw {:?}", sm.bandwidth[0]);
    println!("lat {:?}", sm.latency[0]);
}
