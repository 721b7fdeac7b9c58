import { beforeEach, describe, expect, it } from "vitest";
import type { RealtimeError } from "../src/errors.js";
import { PRUNE_MS } from "../src/tabs.js";
import type { RealtimeClient } from "../src/types.js";
import {
  FakeEnv,
  GATEWAY_URL,
  advance,
  apiError,
  envelope,
  settle,
  useFakeGateway,
  type FakeBrowser,
  type FakeBus,
  type FakeLocks,
} from "./fakes.js";

const NAME = "ssegate:" + GATEWAY_URL;

const gw = useFakeGateway({ auto: true });
let locks: FakeLocks;
let bus: FakeBus;
/** A browser tab with its own client. */
let tab: FakeBrowser["tab"];

beforeEach(() => {
  ({ locks, bus, tab } = gw.browser());
});

/** Subscribes and records the ids received. */
function collect(c: RealtimeClient, channel: string): string[] {
  const ids: string[] = [];
  c.subscribe(channel, (e) => ids.push(e.id));
  return ids;
}

function idsOf(channel: string, upTo = Infinity): string[] {
  return gw.server.log.filter((e) => e.channel === channel && Number(e.id) <= upTo).map((e) => e.id);
}

describe("cross-tab sharing", () => {
  it("one stream for all tabs: the leader streams the union and relays events", async () => {
    const a = tab("A");
    const b = tab("B");
    const c = tab("C");
    const ax = collect(a, "x");
    await settle();
    const by = collect(b, "y");
    const cx = collect(c, "x");
    await settle();

    expect([a.isLeader, b.isLeader, c.isLeader]).toEqual([true, false, false]);
    expect(locks.holderOf(NAME)).toBe("A");
    expect(gw.server.streamCalls()).toHaveLength(1);
    expect(gw.server.streamCalls()[0]!.tab).toBe("A");
    expect(gw.server.lastStream().channels).toEqual(new Set(["x", "y"]));
    // x is wanted by two tabs but subscribed once.
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["y"] }]);

    gw.server.publish("x");
    gw.server.publish("y");
    gw.server.publish("x");
    await settle();
    expect(ax).toEqual(["1", "3"]);
    expect(cx).toEqual(["1", "3"]);
    expect(by).toEqual(["2"]);
    expect([a.state, b.state, c.state].map((s) => s.status)).toEqual(["connected", "connected", "connected"]);
    expect([a.lastEventId, b.lastEventId, c.lastEventId]).toEqual(["3", "3", "3"]);
  });

  it("reference-counts channels across tabs; a closing tab's channels are removed", async () => {
    const a = tab("A");
    const b = tab("B");
    const c = tab("C");
    const offA = a.subscribe("x", () => {});
    await settle();
    const offC = c.subscribe("x", () => {});
    b.subscribe("y", () => {});
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["y"] }]);
    offA();
    await settle();
    expect(gw.server.subscriptionCalls()).toHaveLength(1); // C still wants x
    offC();
    await settle();
    b.close();
    await settle();
    // The last channel goes with the stream itself, not with a request.
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["y"] }, { remove: ["x"] }]);
    // Nothing left: the leader closes the stream.
    expect(gw.server.openStreams()).toHaveLength(0);
    expect(a.state.status).toBe("idle");
  });

  it("leader closes: the next tab leads and resumes from the last id it saw, losing nothing", async () => {
    const a = tab("A");
    const b = tab("B");
    const c = tab("C");
    collect(a, "x");
    await settle();
    const bx = collect(b, "x");
    const cy = collect(c, "y");
    await settle();
    for (let i = 0; i < 3; i++) gw.server.publish(i % 2 ? "y" : "x");
    await settle();
    expect(b.lastEventId).toBe("3");

    a.close();
    // Published while nobody streams.
    gw.server.publish("x");
    gw.server.publish("y");
    await settle();
    expect(b.isLeader).toBe(true);
    expect(c.isLeader).toBe(false);
    const resumed = gw.server.streamCalls()[1]!;
    expect(resumed.tab).toBe("B");
    expect(resumed.headers.get("last-event-id")).toBe("3");
    expect(resumed.url.searchParams.getAll("channel").sort()).toEqual(["x", "y"]);

    for (let i = 0; i < 4; i++) gw.server.publish(i % 2 ? "y" : "x");
    await settle();
    expect(bx).toEqual(idsOf("x"));
    expect(cy).toEqual(idsOf("y"));
    expect(c.state.status).toBe("connected");
    expect(c.lastEventId).toBe(String(gw.server.log.length));
  });

  it("leader crashes (no goodbye, late relays): failover without loss or duplicates", async () => {
    const a = tab("A");
    const b = tab("B");
    const c = tab("C");
    collect(a, "only-a");
    await settle();
    const bx = collect(b, "x");
    const cx = collect(c, "x");
    const cy = collect(c, "y");
    await settle();
    for (let i = 0; i < 4; i++) gw.server.publish(i % 2 ? "y" : "x");
    await settle();

    // The tab dies: no more messages, its lock goes to the next tab, its stream breaks.
    bus.kill("A");
    gw.server.block("A");
    gw.server.publish("x"); // 5: A never relays it
    locks.crash("A");
    gw.server.publish("y"); // 6
    await settle();
    expect(b.isLeader).toBe(true);
    const resumed = gw.server.streamCalls().filter((x) => x.tab === "B");
    expect(resumed).toHaveLength(1);
    expect(resumed[0]!.headers.get("last-event-id")).toBe("4");
    // The dead leader's own channel is not streamed any more.
    expect(resumed[0]!.url.searchParams.getAll("channel").sort()).toEqual(["x", "y"]);

    // A relay of the dead leader arriving late: an old event (dropped as a duplicate) and one
    // the new leader has replayed (dropped too).
    bus.inject(NAME, { v: 1, from: "dead-leader", t: "ev", e: envelope("3", "x"), id: "3" });
    bus.inject(NAME, { v: 1, from: "dead-leader", t: "ev", e: envelope("5", "x"), id: "5" });
    await settle();
    gw.server.publish("x");
    gw.server.publish("y");
    await settle();
    expect(bx).toEqual(idsOf("x"));
    expect(cx).toEqual(idsOf("x"));
    expect(cy).toEqual(idsOf("y"));
    expect(c.lastEventId).toBe("8");
  });

  it("a follower that takes over while events are in flight resumes from its own last id", async () => {
    const a = tab("A");
    const b = tab("B");
    collect(a, "x");
    await settle();
    const bx = collect(b, "x");
    await settle();
    gw.server.publish("x");
    gw.server.publish("x");
    await settle();
    // Events reach the leader but the leader dies before relaying them.
    bus.kill("A");
    gw.server.publish("x");
    gw.server.publish("x");
    await settle();
    gw.server.block("A");
    locks.crash("A");
    await settle();
    expect(gw.server.streamCalls().filter((x) => x.tab === "B")[0]!.headers.get("last-event-id")).toBe("2");
    expect(bx).toEqual(["1", "2", "3", "4"]);
  });

  it("forgets tabs that do not answer a new leader", async () => {
    const a = tab("A");
    const b = tab("B");
    const c = tab("C");
    collect(a, "x");
    await settle();
    collect(b, "x");
    collect(c, "ghost-channel");
    await settle();
    // C dies silently, then the leader closes.
    bus.kill("C");
    locks.crash("C");
    a.close();
    await settle();
    expect(b.isLeader).toBe(true);
    expect(gw.server.lastStream().channels).toEqual(new Set(["x", "ghost-channel"]));
    await advance(PRUNE_MS);
    expect(gw.server.lastStream().channels).toEqual(new Set(["x"]));
  });

  it("relays refusals and reconnect(); a late tab learns the state", async () => {
    const a = tab("A");
    const b = tab("B");
    collect(a, "x");
    await settle();
    gw.server.subscriptionReplies.push(apiError(403, "forbidden_channel", { channels: ["secret"] }));
    const errors: RealtimeError[] = [];
    b.subscribe("secret", () => {}, { onError: (e) => errors.push(e) });
    await settle();
    expect(errors.map((e) => [e.code, e.status, e.channels])).toEqual([
      ["forbidden_channel", 403, ["secret"]],
    ]);

    b.reconnect();
    await settle();
    expect(gw.server.streamCalls()).toHaveLength(2);
    expect(gw.server.streamCalls()[1]!.tab).toBe("A");

    const late = tab("L");
    late.subscribe("x", () => {});
    await settle();
    expect(late.state).toEqual({ status: "connected", transport: "stream" });
    expect(late.isLeader).toBe(false);
  });

  it("pause policy: the shared stream pauses only when every tab is hidden", async () => {
    const envA = new FakeEnv();
    const envB = new FakeEnv();
    const opts = { hiddenTabPolicy: "pause" as const, hiddenPauseAfterMs: 1000 };
    const a = tab("A", { ...opts, environment: envA });
    const b = tab("B", { ...opts, environment: envB });
    collect(a, "x");
    await settle();
    const bx = collect(b, "x");
    await settle();
    gw.server.publish("x");
    await settle();
    envA.setHidden(true);
    await advance(5000);
    expect(gw.server.openStreams()).toHaveLength(1); // B is visible
    envB.setHidden(true);
    await advance(1000);
    expect(gw.server.openStreams()).toHaveLength(0);
    expect(b.state).toEqual({ status: "offline", reason: "hidden" });
    gw.server.publish("x");
    envB.setHidden(false);
    await settle();
    expect(gw.server.lastStream().call.headers.get("last-event-id")).toBe("1");
    expect(bx).toEqual(["1", "2"]);
  });

  it("shareAcrossTabs: false keeps one stream per tab", async () => {
    const a = tab("A", { shareAcrossTabs: false });
    const b = tab("B", { shareAcrossTabs: false });
    a.subscribe("x", () => {});
    b.subscribe("x", () => {});
    await settle();
    expect(gw.server.streamCalls().map((x) => x.tab)).toEqual(["A", "B"]);
    expect(bus.posted).toHaveLength(0);
  });
});
