/**
 * Cross-tab sharing: one stream per origin (per share key) for all tabs.
 *
 * - Leader election: every tab asks for the same Web Lock; the holder is the leader and runs
 *   the one `Transport`. The lock is released when the leader tab closes (or its client does),
 *   and the browser hands it to a waiting tab.
 * - Channels: every tab announces its channel set (and whether its hidden-tab policy paused
 *   it) to all tabs; the leader streams the union and changes it on its live connection.
 *   Every tab keeps the sets it heard, so a new leader knows the union at once; tabs that do
 *   not answer the new leader's call within `PRUNE_MS` are forgotten.
 * - Events: the leader relays each event with the resume position after it. Followers remember
 *   the position, so a follower that becomes leader resumes from the last event it saw: no
 *   loss. Events a dying leader relayed late are dropped by the client's duplicate filter.
 * - The stream is paused only when no tab wants it unpaused.
 *
 * Locks and channels are injected (`LocksLike`, `BroadcastChannelLike`) so tests use fakes.
 */

import { Transport, type TransportConfig } from "./transport.js";
import type { BroadcastChannelLike, ConnectionState, LocksLike } from "./types.js";
import {
  alreadyStarted,
  errorToJson,
  pauseWanted,
  relayAsIs,
  startOf,
  startsFromWire,
  unionOf,
  verdicts,
  type Starts,
  type Downstream,
  type Member,
  type Relay,
  type Upstream,
} from "./upstream.js";

/** How long a new leader waits for tabs to answer before forgetting the silent ones. */
export const PRUNE_MS = 3000;

/** Messages between tabs. `v` lets a newer client ignore an older one's messages. */
export type TabMessage = { v: 1; from: string } & (
  | { t: "join" }
  | { t: "sub"; channels: string[]; paused: boolean; o?: Starts }
  | { t: "bye" }
  | { t: "lead" }
  /** To one tab: whether its since/history for channel `c` was used (else it loads it over REST). */
  | { t: "st"; to: string; c: string; ok: boolean }
  | Relay
  | { t: "ctl"; op: "reconnect" }
);

type Body = TabMessage extends infer M ? (M extends unknown ? Omit<M, "v" | "from"> : never) : never;

interface TabInfo extends Member {
  channels: string[];
  paused: boolean;
  /** Answered the current leader's call (only meaningful on the leader). */
  confirmed: boolean;
}

export class TabsUpstream implements Upstream {
  readonly tabId: string;
  /** The resume position: the last one this tab saw, from its own stream or relayed. */
  lastEventId: string;
  private readonly bc: BroadcastChannelLike;
  /** The other tabs' announced sets. */
  private readonly tabs = new Map<string, TabInfo>();
  private channels: string[] = [];
  private starts: Starts = {};
  /** The live connection's channels, as the leader last said (for tabs that join). */
  private live: string[] = [];
  private paused = false;
  private offline = false;
  private leaderId: string | null = null;
  /** The leader's state as last relayed (followers). */
  private leaderState: ConnectionState | null = null;
  private transport: Transport | null = null;
  private releaseLock: (() => void) | null = null;
  private readonly lockAbort = new AbortController();
  private pruneTimer: ReturnType<typeof setTimeout> | undefined;
  private closed = false;

  constructor(
    private readonly cfg: TransportConfig,
    private readonly down: Downstream,
    locks: LocksLike,
    makeChannel: (name: string) => BroadcastChannelLike,
    name: string,
    tabId: string,
    lastEventId = "",
  ) {
    this.tabId = tabId;
    this.lastEventId = lastEventId;
    this.bc = makeChannel(name);
    this.bc.onmessage = (ev) => this.receive(ev.data);
    this.post({ t: "join" });
    locks
      .request(name, { signal: this.lockAbort.signal }, () => {
        if (this.closed) return Promise.resolve();
        return new Promise<void>((release) => {
          this.releaseLock = release;
          this.lead();
        });
      })
      .catch((e: unknown) => {
        if (!this.closed) down.unexpected(e);
      });
  }

  get isLeader(): boolean {
    return this.transport !== null;
  }

  setChannels(channels: string[], starts: Starts): void {
    this.channels = channels;
    this.starts = starts;
    this.announce();
    if (this.transport) this.leaderUpdate();
    else this.followerState();
  }

  removing(channel: string): boolean {
    return this.transport?.removing(channel) ?? false;
  }

  setPaused(paused: boolean): void {
    if (this.paused === paused) return;
    this.paused = paused;
    this.announce();
    if (this.transport) this.leaderUpdate();
  }

  setOffline(offline: boolean): void {
    this.offline = offline;
    this.transport?.setOffline(offline);
  }

  reconnect(): void {
    if (this.transport) this.transport.reconnect();
    else this.post({ t: "ctl", op: "reconnect" });
  }

  /** The page is going away (pagehide): let the leader drop our channels at once. */
  leave(): void {
    this.post({ t: "bye" });
  }

