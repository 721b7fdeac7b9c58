// The SharedWorker mode: the worker-side hub (hub.ts) and the tab side (shared.ts), talking over
// real MessagePorts (Node's MessageChannel), with the fake gateway behind the hub's fetch.
import { MessageChannel, type MessagePort } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { createClient } from "../src/client.js";
import { WorkerHub, type ToTab, type ToWorker, type WireConfig } from "../src/hub.js";
import { PING_MS } from "../src/shared.js";
import type {
  ClientOptions,
  GapInfo,
  MessagePortLike,
  RealtimeClient,
  SharedWorkerLike,
} from "../src/types.js";
import {
  FakeBus,
  FakeEnv,
  FakeLocks,
  GATEWAY_URL,
  advance,
  apiError,
  settle,
  useFakeGateway,
} from "./fakes.js";

const URL_ = GATEWAY_URL;
const KEY = "ssegate:" + URL_;
const X = "logs:w1:x";
const Y = "logs:w1:y";

const gw = useFakeGateway({ auto: true });
let hub: WorkerHub;

function makeHub(options: ConstructorParameters<typeof WorkerHub>[0] = {}): WorkerHub {
  hub = new WorkerHub({ fetch: gw.server.fetchFor("worker"), random: () => 0.5, ...options });
  return hub;
}

/** A MessageChannel whose one end the hub serves, as a SharedWorker's `connect` would. */
function connectPort(): MessagePort {
  const { port1, port2 } = new MessageChannel();
  gw.closePortsAfter(port1, port2);
  hub.connect(port2 as unknown as MessagePortLike);
  return port1;
}

/** A tab with its own client in SharedWorker mode. */
function tab(options: Partial<ClientOptions> = {}): RealtimeClient {
  const worker: SharedWorkerLike = { port: connectPort() as unknown as MessagePortLike };
  const c = createClient({
    url: URL_,
    sharing: "sharedworker",
    sharedWorker: () => worker,
    environment: null,
    random: () => 0.5,
    ...options,
  });
  gw.closeAfter(c);
  return c;
}

/** A tab that speaks the protocol by hand and records what the worker sends it. */
class RawTab {
  readonly got: ToTab[] = [];
  readonly port: MessagePort;
  constructor(token = false) {
    this.port = connectPort();
    this.port.on("message", (m: ToTab) => this.got.push(m));
    const cfg: WireConfig = {
      url: URL_,
      credentials: "include",
      headers: {},
      minRetryMs: 1000,
      maxRetryMs: 30_000,
      pollFallbackAfterMs: 0,
      streamRetryAfterMs: 60_000,
      pollTimeoutMs: 25_000,
      sessionId: "raw",
      token,
    };
    this.send({ t: "hello", key: KEY, cfg, last: "", offline: false });
  }
  send(body: ToWorker extends infer M ? (M extends unknown ? Omit<M, "v"> : never) : never): void {
    this.port.postMessage({ v: 1, ...body });
  }
  sub(...channels: string[]): void {
    this.send({ t: "sub", channels, paused: false });
  }
  events(): string[] {
    return this.got.flatMap((m) => (m.t === "ev" ? [m.e.id] : []));
  }
  of<T extends ToTab["t"]>(t: T): Extract<ToTab, { t: T }>[] {
    return this.got.filter((m): m is Extract<ToTab, { t: T }> => m.t === t);
  }
}

/** Lets messages cross the ports and the fake gateway answer. */
async function flush(rounds = 4): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    await settle();
    await new Promise<void>((r) => setImmediate(r));
  }
}

function collect(c: RealtimeClient, channel: string): string[] {
  const ids: string[] = [];
  c.subscribe(channel, (e) => ids.push(e.id));
  return ids;
}

/** Channel changes the gateway was asked for, in order. */
function changes(): { add?: string[]; remove?: string[] }[] {
  return gw.server.subscriptionCalls().map((c) => c.body);
}

/** Channels removed from the live connection, in order. */
function removed(): string[] {
  return changes().flatMap((c) => c.remove ?? []);
}

