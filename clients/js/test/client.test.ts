import { describe, expect, it } from "vitest";
import type { RealtimeError } from "../src/errors.js";
import type { ConnectionState, GapInfo, RealtimeClient, RealtimeEvent } from "../src/types.js";
import {
  FakeEnv,
  advance,
  apiError,
  envelope,
  frame,
  later,
  response,
  settle,
  useFakeGateway,
} from "./fakes.js";

const gw = useFakeGateway();
const client = gw.client;

function record(c: RealtimeClient): ConnectionState[] {
  const states: ConnectionState[] = [];
  c.onState((s) => states.push(s));
  return states;
}

describe("state machine", () => {
  it("connected → events → error → reconnecting → connected, resuming with Last-Event-ID", async () => {
    const c = client();
    const states = record(c);
    const got: RealtimeEvent[] = [];
    c.subscribe("logs:w1:f1", (e) => got.push(e));
    await settle();

    expect(gw.server.streamCalls()).toHaveLength(1);
    const first = gw.server.streamCalls()[0]!;
    expect(first.url.pathname).toBe("/v1/stream");
    expect(first.url.searchParams.getAll("channel")).toEqual(["logs:w1:f1"]);
    expect(first.headers.get("last-event-id")).toBeNull();
    expect(first.headers.get("accept")).toBe("text/event-stream");

    const s1 = gw.server.lastStream();
    s1.connected("c_1");
    s1.deliver(envelope("1"));
    s1.deliver(envelope("2"));
    await settle();
    expect(got.map((e) => e.id)).toEqual(["1", "2"]);
    expect(got[0]).toEqual(envelope("1"));
    expect(c.state).toEqual({ status: "connected", transport: "stream" });
    expect(c.lastEventId).toBe("2");

    s1.fail();
    await settle();
    // retry: 2000 from the server is the base; random() = 0.5 → 1000 ms.
    expect(c.state).toEqual({ status: "reconnecting", reason: "network", attempt: 1, delayMs: 1000 });
    await advance(999);
    expect(gw.server.streamCalls()).toHaveLength(1);
    await advance(1);
    expect(gw.server.streamCalls()).toHaveLength(2);
    expect(gw.server.streamCalls()[1]!.headers.get("last-event-id")).toBe("2");

    const s2 = gw.server.lastStream();
    s2.connected("c_2");
    s2.deliver(envelope("3"));
    await settle();
    expect(got.map((e) => e.id)).toEqual(["1", "2", "3"]);
    expect(states.map((s) => s.status)).toEqual(["connecting", "connected", "reconnecting", "connected"]);
  });

  it("reconnects after the stream ends (eof), and backs off further on each failure until connected", async () => {
    gw.server.streamReplies.push("network", "network", "network", response(500, {}));
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      const s = c.state;
      expect(s.status).toBe("reconnecting");
      if (s.status !== "reconnecting") return;
      delays.push(s.delayMs);
      await advance(s.delayMs);
    }
    expect(delays).toEqual([500, 1000, 2000, 4000]);
    // The 5th attempt opens a stream; connected resets the backoff.
    gw.server.lastStream().connected();
    await settle();
    expect(c.state.status).toBe("connected");
    gw.server.lastStream().end();
    await settle();
    expect(c.state).toEqual({ status: "reconnecting", reason: "eof", attempt: 1, delayMs: 1000 });
  });

  it("honours Retry-After on 429 and 503 (plus jitter)", async () => {
    gw.server.streamReplies.push(
      apiError(429, "too_many_connections_for_user", {}, { "retry-after": "7" }),
      apiError(503, "log_unavailable", {}, { "retry-after": "1" }),
    );
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    expect(c.state).toEqual({
      status: "reconnecting",
      reason: "too_many_connections_for_user",
      attempt: 1,
      delayMs: 7000 + 500,
    });
    await advance(7500);
    expect(c.state).toEqual({ status: "reconnecting", reason: "log_unavailable", attempt: 2, delayMs: 1000 + 1000 });
    await advance(2000);
    expect(gw.server.streamCalls()).toHaveLength(3);
  });

  it("gets a token before every connect and sends it as a bearer token", async () => {
    let n = 0;
    const reasons: string[] = [];
    const c = client({
      getToken: async (reason) => {
        reasons.push(reason);
        return `t${++n}`;
      },
    });
    c.subscribe("a", () => {});
    await settle();
    expect(gw.server.streamCalls()[0]!.headers.get("authorization")).toBe("Bearer t1");
    gw.server.lastStream().connected();
    gw.server.lastStream().deliver(envelope("9", "a"));
    await settle();
    gw.server.lastStream().end();
    await settle();
    await advance(5000);
    expect(gw.server.streamCalls()[1]!.headers.get("authorization")).toBe("Bearer t2");
    expect(reasons).toEqual(["connect", "connect"]);
    // Token auth: no cookies to other origins.
    expect(gw.server.streamCalls()[0]!.credentials).toBe("same-origin");
  });

  it("refreshes the token and reconnects at once on closing token_expired, resuming", async () => {
    const reasons: string[] = [];
    const c = client({
      getToken: (reason) => {
        reasons.push(reason);
        return "tok-" + reasons.length;
      },
    });
    c.subscribe("a", () => {});
    await settle();
    const s = gw.server.lastStream();
    s.connected("c_1", undefined, 0);
    s.deliver(envelope("5", "a"));
    await advance(60_000);
    s.control("closing", { reason: "token_expired" });
    await settle();
    expect(reasons).toEqual(["connect", "expired"]);
    const second = gw.server.streamCalls()[1]!;
    expect(second.headers.get("authorization")).toBe("Bearer tok-2");
    expect(second.headers.get("last-event-id")).toBe("5");
    expect(s.closed).toBe(true);
  });

  it("a token that expires right after connecting backs off instead of spinning", async () => {
    const c = client({ getToken: () => "almost-expired" });
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected();
    gw.server.lastStream().control("closing", { reason: "token_expired" });
    await settle();
    expect(c.state).toEqual({ status: "reconnecting", reason: "token_expired", attempt: 1, delayMs: 1000 });
    expect(gw.server.streamCalls()).toHaveLength(1);
  });

  it("401: one more token and one more try, then unauthorized until reconnect()", async () => {
    gw.server.streamReplies.push(apiError(401, "token_expired"), apiError(401, "invalid_token"));
    const reasons: string[] = [];
    const c = client({ getToken: (r) => (reasons.push(r), "t") });
    const states = record(c);
    c.subscribe("a", () => {});
    await settle();
    expect(reasons).toEqual(["connect", "unauthorized"]);
    expect(c.state).toEqual({ status: "unauthorized", reason: "invalid_token" });
    await advance(120_000);
    expect(gw.server.streamCalls()).toHaveLength(2);
    c.reconnect();
    await settle();
    expect(gw.server.streamCalls()).toHaveLength(3);
    gw.server.lastStream().connected();
    await settle();
    expect(states.map((s) => s.status)).toEqual(["connecting", "unauthorized", "connecting", "connected"]);
  });

  it("401 with cookie auth: unauthorized at once; cookies go with credentials include", async () => {
    gw.server.streamReplies.push(apiError(401, "missing_credentials"));
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    expect(c.state).toEqual({ status: "unauthorized", reason: "missing_credentials" });
    expect(gw.server.streamCalls()).toHaveLength(1);
    expect(gw.server.streamCalls()[0]!.headers.get("authorization")).toBeNull();
    expect(gw.server.streamCalls()[0]!.credentials).toBe("include");
  });

  it("204 stops for good", async () => {
    gw.server.streamReplies.push(response(204));
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    expect(c.state).toEqual({ status: "closed", reason: "no_content" });
    await advance(120_000);
    expect(gw.server.streamCalls()).toHaveLength(1);
  });

  it("403 forbidden_channel: the subscriber hears it, the other channels connect", async () => {
    gw.server.streamReplies.push(apiError(403, "forbidden_channel", { channels: ["secret"] }));
    const c = client();
    const errors: RealtimeError[] = [];
    const okErrors: RealtimeError[] = [];
    c.subscribe("secret", () => {}, { onError: (e) => errors.push(e) });
    c.subscribe("open", () => {}, { onError: (e) => okErrors.push(e) });
    await settle();
    expect(errors).toHaveLength(1);
    expect(errors[0]!.code).toBe("forbidden_channel");
    expect(errors[0]!.status).toBe(403);
    expect(errors[0]!.channels).toEqual(["secret"]);
    expect(okErrors).toHaveLength(0);
    expect(gw.server.streamCalls()).toHaveLength(2);
    expect(gw.server.streamCalls()[1]!.url.searchParams.getAll("channel")).toEqual(["open"]);
    // A later subscriber to the refused channel hears it too.
    const late: RealtimeError[] = [];
    c.subscribe("secret", () => {}, { onError: (e) => late.push(e) });
    await settle();
    expect(late.map((e) => e.code)).toEqual(["forbidden_channel"]);
  });

  it("kicked and replaced stop until reconnect(); shutdown reconnects", async () => {
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected();
    gw.server.lastStream().control("closing", { reason: "shutdown" });
    await settle();
    expect(c.state).toMatchObject({ status: "reconnecting", reason: "shutdown" });
    await advance(2000);
    gw.server.lastStream().connected();
    gw.server.lastStream().control("closing", { reason: "kicked" });
    await settle();
    expect(c.state).toEqual({ status: "closed", reason: "kicked" });
    const n = gw.server.streamCalls().length;
    await advance(60_000);
    expect(gw.server.streamCalls()).toHaveLength(n);
    c.reconnect();
    await settle();
    expect(gw.server.streamCalls()).toHaveLength(n + 1);
  });

  it("an unknown Last-Event-ID (400 invalid_last_event_id) becomes a gap and a fresh start", async () => {
    const c = client();
    const gaps: GapInfo[] = [];
    c.onGap((g) => gaps.push(g));
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected();
    gw.server.lastStream().deliver(envelope("77", "a"));
    await settle();
    gw.server.lastStream().fail();
    await settle();
    gw.server.streamReplies.push(apiError(400, "invalid_last_event_id"));
    await advance(1000);
    expect(gaps).toEqual([{ lastEventId: "77", oldestId: null }]);
    expect(gw.server.streamCalls()).toHaveLength(3);
    expect(gw.server.streamCalls()[2]!.headers.get("last-event-id")).toBeNull();
  });

  it("a silent connection (no heartbeat) is dropped and reopened", async () => {
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected("c_1", undefined, 1000);
    await settle();
    await advance(6000);
    expect(c.state.status).toBe("connected");
    await advance(2000);
    expect(c.state).toMatchObject({ status: "reconnecting", reason: "heartbeat_timeout" });
  });
});

