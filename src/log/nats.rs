//! PLACEHOLDER while the nats backend is written: refuses to open.

use super::{LogError, LogOptions};
use crate::config::LogConfig;

pub struct NatsLog;

impl NatsLog {
    pub async fn open(_cfg: &LogConfig, _opts: LogOptions) -> Result<std::sync::Arc<dyn super::EventLog>, LogError> {
        Err(LogError::Unavailable("the nats log is not built yet".into()))
    }
}
