//! StarPU's performance-model files, as StarPU's simulation mode reads them: codelet models
//! in format 45 (`sampling/codelets/45/CODELET.MACHINE`) and the bus bandwidth (MB/s) and
//! latency (µs) matrices (`sampling/bus/MACHINE.{bandwidth,latency,config}`).

use std::path::Path;

use crate::sched::perfmodel::PerfModel;

/// What a StarPU machine directory describes.
#[derive(Debug)]
pub struct StarpuMachine {
    pub cpus: usize,
    pub gpus: usize,
    /// Bytes per second, `[from][to]` over host (0) and GPUs (1..).
    pub bandwidth: Vec<Vec<f64>>,
    /// Seconds.
    pub latency: Vec<Vec<f64>>,
    pub model: PerfModel,
    /// Codelets read.
    pub codelets: Vec<String>,
}

fn err(path: &Path, msg: impl std::fmt::Display) -> String {
    format!("{}: {msg}", path.display())
}

/// Reads the machine `name` from `dir` (the `sampling` directory or its parent).
pub fn load(dir: &Path, name: &str) -> Result<StarpuMachine, String> {
    let sampling = if dir.join("sampling").is_dir() {
        dir.join("sampling")
    } else {
        dir.to_path_buf()
    };
    let bus = sampling.join("bus");
    let config = bus.join(format!("{name}.config"));
    let text = std::fs::read_to_string(&config)
        .map_err(|e| err(&config, format!("cannot read the machine's configuration: {e}")))?;
    let count = |what: &str| -> Result<usize, String> {
        text.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split('#').next())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| err(&config, format!("no '{what}' line")))
    };
    let (cpus, gpus) = (count("Number of CPUs")?, count("Number of CUDA devices")?);
    let nodes = gpus + 1;
    let bandwidth = matrix(&bus.join(format!("{name}.bandwidth")), nodes)?
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|mbs| if mbs > 0.0 { mbs * 1e6 } else { f64::INFINITY })
                .collect()
        })
        .collect();
    let latency = matrix(&bus.join(format!("{name}.latency")), nodes)?
        .into_iter()
        .map(|row| row.into_iter().map(|us| us * 1e-6).collect())
        .collect();
    let mut model = PerfModel::new();
    let mut codelets = Vec::new();
    let models = sampling.join("codelets").join("45");
    let entries = std::fs::read_dir(&models).map_err(|e| err(&models, format!("cannot list codelet models: {e}")))?;
    let suffix = format!(".{name}");
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let Some(codelet) = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(&suffix))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e))?;
        for (class, size, mean_us, dev_us, n) in parse_codelet(&text).map_err(|e| err(&path, e))? {
            model.add_summary(codelet, class, size, mean_us * 1e-6, dev_us * 1e-6, n);
        }
        codelets.push(codelet.to_string());
    }
    if codelets.is_empty() {
        return Err(err(&models, format!("no codelet model for machine '{name}'")));
    }
    Ok(StarpuMachine {
        cpus,
        gpus,
        bandwidth,
        latency,
        model,
        codelets,
    })
}

/// The first `n`×`n` block of a matrix file (rows of numbers; `#` lines are comments).
fn matrix(path: &Path, n: usize) -> Result<Vec<Vec<f64>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .take(n)
        .map(|l| {
            l.split_whitespace()
                .take(n)
                .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    if rows.len() < n || rows.iter().any(|r| r.len() < n || r.iter().any(|v| v.is_nan())) {
        return Err(err(path, format!("expected a {n}x{n} matrix of numbers")));
    }
    Ok(rows)
}

type Entry = (&'static str, u64, f64, f64, u64);

/// Parses a format-45 codelet file into (class, size bytes, mean µs, deviation µs, count).
/// Rows at 1/100 of another row's size (the scaled copies in the mirage files) are dropped.
fn parse_codelet(text: &str) -> Result<Vec<Entry>, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let mut next = |what: &str| lines.next().ok_or_else(|| format!("file ends before {what}"));
    let int = |s: &str, what: &str| {
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("'{s}' is not {what}"))
    };
    let version = int(next("the version")?, "a version")?;
    if version != 45 {
        return Err(format!("performance model format {version} is not supported (45 is)"));
    }
    let combs = int(next("the combination count")?, "a count")?;
    let mut out: Vec<Entry> = Vec::new();
    for _ in 0..combs {
        let ndev = int(next("a device count")?, "a count")?;
        let mut class = "cpu";
        for _ in 0..ndev {
            let ty = int(next("a device type")?, "a device type")?;
            next("a device id")?;
            next("a core count")?;
            class = match ty {
                0 => "cpu",
                1 | 2 => "gpu",
                other => return Err(format!("device type {other} is not supported")),
            };
        }
        let impls = int(next("an implementation count")?, "a count")?;
        for _ in 0..impls {
            let entries = int(next("an entry count")?, "a count")?;
            next("the regression sums")?;
            next("the regression parameters")?;
            let multi = int(next("the multiple-regression flag")?, "a flag")?;
            if multi != 0 {
                return Err("multiple-regression models are not supported".into());
            }
            for _ in 0..entries {
                let row: Vec<&str> = next("an entry")?.split_whitespace().collect();
                let [_, size, _flops, mean, dev, _, _, n] = row.as_slice() else {
                    return Err(format!("an entry row has {} fields, 8 expected", row.len()));
                };
                let num = |s: &str| s.parse::<f64>().map_err(|_| format!("'{s}' is not a number"));
                out.push((class, num(size)? as u64, num(mean)?, num(dev)?, num(n)? as u64));
            }
        }
    }
    let scaled = |e: &Entry| out.iter().any(|f| f.0 == e.0 && f.1 == e.1 * 100 && e.1 > 0);
    Ok(out
        .iter()
        .filter(|e| !scaled(e) && e.4 > 0 && e.2.is_finite())
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "##\n# Performance Model Version\n45\n\n# COMBs\n2\n# COMB_0\n1\n0\n0\n1\n# impls\n1\n# entries\n2\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n\
d46431bb 1228800 6.5e+07 3.2e+03 7.8e+01 1 1 4697\n6e96d715 12288 6.5e+04 3.2e+00 7.8e-02 1 1 4697\n\
# COMB_1\n1\n1\n0\n1\n1\n1\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\nd46431bb 1228800 6.5e+07 2.0e+02 1.4e+01 1 1 8121\n";

    #[test]
    fn codelet_files_parse_and_drop_scaled_rows() {
        let rows = parse_codelet(MODEL).unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0], ("cpu", 1228800, 3200.0, 78.0, 4697));
        assert_eq!(rows[1].0, "gpu");
        assert!(parse_codelet("44\n").unwrap_err().contains("format 44"));
        assert!(parse_codelet("45\n1\n1\n9\n0\n1\n")
            .unwrap_err()
            .contains("device type 9"));
        assert!(parse_codelet("45\n1\n").unwrap_err().contains("ends before"));
    }
}
