/**
 * `@ssegate/react`: React bindings for `@ssegate/client`.
 *
 * ```tsx
 * <RealtimeProvider options={{ url: "/realtime", getToken }}>
 *   <App />
 * </RealtimeProvider>
 *
 * function Logs({ flow }: { flow: string }) {
 *   const events = useEvents<LogLine>(`logs:w1:${flow}`, { limit: 200 });
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
 * No JSX in this file: the build output imports only `react` and `@ssegate/client`.
 */

import {
  createElement,
  createContext,
  useCallback,
  useContext,
  useEffect,
  useLayoutEffect,
  useRef,
  useState,
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
} from "@ssegate/client";

const RealtimeContext = createContext<RealtimeClient | null>(null);

/** useLayoutEffect in the browser, useEffect on the server (no warning during SSR). */
const useIsomorphicLayoutEffect = typeof window !== "undefined" ? useLayoutEffect : useEffect;

export type RealtimeProviderProps =
  | { client: RealtimeClient; options?: undefined; children?: ReactNode }
  | { options: ClientOptions; client?: undefined; children?: ReactNode };

/**
 * Makes a client available to the hooks below it. Give it a `client` you created (and close
 * yourself), or `options`: the provider then creates the client once (later changes of
 * `options` are ignored: remount with a `key` to change them) and closes it on unmount.
 */
export function RealtimeProvider(props: RealtimeProviderProps) {
  const own = useRef<RealtimeClient | null>(null);
  if (!props.client && !own.current) {
    // Creating a client has no side effects until its first subscription, so a render
    // React throws away (StrictMode, Suspense) leaks nothing.
    own.current = createClient(props.options);
  }
  const client = props.client ?? own.current!;
  const ownsClient = !props.client;
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
    return client.subscribe<T>(channel, (e) => latest.current.handler(e), {
      onError: (e) => latest.current.options?.onError?.(e),
      onGap: (g) => latest.current.options?.onGap?.(g),
    });
  }, [client, channel]);
}

export interface UseEventsOptions extends UseChannelOptions {
  /** How many of the latest events to keep. Default 100. */
  limit?: number;
}

/** The last `limit` events of `channel`, oldest first; empty again when `channel` changes. */
export function useEvents<T = unknown>(
  channel: string | null | undefined,
  options: UseEventsOptions = {},
): RealtimeEvent<T>[] {
  const limit = Math.max(1, options.limit ?? 100);
  const [state, setState] = useState<{ channel: typeof channel; events: RealtimeEvent<T>[] }>({
    channel,
    events: [],
  });
  const limitRef = useRef(limit);
  limitRef.current = limit;
  const append = useCallback(
    (e: RealtimeEvent<T>) =>
      setState((s) => {
        const max = limitRef.current;
        const kept = s.channel === channel ? s.events : [];
        const events = kept.length >= max ? kept.slice(kept.length - max + 1) : kept.slice();
        events.push(e);
        return { channel, events };
      }),
    [channel],
  );
  useChannel<T>(channel, append, options);
  // Events of a previous channel are not shown while the new one has none yet.
  const events = state.channel === channel ? state.events : [];
  return events.length > limit ? events.slice(events.length - limit) : events;
}

/** The connection state; re-renders when it changes. */
export function useConnectionState(): ConnectionState {
  const client = useRealtime();
  const subscribe = useCallback((onChange: () => void) => client.onState(onChange), [client]);
  const get = () => client.state;
  return useSyncExternalStore(subscribe, get, get);
}

export type { ClientOptions, ConnectionState, GapInfo, RealtimeClient, RealtimeError, RealtimeEvent };
