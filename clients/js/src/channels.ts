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

/** A part of an id as a number string without leading zeros (compared by length, then text). */
function digits(part: string): string {
  const s = part.replace(/^0+/, "");
  return s === "" ? "0" : s;
}

/**
 * Compares two event ids as log positions: `"N"` (memory and file logs) or `"hi-lo"` (Redis,
 * NATS), numerically part by part (a missing part is 0). Negative when `a` is before `b`, 0 when
 * equal, positive when after. Ids of one log only: ids of different logs do not compare.
 */
export function comparePositions(a: string, b: string): number {
  const pa = a.split("-");
  const pb = b.split("-");
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = digits(pa[i] ?? "0");
    const y = digits(pb[i] ?? "0");
    if (x.length !== y.length) return x.length - y.length;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}
