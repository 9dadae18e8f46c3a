// C = C - A * B^T on square row-major b x b f32 tiles (b = sqrt of operand 0's length):
// bindings 1 = A, 2 = B, 3 = C; syrk binds A at both 1 and 2 (C = C - A A^T).
// A workgroup of 16 x 16 invocations computes a 16 x 16 block of C, staging 16-wide slabs
// of the rows of A and B in workgroup memory; edges are guarded.

@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

var<workgroup> As: array<array<f32, 16>, 16>; // [row][kk]
var<workgroup> Bs: array<array<f32, 16>, 16>; // [col][kk]

@compute @workgroup_size(16, 16)
fn gemm_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = u32(round(sqrt(f32(P.len.x))));
    let row = wid.y * 16u + lid.y;
    let col = wid.x * 16u + lid.x;
    var acc = 0.0;
    for (var k0 = 0u; k0 < b; k0 += 16u) {
        // Invocation (y, x) loads A[wid.y*16 + y][k0 + x] and B[wid.x*16 + y][k0 + x].
        let ar = wid.y * 16u + lid.y;
        let br = wid.x * 16u + lid.y;
        let kk = k0 + lid.x;
        As[lid.y][lid.x] = select(0.0, A[ar * b + kk], ar < b && kk < b);
        Bs[lid.y][lid.x] = select(0.0, B[br * b + kk], br < b && kk < b);
        workgroupBarrier();
        for (var t = 0u; t < 16u; t++) {
            acc += As[lid.y][t] * Bs[lid.x][t];
        }
        workgroupBarrier();
    }
    if (row < b && col < b) {
        C[row * b + col] -= acc;
    }
}
