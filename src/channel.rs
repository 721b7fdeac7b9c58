//! Channel names and grant patterns.
//!
//! A channel is `:`-separated segments, e.g. `logs:w1:f1`. Each segment is non-empty and made
//! of ASCII letters, digits and `_ - . @ = + / ~ ! $ % & ,`; the whole name is at most
//! [`MAX_CHANNEL_BYTES`] bytes. Whitespace, control characters, quotes and the pattern
//! characters `*`, `{`, `}` can never appear in a channel, so a name is safe in a JSON string
//! and an SSE line (in a URL query it must still be percent-encoded: `&`, `%`, `+` and `=` are
//! allowed characters).
//!
//! A grant pattern uses the same segments plus: `*` (exactly one segment), a final `**` (one
//! or more segments) and `{sub}` (replaced by the user id, compared literally — a user id
//! never widens a pattern).
//!
//! A subscription is a channel name or a pattern of channel segments, `*` and a final `**`
//! (no `{sub}`). A grant *covers* a subscription pattern when every channel the subscription
//! can match is matched by that one grant ([`covers`]): segment by segment, a literal is
//! covered by the same literal, `*` or `**`; a subscription `*` by `*` or `**`; a
//! subscription `**` only by a grant `**` at the same place or earlier.
//!
//! ```
//! use ssegate::channel::pattern_matches;
//! assert!(pattern_matches("logs:w1:*", "logs:w1:f1", "u1"));
//! assert!(pattern_matches("notifications:{sub}", "notifications:u1", "u1"));
//! assert!(!pattern_matches("notifications:{sub}", "notifications:u2", "u1"));
//! assert!(pattern_matches("logs:**", "logs:w1:f1", "u1"));
//! assert!(!pattern_matches("logs:**", "logs", "u1"));
//! ```

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 256;

/// Why a channel name or pattern was refused; the text is shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_BYTES} bytes")]
    TooLong,
    #[error("channel name has an empty segment (two `:` in a row, or `:` at an end)")]
    EmptySegment,
    #[error(
        "channel name contains {0:?}; allowed are ASCII letters, digits, `:` and _-.@=+/~!$%&,"
    )]
    BadChar(char),
    #[error("`**` may only be the last segment of a pattern")]
    InnerDoubleStar,
}

fn segment_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.@=+/~!$%&,".contains(c)
}

/// Checks a concrete channel name.
pub fn validate_channel(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_BYTES {
        return Err(ChannelError::TooLong);
    }
    for segment in name.split(':') {
        if segment.is_empty() {
            return Err(ChannelError::EmptySegment);
        }
        if let Some(c) = segment.chars().find(|&c| !segment_char_ok(c)) {
            return Err(ChannelError::BadChar(c));
        }
    }
    Ok(())
}

/// Checks a grant pattern: channel segments, `*`, a final `**`, and `{sub}` inside segments.
pub fn validate_pattern(pattern: &str) -> Result<(), ChannelError> {
    if pattern.is_empty() {
        return Err(ChannelError::Empty);
    }
    let segments: Vec<&str> = pattern.split(':').collect();
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "" => return Err(ChannelError::EmptySegment),
            "*" => {}
            "**" if i + 1 == segments.len() => {}
            "**" => return Err(ChannelError::InnerDoubleStar),
            s => {
                let literal = s.replace("{sub}", "x");
                if let Some(c) = literal.chars().find(|&c| !segment_char_ok(c)) {
                    return Err(ChannelError::BadChar(c));
                }
            }
        }
    }
    Ok(())
}

/// Whether the subscription is a pattern (has a `*` or `**` segment) rather than a channel.
pub fn is_pattern(subscription: &str) -> bool {
    subscription.split(':').any(|s| s == "*" || s == "**")
}

