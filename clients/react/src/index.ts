"use client";
/**
 * `@ssegate/react`: React bindings for `@ssegate/client`.
 *
 * ```tsx
 * <RealtimeProvider options={{ url: "/realtime", getToken }}>
 *   <App />
 * </RealtimeProvider>
 *
 * function Logs({ flow }: { flow: string }) {
 *   const events = useEvents<LogLine>(`logs:w1:${flow}`, { limit: 200, history: 200 });
 *   const state = useConnectionState();
 *   …
 * }
 * ```
 *
 * Every hook subscribes through the one client, which reference-counts channels: any number of
 * components on one channel make one subscription on the gateway. Handlers are kept in refs,
 * so re-renders never resubscribe; StrictMode's mount–unmount–mount nets out inside the
 * client (changes of one task are sent together).
 *
 * The file starts with "use client" (React Server Components: the hooks and the provider are
 * client components). No JSX in this file: the build output imports only `react` and
 * `@ssegate/client`.
 */

import {
  createElement,
  createContext,
  useCallback,
  useContext,
  useEffect,
  useLayoutEffect,
  useMemo,
  useRef,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import {
  createClient,
  type ClientOptions,
  type ConnectionState,
  type GapInfo,
  type RealtimeClient,
  type RealtimeError,
  type RealtimeEvent,
  type SharingState,
  type SubscriptionState,
  type Unsubscribe,
} from "@ssegate/client";

const RealtimeContext = createContext<RealtimeClient | null>(null);

/** useLayoutEffect in the browser, useEffect on the server (no warning during SSR). */
const useIsomorphicLayoutEffect = typeof window !== "undefined" ? useLayoutEffect : useEffect;

/** How many channels' events `useEvents` keeps after their last component unmounted. */
export const DEFAULT_IDLE_CHANNELS = 20;

export type RealtimeProviderProps = (
  | { client: RealtimeClient; options?: undefined }
  | { options: ClientOptions; client?: undefined }
) & {
  children?: ReactNode;
  /**
   * How many channels `useEvents` keeps the events of once no component shows them any more
   * (least recently used first out). Default 20.
   */
  idleChannels?: number;
};

/**
 * The options as the client sees them: the functions call the latest ones given to the
 * provider (a `getToken` closing over the current session, say).
 */
function freshOptions(initial: ClientOptions, latest: { current: ClientOptions | undefined }): ClientOptions {
  const now = () => latest.current ?? initial;
  const o: ClientOptions = { ...initial };
  if (initial.getToken) o.getToken = (reason) => (now().getToken ?? initial.getToken)!(reason);
  if (initial.fetch) o.fetch = (input, init) => (now().fetch ?? initial.fetch)!(input, init);
  if (initial.onStateChange) o.onStateChange = (s) => (now().onStateChange ?? initial.onStateChange)!(s);
  if (initial.onUnexpectedError) {
    o.onUnexpectedError = (e) => (now().onUnexpectedError ?? initial.onUnexpectedError)!(e);
  }
  return o;
}

/**
 * Makes a client available to the hooks below it. Give it a `client` you created (and close
 * yourself), or `options`: the provider then creates the client once and closes it when its
 * effects are torn down (unmount, `<Activity mode="hidden">`); the client opens again when
 * components subscribe again (its effects re-ran). The functions of `options` (`getToken`,
 * `fetch`, `onStateChange`, `onUnexpectedError`) are read fresh at each call; other changes
 * of `options` are ignored (remount with a `key` to change them).
 */
export function RealtimeProvider(props: RealtimeProviderProps) {
  const own = useRef<RealtimeClient | null>(null);
  const latestOptions = useRef<ClientOptions | undefined>(props.options);
  useIsomorphicLayoutEffect(() => {
    latestOptions.current = props.options;
  });
  if (!props.client && !own.current) {
    // Creating a client has no side effects until its first subscription, so a render
    // React throws away (StrictMode, Suspense) leaks nothing.
    own.current = createClient(freshOptions(props.options, latestOptions));
  }
  const client = props.client ?? own.current!;
  const ownsClient = !props.client;
  const idle = props.idleChannels ?? DEFAULT_IDLE_CHANNELS;
  useEffect(() => {
    storeOf(client).setIdleLimit(idle);
  }, [client, idle]);
  const pendingClose = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  useEffect(() => {
    if (!ownsClient) return;
    // StrictMode unmounts and remounts at once: the close scheduled below is cancelled.
    clearTimeout(pendingClose.current);
    const c = own.current;
    return () => {
      pendingClose.current = setTimeout(() => c?.close(), 0);
    };
  }, [ownsClient]);
  return createElement(RealtimeContext.Provider, { value: client }, props.children);
}

/** The client of the nearest `RealtimeProvider`. */
export function useRealtime(): RealtimeClient {
  const client = useContext(RealtimeContext);
  if (!client) throw new Error("useRealtime: no <RealtimeProvider> above this component");
  return client;
}

export interface UseChannelOptions {
  /** The gateway refused the subscription (403 `forbidden_channel`, `invalid_channel`…). */
  onError?: (error: RealtimeError) => void;
  /** Events of this subscription were lost to retention: refetch. */
  onGap?: (gap: GapInfo) => void;
  /**
   * Start after this event id: the events after it first, then live (from the stream when the
   * channel joins the connection, else over REST; see the client).
   */
  since?: string;
  /** The channel's last N events first, then live (like `since`; see the client). */
  history?: number;
}

/**
 * Calls `handler` for each event of `channel` (a channel or a pattern) while mounted.
 * `channel` null or empty subscribes to nothing. Changing `handler` or `options` does not
 * resubscribe; changing `channel` does.
 */
export function useChannel<T = unknown>(
  channel: string | null | undefined,
  handler: (event: RealtimeEvent<T>) => void,
  options?: UseChannelOptions,
): void {
  const client = useRealtime();
  const latest = useRef({ handler, options });
  useIsomorphicLayoutEffect(() => {
    latest.current = { handler, options };
  });
  useEffect(() => {
    if (!channel) return;
    const o = latest.current.options;
    return client.subscribe<T>(channel, (e) => latest.current.handler(e), {
      onError: (e) => latest.current.options?.onError?.(e),
      onGap: (g) => latest.current.options?.onGap?.(g),
      since: o?.since,
      history: o?.history,
    });
  }, [client, channel]);
}

// ---- the events of useEvents: one bounded store per client -----------------------------------

interface StoreUser {
  limit: number;
  options: { current: UseEventsOptions<any> };
}

interface Entry {
  events: RealtimeEvent[];
  ids: Set<string>;
  /** The largest `limit` asked for this channel. */
  capacity: number;
  users: Set<StoreUser>;
  off: Unsubscribe | null;
}

const EMPTY: RealtimeEvent[] = [];

/**
 * The events of `useEvents`, per channel: shared by every component showing the channel,
 * kept when they unmount (for `idleLimit` channels, least recently used out first). While a
 * channel is shown, the store subscribes to it once; when it is shown again, it subscribes
 * with `since` = the last event it kept, so nothing published meanwhile is missed.
 */
class EventStore {
  private readonly entries = new Map<string, Entry>();
  private readonly listeners = new Map<string, Set<() => void>>();
  private idleLimit = DEFAULT_IDLE_CHANNELS;

  constructor(private readonly client: RealtimeClient) {
    // An app-owned client closed (and reopened by a later subscription) while components
    // still show channels: their subscriptions died with close(); subscribe them again,
    // after the last event kept, once the client runs again.
    client.onState((state) => {
      if (state.status === "closed") {
        if (client.closed) for (const e of this.entries.values()) e.off = null;
        return;
      }
      // After the task that reopened it (its own subscription goes first).
      queueMicrotask(() => {
        if (client.closed) return;
        for (const [channel, e] of [...this.entries]) {
          if (e.users.size > 0 && !e.off) this.subscribe(channel, e, false);
        }
      });
    });
  }

  setIdleLimit(n: number): void {
    this.idleLimit = Math.max(0, Math.floor(n));
    this.prune();
  }

  snapshot(channel: string): RealtimeEvent[] | undefined {
    return this.entries.get(channel)?.events;
  }

  /** Channels kept (tests, debugging). */
  channels(): string[] {
    return [...this.entries.keys()];
  }

  listen(channel: string, listener: () => void): () => void {
    let set = this.listeners.get(channel);
    if (!set) this.listeners.set(channel, (set = new Set()));
    set.add(listener);
    return () => {
      set!.delete(listener);
      if (set!.size === 0 && this.listeners.get(channel) === set) this.listeners.delete(channel);
    };
  }

  acquire(channel: string, user: StoreUser): () => void {
    let e = this.entries.get(channel);
    const o = user.options.current;
    const fresh = !e;
    if (e) {
      this.entries.delete(channel); // most recently used last
    } else {
      e = { events: [], ids: new Set(), capacity: user.limit, users: new Set(), off: null };
      for (const ev of o.initial ?? []) this.push(e, ev);
      if (e.events.length > e.capacity) e.capacity = e.events.length;
    }
    this.entries.set(channel, e);
    e.users.add(user);
    if (user.limit > e.capacity) e.capacity = user.limit;
    const entry = e;
    if (!entry.off) this.subscribe(channel, entry, fresh, o);
    this.notify(channel);
    return () => {
      entry.users.delete(user);
      if (entry.users.size > 0) return;
      entry.off?.();
      entry.off = null;
      if (this.entries.get(channel) === entry) {
        this.entries.delete(channel);
        this.entries.set(channel, entry);
      }
      this.prune();
    };
  }

  private subscribe(channel: string, entry: Entry, fresh: boolean, o?: UseEventsOptions<any>): void {
    o ??= [...entry.users][0]?.options.current ?? {};
    const last = entry.events[entry.events.length - 1];
    entry.off = this.client.subscribe(channel, (ev) => this.append(channel, entry, ev), {
      // New: `since`, else right after the `initial` events. Shown before: continue after
      // the last event kept (no history again).
      since: fresh ? (o.since ?? last?.id) : (last?.id ?? o.since),
      history: fresh || !last ? o.history : undefined,
      onError: (err) => {
        for (const u of [...entry.users]) u.options.current.onError?.(err);
      },
      onGap: (gap) => {
        for (const u of [...entry.users]) u.options.current.onGap?.(gap);
      },
    });
  }

  private push(e: Entry, ev: RealtimeEvent): boolean {
    if (e.ids.has(ev.id)) return false;
    e.ids.add(ev.id);
    e.events.push(ev);
    return true;
  }

  private append(channel: string, e: Entry, ev: RealtimeEvent): void {
    if (e.ids.has(ev.id)) return;
    const events = e.events.slice();
    e.events = events;
    this.push(e, ev);
    if (events.length > e.capacity) {
      for (const old of events.splice(0, events.length - e.capacity)) e.ids.delete(old.id);
    }
    if (this.entries.get(channel) === e) this.notify(channel);
  }

  private notify(channel: string): void {
    for (const l of [...(this.listeners.get(channel) ?? [])]) l();
  }

  /** Drops the least recently used channels nobody shows beyond `idleLimit`. */
  private prune(): void {
    let idle = 0;
    for (const e of this.entries.values()) if (e.users.size === 0) idle++;
    for (const [channel, e] of this.entries) {
      if (idle <= this.idleLimit) break;
      if (e.users.size > 0) continue;
      this.entries.delete(channel);
      idle--;
    }
  }
}

const stores = new WeakMap<RealtimeClient, EventStore>();

function storeOf(client: RealtimeClient): EventStore {
  let s = stores.get(client);
  if (!s) stores.set(client, (s = new EventStore(client)));
  return s;
}

/** The channels whose events `useEvents` keeps for this client (tests, debugging). */
export function keptChannels(client: RealtimeClient): string[] {
  return storeOf(client).channels();
}

export interface UseEventsOptions<T = unknown> extends UseChannelOptions {
  /** How many of the latest events to return. Default 100. */
  limit?: number;
  /**
   * Events the app already has (e.g. loaded over REST), oldest first: shown until the stream
   * adds to them; when the channel is first subscribed without `since`, the stream starts
   * right after the last of them (no gap, no duplicate).
   */
  initial?: RealtimeEvent<T>[];
}

/**
 * The last `limit` events of `channel`, oldest first (another channel shows its own). The
 * events live in a store of the client shared by every component on the channel, so a
 * component mounted again shows them at once, and what was published meanwhile follows.
 */
export function useEvents<T = unknown>(
  channel: string | null | undefined,
  options: UseEventsOptions<T> = {},
): RealtimeEvent<T>[] {
  const client = useRealtime();
  const store = storeOf(client);
  const limit = Math.max(1, Math.floor(options.limit ?? 100));
  const latest = useRef(options);
  useIsomorphicLayoutEffect(() => {
    latest.current = options;
  });
  // `initial` of this channel, fixed while the channel stays the same.
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const initial = useMemo(() => (options.initial ?? EMPTY) as RealtimeEvent[], [channel]);
  const subscribe = useCallback(
    (onChange: () => void) => (channel ? store.listen(channel, onChange) : () => {}),
    [store, channel],
  );
  const get = () => (channel ? store.snapshot(channel) : undefined) ?? initial;
  const all = useSyncExternalStore(subscribe, get, get);
  const user = useRef<StoreUser | null>(null);
  if (!user.current) user.current = { limit, options: latest };
  user.current.limit = limit;
  useEffect(() => {
    if (!channel) return;
    return store.acquire(channel, user.current!);
  }, [store, channel]);
  return useMemo(
    () => (all.length > limit ? all.slice(all.length - limit) : all) as RealtimeEvent<T>[],
    [all, limit],
  );
}

/** The connection state; re-renders when it changes. */
export function useConnectionState(): ConnectionState {
  const client = useRealtime();
  const subscribe = useCallback((onChange: () => void) => client.onState(onChange), [client]);
  const get = () => client.state;
  return useSyncExternalStore(subscribe, get, get);
}

/**
 * Whether the gateway has `channel`: `{ status: "pending" | "subscribed" | "refused", error }`,
 * or null when nothing in this client subscribes to it. Re-renders when it changes.
 */
export function useSubscriptionStatus(channel: string | null | undefined): SubscriptionState | null {
  const client = useRealtime();
  const subscribe = useCallback(
    (onChange: () => void) =>
      client.onSubscriptionState((c) => {
        if (c === channel) onChange();
      }),
    [client, channel],
  );
  const get = () => (channel ? client.subscriptionState(channel) : null);
  return useSyncExternalStore(subscribe, get, get);
}

/** How the client shares its stream (`mode`) and whether this tab holds it (`isLeader`). */
export function useSharing(): SharingState {
  const client = useRealtime();
  const subscribe = useCallback((onChange: () => void) => client.onSharing(onChange), [client]);
  const get = () => client.sharingState;
  return useSyncExternalStore(subscribe, get, get);
}

export type {
  ClientOptions,
  ConnectionState,
  GapInfo,
  RealtimeClient,
  RealtimeError,
  RealtimeEvent,
  SharingState,
  SubscriptionState,
};
