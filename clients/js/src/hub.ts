/**
 * The SharedWorker side of `sharing: "sharedworker"`: one stream per share key for every tab
 * of the origin, run by the worker with the same `Transport` a tab would use.
 *
 * - Each tab connects over its own MessagePort and says `hello` (its share key, its transport
 *   settings, its resume position). Tabs of one key form a group; the first tab's settings and
 *   position start the group's `Transport`, later tabs join the running stream.
 * - Each tab sends its channel set (and whether its hidden-tab policy paused it); the group
 *   streams the union — reference-counted across tabs — and changes it on the live connection.
 * - Events go only to the tabs whose channels (or patterns) match; every tab gets the states,
 *   broadcasts and the resume position (at most one `pos` per task).
 * - `getToken` lives in the tabs: the worker asks one (the most recently heard, then the
 *   others) and waits `TOKEN_TIMEOUT_MS` for each answer.
 * - A MessagePort has no close event. A tab says `bye` on pagehide and `ping` every `PING_MS`
 *   (shared.ts);
 *   a tab silent for `PORT_TIMEOUT_MS` is forgotten. Where Web Locks exist, each tab also holds
 *   a lock of its own that the worker waits for: the browser releases it when the tab dies.
 *   A forgotten tab that speaks again is asked (`who`) to say `hello` again.
 * - When the last tab of a group leaves, its stream is closed.
 */

import { subscriptionMatches } from "./channels.js";
import { Transport, type TransportConfig } from "./transport.js";
import type { LocksLike, MessagePortLike, TokenReason } from "./types.js";
import {
  alreadyStarted,
  errorToJson,
  pauseWanted,
  startOf,
  startsFromWire,
  unionOf,
  verdicts,
  type Member,
  type Relay,
  type Starts,
} from "./upstream.js";

/**
 * A tab silent this long is forgotten. Generous: the timers of a tab hidden for minutes may run
 * once a minute only (Chrome's intensive throttling), and a closing tab usually says `bye`.
 */
export const PORT_TIMEOUT_MS = 150_000;
/** A tab that has not answered a token request within this long: ask another one. */
export const TOKEN_TIMEOUT_MS = 10_000;

/** The transport settings as they cross a MessagePort (functions cannot). */
export type WireConfig = Omit<TransportConfig, "fetch" | "getToken" | "random"> & {
  /** Whether the tab has a `getToken` to ask. */
  token: boolean;
};

/** Tab → worker. */
export type ToWorker = { v: 1 } & (
  | { t: "hello"; key: string; cfg: WireConfig; last: string; offline: boolean }
  | { t: "sub"; channels: string[]; paused: boolean; o?: Starts }
  | { t: "off"; offline: boolean }
  | { t: "ctl"; op: "reconnect" }
  | { t: "token"; req: number; token?: string | null; error?: string }
  | { t: "ping" }
  | { t: "bye" }
  | { t: "lock"; name: string }
);

/** Worker → tab. */
export type ToTab = { v: 1 } & (
  | Relay
  | { t: "token"; req: number; reason: TokenReason }
  /** Whether the tab's since/history for channel `c` was used (else it loads it over REST). */
  | { t: "st"; c: string; ok: boolean }
  /** The worker does not know this port (forgotten, or the worker restarted): say `hello`. */
  | { t: "who" }
);

type Body<M> = M extends unknown ? Omit<M, "v"> : never;

export interface HubOptions {
  /** Default: the worker's `fetch`. */
  fetch?: typeof fetch;
  /** Default: `Math.random`. */
  random?: () => number;
  /** Web Locks, to learn at once that a tab died. Default: `navigator.locks` when present. */
  locks?: LocksLike;
  portTimeoutMs?: number;
  tokenTimeoutMs?: number;
  /** Default: `console.error`. */
  onUnexpectedError?: (error: unknown) => void;
}

interface Tab extends Member {
  readonly port: MessagePortLike;
  group: Group | null;
  channels: string[];
  paused: boolean;
  offline: boolean;
  /** The tab has a `getToken`. */
  token: boolean;
  /** When the tab was last heard. */
  seen: number;
  /** The resume position this tab was last told. */
  pos: string;
  /** The lock the worker waits for (asked once per tab). */
  lock: string | null;
}

interface TokenRequest {
  reason: TokenReason;
  tab: Tab | null;
  asked: Set<Tab>;
  timer: ReturnType<typeof setTimeout> | undefined;
  resolve(token: string | null): void;
  reject(error: Error): void;
}

/** Everything a worker serves: the groups of tabs, one stream each. */
export class WorkerHub {
  private readonly groups = new Map<string, Group>();
  private sweepTimer: ReturnType<typeof setInterval> | undefined;
  readonly portTimeoutMs: number;
  readonly tokenTimeoutMs: number;

  constructor(readonly options: HubOptions = {}) {
    this.portTimeoutMs = options.portTimeoutMs ?? PORT_TIMEOUT_MS;
    this.tokenTimeoutMs = options.tokenTimeoutMs ?? TOKEN_TIMEOUT_MS;
  }

