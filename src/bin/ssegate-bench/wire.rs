//! The bytes on the wire: loopback URLs, a minimal HTTP/1.1 client (keep-alive, one request
//! at a time), an incremental chunked-transfer decoder and an incremental SSE scanner that
//! pulls `"t":<digits>` out of `data:` lines.
//!
//! Everything here is incremental: any input may be split at any byte, and the state
//! carries over to the next call.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A parsed `http://127.x.y.z:port/base` URL. Only loopback addresses are accepted: the
/// generator never sends traffic anywhere else.
#[derive(Debug, Clone)]
pub struct Url {
    pub addr: SocketAddr,
    /// Path prefix without a trailing slash ("" for the root).
    pub base: String,
    /// Value of the `Host` header.
    pub host: String,
}

impl Url {
    pub fn parse(s: &str) -> anyhow::Result<Url> {
        let rest = s
            .strip_prefix("http://")
            .with_context(|| format!("{s:?}: only http:// URLs are supported"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("{s:?}: bad port"))?,
            ),
            None => (hostport, 80),
        };
        let ip: Ipv4Addr = if host == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse()
                .with_context(|| format!("{s:?}: the host must be an IPv4 loopback address"))?
        };
        if !ip.is_loopback() {
            bail!("{s:?}: refusing a non-loopback target (only 127.0.0.0/8 is allowed)");
        }
        Ok(Url {
            addr: SocketAddr::V4(SocketAddrV4::new(ip, port)),
            base: path.trim_end_matches('/').to_owned(),
            host: hostport.to_owned(),
        })
    }
}

/// Opens a TCP connection from `src` (port chosen by the kernel) to `dst`.
pub async fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Lets the kernel hand out local ports still in TIME_WAIT from an earlier run.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))?;
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The interesting parts of a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
    pub close: bool,
    /// Length of the head including the blank line.
    pub len: usize,
}

/// Parses a response head if `buf` holds a complete one (`Ok(None)`: read more).
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            bail!("response head larger than 64 KiB");
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
        close: version == "HTTP/1.0",
        len: end + 4,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.close = true;
            } else if v.contains("keep-alive") {
                head.close = false;
            }
        }
    }
    Ok(Some(head))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Pulls `"code":"..."` out of a JSON error body (ssegate's error shape), if present.
pub fn error_code(body: &[u8]) -> Option<String> {
    let i = find(body, b"\"code\"")?;
    let rest = &body[i + 6..];
    let q1 = rest.iter().position(|&b| b == b'"')?;
    let rest = &rest[q1 + 1..];
    let q2 = rest.iter().position(|&b| b == b'"')?;
    let code = std::str::from_utf8(&rest[..q2]).ok()?;
    code.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        .then(|| code.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Done,
}

/// Incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Debug)]
pub struct Dechunk {
    state: ChunkState,
    remaining: u64,
    digits: u8,
}

impl Default for Dechunk {
    fn default() -> Self {
        Self {
            state: ChunkState::Size,
            remaining: 0,
            digits: 0,
        }
    }
}

impl Dechunk {
    /// Decodes `input`, handing each run of body bytes to `out`. Returns `Ok(true)` once the
    /// last (zero-size) chunk was seen: the body has ended.
    pub fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8])) -> Result<bool, String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Data => {
                    let n = (self.remaining as usize).min(input.len());
                    out(&input[..n]);
                    input = &input[n..];
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = input[0];
            input = &input[1..];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large".into());
                        }
                        self.remaining = self.remaining * 16 + d;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Ext,
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.size_line_done(),
                    _ => return Err(format!("bad chunk size byte {b:#04x}")),
                },
                ChunkState::Ext => {
                    if b == b'\n' {
                        self.size_line_done();
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line without LF".into());
                    }
                    self.size_line_done();
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.next_chunk(),
                    _ => return Err("chunk data not followed by CRLF".into()),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    self.next_chunk();
                }
                ChunkState::Data | ChunkState::Done => unreachable!(),
            }
        }
        Ok(self.state == ChunkState::Done)
    }

    fn size_line_done(&mut self) {
        if self.digits == 0 {
            // Tolerate stray empty lines between chunks.
            self.state = ChunkState::Size;
        } else if self.remaining == 0 {
            self.state = ChunkState::Done;
        } else {
            self.state = ChunkState::Data;
        }
    }

    fn next_chunk(&mut self) {
        self.state = ChunkState::Size;
        self.remaining = 0;
        self.digits = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// At the start of a line, `n` bytes of `data:` matched so far.
    Prefix(u8),
    /// In a line that is not interesting (or whose `t` was already taken): skip to LF.
    Skip,
    /// In a `data:` line, `n` bytes of `"t":` matched so far.
    Data(u8),
    /// Reading the digits after `"t":`.
    Digits,
}

const DATA: &[u8; 5] = b"data:";
const T_KEY: &[u8; 4] = b"\"t\":";

