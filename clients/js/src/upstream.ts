/**
 * What a client talks to: its own `Transport` (`LocalUpstream`), the leader tab's over a
 * BroadcastChannel (`TabsUpstream`, in tabs.ts), or a SharedWorker's over a MessagePort
 * (`WorkerUpstream`, in shared.ts; the worker side is hub.ts). The client hands it the
 * channels this tab wants and receives what happens through a `Downstream`.
 */

import { RealtimeError } from "./errors.js";
import { Transport, type TransportConfig } from "./transport.js";
import type {
  BroadcastMessage,
  ConnectionState,
  GapInfo,
  RealtimeEvent,
  StartOptions,
} from "./types.js";

/** Where each channel starts when it joins the connection (only channels with options). */
export type Starts = Record<string, StartOptions>;

export interface Downstream {
  /**
   * `lastEventId`: the resume position after this event; null when it must not move.
   * `history`: a history frame (no `id:` line) of a channel added with `since`/`history`.
   */
  event(event: RealtimeEvent, lastEventId: string | null, history?: boolean): void;
  /** The channels the live connection has now (empty: no live connection). */
  live(channels: string[]): void;
  /** This tab took or lost the stream (leader mode). */
  leader?(isLeader: boolean): void;
  /**
   * Whoever holds the shared stream says whether this tab's `since`/`history` for a channel was
   * used (`true`: the history comes from the stream) or not (`false`: the channel was already on
   * the connection, or joined with another tab's options: load it over REST).
   */
  startVerdict?(channel: string, used: boolean): void;
  position(lastEventId: string): void;
  state(state: ConnectionState): void;
  gap(gap: GapInfo): void;
  broadcast(message: BroadcastMessage): void;
  channelError(channels: string[] | null, error: RealtimeError): void;
  unexpected(error: unknown): void;
}

export interface Upstream {
  readonly isLeader: boolean;
  /** The page is going away (pagehide): whoever holds the stream drops this tab's channels. */
  leave?(): void;
  /** The page came back from the back/forward cache. */
  rejoin?(): void;
  /** This tab's channels (each once, however many handlers) and where new ones start. */
  setChannels(channels: string[], starts: Starts): void;
  /** Whether a request removing this channel from the connection is out. Unknown (a follower, a worker): false. */
  removing?(channel: string): boolean;
  /** The hidden-tab policy paused this tab. */
  setPaused(paused: boolean): void;
  setOffline(offline: boolean): void;
  reconnect(): void;
  close(): void;
}

/** One tab, one stream. */
export class LocalUpstream implements Upstream {
  readonly isLeader = true;
  private channels: string[] = [];
  private starts: Starts = {};
  private readonly transport: Transport;

  constructor(cfg: TransportConfig, down: Downstream, lastEventId = "") {
    this.transport = new Transport(cfg, {
      channels: () => this.channels,
      start: (c) => this.starts[c],
      live: (c) => down.live(c),
      event: (e, id, h) => down.event(e, id, h),
      position: (id) => down.position(id),
      state: (s) => down.state(s),
      gap: (g) => down.gap(g),
      broadcast: (b) => down.broadcast(b),
      channelError: (c, e) => down.channelError(c, e),
      unexpected: (e) => down.unexpected(e),
    });
    this.transport.lastEventId = lastEventId;
  }

  setChannels(channels: string[], starts: Starts): void {
    this.channels = channels;
    this.starts = starts;
    this.transport.update();
  }

  removing(channel: string): boolean {
    return this.transport.removing(channel);
  }

  setPaused(paused: boolean): void {
    this.transport.setPaused(paused);
  }

  setOffline(offline: boolean): void {
    this.transport.setOffline(offline);
  }

  reconnect(): void {
    this.transport.reconnect();
  }

  close(): void {
    this.transport.close();
  }
}

// ---- shared by the holders of one stream for many tabs (tabs.ts, hub.ts) ----------------------

/** A `RealtimeError` as it crosses a BroadcastChannel or a MessagePort. */
export interface ErrorJson {
  code: string;
  message: string;
  status: number;
  channels?: string[];
}

