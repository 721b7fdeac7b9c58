/**
 * One logical connection to the gateway: a `GET /v1/stream` read with `fetch`, or long-polls
 * of `GET /v1/poll` when a proxy buffers the stream. It owns reconnecting (backoff with full
 * jitter, `Retry-After`, `retry:`), resuming (`Last-Event-ID`), credentials (`getToken`,
 * cookies), and keeping the live connection's channels equal to the wanted set with
 * `POST /v1/connections/{id}/subscriptions` — never by reconnecting.
 *
 * Whoever owns it (a tab's client, or the leader tab for all tabs) gives it the wanted
 * channels and receives events, states, gaps and refusals through a `TransportSink`.
 *
 * Every start bumps a generation number; async work of an older generation drops its results,
 * so a late response can never act on a newer connection.
 */

import { Backoff } from "./backoff.js";
import { subscriptionMatches } from "./channels.js";
import { RealtimeError, readError, retryAfterMs } from "./errors.js";
import { EventStreamParser, type SseMessage } from "./parser.js";
import type {
  BroadcastMessage,
  ConnectionState,
  GapInfo,
  RealtimeEvent,
  StartOptions,
  TokenReason,
} from "./types.js";

export interface TransportConfig {
  url: string;
  fetch: typeof fetch;
  getToken?: (reason: TokenReason) => string | null | undefined | Promise<string | null | undefined>;
  credentials: RequestCredentials;
  headers: Record<string, string>;
  random: () => number;
  minRetryMs: number;
  maxRetryMs: number;
  /** 0: never fall back to long-polling. */
  pollFallbackAfterMs: number;
  streamRetryAfterMs: number;
  pollTimeoutMs: number;
  /** Sent as `session_id`: a newer stream of ours replaces a half-dead older one. */
  sessionId: string;
}

export interface TransportSink {
  /** The wanted subscriptions, now. */
  channels(): readonly string[];
  /** Where a wanted channel starts when it joins the connection (`since`/`history`). */
  start(channel: string): StartOptions | undefined;
  /** The channels of the live connection, whenever they change (empty: none). */
  live(channels: string[]): void;
  /**
   * These channels joined the connection for the first time since they became wanted, with
   * these start options (`undefined`: none; a long-poll or a refused `since` reports the start
   * it answered with a gap). Lets the holder of a shared stream tell each tab whether its own
   * `since`/`history` was used (otherwise the tab loads its history over REST).
   */
  started?(channels: string[], start: StartOptions | undefined): void;
  /**
   * An event; `lastEventId` is the resume position once it is handled. `history`: a history
   * frame (no `id:` line) of a channel added with `since`/`history`.
   */
  event(event: RealtimeEvent, lastEventId: string, history?: boolean): void;
  /** The resume position moved without an event (end of a poll, an `id:` without data). */
  position(lastEventId: string): void;
  state(state: ConnectionState): void;
  gap(gap: GapInfo): void;
  broadcast(message: BroadcastMessage): void;
  /** The gateway refused these subscriptions (`null`: all of them). */
  channelError(channels: string[] | null, error: RealtimeError): void;
  unexpected(error: unknown): void;
}

/** What one connection attempt ended with. */
type Outcome =
  /** Another attempt at once (poll cycle, fresh token, refused channels dropped…). */
  | { kind: "again" }
  /** Wait (`delay`, or the next backoff delay), then try again. */
  | { kind: "retry"; reason: string; delay?: number }
  /** Stop until `reconnect()`. */
  | { kind: "stop"; state: ConnectionState }
  /** Long-poll from now on. */
  | { kind: "fallback" }
  /** A newer generation took over. */
  | { kind: "cancelled" };

/** Reserved control event types (docs/api.md). */
/** The events a stream URL's `history=` brings at most, across its channels (the gateway's cap). */
const URL_HISTORY_TOTAL = 1000;
const CONTROL = new Set(["connected", "gap", "subscribed", "unsubscribed", "closing"]);

export class Transport {
  /** The resume position: the last `id:` seen (or the last poll's `last_event_id`). */
  lastEventId = "";
  state: ConnectionState = { status: "idle" };

