//! The bytes on the wire: loopback URLs, TCP connections from a chosen source address,
//! response heads, and a minimal HTTP/1.1 client (keep-alive, one request at a time) for the
//! publishers. The body decoders are in [`crate::scan`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::scan::Dechunk;

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

/// Percent-encodes `s` for a query string or an `application/x-www-form-urlencoded` body:
/// every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

    #[test]
    fn form_encoding_keeps_unreserved_bytes_only() {
        assert_eq!(
            form_encode("https://bench.example/bench-fanout-0"),
            "https%3A%2F%2Fbench.example%2Fbench-fanout-0"
        );
        assert_eq!(
            form_encode(r#"{"t":1,"s":2}"#),
            "%7B%22t%22%3A1%2C%22s%22%3A2%7D"
        );
        assert_eq!(form_encode("a b&c=é~"), "a%20b%26c%3D%C3%A9~");
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
