//! Elementwise operations and their fusion.
//!
//! An elementwise operation on matrices does not run when it is written: it returns a
//! [`Lazy`], an expression ([`Expr`]) over the matrices it reads. Further elementwise
//! operations extend the expression; [`Lazy::eval`] submits it, one task per tile. With
//! fusion (the default, [`crate::RuntimeBuilder::fusion`]) the whole chain is one kernel per
//! tile — one generated WGSL module on a GPU, one pass over the elements on a CPU — with no
//! intermediate arrays; without it, each operation is its own task and its own array, as an
//! eager library would run it. Both give the same values: each operation rounds to `T` as it
//! goes either way (the CPU evaluation works in `T`, node by node).
//!
//! A `Lazy` borrows the matrices it reads, so none of them can be dropped (its tiles freed)
//! before it is evaluated.
//!
//! ```
//! use hexec::array::Matrix;
//! let rt = hexec::Runtime::builder().build()?;
//! let a = Matrix::<f32>::from_fn(&rt, "a", 3, 5, 2, |i, j| (i + j) as f32)?;
//! let b = Matrix::<f32>::from_fn(&rt, "b", 3, 5, 2, |i, _| i as f32)?;
//! // One task per tile computes sqrt(2a + b) + 1.
//! let c = ((&a * 2.0 + &b).sqrt() + 1.0).eval()?;
//! assert_eq!(c.to_vec()?[6], ((2.0f32 * 2.0 + 1.0).sqrt() + 1.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::rc::Rc;

use super::{ArrayError, Matrix};
use crate::kernels::expr::{Expr, MAX_INPUTS};
use crate::kernels::Scalar;

/// A matrix an expression reads: the caller's, or an intermediate made on the way.
#[derive(Clone)]
enum Input<'a, 'rt, T: Scalar> {
    Borrowed(&'a Matrix<'rt, T>),
    Owned(Rc<Matrix<'rt, T>>),
}

impl<'rt, T: Scalar> Input<'_, 'rt, T> {
    fn matrix(&self) -> &Matrix<'rt, T> {
        match self {
            Input::Borrowed(m) => m,
            Input::Owned(m) => m,
        }
    }
}

/// An elementwise expression over matrices, not yet submitted (see the module docs).
#[derive(Clone)]
pub struct Lazy<'a, 'rt, T: Scalar> {
    inputs: Vec<Input<'a, 'rt, T>>,
    expr: Expr,
    /// Why the expression cannot be evaluated (shapes that differ), found while building it.
    error: Option<String>,
}

impl<T: Scalar> std::fmt::Debug for Lazy<'_, '_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inputs.iter().map(|i| i.matrix().name()).collect();
        f.debug_struct("Lazy")
            .field("expr", &self.expr.to_string())
            .field("inputs", &names)
            .finish_non_exhaustive()
    }
}

/// What an elementwise operation takes: a matrix, an expression, or a constant (`f64`,
/// whatever the element type: `&a * 2.0` on an f32 matrix).
pub trait IntoLazy<'a, 'rt, T: Scalar> {
    /// As an expression.
    fn into_lazy(self) -> Lazy<'a, 'rt, T>;
}

impl<'a, 'rt, T: Scalar> IntoLazy<'a, 'rt, T> for Lazy<'a, 'rt, T> {
    fn into_lazy(self) -> Lazy<'a, 'rt, T> {
        self
    }
}

impl<'a, 'rt, T: Scalar> IntoLazy<'a, 'rt, T> for &'a Matrix<'rt, T> {
    fn into_lazy(self) -> Lazy<'a, 'rt, T> {
        Lazy {
            inputs: vec![Input::Borrowed(self)],
            expr: Expr::input(0),
            error: None,
        }
    }
}

impl<'a, 'rt, T: Scalar> IntoLazy<'a, 'rt, T> for f64 {
    fn into_lazy(self) -> Lazy<'a, 'rt, T> {
        Lazy {
            inputs: Vec::new(),
            expr: Expr::constant(self),
            error: None,
        }
    }
}

