import { Activity, StrictMode, useState } from "react";
import { act, render, screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import type { RealtimeClient } from "@ssegate/client";
import {
  RealtimeProvider,
  keptChannels,
  useChannel,
  useEvents,
  useConnectionState,
  useRealtime,
  useSharing,
  useSubscriptionStatus,
} from "../src/index.js";
import { advance, apiError, clientOptions, envelope } from "../../js/test/fakes.js";
import { flush, useTestClient } from "./gateway.js";

const t = useTestClient();

function List({ channel, limit, history, id }: { channel: string; limit?: number; history?: number; id?: string }) {
  const events = useEvents(channel, { limit, history });
  return <p data-testid={id ?? "list"}>{events.map((e) => e.id).join(",")}</p>;
}

describe("useEvents: the shared store", () => {
  it("a component mounted again shows the events it had, and the stream continues after the last of them", async () => {
    function App({ show }: { show: boolean }) {
      return (
        <RealtimeProvider client={t.client}>
          <List channel="base" id="base" />
          {show && <List channel="a" />}
        </RealtimeProvider>
      );
    }
    const { rerender } = render(<App show />);
    await flush();
    const s = t.server.lastStream();
    s.connected("c_1");
    s.deliver(envelope("1", "a"));
    s.deliver(envelope("2", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("1,2");
    rerender(<App show={false} />);
    await flush();
    expect(t.server.subscriptionCalls().map((c) => c.body)).toEqual([{ remove: ["a"] }]);
    rerender(<App show />);
    // At once, before anything came from the gateway.
    expect(screen.getByTestId("list").textContent).toBe("1,2");
    await flush();
    expect(t.server.subscriptionCalls().map((c) => c.body)).toEqual([
      { remove: ["a"] },
      { add: ["a"], since: "2" },
    ]);
    s.history(envelope("2", "a")); // the last kept event again: not twice
    s.history(envelope("3", "a"));
    s.deliver(envelope("4", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("1,2,3,4");
  });

  it("close() on an app-owned client: mounted hooks keep working once a subscription reopens it", async () => {
    function Status() {
      return <p data-testid="status">{useConnectionState().status}</p>;
    }
    function App({ more }: { more: boolean }) {
      return (
        <RealtimeProvider client={t.client}>
          <Status />
          <List channel="a" />
          {more && <List channel="b" id="b" />}
        </RealtimeProvider>
      );
    }
    const { rerender } = render(<App more={false} />);
    await flush();
    t.server.lastStream().connected("c_1");
    t.server.lastStream().deliver(envelope("1", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("1");
    act(() => t.client.close()); // logout
    expect(screen.getByTestId("status").textContent).toBe("closed");
    rerender(<App more />); // a new subscription reopens the client
    await flush();
    const s = t.server.lastStream();
    s.connected("c_2");
    await flush();
    // "a" is on the new connection again, after the last event it kept.
    const added = t.server.subscriptionCalls().map((c) => c.body);
    expect({ url: s.call.url.searchParams.getAll("channel"), added }).toEqual({
      url: ["b"],
      added: [{ add: ["a"], since: "1" }],
    });
    s.deliver(envelope("2", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("1,2");
    expect(screen.getByTestId("status").textContent).toBe("connected");
  });

  it("components on one channel share one subscription and one list, each with its own limit", async () => {
    render(
      <RealtimeProvider client={t.client}>
        <List channel="a" limit={2} id="short" />
        <List channel="a" limit={5} id="long" />
      </RealtimeProvider>,
    );
    await flush();
    const s = t.server.lastStream();
    s.connected();
    for (let i = 1; i <= 6; i++) s.deliver(envelope(String(i), "a"));
    await flush();
    expect(screen.getByTestId("short").textContent).toBe("5,6");
    expect(screen.getByTestId("long").textContent).toBe("2,3,4,5,6");
    expect(t.server.streamCalls()).toHaveLength(1);
    expect(t.server.subscriptionCalls()).toHaveLength(0);
  });

  it("keeps a bounded number of channels after their last component left (least recently used out)", async () => {
    function App({ channels }: { channels: string[] }) {
      return (
        <RealtimeProvider client={t.client} idleChannels={2}>
          <List channel="keep" id="keep" />
          {channels.map((c) => (
            <List key={c} channel={c} id={c} />
          ))}
        </RealtimeProvider>
      );
    }
    const { rerender } = render(<App channels={["a", "b", "c", "d"]} />);
    await flush();
    rerender(<App channels={["b", "c", "d"]} />);
    rerender(<App channels={["c", "d"]} />);
    rerender(<App channels={["d"]} />);
    rerender(<App channels={[]} />);
    await flush();
    expect(keptChannels(t.client).sort()).toEqual(["c", "d", "keep"]);
  });

  it("history: the channel's last events first (history= on the stream when it opens with it)", async () => {
    render(
      <RealtimeProvider client={t.client}>
        <List channel="a" history={30} />
      </RealtimeProvider>,
    );
    await flush();
    expect(t.server.streamCalls()[0]!.url.searchParams.get("history")).toBe("30");
  });

  it("history on a channel another component already streams: loaded over REST for the store", async () => {
    t.server.auto = true;
    function Toasts() {
      useChannel("a", () => {});
      return null;
    }
    function App({ list }: { list: boolean }) {
      return (
        <RealtimeProvider client={t.client}>
          <Toasts />
          {list && <List channel="a" history={3} />}
        </RealtimeProvider>
      );
    }
    const { rerender } = render(<App list={false} />);
    await flush();
    for (let i = 0; i < 5; i++) t.server.publish("a");
    await flush();
    rerender(<App list />);
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("3,4,5");
    expect(t.server.historyCalls().map((c) => c.url.search)).toEqual(["?limit=3"]);
    // Unmounted while the channel stays streamed (Toasts), mounted again: the store continues
    // after its last event with `since`, over REST, so what was published meanwhile is there.
    rerender(<App list={false} />);
    await flush();
    t.server.publish("a");
    t.server.publish("a");
    await flush();
    rerender(<App list />);
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("3,4,5,6,7");
    t.server.publish("a");
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("3,4,5,6,7,8");
    expect(t.server.subscriptionCalls()).toHaveLength(0);
  });

  it("initial: shown at once; the stream starts right after its last event", async () => {
    function Loaded() {
      const events = useEvents("a", { initial: [envelope("10", "a"), envelope("11", "a")] });
      return <p data-testid="list">{events.map((e) => e.id).join(",")}</p>;
    }
    render(
      <RealtimeProvider client={t.client}>
        <Loaded />
      </RealtimeProvider>,
    );
    expect(screen.getByTestId("list").textContent).toBe("10,11");
    await flush();
    expect(t.server.streamCalls()[0]!.url.searchParams.get("since")).toBe("11");
    t.server.lastStream().connected();
    t.server.lastStream().deliver(envelope("11", "a"));
    t.server.lastStream().deliver(envelope("12", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("10,11,12");
  });

  it("initial with an explicit since: the stream starts at since", async () => {
    function Loaded() {
      const events = useEvents("a", { initial: [envelope("10", "a")], since: "8" });
      return <p data-testid="list">{events.map((e) => e.id).join(",")}</p>;
    }
    render(
      <RealtimeProvider client={t.client}>
        <Loaded />
      </RealtimeProvider>,
    );
    await flush();
    expect(t.server.streamCalls()[0]!.url.searchParams.get("since")).toBe("8");
    t.server.lastStream().connected();
    t.server.lastStream().deliver(envelope("9", "a"));
    t.server.lastStream().deliver(envelope("10", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("10,9");
  });
});

describe("status hooks", () => {
  it("useSubscriptionStatus follows the channel: pending, subscribed, refused with the error", async () => {
    function Status({ channel }: { channel: string }) {
      const s = useSubscriptionStatus(channel);
      useEvents(channel);
      return (
        <p data-testid={channel}>
          {s ? s.status : "none"}
          {s?.error ? ":" + s.error.code : ""}
        </p>
      );
    }
    render(
      <RealtimeProvider client={t.client}>
        <Status channel="a" />
      </RealtimeProvider>,
    );
    // render() ran the effects: subscribed locally, not yet on a connection.
    expect(screen.getByTestId("a").textContent).toBe("pending");
    await flush();
    expect(screen.getByTestId("a").textContent).toBe("pending");
    t.server.lastStream().connected("c_1");
    await flush();
    expect(screen.getByTestId("a").textContent).toBe("subscribed");
    t.server.subscriptionReplies.push(apiError(403, "forbidden_channel", { channels: ["secret"] }));
    render(
      <RealtimeProvider client={t.client}>
        <Status channel="secret" />
      </RealtimeProvider>,
    );
    await flush();
    expect(screen.getByTestId("secret").textContent).toBe("refused:forbidden_channel");
  });

  it("useSharing: not the leader before the first subscription, then the holder of the stream", async () => {
    function Sharing() {
      const s = useSharing();
      return <p data-testid="sharing">{`${s.mode}:${s.isLeader}`}</p>;
    }
    function Sub() {
      useEvents("a");
      return null;
    }
    function App({ sub }: { sub: boolean }) {
      return (
        <RealtimeProvider client={t.client}>
          <Sharing />
          {sub && <Sub />}
        </RealtimeProvider>
      );
    }
    const { rerender } = render(<App sub={false} />);
    expect(screen.getByTestId("sharing").textContent).toBe("none:false");
    rerender(<App sub />);
    await flush();
    expect(screen.getByTestId("sharing").textContent).toBe("none:true");
  });
});

describe("the provider's own client", () => {
  const opts = () => clientOptions(t.server);

  it("uses the latest getToken given to it", async () => {
    let seen: RealtimeClient | null = null;
    function Probe({ sub }: { sub: boolean }) {
      seen = useRealtime();
      return sub ? <List channel="a" /> : null;
    }
    function App({ token, sub }: { token: string; sub: boolean }) {
      return (
        <RealtimeProvider options={{ ...opts(), getToken: () => token }}>
          <Probe sub={sub} />
        </RealtimeProvider>
      );
    }
    const { rerender } = render(<App token="old" sub={false} />);
    const first = seen;
    rerender(<App token="new" sub />);
    await flush();
    expect(seen).toBe(first); // the same client…
    expect(t.server.streamCalls()[0]!.headers.get("authorization")).toBe("Bearer new"); // …the latest closure
  });

  it('reopens after <Activity mode="hidden"> tore its effects down, keeping the events', async () => {
    expect(typeof Activity).not.toBe("undefined"); // React 19.2+
    let seen: RealtimeClient | null = null;
    function Probe() {
      seen = useRealtime();
      return <List channel="a" />;
    }
    function App({ mode }: { mode: "visible" | "hidden" }) {
      return (
        <Activity mode={mode}>
          <RealtimeProvider options={opts()}>
            <Probe />
          </RealtimeProvider>
        </Activity>
      );
    }
    const { rerender } = render(
      <StrictMode>
        <App mode="visible" />
      </StrictMode>,
    );
    await flush();
    t.server.lastStream().connected("c_1");
    t.server.lastStream().deliver(envelope("5", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("5");
    rerender(
      <StrictMode>
        <App mode="hidden" />
      </StrictMode>,
    );
    await act(async () => {
      await advance(10);
    });
    // Hidden: the effects were torn down, the provider closed its client.
    expect(seen!.closed).toBe(true);
    expect(t.server.lastStream().closed).toBe(true);
    rerender(
      <StrictMode>
        <App mode="visible" />
      </StrictMode>,
    );
    await flush();
    expect(seen!.closed).toBe(false);
    expect(t.server.streamCalls()).toHaveLength(2);
    // The events stayed; the stream continues after the last one (resume position or since).
    expect(screen.getByTestId("list").textContent).toBe("5");
    const again = t.server.streamCalls()[1]!;
    expect(again.url.searchParams.get("since") ?? again.headers.get("last-event-id")).toBe("5");
    t.server.lastStream().connected("c_2");
    t.server.lastStream().deliver(envelope("6", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("5,6");
  });

  it("StrictMode with a state change keeps one client and one subscription", async () => {
    function Counter() {
      const [n, setN] = useState(0);
      const events = useEvents("a");
      return (
        <button type="button" onClick={() => setN(n + 1)}>
          {n}:{events.length}
        </button>
      );
    }
    render(
      <StrictMode>
        <RealtimeProvider options={opts()}>
          <Counter />
        </RealtimeProvider>
      </StrictMode>,
    );
    await flush();
    act(() => screen.getByRole("button").click());
    await flush();
    expect(t.server.streamCalls()).toHaveLength(1);
    expect(screen.getByRole("button").textContent).toBe("1:0");
  });
});
