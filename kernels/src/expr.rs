//! Elementwise expressions: a small tree over numbered inputs and constants, made into one
//! kernel that computes it in a single pass — on CPUs by evaluating the tree over chunks of
//! elements (each node a tight loop the compiler vectorises), on GPUs as generated WGSL (`f32`,
//! and `f64` on devices with `SHADER_F64` for what they compute in `f64`). A chain of elementwise operations written as one expression is one task, with no
//! intermediate arrays: the fusion `hexec::array` does.
//!
//! Kernels are cached by expression and element type ([`Expr::kernel`]), so that the same
//! expression gives the same [`Kernel`] (its GPU code is compiled once per device).
//!
//! ```
//! use hexec_kernels::expr::Expr;
//! let e = (Expr::input(0) * 2.0 + Expr::input(1)).sqrt();
//! assert_eq!(e.to_string(), "sqrt(((x0 * 2) + x1))");
//! assert_eq!(e.inputs(), 2);
//! assert_eq!(e.eval_one(&[8.0, 9.0]), 5.0);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use crate::gpu::{self, GpuImpl};
use crate::kernel::{Kernel, KernelError, Signature};
use crate::tiles::Scalar;
use crate::types::{Access, ElemType};

/// Inputs an expression may have: a GPU binds them and the output as storage buffers, and
/// eight per stage is what every device offers.
pub const MAX_INPUTS: usize = 7;

/// Functions of one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// `√x`
    Sqrt,
    /// `eˣ`
    Exp,
    /// `ln x`
    Ln,
    /// `tanh x`
    Tanh,
}

/// Functions of two values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    /// `a + b`
    Add,
    /// `a − b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
    /// The smaller.
    Min,
    /// The larger.
    Max,
}

/// An elementwise expression (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Input `i`'s element.
    Input(u8),
    /// A constant.
    Const(f64),
    /// A function of one expression.
    Unary(Unary, Box<Expr>),
    /// A function of two expressions.
    Binary(Binary, Box<Expr>, Box<Expr>),
}

impl Expr {
    /// Input `i`'s element (`i` < [`MAX_INPUTS`]).
    pub fn input(i: u8) -> Expr {
        Expr::Input(i)
    }

    /// A constant.
    pub fn constant(v: f64) -> Expr {
        Expr::Const(v)
    }

    fn unary(self, f: Unary) -> Expr {
        Expr::Unary(f, Box::new(self))
    }

    /// `|self|`
    pub fn abs(self) -> Expr {
        self.unary(Unary::Abs)
    }

    /// `√self`
    pub fn sqrt(self) -> Expr {
        self.unary(Unary::Sqrt)
    }

    /// `e^self`
    pub fn exp(self) -> Expr {
        self.unary(Unary::Exp)
    }

    /// `ln self`
    pub fn ln(self) -> Expr {
        self.unary(Unary::Ln)
    }

    /// `tanh self`
    pub fn tanh(self) -> Expr {
        self.unary(Unary::Tanh)
    }

    /// The smaller of the two.
    pub fn min(self, o: impl Into<Expr>) -> Expr {
        Expr::Binary(Binary::Min, Box::new(self), Box::new(o.into()))
    }

    /// The larger of the two.
    pub fn max(self, o: impl Into<Expr>) -> Expr {
        Expr::Binary(Binary::Max, Box::new(self), Box::new(o.into()))
    }

    /// The number of inputs: one more than the largest input index used (0 for none).
    pub fn inputs(&self) -> usize {
        match self {
            Expr::Input(i) => *i as usize + 1,
            Expr::Const(_) => 0,
            Expr::Unary(_, a) => a.inputs(),
            Expr::Binary(_, a, b) => a.inputs().max(b.inputs()),
        }
    }

    /// Operations in the tree (inputs and constants are free).
    pub fn ops(&self) -> usize {
        match self {
            Expr::Input(_) | Expr::Const(_) => 0,
            Expr::Unary(_, a) => 1 + a.ops(),
            Expr::Binary(_, a, b) => 1 + a.ops() + b.ops(),
        }
    }

    /// `self` with input `i` replaced by `inputs[i]` (composition: the inputs of the result
    /// are those of the replacements).
    pub fn substitute(&self, inputs: &[Expr]) -> Expr {
        match self {
            Expr::Input(i) => inputs[*i as usize].clone(),
            Expr::Const(c) => Expr::Const(*c),
            Expr::Unary(f, a) => Expr::Unary(*f, Box::new(a.substitute(inputs))),
            Expr::Binary(f, a, b) => Expr::Binary(*f, Box::new(a.substitute(inputs)), Box::new(b.substitute(inputs))),
        }
    }

