//! The bytes of a segment file: a header, then records, each framed with its length and a
//! CRC-32C of its body.
//!
//! ```text
//! header (32 bytes): "SSEGLOG1" | format u32 | reserved u32 | base seq u64 | reserved u32 | crc32c u32 (of the first 28 bytes)
//! record:            len u32 | crc32c u32 (of body) | body (len bytes)
//! body:              kind u8 | …
//!   EVENT  (1): seq u64 | time_ms u64 | flags u8 | channel str16 | type str16
//!               | [users: count u16, str16 × count]  (flags & 1)
//!               | [key str16 | exp u64 | count u32]  (flags & 2; the first event of a keyed item)
//!               | data (the rest: compact JSON)
//!   KEY    (2): key str16 | exp u64 | count u32 | seq u64 × count   (a key carried forward)
//!   TRIM   (3): through u64                                          (retention by age)
//!   COMMIT (4): last seq u64                                         (ends every group commit)
//! ```
//!
//! All integers little-endian; `str16` = length u16 + UTF-8 bytes. A group commit is visible
//! after a restart only up to its COMMIT record: a write torn by a crash never leaves half an
//! append behind.

use serde_json::value::RawValue;

use crate::event::NewEvent;

pub const MAGIC: &[u8; 8] = b"SSEGLOG1";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
pub const HEADER_LEN: u64 = 32;
/// Record framing: length and checksum.
pub const FRAME_LEN: usize = 8;
/// No record is larger (events are bounded far below by `limits.max_event_bytes`); a larger
/// length field is damage.
pub const MAX_RECORD: usize = 16 << 20;

pub const EVENT: u8 = 1;
pub const KEY: u8 = 2;
pub const TRIM: u8 = 3;
pub const COMMIT: u8 = 4;

const HAS_USERS: u8 = 1;
const HAS_KEY: u8 = 2;

pub fn header(base: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "it is {0} bytes long, shorter than a segment header (32 bytes): the file was truncated"
    )]
    Short(u64),
    #[error("it does not start with a segment header (damaged, or not a ssegate log file)")]
    Damaged,
    #[error(
        "it is written in log format {0}; this ssegate reads format {FORMAT} (upgrade ssegate)"
    )]
    Version(u32),
}

/// The base sequence a header names.
pub fn read_header(h: &[u8]) -> Result<u64, HeaderError> {
    if h.len() < HEADER_LEN as usize {
        return Err(HeaderError::Short(h.len() as u64));
    }
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    if &h[..8] != MAGIC || crc32c::crc32c(&h[..28]) != crc {
        return Err(HeaderError::Damaged);
    }
    let format = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(HeaderError::Version(format));
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")))
}

/// The idempotency key stored with the first event of a keyed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemKey<'a> {
    pub key: &'a str,
    pub exp: u64,
    pub count: u32,
}

/// Appends records to a buffer (one group commit).
pub struct Encoder<'b> {
    pub buf: &'b mut Vec<u8>,
}

