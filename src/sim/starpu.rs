//! StarPU's performance-model files, as StarPU's simulation mode reads them: codelet models
//! in format 45 (`sampling/codelets/45/CODELET.MACHINE`) and the bus bandwidth (MB/s) and
//! latency (µs) matrices (`sampling/bus/MACHINE.{bandwidth,latency,config}`).
//!
//! A sampling directory holds models of every codelet ever calibrated there, many of them
//! unrelated to the graph at hand, some half-written (regressions of `nan`, `-nan`, `inf`).
//! So [`open`] reads the machine (configuration and bus matrices) and only *lists* the
//! codelet files; [`Codelets::load`] reads one codelet when a graph needs it. A file that is
//! never needed is never parsed and cannot break a run. Files may be symbolic links (they are
//! read through them); only regular files are listed and read (a FIFO or a device among the
//! codelet files is never opened: it would block or never end), each of at most
//! [`MAX_FILE_BYTES`].
//!
//! Codelet files are read as StarPU reads them: a stream of numbers with `#` comment lines,
//! line breaks mattering only for the history entries (one per line, 7 or 8 fields). Fields
//! hexec does not use (StarPU's own regressions, flops, sums, footprints) are accepted
//! whatever number they hold. Fields it uses are validated where they enter: a needed
//! model's mean time must be a duration ([`crate::limits::seconds`]: finite, non-negative, at
//! most [`crate::limits::MAX_DURATION_S`]), its deviation too (a NaN deviation is read as no
//! spread, with a warning), link bandwidths finite and at least a byte per second, latencies
//! durations, CPU and GPU counts at most [`crate::limits::MAX_WORKERS`] together; anything
//! else is an error naming the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::limits::read_regular_file;
use crate::sched::perfmodel::PerfModel;

/// Largest StarPU file read (models and bus matrices are kilobytes).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A StarPU file that cannot be used, with where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {reason}", Location(.path, *.line))]
pub struct StarpuError {
    pub path: PathBuf,
    /// 1-based; `None` for whole-file problems (unreadable, ends early).
    pub line: Option<usize>,
    pub reason: String,
}

/// Something of a needed model that was left out, and why (also logged as a warning).
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// The model file.
    pub path: PathBuf,
    /// The line in it, when one entry was left out.
    pub line: Option<usize>,
    /// What was left out and why.
    pub what: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", Location(&self.path, self.line), self.what)
    }
}

/// `path` or `path:line`.
struct Location<'a>(&'a Path, Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(line) => write!(f, "{}:{line}", self.0.display()),
            None => write!(f, "{}", self.0.display()),
        }
    }
}

fn file_err(path: &Path, reason: impl fmt::Display) -> StarpuError {
    StarpuError {
        path: path.to_path_buf(),
        line: None,
        reason: reason.to_string(),
    }
}

/// What a StarPU machine directory describes.
#[derive(Debug)]
pub struct StarpuMachine {
    pub cpus: usize,
    pub gpus: usize,
    /// Bytes per second, `[from][to]` over host (0) and GPUs (1..).
    pub bandwidth: Vec<Vec<f64>>,
    /// Seconds.
    pub latency: Vec<Vec<f64>>,
    /// The machine's codelet models, listed, read on demand.
    pub codelets: Codelets,
}

/// The codelet model files of one machine (`CODELET.MACHINE` in `codelets/45`), by codelet
/// name, and which of them were read.
#[derive(Debug)]
pub struct Codelets {
    pub dir: PathBuf,
    pub machine: String,
    files: BTreeMap<String, PathBuf>,
    loaded: BTreeSet<String>,
    /// Kernels whose models were looked for.
    considered: BTreeSet<String>,
}

impl Codelets {
    /// Whether the machine has a model file for `codelet`.
    pub fn has(&self, codelet: &str) -> bool {
        self.files.contains_key(codelet)
    }

    /// Every codelet the machine has a model file for.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Whether `codelet` was read into a model already.
    pub fn is_loaded(&self, codelet: &str) -> bool {
        self.loaded.contains(codelet)
    }

    /// Records that the models of `kernel` were looked for (found or not).
    pub fn mark_considered(&mut self, kernel: &str) {
        self.considered.insert(kernel.to_string());
    }

