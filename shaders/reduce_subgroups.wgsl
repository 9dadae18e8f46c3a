// Two-pass reductions (sum, min, max) over f32 using subgroup operations: each subgroup folds
// its values with subgroupAdd/Min/Max, then the first invocation folds the subgroup results.
// Used on devices with the `subgroups` feature; reduce.wgsl is the portable version.
// Pass 1 (`*_partial`): workgroup w folds elements w*CHUNK .. (w+1)*CHUNK with a grid-stride
// loop and a tree in workgroup memory, writing partial[w]. Pass 2 (`*_final`): one workgroup
// folds the partials into out[0]. CHUNK and the partial count follow the same formula as
// the Rust side (`reduce_partials`).

@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> acc: array<f32, 256>;

fn combine(op: u32, a: f32, b: f32) -> f32 {
    if (op == 0u) { return a + b; }
    if (op == 1u) { return min(a, b); }
    return max(a, b);
}

fn identity(op: u32) -> f32 {
    if (op == 0u) { return 0.0; }
    if (op == 1u) { return 3.40282347e38; }
    return -3.40282347e38;
}

fn partials_of(n: u32) -> u32 {
    return clamp((n + WG * 16u - 1u) / (WG * 16u), 1u, 1024u);
}

var<private> sg_lane: u32;

fn subgroup_fold(op: u32, v: f32) -> f32 {
    if (op == 0u) { return subgroupAdd(v); }
    if (op == 1u) { return subgroupMin(v); }
    return subgroupMax(v);
}

var<workgroup> slots: atomic<u32>;

// Leaves the workgroup's result in acc[0]. Subgroup leaders claim slots with an atomic, so
// nothing is assumed about how invocations map to subgroups.
fn fold(op: u32, lid: u32, v: f32) {
    if (lid == 0u) { atomicStore(&slots, 0u); }
    workgroupBarrier();
    let s = subgroup_fold(op, v);
    if (sg_lane == 0u) {
        let k = atomicAdd(&slots, 1u);
        acc[k] = s;
    }
    workgroupBarrier();
    if (lid == 0u) {
        let n = atomicLoad(&slots);
        var r = identity(op);
        for (var i = 0u; i < n; i++) { r = combine(op, r, acc[i]); }
        acc[0] = r;
    }
    workgroupBarrier();
}

fn partial_pass(op: u32, wid: u32, lid: u32) {
    let n = P.len.x;
    let parts = partials_of(n);
    let chunk = (n + parts - 1u) / parts;
    let start = wid * chunk;
    let end = min(start + chunk, n);
    var v = identity(op);
    var i = start + lid;
    loop {
        if (i >= end) { break; }
        v = combine(op, v, input[i]);
        i = i + WG;
    }
    fold(op, lid, v);
    if (lid == 0u) { partial[wid] = acc[0]; }
}

fn final_pass(op: u32, lid: u32) {
    let parts = partials_of(P.len.x);
    var v = identity(op);
    var i = lid;
    loop {
        if (i >= parts) { break; }
        v = combine(op, v, partial[i]);
        i = i + WG;
    }
    fold(op, lid, v);
    if (lid == 0u) { out[0] = acc[0]; }
}

@compute @workgroup_size(256)
fn sum_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) sl: u32) { sg_lane = sl; partial_pass(0u, wid.x, lid); }
@compute @workgroup_size(256)
fn sum_final(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) sl: u32) { sg_lane = sl; final_pass(0u, lid); }
@compute @workgroup_size(256)
fn min_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) sl: u32) { sg_lane = sl; partial_pass(1u, wid.x, lid); }
@compute @workgroup_size(256)
fn min_final(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) sl: u32) { sg_lane = sl; final_pass(1u, lid); }
@compute @workgroup_size(256)
fn max_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) sl: u32) { sg_lane = sl; partial_pass(2u, wid.x, lid); }
@compute @workgroup_size(256)
fn max_final(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) sl: u32) { sg_lane = sl; final_pass(2u, lid); }
