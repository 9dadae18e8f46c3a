// Shared by every hexec kernel: the uniform block each dispatch receives.
//   len: element counts of operands 0..3
//   u:   parameters 0..3 converted to u32 (sizes such as m, n, k)
//   f:   parameters 0..3 as f32;  f2: parameters 4..7 as f32
struct Params {
    len: vec4<u32>,
    u: vec4<u32>,
    f: vec4<f32>,
    f2: vec4<f32>,
}

@group(0) @binding(0) var<uniform> P: Params;

// Elementwise kernels use 256 invocations per workgroup and a 2-D grid when a 1-D one would
// exceed 65535 workgroups: this turns an invocation id into an element index.
fn element_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}
