//! Topic matchers: which topics a subscription or a token's grant takes.
//!
//! A [`Matcher`] is compiled once ([`Matcher::new`]) and then asked, per update and per
//! subscriber, whether it takes a topic ([`Matcher::matches`]). Three readings exist:
//!
//! - `Exact`: byte-for-byte equality, no normalization, no resolution against any base.
//! - `URLPattern`: a WHATWG URL Pattern (the `urlpattern` crate, the one Deno uses). Relative
//!   patterns and relative topics are resolved against the hub's URL. The crate compiles
//!   patterns to the `regex` crate, whose matching time is linear in the topic's length, so a
//!   crafted pattern cannot make matching blow up (draft-dunglas-mercure-08, "URL Pattern").
//! - `Selector`: the older protocol's `topic=` selectors and `mercure` claim lists: equal to
//!   the topic, or an RFC 6570 URI template (levels 1–4) that matches it. Templates are
//!   compiled to a `regex` too, read leniently the way the reference Go hub does; a selector
//!   that is not a valid template is still a valid selector, compared for equality only.
//!
//! The text `*` matches every topic, whatever the type, and is recognized first.
//!
//! Guarantees: `matches` never panics; for `*`, `Exact` and `Selector` it allocates nothing
//! of its own (a template's regex reuses its per-thread scratch space); `URLPattern` parses
//! the topic as a URL, which allocates. A topic that does not
//! parse as a URL is not matched by any URL pattern.
//!
//! The module also holds the character and length rule for topics ([`check_topic`]), the
//! reserved-namespace rule for publishers ([`is_reserved_topic`]) and the percent-encoding of
//! one path segment used to build subscription topics ([`encode_component`],
//! [`decode_component`]).
//!
//! ```
//! use ssegate::mercure::matcher::{Matcher, MatcherType};
//! let base = "https://hub.example/.well-known/mercure";
//! let m = Matcher::new(MatcherType::UrlPattern, "https://example.com/books/:id", base).unwrap();
//! assert!(m.matches("https://example.com/books/1"));
//! assert!(!m.matches("https://example.com/books/1/2"));
//! ```

use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

/// The path of the hub; it and everything below it are reserved for the hub's own topics.
const RESERVED_PATH: &str = "/.well-known/mercure";

/// Upper bound of the compiled size of a URI template's regex. Selectors come from anonymous
/// subscribers (`topic=`), so compiling one must stay cheap; a template above it (thousands
/// of expressions, huge prefixes) is read as a plain selector compared for equality.
const TEMPLATE_REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// How a matcher's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatcherType {
    /// Byte-for-byte equality (`match`, `matchExact`; `matchType: Exact`).
    Exact,
    /// WHATWG URL Pattern (`matchURLPattern`; `matchType: URLPattern`), relative ones against
    /// the hub's URL.
    UrlPattern,
    /// The older protocol's topic selector (`topic=`, the `mercure` claim's lists): equal
    /// to the topic, or an RFC 6570 URI template matching it.
    Selector,
}

impl MatcherType {
    /// The name the newer protocol uses (`Exact`, `URLPattern`); `Selector` has none.
    pub fn name(self) -> &'static str {
        match self {
            MatcherType::Exact => "Exact",
            MatcherType::UrlPattern => "URLPattern",
            MatcherType::Selector => "Selector",
        }
    }
}

/// Why a matcher or a topic was refused; the text is shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    /// The text breaks a rule (control character, URL pattern that does not compile): a
    /// request carrying it is answered 400.
    #[error("{0}")]
    Invalid(String),
    /// The topic is longer than the configured limit: a publication carrying it is answered
    /// 413.
    #[error("the topic is {len} bytes long, more than the limit of {max} bytes")]
    TooLong {
        /// The topic's length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
}

/// A compiled topic matcher. `*` matches every topic, whatever the type.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The type the text was read as, reported back in subscription events.
    kind: MatcherType,
    /// The text as given, compared byte for byte by `Exact` and `Selector`.
    text: String,
    /// What `matches` runs, built once in `new` so the hot path only evaluates.
    compiled: Compiled,
}

#[derive(Debug, Clone)]
enum Compiled {
    /// The text is `*`.
    Wildcard,
    /// Equality with `text`.
    Exact,
    /// A URL pattern; `base` (the hub's URL, parsed once) resolves relative topics. `Arc`s
    /// because a compiled pattern is not `Clone` and matchers are cloned per subscription.
    UrlPattern {
        pattern: Arc<UrlPattern>,
        base: Option<Arc<Url>>,
    },
    /// Equality with `text`, or the template's regex when the text is a valid template.
    Selector { template: Option<Regex> },
}

