// C = C - A * B^T on square row-major b x b f32 tiles (b = sqrt of operand 0's length):
// bindings 1 = A, 2 = B, 3 = C; syrk binds A at both 1 and 2 (C = C - A A^T). This is the
// update of the tiled Cholesky factorisation, where most of its flops are.
// Register-blocked as gemm.wgsl: a workgroup of 16 x 16 invocations computes a 64 x 64 block
// of C, invocation (y, x) the 4 x 4 block at rows 4y.., columns 4x.. in four vec4
// accumulators. Both operands are read along their rows (k), so both are staged the same way:
// 64 rows at depth 16, as vec4s of four rows. Edges are guarded.

@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;

var<workgroup> As: array<array<vec4<f32>, 16>, 16>; // [kk][r]: rows 4r..4r+3 of A at depth kk
var<workgroup> Bs: array<array<vec4<f32>, 16>, 16>; // [kk][c]: rows 4c..4c+3 of B at depth kk

fn a_at(r: u32, kk: u32, b: u32) -> f32 {
    if (r < b && kk < b) { return A[r * b + kk]; }
    return 0.0;
}

fn b_at(r: u32, kk: u32, b: u32) -> f32 {
    if (r < b && kk < b) { return B[r * b + kk]; }
    return 0.0;
}

fn sub_row(r: u32, c: u32, v: vec4<f32>, b: u32) {
    if (r >= b) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (c + j < b) {
            C[r * b + c + j] -= v[j];
        }
    }
}

@compute @workgroup_size(16, 16)
fn gemm_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = u32(round(sqrt(f32(P.len.x))));
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let flat = lid.y * 16u + lid.x; // 0..255
    // This invocation stages rows 4*sr.. of both tiles at depth sk (sk varies fastest, so
    // neighbouring invocations read neighbouring addresses of a row).
    let sk = flat % DEPTH;
    let sr = flat / DEPTH;
    let ra = row0 + 4u * sr;
    let rb = col0 + 4u * sr;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < b; k0 += DEPTH) {
        let kk = k0 + sk;
        As[sk][sr] = vec4<f32>(a_at(ra, kk, b), a_at(ra + 1u, kk, b), a_at(ra + 2u, kk, b), a_at(ra + 3u, kk, b));
        Bs[sk][sr] = vec4<f32>(b_at(rb, kk, b), b_at(rb + 1u, kk, b), b_at(rb + 2u, kk, b), b_at(rb + 3u, kk, b));
        workgroupBarrier();
        for (var t = 0u; t < DEPTH; t++) {
            let x = As[t][lid.y];
            let y = Bs[t][lid.x];
            acc0 = fma(vec4<f32>(x.x), y, acc0);
            acc1 = fma(vec4<f32>(x.y), y, acc1);
            acc2 = fma(vec4<f32>(x.z), y, acc2);
            acc3 = fma(vec4<f32>(x.w), y, acc3);
        }
        workgroupBarrier();
    }
    let r = row0 + 4u * lid.y;
    let c = col0 + 4u * lid.x;
    sub_row(r, c, acc0, b);
    sub_row(r + 1u, c, acc1, b);
    sub_row(r + 2u, c, acc2, b);
    sub_row(r + 3u, c, acc3, b);
}