describe("SharedWorker hub", () => {
  it("streams the union of every tab's channels over one connection, reference-counted", async () => {
    makeHub();
    const a = tab();
    const b = tab();
    const aX = collect(a, X);
    await flush();
    const offBX = b.subscribe(X, () => {});
    const bY = collect(b, Y);
    await flush();

    expect(gw.server.streamCalls().length).toBe(1);
    expect(hub.tabCount(KEY)).toBe(2);
    expect([...gw.server.lastStream().channels].sort()).toEqual([X, Y]);
    expect(a.state).toEqual({ status: "connected", transport: "stream" });
    expect(b.state).toEqual({ status: "connected", transport: "stream" });
    expect(a.isLeader || b.isLeader).toBe(false);
    expect(a.sharing).toBe("sharedworker");

    // B drops X: A still wants it, nothing changes on the gateway.
    offBX();
    await flush();
    expect(changes()).toEqual([{ add: [Y] }]);
    const e1 = gw.server.publish(X);
    const e2 = gw.server.publish(Y);
    await flush();
    expect(aX).toEqual([e1.id]);
    expect(bY).toEqual([e2.id]);

    // A closes: X is no longer wanted by anybody and leaves the connection.
    a.close();
    await flush();
    expect(changes()).toEqual([{ add: [Y] }, { remove: [X] }]);
    expect(gw.server.streamCalls().length).toBe(1);
    expect(b.lastEventId).toBe(e2.id);
  });

  it("routes each event only to the tabs whose channels or patterns match; the others get the position", async () => {
    makeHub();
    const onX = new RawTab();
    const onY = new RawTab();
    const onPattern = new RawTab();
    onX.sub(X);
    onY.sub(Y);
    onPattern.sub("logs:w1:*");
    await flush();
    const e1 = gw.server.publish(X);
    const e2 = gw.server.publish(Y);
    const e3 = gw.server.publish("logs:w2:z");
    await flush();

    expect(gw.server.streamCalls().length).toBe(1);
    expect(onX.events()).toEqual([e1.id]);
    expect(onY.events()).toEqual([e2.id]);
    expect(onPattern.events()).toEqual([e1.id, e2.id]);
    expect(e3.id).toBe("3"); // nobody wants it: never on the stream
    // Every tab learns the resume position, even of events it did not get.
    for (const t of [onX, onY, onPattern]) {
      const last = t.got.filter((m) => m.t === "ev" || m.t === "pos").at(-1) as { id: string };
      expect(last.id).toBe(e2.id);
    }
    expect(onX.of("state").at(-1)?.s).toEqual({ status: "connected", transport: "stream" });
  });

  it("a tab's bye removes its channels; the last tab's bye closes the stream", async () => {
    makeHub();
    const a = new RawTab();
    const b = new RawTab();
    a.sub(X);
    b.sub(X, Y);
    await flush();
    expect([...gw.server.lastStream().channels].sort()).toEqual([X, Y]);

    expect(removed()).toEqual([]);
    b.send({ t: "bye" });
    await flush();
    expect(removed()).toEqual([Y]);
    expect(hub.tabCount(KEY)).toBe(1);
    const e = gw.server.publish(X);
    await flush();
    expect(a.events()).toEqual([e.id]);
    expect(b.events()).toEqual([]);

    a.send({ t: "bye" });
    await flush();
    expect(hub.tabCount(KEY)).toBe(0);
    expect(hub.transport(KEY)).toBeUndefined();
    expect(gw.server.openStreams()).toEqual([]);
  });

  it("a tab silent for the timeout is forgotten; a live tab's pings keep it; a forgotten tab is asked to say hello again", async () => {
    makeHub({ portTimeoutMs: 3 * PING_MS });
    const live = tab();
    const liveX = collect(live, X);
    const silent = new RawTab();
    silent.sub(Y);
    await flush();
    expect([...gw.server.lastStream().channels].sort()).toEqual([X, Y]);

    await advance(2 * PING_MS);
    await flush();
    expect(hub.tabCount(KEY)).toBe(2);
    expect(removed()).toEqual([]);
    await advance(3 * PING_MS);
    await flush();
    expect(hub.tabCount(KEY)).toBe(1);
    expect(removed()).toEqual([Y]);
    const e = gw.server.publish(X);
    await flush();
    expect(liveX).toEqual([e.id]);

    silent.send({ t: "ping" });
    await flush();
    expect(silent.of("who").length).toBe(1);
  });

  it("pagehide says bye (the tab's channels leave at once); pageshow joins again", async () => {
    makeHub();
    const env = new FakeEnv();
    const a = tab({ environment: env });
    const b = tab();
    const aY = collect(a, Y);
    collect(b, X);
    await flush();
    expect([...gw.server.lastStream().channels].sort()).toEqual([X, Y]);

    env.fire("pagehide");
    await flush();
    expect(hub.tabCount(KEY)).toBe(1);
    expect(removed()).toEqual([Y]);

    env.fire("pageshow");
    await flush();
    expect(hub.tabCount(KEY)).toBe(2);
    expect([...gw.server.lastStream().channels].sort()).toEqual([X, Y]);
    const e = gw.server.publish(Y);
    await flush();
    expect(aY).toEqual([e.id]);
    expect(gw.server.streamCalls().length).toBe(1);
  });

  it("a tab whose lock the browser releases (it crashed) is dropped at once", async () => {
    const locks = new FakeLocks();
    makeHub({ locks: locks.for("worker") });
    const a = tab({ locks: locks.for("A") });
    const b = tab({ locks: locks.for("B") });
    collect(a, X);
    const bY = collect(b, Y);
    await flush();
    expect([...gw.server.lastStream().channels].sort()).toEqual([X, Y]);

    expect(hub.tabCount(KEY)).toBe(2);
    locks.crash("A");
    await flush();
    expect(hub.tabCount(KEY)).toBe(1);
    expect(removed()).toEqual([X]);
    const e = gw.server.publish(Y);
    await flush();
    expect(bY).toEqual([e.id]);
  });

  it("asks a tab for the token (connect, then unauthorized after a 401) and sends it", async () => {
    makeHub();
    const reasons: string[] = [];
    let n = 0;
    const a = tab({
      getToken: (reason) => {
        reasons.push(reason);
        return Promise.resolve(`tok${++n}`);
      },
    });
    gw.server.streamReplies.push(apiError(401, "invalid_token"));
    const ids = collect(a, X);
    await flush(8);

    const streams = gw.server.streamCalls();
    expect(streams.map((c) => c.headers.get("authorization"))).toEqual(["Bearer tok1", "Bearer tok2"]);
    expect(reasons).toEqual(["connect", "unauthorized"]);
    expect(a.state.status).toBe("connected");
    const e = gw.server.publish(X);
    await flush();
    expect(ids).toEqual([e.id]);
  });

  it("a tab that does not answer a token request in time hands it to another tab", async () => {
    makeHub({ tokenTimeoutMs: 2000 });
    const mute = new RawTab(true);
    mute.sub(X);
    await flush();
    expect(mute.of("token").map((m) => m.reason)).toEqual(["connect"]);
    expect(gw.server.streamCalls().length).toBe(0);

    const b = tab({ getToken: () => "from-b" });
    collect(b, X);
    await flush();
    await advance(1900);
    await flush();
    expect(gw.server.streamCalls().length).toBe(0);
    await advance(100);
    await flush();
    expect(gw.server.streamCalls().map((c) => c.headers.get("authorization"))).toEqual(["Bearer from-b"]);
    expect(b.state.status).toBe("connected");
  });

  it("a token request goes to another tab at once when the asked tab leaves", async () => {
    makeHub({ tokenTimeoutMs: 60_000 });
    const first = new RawTab(true);
    first.sub(X);
    await flush();
    expect(first.of("token").length).toBe(1);
    const second = new RawTab(true);
    second.sub(Y);
    await flush();
    expect(second.of("token")).toEqual([]);

    first.send({ t: "bye" });
    await flush();
    const [ask] = second.of("token");
    expect(ask?.reason).toBe("connect");
    second.send({ t: "token", req: ask!.req, token: "second" });
    await flush();
    expect(gw.server.streamCalls().map((c) => c.headers.get("authorization"))).toEqual(["Bearer second"]);
    expect(gw.server.streamCalls()[0]!.url.searchParams.getAll("channel")).toEqual([Y]);
  });

  it("relays gaps (to the channel's tabs) and channel refusals to the tabs concerned", async () => {
    makeHub();
    const a = tab();
    const b = tab();
    const gapsA: GapInfo[] = [];
    const gapsB: GapInfo[] = [];
    const errorsB: string[] = [];
    a.subscribe(X, () => {}, { onGap: (g) => gapsA.push(g) });
    b.subscribe(Y, () => {}, { onGap: (g) => gapsB.push(g) });
    await flush();
    gw.server.lastStream().control("gap", { last_event_id: "1", oldest_id: "5", channel: Y });
    await flush();
    expect(gapsA).toEqual([]);
    expect(gapsB).toEqual([{ lastEventId: "1", oldestId: "5", channel: Y }]);

    gw.server.subscriptionReplies.push(apiError(403, "forbidden_channel", { channels: ["secret:1"] }));
    b.subscribe("secret:1", () => {}, { onError: (e) => errorsB.push(`${e.code} ${e.channels}`) });
    await flush();
    expect(errorsB).toEqual(["forbidden_channel secret:1"]);
  });

  it("reconnect() in a tab restarts the worker's stream; the stream pauses only when every tab is paused", async () => {
    makeHub();
    const a = new RawTab();
    const b = new RawTab();
    a.sub(X);
    b.sub(Y);
    await flush();
    a.send({ t: "ctl", op: "reconnect" });
    await flush();
    expect(gw.server.streamCalls().length).toBe(2);
    expect(gw.server.openStreams().length).toBe(1);

    a.send({ t: "sub", channels: [X], paused: true });
    await flush();
    expect(gw.server.openStreams().length).toBe(1);
    b.send({ t: "sub", channels: [Y], paused: true });
    await flush();
    expect(gw.server.openStreams().length).toBe(0);
    expect(a.of("state").at(-1)?.s).toEqual({ status: "offline", reason: "hidden" });
  });
});