    /// `self` with input indices shifted by `by` (to put two expressions' inputs side by side).
    pub fn shift_inputs(&self, by: u8) -> Expr {
        match self {
            Expr::Input(i) => Expr::Input(i + by),
            Expr::Const(c) => Expr::Const(*c),
            Expr::Unary(f, a) => Expr::Unary(*f, Box::new(a.shift_inputs(by))),
            Expr::Binary(f, a, b) => Expr::Binary(*f, Box::new(a.shift_inputs(by)), Box::new(b.shift_inputs(by))),
        }
    }

    /// Why the expression cannot be a kernel: too many inputs, or a constant that is not
    /// finite (WGSL has no literal for it).
    pub fn check(&self) -> Result<(), String> {
        if self.inputs() > MAX_INPUTS {
            return Err(format!(
                "the expression has {} inputs; at most {MAX_INPUTS} fit one kernel",
                self.inputs()
            ));
        }
        fn consts(e: &Expr) -> Result<(), String> {
            match e {
                Expr::Const(c) if !c.is_finite() => Err(format!("the constant {c} is not finite")),
                Expr::Input(_) | Expr::Const(_) => Ok(()),
                Expr::Unary(_, a) => consts(a),
                Expr::Binary(_, a, b) => consts(a).and_then(|()| consts(b)),
            }
        }
        consts(self)
    }

    /// The value for one element, in `f64` (for references and tests).
    pub fn eval_one(&self, x: &[f64]) -> f64 {
        match self {
            Expr::Input(i) => x[*i as usize],
            Expr::Const(c) => *c,
            Expr::Unary(f, a) => unary(*f, a.eval_one(x)),
            Expr::Binary(f, a, b) => binary(*f, a.eval_one(x), b.eval_one(x)),
        }
    }

    /// `out[k] = self(inputs[0][k], inputs[1][k], ...)`, in chunks of [`CHUNK`] elements.
    ///
    /// # Panics
    /// If an input is shorter than `out` or missing (the kernel checks first).
    pub fn eval<T: Scalar>(&self, inputs: &[&[T]], out: &mut [T]) {
        let mut scratch: Vec<[T; CHUNK]> = Vec::new();
        for (c, out) in out.chunks_mut(CHUNK).enumerate() {
            let at = c * CHUNK;
            let n = out.len();
            let mut depth = 0;
            self.eval_chunk(inputs, at, n, &mut scratch, &mut depth);
            out.copy_from_slice(&scratch[0][..n]);
        }
    }

    /// Evaluates into `scratch[*depth]`, using the slots above it for subtrees.
    fn eval_chunk<T: Scalar>(
        &self,
        inputs: &[&[T]],
        at: usize,
        n: usize,
        scratch: &mut Vec<[T; CHUNK]>,
        depth: &mut usize,
    ) {
        let me = *depth;
        if scratch.len() <= me {
            scratch.push([T::ZERO; CHUNK]);
        }
        match self {
            Expr::Input(i) => scratch[me][..n].copy_from_slice(&inputs[*i as usize][at..at + n]),
            Expr::Const(c) => scratch[me][..n].fill(T::from_f64(*c)),
            Expr::Unary(f, a) => {
                a.eval_chunk(inputs, at, n, scratch, depth);
                let f = *f;
                for v in &mut scratch[me][..n] {
                    *v = T::from_f64(unary(f, v.to_f64()));
                }
            }
            Expr::Binary(f, a, b) => {
                a.eval_chunk(inputs, at, n, scratch, depth);
                *depth = me + 1;
                b.eval_chunk(inputs, at, n, scratch, depth);
                *depth = me;
                let (lo, hi) = scratch.split_at_mut(me + 1);
                let (dst, rhs) = (&mut lo[me][..n], &hi[0][..n]);
                match f {
                    Binary::Add => dst.iter_mut().zip(rhs).for_each(|(a, &b)| *a += b),
                    Binary::Sub => dst.iter_mut().zip(rhs).for_each(|(a, &b)| *a -= b),
                    Binary::Mul => dst.iter_mut().zip(rhs).for_each(|(a, &b)| *a *= b),
                    Binary::Div => dst.iter_mut().zip(rhs).for_each(|(a, &b)| *a /= b),
                    Binary::Min => dst.iter_mut().zip(rhs).for_each(|(a, &b)| {
                        if b < *a {
                            *a = b
                        }
                    }),
                    Binary::Max => dst.iter_mut().zip(rhs).for_each(|(a, &b)| {
                        if b > *a {
                            *a = b
                        }
                    }),
                }
            }
        }
    }

    /// Whether the tree uses a function that GPUs offer only in `f32` (`exp`, `ln`, `tanh`:
    /// Vulkan's extended instructions for them take 16- and 32-bit floats).
    fn needs_f32_functions(&self) -> bool {
        match self {
            Expr::Input(_) | Expr::Const(_) => false,
            Expr::Unary(f, a) => matches!(f, Unary::Exp | Unary::Ln | Unary::Tanh) || a.needs_f32_functions(),
            Expr::Binary(_, a, b) => a.needs_f32_functions() || b.needs_f32_functions(),
        }
    }

