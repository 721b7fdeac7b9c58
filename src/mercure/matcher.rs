//! Topic matchers: which topics a subscription or a token's grant takes.
//!
//! A [`Matcher`] is compiled once ([`Matcher::new`]) and then asked, per update and per
//! subscriber, whether it takes a topic ([`Matcher::matches`]). Three readings exist:
//!
//! - `Exact`: byte-for-byte equality, no normalization, no resolution against any base.
//! - `URLPattern`: a WHATWG URL Pattern (the `urlpattern` crate, the one Deno uses). Relative
//!   patterns and relative topics are resolved against the hub's URL. The crate compiles
//!   patterns to the `regex` crate (through [`BoundedRegex`]), whose matching time is linear
//!   in the topic's length, so a crafted pattern cannot make matching blow up
//!   (draft-dunglas-mercure-08, "URL Pattern"). Compiling is bounded too: each regular
//!   expression a pattern compiles to may take at most [`URL_PATTERN_REGEX_SIZE_LIMIT`]
//!   bytes, so `https://e.com/([\p{L}\p{N}]{1,200})` is refused quickly ("too complex")
//!   instead of costing a hundred milliseconds of CPU; the text itself is bounded too
//!   (length, Unicode classes, no inline flags: see `check_url_pattern_cost`). The
//!   specification lets an implementation limit pattern complexity; these are ours.
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

use std::cell::Cell;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use url::Url;
use urlpattern::regexp::RegExp;
use urlpattern::{
    RegexSyntax, UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions,
};

/// The path of the hub; it and everything below it are reserved for the hub's own topics.
const RESERVED_PATH: &str = "/.well-known/mercure";

/// Upper bound of the compiled size (the `regex` crate's `size_limit`) of each regular
/// expression a URL pattern compiles to. Patterns come from anonymous subscribers and from
/// tokens, up to `max_matchers` per request, so compiling one must stay cheap: 256 KiB keeps
/// every ordinary pattern (named groups, wildcards, `(\\d+)`, short classes) and refuses
/// large counted repetitions of Unicode classes, whose compilation is what costs.
pub const URL_PATTERN_REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Upper bound of a URL pattern's length in bytes, which bounds the regex parser's work.
pub const URL_PATTERN_MAX_BYTES: usize = 1024;

/// Upper bound of the Unicode class escapes (`\p`, `\P`, `\w`, `\W`) in a URL pattern:
/// building each costs the same whatever the compiled size, so their number is bounded.
pub const URL_PATTERN_MAX_UNICODE_CLASSES: usize = 8;

/// Upper bound of the lazy DFA's cache of each URL-pattern regex: it bounds the memory one
/// compiled pattern may take while matching (the regex falls back to slower, still linear,
/// engines when the cache thrashes).
const URL_PATTERN_DFA_SIZE_LIMIT: usize = 256 * 1024;

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
        pattern: Arc<UrlPattern<BoundedRegex>>,
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
    check_url_pattern_cost(text)?;
    let base = Url::parse(base).ok();
    TOO_COMPLEX.with(|flag| flag.set(false));
    let init = UrlPatternInit::parse_constructor_string::<BoundedRegex>(text, base.clone())
        .and_then(|init| UrlPattern::<BoundedRegex>::parse(init, UrlPatternOptions::default()));
    match init {
        Ok(pattern) => Ok(Compiled::UrlPattern {
            pattern: Arc::new(pattern),
            base: base.map(Arc::new),
        }),
        Err(urlpattern::Error::RegExp(())) if TOO_COMPLEX.with(|flag| flag.get()) => {
            Err(MatcherError::Invalid(format!(
                "The URL pattern {text:?} is too complex: one of its parts compiles to a \
                 regular expression larger than {} KiB; use fewer or shorter repetitions.",
                URL_PATTERN_REGEX_SIZE_LIMIT / 1024
            )))
        }
        Err(urlpattern::Error::BaseUrlRequired) => Err(MatcherError::Invalid(format!(
            "The URL pattern {text:?} is relative and the hub's URL is not a valid base URL."
        ))),
        Err(e) => Err(MatcherError::Invalid(format!(
            "The URL pattern {text:?} is not valid: {e}."
        ))),
    }
}

