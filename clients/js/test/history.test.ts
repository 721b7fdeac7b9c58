import { describe, expect, it } from "vitest";
import type { GapInfo, RealtimeClient, SharingState, SubscriptionState } from "../src/types.js";
import { advance, apiError, envelope, response, settle, useFakeGateway } from "./fakes.js";

const gw = useFakeGateway();
const client = gw.client;

function collect(c: RealtimeClient, channel: string, options?: { since?: string; history?: number }): string[] {
  const ids: string[] = [];
  c.subscribe(channel, (e) => ids.push(e.id), options);
  return ids;
}

describe("since / history at connect", () => {
  it("channels present at connect with the same options: history= in the URL, once", async () => {
    const c = client();
    collect(c, "a", { history: 50 });
    collect(c, "b", { history: 50 });
    await settle();
    const first = gw.server.streamCalls()[0]!.url.searchParams;
    expect(first.getAll("channel")).toEqual(["a", "b"]);
    expect(first.get("history")).toBe("50");
    expect(first.get("since")).toBeNull();
    const s = gw.server.lastStream();
    s.connected("c_1", undefined, 15000, "9");
    s.deliver(envelope("3", "a")); // history events come as normal events, with ids
    s.deliver(envelope("7", "b"));
    await settle();
    expect(c.lastEventId).toBe("7");
    s.fail();
    await advance(1000);
    // The reconnect resumes: no history again.
    const again = gw.server.streamCalls()[1]!;
    expect(again.url.searchParams.get("history")).toBeNull();
    expect(again.headers.get("last-event-id")).toBe("7");
    expect(gw.server.subscriptionCalls()).toHaveLength(0);
  });

  it("since= in the URL when every channel starts after the same id", async () => {
    const c = client();
    collect(c, "a", { since: "40" });
    await settle();
    const call = gw.server.streamCalls()[0]!;
    expect(call.url.searchParams.get("since")).toBe("40");
    expect(call.headers.get("last-event-id")).toBeNull();
    // Broken before any event: the reconnect resumes from `since` (not from now, not again with since=).
    gw.server.lastStream().connected("c_1", undefined, 15000, "90");
    await settle();
    gw.server.lastStream().fail();
    await advance(1000);
    const again = gw.server.streamCalls()[1]!;
    expect(again.url.searchParams.get("since")).toBeNull();
    expect(again.headers.get("last-event-id")).toBe("40");
  });

  it("mixed options: the plain channels open the stream, the others are added by POST, one request per set", async () => {
    const c = client();
    collect(c, "plain");
    collect(c, "h1", { history: 10 });
    collect(c, "h2", { history: 10 });
    collect(c, "s", { since: "5" });
    await settle();
    const url = gw.server.streamCalls()[0]!.url.searchParams;
    expect(url.getAll("channel")).toEqual(["plain"]);
    expect(url.get("history")).toBeNull();
    expect(url.get("since")).toBeNull();
    gw.server.lastStream().connected("c_1");
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([
      { add: ["s"], since: "5" },
      { add: ["h1", "h2"], history: 10 },
    ]);
    expect(gw.server.lastStream().channels).toEqual(new Set(["plain", "h1", "h2", "s"]));
  });

  it("a resume position and new channels with options: only the resumable ones in the URL", async () => {
    const c = client({ lastEventId: "12" });
    collect(c, "old");
    collect(c, "new", { history: 3 });
    await settle();
    const call = gw.server.streamCalls()[0]!;
    expect(call.url.searchParams.getAll("channel")).toEqual(["old"]);
    expect(call.headers.get("last-event-id")).toBe("12");
    gw.server.lastStream().connected();
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["new"], history: 3 }]);
  });

  it("every channel new with options: opens with them and without the old position", async () => {
    const c = client({ lastEventId: "12" });
    collect(c, "x", { history: 3 });
    await settle();
    const call = gw.server.streamCalls()[0]!;
    expect(call.url.searchParams.get("history")).toBe("3");
    expect(call.headers.get("last-event-id")).toBeNull();
  });

  it("history= in the URL only while channels × N stays within the gateway's 1000 in all; the rest by POST", async () => {
    const c = client();
    for (const ch of ["a", "b", "c", "d", "e", "f"]) collect(c, ch, { history: 200 });
    await settle();
    const url = gw.server.streamCalls()[0]!.url.searchParams;
    expect(url.getAll("channel")).toEqual(["a", "b", "c", "d", "e"]);
    expect(url.get("history")).toBe("200");
    gw.server.lastStream().connected("c_1");
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["f"], history: 200 }]);
  });

  it("since and history together: never both in the URL (a resume gets no history); nothing at or before since", async () => {
    const c = client();
    const a = collect(c, "a", { since: "5", history: 3 });
    await settle();
    const call = gw.server.streamCalls()[0]!;
    expect(call.url.searchParams.get("history")).toBe("3");
    expect(call.url.searchParams.get("since")).toBeNull();
    expect(call.headers.get("last-event-id")).toBeNull();
    const s = gw.server.lastStream();
    s.connected("c_1", undefined, 15000, "9");
    for (const id of ["4", "5", "7"]) s.deliver(envelope(id, "a")); // the newest 3
    await settle();
    expect(a).toEqual(["7"]);
  });

  it("since and history on patterns only: since= in the URL (a pattern gets no history, only its since)", async () => {
    const c = client();
    collect(c, "logs:*", { since: "5", history: 3 });
    collect(c, "a", { since: "5", history: 3 });
    await settle();
    const url = gw.server.streamCalls()[0]!.url.searchParams;
    expect(url.getAll("channel")).toEqual(["a"]);
    expect(url.get("history")).toBe("3");
    gw.server.lastStream().connected("c_1");
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["logs:*"], since: "5", history: 3 }]);
    const p = client();
    collect(p, "logs:*", { since: "5", history: 3 });
    await settle();
    const purl = gw.server.streamCalls()[1]!.url.searchParams;
    expect(purl.get("since")).toBe("5");
    expect(purl.get("history")).toBeNull();
  });

  it("the stream's start (connected.last_event_id) is the resume position when there was none", async () => {
    const c = client();
    collect(c, "a");
    await settle();
    gw.server.lastStream().connected("c_1", undefined, 15000, "77");
    await settle();
    expect(c.lastEventId).toBe("77");
    gw.server.lastStream().fail();
    await advance(1000);
    expect(gw.server.streamCalls()[1]!.headers.get("last-event-id")).toBe("77");
  });
});