    /// The expression in WGSL over inputs `x0[i]`, `x1[i]`, ... of type `ty` (`f32`, `f64`).
    fn wgsl(&self, ty: &str) -> String {
        match self {
            Expr::Input(i) => format!("x{i}[i]"),
            // `{:?}` prints a decimal point or an exponent, which WGSL's float literals need.
            Expr::Const(c) if ty == "f32" => format!("f32({:?})", *c as f32),
            Expr::Const(c) => format!("{ty}({c:?})"),
            Expr::Unary(f, a) => {
                let a = a.wgsl(ty);
                match f {
                    Unary::Neg => format!("(-{a})"),
                    Unary::Abs => format!("abs({a})"),
                    Unary::Sqrt => format!("sqrt({a})"),
                    Unary::Exp => format!("exp({a})"),
                    Unary::Ln => format!("log({a})"),
                    Unary::Tanh => format!("tanh({a})"),
                }
            }
            Expr::Binary(f, a, b) => {
                let (a, b) = (a.wgsl(ty), b.wgsl(ty));
                match f {
                    Binary::Add => format!("({a} + {b})"),
                    Binary::Sub => format!("({a} - {b})"),
                    Binary::Mul => format!("({a} * {b})"),
                    Binary::Div => format!("({a} / {b})"),
                    Binary::Min => format!("min({a}, {b})"),
                    Binary::Max => format!("max({a}, {b})"),
                }
            }
        }
    }

    /// The GPU implementation over `ty` (`f32`, or `f64` where the device has `SHADER_F64`):
    /// one generated module computing the whole tree.
    fn gpu_impl(&self, ty: &str) -> GpuImpl {
        let n = self.inputs();
        let mut body = String::new();
        for k in 0..n {
            body.push_str(&format!(
                "@group(0) @binding({}) var<storage, read> x{k}: array<{ty}>;\n",
                k + 1
            ));
        }
        body.push_str(&format!(
            "@group(0) @binding({}) var<storage, read_write> out: array<{ty}>;\n\n\
             @compute @workgroup_size(256)\n\
             fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n\
             \x20   let i = element_index(gid, nwg);\n\
             \x20   if (i < P.len.x) {{ out[i] = {}; }}\n\
             }}\n",
            n + 1,
            self.wgsl(ty)
        ));
        let g = gpu::elementwise(&body, n + 1, n);
        if ty == "f64" {
            g.requiring("f64")
        } else {
            g
        }
    }

    /// The kernel computing this expression over `T` (`f32` with a GPU implementation too):
    /// reads one operand per input, writes the last; all of one length. The same for the same
    /// expression and type (cached).
    pub fn kernel<T: Scalar>(&self) -> Result<Arc<Kernel>, String> {
        static CACHE: OnceLock<Mutex<KernelCache>> = OnceLock::new();
        let key = (self.to_string(), T::ELEM);
        let cache = CACHE.get_or_init(Mutex::default);
        if let Some(k) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            // Only expressions that passed the check below are cached.
            return Ok(k.clone());
        }
        self.check()?;
        let n = self.inputs();
        let mut operands = vec![(Access::Read, T::ELEM); n];
        operands.push((Access::Write, T::ELEM));
        let expr = self.clone();
        let mut kernel = Kernel::cpu(format!("map[{}]", key.0), Signature::exact(&operands, 0), move |ctx| {
            let out = ctx.write::<T>(n)?;
            let inputs: Vec<&[T]> = (0..n).map(|k| ctx.read::<T>(k)).collect::<Result<_, _>>()?;
            if let Some((k, x)) = inputs.iter().enumerate().find(|(_, x)| x.len() != out.len()) {
                return Err(KernelError::msg(format!(
                    "input {k} has {} elements, the output {}",
                    x.len(),
                    out.len()
                )));
            }
            expr.eval(&inputs, out);
            Ok(())
        });
        if n > 0 {
            match T::ELEM {
                ElemType::F32 => kernel = kernel.with_gpu(self.gpu_impl("f32")),
                // Only on GPUs with SHADER_F64, and only with the functions they have in f64.
                ElemType::F64 if !self.needs_f32_functions() => kernel = kernel.with_gpu(self.gpu_impl("f64")),
                _ => {}
            }
        }
        let kernel = Arc::new(kernel);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, kernel.clone());
        Ok(kernel)
    }
}

/// Expression kernels by expression text and element type.
type KernelCache = HashMap<(String, ElemType), Arc<Kernel>>;

