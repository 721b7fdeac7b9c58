//! The bytes on the wire: TCP connections from a chosen loopback address, a minimal HTTP/1.1
//! client (one request at a time, keep-alive, `Content-Length` or chunked answers) and an
//! incremental Server-Sent-Events parser (input split anywhere, frames out).
//!
//! Only loopback is ever dialled: `Target` refuses any other address.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body read by `Client` (answers here are small JSON documents).
const MAX_BODY: usize = 4 << 20;

/// The node under test: a loopback address and its `Host` header value.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

impl Target {
    /// Parses `http://127.x.y.z:port`; anything but IPv4 loopback is refused.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs"))?
            .trim_end_matches('/');
        let addr: SocketAddrV4 = rest
            .parse()
            .map_err(|_| format!("{url:?}: expected http://127.x.y.z:port"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{url:?}: refusing a non-loopback target"));
        }
        Ok(Target {
            addr: SocketAddr::V4(addr),
            host: rest.to_owned(),
        })
    }
}

/// Opens a TCP connection from `src` (port chosen by the kernel) to `dst`; `rcvbuf` shrinks
/// the receive buffer (slow readers: the server's queue fills after a few KiB).
pub async fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddr,
    rcvbuf: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))?;
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a response head at the start of `buf`: `None` while incomplete.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(bad("response head too large"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| bad("response head not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some(Head {
        status,
        headers,
        len: end + 4,
    }))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Reads until a complete response head is in `buf`.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Head> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(head);
        }
        if read_more(stream, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `error.code` of a JSON error answer.
    pub fn error_code(&self) -> Option<String> {
        self.json()?
            .pointer("/error/code")?
            .as_str()
            .map(str::to_owned)
    }
}

/// Reads the rest of a response whose head is parsed: by `Content-Length`, chunked, or up to
/// the end of the connection.
pub async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: Head,
) -> io::Result<Response> {
    buf.drain(..head.len);
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        loop {
            if let Some((body, used)) = dechunk(buf)? {
                buf.drain(..used);
                break body;
            }
            if read_more(stream, buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    } else if let Some(len) = head.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        if len > MAX_BODY {
            return Err(bad("response body too large"));
        }
        while buf.len() < len {
            if read_more(stream, buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        buf.drain(..len).collect()
    } else {
        while read_more(stream, buf).await? > 0 {
            if buf.len() > MAX_BODY {
                return Err(bad("response body too large"));
            }
        }
        std::mem::take(buf)
    };
    Ok(Response { head, body })
}

/// Decodes a complete chunked body at the start of `buf`: the body and the bytes used, or
/// `None` while incomplete.
fn dechunk(buf: &[u8]) -> io::Result<Option<(Vec<u8>, usize)>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| bad("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("chunk size"))?;
        at += eol + 2;
        if size == 0 {
            // No trailers from this server: the last chunk is followed by a blank line.
            return Ok((buf.len() >= at + 2).then(|| (body, at + 2)));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
        if body.len() > MAX_BODY {
            return Err(bad("response body too large"));
        }
    }
}

/// A keep-alive HTTP/1.1 client from one source address: one request at a time; a request
/// on a reused connection that the server had closed meanwhile is sent again once on a new
/// connection (callers only send requests that may be repeated: reads, and publishes with
/// idempotency keys).
pub struct Client {
    src: Ipv4Addr,
    target: Target,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(src: Ipv4Addr, target: Target) -> Client {
        Client {
            src,
            target,
            conn: None,
            buf: Vec::new(),
        }
    }

    /// Sends one request and reads the whole answer within `timeout`. `headers` come after
    /// `Host`; `Content-Length` is added for every method but GET.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.target.host);
        for (n, v) in headers {
            req.push_str(n);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        if method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let result = tokio::time::timeout(timeout, async {
            let reused = self.conn.is_some();
            match self.exchange(&bytes).await {
                Ok(r) => Ok(r),
                Err((e, false)) => Err(e),
                // Nothing came back on a kept-alive connection: the server had closed it.
                Err((_, true)) if reused => self.exchange(&bytes).await.map_err(|(e, _)| e),
                Err((e, true)) => Err(e),
            }
        })
        .await;
        match result {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out"))
            }
        }
    }

    /// One attempt; on error, whether no byte of an answer had arrived.
    async fn exchange(&mut self, request: &[u8]) -> Result<Response, (io::Error, bool)> {
        if self.conn.is_none() {
            let c = connect_from(self.src, self.target.addr, None)
                .await
                .map_err(|e| (e, false))?;
            self.conn = Some(c);
            self.buf.clear();
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err((io::ErrorKind::NotConnected.into(), false));
        };
        let buf = &mut self.buf;
        let result = async {
            conn.write_all(request).await.map_err(|e| (e, true))?;
            let head = match read_head(conn, buf).await {
                Ok(h) => h,
                Err(e) => return Err((e, buf.is_empty())),
            };
            read_body(conn, buf, head).await.map_err(|e| (e, false))
        }
        .await;
        match &result {
            Ok(r)
                if !r
                    .head
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) => {}
            _ => self.conn = None,
        }
        result
    }
}

/// One Server-Sent-Events frame: the fields of one event block.
#[derive(Debug, Default, Clone)]
pub struct Frame {
    /// The `id:` field of this block, if it had one.
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Incremental SSE parser: `feed` any bytes, get every complete frame.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut impl FnMut(Frame)) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&bytes[..i]);
            bytes = &bytes[i + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.on_line(&line, out);
            line.clear();
            self.line = line;
        }
        self.line.extend_from_slice(bytes);
    }

    fn on_line(&mut self, line: &[u8], out: &mut impl FnMut(Frame)) {
        if line.is_empty() {
            if self.data.is_some() || self.event.is_some() || self.id.is_some() {
                out(Frame {
                    id: self.id.take(),
                    event: self.event.take().unwrap_or_else(|| "message".into()),
                    data: self.data.take().unwrap_or_default(),
                });
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match field {
            b"id" => self.id = Some(value),
            b"event" => self.event = Some(value),
            b"data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_split_anywhere() {
        let text = b": ok\n\nretry: 2000\n\nevent: connected\ndata: {\"a\":1}\n\nid: 7\r\nevent: soak\r\ndata: {\"s\":1}\r\n\r\n: hb\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut frames = Vec::new();
            p.feed(&text[..split], &mut |f| frames.push(f));
            p.feed(&text[split..], &mut |f| frames.push(f));
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(frames[0].event, "connected");
            assert_eq!(frames[0].id, None);
            assert_eq!(frames[1].id.as_deref(), Some("7"));
            assert_eq!(frames[1].data, "{\"s\":1}");
        }
    }

    #[test]
    fn heads_and_chunks() {
        let head = parse_head(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n\r\nxx")
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 429);
        assert_eq!(head.header("retry-after"), Some("1"));
        assert_eq!(head.len, 50);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        let (body, used) = dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(body, b"abcde");
        assert_eq!(used, 20);
        assert!(dechunk(b"3\r\nab").unwrap().is_none());
    }

    #[test]
    fn only_loopback_targets() {
        assert!(Target::parse("http://127.0.0.1:8080").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("https://127.0.0.1:8080").is_err());
    }
}
