//! History-based performance models: per (kernel, device class, size bucket), the median and
//! spread of measured times, with a regression fallback `a·size^b + c` for sizes never seen.
//!
//! Medians, not means: a few 100x spikes (a page fault storm, a preempted core) must not send
//! all work to one device. Each bucket keeps its last [`MAX_SAMPLES`] samples. Models are
//! saved to and loaded from JSON files between runs, and can be seeded from summaries (mean,
//! deviation, count) such as StarPU's performance-model files.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Samples kept per bucket.
pub const MAX_SAMPLES: usize = 64;
/// Samples a bucket needs before its median is trusted.
pub const MIN_SAMPLES: usize = 3;

/// Sizes within a quarter octave share a bucket.
fn bucket(size: u64) -> i32 {
    ((size.max(1) as f64).log2() * 4.0).round() as i32
}

/// One bucket's history.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct Bucket {
    /// Recent samples in seconds (ring of `MAX_SAMPLES`).
    samples: Vec<f64>,
    next: usize,
    /// Mean size of the samples, bytes.
    size: f64,
    count: u64,
}

impl Bucket {
    fn add(&mut self, size: u64, seconds: f64) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(seconds);
        } else {
            self.samples[self.next] = seconds;
        }
        self.next = (self.next + 1) % MAX_SAMPLES;
        self.count += 1;
        self.size += (size as f64 - self.size) / self.count as f64;
    }

    fn median(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        })
    }

    /// Median absolute deviation.
    fn spread(&self) -> Option<f64> {
        let m = self.median()?;
        let mut d: Vec<f64> = self.samples.iter().map(|s| (s - m).abs()).collect();
        d.sort_by(f64::total_cmp);
        Some(d[d.len() / 2])
    }
}

/// `a·size^b + c`, fitted on bucket medians.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    /// Scale.
    pub a: f64,
    /// Exponent.
    pub b: f64,
    /// Constant, seconds.
    pub c: f64,
}

impl Regression {
    /// Evaluates at `size` bytes.
    pub fn at(&self, size: u64) -> f64 {
        self.a * (size.max(1) as f64).powf(self.b) + self.c
    }

    /// Least squares in log space on `(size, seconds)` points, for a constant `c` chosen
    /// among fractions of the smallest time by the best fit; one point gives a line through
    /// the origin.
    fn fit(points: &[(f64, f64)]) -> Option<Regression> {
        let pts: Vec<(f64, f64)> = points.iter().copied().filter(|&(s, t)| s > 0.0 && t > 0.0).collect();
        match pts.len() {
            0 => None,
            1 => Some(Regression {
                a: pts[0].1 / pts[0].0,
                b: 1.0,
                c: 0.0,
            }),
            _ => {
                let min_t = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                [0.0, 0.25, 0.5, 0.75, 0.9]
                    .iter()
                    .filter_map(|f| Self::fit_with(&pts, f * min_t))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(r, _)| r)
            }
        }
    }

    /// Fits `a` and `b` for a given `c`; returns the fit and its squared log error.
    fn fit_with(pts: &[(f64, f64)], c: f64) -> Option<(Regression, f64)> {
        let xs: Vec<f64> = pts.iter().map(|p| p.0.ln()).collect();
        let ys: Vec<f64> = pts.iter().map(|p| (p.1 - c).ln()).collect();
        let n = xs.len() as f64;
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let r = if sxx == 0.0 {
            Regression {
                a: 0.0,
                b: 1.0,
                c: pts.iter().map(|p| p.1).sum::<f64>() / n,
            }
        } else {
            let b = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / sxx;
            Regression {
                a: (my - b * mx).exp(),
                b,
                c,
            }
        };
        let err: f64 = pts
            .iter()
            .map(|&(s, t)| (r.at(s as u64).max(1e-300).ln() - t.ln()).powi(2))
            .sum();
        err.is_finite().then_some((r, err))
    }
}

/// History of one kernel on one device class.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct History {
    buckets: BTreeMap<i32, Bucket>,
}

impl History {
    fn regression(&self) -> Option<Regression> {
        let pts: Vec<(f64, f64)> = self
            .buckets
            .values()
            .filter(|b| b.samples.len() >= MIN_SAMPLES.min(b.count as usize).max(1))
            .filter_map(|b| Some((b.size, b.median()?)))
            .collect();
        Regression::fit(&pts)
    }
}

