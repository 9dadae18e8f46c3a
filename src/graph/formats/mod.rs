//! Graph files: the native hexec JSON format ([`GraphSpec`], documented in
//! `docs/graph-format.md`), WfCommons workflow instances (schema 1.x), STG task graphs, the
//! Dask graph dumps in `shared/workloads/dask` and the tiled-Cholesky DAG files
//! ([`cholesky`], size-only tiles, for the simulator). Files over [`MAX_FILE_BYTES`], before
//! or after gzip decompression, are refused.
//!
//! Every loader produces a [`GraphSpec`] (pure parsing, no runtime needed); [`GraphSpec::build`]
//! (written in `runtime/load.rs`: `graph` does not import the runtime) turns it into a [`Graph`]
//! against a runtime (creating stored data, resolving kernel
//! names). Every error names the file, the position (line and column for syntax errors, a
//! path such as `tasks[12] ('mProject_3')` for content errors) and the reason.
//!
//! Replayed tasks run the `spin` kernel for their recorded duration times the time scale.

pub(crate) mod check;
pub mod cholesky;
mod dask;
mod stg;
mod wfcommons;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use hexec_kernels::{Access, ElemType};
use serde::{Deserialize, Serialize};

pub use check::{CheckOutcome, CheckSpec, Checks};

use super::{Graph, TaskId};
use crate::topology::DeviceKind;

/// The native format's `format` field.
pub const NATIVE_FORMAT: &str = "hexec-graph";
/// The native format's current version.
pub const NATIVE_VERSION: u32 = 1;
/// Largest file a loader reads (after decompression).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A graph file that could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {position}: {reason}")]
pub struct LoadError {
    /// The file, as given.
    pub file: String,
    /// `line 3, column 7`, `tasks[2] ('b')`, or `file` for whole-file problems.
    pub position: String,
    /// What is wrong.
    pub reason: String,
}

impl LoadError {
    /// Control characters in any part (a task named with an escape sequence, a file name
    /// with a newline) are escaped: these messages are printed on terminals.
    pub(crate) fn new(file: &str, position: impl fmt::Display, reason: impl fmt::Display) -> Self {
        let clean = |s: String| crate::limits::escape_controls(&s).into_owned();
        LoadError {
            file: clean(file.to_string()),
            position: clean(position.to_string()),
            reason: clean(reason.to_string()),
        }
    }

    fn json(file: &str, e: &serde_json::Error) -> Self {
        // serde_json's message ends with " at line L column C"; keep the position apart.
        let msg = e.to_string();
        let reason = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        if e.line() > 0 {
            LoadError::new(file, format!("line {}, column {}", e.line(), e.column()), reason)
        } else {
            LoadError::new(file, "file", reason)
        }
    }
}

/// Supported graph file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// hexec's own JSON format.
    Native,
    /// WfCommons (WfFormat 1.x) JSON.
    WfCommons,
    /// Standard Task Graph files.
    Stg,
    /// Dask graph dumps.
    Dask,
    /// Tiled Cholesky DAG files.
    Cholesky,
}

impl Format {
    /// Parses `native` (or `hexec`), `wfcommons` (or `wfformat`), `stg`, `dask`, `cholesky`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "native" | "hexec" => Format::Native,
            "wfcommons" | "wfformat" => Format::WfCommons,
            "stg" => Format::Stg,
            "dask" => Format::Dask,
            "cholesky" => Format::Cholesky,
            _ => return None,
        })
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::parse(s)
            .ok_or_else(|| format!("unknown graph format '{s}' (known: native, wfcommons, stg, dask, cholesky)"))
    }
}

/// A graph as a file describes it: the native format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    /// Always `"hexec-graph"`.
    pub format: String,
    /// Always 1 for now.
    pub version: u32,
    /// The graph's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataSpec>,
    /// The tasks, in a topological order or not (loading orders them).
    pub tasks: Vec<TaskSpec>,
    /// Seconds within which a run should finish (see `Graph::set_deadline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<f64>,
    /// Checks of the results, evaluated after a run that completed (see [`Checks`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub check: Vec<CheckSpec>,
    /// The file it was loaded from (not part of the format; names the file in errors).
    #[serde(skip)]
    pub source: Option<String>,
}