/// Checks what a client may subscribe to: a channel name, or a pattern of channel segments,
/// `*` and a final `**` (`{sub}` is for grants only).
pub fn validate_subscription(subscription: &str) -> Result<(), ChannelError> {
    if !is_pattern(subscription) {
        return validate_channel(subscription);
    }
    if subscription.len() > MAX_CHANNEL_BYTES {
        return Err(ChannelError::TooLong);
    }
    if subscription.contains('{') || subscription.contains('}') {
        return Err(ChannelError::BadChar('{'));
    }
    validate_pattern(subscription)
}

/// Whether one grant `pattern` (of user `sub`) covers every channel the subscription
/// `wanted` (a channel or a subscription pattern) can match. Exact, not approximate: for a
/// concrete channel it is [`pattern_matches`].
pub fn covers(pattern: &str, wanted: &str, sub: &str) -> bool {
    let mut pat = pattern.split(':').peekable();
    let mut want = wanted.split(':').peekable();
    loop {
        match (pat.next(), want.next()) {
            (None, None) => return true,
            // A final grant `**` takes one or more segments: whatever is left of the
            // subscription (at least this one segment, perhaps a `**`).
            (Some("**"), Some(_)) if pat.peek().is_none() => return true,
            // Only a grant `**` covers a subscription `**`.
            (_, Some("**")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(_), Some("*")) => return false,
            (Some(p), Some(c)) => {
                let equal = if p.contains("{sub}") {
                    segment_with_sub_equals(p, sub, c)
                } else {
                    p == c
                };
                if !equal {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Whether a subscription (a channel or a subscription pattern) takes events of `channel`.
pub fn subscription_matches(subscription: &str, channel: &str) -> bool {
    subscription == channel
        || (is_pattern(subscription) && pattern_matches(subscription, channel, ""))
}

/// Whether `pattern` (granted to user `sub`) covers the concrete `channel`.
pub fn pattern_matches(pattern: &str, channel: &str, sub: &str) -> bool {
    let mut pat = pattern.split(':').peekable();
    let mut chan = channel.split(':');
    loop {
        match (pat.next(), chan.next()) {
            (None, None) => return true,
            (Some("**"), Some(_)) if pat.peek().is_none() => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(c)) => {
                let equal = if p.contains("{sub}") {
                    segment_with_sub_equals(p, sub, c)
                } else {
                    p == c
                };
                if !equal {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// `p` with every `{sub}` replaced by `sub` equals `c`, compared without allocating.
fn segment_with_sub_equals(p: &str, sub: &str, mut c: &str) -> bool {
    let mut parts = p.split("{sub}");
    let first = parts.next().unwrap_or("");
    let Some(rest) = c.strip_prefix(first) else {
        return false;
    };
    c = rest;
    for literal in parts {
        let Some(rest) = c.strip_prefix(sub) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(literal) else {
            return false;
        };
        c = rest;
    }
    c.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert!(validate_channel("logs:w1:f1").is_ok());
        assert!(validate_channel("a").is_ok());
        assert_eq!(validate_channel(""), Err(ChannelError::Empty));
        assert_eq!(validate_channel("a::b"), Err(ChannelError::EmptySegment));
        assert_eq!(validate_channel(":a"), Err(ChannelError::EmptySegment));
        assert_eq!(validate_channel("a b"), Err(ChannelError::BadChar(' ')));
        assert_eq!(validate_channel("a\nb"), Err(ChannelError::BadChar('\n')));
        assert_eq!(validate_channel("a:*"), Err(ChannelError::BadChar('*')));
        assert_eq!(
            validate_channel(&"a".repeat(257)),
            Err(ChannelError::TooLong)
        );
        assert!(validate_channel(&"a".repeat(256)).is_ok());
    }

    #[test]
    fn patterns() {
        assert!(validate_pattern("logs:*:f1").is_ok());
        assert!(validate_pattern("logs:**").is_ok());
        assert!(validate_pattern("notifications:{sub}").is_ok());
        assert_eq!(validate_pattern("**:a"), Err(ChannelError::InnerDoubleStar));
        assert!(pattern_matches("**", "a:b:c", "u"));
        assert!(pattern_matches("a:*:c", "a:b:c", "u"));
        assert!(!pattern_matches("a:*", "a:b:c", "u"));
        assert!(!pattern_matches("a:b", "a:b:c", "u"));
        assert!(pattern_matches("user-{sub}-x", "user-u1-x", "u1"));
        assert!(!pattern_matches("user-{sub}-x", "user-u2-x", "u1"));
        // A user id with wildcard characters never widens the pattern.
        assert!(!pattern_matches("n:{sub}", "n:other", "*"));
        assert!(!pattern_matches("n:{sub}", "n:a", "a:b"));
    }

    #[test]
    fn coverage_of_subscription_patterns() {
        assert!(validate_subscription("logs:w1:*").is_ok());
        assert!(validate_subscription("logs:**").is_ok());
        assert!(validate_subscription("logs:{sub}").is_err());
        assert!(validate_subscription("logs:**:x").is_err());
        assert!(covers("logs:w1:*", "logs:w1:*", "u"));
        assert!(covers("logs:*:*", "logs:w1:*", "u"));
        assert!(covers("logs:**", "logs:w1:*", "u"));
        assert!(covers("logs:**", "logs:**", "u"));
        assert!(covers("**", "a:**", "u"));
        assert!(!covers("logs:w1:f1", "logs:w1:*", "u"));
        assert!(!covers("logs:*:*", "logs:**", "u"));
        assert!(!covers("logs:w1:*", "logs:**", "u"));
        assert!(!covers("a:*:**", "a:**", "u"), "a:** also matches a:x");
        assert!(covers("n:{sub}:*", "n:u1:*", "u1"));
        assert!(!covers("n:{sub}:*", "n:u2:*", "u1"));
        assert!(!covers("n:{sub}", "n:*", "u1"));
    }

    /// Channels of up to 4 segments over a two-letter alphabet: enough to decide coverage by
    /// enumeration for patterns of up to 3 segments (a `**` needing more is still seen).
    fn all_channels() -> Vec<String> {
        let segs = ["a", "b"];
        let mut out: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
        let mut last = out.clone();
        for _ in 1..4 {
            last = last
                .iter()
                .flat_map(|p| segs.iter().map(move |s| format!("{p}:{s}")))
                .collect();
            out.extend(last.iter().cloned());
        }
        out
    }

    fn pattern_strategy(allow_sub: bool) -> impl Strategy<Value = String> {
        let seg = if allow_sub {
            prop_oneof![Just("a"), Just("b"), Just("*"), Just("{sub}")].boxed()
        } else {
            prop_oneof![Just("a"), Just("b"), Just("*")].boxed()
        };
        (proptest::collection::vec(seg, 1..4), any::<bool>()).prop_map(|(segs, dstar)| {
            let mut p = segs.join(":");
            if dstar {
                p.push_str(":**");
            }
            p
        })
    }

    proptest! {
        #[test]
        fn coverage_equals_enumerated_inclusion(
            grant in pattern_strategy(true),
            wanted in pattern_strategy(false),
        ) {
            // With user "a", {sub} is the literal "a". Channels of 4 segments distinguish
            // every pair of these short patterns.
            let channels = all_channels();
            let included = channels
                .iter()
                .filter(|c| pattern_matches(&wanted, c, "a"))
                .all(|c| pattern_matches(&grant, c, "a"));
            prop_assert_eq!(covers(&grant, &wanted, "a"), included, "{} covers {}", grant, wanted);
        }

        #[test]
        fn sub_substitution_equals_literal_compare(
            pre in "[a-z]{0,3}", post in "[a-z]{0,3}", sub in "[a-z0-9]{1,4}", seg in "[a-z0-9-]{1,10}"
        ) {
            let p = format!("{pre}{{sub}}{post}");
            let expected = format!("{pre}{sub}{post}") == seg;
            prop_assert_eq!(segment_with_sub_equals(&p, &sub, &seg), expected);
        }
    }
}
