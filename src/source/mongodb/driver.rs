//! The MongoDB source's side of the official `mongodb` crate: open a change stream at a place,
//! read raw change events (the documents the server sends), ask for the resume token, and
//! reduce the driver's errors to what the source decides on. Tested against a wire-protocol
//! replica-set simulator (tests/engines/mongo_sim.rs) and, when one is given, a real replica
//! set (tests/source_mongodb.rs).

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
/// retries a failed `aggregate` once and resumes a stream after every resumable error — a
/// network error, `CursorNotFound`, the `ResumableChangeStreamError` label — and reports only
/// what it could not resume).
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

impl MongoDriver {
    /// Opens the change stream at `start`.
    pub async fn open(&self, start: &StartAt) -> Result<ChangeCursor, DriverError> {
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
        Ok(ChangeCursor::spawn(stream.with_type::<Document>()))
    }
}

/// What the reading task hands over: a change and the token to resume after it, the token
/// after a `getMore` that brought nothing (the server's post-batch resume token), or an error.
enum Read {
    Change(Document, Option<Document>),
    Idle(Option<Document>),
    Failed(DriverError),
}

/// Changes read ahead of the source (one server batch is at most this many in flight).
const READ_AHEAD: usize = 256;

/// An open change stream: raw change events in order. `None` means the server closed it (after
/// an invalidate, or a cursor that died).
///
/// A task of its own reads the driver's stream with `next_if_any` — one `getMore` at a time,
/// returning after each, so the post-batch resume token of an idle stream is seen (the
/// driver's `Stream::next` loops over empty batches inside one future, and its
/// `resume_token()` panics while such a future is in flight). Reading from the channel is
/// cancel-safe; dropping the cursor stops the task, and the driver kills the server cursor.
pub struct ChangeCursor {
    reads: tokio::sync::mpsc::Receiver<Read>,
    /// The token after everything returned so far.
    token: Option<Document>,
    task: tokio::task::JoinHandle<()>,
}

impl ChangeCursor {
    fn spawn(mut stream: ChangeStream<Document>) -> Self {
        let token = stream.resume_token().and_then(|t| token_to(&t).ok());
        let (tx, reads) = tokio::sync::mpsc::channel(READ_AHEAD);
        let mut last_idle = token.clone();
        let task = tokio::spawn(async move {
            loop {
                let read = match stream.next_if_any().await {
                    Ok(Some(doc)) => {
                        let t = stream.resume_token().and_then(|t| token_to(&t).ok());
                        last_idle = t.clone();
                        Read::Change(doc, t)
                    }
                    Ok(None) if !stream.is_alive() => return,
                    Ok(None) => {
                        let t = stream.resume_token().and_then(|t| token_to(&t).ok());
                        if t == last_idle {
                            continue;
                        }
                        last_idle = t.clone();
                        Read::Idle(t)
                    }
                    Err(e) => {
                        let _ = tx.send(Read::Failed(from_driver(e))).await;
                        return;
                    }
                };
                if tx.send(read).await.is_err() {
                    return;
                }
            }
        });
        Self { reads, token, task }
    }

    /// The token to resume after everything returned so far: the last event's `_id`, or —
    /// while no event comes — the server's post-batch resume token, which moves on with the
    /// cluster's clock (so an idle stream's checkpoint does not fall out of the oplog).
    pub fn resume_token(&self) -> Option<Document> {
        self.token.clone()
    }
}

impl Drop for ChangeCursor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for ChangeCursor {
    type Item = Result<Document, DriverError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.reads.poll_recv(cx) {
                Poll::Ready(Some(Read::Idle(t))) => {
                    if t.is_some() {
                        self.token = t;
                    }
                }
                Poll::Ready(Some(Read::Change(doc, t))) => {
                    if t.is_some() {
                        self.token = t;
                    }
                    return Poll::Ready(Some(Ok(doc)));
                }
                Poll::Ready(Some(Read::Failed(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
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
