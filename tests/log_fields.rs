//! Log lines whose fields cannot be forged.
//!
//! A user id is chosen by whoever issues tokens, and it lands in the "stream opened" line.
//! In the text format a value that is not a plain token is written quoted and escaped, so
//! `q" admin=true user="root` stays one `user` value and never reads as an `admin` field, and
//! a line or paragraph separator or a bidi override in a value is written as an escape, never
//! raw. In the JSON format every value is a JSON string already. The tests start the real
//! binary (tests/common) and read its stderr.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::{bearer, token, Server, Sse};

const FORGED: &str = r#"q" admin=true user="root"#;

/// The `name=value` fields of a text log line, in order: bare values end at a space or a
/// span's closing `}`; quoted values are unescaped (`\"`, `\\`, `\n`, `\r`, `\t`, `\u{..}`).
/// A word without `=` (the level, the target, the message) is skipped.
fn fields(line: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ' ' || chars[i] == '{' || chars[i] == '}' {
            i += 1;
            continue;
        }
        if chars[i] == '"' {
            i = quoted(&chars, i).1;
            continue;
        }
        let start = i;
        while i < chars.len() && !matches!(chars[i], ' ' | '=' | '{' | '}' | '"') {
            i += 1;
        }
        if i < chars.len() && chars[i] == '=' {
            let name: String = chars[start..i].iter().collect();
            i += 1;
            if i < chars.len() && chars[i] == '"' {
                let (value, end) = quoted(&chars, i);
                out.push((name, value));
                i = end;
            } else {
                let v = i;
                while i < chars.len() && !matches!(chars[i], ' ' | '}') {
                    i += 1;
                }
                out.push((name, chars[v..i].iter().collect()));
            }
        }
    }
    out
}

/// The unescaped text of the quoted string starting at `chars[start] == '"'`, and the index
/// after its closing quote (the end of the line when it has none).
fn quoted(chars: &[char], start: usize) -> (String, usize) {
    let mut value = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' => return (value, i + 1),
            '\\' if i + 1 < chars.len() => {
                i += 1;
                match chars[i] {
                    'n' => value.push('\n'),
                    'r' => value.push('\r'),
                    't' => value.push('\t'),
                    'u' => {
                        let close = chars[i..].iter().position(|c| *c == '}').unwrap() + i;
                        let hex: String = chars[i + 2..close].iter().collect();
                        value.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                        i = close;
                    }
                    c => value.push(c),
                }
            }
            c => value.push(c),
        }
        i += 1;
    }
    (value, i)
}

/// Waits for the log lines holding `needle` until `n` of them are there.
fn wait_for_lines(server: &Server, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log_text();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{n} lines with {needle:?} expected in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_test_parser_reads_quoted_values() {
    let line = r#"2026-01-01T00:00:00Z  INFO request{id=ab method=GET path="/a b"}: ssegate::x: stream opened user="q\" admin=true user=\"root" n=2 s="\u{2028}\\""#;
    assert_eq!(
        fields(line),
        [
            ("id", "ab"),
            ("method", "GET"),
            ("path", "/a b"),
            ("user", FORGED),
            ("n", "2"),
            ("s", "\u{2028}\\"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
}

/// A user id written to look like more fields stays one quoted `user` value in the text
/// log; a user id with a line separator and a bidi override has them escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_ids_cannot_forge_fields_or_lines_in_the_text_log() {
    let server = Server::start(&[]);
    let url = server.stream_url(&["c"]);
    let (_forged, connected) = Sse::open(&url, &[bearer(&token(FORGED, &["c"], &[]))]).await;
    assert_eq!(connected["user"], FORGED);
    // Neither is a control character, so both are valid user ids; a log viewer may break
    // the line at U+2028 or show the rest of it reversed after U+202E.
    let separator = "line\u{2028}two\u{202e}fed";
    let (_sep, connected) = Sse::open(&url, &[bearer(&token(separator, &["c"], &[]))]).await;
    assert_eq!(connected["user"], separator);

    let opened = wait_for_lines(&server, "stream opened", 2);
    let log = server.log_text();
    let users: Vec<String> = opened
        .iter()
        .flat_map(|l| fields(l))
        .filter(|(n, _)| n == "user")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        users,
        [FORGED, separator],
        "the user values, read back:\n{log}"
    );
    for line in log.lines() {
        let fields = fields(line);
        assert!(
            fields.iter().all(|(n, _)| n != "admin"),
            "a forged `admin` field in {line:?}"
        );
        assert!(
            fields.iter().filter(|(n, _)| n == "user").count() <= 1,
            "two `user` fields in {line:?}"
        );
    }
    assert!(
        log.contains(r#"user="q\" admin=true user=\"root""#),
        "quoted and escaped:\n{log}"
    );
    assert!(
        log.contains(r#"user="line\u{2028}two\u{202e}fed""#),
        "escaped:\n{log}"
    );
    assert!(
        !log.contains('\u{2028}') && !log.contains('\u{202e}'),
        "no raw separator or bidi override:\n{log}"
    );
    // Ordinary values keep their bare look.
    assert!(
        opened.iter().all(|l| l.contains(" channels=1")),
        "{opened:?}"
    );
    assert!(
        opened
            .iter()
            .all(|l| l.contains("method=GET path=/v1/stream")),
        "{opened:?}"
    );
}

/// The JSON format was already safe: each line is one JSON object and the user id comes
/// back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_ids_cannot_forge_fields_in_the_json_log() {
    let server = Server::start(&[("SERVER__LOG_FORMAT", "json")]);
    let url = server.stream_url(&["c"]);
    let tricky = format!("{FORGED}\u{2028}\"}}{{\"admin\":true");
    let (_sse, connected) = Sse::open(&url, &[bearer(&token(&tricky, &["c"], &[]))]).await;
    assert_eq!(connected["user"], tricky.as_str());
    let opened = wait_for_lines(&server, "stream opened", 1);
    let log = server.log_text();
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}"));
        assert!(v.get("admin").is_none(), "{line}");
    }
    let line: Value = serde_json::from_str(&opened[0]).unwrap();
    assert_eq!(line["user"], tricky.as_str(), "{line}");
}
