//! BSON to JSON for event data and templates.
//!
//! `plain` (the default) is the JSON a browser wants: ObjectIds become their 24-hex string,
//! dates RFC 3339 strings in UTC with milliseconds (`2026-11-24T15:07:14.836Z`; a date before
//! 1970 or after 9999 stays relaxed Extended JSON), 32/64-bit integers and finite doubles
//! numbers, Decimal128 its decimal string, UUID binaries (subtype 4) the hyphenated UUID,
//! other binaries base64, timestamps `{"t", "i"}`, regular expressions `"/pattern/flags"`,
//! NaN and infinities the strings `"NaN"`, `"Infinity"`, `"-Infinity"`. Types that cannot
//! be told apart afterwards (an ObjectId and a string) are not told apart.
//!
//! `relaxed` is MongoDB's relaxed Extended JSON v2 (`{"$oid": …}`, `{"$date": …}`), lossless
//! for clients that parse it with an EJSON library.

use ::mongodb::bson::{spec::BinarySubtype, Bson, Document};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// How documents are turned into JSON (`json = "plain" | "relaxed"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonFormat {
    #[default]
    Plain,
    Relaxed,
}

/// `doc` as a JSON object.
pub fn document(doc: Document, format: JsonFormat) -> Value {
    value(Bson::Document(doc), format)
}

/// One BSON value as JSON.
pub fn value(v: Bson, format: JsonFormat) -> Value {
    match format {
        JsonFormat::Relaxed => v.into_relaxed_extjson(),
        JsonFormat::Plain => plain(v),
    }
}

fn plain(v: Bson) -> Value {
    match v {
        Bson::Double(f) => double(f),
        Bson::String(s) => Value::String(s),
        Bson::Array(items) => Value::Array(items.into_iter().map(plain).collect()),
        Bson::Document(doc) => Value::Object(
            doc.into_iter()
                .map(|(k, v)| (k, plain(v)))
                .collect::<Map<String, Value>>(),
        ),
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::RegularExpression(re) => Value::String(format!("/{}/{}", re.pattern, re.options)),
        Bson::JavaScriptCode(code) => Value::String(code),
        Bson::JavaScriptCodeWithScope(c) => Value::String(c.code),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::Timestamp(ts) => serde_json::json!({ "t": ts.time, "i": ts.increment }),
        Bson::Binary(bin) => match bin.subtype {
            BinarySubtype::Uuid if bin.bytes.len() == 16 => Value::String(uuid(&bin.bytes)),
            _ => Value::String(base64::engine::general_purpose::STANDARD.encode(&bin.bytes)),
        },
        Bson::ObjectId(oid) => Value::String(oid.to_hex()),
        Bson::DateTime(dt) => match u64::try_from(dt.timestamp_millis()) {
            Ok(ms) if ms < 253_402_300_800_000 => Value::String(crate::time::rfc3339_ms(ms)),
            // Before 1970 or after 9999: relaxed Extended JSON's own form.
            _ => Bson::DateTime(dt).into_relaxed_extjson(),
        },
        Bson::Symbol(s) => Value::String(s),
        Bson::Decimal128(d) => Value::String(d.to_string()),
        other @ (Bson::MaxKey | Bson::MinKey | Bson::DbPointer(_)) => other.into_relaxed_extjson(),
    }
}

fn double(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

fn uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::mongodb::bson::{doc, oid::ObjectId, Binary, DateTime, Decimal128, Timestamp};
    use serde_json::json;

    #[test]
    fn plain_json_is_friendly() {
        let oid = ObjectId::parse_str("6560a1f1c2d3e4f5a6b7c8d9").unwrap();
        let d = doc! {
            "_id": oid,
            "n": 3_i32,
            "big": 5_000_000_000_i64,
            "f": 1.5,
            "nan": f64::NAN,
            "at": DateTime::from_millis(1_700_000_001_000),
            "at_ms": DateTime::from_millis(1_700_000_001_123),
            "ts": Timestamp { time: 7, increment: 2 },
            "u": Binary { subtype: BinarySubtype::Uuid, bytes: vec![0x12; 16] },
            "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "dec": "12.50".parse::<Decimal128>().unwrap(),
            "nested": { "ids": [oid], "none": null },
        };
        let v = document(d, JsonFormat::Plain);
        assert_eq!(
            v,
            json!({
                "_id": "6560a1f1c2d3e4f5a6b7c8d9",
                "n": 3,
                "big": 5_000_000_000_i64,
                "f": 1.5,
                "nan": "NaN",
                "at": "2023-11-14T22:13:21.000Z",
                "at_ms": "2023-11-14T22:13:21.123Z",
                "ts": {"t": 7, "i": 2},
                "u": "12121212-1212-1212-1212-121212121212",
                "bin": "AQID",
                "dec": "12.50",
                "nested": {"ids": ["6560a1f1c2d3e4f5a6b7c8d9"], "none": null},
            })
        );
    }

    #[test]
    fn relaxed_extended_json_keeps_the_types() {
        let oid = ObjectId::parse_str("6560a1f1c2d3e4f5a6b7c8d9").unwrap();
        let v = document(doc! { "_id": oid, "n": 3_i32 }, JsonFormat::Relaxed);
        assert_eq!(
            v,
            json!({"_id": {"$oid": "6560a1f1c2d3e4f5a6b7c8d9"}, "n": 3})
        );
    }
}
