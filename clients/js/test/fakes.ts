/**
 * Test doubles, written once: a gateway behind a fake `fetch` (streams the test controls, or
 * an automatic mode that behaves like the real log: ids, replay after Last-Event-ID, live
 * delivery, subscription changes), Web Locks, a BroadcastChannel bus, and a window; and
 * `useFakeGateway`, the per-test setup of a test file (fake time, a new gateway, clients
 * closed after each test).
 */

import { afterEach, beforeEach, vi } from "vitest";
import { subscriptionMatches } from "../src/channels.js";
import { createClient } from "../src/client.js";
import type {
  BroadcastChannelLike,
  ClientOptions,
  Environment,
  LocksLike,
  RealtimeClient,
  RealtimeEvent,
} from "../src/types.js";

const encoder = new TextEncoder();

/** Timers the tests drive; microtasks, `setImmediate` and `nextTick` stay real. */
export function useFakeTime(): void {
  vi.useFakeTimers({
    toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"],
  });
}

/** Lets every pending promise chain run (streams, fetch replies, microtask flushes). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await vi.advanceTimersByTimeAsync(0);
    await new Promise<void>((r) => setImmediate(r));
  }
}

/** Advances fake time, letting promises run between timers. */
export async function advance(ms: number): Promise<void> {
  await vi.advanceTimersByTimeAsync(ms);
  await settle();
}

export function envelope(id: string, channel = "logs:w1:f1", data: unknown = { n: id }): RealtimeEvent {
  return { id, channel, type: "log.created", time: "2026-11-22T10:00:00.123Z", data };
}

export function frame(f: { id?: string; event?: string; data: unknown }): string {
  let s = "";
  if (f.id !== undefined) s += `id: ${f.id}\n`;
  if (f.event !== undefined) s += `event: ${f.event}\n`;
  s += `data: ${typeof f.data === "string" ? f.data : JSON.stringify(f.data)}\n\n`;
  return s;
}

/** The response surface the client uses (a real `Response` would pull undici's timers in). */
export interface FakeResponse {
  status: number;
  ok: boolean;
  headers: Headers;
  body: ReadableStream<Uint8Array> | null;
  json(): Promise<unknown>;
}

export function response(
  status: number,
  body?: unknown,
  headers: Record<string, string> = {},
): FakeResponse {
  const text = body === undefined ? "" : JSON.stringify(body);
  return {
    status,
    ok: status >= 200 && status < 300,
    headers: new Headers({ "content-type": "application/json", ...headers }),
    body: null,
    json: async () => JSON.parse(text),
  };
}

/** A reply that comes after `ms` of (fake) time, like a long-poll that waited. */
export function later(ms: number, reply: FakeResponse): Reply {
  return () => new Promise<FakeResponse>((resolve) => setTimeout(() => resolve(reply), ms));
}

export function apiError(
  status: number,
  code: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): FakeResponse {
  return response(status, { error: { code, message: code.replace(/_/g, " "), ...extra } }, headers);
}

/** An open `text/event-stream` response body the test writes to. */
export class FakeStream {
  readonly body: ReadableStream<Uint8Array>;
  closed = false;
  /** Channels of this connection (auto mode keeps it current). */
  channels = new Set<string>();
  connectionId = "";
  private controller!: ReadableStreamDefaultController<Uint8Array>;

  constructor(readonly call: Call) {
    this.body = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.controller = c;
      },
      cancel: () => {
        this.closed = true;
      },
    });
    call.signal?.addEventListener("abort", () => {
      if (this.closed) return;
      this.closed = true;
      try {
        this.controller.error(new DOMException("The operation was aborted.", "AbortError"));
      } catch {
        // already errored
      }
    });
  }

  write(text: string | Uint8Array): void {
    if (this.closed) return;
    this.controller.enqueue(typeof text === "string" ? encoder.encode(text) : text);
  }

  connected(connectionId = "c_1", channels?: string[], heartbeatMs = 15000, lastEventId?: string): void {
    this.connectionId = connectionId;
    const chans = channels ?? this.call.url.searchParams.getAll("channel");
    this.channels = new Set(chans);
    this.write(": ok\n\nretry: 2000\n\n");
    const data: Record<string, unknown> = {
      channels: chans,
      connection_id: connectionId,
      heartbeat_ms: heartbeatMs,
      user: "u1",
    };
    if (lastEventId !== undefined) data.last_event_id = lastEventId;
    this.write(frame({ event: "connected", data }));
  }

  deliver(e: RealtimeEvent, withId = true): void {
    this.write(frame({ id: withId ? e.id : undefined, event: e.type, data: e }));
  }

  /** A history frame: no `id:` line (a channel added with since/history). */
  history(e: RealtimeEvent): void {
    this.deliver(e, false);
  }

  control(event: string, data: unknown): void {
    this.write(frame({ event, data }));
  }

  end(): void {
    if (this.closed) return;
    this.closed = true;
    this.controller.close();
  }

  fail(): void {
    if (this.closed) return;
    this.closed = true;
    this.controller.error(new TypeError("network error"));
  }
}

