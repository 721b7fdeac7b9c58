/**
 * `createClient`: the application's handle. It keeps the subscriptions of this tab
 * (reference-counted per channel), routes events to handlers (patterns included), drops
 * duplicates, tracks the connection state, and applies the browser's signals (online/offline,
 * hidden tab, page hide). The connection itself is an `Upstream`: this tab's own `Transport`,
 * the leader tab's when tabs share one stream, or a SharedWorker's (`sharing: "sharedworker"`).
 *
 * Nothing happens until the first `subscribe`: a client that is created and dropped (React
 * StrictMode renders twice) costs nothing.
 */

import { comparePositions, subscriptionMatches, subscriptionProblem } from "./channels.js";
import { RealtimeError, readError } from "./errors.js";
import { WorkerUpstream } from "./shared.js";
import { TabsUpstream } from "./tabs.js";
import type { TransportConfig } from "./transport.js";
import type {
  BroadcastChannelLike,
  BroadcastMessage,
  ClientOptions,
  ConnectionState,
  Environment,
  GapInfo,
  HistoryOptions,
  HistoryPage,
  LocksLike,
  RealtimeClient,
  RealtimeEvent,
  SharedWorkerLike,
  SharingMode,
  SharingState,
  StartOptions,
  SubscribeOptions,
  SubscriptionState,
  Unsubscribe,
} from "./types.js";
import { LocalUpstream, sameStart, type Downstream, type Starts, type Upstream } from "./upstream.js";

/** How many recent event ids the duplicate filter remembers. */
const RECENT_IDS = 2048;

/** The most events a subscription's `since` loads over REST (then a gap). */
const MAX_CATCH_UP = 1000;
/** Pages of REST history one catch-up reads at most. */
const MAX_PAGES = 20;
/**
 * How long a follower tab (or a tab of a SharedWorker) waits for the holder of the stream to say
 * whether its start was used before loading it over REST: an older bundle's leader never says.
 */
const VERDICT_GRACE_MS = 3_000;
/** Events held for one subscription while it catches up, at most; past it: a gap, then live. */
const MAX_HELD = 10_000;
/** A `history()` request with no whole answer within this long fails with `timeout` (a
 * subscription's REST catch-up then goes live with a gap). */
const HISTORY_TIMEOUT_MS = 15_000;

interface Subscription {
  channel: string;
  handler: (event: RealtimeEvent<any>) => void;
  options: SubscribeOptions | undefined;
  /** Its own `since`/`history`, normalized. */
  start: StartOptions | undefined;
  active: boolean;
  /**
   * Catching up: the events for it are held here, in arrival order, until its history is
   * delivered. `await`: the stream's holder has not said yet whether the start was used;
   * `live`: waiting for the channel to be on the connection before loading over REST;
   * `fetch`: loading over REST.
   */
  held: RealtimeEvent[] | null;
  phase: "await" | "live" | "fetch" | null;
  /**
   * After a catch-up (or with `since`): the last position delivered to it; events at or
   * before it are not delivered again (REST and the stream overlap).
   */
  floor: string | null;
}

/** The subscribers of one channel (or pattern), from its first subscriber to its last. */
interface Group {
  channel: string;
  subs: Set<Subscription>;
  /** Unique per group: a channel subscribed again is a new group (history is delivered again). */
  serial: number;
  /** The first subscriber's `since`/`history`. */
  start: StartOptions | undefined;
  /**
   * The channel has been on the connection: `start` was used and is no longer announced (a
   * new leader tab must resume the channel, not start it again).
   */
  startUsed: boolean;
  /**
   * The stream is held elsewhere (a leader tab, a SharedWorker) and has not said yet whether
   * `start` was used: the subscribers with that start hold their events meanwhile.
   */
  awaiting: boolean;
  /** The grace timer of `awaiting` (see VERDICT_GRACE_MS). */
  verdictTimer?: ReturnType<typeof setTimeout> | undefined;
  state: SubscriptionState;
}

/** The `since`/`history` of subscribe options, normalized; undefined when none. */
function startOf(options: SubscribeOptions | undefined): StartOptions | undefined {
  if (options?.since === undefined && options?.history === undefined) return undefined;
  const start: StartOptions = {};
  if (typeof options.since === "string" && options.since !== "") start.since = options.since;
  if (typeof options.history === "number" && options.history > 0) {
    start.history = Math.min(1000, Math.floor(options.history));
  }
  return start.since === undefined && start.history === undefined ? undefined : start;
}

