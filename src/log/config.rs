//! `[log]`: which backend stores the events, with the settings of that backend only, and what
//! every backend takes (retention, dedupe). In the file the keys stay flat, as users write
//! them (`kind = "redis"`, `url`, `stream`, …); inside, each backend is a variant with its
//! own fields, checked when the configuration is read.
//!
//! ```
//! use ssegate::log::config::{Backend, LogConfig};
//!
//! let cfg: LogConfig = toml::from_str("kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"").unwrap();
//! assert!(matches!(&cfg.backend, Backend::Redis(engine) if engine.stream == "ssegate"));
//! let err = toml::from_str::<LogConfig>("kind = \"nats\"").unwrap_err();
//! assert!(err.to_string().contains("log.url is required"));
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::file::SyncMode;
use super::LogOptions;

/// The log's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Flat", into = "Flat")]
pub struct LogConfig {
    pub backend: Backend,
    /// Keep at most this many events; older ones are dropped (clients resuming from before
    /// them get `event: gap`).
    pub retention_events: u64,
    /// Drop events older than this many seconds (0 = no age limit).
    pub retention_age_s: u64,
    /// How long an idempotency key is remembered.
    pub dedupe_window_s: u64,
}

/// The backend that stores the events.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// In memory: lost on restart; for tests and throwaway runs.
    Memory,
    /// The embedded on-disk log in `server.data_dir` (the default).
    File {
        /// Memory for the newest events, in MiB (a quarter of it holds them).
        cache_mb: usize,
        /// When an append counts as durable (`log.sync`).
        sync: SyncMode,
        /// A segment file rolls at this size (`log.segment_mb`).
        segment_mb: usize,
    },
    /// A Redis stream shared by every node.
    Redis(EngineConfig),
    /// A NATS JetStream stream shared by every node.
    Nats {
        engine: EngineConfig,
        /// Credentials file (`.creds`), when the server uses NKEYS/JWT auth.
        credentials_file: Option<PathBuf>,
    },
}

/// A shared engine: where it is and what the stream is called.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// `redis://[user:password@]host:port[/db]` (`rediss://` for TLS), or
    /// `nats://[user:password@]host:port` (`tls://` for TLS; several comma-separated).
    pub url: String,
    /// Name of the Redis stream key / JetStream stream (other keys of ssegate are prefixed
    /// with it): letters, digits, `_` and `-`.
    pub stream: String,
    /// PEM file of the CA that signed the engine's TLS certificate (else the system's).
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            backend: Backend::File {
                cache_mb: DEFAULT_CACHE_MB,
                sync: SyncMode::Always,
                segment_mb: DEFAULT_SEGMENT_MB,
            },
            retention_events: 1_000_000,
            retention_age_s: 604_800,
            dedupe_window_s: 300,
        }
    }
}

/// The in-memory tail of the file log (16 MiB, as the quarter of the old 64 MiB page cache was).
const DEFAULT_CACHE_MB: usize = 16;
const DEFAULT_SEGMENT_MB: usize = 64;
/// The longest `log.sync` interval: what a power loss may cost stays small.
const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// `log.sync` as written: `"always"` or an interval such as `"5ms"`.
fn parse_sync(text: &str) -> Result<SyncMode, String> {
    if text == "always" {
        return Ok(SyncMode::Always);
    }
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() && d <= MAX_SYNC_INTERVAL => Ok(SyncMode::Every(d)),
        _ => Err(format!(
            "log.sync must be \"always\" or an interval from 1ms to 1s such as \"5ms\" (got {text:?})"
        )),
    }
}

fn sync_text(sync: SyncMode) -> String {
    match sync {
        SyncMode::Always => "always".into(),
        SyncMode::Every(d) => humantime::format_duration(d).to_string(),
    }
}
const DEFAULT_STREAM: &str = "ssegate";

impl LogConfig {
    /// An in-memory log with the default retention (tests, throwaway runs).
    pub fn memory() -> Self {
        Self {
            backend: Backend::Memory,
            ..Self::default()
        }
    }

    /// The backend's name, as `log.kind` spells it.
    pub fn kind(&self) -> LogKind {
        match self.backend {
            Backend::Memory => LogKind::Memory,
            Backend::File { .. } => LogKind::File,
            Backend::Redis(_) => LogKind::Redis,
            Backend::Nats { .. } => LogKind::Nats,
        }
    }

    /// What every backend takes.
    pub fn options(&self) -> LogOptions {
        let cache_mb = match self.backend {
            Backend::File { cache_mb, .. } => cache_mb,
            _ => 0,
        };
        LogOptions {
            retention_events: self.retention_events,
            retention_age_ms: self.retention_age_s.saturating_mul(1000),
            dedupe_window_ms: self.dedupe_window_s.saturating_mul(1000),
            file_cache_bytes: cache_mb.saturating_mul(1 << 20),
        }
    }
}

/// `log.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    Memory,
    File,
    Redis,
    Nats,
}

/// `[log]` as written: flat keys, each backend reading its own.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Flat {
    kind: LogKind,
    retention_events: u64,
    retention_age_s: u64,
    dedupe_window_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_cache_mb: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_mb: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_credentials_file: Option<PathBuf>,
}

impl Default for Flat {
    fn default() -> Self {
        LogConfig::default().into()
    }
}

impl TryFrom<Flat> for LogConfig {
    type Error = String;

