// Two-pass reductions (sum, min, max) over f32, shared by the portable version (reduce.wgsl)
// and the subgroup version (reduce_subgroups.wgsl), which each supply `fold` and the entry
// points. Pass 1 (`*_partial`): workgroup w folds its chunk of the input with a grid-stride
// loop, writing partial[w]. Pass 2 (`*_final`): one workgroup folds the partials into out[0].
// The partial count follows the same formula as the Rust side (`reduce_partials`).

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