export function createClient(options: ClientOptions): RealtimeClient {
  return new Client(options);
}

/**
 * Ids of recently delivered events, each with the groups it went to: the same event twice
 * (failover, poll/stream switch) is dropped; a history frame goes only to the groups that asked
 * for history and have not had it.
 */
class RecentIds {
  private readonly ring: (string | undefined)[];
  private readonly map = new Map<string, number[]>();
  private next = 0;

  constructor(size: number) {
    this.ring = new Array<string | undefined>(size);
  }

  /** The groups (serials) an id recently went to, or undefined when it was not seen. */
  get(id: string): number[] | undefined {
    return this.map.get(id);
  }

  add(id: string, serials: number[]): void {
    const known = this.map.get(id);
    if (known) {
      known.push(...serials);
      return;
    }
    const old = this.ring[this.next];
    if (old !== undefined) this.map.delete(old);
    this.ring[this.next] = id;
    this.next = (this.next + 1) % this.ring.length;
    this.map.set(id, serials);
  }
}

let groupSerial = 0;

function sameState(a: SubscriptionState, b: SubscriptionState): boolean {
  return a.status === b.status && a.error === b.error;
}

function randomId(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

function defaultEnvironment(): Environment | null {
  if (typeof window === "undefined" || typeof document === "undefined") return null;
  const target = (type: string): EventTarget =>
    type === "visibilitychange" ? document : window;
  return {
    addEventListener: (type, l) => target(type).addEventListener(type, l),
    removeEventListener: (type, l) => target(type).removeEventListener(type, l),
    isOnline: () => typeof navigator === "undefined" || navigator.onLine !== false,
    isHidden: () => document.visibilityState === "hidden",
  };
}

function defaultLocks(): LocksLike | undefined {
  const n = (globalThis as { navigator?: { locks?: LocksLike } }).navigator;
  return n?.locks && typeof n.locks.request === "function" ? n.locks : undefined;
}

function defaultChannelFactory(): ((name: string) => BroadcastChannelLike) | undefined {
  const BC = (globalThis as { BroadcastChannel?: new (name: string) => BroadcastChannelLike })
    .BroadcastChannel;
  return BC ? (name) => new BC(name) : undefined;
}

class Client implements RealtimeClient {
  private readonly subs = new Map<string, Group>();
  /** The live connection's channels. */
  private live = new Set<string>();
  private readonly subStateListeners = new Set<
    (channel: string, state: SubscriptionState | null) => void
  >();
  private readonly sharingListeners = new Set<(s: SharingState) => void>();
  private sharingNow: SharingState;
  private readonly stateListeners = new Set<(s: ConnectionState) => void>();
  private readonly gapListeners = new Set<(g: GapInfo) => void>();
  private readonly broadcastListeners = new Set<(m: BroadcastMessage) => void>();
  private readonly recent = new RecentIds(RECENT_IDS);
  private currentState: ConnectionState = { status: "idle" };
  private resumeId = "";
  private upstream: Upstream | null = null;
  private flushQueued = false;
  private isClosed = false;
  private readonly env: Environment | null;
  private readonly detach: (() => void)[] = [];
  private hiddenTimer: ReturnType<typeof setTimeout> | undefined;
  private hiddenPaused = false;
  private readonly down: Downstream;
  /** Event types listened to (once each, whatever the upstream). */
  private readonly listening = new Set<string>();
  private cfg: TransportConfig | undefined;
  /** The sharing mode; falls back at the first use where unsupported. */
  private mode: SharingMode;

  constructor(private readonly options: ClientOptions) {
    if (!options || typeof options.url !== "string") {
      throw new TypeError("createClient: `url` is required");
    }
    this.env = options.environment === undefined ? defaultEnvironment() : options.environment;
    this.resumeId = options.lastEventId ?? "";
    this.mode = options.sharing ?? (options.shareAcrossTabs === false ? "none" : "leader");
    if (!["leader", "sharedworker", "none"].includes(this.mode)) {
      throw new TypeError(`createClient: unknown sharing mode ${JSON.stringify(this.mode)}`);
    }
    if (this.mode === "sharedworker" && options.sharedWorker === undefined) {
      throw new TypeError('createClient: sharing "sharedworker" needs the `sharedWorker` option');
    }
    if (options.onStateChange) this.stateListeners.add(options.onStateChange);
    this.sharingNow = { mode: this.mode, isLeader: false };
    this.down = {
      event: (e, id, history) => this.dispatch(e, id, history === true),
      live: (channels) => this.setLive(channels),
      leader: () => this.updateSharing(),
      position: (id) => {
        this.resumeId = id;
      },
      state: (s) => this.setState(s),
      gap: (g) => this.gap(g),
      broadcast: (b) => {
        for (const l of [...this.broadcastListeners]) this.call(l, b);
      },
      channelError: (channels, error) => this.channelError(channels, error),
      startVerdict: (channel, used) => {
        const g = this.subs.get(channel);
        if (g?.awaiting) this.resolveStart(g, used);
      },
      unexpected: (e) => this.unexpected(e),
    };
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  get lastEventId(): string {
    return this.resumeId;
  }

  get isLeader(): boolean {
    return this.upstream?.isLeader ?? false;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  get sharing(): SharingMode {
    return this.mode;
  }

  get sharingState(): SharingState {
    return this.sharingNow;
  }

  subscriptionState(channel: string): SubscriptionState | null {
    return this.subs.get(channel)?.state ?? null;
  }

  onSubscriptionState(
    listener: (channel: string, state: SubscriptionState | null) => void,
  ): Unsubscribe {
    this.subStateListeners.add(listener);
    return () => void this.subStateListeners.delete(listener);
  }

  onSharing(listener: (state: SharingState) => void): Unsubscribe {
    this.sharingListeners.add(listener);
    return () => void this.sharingListeners.delete(listener);
  }

  subscribe<T = unknown>(
    channel: string,
    handler: (event: RealtimeEvent<T>) => void,
    options?: SubscribeOptions,
  ): Unsubscribe {
    if (typeof handler !== "function") throw new TypeError("subscribe: handler must be a function");
    if (this.isClosed) this.reopen();
    const problem = subscriptionProblem(channel);
    if (problem !== null) {
      const error = new RealtimeError(
        "invalid_channel",
        `invalid channel ${JSON.stringify(channel)}: ${problem}`,
        0,
        [channel],
      );
      queueMicrotask(() => options?.onError && this.call(options.onError, error));
      return () => {};
    }
    this.start();
    const start = startOf(options);
    const sub: Subscription = {
      channel,
      handler,
      options,
      start,
      active: true,
      held: null,
      phase: null,
      // Nothing at or before its `since` (a stream opened with `history=` and no `since`). Not
      // for a pattern: its channels already on the connection bring live events before its
      // history frames.
      floor: channel.includes("*") ? null : (start?.since ?? null),
    };
    let group = this.subs.get(channel);
    let created = false;
    if (!group) {
      created = true;
      group = {
        channel,
        subs: new Set(),
        serial: ++groupSerial,
        start,
        // A channel the connection already has (another tab streams it, or it was
        // unsubscribed and subscribed again in one task): its history comes over REST.
        // Also a channel a pattern of the connection covers: the gateway gives it no history.
        startUsed: this.covered(channel),
        awaiting: false,
        state: { status: this.onConnection(channel) ? "subscribed" : "pending", error: null },
      };
      this.subs.set(channel, group);
      this.scheduleFlush();
      this.emitSubState(channel, group.state);
    }
    group.subs.add(sub);
    const g = group;
    if (start && g.state.status !== "refused") {
      if (!g.startUsed && (created || sameStart(g.start, start))) {
        // The stream delivers this start. Held elsewhere: hold the events until the holder
        // says whether it used it (another tab may have had the channel already).
        if (created && !this.upstream?.isLeader) {
          g.awaiting = true;
          // No verdict in time (an older leader, a lost message): treat the start as not used.
          g.verdictTimer = setTimeout(() => {
            g.verdictTimer = undefined;
            if (g.awaiting && this.subs.get(g.channel) === g) this.resolveStart(g, false);
          }, VERDICT_GRACE_MS);
        }
        if (g.awaiting) {
          sub.held = [];
          sub.phase = "await";
        }
      } else {
        // The channel is (or will be) on the connection with other options: over REST.
        this.catchUp(sub);
      }
    }
    if (g.state.status === "refused") {
      queueMicrotask(() => {
        if (sub.active && options?.onError && g.state.error) this.call(options.onError, g.state.error);
      });
    }
    return () => {
      if (!sub.active) return;
      sub.active = false;
      if (this.subs.get(channel) !== g) return;
      g.subs.delete(sub);
      if (g.subs.size === 0) {
        this.subs.delete(channel);
        this.scheduleFlush();
        this.emitSubState(channel, null);
      }
    };
  }

  async history<T = unknown>(channel: string, options: HistoryOptions = {}): Promise<HistoryPage<T>> {
    const problem = subscriptionProblem(channel) ?? (channel.includes("*") ? "a pattern has no history" : null);
    if (problem !== null) {
      throw new RealtimeError("invalid_channel", `invalid channel ${JSON.stringify(channel)}: ${problem}`, 0, [channel]);
    }
    const cfg = this.config();
    const params = new URLSearchParams();
    if (options.limit !== undefined) params.set("limit", String(options.limit));
    if (options.before !== undefined) params.set("before", options.before);
    const query = params.toString();
    const url =
      cfg.url.replace(/\/+$/, "") +
      `/v1/channels/${encodeURIComponent(channel)}/history` +
      (query ? "?" + query : "");
    // One deadline for the whole request (both tries and the body), and the caller's signal.
    const ctrl = new AbortController();
    const timeoutMs = options.timeoutMs ?? HISTORY_TIMEOUT_MS;
    let timedOut = false;
    const guard = setTimeout(() => {
      timedOut = true;
      ctrl.abort();
    }, timeoutMs);
    const outer = options.signal;
    const cancel = () => ctrl.abort();
    if (outer?.aborted) ctrl.abort();
    else outer?.addEventListener("abort", cancel, { once: true });
    const failure = (e: unknown): RealtimeError => {
      if (ctrl.signal.aborted) {
        return timedOut
          ? new RealtimeError("timeout", `history: no answer within ${timeoutMs} ms`, 0)
          : new RealtimeError("aborted", "history: the request was aborted", 0);
      }
      return e instanceof RealtimeError ? e : new RealtimeError("network", e instanceof Error ? e.message : String(e), 0);
    };
    const get = async (reason: "connect" | "unauthorized"): Promise<Response> => {
      let token: string | null = null;
      try {
        token = cfg.getToken ? ((await cfg.getToken(reason)) ?? null) : null;
      } catch (e) {
        throw new RealtimeError("token_error", e instanceof Error ? e.message : String(e), 0);
      }
      if (ctrl.signal.aborted) throw failure(null);
      const headers: Record<string, string> = { ...cfg.headers, Accept: "application/json" };
      if (token) headers["Authorization"] = "Bearer " + token;
      return await cfg.fetch(url, {
        method: "GET",
        headers,
        credentials: cfg.credentials,
        cache: "no-store",
        signal: ctrl.signal,
      });
    };
    let response: Response;
    let body: { events?: unknown; more?: unknown; next_before?: unknown; last_event_id?: unknown } | null;
    try {
      response = await get("connect");
      // Like the stream: a 401 gets one fresh token and one more try.
      if (response.status === 401 && cfg.getToken) response = await get("unauthorized");
      if (!response.ok) throw await readError(response);
      body = (await response.json().catch((e: unknown) => {
        if (ctrl.signal.aborted) throw e;
        return null;
      })) as typeof body;
    } catch (e) {
      throw failure(e);
    } finally {
      clearTimeout(guard);
      outer?.removeEventListener("abort", cancel);
    }
    if (!body || !Array.isArray(body.events)) {
      throw new RealtimeError("bad_response", "history: not a history answer", response.status);
    }
    const events = (body.events as RealtimeEvent<T>[]).filter(
      (e) => e && typeof e.id === "string" && typeof e.channel === "string",
    );
    const more = body.more === true;
    return {
      events,
      more,
      ...(more && typeof body.next_before === "string" ? { nextBefore: body.next_before } : {}),
      lastEventId: typeof body.last_event_id === "string" ? body.last_event_id : "",
    };
  }

  onState(listener: (state: ConnectionState) => void): Unsubscribe {
    this.stateListeners.add(listener);
    return () => void this.stateListeners.delete(listener);
  }

  onGap(listener: (gap: GapInfo) => void): Unsubscribe {
    this.gapListeners.add(listener);
    return () => void this.gapListeners.delete(listener);
  }

  onBroadcast(listener: (message: BroadcastMessage) => void): Unsubscribe {
    this.broadcastListeners.add(listener);
    return () => void this.broadcastListeners.delete(listener);
  }

  reconnect(): void {
    if (this.isClosed) return;
    this.start();
    this.upstream!.reconnect();
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    clearTimeout(this.hiddenTimer);
    this.hiddenTimer = undefined;
    this.hiddenPaused = false;
    for (const d of this.detach.splice(0)) d();
    this.listening.clear();
    this.upstream?.close();
    this.upstream = null;
    this.live = new Set();
    const groups = [...this.subs.values()];
    for (const g of groups) {
      clearTimeout(g.verdictTimer);
      for (const s of g.subs) s.active = false;
    }
    this.subs.clear();
    this.setState({ status: "closed", reason: "client" });
    for (const g of groups) this.emitSubState(g.channel, null);
    this.updateSharing();
    // The listeners stay: close() is not final (a subscription reopens the client), and hooks
    // still mounted keep listening across it.
  }

  /**
   * A subscription on a closed client opens it again: same options and sharing key, resuming
   * from the last position (a provider's effects torn down and re-run, `<Activity>`).
   */
  private reopen(): void {
    this.isClosed = false;
    if (this.options.onStateChange) this.stateListeners.add(this.options.onStateChange);
    this.setState({ status: "idle" });
  }

  // ---- wiring -------------------------------------------------------------------------------

  /** Creates the upstream and listens to the browser, once, at the first use. */
  private start(): void {
    if (this.upstream || this.isClosed) return;
    const o = this.options;
    const upstream = this.createUpstream(this.config());
    this.upstream = upstream;
    this.updateSharing();
    if (upstream.leave) {
      this.listen("pagehide", () => this.upstream?.leave?.());
      this.listen("pageshow", () => this.upstream?.rejoin?.());
    }
    const env = this.env;
    if (env) {
      this.listen("online", () => this.upstream?.setOffline(false));
      this.listen("offline", () => this.upstream?.setOffline(true));
      if (!env.isOnline()) upstream.setOffline(true);
      if (o.hiddenTabPolicy === "pause") {
        const check = () => this.visibility();
        this.listen("visibilitychange", check);
        check();
      }
    }
  }

  /** The connection settings, made once. */
  private config(): TransportConfig {
    const o = this.options;
    this.cfg ??= {
      url: o.url,
      fetch: o.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      getToken: o.getToken,
      credentials: (o.withCredentials ?? !o.getToken) ? "include" : "same-origin",
      headers: o.headers ?? {},
      random: o.random ?? Math.random,
      minRetryMs: o.minRetryMs ?? 1000,
      maxRetryMs: o.maxRetryMs ?? 30_000,
      pollFallbackAfterMs: o.pollFallbackAfterMs ?? 5000,
      streamRetryAfterMs: o.streamRetryAfterMs ?? 60_000,
      pollTimeoutMs: o.pollTimeoutMs ?? 25_000,
      sessionId: randomId(),
    };
    return this.cfg;
  }

  /** The upstream of the sharing mode, falling back to the next one where unsupported. */
  private createUpstream(cfg: TransportConfig): Upstream {
    const o = this.options;
    const key = "ssegate:" + (o.shareKey ?? o.url);
    if (this.mode === "sharedworker") {
      const worker = this.makeWorker(key);
      if (worker) {
        const locks = o.locks ?? defaultLocks();
        const fail = () => this.fallBack();
        return new WorkerUpstream(cfg, this.down, worker, key, this.resumeId, fail, locks);
      }
      this.mode = "leader";
    }
    const locks = o.locks ?? defaultLocks();
    const makeChannel = o.broadcastChannel ?? defaultChannelFactory();
    if (this.mode === "leader" && locks && makeChannel) {
      return new TabsUpstream(cfg, this.down, locks, makeChannel, key, cfg.sessionId, this.resumeId);
    }
    this.mode = "none";
    return new LocalUpstream(cfg, this.down, this.resumeId);
  }

  /** The SharedWorker, or null where there is none (or the app's factory threw). */
  private makeWorker(name: string): SharedWorkerLike | null {
    const source = this.options.sharedWorker;
    try {
      if (typeof source === "function") return source(name) ?? null;
      const SW = (globalThis as { SharedWorker?: new (url: string | URL, o: object) => SharedWorkerLike })
        .SharedWorker;
      return SW && source !== undefined ? new SW(source, { type: "module", name }) : null;
    } catch {
      return null;
    }
  }

  /** The worker script failed to load: share with the leader-tab mode instead. */
  private fallBack(): void {
    if (this.isClosed || !(this.upstream instanceof WorkerUpstream)) return;
    this.upstream.close();
    this.upstream = null;
    this.mode = "leader";
    this.start();
    const up = this.upstream as Upstream | null;
    if (!up) return;
    if (this.hiddenPaused) up.setPaused(true);
    up.setChannels([...this.subs.keys()], this.starts());
  }

  /** The start options of the channels that have some. */
  private starts(): Starts {
    const out: Starts = {};
    for (const g of this.subs.values()) if (g.start && !g.startUsed) out[g.channel] = g.start;
    return out;
  }

  private listen(type: string, listener: () => void): void {
    const env = this.env;
    if (!env || this.listening.has(type)) return;
    this.listening.add(type);
    env.addEventListener(type, listener);
    this.detach.push(() => env.removeEventListener(type, listener));
  }

  private visibility(): void {
    if (!this.env || !this.upstream) return;
    if (this.env.isHidden()) {
      if (this.hiddenTimer === undefined) {
        this.hiddenTimer = setTimeout(
          () => {
            this.hiddenPaused = true;
            this.upstream?.setPaused(true);
          },
          this.options.hiddenPauseAfterMs ?? 30_000,
        );
      }
    } else {
      clearTimeout(this.hiddenTimer);
      this.hiddenTimer = undefined;
      this.hiddenPaused = false;
      this.upstream.setPaused(false);
    }
  }

  /** Subscription changes of one task go out together (StrictMode's mount-unmount-mount nets out). */
  private scheduleFlush(): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => {
      this.flushQueued = false;
      if (!this.isClosed) this.upstream?.setChannels([...this.subs.keys()], this.starts());
    });
  }

  /** Its events come already: the channel, or a pattern covering it, is on the connection. */
  private covered(channel: string): boolean {
    if (this.onConnection(channel)) return true;
    if (channel.includes("*")) return false;
    for (const p of this.live) if (p.includes("*") && subscriptionMatches(p, channel) && this.onConnection(p)) return true;
    return false;
  }

  /** The channel is on the connection and stays there. */
  private onConnection(channel: string): boolean {
    // A channel whose remove request is out is leaving: a new subscriber's start goes with the
    // add that follows, not over REST before the channel leaves.
    return this.live.has(channel) && !this.upstream?.removing?.(channel);
  }

  // ---- what comes down ----------------------------------------------------------------------

  /**
   * An event goes once to each group whose channel matches. A history frame (a channel added
   * with `since`/`history`) goes only to the groups that asked for a start and have not had
   * it: the same id may reach a group subscribed again, never one group twice.
   */
  private dispatch(event: RealtimeEvent, lastEventId: string | null, history: boolean): void {
    if (lastEventId !== null) this.resumeId = lastEventId;
    const seen = this.recent.get(event.id);
    if (seen && !history) return;
    const targets: Group[] = [];
    for (const g of this.subs.values()) {
      if (!subscriptionMatches(g.channel, event.channel)) continue;
      if (history && (!g.start || seen?.includes(g.serial))) continue;
      targets.push(g);
    }
    if (history && targets.length === 0) return;
    this.recent.add(event.id, targets.map((g) => g.serial));
    for (const g of targets) {
      for (const s of [...g.subs]) {
        // A subscription loading its own start over REST: its answer covers the group's
        // history frames (which may reach further back than it asked).
        if (history && s.held && s.phase !== "await") continue;
        this.deliver(s, event);
      }
    }
  }

  /** One event to one subscription: held while it catches up, never at or before its floor. */
  private deliver(sub: Subscription, event: RealtimeEvent): void {
    if (!sub.active) return;
    if (sub.held) {
      if (sub.held.length < MAX_HELD) {
        sub.held.push(event);
        return;
      }
      // Too much held (a verdict or a channel that never comes): give up the history, say so,
      // deliver what was held and go live from here.
      this.subGap(sub, { lastEventId: sub.start?.since ?? "", oldestId: sub.held[0]!.id, channel: sub.channel });
      this.release(sub, []);
      if (!sub.active) return;
    }
    if (sub.floor !== null) {
      if (comparePositions(event.id, sub.floor) <= 0) return;
      sub.floor = event.id;
    }
    this.call(sub.handler, event);
  }

  // ---- a subscription's history when the stream cannot give it --------------------------------

  /** The holder of the stream said whether a group's start was used. */
  private resolveStart(g: Group, used: boolean): void {
    g.awaiting = false;
    clearTimeout(g.verdictTimer);
    g.verdictTimer = undefined;
    if (!g.startUsed) {
      g.startUsed = true;
      this.scheduleFlush(); // stop announcing it
    }
    for (const s of [...g.subs]) {
      if (s.phase !== "await") continue;
      if (used) this.release(s, []);
      else this.catchUp(s);
    }
  }

  /**
   * Loads a subscription's `since`/`history` over REST and delivers it to that subscription
   * only, before the live events held for it meanwhile (once the channel is on the connection).
   */
  private catchUp(sub: Subscription): void {
    const start = sub.start!;
    sub.held ??= [];
    if (start.since !== undefined) sub.floor = start.since;
    if (sub.channel.includes("*")) {
      // A pattern has no history (like the gateway's); a `since` on one cannot be honoured.
      if (start.since !== undefined) {
        this.subGap(sub, { lastEventId: start.since, oldestId: null, channel: sub.channel });
      }
      this.release(sub, []);
      return;
    }
    if (!this.covered(sub.channel)) {
      // Loaded once the channel is on the connection: events published between the answer and
      // the channel's arrival would be missed otherwise.
      sub.phase = "live";
      return;
    }
    sub.phase = "fetch";
    this.load(sub.channel, start).then(
      ({ events, gap }) => {
        if (!sub.active || sub.phase !== "fetch") return;
        if (gap) this.subGap(sub, gap);
        this.release(sub, events);
      },
      (error: unknown) => {
        if (!sub.active || sub.phase !== "fetch") return;
        const err =
          error instanceof RealtimeError
            ? error
            : new RealtimeError("internal", error instanceof Error ? error.message : String(error), 0);
        // Live only: say why, and that the history is missing (refetch).
        if (sub.options?.onError) this.call(sub.options.onError, err);
        this.subGap(sub, { lastEventId: start.since ?? "", oldestId: null, channel: sub.channel });
        this.release(sub, []);
      },
    );
  }

  /**
   * A channel's events after `since` (at most `history`, else at most `MAX_CATCH_UP` and a gap
   * when more are left), or its last `history`, oldest first.
   */
  private async load(channel: string, start: StartOptions): Promise<{ events: RealtimeEvent[]; gap?: GapInfo }> {
    const since = start.since;
    const cap = start.history ?? MAX_CATCH_UP;
    if (since === undefined) return { events: (await this.history(channel, { limit: cap })).events };
    let out: RealtimeEvent[] = [];
    let before: string | undefined;
    let reached = false;
    // A bounded number of pages: a channel crowded with other users' events can answer pages
    // with few events (the gateway looks at 10,000 per answer at most).
    for (let pages = 0; pages < MAX_PAGES; pages++) {
      const page = await this.history(channel, { limit: Math.min(cap, 1000), before });
      const after = page.events.filter((e) => comparePositions(e.id, since) > 0);
      out = after.concat(out);
      const next = page.nextBefore ?? page.events[0]?.id;
      if (after.length < page.events.length || !page.more) {
        reached = true;
        break;
      }
      // More, with nowhere to page back from: not known to be reached (a gap).
      if (next === undefined) break;
      if (out.length >= cap || comparePositions(next, since) <= 0) {
        reached = comparePositions(next, since) <= 0;
        break;
      }
      before = next;
    }
    const trimmed = out.length > cap;
    if (trimmed) out = out.slice(out.length - cap);
    if (!reached && !trimmed && out.length > 0 && start.history === undefined) {
      // Exactly `cap` after since: is the next older one at or before it?
      const probe = await this.history(channel, { limit: 1, before: out[0]!.id });
      // An empty answer with `more` (a crowded channel) proves nothing: a gap.
      reached =
        probe.events.length === 0 ? !probe.more : comparePositions(probe.events[0]!.id, since) <= 0;
    }
    const gap =
      start.history === undefined && (trimmed || !reached)
        ? { lastEventId: since, oldestId: out[0]?.id ?? null, channel }
        : undefined;
    return { events: out, gap };
  }

  /**
   * Delivers a subscription's history, then what was held for it: the history events older
   * than the first held one, then the held ones (the floor drops what both have).
   */
  private release(sub: Subscription, history: RealtimeEvent[]): void {
    const held = sub.held ?? [];
    sub.held = null;
    sub.phase = null;
    const first = held[0];
    const older = first ? history.filter((e) => comparePositions(e.id, first.id) < 0) : history;
    if (older.length > 0 || held.length > 0) sub.floor ??= "0";
    // With nothing held, every history event goes: the floor then keeps the stream from
    // repeating those it has not brought yet.
    for (const e of older) this.deliver(sub, e);
    for (const e of held) this.deliver(sub, e);
  }

  private subGap(sub: Subscription, gap: GapInfo): void {
    if (sub.active && sub.options?.onGap) this.call(sub.options.onGap, gap);
  }

  private gap(gap: GapInfo): void {
    for (const l of [...this.gapListeners]) this.call(l, gap);
    for (const [channel, g] of this.subs) {
      if (gap.channel !== undefined && gap.channel !== channel) continue;
      for (const s of [...g.subs]) {
        // Positions may start over (a log that lost its data): no floor across a gap.
        if (gap.channel === undefined || !s.held) s.floor = null;
        if (s.active && s.options?.onGap) this.call(s.options.onGap, gap);
      }
    }
  }

  private channelError(channels: string[] | null, error: RealtimeError): void {
    const names = channels ?? [...this.subs.keys()];
    for (const channel of names) {
      const g = this.subs.get(channel);
      if (!g) continue;
      if (channels !== null) {
        this.setSubState(g, { status: "refused", error });
        // Nothing comes for a refused channel: no history to wait for.
        g.awaiting = false;
        clearTimeout(g.verdictTimer);
        for (const s of g.subs) {
          s.held = null;
          s.phase = null;
        }
      }
      else if (g.state.status !== "refused") this.setSubState(g, { status: g.state.status, error });
      for (const s of [...g.subs]) if (s.active && s.options?.onError) this.call(s.options.onError, error);
    }
  }

  private setLive(channels: string[]): void {
    this.live = new Set(channels);
    for (const g of this.subs.values()) {
      if (g.state.status === "refused") continue;
      if (this.onConnection(g.channel)) {
        if (g.start && !g.startUsed) {
          if (!g.awaiting) {
            g.startUsed = true;
            this.scheduleFlush(); // tell whoever holds the stream that the start is used
          } else if (this.upstream?.isLeader) {
            this.resolveStart(g, true); // this tab's own stream used it
          }
          // Otherwise the holder says whether it used this tab's start (startVerdict).
        }
        for (const s of [...g.subs]) if (s.phase === "live") this.catchUp(s);
        this.setSubState(g, { status: "subscribed", error: null });
      } else this.setSubState(g, { status: "pending", error: g.state.error });
    }
  }

  private setSubState(g: Group, state: SubscriptionState): void {
    if (sameState(g.state, state)) return;
    g.state = state;
    this.emitSubState(g.channel, state);
  }

  private emitSubState(channel: string, state: SubscriptionState | null): void {
    for (const l of [...this.subStateListeners]) {
      try {
        l(channel, state);
      } catch (e) {
        this.unexpected(e);
      }
    }
  }

  private updateSharing(): void {
    const now: SharingState = { mode: this.mode, isLeader: this.isLeader };
    if (now.mode === this.sharingNow.mode && now.isLeader === this.sharingNow.isLeader) return;
    this.sharingNow = now;
    for (const l of [...this.sharingListeners]) this.call(l, now);
  }

  private setState(state: ConnectionState): void {
    if (state === this.currentState || (this.isClosed && state.status !== "closed")) return;
    this.currentState = state;
    for (const l of [...this.stateListeners]) this.call(l, state);
  }

  private call<A>(fn: (arg: A) => void, arg: A): void {
    try {
      fn(arg);
    } catch (e) {
      this.unexpected(e);
    }
  }

  private unexpected(error: unknown): void {
    const report = this.options.onUnexpectedError;
    if (report) {
      try {
        report(error);
      } catch {
        // A broken error reporter must not break the client.
      }
    } else if (typeof console !== "undefined") {
      console.error("ssegate:", error);
    }
  }
}
