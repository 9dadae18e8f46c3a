//! The kernel type: a name, a signature and implementations, and why a kernel fails.
//!
//! A [`KernelError`] is deterministic (the task fails at once) unless it is
//! [`KernelError::transient`]; a panic fails its task at once unless the kernel
//! ([`Kernel::retry_panics`]) or the runtime asks for panics to be retried.

use std::fmt;
use std::sync::Arc;

use crate::context::CpuContext;
use crate::gpu::GpuImpl;
use crate::types::{Access, ElemType};

/// A CPU implementation. Returning `Err` (or panicking) fails the task.
pub type CpuFn = Arc<dyn Fn(&CpuContext<'_>) -> Result<(), KernelError> + Send + Sync>;

/// What a kernel expects of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperandSpec {
    /// Required access mode.
    pub access: Access,
    /// Required element type; `None` accepts any.
    pub elem: Option<ElemType>,
}

/// Operands and parameters a kernel accepts. Checked when a graph is submitted, so that a
/// mismatch is an error naming the task instead of a failure deep inside a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    /// `None`: any number of operands of any type and mode (synthetic kernels).
    pub operands: Option<Vec<OperandSpec>>,
    /// Fewest scalar parameters accepted.
    pub min_params: usize,
    /// Most scalar parameters accepted.
    pub max_params: usize,
}

impl Signature {
    /// Any operands, `min..=max` parameters.
    pub fn any(min_params: usize, max_params: usize) -> Self {
        Signature {
            operands: None,
            min_params,
            max_params,
        }
    }

    /// Exactly these operands, exactly `params` parameters.
    pub fn exact(operands: &[(Access, ElemType)], params: usize) -> Self {
        Signature {
            operands: Some(
                operands
                    .iter()
                    .map(|&(access, elem)| OperandSpec {
                        access,
                        elem: Some(elem),
                    })
                    .collect(),
            ),
            min_params: params,
            max_params: params,
        }
    }