  private readonly backoff: Backoff;
  /** Bumped by every start and stop; async work of an older generation is ignored. */
  private gen = 0;
  /** The generation whose loop is running, or null. */
  private loopGen: number | null = null;
  private ctrl: AbortController | null = null;
  /** Ends the current backoff sleep early. */
  private wake: (() => void) | null = null;
  private closed = false;
  private paused = false;
  private offline = false;
  /** Set by 401 (twice), 204, `kicked`, `replaced`: no connecting until `reconnect()`. */
  private stopped: ConnectionState | null = null;
  private mode: "stream" | "poll" = "stream";
  /** When long-polling began (to try streaming again after `streamRetryAfterMs`). */
  private pollSince = 0;
  /** Channels of the poll in flight; a change aborts it and polls again with the new set. */
  private pollKey = "";
  private pollRestart = false;
  /** From the `connected` event; null while not connected by stream. */
  private connectionId: string | null = null;
  /** The channels the live connection has, as the gateway last said. */
  private server: Set<string> | null = null;
  /** Channels the gateway refused: left out until nobody wants them any more. */
  private readonly rejected = new Map<string, RealtimeError>();
  /**
   * Wanted channels that have been on a connection since they became wanted: their
   * `since`/`history` were used (a reconnect resumes them by `Last-Event-ID`).
   */
  private readonly started = new Set<string>();
  /** The channels last reported through `sink.live`. */
  private liveKey = "";
  private token: string | null = null;
  /** The `since` of the stream request in flight and its channels (a refused id is theirs). */
  private urlSince: { since: string; channels: string[]; start: StartOptions } | null = null;
  private tokenReason: TokenReason = "connect";
  /** A 401 gets one fresh token and one more try; the second 401 stops. */
  private authRetried = false;
  /** Counts `connected` events: names the connection a subscription request was for. */
  private connSeq = 0;
  /** The connection whose subscription request is in flight, if any. */
  private syncConn: number | null = null;
  private syncQueued = false;
  /** The channels the subscription request out removes. */
  private removeOut = new Set<string>();
  /** When the current stream said `connected` (a token expiring at once must not spin). */
  private connectedAt = 0;

  constructor(
    private readonly cfg: TransportConfig,
    private readonly sink: TransportSink,
  ) {
    this.backoff = new Backoff({
      initialMs: cfg.minRetryMs,
      maxMs: cfg.maxRetryMs,
      random: cfg.random,
    });
  }

  /** The wanted channels less the refused ones, sorted (stable query strings). */
  channels(): string[] {
    return this.sink
      .channels()
      .filter((c) => !this.rejected.has(c))
      .sort();
  }

  /** Whether a subscription request removing this channel is out. */
  removing(channel: string): boolean {
    return this.removeOut.has(channel);
  }

  /** Whether a wanted channel has been on the connection (its start options, if any, were used). */
  hasStarted(channel: string): boolean {
    return this.started.has(channel);
  }

  /** Marks channels started and reports those that were not. */
  private markStarted(channels: string[], start: StartOptions | undefined): void {
    const fresh = channels.filter((c) => !this.started.has(c));
    for (const c of fresh) this.started.add(c);
    if (fresh.length > 0) this.sink.started?.(fresh, start);
  }

  /** The start options of a channel not yet started, if it has any. */
  private pendingStart(channel: string): StartOptions | undefined {
    if (this.started.has(channel)) return undefined;
    // A channel a pattern of the connection covers gets no history from the gateway: it is
    // added without (and its start reported as not used: the subscribers load it over REST).
    if (!channel.includes("*") && this.server) {
      for (const p of this.server) if (p.includes("*") && subscriptionMatches(p, channel)) return undefined;
    }
    const s = this.sink.start(channel);
    if (!s || (s.since === undefined && s.history === undefined)) return undefined;
    return s;
  }

  /** Channels grouped by their pending start options ("" : none). */
  private byStart(channels: string[]): Map<string, { start?: StartOptions; channels: string[] }> {
    const groups = new Map<string, { start?: StartOptions; channels: string[] }>();
    for (const c of channels) {
      const start = this.pendingStart(c);
      const key = start ? JSON.stringify([start.since ?? null, start.history ?? null]) : "";
      let g = groups.get(key);
      if (!g) groups.set(key, (g = { start, channels: [] }));
      g.channels.push(c);
    }
    return groups;
  }

