// (g) `sharing: "sharedworker"` (the demo's `?sharing=sharedworker`): three tabs of one user,
// one stream held by a SharedWorker; closing a tab leaves the others live with every line.
import { describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { expectConsecutive, openTab, pageErrors, seqs, signIn, sleep, until } from "./harness";
import { withDemo } from "./with-demo";

const F1 = "logs:w1:f1";
const PAGE = "/?sharing=sharedworker#/logs/w1/f1";

describe("sharedworker", () => {
  const ctx = withDemo({ tickMs: 100 });

  const badge = (p: Page, attr: string) => p.getByTestId("connection").getAttribute(attr);

  it("three tabs share one stream held by the worker; closing the first tab loses no line", async () => {
    const context = await ctx.browser.newContext();
    const errors = pageErrors(context);
    const tabs = [await signIn(context, ctx.demo, "a", PAGE)];
    tabs.push(await openTab(context, ctx.demo, PAGE));
    tabs.push(await openTab(context, ctx.demo, PAGE));
    for (const t of tabs) await until(() => seqs(t, F1), (s) => s.length >= 5, "lines in every tab");

    // The worker mode is really on (no silent fallback to a leader tab): no tab holds the stream.
    for (const t of tabs) {
      expect(await badge(t, "data-sharing")).toBe("sharedworker");
      expect(await badge(t, "data-leader")).toBe("false");
    }

    // One stream for the three tabs.
    await sleep(1000);
    const before = await ctx.demo.connections("a");
    expect(before.length).toBe(1);
    expect(before[0]!.channels).toContain(F1);

    const others = tabs.slice(1);
    const seen = await Promise.all(others.map((t) => seqs(t, F1)));
    const lastBefore = Math.max(...seen.map((s) => s[s.length - 1]!));
    await tabs[0]!.close();

    // The others keep receiving from where they were, on the same stream (nothing reconnects).
    for (const t of others) {
      await until(() => seqs(t, F1), (s) => s[s.length - 1]! >= lastBefore + 30, "lines after the first tab closed");
    }
    const after = await ctx.demo.connections("a");
    expect(after.map((c) => c.connection_id)).toEqual([before[0]!.connection_id]);
    for (const [i, t] of others.entries()) {
      const lines = await seqs(t, F1);
      expect(lines.slice(0, seen[i]!.length)).toEqual(seen[i]);
      expectConsecutive(lines, `tab ${i + 2} after the first tab closed`);
      expect(await badge(t, "data-status")).toBe("connected");
    }
    expect(errors).toEqual([]);
    await context.close();
  });
});
