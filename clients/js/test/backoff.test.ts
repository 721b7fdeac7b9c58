import { describe, expect, it } from "vitest";
import { Backoff } from "../src/backoff.js";

/** A deterministic random source: a linear congruential generator in [0, 1). */
function lcg(seed = 42): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("Backoff", () => {
  it("returns 0 with random() = 0 (full jitter reaches the minimum)", () => {
    const b = new Backoff({ random: () => 0 });
    for (let i = 0; i < 10; i++) expect(b.next()).toBe(0);
  });

  it("doubles the window from 1 s up to 30 s (maximum with random() just under 1)", () => {
    const b = new Backoff({ random: () => 0.999999 });
    const delays = Array.from({ length: 8 }, () => b.next());
    expect(delays).toEqual([999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
  });

  it("keeps every delay in [0, min(30 s, 1 s × 2^attempt))", () => {
    const b = new Backoff({ random: lcg() });
    for (let attempt = 0; attempt < 200; attempt++) {
      const window = Math.min(30_000, 1000 * 2 ** attempt);
      const d = b.next();
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(window);
    }
  });

  it("spreads delays over the whole window (jitter, not a fixed step)", () => {
    const random = lcg(7);
    const samples: number[] = [];
    for (let i = 0; i < 2000; i++) {
      const b = new Backoff({ random });
      for (let k = 0; k < 5; k++) b.next();
      samples.push(b.next()); // attempt 5: window 30 s (capped from 32 s)
    }
    const min = Math.min(...samples);
    const max = Math.max(...samples);
    const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
    expect(min).toBeLessThan(1500);
    expect(max).toBeGreaterThan(28_500);
    expect(mean).toBeGreaterThan(13_500);
    expect(mean).toBeLessThan(16_500);
  });

  it("starts over after reset()", () => {
    const b = new Backoff({ random: () => 0.5 });
    expect([b.next(), b.next(), b.next()]).toEqual([500, 1000, 2000]);
    b.reset();
    expect(b.attempt).toBe(0);
    expect(b.next()).toBe(500);
  });

  it("takes the server's retry: as the base, bounded", () => {
    const b = new Backoff({ random: () => 0.5 });
    b.setBase(2000);
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([1000, 2000, 4000, 8000, 15000]);
    b.setBase(0); // retry: 0 must not make a busy loop
    b.reset();
    expect(b.window()).toBe(100);
    b.setBase(10 * 60_000);
    expect(b.window()).toBe(30_000);
  });

  it("honours custom bounds", () => {
    const b = new Backoff({ initialMs: 250, maxMs: 1000, random: () => 0.999999 });
    expect([b.next(), b.next(), b.next(), b.next()]).toEqual([249, 499, 999, 999]);
  });
});