describe("events", () => {
  it("routes by channel and pattern, drops duplicates, delivers history frames without id to who asked", async () => {
    const c = client();
    const exact: string[] = [];
    const pattern: string[] = [];
    const deep: string[] = [];
    c.subscribe("logs:w1:f1", (e) => exact.push(e.id), { history: 5 });
    c.subscribe("logs:w1:*", (e) => pattern.push(e.id));
    c.subscribe("logs:**", (e) => deep.push(e.id));
    await settle();
    const s = gw.server.lastStream();
    s.connected();
    s.deliver(envelope("1", "logs:w1:f1"));
    s.deliver(envelope("2", "logs:w1:f2"));
    s.deliver(envelope("3", "logs:w2:f1"));
    s.deliver(envelope("3", "logs:w2:f1")); // duplicate
    s.deliver(envelope("0", "logs:w1:f1"), false); // history frame: no id: line
    await settle();
    // The history frame goes to the subscription that asked for history only.
    expect(exact).toEqual(["1", "0"]);
    expect(pattern).toEqual(["1", "2"]);
    expect(deep).toEqual(["1", "2", "3"]);
    // History does not move the resume position.
    expect(c.lastEventId).toBe("3");
  });

  it("gaps go to onGap and to the subscriptions concerned", async () => {
    const c = client();
    const all: GapInfo[] = [];
    const a: GapInfo[] = [];
    const b: GapInfo[] = [];
    c.onGap((g) => all.push(g));
    c.subscribe("a", () => {}, { onGap: (g) => a.push(g) });
    c.subscribe("b", () => {}, { onGap: (g) => b.push(g) });
    await settle();
    const s = gw.server.lastStream();
    s.connected();
    s.control("gap", { last_event_id: "10", oldest_id: "50" });
    s.control("gap", { last_event_id: "10", oldest_id: null, channel: "b" });
    await settle();
    expect(all).toEqual([
      { lastEventId: "10", oldestId: "50" },
      { lastEventId: "10", oldestId: null, channel: "b" },
    ]);
    expect(a).toEqual([{ lastEventId: "10", oldestId: "50" }]);
    expect(b).toHaveLength(2);
  });

  it("admin broadcasts go to onBroadcast; a throwing handler does not break the stream", async () => {
    const errors: unknown[] = [];
    const c = client({ onUnexpectedError: (e) => errors.push(e) });
    const got: string[] = [];
    const casts: unknown[] = [];
    c.onBroadcast((m) => casts.push(m));
    c.subscribe("a", () => {
      throw new Error("app bug");
    });
    c.subscribe("a", (e) => got.push(e.id));
    await settle();
    const s = gw.server.lastStream();
    s.connected();
    s.write(frame({ event: "maintenance", data: { type: "maintenance", time: "t", data: { in: 5 } } }));
    s.deliver(envelope("1", "a"));
    s.deliver(envelope("2", "a"));
    await settle();
    expect(casts).toEqual([{ type: "maintenance", time: "t", data: { in: 5 } }]);
    expect(got).toEqual(["1", "2"]);
    expect(errors).toHaveLength(2);
  });

  it("an invalid channel is refused locally, without a request", async () => {
    const c = client();
    const errors: RealtimeError[] = [];
    c.subscribe("bad channel", () => {}, { onError: (e) => errors.push(e) });
    c.subscribe("a::b", () => {}, { onError: (e) => errors.push(e) });
    c.subscribe("a:**:b", () => {}, { onError: (e) => errors.push(e) });
    await settle();
    expect(errors.map((e) => e.code)).toEqual(["invalid_channel", "invalid_channel", "invalid_channel"]);
    expect(gw.server.calls).toHaveLength(0);
    expect(c.state.status).toBe("idle");
  });
});

