// Tile kernels of the tiled Cholesky factorisation, on square row-major b x b f32 tiles
// (b = sqrt of operand 0's length, see `tile_side`).
//   trsm:    X = X * L^-T  (L lower triangular): binding 1 = L, binding 2 = X
//   gemm_nt: C = C - A * B^T: bindings 1 = A, 2 = B, 3 = C (syrk binds A twice: C = C - A A^T)

@group(0) @binding(1) var<storage, read> L_or_A: array<f32>;

fn tile_side() -> u32 {
    // Exact for b up to 4096 (b*b < 2^24 is representable in f32).
    return u32(round(sqrt(f32(P.len.x))));
}

// One workgroup per row of X, right-looking: at step j one invocation finishes x_j (divides it
// by L[j][j]), then the workgroup takes it off every later x_k of the row in parallel
// (x_k -= x_j L[k][j]). Rows are independent. Each invocation loops about b + b^2/128 times:
// a row per invocation (b^2/2 iterations) is cut short past 65535 iterations by lavapipe's
// loop limiter (wrong results from b = 362), and leaves most of a real GPU idle.
@group(0) @binding(2) var<storage, read_write> X: array<f32>;

var<workgroup> xj: f32;

@compute @workgroup_size(64)
fn trsm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let b = tile_side();
    let i = wid.x + wid.y * nwg.x;
    // The same for the whole workgroup, so the barriers below stay in uniform control flow.
    if (i >= b) { return; }
    let row = i * b;
    for (var j = 0u; j < b; j++) {
        if (t == 0u) {
            let v = X[row + j] / L_or_A[j * b + j];
            X[row + j] = v;
            xj = v;
        }
        workgroupBarrier();
        let v = xj;
        for (var k = j + 1u + t; k < b; k += 64u) {
            X[row + k] -= v * L_or_A[k * b + j];
        }
        // x_{j+1} (updated by another invocation) is read at the next step; xj is rewritten.
        storageBarrier();
        workgroupBarrier();
    }
}
