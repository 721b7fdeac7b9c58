//! A decoder for the `pgoutput` logical replication protocol, version 1 (the messages a
//! publication's slot gives, one per row of `pg_logical_slot_peek_binary_changes`), and the
//! conversion of its text values to JSON the way `to_jsonb` writes them.
//!
//! Relation messages describe a table before its first change in a decoding session; the
//! decoder remembers them and turns each insert, update and delete into a row as a JSON
//! object. Values the message does not carry are left out: a delete under the default
//! `REPLICA IDENTITY` carries only the key columns, an update leaves out TOASTed values it
//! did not change (unless the old row, under `REPLICA IDENTITY FULL`, has them).

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

use crate::source::Op;

/// Why a pgoutput message cannot be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated pgoutput message")]
    Truncated,
    #[error("unterminated string in pgoutput message")]
    UnterminatedString,
    #[error("unknown pgoutput message {:?}", *.0 as char)]
    UnknownMessage(u8),
    #[error("unknown column kind {:?}", *.0 as char)]
    UnknownColumnKind(u8),
    #[error("delete: unexpected tuple kind {:?}", *.0 as char)]
    DeleteTupleKind(u8),
    #[error("expected tuple kind {:?}, got {:?}", *.want as char, *.got as char)]
    TupleKind { want: u8, got: u8 },
    #[error("change of relation {0} before its description")]
    UnknownRelation(u32),
    #[error("{place}: {values} values for {columns} columns")]
    TooManyValues {
        place: String,
        values: usize,
        columns: usize,
    },
}

/// What one message says.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A transaction starts; `final_lsn` is the LSN of its commit record.
    Begin { final_lsn: u64 },
    /// A transaction ends; the slot may be advanced to `end_lsn` once it is handled.
    Commit { end_lsn: u64 },
    /// A row changed in `schema.table` (`place`).
    Row {
        op: Op,
        place: String,
        record: Value,
    },
    /// Tables were truncated (no rows to report).
    Truncate { places: Vec<String> },
    /// Relation, type and origin messages (absorbed), logical messages.
    Other,
}

#[derive(Debug, Clone)]
struct Relation {
    place: String,
    columns: Vec<Column>,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    type_oid: u32,
}

/// Decodes messages in order, remembering the relations they describe.
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
}

/// One value of a tuple.
enum Datum<'a> {
    Null,
    /// An unchanged TOASTed value the message does not repeat.
    Unchanged,
    Text(&'a [u8]),
}

impl Decoder {
    pub fn decode(&mut self, msg: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader { buf: msg, pos: 0 };
        let tag = r.u8()?;
        match tag {
            b'B' => {
                let final_lsn = r.u64()?;
                Ok(Message::Begin { final_lsn })
            }
            b'C' => {
                let _flags = r.u8()?;
                let _commit_lsn = r.u64()?;
                let end_lsn = r.u64()?;
                Ok(Message::Commit { end_lsn })
            }
            b'R' => {
                let id = r.u32()?;
                let schema = r.cstr()?;
                let name = r.cstr()?;
                let _replica_identity = r.u8()?;
                let n = r.u16()?;
                let mut columns = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let _flags = r.u8()?;
                    let name = r.cstr()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    columns.push(Column { name, type_oid });
                }
                self.relations.insert(
                    id,
                    Relation {
                        place: format!("{schema}.{name}"),
                        columns,
                    },
                );
                Ok(Message::Other)
            }
            b'I' => {
                let rel = self.relation(r.u32()?)?;
                expect(r.u8()?, b'N')?;
                let new = r.tuple()?;
                Ok(Message::Row {
                    op: Op::Insert,
                    place: rel.place.clone(),
                    record: rel.record(&new, None)?,
                })
            }
            b'U' => {
                let rel = self.relation(r.u32()?)?;
                let mut kind = r.u8()?;
                let mut old = None;
                if kind == b'K' || kind == b'O' {
                    old = Some(r.tuple()?);
                    kind = r.u8()?;
                }
                expect(kind, b'N')?;
                let new = r.tuple()?;
                Ok(Message::Row {
                    op: Op::Update,
                    place: rel.place.clone(),
                    record: rel.record(&new, old.as_deref())?,
                })
            }
            b'D' => {
                let rel = self.relation(r.u32()?)?;
                let kind = r.u8()?;
                if kind != b'K' && kind != b'O' {
                    return Err(DecodeError::DeleteTupleKind(kind));
                }
                let old = r.tuple()?;
                // A key-only old row has nulls for every other column: leave those out
                // rather than claim they were null.
                let key_only = kind == b'K';
                let mut record = rel.record(&old, None)?;
                if key_only {
                    if let Value::Object(m) = &mut record {
                        m.retain(|_, v| !v.is_null());
                    }
                }
                Ok(Message::Row {
                    op: Op::Delete,
                    place: rel.place.clone(),
                    record,
                })
            }
            b'T' => {
                let n = r.u32()?;
                let _options = r.u8()?;
                let mut places = Vec::new();
                for _ in 0..n {
                    let id = r.u32()?;
                    if let Some(rel) = self.relations.get(&id) {
                        places.push(rel.place.clone());
                    }
                }
                Ok(Message::Truncate { places })
            }
            b'Y' | b'O' | b'M' => Ok(Message::Other),
            other => Err(DecodeError::UnknownMessage(other)),
        }
    }

    fn relation(&self, id: u32) -> Result<&Relation, DecodeError> {
        self.relations
            .get(&id)
            .ok_or(DecodeError::UnknownRelation(id))
    }
}

