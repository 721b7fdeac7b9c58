/** Public types of `@ssegate/client`. */

import type { RealtimeError } from "./errors.js";

/** One event as the gateway delivers it: the envelope of `docs/api.md`. */
export interface RealtimeEvent<T = unknown> {
  /** Log position: opaque, compare only for equality. */
  id: string;
  /** The concrete channel (also when the subscription was a pattern). */
  channel: string;
  /** The event type given by the publisher (`message` by default). */
  type: string;
  /** Publish time, RFC 3339 UTC with milliseconds. */
  time: string;
  /** The published JSON. */
  data: T;
}

/** An admin broadcast (`POST /v1/broadcast`): not stored, no id, no channel. */
export interface BroadcastMessage<T = unknown> {
  type: string;
  time: string;
  data: T;
}

/**
 * Events between `lastEventId` and `oldestId` were dropped by retention (or the resume
 * position was unknown to the log): refetch the state. `channel` is set when only one channel's
 * history is concerned.
 */
export interface GapInfo {
  lastEventId: string;
  oldestId: string | null;
  channel?: string;
}

/**
 * The connection as the UI should show it.
 *
 * - `idle`: nothing subscribed, no connection.
 * - `connecting`: first connection attempt (or after `reconnect()`).
 * - `connected`: events flow; `transport` says whether by stream or by long-polling.
 * - `reconnecting`: the connection broke or was refused for now; the next attempt is in
 *   `delayMs` (`reason` is an error code: `network`, `eof`, `shutdown`, `too_many_connections`…).
 * - `offline`: the browser is offline (`network`) or the tab is hidden and the
 *   hidden-tab policy paused the stream (`hidden`). Comes back by itself.
 * - `unauthorized`: credentials refused (`reason`: the gateway's code, e.g. `token_expired`,
 *   `invalid_token`, `missing_credentials`, `forbidden`). Waits for `reconnect()`.
 * - `closed`: stopped: `client` (`close()`), `no_content` (the server answered 204: stop for
 *   good), `kicked` (an admin ended the user's streams), `replaced` (another stream took over
 *   this session). Only `client` is final; the others wait for `reconnect()`.
 */
export type ConnectionState =
  | { status: "idle" }
  | { status: "connecting" }
  | { status: "connected"; transport: "stream" | "poll" }
  | { status: "reconnecting"; reason: string; attempt: number; delayMs: number }
  | { status: "offline"; reason: "network" | "hidden" }
  | { status: "unauthorized"; reason: string }
  | { status: "closed"; reason: "client" | "no_content" | "kicked" | "replaced" };

export type ConnectionStatus = ConnectionState["status"];

/** Why `getToken` is being asked. */
export type TokenReason =
  /** Before a (re)connect. */
  | "connect"
  /** The server ended the stream with `closing` `token_expired`: get a fresh one. */
  | "expired"
  /** The server answered 401: the cached token is bad, get a fresh one. */
  | "unauthorized";

/** `hiddenTabPolicy`: keep streaming in a hidden tab, or pause after `hiddenPauseAfterMs`. */
export type HiddenTabPolicy = "keep" | "pause";

/** The subset of `LockManager` the client uses (Web Locks API). */
export interface LocksLike {
  request(
    name: string,
    options: { signal?: AbortSignal },
    callback: (lock: unknown) => Promise<unknown>,
  ): Promise<unknown>;
}

/** The subset of `BroadcastChannel` the client uses. */
export interface BroadcastChannelLike {
  postMessage(message: unknown): void;
  close(): void;
  onmessage: ((event: { data: unknown }) => void) | null;
}

/** `sharing`: how tabs share one stream. */
export type SharingMode = "leader" | "sharedworker" | "none";

/** The subset of `MessagePort` the client and the worker use. */
export interface MessagePortLike {
  postMessage(message: unknown): void;
  onmessage: ((event: MessageEvent) => void) | null;
  /** Not needed when `onmessage` is set (it starts the port), but harmless. */
  start?(): void;
  close(): void;
}

/** The subset of `SharedWorker` the client uses. */
export interface SharedWorkerLike {
  readonly port: MessagePortLike;
  /** The script could not be loaded: the client falls back to `sharing: "leader"`. */
  onerror?: ((event: ErrorEvent) => void) | null;
}

/**
 * What the client listens to for `online`/`offline`, `visibilitychange` and `pagehide`: a
 * `window`-like event target plus the document's visibility. Injected in tests.
 */
export interface Environment {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
  /** `navigator.onLine`. */
  isOnline(): boolean;
  /** `document.visibilityState === "hidden"`. */
  isHidden(): boolean;
}

