// A kernel sees `&CpuContext` and `&RawOperand`s: it cannot build a second context over its
// task's operands (which would give it a second `&mut` to an operand, or a `&mut` beside a
// `&`), neither over the borrowed operand nor over a copy of it.
use hexec_kernels::{CpuContext, Kernel, Signature};

fn main() {
    let _k = Kernel::cpu("alias", Signature::any(0, 0), |ctx| {
        let shared = ctx.read::<f32>(1)?;
        let other = CpuContext::new(std::slice::from_ref(ctx.operand(1)?), &[], 1);
        let mine = other.write::<f32>(0)?;
        mine[0] = shared[0];
        Ok(())
    });
}