fn expect(got: u8, want: u8) -> Result<(), DecodeError> {
    if got == want {
        Ok(())
    } else {
        Err(DecodeError::TupleKind { want, got })
    }
}

impl Relation {
    /// The row as a JSON object; an unchanged TOASTed value comes from `old` when it has it.
    fn record(&self, new: &[Datum<'_>], old: Option<&[Datum<'_>]>) -> Result<Value, DecodeError> {
        if new.len() > self.columns.len() {
            return Err(DecodeError::TooManyValues {
                place: self.place.clone(),
                values: new.len(),
                columns: self.columns.len(),
            });
        }
        let mut map = Map::with_capacity(new.len());
        for (i, (col, datum)) in self.columns.iter().zip(new).enumerate() {
            let datum = match datum {
                Datum::Unchanged => match old.and_then(|o| o.get(i)) {
                    Some(d @ Datum::Text(_)) => d,
                    _ => continue,
                },
                d => d,
            };
            let value = match datum {
                Datum::Text(bytes) => to_json(col.type_oid, &String::from_utf8_lossy(bytes)),
                _ => Value::Null,
            };
            map.insert(col.name.clone(), value);
        }
        Ok(Value::Object(map))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString)?;
        let s = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.pos += len + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Datum<'a>>, DecodeError> {
        let n = self.u16()?;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    Datum::Text(self.take(len)?)
                }
                k => return Err(DecodeError::UnknownColumnKind(k)),
            });
        }
        Ok(out)
    }
}

/// Formats an LSN as PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some(hi << 32 | lo)
}

// Type OIDs (pg_type.h).
const BOOL: u32 = 16;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const OID: u32 = 26;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const DATE: u32 = 1082;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const JSONB: u32 = 3802;

/// The element type of a one-dimensional array type we turn into a JSON array.
fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => BOOL,
        1005 => INT2,
        1007 => INT4,
        1016 => INT8,
        1009 | 1015 | 1014 | 2951 => 25, // text, varchar, bpchar, uuid
        1021 => FLOAT4,
        1022 => FLOAT8,
        1231 => NUMERIC,
        199 => JSON,
        3807 => JSONB,
        _ => return None,
    })
}

/// A value in PostgreSQL's text output (session `DateStyle` ISO, `TimeZone` UTC) as
/// `to_jsonb` would give it.
pub fn to_json(type_oid: u32, text: &str) -> Value {
    match type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 | OID => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        FLOAT4 | FLOAT8 | NUMERIC => number(text),
        JSON | JSONB => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        TIMESTAMPTZ => Value::String(iso_timestamp(text, true)),
        TIMESTAMP => Value::String(iso_timestamp(text, false)),
        DATE => Value::String(text.to_owned()),
        oid => match array_element(oid).and_then(|el| parse_array(text, el)) {
            Some(v) => v,
            None => Value::String(text.to_owned()),
        },
    }
}

fn number(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    match text.parse::<f64>().ok().and_then(Number::from_f64) {
        Some(n) => Value::Number(n),
        // NaN, Infinity: to_jsonb writes them as strings.
        None => Value::String(text.to_owned()),
    }
}

/// `2024-05-01 10:00:00.5+00` → `2024-05-01T10:00:00.5+00:00`; `infinity` stays.
fn iso_timestamp(text: &str, with_zone: bool) -> String {
    if !text.as_bytes().first().is_some_and(u8::is_ascii_digit) || text.ends_with(" BC") {
        return text.to_owned();
    }
    let mut s = text.replacen(' ', "T", 1);
    if with_zone {
        // The zone is the last `+hh`, `-hh`, `+hh:mm` after the time.
        if let Some(i) = s.rfind(['+', '-']).filter(|&i| i > 10) {
            if s.len() - i == 3 {
                s.push_str(":00");
            }
        }
    }
    s
}