export interface Call {
  url: URL;
  method: string;
  headers: Headers;
  body: any;
  signal: AbortSignal | undefined;
  credentials: RequestCredentials | undefined;
  /** Which tab's fetch made the call (`fetchFor`). */
  tab: string;
}

/** What the server does with one request. */
export type Reply =
  | FakeResponse
  | "stream"
  | "hang"
  | "network"
  | ((call: Call) => FakeResponse | "stream" | "hang" | "network" | Promise<FakeResponse>);

export class FakeServer {
  readonly calls: Call[] = [];
  readonly streams: FakeStream[] = [];
  /** Replies for the next stream / poll / subscription requests, in order; then defaults. */
  readonly streamReplies: Reply[] = [];
  readonly pollReplies: Reply[] = [];
  readonly subscriptionReplies: Reply[] = [];
  /** Replies for the next history requests; then the log's answer (`historyAnswer`). */
  readonly historyReplies: Reply[] = [];
  /**
   * Auto mode: each stream gets `connected`, the replay after its Last-Event-ID and live
   * events from `publish`; subscription changes apply to the connection. Otherwise streams
   * stay silent until the test writes to them.
   */
  auto = false;
  readonly log: RealtimeEvent[] = [];
  private readonly blocked = new Set<string>();
  private connections = 0;

  readonly fetch = this.fetchFor("tab");

  fetchFor(tab: string): typeof fetch {
    return ((input: RequestInfo | URL, init?: RequestInit) =>
      this.handle(tab, input, init)) as unknown as typeof fetch;
  }

  /** Requests of this tab never get an answer from now on (a crashed tab). */
  block(tab: string): void {
    this.blocked.add(tab);
    for (const s of this.streams) if (s.call.tab === tab) s.fail();
  }

  streamCalls(): Call[] {
    return this.calls.filter((c) => c.url.pathname === "/v1/stream");
  }

  pollCalls(): Call[] {
    return this.calls.filter((c) => c.url.pathname === "/v1/poll");
  }

  historyCalls(): Call[] {
    return this.calls.filter((c) => /^\/v1\/channels\/[^/]+\/history$/.test(c.url.pathname));
  }

  subscriptionCalls(): Call[] {
    return this.calls.filter((c) => c.url.pathname.endsWith("/subscriptions"));
  }

  lastStream(): FakeStream {
    const s = this.streams[this.streams.length - 1];
    if (!s) throw new Error("no stream was opened");
    return s;
  }

  openStreams(): FakeStream[] {
    return this.streams.filter((s) => !s.closed);
  }

  /** Appends to the log (auto mode) and delivers to the open streams that match. */
  publish(channel: string, data: unknown = null): RealtimeEvent {
    const e = envelope(String(this.log.length + 1), channel, data);
    this.log.push(e);
    for (const s of this.openStreams()) {
      if (s.connectionId && [...s.channels].some((c) => subscriptionMatches(c, channel))) s.deliver(e);
    }
    return e;
  }

