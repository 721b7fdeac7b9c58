/**
 * Reconnect delays: exponential backoff with full jitter.
 *
 * The n-th delay (n from 0) is `random() × min(max, base × 2^n)`, so a crowd of clients
 * dropped at once comes back spread over the whole window instead of in waves. The base is
 * 1 s until the server sends `retry:`, which then becomes the base. `reset()` (on a
 * successful `connected`) starts again from n = 0.
 */
export interface BackoffOptions {
  /** First window, in ms, until the server's `retry:` says otherwise. Default 1000. */
  initialMs?: number;
  /** Largest window, in ms. Default 30000. */
  maxMs?: number;
  /** A number in [0, 1): `Math.random` unless injected (tests). */
  random?: () => number;
}

/** The smallest base a server's `retry:` may set: `retry: 0` must not become a busy loop. */
const MIN_BASE_MS = 100;

export class Backoff {
  /** Delays handed out since the last reset. */
  attempt = 0;
  private base: number;
  private readonly max: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.base = options.initialMs ?? 1000;
    this.max = options.maxMs ?? 30_000;
    this.random = options.random ?? Math.random;
  }

  /** The server's `retry:` (ms) becomes the base of the window. */
  setBase(ms: number): void {
    this.base = Math.min(this.max, Math.max(MIN_BASE_MS, ms));
  }

  /** The current window: the largest delay the next `next()` may return. */
  window(): number {
    // 2^attempt overflows to Infinity long after min() caps it; cap the exponent anyway.
    return Math.min(this.max, this.base * 2 ** Math.min(this.attempt, 30));
  }

  /** The next delay in ms, in [0, window()). */
  next(): number {
    const delay = Math.floor(this.random() * this.window());
    this.attempt++;
    return delay;
  }

  reset(): void {
    this.attempt = 0;
  }
}
