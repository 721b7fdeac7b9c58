// (d) The notification bell follows notification.created / read / deleted, in every tab.
import { describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { artifacts, openTab, pageErrors, signIn, until } from "./harness";
import { withDemo } from "./with-demo";

describe("notification bell", () => {
  // No simulated workload: every notification here is the test's own.
  const ctx = withDemo({ tickMs: 0 });

  const unread = (p: Page) => p.getByTestId("bell").getAttribute("data-unread").then(Number);
  const items = (p: Page) =>
    p.getByTestId("notification").evaluateAll((els) =>
      els.map((e) => `${(e as HTMLElement).dataset.id}:${(e as HTMLElement).dataset.read}`),
    );

  it("counts unread notifications as they are created, read and deleted", async () => {
    const context = await ctx.browser.newContext();
    const errors = pageErrors(context);
    const tab = await signIn(context, ctx.demo, "b");
    const other = await openTab(context, ctx.demo, "/");
    expect(await unread(tab)).toBe(0);

    await tab.getByTestId("bell").click();
    await other.getByTestId("bell").click();
    await tab.getByTestId("notify-test").click();
    await tab.getByTestId("notify-test").click();
    for (const p of [tab, other]) {
      await until(() => unread(p), (n) => n === 2, "two unread");
      expect(await items(p)).toEqual(["n2:false", "n1:false"]);
    }
    await tab.screenshot({ path: `${artifacts}/bell.png` });
    await tab.locator('[data-id="n1"] [data-testid="mark-read"]').click();
    for (const p of [tab, other]) {
      await until(() => unread(p), (n) => n === 1, "one unread after read");
      expect(await items(p)).toEqual(["n2:false", "n1:true"]);
    }
    await other.locator('[data-id="n2"] [data-testid="delete"]').click();
    for (const p of [tab, other]) {
      await until(() => unread(p), (n) => n === 0, "none unread after delete");
      expect(await items(p)).toEqual(["n1:true"]);
    }
    await tab.locator('[data-id="n1"] [data-testid="delete"]').click();
    await until(() => items(other), (l) => l.length === 0, "the list empty");

    // A fresh page loads the same state (the session), then follows the stream.
    await tab.getByTestId("notify-test").click();
    await until(() => unread(other), (n) => n === 1, "one new unread");
    const fresh = await openTab(context, ctx.demo, "/");
    expect(await unread(fresh)).toBe(1);
    expect(errors).toEqual([]);
    await context.close();
  });
});
