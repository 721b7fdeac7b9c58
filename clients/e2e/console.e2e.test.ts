// The built-in admin console of `ssegate serve` (`/admin`), in Chromium, against two nodes of
// a Redis-backed cluster: sign-in with an admin token (a non-admin token is refused with the
// API's sentence), both nodes listed, a user's stream on the other node found and kicked
// (from the keyboard; the stream gets `closing` `kicked`), a test event published from the
// form reaching a subscriber on the other node, a Redis source of the other node stopped and
// started, a refused request shown as an incident, the phone layout, screenshots.
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { artifacts, pageErrors, sleep, until } from "./harness";
import { hs256, withServe } from "./with-serve";
import { withCluster, type ClusterNode } from "./with-cluster";

const SECRET = randomBytes(32).toString("hex");
const exp = () => Math.floor(Date.now() / 1000) + 3600;

/** One SSE frame as a client read it. */
interface Frame {
  event: string;
  id: string | null;
  data: string;
}

/** A stream of `user` opened with fetch from Node, its frames parsed as they come. */
class Subscriber {
  readonly frames: Frame[] = [];
  ended = false;
  private readonly ctrl = new AbortController();

  static async open(node: ClusterNode, user: string, channels: string[]): Promise<Subscriber> {
    const token = hs256({ sub: user, exp: exp(), ssegate: { subscribe: ["e2e:**"], publish: [], admin: false } }, SECRET);
    const sub = new Subscriber();
    const qs = channels.map((c) => `channel=${encodeURIComponent(c)}`).join("&");
    const res = await fetch(`${node.url}/v1/stream?${qs}`, {
      headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
      signal: sub.ctrl.signal,
    });
    expect(res.status, `stream of ${user}`).toBe(200);
    void sub.read(res.body!);
    await until(async () => sub.frames.some((f) => f.event === "connected"), Boolean, `${user}'s stream to open`);
    return sub;
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let buf = "";
    let frame: Frame = { event: "message", id: null, data: "" };
    let data: string[] = [];
    try {
      const reader = body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            if (data.length) this.frames.push({ ...frame, data: data.join("\n") });
            frame = { event: "message", id: null, data: "" };
            data = [];
          } else if (!line.startsWith(":")) {
            const c = line.indexOf(":");
            const field = c < 0 ? line : line.slice(0, c);
            const value = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
            if (field === "event") frame.event = value;
            else if (field === "id") frame.id = value;
            else if (field === "data") data.push(value);
          }
        }
      }
    } catch {
      // aborted
    }
    this.ended = true;
  }

  close(): void {
    this.ctrl.abort();
  }
}