  private async handle(tab: string, input: RequestInfo | URL, init?: RequestInit): Promise<FakeResponse> {
    const url = new URL(String(input));
    const call: Call = {
      url,
      method: init?.method ?? "GET",
      headers: new Headers(init?.headers),
      body: typeof init?.body === "string" ? JSON.parse(init.body) : undefined,
      signal: init?.signal ?? undefined,
      credentials: init?.credentials,
      tab,
    };
    this.calls.push(call);
    if (this.blocked.has(tab)) return this.hang(call);
    let reply: Reply | undefined;
    if (url.pathname === "/v1/stream") reply = this.streamReplies.shift() ?? "stream";
    else if (url.pathname === "/v1/poll") reply = this.pollReplies.shift() ?? "hang";
    else if (url.pathname.endsWith("/subscriptions")) {
      reply = this.subscriptionReplies.shift() ?? ((c) => this.changeSubscriptions(c));
    } else if (/^\/v1\/channels\/[^/]+\/history$/.test(url.pathname)) {
      reply = this.historyReplies.shift() ?? ((c) => this.historyAnswer(c));
    } else reply = response(404, { error: { code: "not_found", message: "no route" } });
    if (typeof reply === "function") reply = await reply(call);
    if (reply === "hang") return this.hang(call);
    if (reply === "network") throw new TypeError("Failed to fetch");
    if (reply === "stream") return this.openStream(call);
    return reply;
  }

  private hang(call: Call): Promise<FakeResponse> {
    return new Promise((_, reject) => {
      call.signal?.addEventListener("abort", () =>
        reject(new DOMException("The operation was aborted.", "AbortError")),
      );
    });
  }

  private openStream(call: Call): FakeResponse {
    const s = new FakeStream(call);
    this.streams.push(s);
    if (this.auto) {
      // Like the gateway: Last-Event-ID, else `since`, else `history=N` (the last N events of
      // each exact channel, with ids), then live.
      s.connected(`c_${++this.connections}`, undefined, 15000, String(this.log.length));
      const last = call.headers.get("last-event-id") ?? call.url.searchParams.get("since");
      const history = Number(call.url.searchParams.get("history") ?? "0");
      if (last === null && history > 0) {
        for (const e of this.historyOf([...s.channels], null, history)) s.deliver(e);
      }
      const from = last ? Number(last) : this.log.length;
      for (const e of this.log.slice(from)) {
        if ([...s.channels].some((c) => subscriptionMatches(c, e.channel))) s.deliver(e);
      }
    }
    return {
      status: 200,
      ok: true,
      headers: new Headers({ "content-type": "text/event-stream; charset=utf-8" }),
      body: s.body,
      json: async () => {
        throw new Error("a stream is not JSON");
      },
    };
  }

  /**
   * The last `n` events (all with n null) of exact channels (patterns with `since`), after
   * `since`, in log order.
   */
  historyOf(channels: string[], since: string | null, n: number | null): RealtimeEvent[] {
    const after = since === null ? 0 : Number(since);
    const out: RealtimeEvent[] = [];
    for (const c of channels) {
      if (since === null && c.includes("*")) continue;
      const of = this.log.filter((e) => Number(e.id) > after && subscriptionMatches(c, e.channel));
      out.push(...(n === null ? of : of.slice(Math.max(0, of.length - n))));
    }
    return out.sort((a, b) => Number(a.id) - Number(b.id));
  }

  /**
   * `GET /v1/channels/{channel}/history?limit=&before=` from the log, like the gateway: the
   * newest `limit` (default 100) events of the channel before `before`, oldest first.
   */
  historyAnswer(call: Call): FakeResponse {
    const channel = decodeURIComponent(call.url.pathname.split("/")[3] ?? "");
    const limit = Number(call.url.searchParams.get("limit") ?? "100");
    const before = call.url.searchParams.get("before");
    const bound = before === null ? this.log.length : Number(before) - 1;
    const of = this.log.filter((e) => e.channel === channel && Number(e.id) <= bound);
    const events = of.slice(Math.max(0, of.length - limit));
    return response(200, {
      channel,
      events,
      more: of.length > events.length,
      last_event_id: String(Math.max(0, bound)),
    });
  }

