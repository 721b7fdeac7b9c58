//! NATS ingest: `type = "nats"`. Each message's JSON body is the record the templates see;
//! `{table}` / `{collection}` is the message's subject.
//!
//! ```toml
//! [[sources]]
//! name = "grades"
//! type = "nats"
//! url = "nats://127.0.0.1:4222"     # user:password@ or a token@ in the URL are used
//! subject = "grades.>"
//! queue = "ssegate"                 # optional: a queue group (core NATS)
//! channel = "students:{row.student}"
//!
//! [[sources]]
//! name = "orders"
//! type = "nats"
//! url = "nats://127.0.0.1:4222"
//! subject = "orders.*"
//! stream = "ORDERS"                 # JetStream: a durable pull consumer on this stream
//! durable = "ssegate"
//! start = "new"                     # new (default) | all: where a new consumer starts
//! channel = "orders:{row.customer}"
//! ```
//!
//! **Core NATS is at most once**: a message published while the gateway is disconnected is
//! lost (the client reconnects and resubscribes by itself). A message carrying a
//! `Nats-Msg-Id` header is keyed by it (appended once within the dedupe window); others have
//! no key.
//!
//! **JetStream is at least once, no duplicate**: a durable pull consumer (explicit acks)
//! reads the stream; a message is acknowledged only after its event is durably appended, so
//! a crash before the ack means redelivery (after the consumer's `ack_wait`), and the stream
//! sequence — the idempotency key — keeps the redelivered message from being appended twice.
//! A message that is not JSON is skipped (counted) and acknowledged.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{ConnectOptions, ServerAddr};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use super::ingest::{emit_ingested, ingest, parse_body, skip, Ingested};
use super::{BuildSource, Change, Op, Source, SourceContext, SourceError};
use crate::log::nats_url;
use crate::throttle::Throttle;

const BATCH_MAX: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a new JetStream consumer starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Messages stored from now on.
    #[default]
    New,
    /// Every message in the stream.
    All,
}

/// The settings of a `type = "nats"` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// `nats://…` or `tls://…`; several servers separated by commas.
    pub url: String,
    /// The subject (wildcards `*` and `>` allowed).
    pub subject: String,
    /// Core NATS queue group: several gateways share the messages.
    #[serde(default)]
    pub queue: Option<String>,
    /// JetStream stream to read with a durable consumer (with `durable`).
    #[serde(default)]
    pub stream: Option<String>,
    /// The durable consumer's name (created when missing).
    #[serde(default)]
    pub durable: Option<String>,
    #[serde(default)]
    pub start: Start,
    /// A NATS `.creds` file.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl BuildSource for NatsSourceConfig {
    fn validate(&self) -> Result<(), String> {
        addresses(&self.url)?;
        if self.subject.is_empty() || self.subject.contains(char::is_whitespace) {
            return Err("`subject` must be a NATS subject without spaces".into());
        }
        match (&self.stream, &self.durable) {
            (None, None) => {}
            (Some(s), Some(d)) => {
                if !is_name(s) || !is_name(d) {
                    return Err(
                        "`stream` and `durable` must be letters, digits, `-` and `_`".into(),
                    );
                }
                if self.queue.is_some() {
                    return Err(
                        "`queue` is for core NATS; a JetStream durable consumer is already shared"
                            .into(),
                    );
                }
            }
            _ => return Err("`stream` and `durable` go together (JetStream)".into()),
        }
        if self.queue.as_deref().is_some_and(|q| !is_name(q)) {
            return Err("`queue` must be letters, digits, `-` and `_`".into());
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(NatsSource {
            cfg: self.clone(),
            throttle: Throttle::new(Duration::from_secs(30)),
        }))
    }
}

fn addresses(url: &str) -> Result<Vec<ServerAddr>, String> {
    nats_url::servers(url, "`url`").map_err(|e| e.to_string())
}

struct NatsSource {
    cfg: NatsSourceConfig,
    throttle: Throttle,
}

impl NatsSource {
    async fn connect(&self, cx: &SourceContext) -> Result<async_nats::Client, SourceError> {
        let addrs = addresses(&self.cfg.url).map_err(|e| SourceError::Fatal(e.into()))?;
        let mut options = ConnectOptions::new()
            .name(format!("ssegate source {}", cx.name))
            .connection_timeout(CONNECT_TIMEOUT);
        options = nats_url::with_user_info(options, &addrs);
        if let Some(creds) = &self.cfg.credentials_file {
            options = options.credentials_file(creds).await.map_err(|e| {
                SourceError::fatal(
                    format!(
                        "credentials_file {} is not a usable .creds file",
                        creds.display()
                    ),
                    e,
                )
            })?;
        }
        options
            .connect(addrs)
            .await
            .map_err(|e| SourceError::recoverable("nats: cannot connect", e))
    }

    fn ingested(
        &self,
        cx: &SourceContext,
        msg: &async_nats::Message,
        key: Option<String>,
    ) -> Option<Ingested> {
        ingest(cx, &self.throttle, &msg.payload, &msg.subject, |_| key)
    }