/// A datum: typed and stored (`type` and `len`), or size-only (`bytes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// The datum's name, unique in the file.
    pub name: String,
    /// Element type (`f32`, `u8`, ...) of a stored datum.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub elem: Option<String>,
    /// Element count of a stored datum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// Size of a size-only datum, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Initial contents of a stored datum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    /// Tasks may only read it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// A temporary: zeroed at first use, freed after its last use in a run, not kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub temp: bool,
}

/// Initial contents of a stored datum (default: zeros). Written in place into the datum's
/// buffer ([`Init::write_into`]): a fill of a large datum allocates nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Init {
    /// `{"fill": 1.5}`
    Fill {
        /// The value of every element.
        fill: f64,
    },
    /// `{"spd": {"size": 48, "row": 16, "col": 0, "cols": 16}}`: a block of a symmetric
    /// positive definite matrix (floating-point data only).
    Spd {
        /// The block.
        spd: SpdBlock,
    },
    /// `[1, 2, 3]`, one value per element.
    Values(Vec<f64>),
}

/// The block of `len / cols` rows and `cols` columns at (`row`, `col`) of the `size`×`size`
/// matrix `A[i][j] = 1/(1 + |i − j|) + size·[i = j]` ([`crate::graph::formats::cholesky::matrix_entry`]:
/// symmetric and diagonally dominant, so positive definite), stored row-major. Tiles of it
/// are the input `hexec gen cholesky` factorises, at any size, in a few bytes of file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpdBlock {
    /// The matrix's order.
    pub size: u64,
    /// The block's first row.
    pub row: u64,
    /// The block's first column.
    pub col: u64,
    /// The block's column count.
    pub cols: u64,
}

/// An element type a file's values convert to.
trait FileValue: hexec_kernels::Element {
    /// `x` as this type, or why not (integers must be integral and in range).
    fn from_value(x: f64) -> Result<Self, String>;
    /// Entry `(i, j)` of the `spd` matrix of side `size`; `None` for integer types.
    fn spd(i: usize, j: usize, size: usize) -> Option<Self>;
}

macro_rules! float_value {
    ($($t:ty => $entry:path),*) => {$(
        impl FileValue for $t {
            fn from_value(x: f64) -> Result<Self, String> {
                Ok(x as $t)
            }
            fn spd(i: usize, j: usize, size: usize) -> Option<Self> {
                Some($entry(i, j, size))
            }
        }
    )*};
}
float_value!(f32 => crate::graph::formats::cholesky::matrix_entry, f64 => crate::graph::formats::cholesky::matrix_entry_f64);

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl FileValue for $t {
            fn from_value(x: f64) -> Result<Self, String> {
                if x.fract() != 0.0 || !x.is_finite() {
                    return Err(format!("{x} is not an integer"));
                }
                <$t>::try_from(x as i128).map_err(|_| format!("{x} is out of range"))
            }
            fn spd(_: usize, _: usize, _: usize) -> Option<Self> {
                None
            }
        }
    )*};
}
int_value!(u8, u32, i32, u64, i64);

impl Init {
    /// Whether this init suits `len` elements of `elem`: checked before the datum's memory is
    /// allocated (a wrong count or block, or an `spd` block of integers). Values themselves
    /// (integral, in range) are checked as they are written.
    pub fn check(&self, elem: ElemType, len: usize) -> Result<(), String> {
        match self {
            Init::Fill { .. } => Ok(()),
            Init::Values(v) if v.len() == len => Ok(()),
            Init::Values(v) => Err(format!("init has {} values for {len} elements", v.len())),
            Init::Spd { spd } => {
                if !matches!(elem, ElemType::F32 | ElemType::F64) {
                    return Err(format!("an \"spd\" init needs f32 or f64 data, not {elem}"));
                }
                let SpdBlock { size, row, col, cols } = *spd;
                if cols == 0 || len as u64 % cols != 0 {
                    return Err(format!("an \"spd\" block of {cols} columns cannot hold {len} elements"));
                }
                let rows = len as u64 / cols;
                if row.checked_add(rows).is_none_or(|end| end > size)
                    || col.checked_add(cols).is_none_or(|end| end > size)
                {
                    return Err(format!(
                        "the \"spd\" block of {rows}x{cols} at ({row}, {col}) does not lie within the {size}x{size} matrix"
                    ));
                }
                Ok(())
            }
        }
    }

