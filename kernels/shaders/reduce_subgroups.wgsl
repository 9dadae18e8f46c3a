// The reduction with subgroup operations: each subgroup folds its values with
// subgroupAdd/Min/Max, then the first invocation folds the subgroup results (see
// reduce_common.wgsl). Used on devices with the `subgroups` feature.

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