  private setLive(channels: string[]): void {
    const sorted = [...channels].sort();
    const key = sorted.join("\n");
    if (key === this.liveKey) return;
    this.liveKey = key;
    this.sink.live(sorted);
  }

  /** The wanted set, pause or connectivity changed: connect, disconnect or re-subscribe. */
  update(): void {
    const wanted = new Set(this.sink.channels());
    for (const c of this.rejected.keys()) if (!wanted.has(c)) this.rejected.delete(c);
    for (const c of this.started) if (!wanted.has(c)) this.started.delete(c);
    if (!this.canRun()) {
      if (this.loopGen !== null) this.stopLoop();
      this.setState(this.restingState());
      return;
    }
    if (this.loopGen === null) {
      this.startLoop();
    } else if (this.mode === "stream") {
      void this.sync();
    } else if (this.pollKey !== this.channels().join("\n") && this.ctrl) {
      this.pollRestart = true;
      this.ctrl.abort();
    }
  }

  setPaused(paused: boolean): void {
    if (this.paused === paused) return;
    this.paused = paused;
    this.update();
  }

  setOffline(offline: boolean): void {
    if (this.offline === offline) return;
    this.offline = offline;
    if (!offline) this.backoff.reset();
    this.update();
  }

  /** Connect again now: after `unauthorized`/`closed`, or to skip the backoff delay. */
  reconnect(): void {
    if (this.closed) return;
    this.stopped = null;
    this.authRetried = false;
    this.backoff.reset();
    this.mode = "stream";
    if (this.loopGen !== null) this.stopLoop();
    this.update();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopLoop();
    this.setState({ status: "closed", reason: "client" });
  }

  // ---- the loop -----------------------------------------------------------------------------

  private canRun(): boolean {
    return (
      !this.closed && !this.stopped && !this.paused && !this.offline && this.channels().length > 0
    );
  }

  private restingState(): ConnectionState {
    if (this.closed) return { status: "closed", reason: "client" };
    if (this.stopped) return this.stopped;
    if (this.channels().length === 0) return { status: "idle" };
    if (this.offline) return { status: "offline", reason: "network" };
    return { status: "offline", reason: "hidden" };
  }

  private startLoop(restartReason?: string): void {
    const gen = ++this.gen;
    this.loopGen = gen;
    this.setState(
      restartReason
        ? { status: "reconnecting", reason: restartReason, attempt: 0, delayMs: 0 }
        : { status: "connecting" },
    );
    void this.loop(gen);
  }

  private stopLoop(): void {
    this.gen++;
    this.loopGen = null;
    this.dropConnection();
    this.setLive([]);
  }

  /** Abandons the current connection and starts over at once (the wanted set is resent). */
  private restart(reason: string): void {
    this.stopLoop();
    if (this.canRun()) this.startLoop(reason);
    else this.setState(this.restingState());
  }

  private dropConnection(): void {
    this.ctrl?.abort();
    this.ctrl = null;
    this.connectionId = null;
    this.server = null;
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  private async loop(gen: number): Promise<void> {
    while (this.gen === gen) {
      if (!this.canRun()) {
        this.loopGen = null;
        this.setState(this.restingState());
        return;
      }
      let outcome: Outcome;
      try {
        outcome = this.mode === "stream" ? await this.streamOnce(gen) : await this.pollOnce(gen);
      } catch (e) {
        this.sink.unexpected(e);
        outcome = { kind: "retry", reason: "internal" };
      }
      if (this.gen !== gen || outcome.kind === "cancelled") return;
      if (outcome.kind !== "again") this.setLive([]);
      switch (outcome.kind) {
        case "again":
          break;
        case "fallback":
          this.mode = "poll";
          this.pollSince = Date.now();
          break;
        case "stop":
          this.stopped = outcome.state;
          this.loopGen = null;
          this.setState(outcome.state);
          return;
        case "retry": {
          const delay = outcome.delay ?? this.backoff.next();
          this.setState({
            status: "reconnecting",
            reason: outcome.reason,
            attempt: this.backoff.attempt,
            delayMs: delay,
          });
          await this.sleep(delay);
          break;
        }
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this.wake === done) this.wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
    });
  }