    fn try_from(f: Flat) -> Result<Self, String> {
        if f.retention_events == 0 {
            return Err("log.retention_events must be greater than 0".into());
        }
        let engine = |name: &str| -> Result<EngineConfig, String> {
            let url = f
                .url
                .clone()
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| format!("log.url is required for log.kind = \"{name}\""))?;
            let stream = f.stream.clone().unwrap_or_else(|| DEFAULT_STREAM.into());
            if stream.is_empty()
                || !stream
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err("log.stream must be letters, digits, `_` and `-`".into());
            }
            Ok(EngineConfig {
                url,
                stream,
                tls_ca_file: f.tls_ca_file.clone(),
            })
        };
        let backend = match f.kind {
            LogKind::Memory => Backend::Memory,
            LogKind::File => Backend::File {
                cache_mb: f.file_cache_mb.unwrap_or(DEFAULT_CACHE_MB),
                sync: f.sync.as_deref().map_or(Ok(SyncMode::Always), parse_sync)?,
                segment_mb: match f.segment_mb.unwrap_or(DEFAULT_SEGMENT_MB) {
                    // Offsets within a segment are 32-bit: a group commit may overshoot
                    // the size by a few hundred MiB at most, which must stay below 4 GiB.
                    mb @ 1..=1024 => mb,
                    _ => return Err("log.segment_mb must be from 1 to 1024".into()),
                },
            },
            LogKind::Redis => Backend::Redis(engine("redis")?),
            LogKind::Nats => Backend::Nats {
                engine: engine("nats")?,
                credentials_file: f.nats_credentials_file.clone(),
            },
        };
        if (f.sync.is_some() || f.segment_mb.is_some()) && !matches!(backend, Backend::File { .. })
        {
            return Err("log.sync and log.segment_mb are only for log.kind = \"file\"".into());
        }
        if f.nats_credentials_file.is_some() && !matches!(backend, Backend::Nats { .. }) {
            return Err("log.nats_credentials_file is only for log.kind = \"nats\"".into());
        }
        Ok(LogConfig {
            backend,
            retention_events: f.retention_events,
            retention_age_s: f.retention_age_s,
            dedupe_window_s: f.dedupe_window_s,
        })
    }
}

impl From<LogConfig> for Flat {
    fn from(c: LogConfig) -> Self {
        let kind = c.kind();
        let mut flat = Flat {
            kind,
            retention_events: c.retention_events,
            retention_age_s: c.retention_age_s,
            dedupe_window_s: c.dedupe_window_s,
            file_cache_mb: None,
            sync: None,
            segment_mb: None,
            url: None,
            stream: None,
            tls_ca_file: None,
            nats_credentials_file: None,
        };
        let mut engine = |e: EngineConfig| {
            flat.url = Some(e.url);
            flat.stream = Some(e.stream);
            flat.tls_ca_file = e.tls_ca_file;
        };
        match c.backend {
            Backend::Memory => {}
            Backend::File {
                cache_mb,
                sync,
                segment_mb,
            } => {
                flat.file_cache_mb = Some(cache_mb);
                // Only what differs from the defaults, so that the defaults (which `Flat`
                // starts from) never name file settings for another kind.
                flat.sync = (sync != SyncMode::Always).then(|| sync_text(sync));
                flat.segment_mb = (segment_mb != DEFAULT_SEGMENT_MB).then_some(segment_mb);
            }
            Backend::Redis(e) => engine(e),
            Backend::Nats {
                engine: e,
                credentials_file,
            } => {
                engine(e);
                flat.nats_credentials_file = credentials_file;
            }
        }
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LogConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn flat_keys_become_one_variant_per_backend_and_back() {
        assert_eq!(parse("").unwrap(), LogConfig::default());
        let nats = parse(
            "kind = \"nats\"\nurl = \"nats://a:4222\"\nstream = \"s-1\"\nnats_credentials_file = \"x.creds\"\nretention_events = 5",
        )
        .unwrap();
        assert_eq!(
            nats.backend,
            Backend::Nats {
                engine: EngineConfig {
                    url: "nats://a:4222".into(),
                    stream: "s-1".into(),
                    tls_ca_file: None
                },
                credentials_file: Some("x.creds".into()),
            }
        );
        assert_eq!(nats.options().retention_events, 5);
        let text = toml::to_string(&nats).unwrap();
        assert_eq!(parse(&text).unwrap(), nats, "{text}");
        let file = parse("file_cache_mb = 8\nsync = \"5ms\"\nsegment_mb = 2").unwrap();
        assert_eq!(file.options().file_cache_bytes, 8 << 20);
        assert!(matches!(
            file.backend,
            Backend::File { sync: SyncMode::Every(d), segment_mb: 2, .. } if d == Duration::from_millis(5)
        ));
        let text = toml::to_string(&file).unwrap();
        assert_eq!(parse(&text).unwrap(), file, "{text}");
    }

    #[test]
    fn each_backend_refuses_what_it_cannot_use() {
        for (text, want) in [
            ("kind = \"redis\"", "log.url is required"),
            ("kind = \"nats\"\nurl = \" \"", "log.url is required"),
            (
                "kind = \"redis\"\nurl = \"redis://h\"\nstream = \"a b\"",
                "log.stream",
            ),
            (
                "kind = \"redis\"\nurl = \"redis://h\"\nnats_credentials_file = \"x\"",
                "only for log.kind = \"nats\"",
            ),
            ("retention_events = 0", "retention_events"),
            ("sync = \"sometimes\"", "log.sync must be"),
            ("sync = \"5s\"", "log.sync must be"),
            ("sync = \"0ms\"", "log.sync must be"),
            ("segment_mb = 0", "log.segment_mb"),
            (
                "kind = \"memory\"\nsync = \"always\"",
                "only for log.kind = \"file\"",
            ),
            ("kind = \"kafka\"", "kafka"),
            ("urll = \"x\"", "urll"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