    /// Whether the models of `kernel` were looked for.
    pub fn was_considered(&self, kernel: &str) -> bool {
        self.considered.contains(kernel)
    }

    /// Reads `codelet`'s model into `model` (once: a second call adds nothing) and returns
    /// what of it was left out. A missing file, a malformed one, or an unusable time is an
    /// error naming the file and line.
    pub fn load(&mut self, codelet: &str, model: &mut PerfModel) -> Result<Vec<Skipped>, StarpuError> {
        if self.loaded.contains(codelet) {
            return Ok(Vec::new());
        }
        let path = self.files.get(codelet).cloned().ok_or_else(|| {
            file_err(
                &self.dir,
                format!("no model of codelet '{codelet}' for machine '{}'", self.machine),
            )
        })?;
        // Through symbolic links: a model file may be a link to another machine's. Regular
        // files only, even if one was swapped for a FIFO since the listing.
        let text = read_regular_file(&path, MAX_FILE_BYTES)
            .map_err(|e| file_err(&path, format!("cannot read the model: {e}")))?;
        let parsed = parse_codelet(&text).map_err(|(line, reason)| StarpuError {
            path: path.clone(),
            line,
            reason,
        })?;
        if parsed.scaled > 0 {
            // Documented in the shared data's README (the mirage files): expected, not a warning.
            tracing::info!(
                "{}: {} row(s) at 1/100 of another row's size left out (scaled copies)",
                path.display(),
                parsed.scaled
            );
        }
        for e in &parsed.entries {
            model.add_summary(codelet, e.class, e.size, e.mean_us * 1e-6, e.dev_us * 1e-6, e.n);
        }
        self.loaded.insert(codelet.to_string());
        Ok(parsed
            .skipped
            .into_iter()
            .map(|(line, what)| Skipped {
                path: path.clone(),
                line,
                what,
            })
            .collect())
    }
}

/// Reads the machine `name` from `dir` (the `sampling` directory or its parent): its
/// configuration and bus matrices, and the list of its codelet models (not their contents).
pub fn open(dir: &Path, name: &str) -> Result<StarpuMachine, StarpuError> {
    let sampling = if dir.join("sampling").is_dir() {
        dir.join("sampling")
    } else {
        dir.to_path_buf()
    };
    let bus = sampling.join("bus");
    let config = bus.join(format!("{name}.config"));
    let text = read_regular_file(&config, MAX_FILE_BYTES)
        .map_err(|e| file_err(&config, format!("cannot read the machine's configuration: {e}")))?;
    let count = |what: &str| -> Result<usize, StarpuError> {
        let (i, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(what))
            .ok_or_else(|| file_err(&config, format!("no '{what}' line")))?;
        let value = line.split('#').next().unwrap_or("").trim();
        value.parse().map_err(|_| StarpuError {
            path: config.clone(),
            line: Some(i + 1),
            reason: format!("'{value}' is not a count ({what})"),
        })
    };
    let (cpus, gpus) = (count("Number of CPUs")?, count("Number of CUDA devices")?);
    // Before anything is sized by them (the bus matrices are nodes²).
    let max = crate::limits::MAX_WORKERS;
    if cpus.checked_add(gpus).is_none_or(|n| n > max) {
        return Err(file_err(
            &config,
            format!("{cpus} CPUs and {gpus} GPUs are over the limit of {max} workers"),
        ));
    }
    let nodes = gpus + 1;
    // Same-node entries are 0 in StarPU's files: no copy, so infinite bandwidth, no latency.
    let bandwidth = matrix(&bus.join(format!("{name}.bandwidth")), nodes, |i, j, mbs| {
        if i == j {
            Ok(f64::INFINITY)
        } else if mbs.is_finite() && mbs >= 1e-6 {
            Ok(mbs * 1e6)
        } else {
            Err(format!(
                "bandwidth from node {i} to node {j} is {mbs} MB/s (a link needs a finite bandwidth of at least a byte per second)"
            ))
        }
    })?;
    let latency = matrix(&bus.join(format!("{name}.latency")), nodes, |i, j, us| {
        if i == j {
            Ok(0.0)
        } else {
            crate::limits::seconds(us * 1e-6)
                .map_err(|why| format!("latency from node {i} to node {j} is {us} µs: {why}"))
        }
    })?;
    let models = sampling.join("codelets").join("45");
    let entries =
        std::fs::read_dir(&models).map_err(|e| file_err(&models, format!("cannot list codelet models: {e}")))?;
    let suffix = format!(".{name}");
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| file_err(&models, format!("cannot list codelet models: {e}")))?;
        let file_name = entry.file_name();
        // Names only: a file is opened (through links) when a graph needs its codelet. What
        // is not a regular file (a FIFO, a device, a directory, a dangling link) is never
        // a model: left out without opening it (metadata follows links, opens nothing).
        if let Some(codelet) = file_name.to_str().and_then(|f| f.strip_suffix(&suffix)) {
            if !codelet.is_empty() && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
                files.insert(codelet.to_string(), entry.path());
            }
        }
    }
    if files.is_empty() {
        return Err(file_err(&models, format!("no codelet model for machine '{name}'")));
    }
    Ok(StarpuMachine {
        cpus,
        gpus,
        bandwidth,
        latency,
        codelets: Codelets {
            dir: models,
            machine: name.to_string(),
            files,
            loaded: BTreeSet::new(),
            considered: BTreeSet::new(),
        },
    })
}