  /**
   * The default answer to a subscription change: applied to the connection's channels; in
   * auto mode, `since`/`history` deliver history frames (no `id:`) of the added channels.
   */
  changeSubscriptions(call: Call): FakeResponse {
    const id = decodeURIComponent(call.url.pathname.split("/")[3] ?? "");
    const s = this.streams.find((x) => x.connectionId === id && !x.closed);
    if (!s) return apiError(404, "connection_not_found");
    const added: string[] = call.body?.add ?? [];
    for (const c of added) s.channels.add(c);
    for (const c of call.body?.remove ?? []) s.channels.delete(c);
    const since: string | null = call.body?.since ?? null;
    const history: number | null = call.body?.history ?? null;
    if (this.auto && (since !== null || history !== null)) {
      const frames = this.historyOf(added, since, history);
      queueMicrotask(() => {
        for (const e of frames) s.history(e);
      });
    }
    return response(200, { channels: [...s.channels].sort() });
  }
}

// ---- per-test setup -------------------------------------------------------------------------

/** The fake gateway's origin. */
export const GATEWAY_URL = "http://gw.test";

/**
 * A client of `server` as the tests make it: one tab on its own (no sharing), no window, and
 * `random` 0.5 (backoff 1000 ms after the gateway's `retry: 2000`).
 */
export function clientOptions(server: FakeServer): ClientOptions {
  return {
    url: GATEWAY_URL,
    fetch: server.fetch,
    random: () => 0.5,
    environment: null,
    shareAcrossTabs: false,
  };
}

/** What `useFakeGateway` gives a test file; `server` is the running test's. */
export interface FakeGateway {
  readonly server: FakeServer;
  /** A client with `clientOptions`, then `options`; closed after the test. */
  client(options?: Partial<ClientOptions>): RealtimeClient;
  /** Tabs of one browser sharing a stream (leader mode): new Web Locks and a new bus. */
  browser(): FakeBrowser;
  /** Closes these clients after the test (with the others, before the ports). */
  closeAfter(...clients: RealtimeClient[]): void;
  /** Closes these ports after the test, after the clients. */
  closePortsAfter(...ports: { close(): void }[]): void;
}

export interface FakeBrowser {
  locks: FakeLocks;
  bus: FakeBus;
  /** A tab: its own fetch (`fetchFor(label)`), Web Locks and BroadcastChannels; leader mode. */
  tab(label: string, options?: Partial<ClientOptions>): RealtimeClient;
}

/**
 * Registers the hooks of a test file: before each test fake time and a new `FakeServer` (in
 * auto mode with `auto`); after it, the clients closed, then the ports, then real timers.
 */
export function useFakeGateway(options: { auto?: boolean } = {}): FakeGateway {
  let server: FakeServer | undefined;
  let clients: RealtimeClient[] = [];
  let ports: { close(): void }[] = [];

  beforeEach(() => {
    useFakeTime();
    server = new FakeServer();
    if (options.auto) server.auto = true;
    clients = [];
    ports = [];
  });

  afterEach(() => {
    for (const c of clients) c.close();
    for (const p of ports) p.close();
    vi.useRealTimers();
  });

  const gateway: FakeGateway = {
    get server(): FakeServer {
      if (!server) throw new Error("the fake gateway exists inside a test only");
      return server;
    },
    client(more = {}) {
      const c = createClient({ ...clientOptions(gateway.server), ...more });
      clients.push(c);
      return c;
    },
    browser() {
      const locks = new FakeLocks();
      const bus = new FakeBus();
      const tab = (label: string, more: Partial<ClientOptions> = {}) =>
        gateway.client({
          shareAcrossTabs: undefined,
          fetch: gateway.server.fetchFor(label),
          locks: locks.for(label),
          broadcastChannel: bus.factory(label),
          ...more,
        });
      return { locks, bus, tab };
    },
    closeAfter(...more) {
      clients.push(...more);
    },
    closePortsAfter(...more) {
      ports.push(...more);
    },
  };
  return gateway;
}

// ---- browser doubles ------------------------------------------------------------------------

export class FakeEnv implements Environment {
  online = true;
  hidden = false;
  private readonly listeners = new Map<string, Set<() => void>>();

  addEventListener(type: string, l: () => void): void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(l);
  }

  removeEventListener(type: string, l: () => void): void {
    this.listeners.get(type)?.delete(l);
  }

  isOnline(): boolean {
    return this.online;
  }

  isHidden(): boolean {
    return this.hidden;
  }

  listenerCount(): number {
    let n = 0;
    for (const s of this.listeners.values()) n += s.size;
    return n;
  }

  fire(type: string): void {
    for (const l of [...(this.listeners.get(type) ?? [])]) l();
  }

  setOnline(online: boolean): void {
    this.online = online;
    this.fire(online ? "online" : "offline");
  }

  setHidden(hidden: boolean): void {
    this.hidden = hidden;
    this.fire("visibilitychange");
  }
}

