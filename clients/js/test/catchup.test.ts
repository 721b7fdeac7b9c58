// A subscription with since/history that joins a channel already on the connection: its history
// comes over REST (client.history), to it alone, before its live events, once each, in order.
import { MessageChannel } from "node:worker_threads";
import { beforeEach, describe, expect, it } from "vitest";
import { comparePositions } from "../src/channels.js";
import { RealtimeError } from "../src/errors.js";
import { WorkerHub } from "../src/hub.js";
import type { GapInfo, MessagePortLike, RealtimeClient, SharedWorkerLike } from "../src/types.js";
import {
  advance,
  apiError,
  response,
  settle,
  useFakeGateway,
  type Call,
  type FakeBrowser,
  type FakeBus,
  type FakeResponse,
} from "./fakes.js";

const gw = useFakeGateway({ auto: true });
const client = gw.client;

function collect(
  c: RealtimeClient,
  channel: string,
  options?: { since?: string; history?: number; onGap?: (g: GapInfo) => void; onError?: (e: RealtimeError) => void },
): string[] {
  const ids: string[] = [];
  c.subscribe(channel, (e) => ids.push(e.id), options);
  return ids;
}

function publish(channel: string, n: number): void {
  for (let i = 0; i < n; i++) gw.server.publish(channel);
}

/** A client streaming x (a first subscriber, no history) after `n` events were published on x. */
async function streamingX(n: number): Promise<RealtimeClient> {
  const c = client();
  collect(c, "x");
  await settle();
  publish("x", n);
  await settle();
  return c;
}

/** A history reply the test releases: the answer is read from the log when released. */
function gatedHistory(): { reply: (call: Call) => Promise<FakeResponse>; open(): void } {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  return { reply: (call) => gate.then(() => gw.server.historyAnswer(call)), open: () => open() };
}

describe("comparePositions", () => {
  it("compares ids as log positions, numerically per part", () => {
    expect(comparePositions("9", "10")).toBeLessThan(0);
    expect(comparePositions("10", "10")).toBe(0);
    expect(comparePositions("1732500000123-1", "1732500000123-0")).toBeGreaterThan(0);
    expect(comparePositions("7-1", "8-0")).toBeLessThan(0);
    expect(comparePositions("99999999999999999999", "100000000000000000000")).toBeLessThan(0);
  });
});

describe("client.history", () => {
  it("GET /v1/channels/{channel}/history with limit/before and the client's credentials", async () => {
    gw.server.auto = false;
    const reasons: string[] = [];
    const c = client({
      getToken: (r) => {
        reasons.push(r);
        return "tok";
      },
      headers: { "X-App": "1" },
    });
    gw.server.historyReplies.push(
      response(200, { channel: "logs:w1:f1", events: [{ id: "4", channel: "logs:w1:f1", type: "t", time: "", data: 1 }], more: true, last_event_id: "9" }),
    );
    const page = await c.history("logs:w1:f1", { limit: 5, before: "10" });
    expect(page).toEqual({
      events: [{ id: "4", channel: "logs:w1:f1", type: "t", time: "", data: 1 }],
      more: true,
      lastEventId: "9",
    });
    const call = gw.server.historyCalls()[0]!;
    expect(call.url.pathname).toBe("/v1/channels/logs%3Aw1%3Af1/history");
    expect(call.url.searchParams.get("limit")).toBe("5");
    expect(call.url.searchParams.get("before")).toBe("10");
    expect(call.headers.get("authorization")).toBe("Bearer tok");
    expect(call.headers.get("x-app")).toBe("1");
    expect(call.credentials).toBe("same-origin");
    expect(reasons).toEqual(["connect"]);
    // Nothing subscribed: no stream was opened for it.
    expect(gw.server.streamCalls()).toHaveLength(0);
  });

  it("cookies with no getToken; a 401 gets a fresh token and one more try; errors are RealtimeErrors", async () => {
    gw.server.auto = false;
    const cookie = client();
    gw.server.historyReplies.push(response(200, { events: [], more: false, last_event_id: "0" }));
    await cookie.history("a");
    expect(gw.server.historyCalls()[0]!.credentials).toBe("include");
    expect(gw.server.historyCalls()[0]!.headers.get("authorization")).toBeNull();

    const reasons: string[] = [];
    const c = client({ getToken: (r) => (reasons.push(r), r) });
    gw.server.historyReplies.push(apiError(401, "token_expired"), response(200, { events: [], more: false, last_event_id: "3" }));
    expect((await c.history("a")).lastEventId).toBe("3");
    expect(reasons).toEqual(["connect", "unauthorized"]);
    expect(gw.server.historyCalls()[2]!.headers.get("authorization")).toBe("Bearer unauthorized");

    gw.server.historyReplies.push(apiError(403, "forbidden_channel", { channels: ["a"] }));
    const refused = await c.history("a").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(RealtimeError);
    expect((refused as RealtimeError).code).toBe("forbidden_channel");
    expect((refused as RealtimeError).status).toBe(403);

    gw.server.historyReplies.push("network");
    expect(((await c.history("a").catch((e: unknown) => e)) as RealtimeError).code).toBe("network");
    expect(((await c.history("logs:*").catch((e: unknown) => e)) as RealtimeError).code).toBe("invalid_channel");
  });
});

