// The Mercure hub of `ssegate serve` with a browser's own EventSource: the subscriber's
// token in the `mercureAuthorization` cookie (HttpOnly), public and private updates, private
// ones only where the token grants them, and gateway restarts (crash and graceful stop) on
// the same port and data: the browser resumes by itself (Last-Event-ID) and shows every
// update exactly once, in order, with the ids the publisher got back.
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import type { Page, Request } from "playwright-core";
import { artifacts, pageErrors, sleep, until } from "./harness";
import { hs256, withServe } from "./with-serve";

const SECRET = randomBytes(32).toString("hex");
const BOOKS = "https://example.com/books/{id}";
const AUTHORS = "https://example.com/authors/{id}";
/** The browser's reconnection delay, set by the first update's `retry`. */
const RETRY_MS = 4000;

/** What the page's EventSource saw. */
interface Got {
  id: string;
  type: string;
  data: string;
}

/** One update sent by the publisher, and whether the subscriber may see it. */
interface Sent extends Got {
  delivered: boolean;
}

declare global {
  interface Window {
    __got: Got[];
    __opens: number;
    __errors: number;
  }
}

describe("Mercure hub (ssegate serve)", () => {
  const ctx = withServe(
    ["[mercure]", "enabled = true", `jwt_secret = "${SECRET}"`, "subscriptions = false"].join("\n"),
    // A graceful stop ends the streams at once (the browser then waits its `retry`).
    ["drain_window_ms = 200"],
  );

  it("delivers public and granted private updates once each, in order, across restarts", async () => {
    const { serve, browser } = ctx;
    const exp = Math.floor(Date.now() / 1000) + 3600;
    const subscriber = hs256({ mercure: { subscribe: [BOOKS] }, exp }, SECRET);
    const publisher = hs256({ mercure: { publish: ["*"] }, exp }, SECRET);
    const sent: Sent[] = [];
    let seq = 0;

    /** POSTs an update to the hub as the publisher; returns the id the hub answered. */
    async function publish(
      topic: string,
      opts: { private?: boolean; id?: string; type?: string; retry?: number } = {},
    ): Promise<void> {
      seq += 1;
      const data = `${topic} #${seq}${opts.private ? " (private)" : ""}\nsecond line`;
      const form = new URLSearchParams({ topic, data });
      if (opts.private) form.set("private", "on");
      if (opts.id) form.set("id", opts.id);
      if (opts.type) form.set("type", opts.type);
      if (opts.retry !== undefined) form.set("retry", String(opts.retry));
      const res = await fetch(`${serve.url}/.well-known/mercure`, {
        method: "POST",
        headers: { Authorization: `Bearer ${publisher}` },
        body: form,
      });
      const body = await res.text();
      expect(res.status, `publish to ${topic}: ${body}`).toBe(200);
      if (opts.id) expect(body).toBe(opts.id);
      // Granted: the books; the authors are subscribed to as well but not granted (public
      // updates only); the reviews are not subscribed to at all.
      const delivered = opts.private ? topic.startsWith("https://example.com/books/") : !topic.includes("/reviews/");
      sent.push({ id: body, type: opts.type ?? "message", data, delivered });
    }

    /** A round of updates; the last one is always delivered (so nothing earlier can still come). */
    async function round(name: string, from: number, count: number): Promise<void> {
      for (let n = from; n < from + count; n++) {
        await publish(`https://example.com/books/${n}`);
        await publish(`https://example.com/authors/${n}`, { private: true });
        await publish(`https://example.com/books/${n}`, { private: true, type: "book" });
        await publish(`https://example.com/reviews/${n}`, { private: true });
        await publish(`https://example.com/reviews/${n}`);
        await publish(`https://example.com/authors/${n}`, { id: `urn:e2e:${SECRET.slice(0, 8)}:${name}:${n}` });
        await publish(`https://example.com/books/${n}`, { private: true, id: `urn:e2e:${SECRET.slice(0, 8)}:${name}:${n}:p` });
      }
    }

    const expected = () => sent.filter((s) => s.delivered).map(({ id, type, data }) => ({ id, type, data }));
    const got = (p: Page) => p.evaluate(() => window.__got);
    const opens = (p: Page) => p.evaluate(() => window.__opens);
    /** Waits for every delivered update so far, then checks the whole list. */
    async function allArrived(p: Page, what: string): Promise<void> {
      const want = expected();
      // On a timeout the comparison below shows what is missing.
      await until(() => got(p), (g) => g.length >= want.length, `${want.length} updates ${what}`).catch(() => {});
      await sleep(300); // anything extra (a duplicate, a forbidden update) would come now
      expect(await got(p), what).toEqual(want);
    }

    const context = await browser.newContext();
    const errors = pageErrors(context);
    await context.addCookies([
      { name: "mercureAuthorization", value: subscriber, domain: "127.0.0.1", path: "/", httpOnly: true, sameSite: "Strict" },
    ]);
    const page = await context.newPage();
    // The stream's requests as the browser sent them (Last-Event-ID) and the hub's answers.
    const streamRequests: Request[] = [];
    page.on("request", (r) => {
      if (r.url().includes("/.well-known/mercure")) streamRequests.push(r);
    });
    await page.goto(`${serve.url}/healthz`);
    expect(await page.evaluate(() => document.cookie), "the cookie is HttpOnly").toBe("");

    const src = `/.well-known/mercure?topic=${encodeURIComponent(BOOKS)}&topic=${encodeURIComponent(AUTHORS)}`;
    await page.evaluate((url) => {
      window.__got = [];
      window.__opens = 0;
      window.__errors = 0;
      const es = new EventSource(url);
      const keep = (e: Event) => {
        const m = e as MessageEvent<string>;
        window.__got.push({ id: m.lastEventId, type: m.type, data: m.data });
      };
      es.addEventListener("message", keep);
      es.addEventListener("book", keep);
      es.onopen = () => (window.__opens += 1);
      es.onerror = () => (window.__errors += 1);
    }, src);
    await until(() => opens(page), (n) => n === 1, "the EventSource to open");

    // Live: the first update sets the browser's reconnection delay.
    await publish("https://example.com/books/0", { retry: RETRY_MS });
    await round("live", 1, 5);
    await allArrived(page, "live");

    for (const signal of ["SIGKILL", "SIGTERM"] as const) {
      if (signal === "SIGTERM") {
        // The rounds end on a publisher's id: resume once from an id the hub made.
        await publish("https://example.com/books/30");
        await allArrived(page, "before SIGTERM");
      }
      const before = await got(page);
      const lastId = before[before.length - 1]!.id;
      const opened = await opens(page);
      const requests = streamRequests.length;

      await serve.kill(signal);
      await sleep(300);
      await serve.relaunch();
      // Published while the hub is back but the browser still waits its retry delay.
      await round(`${signal}-gap`, 10, 2);
      expect(await opens(page), `the browser was still waiting to reconnect after ${signal}`).toBe(opened);

      await until(() => opens(page), (n) => n > opened, `the browser to reconnect after ${signal}`, 30_000);
      // Then live again.
      await round(`${signal}-live`, 20, 2);
      await allArrived(page, `after ${signal}`);

      // The reconnection that opened carried the last id seen, and the hub resumed from it.
      const resumed = streamRequests.slice(requests);
      expect(resumed.length, `requests after ${signal}`).toBeGreaterThan(0);
      const last = resumed[resumed.length - 1]!;
      expect((await last.allHeaders())["last-event-id"], `Last-Event-ID after ${signal}`).toBe(lastId);
      const answer = await last.response();
      expect(answer?.status()).toBe(200);
      expect((await answer!.allHeaders())["last-event-id"], `the hub's Last-Event-ID after ${signal}`).toBe(lastId);
    }

    const final = await got(page);
    expect(new Set(final.map((g) => g.id)).size, "no id twice").toBe(final.length);
    expect(final.some((g) => g.data.includes("(private)")), "private updates arrived").toBe(true);
    expect(final.filter((g) => g.data.includes("authors") && g.data.includes("(private)")), "not granted").toEqual([]);
    expect(final.filter((g) => g.data.includes("reviews")), "not subscribed").toEqual([]);
    expect(errors).toEqual([]);

    writeFileSync(`${artifacts}/mercure-events.json`, JSON.stringify({ sent, got: final }, null, 2));
    await page.evaluate((list) => {
      document.body.innerHTML = "";
      const pre = document.createElement("pre");
      pre.textContent = list.map((g) => `${g.id}  [${g.type}]  ${g.data.split("\n")[0]}`).join("\n");
      document.body.append(pre);
    }, final);
    await page.screenshot({ path: `${artifacts}/mercure.png`, fullPage: true });
    await context.close();
  }, 120_000);
});