export function errorToJson(err: RealtimeError): ErrorJson {
  return { code: err.code, message: err.message, status: err.status, channels: err.channels };
}

export function errorFromJson(json: ErrorJson): RealtimeError {
  return new RealtimeError(json.code, json.message, json.status, json.channels);
}

/** What the holder of a shared stream sends to the tabs that share it. */
export type Relay =
  | { t: "ev"; e: RealtimeEvent; id: string; h?: 1 }
  /** The channels of the live connection. */
  | { t: "live"; c: string[] }
  | { t: "pos"; id: string }
  | { t: "state"; s: ConnectionState }
  | { t: "gap"; g: GapInfo }
  | { t: "bcast"; b: BroadcastMessage }
  | { t: "cerr"; channels: string[] | null; err: ErrorJson };

/**
 * Hands a tab the relays that need nothing of the sharing mode (gaps, broadcasts, channel
 * errors); false for the others.
 */
export function relayAsIs(down: Downstream, m: Relay): boolean {
  switch (m.t) {
    case "gap":
      down.gap(m.g);
      return true;
    case "bcast":
      down.broadcast(m.b);
      return true;
    case "cerr":
      down.channelError(m.channels, errorFromJson(m.err));
      return true;
    case "live":
      down.live(Array.isArray(m.c) ? m.c : []);
      return true;
    default:
      return false;
  }
}

/** A tab sharing a stream: the channels it wants, and whether its hidden-tab policy paused it. */
export interface Member {
  channels: readonly string[];
  paused: boolean;
  /** Where the member's new channels start. */
  starts?: Starts;
}

/** The start options of a channel: the first member wanting it with options decides. */
export function startOf(members: Iterable<Member>, channel: string): StartOptions | undefined {
  for (const m of members) {
    const s = m.starts?.[channel];
    if (s && m.channels.includes(channel)) return s;
  }
  return undefined;
}

/** The start options as they cross a BroadcastChannel or a MessagePort (checked). */
export function startsFromWire(value: unknown): Starts {
  const out: Starts = {};
  if (!value || typeof value !== "object") return out;
  for (const [c, o] of Object.entries(value as Record<string, unknown>)) {
    if (!o || typeof o !== "object") continue;
    const { since, history } = o as { since?: unknown; history?: unknown };
    const s: StartOptions = {};
    if (typeof since === "string") s.since = since;
    if (typeof history === "number") s.history = history;
    if (s.since !== undefined || s.history !== undefined) out[c] = s;
  }
  return out;
}

/** Whether two sets of start options are the same. */
export function sameStart(a: StartOptions | undefined, b: StartOptions | undefined): boolean {
  return a?.since === b?.since && a?.history === b?.history;
}

/**
 * What the holder of a shared stream tells each member wanting these channels with options of
 * its own, once they joined the connection with `start`: whether its options were used.
 */
export function verdicts(
  members: Iterable<Member>,
  channels: string[],
  start: StartOptions | undefined,
  tell: (member: Member, channel: string, used: boolean) => void,
): void {
  for (const m of members) {
    for (const c of channels) {
      const own = m.starts?.[c];
      if (own && m.channels.includes(c)) tell(m, c, sameStart(own, start));
    }
  }
}

/**
 * A member announced options for channels already on the connection: they cannot be used
 * (`tell(channel)`: the member loads them over REST).
 */
export function alreadyStarted(
  member: Member,
  hasStarted: (channel: string) => boolean,
  tell: (channel: string) => void,
): void {
  for (const c of Object.keys(member.starts ?? {})) {
    if (member.channels.includes(c) && hasStarted(c)) tell(c);
  }
}

/** Every channel some member wants, paused or not (a paused tab keeps its place). */
export function unionOf(members: Iterable<Member>): string[] {
  const all = new Set<string>();
  for (const m of members) for (const c of m.channels) all.add(c);
  return [...all];
}

/** Pause the shared stream only when somebody wants channels but nobody unpaused does. */
export function pauseWanted(members: Iterable<Member>): boolean {
  let wanted = false;
  for (const m of members) {
    if (m.channels.length === 0) continue;
    if (!m.paused) return false;
    wanted = true;
  }
  return wanted;
}
