import { Activity, StrictMode, useState } from "react";
import { act, cleanup, render, screen } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createClient, type RealtimeClient } from "@ssegate/client";
import {
  RealtimeProvider,
  keptChannels,
  useChannel,
  useEvents,
  useRealtime,
  useSharing,
  useSubscriptionStatus,
} from "../src/index.js";
import { FakeServer, advance, apiError, envelope, settle, useFakeTime } from "../../js/test/fakes.js";

let server: FakeServer;
let client: RealtimeClient;

beforeEach(() => {
  useFakeTime();
  server = new FakeServer();
  client = createClient({
    url: "http://gw.test",
    fetch: server.fetch,
    environment: null,
    shareAcrossTabs: false,
    random: () => 0.5,
  });
});

afterEach(() => {
  cleanup();
  client.close();
  vi.useRealTimers();
});

async function flush(): Promise<void> {
  await act(async () => {
    await settle();
  });
}

function List({ channel, limit, history, id }: { channel: string; limit?: number; history?: number; id?: string }) {
  const events = useEvents(channel, { limit, history });
  return <p data-testid={id ?? "list"}>{events.map((e) => e.id).join(",")}</p>;
}

describe("useEvents: the shared store", () => {
  it("a component mounted again shows the events it had, and the stream continues after the last of them", async () => {
    function App({ show }: { show: boolean }) {
      return (
        <RealtimeProvider client={client}>
          <List channel="base" id="base" />
          {show && <List channel="a" />}
        </RealtimeProvider>
      );
    }
    const { rerender } = render(<App show />);
    await flush();
    const s = server.lastStream();
    s.connected("c_1");
    s.deliver(envelope("1", "a"));
    s.deliver(envelope("2", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("1,2");
    rerender(<App show={false} />);
    await flush();
    expect(server.subscriptionCalls().map((c) => c.body)).toEqual([{ remove: ["a"] }]);
    rerender(<App show />);
    // At once, before anything came from the gateway.
    expect(screen.getByTestId("list").textContent).toBe("1,2");
    await flush();
    expect(server.subscriptionCalls().map((c) => c.body)).toEqual([
      { remove: ["a"] },
      { add: ["a"], since: "2" },
    ]);
    s.history(envelope("2", "a")); // the last kept event again: not twice
    s.history(envelope("3", "a"));
    s.deliver(envelope("4", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("1,2,3,4");
  });

  it("components on one channel share one subscription and one list, each with its own limit", async () => {
    render(
      <RealtimeProvider client={client}>
        <List channel="a" limit={2} id="short" />
        <List channel="a" limit={5} id="long" />
      </RealtimeProvider>,
    );
    await flush();
    const s = server.lastStream();
    s.connected();
    for (let i = 1; i <= 6; i++) s.deliver(envelope(String(i), "a"));
    await flush();
    expect(screen.getByTestId("short").textContent).toBe("5,6");
    expect(screen.getByTestId("long").textContent).toBe("2,3,4,5,6");
    expect(server.streamCalls()).toHaveLength(1);
    expect(server.subscriptionCalls()).toHaveLength(0);
  });

  it("keeps a bounded number of channels after their last component left (least recently used out)", async () => {
    function App({ channels }: { channels: string[] }) {
      return (
        <RealtimeProvider client={client} idleChannels={2}>
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
    expect(keptChannels(client).sort()).toEqual(["c", "d", "keep"]);
  });

  it("history: the channel's last events first (history= on the stream when it opens with it)", async () => {
    render(
      <RealtimeProvider client={client}>
        <List channel="a" history={30} />
      </RealtimeProvider>,
    );
    await flush();
    expect(server.streamCalls()[0]!.url.searchParams.get("history")).toBe("30");
  });

  it("history on a channel another component already streams: loaded over REST for the store", async () => {
    server.auto = true;
    function Toasts() {
      useChannel("a", () => {});
      return null;
    }
    function App({ list }: { list: boolean }) {
      return (
        <RealtimeProvider client={client}>
          <Toasts />
          {list && <List channel="a" history={3} />}
        </RealtimeProvider>
      );
    }
    const { rerender } = render(<App list={false} />);
    await flush();
    for (let i = 0; i < 5; i++) server.publish("a");
    await flush();
    rerender(<App list />);
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("3,4,5");
    expect(server.historyCalls().map((c) => c.url.search)).toEqual(["?limit=3"]);
    // Unmounted while the channel stays streamed (Toasts), mounted again: the store continues
    // after its last event with `since`, over REST, so what was published meanwhile is there.
    rerender(<App list={false} />);
    await flush();
    server.publish("a");
    server.publish("a");
    await flush();
    rerender(<App list />);
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("3,4,5,6,7");
    server.publish("a");
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("3,4,5,6,7,8");
    expect(server.subscriptionCalls()).toHaveLength(0);
  });

  it("initial: shown at once; the stream starts right after its last event", async () => {
    function Loaded() {
      const events = useEvents("a", { initial: [envelope("10", "a"), envelope("11", "a")] });
      return <p data-testid="list">{events.map((e) => e.id).join(",")}</p>;
    }
    render(
      <RealtimeProvider client={client}>
        <Loaded />
      </RealtimeProvider>,
    );
    expect(screen.getByTestId("list").textContent).toBe("10,11");
    await flush();
    expect(server.streamCalls()[0]!.url.searchParams.get("since")).toBe("11");
    server.lastStream().connected();
    server.lastStream().deliver(envelope("11", "a"));
    server.lastStream().deliver(envelope("12", "a"));
    await flush();
    expect(screen.getByTestId("list").textContent).toBe("10,11,12");
  });

  it("initial with an explicit since: the stream starts at since", async () => {
    function Loaded() {
      const events = useEvents("a", { initial: [envelope("10", "a")], since: "8" });
      return <p data-testid="list">{events.map((e) => e.id).join(",")}</p>;
    }
    render(
      <RealtimeProvider client={client}>
        <Loaded />
      </RealtimeProvider>,
    );
    await flush();
    expect(server.streamCalls()[0]!.url.searchParams.get("since")).toBe("8");
    server.lastStream().connected();
    server.lastStream().deliver(envelope("9", "a"));
    server.lastStream().deliver(envelope("10", "a"));
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
      <RealtimeProvider client={client}>
        <Status channel="a" />
      </RealtimeProvider>,
    );
    // render() ran the effects: subscribed locally, not yet on a connection.
    expect(screen.getByTestId("a").textContent).toBe("pending");
    await flush();
    expect(screen.getByTestId("a").textContent).toBe("pending");
    server.lastStream().connected("c_1");
    await flush();
    expect(screen.getByTestId("a").textContent).toBe("subscribed");
    server.subscriptionReplies.push(apiError(403, "forbidden_channel", { channels: ["secret"] }));
    render(
      <RealtimeProvider client={client}>
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
        <RealtimeProvider client={client}>
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
  const opts = () => ({
    url: "http://gw.test",
    fetch: server.fetch,
    environment: null,
    shareAcrossTabs: false,
    random: () => 0.5,
  });

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
    expect(server.streamCalls()[0]!.headers.get("authorization")).toBe("Bearer new"); // …the latest closure
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
    server.lastStream().connected("c_1");
    server.lastStream().deliver(envelope("5", "a"));
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
    expect(server.lastStream().closed).toBe(true);
    rerender(
      <StrictMode>
        <App mode="visible" />
      </StrictMode>,
    );
    await flush();
    expect(seen!.closed).toBe(false);
    expect(server.streamCalls()).toHaveLength(2);
    // The events stayed; the stream continues after the last one (resume position or since).
    expect(screen.getByTestId("list").textContent).toBe("5");
    const again = server.streamCalls()[1]!;
    expect(again.url.searchParams.get("since") ?? again.headers.get("last-event-id")).toBe("5");
    server.lastStream().connected("c_2");
    server.lastStream().deliver(envelope("6", "a"));
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
    expect(server.streamCalls()).toHaveLength(1);
    expect(screen.getByRole("button").textContent).toBe("1:0");
  });
});
