//! Helpers shared by several integration-test crates (`mod common;`).

use std::path::Path;

/// The shared StarPU performance models (bus files and codelet models per machine).
pub const STARPU: &str = "../shared/workloads/heterogeneous/starpu_perfmodels";

/// A copy of the sirocco machine of `STARPU` in a temporary directory (bus files and codelet
/// models under `sampling/`), `None` when the shared data is not there.
pub fn sirocco_copy() -> Option<tempfile::TempDir> {
    let src = Path::new(STARPU).join("sampling");
    if !src.is_dir() {
        eprintln!("SKIPPED: {} not present", src.display());
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    for sub in ["bus", "codelets/45"] {
        let to = dir.path().join("sampling").join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if name.starts_with("sirocco.") || name.ends_with(".sirocco") {
                std::fs::copy(&p, to.join(&name)).unwrap();
            }
        }
    }
    Some(dir)
}