describe("subscriptions on the live connection (reference counting)", () => {
  it("one server subscription per channel, changed with add/remove, never by reconnecting", async () => {
    const c = client();
    const offA1 = c.subscribe("a", () => {});
    const offA2 = c.subscribe("a", () => {});
    c.subscribe("b", () => {});
    await settle();
    // Subscriptions made before connecting are the first request's channel params.
    expect(gw.server.streamCalls()).toHaveLength(1);
    expect(gw.server.streamCalls()[0]!.url.searchParams.getAll("channel")).toEqual(["a", "b"]);

    // Made while connecting: sent once `connected` names the connection.
    const offC1 = c.subscribe("c", () => {});
    await settle();
    expect(gw.server.subscriptionCalls()).toHaveLength(0);
    gw.server.lastStream().connected("c_42");
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => [x.url.pathname, x.body])).toEqual([
      ["/v1/connections/c_42/subscriptions", { add: ["c"] }],
    ]);

    const offC2 = c.subscribe("c", () => {});
    const offD1 = c.subscribe("d", () => {});
    const offD2 = c.subscribe("d", () => {});
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["c"] }, { add: ["d"] }]);

    offD1();
    offA1();
    offC1();
    await settle();
    expect(gw.server.subscriptionCalls()).toHaveLength(2); // d, a and c still have a subscriber

    offD2();
    offA2();
    offA2(); // twice: no effect
    offC2();
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([
      { add: ["c"] },
      { add: ["d"] },
      { remove: ["a", "c", "d"] },
    ]);
    expect(gw.server.streamCalls()).toHaveLength(1);
    expect(gw.server.lastStream().channels).toEqual(new Set(["b"]));
    const post = gw.server.subscriptionCalls()[2]!;
    expect(post.method).toBe("POST");
    expect(post.headers.get("content-type")).toBe("application/json");
  });

  it("subscribe/unsubscribe/subscribe in one task (StrictMode) sends nothing extra", async () => {
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected();
    await settle();
    const off = c.subscribe("x", () => {});
    off();
    c.subscribe("x", () => {});
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["x"] }]);
  });

  it("one request at a time; changes made meanwhile follow in the next one", async () => {
    let release!: () => void;
    gw.server.subscriptionReplies.push(
      (call) =>
        new Promise((resolve) => {
          release = () => resolve(gw.server.changeSubscriptions(call));
        }),
    );
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected();
    await settle();
    c.subscribe("b", () => {});
    await settle();
    c.subscribe("c", () => {});
    await settle();
    expect(gw.server.subscriptionCalls()).toHaveLength(1);
    release();
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["b"] }, { add: ["c"] }]);
  });

  it("a request left hanging by a dead connection does not hold up the next connection", async () => {
    gw.server.subscriptionReplies.push("hang");
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected("c_1");
    await settle();
    c.subscribe("b", () => {});
    await settle();
    gw.server.lastStream().fail();
    await settle();
    await advance(1000);
    expect(gw.server.streamCalls()[1]!.url.searchParams.getAll("channel")).toEqual(["a", "b"]);
    c.subscribe("c", () => {}); // while connecting
    await settle();
    gw.server.lastStream().connected("c_2");
    await settle();
    expect(gw.server.subscriptionCalls().map((x) => [x.url.pathname, x.body])).toEqual([
      ["/v1/connections/c_1/subscriptions", { add: ["b"] }],
      ["/v1/connections/c_2/subscriptions", { add: ["c"] }],
    ]);
  });

  it("a refused add reaches the subscriber; a lost connection (404) reconnects with the whole set", async () => {
    const c = client();
    const errors: RealtimeError[] = [];
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected("c_1");
    await settle();
    gw.server.subscriptionReplies.push(apiError(403, "forbidden_channel", { channels: ["s"] }));
    c.subscribe("s", () => {}, { onError: (e) => errors.push(e) });
    c.subscribe("t", () => {});
    await settle();
    expect(errors.map((e) => e.channels)).toEqual([["s"]]);
    // A refused request changes nothing: t goes again on its own.
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["s", "t"] }, { add: ["t"] }]);

    gw.server.lastStream().deliver(envelope("4", "a"));
    await settle();
    gw.server.subscriptionReplies.push(apiError(404, "connection_not_found"));
    c.subscribe("u", () => {});
    await settle();
    expect(gw.server.streamCalls()).toHaveLength(2);
    const again = gw.server.streamCalls()[1]!;
    expect(again.url.searchParams.getAll("channel")).toEqual(["a", "t", "u"]);
    expect(again.headers.get("last-event-id")).toBe("4");
  });

  it("closes the stream when the last subscription goes, and reopens for the next", async () => {
    const c = client();
    const off = c.subscribe("a", () => {});
    await settle();
    const s = gw.server.lastStream();
    s.connected();
    s.deliver(envelope("8", "a"));
    await settle();
    off();
    await settle();
    expect(s.closed).toBe(true);
    expect(c.state).toEqual({ status: "idle" });
    expect(gw.server.subscriptionCalls()).toHaveLength(0);
    c.subscribe("b", () => {});
    await settle();
    expect(gw.server.streamCalls()[1]!.headers.get("last-event-id")).toBe("8");
  });
});

