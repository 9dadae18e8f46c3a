//! The README's Rust examples, kept compiling and true.

use hexec::kernels::{builtin, Access, ElemType, Kernel, Signature};
use hexec::Runtime;

#[test]
fn readme_api_example() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::builder().build()?;
    let x = rt.data(vec![1.0f32; 1 << 20]);
    let y = rt.data(vec![0.0f32; 1 << 20]);
    let s = rt.data(vec![0.0f32; 1]);
    let mut g = rt.graph();
    g.task(&builtin::axpy()).read(x).read_write(y).param(2.0).add();
    g.task(&builtin::sum()).read(y).write(s).priority(1).add();
    g.task(&builtin::noop()).on_worker("cpu0").add();
    let report = rt.run(&g)?;
    assert_eq!(report.completed, 3);
    assert_eq!(rt.read(s)?[0], 2.0 * (1 << 20) as f32);
    Ok(())
}

#[test]
fn readme_kernel_example() -> Result<(), Box<dyn std::error::Error>> {
    let square = std::sync::Arc::new(Kernel::cpu(
        "square",
        Signature::exact(&[(Access::ReadWrite, ElemType::F64)], 0),
        |ctx| {
            ctx.write::<f64>(0)?.iter_mut().for_each(|v| *v *= *v);
            Ok(())
        },
    ));
    let rt = Runtime::builder().cpus(1).build()?;
    let v = rt.data(vec![3.0f64, -2.0]);
    let mut g = rt.graph();
    g.task(&square).read_write(v).add();
    rt.run(&g)?;
    assert_eq!(rt.read(v)?, vec![9.0, 4.0]);
    Ok(())
}

#[test]
fn readme_data_lifecycle() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::builder().cpus(1).build()?;
    let v = vec![1.0f32; 1000];
    let p = v.as_ptr();
    let h = rt.data(v);
    assert_eq!(rt.read_with(h, |s: &[f32]| s.as_ptr())?, p);
    assert_eq!(rt.read(h)?.len(), 1000);
    let back = rt.take(h)?;
    assert_eq!(back.as_ptr(), p);
    let x = rt.data_named("x", vec![0u8; 16]);
    rt.free(x)?;
    assert_eq!(rt.read(x).unwrap_err().to_string(), "datum 'x' was freed");
    assert_eq!(rt.memory_usage()[0].used_bytes, 0);
    Ok(())
}

#[test]
fn readme_live_runtime_example() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::builder().build()?;
    let x = rt.data(vec![1.0f32; 1 << 20]);
    let s = rt.data(vec![0.0f32; 1]);
    for _ in 0..10 {
        rt.task(&builtin::scale()).read_write(x).param(1.5).submit()?;
    }
    let sum = rt.task(&builtin::sum()).read(x).write(s).submit()?;
    sum.wait()?;
    let total = rt.read(s)?[0];
    rt.wait_all()?;
    let want = 1.5f64.powi(10) * (1 << 20) as f64;
    assert!(((total as f64) - want).abs() / want < 1e-4, "{total} vs {want}");
    Ok(())
}

#[test]
fn readme_arrays_example() -> Result<(), Box<dyn std::error::Error>> {
    use hexec::array::Matrix;
    let rt = hexec::Runtime::builder().build()?;
    let n = 1000;
    let a = Matrix::<f64>::from_fn(&rt, "A", n, n, 192, |i, j| {
        if i == j {
            n as f64
        } else {
            1.0 / (1 + i + j) as f64
        }
    })?;
    let b = Matrix::<f64>::column(&rt, "b", 192, vec![1.0; n])?;
    let x = a.solve_spd(&b)?;
    let ax = a.matmul(&x)?;
    let r = (&ax - &b).abs().eval()?;
    let worst = r.to_vec()?.into_iter().fold(0.0, f64::max);
    assert!(worst < 1e-10, "{worst}");
    Ok(())
}
