// Kept out of harness.ts: the global setup imports harness.ts, and vitest's hooks cannot be
// imported there.
import type { Browser } from "playwright-core";
import { afterAll, beforeAll } from "vitest";
import { Demo, launchBrowser, type DemoOptions } from "./harness";

/** A demo and a browser for the tests of one file: started before them, stopped after. */
export function withDemo(opts: DemoOptions): { readonly demo: Demo; readonly browser: Browser } {
  const ctx = {} as { demo: Demo; browser: Browser };
  beforeAll(async () => {
    ctx.demo = await Demo.start(opts);
    ctx.browser = await launchBrowser();
  });
  afterAll(async () => {
    await ctx.browser?.close();
    await ctx.demo?.stop();
  });
  return ctx;
}
