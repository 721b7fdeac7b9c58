/**
 * What a client talks to: its own `Transport` (`LocalUpstream`), or the leader tab's over a
 * BroadcastChannel (`TabsUpstream`, in tabs.ts). The client hands it the channels this tab
 * wants and receives what happens through a `Downstream`.
 */

import type { RealtimeError } from "./errors.js";
import { Transport, type TransportConfig } from "./transport.js";
import type { BroadcastMessage, ConnectionState, GapInfo, RealtimeEvent } from "./types.js";

export interface Downstream {
  /** `lastEventId`: the resume position after this event; null when it must not move. */
  event(event: RealtimeEvent, lastEventId: string | null): void;
  position(lastEventId: string): void;
  state(state: ConnectionState): void;
  gap(gap: GapInfo): void;
  broadcast(message: BroadcastMessage): void;
  channelError(channels: string[] | null, error: RealtimeError): void;
  unexpected(error: unknown): void;
}

export interface Upstream {
  readonly isLeader: boolean;
  /** This tab's channels (each once, however many handlers). */
  setChannels(channels: string[]): void;
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
  private readonly transport: Transport;

  constructor(cfg: TransportConfig, down: Downstream, lastEventId = "") {
    this.transport = new Transport(cfg, {
      channels: () => this.channels,
      event: (e, id) => down.event(e, id),
      position: (id) => down.position(id),
      state: (s) => down.state(s),
      gap: (g) => down.gap(g),
      broadcast: (b) => down.broadcast(b),
      channelError: (c, e) => down.channelError(c, e),
      unexpected: (e) => down.unexpected(e),
    });
    this.transport.lastEventId = lastEventId;
  }

  setChannels(channels: string[]): void {
    this.channels = channels;
    this.transport.update();
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
