//! Spill files: host copies written to disk when the host's memory budget is full.
//!
//! Invariants:
//! - every spill file lives in one directory per runtime, created on the first spill and
//!   removed, with whatever it still holds, when the runtime's budgets are dropped — after a
//!   successful run, a failed one, or a panic that unwinds;
//! - a file is read back only after its length and checksum match what was written, so a file
//!   damaged on disk is reported, never silently used;
//! - the bytes of the live files are accounted against the directory's capacity before they
//!   are written, and given back when the file is dropped (which deletes it).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The spill directory of one runtime.
#[derive(Debug)]
pub(crate) struct SpillDir {
    path: PathBuf,
    created: OnceLock<Result<(), String>>,
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
    checksum: u64,
    usage: Arc<DiskUsage>,
}

impl SpillDir {
    /// A directory named for this process and runtime under `parent` (not created yet), for
    /// at most `capacity` bytes of files.
    pub fn new(parent: &Path, runtime: u64, capacity: u64) -> Self {
        SpillDir {
            path: parent.join(format!("hexec-spill-{}-{runtime}", std::process::id())),
            created: OnceLock::new(),
            next: AtomicU64::new(0),
            usage: Arc::new(DiskUsage {
                capacity,
                ..DiskUsage::default()
            }),
        }
    }

    /// The directory's disk use.
    pub fn usage(&self) -> &DiskUsage {
        &self.usage
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to a new file; on any failure (a full disk included) nothing is left
    /// behind and the error names the file.
    pub fn write(&self, datum: &str, bytes: &[u8]) -> Result<SpillFile, String> {
        self.created
            .get_or_init(|| {
                std::fs::create_dir_all(&self.path)
                    .map_err(|e| format!("cannot create spill directory {}: {e}", self.path.display()))
            })
            .clone()?;
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
            .path
            .join(format!("{}.bin", self.next.fetch_add(1, Ordering::Relaxed)));
        let written = File::create(&path).and_then(|mut f| {
            f.write_all(bytes)?;
            f.flush()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
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

impl Drop for SpillDir {
    fn drop(&mut self) {
        if self.created.get().is_some() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl SpillFile {
    /// Reads the file back into `out` (its length), checking length and checksum.
    pub fn read_into(&self, datum: &str, out: &mut [u8]) -> Result<(), String> {
        let fail = |what: String| format!("reading spill file {} of datum '{datum}': {what}", self.path.display());
        if out.len() != self.len {
            return Err(fail(format!("expected {} bytes, buffer holds {}", self.len, out.len())));
        }
        let mut f = File::open(&self.path).map_err(|e| fail(e.to_string()))?;
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

/// FNV-1a over 8-byte words (then the tail bytes): cheap and enough to catch damage, not
/// an adversary.
fn checksum(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("chunks of 8"))).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_detects_damage_and_cleans_up() {
        let parent = std::env::temp_dir().join(format!("hexec-spill-test-{}", std::process::id()));
        let dir = SpillDir::new(&parent, 7, 1500);
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
        let _ = std::fs::remove_dir(&parent);
    }
}
