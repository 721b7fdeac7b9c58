//! The fields of the text log format, written so that no value can pass for another field or
//! another line.
//!
//! tracing-subscriber's default field formatter writes a `%` value as it is: a user id
//! `q" admin=true user="root` reads as three fields, and a value holding a line break (or a
//! Unicode line separator, or a bidi override a viewer honours) as a second line. With
//! [`SafeFields`]:
//!
//! - a value that is a plain token — printable ASCII without space, quotes, `\`, `=`, `{`,
//!   `}` (what a reader uses to find where a value, a field or a span's fields end) — is
//!   written bare, as before: `conn=c17 user=u1 ip=127.0.0.1:50312 path=/v1/stream`;
//! - any other value is written in double quotes with `"` and `\` escaped and CR, LF, tab as
//!   `\r`, `\n`, `\t`, and every other control character, line or paragraph separator and
//!   bidi control as `\u{..}` (hex): `user="q\" admin=true user=\"root"`, `user=""`;
//! - the message is written bare when it holds none of `"`, `\`, `=` or a character that needs
//!   escaping (ordinary sentences), else quoted like a value: it can neither pose as fields
//!   nor break the line.
//!
//! ```
//! use tracing_subscriber::fmt;
//! let subscriber = fmt().fmt_fields(ssegate::logfmt::SafeFields).finish();
//! # drop(subscriber);
//! ```
//!
//! The JSON format (`server.log_format = "json"`) needs none of this: every value there is a
//! JSON string or number.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// Formats the fields of events and spans as `name=value`, quoting and escaping every value
/// that is not a plain token (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SafeFields;

impl<'writer> FormatFields<'writer> for SafeFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = SafeVisitor {
            ansi: writer.has_ansi_escapes(),
            writer,
            first: true,
            scratch: String::new(),
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct SafeVisitor<'writer> {
    writer: Writer<'writer>,
    /// Colours and italics as the default formatter has them (a terminal only).
    ansi: bool,
    /// Whether nothing was written yet (no separating space).
    first: bool,
    /// Where a `Debug` value is rendered before it is checked, reused across fields.
    scratch: String,
    result: fmt::Result,
}

impl SafeVisitor<'_> {
    fn write_field(&mut self, name: &str, value: &str) {
        if self.result.is_err() {
            return;
        }
        // `log` records carry their metadata as `log.*` fields, already shown in the line's
        // prefix (as the default formatter does).
        if name.starts_with("log.") {
            return;
        }
        self.result = self.try_write_field(name, value);
    }

    fn try_write_field(&mut self, name: &str, value: &str) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        if name == "message" {
            return if is_plain_message(value) {
                self.writer.write_str(value)
            } else {
                write_quoted(&mut self.writer, value)
            };
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        if self.ansi {
            write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
        } else {
            write!(self.writer, "{name}=")?;
        }
        if is_plain(value) {
            self.writer.write_str(value)
        } else {
            write_quoted(&mut self.writer, value)
        }
    }
}

impl Visit for SafeVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write_field(field.name(), value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{value}");
        self.write_field(field.name(), &scratch);
        // The chain of causes, as the default formatter shows it: `error.sources=[a, b]`.
        if let Some(source) = value.source() {
            scratch.clear();
            scratch.push('[');
            let mut next = Some(source);
            while let Some(e) = next {
                if scratch.len() > 1 {
                    scratch.push_str(", ");
                }
                let _ = write!(scratch, "{e}");
                next = e.source();
            }
            scratch.push(']');
            let name = format!("{}.sources", field.name());
            self.write_field(&name, &scratch);
        }
        self.scratch = scratch;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{value:?}");
        self.write_field(field.name(), &scratch);
        self.scratch = scratch;
    }
}

/// A value that can be written bare: non-empty printable ASCII without the characters a
/// reader splits on (space, quotes, `\`, `=`, span braces).
pub fn is_plain(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'`' | b'\\' | b'=' | b'{' | b'}')
        })
}

/// A message that can be written bare: it poses as no field (no `=`), opens no quoted string
/// and needs no escape.
fn is_plain_message(message: &str) -> bool {
    !message
        .chars()
        .any(|c| matches!(c, '"' | '\\' | '=') || must_escape(c))
}

