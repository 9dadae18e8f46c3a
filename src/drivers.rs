//! What needs both drivers, the runtime and the simulator: the one layer above them both
//! (ARCHITECTURE.md, Layers). A runtime predicts deadlines with the simulator, which it may
//! not import; `RuntimeBuilder::build` is written here and hands it `crate::sim::predict`
//! through the interface in `crate::sched::predict`.

use crate::runtime::{BuildError, Runtime, RuntimeBuilder};

impl RuntimeBuilder {
    /// Discovers the machine (unless one was given) and builds the runtime.
    pub fn build(self) -> Result<Runtime, BuildError> {
        self.build_with(crate::sim::predict::predict)
    }
}
