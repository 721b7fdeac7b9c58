// (b) Three tabs of one user share one stream; closing the leader loses nothing.
import { describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { expectConsecutive, openTab, pageErrors, seqs, signIn, sleep, until } from "./harness";
import { withDemo } from "./with-demo";

const F1 = "logs:w1:f1";

describe("tabs", () => {
  const ctx = withDemo({ tickMs: 100 });

  const isLeader = (p: Page) =>
    p.getByTestId("connection").getAttribute("data-leader").then((v) => v === "true");

  it("share one stream, and the others stay live with every line when the leader tab closes", async () => {
    const context = await ctx.browser.newContext();
    const errors = pageErrors(context);
    const tabs = [await signIn(context, ctx.demo, "a", "/#/logs/w1/f1")];
    tabs.push(await openTab(context, ctx.demo, "/#/logs/w1/f1"));
    tabs.push(await openTab(context, ctx.demo, "/#/logs/w1/f1"));
    for (const t of tabs) await until(() => seqs(t, F1), (s) => s.length >= 5, "lines in every tab");

    // One stream for the three tabs, held by exactly one of them.
    await sleep(1000);
    expect((await ctx.demo.connections("a")).length).toBe(1);
    const leaders = await Promise.all(tabs.map(isLeader));
    expect(leaders.filter(Boolean).length).toBe(1);

    const leader = tabs[leaders.indexOf(true)]!;
    const others = tabs.filter((t) => t !== leader);
    const before = await Promise.all(others.map((t) => seqs(t, F1)));
    const lastBefore = Math.max(...before.map((s) => s[s.length - 1]!));
    await leader.close();

    // Another tab takes the stream over; both keep receiving, from where they were.
    for (const t of others) {
      await until(() => seqs(t, F1), (s) => s[s.length - 1]! >= lastBefore + 30, "lines after the leader closed");
    }
    await until(() => Promise.all(others.map(isLeader)), (l) => l.filter(Boolean).length === 1, "one new leader");
    await until(async () => (await ctx.demo.connections("a")).length, (n) => n === 1, "one stream again");
    for (const [i, t] of others.entries()) {
      const after = await seqs(t, F1);
      expect(after.slice(0, before[i]!.length)).toEqual(before[i]);
      expectConsecutive(after, `tab ${i + 2} across the leader change`);
    }
    expect(errors).toEqual([]);
    await context.close();
  });
});
