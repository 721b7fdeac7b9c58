//! Topic matchers: which topics a subscription or a token's grant takes.
//! (Interface stub; the implementation is being written.)

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

/// Why a matcher was refused; the text is shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("{0}")]
    Invalid(String),
}

/// A compiled topic matcher. `*` matches every topic, whatever the type.
#[derive(Debug, Clone)]
pub struct Matcher {
    kind: MatcherType,
    text: String,
}

impl Matcher {
    /// Compiles `text` as a matcher of type `kind`; `base` is the hub's URL, against which
    /// relative URL patterns and relative topics are resolved.
    pub fn new(kind: MatcherType, text: &str, base: &str) -> Result<Self, MatcherError> {
        let _ = base;
        Ok(Self {
            kind,
            text: text.to_owned(),
        })
    }

    pub fn kind(&self) -> MatcherType {
        self.kind
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the matcher is `*`.
    pub fn is_wildcard(&self) -> bool {
        self.text == "*"
    }

    /// Whether `topic` is taken.
    pub fn matches(&self, topic: &str) -> bool {
        self.text == "*" || self.text == topic
    }
}
