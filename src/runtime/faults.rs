//! Fault injection: deterministic failures for testing recovery, in hexec's tests and in the
//! user's own pipelines (`hexec run --inject SPEC`, [`RuntimeBuilder::inject`]).
//!
//! A plan is a list of rules, written `kind[:key=value|:target]...` and joined by commas:
//!
//! - `panic[:kernel=NAME][:p=P]` — a CPU attempt of a task (of that kernel) fails as if its
//!   kernel had panicked, with probability `P` (default 1);
//! - `gpu-error[:kernel=NAME][:p=P]` — a GPU attempt fails as a GPU error would, before
//!   anything is submitted;
//! - `device-loss:gpuN[:after=DURATION]` — GPU `N` is lost (destroyed, as a driver reset
//!   would) once the run has lasted `DURATION` (`2s`, `150ms`; default at once);
//! - `worker-loss:cpuN[:after=DURATION]` — CPU worker `N` is lost: it runs nothing more,
//!   and the tasks that reach it go to the others (as its thread dying would leave them);
//! - `slow[:kernel=NAME][:p=P][:delay=DURATION][:cpuN]` — a CPU attempt (of that kernel, on
//!   that worker) takes `DURATION` longer (default 1s), as on a throttled or shared core: a
//!   straggler, for speculative re-execution to catch. The delay ends early when the
//!   attempt's result is no longer wanted, as a kernel polling its cancellation would;
//! - `seed=S` — the seed of the draws (default 0).
//!
//! Draws are a hash of (seed, task, attempt), so a plan fails the same attempts on every
//! run, whatever the schedule: a test can count on them, and a retried attempt draws again.
//!
//! [`RuntimeBuilder::inject`]: super::RuntimeBuilder::inject

use std::time::Duration;

/// One kind of fault.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultRule {
    /// CPU attempts of tasks (of `kernel`, if set) fail with probability `p`.
    Panic {
        /// Only tasks of this kernel, when set.
        kernel: Option<String>,
        /// Probability per attempt.
        p: f64,
    },
    /// GPU attempts of tasks (of `kernel`, if set) fail with probability `p`.
    GpuError {
        /// Only tasks of this kernel, when set.
        kernel: Option<String>,
        /// Probability per attempt.
        p: f64,
    },
    /// GPU `gpu` is lost once the run has lasted `after`.
    DeviceLoss {
        /// The GPU, by index.
        gpu: usize,
        /// When, from the run's start.
        after: Duration,
    },
    /// The worker named `worker` (`cpu1`) is lost once the run has lasted `after`: it runs
    /// nothing more, and what reaches it goes to the others.
    WorkerLoss {
        /// The worker's name.
        worker: String,
        /// When, from the run's start.
        after: Duration,
    },
    /// CPU attempts of tasks (of `kernel`, on `worker`, if set) take `delay` longer, with
    /// probability `p`.
    Slow {
        /// Only tasks of this kernel, when set.
        kernel: Option<String>,
        /// Only on the worker of this name, when set.
        worker: Option<String>,
        /// Probability per attempt.
        p: f64,
        /// The added time.
        delay: Duration,
    },
}

/// Faults to inject into runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Seed of the draws (the same seed draws the same faults).
    pub seed: u64,
    /// The rules.
    pub rules: Vec<FaultRule>,
}

/// Where an attempt runs, for [`FaultPlan::fails`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Site {
    Cpu,
    Gpu,
}

impl FaultPlan {
    /// Whether attempt `attempt` (0 for the first) of `task` (running `kernel`) on `site`
    /// fails, and why.
    pub(crate) fn fails(&self, site: Site, task: u32, attempt: u32, kernel: &str) -> Option<String> {
        self.rules.iter().find_map(|r| {
            let (k, p, what) = match (r, site) {
                (FaultRule::Panic { kernel, p }, Site::Cpu) => (kernel, *p, "panicked"),
                (FaultRule::GpuError { kernel, p }, Site::Gpu) => (kernel, *p, "GPU error"),
                _ => return None,
            };
            if k.as_deref().is_some_and(|k| k != kernel) {
                return None;
            }
            (draw(self.seed, task, attempt) < p)
                .then(|| format!("{what}: injected fault (task attempt {})", attempt + 1))
        })
    }

    /// How much longer attempt `attempt` of `task` (running `kernel`) takes on the CPU worker
    /// named `worker`, if it is made a straggler.
    pub(crate) fn slowdown(&self, task: u32, attempt: u32, kernel: &str, worker: &str) -> Option<Duration> {
        self.rules.iter().find_map(|r| match r {
            FaultRule::Slow {
                kernel: k,
                worker: w,
                p,
                delay,
            } if k.as_deref().is_none_or(|k| k == kernel)
                && w.as_deref().is_none_or(|w| w == worker)
                // Its own draws: a plan with both panics and stragglers picks them apart.
                && draw(self.seed ^ 0x5105_5105, task, attempt) < *p =>
            {
                Some(*delay)
            }
            _ => None,
        })
    }

    /// When to lose the worker named `name`, if ever.
    pub(crate) fn worker_loss(&self, name: &str) -> Option<Duration> {
        self.rules
            .iter()
            .filter_map(|r| match r {
                FaultRule::WorkerLoss { worker, after } if worker == name => Some(*after),
                _ => None,
            })
            .min()
    }

    /// The GPUs to lose, and when.
    pub(crate) fn device_losses(&self) -> impl Iterator<Item = (usize, Duration)> + '_ {
        self.rules.iter().filter_map(|r| match r {
            FaultRule::DeviceLoss { gpu, after } => Some((*gpu, *after)),
            _ => None,
        })
    }

    /// Whether the plan injects anything.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A uniform draw in [0, 1) from (seed, task, attempt).