describe("since / history on the live connection", () => {
  it("POST body since/history, history frames delivered without moving the position, no history after a reconnect", async () => {
    gw.server.auto = true;
    for (let i = 0; i < 6; i++) gw.server.publish(i % 2 ? "b" : "a");
    const c = client();
    const a = collect(c, "a");
    await settle();
    const b = collect(c, "b", { since: "2", history: 2 });
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["b"], since: "2", history: 2 }]);
    // b's events after 2 are 4 and 6; the last 2 of them.
    expect(b).toEqual(["4", "6"]);
    expect(a).toEqual([]);
    expect(c.lastEventId).toBe("6"); // the stream's start, unchanged by history frames
    gw.server.publish("b");
    await settle();
    expect(b).toEqual(["4", "6", "7"]);
    gw.server.lastStream().fail();
    await advance(1000);
    const again = gw.server.streamCalls()[1]!;
    expect(again.url.searchParams.getAll("channel")).toEqual(["a", "b"]);
    expect(again.url.searchParams.get("history")).toBeNull();
    expect(again.headers.get("last-event-id")).toBe("7");
    expect(gw.server.subscriptionCalls()).toHaveLength(1);
    expect(b).toEqual(["4", "6", "7"]);
  });

  it("duplicates by envelope id: a history frame twice is delivered once; a channel subscribed again gets its history again", async () => {
    const c = client();
    collect(c, "a");
    await settle();
    const s = gw.server.lastStream();
    s.connected();
    await settle();
    const first = collect(c, "b", { history: 5 });
    await settle();
    s.history(envelope("3", "b"));
    s.history(envelope("3", "b"));
    s.deliver(envelope("8", "b"));
    s.deliver(envelope("8", "b"));
    await settle();
    expect(first).toEqual(["3", "8"]);
  });
});

describe("history frames and resubscription", () => {
  it("a channel that left and came back with history receives its history, ids seen before included", async () => {
    const c = client();
    collect(c, "keep");
    const ids: string[] = [];
    const off = c.subscribe("b", (e) => ids.push(e.id));
    await settle();
    const s = gw.server.lastStream();
    s.connected("c_1");
    s.deliver(envelope("3", "b"));
    await settle();
    off();
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ remove: ["b"] }]);
    const again: string[] = [];
    c.subscribe("b", (e) => again.push(e.id), { history: 5 });
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ remove: ["b"] }, { add: ["b"], history: 5 }]);
    s.history(envelope("3", "b"));
    s.history(envelope("3", "b"));
    s.deliver(envelope("4", "b"));
    await settle();
    expect(again).toEqual(["3", "4"]);
    expect(ids).toEqual(["3"]);
  });
});