/// The first `n`×`n` block of a matrix file (rows of numbers; `#` lines are comments), each
/// value checked by `value(from, to, v)`. Values past the block (StarPU writes `nan` for
/// nodes that do not exist) are not read.
fn matrix(
    path: &Path,
    n: usize,
    value: impl Fn(usize, usize, f64) -> Result<f64, String>,
) -> Result<Vec<Vec<f64>>, StarpuError> {
    let text = read_regular_file(path, MAX_FILE_BYTES).map_err(|e| file_err(path, e))?;
    let at = |line: usize, reason: String| StarpuError {
        path: path.to_path_buf(),
        line: Some(line),
        reason,
    };
    let mut rows = Vec::with_capacity(n);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .take(n)
    {
        let from = rows.len();
        let mut row = Vec::with_capacity(n);
        for (to, v) in line.split_whitespace().take(n).enumerate() {
            let v = v
                .parse::<f64>()
                .map_err(|_| at(i + 1, format!("'{v}' is not a number")))?;
            row.push(value(from, to, v).map_err(|reason| at(i + 1, reason))?);
        }
        if row.len() < n {
            return Err(at(
                i + 1,
                format!("{} value(s), {n} expected (one per memory node)", row.len()),
            ));
        }
        rows.push(row);
    }
    if rows.len() < n {
        return Err(file_err(
            path,
            format!("{} row(s), {n} expected (one per memory node)", rows.len()),
        ));
    }
    Ok(rows)
}

/// One measured row of a codelet model.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Entry {
    class: &'static str,
    size: u64,
    mean_us: f64,
    dev_us: f64,
    n: u64,
}

/// A parsed codelet file: the rows to use, what was left out (line, why), and how many
/// scaled rows were dropped.
#[derive(Debug, Default)]
struct Parsed {
    entries: Vec<Entry>,
    skipped: Vec<(Option<usize>, String)>,
    scaled: usize,
}

/// An error at a line (`None`: the file ended).
type LineError = (Option<usize>, String);

