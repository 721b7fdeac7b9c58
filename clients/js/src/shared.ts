/**
 * The tab side of `sharing: "sharedworker"`: the stream runs in a SharedWorker (hub.ts), this
 * tab talks to it over the worker's MessagePort. It sends this tab's channels, pause and
 * connectivity, answers the worker's token requests with this tab's `getToken`, says `ping`
 * every `PING_MS` and `bye` on pagehide, and hands what the worker relays to the client.
 */

import type { ToTab, ToWorker, WireConfig } from "./hub.js";
import type { TransportConfig } from "./transport.js";
import type { LocksLike, SharedWorkerLike, TokenReason } from "./types.js";
import { relayAsIs, type Downstream, type Starts, type Upstream } from "./upstream.js";

/** How often a tab tells the worker it is alive (hub.ts forgets it after `PORT_TIMEOUT_MS`). */
export const PING_MS = 10_000;

type Body<M> = M extends unknown ? Omit<M, "v"> : never;

export class WorkerUpstream implements Upstream {
  readonly isLeader = false;
  private readonly wire: WireConfig;
  private channels: string[] = [];
  private starts: Starts = {};
  private paused = false;
  private offline = false;
  private heard = false;
  private closed = false;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private releaseLock: (() => void) | null = null;
  private readonly lockAbort = new AbortController();

  constructor(
    private readonly cfg: TransportConfig,
    private readonly down: Downstream,
    private readonly worker: SharedWorkerLike,
    private readonly key: string,
    /** The resume position: the last one the worker told this tab. */
    private lastEventId: string,
    /** The worker could not be started: the client falls back to another mode. */
    onFail: () => void,
    locks?: LocksLike,
  ) {
    const { fetch: _fetch, getToken, random: _random, ...settings } = cfg;
    this.wire = { ...settings, token: typeof getToken === "function" };
    worker.onerror = () => {
      if (!this.closed && !this.heard) onFail();
    };
    worker.port.onmessage = (ev) => this.receive(ev.data);
    worker.port.start?.();
    this.hello();
    this.pinging(true);
    if (locks) {
      // A lock of this tab's own: the worker waits for it, the browser releases it when the
      // tab goes, however it goes.
      const name = `ssegate-tab:${cfg.sessionId}`;
      locks
        .request(name, { signal: this.lockAbort.signal }, () => {
          if (this.closed) return Promise.resolve();
          return new Promise<void>((release) => {
            this.releaseLock = release;
            this.post({ t: "lock", name });
          });
        })
        .catch((e: unknown) => {
          if (!this.closed) down.unexpected(e);
        });
    }
  }

  setChannels(channels: string[], starts: Starts): void {
    this.channels = channels;
    this.starts = starts;
    this.announce();
    if (!this.heard) this.down.state(channels.length > 0 ? { status: "connecting" } : { status: "idle" });
  }

  setPaused(paused: boolean): void {
    if (this.paused === paused) return;
    this.paused = paused;
    this.announce();
  }

  setOffline(offline: boolean): void {
    if (this.offline === offline) return;
    this.offline = offline;
    this.post({ t: "off", offline });
  }

  reconnect(): void {
    this.post({ t: "ctl", op: "reconnect" });
  }

  leave(): void {
    this.post({ t: "bye" });
    this.pinging(false);
  }

  rejoin(): void {
    this.hello();
    this.pinging(true);
  }

  close(): void {
    if (this.closed) return;
    this.post({ t: "bye" });
    this.closed = true;
    this.pinging(false);
    this.releaseLock?.();
    this.releaseLock = null;
    this.lockAbort.abort();
    this.worker.onerror = null;
    this.worker.port.onmessage = null;
    this.worker.port.close();
  }

  // ---- messages -------------------------------------------------------------------------------

  private post(body: Body<ToWorker>): void {
    if (this.closed) return;
    try {
      this.worker.port.postMessage({ v: 1, ...body });
    } catch (e) {
      this.down.unexpected(e);
    }
  }

  private hello(): void {
    this.post({
      t: "hello",
      key: this.key,
      cfg: this.wire,
      last: this.lastEventId,
      offline: this.offline,
    });
    if (this.channels.length > 0 || this.paused) this.announce();
  }

  private announce(): void {
    const body: Body<ToWorker> = { t: "sub", channels: this.channels, paused: this.paused };
    if (Object.keys(this.starts).length > 0) body.o = this.starts;
    this.post(body);
  }

  private pinging(on: boolean): void {
    clearInterval(this.pingTimer);
    this.pingTimer = on && !this.closed ? setInterval(() => this.post({ t: "ping" }), PING_MS) : undefined;
  }

  private receive(data: unknown): void {
    const m = data as ToTab | null;
    if (this.closed || !m || m.v !== 1) return;
    this.heard = true;
    switch (m.t) {
      case "ev":
        this.lastEventId = m.id;
        this.down.event(m.e, m.id, m.h === 1);
        return;
      case "pos":
        this.lastEventId = m.id;
        this.down.position(m.id);
        return;
      case "state":
        this.down.state(m.s);
        return;
      case "gap":
      case "bcast":
      case "cerr":
      case "live":
        relayAsIs(this.down, m);
        return;
      case "token":
        void this.token(m.req, m.reason);
        return;
      case "st":
        if (typeof m.c === "string") this.down.startVerdict?.(m.c, m.ok === true);
        return;
      case "who":
        this.hello();
        return;
    }
  }

  /** The worker needs a token: this tab's `getToken` gives it. */
  private async token(req: number, reason: TokenReason): Promise<void> {
    try {
      const token = this.cfg.getToken ? await this.cfg.getToken(reason) : null;
      this.post({ t: "token", req, token: token ?? null });
    } catch (e) {
      this.post({ t: "token", req, error: e instanceof Error ? e.message : String(e) });
    }
  }
}