impl<'a, 'rt, T: Scalar> Lazy<'a, 'rt, T> {
    /// `f` of this expression.
    pub fn map(mut self, f: impl FnOnce(Expr) -> Expr) -> Self {
        self.expr = f(self.expr);
        self
    }

    /// `f` of this expression and `other`'s, elementwise; their shapes must match.
    pub fn zip(self, other: impl IntoLazy<'a, 'rt, T>, f: impl FnOnce(Expr, Expr) -> Expr) -> Self {
        let other = other.into_lazy();
        let mut inputs = self.inputs;
        let mut error = self.error.or(other.error);
        // `other`'s inputs after ours, the same matrix once.
        let mut renumber = Vec::with_capacity(other.inputs.len());
        for input in other.inputs {
            let m = input.matrix() as *const Matrix<'rt, T>;
            let at = match inputs.iter().position(|i| std::ptr::eq(i.matrix(), m)) {
                Some(at) => at,
                None => {
                    if let (None, Some(first)) = (&error, inputs.first()) {
                        error = shape_mismatch(first.matrix(), input.matrix());
                    }
                    inputs.push(input);
                    inputs.len() - 1
                }
            };
            renumber.push(Expr::input(at as u8));
        }
        let rhs = other.expr.substitute(&renumber);
        Lazy {
            inputs,
            expr: f(self.expr, rhs),
            error,
        }
    }

    /// `√self`
    pub fn sqrt(self) -> Self {
        self.map(Expr::sqrt)
    }

    /// `|self|`
    pub fn abs(self) -> Self {
        self.map(Expr::abs)
    }

    /// `e^self`
    pub fn exp(self) -> Self {
        self.map(Expr::exp)
    }

    /// `ln self`
    pub fn ln(self) -> Self {
        self.map(Expr::ln)
    }

    /// `tanh self`
    pub fn tanh(self) -> Self {
        self.map(Expr::tanh)
    }

    /// The larger of the two, elementwise.
    pub fn max(self, other: impl IntoLazy<'a, 'rt, T>) -> Self {
        self.zip(other, Expr::max)
    }

    /// The smaller of the two, elementwise.
    pub fn min(self, other: impl IntoLazy<'a, 'rt, T>) -> Self {
        self.zip(other, Expr::min)
    }

    /// The expression (over inputs `x0`, `x1`, ... in first-use order).
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Submits it: one fused task per tile when the runtime fuses (the default), else one
    /// task per operation (see the module docs).
    pub fn eval(self) -> Result<Matrix<'rt, T>, ArrayError> {
        let fuse = self.first()?.runtime().fusion();
        self.eval_with(fuse)
    }

    /// [`Lazy::eval`], fused or not whatever the runtime says (for comparisons).
    pub fn eval_with(self, fuse: bool) -> Result<Matrix<'rt, T>, ArrayError> {
        if let Some(message) = &self.error {
            return Err(ArrayError::Shape {
                op: "elementwise",
                message: message.clone(),
            });
        }
        let shape = self.first()?;
        let _together = shape.runtime().hold_submissions();
        match self.eval_node(&self.expr, fuse)? {
            Input::Owned(m) => Ok(Rc::try_unwrap(m).unwrap_or_else(|_| unreachable!("the result is held once"))),
            Input::Borrowed(m) => m.copy(),
        }
    }

    fn first(&self) -> Result<&Matrix<'rt, T>, ArrayError> {
        self.inputs.first().map(Input::matrix).ok_or_else(|| ArrayError::Shape {
            op: "elementwise",
            message: "the expression reads no matrix (a constant has no shape)".into(),
        })
    }

    /// Evaluates `e`: with `fuse`, as one task per tile when the matrices it reads fit one
    /// kernel ([`MAX_INPUTS`]); else (or when they do not fit) one task per operation, its
    /// operands evaluated first. Constant subexpressions stay inside their parent's task; a
    /// bare input is the input itself, no task.
    fn eval_node(&self, e: &Expr, fuse: bool) -> Result<Input<'a, 'rt, T>, ArrayError> {
        let used = used_inputs(e);
        if let Expr::Input(i) = e {
            return Ok(self.inputs[*i as usize].clone());
        }
        if used.is_empty() || (fuse && used.len() <= MAX_INPUTS) {
            // The whole subtree in one task, over the inputs it reads renumbered (none for a
            // constant expression, which takes the shape of the expression's matrices).
            let mut renumber = vec![Expr::constant(0.0); self.inputs.len()];
            for (k, &i) in used.iter().enumerate() {
                renumber[i] = Expr::input(k as u8);
            }
            let inputs: Vec<Input<'a, 'rt, T>> = used.iter().map(|&i| self.inputs[i].clone()).collect();
            return self.submit(&inputs, &e.substitute(&renumber));
        }
        let mut inputs = Vec::new();
        let mut operand = |x: &Expr| -> Result<Expr, ArrayError> {
            if used_inputs(x).is_empty() {
                return Ok(x.clone());
            }
            inputs.push(self.eval_node(x, fuse)?);
            Ok(Expr::input(inputs.len() as u8 - 1))
        };
        let expr = match e {
            Expr::Unary(f, a) => Expr::Unary(*f, Box::new(operand(a)?)),
            Expr::Binary(f, a, b) => {
                let (a, b) = (operand(a)?, operand(b)?);
                Expr::Binary(*f, Box::new(a), Box::new(b))
            }
            Expr::Input(_) | Expr::Const(_) => unreachable!("leaves are handled above"),
        };
        self.submit(&inputs, &expr)
    }

    /// `expr` over `inputs` into a new matrix of the expression's shape.
    fn submit(&self, inputs: &[Input<'a, 'rt, T>], expr: &Expr) -> Result<Input<'a, 'rt, T>, ArrayError> {
        let shape = self.first()?;
        let names: Vec<&str> = inputs.iter().map(|i| i.matrix().name()).collect();
        let name = Matrix::<T>::result_name("map", &names);
        Ok(Input::Owned(Rc::new(submit_expr(shape, inputs, expr, name)?)))
    }
}