export interface ClientOptions {
  /** Base URL of the gateway, e.g. `https://rt.example.com` or `/realtime` (no trailing `/v1`). */
  url: string;
  /**
   * Returns the bearer token (sent as `Authorization: Bearer`). Called before every connect,
   * after `closing` `token_expired`, and after a 401. Return `null` to send none.
   */
  getToken?: (reason: TokenReason) => string | null | undefined | Promise<string | null | undefined>;
  /**
   * Send cookies to another origin (`credentials: "include"`): cookie auth or forward-auth.
   * Default: true when no `getToken` is given. Same-origin requests always send cookies.
   */
  withCredentials?: boolean;
  /**
   * One stream for all tabs of this origin (Web Locks leader election + BroadcastChannel).
   * Default: true when `navigator.locks` and `BroadcastChannel` exist.
   */
  shareAcrossTabs?: boolean;
  /**
   * How tabs share one stream (overrides `shareAcrossTabs`):
   * - `"leader"` (the default where supported): one tab holds the stream, elected with Web
   *   Locks, and relays it over a BroadcastChannel;
   * - `"sharedworker"`: the stream runs in a SharedWorker (`sharedWorker` says which script);
   *   where `SharedWorker` does not exist, or the script fails to load, `"leader"` instead;
   * - `"none"`: every tab has its own stream (same as `shareAcrossTabs: false`).
   */
  sharing?: SharingMode;
  /**
   * The SharedWorker of `sharing: "sharedworker"`: the URL of `@ssegate/client/worker` (loaded
   * as `new SharedWorker(url, { type: "module", name })`), or a function that creates the
   * worker (what a bundler needs to see, e.g. with Vite
   * `(name) => new SharedWorker(new URL("@ssegate/client/worker", import.meta.url), { type: "module", name })`).
   */
  sharedWorker?: string | URL | ((name: string) => SharedWorkerLike);
  /**
   * Tabs share a stream only with tabs of the same key (default: the URL). Put the user id in
   * it when different tabs may be signed in as different users.
   */
  shareKey?: string;
  /** `keep` (default) or `pause`: close the stream after `hiddenPauseAfterMs` hidden. */
  hiddenTabPolicy?: HiddenTabPolicy;
  /** How long a tab must be hidden before `pause` applies. Default 30000. */
  hiddenPauseAfterMs?: number;
  /**
   * No `connected` event within this long after a stream request: a proxy is buffering the
   * stream, so long-poll instead. Default 5000; 0 turns long-polling off.
   */
  pollFallbackAfterMs?: number;
  /** While long-polling, try streaming again this often. Default 60000. */
  streamRetryAfterMs?: number;
  /** `timeout_ms` of each long-poll. Default 25000. */
  pollTimeoutMs?: number;
  /** Reconnect backoff window bounds. Defaults 1000 and 30000. */
  minRetryMs?: number;
  maxRetryMs?: number;
  /** Extra headers sent with every request. */
  headers?: Record<string, string>;
  /** `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Random source in [0, 1) for jitter (default `Math.random`). */
  random?: () => number;
  /** Web Locks implementation (default `navigator.locks`). */
  locks?: LocksLike;
  /** BroadcastChannel factory (default `new BroadcastChannel(name)`). */
  broadcastChannel?: (name: string) => BroadcastChannelLike;
  /** Online/visibility source (default: `window`, `navigator`, `document`). */
  environment?: Environment | null;
  /**
   * Where to resume from: the id of the last event the app already has (e.g. from the state it
   * loaded over REST), so the stream starts right after it. Default: from now.
   */
  lastEventId?: string;
  /** A state listener registered at once (same as `onState`). */
  onStateChange?: (state: ConnectionState) => void;
  /** Called with errors thrown by handlers and other unexpected errors (default console.error). */
  onUnexpectedError?: (error: unknown) => void;
}

export interface SubscribeOptions {
  /**
   * The gateway refused this subscription (403 `forbidden_channel`, 400 `invalid_channel`…).
   * The handler stays registered but receives nothing until it unsubscribes and subscribes
   * again.
   */
  onError?: (error: RealtimeError) => void;
  /** A gap concerning this subscription (the whole stream's, or this channel's history). */
  onGap?: (gap: GapInfo) => void;
  /**
   * Start right after this event id (e.g. the `last_event_id` of the state the app loaded over
   * REST): the channel's events after it are delivered to this subscription first, then live —
   * no gap between loading and streaming. When the channel joins the connection the gateway
   * sends them; when it is already there (another subscriber, another tab) the client loads
   * them over REST (at most 1000, else a gap) and delivers them to this subscription before its
   * live events. Not again after a reconnect (which resumes by `Last-Event-ID`).
   */
  since?: string;
  /**
   * Deliver the channel's last `history` events (0–1000; after `since` if given) to this
   * subscription first, then live. Exact channels only (a pattern gets none). Applies like
   * `since`.
   */
  history?: number;
}

/** `client.history(channel, options)`: which page of a channel's history. */
export interface HistoryOptions {
  /** How many events (1–1000; the gateway's default is 100). */
  limit?: number;
  /** Only events before this id (the first event's id of the previous page, to page back). */
  before?: string;
  /**
   * Fail with a `RealtimeError` `timeout` when the whole answer has not come within this long
   * (default 15000 ms).
   */
  timeoutMs?: number;
  /** Aborting it fails the request with a `RealtimeError` `aborted`. */
  signal?: AbortSignal;
}

