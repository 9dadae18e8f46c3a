//! Spill files: host copies written to disk when the host's memory budget is full.
//!
//! Invariants:
//! - every spill file lives in one directory per runtime, created when the runtime is built
//!   (with a host limit) and removed, with whatever it still holds, when the runtime's
//!   budgets are dropped — after a successful run, a failed one, or a panic that unwinds;
//! - the directory is made atomically under an unpredictable name (`hexec-spill-PID-XXXXXX`),
//!   mode 0700, and never reused if it exists; its files are created new (`O_EXCL`), never
//!   through a symbolic link (`O_NOFOLLOW`), mode 0600. So another user of a shared temporary
//!   directory can neither read the data nor make hexec write through a planted link (the
//!   parent is never created: a missing one is an error);
//! - a file is read back only after its length and CRC-32 match what was written, so a file
//!   damaged on disk is reported, never silently used. The checksum detects corruption, not
//!   tampering: the directory's permissions are the defence against other users;
//! - the bytes of the live files are accounted against the directory's capacity before they
//!   are written, and given back when the file is dropped (which deletes it);
//! - [`remove_stale`] removes the directories of hexec processes that no longer exist (a
//!   process killed with SIGKILL cannot remove its own), only real directories owned by this
//!   user, never following a symbolic link.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The name every spill directory starts with, followed by `PID-`.
pub(crate) const PREFIX: &str = "hexec-spill-";

/// The spill directory of one runtime.
#[derive(Debug)]
pub(crate) struct SpillDir {
    /// Removes the directory, and what is left in it, on drop.
    dir: tempfile::TempDir,
    next: AtomicU64,
    usage: Arc<DiskUsage>,
}

/// Bytes in a spill directory's live files, against its capacity.
#[derive(Debug, Default)]
pub(crate) struct DiskUsage {
    pub capacity: u64,
    pub used: AtomicU64,
    pub peak: AtomicU64,
}

/// One spilled host copy; dropping it deletes the file.
#[derive(Debug)]
pub(crate) struct SpillFile {
    pub path: PathBuf,
    len: usize,
    checksum: u32,
    usage: Arc<DiskUsage>,
}

impl SpillDir {
    /// Creates a new directory `hexec-spill-PID-XXXXXX` (random suffix, mode 0700) in
    /// `parent`, which must exist, for at most `capacity` bytes of files. The error names the
    /// parent and why.
    pub fn create(parent: &Path, capacity: u64) -> Result<Self, String> {
        let mut b = tempfile::Builder::new();
        let prefix = format!("{PREFIX}{}-", std::process::id());
        b.prefix(&prefix);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o700));
        }
        // `tempdir_in` makes one `mkdir` (which fails if the name exists, and then tries
        // another name) and never creates the parent.
        let dir = b.tempdir_in(parent).map_err(|e| {
            format!(
                "cannot create a spill directory in {}: {e} (it must be an existing, writable directory; set TMPDIR or RuntimeBuilder::spill_dir)",
                parent.display()
            )
        })?;
        Ok(SpillDir {
            dir,
            next: AtomicU64::new(0),
            usage: Arc::new(DiskUsage {
                capacity,
                ..DiskUsage::default()
            }),
        })
    }

    /// The directory's disk use.
    pub fn usage(&self) -> &DiskUsage {
        &self.usage
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `bytes` to a new file; on any failure (a full disk included) nothing is left
    /// behind and the error names the file.
    pub fn write(&self, datum: &str, bytes: &[u8]) -> Result<SpillFile, String> {
        let len = bytes.len() as u64;
        let u = &self.usage;
        if u.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |x| {
                x.checked_add(len).filter(|&n| n <= u.capacity)
            })
            .is_err()
        {
            return Err(format!(
                "spilling datum '{datum}' ({len} bytes) would pass the spill disk limit of {} bytes ({} bytes in use)",
                u.capacity,
                u.used.load(Ordering::Relaxed)
            ));
        }
        u.peak.fetch_max(u.used.load(Ordering::Relaxed), Ordering::Relaxed);
        let path = self
            .path()
            .join(format!("{}.bin", self.next.fetch_add(1, Ordering::Relaxed)));
        let mut created = false;
        let written = create_new(&path).and_then(|mut f| {
            created = true;
            f.write_all(bytes)?;
            f.flush()
        });
        if let Err(e) = written {
            // Only a file this call created is ours to remove: a name that already existed
            // (which cannot happen in our own 0700 directory) is left alone.
            if created {
                let _ = std::fs::remove_file(&path);
            }
            u.used.fetch_sub(len, Ordering::AcqRel);
            return Err(format!("spilling datum '{datum}' to {} failed: {e}", path.display()));
        }
        Ok(SpillFile {
            path,
            len: bytes.len(),
            checksum: checksum(bytes),
            usage: self.usage.clone(),
        })
    }
}

