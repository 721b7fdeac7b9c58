//! Generator processes of one run meeting at barriers in a shared directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Processes of one run meeting at named points.
pub struct Sync {
    pub dir: PathBuf,
    pub procs: usize,
    pub index: usize,
}

impl Sync {
    /// Waits until every process has arrived at `name`. Returns false (and the run goes on)
    /// when some did not arrive within `timeout`.
    pub async fn barrier(&self, name: &str, timeout: Duration) -> anyhow::Result<bool> {
        if self.procs <= 1 {
            return Ok(true);
        }
        std::fs::write(self.dir.join(format!("{name}.{}", self.index)), b"")
            .with_context(|| format!("cannot write to {}", self.dir.display()))?;
        let prefix = format!("{name}.");
        let deadline = Instant::now() + timeout;
        loop {
            let count = std::fs::read_dir(&self.dir)?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count();
            if count >= self.procs {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
