// Tiled, register-blocked f32 GEMM: C = alpha * A * B + beta * C, row-major,
// A is m x k, B is k x n, C is m x n. Parameters: u = (m, n, k), f.w = alpha, f2.x = beta.
// A workgroup of 16 x 16 invocations computes a 64 x 64 tile of C, invocation (y, x) the 4 x 4
// block at rows 4y.., columns 4x.., held in four vec4 accumulators. A and B tiles of depth 16
// are staged in workgroup memory as vec4s (four rows of A, four columns of B), so that each
// step of the inner loop reads two vec4s and does 16 fmas. The accumulators are named vectors,
// not a local array indexed in loops: a driver that keeps such an array in memory instead of
// registers runs the kernel at a small fraction of the chip's rate. Edges (sizes that are not
// multiples of 64 or 16) are guarded, reading zeros outside the matrices.

@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;

var<workgroup> As: array<array<vec4<f32>, 16>, 16>; // [kk][r]: rows 4r..4r+3 at depth kk
var<workgroup> Bs: array<array<vec4<f32>, 16>, 16>; // [kk][c]: columns 4c..4c+3 at depth kk

fn a_at(r: u32, kk: u32, m: u32, k: u32) -> f32 {
    if (r < m && kk < k) { return A[r * k + kk]; }
    return 0.0;
}

fn b_at(kk: u32, c: u32, k: u32, n: u32) -> f32 {
    if (kk < k && c < n) { return B[kk * n + c]; }
    return 0.0;
}

fn store_row(r: u32, c: u32, v: vec4<f32>, m: u32, n: u32, alpha: f32, beta: f32) {
    if (r >= m) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (c + j < n) {
            let idx = r * n + c + j;
            var prev = 0.0;
            if (beta != 0.0) { prev = beta * C[idx]; }
            C[idx] = alpha * v[j] + prev;
        }
    }
}

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = P.u.x;
    let n = P.u.y;
    let k = P.u.z;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let flat = lid.y * 16u + lid.x; // 0..255
    // What this invocation stages at each step: rows 4*ar.. of A at depth ak (ak varies
    // fastest, so neighbouring invocations read neighbouring addresses of a row of A), and
    // columns 4*bc.. of B at depth bk (four consecutive addresses).
    let ak = flat % DEPTH;
    let ar = flat / DEPTH;
    let bc = flat % 16u;
    let bk = flat / 16u;
    let ra = row0 + 4u * ar;
    let cb = col0 + 4u * bc;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < k; k0 += DEPTH) {
        let ka = k0 + ak;
        As[ak][ar] = vec4<f32>(a_at(ra, ka, m, k), a_at(ra + 1u, ka, m, k), a_at(ra + 2u, ka, m, k), a_at(ra + 3u, ka, m, k));
        let kb = k0 + bk;
        Bs[bk][bc] = vec4<f32>(b_at(kb, cb, k, n), b_at(kb, cb + 1u, k, n), b_at(kb, cb + 2u, k, n), b_at(kb, cb + 3u, k, n));
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk++) {
            let a = As[kk][lid.y];
            let b = Bs[kk][lid.x];
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }
    let alpha = P.f.w;
    let beta = P.f2.x;
    let r = row0 + 4u * lid.y;
    let c = col0 + 4u * lid.x;
    store_row(r, c, acc0, m, n, alpha, beta);
    store_row(r + 1u, c, acc1, m, n, alpha, beta);
    store_row(r + 2u, c, acc2, m, n, alpha, beta);
    store_row(r + 3u, c, acc3, m, n, alpha, beta);
}