/// A one-dimensional array literal (`{a,"b c",NULL}`) as a JSON array; `None` for anything
/// else (nested arrays, explicit bounds), which then stays text.
fn parse_array(text: &str, element: u32) -> Option<Value> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(Value::Array(items));
    }
    let mut chars = inner.chars().peekable();
    loop {
        let (item, quoted) = match chars.peek()? {
            '{' => return None,
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                (s, true)
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                (s, false)
            }
        };
        items.push(if !quoted && item == "NULL" {
            Value::Null
        } else {
            to_json(element, &item)
        });
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(_) => return None,
        }
    }
    Some(Value::Array(items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn relation() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&7u32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "logs");
        m.push(b'f');
        m.extend_from_slice(&3u16.to_be_bytes());
        for (name, oid) in [("id", INT8), ("ws", 25), ("big", 25)] {
            m.push(0);
            cstr(&mut m, name);
            m.extend_from_slice(&oid.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
    }

    fn tuple(out: &mut Vec<u8>, values: &[Option<&str>]) {
        out.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'n'),
                Some("<unchanged>") => out.push(b'u'),
                Some(s) => {
                    out.push(b't');
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    #[test]
    fn rows_of_every_kind() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(&relation()).unwrap(), Message::Other);

        let mut ins = vec![b'I'];
        ins.extend_from_slice(&7u32.to_be_bytes());
        ins.push(b'N');
        tuple(&mut ins, &[Some("1"), Some("w1"), None]);
        assert_eq!(
            d.decode(&ins).unwrap(),
            Message::Row {
                op: Op::Insert,
                place: "public.logs".into(),
                record: json!({"id": 1, "ws": "w1", "big": null}),
            }
        );

        let mut upd = vec![b'U'];
        upd.extend_from_slice(&7u32.to_be_bytes());
        upd.push(b'O');
        tuple(&mut upd, &[Some("1"), Some("w1"), Some("long")]);
        upd.push(b'N');
        tuple(&mut upd, &[Some("1"), Some("w2"), Some("<unchanged>")]);
        let Message::Row { op, record, .. } = d.decode(&upd).unwrap() else {
            panic!()
        };
        assert_eq!(op, Op::Update);
        assert_eq!(record, json!({"id": 1, "ws": "w2", "big": "long"}));

        let mut del = vec![b'D'];
        del.extend_from_slice(&7u32.to_be_bytes());
        del.push(b'K');
        tuple(&mut del, &[Some("1"), None, None]);
        let Message::Row { op, record, .. } = d.decode(&del).unwrap() else {
            panic!()
        };
        assert_eq!(op, Op::Delete);
        assert_eq!(record, json!({"id": 1}));

        let mut begin = vec![b'B'];
        begin.extend_from_slice(&0x1_0000_0020u64.to_be_bytes());
        begin.extend_from_slice(&[0; 12]);
        assert_eq!(
            d.decode(&begin).unwrap(),
            Message::Begin {
                final_lsn: 0x1_0000_0020
            }
        );
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&1u64.to_be_bytes());
        commit.extend_from_slice(&2u64.to_be_bytes());
        commit.extend_from_slice(&3u64.to_be_bytes());
        assert_eq!(d.decode(&commit).unwrap(), Message::Commit { end_lsn: 2 });

        // Truncated or unknown input is an error, never a panic.
        assert!(d.decode(&ins[..ins.len() - 1]).is_err());
        assert!(d.decode(b"Z").is_err());
        let mut unknown_rel = ins.clone();
        unknown_rel[1..5].copy_from_slice(&9u32.to_be_bytes());
        assert!(d.decode(&unknown_rel).is_err());
    }

    #[test]
    fn values_like_to_jsonb() {
        assert_eq!(to_json(BOOL, "t"), json!(true));
        assert_eq!(to_json(INT8, "-42"), json!(-42));
        assert_eq!(to_json(NUMERIC, "1.5"), json!(1.5));
        assert_eq!(to_json(NUMERIC, "NaN"), json!("NaN"));
        assert_eq!(to_json(JSONB, r#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(
            to_json(TIMESTAMPTZ, "2024-05-01 10:00:00.5+00"),
            json!("2024-05-01T10:00:00.5+00:00")
        );
        assert_eq!(
            to_json(TIMESTAMPTZ, "2024-05-01 10:00:00+05:30"),
            json!("2024-05-01T10:00:00+05:30")
        );
        assert_eq!(to_json(TIMESTAMPTZ, "infinity"), json!("infinity"));
        assert_eq!(
            to_json(TIMESTAMP, "2024-05-01 10:00:00"),
            json!("2024-05-01T10:00:00")
        );
        assert_eq!(
            to_json(1009, r#"{u1,"u 2",NULL,"a\"b"}"#),
            json!(["u1", "u 2", null, "a\"b"])
        );
        assert_eq!(to_json(1007, "{1,2}"), json!([1, 2]));
        assert_eq!(to_json(1007, "{}"), json!([]));
        assert_eq!(to_json(1007, "{{1},{2}}"), json!("{{1},{2}}"));
        assert_eq!(to_json(25, "plain"), json!("plain"));
    }

    #[test]
    fn lsn_text() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
    }
}