/// Characters never written raw: control characters (CR, LF, tab, ESC, DEL, C1…), the
/// Unicode line and paragraph separators, and the bidi controls that reorder what a viewer
/// shows (and the byte-order mark, invisible).
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// Writes `value` in double quotes, `"` and `\` escaped with `\`, CR, LF and tab as `\r`,
/// `\n`, `\t` and the other characters of [`must_escape`] as `\u{hex}`.
pub fn write_quoted(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if must_escape(c) => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// `error` and its sources on one line, `: `-separated; a source whose text is empty or
/// already in the line is not repeated. For log lines and replies that must tell the whole
/// story.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    append_causes(&mut out, error.source());
    out
}

/// Appends `next` and its sources to `out` as [`error_chain`] does.
pub fn append_causes(out: &mut String, mut next: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = e.source();
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn quoted(value: &str) -> String {
        let mut out = String::new();
        write_quoted(&mut out, value).unwrap();
        out
    }

    #[test]
    fn plain_tokens_stay_bare_and_the_rest_is_quoted() {
        for plain in [
            "u1",
            "c17",
            "127.0.0.1:80",
            "[::1]:80",
            "logs:w1:*",
            "/v1/stream",
            "a@b.c",
            "-1.5",
            "None",
            "Some(3)",
        ] {
            assert!(is_plain(plain), "{plain}");
        }
        for not_plain in [
            "",
            "a b",
            "a=b",
            "a\"",
            "a'",
            "a\\",
            "{",
            "}",
            "é",
            "a\u{2028}b",
            "a\tb",
        ] {
            assert!(!is_plain(not_plain), "{not_plain:?}");
        }
        assert_eq!(
            quoted(r#"q" admin=true user="root"#),
            r#""q\" admin=true user=\"root""#
        );
        assert_eq!(
            quoted(
                "a\\b\nc\rd\te\x1b[31mf\x7f\u{85}g\u{2028}h\u{2029}i\u{202e}j\u{2066}k\u{feff}lé"
            ),
            r#""a\\b\nc\rd\te\u{1b}[31mf\u{7f}\u{85}g\u{2028}h\u{2029}i\u{202e}j\u{2066}k\u{feff}lé""#
        );
        assert_eq!(quoted(""), r#""""#);
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The text lines `f` logs through the pretty format with [`SafeFields`].
    fn log(f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(SafeFields)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn event_and_span_fields_cannot_be_forged() {
        let user = r#"q" admin=true user="root"#;
        let text = log(|| {
            let span = tracing::info_span!("request", id = "r1", path = %"/a b\n");
            let _enter = span.enter();
            tracing::info!(user = %user, n = 3, ok = true, ratio = 0.5, resume = ?Some("7"), "stream opened");
        });
        assert_eq!(
            text,
            concat!(
                r#" INFO request{id=r1 path="/a b\n"}: stream opened user="q\" admin=true user=\"root" n=3 ok=true ratio=0.5 resume="Some(\"7\")""#,
                "\n"
            )
        );
    }

    #[test]
    fn messages_cannot_break_the_line_or_pose_as_fields() {
        let text = log(|| {
            tracing::warn!("log commit failed; 3 requests refused");
            tracing::warn!("bad value {}", "x\ny");
            tracing::warn!("source {} failed", "pg user=root");
            tracing::warn!("{}", "\u{2028}\x1b[2J");
            tracing::warn!(r#"source "pg" failed"#);
        });
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                " WARN log commit failed; 3 requests refused",
                r#" WARN "bad value x\ny""#,
                r#" WARN "source pg user=root failed""#,
                r#" WARN "\u{2028}\u{1b}[2J""#,
                r#" WARN "source \"pg\" failed""#,
            ]
        );
    }

    #[test]
    fn errors_keep_their_sources() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("cannot open the log")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(io::Error::other("disk \"full\""));
        let text = log(|| {
            tracing::error!(error = &e as &(dyn std::error::Error + 'static), "failed");
        });
        assert_eq!(
            text,
            concat!(
                r#"ERROR failed error="cannot open the log" error.sources="[disk \"full\"]""#,
                "\n"
            )
        );
    }
}