    /// Writes the initial contents of a datum of `elem` into its bytes `out`, in place (after
    /// [`Init::check`]): a fill converts its value once and fills the buffer.
    pub fn write_into(&self, elem: ElemType, out: &mut [u8]) -> Result<(), String> {
        fn typed<T: FileValue>(init: &Init, out: &mut [u8]) -> Result<(), String> {
            // The store's buffers are 8-byte aligned and hold whole elements.
            let out: &mut [T] = bytemuck::try_cast_slice_mut(out).map_err(|e| format!("datum buffer: {e}"))?;
            match init {
                Init::Fill { fill } => out.fill(T::from_value(*fill)?),
                Init::Values(v) => {
                    for (o, &x) in out.iter_mut().zip(v) {
                        *o = T::from_value(x)?;
                    }
                }
                Init::Spd { spd } => {
                    let (size, row, col, cols) =
                        (spd.size as usize, spd.row as usize, spd.col as usize, spd.cols as usize);
                    for (r, line) in out.chunks_exact_mut(cols).enumerate() {
                        for (c, o) in line.iter_mut().enumerate() {
                            *o = T::spd(row + r, col + c, size).ok_or("an \"spd\" init needs f32 or f64 data")?;
                        }
                    }
                }
            }
            Ok(())
        }
        match elem {
            ElemType::F32 => typed::<f32>(self, out),
            ElemType::F64 => typed::<f64>(self, out),
            ElemType::U8 => typed::<u8>(self, out),
            ElemType::U32 => typed::<u32>(self, out),
            ElemType::I32 => typed::<i32>(self, out),
            ElemType::U64 => typed::<u64>(self, out),
            ElemType::I64 => typed::<i64>(self, out),
            _ => Err(format!("element type {elem} cannot be initialised from a file")),
        }
    }
}

/// A task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The task's name, unique in the file.
    pub name: String,
    /// The kernel's name in the registry.
    pub kernel: String,
    /// Scalar parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<f64>,
    /// `[["x", "r"], ["y", "rw"]]`: datum names and modes (`r`, `w`, `rw`), in operand order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<(String, String)>,
    /// Names of tasks this one runs after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Priority (higher runs first among ready tasks).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Cores the task takes (multi-core CPU tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// `cpu` or `gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only on the worker of this name (`cpu0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// CPU or GPU features the worker must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Only on GPUs with at least this many bytes of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory: Option<u64>,
}

fn is_zero(p: &i32) -> bool {
    *p == 0
}

impl TaskSpec {
    /// A replayed task: `spin` for `seconds`.
    pub fn replay(name: String, seconds: f64) -> Self {
        TaskSpec {
            name,
            kernel: "spin".into(),
            params: vec![seconds],
            access: Vec::new(),
            after: Vec::new(),
            priority: 0,
            cores: None,
            device: None,
            worker: None,
            features: Vec::new(),
            gpu_memory: None,
        }
    }
}

/// How to turn a spec into a graph.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Multiplies the duration parameter of `spin` and `sleep` tasks.
    pub time_scale: f64,
    /// Replace every kernel by `noop` and drop parameters (overhead measurements).
    pub empty_tasks: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            time_scale: 1.0,
            empty_tasks: false,
        }
    }
}

/// Reads a file whole (decompressing gzip), refusing files over [`MAX_FILE_BYTES`] before
/// reading them: a regular file by its size, a pipe or FIFO (`/dev/stdin`, `<(zcat f)`) by
/// reading at most one byte past the limit; devices and directories are refused unopened
/// (`/dev/zero` would be read to the limit for nothing). Gzip is decompressed as it streams
/// from the file, through the same limit, so a small gzip bomb costs at most the limit.
fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    read_file_limited(path, MAX_FILE_BYTES)
}

