//! GPU implementations: a WGSL module and the passes that dispatch it.
//!
//! A [`GpuImpl`] is declarative: the executor (in `hexec`) compiles the module once per
//! device, caches one pipeline per entry point, binds each pass's [`Binding`]s (the uniform
//! `Params` block (WGSL, see `shaders/common.wgsl`), task operands, scratch buffers) and dispatches the workgroup grid the
//! pass computes from the operand sizes and parameters. Every module starts with
//! `shaders/common.wgsl`, which declares the uniform block at binding 0.

use std::sync::Arc;

/// WGSL shared by every module: the `Params` uniform and `element_index`.
pub const COMMON_WGSL: &str = include_str!("../shaders/common.wgsl");

/// Elements per workgroup of the elementwise kernels.
pub const ELEMENTWISE_WG: u32 = 256;

/// What a pass binds at each binding index (in order: binding 0, 1, 2, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The uniform `Params` block (WGSL, see `shaders/common.wgsl`).
    Params,
    /// Task operand `i`.
    Operand(usize),
    /// Scratch buffer `i` of [`GpuImpl::scratch`].
    Scratch(usize),
}

/// Sizes a pass sees: element count of each operand and the task's parameters.
#[derive(Clone, Copy, Debug)]
pub struct GpuDims<'a> {
    /// Element count of each operand, in operand order.
    pub lens: &'a [u64],
    /// The task's scalar parameters.
    pub params: &'a [f64],
}