  private setState(state: ConnectionState): void {
    const a = this.state as Record<string, unknown>;
    const b = state as Record<string, unknown>;
    const keys = Object.keys(b);
    if (keys.length === Object.keys(a).length && keys.every((k) => a[k] === b[k])) return;
    this.state = state;
    this.sink.state(state);
  }

  // ---- requests -------------------------------------------------------------------------------

  private endpoint(path: string, params?: [string, string][]): string {
    const base = this.cfg.url.replace(/\/+$/, "");
    const query = params ? new URLSearchParams(params).toString() : "";
    return base + path + (query ? "?" + query : "");
  }

  private async freshToken(): Promise<void> {
    if (!this.cfg.getToken) return;
    const reason = this.tokenReason;
    this.tokenReason = "connect";
    this.token = (await this.cfg.getToken(reason)) ?? null;
  }

  private headers(extra?: Record<string, string>): Record<string, string> {
    const h: Record<string, string> = { ...this.cfg.headers, ...extra };
    if (this.token) h["Authorization"] = "Bearer " + this.token;
    return h;
  }

  /** What a non-2xx answer to a stream or poll request means for the loop. */
  private async refused(response: Response): Promise<Outcome> {
    const error = await readError(response);
    switch (response.status) {
      case 204:
        return { kind: "stop", state: { status: "closed", reason: "no_content" } };
      case 401:
        if (this.cfg.getToken && !this.authRetried) {
          this.authRetried = true;
          this.tokenReason = "unauthorized";
          return { kind: "again" };
        }
        return { kind: "stop", state: { status: "unauthorized", reason: error.code } };
      case 403: {
        const fresh = (error.channels ?? []).filter((c) => !this.rejected.has(c));
        if (fresh.length === 0) {
          // Not about channels (forward-auth refused the session): nothing will work.
          this.sink.channelError(null, error);
          return { kind: "stop", state: { status: "unauthorized", reason: error.code } };
        }
        for (const c of fresh) this.rejected.set(c, error);
        this.sink.channelError(fresh, error);
        return { kind: "again" };
      }
      case 400:
        if (error.code === "invalid_last_event_id" && this.urlSince) {
          // A `since` from another log: these channels start from now, with a gap each.
          this.sinceRefused(this.urlSince.channels, this.urlSince.start);
          if (this.lastEventId !== "") {
            // Every channel was new: an older position is nobody's.
            this.lastEventId = "";
            this.sink.position("");
          }
          return { kind: "again" };
        }
        if (error.code === "invalid_last_event_id" && this.lastEventId !== "") {
          // An id from another log: start from now, and say what may have been missed.
          const was = this.lastEventId;
          this.lastEventId = "";
          this.sink.position("");
          this.sink.gap({ lastEventId: was, oldestId: null });
          return { kind: "again" };
        }
        this.sink.channelError(null, error);
        return { kind: "retry", reason: error.code };
      case 429:
      case 503: {
        const after = retryAfterMs(response);
        return {
          kind: "retry",
          reason: error.code,
          delay: after == null ? undefined : after + this.backoff.next(),
        };
      }
      default:
        return { kind: "retry", reason: error.code };
    }
  }

  // ---- streaming ------------------------------------------------------------------------------

