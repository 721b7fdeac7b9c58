//! PLACEHOLDER while the redis backend is written: refuses to open.

use super::{LogError, LogOptions};
use crate::config::LogConfig;

pub struct RedisLog;

impl RedisLog {
    pub async fn open(_cfg: &LogConfig, _opts: LogOptions) -> Result<std::sync::Arc<dyn super::EventLog>, LogError> {
        Err(LogError::Unavailable("the redis log is not built yet".into()))
    }
}