    /// Core NATS: at most once.
    async fn core(
        &self,
        cx: &SourceContext,
        client: async_nats::Client,
    ) -> Result<(), SourceError> {
        let mut sub = match &self.cfg.queue {
            Some(q) => {
                client
                    .queue_subscribe(self.cfg.subject.clone(), q.clone())
                    .await
            }
            None => client.subscribe(self.cfg.subject.clone()).await,
        }
        .map_err(|e| SourceError::recoverable("nats: cannot subscribe", e))?;
        // The subscription reaches the server with the next flush: make it now, so that
        // "running" means subscribed.
        client
            .flush()
            .await
            .map_err(|e| SourceError::recoverable("nats", e))?;
        tracing::info!(source = %cx.name, subject = %self.cfg.subject, "subscribed to NATS");
        let msg_id = |m: &async_nats::Message| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        loop {
            let first = tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                m = sub.next() => m,
            };
            let Some(first) = first else {
                return Err(SourceError::Recoverable(
                    "nats: the subscription ended".into(),
                ));
            };
            let mut batch: Vec<Ingested> = self
                .ingested(cx, &first, msg_id(&first))
                .into_iter()
                .collect();
            for _ in 1..BATCH_MAX {
                match sub.next().now_or_never() {
                    Some(Some(m)) => batch.extend(self.ingested(cx, &m, msg_id(&m))),
                    _ => break,
                }
            }
            emit_ingested(cx, batch).await?;
        }
    }

    /// JetStream durable pull consumer: at least once, acked after the durable append.
    async fn jetstream(
        &self,
        cx: &SourceContext,
        client: async_nats::Client,
        stream: &str,
        durable: &str,
    ) -> Result<(), SourceError> {
        let js = jetstream::new(client);
        let stream = js.get_stream(stream).await.map_err(|e| {
            SourceError::recoverable(format!("nats: JetStream stream {stream:?}"), e)
        })?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                durable,
                consumer::pull::Config {
                    durable_name: Some(durable.to_owned()),
                    filter_subject: self.cfg.subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: match self.cfg.start {
                        Start::New => consumer::DeliverPolicy::New,
                        Start::All => consumer::DeliverPolicy::All,
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                SourceError::recoverable(format!("nats: JetStream consumer {durable:?}"), e)
            })?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| SourceError::recoverable("nats: JetStream", e))?;
        tracing::info!(source = %cx.name, durable, "reading the JetStream consumer");
        loop {
            let first = tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                m = messages.next() => m,
            };
            let first = match first {
                None => {
                    return Err(SourceError::Recoverable(
                        "nats: the JetStream consumer ended".into(),
                    ))
                }
                Some(Err(e)) => return Err(SourceError::recoverable("nats: JetStream", e)),
                Some(Ok(m)) => m,
            };
            let mut batch = vec![first];
            let mut failed = None;
            while batch.len() < BATCH_MAX {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => {
                        failed = Some(e);
                        break;
                    }
                    _ => break,
                }
            }
            let mut changes = Vec::with_capacity(batch.len());
            for m in &batch {
                let Ok(info) = m.info() else {
                    skip(cx, &self.throttle, &m.subject, "not a JetStream message");
                    continue;
                };
                match parse_body(&m.payload) {
                    Ok(record) => changes.push(Change {
                        op: Op::Insert,
                        record,
                        place: m.subject.to_string(),
                        key: info.stream_sequence.to_string(),
                    }),
                    Err(why) => skip(cx, &self.throttle, &m.subject, &why),
                }
            }
            if !changes.is_empty() {
                cx.emit(&changes, None).await?;
            }
            for m in &batch {
                // A lost ack means a redelivery, which the sequence key makes harmless.
                if let Err(e) = m.ack().await {
                    tracing::warn!(source = %cx.name, error = %e, "cannot acknowledge a JetStream message; it will be redelivered");
                }
            }
            if let Some(e) = failed {
                return Err(SourceError::recoverable("nats: JetStream", e));
            }
        }
    }
}

#[async_trait]
impl Source for NatsSource {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let client = tokio::select! {
            _ = cx.cancelled() => return Ok(()),
            c = self.connect(cx) => c?,
        };
        match (&self.cfg.stream, &self.cfg.durable) {
            (Some(stream), Some(durable)) => {
                let (stream, durable) = (stream.clone(), durable.clone());
                self.jetstream(cx, client, &stream, &durable).await
            }
            _ => self.core(cx, client).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<NatsSourceConfig, String> {
        crate::source::settings(text)
    }

    #[test]
    fn settings_are_checked() {
        assert!(config("url = \"nats://127.0.0.1:4222\"\nsubject = \"a.>\"").is_ok());
        let js = config(
            "url = \"nats://h:4222\"\nsubject = \"a.*\"\nstream = \"A\"\ndurable = \"gw\"\nstart = \"all\"",
        )
        .unwrap();
        assert_eq!(js.start, Start::All);
        for (bad, what) in [
            ("url = \"nats://h\"\nsubject = \"a b\"", "subject"),
            ("url = \"nats://h\"\nsubject = \"a\"\nstream = \"A\"", "together"),
            (
                "url = \"nats://h\"\nsubject = \"a\"\nstream = \"A\"\ndurable = \"d\"\nqueue = \"q\"",
                "queue",
            ),
            ("url = \"nats://h\"\nsubject = \"a\"\nsubjct = \"b\"", "subjct"),
        ] {
            let err = config(bad).unwrap_err();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }
}
