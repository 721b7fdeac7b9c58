/** The gateway's JSON errors, `{"error": {"code", "message", "channels"?}}`, as an Error. */
export class RealtimeError extends Error {
  override readonly name = "RealtimeError";
  constructor(
    /** The gateway's stable code (`forbidden_channel`, `invalid_channel`, …). */
    readonly code: string,
    message: string,
    /** HTTP status, 0 when no response was received. */
    readonly status: number,
    /** The channels concerned, when the gateway named them (403 `forbidden_channel`). */
    readonly channels?: string[],
  ) {
    super(message);
  }
}

/** Reads an error response; never throws. */
export async function readError(response: Response): Promise<RealtimeError> {
  let code = `http_${response.status}`;
  let message = `HTTP ${response.status}`;
  let channels: string[] | undefined;
  try {
    const body = (await response.json()) as {
      error?: { code?: unknown; message?: unknown; channels?: unknown };
    };
    const e = body?.error;
    if (e && typeof e.code === "string") code = e.code;
    if (e && typeof e.message === "string") message = e.message;
    if (e && Array.isArray(e.channels)) channels = e.channels.filter((c) => typeof c === "string");
  } catch {
    // Not JSON (a proxy's error page): keep the status.
  }
  return new RealtimeError(code, message, response.status, channels);
}

/** `Retry-After` in ms (seconds or an HTTP date), or null when absent or unreadable. */
export function retryAfterMs(response: Response, now = Date.now()): number | null {
  const value = response.headers.get("retry-after");
  if (value == null) return null;
  const trimmed = value.trim();
  if (/^[0-9]+$/.test(trimmed)) return parseInt(trimmed, 10) * 1000;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return null;
  return Math.max(0, date - now);
}
