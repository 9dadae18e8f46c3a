// A context borrows its operands exclusively: a second context over the same operands
// cannot exist while the first (or a slice from it) is alive, and a slice does not outlive
// its context.
use hexec_kernels::{Access, CpuContext, ElemType, RawOperand};

fn main() {
    let mut y = vec![0.0f32; 4];
    // SAFETY: `y` is a live, exclusively borrowed Vec<f32> that outlives the operand.
    let mut ops = [unsafe { RawOperand::new(y.as_mut_ptr().cast(), 16, ElemType::F32, Access::ReadWrite) }];

    // Two contexts at once.
    let first = CpuContext::new(&mut ops, &[], 1);
    let second = CpuContext::new(&mut ops, &[], 1);
    let a = first.write::<f32>(0).unwrap();
    let b = second.write::<f32>(0).unwrap();
    a[0] = b[0];

    // A slice kept past its context, then a new context over the same operands.
    let kept = {
        let ctx = CpuContext::new(&mut ops, &[], 1);
        ctx.write::<f32>(0).unwrap()
    };
    let again = CpuContext::new(&mut ops, &[], 1);
    kept[0] = again.read::<f32>(0).unwrap()[0];
}