/// Incremental SSE scanner: collects the `t` value of every `data:` line that has one and
/// counts the `data:` lines that don't (control events such as `connected`).
#[derive(Debug)]
pub struct SseScan {
    mode: Mode,
    val: u64,
    digits: u8,
    /// `t` values found since the caller last drained them.
    pub ts: Vec<u64>,
    /// `data:` lines without a `t`.
    pub other: u64,
}

impl Default for SseScan {
    fn default() -> Self {
        Self {
            mode: Mode::Prefix(0),
            val: 0,
            digits: 0,
            ts: Vec::new(),
            other: 0,
        }
    }
}

impl SseScan {
    pub fn feed(&mut self, input: &[u8]) {
        let mut i = 0;
        let n = input.len();
        while i < n {
            match self.mode {
                Mode::Skip => match input[i..].iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        i += p + 1;
                        self.mode = Mode::Prefix(0);
                    }
                    None => return,
                },
                Mode::Prefix(k) => {
                    let b = input[i];
                    i += 1;
                    if b == DATA[k as usize] {
                        self.mode = if k == 4 {
                            Mode::Data(0)
                        } else {
                            Mode::Prefix(k + 1)
                        };
                    } else if b == b'\n' {
                        self.mode = Mode::Prefix(0);
                    } else {
                        self.mode = Mode::Skip;
                    }
                }
                Mode::Data(0) => {
                    // Jump to the next quote or end of line.
                    match input[i..].iter().position(|&b| b == b'"' || b == b'\n') {
                        Some(p) => {
                            i += p + 1;
                            if input[i - 1] == b'\n' {
                                self.other += 1;
                                self.mode = Mode::Prefix(0);
                            } else {
                                self.mode = Mode::Data(1);
                            }
                        }
                        None => return,
                    }
                }
                Mode::Data(k) => {
                    let b = input[i];
                    i += 1;
                    if b == T_KEY[k as usize] {
                        if k == 3 {
                            self.mode = Mode::Digits;
                            self.val = 0;
                            self.digits = 0;
                        } else {
                            self.mode = Mode::Data(k + 1);
                        }
                    } else if b == b'\n' {
                        self.other += 1;
                        self.mode = Mode::Prefix(0);
                    } else if b == b'"' {
                        self.mode = Mode::Data(1);
                    } else if k == 3 && b == b't' {
                        // `"t"` + `t`: the last `"t` may start a match.
                        self.mode = Mode::Data(2);
                    } else {
                        self.mode = Mode::Data(0);
                    }
                }
                Mode::Digits => {
                    let b = input[i];
                    if b.is_ascii_digit() && self.digits < 19 {
                        self.val = self.val * 10 + (b - b'0') as u64;
                        self.digits += 1;
                        i += 1;
                        continue;
                    }
                    if b == b' ' && self.digits == 0 {
                        i += 1;
                        continue;
                    }
                    if self.digits > 0 {
                        self.ts.push(self.val);
                        // The rest of the line is of no interest (its LF is handled by Skip).
                        self.mode = Mode::Skip;
                    } else {
                        // `"t":` not followed by a number: keep looking on this line.
                        self.mode = Mode::Data(0);
                    }
                }
            }
        }
    }
}