describe("client.history: a request that gets no answer", () => {
  it("fails with `timeout` after 15 s (or timeoutMs), aborting the request; a signal aborts it with `aborted`", async () => {
    gw.server.auto = false;
    const c = client();
    gw.server.historyReplies.push("hang");
    const late = c.history("a").catch((e: unknown) => e);
    await advance(14_000);
    const call = gw.server.historyCalls()[0]!;
    expect(call.signal?.aborted).toBe(false);
    await advance(1_000);
    const err = (await late) as RealtimeError;
    expect(err).toBeInstanceOf(RealtimeError);
    expect([err.code, err.status, err.message]).toEqual(["timeout", 0, "history: no answer within 15000 ms"]);
    expect(call.signal?.aborted).toBe(true);

    gw.server.historyReplies.push("hang");
    const short = c.history("a", { timeoutMs: 500 }).catch((e: unknown) => e);
    await advance(500);
    expect(((await short) as RealtimeError).code).toBe("timeout");

    const ctrl = new AbortController();
    gw.server.historyReplies.push("hang");
    const stopped = c.history("a", { signal: ctrl.signal }).catch((e: unknown) => e);
    await settle();
    ctrl.abort();
    expect(((await stopped) as RealtimeError).code).toBe("aborted");
    expect(gw.server.historyCalls()[2]!.signal?.aborted).toBe(true);
    // Aborted before it starts: no request at all.
    const before = await c.history("a", { signal: ctrl.signal }).catch((e: unknown) => e);
    expect((before as RealtimeError).code).toBe("aborted");
    expect(gw.server.historyCalls()).toHaveLength(3);

    // An answer in time clears the deadline: nothing fails later.
    gw.server.historyReplies.push(response(200, { events: [], more: false, last_event_id: "0" }));
    expect((await c.history("a")).lastEventId).toBe("0");
    await advance(20_000);
  });
});

