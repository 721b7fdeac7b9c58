//! Incremental decoders of a response body: chunked transfer coding, and an SSE scanner that
//! pulls `"t":<digits>` out of `data:` lines.
//!
//! Any input may be split at any byte: the state carries over to the next call.

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
    fn scanner_reads_mercure_frames_at_every_split() {
        // The hub's first bytes, a heartbeat, an update with and one without `event:`, and a
        // multi-line one: `id:`/`event:`/`retry:` lines are skipped, `data:` lines scanned.
        let input = b":\n\nid: urn:uuid:0e4e1c2a-1d35-4b5e-9a4e-2f9e2c3b4d5e\nevent: b\ndata: {\"t\":1700000000000001,\"s\":3}\n\n\
: hb\n\nid: urn:uuid:1\ndata: {\"t\":42,\"s\":4}\n\nid: x\nretry: 100\ndata: {\"t\":7,\ndata: \"s\":5}\n\n";
        for at in 0..=input.len() {
            let (ts, other) = scan_split(input, at);
            assert_eq!(ts, vec![1700000000000001, 42, 7], "split at {at}");
            // The second line of the multi-line update has no `t`.
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
}