describe("admin console (ssegate serve, two nodes on Redis)", () => {
  const ctx = withCluster({
    nodes: 2,
    server: ["drain_window_ms = 500"],
    toml: [
      "[auth]",
      `jwt_secret = "${SECRET}"`,
      "",
      "[cluster]",
      "heartbeat_ms = 300",
      "node_timeout_ms = 1500",
      "",
      // A source that needs nothing but the Redis the cluster already has.
      "[[sources]]",
      'name = "pings"',
      'type = "redis"',
      'url = "{redis}"',
      'channels = ["e2e-pings"]',
      'channel = "e2e:pings"',
      'event_type = "ping"',
    ].join("\n"),
  });

  it("lists the nodes, finds and kicks a user on the other node, publishes, stops and starts a source", async () => {
    const { cluster, browser } = ctx;
    const [a, b] = [cluster.node("node-a"), cluster.node("node-b")];
    const admin = hs256({ sub: "ops", exp: exp(), ssegate: { subscribe: ["**"], publish: ["**"], admin: true } }, SECRET);
    const notAdmin = hs256({ sub: "u9", exp: exp(), ssegate: { subscribe: ["e2e:**"], publish: [], admin: false } }, SECRET);

    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const errors = pageErrors(context);
    const consoleErrors: string[] = [];
    const page = await context.newPage();
    page.on("console", (m) => {
      // A refused API call is logged by Chromium as a failed resource load: expected here.
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(m.text());
    });
    const byTestId = (id: string) => page.getByTestId(id);

    // The page and its assets: no-cache, a strict policy.
    const res = await page.goto(`${a.url}/admin`);
    expect(res!.status()).toBe(200);
    const csp = res!.headers()["content-security-policy"] ?? "";
    expect(csp).toContain("default-src 'self'");
    expect(csp).not.toContain("unsafe-inline");
    expect(res!.headers()["cache-control"]).toBe("no-cache");

    // No cookie, no token: the form. A token without the admin grant is refused, with the
    // API's sentence.
    await byTestId("sign-in-form").waitFor();
    await byTestId("token").fill(notAdmin);
    await byTestId("sign-in").click();
    await until(() => byTestId("error").textContent(), (t) => !!t?.includes("admin_required"), "the admin_required sentence");
    expect(await byTestId("sign-in-form").isVisible()).toBe(true);

    await page.getByLabel("Admin token").fill(admin);
    await byTestId("sign-in").click();
    await byTestId("nodes-panel").waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem("ssegate.console.token"))).toBe(admin);

    // Both nodes, from the admin stream's status.
    const nodeRows = page.locator('[data-testid="nodes-table"] tbody tr[data-node]');
    await until(
      () => nodeRows.evaluateAll((rows) => rows.map((r) => (r as HTMLElement).dataset.node)),
      (ids) => ids.length === 2 && ids.includes("node-a") && ids.includes("node-b"),
      "both nodes listed",
    );
    await until(() => page.getAttribute('[data-testid="live"]', "data-state"), (s) => s === "live", "the admin stream");
    expect(await page.locator('[data-testid="nodes-table"] tr[data-node="node-b"]').getAttribute("data-state")).toBe("ready");

    // A user's stream on node B (a Node client), and a subscriber for the publish.
    const u1 = await Subscriber.open(b, "u1", ["e2e:room1"]);
    await until(
      () => page.locator('[data-testid="nodes-table"] tr[data-node="node-b"] td[data-field="connections"]').textContent(),
      (t) => t === "1",
      "node B's connection count",
    );

    // Publish from the form (to node A); u1's stream on node B receives it.
    await byTestId("pub-channel").fill("e2e:room1");
    await byTestId("pub-type").fill("console.test");
    await page.getByLabel("Data (JSON)").fill('{"hello": "<b>world</b>", "n": 1}');
    await byTestId("pub-send").click();
    await until(() => byTestId("publish-result").getAttribute("data-id"), (id) => !!id, "the publish's id");
    const id = (await byTestId("publish-result").getAttribute("data-id"))!;
    expect(await byTestId("publish-result").textContent()).toContain(id);
    const got = await until(
      async () => u1.frames.find((f) => f.event === "console.test"),
      (f) => f !== undefined,
      "the test event on node B",
    );
    expect(got!.id).toBe(id);
    expect(JSON.parse(got!.data)).toMatchObject({ channel: "e2e:room1", type: "console.test", data: { hello: "<b>world</b>", n: 1 } });

    // A bad publish shows the API's error.
    await byTestId("pub-type").fill("closing");
    await byTestId("pub-send").click();
    await until(() => byTestId("publish-result").textContent(), (t) => !!t?.includes("invalid_type"), "invalid_type");

    // Channels: e2e:room1 has its subscriber (the panel refreshes every 3 s).
    await until(
      () => page.locator('[data-testid="channels-table"] tr[data-channel="e2e:room1"] td[data-field="subscribers"]').textContent(),
      (t) => t === "1",
      "the channel's subscriber in the channels panel",
    );
    // Its events/s, from the growth of its `events` counter between two refreshes.
    await until(
      () => page.locator('[data-testid="channels-table"] tr[data-channel="e2e:room1"] td[data-field="rate"]').textContent(),
      (t) => t !== null && /^\d+(\.\d)?$/.test(t),
      "the channel's events/s",
    );

    // Find u1's connection (on node B) from node A's console.
    await byTestId("conn-user").fill("u1");
    await byTestId("conn-search").click();
    const u1Row = page.locator('[data-testid="connections-table"] tbody tr[data-user="u1"]');
    await u1Row.first().waitFor();
    expect(await u1Row.count()).toBe(1);
    expect(await u1Row.locator('td[data-field="node"]').textContent()).toBe("node-b");
    expect(await u1Row.locator('td[data-field="channels"]').textContent()).toBe("e2e:room1");

    // The keyboard alone: from the search button, Tab until the Kick button, Enter.
    await byTestId("conn-search").focus();
    let reached = false;
    for (let i = 0; i < 10 && !reached; i++) {
      await page.keyboard.press("Tab");
      reached = await page.evaluate(() => document.activeElement?.getAttribute("data-testid") === "kick");
    }
    expect(reached, "Tab reaches the Kick button").toBe(true);
    // The focus is visible (an outline).
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement!).outlineStyle);
    expect(outline).not.toBe("none");
    await page.keyboard.press("Enter");
    await until(() => byTestId("kick-result").textContent(), (t) => !!t?.includes("closed 1"), "closed 1");
    await until(async () => u1.ended, Boolean, "u1's stream to end");
    const closing = u1.frames.filter((f) => f.event === "closing");
    expect(closing.map((f) => JSON.parse(f.data).reason)).toEqual(["kicked"]);
    await until(() => u1Row.count(), (n) => n === 0, "the kicked connection gone from the table");

    // The Redis source of node B, stopped and started from node A's console.
    const pingsB = page.locator('[data-testid="sources-table"] tr[data-source="pings"][data-node="node-b"]');
    await until(() => pingsB.getAttribute("data-state"), (s) => s === "running", "node B's source running");
    expect(await page.locator('[data-testid="sources-table"] tr[data-source="pings"][data-node="node-a"]').count()).toBe(1);
    await pingsB.getByTestId("source-stop").click();
    await until(() => pingsB.getAttribute("data-state"), (s) => s === "stopped", "node B's source stopped");
    const stateOnB = async () => {
      const s = (await (await fetch(`${b.url}/v1/status`, { headers: { Authorization: `Bearer ${admin}` } })).json()) as {
        sources: { name: string; state: string }[];
      };
      return s.sources.find((x) => x.name === "pings")?.state;
    };
    expect(await stateOnB(), "node B itself says stopped").toBe("stopped");
    expect(
      await page.locator('[data-testid="sources-table"] tr[data-source="pings"][data-node="node-a"]').getAttribute("data-state"),
      "node A's source untouched",
    ).toBe("running");
    await pingsB.getByTestId("source-start").click();
    await until(() => pingsB.getAttribute("data-state"), (s) => s === "running", "node B's source running again");
    await until(stateOnB, (s) => s === "running", "node B itself says running");
    // Started for real: once both nodes listen again, a Redis message becomes an event of
    // node B's source (its count in the console).
    await until(
      () => cluster.redis.command("PUBSUB", "NUMSUB", "e2e-pings"),
      (r) => Array.isArray(r) && r[1] === 2,
      "both nodes subscribed to e2e-pings",
    );
    expect(await cluster.redis.command("PUBLISH", "e2e-pings", JSON.stringify({ n: 1 }))).toBe(2);
    await until(() => pingsB.locator('td[data-field="events"]').textContent(), (t) => t === "1", "node B's source event");

    // A refused request on node A is an incident, live.
    const refused = await fetch(`${a.url}/v1/stream?channel=e2e:room1`, { headers: { Authorization: "Bearer not-a-token" } });
    expect(refused.status).toBe(401);
    await page
      .locator('[data-testid="incidents-table"] tbody tr[data-kind="auth"]')
      .first()
      .waitFor({ timeout: 10_000 });

    await page.screenshot({ path: `${artifacts}/console.png`, fullPage: true });

    // A phone: the panels stack, the page never scrolls sideways (tables scroll inside).
    await page.setViewportSize({ width: 375, height: 740 });
    await sleep(300);
    const layout = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      panels: Array.from(document.querySelectorAll("main section.panel")).map((s) => {
        const r = s.getBoundingClientRect();
        return { left: Math.round(r.left), right: Math.round(r.right), top: Math.round(r.top) };
      }),
    }));
    expect(layout.scrollWidth, "no horizontal page overflow at 375 px").toBeLessThanOrEqual(375);
    expect(layout.panels.length).toBe(6);
    for (const p of layout.panels) {
      expect(p.left).toBeGreaterThanOrEqual(0);
      expect(p.right).toBeLessThanOrEqual(375);
    }
    const tops = layout.panels.map((p) => p.top);
    expect(tops, "one column").toEqual([...tops].sort((x, y) => x - y));
    expect(new Set(tops).size).toBe(tops.length);
    await page.screenshot({ path: `${artifacts}/console-phone.png`, fullPage: true });

    // Drain node B from the console (after its confirm): it drains, exits, and leaves the list.
    await page.setViewportSize({ width: 1280, height: 900 });
    const dialogs: string[] = [];
    page.once("dialog", (d) => {
      dialogs.push(d.message());
      void d.accept();
    });
    await page.locator('[data-testid="nodes-table"] tr[data-node="node-b"]').getByTestId("drain").click();
    await until(() => byTestId("message").textContent(), (t) => !!t?.includes("node-b is draining"), "the drain's answer");
    expect(dialogs).toHaveLength(1);
    await until(async () => !b.running, Boolean, "node B to exit");
    await until(
      () => nodeRows.evaluateAll((rows) => rows.map((r) => (r as HTMLElement).dataset.node)),
      (ids) => ids.length === 1 && ids[0] === "node-a",
      "node B gone from the list",
    );

    // Sign out: the token is forgotten, the form is back.
    await byTestId("sign-out").click();
    await byTestId("sign-in-form").waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem("ssegate.console.token"))).toBeNull();

    u1.close();
    expect(errors).toEqual([]);
    expect(consoleErrors).toEqual([]);
    await context.close();
  });

  it("signs in by the auth cookie, with no form and no token kept", async () => {
    const { cluster, browser } = ctx;
    const a = cluster.node("node-a");
    const admin = hs256({ sub: "ops", exp: exp(), ssegate: { subscribe: [], publish: [], admin: true } }, SECRET);
    const context = await browser.newContext();
    const errors = pageErrors(context);
    await context.addCookies([
      { name: "ssegate_token", value: admin, domain: "127.0.0.1", path: "/", httpOnly: true, sameSite: "Strict" },
    ]);
    const page = await context.newPage();
    await page.goto(`${a.url}/admin/`);
    await page.getByTestId("nodes-panel").waitFor();
    expect(await page.getByTestId("whoami").textContent()).toBe("signed in by cookie");
    expect(await page.getByTestId("sign-out").isVisible()).toBe(false);
    expect(await page.getByTestId("sign-in-form").isVisible()).toBe(false);
    await until(() => page.getAttribute('[data-testid="live"]', "data-state"), (s) => s === "live", "the admin stream by cookie");
    await page.locator('[data-testid="nodes-table"] tr[data-node="node-a"]').waitFor();
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    expect(errors).toEqual([]);
    await context.close();
  });
});