describe("browser signals", () => {
  it("offline closes the stream; online reconnects at once with Last-Event-ID", async () => {
    const env = new FakeEnv();
    const c = client({ environment: env });
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected();
    gw.server.lastStream().deliver(envelope("3", "a"));
    await settle();
    env.setOnline(false);
    await settle();
    expect(c.state).toEqual({ status: "offline", reason: "network" });
    expect(gw.server.lastStream().closed).toBe(true);
    await advance(60_000);
    expect(gw.server.streamCalls()).toHaveLength(1);
    env.setOnline(true);
    await settle();
    expect(gw.server.streamCalls()).toHaveLength(2);
    expect(gw.server.streamCalls()[1]!.headers.get("last-event-id")).toBe("3");
  });

  it("starts offline when the browser is offline", async () => {
    const env = new FakeEnv();
    env.online = false;
    const c = client({ environment: env });
    c.subscribe("a", () => {});
    await settle();
    expect(c.state).toEqual({ status: "offline", reason: "network" });
    expect(gw.server.calls).toHaveLength(0);
  });

  it("hidden-tab policy pause: closes after N ms hidden, resumes when visible", async () => {
    const env = new FakeEnv();
    const c = client({ environment: env, hiddenTabPolicy: "pause", hiddenPauseAfterMs: 10_000 });
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected();
    gw.server.lastStream().deliver(envelope("6", "a"));
    await settle();
    env.setHidden(true);
    await advance(9_000);
    env.setHidden(false); // back before the delay: nothing happens
    env.setHidden(true);
    await advance(9_999);
    expect(c.state.status).toBe("connected");
    await advance(1);
    expect(c.state).toEqual({ status: "offline", reason: "hidden" });
    expect(gw.server.lastStream().closed).toBe(true);
    env.setHidden(false);
    await settle();
    expect(gw.server.streamCalls()).toHaveLength(2);
    expect(gw.server.streamCalls()[1]!.headers.get("last-event-id")).toBe("6");
  });

  it("hidden-tab policy keep (default) never pauses", async () => {
    const env = new FakeEnv();
    const c = client({ environment: env });
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().connected("c_1", undefined, 0);
    env.setHidden(true);
    await advance(600_000);
    expect(c.state.status).toBe("connected");
  });

  it("close() removes every listener and aborts the stream", async () => {
    const env = new FakeEnv();
    const c = client({ environment: env, hiddenTabPolicy: "pause" });
    c.subscribe("a", () => {});
    await settle();
    expect(env.listenerCount()).toBeGreaterThan(0);
    c.close();
    expect(env.listenerCount()).toBe(0);
    expect(gw.server.lastStream().closed).toBe(true);
    expect(c.state).toEqual({ status: "closed", reason: "client" });
    expect(c.closed).toBe(true);
  });
});