/// [`read_file`] with a given limit (tests use a small one).
fn read_file_limited(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    let file = path.display().to_string();
    let whole = |reason: String| LoadError::new(&file, "file", reason);
    let too_large = |what: &str| {
        whole(format!(
            "{what} is larger than the {limit}-byte limit ({})",
            human(limit)
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot open: {e}")))?;
    let fifo = {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            meta.file_type().is_fifo()
        }
        #[cfg(not(unix))]
        {
            false
        }
    };
    if !meta.is_file() && !fifo {
        return Err(whole(format!(
            "not a graph file: {} (give a regular file or a pipe)",
            crate::limits::file_kind(&meta)
        )));
    }
    if meta.is_file() && meta.len() > limit {
        return Err(too_large(&format!("the file ({} bytes)", meta.len())));
    }
    let f = std::fs::File::open(path).map_err(|e| whole(format!("cannot open: {e}")))?;
    let mut reader = std::io::BufReader::new(f);
    let gzip = std::io::BufRead::fill_buf(&mut reader)
        .map_err(|e| whole(format!("cannot read: {e}")))?
        .starts_with(&[0x1f, 0x8b]);
    let mut out = Vec::new();
    if gzip {
        #[cfg(not(feature = "gzip"))]
        return Err(whole(
            "gzip-compressed, and this build of hexec has no `gzip` feature: decompress it first".into(),
        ));
        // Streamed: the compressed bytes are never held whole, the decompressed ones only
        // up to one byte past the limit.
        #[cfg(feature = "gzip")]
        {
            flate2::read::GzDecoder::new(reader)
                .take(limit + 1)
                .read_to_end(&mut out)
                .map_err(|e| whole(format!("invalid gzip data: {e}")))?;
            if out.len() as u64 > limit {
                return Err(too_large("the decompressed data"));
            }
        }
    } else {
        reader
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| whole(format!("cannot read: {e}")))?;
        if out.len() as u64 > limit {
            return Err(too_large("the file"));
        }
    }
    Ok(out)
}

/// `bytes` in the largest binary unit that divides it (`1 GiB`), for messages.
fn human(bytes: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

/// Loads a graph file; `format` overrides detection (by content: gzip and JSON keys, or an
/// STG header line).
pub fn load(path: &Path, format: Option<Format>) -> Result<GraphSpec, LoadError> {
    let bytes = read_file(path)?;
    let file = path.display().to_string();
    let mut spec = parse(&file, &bytes, format)?;
    spec.source = Some(file);
    Ok(spec)
}

/// Parses graph file contents; `file` names it in errors.
pub fn parse(file: &str, bytes: &[u8], format: Option<Format>) -> Result<GraphSpec, LoadError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| LoadError::new(file, format!("byte {}", e.valid_up_to()), "the file is not UTF-8 text"))?;
    // Some editors start UTF-8 files with a byte-order mark, which JSON and STG do not
    // allow: skip it rather than report "expected value at line 1 column 1". (Columns of
    // JSON errors on line 1 then count from after it.)
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let format = match format {
        Some(f) => f,
        None => detect(file, text)?,
    };
    match format {
        Format::Stg => stg::parse(file, text),
        Format::Native => {
            let spec: GraphSpec = serde_json::from_str(text).map_err(|e| LoadError::json(file, &e))?;
            if spec.format != NATIVE_FORMAT {
                return Err(LoadError::new(
                    file,
                    "format",
                    format!("expected \"{NATIVE_FORMAT}\", found {:?}", spec.format),
                ));
            }
            if spec.version != NATIVE_VERSION {
                return Err(LoadError::new(
                    file,
                    "version",
                    format!(
                        "version {} is not supported (this hexec reads {NATIVE_VERSION})",
                        spec.version
                    ),
                ));
            }
            Ok(spec)
        }
        Format::WfCommons => wfcommons::parse(file, text),
        Format::Dask => dask::parse(file, text),
        Format::Cholesky => cholesky::parse(file, text),
    }
}

fn detect(file: &str, text: &str) -> Result<Format, LoadError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let first = trimmed.lines().next().unwrap_or("").trim();
        if first.parse::<u64>().is_ok() {
            return Ok(Format::Stg);
        }
        return Err(LoadError::new(
            file,
            "line 1",
            "not a JSON object nor an STG file (whose first line is the task count)",
        ));
    }
    // Look at the top-level keys only, without building the document twice.
    #[derive(Deserialize)]
    struct Keys {
        format: Option<serde::de::IgnoredAny>,
        workflow: Option<serde::de::IgnoredAny>,
        meta: Option<serde::de::IgnoredAny>,
        generator: Option<serde::de::IgnoredAny>,
    }
    let keys: Keys = serde_json::from_str(text).map_err(|e| LoadError::json(file, &e))?;
    Ok(if keys.format.is_some() {
        Format::Native
    } else if keys.workflow.is_some() {
        Format::WfCommons
    } else if keys.meta.is_some() {
        Format::Dask
    } else if keys.generator.is_some() {
        Format::Cholesky
    } else {
        return Err(LoadError::new(
            file,
            "file",
            "unrecognised JSON graph: expected a \"format\" key (native), \"workflow\" (WfCommons), \"meta\" (Dask) or \"generator\" (Cholesky DAG); use --format",
        ));
    })
}

