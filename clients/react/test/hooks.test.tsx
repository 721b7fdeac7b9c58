import { StrictMode, useState } from "react";
import { act, render, screen } from "@testing-library/react";
import { describe, expect, it, vi } from "vitest";
import type { RealtimeClient, RealtimeEvent } from "@ssegate/client";
import {
  RealtimeProvider,
  useChannel,
  useConnectionState,
  useEvents,
  useRealtime,
} from "../src/index.js";
import { envelope, settle } from "../../js/test/fakes.js";
import { flush, useTestClient } from "./gateway.js";

const t = useTestClient();

function Channel({ channel, onEvent }: { channel: string; onEvent?: (e: RealtimeEvent) => void }) {
  useChannel(channel, (e) => onEvent?.(e));
  return null;
}

function Status() {
  const s = useConnectionState();
  return <p data-testid="status">{s.status}</p>;
}

describe("StrictMode", () => {
  it("double mount/unmount ends with exactly one server subscription, and unmount leaves none", async () => {
    const subscribe = vi.spyOn(t.client, "subscribe");
    const { unmount } = render(
      <StrictMode>
        <RealtimeProvider client={t.client}>
          <Channel channel="logs:w1:f1" />
          <Channel channel="logs:w1:f1" />
        </RealtimeProvider>
      </StrictMode>,
    );
    await flush();
    // StrictMode did mount, unmount and mount each component again…
    expect(subscribe).toHaveBeenCalledTimes(4);
    // …and the gateway saw one subscription.
    expect(t.server.streamCalls()).toHaveLength(1);
    expect(t.server.streamCalls()[0]!.url.searchParams.getAll("channel")).toEqual(["logs:w1:f1"]);
    t.server.lastStream().connected("c_1");
    await flush();
    expect(t.server.subscriptionCalls()).toHaveLength(0);
    expect(t.client.state.status).toBe("connected");

    unmount();
    await flush();
    // The last subscription gone: the stream is closed, nothing is left subscribed.
    expect(t.server.lastStream().closed).toBe(true);
    expect(t.client.state).toEqual({ status: "idle" });
    expect(t.server.streamCalls()).toHaveLength(1);
  });

  it("a component mounted on a live connection adds its channel once and removes it once", async () => {
    function App({ show }: { show: boolean }) {
      return (
        <RealtimeProvider client={t.client}>
          <Channel channel="base" />
          {show && <Channel channel="extra" />}
        </RealtimeProvider>
      );
    }
    const { rerender } = render(
      <StrictMode>
        <App show={false} />
      </StrictMode>,
    );
    await flush();
    t.server.lastStream().connected("c_1");
    await flush();
    rerender(
      <StrictMode>
        <App show />
      </StrictMode>,
    );
    await flush();
    expect(t.server.subscriptionCalls().map((c) => c.body)).toEqual([{ add: ["extra"] }]);
    rerender(
      <StrictMode>
        <App show={false} />
      </StrictMode>,
    );
    await flush();
    expect(t.server.subscriptionCalls().map((c) => c.body)).toEqual([{ add: ["extra"] }, { remove: ["extra"] }]);
    expect(t.server.streamCalls()).toHaveLength(1);
    expect(t.server.lastStream().channels).toEqual(new Set(["base"]));
  });

  it("a provider given options creates one client and closes it on unmount only", async () => {
    let seen: RealtimeClient | null = null;
    function Probe() {
      seen = useRealtime();
      useChannel("a", () => {});
      return <Status />;
    }
    const { unmount } = render(
      <StrictMode>
        <RealtimeProvider
          options={{ url: "http://gw.test", fetch: t.server.fetch, environment: null, shareAcrossTabs: false }}
        >
          <Probe />
        </RealtimeProvider>
      </StrictMode>,
    );
    await flush();
    expect(t.server.streamCalls()).toHaveLength(1);
    t.server.lastStream().connected();
    await flush();
    expect(screen.getByTestId("status").textContent).toBe("connected");
    expect(seen!.closed).toBe(false);
    unmount();
    await flush();
    expect(seen!.closed).toBe(true);
    expect(t.server.lastStream().closed).toBe(true);
  });
});

