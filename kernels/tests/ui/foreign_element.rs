// `Element` is sealed: an outside type cannot claim an operand's tag (here a 1-aligned u8
// datum viewed as 8-aligned 32-byte blocks would be a misaligned slice).
use hexec_kernels::{ElemType, Element};

#[derive(Clone, Copy)]
#[repr(C)]
struct Block([u64; 4]);

// SAFETY: a plain array of u64: no padding, any bit pattern valid, zero valid.
unsafe impl bytemuck::Zeroable for Block {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for Block {}

impl Element for Block {
    const ELEM: ElemType = ElemType::U8;
}

fn main() {}