describe("long-polling", () => {
  it("since/history cannot be honoured by a poll: the subscriber gets a gap naming the channel", async () => {
    gw.server.streamReplies.push("hang");
    const c = client();
    const gaps: GapInfo[] = [];
    c.subscribe("a", () => {}, { since: "4", onGap: (g) => gaps.push(g) });
    c.subscribe("h", () => {}, { history: 3, onGap: (g) => gaps.push(g) });
    c.subscribe("p", () => {});
    await settle();
    gw.server.pollReplies.push(response(200, { events: [], last_event_id: "9", gap: false }));
    await advance(5000);
    expect(gw.server.pollCalls()).toHaveLength(2);
    expect(gw.server.pollCalls()[0]!.url.searchParams.get("last_event_id")).toBeNull();
    expect(gaps).toEqual([
      { lastEventId: "4", oldestId: null, channel: "a" },
      { lastEventId: "", oldestId: null, channel: "h" },
    ]);
    expect(c.subscriptionState("a")).toEqual({ status: "subscribed", error: null });
  });

  it("every channel of a poll new with the same since: the poll starts there, no gap", async () => {
    gw.server.streamReplies.push("hang");
    const c = client();
    const gaps: GapInfo[] = [];
    const got: string[] = [];
    c.subscribe("a", (e) => got.push(e.id), { since: "4", onGap: (g) => gaps.push(g) });
    c.subscribe("b", () => {}, { since: "4", onGap: (g) => gaps.push(g) });
    await settle();
    gw.server.pollReplies.push(response(200, { events: [envelope("5", "a")], last_event_id: "9", gap: false }));
    await advance(5000);
    const polls = gw.server.pollCalls().map((x) => x.url.searchParams.get("last_event_id"));
    expect(polls).toEqual(["4", "9"]);
    expect(gaps).toEqual([]);
    expect(got).toEqual(["5"]);
  });

  it("a fetch without a streaming body (React Native) long-polls at once instead of retrying forever", async () => {
    gw.server.streamReplies.push(
      response(200, undefined, { "content-type": "text/event-stream" }),
    );
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    expect(gw.server.streamCalls()).toHaveLength(1);
    expect(gw.server.pollCalls()).toHaveLength(1);
  });
});

describe("subscription state", () => {
  it("pending → subscribed → pending on a broken connection → subscribed; refused with its error; null when dropped", async () => {
    const c = client();
    const seen: [string, SubscriptionState | null][] = [];
    c.onSubscriptionState((ch, s) => seen.push([ch, s]));
    expect(c.subscriptionState("a")).toBeNull();
    const off = c.subscribe("a", () => {});
    expect(c.subscriptionState("a")).toEqual({ status: "pending", error: null });
    await settle();
    gw.server.lastStream().connected("c_1");
    await settle();
    expect(c.subscriptionState("a")).toEqual({ status: "subscribed", error: null });
    gw.server.subscriptionReplies.push(apiError(403, "forbidden_channel", { channels: ["s"] }));
    c.subscribe("s", () => {});
    await settle();
    const refused = c.subscriptionState("s")!;
    expect(refused.status).toBe("refused");
    expect(refused.error!.code).toBe("forbidden_channel");
    gw.server.lastStream().fail();
    await settle();
    expect(c.subscriptionState("a")!.status).toBe("pending");
    expect(c.subscriptionState("s")!.status).toBe("refused");
    await advance(1000);
    gw.server.lastStream().connected("c_2");
    await settle();
    expect(c.subscriptionState("a")!.status).toBe("subscribed");
    off();
    expect(c.subscriptionState("a")).toBeNull();
    expect(seen.filter(([ch]) => ch === "a").map(([, s]) => s?.status ?? null)).toEqual([
      "pending",
      "subscribed",
      "pending",
      "subscribed",
      null,
    ]);
  });

  it("an error of the whole request is kept on the pending channels until they are subscribed", async () => {
    gw.server.streamReplies.push(apiError(400, "too_many_channels"));
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    const s = c.subscriptionState("a")!;
    expect(s.status).toBe("pending");
    expect(s.error!.code).toBe("too_many_channels");
    await advance(1000);
    gw.server.lastStream().connected();
    await settle();
    expect(c.subscriptionState("a")).toEqual({ status: "subscribed", error: null });
  });
});