impl GraphSpec {
    /// An empty native spec.
    pub fn new(name: Option<String>) -> Self {
        GraphSpec {
            format: NATIVE_FORMAT.into(),
            version: NATIVE_VERSION,
            name,
            data: Vec::new(),
            tasks: Vec::new(),
            deadline_s: None,
            check: Vec::new(),
            source: None,
        }
    }

    /// The file (or graph) a spec's errors name.
    pub(crate) fn file_label(&self) -> String {
        self.source
            .clone()
            .or_else(|| self.name.clone())
            .unwrap_or_else(|| "graph".into())
    }

    /// Builds the graph for a simulator: every datum becomes size-only (stored data keep
    /// their size in bytes), kernels come from `kernel_of`.
    pub fn build_virtual(
        &self,
        kernel_of: &dyn Fn(&str) -> Arc<hexec_kernels::Kernel>,
        opts: &BuildOptions,
    ) -> Result<Graph, LoadError> {
        // Checks need contents: a simulator only validates them.
        let (g, _) = self.build_with(&VirtualTarget(kernel_of), opts)?;
        check::validate(self).map_err(|(pos, reason)| LoadError::new(&self.file_label(), pos, reason))?;
        Ok(g)
    }

    /// The graph, and the data made for the spec's data by name.
    pub(crate) fn build_with(
        &self,
        target: &dyn Target,
        opts: &BuildOptions,
    ) -> Result<(Graph, HashMap<&str, crate::graph::DataRef>), LoadError> {
        let file = self.file_label();
        let err = |pos: String, reason: String| LoadError::new(&file, pos, reason);
        let task_pos = |i: usize| format!("tasks[{i}] ('{}')", self.tasks[i].name);
        if !(opts.time_scale.is_finite() && opts.time_scale >= 0.0) {
            return Err(err(
                "options".into(),
                format!("time scale must be finite and non-negative, got {}", opts.time_scale),
            ));
        }

        let mut g = Graph::new();
        if let Some(d) = self.deadline_s {
            let d = crate::limits::seconds(d).map_err(|why| err("deadline_s".into(), why))?;
            g.set_deadline(crate::limits::duration(d));
        }
        let mut data: HashMap<&str, crate::graph::DataRef> = HashMap::with_capacity(self.data.len());
        for (i, d) in self.data.iter().enumerate() {
            let pos = format!("data[{i}] ('{}')", d.name);
            let r = target.datum(&mut g, d).map_err(|reason| err(pos.clone(), reason))?;
            if data.insert(d.name.as_str(), r).is_some() {
                return Err(err(pos, "a datum with this name is already declared".into()));
            }
        }

        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.tasks.len());
        for (i, t) in self.tasks.iter().enumerate() {
            if index.insert(t.name.as_str(), i).is_some() {
                return Err(err(task_pos(i), "a task with this name is already declared".into()));
            }
        }
        let mut preds: Vec<Vec<usize>> = Vec::with_capacity(self.tasks.len());
        for (i, t) in self.tasks.iter().enumerate() {
            let mut p = Vec::with_capacity(t.after.len());
            for a in &t.after {
                match index.get(a.as_str()) {
                    Some(&j) => p.push(j),
                    None => {
                        return Err(err(
                            task_pos(i),
                            format!("runs after '{a}', which is not a task of this graph"),
                        ))
                    }
                }
            }
            preds.push(p);
        }
        let order = topological_order(&preds).map_err(|cycle| {
            let names: Vec<&str> = cycle.iter().map(|&i| self.tasks[i].name.as_str()).collect();
            err(task_pos(cycle[0]), format!("dependency cycle: {}", names.join(" -> ")))
        })?;

