// (b) Three tabs of one user share one stream; closing the leader loses nothing.
import { describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { expectConsecutive, expectStats, newestLine, openTab, pageErrors, seqs, signIn, sleep, until } from "./harness";
import { withDemo } from "./with-demo";

const F1 = "logs:w1:f1";
const F2 = "logs:w1:f2";
/** How many earlier lines the demo's viewer asks for (demo/src/LogViewer.tsx). */
const HISTORY_LINES = 500;

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
  it("a tab opening a workflow mid-run gets its earlier lines, then live, whether or not the stream's tab has it", async () => {
    const context = await ctx.browser.newContext();
    const errors = pageErrors(context);
    // The first tab holds the stream and shows workflow 2; workflow 1 runs meanwhile.
    const first = await signIn(context, ctx.demo, "a", "/#/logs/w1/f2");
    await until(() => seqs(first, F2), (s) => s.length >= 5, "f2 in the first tab");
    const before = await until(() => newestLine(first, F1), (n) => n >= 20, "workflow 1 has written 20 lines");

    // A second tab opens workflow 1, which no tab streams: the first tab's stream adds it with
    // the second tab's `history` (history frames, through the leader) …
    const second = await openTab(context, ctx.demo, "/#/logs/w1/f1");
    // … and a third opens it once the stream has it: its history is loaded over REST.
    await until(async () => (await ctx.demo.connections("a")).flatMap((c) => c.channels), (c) => c.includes(F1), "the stream has f1");
    const third = await openTab(context, ctx.demo, "/#/logs/w1/f1");
    expect((await ctx.demo.connections("a")).length, "one stream for the three tabs").toBe(1);

    for (const [name, tab] of [["second", second], ["third", third]] as const) {
      const opened = await until(() => seqs(tab, F1), (s) => s.length > 0 && s[s.length - 1]! >= before, `${name} tab: f1's earlier lines`);
      expect(opened[0]! <= before, `${name} tab: the first line (#${opened[0]}) is an earlier one (≤ #${before})`).toBe(true);
      expect(opened[0] === 1 || opened.length >= HISTORY_LINES, `${name} tab: first #${opened[0]}, ${opened.length} lines`).toBe(true);
      const live = await until(
        () => seqs(tab, F1),
        (s) => s[s.length - 1]! >= opened[opened.length - 1]! + 10,
        `${name} tab: f1's live lines after its history`,
      );
      expect(live.slice(0, opened.length)).toEqual(opened);
      expectConsecutive(live, `${name} tab: f1, history then live`);
      await expectStats(tab, F1);
    }
    expect(errors).toEqual([]);
    await context.close();
  });
});
