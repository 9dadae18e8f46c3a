//! Bounds on the numbers hexec takes from input (graph files, performance-model files,
//! machine specs, StarPU directories), and total conversions for what passes them.
//!
//! Every duration, speed, bandwidth and latency is checked once, where it enters, by the
//! functions here, and refused with a message that the caller prefixes with where it came
//! from (file and line, spec field). Past that point the simulator, the lower bounds and the
//! deadline prediction may assume finite, non-negative values; they still never panic or
//! loop for ever on others (see [`duration`] and `sim::bound`), so that a value that slips
//! past a check costs a wrong number, not a hang.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// The longest duration hexec accepts from input, in seconds (about 31.7 years): anything
/// longer is a mistake (a unit error, `1e300`, `u64::MAX` milliseconds), and refusing it keeps
/// every sum of durations finite and every makespan printable.
pub const MAX_DURATION_S: f64 = 1e9;

/// The most workers (CPU cores plus GPUs) a modelled machine may have. A machine's
/// per-worker tables are quadratic (each core's closeness to every other, each worker's
/// victim list), so 65,536 workers would take tens of gigabytes; 1024 take about 10 MB,
/// and the largest machines hexec models (StarPU's) have a few dozen.
pub const MAX_WORKERS: usize = 1024;

/// `v` as a duration in seconds: finite, non-negative and at most [`MAX_DURATION_S`].
pub fn seconds(v: f64) -> Result<f64, String> {
    if v.is_finite() && (0.0..=MAX_DURATION_S).contains(&v) {
        Ok(v)
    } else if v.is_finite() && v > MAX_DURATION_S {
        Err(format!(
            "{} s is not a usable duration (over the {MAX_DURATION_S:e} s limit)",
            number(v)
        ))
    } else {
        Err(format!("{} s is not a duration (negative, NaN or infinite)", number(v)))
    }
}

/// `v` as a speed, rate or factor that something is divided by: finite and positive.
pub fn positive(v: f64) -> Result<f64, String> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{} is not a positive, finite number", number(v)))
    }
}

/// `v` for messages: plain when short, in scientific notation when very large or small
/// (`1e300`, not three hundred digits).
pub fn number(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-6..1e15).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `secs` as a [`Duration`], never panicking (unlike `Duration::from_secs_f64`): NaN and
/// negative values become zero, values past `Duration::MAX` saturate. For times computed
/// from validated inputs, where an odd value is a wrong number, not a reason to abort.
pub fn duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// `s` with its control characters (escape sequences, newlines, tabs, NUL...) escaped as
/// `\u{1b}`, `\n`...: names from input go into messages printed on terminals, where raw
/// escape sequences would act on the terminal or forge lines. Other characters are kept.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Reads the regular file at `path` (through symbolic links) as UTF-8 text, refusing
/// anything else and anything over `limit` bytes without reading it: a FIFO would block the
/// open (or the read) for ever, a device such as `/dev/zero` never ends, and a huge file
/// would be read whole before its size is noticed. The error says why, without the path
/// (the caller names it).
pub fn read_regular_file(path: &Path, limit: u64) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("not a regular file ({})", file_kind(&meta)));
    }
    if meta.len() > limit {
        return Err(format!("{} bytes, over the {limit}-byte limit", meta.len()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // The file may have been replaced by a FIFO since: open without blocking, then
        // check what was opened.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("not a regular file ({})", file_kind(&meta)));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("over the {limit}-byte limit"));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// What a file that is not a regular file is, for messages.
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_conversions() {
        assert_eq!(seconds(0.0), Ok(0.0));
        assert_eq!(seconds(MAX_DURATION_S), Ok(MAX_DURATION_S));
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300, -0.5e-300] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
        assert!(seconds(1e300).unwrap_err().contains("limit"));
        assert!(positive(0.0).is_err() && positive(-1.0).is_err() && positive(f64::NAN).is_err());
        assert_eq!(positive(2.5), Ok(2.5));
        assert_eq!(duration(-1e6), Duration::ZERO);
        assert_eq!(duration(f64::NAN), Duration::ZERO);
        assert_eq!(duration(f64::INFINITY), Duration::MAX);
        assert_eq!(duration(1e300), Duration::MAX);
        assert_eq!(duration(1.5), Duration::from_millis(1500));
        assert_eq!(escape_controls("plain é"), "plain é");
        assert_eq!(escape_controls("a\x1b[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "hello").unwrap();
        assert_eq!(read_regular_file(&p, 5).unwrap(), "hello");
        assert!(read_regular_file(&p, 4).unwrap_err().contains("4-byte limit"));
        assert!(read_regular_file(dir.path(), 5).unwrap_err().contains("directory"));
        #[cfg(unix)]
        assert!(read_regular_file(Path::new("/dev/zero"), 5)
            .unwrap_err()
            .contains("device"));
    }
}