/** One page of a channel's history (`GET /v1/channels/{channel}/history`). */
export interface HistoryPage<T = unknown> {
  /** Oldest first. */
  events: RealtimeEvent<T>[];
  /** Older events of the channel may have been left out: page back with `before` = `nextBefore`. */
  more: boolean;
  /**
   * With `more`: the `before` of the next page (the oldest event the gateway looked at; one
   * answer looks at 10,000 at most, so a channel crowded with other users' events can answer
   * few events, or none, with `more`).
   */
  nextBefore?: string;
  /**
   * The answer holds every event of the channel up to this position (the log head when the
   * read began; with `before`, just before it): subscribe with `since` = it to continue with no
   * gap and no duplicate.
   */
  lastEventId: string;
}

/** Where a channel starts when it joins the connection (`since` / `history` of `subscribe`). */
export interface StartOptions {
  since?: string;
  history?: number;
}

/**
 * Whether the gateway has a channel of this client:
 * - `pending`: wanted, not (yet, or not any more) on the live connection — connecting,
 *   reconnecting, offline, or the subscription request is on its way;
 * - `subscribed`: on the live connection (the stream's `connected`, the subscription request's
 *   answer, or a successful long-poll said so);
 * - `refused`: the gateway refused it (`error` says why); it stays out until its last
 *   subscriber unsubscribes.
 * `error` is also set while `pending` when a request for the whole stream failed (e.g. 400
 * `too_many_channels`); it is cleared when the channel is subscribed.
 */
export interface SubscriptionState {
  status: "pending" | "subscribed" | "refused";
  error: RealtimeError | null;
}

/**
 * How this client shares its stream, as it is now: `mode` (after any fallback; decided at the
 * first `subscribe`) and whether this tab holds the stream (`isLeader`).
 */
export interface SharingState {
  mode: SharingMode;
  isLeader: boolean;
}

export type Unsubscribe = () => void;

export interface RealtimeClient {
  /**
   * Receive the events of a channel or pattern. Subscriptions are reference-counted: the
   * gateway sees one subscription per distinct channel however many handlers there are.
   */
  subscribe<T = unknown>(
    channel: string,
    handler: (event: RealtimeEvent<T>) => void,
    options?: SubscribeOptions,
  ): Unsubscribe;
  /**
   * A page of a channel's history over REST (`GET /v1/channels/{channel}/history`), with this
   * client's credentials (`getToken`, cookies per `withCredentials`, `headers`, `fetch`).
   * Rejects with a `RealtimeError` (the gateway's code; `network` when no answer came).
   */
  history<T = unknown>(channel: string, options?: HistoryOptions): Promise<HistoryPage<T>>;
  /** The current connection state (a new object on each change). */
  readonly state: ConnectionState;
  /** Listen to state changes; returns a function that stops listening. */
  onState(listener: (state: ConnectionState) => void): Unsubscribe;
  /** Listen to gaps (refetch state when one comes). */
  onGap(listener: (gap: GapInfo) => void): Unsubscribe;
  /** Listen to admin broadcasts. */
  onBroadcast(listener: (message: BroadcastMessage) => void): Unsubscribe;
  /**
   * A channel's subscription state (`null`: nobody subscribes to it in this client). A new
   * object on each change.
   */
  subscriptionState(channel: string): SubscriptionState | null;
  /** Listen to subscription state changes of every channel (`null`: the channel was dropped). */
  onSubscriptionState(
    listener: (channel: string, state: SubscriptionState | null) => void,
  ): Unsubscribe;
  /** The sharing mode and leadership now (a new object on each change). */
  readonly sharingState: SharingState;
  /** Listen to changes of `sharingState` (this tab became the leader, a fallback…). */
  onSharing(listener: (state: SharingState) => void): Unsubscribe;
  /** The resume position: the id of the last event received ("" before any). */
  readonly lastEventId: string;
  /**
   * Whether this tab holds the stream: false until the first `subscribe` creates the
   * connection and after `close()`; then true with `sharing: "none"`, true in the leader mode
   * once this tab won the Web Lock, always false with a SharedWorker (the worker holds it).
   */
  readonly isLeader: boolean;
  /**
   * How this client shares its stream: `"none"`, `"leader"` or `"sharedworker"` — what
   * `sharing` asked for once unsupported modes fell back (decided at the first `subscribe`).
   */
  readonly sharing: SharingMode;
  /** Connect again now (after `unauthorized` or `closed`, or to skip a backoff delay). */
  reconnect(): void;
  /**
   * Close the stream, drop every subscription and listener. A later `subscribe` opens the
   * client again (same options, resuming from `lastEventId`): a client closed by a React
   * provider whose effects were torn down and re-run (StrictMode, `<Activity mode="hidden">`)
   * works again when its components subscribe again.
   */
  close(): void;
  readonly closed: boolean;
}
