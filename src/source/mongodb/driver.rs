//! What the MongoDB source needs from a change stream, as a trait: open it at a place, read
//! raw change events (the documents the server sends), ask for the resume token. The real
//! implementation is [`MongoDriver`] over the official `mongodb` crate; tests replay recorded
//! change events through a fake (tests/source_mongodb.rs).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ::mongodb::bson::{Bson, Document};
use ::mongodb::change_stream::event::ResumeToken;
use ::mongodb::change_stream::ChangeStream;
use ::mongodb::error::{ErrorKind, RESUMABLE_CHANGE_STREAM_ERROR};
use ::mongodb::options::{
    ChangeStreamOptions, ClientOptions, FullDocumentBeforeChangeType, FullDocumentType,
};
use async_trait::async_trait;
use futures::Stream;

/// Where a change stream starts.
#[derive(Debug, Clone, PartialEq)]
pub enum StartAt {
    /// With the next change (no checkpoint yet, or the history was lost).
    Now,
    /// After the change with this resume token (`resumeAfter`).
    ResumeAfter(Document),
    /// After this invalidate event (`startAfter`: the only way past an invalidate).
    StartAfter(Document),
}

/// A driver failure, reduced to what the source decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverError {
    pub kind: DriverErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DriverErrorKind {
    /// The connection broke, timed out or no server could be selected, or the server said
    /// the error is resumable: worth retrying.
    Transient,
    /// The server refused with this error code (286 = `ChangeStreamHistoryLost`).
    Server { code: i32, code_name: String },
    /// Credentials, URL or TLS settings that cannot work: retrying will not help.
    Config,
}

impl DriverError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: DriverErrorKind::Transient,
            message: message.into(),
        }
    }

    pub fn server(code: i32, code_name: &str, message: impl Into<String>) -> Self {
        Self {
            kind: DriverErrorKind::Server {
                code,
                code_name: code_name.to_owned(),
            },
            message: message.into(),
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self {
            kind: DriverErrorKind::Config,
            message: message.into(),
        }
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DriverErrorKind::Server { code, code_name } => {
                write!(f, "{} ({code_name}, code {code})", self.message)
            }
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DriverError {}

/// An open change stream: raw change events in order. `None` means the server closed it (after
/// an invalidate, or a cursor that died).
pub trait ChangeCursor: Stream<Item = Result<Document, DriverError>> + Send + Unpin {
    /// The token to resume after everything returned so far: the last event's `_id`, or —
    /// while no event comes — the server's post-batch resume token, which moves on with the
    /// cluster's clock (so an idle stream's checkpoint does not fall out of the oplog).
    fn resume_token(&self) -> Option<Document>;
}

/// Opens change streams.
#[async_trait]
pub trait ChangeStreamDriver: Send + Sync + 'static {
    async fn open(&self, start: &StartAt) -> Result<Box<dyn ChangeCursor>, DriverError>;
}

/// What is watched.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Cluster,
    Database(String),
    Collection(String, String),
}

/// The settings the real driver opens streams with.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub target: Target,
    pub pipeline: Vec<Document>,
    pub full_document: Option<String>,
    pub full_document_before_change: Option<String>,
    pub batch_size: Option<u32>,
}

/// The real driver: a `mongodb::Client` (connection pool, server monitoring; the driver itself
/// resumes a stream once after a resumable error before it reports the error).
pub struct MongoDriver {
    client: ::mongodb::Client,
    spec: WatchSpec,
}

impl MongoDriver {
    /// Parses the URL (an `mongodb+srv://` URL is resolved here) and builds the client; it
    /// connects in the background.
    pub async fn connect(url: &str, spec: WatchSpec) -> Result<Self, DriverError> {
        let mut options = ClientOptions::parse(url).await.map_err(from_driver)?;
        options.app_name.get_or_insert_with(|| "ssegate".into());
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(10));
        let client = ::mongodb::Client::with_options(options).map_err(from_driver)?;
        Ok(Self { client, spec })
    }

    /// The client, for tests against a real server.
    pub fn client(&self) -> &::mongodb::Client {
        &self.client
    }
}