/// Elements evaluated at once on CPUs: each node of the tree is a loop over this many.
pub const CHUNK: usize = 256;

fn unary(f: Unary, a: f64) -> f64 {
    match f {
        Unary::Neg => -a,
        Unary::Abs => a.abs(),
        Unary::Sqrt => a.sqrt(),
        Unary::Exp => a.exp(),
        Unary::Ln => a.ln(),
        Unary::Tanh => a.tanh(),
    }
}

fn binary(f: Binary, a: f64, b: f64) -> f64 {
    match f {
        Binary::Add => a + b,
        Binary::Sub => a - b,
        Binary::Mul => a * b,
        Binary::Div => a / b,
        Binary::Min => a.min(b),
        Binary::Max => a.max(b),
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Input(i) => write!(f, "x{i}"),
            Expr::Const(c) => write!(f, "{c}"),
            Expr::Unary(u, a) => {
                let name = match u {
                    Unary::Neg => return write!(f, "(-{a})"),
                    Unary::Abs => "abs",
                    Unary::Sqrt => "sqrt",
                    Unary::Exp => "exp",
                    Unary::Ln => "ln",
                    Unary::Tanh => "tanh",
                };
                write!(f, "{name}({a})")
            }
            Expr::Binary(b, x, y) => match b {
                Binary::Add => write!(f, "({x} + {y})"),
                Binary::Sub => write!(f, "({x} - {y})"),
                Binary::Mul => write!(f, "({x} * {y})"),
                Binary::Div => write!(f, "({x} / {y})"),
                Binary::Min => write!(f, "min({x}, {y})"),
                Binary::Max => write!(f, "max({x}, {y})"),
            },
        }
    }
}

impl From<f64> for Expr {
    fn from(v: f64) -> Expr {
        Expr::Const(v)
    }
}

macro_rules! binop {
    ($trait:ident, $method:ident, $op:ident) => {
        impl<R: Into<Expr>> std::ops::$trait<R> for Expr {
            type Output = Expr;
            fn $method(self, rhs: R) -> Expr {
                Expr::Binary(Binary::$op, Box::new(self), Box::new(rhs.into()))
            }
        }
    };
}
binop!(Add, add, Add);
binop!(Sub, sub, Sub);
binop!(Mul, mul, Mul);
binop!(Div, div, Div);

impl std::ops::Neg for Expr {
    type Output = Expr;
    fn neg(self) -> Expr {
        self.unary(Unary::Neg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_in_chunks_matches_element_by_element_in_both_types() {
        let e = ((Expr::input(0) * 2.0 - Expr::input(1)).abs().sqrt() + Expr::input(1).tanh()).max(0.5) / 3.0;
        let n = CHUNK * 2 + 17;
        let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin() * 4.0).collect();
        let y: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
        let want: Vec<f64> = (0..n).map(|i| e.eval_one(&[x[i], y[i]])).collect();
        let mut out = vec![0.0f64; n];
        e.eval::<f64>(&[&x, &y], &mut out);
        assert!(out.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12));
        let (x32, y32): (Vec<f32>, Vec<f32>) = (
            x.iter().map(|&v| v as f32).collect(),
            y.iter().map(|&v| v as f32).collect(),
        );
        let mut out32 = vec![0.0f32; n];
        e.eval::<f32>(&[&x32, &y32], &mut out32);
        assert!(out32.iter().zip(&want).all(|(a, b)| (f64::from(*a) - b).abs() < 1e-5));
    }

    #[test]
    fn composition_and_checks() {
        let f = Expr::input(0) + Expr::input(1);
        let g = f.substitute(&[Expr::input(0) * 2.0, Expr::input(1).shift_inputs(1)]);
        assert_eq!(g.to_string(), "((x0 * 2) + x2)");
        assert_eq!((g.inputs(), g.ops()), (3, 2));
        assert!(Expr::input(7).check().unwrap_err().contains("8 inputs"));
        assert!((Expr::input(0) * f64::NAN).check().unwrap_err().contains("not finite"));
        let k1 = g.kernel::<f32>().unwrap();
        let k2 = g.kernel::<f32>().unwrap();
        assert!(Arc::ptr_eq(&k1, &k2), "cached");
        let k64 = g.kernel::<f64>().unwrap();
        assert!(k1.has_gpu() && k1.gpu_impl().unwrap().requires.is_empty());
        assert_eq!(k64.gpu_impl().unwrap().requires, vec!["f64".to_string()]);
        assert!(
            !g.clone().exp().kernel::<f64>().unwrap().has_gpu(),
            "no exp in f64 on GPUs"
        );
        assert!(g.wgsl("f32").contains("x2[i]") && g.wgsl("f32").contains("f32(2.0)"));
        assert!(k64.gpu_impl().unwrap().source.contains("array<f64>"));
    }
}
