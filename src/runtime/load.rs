//! Graph files materialised on a runtime: `GraphSpec::build` (stored data created in the
//! runtime's store, kernels from its registry) and `Checks::evaluate` (a file's checks read
//! from the store after a run). They live here, on the runtime's side, so that `graph` does
//! not import the runtime (ARCHITECTURE.md, Layers); the simulator's counterpart,
//! `GraphSpec::build_virtual`, stays in `graph`.

use std::sync::Arc;

use hexec_kernels::ElemType;

use super::{DataError, Runtime};
use crate::graph::formats::{check, BuildOptions, CheckOutcome, Checks, DataSpec, GraphSpec, LoadError, Target};
use crate::graph::Graph;

impl GraphSpec {
    /// Builds the graph on `rt`: stored data are created in its store (zeroed or
    /// initialised), kernels are looked up in its registry. Tasks are added in a stable
    /// topological order of `after` (file order where free), and data accesses infer
    /// dependencies in that order.
    pub fn build(&self, rt: &Runtime, opts: &BuildOptions) -> Result<Graph, LoadError> {
        self.build_checked(rt, opts).map(|(g, _)| g)
    }

    /// [`GraphSpec::build`], with the file's checks bound to the data just created: evaluate
    /// them with [`Checks::evaluate`] after a run that completed.
    pub fn build_checked(&self, rt: &Runtime, opts: &BuildOptions) -> Result<(Graph, Checks), LoadError> {
        let (g, data) = self.build_with(&RuntimeTarget(rt), opts)?;
        let checks =
            check::bind(self, &data).map_err(|(pos, reason)| LoadError::new(&self.file_label(), pos, reason))?;
        Ok((g, checks))
    }
}

impl Checks {
    /// Evaluates every check on `rt`'s data (after a run that completed).
    pub fn evaluate(&self, rt: &Runtime) -> Result<Vec<CheckOutcome>, DataError> {
        self.evaluate_with(&|id| rt.read(rt.handle::<f32>(id)))
    }
}

/// A real runtime: its registry and its data store.
struct RuntimeTarget<'a>(&'a Runtime);

impl Target for RuntimeTarget<'_> {
    fn kernel(&self, name: &str) -> Result<Arc<hexec_kernels::Kernel>, String> {
        let rt = self.0;
        rt.registry()
            .get(name)
            .cloned()
            .ok_or_else(|| format!("unknown kernel '{name}' (known: {})", rt.registry().names().join(", ")))
    }

    fn datum(&self, g: &mut Graph, d: &DataSpec) -> Result<crate::graph::DataRef, String> {
        let rt = self.0;
        if d.temp && (d.init.is_some() || d.read_only) {
            return Err("a temporary (\"temp\") starts zeroed and is written by tasks: it cannot have \"init\" or \"read_only\"".into());
        }
        match (&d.elem, d.len, d.bytes) {
            (None, None, Some(bytes)) => {
                if d.init.is_some() {
                    return Err("a size-only datum (\"bytes\") cannot have \"init\"".into());
                }
                // Size-only data carry no flag a submit could check: refuse rather than ignore.
                if d.read_only {
                    return Err("a size-only datum (\"bytes\") cannot be \"read_only\" (only stored data can)".into());
                }
                Ok(g.virtual_data(d.name.clone(), bytes).into())
            }
            (Some(ty), Some(len), None) => {
                let elem = ElemType::parse(ty)
                    .ok_or_else(|| format!("unknown element type '{ty}' (known: u8, u32, i32, u64, i64, f32, f64)"))?;
                let len = usize::try_from(len).map_err(|_| format!("len {len} is too large for this platform"))?;
                if d.temp {
                    // Allocated only mid-run, when first used: refuse it here, naming the file,
                    // as submit would (for graphs built in code).
                    rt.engine
                        .check_datum_size(&d.name, elem, len)
                        .map_err(|e| e.to_string())?;
                    return Ok(g.temp_of(d.name.clone(), elem, len).into());
                }
                if let Some(init) = &d.init {
                    init.check(elem, len)?;
                }
                // The contents are written into the datum's own buffer before it is stored, so
                // that a read-only datum gets them and nothing else is allocated on the way.
                let init = d.init.as_ref();
                let id = rt
                    .engine
                    .data_filled(d.name.clone(), elem, len, d.read_only, &mut |out| {
                        init.map_or(Ok(()), |i| i.write_into(elem, out))
                    })
                    .map_err(|e| e.to_string())?;
                Ok(crate::graph::DataRef::Stored { rt: rt.engine.id(), id })
            }
            _ => Err("declare either \"type\" and \"len\" (stored data) or \"bytes\" (size only)".into()),
        }
    }
}