describe("a second subscriber in the same tab", () => {
  it("gets the channel's last N over REST, alone, then live; the first subscriber is untouched", async () => {
    const c = client();
    const first = collect(c, "x");
    await settle();
    publish("x", 5);
    await settle();
    expect(first).toEqual(["1", "2", "3", "4", "5"]);
    const second = collect(c, "x", { history: 3 });
    await settle();
    expect(gw.server.historyCalls().map((x) => x.url.search)).toEqual(["?limit=3"]);
    expect(second).toEqual(["3", "4", "5"]);
    publish("x", 1);
    await settle();
    expect(second).toEqual(["3", "4", "5", "6"]);
    expect(first).toEqual(["1", "2", "3", "4", "5", "6"]);
    expect(gw.server.subscriptionCalls()).toHaveLength(0);
  });

  it("live events arriving while REST is out are held, then delivered after the history, once", async () => {
    const c = await streamingX(4);
    // The answer is read at the request (ends at 4), live 5 and 6 arrive before it.
    let answer!: () => void;
    gw.server.historyReplies.push((call) => {
      const r = gw.server.historyAnswer(call);
      return new Promise<FakeResponse>((res) => (answer = () => res(r)));
    });
    const second = collect(c, "x", { history: 2 });
    await settle();
    publish("x", 2);
    await settle();
    expect(second).toEqual([]);
    answer();
    await settle();
    expect(second).toEqual(["3", "4", "5", "6"]);
  });

  it("an answer that overlaps the held live events: no duplicate, none missing", async () => {
    const c = await streamingX(4);
    const gate = gatedHistory();
    gw.server.historyReplies.push(gate.reply);
    const second = collect(c, "x", { history: 3 });
    await settle();
    publish("x", 2); // 5, 6: held, and in the answer (read after them)
    await settle();
    gate.open();
    await settle();
    expect(second).toEqual(["4", "5", "6"]);
    publish("x", 1);
    await settle();
    expect(second).toEqual(["4", "5", "6", "7"]);
  });

  it("REST ahead of the stream: events the stream brings later are not repeated", async () => {
    const c = await streamingX(3);
    const s = gw.server.lastStream();
    // 4 reaches the log (and REST) before the stream delivers it.
    const streamClosed = s.channels;
    s.channels = new Set();
    const e4 = gw.server.publish("x");
    s.channels = streamClosed;
    const second = collect(c, "x", { history: 2 });
    await settle();
    expect(second).toEqual(["3", "4"]);
    s.deliver(e4);
    publish("x", 1);
    await settle();
    expect(second).toEqual(["3", "4", "5"]);
  });

  it("since: the events after it, over REST; more than 1000 → the newest 1000 and a gap", async () => {
    const c = await streamingX(6);
    const gaps: GapInfo[] = [];
    const after = collect(c, "x", { since: "4", onGap: (g) => gaps.push(g) });
    await settle();
    expect(after).toEqual(["5", "6"]);
    expect(gaps).toEqual([]);

    publish("x", 1000); // 7..1006
    await settle();
    const all = collect(c, "x", { since: "3", onGap: (g) => gaps.push(g) });
    await settle();
    expect(all.length).toBe(1000);
    expect(all[0]).toBe("7");
    expect(all[999]).toBe("1006");
    expect(gaps).toEqual([{ lastEventId: "3", oldestId: "7", channel: "x" }]);

    // Exactly 1000 after since: no gap (the next older one is since itself).
    const exact: GapInfo[] = [];
    const fromSix = collect(c, "x", { since: "6", onGap: (g) => exact.push(g) });
    await settle();
    expect(fromSix.length).toBe(1000);
    expect(exact).toEqual([]);
  });

  it("since: an empty page with more (a crowded channel) is not the since reached: a gap", async () => {
    const c = await streamingX(3);
    gw.server.historyReplies.push(response(200, { channel: "x", events: [], more: true, last_event_id: "3" }));
    const gaps: GapInfo[] = [];
    const second = collect(c, "x", { since: "1", onGap: (g) => gaps.push(g) });
    await settle();
    expect(gaps).toEqual([{ lastEventId: "1", oldestId: null, channel: "x" }]);
    publish("x", 1);
    await settle();
    expect(second).toEqual(["4"]);
  });

  it.each([
    ["fails", "log_unavailable", 0],
    ["gets no answer (the request's deadline)", "timeout", 15_000],
  ] as const)("REST %s: live only, onError with the cause and a gap naming the channel; what was held comes", async (_, code, wait) => {
    const c = await streamingX(3);
    gw.server.historyReplies.push(code === "timeout" ? "hang" : apiError(503, code));
    const errors: string[] = [];
    const gaps: GapInfo[] = [];
    const second = collect(c, "x", {
      history: 5,
      onError: (e) => errors.push(e.code),
      onGap: (g) => gaps.push(g),
    });
    await settle();
    publish("x", 1);
    await settle();
    if (wait > 0) {
      expect(second).toEqual([]); // held while the history loads
      await advance(wait);
    }
    expect(errors).toEqual([code]);
    expect(gaps).toEqual([{ lastEventId: "", oldestId: null, channel: "x" }]);
    expect(second).toEqual(["4"]);
    expect(c.subscriptionState("x")!.status).toBe("subscribed");
    publish("x", 1);
    await settle();
    expect(second).toEqual(["4", "5"]);
  });

  it("joining a channel still being added with other options: REST once it is on the connection", async () => {
    const c = client();
    collect(c, "other");
    await settle();
    publish("x", 5);
    const first = collect(c, "x", { history: 1 });
    const second = collect(c, "x", { history: 4 });
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["x"], history: 1 }]);
    expect(first).toEqual(["5"]);
    expect(second).toEqual(["2", "3", "4", "5"]);
    publish("x", 1);
    await settle();
    expect(first).toEqual(["5", "6"]);
    expect(second).toEqual(["2", "3", "4", "5", "6"]);
  });

  it("subscribing again while the channel's remove request is out: the add that follows carries the since", async () => {
    const c = client();
    collect(c, "other");
    const off = c.subscribe("x", () => {});
    await settle();
    publish("x", 2);
    await settle();
    const gate = () => {
      let open!: () => void;
      const p = new Promise<void>((r) => (open = r));
      return { open: () => open(), reply: (call: Call) => p.then(() => gw.server.changeSubscriptions(call)) };
    };
    const removed = gate();
    const added = gate();
    gw.server.subscriptionReplies.push(removed.reply, added.reply);
    off();
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ remove: ["x"] }]);
    const again = collect(c, "x", { since: "2" });
    await settle();
    removed.open();
    await settle();
    publish("x", 1); // between the remove and the add
    added.open();
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ remove: ["x"] }, { add: ["x"], since: "2" }]);
    expect(again).toEqual(["3"]);
    expect(gw.server.historyCalls()).toHaveLength(0);
    publish("x", 1);
    await settle();
    expect(again).toEqual(["3", "4"]);
  });

  it("subscribing again while the remove waits behind another request: the channel stays, history over REST", async () => {
    const c = client();
    collect(c, "other");
    const off = c.subscribe("x", () => {});
    await settle();
    publish("x", 2);
    await settle();
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    gw.server.subscriptionReplies.push((call) => gate.then(() => gw.server.changeSubscriptions(call)));
    collect(c, "y");
    await settle();
    off(); // its remove waits for the add of y
    await settle();
    const again = collect(c, "x", { since: "1" });
    await settle();
    open();
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["y"] }]);
    expect(again).toEqual(["2"]);
    publish("x", 1);
    await settle();
    expect(again).toEqual(["2", "3"]);
    expect(c.subscriptionState("x")!.status).toBe("subscribed");
  });

  it("a channel a pattern of the connection covers gets no history from the gateway: over REST", async () => {
    const c = client();
    const all = collect(c, "logs:w1:*");
    await settle();
    publish("logs:w1:f1", 3);
    await settle();
    const f1 = collect(c, "logs:w1:f1", { history: 2 });
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["logs:w1:f1"] }]);
    expect(gw.server.historyCalls()).toHaveLength(1);
    expect(f1).toEqual(["2", "3"]);
    publish("logs:w1:f1", 1);
    await settle();
    expect(f1).toEqual(["2", "3", "4"]);
    expect(all).toEqual(["1", "2", "3", "4"]);
  });

  it("a later subscriber with a shorter history does not get the first one's history frames", async () => {
    const c = client();
    collect(c, "other");
    await settle();
    publish("x", 5);
    const first = collect(c, "x", { history: 4 });
    const second = collect(c, "x", { history: 1 });
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["x"], history: 4 }]);
    expect(first).toEqual(["2", "3", "4", "5"]);
    expect(second).toEqual(["5"]);
    publish("x", 1);
    await settle();
    expect(second).toEqual(["5", "6"]);
  });
});