  /** A tab connected (the SharedWorker's `connect` event). */
  connect(port: MessagePortLike): void {
    const tab: Tab = {
      port,
      group: null,
      channels: [],
      starts: {},
      paused: false,
      offline: false,
      token: false,
      seen: Date.now(),
      pos: "",
      lock: null,
    };
    port.onmessage = (ev) => this.receive(tab, ev.data);
    port.start?.();
  }

  /** The running stream of a share key (tests, debugging). */
  transport(key: string): Transport | undefined {
    return this.groups.get(key)?.transport;
  }

  /** How many tabs a share key has. */
  tabCount(key: string): number {
    return this.groups.get(key)?.tabs.size ?? 0;
  }

  post(tab: Tab, body: Body<ToTab>): void {
    try {
      tab.port.postMessage({ v: 1, ...body });
    } catch (e) {
      this.unexpected(e);
    }
  }

  unexpected(error: unknown): void {
    const report = this.options.onUnexpectedError;
    if (report) report(error);
    else if (typeof console !== "undefined") console.error("ssegate worker:", error);
  }

  private receive(tab: Tab, data: unknown): void {
    const m = data as ToWorker | null;
    if (!m || m.v !== 1 || typeof m.t !== "string") return;
    tab.seen = Date.now();
    if (m.t === "hello") {
      this.join(tab, m);
      return;
    }
    const g = tab.group;
    if (!g) {
      if (m.t !== "bye") this.post(tab, { t: "who" });
      return;
    }
    switch (m.t) {
      case "sub":
        tab.channels = Array.isArray(m.channels) ? m.channels.filter((c) => typeof c === "string") : [];
        tab.paused = !!m.paused;
        tab.starts = startsFromWire(m.o);
        alreadyStarted(tab, (c) => g.transport.hasStarted(c), (c) => this.post(tab, { t: "st", c, ok: false }));
        g.update();
        return;
      case "off":
        tab.offline = !!m.offline;
        g.update();
        return;
      case "ctl":
        if (m.op === "reconnect") g.transport.reconnect();
        return;
      case "token":
        g.answer(tab, m);
        return;
      case "lock":
        this.watch(tab, m.name);
        return;
      case "bye":
        this.leave(tab);
        return;
    }
  }

  private join(tab: Tab, m: Extract<ToWorker, { t: "hello" }>): void {
    if (typeof m.key !== "string" || !m.cfg || typeof m.cfg.url !== "string") return;
    // A tab saying hello again in its group (it should not) must not restart a stream it alone holds.
    if (tab.group && tab.group.key !== m.key) this.leave(tab);
    let g = this.groups.get(m.key);
    if (!g) {
      g = new Group(this, m.key, m.cfg, typeof m.last === "string" ? m.last : "");
      this.groups.set(m.key, g);
      this.sweeping();
    }
    if (tab.group !== g) {
      tab.group = g;
      tab.channels = [];
      tab.paused = false;
    }
    tab.offline = !!m.offline;
    tab.token = !!m.cfg.token;
    g.tabs.add(tab);
    this.post(tab, { t: "state", s: g.transport.state });
    tab.pos = g.transport.lastEventId;
    if (tab.pos) this.post(tab, { t: "pos", id: tab.pos });
    if (g.live.length > 0) this.post(tab, { t: "live", c: g.live });
    g.update();
  }

  /** The tab is gone (bye, silence, its lock released). */
  leave(tab: Tab): void {
    const g = tab.group;
    if (!g) return;
    tab.group = null;
    g.tabs.delete(tab);
    g.tabLeft(tab);
    if (g.tabs.size === 0) {
      this.groups.delete(g.key);
      g.transport.close();
      this.sweeping();
    } else {
      g.update();
    }
  }

  /** Waits for the tab's own lock: the browser releases it when the tab closes or crashes. */
  private watch(tab: Tab, name: string): void {
    const locks = this.options.locks;
    if (!locks || tab.lock !== null || typeof name !== "string") return;
    tab.lock = name;
    locks
      .request(name, {}, async () => {
        if (tab.lock === name) this.leave(tab);
      })
      .catch((e: unknown) => this.unexpected(e));
  }

  /** Forgets silent tabs; runs only while some tab is connected. */
  private sweeping(): void {
    if (this.groups.size === 0) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    } else if (this.sweepTimer === undefined) {
      this.sweepTimer = setInterval(() => {
        const dead = Date.now() - this.portTimeoutMs;
        for (const g of [...this.groups.values()]) {
          for (const t of [...g.tabs]) if (t.seen < dead) this.leave(t);
        }
      }, Math.max(1, this.portTimeoutMs / 4));
    }
  }
}

/** The tabs of one share key and their stream. */
class Group {
  readonly tabs = new Set<Tab>();
  readonly transport: Transport;
  /** The live connection's channels. */
  live: string[] = [];
  private readonly tokens = new Map<number, TokenRequest>();
  private tokenSeq = 0;
  private posQueued = false;

