// The portable reduction: a tree in workgroup memory (see reduce_common.wgsl).

// Folds every invocation's `v` into acc[0].
fn fold(op: u32, lid: u32, v: f32) {
    acc[lid] = v;
    var stride = WG / 2u;
    loop {
        if (stride == 0u) { break; }
        workgroupBarrier();
        if (lid < stride) { acc[lid] = combine(op, acc[lid], acc[lid + stride]); }
        stride = stride / 2u;
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn sum_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) { partial_pass(0u, wid.x, lid); }
@compute @workgroup_size(256)
fn sum_final(@builtin(local_invocation_index) lid: u32) { final_pass(0u, lid); }
@compute @workgroup_size(256)
fn min_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) { partial_pass(1u, wid.x, lid); }
@compute @workgroup_size(256)
fn min_final(@builtin(local_invocation_index) lid: u32) { final_pass(1u, lid); }
@compute @workgroup_size(256)
fn max_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) { partial_pass(2u, wid.x, lid); }
@compute @workgroup_size(256)
fn max_final(@builtin(local_invocation_index) lid: u32) { final_pass(2u, lid); }