/// The numbers of a file as StarPU's reader (`fscanf`) sees them: whitespace-separated,
/// line breaks ignored, except that history entries are whole lines. Lines starting with `#`
/// are comments.
struct Tokens<'a> {
    lines: Vec<(usize, Vec<&'a str>)>,
    at: usize,
    tok: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Self {
        let lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim_start().starts_with('#'))
            .map(|(i, l)| (i + 1, l.split_whitespace().collect::<Vec<_>>()))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        Tokens { lines, at: 0, tok: 0 }
    }

    /// Moves past the current line when it is used up (lines are never empty, so one step
    /// suffices), so that `lines[at]` holds the next token; an error at the end of the file.
    fn skip_used_line(&mut self, what: &str) -> Result<(), LineError> {
        if self.lines.get(self.at).is_some_and(|(_, t)| self.tok >= t.len()) {
            self.at += 1;
            self.tok = 0;
        }
        if self.at < self.lines.len() {
            Ok(())
        } else {
            Err((None, format!("the file ends before {what}")))
        }
    }

    fn next(&mut self, what: &str) -> Result<(usize, &'a str), LineError> {
        self.skip_used_line(what)?;
        let (line, toks) = &self.lines[self.at];
        let tok = toks[self.tok];
        self.tok += 1;
        Ok((*line, tok))
    }

    /// The rest of the current line, or the next line if this one is used up.
    fn line(&mut self, what: &str) -> Result<(usize, &[&'a str]), LineError> {
        self.skip_used_line(what)?;
        let (line, toks) = &self.lines[self.at];
        let rest = &toks[self.tok..];
        self.at += 1;
        self.tok = 0;
        Ok((*line, rest))
    }

    fn int<T: std::str::FromStr>(&mut self, what: &str) -> Result<(usize, T), LineError> {
        let (line, t) = self.next(what)?;
        t.parse()
            .map(|v| (line, v))
            .map_err(|_| (Some(line), format!("'{t}' is not {what}")))
    }

    /// A number StarPU wrote with `%e`: `nan`, `-nan` and `inf` included.
    fn real(&mut self, what: &str) -> Result<f64, LineError> {
        let (line, t) = self.next(what)?;
        t.parse()
            .map_err(|_| (Some(line), format!("'{t}' is not a number ({what})")))
    }
}

/// The device class of a StarPU device type, `None` for those hexec does not model.
fn class_of(device_type: i64) -> Option<&'static str> {
    match device_type {
        0 => Some("cpu"),
        // CUDA, OpenCL, HIP.
        1 | 2 | 7 => Some("gpu"),
        _ => None,
    }
}

/// Parses a format-45 codelet file. Rows at 1/100 of another row's size (the scaled copies
/// in the mirage files) are dropped, as are combinations hexec does not model (several
/// devices or cores together, device types other than CPU and GPU) and rows without samples.
fn parse_codelet(text: &str) -> Result<Parsed, LineError> {
    let mut t = Tokens::new(text);
    let (line, version) = t.int::<u64>("a format version")?;
    if version != 45 {
        return Err((
            Some(line),
            format!("performance model format {version} is not supported (45 is)"),
        ));
    }
    let mut out = Parsed::default();
    let (_, combs) = t.int::<usize>("a combination count")?;
    for comb in 0..combs {
        let (comb_line, ndev) = t.int::<usize>("a device count")?;
        let mut devices = Vec::new();
        for _ in 0..ndev {
            let (_, ty) = t.int::<i64>("a device type")?;
            t.int::<i64>("a device id")?;
            let (_, cores) = t.int::<i64>("a core count")?;
            devices.push((ty, cores));
        }
        let class = match devices.as_slice() {
            [(ty, 1)] => class_of(*ty).ok_or(format!("device type {ty}")),
            [(_, cores)] => Err(format!("a parallel task on {cores} cores")),
            _ => Err(format!("a task over {ndev} devices")),
        };
        let class = class
            .map_err(|what| {
                out.skipped.push((
                    Some(comb_line),
                    format!("combination {comb} ({what}) is not modelled; its rows are left out"),
                ))
            })
            .ok();
        let (_, impls) = t.int::<usize>("an implementation count")?;
        for _ in 0..impls {
            let (_, entries) = t.int::<usize>("an entry count")?;
            // StarPU's own regressions (linear: sums, alpha, beta, n, min, max; power law:
            // a, b, c; multiple: a count then its coefficients) are not used: hexec fits its
            // own on the rows. Often `nan` (too few samples), which is fine.
            for what in [
                "sumlnx",
                "sumlnx2",
                "sumlny",
                "sumlnxlny",
                "alpha",
                "beta",
                "n",
                "minx",
                "maxx",
                "a",
                "b",
                "c",
            ] {
                t.real(what)?;
            }
            let (_, coefficients) = t.int::<usize>("a multiple-regression coefficient count")?;
            for _ in 0..coefficients {
                t.real("a multiple-regression coefficient")?;
            }
            for _ in 0..entries {
                let (line, row) = t.line("a history entry")?;
                match class {
                    Some(class) => {
                        if let Some(e) = entry(line, row, class, &mut out.skipped)? {
                            out.entries.push(e);
                        }
                    }
                    None => continue,
                }
            }
        }
    }
    let scaled = |e: &Entry| {
        e.size > 0
            && out
                .entries
                .iter()
                .any(|f| f.class == e.class && f.size == e.size.saturating_mul(100))
    };
    let keep: Vec<bool> = out.entries.iter().map(|e| !scaled(e)).collect();
    out.scaled = keep.iter().filter(|k| !**k).count();
    let mut keep = keep.into_iter();
    out.entries.retain(|_| keep.next().unwrap_or(true));
    Ok(out)
}