describe("sharing: sharedworker falls back", () => {
  it("to the leader mode where SharedWorker does not exist (a URL is given) or the factory throws", async () => {
    const locks = new FakeLocks();
    const bus = new FakeBus();
    const common = {
      url: URL_,
      fetch: gw.server.fetchFor("tab"),
      locks: locks.for("A"),
      broadcastChannel: bus.factory("A"),
      environment: null,
    };
    expect(typeof (globalThis as { SharedWorker?: unknown }).SharedWorker).toBe("undefined");
    const byUrl = createClient({ ...common, sharing: "sharedworker", sharedWorker: "/worker.js" });
    const throwing = createClient({
      ...common,
      sharing: "sharedworker",
      sharedWorker: () => {
        throw new ReferenceError("SharedWorker is not defined");
      },
    });
    gw.closeAfter(byUrl, throwing);
    byUrl.subscribe(X, () => {});
    throwing.subscribe(X, () => {});
    await settle();
    expect(byUrl.sharing).toBe("leader");
    expect(throwing.sharing).toBe("leader");
    expect(() => createClient({ url: URL_, sharing: "sharedworker" })).toThrow(TypeError);
  });

  it("to the leader mode, keeping the subscriptions, when the worker script fails to load", async () => {
    const locks = new FakeLocks();
    const bus = new FakeBus();
    const { port1, port2 } = new MessageChannel();
    gw.closePortsAfter(port1, port2);
    const worker: SharedWorkerLike = { port: port1 as unknown as MessagePortLike, onerror: null };
    const c = createClient({
      url: URL_,
      fetch: gw.server.fetchFor("tab"),
      locks: locks.for("A"),
      broadcastChannel: bus.factory("A"),
      environment: null,
      sharing: "sharedworker",
      sharedWorker: () => worker,
    });
    gw.closeAfter(c);
    const ids = collect(c, X);
    await settle();
    expect(c.sharing).toBe("sharedworker");
    expect(gw.server.streamCalls().length).toBe(0);

    worker.onerror?.({ type: "error" } as ErrorEvent);
    await flush();
    expect(c.sharing).toBe("leader");
    expect(c.isLeader).toBe(true);
    expect(c.state.status).toBe("connected");
    const e = gw.server.publish(X);
    await flush();
    expect(ids).toEqual([e.id]);
  });
});