/// A measured link: bytes per second and seconds of latency.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LinkModel {
    /// Bytes per second.
    pub bandwidth: f64,
    /// Seconds per copy.
    pub latency: f64,
}

/// A performance model: kernel × device class × size → expected seconds, plus links.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PerfModel {
    /// Keyed by `kernel` then `class`.
    histories: HashMap<String, HashMap<String, History>>,
    /// Keyed by `from->to` (`host->gpu`, `gpu->host`), from a calibration run
    /// (`hexec bench gpu --model FILE`).
    #[serde(default)]
    links: BTreeMap<String, LinkModel>,
}

/// Errors reading or writing a model file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a model.
    #[error("{path}: not a hexec performance model: {source}")]
    Format {
        /// The file.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A value the model cannot use (a negative or absurd time, a bad link), with where.
    #[error("{path}: {position}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Where in it.
        position: String,
        /// What is wrong.
        reason: String,
    },
}

/// Largest model file read.
pub const MAX_MODEL_FILE_BYTES: u64 = 1 << 30;

impl PerfModel {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one measured run. A time that is not a duration (`crate::limits::seconds`:
    /// negative, NaN, infinite or absurdly long) is not a measurement and is dropped.
    pub fn record(&mut self, kernel: &str, class: &str, size: u64, seconds: f64) {
        if crate::limits::seconds(seconds).is_err() {
            return;
        }
        self.histories
            .entry(kernel.to_string())
            .or_default()
            .entry(class.to_string())
            .or_default()
            .buckets
            .entry(bucket(size))
            .or_default()
            .add(size, seconds);
    }

    /// Seeds a bucket from a summary (mean and deviation over `n` runs): stores
    /// `min(n, MAX_SAMPLES)` samples, as many at mean − deviation as at mean + deviation (and
    /// the mean itself when the count is odd), so that the median is the mean and the spread
    /// the deviation. (An even count used to put one more sample below the mean than above
    /// it, and the median came out as mean − deviation/2: every StarPU entry with 64 runs or
    /// more was modelled low.)
    pub fn add_summary(&mut self, kernel: &str, class: &str, size: u64, mean: f64, dev: f64, n: u64) {
        let k = (n as usize).clamp(1, MAX_SAMPLES);
        if k % 2 == 1 {
            self.record(kernel, class, size, mean.max(0.0));
        }
        for _ in 0..k / 2 {
            self.record(kernel, class, size, (mean - dev).max(0.0));
            self.record(kernel, class, size, mean + dev);
        }
    }

    /// Whether anything is known of `kernel` on `class`.
    pub fn knows(&self, kernel: &str, class: &str) -> bool {
        self.histories.get(kernel).is_some_and(|h| h.contains_key(class))
    }

    /// Kernels the model knows.
    pub fn kernels(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.histories.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The expected time of `kernel` on `class` for `size` bytes: the bucket's median when
    /// it has enough samples, else the regression over the other buckets.
    pub fn expected(&self, kernel: &str, class: &str, size: u64) -> Option<f64> {
        let h = self.histories.get(kernel)?.get(class)?;
        if let Some(b) = h.buckets.get(&bucket(size)) {
            if b.samples.len() >= MIN_SAMPLES || b.count as usize == b.samples.len() && !b.samples.is_empty() {
                return b.median();
            }
        }
        h.regression().map(|r| r.at(size).max(0.0))
    }

    /// The spread (median absolute deviation) of the bucket of `size`, if it has samples.
    pub fn spread(&self, kernel: &str, class: &str, size: u64) -> Option<f64> {
        self.histories
            .get(kernel)?
            .get(class)?
            .buckets
            .get(&bucket(size))?
            .spread()
    }

    /// Sets a link's measured bandwidth and latency.
    pub fn set_link(&mut self, from: &str, to: &str, link: LinkModel) {
        self.links.insert(format!("{from}->{to}"), link);
    }

    /// A measured link.
    pub fn link(&self, from: &str, to: &str) -> Option<LinkModel> {
        self.links.get(&format!("{from}->{to}")).copied()
    }

    /// Writes the model as JSON.
    pub fn save(&self, path: &std::path::Path) -> Result<(), ModelFileError> {
        let p = path.display().to_string();
        let text = serde_json::to_string(self).map_err(|source| ModelFileError::Format {
            path: p.clone(),
            source,
        })?;
        std::fs::write(path, text).map_err(|source| ModelFileError::Io { path: p, source })
    }

    /// Reads a model written by [`PerfModel::save`] (a regular file of at most
    /// [`MAX_MODEL_FILE_BYTES`]) and checks every value in it ([`PerfModel::validate`]): a
    /// file is input, and its samples go straight into predictions and planning.
    pub fn load(path: &std::path::Path) -> Result<Self, ModelFileError> {
        let p = path.display().to_string();
        let text =
            crate::limits::read_regular_file(path, MAX_MODEL_FILE_BYTES).map_err(|reason| ModelFileError::Invalid {
                path: p.clone(),
                position: "file".into(),
                reason,
            })?;
        let model: PerfModel = serde_json::from_str(&text).map_err(|source| ModelFileError::Format {
            path: p.clone(),
            source,
        })?;
        model.validate().map_err(|(position, reason)| ModelFileError::Invalid {
            path: p,
            position,
            reason,
        })?;
        Ok(model)
    }

    /// Checks what [`PerfModel::record`] would have ensured, for a model read from a file:
    /// every sample a duration (`crate::limits::seconds`), at most [`MAX_SAMPLES`] per
    /// bucket with the ring's next slot among them, sizes finite and non-negative, links
    /// with a positive, finite bandwidth and a latency that is a duration. The error gives
    /// the place (`histories.KERNEL.CLASS.buckets[B]`, `links.FROM->TO`) and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (kernel, classes) in &self.histories {
            for (class, history) in classes {
                for (b, bucket) in &history.buckets {
                    let at = || {
                        format!(
                            "histories.{}.{}.buckets[{b}]",
                            crate::limits::escape_controls(kernel),
                            crate::limits::escape_controls(class)
                        )
                    };
                    if bucket.samples.len() > MAX_SAMPLES || bucket.next >= MAX_SAMPLES {
                        return Err((
                            at(),
                            format!(
                                "{} samples with next slot {} (a bucket keeps at most {MAX_SAMPLES})",
                                bucket.samples.len(),
                                bucket.next
                            ),
                        ));
                    }
                    if (bucket.count as usize) < bucket.samples.len() {
                        return Err((
                            at(),
                            format!("count {} is below its {} samples", bucket.count, bucket.samples.len()),
                        ));
                    }
                    if !(bucket.size.is_finite() && bucket.size >= 0.0) {
                        return Err((at(), format!("mean size {} is not a size in bytes", bucket.size)));
                    }
                    for (i, &v) in bucket.samples.iter().enumerate() {
                        crate::limits::seconds(v).map_err(|why| (format!("{}.samples[{i}]", at()), why))?;
                    }
                }
            }
        }
        for (name, link) in &self.links {
            let at = || format!("links.{}", crate::limits::escape_controls(name));
            crate::limits::positive(link.bandwidth)
                .map_err(|why| (at(), format!("bandwidth {} bytes/s: {why}", link.bandwidth)))?;
            crate::limits::seconds(link.latency).map_err(|why| (at(), format!("latency {} s: {why}", link.latency)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_modelled_at_its_mean_whatever_its_count() {
        // Sirocco's CPU potrf: mean 7.38 ms over many runs, which used to come out 6.83.
        for n in [1, 2, 3, 7, 64, 1000] {
            let mut m = PerfModel::default();
            m.add_summary("potrf", "cpu", 1 << 20, 7.38e-3, 1.1e-3, n);
            let t = m.expected("potrf", "cpu", 1 << 20).unwrap();
            assert!((t - 7.38e-3).abs() < 1e-12, "n={n}: {t}");
        }
    }

    #[test]
    fn medians_ignore_outliers_and_rank_devices() {
        let mut m = PerfModel::new();
        for i in 0..40 {
            // GPU is 10x faster, but 3 of its samples are 100x spikes.
            m.record("gemm", "cpu", 1 << 20, 1e-2 + (i % 3) as f64 * 1e-4);
            let spike = if i % 13 == 0 { 100.0 } else { 1.0 };
            m.record("gemm", "gpu", 1 << 20, 1e-3 * spike);
        }
        let (cpu, gpu) = (
            m.expected("gemm", "cpu", 1 << 20).unwrap(),
            m.expected("gemm", "gpu", 1 << 20).unwrap(),
        );
        assert!(gpu < cpu / 5.0, "cpu {cpu} gpu {gpu}");
        assert!((gpu - 1e-3).abs() < 1e-9);
        assert!(m.spread("gemm", "gpu", 1 << 20).unwrap() < 1e-4);
    }

    #[test]
    fn regression_fills_unseen_sizes() {
        let mut m = PerfModel::new();
        for &n in &[64u64, 128, 256, 512] {
            let size = n * n * 8;
            let t = 1e-9 * (n as f64).powi(3);
            for _ in 0..5 {
                m.record("k", "cpu", size, t);
            }
        }
        let n = 1024u64;
        let got = m.expected("k", "cpu", n * n * 8).unwrap();
        let want = 1e-9 * (n as f64).powi(3);
        assert!((got / want - 1.0).abs() < 0.15, "got {got}, want {want}");
        assert_eq!(m.expected("k", "gpu", 8), None);
        assert_eq!(m.expected("other", "cpu", 8), None);
    }

    #[test]
    fn summaries_and_files_round_trip() {
        let mut m = PerfModel::new();
        m.add_summary("potrf", "gpu", 409_600, 1e-4, 1e-5, 500);
        assert!((m.expected("potrf", "gpu", 409_600).unwrap() - 1e-4).abs() < 2e-5);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.json");
        m.save(&p).unwrap();
        assert_eq!(PerfModel::load(&p).unwrap(), m);
        m.set_link(
            "host",
            "gpu",
            LinkModel {
                bandwidth: 12e9,
                latency: 1e-5,
            },
        );
        m.save(&p).unwrap();
        assert_eq!(
            PerfModel::load(&p).unwrap().link("host", "gpu").unwrap().bandwidth,
            12e9
        );
        // Files written before links existed still load.
        std::fs::write(&p, r#"{"histories": {}}"#).unwrap();
        assert!(PerfModel::load(&p).unwrap().link("host", "gpu").is_none());
        std::fs::write(&p, "{").unwrap();
        assert!(PerfModel::load(&p).unwrap_err().to_string().contains("model.json"));
    }

    #[test]
    fn model_files_with_unusable_values_are_refused_naming_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let bucket = |body: &str| format!(r#"{{"histories":{{"k":{{"cpu":{{"buckets":{{"4":{{{body}}}}}}}}}}}}}"#);
        for (text, says) in [
            (
                bucket(r#""samples":[1,-1],"next":2,"size":1,"count":2"#),
                "buckets[4].samples[1]: -1 s",
            ),
            (
                bucket(r#""samples":[1e300],"next":1,"size":1,"count":1"#),
                "over the 1e9 s limit",
            ),
            (bucket(r#""samples":[1],"next":64,"size":1,"count":1"#), "next slot 64"),
            (
                bucket(r#""samples":[1,1],"next":1,"size":1,"count":1"#),
                "count 1 is below",
            ),
            (bucket(r#""samples":[1],"next":1,"size":-3,"count":1"#), "mean size -3"),
            (
                r#"{"histories":{},"links":{"host->gpu":{"bandwidth":-1,"latency":0}}}"#.to_string(),
                "links.host->gpu: bandwidth -1",
            ),
            (
                r#"{"histories":{},"links":{"host->gpu":{"bandwidth":1,"latency":-1}}}"#.to_string(),
                "links.host->gpu: latency -1",
            ),
        ] {
            std::fs::write(&p, &text).unwrap();
            let e = PerfModel::load(&p).unwrap_err().to_string();
            assert!(e.contains("m.json") && e.contains(says), "{text}: {e}");
        }
        std::fs::write(&p, bucket(r#""samples":[1,2],"next":2,"size":1,"count":9"#)).unwrap();
        assert!(PerfModel::load(&p).is_ok());
        // Not a regular file: refused, not read.
        assert!(PerfModel::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("directory"));
    }
}