describe("long-poll fallback", () => {
  it("no connected within 5 s → polls; tries streaming again after 60 s", async () => {
    gw.server.streamReplies.push("hang"); // a proxy holding the whole response
    const c = client();
    const got: string[] = [];
    const gaps: GapInfo[] = [];
    c.onGap((g) => gaps.push(g));
    c.subscribe("logs:w1:f1", (e) => got.push(e.id));
    c.subscribe("b", () => {});
    await settle();
    await advance(4999);
    expect(gw.server.pollCalls()).toHaveLength(0);

    const empty = response(200, { events: [], last_event_id: "90", gap: false });
    gw.server.pollReplies.push(
      response(200, { events: [], last_event_id: "10", gap: false }),
      response(200, { events: [envelope("11"), envelope("12")], last_event_id: "14", gap: false }),
      response(200, { events: [envelope("90")], last_event_id: "90", gap: true, oldest_id: "90" }),
      later(25_000, empty),
      later(25_000, empty),
      later(25_000, empty),
    );
    await advance(1);
    expect(gw.server.streamCalls()[0]!.signal!.aborted).toBe(true);
    expect(gw.server.pollCalls()).toHaveLength(4);
    const [p0, p1, p2, p3] = gw.server.pollCalls().map((x) => x.url.searchParams);
    // The first poll answers at once so the state shows connected without a 25 s wait.
    expect(p0!.getAll("channel")).toEqual(["b", "logs:w1:f1"]);
    expect(p0!.get("timeout_ms")).toBe("0");
    expect(p0!.get("last_event_id")).toBeNull();
    expect(c.state).toEqual({ status: "connected", transport: "poll" });
    expect(p1!.get("timeout_ms")).toBe("25000");
    expect(p1!.get("last_event_id")).toBe("10");
    expect(p2!.get("last_event_id")).toBe("14");
    expect(p3!.get("last_event_id")).toBe("90");
    expect(got).toEqual(["11", "12", "90"]);
    expect(gaps).toEqual([{ lastEventId: "14", oldestId: "90" }]);
    expect(c.lastEventId).toBe("90");

    await advance(50_000);
    expect(gw.server.pollCalls()).toHaveLength(6);
    expect(gw.server.streamCalls()).toHaveLength(1);
    // 75 s after the switch, the next cycle streams again, resuming from the poll position.
    await advance(25_000);
    expect(gw.server.pollCalls()).toHaveLength(6);
    expect(gw.server.streamCalls()).toHaveLength(2);
    expect(gw.server.streamCalls()[1]!.headers.get("last-event-id")).toBe("90");
    gw.server.lastStream().connected();
    await settle();
    expect(c.state).toEqual({ status: "connected", transport: "stream" });
  });

  it("falls back too when headers arrive but the body is held back", async () => {
    const c = client({ pollFallbackAfterMs: 2000 });
    c.subscribe("a", () => {});
    await settle();
    gw.server.lastStream().write(": ok\n\n"); // a prefix, then nothing
    await advance(2000);
    expect(gw.server.lastStream().closed).toBe(true);
    expect(gw.server.pollCalls()).toHaveLength(1);
  });

  it("a subscription change while polling polls again with the new set", async () => {
    gw.server.streamReplies.push("hang");
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    gw.server.pollReplies.push(response(200, { events: [], last_event_id: "1", gap: false }));
    await advance(5000);
    expect(gw.server.pollCalls()).toHaveLength(2); // primed, now waiting
    c.subscribe("b", () => {});
    await settle();
    expect(gw.server.pollCalls()).toHaveLength(3);
    expect(gw.server.pollCalls()[2]!.url.searchParams.getAll("channel")).toEqual(["a", "b"]);
    expect(gw.server.pollCalls()[2]!.url.searchParams.get("last_event_id")).toBe("1");
  });

  it("a failed poll backs off, and the next answer shows connected again", async () => {
    gw.server.streamReplies.push("hang");
    const c = client();
    c.subscribe("a", () => {});
    await settle();
    gw.server.pollReplies.push(response(200, { events: [], last_event_id: "3", gap: false }), "network");
    await advance(5000);
    expect(c.state).toEqual({ status: "reconnecting", reason: "network", attempt: 1, delayMs: 500 });
    gw.server.pollReplies.push(response(200, { events: [], last_event_id: "3", gap: false }));
    await advance(500);
    expect(c.state).toEqual({ status: "connected", transport: "poll" });
    const [, second, third, fourth] = gw.server.pollCalls().map((x) => x.url.searchParams.get("timeout_ms"));
    expect([second, third, fourth]).toEqual(["25000", "0", "25000"]);
  });

  it("pollFallbackAfterMs: 0 never polls", async () => {
    gw.server.streamReplies.push("hang");
    const c = client({ pollFallbackAfterMs: 0 });
    c.subscribe("a", () => {});
    await advance(60_000);
    expect(gw.server.pollCalls()).toHaveLength(0);
    expect(c.state.status).toBe("connecting");
  });
});
