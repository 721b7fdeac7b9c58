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

import { subscriptionMatches, subscriptionProblem } from "./channels.js";
import { RealtimeError } from "./errors.js";
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
  LocksLike,
  RealtimeClient,
  RealtimeEvent,
  SharedWorkerLike,
  SharingMode,
  SubscribeOptions,
  Unsubscribe,
} from "./types.js";
import { LocalUpstream, type Downstream, type Upstream } from "./upstream.js";

/** How many recent event ids the duplicate filter remembers. */
const RECENT_IDS = 2048;

interface Subscription {
  channel: string;
  handler: (event: RealtimeEvent<any>) => void;
  options: SubscribeOptions | undefined;
  active: boolean;
}

export function createClient(options: ClientOptions): RealtimeClient {
  return new Client(options);
}

/** Ids of recently delivered events: the same event twice (failover, poll/stream switch) is dropped. */
class RecentIds {
  private readonly ring: (string | undefined)[];
  private readonly set = new Set<string>();
  private next = 0;

  constructor(size: number) {
    this.ring = new Array<string | undefined>(size);
  }

  /** False when the id was seen recently; remembers it otherwise. */
  add(id: string): boolean {
    if (this.set.has(id)) return false;
    const old = this.ring[this.next];
    if (old !== undefined) this.set.delete(old);
    this.ring[this.next] = id;
    this.next = (this.next + 1) % this.ring.length;
    this.set.add(id);
    return true;
  }
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
  private readonly subs = new Map<string, Set<Subscription>>();
  /** Channels the gateway refused, until their last subscriber leaves. */
  private readonly refused = new Map<string, RealtimeError>();
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
    this.down = {
      event: (e, id) => this.dispatch(e, id),
      position: (id) => {
        this.resumeId = id;
      },
      state: (s) => this.setState(s),
      gap: (g) => this.gap(g),
      broadcast: (b) => {
        for (const l of [...this.broadcastListeners]) this.call(l, b);
      },
      channelError: (channels, error) => this.channelError(channels, error),
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

  subscribe<T = unknown>(
    channel: string,
    handler: (event: RealtimeEvent<T>) => void,
    options?: SubscribeOptions,
  ): Unsubscribe {
    if (typeof handler !== "function") throw new TypeError("subscribe: handler must be a function");
    if (this.isClosed) return () => {};
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
    const sub: Subscription = { channel, handler, options, active: true };
    let set = this.subs.get(channel);
    if (!set) {
      set = new Set();
      this.subs.set(channel, set);
      this.scheduleFlush();
    }
    set.add(sub);
    const refused = this.refused.get(channel);
    if (refused) {
      queueMicrotask(() => sub.active && options?.onError && this.call(options.onError, refused));
    }
    this.start();
    return () => {
      if (!sub.active) return;
      sub.active = false;
      const s = this.subs.get(channel);
      if (!s) return;
      s.delete(sub);
      if (s.size === 0) {
        this.subs.delete(channel);
        this.refused.delete(channel);
        this.scheduleFlush();
      }
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
    for (const d of this.detach.splice(0)) d();
    this.upstream?.close();
    this.upstream = null;
    for (const set of this.subs.values()) for (const s of set) s.active = false;
    this.subs.clear();
    this.setState({ status: "closed", reason: "client" });
    this.stateListeners.clear();
    this.gapListeners.clear();
    this.broadcastListeners.clear();
  }

  // ---- wiring -------------------------------------------------------------------------------

  /** Creates the upstream and listens to the browser, once, at the first use. */
  private start(): void {
    if (this.upstream || this.isClosed) return;
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
    const upstream = this.createUpstream(this.cfg);
    this.upstream = upstream;
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
    up.setChannels([...this.subs.keys()]);
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
      if (!this.isClosed) this.upstream?.setChannels([...this.subs.keys()]);
    });
  }

  // ---- what comes down ----------------------------------------------------------------------

  private dispatch(event: RealtimeEvent, lastEventId: string | null): void {
    if (lastEventId !== null) this.resumeId = lastEventId;
    if (!this.recent.add(event.id)) return;
    for (const [channel, set] of this.subs) {
      if (!subscriptionMatches(channel, event.channel)) continue;
      for (const s of [...set]) if (s.active) this.call(s.handler, event);
    }
  }

  private gap(gap: GapInfo): void {
    for (const l of [...this.gapListeners]) this.call(l, gap);
    for (const [channel, set] of this.subs) {
      if (gap.channel !== undefined && gap.channel !== channel) continue;
      for (const s of [...set]) if (s.active && s.options?.onGap) this.call(s.options.onGap, gap);
    }
  }

  private channelError(channels: string[] | null, error: RealtimeError): void {
    const names = channels ?? [...this.subs.keys()];
    for (const channel of names) {
      const set = this.subs.get(channel);
      if (!set) continue;
      if (channels !== null) this.refused.set(channel, error);
      for (const s of [...set]) if (s.active && s.options?.onError) this.call(s.options.onError, error);
    }
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