describe("tabs sharing one stream", () => {
  let bus: FakeBus;
  let tab: FakeBrowser["tab"];
  beforeEach(() => {
    ({ bus, tab } = gw.browser());
  });

  it("a follower tab opening a channel the leader streams gets its history over REST (its own fetch)", async () => {
    const a = tab("A");
    const b = tab("B");
    const ax = collect(a, "x");
    await settle();
    publish("x", 5);
    await settle();
    // B's first subscription: B had not heard which channels the leader streams.
    const bx = collect(b, "x", { history: 3 });
    await settle();
    expect(bx).toEqual(["3", "4", "5"]);
    expect(gw.server.historyCalls().map((x) => x.tab)).toEqual(["B"]);
    expect(gw.server.subscriptionCalls()).toHaveLength(0);
    // The leader told B its start could not be used (x was on the connection already).
    expect(bus.posted.filter((p) => p.message.t === "st").map((p) => [p.tab, p.message.c, p.message.ok])).toEqual([
      ["A", "x", false],
    ]);
    // B now knows x is streamed: another subscriber goes to REST at once.
    const again = collect(b, "x", { history: 1 });
    await settle();
    expect(again).toEqual(["5"]);
    publish("x", 1);
    await settle();
    expect(bx).toEqual(["3", "4", "5", "6"]);
    expect(again).toEqual(["5", "6"]);
    expect(ax).toEqual(["1", "2", "3", "4", "5", "6"]);
    // B's start is used: a new leader does not start the channel again.
    a.close();
    await settle();
    publish("x", 1);
    await settle();
    expect(gw.server.streamCalls()[1]!.url.searchParams.get("history")).toBeNull();
    expect(bx).toEqual(["3", "4", "5", "6", "7"]);
  });

  it("a follower with no verdict from the leader (an older bundle): REST after a grace period, not held forever", async () => {
    const a = tab("A");
    const b = tab("B");
    const ax = collect(a, "x");
    await settle();
    publish("x", 5);
    await settle();
    bus.drop = (m) => m.t === "st"; // the leader never says whether B's start was used
    const bx = collect(b, "x", { history: 3 });
    await settle();
    publish("x", 1);
    await settle();
    expect(bx).toEqual([]);
    await advance(3_000);
    expect(bx).toEqual(["4", "5", "6"]);
    publish("x", 1);
    await settle();
    expect(bx).toEqual(["4", "5", "6", "7"]);
    expect(ax).toEqual(["1", "2", "3", "4", "5", "6", "7"]);
  });

  it("a subscription catching up holds 10,000 events at most, then a gap and live", async () => {
    const a = tab("A");
    const b = tab("B");
    collect(a, "x");
    await settle();
    bus.drop = (m) => m.t === "st";
    const gaps: GapInfo[] = [];
    const bx = collect(b, "x", { since: "0", onGap: (g) => gaps.push(g) });
    await settle();
    publish("x", 10_001);
    await settle();
    expect(gaps).toEqual([{ lastEventId: "0", oldestId: "1", channel: "x" }]);
    expect(bx).toHaveLength(10_001);
    expect(bx[10_000]).toBe("10001");
  });

  it("a follower's history the leader did use comes from the stream, not REST", async () => {
    const a = tab("A");
    const b = tab("B");
    collect(a, "other");
    await settle();
    publish("x", 4);
    const bx = collect(b, "x", { history: 2 });
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["x"], history: 2 }]);
    expect(bx).toEqual(["3", "4"]);
    expect(gw.server.historyCalls()).toHaveLength(0);
  });

  it("the leader tab subscribing with history to a channel a follower brought: REST", async () => {
    const a = tab("A");
    const b = tab("B");
    collect(a, "other");
    await settle();
    collect(b, "x");
    await settle();
    publish("x", 3);
    await settle();
    const ax = collect(a, "x", { history: 2 });
    await settle();
    expect(ax).toEqual(["2", "3"]);
    expect(gw.server.historyCalls().map((x) => x.tab)).toEqual(["A"]);
  });
});

