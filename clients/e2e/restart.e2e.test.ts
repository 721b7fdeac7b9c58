// (c) A gateway restart during a run: every tab reconnects and shows every line exactly once.
import { describe, expect, it } from "vitest";
import { expectConsecutive, openTab, pageErrors, seqs, signIn, until } from "./harness";
import { withDemo } from "./with-demo";

const F1 = "logs:w1:f1";
const F2 = "logs:w1:f2";

describe("gateway restart", () => {
  const ctx = withDemo({ tickMs: 50 });

  it("is invisible in the lines: all tabs reconnect and resume, none missing, none twice", async () => {
    const a = await ctx.browser.newContext();
    const b = await ctx.browser.newContext();
    const errors = [...pageErrors(a), ...pageErrors(b)];
    const tabs = [
      { page: await signIn(a, ctx.demo, "a", "/#/logs/w1/f1"), channel: F1 },
      { page: await signIn(b, ctx.demo, "b", "/#/logs/w1/f2"), channel: F2 },
    ];
    tabs.push({ page: await openTab(a, ctx.demo, "/#/logs/w1/f2"), channel: F2 });
    for (const t of tabs) await until(() => seqs(t.page, t.channel), (s) => s.length >= 20, "lines before the restart");

    // Killed as in a crash (no `closing`), down for a moment, then for longer (the clients'
    // backoff grows meanwhile). The graceful stop (SIGTERM) is in native.e2e.test.ts.
    for (const downMs of [300, 3000]) {
      const before = await Promise.all(tabs.map((t) => seqs(t.page, t.channel)));
      await ctx.demo.restart("SIGKILL", downMs);
      for (const [i, t] of tabs.entries()) {
        const last = before[i]![before[i]!.length - 1]!;
        await until(
          () => seqs(t.page, t.channel),
          (s) => s[s.length - 1]! >= last + 40,
          `tab ${i + 1} live again after ${downMs} ms down`,
          30_000,
        );
        await t.page.locator('[data-testid="connection"][data-status="connected"]').waitFor();
        const after = await seqs(t.page, t.channel);
        expect(after.slice(0, before[i]!.length)).toEqual(before[i]);
        expectConsecutive(after, `tab ${i + 1} across a restart (${downMs} ms down)`);
      }
    }
    expect(errors).toEqual([]);
    await a.close();
    await b.close();
  });
});
