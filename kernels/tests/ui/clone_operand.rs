// `RawOperand` is not `Clone` either: `.clone()` only copies the reference, which cannot
// make a context.
use hexec_kernels::{CpuContext, Kernel, RawOperand, Signature};

fn main() {
    let _k = Kernel::cpu("alias", Signature::any(0, 0), |ctx| {
        let a = ctx.write::<f32>(1)?;
        let op: RawOperand<'_> = ctx.operand(1)?.clone();
        let mut cloned = [op];
        let b = CpuContext::new(&mut cloned, &[], 1);
        a[0] = b.write::<f32>(0)?[0];
        Ok(())
    });
}