describe("admin console (ssegate serve, one node on the file log)", () => {
  const ctx = withServe(["[auth]", `jwt_secret = "${SECRET}"`].join("\n"));

  it("shows the node alone, live, with no cluster bus", async () => {
    const { serve, browser } = ctx;
    const admin = hs256({ sub: "ops", exp: exp(), ssegate: { subscribe: [], publish: [], admin: true } }, SECRET);
    const context = await browser.newContext();
    const errors = pageErrors(context);
    const page = await context.newPage();
    await page.goto(`${serve.url}/admin`);
    await page.getByLabel("Admin token").fill(admin);
    await page.getByTestId("sign-in").click();
    await until(() => page.getAttribute('[data-testid="live"]', "data-state"), (s) => s === "live", "the admin stream");
    const rows = page.locator('[data-testid="nodes-table"] tbody tr[data-node]');
    await rows.first().waitFor();
    expect(await rows.count()).toBe(1);
    expect(await rows.first().locator("th").textContent()).toContain("(this node)");
    expect(await page.getByTestId("cluster-note").textContent()).toContain("no cluster bus");
    expect(await page.locator('[data-testid="sources-table"] tbody').textContent()).toBe("no sources configured");
    // Asking for a file that is not there: the API's JSON 404, not a page.
    const missing = await fetch(`${serve.url}/admin/secrets.js`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: { code: string } }).error.code).toBe("not_found");
    expect(errors).toEqual([]);
    await context.close();
  });
});
