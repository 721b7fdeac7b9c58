//! Channel names, grant patterns and subscriptions (`ssegate::channel`).
//!
//! The input is split at `\n` into up to three strings: a grant pattern `p`, a channel or
//! subscription `c` and a user id `u`. Nothing may panic, and the invariants the access
//! control relies on must hold for every input (see the asserts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssegate::channel::{
    covers, is_pattern, pattern_matches, subscription_matches, validate_channel, validate_pattern,
    validate_subscription, MAX_CHANNEL_BYTES,
};

/// A character a channel segment may hold (the documented set).
fn segment_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.@=+/~!$%&,".contains(c)
}

/// Whether `s` could be one channel segment.
fn is_segment(s: &str) -> bool {
    !s.is_empty() && s.chars().all(segment_char_ok)
}

/// Channels the subscription pattern `s` matches: each `*` replaced by a literal, a final
/// `**` by one and by two literal segments.
fn samples(s: &str, literal: &str) -> Vec<String> {
    let segs: Vec<&str> = s.split(':').collect();
    let mut out = Vec::new();
    for extra in [1usize, 2] {
        let mut parts: Vec<&str> = Vec::with_capacity(segs.len() + 1);
        for seg in &segs {
            match *seg {
                "*" => parts.push(literal),
                "**" => parts.extend(std::iter::repeat_n(literal, extra)),
                other => parts.push(other),
            }
        }
        out.push(parts.join(":"));
    }
    out.dedup();
    out
}

fn check_channel(c: &str) {
    if validate_channel(c).is_ok() {
        assert!(!c.is_empty() && c.len() <= MAX_CHANNEL_BYTES, "{c:?}");
        for bad in ['\r', '\n', ' ', '*', '{', '}', '"', '\\', '\0', '?', '#'] {
            assert!(!c.contains(bad), "valid channel {c:?} contains {bad:?}");
        }
        assert!(!c.chars().any(char::is_control), "{c:?}");
        assert!(c.is_ascii(), "{c:?}");
        assert!(c.split(':').all(is_segment), "{c:?}");
        // A channel is also a valid subscription and grant, and not a pattern.
        assert!(!is_pattern(c), "{c:?}");
        assert!(validate_subscription(c).is_ok(), "{c:?}");
        assert!(validate_pattern(c).is_ok(), "{c:?}");
        // The JSON form of a channel is the channel in quotes (nothing to escape).
        assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{c}\""));
    }
    if validate_subscription(c).is_ok() {
        assert!(!c.contains('{') && !c.contains('}'), "{c:?}");
        assert!(c.len() <= MAX_CHANNEL_BYTES, "{c:?}");
        assert!(validate_pattern(c).is_ok(), "{c:?}");
        if !is_pattern(c) {
            assert!(validate_channel(c).is_ok(), "{c:?}");
        }
    }
    // Every string takes its own events.
    assert!(subscription_matches(c, c), "{c:?}");
}

fn check(p: &str, c: &str, u: &str) {
    check_channel(p);
    check_channel(c);

    let p_ok = validate_pattern(p).is_ok();
    let c_channel = validate_channel(c).is_ok();
    let c_sub = validate_subscription(c).is_ok();

    // For a concrete channel, `covers` is exactly `pattern_matches`, whatever the user.
    if p_ok && c_channel {
        assert_eq!(
            covers(p, c, u),
            pattern_matches(p, c, u),
            "covers/pattern_matches differ: p={p:?} c={c:?} u={u:?}"
        );
        // A concrete channel subscription takes exactly its own channel.
        assert_eq!(subscription_matches(c, p), c == p, "c={c:?} p={p:?}");
    }

    // `{sub}` is the user id compared literally: with a user id that is a valid segment it
    // is the same as substituting it; with one that is not (e.g. `*`, `a:b`), a pattern
    // that uses `{sub}` matches no valid channel — a user id never widens a grant.
    if p_ok && c_channel && !u.is_empty() {
        let m = pattern_matches(p, c, u);
        if is_segment(u) {
            let literal = p.replace("{sub}", u);
            assert_eq!(
                m,
                pattern_matches(&literal, c, ""),
                "p={p:?} c={c:?} u={u:?}"
            );
        } else if p.contains("{sub}") {
            assert!(!m, "user {u:?} widened {p:?} to {c:?}");
        }
    }

    if p_ok && c_sub && !u.is_empty() && is_segment(u) && p.contains("{sub}") {
        let literal = p.replace("{sub}", u);
        assert_eq!(
            covers(p, c, u),
            covers(&literal, c, ""),
            "p={p:?} c={c:?} u={u:?}"
        );
    }

    // A subscription covers itself (it has no `{sub}`).
    if c_sub {
        assert!(covers(c, c, u), "{c:?} does not cover itself");
    }

    // Coverage is sound: when grant `p` covers subscription `c`, it matches every channel
    // `c` takes. Sample channels: `*` → a literal, final `**` → one or two literals.
    if p_ok && c_sub {
        let literal = if is_segment(u) && u.len() <= 8 {
            u
        } else {
            "x"
        };
        let covered = covers(p, c, u);
        for sample in samples(c, literal) {
            if validate_channel(&sample).is_err() {
                continue; // longer than the limit after expansion
            }
            assert!(
                subscription_matches(c, &sample),
                "subscription {c:?} does not take its own sample {sample:?}"
            );
            if covered {
                assert!(
                    pattern_matches(p, &sample, u),
                    "{p:?} covers {c:?} (u={u:?}) but does not match {sample:?}"
                );
            }
        }
    }

    // Subscriptions match like `{sub}`-free grants.
    if c_sub && is_pattern(c) {
        assert_eq!(subscription_matches(c, p), pattern_matches(c, p, ""));
        assert_eq!(subscription_matches(c, p), pattern_matches(c, p, u));
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let p = parts.next().unwrap_or("");
    let c = parts.next().unwrap_or(p);
    let u = parts.next().unwrap_or("u1");
    check(p, c, u);
    // The same strings in the other roles.
    check(c, p, u);
});
