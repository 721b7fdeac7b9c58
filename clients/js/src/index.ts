/**
 * `@ssegate/client`: the browser client of ssegate. One multiplexed Server-Sent-Events stream
 * (per origin, shared by all tabs), resumed by `Last-Event-ID`, with backoff, token refresh,
 * long-poll fallback and a connection state for the UI. No runtime dependencies.
 *
 * ```ts
 * import { createClient } from "@ssegate/client";
 * const rt = createClient({ url: "https://rt.example.com", getToken: () => auth.token() });
 * const off = rt.subscribe("logs:w1:f1", (e) => console.log(e.type, e.data));
 * rt.onState((s) => console.log(s.status));
 * ```
 */
export { createClient } from "./client.js";
export { RealtimeError } from "./errors.js";
export { EventStreamParser, type SseMessage } from "./parser.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export { comparePositions, subscriptionMatches, subscriptionProblem } from "./channels.js";
export { WorkerHub, serveSharedWorker, type HubOptions, type SharedWorkerScope } from "./hub.js";
export type {
  BroadcastChannelLike,
  BroadcastMessage,
  ClientOptions,
  ConnectionState,
  ConnectionStatus,
  Environment,
  GapInfo,
  HiddenTabPolicy,
  HistoryOptions,
  HistoryPage,
  LocksLike,
  MessagePortLike,
  RealtimeClient,
  RealtimeEvent,
  SharedWorkerLike,
  SharingMode,
  SharingState,
  StartOptions,
  SubscribeOptions,
  SubscriptionState,
  TokenReason,
  Unsubscribe,
} from "./types.js";