impl Encoder<'_> {
    fn record(&mut self, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; FRAME_LEN]);
        self.buf.push(kind);
        body(self.buf);
        let len = (self.buf.len() - start - FRAME_LEN) as u32;
        let crc = crc32c::crc32c(&self.buf[start + FRAME_LEN..]);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn event(&mut self, seq: u64, e: &NewEvent, key: Option<ItemKey<'_>>) {
        self.record(EVENT, |b| {
            b.extend_from_slice(&seq.to_le_bytes());
            b.extend_from_slice(&e.time_ms.to_le_bytes());
            let flags = if e.users.is_some() { HAS_USERS } else { 0 }
                | if key.is_some() { HAS_KEY } else { 0 };
            b.push(flags);
            str16(b, &e.channel);
            str16(b, &e.kind);
            if let Some(users) = &e.users {
                b.extend_from_slice(&(users.len() as u16).to_le_bytes());
                for u in users {
                    str16(b, u);
                }
            }
            if let Some(k) = key {
                str16(b, k.key);
                b.extend_from_slice(&k.exp.to_le_bytes());
                b.extend_from_slice(&k.count.to_le_bytes());
            }
            b.extend_from_slice(e.data.get().as_bytes());
        });
    }

    pub fn key(&mut self, key: &str, exp: u64, seqs: &[u64]) {
        self.record(KEY, |b| {
            str16(b, key);
            b.extend_from_slice(&exp.to_le_bytes());
            b.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
            for s in seqs {
                b.extend_from_slice(&s.to_le_bytes());
            }
        });
    }

    pub fn trim(&mut self, through: u64) {
        self.record(TRIM, |b| b.extend_from_slice(&through.to_le_bytes()));
    }

    pub fn commit(&mut self, last: u64) {
        self.record(COMMIT, |b| b.extend_from_slice(&last.to_le_bytes()));
    }
}

fn str16(b: &mut Vec<u8>, s: &str) {
    // Every string of an event is far below 64 KiB (channel, type, user ids, key: checked
    // by `NewEvent::new` and `check_key`).
    let len = s.len().min(u16::MAX as usize);
    b.extend_from_slice(&(len as u16).to_le_bytes());
    b.extend_from_slice(&s.as_bytes()[..len]);
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Record<'a> {
    Event {
        seq: u64,
        time_ms: u64,
        key: Option<ItemKey<'a>>,
        /// The body, to decode the event itself when it is read.
        body: &'a [u8],
    },
    Key {
        key: &'a str,
        exp: u64,
        seqs: Vec<u64>,
    },
    Trim(u64),
    Commit(u64),
}

/// What is at an offset of a segment.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A whole record whose checksum matches; `len` bytes including the frame.
    Valid { record: Record<'a>, len: usize },
    /// The length field points past the end of the bytes.
    PastEnd,
    /// Zero length, an impossible length, a checksum that does not match, or a body that
    /// does not parse.
    Invalid,
}

/// Reads the frame at the start of `bytes` (which must not be empty).
pub fn frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.len() < FRAME_LEN {
        return Frame::PastEnd;
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_RECORD {
        return Frame::Invalid;
    }
    let Some(body) = bytes.get(FRAME_LEN..FRAME_LEN + len) else {
        return Frame::PastEnd;
    };
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc {
        return Frame::Invalid;
    }
    match parse(body) {
        Some(record) => Frame::Valid {
            record,
            len: FRAME_LEN + len,
        },
        None => Frame::Invalid,
    }
}

/// A cursor over a record body.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn str16(&mut self) -> Option<&'a str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

fn parse(body: &[u8]) -> Option<Record<'_>> {
    let mut c = Cursor { b: &body[1..] };
    Some(match body[0] {
        EVENT => {
            let seq = c.u64()?;
            let time_ms = c.u64()?;
            let flags = c.u8()?;
            c.str16()?;
            c.str16()?;
            if flags & HAS_USERS != 0 {
                for _ in 0..c.u16()? {
                    c.str16()?;
                }
            }
            let key = if flags & HAS_KEY != 0 {
                Some(ItemKey {
                    key: c.str16()?,
                    exp: c.u64()?,
                    count: c.u32()?,
                })
            } else {
                None
            };
            Record::Event {
                seq,
                time_ms,
                key,
                body,
            }
        }
        KEY => {
            let key = c.str16()?;
            let exp = c.u64()?;
            let n = c.u32()? as usize;
            if n > c.b.len() / 8 {
                return None;
            }
            let seqs = (0..n).map(|_| c.u64()).collect::<Option<Vec<_>>>()?;
            Record::Key { key, exp, seqs }
        }
        TRIM => Record::Trim(c.u64()?),
        COMMIT => Record::Commit(c.u64()?),
        _ => return None,
    })
}

