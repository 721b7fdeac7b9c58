/**
 * Channel names and subscription patterns, with the gateway's rules (docs/api.md,
 * "Identifiers"): `:`-separated non-empty segments of ASCII letters, digits and
 * `_ - . @ = + / ~ ! $ % & ,`, at most 256 bytes; a subscription may use `*` for one segment
 * and a final `**` for one or more.
 */

const SEGMENT = /^[A-Za-z0-9_\-.@=+/~!$%&,]+$/;
const MAX_BYTES = 256;

/** Why a subscription is invalid, or `null` when it is valid. */
export function subscriptionProblem(subscription: string): string | null {
  if (typeof subscription !== "string" || subscription.length === 0) return "empty channel";
  // All allowed characters are ASCII, so the length in UTF-16 units is the length in bytes.
  if (subscription.length > MAX_BYTES) return `longer than ${MAX_BYTES} bytes`;
  const segments = subscription.split(":");
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i]!;
    if (s === "*") continue;
    if (s === "**") {
      if (i !== segments.length - 1) return "`**` is only allowed as the last segment";
      continue;
    }
    if (s.length === 0) return "empty segment";
    if (!SEGMENT.test(s)) return `segment ${JSON.stringify(s)} has a character that is not allowed`;
  }
  return null;
}

/** Whether a subscription (a channel or a pattern) covers a concrete channel. */
export function subscriptionMatches(subscription: string, channel: string): boolean {
  if (subscription === channel) return true;
  if (subscription.indexOf("*") < 0) return false;
  const pattern = subscription.split(":");
  const parts = channel.split(":");
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i]!;
    if (p === "**") return i === pattern.length - 1 && parts.length > i;
    if (i >= parts.length) return false;
    if (p !== "*" && p !== parts[i]) return false;
  }
  return pattern.length === parts.length;
}
