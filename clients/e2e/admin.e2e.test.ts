// (e) The admin page: live connections, channels and events/s from the admin API.
import { describe, expect, it } from "vitest";
import { artifacts, pageErrors, signIn, until } from "./harness";
import { withDemo } from "./with-demo";

describe("admin page", () => {
  const ctx = withDemo({ tickMs: 100 });

  it("shows the streams of every user, their channels and the event rate", async () => {
    const b = await ctx.browser.newContext();
    await signIn(b, ctx.demo, "b");
    const a = await ctx.browser.newContext({ viewport: { width: 1280, height: 800 } });
    const errors = pageErrors(a);
    const page = await signIn(a, ctx.demo, "a", "/#/admin");
    const text = (id: string) => page.getByTestId(id).textContent();
    await until(() => text("admin-connections"), (t) => t === "2", "two connections (A, B)");
    await until(async () => Number(await text("admin-events-rate")), (r) => r > 5, "events/s");
    const rows = page.locator('[data-testid="admin-connection-table"] tbody tr[data-user]');
    expect(await rows.evaluateAll((r) => r.map((e) => (e as HTMLElement).dataset.user).sort())).toEqual(["a", "b"]);
    expect(await page.locator('[data-testid="admin-connection-table"] tr[data-user="b"]').textContent()).toContain(
      "logs:w1:f2",
    );
    await page.waitForTimeout(4000); // a few samples for the sparklines
    await page.screenshot({ path: `${artifacts}/admin.png` });
    expect(errors).toEqual([]);
    await a.close();
    await b.close();
  });
});
