// `RawOperand` is not `Copy`: a kernel cannot copy one of its task's operands out of its
// context to build a second context over it (a second `&mut` to the operand).
use hexec_kernels::{CpuContext, Kernel, Signature};

fn main() {
    let _k = Kernel::cpu("alias", Signature::any(0, 0), |ctx| {
        let a = ctx.write::<f32>(1)?;
        let mut copied = [*ctx.operand(1)?];
        let b = CpuContext::new(&mut copied, &[], 1);
        a[0] = b.write::<f32>(0)?[0];
        Ok(())
    });
}
