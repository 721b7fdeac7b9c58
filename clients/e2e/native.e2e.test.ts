// Acceptance 3: a page with nothing but a native EventSource (cookie auth) receives events,
// resumes after a gateway restart with no missing line, and survives a `gap`.
import { describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { artifacts, expectConsecutive, pageErrors, until } from "./harness";
import { withDemo } from "./with-demo";

const RETENTION = 200;

describe("native EventSource", () => {
  // Tiny retention: a client far enough behind gets `gap`.
  const ctx = withDemo({ tickMs: 50, retentionEvents: RETENTION });

  const lines = (p: Page) =>
    p.locator("li[data-seq]").evaluateAll((els) => els.map((e) => Number((e as HTMLElement).dataset.seq)));
  const stat = (p: Page, id: string) => p.locator(`#${id}`).textContent();

  it("receives, resumes after restarts with every line once, and handles a gap", async () => {
    const context = await ctx.browser.newContext();
    const errors = pageErrors(context);
    const page = await context.newPage();
    await page.goto(`${ctx.demo.url}/demo/login?user=a&next=${encodeURIComponent("/native.html?channel=logs:w1:f1")}`);
    await until(() => lines(page), (s) => s.length >= 20, "lines in the native page");
    expect(await stat(page, "status")).toBe("open");

    // The browser reconnects by itself with Last-Event-ID; the gateway replays what it missed.
    for (const signal of ["SIGKILL", "SIGTERM"] as const) {
      const before = await lines(page);
      const opens = Number(await stat(page, "opens"));
      await ctx.demo.restart(signal);
      await until(() => stat(page, "opens").then(Number), (n) => n > opens, `reconnected after ${signal}`, 30_000);
      const after = await until(
        () => lines(page),
        (s) => s[s.length - 1]! >= before[before.length - 1]! + 40,
        `lines after ${signal}`,
      );
      expect(after.slice(0, before.length)).toEqual(before);
      expectConsecutive(after, `native page across a restart (${signal})`);
    }
    expect(await stat(page, "gaps")).toBe("0");

    // A client far behind: it asks to resume after event 1, long dropped by retention.
    await until(
      () => ctx.demo.admin<{ log: { oldest: string | null } }>("/v1/status"),
      (s) => Number(s.log.oldest) > 1,
      "retention to drop event 1",
    );
    const behind = await context.newPage();
    await behind.goto(`${ctx.demo.url}/native.html?channel=logs:w1:f1&from=1`);
    await until(() => stat(behind, "gaps"), (g) => g === "1", "a gap");
    const gap = await behind.locator("li.gap").textContent();
    expect(gap).toContain("after 1 up to");
    // After the gap: the oldest retained lines, then live, still consecutive and growing.
    const first = await until(() => lines(behind), (s) => s.length >= 5, "lines after the gap");
    await until(() => lines(behind), (s) => s.length >= first.length + 20, "live lines after the gap");
    expectConsecutive(await lines(behind), "lines after the gap");
    expect(await stat(behind, "status")).toBe("open");
    await behind.locator("li.gap").scrollIntoViewIfNeeded();
    await behind.screenshot({ path: `${artifacts}/native-gap.png` });
    expect(errors).toEqual([]);
    await context.close();
  });
});