interface LockWaiter {
  tab: string;
  callback: (lock: unknown) => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** Exclusive Web Locks for several tabs; `crash` releases a tab's lock without asking it. */
export class FakeLocks {
  private holder = new Map<string, string>();
  private readonly queues = new Map<string, LockWaiter[]>();

  for(tab: string): LocksLike {
    return {
      request: (name, options, callback) =>
        new Promise((resolve, reject) => {
          const w: LockWaiter = { tab, callback, resolve, reject };
          options.signal?.addEventListener("abort", () => {
            const q = this.queues.get(name) ?? [];
            const i = q.indexOf(w);
            if (i >= 0) {
              q.splice(i, 1);
              reject(new DOMException("aborted", "AbortError"));
            }
          });
          const q = this.queues.get(name) ?? [];
          this.queues.set(name, q);
          q.push(w);
          this.grant(name);
        }),
    };
  }

  holderOf(name: string): string | undefined {
    return this.holder.get(name);
  }

  /** The tab died: its locks go to the next waiter, its queued requests vanish. */
  crash(tab: string): void {
    for (const [name, q] of this.queues) {
      this.queues.set(
        name,
        q.filter((w) => w.tab !== tab),
      );
    }
    for (const [name, t] of [...this.holder]) {
      if (t === tab) {
        this.holder.delete(name);
        this.grant(name);
      }
    }
  }

  private grant(name: string): void {
    if (this.holder.has(name)) return;
    const q = this.queues.get(name) ?? [];
    const w = q.shift();
    if (!w) return;
    this.holder.set(name, w.tab);
    queueMicrotask(() => {
      Promise.resolve()
        .then(() => w.callback({ name, mode: "exclusive" }))
        .then(
          (v) => {
            this.release(name, w.tab);
            w.resolve(v);
          },
          (e) => {
            this.release(name, w.tab);
            w.reject(e);
          },
        );
    });
  }

  private release(name: string, tab: string): void {
    if (this.holder.get(name) !== tab) return; // crashed earlier
    this.holder.delete(name);
    this.grant(name);
  }
}

/** BroadcastChannels of several tabs: async, structured-cloned, never to the sender. */
export class FakeBus {
  private readonly members = new Set<FakeChannel>();
  /** Every message posted, for assertions. */
  readonly posted: { tab: string; message: any }[] = [];
  /** Messages that are lost (an older bundle that never sends them, a crash): not delivered. */
  drop: ((message: any) => boolean) | null = null;

  factory(tab: string): (name: string) => BroadcastChannelLike {
    return (name) => {
      const ch = new FakeChannel(this, tab, name);
      this.members.add(ch);
      return ch;
    };
  }

  /** A crashed tab: its channels neither send nor receive any more. */
  kill(tab: string): void {
    for (const m of [...this.members]) if (m.tab === tab) this.members.delete(m);
  }

  /** Posts as if from another tab (for late or forged messages). */
  inject(name: string, message: unknown, fromTab = "ghost"): void {
    this.send(new FakeChannel(this, fromTab, name), message, true);
  }

  send(from: FakeChannel, message: unknown, forged = false): void {
    if (!forged && !this.members.has(from)) return;
    this.posted.push({ tab: from.tab, message });
    if (this.drop?.(message)) return;
    const data = structuredClone(message);
    for (const m of this.members) {
      if (m === from || m.name !== from.name) continue;
      queueMicrotask(() => {
        if (this.members.has(m)) m.onmessage?.({ data });
      });
    }
  }

  remove(ch: FakeChannel): void {
    this.members.delete(ch);
  }
}

class FakeChannel implements BroadcastChannelLike {
  onmessage: ((event: { data: unknown }) => void) | null = null;
  constructor(
    private readonly bus: FakeBus,
    readonly tab: string,
    readonly name: string,
  ) {}

  postMessage(message: unknown): void {
    this.bus.send(this, message);
  }

  close(): void {
    this.bus.remove(this);
  }
}
