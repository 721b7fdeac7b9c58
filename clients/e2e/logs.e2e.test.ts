// (a) Live pipeline logs, and the gateway's access control seen from the browser.
import { describe, expect, it } from "vitest";
import { artifacts, expectConsecutive, pageErrors, seqs, signIn, until } from "./harness";
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
    // And B's page still streams workflow 2.
    const f2 = await seqs(pb, F2);
    await until(() => seqs(pb, F2), (s) => s.length > f2.length, "B's f2 lines after the refusal");

    await pa.screenshot({ path: `${artifacts}/log-viewer.png` });
    expect(errors).toEqual([]);
    await a.close();
    await b.close();
  });
});
