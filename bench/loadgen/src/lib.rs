//! What ssegate's load generators share. The generators are the binaries of this package
//! (`src/bin/`): `ssegate-bench` (ssegate, nchan and pushpin under the same scenarios),
//! `ssegate-tlsbench` (HTTP/1.1 vs HTTP/2 over TLS) and `ssegate-sourcebench` (PostgreSQL
//! change streams vs polling). They talk to the gateway over the wire only: nothing here
//! depends on the `ssegate` crate, and ssegate's own dependencies are only what it ships with.
//!
//! # Layout
//!
//! - [`wire`]: loopback URLs, TCP connections from a chosen source address, response heads,
//!   and the publishers' keep-alive HTTP/1.1 client;
//! - [`scan`]: the incremental decoders of a response body: chunked transfer coding, and an
//!   SSE scanner that takes `"t":<unix micros>` out of `data:` lines;
//! - [`token`]: HS256 tokens in ssegate's claim format, minted with the gateway's secret;
//! - the clock ([`now_us`], [`now_ms`]): the timestamps in published events and the
//!   latencies measured against them.

use std::time::{SystemTime, UNIX_EPOCH};

pub mod scan;
pub mod token;
pub mod wire;

/// Unix time in microseconds (0 before 1970).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Unix time in milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    now_us() / 1000
}