  constructor(
    private readonly hub: WorkerHub,
    readonly key: string,
    wire: WireConfig,
    lastEventId: string,
  ) {
    const { token, ...settings } = wire;
    const o = hub.options;
    const cfg: TransportConfig = {
      ...settings,
      headers: { ...settings.headers },
      fetch: o.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      random: o.random ?? Math.random,
      getToken: token ? (reason) => this.askToken(reason) : undefined,
    };
    this.transport = new Transport(cfg, {
      channels: () => unionOf(this.tabs),
      start: (c) => startOf(this.tabs, c),
      live: (c) => {
        this.live = c;
        this.all({ t: "live", c });
      },
      started: (channels, start) =>
        verdicts(this.tabs, channels, start, (t, c, ok) => this.hub.post(t as Tab, { t: "st", c, ok })),
      event: (e, id, history) => {
        for (const t of this.tabs) {
          if (!t.channels.some((c) => subscriptionMatches(c, e.channel))) continue;
          t.pos = id;
          this.hub.post(t, history ? { t: "ev", e, id, h: 1 } : { t: "ev", e, id });
        }
        this.positions();
      },
      position: () => this.positions(),
      state: (s) => this.all({ t: "state", s }),
      gap: (g) =>
        this.to(
          (t) => g.channel === undefined || t.channels.includes(g.channel),
          { t: "gap", g },
        ),
      broadcast: (b) => this.all({ t: "bcast", b }),
      channelError: (channels, err) =>
        this.to(
          (t) => channels === null || t.channels.some((c) => channels.includes(c)),
          { t: "cerr", channels, err: errorToJson(err) },
        ),
      unexpected: (e) => this.hub.unexpected(e),
    });
    this.transport.lastEventId = lastEventId;
  }

  /** Channels, pause or connectivity of a tab changed. */
  update(): void {
    let offline = this.tabs.size > 0;
    for (const t of this.tabs) offline &&= t.offline;
    this.transport.setOffline(offline);
    this.transport.setPaused(pauseWanted(this.tabs));
    this.transport.update();
  }

  private all(body: Relay): void {
    this.to(() => true, body);
  }

  private to(wants: (t: Tab) => boolean, body: Relay): void {
    for (const t of this.tabs) if (wants(t)) this.hub.post(t, body);
  }

  /** Tells every tab the resume position, once per task. */
  private positions(): void {
    if (this.posQueued) return;
    this.posQueued = true;
    queueMicrotask(() => {
      this.posQueued = false;
      const id = this.transport.lastEventId;
      for (const t of this.tabs) {
        if (t.pos === id) continue;
        t.pos = id;
        this.hub.post(t, { t: "pos", id });
      }
    });
  }

  // ---- tokens: asked of a tab ---------------------------------------------------------------

  private askToken(reason: TokenReason): Promise<string | null> {
    return new Promise((resolve, reject) => {
      const id = ++this.tokenSeq;
      this.tokens.set(id, { reason, tab: null, asked: new Set(), timer: undefined, resolve, reject });
      this.askNext(id);
    });
  }

  /** Asks the most recently heard tab not yet asked; fails when none is left. */
  private askNext(id: number): void {
    const req = this.tokens.get(id);
    if (!req) return;
    clearTimeout(req.timer);
    let best: Tab | null = null;
    for (const t of this.tabs) {
      if (t.token && !req.asked.has(t) && (!best || t.seen > best.seen)) best = t;
    }
    if (!best) {
      this.tokens.delete(id);
      req.reject(new Error("no tab answered the token request"));
      return;
    }
    req.tab = best;
    req.asked.add(best);
    req.timer = setTimeout(() => this.askNext(id), this.hub.tokenTimeoutMs);
    this.hub.post(best, { t: "token", req: id, reason: req.reason });
  }

  answer(tab: Tab, m: Extract<ToWorker, { t: "token" }>): void {
    const req = this.tokens.get(m.req);
    if (!req || req.tab !== tab) return;
    clearTimeout(req.timer);
    this.tokens.delete(m.req);
    if (typeof m.error === "string") req.reject(new Error(m.error));
    else req.resolve(typeof m.token === "string" ? m.token : null);
  }

  /** Requests waiting for a tab that left go to another tab. */
  tabLeft(tab: Tab): void {
    for (const [id, req] of this.tokens) if (req.tab === tab) this.askNext(id);
  }
}

/** The scope of a SharedWorker, as far as `serveSharedWorker` needs it. */
export interface SharedWorkerScope {
  addEventListener(type: "connect", listener: (event: { ports: readonly MessagePortLike[] }) => void): void;
}

/** Serves every tab that connects to this SharedWorker (what `@ssegate/client/worker` runs). */
export function serveSharedWorker(scope: SharedWorkerScope, options: HubOptions = {}): WorkerHub {
  const nav = (globalThis as { navigator?: { locks?: LocksLike } }).navigator;
  const locks = nav?.locks && typeof nav.locks.request === "function" ? nav.locks : undefined;
  const hub = new WorkerHub({ locks, ...options });
  scope.addEventListener("connect", (event) => {
    for (const port of event.ports) hub.connect(port);
  });
  return hub;
}