        let noop = hexec_kernels::builtin::noop();
        let mut ids: Vec<Option<TaskId>> = vec![None; self.tasks.len()];
        for &i in &order {
            let t = &self.tasks[i];
            let resolved;
            let kernel = if opts.empty_tasks {
                &noop
            } else {
                resolved = target.kernel(&t.kernel).map_err(|reason| err(task_pos(i), reason))?;
                &resolved
            };
            let mut b = g
                .task(kernel)
                .name(t.name.clone())
                .priority(t.priority)
                .cores(t.cores.unwrap_or(1));
            if !opts.empty_tasks {
                let scaled = matches!(t.kernel.as_str(), "spin" | "sleep");
                for (k, &p) in t.params.iter().enumerate() {
                    if scaled && k == 0 {
                        // A duration: checked here, where every format's replayed tasks
                        // pass, so that the deadline's prediction and the simulator see
                        // durations only (a negative one made the bound search loop).
                        let secs = p * opts.time_scale;
                        crate::limits::seconds(secs).map_err(|why| {
                            let scale = if opts.time_scale == 1.0 {
                                String::new()
                            } else {
                                format!(" ({p} s times the time scale {})", opts.time_scale)
                            };
                            err(task_pos(i), format!("'{}' duration{scale}: {why}", t.kernel))
                        })?;
                        b = b.param(secs);
                    } else {
                        b = b.param(p);
                    }
                }
            }
            for (name, mode) in &t.access {
                let d = *data
                    .get(name.as_str())
                    .ok_or_else(|| err(task_pos(i), format!("accesses '{name}', which is not a declared datum")))?;
                let m = Access::parse(mode).ok_or_else(|| {
                    err(
                        task_pos(i),
                        format!("access mode '{mode}' for '{name}' is not r, w or rw"),
                    )
                })?;
                b = b.access(d, m);
            }
            for &p in &preds[i] {
                b = b.after(ids[p].expect("predecessors are added first"));
            }
            if let Some(dev) = &t.device {
                b = b.on(DeviceKind::parse(dev)
                    .ok_or_else(|| err(task_pos(i), format!("device '{dev}' is not cpu or gpu")))?);
            }
            if let Some(w) = &t.worker {
                b = b.on_worker(w.clone());
            }
            for f in &t.features {
                b = b.require_feature(f.clone());
            }
            if let Some(bytes) = t.gpu_memory {
                b = b.gpu_memory(bytes);
            }
            ids[i] = Some(b.add());
        }
        Ok((g, data))
    }
}

/// Where a spec's kernels and data come from: a simulator's (here) or a runtime's
/// (`runtime/load.rs`, so that `graph` does not import the runtime).
pub(crate) trait Target {
    fn kernel(&self, name: &str) -> Result<Arc<hexec_kernels::Kernel>, String>;
    fn datum(&self, g: &mut Graph, d: &DataSpec) -> Result<crate::graph::DataRef, String>;
}

/// A simulator: given kernels, size-only data.
struct VirtualTarget<'a>(&'a dyn Fn(&str) -> Arc<hexec_kernels::Kernel>);

impl Target for VirtualTarget<'_> {
    fn kernel(&self, name: &str) -> Result<Arc<hexec_kernels::Kernel>, String> {
        Ok((self.0)(name))
    }

    fn datum(&self, g: &mut Graph, d: &DataSpec) -> Result<crate::graph::DataRef, String> {
        let bytes = match (&d.elem, d.len, d.bytes) {
            (None, None, Some(bytes)) => bytes,
            (Some(ty), Some(len), None) => {
                let elem = ElemType::parse(ty).ok_or_else(|| format!("unknown element type '{ty}'"))?;
                len.checked_mul(elem.size() as u64)
                    .ok_or_else(|| format!("len {len} is too large"))?
            }
            _ => return Err("declare either \"type\" and \"len\" (stored data) or \"bytes\" (size only)".into()),
        };
        if d.temp {
            let len = usize::try_from(bytes).map_err(|_| format!("{bytes} bytes is too large for this platform"))?;
            return Ok(g.temp_of(d.name.clone(), ElemType::U8, len).into());
        }
        Ok(g.virtual_data(d.name.clone(), bytes).into())
    }
}

/// A stable topological order (lowest index first among ready tasks), or a cycle.
pub(crate) fn topological_order(preds: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = preds.len();
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indeg = vec![0usize; n];
    for (i, ps) in preds.iter().enumerate() {
        for &p in ps {
            succs[p].push(i);
            indeg[i] += 1;
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &s in &succs[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.push(Reverse(s));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk predecessors among the unsorted tasks until one repeats: that is a cycle.
    let start = (0..n).find(|&i| indeg[i] > 0).expect("some task is unsorted");
    let mut seen = vec![usize::MAX; n];
    let mut path = Vec::new();
    let mut cur = start;
    while seen[cur] == usize::MAX {
        seen[cur] = path.len();
        path.push(cur);
        cur = *preds[cur]
            .iter()
            .find(|&&p| indeg[p] > 0)
            .expect("an unsorted task has an unsorted predecessor");
    }
    let mut cycle = path[seen[cur]..].to_vec();
    cycle.reverse();
    cycle.push(cycle[0]);
    Err(cycle)
}

#[cfg(test)]
mod tests;