  private async streamOnce(gen: number): Promise<Outcome> {
    try {
      await this.freshToken();
    } catch (e) {
      this.sink.unexpected(e);
      return { kind: "retry", reason: "token_error" };
    }
    if (this.gen !== gen) return { kind: "cancelled" };
    // Channels with `since`/`history` still to use: the stream's URL carries one set of them
    // (`since=` / `history=` apply to the whole stream), so it opens with the channels
    // without (resumed by Last-Event-ID); the others are added by POST once connected, one
    // request per set. When every channel is new with options, there is nothing to resume:
    // the stream opens with the largest set and its options, without Last-Event-ID.
    // The URL's `history=N` is 1000 events at most in all (the newest, merged across the
    // channels), and a stream that resumes (`since`) gets none: a set with `history` opens with
    // as many of its channels as get N each (channels × N ≤ 1000) and without `since` (the
    // subscribers drop what is at or before their `since`); the rest are added by POST, where
    // each channel gets its own N.
    const groups = this.byStart(this.channels());
    let first = groups.get("");
    if (!first) {
      first = [...groups.values()].sort(
        (a, b) => b.channels.length - a.channels.length || (a.channels[0]! < b.channels[0]! ? -1 : 1),
      )[0]!;
    }
    const start = first.start;
    let history = start?.history;
    let channels = first.channels;
    if (history !== undefined && start?.since !== undefined) {
      // `{since, history}`: its exact channels open with `history=` alone; patterns get no
      // history, so for a set of patterns only, `since=` is exactly what they asked.
      const exact = channels.filter((c) => !c.includes("*"));
      if (exact.length > 0) channels = exact;
      else history = undefined;
    }
    if (history !== undefined && history > 0) {
      channels = channels.slice(0, Math.max(1, Math.floor(URL_HISTORY_TOTAL / history)));
    }
    const params: [string, string][] = channels.map((c) => ["channel", c]);
    if (start?.since !== undefined && history === undefined) params.push(["since", start.since]);
    if (history !== undefined) params.push(["history", String(history)]);
    params.push(["session_id", this.cfg.sessionId]);
    const extra: Record<string, string> = { Accept: "text/event-stream" };
    // With `history=` the URL carries no `since`: the stream starts at the log's head.
    const resume = start ? (start.since !== undefined && history === undefined ? start.since : "") : this.lastEventId;
    if (resume && !start) extra["Last-Event-ID"] = resume;
    this.urlSince = start?.since !== undefined && history === undefined ? { since: start.since, channels, start } : null;

    const ctrl = new AbortController();
    this.ctrl = ctrl;
    let connected = false;
    let fellBack = false;
    let silent = false;
    let closing: string | null = null;
    let watchdog: ReturnType<typeof setInterval> | undefined;
    let lastActivity = Date.now();
    const fallback =
      this.cfg.pollFallbackAfterMs > 0
        ? setTimeout(() => {
            fellBack = true;
            ctrl.abort();
          }, this.cfg.pollFallbackAfterMs)
        : undefined;

    const onMessage = (m: SseMessage) => {
      if (this.gen !== gen || closing !== null) return;
      if (m.type === "connected") {
        connected = true;
        clearTimeout(fallback);
        const info = parseJson(m.data) as
          | { connection_id?: unknown; channels?: unknown; heartbeat_ms?: unknown; last_event_id?: unknown }
          | undefined;
        this.connectionId = typeof info?.connection_id === "string" ? info.connection_id : null;
        this.server = new Set(Array.isArray(info?.channels) ? (info.channels as string[]) : channels);
        this.markStarted(channels, start);
        if (resume === "" && typeof info?.last_event_id === "string") {
          // Nothing to resume from: the stream's start is the resume position, so a reconnect
          // before the first event loses nothing.
          parser.setLastEventId(info.last_event_id);
        }
        this.backoff.reset();
        this.authRetried = false;
        this.connectedAt = Date.now();
        this.connSeq++;
        const hb = typeof info?.heartbeat_ms === "number" ? info.heartbeat_ms : 0;
        if (hb > 0) {
          // Two heartbeats missed (and some slack): the connection is dead without knowing it.
          const limit = hb * 2 + 5000;
          watchdog = setInterval(() => {
            if (Date.now() - lastActivity > limit) {
              silent = true;
              ctrl.abort();
            }
          }, hb);
        }
        this.setState({ status: "connected", transport: "stream" });
        this.setLive([...this.server]);
        // Subscriptions that changed while connecting go out now.
        void this.sync();
        return;
      }
      this.message(m, (reason) => (closing = reason));
    };
    const parser = new EventStreamParser(onMessage, (ms) => this.backoff.setBase(ms), resume);

    let failed = false;
    try {
      const response = await this.cfg.fetch(
        this.endpoint("/v1/stream", params),
        {
          method: "GET",
          headers: this.headers(extra),
          credentials: this.cfg.credentials,
          cache: "no-store",
          signal: ctrl.signal,
        },
      );
      if (this.gen !== gen) return { kind: "cancelled" };
      if (response.status !== 200) {
        clearTimeout(fallback);
        return await this.refused(response);
      }
      const type = response.headers.get("content-type") ?? "";
      if (!/^text\/event-stream/i.test(type)) {
        clearTimeout(fallback);
        return { kind: "retry", reason: "bad_response" };
      }
      if (!response.body || typeof response.body.getReader !== "function") {
        // A fetch without streaming bodies (React Native's): long-poll instead.
        clearTimeout(fallback);
        ctrl.abort();
        return this.cfg.pollFallbackAfterMs > 0
          ? { kind: "fallback" }
          : { kind: "retry", reason: "no_stream_body" };
      }
      const reader = response.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.gen !== gen) break;
        lastActivity = Date.now();
        parser.push(value);
        if (this.gen !== gen) break;
        if (parser.lastEventId !== this.lastEventId) {
          this.lastEventId = parser.lastEventId;
          this.sink.position(this.lastEventId);
        }
        if (closing !== null) break;
      }
      parser.end();
    } catch {
      failed = true;
    } finally {
      clearTimeout(fallback);
      clearInterval(watchdog);
      if (this.ctrl === ctrl) {
        this.ctrl = null;
        this.connectionId = null;
        this.server = null;
        this.setLive([]);
      }
      ctrl.abort(); // releases the HTTP connection when we stopped reading on our own
    }
    if (this.gen !== gen) return { kind: "cancelled" };
    if (fellBack && !connected) return { kind: "fallback" };
    if (silent) return { kind: "retry", reason: "heartbeat_timeout" };
    if (closing !== null) return this.closingOutcome(closing);
    return { kind: "retry", reason: failed ? "network" : "eof" };
  }

  /** An event other than `connected`, from the stream. */
  private message(m: SseMessage, onClosing: (reason: string) => void): void {
    if (m.type === "gap") {
      const g = parseJson(m.data) as
        | { last_event_id?: unknown; oldest_id?: unknown; channel?: unknown }
        | undefined;
      const gap: GapInfo = {
        lastEventId: typeof g?.last_event_id === "string" ? g.last_event_id : "",
        oldestId: typeof g?.oldest_id === "string" ? g.oldest_id : null,
      };
      if (typeof g?.channel === "string") gap.channel = g.channel;
      this.sink.gap(gap);
      return;
    }
    if (m.type === "closing") {
      const c = parseJson(m.data) as { reason?: unknown } | undefined;
      onClosing(typeof c?.reason === "string" ? c.reason : "unknown");
      return;
    }
    if (CONTROL.has(m.type)) return; // subscribed / unsubscribed: the POST answer says it all
    const body = parseJson(m.data);
    if (!body || typeof body !== "object") {
      this.sink.unexpected(new Error(`ssegate: event ${m.type} without a JSON object`));
      return;
    }
    const o = body as Record<string, unknown>;
    if (typeof o.id === "string" && typeof o.channel === "string") {
      // History frames (of a channel added with since/history) carry no `id:`: the
      // envelope's id names them and the resume position does not move.
      this.lastEventId = m.lastEventId;
      this.sink.event(o as unknown as RealtimeEvent, m.lastEventId, !m.hasId);
    } else {
      this.sink.broadcast({
        type: typeof o.type === "string" ? o.type : m.type,
        time: typeof o.time === "string" ? o.time : "",
        data: o.data,
      });
    }
  }

  private closingOutcome(reason: string): Outcome {
    switch (reason) {
      case "token_expired":
        this.tokenReason = "expired";
        // At once, unless the stream was just opened: then getToken handed out a token that
        // is (nearly) expired, and reconnecting in a tight loop would not help.
        return Date.now() - this.connectedAt > 10_000
          ? { kind: "again" }
          : { kind: "retry", reason };
      case "revoked":
        // Ask again with fresh credentials: the answer (200, 401, 403) decides.
        this.tokenReason = "unauthorized";
        return { kind: "retry", reason, delay: 0 };
      case "kicked":
      case "replaced":
        return { kind: "stop", state: { status: "closed", reason } };
      default:
        // shutdown, auth_unavailable, and reasons added later.
        return { kind: "retry", reason };
    }
  }

  // ---- live subscription changes --------------------------------------------------------------

  /** Brings the live connection's channels to the wanted set, one request at a time. */
  private async sync(): Promise<void> {
    const conn = this.connSeq;
    if (this.syncConn === conn) {
      this.syncQueued = true;
      return;
    }
    const id = this.connectionId;
    const server = this.server;
    if (this.mode !== "stream" || id === null || server === null) return;
    const wanted = this.channels();
    const wantedSet = new Set(wanted);
    // Never left the connection: a start asked for them meanwhile cannot be used.
    this.markStarted(wanted.filter((c) => server.has(c)), undefined);
    const missing = wanted.filter((c) => !server.has(c));
    const remove = [...server].filter((c) => !wantedSet.has(c)).sort();
    if (missing.length === 0 && remove.length === 0) return;
    // One set of start options per request (the body's `since`/`history` apply to all its
    // added channels): channels without options first, the others in the next requests.
    let add = missing;
    let start: StartOptions | undefined;
    if (missing.length > 0) {
      const groups = this.byStart(missing);
      const g = groups.get("") ?? groups.get([...groups.keys()].sort()[0]!)!;
      add = g.channels;
      start = g.start;
    }
    this.syncConn = conn;
    this.syncQueued = false;
    // The answer is for this connection only: a newer one was opened with the whole set.
    const stale = () => this.connSeq !== conn || this.connectionId === null;
    try {
      const body: { add?: string[]; remove?: string[]; since?: string; history?: number } = {};
      if (add.length) body.add = add;
      if (remove.length) body.remove = remove;
      this.removeOut = new Set(remove);
      if (start?.since !== undefined) body.since = start.since;
      if (start?.history !== undefined) body.history = start.history;
      let response = await this.post(id, body);
      if (stale()) return;
      if (response.status === 401 && this.cfg.getToken) {
        this.tokenReason = "unauthorized";
        await this.freshToken();
        if (stale()) return;
        response = await this.post(id, body);
        if (stale()) return;
      }
      if (response.ok) {
        const answer = (await response.json().catch(() => null)) as { channels?: unknown } | null;
        if (stale()) return;
        // The gateway's list, with this change applied for sure: a name it reported in
        // another form must not make us send the same change forever.
        const now = new Set(Array.isArray(answer?.channels) ? (answer.channels as string[]) : server);
        for (const c of add) now.add(c);
        for (const c of remove) now.delete(c);
        this.server = now;
        this.markStarted(add, start);
        this.setLive([...now]);
        return;
      }
      const error = await readError(response);
      if (stale()) return;
      if (response.status === 400 && error.code === "invalid_last_event_id" && start?.since !== undefined) {
        // A `since` from another log: the channels are added from now, with a gap each.
        this.sinceRefused(add, start);
      } else if (response.status === 403 && error.channels?.length) {
        // A refused request changes nothing: the other channels go in the next request.
        for (const c of error.channels) this.rejected.set(c, error);
        this.sink.channelError(error.channels, error);
      } else if (response.status === 400 && add.length > 0 && error.code !== "invalid_json") {
        for (const c of add) this.rejected.set(c, error);
        this.sink.channelError(add, error);
      } else {
        // 404 (the connection is gone), a second 401, 5xx: start over with the whole set.
        this.restart(error.code);
      }
    } catch {
      if (!stale()) this.restart("network");
    } finally {
      this.removeOut = new Set();
      if (this.syncConn === conn) this.syncConn = null;
      // Changes made while the request was out, or what is left after a refusal.
      if (!stale()) void this.sync();
    }
  }

  /** The gateway does not know a channel's `since`: it starts without, and says so. */
  private sinceRefused(channels: string[], start: StartOptions): void {
    this.markStarted(channels, start);
    for (const c of channels) {
      this.sink.gap({ lastEventId: start.since ?? "", oldestId: null, channel: c });
    }
  }

  private post(connectionId: string, body: object): Promise<Response> {
    return this.cfg.fetch(
      this.endpoint(`/v1/connections/${encodeURIComponent(connectionId)}/subscriptions`),
      {
        method: "POST",
        headers: this.headers({ "Content-Type": "application/json" }),
        credentials: this.cfg.credentials,
        body: JSON.stringify(body),
      },
    );
  }

  // ---- long-polling ---------------------------------------------------------------------------

  private async pollOnce(gen: number): Promise<Outcome> {
    const polling = this.state.status === "connected";
    if (polling && Date.now() - this.pollSince >= this.cfg.streamRetryAfterMs) {
      // Perhaps the proxy was fixed, or we were on a network that buffered: stream again.
      this.mode = "stream";
      return { kind: "again" };
    }
    try {
      await this.freshToken();
    } catch (e) {
      this.sink.unexpected(e);
      return { kind: "retry", reason: "token_error" };
    }
    if (this.gen !== gen) return { kind: "cancelled" };
    const channels = this.channels();
    // Every channel of the poll new with the same `since` (and no `history`): that is the
    // poll's position, honoured. Otherwise the poll cannot honour since/history (below).
    const groups = [...this.byStart(channels).values()];
    const only = groups.length === 1 ? groups[0]!.start : undefined;
    const pollSince = only?.since !== undefined && only.history === undefined ? only.since : undefined;
    this.urlSince = pollSince !== undefined ? { since: pollSince, channels, start: only! } : null;
    this.pollKey = channels.join("\n");
    this.pollRestart = false;
    // Until a poll succeeded, answer at once (timeout 0): the UI shows `connected` without
    // waiting for the first event or the full timeout.
    const timeout = polling ? this.cfg.pollTimeoutMs : 0;
    const params: [string, string][] = channels.map((c) => ["channel", c]);
    const position = pollSince ?? this.lastEventId;
    if (position) params.push(["last_event_id", position]);
    params.push(["timeout_ms", String(timeout)]);
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    // A proxy that never answers must not hang us: give up well after the server would have.
    const guard = setTimeout(() => ctrl.abort(), timeout + 15_000);
    const started = Date.now();
    let body: { events?: unknown; last_event_id?: unknown; gap?: unknown; oldest_id?: unknown };
    try {
      const response = await this.cfg.fetch(this.endpoint("/v1/poll", params), {
        method: "GET",
        headers: this.headers({ Accept: "application/json" }),
        credentials: this.cfg.credentials,
        cache: "no-store",
        signal: ctrl.signal,
      });
      if (this.gen !== gen) return { kind: "cancelled" };
      if (response.status !== 200) return await this.refused(response);
      body = await response.json();
    } catch {
      if (this.gen !== gen) return { kind: "cancelled" };
      if (this.pollRestart) return { kind: "again" };
      return { kind: "retry", reason: "network" };
    } finally {
      clearTimeout(guard);
      if (this.ctrl === ctrl) this.ctrl = null;
    }
    if (this.gen !== gen) return { kind: "cancelled" };
    if (!body || typeof body !== "object" || !Array.isArray(body.events)) {
      return { kind: "retry", reason: "bad_response" };
    }
    if (!polling) {
      this.backoff.reset();
      this.authRetried = false;
      this.setState({ status: "connected", transport: "poll" });
    }
    // A long-poll has one resume position for all its channels and no history: a channel's
    // `since`/`history` cannot be honoured here (unless `pollSince` was). Its subscribers get a
    // gap naming the channel (refetch), and the channel joins from the poll's position.
    for (const c of channels) {
      const start = this.pendingStart(c);
      this.markStarted([c], start);
      if (start && pollSince === undefined) {
        this.sink.gap({ lastEventId: start.since ?? "", oldestId: null, channel: c });
      }
    }
    this.setLive(channels);
    if (body.gap === true) {
      this.sink.gap({
        lastEventId: this.lastEventId,
        oldestId: typeof body.oldest_id === "string" ? body.oldest_id : null,
      });
    }
    for (const e of body.events as RealtimeEvent[]) {
      if (this.gen !== gen) return { kind: "cancelled" };
      if (!e || typeof e.id !== "string" || typeof e.channel !== "string") continue;
      this.lastEventId = e.id;
      this.sink.event(e, e.id);
    }
    if (this.gen !== gen) return { kind: "cancelled" };
    if (typeof body.last_event_id === "string" && body.last_event_id !== this.lastEventId) {
      this.lastEventId = body.last_event_id;
      this.sink.position(this.lastEventId);
    }
    if (timeout > 0 && body.events.length === 0 && Date.now() - started < timeout / 2) {
      // An empty answer long before the timeout (the server shutting down, a proxy cutting
      // requests short): back off instead of polling in a tight loop.
      return { kind: "retry", reason: "poll_ended_early" };
    }
    return { kind: "again" };
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