describe("hooks", () => {
  it("useChannel keeps the handler in a ref: re-renders do not resubscribe", async () => {
    const got: string[] = [];
    function Counter() {
      const [n, setN] = useState(0);
      useChannel("a", (e) => got.push(`${n}:${e.id}`));
      return (
        <button type="button" onClick={() => setN(n + 1)}>
          {n}
        </button>
      );
    }
    render(
      <RealtimeProvider client={t.client}>
        <Counter />
      </RealtimeProvider>,
    );
    await flush();
    t.server.lastStream().connected();
    t.server.lastStream().deliver(envelope("1", "a"));
    await flush();
    act(() => screen.getByRole("button").click());
    act(() => screen.getByRole("button").click());
    t.server.lastStream().deliver(envelope("2", "a"));
    await flush();
    expect(got).toEqual(["0:1", "2:2"]);
    expect(t.server.streamCalls()).toHaveLength(1);
    expect(t.server.subscriptionCalls()).toHaveLength(0);
  });

  it("useEvents returns the last `limit` events and starts over when the channel changes", async () => {
    function List({ channel }: { channel: string }) {
      const events = useEvents<{ n: string }>(channel, { limit: 3 });
      return <p data-testid="list">{events.map((e) => e.id).join(",")}</p>;
    }
    const { rerender } = render(
      <RealtimeProvider client={t.client}>
        <List channel="a" />
      </RealtimeProvider>,
    );
    await flush();
    const s = t.server.lastStream();
    s.connected();
    for (let i = 1; i <= 5; i++) s.deliver(envelope(String(i), "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("3,4,5");
    rerender(
      <RealtimeProvider client={t.client}>
        <List channel="b" />
      </RealtimeProvider>,
    );
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("");
    s.deliver(envelope("6", "a"));
    s.deliver(envelope("7", "b"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("7");
    expect(t.server.subscriptionCalls().map((c) => c.body)).toEqual([{ add: ["b"], remove: ["a"] }]);
  });

  it("useConnectionState follows the client", async () => {
    render(
      <RealtimeProvider client={t.client}>
        <Status />
        <Channel channel="a" />
      </RealtimeProvider>,
    );
    await flush();
    expect(screen.getByTestId("status").textContent).toBe("connecting");
    t.server.lastStream().connected();
    await flush();
    expect(screen.getByTestId("status").textContent).toBe("connected");
    t.server.lastStream().fail();
    await flush();
    expect(screen.getByTestId("status").textContent).toBe("reconnecting");
  });

  it("onError reaches the component whose channel was refused", async () => {
    const errors: string[] = [];
    function Secret() {
      useChannel("secret", () => {}, { onError: (e) => errors.push(e.code) });
      return null;
    }
    render(
      <RealtimeProvider client={t.client}>
        <Secret />
      </RealtimeProvider>,
    );
    await flush();
    expect(errors).toEqual([]);
    t.server.streamReplies.length = 0;
    // The gateway refuses it on the next connect.
    t.server.lastStream().fail();
    t.server.streamReplies.push({
      status: 403,
      ok: false,
      headers: new Headers({ "content-type": "application/json" }),
      body: null,
      json: async () => ({ error: { code: "forbidden_channel", message: "no", channels: ["secret"] } }),
    });
    await act(async () => {
      await vi.advanceTimersByTimeAsync(1000);
      await settle();
    });
    expect(errors).toEqual(["forbidden_channel"]);
  });

  it("useRealtime outside a provider says so", () => {
    function Lost() {
      useRealtime();
      return null;
    }
    vi.spyOn(console, "error").mockImplementation(() => {});
    expect(() => render(<Lost />)).toThrow(/RealtimeProvider/);
  });
});