describe("sharing state", () => {
  it("sharing none: not the leader until the first subscribe, then the leader; not after close", async () => {
    const c = client();
    const seen: SharingState[] = [];
    c.onSharing((s) => seen.push(s));
    expect(c.sharingState).toEqual({ mode: "none", isLeader: false });
    expect(c.isLeader).toBe(false);
    c.subscribe("a", () => {});
    expect(c.isLeader).toBe(true);
    expect(c.sharingState).toEqual({ mode: "none", isLeader: true });
    expect(seen).toEqual([{ mode: "none", isLeader: true }]);
  });

  it("leader mode: each tab hears when it takes the stream", async () => {
    const { tab } = gw.browser();
    gw.server.auto = true;
    const a = tab("A");
    const b = tab("B");
    const bSeen: SharingState[] = [];
    b.onSharing((s) => bSeen.push(s));
    a.subscribe("x", () => {});
    await settle();
    b.subscribe("x", () => {}, { history: 4 });
    await settle();
    expect(a.sharingState).toEqual({ mode: "leader", isLeader: true });
    expect(b.sharingState).toEqual({ mode: "leader", isLeader: false });
    // The follower's channel state comes from the leader's connection.
    expect(b.subscriptionState("x")!.status).toBe("subscribed");
    a.close();
    await settle();
    expect(b.sharingState).toEqual({ mode: "leader", isLeader: true });
    expect(bSeen).toEqual([{ mode: "leader", isLeader: true }]);
  });

  it("leader mode: a follower's since/history reach the leader's subscription request", async () => {
    const { tab } = gw.browser();
    gw.server.auto = true;
    for (let i = 0; i < 4; i++) gw.server.publish("y");
    const a = tab("A");
    const b = tab("B");
    const ax = collect(a, "x");
    await settle();
    const by = collect(b, "y", { history: 2 });
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => [x.tab, x.body])).toEqual([["A", { add: ["y"], history: 2 }]]);
    expect(by).toEqual(["3", "4"]);
    expect(ax).toEqual([]);
  });
});

describe("a closed client", () => {
  it("opens again when subscribed again, resuming from its position", async () => {
    const c = client();
    const first = collect(c, "a");
    await settle();
    gw.server.lastStream().connected();
    gw.server.lastStream().deliver(envelope("5", "a"));
    await settle();
    c.close();
    expect(c.closed).toBe(true);
    expect(gw.server.lastStream().closed).toBe(true);
    const states: string[] = [];
    c.onState((s) => states.push(s.status));
    const again = collect(c, "a");
    expect(c.closed).toBe(false);
    await settle();
    expect(gw.server.streamCalls()).toHaveLength(2);
    expect(gw.server.streamCalls()[1]!.headers.get("last-event-id")).toBe("5");
    gw.server.lastStream().connected();
    gw.server.lastStream().deliver(envelope("6", "a"));
    await settle();
    expect(first).toEqual(["5"]);
    expect(again).toEqual(["6"]);
    expect(states).toEqual(["idle", "connecting", "connected"]);
  });
});

describe("a since the gateway does not know (400 invalid_last_event_id)", () => {
  it("in the stream URL: the channel starts from now, with a gap naming it", async () => {
    gw.server.streamReplies.push(apiError(400, "invalid_last_event_id"));
    const c = client();
    const gaps: GapInfo[] = [];
    c.subscribe("a", () => {}, { since: "999", onGap: (g) => gaps.push(g) });
    await settle();
    expect(gaps).toEqual([{ lastEventId: "999", oldestId: null, channel: "a" }]);
    const again = gw.server.streamCalls()[1]!;
    expect(again.url.searchParams.get("since")).toBeNull();
    expect(again.headers.get("last-event-id")).toBeNull();
  });

  it("in a subscription request: added without it, with a gap naming it", async () => {
    const c = client();
    c.subscribe("x", () => {});
    await settle();
    gw.server.lastStream().connected("c_1");
    await settle();
    gw.server.subscriptionReplies.push(apiError(400, "invalid_last_event_id"));
    const gaps: GapInfo[] = [];
    c.subscribe("a", () => {}, { since: "999", onGap: (g) => gaps.push(g) });
    await settle();
    expect(gaps).toEqual([{ lastEventId: "999", oldestId: null, channel: "a" }]);
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["a"], since: "999" }, { add: ["a"] }]);
    expect(c.subscriptionState("a")!.status).toBe("subscribed");
  });
});

describe("since / history and a new leader tab", () => {
  it("a new leader resumes a channel whose history was delivered (Last-Event-ID, no history again)", async () => {
    const { tab } = gw.browser();
    gw.server.auto = true;
    for (let i = 0; i < 5; i++) gw.server.publish("x");
    const a = tab("A");
    const b = tab("B");
    const ax = collect(a, "x", { history: 2 });
    await settle();
    const bx = collect(b, "x", { history: 2 });
    await settle();
    expect(gw.server.streamCalls()[0]!.url.searchParams.get("history")).toBe("2");
    expect(ax).toEqual(["4", "5"]);
    // B joined a channel A already streamed: its history over REST (B's own request).
    expect(bx).toEqual(["4", "5"]);
    expect(gw.server.historyCalls().map((x) => x.tab)).toEqual(["B"]);
    gw.server.publish("x");
    await settle();
    a.close();
    await settle();
    gw.server.publish("x");
    await settle();
    const taken = gw.server.streamCalls()[1]!;
    expect(taken.tab).toBe("B");
    expect(taken.url.searchParams.get("history")).toBeNull();
    expect(taken.headers.get("last-event-id")).toBe("6");
    expect(gw.server.subscriptionCalls()).toHaveLength(0);
    expect(bx).toEqual(["4", "5", "6", "7"]);
  });
});