#[async_trait]
impl ChangeStreamDriver for MongoDriver {
    async fn open(&self, start: &StartAt) -> Result<Box<dyn ChangeCursor>, DriverError> {
        let mut options = ChangeStreamOptions::builder()
            .full_document(self.spec.full_document.as_deref().map(|f| match f {
                "updateLookup" => FullDocumentType::UpdateLookup,
                "whenAvailable" => FullDocumentType::WhenAvailable,
                "required" => FullDocumentType::Required,
                other => FullDocumentType::Other(other.to_owned()),
            }))
            .full_document_before_change(self.spec.full_document_before_change.as_deref().map(
                |f| match f {
                    "whenAvailable" => FullDocumentBeforeChangeType::WhenAvailable,
                    "required" => FullDocumentBeforeChangeType::Required,
                    "off" => FullDocumentBeforeChangeType::Off,
                    other => FullDocumentBeforeChangeType::Other(other.to_owned()),
                },
            ))
            .batch_size(self.spec.batch_size)
            .build();
        match start {
            StartAt::Now => {}
            StartAt::ResumeAfter(t) => options.resume_after = Some(token_from(t)?),
            StartAt::StartAfter(t) => options.start_after = Some(token_from(t)?),
        }
        let pipeline = self.spec.pipeline.clone();
        let stream = match &self.spec.target {
            Target::Cluster => {
                self.client
                    .watch()
                    .pipeline(pipeline)
                    .with_options(options)
                    .await
            }
            Target::Database(db) => {
                self.client
                    .database(db)
                    .watch()
                    .pipeline(pipeline)
                    .with_options(options)
                    .await
            }
            Target::Collection(db, coll) => {
                self.client
                    .database(db)
                    .collection::<Document>(coll)
                    .watch()
                    .pipeline(pipeline)
                    .with_options(options)
                    .await
            }
        }
        .map_err(from_driver)?;
        Ok(Box::new(RealCursor {
            stream: stream.with_type::<Document>(),
        }))
    }
}

struct RealCursor {
    stream: ChangeStream<Document>,
}

impl Stream for RealCursor {
    type Item = Result<Document, DriverError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(from_driver)))
    }
}

impl ChangeCursor for RealCursor {
    fn resume_token(&self) -> Option<Document> {
        self.stream.resume_token().and_then(|t| token_to(&t).ok())
    }
}

/// A resume token as a document (what the checkpoint stores).
pub fn token_to(t: &ResumeToken) -> Result<Document, DriverError> {
    match ::mongodb::bson::to_bson(t) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(other) => Err(DriverError::config(format!(
            "the server sent a resume token that is not a document: {other}"
        ))),
        Err(e) => Err(DriverError::config(format!("unreadable resume token: {e}"))),
    }
}

/// A stored token back into the driver's type.
pub fn token_from(d: &Document) -> Result<ResumeToken, DriverError> {
    ::mongodb::bson::from_bson(Bson::Document(d.clone()))
        .map_err(|e| DriverError::config(format!("the checkpoint holds no resume token: {e}")))
}

fn from_driver(e: ::mongodb::error::Error) -> DriverError {
    let resumable = e.contains_label(RESUMABLE_CHANGE_STREAM_ERROR);
    match e.kind.as_ref() {
        ErrorKind::Command(c) if !resumable => {
            DriverError::server(c.code, &c.code_name, c.message.clone())
        }
        ErrorKind::Authentication { message, .. } => {
            DriverError::config(format!("authentication failed: {message}"))
        }
        ErrorKind::InvalidArgument { message, .. } => {
            DriverError::config(format!("invalid setting: {message}"))
        }
        ErrorKind::InvalidTlsConfig { message, .. } => {
            DriverError::config(format!("invalid TLS settings: {message}"))
        }
        ErrorKind::Command(c) => DriverError::transient(format!(
            "{} ({}, code {}; resumable)",
            c.message, c.code_name, c.code
        )),
        ErrorKind::Io(io) => DriverError::transient(format!("connection error: {io}")),
        ErrorKind::ServerSelection { message, .. } => {
            DriverError::transient(format!("no server available: {message}"))
        }
        ErrorKind::ConnectionPoolCleared { message, .. } => DriverError::transient(message.clone()),
        ErrorKind::DnsResolve { message, .. } => {
            DriverError::transient(format!("DNS resolution failed: {message}"))
        }
        other => DriverError::transient(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::mongodb::bson::doc;

    #[test]
    fn resume_tokens_round_trip_through_documents() {
        let d = doc! { "_data": "8265604A10000000012B022C0100296E5A1004" };
        let t = token_from(&d).unwrap();
        assert_eq!(token_to(&t).unwrap(), d);
    }
}
