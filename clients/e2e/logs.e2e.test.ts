// (a) Live pipeline logs, and the gateway's access control seen from the browser.
import { describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { artifacts, expectConsecutive, expectStats, newestLine, pageErrors, seqs, signIn, until } from "./harness";
import { withDemo } from "./with-demo";

const F1 = "logs:w1:f1";
const F2 = "logs:w1:f2";

describe("pipeline logs", () => {
  const ctx = withDemo({ tickMs: 100 });

  it("shows user A the lines of workflow 1 as the job writes them; user B never sees them", async () => {
    const a = await ctx.browser.newContext({ viewport: { width: 1280, height: 800 } });
    const b = await ctx.browser.newContext();
    const errors = [...pageErrors(a), ...pageErrors(b)];
    const pa = await signIn(a, ctx.demo, "a", "/#/logs/w1/f1");
    const pb = await signIn(b, ctx.demo, "b", "/#/logs/w1/f2");

    // Live: lines keep arriving while we watch, in order, none missing.
    const first = await until(() => seqs(pa, F1), (s) => s.length >= 5, "A's first lines of f1");
    const later = await until(
      () => seqs(pa, F1),
      (s) => s.length >= first.length + 15,
      "more lines of f1, live",
    );
    expect(later.slice(0, first.length)).toEqual(first);
    expectConsecutive(later, "A's lines of f1");
    expect(await pa.getByTestId("run-status").first().textContent()).toMatch(/run #\d+/);

    // B reads workflow 2 …
    await until(() => seqs(pb, F2), (s) => s.length >= 10, "B's lines of f2");
    expectConsecutive(await seqs(pb, F2), "B's lines of f2");

    // … and asking for workflow 1 is refused by the gateway, not hidden by the page.
    await pb.goto(`${ctx.demo.url}/#/logs/w1/f1`);
    const refused = pb.locator(`[data-channel="${F1}"] [data-testid="refused"]`);
    await refused.waitFor();
    expect(await refused.textContent()).toContain("403 forbidden_channel");
    for (const channel of [F1, "logs:w1:*", "logs:**"]) {
      const status = await pb.evaluate(
        async (c) => (await fetch(`/v1/stream?channel=${encodeURIComponent(c)}`)).status,
        channel,
      );
      expect(status, `B subscribing to ${channel}`).toBe(403);
    }
    await pb.screenshot({ path: `${artifacts}/refused.png` });
    await pb.waitForTimeout(1500);
    expect(await seqs(pb, F1)).toEqual([]);
    const bStreams = await ctx.demo.connections("b");
    expect(bStreams.length).toBe(1);
    expect(bStreams[0]!.channels).not.toContain(F1);
    // Only the workflow shown is mounted: workflow 2's viewer left with the switch …
    expect(await pb.locator(`[data-channel="${F2}"]`).count()).toBe(0);
    // … and back on it, B's page shows its lines again and streams it on.
    await pb.goto(`${ctx.demo.url}/#/logs/w1/f2`);
    const f2 = await until(() => seqs(pb, F2), (s) => s.length > 0, "B's f2 lines back on workflow 2");
    await until(() => seqs(pb, F2), (s) => s.length > f2.length, "B's f2 lines after the refusal");
    expectConsecutive(await seqs(pb, F2), "B's lines of f2 after the refusal");

    await pa.screenshot({ path: `${artifacts}/log-viewer.png` });
    expect(errors).toEqual([]);
    await a.close();
    await b.close();
  });

  it("opens a workflow mid-run with its earlier lines, then live; switching away and back keeps them, 0 missing, 0 twice", async () => {
    const a = await ctx.browser.newContext({ viewport: { width: 1280, height: 800 } });
    const errors = pageErrors(a);
    // On workflow 2: workflow 1 is not mounted, so nothing of this page subscribes to it.
    const page = await signIn(a, ctx.demo, "a", "/#/logs/w1/f2");
    await until(() => seqs(page, F2), (s) => s.length >= 5, "A's lines of f2");
    expect(await page.locator(`[data-channel="${F1}"]`).count()).toBe(0);
    expect((await ctx.demo.connections("a")).flatMap((c) => c.channels)).not.toContain(F1);

    // Workflow 1 is running meanwhile: its newest line, over the history endpoint (the
    // session cookie authorizes it like a subscription).
    const newest = () => newestLine(page, F1);
    const before = await until(newest, (n) => n >= 20, "workflow 1 has written 20 lines");

    // Opened for the first time: its earlier lines at once (from #1, or the start of the
    // history window), contiguous, then live ones.
    await page.goto(`${ctx.demo.url}/#/logs/w1/f1`);
    const opened = await until(() => seqs(page, F1), (s) => s.length > 0 && s[s.length - 1]! >= before, "f1's earlier lines");
    expect(opened[0]! <= before, `the first line shown (#${opened[0]}) is an earlier one (≤ #${before})`).toBe(true);
    expect(opened[0] === 1 || opened.length >= HISTORY_LINES, `first #${opened[0]}, ${opened.length} lines`).toBe(true);
    expectConsecutive(opened, "f1 opened mid-run");
    const live = await until(
      () => seqs(page, F1),
      (s) => s[s.length - 1]! >= opened[opened.length - 1]! + 10,
      "f1's live lines after its history",
    );
    expect(live.slice(0, opened.length)).toEqual(opened);
    expectConsecutive(live, "f1: history then live");
    await expectStats(page, F1);
    await expectOneViewer(page, F1);

    // Away to workflow 2 (f1's viewer unmounts) while workflow 1 goes on …
    await page.goto(`${ctx.demo.url}/#/logs/w1/f2`);
    await until(() => seqs(page, F2), (s) => s.length >= 5, "f2 again");
    await expectOneViewer(page, F2);
    await expectStats(page, F2);
    const away = await newest();
    await until(newest, (n) => n >= away + 10, "workflow 1 writes 10 lines while f2 is shown");

    // … and back: the lines kept are shown again and what was written meanwhile follows.
    await page.goto(`${ctx.demo.url}/#/logs/w1/f1`);
    const back = await until(() => seqs(page, F1), (s) => s[s.length - 1]! >= away + 10, "f1 back, caught up");
    expect(back[0]).toBe(live[0]);
    expectConsecutive(back, "f1 after switching back");
    await until(() => seqs(page, F1), (s) => s[s.length - 1]! >= back[back.length - 1]! + 5, "f1 live again");
    expectConsecutive(await seqs(page, F1), "f1 live after switching back");
    await expectStats(page, F1);
    await expectOneViewer(page, F1);

    // The admin page and back: the same.
    await page.goto(`${ctx.demo.url}/#/admin`);
    await page.getByTestId("admin-connections").waitFor();
    expect(await page.locator("[data-channel]").count()).toBe(0);
    await page.goto(`${ctx.demo.url}/#/logs/w1/f1`);
    await until(() => seqs(page, F1), (s) => s.length > 0, "f1 after the admin page");
    expectConsecutive(await seqs(page, F1), "f1 after the admin page");
    await expectStats(page, F1);
    await expectOneViewer(page, F1);

    expect(errors).toEqual([]);
    await a.close();
  });
});

/** How many earlier lines the demo's viewer asks for (demo/src/LogViewer.tsx). */
const HISTORY_LINES = 500;

/** Exactly one viewer in the DOM (the one shown), none hidden. */
async function expectOneViewer(page: Page, channel: string): Promise<void> {
  const channels = await page
    .locator("[data-channel]")
    .evaluateAll((els) => els.map((e) => `${(e as HTMLElement).dataset.channel}${(e as HTMLElement).hidden ? " (hidden)" : ""}`));
  expect(channels).toEqual([channel]);
}
