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

use serde::{Deserialize, Serialize};

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
        /// Page cache, in MiB; recent events are read from it.
        cache_mb: usize,
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
            },
            retention_events: 1_000_000,
            retention_age_s: 604_800,
            dedupe_window_s: 300,
        }
    }
}

const DEFAULT_CACHE_MB: usize = 64;
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
            Backend::File { cache_mb } => cache_mb,
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
            },
            LogKind::Redis => Backend::Redis(engine("redis")?),
            LogKind::Nats => Backend::Nats {
                engine: engine("nats")?,
                credentials_file: f.nats_credentials_file.clone(),
            },
        };
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
            Backend::File { cache_mb } => flat.file_cache_mb = Some(cache_mb),
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
        let file = parse("file_cache_mb = 8").unwrap();
        assert_eq!(file.options().file_cache_bytes, 8 << 20);
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
            ("kind = \"kafka\"", "kafka"),
            ("urll = \"x\"", "urll"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