impl Matcher {
    /// Compiles `text` as a matcher of type `kind`; `base` is the hub's URL, against which
    /// relative URL patterns and relative topics are resolved.
    ///
    /// Fails ([`MatcherError::Invalid`]) when the text holds a control character (C0, DEL,
    /// C1) or is a URL pattern that does not compile (including a relative one when `base`
    /// is not a URL). A selector never fails for its syntax: an invalid template is compared
    /// for equality only.
    pub fn new(kind: MatcherType, text: &str, base: &str) -> Result<Self, MatcherError> {
        check_chars(text, "topic matcher")?;
        let compiled = if text == "*" {
            Compiled::Wildcard
        } else {
            match kind {
                MatcherType::Exact => Compiled::Exact,
                MatcherType::Selector => Compiled::Selector {
                    template: compile_template(text),
                },
                MatcherType::UrlPattern => compile_url_pattern(text, base)?,
            }
        };
        Ok(Self {
            kind,
            text: text.to_owned(),
            compiled,
        })
    }

    /// The type the text was read as.
    pub fn kind(&self) -> MatcherType {
        self.kind
    }

    /// The text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the matcher is `*`.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.compiled, Compiled::Wildcard)
    }

    /// Whether `topic` is taken.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.compiled {
            Compiled::Wildcard => true,
            Compiled::Exact => self.text == topic,
            Compiled::Selector { template } => {
                self.text == topic || template.as_ref().is_some_and(|re| re.is_match(topic))
            }
            Compiled::UrlPattern { pattern, base } => {
                let Ok(url) = Url::options().base_url(base.as_deref()).parse(topic) else {
                    return false;
                };
                // `test` only fails on inputs it cannot read; those do not match.
                pattern
                    .test(UrlPatternMatchInput::Url(url))
                    .unwrap_or(false)
            }
        }
    }
}

fn compile_url_pattern(text: &str, base: &str) -> Result<Compiled, MatcherError> {
    let base = Url::parse(base).ok();
    let init = UrlPatternInit::parse_constructor_string::<Regex>(text, base.clone())
        .and_then(|init| UrlPattern::parse(init, UrlPatternOptions::default()));
    match init {
        Ok(pattern) => Ok(Compiled::UrlPattern {
            pattern: Arc::new(pattern),
            base: base.map(Arc::new),
        }),
        Err(urlpattern::Error::BaseUrlRequired) => Err(MatcherError::Invalid(format!(
            "The URL pattern {text:?} is relative and the hub's URL is not a valid base URL."
        ))),
        Err(e) => Err(MatcherError::Invalid(format!(
            "The URL pattern {text:?} is not valid: {e}."
        ))),
    }
}

/// Checks a topic: at most `max_bytes` long ([`MatcherError::TooLong`], answered 413) and free
/// of C0 (U+0000–U+001F), DEL (U+007F) and C1 (U+0080–U+009F) control characters
/// ([`MatcherError::Invalid`], answered 400). UTF-8 validity is given by `&str`: callers
/// decode bytes with `std::str::from_utf8` and answer 400 on failure.
pub fn check_topic(topic: &str, max_bytes: usize) -> Result<(), MatcherError> {
    if topic.len() > max_bytes {
        return Err(MatcherError::TooLong {
            len: topic.len(),
            max: max_bytes,
        });
    }
    check_chars(topic, "topic")
}

/// The character rule shared by topics and matchers; `what` names the value in the message.
fn check_chars(text: &str, what: &str) -> Result<(), MatcherError> {
    match text
        .char_indices()
        .find(|&(_, c)| c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c))
    {
        None => Ok(()),
        Some((at, c)) => Err(MatcherError::Invalid(format!(
            "The {what} contains the control character U+{:04X} at byte {at}; control characters are not allowed.",
            u32::from(c)
        ))),
    }
}

/// Whether a publisher's `topic` addresses the hub's reserved namespace: resolved as a URI
/// reference against `base` (the hub's URL), its path is `/.well-known/mercure` or starts
/// with `/.well-known/mercure/`, whatever the scheme and authority.
///
/// The path is also compared once percent-decoded, so `/.well-known/%6Dercure/x` or
/// `/.well-known%2Fmercure` are reserved too (refusing a few odd topics is cheaper than
/// reasoning about every decoder downstream). Dot segments are removed by the resolution.
/// A topic that cannot be resolved (not a URL, and `base` not a URL either) is not reserved.
/// Note that the empty topic, `?x` and `#x` resolve to the hub's URL itself: reserved.
pub fn is_reserved_topic(topic: &str, base: &str) -> bool {
    let resolved = match Url::parse(base) {
        Ok(base) => base.join(topic),
        Err(_) => Url::parse(topic),
    };
    let Ok(url) = resolved else {
        return false;
    };
    let path = url.path();
    if is_reserved_path(path) {
        return true;
    }
    path.contains('%') && is_reserved_path(&decode_lossy(path))
}