/// Computes a workgroup grid.
pub type GridFn = Arc<dyn Fn(&GpuDims<'_>) -> [u32; 3] + Send + Sync>;
/// Computes the scratch buffer sizes, in bytes.
pub type ScratchFn = Arc<dyn Fn(&GpuDims<'_>) -> Vec<u64> + Send + Sync>;
/// Checks operand sizes and parameters before a dispatch.
pub type CheckFn = Arc<dyn Fn(&GpuDims<'_>) -> Result<(), String> + Send + Sync>;

/// One dispatch.
#[derive(Clone)]
pub struct GpuPass {
    /// The WGSL entry point it dispatches.
    pub entry: String,
    /// `bindings[b]` is bound at `@binding(b)`.
    pub bindings: Vec<Binding>,
    /// Its workgroup grid.
    pub grid: GridFn,
}

/// A GPU implementation.
#[derive(Clone)]
pub struct GpuImpl {
    /// Full WGSL source (common block included).
    pub source: Arc<str>,
    /// The dispatches, in order.
    pub passes: Vec<GpuPass>,
    /// Sizes in bytes of scratch buffers the passes need.
    pub scratch: ScratchFn,
    /// Checks sizes before dispatch (for example, matching lengths); the message says why not.
    pub check: CheckFn,
    /// A version using subgroup operations, for devices with the `subgroups` feature.
    pub with_subgroups: Option<Arc<GpuImpl>>,
    /// Device features the code needs (as `hexec info` names them: `f16`, `f64`, ...): a GPU
    /// without one of them is not eligible for the kernel, so its tasks run elsewhere.
    pub requires: Vec<String>,
}

impl std::fmt::Debug for GpuImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<&str> = self.passes.iter().map(|p| p.entry.as_str()).collect();
        f.debug_struct("GpuImpl")
            .field("entries", &entries)
            .finish_non_exhaustive()
    }
}

impl GpuImpl {
    /// One pass over `body` (WGSL appended to the common block) with entry point `main`,
    /// binding params then operands `0..operands`, with grid `grid`.
    pub fn single(body: &str, operands: usize, grid: GridFn) -> Self {
        let mut bindings = vec![Binding::Params];
        bindings.extend((0..operands).map(Binding::Operand));
        GpuImpl {
            source: format!("{COMMON_WGSL}\n{body}").into(),
            passes: vec![GpuPass {
                entry: "main".into(),
                bindings,
                grid,
            }],
            scratch: Arc::new(|_| Vec::new()),
            check: Arc::new(|_| Ok(())),
            with_subgroups: None,
            requires: Vec::new(),
        }
    }

    /// This implementation, or its subgroup version when the device has subgroups.
    pub fn for_device(&self, subgroups: bool) -> &GpuImpl {
        match (&self.with_subgroups, subgroups) {
            (Some(s), true) => s,
            _ => self,
        }
    }

    /// Requires a device feature (e.g. `f64` for `SHADER_F64`): see [`GpuImpl::requires`].
    pub fn requiring(mut self, feature: impl Into<String>) -> Self {
        self.requires.push(feature.into());
        self
    }

    /// Adds a size check.
    pub fn with_check(mut self, check: impl Fn(&GpuDims<'_>) -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.check = Arc::new(check);
        self
    }
}

/// The uniform block: operand lengths, parameters as u32 and as f32 (see common.wgsl).
pub fn pack_params(dims: &GpuDims<'_>) -> [u8; 64] {
    let mut words = [0u32; 16];
    for (i, &l) in dims.lens.iter().take(4).enumerate() {
        words[i] = u32::try_from(l).unwrap_or(u32::MAX);
    }
    for (i, &p) in dims.params.iter().take(4).enumerate() {
        words[4 + i] = if p.is_finite() && p >= 0.0 {
            p.min(u32::MAX as f64) as u32
        } else {
            0
        };
        words[8 + i] = (p as f32).to_bits();
    }
    for (i, &p) in dims.params.iter().skip(4).take(4).enumerate() {
        words[12 + i] = (p as f32).to_bits();
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(bytemuck::cast_slice(&words));
    out
}

/// A grid of `ceil(n / per_group)` workgroups, folded into two dimensions past 65535.
pub fn grid_1d(n: u64, per_group: u32) -> [u32; 3] {
    let groups = n.div_ceil(u64::from(per_group)).max(1);
    if groups <= 65535 {
        [groups as u32, 1, 1]
    } else {
        let x = 65535u64;
        [x as u32, groups.div_ceil(x).min(u64::from(u32::MAX)) as u32, 1]
    }
}

/// Number of partial results of the two-pass reductions (mirrors `partials_of` in
/// reduce.wgsl).
pub fn reduce_partials(n: u64) -> u64 {
    n.div_ceil(256 * 16).clamp(1, 1024)
}

/// An elementwise kernel over `operands` f32 arrays whose grid follows operand `sized_by`.
pub fn elementwise(body: &str, operands: usize, sized_by: usize) -> GpuImpl {
    GpuImpl::single(
        body,
        operands,
        Arc::new(move |d| grid_1d(d.lens.get(sized_by).copied().unwrap_or(0), ELEMENTWISE_WG)),
    )
    .with_check(move |d| {
        let n = d.lens.get(sized_by).copied().unwrap_or(0);
        match d.lens.iter().position(|&l| l != n) {
            Some(i) => Err(format!(
                "operand {i} has {} elements, operand {sized_by} has {n}",
                d.lens[i]
            )),
            None => Ok(()),
        }
    })
}

/// A binary map `z = expr(x, y)` over f32, `expr` a WGSL expression in `x` and `y`.
pub fn map2(expr: &str) -> GpuImpl {
    elementwise(&include_str!("../shaders/map2.wgsl").replace("EXPR", expr), 3, 2)
}

/// The two-pass reduction `op` (`sum`, `min`, `max`) of operand 0 into operand 1, with a
/// subgroup version.
pub fn reduction(op: &str) -> GpuImpl {
    let common = include_str!("../shaders/reduce_common.wgsl");
    let with = |variant: &str| reduction_from(op, &format!("{common}\n{variant}"));
    let mut portable = with(include_str!("../shaders/reduce.wgsl"));
    portable.with_subgroups = Some(Arc::new(with(include_str!("../shaders/reduce_subgroups.wgsl"))));
    portable
}

fn reduction_from(op: &str, body: &str) -> GpuImpl {
    let grid_partial: GridFn = Arc::new(|d| [reduce_partials(d.lens.first().copied().unwrap_or(0)) as u32, 1, 1]);
    let grid_final: GridFn = Arc::new(|_| [1, 1, 1]);
    GpuImpl {
        source: format!("{COMMON_WGSL}\n{body}").into(),
        passes: vec![
            GpuPass {
                entry: format!("{op}_partial"),
                bindings: vec![Binding::Params, Binding::Operand(0), Binding::Scratch(0)],
                grid: grid_partial,
            },
            GpuPass {
                entry: format!("{op}_final"),
                // Bindings are indexed by position: keep binding 1 (the input) unused here
                // by binding the scratch buffer at 2 and the output at 3.
                bindings: vec![
                    Binding::Params,
                    Binding::Operand(0),
                    Binding::Scratch(0),
                    Binding::Operand(1),
                ],
                grid: grid_final,
            },
        ],
        scratch: Arc::new(|d| vec![reduce_partials(d.lens.first().copied().unwrap_or(0)) * 4]),
        check: Arc::new(|d| {
            if d.lens.get(1).copied().unwrap_or(0) == 0 {
                Err("the output needs at least one element".into())
            } else if d.lens.first().copied().unwrap_or(0) > u64::from(u32::MAX) {
                Err("the input has more than 2^32 elements".into())
            } else {
                Ok(())
            }
        }),
        with_subgroups: None,
        requires: Vec::new(),
    }
}

/// The tiled GEMM: operands A (m×k), B (k×n), C (m×n); params m, n, k, alpha, beta.
pub fn gemm() -> GpuImpl {
    GpuImpl {
        source: format!("{COMMON_WGSL}\n{}", include_str!("../shaders/gemm.wgsl")).into(),
        passes: vec![GpuPass {
            entry: "gemm".into(),
            bindings: vec![
                Binding::Params,
                Binding::Operand(0),
                Binding::Operand(1),
                Binding::Operand(2),
            ],
            grid: Arc::new(|d| {
                let (m, n) = (d.params[0] as u64, d.params[1] as u64);
                [n.div_ceil(64).max(1) as u32, m.div_ceil(64).max(1) as u32, 1]
            }),
        }],
        scratch: Arc::new(|_| Vec::new()),
        check: Arc::new(|d| crate::builtin::gemm_dims(d.params, d.lens).map(|_| ())),
        with_subgroups: None,
        requires: Vec::new(),
    }
}
