// A binary elementwise map z[i] = EXPR(x[i], y[i]); EXPR is substituted when the module is
// built (add: x + y, multiply: x * y, or a user's expression).
@group(0) @binding(1) var<storage, read> xs: array<f32>;
@group(0) @binding(2) var<storage, read> ys: array<f32>;
@group(0) @binding(3) var<storage, read_write> zs: array<f32>;

fn map2(x: f32, y: f32) -> f32 {
    return EXPR;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(gid, nwg);
    if (i < P.len.z) { zs[i] = map2(xs[i], ys[i]); }
}
