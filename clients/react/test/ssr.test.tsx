// @vitest-environment node
import { renderToString } from "react-dom/server";
import { describe, expect, it, vi } from "vitest";
import {
  RealtimeProvider,
  useConnectionState,
  useEvents,
  useSharing,
  useSubscriptionStatus,
} from "../src/index.js";
import { envelope } from "../../js/test/fakes.js";

describe("server-side rendering", () => {
  it("renders with renderToString in Node: no window, no request, the initial events shown", () => {
    expect(typeof window).toBe("undefined");
    expect(typeof document).toBe("undefined");
    const fetch = vi.fn();
    function Page() {
      const events = useEvents("a", { initial: [envelope("1", "a")], history: 10 });
      const state = useConnectionState();
      const sub = useSubscriptionStatus("a");
      const sharing = useSharing();
      return (
        <p>
          {state.status}|{events.map((e) => e.id).join(",")}|{sub ? sub.status : "none"}|{sharing.mode}:
          {String(sharing.isLeader)}
        </p>
      );
    }
    const html = renderToString(
      <RealtimeProvider options={{ url: "http://gw.test", fetch, getToken: () => "t" }}>
        <Page />
      </RealtimeProvider>,
    );
    expect(html.replace(/<!-- -->/g, "")).toBe("<p>idle|1|none|leader:false</p>");
    expect(fetch).not.toHaveBeenCalled();
  });
});