describe("the SharedWorker", () => {
  function tab(label: string, hub: WorkerHub): RealtimeClient {
    const { port1, port2 } = new MessageChannel();
    gw.closePortsAfter(port1, port2);
    hub.connect(port2 as unknown as MessagePortLike);
    const worker: SharedWorkerLike = { port: port1 as unknown as MessagePortLike };
    return client({ sharing: "sharedworker", sharedWorker: () => worker, fetch: gw.server.fetchFor(label) });
  }

  async function flush(): Promise<void> {
    for (let i = 0; i < 4; i++) {
      await settle();
      await new Promise<void>((r) => setImmediate(r));
    }
  }

  it("a tab opening a channel the worker already streams gets its history over REST, alone", async () => {
    const hub = new WorkerHub({ fetch: gw.server.fetchFor("worker"), random: () => 0.5 });
    const a = tab("A", hub);
    const b = tab("B", hub);
    const ax = collect(a, "x");
    await flush();
    publish("x", 4);
    await flush();
    const bx = collect(b, "x", { history: 2 });
    await flush();
    expect(bx).toEqual(["3", "4"]);
    expect(gw.server.historyCalls().map((x) => x.tab)).toEqual(["B"]);
    publish("x", 1);
    await flush();
    expect(bx).toEqual(["3", "4", "5"]);
    expect(ax).toEqual(["1", "2", "3", "4", "5"]);
    expect(gw.server.subscriptionCalls()).toHaveLength(0);
  });
});
