// Tile kernels of the tiled Cholesky factorisation, on square row-major b x b f32 tiles
// (b = sqrt of operand 0's length, see `tile_side`).
//   trsm:    X = X * L^-T  (L lower triangular): binding 1 = L, binding 2 = X
//   gemm_nt: C = C - A * B^T: bindings 1 = A, 2 = B, 3 = C (syrk binds A twice: C = C - A A^T)

@group(0) @binding(1) var<storage, read> L_or_A: array<f32>;

fn tile_side() -> u32 {
    // Exact for b up to 4096 (b*b < 2^24 is representable in f32).
    return u32(round(sqrt(f32(P.len.x))));
}

// One invocation per row of X: forward substitution along the row, x_j = (x_j - sum_k<j
// x_k L[j][k]) / L[j][j]. Rows are independent, so no synchronisation is needed.
@group(0) @binding(2) var<storage, read_write> X: array<f32>;

@compute @workgroup_size(64)
fn trsm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = tile_side();
    let i = gid.x;
    if (i >= b) { return; }
    for (var j = 0u; j < b; j++) {
        var s = X[i * b + j];
        for (var k = 0u; k < j; k++) {
            s -= X[i * b + k] * L_or_A[j * b + k];
        }
        X[i * b + j] = s / L_or_A[j * b + j];
    }
}