/// A keep-alive HTTP/1.1 client for the publishers: one request at a time on one connection,
/// reconnecting when the server closes it.
pub struct HttpClient {
    addr: SocketAddr,
    src: Ipv4Addr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr, src: Ipv4Addr, timeout: Duration) -> Self {
        Self {
            addr,
            src,
            stream: None,
            buf: Vec::with_capacity(4096),
            timeout,
        }
    }

    /// Sends `req` (head and body, complete) and reads the response. A request on a reused
    /// connection that the server had closed before answering anything is sent once more on
    /// a new connection.
    pub async fn request(&mut self, req: &[u8]) -> anyhow::Result<Response> {
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            if self.stream.is_none() {
                let s = tokio::time::timeout(self.timeout, connect_from(self.src, self.addr))
                    .await
                    .context("connect timeout")??;
                self.stream = Some(s);
            }
            match tokio::time::timeout(self.timeout, self.exchange(req)).await {
                Ok(Ok(res)) => return Ok(res),
                Ok(Err(Exchange::NothingBack(e))) if reused && attempt == 0 => {
                    let _ = e;
                    self.stream = None;
                    continue;
                }
                Ok(Err(Exchange::NothingBack(e) | Exchange::Failed(e))) => {
                    self.stream = None;
                    return Err(e);
                }
                Err(_) => {
                    self.stream = None;
                    bail!("response timeout");
                }
            }
        }
        unreachable!()
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<Response, Exchange> {
        let stream = self.stream.as_mut().expect("connected");
        if let Err(e) = stream.write_all(req).await {
            return Err(Exchange::NothingBack(e.into()));
        }
        self.buf.clear();
        let head = loop {
            let mut chunk = [0u8; 4096];
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) if self.buf.is_empty() => return Err(Exchange::NothingBack(e.into())),
                Err(e) => return Err(Exchange::Failed(e.into())),
            };
            if n == 0 {
                let e = anyhow::anyhow!("connection closed before the response");
                return Err(if self.buf.is_empty() {
                    Exchange::NothingBack(e)
                } else {
                    Exchange::Failed(e)
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(h) = parse_head(&self.buf).map_err(Exchange::Failed)? {
                break h;
            }
        };
        let mut raw = self.buf.split_off(head.len);
        let mut body = Vec::new();
        let mut eof = false;
        if head.chunked {
            let mut dechunk = Dechunk::default();
            loop {
                let done = dechunk
                    .feed(&raw, |b| body.extend_from_slice(b))
                    .map_err(|e| Exchange::Failed(anyhow::anyhow!(e)))?;
                if done {
                    break;
                }
                raw.clear();
                raw.resize(4096, 0);
                let n = stream
                    .read(&mut raw)
                    .await
                    .map_err(|e| Exchange::Failed(e.into()))?;
                if n == 0 {
                    return Err(Exchange::Failed(anyhow::anyhow!(
                        "closed inside a chunked body"
                    )));
                }
                raw.truncate(n);
            }
        } else if let Some(len) = head.content_length {
            body = raw;
            while body.len() < len {
                let mut chunk = [0u8; 4096];
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| Exchange::Failed(e.into()))?;
                if n == 0 {
                    return Err(Exchange::Failed(anyhow::anyhow!("closed inside the body")));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        } else if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
        } else {
            // Body delimited by the end of the connection.
            body = raw;
            stream
                .read_to_end(&mut body)
                .await
                .map_err(|e| Exchange::Failed(e.into()))?;
            eof = true;
        }
        if head.close || eof {
            self.stream = None;
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

enum Exchange {
    /// Failed before any byte of a response arrived (a stale keep-alive connection).
    NothingBack(anyhow::Error),
    Failed(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_split(input: &[u8], at: usize) -> (Vec<u64>, u64) {
        let mut s = SseScan::default();
        s.feed(&input[..at]);
        s.feed(&input[at..]);
        (s.ts, s.other)
    }

    #[test]
    fn scanner_finds_t_in_all_three_formats_at_every_split() {
        let input = b": ok\n\nretry: 2000\n\nevent: connected\ndata: {\"channels\":[\"c\"],\"type\":\"x\"}\n\n\
id: 5\nevent: b\ndata: {\"id\":\"5\",\"channel\":\"c\",\"type\":\"b\",\"time\":\"2026\",\"data\":{\"t\":1700000000000001,\"s\":3}}\n\n\
data: {\"t\":42,\"s\":1}\n\n: hb\n\nevent: b\ndata: {\"t\": 7}\n\ndata: {\"tt\":1,\"\"t\":9}\n\n";
        for at in 0..=input.len() {
            let (ts, other) = scan_split(input, at);
            assert_eq!(ts, vec![1700000000000001, 42, 7, 9], "split at {at}");
            assert_eq!(other, 1, "split at {at}");
        }
    }

    #[test]
    fn scanner_byte_by_byte() {
        let input = b"data: {\"t\":123}\ndata: {\"t\":456}\n\n";
        let mut s = SseScan::default();
        for b in input {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(s.ts, vec![123, 456]);
    }

    #[test]
    fn dechunk_at_every_split() {
        let body = b"data: {\"t\":1}\n\ndata: {\"t\":2}\n\n";
        // Split the body into chunks inside a data line, as a proxy might.
        let mut wire = Vec::new();
        for part in [&body[..7], &body[7..20], &body[20..]] {
            wire.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        for at in 0..=wire.len() {
            let mut d = Dechunk::default();
            let mut s = SseScan::default();
            let mut out = Vec::new();
            let a = d.feed(&wire[..at], |b| out.extend_from_slice(b)).unwrap();
            let b = d.feed(&wire[at..], |b| out.extend_from_slice(b)).unwrap();
            assert!(a || b, "split at {at}");
            assert_eq!(out, body, "split at {at}");
            s.feed(&out);
            assert_eq!(s.ts, vec![1, 2]);
        }
    }

    #[test]
    fn head_parsing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\nxyz")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
        assert!(h.chunked);
        assert_eq!(h.len, 80);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert_eq!(
            error_code(br#"{"error":{"code":"too_many_connections","message":"x"}}"#).as_deref(),
            Some("too_many_connections")
        );
    }

    #[test]
    fn urls_are_loopback_only() {
        let u = Url::parse("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!(u.base, "/base");
        assert_eq!(u.host, "127.0.0.1:8080");
        assert!(Url::parse("http://10.0.0.1:80").is_err());
        assert!(Url::parse("http://example.com").is_err());
        assert!(Url::parse("http://localhost:9").is_ok());
    }
}
