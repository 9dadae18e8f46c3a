//! CPU features a task can require (`TaskBuilder::require_feature("avx2")`, `"features"` in
//! graph files).

/// The features of this CPU that tasks may name, detected at run time.
pub(crate) fn detect() -> Vec<String> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => { $( if std::arch::is_x86_feature_detected!($name) { f.push($name.to_string()); } )* };
        }
        probe!("sse4.2", "avx", "avx2", "fma", "avx512f", "bmi2", "popcnt");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($name) { f.push($name.to_string()); } )* };
        }
        probe!("neon", "sve", "fp16");
    }
    f
}