fn draw(seed: u64, task: u32, attempt: u32) -> f64 {
    let mut z = seed ^ (u64::from(task) << 20) ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl std::str::FromStr for FaultPlan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut plan = FaultPlan::default();
        for rule in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let mut parts = rule.split(':').map(str::trim);
            let kind = parts.next().unwrap_or_default();
            if let Some(seed) = kind.strip_prefix("seed=") {
                plan.seed = seed.parse().map_err(|_| format!("'{rule}': seed must be an integer"))?;
                continue;
            }
            let (mut kernel, mut p, mut gpu, mut after) = (None, 1.0, None, Duration::ZERO);
            let mut delay = Duration::from_secs(1);
            let mut worker = None;
            for part in parts {
                match part.split_once('=') {
                    Some(("kernel", k)) if !k.is_empty() => kernel = Some(k.to_string()),
                    Some(("p", v)) => {
                        p = v
                            .parse::<f64>()
                            .ok()
                            .filter(|p| (0.0..=1.0).contains(p))
                            .ok_or_else(|| format!("'{rule}': p must be a probability in [0, 1], got '{v}'"))?;
                    }
                    Some(("after", v)) => {
                        after = parse_duration(v)
                            .ok_or_else(|| format!("'{rule}': '{v}' is not a duration (e.g. 2s, 150ms)"))?
                    }
                    Some(("delay", v)) => {
                        delay = parse_duration(v)
                            .ok_or_else(|| format!("'{rule}': '{v}' is not a duration (e.g. 2s, 150ms)"))?
                    }
                    None if part.starts_with("gpu") => {
                        gpu = Some(
                            part[3..]
                                .parse::<usize>()
                                .map_err(|_| format!("'{rule}': '{part}' is not gpuN"))?,
                        );
                    }
                    None if part.starts_with("cpu") && part[3..].parse::<usize>().is_ok() => {
                        worker = Some(part.to_string());
                    }
                    _ => return Err(format!("'{rule}': unknown setting '{part}'")),
                }
            }
            plan.rules.push(match kind {
                "panic" => FaultRule::Panic { kernel, p },
                "gpu-error" => FaultRule::GpuError { kernel, p },
                "device-loss" => FaultRule::DeviceLoss {
                    gpu: gpu.ok_or_else(|| format!("'{rule}': say which GPU (device-loss:gpu0)"))?,
                    after,
                },
                "worker-loss" => FaultRule::WorkerLoss {
                    worker: worker.ok_or_else(|| format!("'{rule}': say which worker (worker-loss:cpu1)"))?,
                    after,
                },
                "slow" => FaultRule::Slow {
                    kernel,
                    worker,
                    p,
                    delay,
                },
                other => {
                    return Err(format!(
                        "unknown fault '{other}' (known: panic, gpu-error, device-loss, worker-loss, slow, seed=S)"
                    ))
                }
            });
        }
        Ok(plan)
    }
}

/// `2s`, `1.5s`, `150ms`, `20us`, `1m`; at most `limits::MAX_DURATION_S` (about 31 years).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" | "min" => n * 60.0,
        _ => return None,
    };
    // Held to the same bound as every duration from input (`limits::seconds`).
    crate::limits::seconds(secs).ok().map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_past_the_input_limit_are_refused() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("99999999999999s"), None);
    }

    #[test]
    fn parses_the_documented_forms_and_names_mistakes() {
        let plan: FaultPlan = "panic:kernel=gemm:p=0.05,device-loss:gpu1:after=2s,seed=7,gpu-error"
            .parse()
            .unwrap();
        assert_eq!(plan.seed, 7);
        assert_eq!(
            plan.rules,
            vec![
                FaultRule::Panic {
                    kernel: Some("gemm".into()),
                    p: 0.05
                },
                FaultRule::DeviceLoss {
                    gpu: 1,
                    after: Duration::from_secs(2)
                },
                FaultRule::GpuError { kernel: None, p: 1.0 },
            ]
        );
        for (bad, says) in [
            ("explode", "unknown fault 'explode'"),
            ("panic:p=2", "probability"),
            ("device-loss", "which GPU"),
            ("device-loss:gpu0:after=soon", "not a duration"),
            ("panic:colour=red", "unknown setting"),
            ("worker-loss", "which worker"),
        ] {
            let e = bad.parse::<FaultPlan>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn draws_are_deterministic_and_near_their_probability() {
        let plan: FaultPlan = "panic:p=0.1,seed=3".parse().unwrap();
        let hits = (0..100_000u32)
            .filter(|&t| plan.fails(Site::Cpu, t, 0, "k").is_some())
            .count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        assert_eq!(plan.fails(Site::Cpu, 5, 0, "k"), plan.fails(Site::Cpu, 5, 0, "k"));
        assert!(plan.fails(Site::Gpu, 5, 0, "k").is_none(), "panic rules are for CPUs");
        let slow: FaultPlan = "slow:p=0.1:delay=20ms:cpu1,seed=3".parse().unwrap();
        let slowed = (0..100_000u32)
            .filter(|&t| slow.slowdown(t, 0, "k", "cpu1") == Some(Duration::from_millis(20)))
            .count();
        assert!((9_000..11_000).contains(&slowed), "{slowed}");
        assert!(
            (0..1000).all(|t| slow.slowdown(t, 0, "k", "cpu0").is_none()),
            "cpu1 only"
        );
        let gemm_only: FaultPlan = "panic:kernel=gemm".parse().unwrap();
        assert!(gemm_only.fails(Site::Cpu, 1, 0, "axpy").is_none());
        assert!(gemm_only.fails(Site::Cpu, 1, 0, "gemm").is_some());
    }
}