/// The channel of an EVENT record body (as [`Record::Event`] gives it), without decoding
/// the rest.
pub fn event_channel(body: &[u8]) -> Option<&str> {
    let mut c = Cursor {
        b: body.get(1 + 8 + 8 + 1..)?,
    };
    c.str16()
}

/// Decodes the event of an EVENT record body (as [`Record::Event`] gives it).
pub fn decode_event(body: &[u8]) -> Option<NewEvent> {
    let mut c = Cursor { b: body.get(1..)? };
    let _seq = c.u64()?;
    let time_ms = c.u64()?;
    let flags = c.u8()?;
    let channel = c.str16()?.to_owned();
    let kind = c.str16()?.to_owned();
    let users = if flags & HAS_USERS != 0 {
        let n = c.u16()?;
        let mut users = Vec::with_capacity(n as usize);
        for _ in 0..n {
            users.push(c.str16()?.to_owned());
        }
        Some(users)
    } else {
        None
    };
    if flags & HAS_KEY != 0 {
        c.str16()?;
        c.u64()?;
        c.u32()?;
    }
    let data = RawValue::from_string(std::str::from_utf8(c.b).ok()?.to_owned()).ok()?;
    Some(NewEvent::stored(channel, kind, data, users, time_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(users: Option<Vec<String>>) -> NewEvent {
        let data = RawValue::from_string(r#"{"a":[1,"é"]}"#.into()).unwrap();
        NewEvent::new(
            "c:1".into(),
            "t".into(),
            data,
            users,
            1_700_000_000_000,
            65_536,
        )
        .unwrap()
    }

    #[test]
    fn records_round_trip_and_any_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        let mut enc = Encoder { buf: &mut buf };
        let e = event(Some(vec!["u1".into(), "u2".into()]));
        let key = ItemKey {
            key: "k-1",
            exp: 99,
            count: 2,
        };
        enc.event(7, &e, Some(key.clone()));
        enc.key("k-2", 5, &[3, 4]);
        enc.trim(2);
        enc.commit(7);
        let mut at = 0;
        let mut records = Vec::new();
        while at < buf.len() {
            match frame(&buf[at..]) {
                Frame::Valid { record, len } => {
                    records.push(record);
                    at += len;
                }
                other => panic!("at {at}: {other:?}"),
            }
        }
        let Record::Event {
            seq,
            time_ms,
            key: k,
            body,
        } = &records[0]
        else {
            panic!("{:?}", records[0]);
        };
        assert_eq!((*seq, *time_ms, k.clone()), (7, e.time_ms, Some(key)));
        assert_eq!(decode_event(body).unwrap(), e);
        assert_eq!(
            records[1],
            Record::Key {
                key: "k-2",
                exp: 5,
                seqs: vec![3, 4]
            }
        );
        assert_eq!(records[2], Record::Trim(2));
        assert_eq!(records[3], Record::Commit(7));

        let first = match frame(&buf) {
            Frame::Valid { len, .. } => len,
            _ => unreachable!(),
        };
        for bit in 0..first * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(frame(&damaged), Frame::Valid { len, .. } if len == first),
                "bit {bit} flipped went unnoticed"
            );
        }
        assert!(matches!(frame(&buf[..first - 1]), Frame::PastEnd));
        assert!(matches!(frame(&[0u8; 64]), Frame::Invalid));
    }

    #[test]
    fn headers_name_their_base_and_version() {
        let h = header(42);
        assert_eq!(read_header(&h), Ok(42));
        assert_eq!(read_header(&h[..10]), Err(HeaderError::Short(10)));
        let mut bad = h;
        bad[20] ^= 1;
        assert_eq!(read_header(&bad), Err(HeaderError::Damaged));
        let mut v2 = h;
        v2[8] = 2;
        let crc = crc32c::crc32c(&v2[..28]);
        v2[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(read_header(&v2), Err(HeaderError::Version(2)));
    }
}