/// Opens a new file for writing: fails if the name exists (a file or a symbolic link, which is
/// never followed), mode 0600.
fn create_new(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Opens a spill file for reading, refusing a symbolic link in its place.
fn open_existing(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

impl SpillFile {
    /// Reads the file back into `out` (its length), checking length and checksum.
    pub fn read_into(&self, datum: &str, out: &mut [u8]) -> Result<(), String> {
        let fail = |what: String| format!("reading spill file {} of datum '{datum}': {what}", self.path.display());
        if out.len() != self.len {
            return Err(fail(format!("expected {} bytes, buffer holds {}", self.len, out.len())));
        }
        let mut f = open_existing(&self.path).map_err(|e| fail(e.to_string()))?;
        let on_disk = f.metadata().map_err(|e| fail(e.to_string()))?.len();
        if on_disk != self.len as u64 {
            return Err(fail(format!("file holds {on_disk} bytes, {} were written", self.len)));
        }
        f.read_exact(out).map_err(|e| fail(e.to_string()))?;
        if checksum(out) != self.checksum {
            return Err(fail("checksum mismatch: the file was damaged on disk".into()));
        }
        Ok(())
    }

    /// Deletes the file (as dropping it does).
    pub fn remove(self) {}
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.usage.used.fetch_sub(self.len as u64, Ordering::AcqRel);
    }
}

/// CRC-32 (IEEE, SIMD-accelerated by `crc32fast`): it detects every burst of up to 32
/// damaged bits and any 1-3 flipped bits in files of our sizes, which a multiplicative hash
/// does not. It detects accidents, not an adversary (who could recompute it).
fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The process id in a spill directory's name `hexec-spill-PID-...`, if it is one.
fn pid_of(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(PREFIX)?.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0 && p <= i32::MAX as u32)
}

/// Whether process `pid` exists (also when it belongs to another user).
#[cfg(unix)]
fn alive(pid: u32) -> bool {
    // `pid_of` keeps pids in 1..=i32::MAX, so this names one process, never a group.
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists
    // and may be signalled. It takes plain integers and touches no memory of ours.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes, from `parent`, the spill directories of hexec processes that no longer exist;
/// returns what it removed. Only entries named `hexec-spill-PID-...` whose process is gone,
/// that are real directories (a symbolic link is never followed) owned by this user, are
/// removed; anything unreadable is left alone.
#[cfg(unix)]
pub(crate) fn remove_stale(parent: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    // SAFETY: geteuid takes nothing and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(pid_of) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let path = entry.path();
        // lstat: a symbolic link reports itself, not what it points to.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_dir() || meta.uid() != me {
            continue;
        }
        // `remove_dir_all` does not follow symbolic links inside the directory either.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale spill directory"),
        }
    }
    removed
}

