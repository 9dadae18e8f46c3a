// Tiled, register-blocked f32 GEMM: C = alpha * A * B + beta * C, row-major,
// A is m x k, B is k x n, C is m x n. Parameters: u = (m, n, k), f.w = alpha, f2.x = beta.
// A workgroup of 16 x 16 invocations computes a 64 x 64 tile of C, each invocation a 4 x 4
// block held in registers; A and B tiles of depth 16 are staged in workgroup memory. Edges
// (sizes that are not multiples of 64 or 16) are guarded, reading zeros outside the matrices.

@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
const T: u32 = 16u;

var<workgroup> As: array<array<f32, 64>, 16>; // [kk][row]
var<workgroup> Bs: array<array<f32, 64>, 16>; // [kk][col]

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = P.u.x;
    let n = P.u.y;
    let k = P.u.z;
    let alpha = P.f.w;
    let beta = P.f2.x;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let flat = lid.y * T + lid.x; // 0..255

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }

    var k0 = 0u;
    loop {
        if (k0 >= k) { break; }
        // Load a 64 x 16 tile of A and a 16 x 64 tile of B: 1024 values each, 4 per invocation.
        for (var t = 0u; t < 4u; t++) {
            let e = flat + t * 256u;
            let ar = e / DEPTH;
            let ak = e % DEPTH;
            let gr = row0 + ar;
            let gk = k0 + ak;
            var av = 0.0;
            if (gr < m && gk < k) { av = A[gr * k + gk]; }
            As[ak][ar] = av;
            let bk = e / TILE;
            let bc = e % TILE;
            let gk2 = k0 + bk;
            let gc = col0 + bc;
            var bv = 0.0;
            if (gk2 < k && gc < n) { bv = B[gk2 * n + gc]; }
            Bs[bk][bc] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) { a[i] = As[kk][lid.y * 4u + i]; }
            for (var j = 0u; j < 4u; j++) { b[j] = Bs[kk][lid.x * 4u + j]; }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
            }
        }
        workgroupBarrier();
        k0 = k0 + DEPTH;
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if (r >= m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if (c < n) {
                let idx = r * n + c;
                var prev = 0.0;
                if (beta != 0.0) { prev = beta * C[idx]; }
                C[idx] = alpha * acc[i][j] + prev;
            }
        }
    }
}
