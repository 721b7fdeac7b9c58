//! The Mercure hub protocol, a view of the one log: updates published at
//! `/.well-known/mercure` are events like any other (durable, resumable, clustered,
//! counted), stored on the channel `mercure:<topic>`; Mercure subscribers are connections of
//! the hub whose events are chosen by topic matchers and written as Mercure frames.

pub mod config;
pub mod matcher;
pub mod token;