/// Refuses, before any regex is built, what the regex crate's size limit does not bound:
/// the cost of building character classes, which grows with the pattern's text. Limits
/// (implementation-defined, as the URL Pattern specification allows): at most
/// [`URL_PATTERN_MAX_BYTES`] bytes; at most [`URL_PATTERN_MAX_UNICODE_CLASSES`] Unicode class
/// escapes (`\p`, `\P`, `\w`, `\W`); and no inline flags or named groups inside regexp
/// groups (`(?` must be followed by `:`), because case-insensitive folding of large classes
/// (`(?i)[\x{0}-\x{10FFFF}]`) takes seconds whatever the compiled size.
fn check_url_pattern_cost(text: &str) -> Result<(), MatcherError> {
    if text.len() > URL_PATTERN_MAX_BYTES {
        return Err(MatcherError::Invalid(format!(
            "The URL pattern is {} bytes long, more than the limit of {URL_PATTERN_MAX_BYTES} bytes.",
            text.len()
        )));
    }
    let bytes = text.as_bytes();
    let mut classes = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                if matches!(bytes.get(i + 1), Some(b'p' | b'P' | b'w' | b'W')) {
                    classes += 1;
                }
                i += 2;
                continue;
            }
            b'(' => {
                let after = text[i + 1..].trim_start();
                if after.starts_with('?') && !after[1..].trim_start().starts_with(':') {
                    return Err(MatcherError::Invalid(format!(
                        "The URL pattern {text:?} is not valid: it uses inline flags or a named group in a regular \
                         expression, which this hub does not support; use `(?:` groups only."
                    )));
                }
            }
            _ => {}
        }
        i += 1;
    }
    if classes > URL_PATTERN_MAX_UNICODE_CLASSES {
        return Err(MatcherError::Invalid(format!(
            "The URL pattern {text:?} is too complex: it uses {classes} Unicode classes \
             (\\p, \\w and their negations), more than the limit of \
             {URL_PATTERN_MAX_UNICODE_CLASSES}."
        )));
    }
    Ok(())
}

thread_local! {
    /// Set by [`BoundedRegex::parse`] when a regex went over the size limits, so that
    /// `compile_url_pattern` can tell "too complex" from a syntax error: the `urlpattern`
    /// crate's `RegExp::parse` can only return `Err(())`.
    static TOO_COMPLEX: Cell<bool> = const { Cell::new(false) };
}

/// The regular expressions of URL patterns: the `regex` crate (linear-time matching) built
/// with [`URL_PATTERN_REGEX_SIZE_LIMIT`] and a bounded lazy-DFA cache, so that compiling an
/// oversized expression fails fast instead of costing unbounded CPU and memory.
#[derive(Debug, Clone)]
pub struct BoundedRegex(Regex);

impl RegExp for BoundedRegex {
    fn syntax() -> RegexSyntax {
        RegexSyntax::Rust
    }

    fn parse(pattern: &str, flags: &str, _force_eval: bool) -> Result<Self, ()> {
        RegexBuilder::new(pattern)
            .case_insensitive(flags.contains('i'))
            .size_limit(URL_PATTERN_REGEX_SIZE_LIMIT)
            .dfa_size_limit(URL_PATTERN_DFA_SIZE_LIMIT)
            .build()
            .map(BoundedRegex)
            .map_err(|e| {
                if matches!(e, regex::Error::CompiledTooBig(_)) {
                    TOO_COMPLEX.with(|flag| flag.set(true));
                }
            })
    }