/// The input indices `e` reads, ascending.
fn used_inputs(e: &Expr) -> Vec<usize> {
    fn walk(e: &Expr, out: &mut Vec<usize>) {
        match e {
            Expr::Input(i) => {
                if !out.contains(&(*i as usize)) {
                    out.push(*i as usize);
                }
            }
            Expr::Const(_) => {}
            Expr::Unary(_, a) => walk(a, out),
            Expr::Binary(_, a, b) => {
                walk(a, out);
                walk(b, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out.sort_unstable();
    out
}

/// Why two matrices cannot be combined elementwise, if they cannot.
fn shape_mismatch<T: Scalar>(a: &Matrix<'_, T>, b: &Matrix<'_, T>) -> Option<String> {
    let same = a.rows() == b.rows() && a.cols() == b.cols() && a.tile_shape() == b.tile_shape();
    (!same).then(|| {
        format!(
            "'{}' is {}×{} in tiles of {}×{} and '{}' is {}×{} in tiles of {}×{}: elementwise operations need the same shape and tiles",
            a.name(),
            a.rows(),
            a.cols(),
            a.tile_shape().0,
            a.tile_shape().1,
            b.name(),
            b.rows(),
            b.cols(),
            b.tile_shape().0,
            b.tile_shape().1
        )
    })
}

/// Submits `expr` over `inputs` (of `shape`'s shape and tiles; none for a constant
/// expression), one task per tile, into a new matrix named `name`. A zero tile (no datum) of
/// an input is a constant 0 in that tile's task.
fn submit_expr<'rt, T: Scalar>(
    shape: &Matrix<'rt, T>,
    inputs: &[Input<'_, 'rt, T>],
    expr: &Expr,
    name: String,
) -> Result<Matrix<'rt, T>, ArrayError> {
    let (tr, tc) = shape.tile_shape();
    let mut out = shape.like(name, shape.rows(), shape.cols(), tr, tc);
    let rt = shape.runtime();
    for ti in 0..out.grid_rows() {
        for tj in 0..out.grid_cols() {
            // This tile's inputs: those with a datum, renumbered; the others are zeros.
            let mut renumber = Vec::with_capacity(inputs.len());
            let mut data = Vec::with_capacity(inputs.len());
            for input in inputs {
                match input.matrix().tile(ti, tj) {
                    Some(d) => {
                        renumber.push(Expr::input(data.len() as u8));
                        data.push(d);
                    }
                    None => renumber.push(Expr::constant(0.0)),
                }
            }
            let tile_expr = expr.substitute(&renumber);
            let kernel = tile_expr.kernel::<T>().map_err(|message| ArrayError::Shape {
                op: "elementwise",
                message,
            })?;
            let dst = out.tile_or_zeros(ti, tj);
            let mut task = rt.task(&kernel).name(format!("map {}[{ti},{tj}]", out.name()));
            for d in data {
                task = task.read(d);
            }
            let h = task.write(dst).submit()?;
            out.wrote(ti, tj, h);
        }
    }
    Ok(out)
}

impl<'rt, T: Scalar> Matrix<'rt, T> {
    /// This matrix as the start of an elementwise expression.
    pub fn lazy(&self) -> Lazy<'_, 'rt, T> {
        self.into_lazy()
    }

    /// `f` of each element (an expression in `x`, e.g. `|x| x.sqrt() * 2.0`), not yet run.
    pub fn map(&self, f: impl FnOnce(Expr) -> Expr) -> Lazy<'_, 'rt, T> {
        self.lazy().map(f)
    }

    /// `f` of the elements of this matrix and `other`, pairwise, not yet run.
    pub fn zip<'a>(&'a self, other: impl IntoLazy<'a, 'rt, T>, f: impl FnOnce(Expr, Expr) -> Expr) -> Lazy<'a, 'rt, T> {
        self.lazy().zip(other, f)
    }
}

macro_rules! operator {
    ($trait:ident, $method:ident) => {
        impl<'a, 'rt, T: Scalar, R: IntoLazy<'a, 'rt, T>> std::ops::$trait<R> for Lazy<'a, 'rt, T> {
            type Output = Lazy<'a, 'rt, T>;
            fn $method(self, rhs: R) -> Lazy<'a, 'rt, T> {
                self.zip(rhs, |a, b| std::ops::$trait::$method(a, b))
            }
        }
        impl<'a, 'rt, T: Scalar, R: IntoLazy<'a, 'rt, T>> std::ops::$trait<R> for &'a Matrix<'rt, T> {
            type Output = Lazy<'a, 'rt, T>;
            fn $method(self, rhs: R) -> Lazy<'a, 'rt, T> {
                self.lazy().zip(rhs, |a, b| std::ops::$trait::$method(a, b))
            }
        }
    };
}
operator!(Add, add);
operator!(Sub, sub);
operator!(Mul, mul);
operator!(Div, div);

/// A constant on the left: `2.0 * &a`, `1.0 - expr`. Constants are `f64` in either element
/// type (an `f32` literal would make every unsuffixed one ambiguous).
macro_rules! constant_first {
    ($c:ty, $trait:ident, $method:ident) => {
        impl<'a, 'rt, T: Scalar> std::ops::$trait<&'a Matrix<'rt, T>> for $c {
            type Output = Lazy<'a, 'rt, T>;
            fn $method(self, rhs: &'a Matrix<'rt, T>) -> Lazy<'a, 'rt, T> {
                IntoLazy::<T>::into_lazy(self).zip(rhs, |a, b| std::ops::$trait::$method(a, b))
            }
        }
        impl<'a, 'rt, T: Scalar> std::ops::$trait<Lazy<'a, 'rt, T>> for $c {
            type Output = Lazy<'a, 'rt, T>;
            fn $method(self, rhs: Lazy<'a, 'rt, T>) -> Lazy<'a, 'rt, T> {
                IntoLazy::<T>::into_lazy(self).zip(rhs, |a, b| std::ops::$trait::$method(a, b))
            }
        }
    };
}
constant_first!(f64, Add, add);
constant_first!(f64, Sub, sub);
constant_first!(f64, Mul, mul);
constant_first!(f64, Div, div);

impl<'a, 'rt, T: Scalar> std::ops::Neg for Lazy<'a, 'rt, T> {
    type Output = Lazy<'a, 'rt, T>;
    fn neg(self) -> Lazy<'a, 'rt, T> {
        self.map(|e| -e)
    }
}