/// Without Unix process ids and owners, nothing is known to be stale.
#[cfg(not(unix))]
pub(crate) fn remove_stale(_parent: &Path) -> Vec<PathBuf> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private parent for one test, removed with what is left in it.
    fn parent(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("hexec-spilltest-{tag}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn round_trip_detects_damage_and_cleans_up() {
        let parent = parent("roundtrip");
        let dir = SpillDir::create(parent.path(), 1500).unwrap();
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let f = dir.write("x", &data).unwrap();
        let mut back = vec![0u8; data.len()];
        f.read_into("x", &mut back).unwrap();
        assert_eq!(back, data);
        let mut bytes = std::fs::read(&f.path).unwrap();
        bytes[500] ^= 1;
        std::fs::write(&f.path, &bytes).unwrap();
        let err = f.read_into("x", &mut back).unwrap_err();
        assert!(err.contains("checksum") && err.contains("'x'"), "{err}");
        std::fs::write(&f.path, &bytes[..10]).unwrap();
        assert!(f.read_into("x", &mut back).unwrap_err().contains("10 bytes"));
        let e = dir.write("y", &data).unwrap_err();
        assert!(e.contains("'y'") && e.contains("spill disk limit of 1500 bytes"), "{e}");
        assert_eq!(dir.usage().used.load(Ordering::Relaxed), 1001);
        drop(f);
        assert_eq!(dir.usage().used.load(Ordering::Relaxed), 0);
        assert!(dir.write("y", &data).is_ok(), "room again once the first file is gone");
        let path = dir.path().to_path_buf();
        assert!(path.exists());
        drop(dir);
        assert!(!path.exists());
    }

    /// Two flips of the top bit of two 8-byte words cancel out in a word-wise FNV-1a hash
    /// (the multiplier is odd, so bit 63 only ever reaches bit 63); CRC-32 sees them.
    #[test]
    fn damage_that_cancels_in_a_multiplicative_hash_is_detected() {
        let parent = parent("crc");
        let dir = SpillDir::create(parent.path(), u64::MAX).unwrap();
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        let f = dir.write("z", &data).unwrap();
        let mut bytes = std::fs::read(&f.path).unwrap();
        bytes[7] ^= 0x80;
        bytes[15] ^= 0x80;
        std::fs::write(&f.path, &bytes).unwrap();
        let mut back = vec![0u8; data.len()];
        let err = f.read_into("z", &mut back).unwrap_err();
        assert!(err.contains("checksum") && err.contains("'z'"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn the_directory_is_private_new_and_never_writes_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let parent = parent("private");
        let victim = parent.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = SpillDir::create(parent.path(), u64::MAX).unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap().to_string();
        let prefix = format!("hexec-spill-{}-", std::process::id());
        assert!(name.starts_with(&prefix) && name.len() > prefix.len(), "{name}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        // A second runtime of the same process gets another directory.
        let other = SpillDir::create(parent.path(), u64::MAX).unwrap();
        assert_ne!(other.path(), dir.path());
        let f = dir.write("a", b"12345678").unwrap();
        assert_eq!(mode(&f.path), 0o600);
        // A link planted where the next file goes (only possible for the directory's owner)
        // makes the write fail; the link's target is untouched.
        std::os::unix::fs::symlink(&victim, dir.path().join("1.bin")).unwrap();
        let e = dir.write("b", b"overwrite").unwrap_err();
        assert!(e.contains("'b'") && e.contains("1.bin"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            std::fs::symlink_metadata(dir.path().join("1.bin")).is_ok(),
            "not ours to remove"
        );
        assert_eq!(
            dir.usage().used.load(Ordering::Relaxed),
            8,
            "the failed write gave its bytes back"
        );
    }

    #[test]
    fn a_missing_parent_is_an_error_naming_it_and_is_not_created() {
        let parent = parent("missing");
        let missing = parent.path().join("no/such/dir");
        let e = SpillDir::create(&missing, u64::MAX).unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(!parent.path().join("no").exists());
    }

    #[test]
    fn names_give_their_pid() {
        assert_eq!(pid_of("hexec-spill-123-abc"), Some(123));
        assert_eq!(pid_of("hexec-spill-123-"), Some(123));
        for bad in [
            "hexec-spill-123",
            "hexec-spill--x",
            "hexec-spill-0-x",
            "hexec-spill-+5-x",
            "hexec-spill-99999999999-x",
            "other-1-x",
        ] {
            assert_eq!(pid_of(bad), None, "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn only_our_own_real_directories_of_dead_processes_are_removed() {
        let parent = parent("stale");
        // A process that has exited: its pid is dead (and not reused this soon).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = parent.path().join(format!("hexec-spill-{dead}-x"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("0.bin"), b"old").unwrap();
        let live = parent.path().join(format!("hexec-spill-{}-y", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        // A link with a stale name pointing at a directory of ours: never followed.
        let target = parent.path().join("keep");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("f"), b"kept").unwrap();
        let link = parent.path().join(format!("hexec-spill-{dead}-link"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // A file with a stale name is not a spill directory.
        let file = parent.path().join(format!("hexec-spill-{dead}-file"));
        std::fs::write(&file, b"f").unwrap();
        let removed = remove_stale(parent.path());
        assert_eq!(removed, vec![stale.clone()]);
        assert!(!stale.exists());
        assert!(live.exists() && file.exists() && target.join("f").exists());
        assert!(std::fs::symlink_metadata(&link).is_ok());
    }
}