fn is_reserved_path(path: &str) -> bool {
    path.strip_prefix(RESERVED_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Percent-decodes what can be decoded, keeping malformed escapes as they are.
fn decode_lossy(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&b| hex_value(b)),
                bytes.get(i + 2).and_then(|&b| hex_value(b)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes `s` as one RFC 6570 variable value: every byte outside the RFC 3986
/// unreserved set (`A-Z a-z 0-9 - . _ ~`) becomes `%XX` (upper-case hex), `%` included, so
/// a value is encoded exactly once as a whole. Used to build
/// `/.well-known/mercure/subscriptions/{matchType}/{match}/{subscriber}`.
pub fn encode_component(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Decodes what [`encode_component`] made (or any percent-encoded text). Strict: a `%` not
/// followed by two hex digits, or bytes that are not UTF-8 once decoded, give `None`.
pub fn decode_component(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = hex_value(*bytes.get(i + 1)?)?;
            let l = hex_value(*bytes.get(i + 2)?)?;
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// RFC 6570 URI templates, compiled to a regex that matches their expansions.
//
// Each expression `{op var1,var2}` becomes an optional group (every variable may be
// undefined, and then the expression expands to nothing): the operator's first character,
// one item, then up to `n - 1` more items after the operator's separator (any number when a
// variable is exploded). Items are read leniently like the reference Go hub
// (yosida95/uritemplate): values are runs of allowed characters or percent-escapes, lists
// join with `,`, exploded associative arrays add `k=v`. A prefix `:n` bounds the value of
// a lone variable to `n` characters (a percent-escape counts as one).
// ---------------------------------------------------------------------------------------

/// Unreserved characters (RFC 3986), as the inside of a character class.
const CLASS_U: &str = r"A-Za-z0-9\-._\~";
/// Reserved characters (RFC 3986 gen-delims and sub-delims), as the inside of a class.
const CLASS_R: &str = r":/?\#\[\]@!$\&'()*+,;=";
const PCT: &str = "%[0-9A-Fa-f]{2}";

/// What an operator adds to the variables' values (RFC 6570, appendix A).
struct Operator {
    first: &'static str,
    sep: &'static str,
    named: bool,
    /// `=` always follows the name (`?`, `&`); with `;` an empty value has no `=`.
    ifemp_eq: bool,
    reserved: bool,
}

impl Operator {
    fn from_char(c: Option<u8>) -> Option<Self> {
        let op = |first, sep, named, ifemp_eq, reserved| Operator {
            first,
            sep,
            named,
            ifemp_eq,
            reserved,
        };
        Some(match c {
            None => op("", ",", false, false, false),
            Some(b'+') => op("", ",", false, false, true),
            Some(b'#') => op("#", ",", false, false, true),
            Some(b'.') => op(".", ".", false, false, false),
            Some(b'/') => op("/", "/", false, false, false),
            Some(b';') => op(";", ";", true, false, false),
            Some(b'?') => op("?", "&", true, true, false),
            Some(b'&') => op("&", "&", true, true, false),
            _ => return None,
        })
    }
}

struct VarSpec<'a> {
    name: &'a str,
    explode: bool,
    prefix: Option<u16>,
}

/// The regex matching the expansions of `text`, or `None` when `text` has no expression or is
/// not a valid template (or its regex would be too large).
fn compile_template(text: &str) -> Option<Regex> {
    if !text.contains(['{', '}']) {
        return None;
    }
    let mut re = String::with_capacity(text.len() * 8);
    re.push_str(r"\A(?:");
    let mut rest = text;
    loop {
        match rest.find(['{', '}']) {
            None => {
                re.push_str(&regex::escape(rest));
                break;
            }
            Some(at) => {
                if rest.as_bytes()[at] == b'}' {
                    return None;
                }
                re.push_str(&regex::escape(&rest[..at]));
                let after = &rest[at + 1..];
                let end = after.find('}')?;
                let expression = &after[..end];
                if expression.contains('{') {
                    return None;
                }
                push_expression(&mut re, expression)?;
                rest = &after[end + 1..];
            }
        }
    }
    re.push_str(r")\z");
    RegexBuilder::new(&re)
        .size_limit(TEMPLATE_REGEX_SIZE_LIMIT)
        .build()
        .ok()
}

fn push_expression(re: &mut String, expression: &str) -> Option<()> {
    let first = *expression.as_bytes().first()?;
    let (op, list) = if first.is_ascii_alphanumeric() || first == b'_' || first == b'%' {
        (Operator::from_char(None)?, expression)
    } else {
        // Unknown or reserved operators (`=`, `,`, `!`, `@`, `|`) make the template invalid.
        (Operator::from_char(Some(first))?, &expression[1..])
    };
    let vars = list
        .split(',')
        .map(parse_varspec)
        .collect::<Option<Vec<_>>>()?;
    let exploded = vars.iter().any(|v| v.explode);
    let lone_prefix = match vars.as_slice() {
        [only] => only.prefix,
        _ => None,
    };

    let chars = |extra: &str| -> String {
        let class = if op.reserved { CLASS_R } else { "" };
        format!("(?:[{CLASS_U}{class}{extra}]|{PCT})")
    };
    let repeat = match lone_prefix {
        Some(n) => format!("{{0,{n}}}"),
        None => "*".to_owned(),
    };
    let item = if !op.named {
        // Lists join with `,`; exploded associative arrays give `k=v`.
        let extra = if exploded { ",=" } else { "," };
        format!("{}{repeat}", chars(extra))
    } else {
        let value = format!("{}{repeat}", chars(","));
        let name = if exploded {
            // Exploded lists repeat the name, exploded associative arrays use their keys.
            format!("{}+", chars(""))
        } else {
            let names: Vec<String> = vars.iter().map(|v| regex::escape(v.name)).collect();
            format!("(?:{})", names.join("|"))
        };
        if op.ifemp_eq {
            format!("{name}={value}")
        } else {
            format!("{name}(?:={value})?")
        }
    };
    let more = if exploded {
        "*".to_owned()
    } else {
        format!("{{0,{}}}", vars.len() - 1)
    };
    re.push_str(&format!(
        "(?:{first}{item}(?:{sep}{item}){more})?",
        first = regex::escape(op.first),
        sep = regex::escape(op.sep),
    ));
    Some(())
}

/// `varname [":" max-length | "*"]`, with `varname = varchar *(["."] varchar)` and
/// `varchar = ALPHA / DIGIT / "_" / pct-encoded`.
fn parse_varspec(spec: &str) -> Option<VarSpec<'_>> {
    let (name, explode, prefix) = if let Some(name) = spec.strip_suffix('*') {
        (name, true, None)
    } else if let Some((name, len)) = spec.split_once(':') {
        let valid = (1..=4).contains(&len.len())
            && len.bytes().all(|b| b.is_ascii_digit())
            && !len.starts_with('0');
        if !valid {
            return None;
        }
        (name, false, Some(len.parse::<u16>().ok()?))
    } else {
        (spec, false, None)
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes[0] == b'.' || bytes[bytes.len() - 1] == b'.' {
        return None;
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                hex_value(*bytes.get(i + 1)?)?;
                hex_value(*bytes.get(i + 2)?)?;
                i += 3;
                continue;
            }
            b'.' if bytes[i - 1] == b'.' => return None,
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' => {}
            _ => return None,
        }
        i += 1;
    }
    Some(VarSpec {
        name,
        explode,
        prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: &str = "http://127.0.0.1:8080/.well-known/mercure";

    fn m(kind: MatcherType, text: &str) -> Matcher {
        Matcher::new(kind, text, BASE).expect("the matcher compiles")
    }

    fn sel(text: &str) -> Matcher {
        m(MatcherType::Selector, text)
    }

    fn pat(text: &str) -> Matcher {
        m(MatcherType::UrlPattern, text)
    }

    #[test]
    fn the_wildcard_matches_everything_whatever_the_type() {
        for kind in [
            MatcherType::Exact,
            MatcherType::UrlPattern,
            MatcherType::Selector,
        ] {
            let w = m(kind, "*");
            assert!(w.is_wildcard());
            assert_eq!(w.kind(), kind);
            assert_eq!(w.text(), "*");
            for topic in ["*", "", "https://example.com/a", "not a url", "/relative"] {
                assert!(w.matches(topic), "{kind:?} * vs {topic:?}");
            }
        }
        assert!(!m(MatcherType::Exact, "**").is_wildcard());
        assert!(!m(MatcherType::Exact, "**").matches("x"));
    }

    #[test]
    fn type_names() {
        assert_eq!(MatcherType::Exact.name(), "Exact");
        assert_eq!(MatcherType::UrlPattern.name(), "URLPattern");
        assert_eq!(MatcherType::Selector.name(), "Selector");
    }

    #[test]
    fn exact_is_byte_for_byte_without_resolution() {
        let e = m(MatcherType::Exact, "https://example.com/books/1");
        assert!(e.matches("https://example.com/books/1"));
        assert!(!e.matches("https://EXAMPLE.com/books/1"));
        assert!(!e.matches("https://example.com/books/1/"));
        assert!(!e.matches("https://example.com/books/%31"));
        assert!(!e.matches("https://example.com:443/books/1"));

        let rel = m(MatcherType::Exact, "/books/1");
        assert!(rel.matches("/books/1"));
        assert!(!rel.matches("http://127.0.0.1:8080/books/1"));

        // No Unicode normalization: NFC and NFD differ.
        let nfc = m(MatcherType::Exact, "caf\u{e9}");
        assert!(nfc.matches("caf\u{e9}"));
        assert!(!nfc.matches("cafe\u{301}"));

        // A template or a pattern is plain text for Exact.
        assert!(!m(MatcherType::Exact, "/books/{id}").matches("/books/1"));
        assert!(!m(MatcherType::Exact, "/books/:id").matches("/books/1"));
    }

    #[test]
    fn absolute_url_patterns() {
        let p = pat("https://example.com/books/:id");
        assert!(p.matches("https://example.com/books/1"));
        assert!(p.matches("https://example.com/books/abc"));
        // Hosts are case-insensitive (canonicalized), paths are not.
        assert!(p.matches("https://EXAMPLE.com/books/1"));
        assert!(!p.matches("https://example.com/Books/1"));
        assert!(!p.matches("https://example.com/books/1/2"));
        assert!(!p.matches("https://example.com/books/"));
        // Components the pattern leaves out (search, hash) are wildcards.
        assert!(p.matches("https://example.com/books/1?x=1#top"));
        assert!(!p.matches("http://example.com/books/1"));
        assert!(!p.matches("https://example.org/books/1"));
        // A relative topic resolves against the hub, elsewhere than example.com.
        assert!(!p.matches("/books/1"));
        assert!(!p.matches("books/1"));
        // Not a URL at all.
        assert!(!p.matches("http://[::1"));
        assert!(!p.matches(""));

        let any = pat("https://example.com/*");
        assert!(any.matches("https://example.com/a/b/c"));
        assert!(!any.matches("https://example.net/a"));

        let optional = pat("https://example.com/books/:id?");
        assert!(optional.matches("https://example.com/books"));
        assert!(optional.matches("https://example.com/books/7"));

        let group = pat("https://example.com/books/(\\d+)");
        assert!(group.matches("https://example.com/books/42"));
        assert!(!group.matches("https://example.com/books/x42"));
    }

    #[test]
    fn relative_url_patterns_and_relative_topics_use_the_hub_url() {
        let p = pat("/.well-known/mercure/subscriptions/Exact/:topic/:subscriber");
        let topic = format!(
            "/.well-known/mercure/subscriptions/Exact/{}/{}",
            encode_component("https://example.com/foo"),
            encode_component("urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6"),
        );
        assert!(p.matches(&topic), "{topic}");
        assert!(p.matches(&format!("http://127.0.0.1:8080{topic}")));
        // Another hub's namespace is not this one's.
        assert!(!p.matches(&format!("https://other.example{topic}")));
        assert!(!p.matches(&format!("http://127.0.0.1:9999{topic}")));
        assert!(!p.matches("/.well-known/mercure/subscriptions/URLPattern/a/b"));
        assert!(!p.matches("/.well-known/mercure/subscriptions/Exact/a"));

        // A relative topic also resolves for an absolute pattern naming the hub.
        let abs = pat("http://127.0.0.1:8080/books/:id");
        assert!(abs.matches("/books/1"));
        assert!(abs.matches("http://127.0.0.1:8080/books/1"));

        // A path relative to the hub's directory.
        let dir = pat("/.well-known/:name");
        assert!(dir.matches("feeds"), "feeds resolves to /.well-known/feeds");
    }

    #[test]
    fn url_pattern_errors_are_sentences() {
        for bad in [
            "https://example.com/books/(",
            "https://example.com/:",
            "https://example.com/books/(?<x>a)",
        ] {
            let err = Matcher::new(MatcherType::UrlPattern, bad, BASE)
                .expect_err(bad)
                .to_string();
            assert!(err.contains("is not valid"), "{err}");
            assert!(err.ends_with('.'), "{err}");
        }
        let err = Matcher::new(MatcherType::UrlPattern, "/books/:id", "not a url")
            .expect_err("relative without base")
            .to_string();
        assert!(err.contains("relative"), "{err}");

        // An absolute pattern does not need the base; relative topics then never match.
        let p = Matcher::new(MatcherType::UrlPattern, "https://e.com/:x", "not a url")
            .expect("absolute pattern");
        assert!(p.matches("https://e.com/a"));
        assert!(!p.matches("/a"));
    }

    #[test]
    fn pathological_patterns_complete() {
        let long = format!("https://example.com/{}c", "a".repeat(5_000));
        for text in [
            "https://example.com/((?:(?:a+)+)+b)",
            "https://example.com/((?:a|aa)*b)",
            "https://example.com/((?:a*)*(?:a*)*(?:a*)*b)",
            "https://example.com/*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
            "https://example.com/:a-:b-:c-:d-:e-:f-:g-:h-:i-:j-:k-:l-z",
        ] {
            let p = pat(text);
            assert!(!p.matches(&long), "{text}");
        }
        let sel_long = format!("x{} ", "a".repeat(5_000));
        let t = sel(&format!("x{}", "{+a}{b}{+c}".repeat(20)));
        assert!(!t.matches(&sel_long));
        assert!(t.matches(&format!("x{}", "a".repeat(5_000))));
    }

    #[test]
    fn selectors_equal_to_the_topic() {
        let s = sel("https://example.com/books/1");
        assert!(s.matches("https://example.com/books/1"));
        assert!(!s.matches("https://example.com/books/2"));
        assert!(!s.matches("/books/1"));
    }

    #[test]
    fn simple_expressions() {
        let s = sel("https://example.com/books/{id}");
        assert!(s.matches("https://example.com/books/1"));
        assert!(s.matches("https://example.com/books/"));
        assert!(s.matches("https://example.com/books/a%20b"));
        assert!(s.matches("https://example.com/books/1,2"), "a list value");
        assert!(!s.matches("https://example.com/books/1/2"));
        assert!(!s.matches("https://example.com/books/1?x"));
        assert!(!s.matches("https://example.com/books/a b"));
        assert!(!s.matches("https://example.com/books/%zz"));
        assert!(!s.matches("https://example.com/books/caf\u{e9}"));
        assert!(
            !s.matches("xhttps://example.com/books/1"),
            "anchored at the start"
        );
        // The template itself also matches (equality).
        assert!(s.matches("https://example.com/books/{id}"));

        // Literals are not regex syntax.
        let dots = sel("https://example.com/a.b/{x}");
        assert!(dots.matches("https://example.com/a.b/1"));
        assert!(!dots.matches("https://example.com/aXb/1"));

        let two = sel("/a/{x,y}/b");
        assert!(two.matches("/a/1,2/b"));
        assert!(two.matches("/a//b"));
        assert!(!two.matches("/a/1/2/b"));
    }

    #[test]
    fn reserved_and_fragment_expressions() {
        let s = sel("https://example.com/{+path}");
        assert!(s.matches("https://example.com/a/b"));
        assert!(s.matches("https://example.com/a/b?c=d&e=f"));
        assert!(s.matches("https://example.com/"));
        assert!(!s.matches("https://example.com/a b"));
        assert!(!s.matches("https://example.org/a"));

        let f = sel("https://example.com/page{#section}");
        assert!(f.matches("https://example.com/page"));
        assert!(f.matches("https://example.com/page#intro/part:1"));
        assert!(!f.matches("https://example.com/page/intro"));
    }

    #[test]
    fn label_and_path_expressions() {
        let l = sel("https://example.com/file{.ext}");
        assert!(l.matches("https://example.com/file"));
        assert!(l.matches("https://example.com/file.json"));
        assert!(!l.matches("https://example.com/file/json"));

        let p = sel("https://example.com{/a,b}");
        assert!(p.matches("https://example.com"));
        assert!(p.matches("https://example.com/x"));
        assert!(p.matches("https://example.com/x/y"));
        assert!(
            !p.matches("https://example.com/x/y/z"),
            "two variables at most"
        );

        let e = sel("https://example.com{/segments*}");
        assert!(e.matches("https://example.com/x/y/z/w"));
        assert!(!e.matches("https://example.com/x?y"));
    }

    #[test]
    fn named_expressions() {
        let semi = sel("/map{;x,y}");
        assert!(semi.matches("/map;x=1;y=2"));
        assert!(semi.matches("/map;x"));
        assert!(semi.matches("/map"));
        assert!(!semi.matches("/map;z=1"));
        assert!(!semi.matches("/map;x=1;y=2;x=3"));

        let q = sel("https://example.com/search{?q,lang}");
        assert!(q.matches("https://example.com/search"));
        assert!(q.matches("https://example.com/search?q=cat"));
        assert!(q.matches("https://example.com/search?q=cat&lang=en"));
        assert!(q.matches("https://example.com/search?q="));
        assert!(q.matches("https://example.com/search?q=a,b"));
        assert!(!q.matches("https://example.com/search?x=1"));
        assert!(!q.matches("https://example.com/search?q"));
        assert!(!q.matches("https://example.com/search?q=1/2"));

        let cont = sel("/search?fixed=1{&more}");
        assert!(cont.matches("/search?fixed=1&more=2"));
        assert!(cont.matches("/search?fixed=1"));
        assert!(!cont.matches("/search?fixed=1&other=2"));

        let exploded = sel("/find{?list*}");
        assert!(exploded.matches("/find?list=a&list=b"));
        assert!(exploded.matches("/find?k1=v1&k2=v2"));
    }

    #[test]
    fn prefix_modifier() {
        let s = sel("/users/{name:3}");
        assert!(s.matches("/users/abc"));
        assert!(s.matches("/users/ab"));
        assert!(
            s.matches("/users/%C3%A9"),
            "an escape counts as one character"
        );
        assert!(!s.matches("/users/abcd"));
    }

    #[test]
    fn invalid_templates_are_exact_selectors() {
        for text in [
            "https://example.com/{id",
            "https://example.com/id}",
            "https://example.com/}{id}",
            "https://example.com/{a{b}}",
            "https://example.com/{}",
            "https://example.com/{=x}",
            "https://example.com/{!x}",
            "https://example.com/{a b}",
            "https://example.com/{a..b}",
            "https://example.com/{.a.}",
            "https://example.com/{a:0}",
            "https://example.com/{a:10000}",
            "https://example.com/{a,}",
            "https://example.com/{a%zz}",
        ] {
            let s = sel(text);
            assert!(s.matches(text), "{text} equals itself");
            assert!(
                !s.matches("https://example.com/x"),
                "{text} is not a template"
            );
            assert!(
                !s.matches("https://example.com/"),
                "{text} is not a template"
            );
        }
        // Valid variable names with dots and escapes.
        let ok = sel("/a/{x.y}/{%41b_c}");
        assert!(ok.matches("/a/1/2"));
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in [
            "a\u{0}b",
            "a\tb",
            "line\n",
            "\u{1f}",
            "del\u{7f}",
            "c1\u{80}",
            "c1\u{9f}",
        ] {
            for kind in [
                MatcherType::Exact,
                MatcherType::UrlPattern,
                MatcherType::Selector,
            ] {
                let err = Matcher::new(kind, bad, BASE).expect_err(bad);
                assert!(matches!(err, MatcherError::Invalid(_)), "{err:?}");
                assert!(err.to_string().contains("control character"), "{err}");
            }
            assert!(matches!(
                check_topic(bad, 100),
                Err(MatcherError::Invalid(_))
            ));
        }
        assert_eq!(
            check_topic("x\u{85}", 100),
            Err(MatcherError::Invalid(
                "The topic contains the control character U+0085 at byte 1; control characters are not allowed."
                    .to_owned()
            ))
        );
        for good in [
            "",
            "https://example.com/caf\u{e9}",
            "\u{a0}",
            "\u{2028}",
            "\u{1f600}",
        ] {
            assert_eq!(check_topic(good, 100), Ok(()), "{good:?}");
            assert!(Matcher::new(MatcherType::Exact, good, BASE).is_ok());
        }
    }

    #[test]
    fn topic_length_limit() {
        assert_eq!(check_topic("abcd", 4), Ok(()));
        let err = check_topic("abcde", 4).expect_err("too long");
        assert_eq!(err, MatcherError::TooLong { len: 5, max: 4 });
        assert_eq!(
            err.to_string(),
            "the topic is 5 bytes long, more than the limit of 4 bytes"
        );
        // Bytes, not characters.
        assert!(matches!(
            check_topic("\u{e9}\u{e9}\u{e9}", 4),
            Err(MatcherError::TooLong { len: 6, .. })
        ));
        // The length is checked first: a huge topic is 413 even with a control character.
        assert!(matches!(
            check_topic("\u{0}\u{0}\u{0}", 2),
            Err(MatcherError::TooLong { .. })
        ));
    }

    #[test]
    fn encode_component_examples() {
        assert_eq!(
            encode_component("https://example.com/:selector"),
            "https%3A%2F%2Fexample.com%2F%3Aselector"
        );
        assert_eq!(
            encode_component("urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6"),
            "urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
        );
        assert_eq!(
            encode_component("a%20b"),
            "a%2520b",
            "% is encoded once more"
        );
        assert_eq!(encode_component("A-z.0_9~"), "A-z.0_9~");
        assert_eq!(encode_component("\u{e9} {}"), "%C3%A9%20%7B%7D");
        assert_eq!(encode_component(""), "");
    }

    #[test]
    fn decode_component_is_strict() {
        assert_eq!(decode_component("a%2520b").as_deref(), Some("a%20b"));
        assert_eq!(decode_component("%c3%a9").as_deref(), Some("\u{e9}"));
        assert_eq!(
            decode_component("plain-text").as_deref(),
            Some("plain-text")
        );
        assert_eq!(
            decode_component("a+b").as_deref(),
            Some("a+b"),
            "+ is not a space"
        );
        assert_eq!(decode_component("%"), None);
        assert_eq!(decode_component("%4"), None);
        assert_eq!(decode_component("%zz"), None);
        assert_eq!(decode_component("%C3"), None, "truncated UTF-8");
        assert_eq!(decode_component("%FF"), None);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(s in any::<String>()) {
            let encoded = encode_component(&s);
            prop_assert!(encoded.bytes().all(|b| is_unreserved(b) || b == b'%' || b.is_ascii_hexdigit()));
            prop_assert_eq!(decode_component(&encoded), Some(s.clone()));
            // Encoding once more encodes every `%`: no double decoding by accident.
            prop_assert_eq!(decode_component(&encode_component(&encoded)), Some(encoded));
        }

        #[test]
        fn exact_matches_only_itself(a in "[ -~]{0,20}", b in "[ -~]{0,20}") {
            prop_assume!(a != "*");
            let e = Matcher::new(MatcherType::Exact, &a, BASE).unwrap();
            prop_assert_eq!(e.matches(&b), a == b);
            prop_assert!(e.matches(&a));
        }

        #[test]
        fn selectors_match_themselves_and_never_panic(a in "[ -~]{0,30}", b in "[ -~]{0,30}") {
            let s = Matcher::new(MatcherType::Selector, &a, BASE).unwrap();
            prop_assert!(s.matches(&a));
            let _ = s.matches(&b);
        }
    }

    #[test]
    fn reserved_namespace() {
        for reserved in [
            "/.well-known/mercure",
            "/.well-known/mercure/",
            "/.well-known/mercure/subscriptions/Exact/a/b",
            "http://127.0.0.1:8080/.well-known/mercure/subscriptions",
            "https://other.example/.well-known/mercure/subscriptions/x",
            "ftp://other.example/.well-known/mercure",
            "/.well-known/mercure?x=1",
            "/foo/../.well-known/mercure/x",
            "/.well-known/./mercure/x",
            "/.well-known/%6Dercure/x",
            "/.well-known%2Fmercure",
            "mercure/x",
            "?x",
            "#x",
            "",
        ] {
            assert!(
                is_reserved_topic(reserved, BASE),
                "{reserved:?} is reserved"
            );
        }
        for free in [
            "/.well-known/mercurex",
            "/.well-known/mercure-x/y",
            "/.well-known/Mercure",
            "/a/.well-known/mercure",
            "https://example.com/foo",
            "https://example.com/.well-known",
            "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
            "urn:x:/.well-known/mercure",
            "subscriptions/x",
            "https://example.com/?p=/.well-known/mercure",
            "http://[::1",
        ] {
            assert!(!is_reserved_topic(free, BASE), "{free:?} is not reserved");
        }
        // Without a valid base, only absolute topics are read.
        assert!(is_reserved_topic(
            "https://e.com/.well-known/mercure",
            "not a url"
        ));
        assert!(!is_reserved_topic("/.well-known/mercure", "not a url"));
    }

    #[test]
    fn matchers_are_cheap_to_clone_and_keep_their_behaviour() {
        let p = pat("/books/:id");
        let q = p.clone();
        assert!(q.matches("/books/1"));
        assert_eq!(q.kind(), MatcherType::UrlPattern);
        assert_eq!(q.text(), "/books/:id");
        let s = sel("/books/{id}").clone();
        assert!(s.matches("/books/1"));
    }
}