    fn matches<'a>(&self, text: &'a str) -> Option<Vec<Option<&'a str>>> {
        let captures = self.0.captures(text)?;
        Some(
            captures
                .iter()
                .skip(1)
                .map(|c| c.map(|m| m.as_str()))
                .collect(),
        )
    }

    fn pattern_string(&self) -> &str {
        self.0.as_str()
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

/// Whether a publisher's `topic` addresses the hub's reserved namespace. The rule is
/// deliberately conservative (refusing a few odd topics is cheaper than reasoning about
/// every reader downstream, some of which route on the topic's raw text): a topic is
/// reserved when any of these holds.
///
/// - Its raw text, or its percent-decoded text, starts with `/.well-known/mercure` followed
///   by its end, `/`, `?` or `#`.
/// - Its path, read without resolution (RFC 3986 syntax: after the scheme and authority, if
///   any, before `?` or `#`), is `/.well-known/mercure` or starts with
///   `/.well-known/mercure/`, raw, percent-decoded, or after dot-segment removal (in either
///   order). So `https://other.example/.well-known/mercure/x` is reserved whatever the scheme
///   and authority, and so is `http://[/.well-known/mercure`, whose authority is not valid.
/// - That path, raw or in any of those readings, contains
///   `/.well-known/mercure/subscriptions` anywhere.
/// - Resolved as a URI reference against `base` (the hub's URL), its path is reserved in the
///   sense above, raw or percent-decoded (so `mercure/x`, `/foo/../.well-known/mercure`, the
///   empty topic, `?x` and `#x` are reserved: they resolve into the hub's namespace).
/// - It is a relative reference and `base` is not a URL, or it cannot be resolved: it
///   fails closed (reserved), since where it lands cannot be known.
///
/// Matching is case-sensitive (`/.well-known/Mercure` is not reserved), like the paths the
/// hub serves.
pub fn is_reserved_topic(topic: &str, base: &str) -> bool {
    // 1. Raw and decoded text, as routed by code that reads the topic's prefix.
    if has_reserved_prefix(topic)
        || (topic.contains('%') && has_reserved_prefix(&decode_lossy(topic)))
    {
        return true;
    }
    // 2 and 3. The path as written, in every reading.
    let (has_scheme, path) = split_path(topic);
    if path_readings(path)
        .iter()
        .any(|p| is_reserved_path(p) || has_subscriptions(p))
    {
        return true;
    }
    // 4 and 5. Resolution against the hub's URL; fail closed for unresolvable relative ones.
    let resolved = match Url::parse(base) {
        Ok(base) => base.join(topic),
        Err(_) if has_scheme => Url::parse(topic),
        Err(_) => return true,
    };
    let Ok(url) = resolved else {
        return !has_scheme;
    };
    path_readings(url.path())
        .iter()
        .any(|p| is_reserved_path(p) || has_subscriptions(p))
}

/// Whether `text` starts with [`RESERVED_PATH`] followed by its end, `/`, `?` or `#`.
fn has_reserved_prefix(text: &str) -> bool {
    text.strip_prefix(RESERVED_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
}

fn is_reserved_path(path: &str) -> bool {
    path.strip_prefix(RESERVED_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether `path` contains the hub's subscription-event namespace anywhere.
fn has_subscriptions(path: &str) -> bool {
    path.contains("/.well-known/mercure/subscriptions")
}

/// Splits a URI reference the way RFC 3986 (appendix B) does and returns whether it has a
/// scheme, and its path: after `scheme:` and `//authority` if present, before `?` or `#`.
/// Backslashes count as slashes, as WHATWG URL parsers read them in special schemes.
fn split_path(text: &str) -> (bool, &str) {
    let scheme_end = text.find(':').filter(|&at| {
        let scheme = &text.as_bytes()[..at];
        scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    let has_scheme = scheme_end.is_some();
    let mut rest = scheme_end.map_or(text, |at| &text[at + 1..]);
    rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let is_slash = |b: u8| b == b'/' || b == b'\\';
    let bytes = rest.as_bytes();
    if bytes.len() >= 2 && is_slash(bytes[0]) && is_slash(bytes[1]) {
        let authority = &rest[2..];
        let end = authority.find(['/', '\\']).unwrap_or(authority.len());
        rest = &authority[end..];
    }
    (has_scheme, rest)
}

/// The readings of a path that are checked: as written, with backslashes as slashes,
/// percent-decoded, and dot segments removed before or after decoding.
fn path_readings(path: &str) -> Vec<String> {
    let slashed = path.replace('\\', "/");
    let mut out = vec![remove_dot_segments(&slashed)];
    if slashed.contains('%') {
        let decoded = decode_lossy(&slashed).replace('\\', "/");
        out.push(remove_dot_segments(&decoded));
        out.push(decode_lossy(&out[0]));
        out.push(decoded);
    }
    out.push(slashed);
    out
}

/// RFC 3986 section 5.2.4, on a path (dot segments are `.` and `..`, also as `%2e`, which
/// WHATWG parsers read as dots).
fn remove_dot_segments(path: &str) -> String {
    let is_dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    let is_dot_dot = |s: &str| {
        matches!(
            s.to_ascii_lowercase().as_str(),
            ".." | ".%2e" | "%2e." | "%2e%2e"
        )
    };
    let absolute = path.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').collect();
    let last = parts.len() - 1;
    let mut trailing_slash = false;
    for (i, segment) in parts.iter().enumerate() {
        if i == 0 && absolute {
            continue;
        }
        if is_dot(segment) {
            trailing_slash = i == last;
        } else if is_dot_dot(segment) {
            segments.pop();
            trailing_slash = i == last;
        } else {
            segments.push(segment);
            trailing_slash = false;
        }
    }
    let mut out = String::with_capacity(path.len());
    if absolute {
        out.push('/');
    }
    out.push_str(&segments.join("/"));
    if trailing_slash && !segments.is_empty() {
        out.push('/');
    }
    out
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
        // Without a valid base, absolute topics are read and relative ones fail closed.
        assert!(is_reserved_topic(
            "https://e.com/.well-known/mercure",
            "not a url"
        ));
        assert!(!is_reserved_topic("https://e.com/books/1", "not a url"));
        assert!(is_reserved_topic("/.well-known/mercure", "not a url"));
    }

    #[test]
    fn reserved_namespace_dot_segments_cannot_leave_it() {
        // Resolution turns these into `/foo`, but other code routes on the raw prefix.
        for topic in [
            "/.well-known/mercure/subscriptions/../../../foo",
            "/.well-known/mercure/subscriptions/%2e%2e/%2E%2E/.%2e/foo",
            "/.well-known/mercure/../../foo",
            "/.well-known/mercure/./../x",
            "/.well-known/mercure?../../x",
            "/.well-known/mercure#/../../x",
            "%2F.well-known%2Fmercure%2Fsubscriptions%2F..%2F..%2F..%2Ffoo",
            "https://other.example/.well-known/mercure/subscriptions/../../../foo",
            "https://other.example/.well-known/mercure/../x",
            "foo://x/.well-known/mercure/subscriptions/%2e%2e/%2e%2e/%2e%2e/y",
        ] {
            assert!(is_reserved_topic(topic, BASE), "{topic:?} is reserved");
        }
    }

    #[test]
    fn reserved_namespace_other_spellings() {
        for topic in [
            "/.well-known/mercure#x",
            "/a/.well-known/mercure/subscriptions",
            "/a/.well-known/mercure/subscriptions/Exact/x",
            "https://e.com/a/b/.well-known/mercure/subscriptions/x",
            "https://e.com/a/.well-known/%6Dercure/subscriptions",
            "/.well-known\\mercure\\x",
            "https://e.com\\.well-known\\mercure",
            // Not a valid URL (bad authority), yet its path is the hub's.
            "http://[/.well-known/mercure",
            "//[/.well-known/mercure/subscriptions/x",
            "https://e.com/x/../.well-known/mercure",
            "https://e.com/x/%2e%2e/.well-known/mercure/",
        ] {
            assert!(is_reserved_topic(topic, BASE), "{topic:?} is reserved");
        }
        for topic in [
            "/.well-known/mercurex",
            "/.well-known/mercure-subscriptions",
            "https://example.com/books/1",
            "https://example.com/books/1?x=/.well-known/mercure/subscriptions",
        ] {
            assert!(!is_reserved_topic(topic, BASE), "{topic:?} is not reserved");
        }
        // Dot segments lead out, but the raw path starts in the namespace.
        assert!(is_reserved_topic(
            "https://example.com/.well-known/mercure/../books/1?x",
            BASE
        ));
    }

    #[test]
    fn reserved_namespace_fails_closed_without_a_base() {
        // A hostile `Host: [` header makes the hub's URL unparsable.
        let hostile = "http://[/.well-known/mercure";
        assert!(Url::parse(hostile).is_err());
        for topic in [
            "/foo",
            "foo",
            "",
            "?x",
            "/.well-known/mercure/subscriptions/x",
            "https://e.com/.well-known/mercure/subscriptions/x",
            "//[/x",
        ] {
            assert!(is_reserved_topic(topic, hostile), "{topic:?} fails closed");
        }
        for topic in [
            "https://example.com/books/1",
            "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
        ] {
            assert!(!is_reserved_topic(topic, hostile), "{topic:?} is absolute");
        }
    }

    #[test]
    fn dot_segment_removal() {
        for (input, expected) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("mid/content=5/../6", "mid/6"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/%2E%2e/b", "/b"),
            ("/", "/"),
            ("", ""),
        ] {
            assert_eq!(remove_dot_segments(input), expected, "{input:?}");
        }
    }

    #[test]
    fn complex_url_patterns_are_refused_quickly() {
        for text in [
            r"https://e.com/([\p{L}\p{N}]{1,200})",
            r"https://e.com/(\w{1,600})",
            r"https://e.com/(\w{1,600})/:x",
            r"https://e.com/:x([\p{L}\p{N}]{1,200})",
        ] {
            let err = Matcher::new(MatcherType::UrlPattern, text, BASE).expect_err(text);
            assert!(matches!(err, MatcherError::Invalid(_)), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("is too complex"), "{msg}");
            assert!(msg.ends_with('.'), "{msg}");
        }
        // What the compiled-size limit does not bound is refused from the text.
        let many = format!("https://e.com/({})", r"\pL".repeat(9));
        let long = format!("https://e.com/{}", "a".repeat(URL_PATTERN_MAX_BYTES));
        for (text, needle) in [
            (many.as_str(), "Unicode classes"),
            (long.as_str(), "more than the limit of 1024 bytes"),
            (r"https://e.com/((?i)[\x{0}-\x{10FFFF}])", "inline flags"),
            (r"https://e.com/(a(?i)b)", "inline flags"),
            (r"https://e.com/(a(?-i:b))", "inline flags"),
            (r"https://e.com/(a( ? i)b)", "inline flags"),
        ] {
            let err = Matcher::new(MatcherType::UrlPattern, text, BASE).expect_err(text);
            assert!(matches!(err, MatcherError::Invalid(_)), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(msg.ends_with('.'), "{msg}");
        }
        // Eight pass the text check (the compiled size may still refuse them); four compile.
        assert!(check_url_pattern_cost(&format!("https://e.com/({})", r"\pL".repeat(8))).is_ok());
        assert!(pat(&format!("https://e.com/({})", r"\pL".repeat(4))).matches("https://e.com/abcd"));
        // An escaped parenthesis is a literal, not a group.
        assert!(check_url_pattern_cost(r"https://e.com/\(?x").is_ok());
        // A syntax error is still reported as such, not as complexity.
        let err = Matcher::new(MatcherType::UrlPattern, "https://e.com/(", BASE)
            .expect_err("syntax")
            .to_string();
        assert!(err.contains("is not valid"), "{err}");
        // And the flag does not leak into the next compilation on this thread.
        assert!(Matcher::new(MatcherType::UrlPattern, "https://e.com/books/:id", BASE).is_ok());
    }

    #[test]
    fn ordinary_url_patterns_stay_within_the_limit() {
        let p = pat("https://example.com/books/:id");
        assert!(p.matches("https://example.com/books/1"));
        assert!(!p.matches("https://example.com/books/1/2"));

        let subs = pat("/.well-known/mercure/subscriptions/*");
        assert!(subs.matches("/.well-known/mercure/subscriptions/Exact/a"));
        assert!(subs.matches("http://127.0.0.1:8080/.well-known/mercure/subscriptions/x/y"));
        assert!(!subs.matches("/.well-known/mercure/x"));

        let any = pat("https://example.com/*");
        assert!(any.matches("https://example.com/a/b/c"));
        assert!(!any.matches("https://example.org/a"));

        let digits = pat(r"https://example.com/books/:id(\d+)");
        assert!(digits.matches("https://example.com/books/123"));
        assert!(!digits.matches("https://example.com/books/abc"));

        let letters = pat(r"https://example.com/([\p{L}\p{N}]+)");
        assert!(letters.matches("https://example.com/abc123"));
        assert!(!letters.matches("https://example.com/abc-123"));

        let short = pat(r"https://example.com/([a-z0-9]{1,8})");
        assert!(short.matches("https://example.com/abc123"));
        assert!(!short.matches("https://example.com/abcdefghi"));

        let group = pat(r"https://example.com/((?:ab)+)");
        assert!(group.matches("https://example.com/abab"));
        assert!(!group.matches("https://example.com/aba"));

        let words = pat(r"https://example.com/(\w+)/:rest*");
        assert!(words.matches("https://example.com/abc/d/e"));
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