describe("since / history through the worker", () => {
  it("a tab's history on a channel a pattern of the connection covers: added without, that tab loads it over REST; states follow", async () => {
    makeHub();
    for (let i = 0; i < 3; i++) gw.server.publish(Y);
    const a = tab();
    const b = tab({ fetch: gw.server.fetchFor("B") });
    const ax: string[] = [];
    const by: string[] = [];
    const bOther: string[] = [];
    a.subscribe(X, (e) => ax.push(e.id));
    a.subscribe("logs:w1:*", (e) => ax.push(e.id));
    await settle();
    b.subscribe(Y, (e) => by.push(e.id), { history: 2 });
    b.subscribe("logs:**", (e) => bOther.push(e.id));
    await flush();
    // Y is covered by a's logs:w1:* already: the gateway gives it no history, so it is added
    // without, and b loads its history over REST.
    expect(gw.server.subscriptionCalls().map((x) => x.body)).toEqual([{ add: ["logs:**", Y] }]);
    expect(by).toEqual(["2", "3"]);
    expect(gw.server.historyCalls()).toHaveLength(1);
    expect(ax).toEqual([]);
    expect(bOther).toEqual([]);
    expect(b.subscriptionState(Y)!.status).toBe("subscribed");
    expect(a.subscriptionState(X)!.status).toBe("subscribed");
    expect(b.sharingState).toEqual({ mode: "sharedworker", isLeader: false });
  });
});