    /// Checks operand modes/types and the parameter count; the message says what differs.
    pub fn check(&self, operands: &[(Access, Option<ElemType>)], params: usize) -> Result<(), String> {
        if params < self.min_params || params > self.max_params {
            let want = if self.min_params == self.max_params {
                format!("{}", self.min_params)
            } else {
                format!("{} to {}", self.min_params, self.max_params)
            };
            return Err(format!("takes {want} parameter(s), {params} given"));
        }
        let Some(specs) = &self.operands else {
            return Ok(());
        };
        if specs.len() != operands.len() {
            return Err(format!("takes {} operand(s), {} given", specs.len(), operands.len()));
        }
        for (i, (spec, &(access, elem))) in specs.iter().zip(operands).enumerate() {
            if spec.access != access {
                return Err(format!(
                    "operand {i} must be accessed as '{}', not '{access}'",
                    spec.access
                ));
            }
            match (spec.elem, elem) {
                (Some(want), Some(got)) if want != got => {
                    return Err(format!("operand {i} must hold {want}, not {got}"));
                }
                (Some(want), None) => {
                    return Err(format!(
                        "operand {i} must hold {want} data, but the datum has no storage (size only)"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A named kernel with its implementations.
#[derive(Clone)]
pub struct Kernel {
    name: String,
    signature: Signature,
    cpu: Option<CpuFn>,
    gpu: Option<Arc<GpuImpl>>,
    retry_panics: bool,
}

impl Kernel {
    /// A kernel with a CPU implementation.
    pub fn cpu<F>(name: impl Into<String>, signature: Signature, f: F) -> Self
    where
        F: Fn(&CpuContext<'_>) -> Result<(), KernelError> + Send + Sync + 'static,
    {
        Kernel {
            name: name.into(),
            signature,
            cpu: Some(Arc::new(f)),
            gpu: None,
            retry_panics: false,
        }
    }

    /// Whether a panic of this kernel is tried again (default: no, as Ray's
    /// `retry_exceptions`: a panic is a bug that will most often recur; a kernel whose panics
    /// come from something passing says so here, or the run does with
    /// `RuntimeBuilder::retry_panics`).
    pub fn retry_panics(mut self, on: bool) -> Self {
        self.retry_panics = on;
        self
    }

    /// Whether its panics are tried again.
    pub fn retries_panics(&self) -> bool {
        self.retry_panics
    }

    /// Adds (or replaces) the GPU implementation.
    pub fn with_gpu(mut self, gpu: GpuImpl) -> Self {
        self.gpu = Some(Arc::new(gpu));
        self
    }

    /// Adds (or replaces) the CPU implementation.
    pub fn with_cpu<F>(mut self, f: F) -> Self
    where
        F: Fn(&CpuContext<'_>) -> Result<(), KernelError> + Send + Sync + 'static,
    {
        self.cpu = Some(Arc::new(f));
        self
    }

    /// A binary elementwise map over f32, `z[i] = f(x[i], y[i])`, given as a WGSL expression
    /// in `x` and `y` for GPUs and as a Rust function for CPUs (operands: read x, read y,
    /// write z, all of one length).
    pub fn map2(name: impl Into<String>, wgsl_expr: &str, cpu: fn(f32, f32) -> f32) -> Self {
        use crate::types::ElemType::F32;
        let sig = Signature::exact(&[(Access::Read, F32), (Access::Read, F32), (Access::Write, F32)], 0);
        Kernel::cpu(name, sig, move |ctx| {
            let (x, y, z) = (ctx.read::<f32>(0)?, ctx.read::<f32>(1)?, ctx.write::<f32>(2)?);
            if x.len() != z.len() || y.len() != z.len() {
                return Err(KernelError::msg(format!(
                    "lengths differ: x {}, y {}, z {}",
                    x.len(),
                    y.len(),
                    z.len()
                )));
            }
            for ((z, &x), &y) in z.iter_mut().zip(x).zip(y) {
                *z = cpu(x, y);
            }
            Ok(())
        })
        .with_gpu(crate::gpu::map2(wgsl_expr))
    }

    /// A kernel with no implementation yet; add them with the `with_*` methods. A kernel with
    /// no implementation at all can run nowhere and is refused at submit.
    pub fn declare(name: impl Into<String>, signature: Signature) -> Self {
        Kernel {
            name: name.into(),
            signature,
            cpu: None,
            gpu: None,
            retry_panics: false,
        }
    }

    /// Its name, unique within a registry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it accepts.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The CPU implementation, if any.
    pub fn cpu_impl(&self) -> Option<&CpuFn> {
        self.cpu.as_ref()
    }

    /// Whether it can run on a CPU core.
    pub fn has_cpu(&self) -> bool {
        self.cpu.is_some()
    }

    /// The GPU implementation, if any.
    pub fn gpu_impl(&self) -> Option<&Arc<GpuImpl>> {
        self.gpu.as_ref()
    }

    /// Whether it can run on a GPU.
    pub fn has_gpu(&self) -> bool {
        self.gpu.is_some()
    }
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name)
            .field("signature", &self.signature)
            .field("cpu", &self.cpu.is_some())
            .field("gpu", &self.gpu.is_some())
            .finish()
    }
}

/// Why a kernel failed. The runtime adds the task, kernel and worker names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// An operand index past the task's operands.
    #[error("operand {index} requested but the task has {count}")]
    MissingOperand {
        /// The index asked for.
        index: usize,
        /// The operands the task has.
        count: usize,
    },
    /// A parameter index past the task's parameters.
    #[error("parameter {index} requested but the task has {count}")]
    MissingParam {
        /// The index asked for.
        index: usize,
        /// The parameters the task has.
        count: usize,
    },
    /// An operand read as another element type than it holds.
    #[error("operand {index} holds {actual}, the kernel asked for {expected}")]
    TypeMismatch {
        /// The operand.
        index: usize,
        /// The type the kernel asked for.
        expected: ElemType,
        /// The type the operand holds.
        actual: ElemType,
    },
    /// An operand borrowed in a mode its declared access does not allow.
    #[error("operand {index} is declared '{declared}' but the kernel asked to {wanted:?} it")]
    AccessMismatch {
        /// The operand.
        index: usize,
        /// The access the kernel asked for.
        wanted: Access,
        /// The access the signature declares.
        declared: Access,
    },
    /// An operand borrowed twice where one borrow is mutable.
    #[error("operand {index} is already borrowed in a conflicting way")]
    AlreadyBorrowed {
        /// The operand.
        index: usize,
    },
    /// An operand without storage (a size-only datum) was borrowed.
    #[error("operand {index} has no storage (a size-only datum)")]
    VirtualOperand {
        /// The operand.
        index: usize,
    },
    /// A failure that will happen again with the same inputs (the default for messages).
    #[error("{0}")]
    Message(String),
    /// A failure another attempt may not meet (a resource that was busy, a flaky device, an
    /// I/O hiccup): the runtime tries the task again, up to its retry limit.
    #[error("{0}")]
    Transient(String),
}

impl KernelError {
    /// A free-form error that will recur: the task fails at once, without retries.
    pub fn msg(m: impl Into<String>) -> Self {
        KernelError::Message(m.into())
    }

    /// A free-form error that another attempt may not meet: the task is tried again.
    pub fn transient(m: impl Into<String>) -> Self {
        KernelError::Transient(m.into())
    }

    /// Whether trying again may help. Operand mismatches and plain messages are
    /// deterministic: retrying them only repeats the work and the error.
    pub fn is_transient(&self) -> bool {
        matches!(self, KernelError::Transient(_))
    }
}

/// What a caught panic says: its message when it carries one (`&str` or `String`, as
/// `panic!` makes), else a note that it carries none. For the runtime's reports of panicking
/// kernels and of its own threads.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