  /** The page came back from the back/forward cache. */
  rejoin(): void {
    this.post({ t: "join" });
    this.announce();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.pruneTimer);
    this.post({ t: "bye" });
    const t = this.transport;
    this.transport = null;
    t?.close();
    this.releaseLock?.();
    this.releaseLock = null;
    this.lockAbort.abort();
    this.bc.onmessage = null;
    this.bc.close();
  }

  // ---- messages -------------------------------------------------------------------------------

  private post(body: Body): void {
    if (this.closed && body.t !== "bye") return;
    try {
      this.bc.postMessage({ v: 1, from: this.tabId, ...body });
    } catch (e) {
      this.down.unexpected(e);
    }
  }

  private announce(): void {
    const body: Body = { t: "sub", channels: this.channels, paused: this.paused };
    if (Object.keys(this.starts).length > 0) body.o = this.starts;
    this.post(body);
  }

  private receive(data: unknown): void {
    const m = data as TabMessage | null;
    if (this.closed || !m || m.v !== 1 || typeof m.from !== "string" || m.from === this.tabId) {
      return;
    }
    switch (m.t) {
      case "join":
        this.announce();
        if (this.transport) {
          this.post({ t: "state", s: this.transport.state });
          if (this.lastEventId) this.post({ t: "pos", id: this.lastEventId });
          if (this.live.length > 0) this.post({ t: "live", c: this.live });
        }
        return;
      case "sub": {
        const info: TabInfo = {
          channels: Array.isArray(m.channels) ? m.channels : [],
          paused: !!m.paused,
          starts: startsFromWire(m.o),
          confirmed: true,
        };
        this.tabs.set(m.from, info);
        const t = this.transport;
        if (t) {
          alreadyStarted(info, (c) => t.hasStarted(c), (c) => this.post({ t: "st", to: m.from, c, ok: false }));
          this.leaderUpdate();
        }
        return;
      }
      case "bye":
        this.tabs.delete(m.from);
        if (this.transport) this.leaderUpdate();
        else if (m.from === this.leaderId) {
          this.leaderId = null;
          this.leaderState = null;
          this.down.live([]);
          if (this.channels.length > 0) {
            this.down.state({
              status: "reconnecting",
              reason: "leader_left",
              attempt: 0,
              delayMs: 0,
            });
          }
        }
        return;
      case "lead":
        if (this.transport) return; // cannot happen with a working lock
        this.leaderId = m.from;
        this.announce();
        return;
      case "ctl":
        if (this.transport && m.op === "reconnect") this.transport.reconnect();
        return;
      case "st":
        if (!this.transport && m.to === this.tabId && typeof m.c === "string") {
          this.down.startVerdict?.(m.c, m.ok === true);
        }
        return;
    }
    // Leader-only messages from here on.
    if (this.transport) return;
    if (this.leaderId === null) this.leaderId = m.from;
    const current = m.from === this.leaderId;
    switch (m.t) {
      case "ev":
        // A late relay of a dead leader is still delivered (the duplicate filter drops what
        // the new leader replays) but does not move our position.
        if (current) this.lastEventId = m.id;
        this.down.event(m.e, current ? m.id : null, m.h === 1);
        return;
      case "pos":
        if (current) {
          this.lastEventId = m.id;
          this.down.position(m.id);
        }
        return;
      case "state":
        if (current) {
          this.leaderState = m.s;
          this.followerState();
        }
        return;
      case "live":
        if (current) relayAsIs(this.down, m);
        return;
      case "gap":
      case "bcast":
      case "cerr":
        relayAsIs(this.down, m);
        return;
    }
  }

  private followerState(): void {
    if (this.transport) return;
    this.down.state(
      this.leaderState ?? (this.channels.length > 0 ? { status: "connecting" } : { status: "idle" }),
    );
  }

  // ---- leading --------------------------------------------------------------------------------

  private lead(): void {
    if (this.closed) {
      this.releaseLock?.();
      return;
    }
    // The previous leader released the lock: it is gone, and so are its channels.
    if (this.leaderId !== null) this.tabs.delete(this.leaderId);
    this.leaderId = this.tabId;
    this.leaderState = null;
    for (const t of this.tabs.values()) t.confirmed = false;
    this.post({ t: "lead" });
    this.pruneTimer = setTimeout(() => {
      for (const [id, t] of this.tabs) if (!t.confirmed) this.tabs.delete(id);
      if (this.transport) this.leaderUpdate();
    }, PRUNE_MS);

    const transport = new Transport(this.cfg, {
      channels: () => this.union(),
      start: (c) => startOf(this.members(), c),
      live: (c) => {
        this.live = c;
        this.post({ t: "live", c });
        this.down.live(c);
      },
      started: (channels, start) => {
        for (const [id, t] of this.tabs) {
          verdicts([t], channels, start, (_, c, ok) => this.post({ t: "st", to: id, c, ok }));
        }
        verdicts([this.members()[0]!], channels, start, (_, c, ok) => this.down.startVerdict?.(c, ok));
      },
      event: (e, id, history) => {
        this.lastEventId = id;
        this.post(history ? { t: "ev", e, id, h: 1 } : { t: "ev", e, id });
        this.down.event(e, id, history);
      },
      position: (id) => {
        this.lastEventId = id;
        this.post({ t: "pos", id });
        this.down.position(id);
      },
      state: (s) => {
        if (this.transport !== transport) return; // closing: followers will get a new leader
        this.post({ t: "state", s });
        this.down.state(s);
      },
      gap: (g) => {
        this.post({ t: "gap", g });
        this.down.gap(g);
      },
      broadcast: (b) => {
        this.post({ t: "bcast", b });
        this.down.broadcast(b);
      },
      channelError: (channels, err) => {
        this.post({ t: "cerr", channels, err: errorToJson(err) });
        this.down.channelError(channels, err);
      },
      unexpected: (e) => this.down.unexpected(e),
    });
    transport.lastEventId = this.lastEventId;
    this.transport = transport;
    this.down.leader?.(true);
    transport.setOffline(this.offline);
    this.leaderUpdate();
    // A leader that is idle or paused from the start still tells everyone.
    this.post({ t: "state", s: transport.state });
    this.down.state(transport.state);
  }

  /** This tab and the others. */
  private members(): Member[] {
    return [{ channels: this.channels, paused: this.paused, starts: this.starts }, ...this.tabs.values()];
  }

  private union(): string[] {
    return unionOf(this.members());
  }

  private leaderUpdate(): void {
    const t = this.transport;
    if (!t) return;
    t.setPaused(pauseWanted(this.members()));
    t.update();
  }
}