/// One history entry: `hash size [flops] mean dev sum sum2 n` (StarPU writes flops since
/// version 45's later releases; older files have 7 fields). `None` for a row without samples.
fn entry(
    line: usize,
    row: &[&str],
    class: &'static str,
    skipped: &mut Vec<(Option<usize>, String)>,
) -> Result<Option<Entry>, LineError> {
    let at = |reason: String| (Some(line), reason);
    let (size, mean, dev, n) = match *row {
        [_, size, _, mean, dev, _, _, n] | [_, size, mean, dev, _, _, n] => (size, mean, dev, n),
        _ => return Err(at(format!("a history entry has {} fields, 7 or 8 expected", row.len()))),
    };
    let footprint = row[0];
    if u32::from_str_radix(footprint, 16).is_err() {
        return Err(at(format!("'{footprint}' is not a footprint (8 hex digits)")));
    }
    for optional in &row[2..row.len() - 1] {
        optional
            .parse::<f64>()
            .map_err(|_| at(format!("'{optional}' is not a number")))?;
    }
    let size: u64 = size
        .parse()
        .map_err(|_| at(format!("'{size}' is not a size in bytes")))?;
    let n: u64 = n.parse().map_err(|_| at(format!("'{n}' is not a sample count")))?;
    if n == 0 {
        skipped.push((Some(line), "a row without samples is left out".into()));
        return Ok(None);
    }
    let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
    let mean_us = num(mean);
    if !(mean_us.is_finite() && mean_us >= 0.0) {
        return Err(at(format!(
            "mean time '{mean}' µs is not a duration (negative, NaN or infinite)"
        )));
    }
    crate::limits::seconds(mean_us * 1e-6).map_err(|why| at(format!("mean time '{mean}' µs: {why}")))?;
    let mut dev_us = num(dev);
    if dev_us.is_nan() {
        // A spread StarPU could not compute: the mean alone is still a measurement.
        skipped.push((Some(line), format!("deviation '{dev}' read as 0 (no spread)")));
        dev_us = 0.0;
    } else if !(dev_us.is_finite() && dev_us >= 0.0) {
        return Err(at(format!(
            "deviation '{dev}' µs is not a duration (negative or infinite)"
        )));
    } else if let Err(why) = crate::limits::seconds(dev_us * 1e-6) {
        return Err(at(format!("deviation '{dev}' µs: {why}")));
    }
    Ok(Some(Entry {
        class,
        size,
        mean_us,
        dev_us,
        n,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "##\n# Performance Model Version\n45\n\n# COMBs\n2\n# COMB_0\n1\n0\n0\n1\n# impls\n1\n# entries\n2\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n\
d46431bb 1228800 6.5e+07 3.2e+03 7.8e+01 1 1 4697\n6e96d715 12288 6.5e+04 3.2e+00 7.8e-02 1 1 4697\n\
# COMB_1\n1\n1\n0\n1\n1\n1\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\nd46431bb 1228800 6.5e+07 2.0e+02 1.4e+01 1 1 8121\n";

    #[test]
    fn codelet_files_parse_and_drop_scaled_rows() {
        let p = parse_codelet(MODEL).unwrap();
        assert_eq!(p.entries.len(), 2, "{p:?}");
        assert_eq!(p.scaled, 1);
        assert_eq!(
            p.entries[0],
            Entry {
                class: "cpu",
                size: 1228800,
                mean_us: 3200.0,
                dev_us: 78.0,
                n: 4697
            }
        );
        assert_eq!(p.entries[1].class, "gpu");
        assert!(parse_codelet("44\n").unwrap_err().1.contains("format 44"));
        assert!(parse_codelet("45\n1\n").unwrap_err().1.contains("ends before"));
    }

    #[test]
    fn every_field_starpu_writes_is_accepted() {
        // The linear regression split over two lines (fscanf reads it so), `-nan`, `inf`
        // and `-inf` in the regressions and the unused sums, a multiple regression with its
        // coefficients, an entry of 7 fields (no flops), a NaN flops count and NaN deviation.
        let text = "45\n1\n1\n0\n0\n1\n1\n3\n\
            0.0 0.0 0.0 0.0\n-nan -nan 0 0 0\n\
            inf -inf nan\n\
            3\t1.0e+00\tnan\t-nan\n\
            0000abcd 100 nan 5.0e+00 1.0e+00 inf -nan 3\n\
            0000abce 200 7.0e+00 -nan 1 1 2\n\
            0000abcf 300 1.0e+00 1.0e+00 0.0 0 0 0\n";
        let p = parse_codelet(text).unwrap();
        assert_eq!(p.entries.len(), 2, "{p:?}");
        assert_eq!((p.entries[0].size, p.entries[0].mean_us, p.entries[0].n), (100, 5.0, 3));
        assert_eq!((p.entries[1].size, p.entries[1].dev_us), (200, 0.0));
        assert_eq!(p.skipped.len(), 2, "{:?}", p.skipped);
        assert!(p.skipped[0].1.contains("deviation") && p.skipped[0].0 == Some(14));
        assert!(p.skipped[1].1.contains("without samples") && p.skipped[1].0 == Some(15));
    }

    #[test]
    fn unmodelled_combinations_are_skipped_with_a_note() {
        // A FPGA (type 4) and a 12-core parallel CPU combination, then a plain CPU one.
        let regression = "0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n";
        let text = format!(
            "45\n3\n1\n4\n0\n1\n1\n1\n{regression}00000001 1 1 1 1 1 1 1\n\
             1\n0\n0\n12\n1\n1\n{regression}00000001 1 1 nan 1 1 1 1\n\
             1\n0\n0\n1\n1\n1\n{regression}00000001 8 1 2 1 1 1 1\n"
        );
        let p = parse_codelet(&text).unwrap();
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].size, 8);
        let notes: Vec<&str> = p.skipped.iter().map(|s| s.1.as_str()).collect();
        assert!(notes[0].contains("device type 4"), "{notes:?}");
        assert!(notes[1].contains("12 cores"), "{notes:?}");
    }

    #[test]
    fn unusable_times_of_a_needed_model_are_refused_with_their_line() {
        let head = "45\n1\n1\n0\n0\n1\n1\n1\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n";
        for (row, says) in [
            ("00000001 8 1 nan 1 1 1 4", "mean time 'nan'"),
            ("00000001 8 1 -nan 1 1 1 4", "mean time '-nan'"),
            ("00000001 8 1 -3.0 1 1 1 4", "mean time '-3.0'"),
            ("00000001 8 1 inf 1 1 1 4", "mean time 'inf'"),
            ("00000001 8 1 3 -1 1 1 4", "deviation '-1'"),
            ("00000001 8 1 3 inf 1 1 4", "deviation 'inf'"),
            ("00000001 8 1 3 1 1 1 1 4", "9 fields, 7 or 8 expected"),
            ("00000001 -8 1 3 1 1 1 4", "'-8' is not a size"),
            ("zz 8 1 3 1 1 1 4", "'zz' is not a footprint"),
            ("00000001 8 x 3 1 1 1 4", "'x' is not a number"),
        ] {
            let (line, reason) = parse_codelet(&format!("{head}{row}\n")).unwrap_err();
            assert_eq!(line, Some(12), "{row}: {reason}");
            assert!(reason.contains(says), "{row}: {reason}");
        }
    }
}
